//! The kinds of value a setting holds: how its text is parsed, and the type it becomes.
//! A problem is one phrase; `ConfigError` puts the setting's name and flag before it.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::{ConfigError, LogFormat, Setting, redact_url};
use crate::domain::device::Provisioning;

/// What `Debug` shows in place of a secret.
pub const REDACTED: &str = "[redacted]";

/// A kind of setting: the type its value becomes, and how text becomes it.
pub trait Kind {
    type Value;
    /// Secrets are redacted in `Debug` and their environment values hidden in `--help`.
    const SECRET: bool = false;

    /// Parses a value as given (trimmed, not empty).
    fn parse(text: &str, setting: &'static Setting) -> Result<Self::Value, String>;

    /// The value when nothing sets the setting and it declares no default: only optional
    /// kinds (and lists, which are empty) have one.
    fn absent(_setting: &'static Setting) -> Option<Self::Value> {
        None
    }
}

/// The value of `setting` from its text (None when no layer sets it).
///
/// # Panics
/// When a setting that nothing sets has neither a default nor an optional kind: a mistake in
/// `declarations.rs`, which `every_setting_has_a_valid_default` catches.
pub(super) fn resolve<K: Kind>(setting: &'static Setting, text: Option<String>) -> Result<K::Value, ConfigError> {
    let problem = |problem: String| ConfigError::new(setting.name, problem);
    match text {
        Some(text) => K::parse(&text, setting).map_err(problem),
        None if !setting.default.is_empty() => K::parse(setting.default, setting).map_err(problem),
        None => Ok(K::absent(setting).unwrap_or_else(|| panic!("the setting {} has no default and is not optional", setting.name))),
    }
}

/// An optional setting: `None` when nothing sets it.
impl<K: Kind> Kind for Option<K> {
    type Value = Option<K::Value>;
    const SECRET: bool = K::SECRET;

    fn parse(text: &str, setting: &'static Setting) -> Result<Self::Value, String> {
        K::parse(text, setting).map(Some)
    }

    fn absent(_setting: &'static Setting) -> Option<Self::Value> {
        Some(None)
    }
}

/// A setting parsed only when it is used (`Deferred::get`): the S3 settings, which matter
/// only with an `s3://` blob URL and are not checked otherwise.
pub struct Deferred<K> {
    setting: &'static Setting,
    text: Option<String>,
    kind: PhantomData<K>,
}

impl<K: Kind> Deferred<K> {
    pub fn get(&self) -> Result<K::Value, ConfigError> {
        resolve::<K>(self.setting, self.text.clone())
    }
}

impl<K: Kind> Kind for Deferred<K> {
    type Value = Deferred<K>;
    const SECRET: bool = K::SECRET;

    fn parse(text: &str, setting: &'static Setting) -> Result<Self::Value, String> {
        Ok(Deferred { setting, text: Some(text.to_string()), kind: PhantomData })
    }

    fn absent(setting: &'static Setting) -> Option<Self::Value> {
        Some(Deferred { setting, text: None, kind: PhantomData })
    }
}

/// A secret (key, token, password): `Debug` shows `[redacted]`, there is no `Display`, and
/// the code that needs the value asks for it with `expose`. It has no `==` either: compare
/// presented secrets with `domain::secret::constant_time_eq`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_string())
    }
}

impl Kind for Secret {
    type Value = Secret;
    const SECRET: bool = true;

    fn parse(text: &str, _setting: &'static Setting) -> Result<Secret, String> {
        Ok(Secret::from(text))
    }
}

/// A secret an operator chooses for a client to present: at least 16 characters.
pub struct Token;

impl Kind for Token {
    type Value = Secret;
    const SECRET: bool = true;

    fn parse(text: &str, _setting: &'static Setting) -> Result<Secret, String> {
        if text.len() < 16 {
            return Err("must be at least 16 characters long".into());
        }
        Ok(Secret::from(text))
    }
}

/// A database URL (`sqlite:` or `postgres://`), which may hold a password: `Debug` shows it
/// without, and the code that connects asks for it with `expose`.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password replaced, for messages and logs.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match Url::parse(&self.0) {
            Ok(mut url) if url.password().is_some() => {
                let _ = url.set_password(None);
                write!(f, "\"{url}\" (password {REDACTED})")
            }
            Ok(_) => write!(f, "{:?}", self.0),
            Err(_) => f.write_str(REDACTED),
        }
    }
}

impl From<String> for DatabaseUrl {
    fn from(value: String) -> Self {
        DatabaseUrl(value)
    }
}

impl Kind for DatabaseUrl {
    type Value = DatabaseUrl;
    const SECRET: bool = true;

    fn parse(text: &str, _setting: &'static Setting) -> Result<DatabaseUrl, String> {
        if !(text.starts_with("sqlite:") || text.starts_with("postgres://") || text.starts_with("postgresql://")) {
            return Err(format!("`{}` is not a sqlite:// or postgres:// URL", redact_url(text)));
        }
        Ok(DatabaseUrl(text.to_string()))
    }
}

impl Kind for String {
    type Value = String;

    fn parse(text: &str, _setting: &'static Setting) -> Result<String, String> {
        Ok(text.to_string())
    }
}

impl Kind for PathBuf {
    type Value = PathBuf;

    fn parse(text: &str, _setting: &'static Setting) -> Result<PathBuf, String> {
        Ok(PathBuf::from(text))
    }
}

/// A file that must exist.
pub struct ExistingFile;

impl Kind for ExistingFile {
    type Value = PathBuf;

    fn parse(text: &str, _setting: &'static Setting) -> Result<PathBuf, String> {
        let path = PathBuf::from(text);
        if !path.is_file() {
            return Err(format!("file `{}` does not exist", path.display()));
        }
        Ok(path)
    }
}

/// A folder that must exist.
pub struct ExistingFolder;

impl Kind for ExistingFolder {
    type Value = PathBuf;

    fn parse(text: &str, _setting: &'static Setting) -> Result<PathBuf, String> {
        let path = PathBuf::from(text);
        if !path.is_dir() {
            return Err(format!("`{}` is not a folder", path.display()));
        }
        Ok(path)
    }
}

impl Kind for bool {
    type Value = bool;

    fn parse(text: &str, _setting: &'static Setting) -> Result<bool, String> {
        match text.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            other => Err(format!("`{other}` is not a boolean (true/false)")),
        }
    }
}

/// A whole number (`_` separators allowed) within the setting's range.
fn whole_number(text: &str, setting: &'static Setting, unit: &str) -> Result<u64, String> {
    let n = text.replace('_', "").parse::<u64>().map_err(|_| format!("`{text}` is not a whole number"))?;
    setting.check_range(n, unit)
}

macro_rules! whole_numbers {
    ($($type:ty),*) => {$(
        impl Kind for $type {
            type Value = $type;

            fn parse(text: &str, setting: &'static Setting) -> Result<$type, String> {
                <$type>::try_from(whole_number(text, setting, "")?).map_err(|_| format!("`{text}` is not a whole number"))
            }
        }
    )*};
}

whole_numbers!(u16, u32, u64, usize);

/// A duration in whole seconds.
pub struct Secs;

impl Kind for Secs {
    type Value = Duration;

    fn parse(text: &str, setting: &'static Setting) -> Result<Duration, String> {
        whole_number(text, setting, " seconds").map(Duration::from_secs)
    }
}

impl Kind for SocketAddr {
    type Value = SocketAddr;

    fn parse(text: &str, setting: &'static Setting) -> Result<SocketAddr, String> {
        let like = [setting.default, setting.example].into_iter().find(|e| !e.is_empty()).unwrap_or("0.0.0.0:8080");
        text.parse().map_err(|_| format!("`{text}` is not an address like {like}"))
    }
}

/// An `http://` or `https://` URL without query or fragment (a base URL).
pub struct BaseUrl;

impl Kind for BaseUrl {
    type Value = Url;

    fn parse(text: &str, _setting: &'static Setting) -> Result<Url, String> {
        let url = Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(format!("`{text}` must start with http:// or https://"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("must not have a query or fragment".into());
        }
        Ok(url)
    }
}

/// An `http://` or `https://` endpoint, kept as written.
pub struct Endpoint;

impl Kind for Endpoint {
    type Value = String;

    fn parse(text: &str, _setting: &'static Setting) -> Result<String, String> {
        let url = Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(format!("`{text}` must start with http:// or https://"));
        }
        Ok(text.to_string())
    }
}

/// An MQTT broker's URL: `mqtt://` or `mqtts://` (`tcp://`, `ssl://`) with a host.
pub struct BrokerUrl;

impl Kind for BrokerUrl {
    type Value = Url;

    fn parse(text: &str, _setting: &'static Setting) -> Result<Url, String> {
        let url = Url::parse(text).map_err(|_| format!("`{}` is not a URL", redact_url(text)))?;
        if !matches!(url.scheme(), "mqtt" | "tcp" | "mqtts" | "ssl") || url.host_str().is_none() {
            return Err("must look like mqtt://host:1883 or mqtts://host:8883".into());
        }
        Ok(url)
    }
}

/// A comma-separated list of addresses and networks (`10.0.0.0/8`); an address alone is a
/// network of one. Empty when unset.
pub struct Networks;

impl Kind for Networks {
    type Value = Vec<ipnet::IpNet>;

    fn parse(text: &str, _setting: &'static Setting) -> Result<Vec<ipnet::IpNet>, String> {
        text.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<ipnet::IpNet>()
                    .map(|net| net.trunc())
                    .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("`{entry}` is not an address or a network like 10.0.0.0/8"))
            })
            .collect()
    }

    fn absent(_setting: &'static Setting) -> Option<Self::Value> {
        Some(Vec::new())
    }
}

/// A comma-separated list of host names, addresses and networks, in lower case. Empty when
/// unset.
pub struct Hosts;

impl Kind for Hosts {
    type Value = Vec<String>;

    fn parse(text: &str, _setting: &'static Setting) -> Result<Vec<String>, String> {
        let hosts: Vec<String> = text.split(',').map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()).collect();
        for entry in &hosts {
            if let Some((net, bits)) = entry.split_once('/') {
                let valid = net
                    .parse::<std::net::IpAddr>()
                    .ok()
                    .zip(bits.parse::<u8>().ok())
                    .is_some_and(|(ip, bits)| bits <= if ip.is_ipv4() { 32 } else { 128 });
                if !valid {
                    return Err(format!("`{entry}` is not a network like 10.0.0.0/8"));
                }
            }
        }
        Ok(hosts)
    }

    fn absent(_setting: &'static Setting) -> Option<Self::Value> {
        Some(Vec::new())
    }
}

/// A comma-separated list of web origins (`https://host[:port]`), each kept as
/// `scheme://host[:port]` in lower case without a trailing slash. Empty when unset.
pub struct Origins;

impl Kind for Origins {
    type Value = Vec<String>;

    fn parse(text: &str, _setting: &'static Setting) -> Result<Vec<String>, String> {
        text.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                let problem = || format!("`{entry}` is not an origin like https://dash.example.com");
                let url = Url::parse(entry).map_err(|_| problem())?;
                let plain = url.path() == "/" && url.query().is_none() && url.fragment().is_none() && url.username().is_empty();
                if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() || !plain {
                    return Err(problem());
                }
                Ok(url.origin().ascii_serialization())
            })
            .collect()
    }

    fn absent(_setting: &'static Setting) -> Option<Self::Value> {
        Some(Vec::new())
    }
}

/// A log filter (`info`, `info,updraft=debug`).
pub struct LogFilter;

impl Kind for LogFilter {
    type Value = String;

    fn parse(text: &str, _setting: &'static Setting) -> Result<String, String> {
        if tracing_subscriber::EnvFilter::try_new(text).is_err() {
            return Err(format!("`{text}` is not a log filter such as `info` or `info,updraft=debug`"));
        }
        Ok(text.to_string())
    }
}

impl Kind for LogFormat {
    type Value = LogFormat;

    fn parse(text: &str, _setting: &'static Setting) -> Result<LogFormat, String> {
        match text {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("`{other}` is not one of: text, json")),
        }
    }
}

impl Kind for Provisioning {
    type Value = Provisioning;

    fn parse(text: &str, _setting: &'static Setting) -> Result<Provisioning, String> {
        Provisioning::parse(text).map_err(|_| format!("`{text}` is not one of: open, key, preregistered"))
    }
}

/// A product name, checked as products are.
pub struct ProductName;

impl Kind for ProductName {
    type Value = String;

    fn parse(text: &str, _setting: &'static Setting) -> Result<String, String> {
        crate::domain::firmware::ProductName::parse(text).map_err(|e| e.to_string())?;
        Ok(text.to_string())
    }
}

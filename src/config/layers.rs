//! Where a setting's text comes from, highest first: the flag or `UPDRAFT_*` variable (clap
//! reads both into `ServeArgs`), `.env` in the working directory, the TOML file, and last the
//! setting's alias and fallback variables from the environment. Also names what is given but
//! is no setting: unknown `UPDRAFT_*` variables and unknown `.env` keys (start-up warns), and
//! unknown TOML keys (an error).

use std::collections::BTreeMap;
use std::path::Path;

use super::kinds::{self, Kind};
use super::{ConfigError, SETTINGS, ServeArgs, Setting};

/// The replaced switch of trusted proxies: known, so that start-up can refuse it by name.
pub(super) const RETIRED: &str = "trust_proxy_headers";

/// Every layer of settings, read once.
pub(crate) struct Sources<'a> {
    args: Option<&'a ServeArgs>,
    /// `.env` entries by setting name (its aliases mapped to their setting).
    dotenv: BTreeMap<String, String>,
    /// TOML file entries by setting name, as text.
    file: BTreeMap<String, String>,
    /// Whether aliases and fallbacks are read from the process environment.
    environment: bool,
    /// Variables and `.env` keys that name no setting, each with where it was found.
    pub unknown: Vec<String>,
}

impl<'a> Sources<'a> {
    /// The layers of `args`: its TOML file, `dotenv_path`, and the process environment.
    pub fn load(args: &'a ServeArgs, dotenv_path: &Path) -> Result<Sources<'a>, ConfigError> {
        let mut unknown = Vec::new();
        let dotenv = read_dotenv(dotenv_path, &mut unknown)?;
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => BTreeMap::new(),
        };
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("UPDRAFT_") && !known_variable(&name) {
                unknown.push(describe_unknown(&name, "environment"));
            }
        }
        Ok(Sources { args: Some(args), dotenv, file, environment: true, unknown })
    }

    /// No layer at all: every setting at its default, whatever the environment holds.
    pub fn empty() -> Sources<'static> {
        Sources { args: None, dotenv: BTreeMap::new(), file: BTreeMap::new(), environment: false, unknown: Vec::new() }
    }

    /// The value of the setting `name`.
    pub fn value<K: Kind>(&self, name: &str) -> Result<K::Value, ConfigError> {
        let setting = Setting::named(name);
        kinds::resolve::<K>(setting, self.text(setting))
    }

    /// A setting's text from the highest layer that has it: trimmed, and unset when empty
    /// (an empty entry hides the lower layers, as it always did). Then its alias and fallback
    /// variables.
    fn text(&self, setting: &Setting) -> Option<String> {
        self.layered(setting.name, self.args.and_then(|args| args.given(setting.name)).map(str::to_string)).or_else(|| {
            if !self.environment {
                return None;
            }
            setting.also_read_from().find_map(|name| std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty()))
        })
    }

    fn layered(&self, name: &str, given: Option<String>) -> Option<String> {
        given
            .or_else(|| self.dotenv.get(name).cloned())
            .or_else(|| self.file.get(name).cloned())
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// The replaced trusted-proxies switch, when a layer still sets it.
    pub fn retired_switch(&self) -> Option<String> {
        let env = if self.environment { std::env::var("UPDRAFT_TRUST_PROXY_HEADERS").ok() } else { None };
        self.layered(RETIRED, env)
    }
}

/// Variables of the operator commands (`updraft firmware|device|…`, docs/CLI.md), not of the
/// server: an operator's shell that holds them may start a server too.
const CLIENT_VARIABLES: &[&str] = &["UPDRAFT_SERVER", "UPDRAFT_API_KEY"];

/// Whether `UPDRAFT_<NAME>` is a setting's variable (or the command line's).
fn known_variable(variable: &str) -> bool {
    variable == "UPDRAFT_TRUST_PROXY_HEADERS"
        || CLIENT_VARIABLES.contains(&variable)
        || SETTINGS.iter().any(|setting| setting.env() == variable)
}

/// `NAME (where)`, with the setting it was probably meant to be.
fn describe_unknown(name: &str, place: &str) -> String {
    let closest = SETTINGS.iter().map(Setting::env).map(|env| (edit_distance(name, &env), env)).min();
    match closest {
        Some((distance, env)) if distance <= 3 => format!("{name} ({place}; did you mean {env}?)"),
        _ => format!("{name} ({place})"),
    }
}

/// Levenshtein distance, for suggesting the setting a misspelt name meant.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// `.env` entries by setting name. A seed server's name of a setting (its alias) counts
/// when the file does not give the setting's own name. Every other key is named in
/// `unknown`: Updraft reads nothing else from `.env`.
fn read_dotenv(path: &Path, unknown: &mut Vec<String>) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut dotenv = BTreeMap::new();
    if !path.exists() {
        return Ok(dotenv);
    }
    let entries = dotenvy::from_path_iter(path).map_err(|e| ConfigError::new("config", format!("cannot read {}: {e}", path.display())))?;
    for entry in entries {
        let (key, value) = entry.map_err(|e| ConfigError::new("config", format!("cannot parse {}: {e}", path.display())))?;
        let name = key.strip_prefix("UPDRAFT_").map(str::to_ascii_lowercase);
        // As ever, `.env` names are not case-sensitive after the prefix.
        if let Some(setting) = name.as_deref().and_then(|name| SETTINGS.iter().find(|s| s.name == name)) {
            if setting.layered {
                dotenv.insert(setting.name.to_string(), value);
            } else {
                unknown.push(format!("{key} (.env; it is read only from the environment or its flag)"));
            }
        } else if name.as_deref() == Some(RETIRED) {
            dotenv.insert(RETIRED.to_string(), value);
        } else if let Some(setting) = SETTINGS.iter().find(|s| !s.alias.is_empty() && s.alias == key) {
            // An alias never overrides the setting's own name.
            dotenv.entry(setting.name.to_string()).or_insert(value);
        } else {
            unknown.push(describe_unknown(&key, ".env"));
        }
    }
    Ok(dotenv)
}

/// The TOML file's entries by setting name, as text. An unknown key is an error.
fn read_file(path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::new("config", format!("cannot read {}: {e}", path.display())))?;
    let table: toml::Table =
        text.parse().map_err(|e: toml::de::Error| ConfigError::new("config", format!("{}: {}", path.display(), e.message())))?;
    let mut file = BTreeMap::new();
    for (key, value) in table {
        if !SETTINGS.iter().any(|setting| setting.layered && setting.name == key) {
            return Err(ConfigError::new("config", format!("{}: unknown setting `{key}`", path.display())));
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Float(f) => f.to_string(),
            other => return Err(ConfigError::new(&key, format!("expected a string, number or boolean, got {other}"))),
        };
        file.insert(key, value);
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_name_is_matched_with_the_setting_it_meant() {
        assert_eq!(edit_distance("UPDRAFT_LISTN", "UPDRAFT_LISTEN"), 1);
        assert_eq!(describe_unknown("UPDRAFT_LISTN", "environment"), "UPDRAFT_LISTN (environment; did you mean UPDRAFT_LISTEN?)");
        assert_eq!(describe_unknown("UPDRAFT_SOMETHING_ELSE_ENTIRELY", ".env"), "UPDRAFT_SOMETHING_ELSE_ENTIRELY (.env)");
        assert!(known_variable("UPDRAFT_MQTT_URL") && known_variable("UPDRAFT_CONFIG") && known_variable("UPDRAFT_TRUST_PROXY_HEADERS"));
        assert!(!known_variable("UPDRAFT_MQTT_UR") && !known_variable("UPDRAFT_mqtt_url"));
        assert!(known_variable("UPDRAFT_SERVER") && known_variable("UPDRAFT_API_KEY"), "the operator commands' variables");
    }
}

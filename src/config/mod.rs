//! Settings: declared once, layered, typed and validated.
//!
//! Every setting is declared once, in `declarations.rs`: its name (the TOML key; the flag and
//! the `UPDRAFT_*` variable follow from it), kind, default, bounds and doc. From that list come
//! the flags of `updraft serve` and of the maintenance commands (`setting.rs`), the layers
//! (`layers.rs`), the parsing (`kinds.rs`), and `.env.example` and the table in
//! docs/DEPLOYMENT.md (generated; `settings_docs` fails when they are stale).
//!
//! Precedence, lowest first: built-in defaults, the optional TOML file (`--config`), `.env` in
//! the working directory, `UPDRAFT_*` environment variables, command-line flags. An invalid
//! value produces one line naming the setting and the problem. This module then assembles the
//! values into `Settings`, with the rules that involve several settings.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use crate::domain::device::Provisioning;

mod declarations;
pub mod kinds;
mod layers;
mod setting;
#[cfg(test)]
mod settings_docs;

use declarations::Values;
pub use declarations::{GROUPS, SETTINGS, ServeArgs};
pub use kinds::{DatabaseUrl, Secret};
use layers::Sources;
pub use setting::{FlagSet, Setting, SettingFlags};

/// A setting that could not be used. Its `Display` is the one line printed at start-up.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {env} (--{flag}): {problem}")]
pub struct ConfigError {
    pub env: String,
    pub flag: String,
    pub problem: String,
}

impl ConfigError {
    fn new(name: &str, problem: impl Into<String>) -> Self {
        ConfigError { env: format!("UPDRAFT_{}", name.to_ascii_uppercase()), flag: name.replace('_', "-"), problem: problem.into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub enum BlobSettings {
    Local { root: PathBuf },
    S3(S3Settings),
}

#[derive(Debug, Clone)]
pub struct S3Settings {
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
    pub allow_http: bool,
}

/// Settings of configurations, assets and the image proxy.
#[derive(Debug, Clone)]
pub struct ContentSettings {
    pub config_key_file: PathBuf,
    pub public_config_files: bool,
    pub signing_key_path: Option<PathBuf>,
    pub image_fetch_allow_hosts: Vec<String>,
    pub image_fetch_max_bytes: u64,
    pub image_fetch_timeout: Duration,
    pub image_max_pixels: u64,
    pub image_max_concurrent: usize,
}

#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Reloading the TLS files, and devices' client certificates (see `crate::tls`).
#[derive(Debug, Clone, Default)]
pub struct TlsPolicy {
    /// Every how long the files are checked for changes (None: read only at start).
    pub reload_every: Option<Duration>,
    /// The CA bundle of devices' client certificates (None: no client certificates).
    pub client_ca: Option<PathBuf>,
    /// Revocation lists of that CA.
    pub client_crl: Option<PathBuf>,
    pub client_identity: ClientIdentity,
}

/// The part of a client certificate that names the device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientIdentity {
    /// The subject's common name.
    #[default]
    Cn,
    /// The first DNS-name subject alternative name, else the first URI one.
    San,
}

/// Device settings (`services::devices` reads them).
#[derive(Debug, Clone)]
pub struct DeviceSettings {
    pub offline_after: Duration,
    pub default_poll_interval_s: u32,
    pub default_provisioning: Provisioning,
    pub pairing_ttl: Duration,
    pub retry_failed_after: Duration,
    pub download_url_ttl: Duration,
    /// Devices kept in each replica's fleet index (see `services::fleet`).
    pub cache_entries: usize,
    /// Most `last_seen` rows written per second; the rest wait in memory, oldest first.
    pub presence_writes_per_sec: usize,
}

impl Default for DeviceSettings {
    /// The declared defaults.
    fn default() -> Self {
        Settings::defaults().devices
    }
}

/// Rollout settings (`services::rollouts` reads them).
#[derive(Debug, Clone)]
pub struct RolloutSettings {
    /// How often the evaluator runs.
    pub evaluate_every: Duration,
    /// Default time a device has to report an outcome before it counts as timed out.
    pub device_deadline: Duration,
    /// How often the devices of a running rollout's target are recounted.
    pub recount_every: Duration,
    /// How long a completed rollout still offers its release (to devices that were offline,
    /// and, if dynamic, to devices that match later); then it leaves the view.
    pub catch_up: Duration,
}

impl Default for RolloutSettings {
    /// The declared defaults.
    fn default() -> Self {
        Settings::defaults().rollouts
    }
}

/// Operator accounts, API keys and browser sessions (group "Operators").
#[derive(Debug, Clone)]
pub struct AccountSettings {
    /// A session ends after this long without use...
    pub session_idle: Duration,
    /// ...and this long after login in any case.
    pub session_absolute: Duration,
    /// Failed logins of one username in `login_window` before it is locked for addresses that failed.
    pub login_max_failures: u32,
    pub login_window: Duration,
    /// How long a verified key or session is trusted from memory.
    pub credential_cache: Duration,
    /// Origins allowed by CORS and by the CSRF origin check (`scheme://host[:port]`).
    pub cors_origins: Vec<String>,
}

impl Default for AccountSettings {
    /// The declared defaults.
    fn default() -> Self {
        Settings::defaults().accounts
    }
}

/// Settings of the audit log (`services::audit`).
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// Records older than this are pruned.
    pub retention: Duration,
}

/// Settings of the orphan-blob collector (`services::orphan_blobs`).
#[derive(Debug, Clone, Copy)]
pub struct OrphanBlobSettings {
    /// A blob without a record is deleted once it is older than this.
    pub grace: Duration,
    /// Time between two runs (the first runs at start).
    pub every: Duration,
}

/// A token bucket's settings: `per_minute` requests on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_minute: u32,
    pub burst: u32,
}

/// Per-credential limits of the expensive routes (`http::limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSettings {
    pub uploads: Rate,
    pub lvgl: Rate,
    pub rollouts: Rate,
}

/// Fully parsed settings of a running server. `Debug` shows no secret.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: DatabaseUrl,
    pub database_max_connections: u32,
    pub blob: BlobSettings,
    pub blob_cache_bytes: usize,
    pub admin_api_key: Option<Secret>,
    /// Scrapes of `/metrics` must carry it, when set.
    pub metrics_token: Option<Secret>,
    pub public_url: Option<Url>,
    pub max_upload_bytes: u64,
    pub max_connections: usize,
    /// Most connections of one address (trusted proxies excepted).
    pub max_connections_per_ip: usize,
    /// Longest silence of a request body (see `http::body_guard`).
    pub body_read_timeout: Duration,
    /// Longest wait for a complete request head (see `net::serve`).
    pub header_read_timeout: Duration,
    /// Least average rate of a request body after `body_read_timeout`.
    pub body_min_bytes_per_sec: u64,
    pub shutdown_timeout: Duration,
    /// Reverse proxies whose forwarding headers are believed (see `http::forwarded`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub tls: Option<TlsSettings>,
    pub tls_policy: TlsPolicy,
    pub log: String,
    pub log_format: LogFormat,
    pub devices: DeviceSettings,
    pub content: ContentSettings,
    pub rollouts: RolloutSettings,
    pub compat: CompatSettings,
    pub mqtt: MqttSettings,
    pub accounts: AccountSettings,
    pub audit: AuditSettings,
    pub limits: LimitSettings,
    pub orphan_blobs: OrphanBlobSettings,
    /// Single sign-on (None when UPDRAFT_OIDC_ISSUER is unset).
    pub oidc: Option<OidcSettings>,
    /// Serve the web dashboard at `/`.
    pub dashboard_enabled: bool,
    /// Serve the dashboard's files from this folder instead of the embedded copy.
    pub web_dir: Option<PathBuf>,
    /// `UPDRAFT_*` variables and `.env` keys that are no setting, each with where it was
    /// found (never its value): start-up names them in one warning.
    pub unknown_names: Vec<String>,
}

impl Settings {
    /// The settings in use that weaken security, each with who can abuse it: logged as one
    /// warning each at start-up (docs/DEPLOYMENT.md, "Security model", says how to close them).
    pub fn weak_settings(&self) -> Vec<(&'static str, &'static str)> {
        let compat = &self.compat;
        let mut weak = Vec::new();
        if self.tls.is_none() && self.trusted_proxies.is_empty() {
            weak.push((
                "UPDRAFT_TLS_CERT",
                "HTTP and MQTT are plain text (no TLS, and no trusted proxy terminating it): tokens and keys cross the network readable",
            ));
        }
        if self.devices.default_provisioning == crate::domain::device::Provisioning::Open {
            weak.push(("UPDRAFT_DEFAULT_PROVISIONING", "products nobody configured provision any device that asks (open)"));
        }
        if self.content.public_config_files {
            weak.push((
                "UPDRAFT_PUBLIC_CONFIG_FILES",
                "anyone who knows a MAC reads that device's configuration (without its secrets) at /api/configs/{mac}.json",
            ));
        }
        if self.metrics_token.is_none() {
            weak.push(("UPDRAFT_METRICS_TOKEN", "/metrics is public: anyone sees fleet size and request rates"));
        }
        if compat.ota_server && compat.shared_secret.is_some() {
            weak.push((
                "UPDRAFT_COMPAT_SHARED_SECRET",
                "seed-001 devices authenticate with djb2 tokens: anyone who learns the shared secret or one token can pose as any device",
            ));
        }
        if compat.ota_server && compat.ota_server_downloads {
            weak.push(("UPDRAFT_COMPAT_OTA_SERVER_DOWNLOADS", "seed-001 firmware files download by name without authentication"));
        }
        if compat.cyberdeck {
            weak.push(("UPDRAFT_COMPAT_CYBERDECK", "seed 002's /ota serves the latest build to anyone"));
        }
        if compat.arduino {
            weak.push((
                "UPDRAFT_COMPAT_ARDUINO",
                "Arduino HTTPUpdate trusts the MAC header: anyone on the network can pose as a device and change its recorded version",
            ));
        }
        if compat.esp32fota {
            weak.push((
                "UPDRAFT_COMPAT_ESP32FOTA",
                "esp32FOTA identifies devices by their eFuse MAC alone: anyone who knows it can pose as the device",
            ));
        }
        if compat.esphome {
            weak.push((
                "UPDRAFT_COMPAT_ESPHOME",
                "ESPHome manifests identify devices by the MAC in `?device=` alone: anyone who knows it can pose as the device",
            ));
        }
        if compat.seed004_debug {
            weak.push(("UPDRAFT_COMPAT_SEED004_DEBUG", "GET /debug/provisioning hands a token to any unknown MAC of an open product"));
        }
        weak
    }
}

/// Single sign-on through an OpenID provider (docs/DEPLOYMENT.md, "Single sign-on").
#[derive(Debug, Clone)]
pub struct OidcSettings {
    /// Exactly as the provider's tokens name it.
    pub issuer: String,
    /// What operators' tokens must name in `aud`.
    pub audience: String,
    /// The dashboard's client (authorization code flow), when configured.
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub scopes: String,
    pub role_claim: String,
    pub roles: OidcRoleMap,
    pub name_claim: String,
    pub leeway: Duration,
    pub jwks_min_refresh: Duration,
    pub jwks_max_age: Duration,
    /// What devices' tokens must name in `aud` (None: device tokens are refused).
    pub device_audience: Option<String>,
    pub device_claim: String,
}

/// How the role names of a token become Updraft roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OidcRoleMap {
    /// `<prefix><role>` (an empty prefix: the role names themselves).
    Prefix(String),
    /// Only these names, each to its role.
    Table(Vec<(String, crate::domain::auth::Role)>),
}

impl OidcRoleMap {
    /// Parses `name=role,name=role`.
    pub fn parse_table(text: &str) -> Result<OidcRoleMap, String> {
        let mut table = Vec::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, role) = pair.split_once('=').ok_or_else(|| format!("`{pair}` is not `name=role`"))?;
            let role = crate::domain::auth::Role::parse(role.trim()).map_err(|e| e.to_string())?;
            let name = name.trim();
            if name.is_empty() {
                return Err(format!("`{pair}` has no name before `=`"));
            }
            table.push((name.to_string(), role));
        }
        if table.is_empty() {
            return Err("names no role: write `name=role,name=role`".into());
        }
        Ok(OidcRoleMap::Table(table))
    }
}

/// MQTT: the embedded broker (default) or an external one (docs/DEPLOYMENT.md).
#[derive(Debug, Clone)]
pub struct MqttSettings {
    pub enabled: bool,
    pub listen: SocketAddr,
    pub tls_listen: SocketAddr,
    pub ws_listen: Option<SocketAddr>,
    /// With it, the embedded broker is off and Updraft is a client of this broker.
    pub url: Option<Url>,
    pub username: String,
    pub password: Option<Secret>,
    pub auth_hooks: bool,
    pub max_connections: usize,
    pub max_packet_bytes: u32,
    pub max_inflight: u16,
    pub max_queued: usize,
    pub session_expiry: Duration,
    pub resync_every: Duration,
    /// How long a new connection has to send its CONNECT (embedded broker).
    pub handshake_timeout: Duration,
    /// How long a client's QoS 1/2 publish waits for room in a full subscriber queue
    /// (embedded broker; zero: no wait).
    pub queue_full_wait: Duration,
    /// Initial size of each connection's read and write buffers (embedded broker).
    pub io_buffer_bytes: usize,
}

/// Settings of the compatibility protocols (docs/CLIENT.md). Every surface is on by default.
#[derive(Debug, Clone)]
pub struct CompatSettings {
    /// Seed 001: `/api/firmware`, `/admin/api/...`.
    pub ota_server: bool,
    /// Seed 001: unauthenticated `GET /firmware/{filename}`.
    pub ota_server_downloads: bool,
    /// Seed 001: the fleet-wide secret of the djb2 device tokens.
    pub shared_secret: Option<Secret>,
    /// Seed 001: an admin key accepted on `/admin/api` besides Updraft's own.
    pub admin_api_key: Option<Secret>,
    pub default_product: Option<String>,
    /// Seed 002: `/ota`, `/ota/info`.
    pub cyberdeck: bool,
    pub arduino: bool,
    pub esp32fota: bool,
    /// ThingsBoard's HTTP device API: `/api/v1/{token}/...`.
    pub thingsboard_http: bool,
    pub esp32fota_keys_dir: Option<PathBuf>,
    /// ESPHome manifests: `/api/v1/esphome/{product}/manifest.json`.
    pub esphome: bool,
    /// Seed 004: `/debug/provisioning` (off by default).
    pub seed004_debug: bool,
    /// hawkBit DDI: `/{tenant}/controller/v1/...`.
    pub ddi: bool,
    pub ddi_tenant: String,
    pub ddi_poll_jitter_percent: u32,
}

impl Settings {
    /// Loads settings for `updraft serve` from all layers (using `.env` in the working directory).
    pub fn load(args: &ServeArgs) -> Result<Settings, ConfigError> {
        Settings::load_with_dotenv(args, Path::new(".env"))
    }

    pub fn load_with_dotenv(args: &ServeArgs, dotenv_path: &Path) -> Result<Settings, ConfigError> {
        Settings::from_sources(&Sources::load(args, dotenv_path)?)
    }

    /// Every setting at its declared default, whatever the environment holds.
    pub fn defaults() -> Settings {
        Settings::from_sources(&Sources::empty()).expect("the declared defaults are valid")
    }

    /// Parses every setting, then applies the rules that involve several.
    fn from_sources(sources: &Sources) -> Result<Settings, ConfigError> {
        let values = Values::resolve(sources)?;
        let blob = blob_settings(&values)?;
        let oidc = oidc_settings(&values)?;
        let data_dir = values.data_dir;
        let database_url =
            values.database_url.unwrap_or_else(|| DatabaseUrl::from(format!("sqlite://{}", data_dir.join("updraft.db").display())));

        let default_max_connections = if database_url.expose().starts_with("sqlite:") { 4 } else { 10 };

        let max_connections = values.max_connections;
        let max_connections_per_ip = values.max_connections_per_ip.unwrap_or((max_connections / 10).max(1));
        if max_connections_per_ip == 0 || max_connections_per_ip > max_connections {
            return Err(ConfigError::new(
                "max_connections_per_ip",
                format!("must be between 1 and UPDRAFT_MAX_CONNECTIONS ({max_connections})"),
            ));
        }
        if values.ddi_tenant.is_empty()
            || values.ddi_tenant.len() > 64
            || !values.ddi_tenant.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(ConfigError::new("ddi_tenant", "must be 1-64 of A-Z a-z 0-9 . _ -"));
        }
        if let Some(old) = sources.retired_switch() {
            return Err(ConfigError::new(
                "trusted_proxies",
                format!(
                    "UPDRAFT_TRUST_PROXY_HEADERS={old} was replaced by UPDRAFT_TRUSTED_PROXIES: list your proxies' addresses \
                     (e.g. 127.0.0.1 for a proxy on this host) and remove the old setting"
                ),
            ));
        }
        let tls = match (values.tls_cert, values.tls_key) {
            (Some(cert), Some(key)) => {
                for (name, path) in [("tls_cert", &cert), ("tls_key", &key)] {
                    if !path.is_file() {
                        return Err(ConfigError::new(name, format!("file `{}` does not exist", path.display())));
                    }
                }
                Some(TlsSettings { cert, key })
            }
            (Some(_), None) => return Err(ConfigError::new("tls_key", "is required when UPDRAFT_TLS_CERT is set")),
            (None, Some(_)) => return Err(ConfigError::new("tls_cert", "is required when UPDRAFT_TLS_KEY is set")),
            (None, None) => None,
        };
        if values.tls_client_ca.is_some() && tls.is_none() {
            return Err(ConfigError::new("tls_client_ca", "needs UPDRAFT_TLS_CERT and UPDRAFT_TLS_KEY (client certificates need TLS)"));
        }
        if values.tls_client_crl.is_some() && values.tls_client_ca.is_none() {
            return Err(ConfigError::new("tls_client_crl", "needs UPDRAFT_TLS_CLIENT_CA"));
        }
        let tls_policy = TlsPolicy {
            reload_every: (!values.tls_reload_secs.is_zero()).then_some(values.tls_reload_secs),
            client_ca: values.tls_client_ca,
            client_crl: values.tls_client_crl,
            client_identity: values.tls_client_identity,
        };

        let devices = DeviceSettings {
            offline_after: values.device_offline_after_secs,
            default_poll_interval_s: values.default_poll_interval_secs.as_secs() as u32,
            default_provisioning: values.default_provisioning,
            pairing_ttl: values.pairing_ttl_secs,
            retry_failed_after: values.update_retry_after_secs,
            download_url_ttl: values.download_url_ttl_secs,
            cache_entries: values.device_cache_entries,
            presence_writes_per_sec: values.presence_writes_per_sec,
        };
        let rollouts = RolloutSettings {
            evaluate_every: values.rollout_evaluate_secs,
            device_deadline: values.rollout_device_deadline_secs,
            recount_every: values.rollout_recount_secs,
            catch_up: values.rollout_catch_up_secs,
        };
        let compat = CompatSettings {
            ota_server: values.compat_ota_server,
            ota_server_downloads: values.compat_ota_server_downloads,
            shared_secret: values.compat_shared_secret,
            admin_api_key: values.compat_admin_api_key,
            default_product: values.compat_default_product,
            cyberdeck: values.compat_cyberdeck,
            arduino: values.compat_arduino,
            esp32fota: values.compat_esp32fota,
            thingsboard_http: values.compat_thingsboard_http,
            esp32fota_keys_dir: values.compat_esp32fota_keys_dir,
            esphome: values.compat_esphome,
            seed004_debug: values.compat_seed004_debug,
            ddi: values.compat_ddi,
            ddi_tenant: values.ddi_tenant,
            ddi_poll_jitter_percent: values.ddi_poll_jitter_percent,
        };
        let content = ContentSettings {
            config_key_file: values.config_key_file.unwrap_or_else(|| data_dir.join("config.key")),
            public_config_files: values.public_config_files,
            signing_key_path: values.signing_key_path,
            image_fetch_allow_hosts: values.image_fetch_allow_hosts,
            image_fetch_max_bytes: values.image_fetch_max_bytes,
            image_fetch_timeout: values.image_fetch_timeout_secs,
            image_max_pixels: values.image_max_pixels,
            image_max_concurrent: values.image_max_concurrent,
        };
        let mqtt = MqttSettings {
            enabled: values.mqtt_enabled,
            listen: values.mqtt_listen,
            tls_listen: values.mqtt_tls_listen,
            ws_listen: values.mqtt_ws_listen,
            auth_hooks: values.mqtt_auth_hooks.unwrap_or(values.mqtt_url.is_some()),
            url: values.mqtt_url,
            username: values.mqtt_username,
            password: values.mqtt_password,
            max_connections: values.mqtt_max_connections,
            max_packet_bytes: values.mqtt_max_packet_bytes,
            max_inflight: values.mqtt_max_inflight,
            max_queued: values.mqtt_max_queued,
            session_expiry: values.mqtt_session_expiry_secs,
            resync_every: values.mqtt_resync_secs,
            handshake_timeout: values.mqtt_handshake_timeout_secs,
            queue_full_wait: Duration::from_millis(values.mqtt_queue_full_wait_ms),
            io_buffer_bytes: values.mqtt_io_buffer_bytes,
        };

        Ok(Settings {
            listen: values.listen,
            data_dir,
            database_url,
            database_max_connections: values.database_max_connections.unwrap_or(default_max_connections),
            blob,
            blob_cache_bytes: values.blob_cache_bytes,
            admin_api_key: values.admin_api_key,
            metrics_token: values.metrics_token,
            public_url: values.public_url,
            max_upload_bytes: values.max_upload_bytes,
            max_connections,
            max_connections_per_ip,
            body_read_timeout: values.body_read_timeout_secs,
            header_read_timeout: values.header_read_timeout_secs,
            body_min_bytes_per_sec: values.body_min_bytes_per_sec,
            shutdown_timeout: values.shutdown_timeout_secs,
            trusted_proxies: values.trusted_proxies,
            tls,
            tls_policy,
            log: values.log,
            log_format: values.log_format,
            devices,
            content,
            rollouts,
            compat,
            mqtt,
            accounts: AccountSettings {
                session_idle: values.session_idle_secs,
                session_absolute: values.session_absolute_secs,
                login_max_failures: values.login_max_failures,
                login_window: values.login_lockout_secs,
                credential_cache: values.credential_cache_secs,
                cors_origins: values.cors_origins,
            },
            audit: AuditSettings { retention: Duration::from_secs(values.audit_retention_days.saturating_mul(86400)) },
            limits: LimitSettings {
                uploads: Rate { per_minute: values.limit_uploads_per_min, burst: values.limit_uploads_burst },
                lvgl: Rate { per_minute: values.limit_lvgl_per_min, burst: values.limit_lvgl_burst },
                rollouts: Rate { per_minute: values.limit_rollouts_per_min, burst: values.limit_rollouts_burst },
            },
            orphan_blobs: OrphanBlobSettings { grace: values.orphan_blob_grace_secs, every: values.orphan_blob_scan_secs },
            oidc,
            dashboard_enabled: values.dashboard_enabled,
            web_dir: values.web_dir,
            unknown_names: sources.unknown.clone(),
        })
    }
}

/// Single sign-on, when UPDRAFT_OIDC_ISSUER is set; the other single sign-on settings are
/// checked against it.
fn oidc_settings(values: &Values) -> Result<Option<OidcSettings>, ConfigError> {
    let Some(issuer) = values.oidc_issuer.clone() else {
        for (name, set) in [
            ("oidc_client_id", values.oidc_client_id.is_some()),
            ("oidc_audience", values.oidc_audience.is_some()),
            ("oidc_device_audience", values.oidc_device_audience.is_some()),
        ] {
            if set {
                return Err(ConfigError::new(name, "needs UPDRAFT_OIDC_ISSUER (the OpenID provider)"));
            }
        }
        return Ok(None);
    };
    let nonempty = |v: &Option<String>| v.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_string);
    let client_id = nonempty(&values.oidc_client_id);
    let Some(audience) = nonempty(&values.oidc_audience).or_else(|| client_id.clone()) else {
        return Err(ConfigError::new("oidc_audience", "is required with UPDRAFT_OIDC_ISSUER (or set UPDRAFT_OIDC_CLIENT_ID)"));
    };
    if values.oidc_client_secret.is_some() && client_id.is_none() {
        return Err(ConfigError::new("oidc_client_secret", "needs UPDRAFT_OIDC_CLIENT_ID"));
    }
    let roles = match &values.oidc_role_map {
        Some(map) => OidcRoleMap::parse_table(map).map_err(|e| ConfigError::new("oidc_role_map", e))?,
        None => OidcRoleMap::Prefix(values.oidc_role_prefix.trim().to_string()),
    };
    for (name, claim) in [
        ("oidc_role_claim", &values.oidc_role_claim),
        ("oidc_name_claim", &values.oidc_name_claim),
        ("oidc_device_claim", &values.oidc_device_claim),
    ] {
        if claim.trim().is_empty() {
            return Err(ConfigError::new(name, "must name a claim"));
        }
    }
    Ok(Some(OidcSettings {
        issuer,
        audience,
        client_id,
        client_secret: values.oidc_client_secret.clone(),
        scopes: values.oidc_scopes.clone(),
        role_claim: values.oidc_role_claim.trim().to_string(),
        roles,
        name_claim: values.oidc_name_claim.trim().to_string(),
        leeway: values.oidc_leeway_secs,
        jwks_min_refresh: values.oidc_jwks_min_refresh_secs,
        jwks_max_age: values.oidc_jwks_max_age_secs,
        device_audience: nonempty(&values.oidc_device_audience),
        device_claim: values.oidc_device_claim.trim().to_string(),
    }))
}

/// The blob store: a folder (the data folder's `blobs` by default) or S3, whose settings are
/// parsed only then.
fn blob_settings(values: &Values) -> Result<BlobSettings, ConfigError> {
    let Some(blob_url) = &values.blob_url else {
        return Ok(BlobSettings::Local { root: values.data_dir.join("blobs") });
    };
    if let Some(rest) = blob_url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(ConfigError::new("blob_url", format!("`{blob_url}` has no bucket name (expected s3://bucket[/prefix])")));
        }
        let endpoint = values.s3_endpoint.get()?;
        let default_allow_http = endpoint.as_deref().is_some_and(|e| e.starts_with("http://"));
        let allow_http = values.s3_allow_http.get()?.unwrap_or(default_allow_http);
        let region = values.s3_region.get()?;
        let access_key_id = values.s3_access_key_id.get()?;
        let secret_access_key = values.s3_secret_access_key.get()?;
        if access_key_id.is_some() != secret_access_key.is_some() {
            return Err(ConfigError::new("s3_secret_access_key", "S3 access key id and secret access key must be given together"));
        }
        return Ok(BlobSettings::S3(S3Settings {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint,
            region,
            access_key_id,
            secret_access_key,
            allow_http,
        }));
    }
    if let Some(path) = blob_url.strip_prefix("file://") {
        if path.is_empty() {
            return Err(ConfigError::new("blob_url", "file:// URL has no path"));
        }
        return Ok(BlobSettings::Local { root: PathBuf::from(path) });
    }
    if blob_url.contains("://") {
        return Err(ConfigError::new("blob_url", format!("`{blob_url}` is neither a folder, a file:// URL nor an s3:// URL")));
    }
    Ok(BlobSettings::Local { root: PathBuf::from(blob_url) })
}

/// Hides the password of a URL for messages and logs.
pub fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(args: ServeArgs) -> Result<Settings, ConfigError> {
        Settings::load_with_dotenv(&args, Path::new("/nonexistent/.env"))
    }

    #[test]
    fn defaults_use_embedded_backends() {
        let settings = load(ServeArgs::default()).unwrap();
        assert_eq!(settings.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(settings.database_url.expose(), "sqlite://./data/updraft.db");
        assert!(matches!(settings.blob, BlobSettings::Local { ref root } if root == Path::new("./data/blobs")));
        assert_eq!(settings.max_upload_bytes, 4 << 30);
        assert_eq!(settings.database_max_connections, 4);
    }

    #[test]
    fn the_pool_is_smaller_on_sqlite_unless_set() {
        let postgres = || ServeArgs { database_url: Some("postgres://updraft:pw@db:5432/updraft".into()), ..Default::default() };
        assert_eq!(load(postgres()).unwrap().database_max_connections, 10);
        let sqlite = load(ServeArgs { database_url: Some("sqlite:///srv/updraft/updraft.db".into()), ..Default::default() }).unwrap();
        assert_eq!(sqlite.database_max_connections, 4);
        let set = ServeArgs { database_max_connections: Some("20".into()), ..Default::default() };
        assert_eq!(load(set).unwrap().database_max_connections, 20);
        let set = ServeArgs { database_max_connections: Some("2".into()), ..postgres() };
        assert_eq!(load(set).unwrap().database_max_connections, 2);
    }

    #[test]
    fn an_invalid_value_names_the_setting_in_one_line() {
        let error = load(ServeArgs { listen: Some("nonsense".into()), ..Default::default() }).unwrap_err();
        let line = error.to_string();
        assert!(line.starts_with("invalid setting UPDRAFT_LISTEN (--listen):"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn layers_apply_in_order_file_then_dotenv_then_cli() {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("updraft.toml");
        std::fs::write(&config_path, "listen = \"127.0.0.1:1\"\nmax_upload_bytes = 100\nlog_format = \"json\"\n").unwrap();
        let dotenv_path = dir.path().join(".env");
        std::fs::write(&dotenv_path, "UPDRAFT_MAX_UPLOAD_BYTES=200\nUPDRAFT_LOG_FORMAT=text\n").unwrap();
        let args = ServeArgs { config: Some(config_path), log_format: Some("json".into()), ..Default::default() };
        let settings = Settings::load_with_dotenv(&args, &dotenv_path).unwrap();
        assert_eq!(settings.listen.to_string(), "127.0.0.1:1"); // from the file
        assert_eq!(settings.max_upload_bytes, 200); // .env beats the file
        assert_eq!(settings.log_format, LogFormat::Json); // the flag beats .env
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("updraft.toml");
        std::fs::write(&config_path, "lsten = \"127.0.0.1:1\"\n").unwrap();
        let error = load(ServeArgs { config: Some(config_path), ..Default::default() }).unwrap_err();
        assert!(error.to_string().contains("unknown setting `lsten`"), "{error}");
    }

    #[test]
    fn s3_urls_split_bucket_and_prefix() {
        let settings = load(ServeArgs {
            blob_url: Some("s3://firmware/prod/eu".into()),
            s3_endpoint: Some("http://127.0.0.1:9000".into()),
            s3_access_key_id: Some("a".into()),
            s3_secret_access_key: Some("b".into()),
            ..Default::default()
        })
        .unwrap();
        let BlobSettings::S3(s3) = settings.blob else { panic!("expected S3") };
        assert_eq!((s3.bucket.as_str(), s3.prefix.as_str()), ("firmware", "prod/eu"));
        assert!(s3.allow_http);
    }

    #[test]
    fn passwords_are_redacted_in_messages() {
        let error = load(ServeArgs { database_url: Some("mysql://u:secret@h/db".into()), ..Default::default() }).unwrap_err();
        assert!(!error.to_string().contains("secret"), "{error}");
    }

    #[test]
    fn compat_surfaces_are_on_by_default_and_seed_001_names_are_aliases() {
        let dir = tempfile::tempdir().unwrap();
        let dotenv_path = dir.path().join(".env");
        std::fs::write(&dotenv_path, "OTA_SERVER_SHARED_SECRET_KEY=from-alias\nOTA_SERVER_ADMIN_API_KEY=admin-alias\n").unwrap();
        let args = ServeArgs { compat_admin_api_key: Some("own-name".into()), compat_cyberdeck: Some("off".into()), ..Default::default() };
        let settings = Settings::load_with_dotenv(&args, &dotenv_path).unwrap();
        let compat = settings.compat;
        assert!(compat.ota_server && compat.ota_server_downloads && compat.arduino && compat.esp32fota && !compat.seed004_debug);
        assert!(!compat.cyberdeck);
        assert_eq!(compat.shared_secret.as_ref().map(Secret::expose), Some("from-alias"));
        assert_eq!(compat.admin_api_key.as_ref().map(Secret::expose), Some("own-name"));
        let error = load(ServeArgs { compat_default_product: Some("bad name".into()), ..Default::default() }).unwrap_err();
        assert!(error.to_string().contains("UPDRAFT_COMPAT_DEFAULT_PRODUCT"), "{error}");
    }

    #[test]
    fn trusted_proxies_are_addresses_and_networks_and_the_old_switch_is_named() {
        let settings = load(ServeArgs { trusted_proxies: Some("127.0.0.1, 10.0.0.0/8,::1".into()), ..Default::default() }).unwrap();
        let listed: Vec<String> = settings.trusted_proxies.iter().map(|n| n.to_string()).collect();
        assert_eq!(listed, ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]);
        let error = load(ServeArgs { trusted_proxies: Some("proxy.local".into()), ..Default::default() }).unwrap_err();
        assert!(error.to_string().starts_with("invalid setting UPDRAFT_TRUSTED_PROXIES"), "{error}");
        let dir = tempfile::tempdir().unwrap();
        let dotenv_path = dir.path().join(".env");
        std::fs::write(&dotenv_path, "UPDRAFT_TRUST_PROXY_HEADERS=true\n").unwrap();
        let error = Settings::load_with_dotenv(&ServeArgs::default(), &dotenv_path).unwrap_err();
        assert!(error.to_string().contains("replaced by UPDRAFT_TRUSTED_PROXIES"), "{error}");
    }

    #[test]
    fn a_short_admin_key_is_refused() {
        let error = load(ServeArgs { admin_api_key: Some("short".into()), ..Default::default() }).unwrap_err();
        assert!(error.to_string().contains("UPDRAFT_ADMIN_API_KEY"));
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let args = ServeArgs {
            admin_api_key: Some("secret-admin-key-0001".into()),
            metrics_token: Some("secret-metrics-token-0002".into()),
            database_url: Some("postgres://updraft:secret-database-password-0003@db:5432/updraft".into()),
            blob_url: Some("s3://firmware".into()),
            s3_access_key_id: Some("secret-s3-key-id-0004".into()),
            s3_secret_access_key: Some("secret-s3-key-0005".into()),
            compat_shared_secret: Some("secret-shared-0006".into()),
            compat_admin_api_key: Some("secret-compat-key-0007".into()),
            mqtt_password: Some("secret-mqtt-password-0008".into()),
            ..Default::default()
        };
        let settings = load(args.clone()).unwrap();

        for shown in [format!("{settings:?}"), format!("{settings:#?}"), format!("{args:?}")] {
            assert!(!shown.contains("secret-"), "a secret shows: {shown}");
            assert!(shown.contains(kinds::REDACTED), "{shown}");
        }
        assert!(format!("{:?}", settings.database_url).contains("postgres://updraft@db:5432/updraft"));
        assert_eq!(settings.database_url.expose(), "postgres://updraft:secret-database-password-0003@db:5432/updraft");
        assert_eq!(settings.mqtt.password.as_ref().map(Secret::expose), Some("secret-mqtt-password-0008"));
    }

    #[test]
    fn every_declared_default_is_valid_and_the_derived_ones_follow_their_settings() {
        let defaults = Settings::defaults();
        assert_eq!((defaults.max_connections, defaults.max_connections_per_ip), (10_000, 1_000));
        assert!(!defaults.mqtt.auth_hooks && defaults.mqtt.url.is_none());
        assert_eq!(defaults.devices.offline_after, Duration::from_secs(600));
        assert_eq!(defaults.rollouts.catch_up, Duration::from_secs(7 * 86400));
        assert_eq!(defaults.content.config_key_file, Path::new("./data/config.key"));

        let settings = load(ServeArgs {
            max_connections: Some("50".into()),
            mqtt_url: Some("mqtt://broker.lan:1883".into()),
            data_dir: Some("/srv/updraft".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(settings.max_connections_per_ip, 5);
        assert!(settings.mqtt.auth_hooks);
        assert_eq!(settings.database_url.expose(), "sqlite:///srv/updraft/updraft.db");
        let error = load(ServeArgs { max_connections: Some("50".into()), max_connections_per_ip: Some("51".into()), ..Default::default() })
            .unwrap_err();
        assert!(error.to_string().contains("UPDRAFT_MAX_CONNECTIONS (50)"), "{error}");
    }

    #[test]
    fn the_examples_of_env_example_are_valid_values() {
        let mut args = ServeArgs::default();
        for setting in SETTINGS {
            // Files and folders that must exist here, and the TLS pair, which needs both.
            let skip =
                ["signing_key_path", "compat_esp32fota_keys_dir", "tls_cert", "tls_key", "config", "tls_client_ca", "tls_client_crl"];
            if !setting.example.is_empty() && !skip.contains(&setting.name) {
                *args.field(setting.name).unwrap() = Some(setting.example.to_string());
            }
        }
        let settings = load(args).unwrap();
        assert!(matches!(settings.blob, BlobSettings::S3(_)));
    }

    #[test]
    fn numbers_are_checked_against_their_declared_bounds() {
        let cases = [
            ("device_offline_after_secs", "9", "must be between 10 and 2592000 seconds"),
            ("mqtt_max_inflight", "70000", "must be between 1 and 65535"),
            ("database_max_connections", "0", "must be at least 1"),
            ("image_max_concurrent", "1_025", "must be between 1 and 1024"),
            ("max_upload_bytes", "-1", "`-1` is not a whole number"),
            ("database_max_connections", "5000000000", "`5000000000` is not a whole number"),
        ];
        for (name, value, problem) in cases {
            let mut args = ServeArgs::default();
            *args.field(name).unwrap() = Some(value.into());
            let error = load(args).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!("invalid setting {} (--{}): {problem}", Setting::named(name).env(), Setting::named(name).flag())
            );
        }
        let settings = load(ServeArgs { image_max_concurrent: Some("1_024".into()), ..Default::default() }).unwrap();
        assert_eq!(settings.content.image_max_concurrent, 1024);
    }

    #[test]
    fn the_s3_settings_are_read_only_with_an_s3_blob_url() {
        let local = ServeArgs { s3_endpoint: Some("not a url".into()), s3_allow_http: Some("maybe".into()), ..Default::default() };
        assert!(load(local.clone()).is_ok());
        let error = load(ServeArgs { blob_url: Some("s3://firmware".into()), ..local }).unwrap_err();
        assert!(error.to_string().starts_with("invalid setting UPDRAFT_S3_ENDPOINT"), "{error}");
    }

    #[test]
    fn unknown_dotenv_keys_are_named_without_their_values() {
        let dir = tempfile::tempdir().unwrap();
        let dotenv_path = dir.path().join(".env");
        std::fs::write(
            &dotenv_path,
            "UPDRAFT_LISTEN=127.0.0.1:1\nUPDRAFT_MAX_UPLOD_BYTES=5\nOTA_SERVER_ADMIN_API_KEY=k\n\
             AWS_ACCESS_KEY_ID=hidden-value\nUPDRAFT_CONFIG=x.toml\n",
        )
        .unwrap();
        let settings = Settings::load_with_dotenv(&ServeArgs::default(), &dotenv_path).unwrap();
        let named = settings.unknown_names.join("\n");
        assert!(named.contains("UPDRAFT_MAX_UPLOD_BYTES (.env; did you mean UPDRAFT_MAX_UPLOAD_BYTES?)"), "{named}");
        assert!(named.contains("AWS_ACCESS_KEY_ID (.env"), "{named}");
        assert!(named.contains("UPDRAFT_CONFIG (.env"), "{named}");
        assert!(!named.contains("UPDRAFT_LISTEN ") && !named.contains("OTA_SERVER") && !named.contains("hidden-value"), "{named}");
        assert_eq!(settings.listen.to_string(), "127.0.0.1:1");
    }

    #[test]
    fn every_setting_has_a_distinct_name_a_doc_and_a_value_name() {
        let mut names = std::collections::HashSet::new();
        for setting in SETTINGS {
            assert!(names.insert(setting.name), "{} is declared twice", setting.name);
            assert!(!setting.summary().is_empty() && setting.value_name != "VALUE", "{} lacks a doc or a value name", setting.name);
            assert!(GROUPS.iter().any(|(title, _)| *title == setting.group), "{}: unknown group", setting.name);
            assert!(setting.default.is_empty() || setting.default_doc.is_empty(), "{}: a default and a described one", setting.name);
        }
    }
}

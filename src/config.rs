//! Settings: typed, validated, and layered.
//!
//! Precedence, lowest first: built-in defaults, the optional TOML file (`--config`),
//! `.env` in the working directory, `UPDRAFT_*` environment variables, command-line flags.
//! clap resolves flags and environment variables; this module fills what is still unset
//! from `.env`, then the TOML file, then the default, and parses every value into its type.
//! An invalid value produces one line naming the setting and the problem.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use crate::domain::device::Provisioning;
use crate::services::devices::DevicePolicy;
use crate::services::rollouts::RolloutPolicy;

/// Flags of `updraft serve`. Every flag also reads its `UPDRAFT_*` variable.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// Optional TOML file with settings (keys are the setting names below in lower case
    /// without the prefix, e.g. `listen = "0.0.0.0:8080"`).
    #[arg(long, env = "UPDRAFT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// HTTP listen address [default: 0.0.0.0:8080]
    #[arg(long, env = "UPDRAFT_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Folder for the embedded database and blobs [default: ./data]
    #[arg(long, env = "UPDRAFT_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<String>,
    /// Database URL: sqlite://FILE or postgres://user:pass@host/db [default: sqlite://<data dir>/updraft.db]
    #[arg(long, env = "UPDRAFT_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// Maximum database connections in the pool [default: 10]
    #[arg(long, env = "UPDRAFT_DATABASE_MAX_CONNECTIONS", value_name = "N")]
    pub database_max_connections: Option<String>,
    /// Blob store: a folder (path or file:// URL) or s3://bucket[/prefix] [default: <data dir>/blobs]
    #[arg(long, env = "UPDRAFT_BLOB_URL", value_name = "URL")]
    pub blob_url: Option<String>,
    /// Memory for caching small blobs (firmware up to 16 MiB) for downloads; 0 turns it off [default: 67108864]
    #[arg(long, env = "UPDRAFT_BLOB_CACHE_BYTES", value_name = "BYTES")]
    pub blob_cache_bytes: Option<String>,
    /// S3 endpoint for S3-compatible servers (MinIO, Ceph, ...) [default: AWS]
    #[arg(long, env = "UPDRAFT_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// S3 region [default: us-east-1]
    #[arg(long, env = "UPDRAFT_S3_REGION", value_name = "REGION")]
    pub s3_region: Option<String>,
    /// S3 access key id [default: $AWS_ACCESS_KEY_ID]
    #[arg(long, env = "UPDRAFT_S3_ACCESS_KEY_ID", value_name = "ID")]
    pub s3_access_key_id: Option<String>,
    /// S3 secret access key [default: $AWS_SECRET_ACCESS_KEY]
    #[arg(long, env = "UPDRAFT_S3_SECRET_ACCESS_KEY", value_name = "SECRET", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,
    /// Allow plain-HTTP S3 endpoints [default: true when the endpoint starts with http://]
    #[arg(long, env = "UPDRAFT_S3_ALLOW_HTTP", value_name = "BOOL")]
    pub s3_allow_http: Option<String>,
    /// Admin API key. When unset, the first start generates one, prints it once and stores only its hash
    #[arg(long, env = "UPDRAFT_ADMIN_API_KEY", value_name = "KEY", hide_env_values = true)]
    pub admin_api_key: Option<String>,
    /// Token Prometheus must send (`Authorization: Bearer`) to scrape /metrics, which shows fleet size and rates [default: none, /metrics is public]
    #[arg(long, env = "UPDRAFT_METRICS_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Base URL put into links handed to devices, e.g. https://ota.example.com [default: HTTP answers: the request's Host; MQTT offers: the listener's address, or this host's primary address when it listens on 0.0.0.0]
    #[arg(long, env = "UPDRAFT_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// Largest accepted upload in bytes [default: 4294967296]
    #[arg(long, env = "UPDRAFT_MAX_UPLOAD_BYTES", value_name = "BYTES")]
    pub max_upload_bytes: Option<String>,
    /// Most concurrent HTTP connections; more wait in the kernel's accept queue [default: 10000]
    #[arg(long, env = "UPDRAFT_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<String>,
    /// Most concurrent HTTP connections from one address (trusted proxies excepted); more are closed at once [default: a tenth of UPDRAFT_MAX_CONNECTIONS]
    #[arg(long, env = "UPDRAFT_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    pub max_connections_per_ip: Option<String>,
    /// Seconds a request body may send nothing before the request fails with 408 [default: 30]
    #[arg(long, env = "UPDRAFT_BODY_READ_TIMEOUT_SECS", value_name = "SECS")]
    pub body_read_timeout_secs: Option<String>,
    /// Least average rate of a request body once UPDRAFT_BODY_READ_TIMEOUT_SECS has passed, in bytes per second; slower uploads fail with 408 [default: 1024]
    #[arg(long, env = "UPDRAFT_BODY_MIN_BYTES_PER_SEC", value_name = "BYTES")]
    pub body_min_bytes_per_sec: Option<String>,
    /// Seconds in-flight requests get to finish after SIGTERM [default: 30]
    #[arg(long, env = "UPDRAFT_SHUTDOWN_TIMEOUT_SECS", value_name = "SECS")]
    pub shutdown_timeout_secs: Option<String>,
    /// Addresses and networks (comma-separated, e.g. 127.0.0.1,10.0.0.0/8) of reverse proxies whose X-Forwarded-For/-Proto/-Host are believed; the client is the right-most X-Forwarded-For entry that is not one of them [default: none]
    #[arg(long, env = "UPDRAFT_TRUSTED_PROXIES", value_name = "LIST")]
    pub trusted_proxies: Option<String>,
    /// PEM certificate chain; with --tls-key the listener speaks HTTPS
    #[arg(long, env = "UPDRAFT_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<String>,
    /// PEM private key for --tls-cert
    #[arg(long, env = "UPDRAFT_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<String>,
    /// Seconds of silence after which a device counts as offline [default: 600]
    #[arg(long, env = "UPDRAFT_DEVICE_OFFLINE_AFTER_SECS", value_name = "SECS")]
    pub device_offline_after_secs: Option<String>,
    /// Poll interval told to devices of products without their own [default: 3600]
    #[arg(long, env = "UPDRAFT_DEFAULT_POLL_INTERVAL_SECS", value_name = "SECS")]
    pub default_poll_interval_secs: Option<String>,
    /// Provisioning mode of products nobody configured: open, key or preregistered [default: open]
    #[arg(long, env = "UPDRAFT_DEFAULT_PROVISIONING", value_name = "MODE")]
    pub default_provisioning: Option<String>,
    /// Devices each replica keeps in its in-memory fleet index, ≈ 300 bytes each [default: 1000000]
    #[arg(long, env = "UPDRAFT_DEVICE_CACHE_ENTRIES", value_name = "N")]
    pub device_cache_entries: Option<String>,
    /// Most `last_seen` rows each replica writes per second (100-1000000); more wait in memory [default: 1000]
    #[arg(long, env = "UPDRAFT_PRESENCE_WRITES_PER_SEC", value_name = "N")]
    pub presence_writes_per_sec: Option<String>,
    /// Lifetime of pair keys [default: 600]
    #[arg(long, env = "UPDRAFT_PAIRING_TTL_SECS", value_name = "SECS")]
    pub pairing_ttl_secs: Option<String>,
    /// After a device reports a failed or rejected update, wait this long before offering the same build again [default: 3600]
    #[arg(long, env = "UPDRAFT_UPDATE_RETRY_AFTER_SECS", value_name = "SECS")]
    pub update_retry_after_secs: Option<String>,
    /// Lifetime of signed download links handed to devices [default: 86400]
    #[arg(long, env = "UPDRAFT_DOWNLOAD_URL_TTL_SECS", value_name = "SECS")]
    pub download_url_ttl_secs: Option<String>,
    /// Key file encrypting secret values in device configurations; created when missing [default: <data dir>/config.key]
    #[arg(long, env = "UPDRAFT_CONFIG_KEY_FILE", value_name = "FILE")]
    pub config_key_file: Option<String>,
    /// Serve GET /api/configs/{mac}.json without authentication, as seed 003 did (anyone who knows a MAC reads its configuration) [default: true]
    #[arg(long, env = "UPDRAFT_PUBLIC_CONFIG_FILES", value_name = "BOOL")]
    pub public_config_files: Option<String>,
    /// PEM RSA key (public, or private as seed 003 used) checking signed uploads to POST /api/assets; SIGNING_KEY_PATH is honoured too [default: none, uploads refused]
    #[arg(long, env = "UPDRAFT_SIGNING_KEY_PATH", value_name = "FILE")]
    pub signing_key_path: Option<String>,
    /// Hosts or networks (names, IPs, CIDRs, comma-separated) the image proxy may fetch from although they are private or loopback [default: none]
    #[arg(long, env = "UPDRAFT_IMAGE_FETCH_ALLOW_HOSTS", value_name = "LIST")]
    pub image_fetch_allow_hosts: Option<String>,
    /// Largest image the image proxy fetches or converts, in bytes [default: 10485760]
    #[arg(long, env = "UPDRAFT_IMAGE_FETCH_MAX_BYTES", value_name = "BYTES")]
    pub image_fetch_max_bytes: Option<String>,
    /// Time limit of one image fetch, redirects included [default: 10]
    #[arg(long, env = "UPDRAFT_IMAGE_FETCH_TIMEOUT_SECS", value_name = "SECS")]
    pub image_fetch_timeout_secs: Option<String>,
    /// Largest image, in pixels (width × height), the image proxy and conversions decode; read from the image's header before decoding [default: 16777216]
    #[arg(long, env = "UPDRAFT_IMAGE_MAX_PIXELS", value_name = "N")]
    pub image_max_pixels: Option<String>,
    /// Most image fetches and conversions at once; more are answered 503 with Retry-After [default: 4]
    #[arg(long, env = "UPDRAFT_IMAGE_MAX_CONCURRENT", value_name = "N")]
    pub image_max_concurrent: Option<String>,
    /// How often each replica evaluates rollouts: scheduled starts, time-outs, thresholds [default: 5]
    #[arg(long, env = "UPDRAFT_ROLLOUT_EVALUATE_SECS", value_name = "SECS")]
    pub rollout_evaluate_secs: Option<String>,
    /// Default time a device offered a rollout's release has to succeed or fail before it counts as timed out [default: 86400]
    #[arg(long, env = "UPDRAFT_ROLLOUT_DEVICE_DEADLINE_SECS", value_name = "SECS")]
    pub rollout_device_deadline_secs: Option<String>,
    /// How often the devices a running rollout targets are recounted [default: 300]
    #[arg(long, env = "UPDRAFT_ROLLOUT_RECOUNT_SECS", value_name = "SECS")]
    pub rollout_recount_secs: Option<String>,
    /// How long a completed rollout still offers its release to devices that were offline or joined late [default: 604800]
    #[arg(long, env = "UPDRAFT_ROLLOUT_CATCH_UP_SECS", value_name = "SECS")]
    pub rollout_catch_up_secs: Option<String>,
    /// Log filter, e.g. `info` or `info,updraft=debug` [default: info]
    #[arg(long, env = "UPDRAFT_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    /// Log format: text or json [default: text]
    #[arg(long, env = "UPDRAFT_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Serve the seed-001 "ESP32 OTA Update Server" protocol: /api/firmware and /admin/api/... [default: true]
    #[arg(long, env = "UPDRAFT_COMPAT_OTA_SERVER", value_name = "BOOL")]
    pub compat_ota_server: Option<String>,
    /// Serve GET /firmware/{filename} without authentication, as the seed-001 server did [default: true]
    #[arg(long, env = "UPDRAFT_COMPAT_OTA_SERVER_DOWNLOADS", value_name = "BOOL")]
    pub compat_ota_server_downloads: Option<String>,
    /// Shared secret of the seed-001 device tokens (X-Device-Auth); OTA_SERVER_SHARED_SECRET_KEY is read too
    #[arg(long, env = "UPDRAFT_COMPAT_SHARED_SECRET", value_name = "SECRET", hide_env_values = true)]
    pub compat_shared_secret: Option<String>,
    /// Extra admin key accepted by the seed-001 admin API (/admin/api); OTA_SERVER_ADMIN_API_KEY is read too [default: only the Updraft admin key]
    #[arg(long, env = "UPDRAFT_COMPAT_ADMIN_API_KEY", value_name = "KEY", hide_env_values = true)]
    pub compat_admin_api_key: Option<String>,
    /// Product of devices and builds of protocols that name none (seed 001, seed 002, Arduino, seed 004) [default: the only product, if there is one]
    #[arg(long, env = "UPDRAFT_COMPAT_DEFAULT_PRODUCT", value_name = "PRODUCT")]
    pub compat_default_product: Option<String>,
    /// Serve the seed-002 Cyberdeck protocol: GET /ota and /ota/info [default: true]
    #[arg(long, env = "UPDRAFT_COMPAT_CYBERDECK", value_name = "BOOL")]
    pub compat_cyberdeck: Option<String>,
    /// Serve Arduino HTTPUpdate (ESP32 and ESP8266 cores) at /api/v1/arduino/... [default: true]
    #[arg(long, env = "UPDRAFT_COMPAT_ARDUINO", value_name = "BOOL")]
    pub compat_arduino: Option<String>,
    /// Serve esp32FOTA manifests and images at /api/v1/esp32fota/... [default: true]
    #[arg(long, env = "UPDRAFT_COMPAT_ESP32FOTA", value_name = "BOOL")]
    pub compat_esp32fota: Option<String>,
    /// Folder of RSA private keys (<product>.pem) that sign esp32FOTA images of that product [default: none, unsigned]
    #[arg(long, env = "UPDRAFT_COMPAT_ESP32FOTA_KEYS_DIR", value_name = "DIR")]
    pub compat_esp32fota_keys_dir: Option<String>,
    /// Serve seed 004's GET /debug/provisioning, which hands a token to any unknown MAC of an open product (weak: see docs/CLIENT.md) [default: false]
    #[arg(long, env = "UPDRAFT_COMPAT_SEED004_DEBUG", value_name = "BOOL")]
    pub compat_seed004_debug: Option<String>,

    /// Run MQTT: the embedded broker, or the client of UPDRAFT_MQTT_URL [default: true]
    #[arg(long, env = "UPDRAFT_MQTT_ENABLED", value_name = "BOOL")]
    pub mqtt_enabled: Option<String>,
    /// Address of the embedded broker's MQTT listener (3.1.1 and 5.0) [default: 0.0.0.0:1883]
    #[arg(long, env = "UPDRAFT_MQTT_LISTEN", value_name = "ADDR")]
    pub mqtt_listen: Option<String>,
    /// Address of the MQTT-over-TLS listener, used when UPDRAFT_TLS_CERT is set [default: 0.0.0.0:8883]
    #[arg(long, env = "UPDRAFT_MQTT_TLS_LISTEN", value_name = "ADDR")]
    pub mqtt_tls_listen: Option<String>,
    /// Address of an MQTT-over-WebSocket listener (path /mqtt) [default: none]
    #[arg(long, env = "UPDRAFT_MQTT_WS_LISTEN", value_name = "ADDR")]
    pub mqtt_ws_listen: Option<String>,
    /// An external broker (mqtt://host:port or mqtts://host:port): turns the embedded broker off [default: none]
    #[arg(long, env = "UPDRAFT_MQTT_URL", value_name = "URL")]
    pub mqtt_url: Option<String>,
    /// Username of Updraft's connection to the external broker [default: updraft]
    #[arg(long, env = "UPDRAFT_MQTT_USERNAME", value_name = "NAME")]
    pub mqtt_username: Option<String>,
    /// Password of Updraft's connection to the external broker [default: none]
    #[arg(long, env = "UPDRAFT_MQTT_PASSWORD", value_name = "SECRET", hide_env_values = true)]
    pub mqtt_password: Option<String>,
    /// Serve the HTTP auth hooks for external brokers (mosquitto-go-auth, EMQX) [default: true with UPDRAFT_MQTT_URL, else false]
    #[arg(long, env = "UPDRAFT_MQTT_AUTH_HOOKS", value_name = "BOOL")]
    pub mqtt_auth_hooks: Option<String>,
    /// Most concurrent MQTT connections of the embedded broker [default: 100000]
    #[arg(long, env = "UPDRAFT_MQTT_MAX_CONNECTIONS", value_name = "N")]
    pub mqtt_max_connections: Option<String>,
    /// Largest MQTT packet accepted or sent, in bytes; seed-000 firmware travels in one packet [default: 4194304]
    #[arg(long, env = "UPDRAFT_MQTT_MAX_PACKET_BYTES", value_name = "BYTES")]
    pub mqtt_max_packet_bytes: Option<String>,
    /// QoS 1/2 messages in flight per client [default: 16]
    #[arg(long, env = "UPDRAFT_MQTT_MAX_INFLIGHT", value_name = "N")]
    pub mqtt_max_inflight: Option<String>,
    /// Messages queued per client (offline or slow) before new ones are dropped [default: 1000]
    #[arg(long, env = "UPDRAFT_MQTT_MAX_QUEUED", value_name = "N")]
    pub mqtt_max_queued: Option<String>,
    /// How long a disconnected persistent session (clean session 0) is kept, in seconds [default: 7200]
    #[arg(long, env = "UPDRAFT_MQTT_SESSION_EXPIRY_SECS", value_name = "SECS")]
    pub mqtt_session_expiry_secs: Option<String>,
    /// Every how many seconds offers are re-evaluated for connected devices (time windows, schedules) [default: 60]
    #[arg(long, env = "UPDRAFT_MQTT_RESYNC_SECS", value_name = "SECS")]
    pub mqtt_resync_secs: Option<String>,
    /// Seconds a new MQTT connection has to send its CONNECT before it is closed [default: 10]
    #[arg(long, env = "UPDRAFT_MQTT_HANDSHAKE_TIMEOUT_SECS", value_name = "SECS")]
    pub mqtt_handshake_timeout_secs: Option<String>,
}

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
        ConfigError { env: env_name(name), flag: name.replace('_', "-"), problem: problem.into() }
    }
}

fn env_name(name: &str) -> String {
    format!("UPDRAFT_{}", name.to_ascii_uppercase())
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
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
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

/// Fully parsed settings of a running server.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub database_max_connections: u32,
    pub blob: BlobSettings,
    pub blob_cache_bytes: usize,
    pub admin_api_key: Option<String>,
    /// Scrapes of `/metrics` must carry it, when set.
    pub metrics_token: Option<String>,
    pub public_url: Option<Url>,
    pub max_upload_bytes: u64,
    pub max_connections: usize,
    /// Most connections of one address (trusted proxies excepted).
    pub max_connections_per_ip: usize,
    /// Longest silence of a request body (see `http::body_guard`).
    pub body_read_timeout: Duration,
    /// Least average rate of a request body after `body_read_timeout`.
    pub body_min_bytes_per_sec: u64,
    pub shutdown_timeout: Duration,
    /// Reverse proxies whose forwarding headers are believed (see `http::forwarded`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub tls: Option<TlsSettings>,
    pub log: String,
    pub log_format: LogFormat,
    pub devices: DevicePolicy,
    pub content: ContentSettings,
    pub rollouts: RolloutPolicy,
    pub compat: CompatSettings,
    pub mqtt: MqttSettings,
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
        if compat.seed004_debug {
            weak.push(("UPDRAFT_COMPAT_SEED004_DEBUG", "GET /debug/provisioning hands a token to any unknown MAC of an open product"));
        }
        weak
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
    pub password: Option<String>,
    pub auth_hooks: bool,
    pub max_connections: usize,
    pub max_packet_bytes: u32,
    pub max_inflight: u16,
    pub max_queued: usize,
    pub session_expiry: Duration,
    pub resync_every: Duration,
    /// How long a new connection has to send its CONNECT (embedded broker).
    pub handshake_timeout: Duration,
}

impl Default for MqttSettings {
    fn default() -> Self {
        MqttSettings {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 1883)),
            tls_listen: SocketAddr::from(([0, 0, 0, 0], 8883)),
            ws_listen: None,
            url: None,
            username: "updraft".into(),
            password: None,
            auth_hooks: false,
            max_connections: 100_000,
            max_packet_bytes: 4 << 20,
            max_inflight: 16,
            max_queued: 1000,
            session_expiry: Duration::from_secs(7200),
            resync_every: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Settings of the compatibility protocols (docs/CLIENT.md). Every surface is on by default.
#[derive(Debug, Clone)]
pub struct CompatSettings {
    /// Seed 001: `/api/firmware`, `/admin/api/...`.
    pub ota_server: bool,
    /// Seed 001: unauthenticated `GET /firmware/{filename}`.
    pub ota_server_downloads: bool,
    /// Seed 001: the fleet-wide secret of the djb2 device tokens.
    pub shared_secret: Option<String>,
    /// Seed 001: an admin key accepted on `/admin/api` besides Updraft's own.
    pub admin_api_key: Option<String>,
    pub default_product: Option<String>,
    /// Seed 002: `/ota`, `/ota/info`.
    pub cyberdeck: bool,
    pub arduino: bool,
    pub esp32fota: bool,
    pub esp32fota_keys_dir: Option<PathBuf>,
    /// Seed 004: `/debug/provisioning` (off by default).
    pub seed004_debug: bool,
}

impl Default for CompatSettings {
    fn default() -> Self {
        CompatSettings {
            ota_server: true,
            ota_server_downloads: true,
            shared_secret: None,
            admin_api_key: None,
            default_product: None,
            cyberdeck: true,
            arduino: true,
            esp32fota: true,
            esp32fota_keys_dir: None,
            seed004_debug: false,
        }
    }
}

/// The names of every setting, as used in the TOML file.
const SETTING_NAMES: &[&str] = &[
    "listen",
    "data_dir",
    "database_url",
    "database_max_connections",
    "blob_url",
    "blob_cache_bytes",
    "s3_endpoint",
    "s3_region",
    "s3_access_key_id",
    "s3_secret_access_key",
    "s3_allow_http",
    "admin_api_key",
    "metrics_token",
    "public_url",
    "max_upload_bytes",
    "max_connections",
    "max_connections_per_ip",
    "body_read_timeout_secs",
    "body_min_bytes_per_sec",
    "shutdown_timeout_secs",
    "trusted_proxies",
    "tls_cert",
    "tls_key",
    "log",
    "log_format",
    "device_offline_after_secs",
    "default_poll_interval_secs",
    "default_provisioning",
    "pairing_ttl_secs",
    "device_cache_entries",
    "presence_writes_per_sec",
    "update_retry_after_secs",
    "download_url_ttl_secs",
    "rollout_evaluate_secs",
    "rollout_device_deadline_secs",
    "rollout_recount_secs",
    "rollout_catch_up_secs",
    "compat_ota_server",
    "compat_ota_server_downloads",
    "compat_shared_secret",
    "compat_admin_api_key",
    "compat_default_product",
    "compat_cyberdeck",
    "compat_arduino",
    "compat_esp32fota",
    "compat_esp32fota_keys_dir",
    "compat_seed004_debug",
    "config_key_file",
    "public_config_files",
    "signing_key_path",
    "image_fetch_allow_hosts",
    "image_fetch_max_bytes",
    "image_fetch_timeout_secs",
    "image_max_pixels",
    "image_max_concurrent",
    "mqtt_enabled",
    "mqtt_listen",
    "mqtt_tls_listen",
    "mqtt_ws_listen",
    "mqtt_url",
    "mqtt_username",
    "mqtt_password",
    "mqtt_auth_hooks",
    "mqtt_max_connections",
    "mqtt_max_packet_bytes",
    "mqtt_max_inflight",
    "mqtt_max_queued",
    "mqtt_session_expiry_secs",
    "mqtt_resync_secs",
    "mqtt_handshake_timeout_secs",
];

/// Variables of the seed-001 server, read as aliases of Updraft settings (environment or `.env`).
const ALIASES: &[(&str, &str)] =
    &[("compat_shared_secret", "OTA_SERVER_SHARED_SECRET_KEY"), ("compat_admin_api_key", "OTA_SERVER_ADMIN_API_KEY")];

/// The lower layers: `.env` entries and TOML file entries, by setting name.
struct Layers {
    dotenv: BTreeMap<String, String>,
    file: BTreeMap<String, String>,
}

impl Layers {
    fn load(config_path: Option<&Path>, dotenv_path: &Path) -> Result<Layers, ConfigError> {
        let mut dotenv = BTreeMap::new();
        if dotenv_path.exists() {
            let entries = dotenvy::from_path_iter(dotenv_path)
                .map_err(|e| ConfigError::new("config", format!("cannot read {}: {e}", dotenv_path.display())))?;
            for entry in entries {
                let (key, value) = entry.map_err(|e| ConfigError::new("config", format!("cannot parse {}: {e}", dotenv_path.display())))?;
                if let Some(name) = key.strip_prefix("UPDRAFT_") {
                    dotenv.insert(name.to_ascii_lowercase(), value);
                } else if let Some((name, _)) = ALIASES.iter().find(|(_, alias)| *alias == key) {
                    // An alias never overrides the setting's own name.
                    dotenv.entry(name.to_string()).or_insert(value);
                }
            }
        }
        let mut file = BTreeMap::new();
        if let Some(path) = config_path {
            let text =
                std::fs::read_to_string(path).map_err(|e| ConfigError::new("config", format!("cannot read {}: {e}", path.display())))?;
            let table: toml::Table =
                text.parse().map_err(|e: toml::de::Error| ConfigError::new("config", format!("{}: {}", path.display(), e.message())))?;
            for (key, value) in table {
                if !SETTING_NAMES.contains(&key.as_str()) {
                    return Err(ConfigError::new("config", format!("{}: unknown setting `{key}`", path.display())));
                }
                let value = match value {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    other => {
                        return Err(ConfigError::new(&key, format!("expected a string, number or boolean, got {other}")));
                    }
                };
                file.insert(key, value);
            }
        }
        Ok(Layers { dotenv, file })
    }

    /// The value of a setting: the flag/env value if given, else `.env`, else the file.
    fn get(&self, name: &str, from_cli: &Option<String>) -> Option<String> {
        from_cli
            .clone()
            .or_else(|| self.dotenv.get(name).cloned())
            .or_else(|| self.file.get(name).cloned())
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }
}

impl Settings {
    /// Loads settings for `updraft serve` from all layers (using `.env` in the working directory).
    pub fn load(args: &ServeArgs) -> Result<Settings, ConfigError> {
        Settings::load_with_dotenv(args, Path::new(".env"))
    }

    pub fn load_with_dotenv(args: &ServeArgs, dotenv_path: &Path) -> Result<Settings, ConfigError> {
        let layers = Layers::load(args.config.as_deref(), dotenv_path)?;
        let get = |name: &str, cli: &Option<String>| layers.get(name, cli);

        let listen = match get("listen", &args.listen) {
            Some(v) => {
                v.parse::<SocketAddr>().map_err(|_| ConfigError::new("listen", format!("`{v}` is not an address like 0.0.0.0:8080")))?
            }
            None => SocketAddr::from(([0, 0, 0, 0], 8080)),
        };
        let data_dir = PathBuf::from(get("data_dir", &args.data_dir).unwrap_or_else(|| "./data".into()));

        let database_url = match get("database_url", &args.database_url) {
            Some(url) => {
                if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(ConfigError::new("database_url", format!("`{}` is not a sqlite:// or postgres:// URL", redact_url(&url))));
                }
                url
            }
            None => format!("sqlite://{}", data_dir.join("updraft.db").display()),
        };
        let database_max_connections =
            parse_number("database_max_connections", get("database_max_connections", &args.database_max_connections), 10u32)?;
        if database_max_connections == 0 {
            return Err(ConfigError::new("database_max_connections", "must be at least 1"));
        }

        let blob = parse_blob(&get, args, &data_dir)?;
        let blob_cache_bytes = parse_number("blob_cache_bytes", get("blob_cache_bytes", &args.blob_cache_bytes), 64usize << 20)?;

        let admin_api_key = get("admin_api_key", &args.admin_api_key);
        if let Some(key) = &admin_api_key
            && key.len() < 16
        {
            return Err(ConfigError::new("admin_api_key", "must be at least 16 characters long"));
        }
        let metrics_token = get("metrics_token", &args.metrics_token);
        if let Some(token) = &metrics_token
            && token.len() < 16
        {
            return Err(ConfigError::new("metrics_token", "must be at least 16 characters long"));
        }
        let public_url = match get("public_url", &args.public_url) {
            Some(v) => {
                let url = Url::parse(&v).map_err(|e| ConfigError::new("public_url", format!("`{v}` is not a URL: {e}")))?;
                if url.scheme() != "http" && url.scheme() != "https" {
                    return Err(ConfigError::new("public_url", format!("`{v}` must start with http:// or https://")));
                }
                if url.query().is_some() || url.fragment().is_some() {
                    return Err(ConfigError::new("public_url", "must not have a query or fragment"));
                }
                Some(url)
            }
            None => None,
        };
        let max_upload_bytes = parse_number("max_upload_bytes", get("max_upload_bytes", &args.max_upload_bytes), 4u64 << 30)?;
        if max_upload_bytes == 0 {
            return Err(ConfigError::new("max_upload_bytes", "must be at least 1"));
        }
        let max_connections = parse_number("max_connections", get("max_connections", &args.max_connections), 10_000usize)?;
        if max_connections == 0 {
            return Err(ConfigError::new("max_connections", "must be at least 1"));
        }
        let max_connections_per_ip = parse_number(
            "max_connections_per_ip",
            get("max_connections_per_ip", &args.max_connections_per_ip),
            (max_connections / 10).max(1),
        )?;
        if max_connections_per_ip == 0 || max_connections_per_ip > max_connections {
            return Err(ConfigError::new(
                "max_connections_per_ip",
                format!("must be between 1 and UPDRAFT_MAX_CONNECTIONS ({max_connections})"),
            ));
        }
        let body_read_timeout_secs =
            parse_number("body_read_timeout_secs", get("body_read_timeout_secs", &args.body_read_timeout_secs), 30u64)?;
        if !(1..=3600).contains(&body_read_timeout_secs) {
            return Err(ConfigError::new("body_read_timeout_secs", "must be between 1 and 3600 seconds"));
        }
        let body_read_timeout = Duration::from_secs(body_read_timeout_secs);
        let body_min_bytes_per_sec =
            parse_number("body_min_bytes_per_sec", get("body_min_bytes_per_sec", &args.body_min_bytes_per_sec), 1024u64)?;
        let shutdown_timeout =
            Duration::from_secs(parse_number("shutdown_timeout_secs", get("shutdown_timeout_secs", &args.shutdown_timeout_secs), 30u64)?);
        let trusted_proxies = parse_networks("trusted_proxies", get("trusted_proxies", &args.trusted_proxies))?;
        if let Some(old) = layers.get("trust_proxy_headers", &std::env::var("UPDRAFT_TRUST_PROXY_HEADERS").ok()) {
            return Err(ConfigError::new(
                "trusted_proxies",
                format!(
                    "UPDRAFT_TRUST_PROXY_HEADERS={old} was replaced by UPDRAFT_TRUSTED_PROXIES: list your proxies' addresses \
                     (e.g. 127.0.0.1 for a proxy on this host) and remove the old setting"
                ),
            ));
        }
        let tls = match (get("tls_cert", &args.tls_cert), get("tls_key", &args.tls_key)) {
            (Some(cert), Some(key)) => {
                for (name, path) in [("tls_cert", &cert), ("tls_key", &key)] {
                    if !Path::new(path).is_file() {
                        return Err(ConfigError::new(name, format!("file `{path}` does not exist")));
                    }
                }
                Some(TlsSettings { cert: cert.into(), key: key.into() })
            }
            (Some(_), None) => return Err(ConfigError::new("tls_key", "is required when UPDRAFT_TLS_CERT is set")),
            (None, Some(_)) => return Err(ConfigError::new("tls_cert", "is required when UPDRAFT_TLS_KEY is set")),
            (None, None) => None,
        };
        let log = get("log", &args.log).unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&log).is_err() {
            return Err(ConfigError::new("log", format!("`{log}` is not a log filter such as `info` or `info,updraft=debug`")));
        }
        let log_format = match get("log_format", &args.log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(ConfigError::new("log_format", format!("`{other}` is not one of: text, json"))),
        };

        let secs = |name: &str, value: Option<String>, default: u64, min: u64, max: u64| -> Result<Duration, ConfigError> {
            let n = parse_number(name, value, default)?;
            if !(min..=max).contains(&n) {
                return Err(ConfigError::new(name, format!("must be between {min} and {max} seconds")));
            }
            Ok(Duration::from_secs(n))
        };
        let devices = DevicePolicy {
            offline_after: secs(
                "device_offline_after_secs",
                get("device_offline_after_secs", &args.device_offline_after_secs),
                600,
                10,
                30 * 86400,
            )?,
            default_poll_interval_s: secs(
                "default_poll_interval_secs",
                get("default_poll_interval_secs", &args.default_poll_interval_secs),
                3600,
                10,
                7 * 86400,
            )?
            .as_secs() as u32,
            default_provisioning: match get("default_provisioning", &args.default_provisioning) {
                None => Provisioning::Open,
                Some(v) => Provisioning::parse(&v)
                    .map_err(|_| ConfigError::new("default_provisioning", format!("`{v}` is not one of: open, key, preregistered")))?,
            },
            pairing_ttl: secs("pairing_ttl_secs", get("pairing_ttl_secs", &args.pairing_ttl_secs), 600, 30, 86400)?,
            retry_failed_after: secs(
                "update_retry_after_secs",
                get("update_retry_after_secs", &args.update_retry_after_secs),
                3600,
                0,
                30 * 86400,
            )?,
            cache_entries: parse_number("device_cache_entries", get("device_cache_entries", &args.device_cache_entries), 1_000_000usize)?,
            presence_writes_per_sec: {
                let n = parse_number("presence_writes_per_sec", get("presence_writes_per_sec", &args.presence_writes_per_sec), 1_000usize)?;
                if !(100..=1_000_000).contains(&n) {
                    return Err(ConfigError::new("presence_writes_per_sec", format!("`{n}` is not between 100 and 1000000")));
                }
                n
            },
            download_url_ttl: secs(
                "download_url_ttl_secs",
                get("download_url_ttl_secs", &args.download_url_ttl_secs),
                86400,
                60,
                30 * 86400,
            )?,
        };

        let rollouts = RolloutPolicy {
            evaluate_every: secs("rollout_evaluate_secs", get("rollout_evaluate_secs", &args.rollout_evaluate_secs), 5, 1, 3600)?,
            device_deadline: secs(
                "rollout_device_deadline_secs",
                get("rollout_device_deadline_secs", &args.rollout_device_deadline_secs),
                86400,
                60,
                30 * 86400,
            )?,
            recount_every: secs("rollout_recount_secs", get("rollout_recount_secs", &args.rollout_recount_secs), 300, 1, 86400)?,
            catch_up: secs("rollout_catch_up_secs", get("rollout_catch_up_secs", &args.rollout_catch_up_secs), 7 * 86400, 1, 365 * 86400)?,
        };

        let compat = parse_compat(&get, args)?;
        let content = parse_content(&get, args, &data_dir)?;
        let mqtt = parse_mqtt(&get, args)?;

        Ok(Settings {
            compat,
            mqtt,
            devices,
            content,
            rollouts,
            listen,
            data_dir,
            database_url,
            database_max_connections,
            blob,
            blob_cache_bytes,
            admin_api_key,
            metrics_token,
            public_url,
            max_upload_bytes,
            max_connections,
            max_connections_per_ip,
            body_read_timeout,
            body_min_bytes_per_sec,
            shutdown_timeout,
            trusted_proxies,
            tls,
            log,
            log_format,
        })
    }
}

fn parse_mqtt(get: &dyn Fn(&str, &Option<String>) -> Option<String>, args: &ServeArgs) -> Result<MqttSettings, ConfigError> {
    let defaults = MqttSettings::default();
    let address = |name: &str, value: &Option<String>, default: SocketAddr| match get(name, value) {
        Some(v) => v.parse::<SocketAddr>().map_err(|_| ConfigError::new(name, format!("`{v}` is not an address like 0.0.0.0:1883"))),
        None => Ok(default),
    };
    let bounded = |name: &str, value: &Option<String>, default: u64, min: u64, max: u64| -> Result<u64, ConfigError> {
        let n = parse_number(name, get(name, value), default)?;
        if !(min..=max).contains(&n) {
            return Err(ConfigError::new(name, format!("must be between {min} and {max}")));
        }
        Ok(n)
    };
    let url = match get("mqtt_url", &args.mqtt_url) {
        Some(text) => {
            let url = Url::parse(&text).map_err(|_| ConfigError::new("mqtt_url", format!("`{}` is not a URL", redact_url(&text))))?;
            if !matches!(url.scheme(), "mqtt" | "tcp" | "mqtts" | "ssl") || url.host_str().is_none() {
                return Err(ConfigError::new("mqtt_url", "must look like mqtt://host:1883 or mqtts://host:8883"));
            }
            Some(url)
        }
        None => None,
    };
    let ws_listen = match get("mqtt_ws_listen", &args.mqtt_ws_listen) {
        Some(_) => Some(address("mqtt_ws_listen", &args.mqtt_ws_listen, defaults.listen)?),
        None => None,
    };
    Ok(MqttSettings {
        enabled: parse_bool("mqtt_enabled", get("mqtt_enabled", &args.mqtt_enabled), true)?,
        listen: address("mqtt_listen", &args.mqtt_listen, defaults.listen)?,
        tls_listen: address("mqtt_tls_listen", &args.mqtt_tls_listen, defaults.tls_listen)?,
        ws_listen,
        auth_hooks: parse_bool("mqtt_auth_hooks", get("mqtt_auth_hooks", &args.mqtt_auth_hooks), url.is_some())?,
        url,
        username: get("mqtt_username", &args.mqtt_username).unwrap_or(defaults.username),
        password: get("mqtt_password", &args.mqtt_password),
        max_connections: bounded("mqtt_max_connections", &args.mqtt_max_connections, 100_000, 1, 10_000_000)? as usize,
        max_packet_bytes: bounded("mqtt_max_packet_bytes", &args.mqtt_max_packet_bytes, 4 << 20, 1024, 256 << 20)? as u32,
        max_inflight: bounded("mqtt_max_inflight", &args.mqtt_max_inflight, 16, 1, 65535)? as u16,
        max_queued: bounded("mqtt_max_queued", &args.mqtt_max_queued, 1000, 1, 1_000_000)? as usize,
        session_expiry: Duration::from_secs(bounded("mqtt_session_expiry_secs", &args.mqtt_session_expiry_secs, 7200, 0, 30 * 86400)?),
        resync_every: Duration::from_secs(bounded("mqtt_resync_secs", &args.mqtt_resync_secs, 60, 1, 86400)?),
        handshake_timeout: Duration::from_secs(bounded("mqtt_handshake_timeout_secs", &args.mqtt_handshake_timeout_secs, 10, 1, 300)?),
    })
}

fn parse_compat(get: &dyn Fn(&str, &Option<String>) -> Option<String>, args: &ServeArgs) -> Result<CompatSettings, ConfigError> {
    let flag = |name: &str, value: &Option<String>| parse_bool(name, get(name, value), true);
    // The seed-001 variable names, from the real environment (a `.env` entry was mapped above).
    let alias = |name: &str, value: &Option<String>| {
        get(name, value).or_else(|| {
            let (_, alias) = ALIASES.iter().find(|(setting, _)| *setting == name)?;
            std::env::var(alias).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
        })
    };
    let default_product = get("compat_default_product", &args.compat_default_product);
    if let Some(product) = &default_product {
        crate::domain::firmware::Product::parse(product).map_err(|e| ConfigError::new("compat_default_product", e.to_string()))?;
    }
    let esp32fota_keys_dir = get("compat_esp32fota_keys_dir", &args.compat_esp32fota_keys_dir).map(PathBuf::from);
    if let Some(dir) = &esp32fota_keys_dir
        && !dir.is_dir()
    {
        return Err(ConfigError::new("compat_esp32fota_keys_dir", format!("`{}` is not a folder", dir.display())));
    }
    Ok(CompatSettings {
        ota_server: flag("compat_ota_server", &args.compat_ota_server)?,
        ota_server_downloads: flag("compat_ota_server_downloads", &args.compat_ota_server_downloads)?,
        shared_secret: alias("compat_shared_secret", &args.compat_shared_secret),
        admin_api_key: alias("compat_admin_api_key", &args.compat_admin_api_key),
        default_product,
        cyberdeck: flag("compat_cyberdeck", &args.compat_cyberdeck)?,
        arduino: flag("compat_arduino", &args.compat_arduino)?,
        esp32fota: flag("compat_esp32fota", &args.compat_esp32fota)?,
        esp32fota_keys_dir,
        seed004_debug: parse_bool("compat_seed004_debug", get("compat_seed004_debug", &args.compat_seed004_debug), false)?,
    })
}

fn parse_blob(
    get: &dyn Fn(&str, &Option<String>) -> Option<String>,
    args: &ServeArgs,
    data_dir: &Path,
) -> Result<BlobSettings, ConfigError> {
    let Some(blob_url) = get("blob_url", &args.blob_url) else {
        return Ok(BlobSettings::Local { root: data_dir.join("blobs") });
    };
    if let Some(rest) = blob_url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(ConfigError::new("blob_url", format!("`{blob_url}` has no bucket name (expected s3://bucket[/prefix])")));
        }
        let endpoint = get("s3_endpoint", &args.s3_endpoint);
        if let Some(endpoint) = &endpoint {
            let parsed = Url::parse(endpoint).map_err(|e| ConfigError::new("s3_endpoint", format!("`{endpoint}` is not a URL: {e}")))?;
            if parsed.scheme() != "http" && parsed.scheme() != "https" {
                return Err(ConfigError::new("s3_endpoint", format!("`{endpoint}` must start with http:// or https://")));
            }
        }
        let default_allow_http = endpoint.as_deref().is_some_and(|e| e.starts_with("http://"));
        let allow_http = parse_bool("s3_allow_http", get("s3_allow_http", &args.s3_allow_http), default_allow_http)?;
        let region = get("s3_region", &args.s3_region)
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .or_else(|| std::env::var("AWS_REGION").ok())
            .unwrap_or_else(|| "us-east-1".into());
        let access_key_id = get("s3_access_key_id", &args.s3_access_key_id).or_else(|| std::env::var("AWS_ACCESS_KEY_ID").ok());
        let secret_access_key =
            get("s3_secret_access_key", &args.s3_secret_access_key).or_else(|| std::env::var("AWS_SECRET_ACCESS_KEY").ok());
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

fn parse_content(
    get: &dyn Fn(&str, &Option<String>) -> Option<String>,
    args: &ServeArgs,
    data_dir: &Path,
) -> Result<ContentSettings, ConfigError> {
    let config_key_file = get("config_key_file", &args.config_key_file).map(PathBuf::from).unwrap_or_else(|| data_dir.join("config.key"));
    let public_config_files = parse_bool("public_config_files", get("public_config_files", &args.public_config_files), true)?;
    // Seed 003 named it SIGNING_KEY_PATH; that name is honoured below every UPDRAFT_ layer.
    let signing_key_path = get("signing_key_path", &args.signing_key_path)
        .or_else(|| std::env::var("SIGNING_KEY_PATH").ok().filter(|v| !v.trim().is_empty()))
        .map(PathBuf::from);
    if let Some(path) = &signing_key_path
        && !path.is_file()
    {
        return Err(ConfigError::new("signing_key_path", format!("file `{}` does not exist", path.display())));
    }
    let image_fetch_allow_hosts: Vec<String> = get("image_fetch_allow_hosts", &args.image_fetch_allow_hosts)
        .map(|list| list.split(',').map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()).collect())
        .unwrap_or_default();
    for entry in &image_fetch_allow_hosts {
        if let Some((net, bits)) = entry.split_once('/') {
            let valid = net
                .parse::<std::net::IpAddr>()
                .ok()
                .zip(bits.parse::<u8>().ok())
                .is_some_and(|(ip, bits)| bits <= if ip.is_ipv4() { 32 } else { 128 });
            if !valid {
                return Err(ConfigError::new("image_fetch_allow_hosts", format!("`{entry}` is not a network like 10.0.0.0/8")));
            }
        }
    }
    let image_fetch_max_bytes =
        parse_number("image_fetch_max_bytes", get("image_fetch_max_bytes", &args.image_fetch_max_bytes), 10u64 << 20)?;
    if !(1024..=(1u64 << 30)).contains(&image_fetch_max_bytes) {
        return Err(ConfigError::new("image_fetch_max_bytes", "must be between 1024 and 1073741824"));
    }
    let timeout_secs = parse_number("image_fetch_timeout_secs", get("image_fetch_timeout_secs", &args.image_fetch_timeout_secs), 10u64)?;
    if !(1..=300).contains(&timeout_secs) {
        return Err(ConfigError::new("image_fetch_timeout_secs", "must be between 1 and 300 seconds"));
    }
    let image_max_pixels = parse_number("image_max_pixels", get("image_max_pixels", &args.image_max_pixels), 16_777_216u64)?;
    if !(1..=(1u64 << 28)).contains(&image_max_pixels) {
        return Err(ConfigError::new("image_max_pixels", "must be between 1 and 268435456"));
    }
    let image_max_concurrent = parse_number("image_max_concurrent", get("image_max_concurrent", &args.image_max_concurrent), 4usize)?;
    if !(1..=1024).contains(&image_max_concurrent) {
        return Err(ConfigError::new("image_max_concurrent", "must be between 1 and 1024"));
    }
    Ok(ContentSettings {
        config_key_file,
        public_config_files,
        signing_key_path,
        image_fetch_allow_hosts,
        image_fetch_max_bytes,
        image_fetch_timeout: Duration::from_secs(timeout_secs),
        image_max_pixels,
        image_max_concurrent,
    })
}

/// A comma-separated list of addresses and networks (`10.0.0.0/8`); an address alone is a
/// network of one.
fn parse_networks(name: &str, value: Option<String>) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    let Some(list) = value else { return Ok(Vec::new()) };
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry
                .parse::<ipnet::IpNet>()
                .map(|net| net.trunc())
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| ConfigError::new(name, format!("`{entry}` is not an address or a network like 10.0.0.0/8")))
        })
        .collect()
}

fn parse_number<T: std::str::FromStr>(name: &str, value: Option<String>, default: T) -> Result<T, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => v.replace('_', "").parse::<T>().map_err(|_| ConfigError::new(name, format!("`{v}` is not a whole number"))),
    }
}

fn parse_bool(name: &str, value: Option<String>, default: bool) -> Result<bool, ConfigError> {
    match value.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => Ok(default),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(other) => Err(ConfigError::new(name, format!("`{other}` is not a boolean (true/false)"))),
    }
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
        assert_eq!(settings.database_url, "sqlite://./data/updraft.db");
        assert!(matches!(settings.blob, BlobSettings::Local { ref root } if root == Path::new("./data/blobs")));
        assert_eq!(settings.max_upload_bytes, 4 << 30);
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
        assert_eq!(compat.shared_secret.as_deref(), Some("from-alias"));
        assert_eq!(compat.admin_api_key.as_deref(), Some("own-name"));
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
}

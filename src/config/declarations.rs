//! Every setting of Updraft, declared once. To add one, add an entry here and use its value in
//! `Settings::from_sources` (src/config/mod.rs); the flag, the environment variable, the TOML
//! key, `--help`, `.env.example` and the table in docs/DEPLOYMENT.md follow (regenerate the two
//! files with `UPDRAFT_BLESS=1 cargo nextest run --lib settings_docs`).
//!
//! An entry is `/// doc` then `name: Kind { key: value, ... }`:
//! - the doc's first paragraph is the summary (`--help`, the docs table); the rest explains
//!   more in `.env.example`;
//! - the kind (src/config/kinds.rs) says how the text is parsed and what type it becomes;
//!   `Option<Kind>` when the setting may stay unset;
//! - the keys are the fields of `Setting` (src/config/setting.rs): `value_name`, `default`
//!   (as an operator writes it), `default_doc` (when the default depends on other settings),
//!   `min`/`max`, `example`, `alias`, `fallbacks`.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::kinds::{
    BaseUrl, BrokerUrl, DatabaseUrl, Deferred, Endpoint, ExistingFile, ExistingFolder, Hosts, LogFilter, Networks, Origins, ProductName,
    Secret, Secs, Token,
};
use super::setting::{Setting, settings};
use super::{ClientIdentity, LogFormat};
use crate::domain::device::Provisioning;

const DAY: u64 = 86400;

/// The TOML file: from the command line or the environment only, since it names where the
/// other settings may come from.
const CONFIG: Setting = Setting {
    name: "config",
    group: "Configuration file",
    doc: "Optional TOML file with settings; its keys are the setting names in lower case without the prefix, e.g. \
          `listen = \"0.0.0.0:8080\"` or `max_upload_bytes = 1073741824`.\n\n\
          Give it as a real environment variable or as a flag: `.env` is read only for the other settings.",
    value_name: "FILE",
    example: "/etc/updraft/updraft.toml",
    layered: false,
    ..Setting::NONE
};

settings! {
    group "HTTP listener" {
        /// Address and port of the HTTP API (devices and operators).
        listen: SocketAddr { value_name: "ADDR", default: "0.0.0.0:8080" }

        /// PEM certificate chain; with UPDRAFT_TLS_KEY the listener speaks HTTPS instead of
        /// plain HTTP.
        ///
        /// Not needed behind a proxy that terminates TLS.
        tls_cert: Option<PathBuf> { value_name: "FILE", default_doc: "none (plain HTTP)", example: "/etc/updraft/tls/fullchain.pem" }

        /// PEM private key of UPDRAFT_TLS_CERT.
        tls_key: Option<PathBuf> { value_name: "FILE", default_doc: "none (plain HTTP)", example: "/etc/updraft/tls/privkey.pem" }

        /// Base URL put into links handed to devices (firmware downloads, ...), e.g.
        /// `https://ota.example.com`.
        ///
        /// Set it when devices reach the server through a proxy or a name other than the Host
        /// they send, and in a container. Start-up logs the base URL of MQTT offers ("devices are
        /// given download URLs under ...").
        public_url: Option<BaseUrl> {
            value_name: "URL",
            default_doc: "HTTP answers: the request's `Host`; MQTT offers: the HTTP listener's address, or this host's \
                          primary address when it listens on 0.0.0.0",
            example: "https://ota.example.com",
        }

        /// Addresses and networks (comma-separated, e.g. `127.0.0.1,10.0.0.0/8`) of your reverse
        /// proxies: only their `X-Forwarded-For`/`-Proto`/`-Host` are believed.
        ///
        /// The client is the right-most X-Forwarded-For entry that is not one of them, so what a
        /// client writes into that header itself changes nothing (see deployment/nginx.conf). It
        /// replaces UPDRAFT_TRUST_PROXY_HEADERS, which now stops start-up with a message.
        trusted_proxies: Networks { value_name: "LIST", default_doc: "none (forwarding headers are ignored)", example: "127.0.0.1" }

        /// Most concurrent HTTP connections. When all are taken, the connection idle the
        /// longest (no request in progress) is closed for a new one; when none is idle, more
        /// wait in the kernel's accept queue.
        ///
        /// Keep it below the process's open-file limit (LimitNOFILE, ulimit -n).
        max_connections: usize { value_name: "N", default: "10000", min: 1 }

        /// Most concurrent HTTP connections from one address (trusted proxies excepted); more
        /// are closed at once.
        ///
        /// So one client cannot take every slot. At most UPDRAFT_MAX_CONNECTIONS.
        max_connections_per_ip: Option<usize> { value_name: "N", default_doc: "a tenth of UPDRAFT_MAX_CONNECTIONS", example: "1000" }

        /// Seconds a request body may send nothing before the request fails with `408` and its
        /// connection closes (slow-body protection).
        body_read_timeout_secs: Secs { value_name: "SECS", default: "30", min: 1, max: 3600 }

        /// Least average rate of a request body, in bytes per second, once
        /// UPDRAFT_BODY_READ_TIMEOUT_SECS has passed; slower uploads fail with `408`.
        ///
        /// It catches a client that trickles a byte now and then.
        body_min_bytes_per_sec: u64 { value_name: "BYTES", default: "1024" }

        /// Largest firmware upload, or file imported, in bytes.
        max_upload_bytes: u64 { value_name: "BYTES", default: "4294967296", min: 1, example: "16777216" }

        /// Seconds in-flight requests get to finish after SIGTERM or Ctrl-C before the server
        /// exits.
        shutdown_timeout_secs: Secs { value_name: "SECS", default: "30" }
    }

    group "Storage" {
        /// Folder for the embedded database and the blobs (when UPDRAFT_DATABASE_URL and
        /// UPDRAFT_BLOB_URL keep their defaults).
        data_dir: PathBuf { value_name: "DIR", default: "./data", example: "/var/lib/updraft" }

        /// Database: `sqlite://FILE` (the embedded SQLite database) or
        /// `postgres://user:pass@host:5432/db` (PostgreSQL, for several replicas or large fleets).
        database_url: Option<DatabaseUrl> {
            value_name: "URL",
            default_doc: "sqlite://<data dir>/updraft.db",
            example: "postgres://updraft:change-me@db.example.com:5432/updraft",
        }

        /// Most pooled database connections. SQLite runs one write at a time, and each of its
        /// connections keeps a thread, a page cache and prepared statements of its own (about
        /// 1 MiB under load, docs/PERFORMANCE.md), so its default is smaller.
        database_max_connections: Option<u32> { value_name: "N", default_doc: "10 on PostgreSQL, 4 on SQLite", min: 1, example: "20" }

        /// Where blobs (firmware files) are stored: a folder (a path or a `file://` URL), or
        /// `s3://bucket[/prefix]` for S3 or an S3-compatible server (MinIO, Ceph, ...).
        blob_url: Option<String> { value_name: "URL", default_doc: "<data dir>/blobs", example: "s3://updraft-firmware/prod" }

        /// S3 endpoint, for S3-compatible servers (MinIO, Ceph, ...).
        s3_endpoint: Deferred<Option<Endpoint>> { value_name: "URL", default_doc: "AWS", example: "http://127.0.0.1:9000" }

        /// S3 region.
        s3_region: Deferred<String> {
            value_name: "REGION",
            default: "us-east-1",
            fallbacks: &["AWS_DEFAULT_REGION", "AWS_REGION"],
            example: "eu-central-1",
        }

        /// S3 access key id (given together with the secret access key).
        s3_access_key_id: Deferred<Option<Secret>> { value_name: "ID", fallbacks: &["AWS_ACCESS_KEY_ID"], example: "updraft" }

        /// S3 secret access key (given together with the access key id).
        s3_secret_access_key: Deferred<Option<Secret>> {
            value_name: "SECRET",
            fallbacks: &["AWS_SECRET_ACCESS_KEY"],
            example: "change-me-please",
        }

        /// Allow a plain-HTTP (unencrypted) S3 endpoint.
        s3_allow_http: Deferred<Option<bool>> {
            value_name: "BOOL",
            default_doc: "true when UPDRAFT_S3_ENDPOINT starts with http://, else false",
            example: "true",
        }
    }

    group "Security" {
        /// Admin API key (at least 16 characters), sent by operators and CI as a bearer token.
        ///
        /// When unset, the first start generates a key, prints it once, and stores only its
        /// hash; `updraft reset-admin-key` replaces it.
        admin_api_key: Option<Token> {
            value_name: "KEY",
            default_doc: "generated at the first start",
            example: "upd_admin_replace-with-a-long-random-string",
        }

        /// Token Prometheus must send (`Authorization: Bearer`) to scrape /metrics, which shows
        /// the fleet's size and request rates; at least 16 characters.
        metrics_token: Option<Token> {
            value_name: "TOKEN",
            default_doc: "none, /metrics is public",
            example: "replace-with-a-long-random-string",
        }
    }

    group "Logging" {
        /// Log filter, e.g. `info` or `info,updraft=debug` (the syntax of tracing and RUST_LOG).
        log: LogFilter { value_name: "FILTER", default: "info", example: "info,updraft=debug" }

        /// Log format: `text` (for people) or `json` (one object per line, for log collectors).
        log_format: LogFormat { value_name: "FORMAT", default: "text", example: "json" }
    }

    group "Devices" {
        /// Seconds of silence after which a device counts as offline.
        device_offline_after_secs: Secs { value_name: "SECS", default: "600", min: 10, max: 30 * DAY }

        /// Poll interval told to devices whose product has none of its own.
        default_poll_interval_secs: Secs { value_name: "SECS", default: "3600", min: 10, max: 7 * DAY }

        /// Provisioning mode of products nobody configured: `open`, `key` or `preregistered`.
        ///
        /// open: any device that asks gets a token, as seed 004 did; key: the product key and
        /// secret are required; preregistered: only devices an operator registered. Use
        /// preregistered on servers reachable from untrusted networks.
        default_provisioning: Provisioning { value_name: "MODE", default: "open", example: "preregistered" }

        /// Devices each replica keeps in its in-memory fleet index; check-ins of devices beyond
        /// it read the database.
        ///
        /// The index is loaded at start and kept current: every replica follows changes within a
        /// second. Each entry takes about 160 bytes.
        device_cache_entries: usize { value_name: "N", default: "1000000" }

        /// Most `last_seen` rows each replica writes per second; beyond it, values wait in
        /// memory, oldest first, at most one per device (its newest).
        ///
        /// The stored last_seen then lags, while this replica's own online view stays exact. It
        /// keeps a flood of check-ins from turning into a flood of writes;
        /// updraft_presence_backlog in /metrics shows what waits.
        presence_writes_per_sec: usize { value_name: "N", default: "1000", min: 100, max: 1_000_000 }

        /// Lifetime of pair keys (`POST /api/v1/pairing`).
        pairing_ttl_secs: Secs { value_name: "SECS", default: "600", min: 30, max: DAY }

        /// After a device reports a failed or rejected update, wait this long before offering the
        /// same build again.
        update_retry_after_secs: Secs { value_name: "SECS", default: "3600", min: 0, max: 30 * DAY }

        /// Lifetime of the signed download links handed to devices.
        download_url_ttl_secs: Secs { value_name: "SECS", default: "86400", min: 60, max: 30 * DAY }
    }

    group "Rollouts" {
        /// How often each replica evaluates rollouts: scheduled starts, devices past their
        /// deadline, error and success thresholds.
        rollout_evaluate_secs: Secs { value_name: "SECS", default: "5", min: 1, max: 3600 }

        /// Default time a device offered a rollout's release has to succeed or fail before it
        /// counts as timed out.
        ///
        /// Succeeding is checking in with the new version; timed out counts as failed. A rollout
        /// can set its own (`device_deadline_s`).
        rollout_device_deadline_secs: Secs { value_name: "SECS", default: "86400", min: 60, max: 30 * DAY }

        /// How often the devices a running rollout targets are recounted (stage sizes,
        /// thresholds).
        ///
        /// Each count reads the product's devices once.
        rollout_recount_secs: Secs { value_name: "SECS", default: "300", min: 1, max: DAY }

        /// How long a completed rollout still offers its release to late devices of its target:
        /// offline ones and, with `dynamic`, newly matching ones.
        ///
        /// Afterwards the rollout leaves each replica's in-memory view and offers nothing more.
        /// The default is 7 days.
        rollout_catch_up_secs: Secs { value_name: "SECS", default: "604800", min: 1, max: 365 * DAY }
    }

    group "Downloads" {
        /// Memory for caching small blobs for downloads (firmware up to 16 MiB, or a quarter of
        /// this), in bytes; `0` turns the cache off.
        ///
        /// Concurrent downloads of one build then share one copy of its bytes. The default is
        /// 64 MiB.
        blob_cache_bytes: usize { value_name: "BYTES", default: "67108864" }
    }

    /// Devices flashed for other servers or for the stock updaters update from Updraft with
    /// only the server address changed. Every surface is on by default.
    group "Compatibility protocols (docs/CLIENT.md)" {
        /// Serve the seed-001 "ESP32 OTA Update Server" protocol: `GET /api/firmware` (devices)
        /// and `/admin/api/...` (its admin API).
        compat_ota_server: bool { value_name: "BOOL", default: "true", example: "false" }

        /// Serve `GET /firmware/{filename}` without authentication, as the seed-001 server did.
        ///
        /// Updraft's own answers point devices at signed links, so this is only needed for
        /// devices or scripts that fetch files by name.
        compat_ota_server_downloads: bool { value_name: "BOOL", default: "true", example: "false" }

        /// Shared secret of the seed-001 device tokens (`X-Device-Auth`, a weak djb2 hash of MAC
        /// and secret).
        compat_shared_secret: Option<Secret> {
            value_name: "SECRET",
            default_doc: "none: seed-001 devices are refused",
            alias: "OTA_SERVER_SHARED_SECRET_KEY",
            example: "your-device-secret-key",
        }

        /// An extra key accepted by the seed-001 admin API (`X-Admin-API-Key` on `/admin/api`)
        /// besides Updraft's own keys, so its frontend and scripts keep working; it acts there
        /// as the key `compat-admin` with the role operator.
        compat_admin_api_key: Option<Secret> {
            value_name: "KEY",
            default_doc: "none: only the Updraft admin key",
            alias: "OTA_SERVER_ADMIN_API_KEY",
            example: "your-admin-api-key",
        }

        /// Product of devices and builds of protocols that name none: seeds 001, 002 and 004,
        /// and Arduino without a product path.
        compat_default_product: Option<ProductName> {
            value_name: "PRODUCT",
            default_doc: "the only product, when exactly one exists",
            example: "panic-button",
        }

        /// Serve the seed-002 Cyberdeck protocol: `GET /ota?version=X` and `GET /ota/info`.
        compat_cyberdeck: bool { value_name: "BOOL", default: "true", example: "false" }

        /// Serve Arduino HTTPUpdate (ESP32 and ESP8266 cores) at `/api/v1/arduino/update` and
        /// `/api/v1/arduino/{product}/update`.
        compat_arduino: bool { value_name: "BOOL", default: "true", example: "false" }

        /// Serve esp32FOTA manifests and images at `/api/v1/esp32fota/{product}.json`.
        compat_esp32fota: bool { value_name: "BOOL", default: "true", example: "false" }

        /// Folder of RSA private keys in PEM form, named `<product>.pem`: esp32FOTA images of
        /// those products are served signed (signature, then image).
        ///
        /// For devices built with check_sig. The keys are read at start-up; restart after adding
        /// one.
        compat_esp32fota_keys_dir: Option<ExistingFolder> {
            value_name: "DIR",
            default_doc: "none: images are served unsigned",
            example: "/etc/updraft/esp32fota-keys",
        }

        /// Serve ESPHome update manifests (`http_request` update platform, ESP Web Tools) and
        /// their images at `/api/v1/esphome/{product}/manifest.json`.
        compat_esphome: bool { value_name: "BOOL", default: "true", example: "false" }

        /// Serve seed 004's `GET /debug/provisioning`, which hands a token to any unknown MAC of
        /// an `open` product (weak: see docs/CLIENT.md).
        ///
        /// A device that already holds a token keeps it. It replaces
        /// UPDRAFT_COMPAT_DEBUG_PROVISIONING, which was on by default.
        compat_seed004_debug: bool { value_name: "BOOL", default: "false", example: "true" }
    }

    group "Configuration, assets and images" {
        /// Key file encrypting secret values (`{"$secret": ...}`) in device configurations;
        /// created (mode 0600) when missing.
        ///
        /// It holds 32 random bytes, base64. Give every replica the same file, back it up apart
        /// from the database, never lose it.
        config_key_file: Option<PathBuf> { value_name: "FILE", default_doc: "<data dir>/config.key", example: "/etc/updraft/config.key" }

        /// Serve `GET /api/configs/{mac}.json` without authentication, as seed 003 did, but
        /// without secret values unless the product sets `public_secrets`.
        ///
        /// With the device's token, the document is whole. Anyone who knows a MAC can read the
        /// rest: turn it off once devices use GET /api/v1/device/config with their token (see
        /// "Security model" in docs/DEPLOYMENT.md).
        public_config_files: bool { value_name: "BOOL", default: "true", example: "false" }

        /// PEM RSA key checking seed-003 signed asset uploads (`POST /api/assets`); a public key is
        /// enough, and seed 003's private key works too.
        signing_key_path: Option<ExistingFile> {
            value_name: "FILE",
            default_doc: "none: asset uploads are refused",
            fallbacks: &["SIGNING_KEY_PATH"],
            example: "/etc/updraft/asset-upload.pub.pem",
        }

        /// Hosts the LVGL image proxy may fetch from although they are not public addresses:
        /// names, IP addresses or CIDR networks, comma-separated.
        ///
        /// Everything else private, loopback, link-local or metadata is refused.
        image_fetch_allow_hosts: Hosts { value_name: "LIST", example: "cams.lan,10.0.5.0/24" }

        /// Largest image the proxy fetches (or `POST /api/v1/images/lvgl` converts), in bytes.
        image_fetch_max_bytes: u64 { value_name: "BYTES", default: "10485760", min: 1024, max: 1 << 30 }

        /// Time limit of one image fetch, redirects included.
        image_fetch_timeout_secs: Secs { value_name: "SECS", default: "10", min: 1, max: 300 }

        /// Largest image, in pixels (width × height), decoded for LVGL; read from the image's
        /// header, so a larger one is refused (`400 image_too_large`) before it is decoded.
        ///
        /// A conversion needs about 4 to 12 bytes per pixel while it runs. The default is 4096 ×
        /// 4096.
        image_max_pixels: u64 { value_name: "N", default: "16777216", min: 1, max: 1 << 28 }

        /// Most image fetches and conversions at once (proxy and uploads together); more are
        /// answered `503` with `Retry-After`.
        ///
        /// Peak memory is about this times (UPDRAFT_IMAGE_FETCH_MAX_BYTES + 12 ×
        /// UPDRAFT_IMAGE_MAX_PIXELS) bytes.
        image_max_concurrent: usize { value_name: "N", default: "4", min: 1, max: 1024 }
    }

    group "MQTT (docs/CLIENT.md lists the topics)" {
        /// Run MQTT: the embedded broker, or the client of UPDRAFT_MQTT_URL.
        mqtt_enabled: bool { value_name: "BOOL", default: "true" }

        /// The embedded broker's MQTT listener (MQTT 3.1.1 and 5.0).
        mqtt_listen: SocketAddr { value_name: "ADDR", default: "0.0.0.0:1883" }

        /// MQTT over TLS, served when UPDRAFT_TLS_CERT and UPDRAFT_TLS_KEY are set (same
        /// certificate).
        mqtt_tls_listen: SocketAddr { value_name: "ADDR", default: "0.0.0.0:8883" }

        /// MQTT over WebSocket (path `/mqtt`), for browsers.
        mqtt_ws_listen: Option<SocketAddr> { value_name: "ADDR", default_doc: "none (off)", example: "0.0.0.0:8083" }

        /// An external broker (`mqtt://host:port` or `mqtts://host:port`): it turns the embedded
        /// broker off.
        ///
        /// Updraft joins it as a client with shared subscriptions ($share/updraft/...), so
        /// several replicas split the device traffic.
        mqtt_url: Option<BrokerUrl> { value_name: "URL", default_doc: "none (the embedded broker)", example: "mqtt://broker.lan:1883" }

        /// Updraft's user name at the external broker.
        mqtt_username: String { value_name: "NAME", default: "updraft" }

        /// Updraft's password at the external broker.
        mqtt_password: Option<Secret> { value_name: "SECRET" }

        /// Serve the HTTP auth hooks for external brokers (mosquitto-go-auth, EMQX) under
        /// `/api/v1/mqtt/hooks/`.
        mqtt_auth_hooks: Option<bool> { value_name: "BOOL", default_doc: "true with UPDRAFT_MQTT_URL, else false", example: "false" }

        /// Most concurrent MQTT connections of the embedded broker.
        mqtt_max_connections: usize { value_name: "N", default: "100000", min: 1, max: 10_000_000 }

        /// Largest MQTT packet accepted or sent, in bytes; seed-000 firmware travels in one
        /// packet.
        mqtt_max_packet_bytes: u32 { value_name: "BYTES", default: "4194304", min: 1024, max: 256 << 20 }

        /// QoS 1/2 messages in flight per client.
        mqtt_max_inflight: u16 { value_name: "N", default: "16", min: 1, max: 65535 }

        /// Messages queued per client (offline or slow). When the queue is full, the oldest
        /// queued message makes room for the new one (after `UPDRAFT_MQTT_QUEUE_FULL_WAIT_MS` for
        /// a client's QoS 1/2 publish), counted in `updraft_mqtt_messages_dropped_total`.
        mqtt_max_queued: usize { value_name: "N", default: "1000", min: 1, max: 1_000_000 }

        /// How long a disconnected persistent session (clean session 0) keeps its subscriptions
        /// and queued messages, in seconds.
        mqtt_session_expiry_secs: Secs { value_name: "SECS", default: "7200", min: 0, max: 30 * DAY }

        /// Every how many seconds connected devices' offers are re-evaluated: maintenance windows
        /// opening and scheduled rollouts starting change offers with time alone.
        mqtt_resync_secs: Secs { value_name: "SECS", default: "60", min: 1, max: DAY }

        /// Seconds a new MQTT connection to the embedded broker has to send its CONNECT; silent
        /// or slow ones are closed then.
        mqtt_handshake_timeout_secs: Secs { value_name: "SECS", default: "10", min: 1, max: 300 }
    }

    group "Operators" {
        /// Seconds a browser session lasts without being used; each use extends it, up to
        /// UPDRAFT_SESSION_ABSOLUTE_SECS.
        ///
        /// Other replicas learn of a use within about a minute (uses are written in batches).
        session_idle_secs: Secs { value_name: "SECS", default: "3600", min: 1, max: 30 * DAY }

        /// Seconds after login a browser session ends, however active: then the user logs in
        /// again.
        session_absolute_secs: Secs { value_name: "SECS", default: "43200", min: 1, max: 365 * DAY }

        /// Failed logins (password or API key at POST /api/v1/session) for one username within
        /// UPDRAFT_LOGIN_LOCKOUT_SECS after which that username is refused with 429 to every
        /// address that failed a login in that time; addresses without a failure still log in.
        ///
        /// Every address is also limited on its own, like wrong admin keys and device tokens
        /// (ten failures a minute).
        login_max_failures: u32 { value_name: "N", default: "10", min: 1, max: 10000 }

        /// The window of UPDRAFT_LOGIN_MAX_FAILURES, in seconds: a username's failures are
        /// forgotten this long after the first of them.
        login_lockout_secs: Secs { value_name: "SECS", default: "900", min: 1, max: DAY }

        /// Seconds a verified API key or session is trusted from memory before it is read
        /// again: how long a revocation, a disabled user or an expiry set on another replica
        /// takes to reach this one (on this replica, at once).
        credential_cache_secs: Secs { value_name: "SECS", default: "10", min: 0, max: 300 }

        /// Origins (comma-separated, e.g. `https://dash.example.com`) whose pages may call the API
        /// from a browser with credentials (CORS), and whose `Origin` passes the CSRF check of
        /// session cookies.
        ///
        /// Unset: no CORS headers at all, and only the server's own origin (UPDRAFT_PUBLIC_URL, else
        /// the request's Host) may send state-changing requests with the session cookie.
        cors_origins: Origins { value_name: "LIST", default_doc: "none (no CORS)", example: "https://dash.example.com" }
    }

    group "TLS reload and client certificates" {
        /// Every how many seconds the TLS files (UPDRAFT_TLS_CERT, UPDRAFT_TLS_KEY,
        /// UPDRAFT_TLS_CLIENT_CA, UPDRAFT_TLS_CLIENT_CRL) are checked for changes; 0 reads them
        /// only at start.
        ///
        /// A renewed certificate (certbot, cert-manager: files rewritten or symlinks swapped) is
        /// used for new HTTPS and MQTT-over-TLS connections without a restart. A pair that does
        /// not load (half written, key and certificate not matching) keeps the previous one in
        /// use, with a warning and `updraft_tls_reload_failures_total`.
        tls_reload_secs: Secs { value_name: "SECS", default: "5", min: 0, max: DAY }

        /// PEM bundle of the CA certificates that sign devices' client certificates: turns on
        /// optional mutual TLS (HTTPS and MQTT over TLS).
        ///
        /// A client may present a certificate, and one that does not chain to this bundle, has
        /// expired or is revoked ends the handshake; a client without one (browsers, operators,
        /// token devices) is served as before. A verified certificate is a device credential:
        /// its identity (UPDRAFT_TLS_CLIENT_IDENTITY) must name a registered device.
        tls_client_ca: Option<ExistingFile> { value_name: "FILE", default_doc: "none (no client certificates)", example: "/etc/updraft/tls/devices-ca.pem" }

        /// PEM certificate revocation lists of the client CA (UPDRAFT_TLS_CLIENT_CA): a revoked
        /// device certificate ends the handshake.
        tls_client_crl: Option<ExistingFile> { value_name: "FILE", default_doc: "none", example: "/etc/updraft/tls/devices-ca.crl" }

        /// Which part of a device's client certificate names the device: `cn` (the subject's
        /// common name) or `san` (the first DNS-name subject alternative name, else the first
        /// URI one). Its value is a device id or MAC.
        tls_client_identity: ClientIdentity { value_name: "FIELD", default: "cn", example: "san" }
    }

    group "Audit and limits" {
        /// Days an audit record is kept; older ones are pruned (hourly, in batches).
        audit_retention_days: u64 { value_name: "DAYS", default: "365", min: 1, max: 36500 }

        /// Uploads (firmware, assets, seed-001 and seed-003 uploads, device imports) each
        /// credential may start per minute, or each address without one.
        limit_uploads_per_min: u32 { value_name: "N", default: "60", min: 1, max: 1_000_000 }

        /// Uploads a credential may start at once before the per-minute rate applies.
        limit_uploads_burst: u32 { value_name: "N", default: "30", min: 1, max: 1_000_000 }

        /// LVGL image conversions (`POST /api/v1/images/lvgl`, the public
        /// `GET /api/images/lvgl`) each credential, or each address without one, may ask for
        /// per minute.
        limit_lvgl_per_min: u32 { value_name: "N", default: "120", min: 1, max: 1_000_000 }

        /// LVGL conversions asked for at once before the per-minute rate applies.
        limit_lvgl_burst: u32 { value_name: "N", default: "30", min: 1, max: 1_000_000 }

        /// Rollouts each credential may create per minute.
        limit_rollouts_per_min: u32 { value_name: "N", default: "30", min: 1, max: 1_000_000 }

        /// Rollouts a credential may create at once before the per-minute rate applies.
        limit_rollouts_burst: u32 { value_name: "N", default: "10", min: 1, max: 1_000_000 }
    }

    group "Single sign-on" {
        /// The OpenID provider's issuer URL, exactly as its tokens name it (Keycloak:
        /// `https://keycloak.example.com/realms/<realm>`); setting it turns single sign-on on.
        ///
        /// Updraft reads `<issuer>/.well-known/openid-configuration` for the provider's
        /// endpoints and signing keys (JWKS), keeps the keys in memory, and fetches them again
        /// when a token names a key it does not know (at most once per
        /// UPDRAFT_OIDC_JWKS_MIN_REFRESH_SECS). Operators then send the provider's access
        /// tokens as `Authorization: Bearer`, and browsers sign in with the authorization
        /// code flow (PKCE). docs/DEPLOYMENT.md, "Single sign-on", has Keycloak's set-up.
        oidc_issuer: Option<Endpoint> { value_name: "URL", default_doc: "none (single sign-on off)", example: "https://keycloak.example.com/realms/iot" }

        /// The audience operators' tokens must name (`aud`).
        oidc_audience: Option<String> { value_name: "NAME", default_doc: "UPDRAFT_OIDC_CLIENT_ID", example: "updraft" }

        /// The client id of the browser login (`/api/v1/session/oidc/login`) at the provider
        /// (authorization code flow with PKCE).
        oidc_client_id: Option<String> { value_name: "ID", default_doc: "none (no browser login)", example: "updraft" }

        /// The client secret of a confidential browser-login client; leave it unset for a public
        /// client (PKCE alone).
        oidc_client_secret: Option<Secret> { value_name: "SECRET", default_doc: "none (a public client)" }

        /// Scopes the browser login asks for (space-separated; `openid` is always added).
        oidc_scopes: String { value_name: "SCOPES", default: "openid profile email" }

        /// Where an operator token's roles are: a claim name, or a dotted path into nested
        /// claims.
        ///
        /// Keycloak's realm roles are `realm_access.roles`, a client's roles
        /// `resource_access.<client id>.roles`. The claim may be a list of strings or one
        /// string of space-separated names.
        oidc_role_claim: String { value_name: "PATH", default: "realm_access.roles", example: "resource_access.updraft.roles" }

        /// How role names in the token become Updraft roles: the name is this prefix followed
        /// by an Updraft role (admin, operator, viewer, provisioner).
        ///
        /// With the default `updraft-`, the Keycloak role `updraft-operator` gives the role
        /// operator; an empty prefix takes names equal to Updraft's roles. Ignored when
        /// UPDRAFT_OIDC_ROLE_MAP is set. A token naming several roles gets the strongest
        /// (admin, then operator, provisioner, viewer); a token naming none is refused with 403.
        oidc_role_prefix: String { value_name: "PREFIX", default: "updraft-", example: "fleet-" }

        /// An explicit map from the token's role names to Updraft roles, as
        /// `name=role,name=role` (e.g. `fleet-admins=admin,support=viewer`); only these
        /// names count.
        oidc_role_map: Option<String> { value_name: "MAP", default_doc: "none (UPDRAFT_OIDC_ROLE_PREFIX)", example: "fleet-admins=admin,support=viewer" }

        /// The claim that names an operator in records and the audit log (`oidc:<name>`);
        /// tokens without it are named by `sub`.
        oidc_name_claim: String { value_name: "CLAIM", default: "preferred_username", example: "email" }

        /// Seconds of clock difference tolerated when checking a token's `exp`, `nbf` and `iat`.
        oidc_leeway_secs: Secs { value_name: "SECS", default: "30", min: 0, max: 300 }

        /// Least seconds between two fetches of the provider's keys when tokens name an unknown
        /// key (so forged key ids cannot flood the provider).
        oidc_jwks_min_refresh_secs: Secs { value_name: "SECS", default: "10", min: 1, max: 3600 }

        /// Seconds after which the provider's keys are fetched again in the background (keys
        /// the provider removed stop working then).
        oidc_jwks_max_age_secs: Secs { value_name: "SECS", default: "3600", min: 60, max: 7 * DAY }

        /// The audience devices' client-credentials tokens must name; setting it lets devices
        /// authenticate with such tokens (HTTP `Authorization: Bearer`, MQTT password).
        ///
        /// Use an audience of its own (e.g. a Keycloak client scope `iot-device-audience` whose
        /// audience mapper adds `updraft-devices`): a token for this audience is never an
        /// operator credential, and an operator token never a device's. When it equals
        /// UPDRAFT_OIDC_AUDIENCE (seed 003's single audience), a token that carries an Updraft
        /// role is refused as a device credential, and one without is refused as an operator's.
        oidc_device_audience: Option<String> { value_name: "NAME", default_doc: "none (device tokens refused)", example: "updraft-devices" }

        /// The claim of a device token that names the device: its Updraft id or its MAC (any
        /// common form); the device must be registered.
        ///
        /// Keycloak puts the client id of a client-credentials token in `azp` (and `client_id`);
        /// name each device's client after the device, or add a claim mapper.
        oidc_device_claim: String { value_name: "CLAIM", default: "azp", example: "client_id" }
    }

    group "Dashboard" {
        /// Serve the web dashboard at `/` (the API and the device protocols answer either way).
        dashboard_enabled: bool { value_name: "BOOL", default: "true" }

        /// Serve the dashboard's files from this folder (a `web/` build, `npm run build`)
        /// instead of the copy built into the binary: for working on the dashboard without
        /// rebuilding the server.
        web_dir: Option<PathBuf> { value_name: "DIR", default_doc: "the copy built into the binary", example: "./web/dist" }
    }

    group "ThingsBoard HTTP device API" {
        /// Serve ThingsBoard's HTTP device API (the token in the path): `POST
        /// /api/v1/{token}/telemetry`, `GET`/`POST /api/v1/{token}/attributes` and `GET
        /// /api/v1/{token}/firmware`, for devices using `tb_device_http`. Tokens never appear in
        /// log lines, metric labels or error bodies.
        compat_thingsboard_http: bool { value_name: "BOOL", default: "true", example: "false" }
    }

    group "hawkBit DDI" {
        /// Serve hawkBit's Direct Device Integration API at `/{tenant}/controller/v1/...`
        /// (SWUpdate's suricatta, rauc-hawkbit-updater, Zephyr's hawkBit client).
        ///
        /// Devices authenticate with `Authorization: TargetToken <device token>` or with their
        /// product's `GatewayToken` (`PUT /api/v1/products/{name}`); nothing is served anonymously.
        compat_ddi: bool { value_name: "BOOL", default: "true", example: "false" }

        /// The tenant of the DDI paths (`-t` of SWUpdate): other tenants answer 404.
        ddi_tenant: String { value_name: "NAME", default: "DEFAULT", example: "acme" }

        /// Jitter added to the poll interval told to DDI devices, in percent of it (hawkBit's
        /// `~N%`): each poll answer says the interval plus up to this share, so a fleet that
        /// restarted together spreads out.
        ddi_poll_jitter_percent: u32 { value_name: "PERCENT", default: "0", min: 0, max: 50, example: "10" }
    }

    group "Orphan blobs" {
        /// Seconds a stored blob must be old, with no artifact or asset record pointing at it,
        /// before the orphan-blob collector deletes it.
        ///
        /// Such blobs are left by a crash between an upload's bytes being stored and its record
        /// being written, or by a removal that failed after a deletion. This server's own uploads
        /// in progress are never collected, whatever the grace; it protects those of other
        /// replicas sharing the blob store (and of `updraft import`), so keep it well above the
        /// moment an upload takes from stored bytes to record. 0 collects at once: for a single
        /// server, and for tests.
        orphan_blob_grace_secs: Secs { value_name: "SECS", default: "3600", min: 0, max: 30 * DAY, example: "86400" }

        /// Seconds between two runs of the orphan-blob collector, which also runs once at start.
        orphan_blob_scan_secs: Secs { value_name: "SECS", default: "3600", min: 1, max: 7 * DAY }
    }

    group "Slow and hostile clients" {
        /// Seconds an HTTP connection gets to send a complete request head (slow-loris
        /// protection): from the moment it opens, and again each time a keep-alive connection
        /// waits for its next request. A connection that sends nothing, or trickles its headers,
        /// is closed when they run out (without an answer).
        ///
        /// When every UPDRAFT_MAX_CONNECTIONS slot is taken, a new connection does not wait for
        /// this: the connection idle the longest (no request in progress) is closed to make room.
        header_read_timeout_secs: Secs { value_name: "SECS", default: "30", min: 1, max: 3600 }
    }

    group "MQTT under load" {
        /// Milliseconds a client's QoS 1/2 publish waits, in the embedded broker, for room in a
        /// subscriber's queue (`UPDRAFT_MQTT_MAX_QUEUED`) that is full: meanwhile the publisher
        /// gets no acknowledgement and the broker reads nothing more from it, so a fast
        /// publisher is slowed to the pace of its slowest subscriber instead of having its
        /// messages acknowledged and dropped.
        ///
        /// A subscriber that takes nothing for that long (stalled, or offline with a full queue)
        /// loses its oldest queued message to each new one, counted in
        /// `updraft_mqtt_messages_dropped_total{reason="queue_full"}`. Updraft's own messages to
        /// devices (offers, configuration, commands) never wait: a device's full queue drops them
        /// at once, as before. 0 turns the wait off (acknowledge, then drop what does not fit).
        /// Keep it well below the clients' keep-alive.
        mqtt_queue_full_wait_ms: u64 { value_name: "MS", default: "5000", min: 0, max: 60_000, example: "0" }

        /// Size in bytes of each MQTT connection's read buffer in the embedded broker, which an
        /// idle connection holds for its whole life. A larger packet makes it grow; it goes back
        /// to this size once that packet is read. (The write buffer is freed each time it is
        /// written out, and starts at this size when a connection opens.)
        mqtt_io_buffer_bytes: usize { value_name: "BYTES", default: "256", min: 256, max: 1 << 20 }
    }
}

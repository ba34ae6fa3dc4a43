//! Building and running the server: bind every listener, connect storage, open blobs, start
//! the services, resolve the admin key, serve until a shutdown signal, then drain within a
//! deadline.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::blob::BlobStore;
use crate::config::{Secret, Settings};
use crate::domain::secret;
use crate::http::{self, AppState};
use crate::net::LimitedListener;
use crate::services::Core;
use crate::services::compat::FotaSigner;
use crate::services::devices::{self};
use crate::services::rollouts::{self};
use crate::storage::Store;
use crate::telemetry;

const ADMIN_KEY_SECRET: &str = "admin_api_key_sha256";

/// A server that is bound and ready to run.
pub struct Application {
    listener: TcpListener,
    tls: Option<Arc<crate::tls::Certificates>>,
    state: AppState,
}

impl Application {
    /// Binds every listener first (HTTP, then the embedded broker's), so that a port that is
    /// taken stops start-up before anything is created, generated or stored; then opens the
    /// storage and starts the services; generates the admin key (when there is none) last, so
    /// that a start that fails never loses a key it printed; and logs `ready`.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let started = Instant::now();
        // The metrics recorder first: what background tasks count before it is installed (the
        // orphan-blob collector's run at start) would be lost.
        let metrics = telemetry::metrics_handle();
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {} for HTTP (UPDRAFT_LISTEN): {e}", settings.listen))?;
        let http_addr = listener.local_addr()?;
        let tls =
            match &settings.tls {
                Some(tls) => Some(crate::tls::Certificates::load(tls, &settings.tls_policy).context(
                    "cannot use the TLS files (UPDRAFT_TLS_CERT, UPDRAFT_TLS_KEY, UPDRAFT_TLS_CLIENT_CA, UPDRAFT_TLS_CLIENT_CRL)",
                )?),
                None => None,
            };
        let mqtt_listeners = crate::mqtt::Mqtt::bind(&settings, tls.as_ref())?;

        let store = Store::connect(settings.database_url.expose(), settings.database_max_connections).await?;
        warn_weak_settings(&settings, &store).await?;
        let blobs = BlobStore::open(&settings.blob, settings.blob_cache_bytes).await?;
        let signing_key = resolve_signing_key(&store).await?;
        let fota_signer = match &settings.compat.esp32fota_keys_dir {
            Some(dir) => {
                let signer = FotaSigner::load_dir(dir)?;
                tracing::info!(products = ?signer.products(), "esp32FOTA images of these products are served signed");
                signer
            }
            None => FotaSigner::default(),
        };
        let core = Core::build(&settings, store, blobs, signing_key).await?;
        // The rollout view is loaded before serving, so that no check-in is answered without it.
        rollouts::refresh(&core, true).await?;
        core.spawn_background();
        if let (Some(certificates), Some(every)) = (&tls, settings.tls_policy.reload_every) {
            core.tasks.spawn("TLS certificate reload", certificates.clone().watch(every));
        }
        let device_base = DeviceBaseUrl::choose(&settings, http_addr).await;
        let mqtt = crate::mqtt::Mqtt::start(&core, &settings, mqtt_listeners, device_base.url.clone()).await?.map(Arc::new);
        let admin_key_digest = resolve_admin_key(&core.store, settings.admin_api_key.as_ref().map(Secret::expose)).await?;
        crate::services::accounts::keys::start(&core, &admin_key_digest).await?;
        let state = AppState::from(crate::http::AppStateParts {
            mqtt,
            core,
            settings: Arc::new(settings),
            admin_key_digest,
            metrics,
            started,
            fota_signer: Arc::new(fota_signer),
        });
        let mqtt_addrs = state.mqtt.as_ref().and_then(|m| m.broker_addrs());
        tracing::info!(
            http = %http_addr,
            mqtt = %mqtt_addrs.map(|a| a.tcp.to_string()).unwrap_or_else(|| "off".into()),
            database = ?state.core.store.backend(),
            blobs = %state.core.blobs.describe(),
            "updraft {} ready in {} ms",
            env!("CARGO_PKG_VERSION"),
            started.elapsed().as_millis()
        );
        if state.mqtt.is_some() || state.settings.public_url.is_some() {
            device_base.log();
        }
        Ok(Application { listener, tls, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// The owner of the server's background loops (stopped by `run_until_stopped`).
    pub fn tasks(&self) -> crate::services::tasks::Tasks {
        self.state.core.tasks.clone()
    }

    /// The embedded MQTT broker's plain listener (None when MQTT is off or external).
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.state.mqtt.as_ref().and_then(|m| m.broker_addrs()).map(|a| a.tcp)
    }

    /// The embedded broker's TLS and WebSocket listeners, when configured.
    pub fn mqtt_extra_addrs(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        let addrs = self.state.mqtt.as_ref().and_then(|m| m.broker_addrs());
        (addrs.and_then(|a| a.tls), addrs.and_then(|a| a.ws))
    }

    /// Serves until `shutdown` resolves; then stops accepting, lets in-flight requests finish
    /// for up to `UPDRAFT_SHUTDOWN_TIMEOUT_SECS`, and closes the database.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Application { listener, tls, state } = self;
        let core = state.core.clone();
        let store = state.core.store.clone();
        let mqtt = state.mqtt.clone();
        let grace = state.settings.shutdown_timeout;
        let settings = &state.settings;
        let listener =
            LimitedListener::new(listener, settings.max_connections, settings.max_connections_per_ip, settings.trusted_proxies.clone());
        let header_timeout = settings.header_read_timeout;
        let app = http::router(state);
        // Start-up's temporary memory (building the OpenAPI document and the routes, opening
        // the storage, starting the broker) was freed on this thread, which from here on only
        // waits: mimalloc would keep it until this thread allocates again. Give it back now.
        alloc_trim::collect();
        alloc_trim::purge_at_once();

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let events = core.events.clone();
        // When shutdown began: everything after it shares one deadline.
        let stopping: Arc<std::sync::OnceLock<Instant>> = Arc::default();
        let stopping_at = stopping.clone();
        tokio::spawn(async move {
            shutdown.await;
            let _ = stopping_at.set(Instant::now());
            // Stop accepting first, so that once this is logged no new connection is served.
            let _ = stop_tx.send(true);
            events.close();
            tracing::info!(grace_s = grace.as_secs(), "shutting down: no new connections; waiting for in-flight requests");
            // Keep the sender alive so that receivers do not see a closed channel.
            std::future::pending::<()>().await;
        });
        match tls {
            Some(certificates) => {
                crate::net::serve(crate::net::TlsListener::new(listener, certificates)?, app, stop_rx, grace, header_timeout).await
            }
            None => crate::net::serve(listener, app, stop_rx, grace, header_timeout).await,
        }
        let began = stopping.get().copied().unwrap_or_else(Instant::now);
        let deadline = began + grace;
        let since = |at: Instant| at.duration_since(began).as_millis() as u64;
        tracing::info!(after_ms = since(Instant::now()), "requests drained");
        if let Some(mqtt) = &mqtt {
            mqtt.stop();
        }
        // The loops stop before the final presence flush, so that none races it.
        let remaining = deadline.saturating_duration_since(Instant::now());
        if core.tasks.stop(remaining.min(Duration::from_secs(5))).await {
            tracing::info!(after_ms = since(Instant::now()), "background tasks stopped");
        } else {
            tracing::warn!(running = core.tasks.running(), "background tasks did not stop in time");
        }
        // Closing the database (and rolling back a batch cut off by the deadline) takes a
        // moment: the presence write stops early enough for the exit to keep the deadline.
        let margin = (grace / 10).min(Duration::from_secs(1));
        write_presence_until(&core, deadline.checked_sub(margin).unwrap_or(deadline)).await;
        store.close().await;
        tracing::info!(after_ms = since(Instant::now()), "stopped");
        Ok(())
    }
}

/// Writes the `last_seen` values still waiting until they are all written or the shutdown
/// deadline comes; what is left then is lost (only how recently devices were seen, which
/// their next check-in restores), and counted in the log.
async fn write_presence_until(core: &Core, deadline: Instant) {
    let started = Instant::now();
    match devices::write_all_presence(core, deadline.into()).await {
        Ok(devices::FinalWrite { written, left: 0 }) => {
            tracing::info!(written, elapsed_ms = started.elapsed().as_millis() as u64, "device presence written")
        }
        Ok(devices::FinalWrite { written, left }) => {
            tracing::warn!(written, left, "shutdown deadline reached: the last_seen of {left} devices is not written")
        }
        Err(e) => tracing::warn!(error = %e, "cannot write device presence at shutdown"),
    }
}

/// The key that signs device download links: generated once, shared by replicas through
/// the database. It is a signing key, not a credential, so it is stored as is.
async fn resolve_signing_key(store: &Store) -> anyhow::Result<[u8; 32]> {
    const NAME: &str = "download_signing_key";
    if store.find_server_secret(NAME).await?.is_none() {
        let key = secret::generate("");
        store.insert_server_secret(NAME, &key).await?;
    }
    let stored = store.find_server_secret(NAME).await?.context("the download signing key vanished")?;
    Ok(secret::digest(&stored))
}

/// The admin key's digest: from UPDRAFT_ADMIN_API_KEY, else the stored one, else a new key
/// printed once (only its digest is stored).
async fn resolve_admin_key(store: &Store, configured: Option<&str>) -> anyhow::Result<[u8; 32]> {
    if let Some(key) = configured {
        return Ok(secret::digest(key));
    }
    if let Some(stored) = store.find_server_secret(ADMIN_KEY_SECRET).await? {
        return secret::parse_digest_hex(&stored).context("the stored admin key digest is corrupt");
    }
    let key = secret::generate("upd_admin_");
    if store.insert_server_secret(ADMIN_KEY_SECRET, &secret::digest_hex(&key)).await? {
        print_generated_key(&key);
        return Ok(secret::digest(&key));
    }
    // Another replica generated one at the same moment; use theirs.
    let stored = store.find_server_secret(ADMIN_KEY_SECRET).await?.context("the admin key digest vanished")?;
    secret::parse_digest_hex(&stored).context("the stored admin key digest is corrupt")
}

#[allow(clippy::print_stderr, reason = "the generated key is shown to the operator once, on the terminal, not in the log")]
fn print_generated_key(key: &str) {
    eprintln!(
        "\n  Generated admin API key (shown only now; only its hash is stored):\n\n    {key}\n\n  \
         Use it as `Authorization: Bearer <key>`. Set UPDRAFT_ADMIN_API_KEY to choose your own,\n  \
         or run `updraft reset-admin-key` to replace a lost one.\n"
    );
}

/// The base of the download URLs that devices are given in MQTT offers (HTTP answers use the
/// Host the request was sent to): `UPDRAFT_PUBLIC_URL`; else the HTTP listener's address;
/// and when that is 0.0.0.0 or `[::]`, which no device can reach, this host's primary address
/// (the one its default route leaves from), else its name when it resolves to an address that
/// is not loopback, else loopback with a warning.
#[derive(Debug, PartialEq)]
struct DeviceBaseUrl {
    url: String,
    source: BaseUrlSource,
}

#[derive(Debug, PartialEq)]
enum BaseUrlSource {
    Configured,
    Listener,
    PrimaryAddress,
    HostName,
    Loopback,
}

impl DeviceBaseUrl {
    async fn choose(settings: &Settings, http_addr: SocketAddr) -> DeviceBaseUrl {
        let scheme = if settings.tls.is_some() { "https" } else { "http" };
        let configured = settings.public_url.as_ref().map(|url| url.as_str().trim_end_matches('/').to_string());
        let (primary, host_name) = if configured.is_none() && http_addr.ip().is_unspecified() {
            let primary = primary_address(http_addr.is_ipv6());
            let host_name = match primary {
                Some(_) => None,
                None => resolvable_host_name(http_addr.port()).await,
            };
            (primary, host_name)
        } else {
            (None, None)
        };
        DeviceBaseUrl::from_parts(configured, scheme, http_addr, primary, host_name)
    }

    fn from_parts(
        configured: Option<String>,
        scheme: &str,
        http_addr: SocketAddr,
        primary: Option<IpAddr>,
        host_name: Option<String>,
    ) -> DeviceBaseUrl {
        let port = http_addr.port();
        let (url, source) = match (configured, primary, host_name) {
            (Some(url), _, _) => (url, BaseUrlSource::Configured),
            _ if !http_addr.ip().is_unspecified() => (format!("{scheme}://{http_addr}"), BaseUrlSource::Listener),
            (None, Some(ip), _) => (format!("{scheme}://{}", SocketAddr::new(ip, port)), BaseUrlSource::PrimaryAddress),
            (None, None, Some(name)) => (format!("{scheme}://{name}:{port}"), BaseUrlSource::HostName),
            (None, None, None) => {
                let loopback: IpAddr = if http_addr.is_ipv6() { Ipv6Addr::LOCALHOST.into() } else { Ipv4Addr::LOCALHOST.into() };
                (format!("{scheme}://{}", SocketAddr::new(loopback, port)), BaseUrlSource::Loopback)
            }
        };
        DeviceBaseUrl { url, source }
    }

    fn log(&self) {
        let url = &self.url;
        let how = "set UPDRAFT_PUBLIC_URL (--public-url) to change it";
        match self.source {
            BaseUrlSource::Configured => tracing::info!("devices are given download URLs under {url} (UPDRAFT_PUBLIC_URL)"),
            BaseUrlSource::Listener => tracing::info!("devices are given download URLs under {url} (the HTTP listener's address); {how}"),
            BaseUrlSource::PrimaryAddress => {
                tracing::info!("devices are given download URLs under {url} (this host's primary address); {how}")
            }
            BaseUrlSource::HostName => tracing::info!("devices are given download URLs under {url} (this host's name); {how}"),
            BaseUrlSource::Loopback => tracing::warn!(
                "devices are given download URLs under {url}, which only this machine reaches: this host has no network \
                 address; {how}"
            ),
        }
    }
}

/// The address this host's default route leaves from. Connecting a UDP socket sends nothing:
/// it only makes the kernel choose the route (the peer is a documentation address).
fn primary_address(ipv6: bool) -> Option<IpAddr> {
    let candidates: &[(&str, &str)] =
        if ipv6 { &[("0.0.0.0:0", "192.0.2.1:9"), ("[::]:0", "[2001:db8::1]:9")] } else { &[("0.0.0.0:0", "192.0.2.1:9")] };
    candidates.iter().find_map(|(local, peer)| {
        let socket = std::net::UdpSocket::bind(local).ok()?;
        socket.connect(peer).ok()?;
        let ip = socket.local_addr().ok()?.ip();
        (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
    })
}

/// This host's name, when it resolves to an address other than loopback.
async fn resolvable_host_name(port: u16) -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty() && n != "localhost")?;
    let lookup = tokio::net::lookup_host((name.clone(), port));
    let mut resolved = tokio::time::timeout(std::time::Duration::from_secs(2), lookup).await.ok()?.ok()?;
    resolved.any(|addr| !addr.ip().is_loopback() && !addr.ip().is_unspecified()).then_some(name)
}

/// One warning per weak setting in use (see `Settings::weak_settings`), and one per product
/// whose secrets anonymous seed-003 readers see.
async fn warn_weak_settings(settings: &Settings, store: &Store) -> anyhow::Result<()> {
    for (setting, risk) in settings.weak_settings() {
        tracing::warn!(setting, "weak setting in use: {risk} (docs/DEPLOYMENT.md, \"Security model\")");
    }
    for product in store.list_products().await?.into_iter().filter(|p| p.public_secrets) {
        tracing::warn!(
            product = %product.name,
            "weak setting in use: product `{}` serves its devices' secret configuration values to anonymous readers of \
             /api/configs/{{mac}}.json (public_secrets)",
            product.name
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_device_base_url_is_never_an_unspecified_address() {
        let primary = Some(IpAddr::from([192, 168, 1, 20]));
        let choose = |configured: Option<&str>, listen: &str, primary: Option<IpAddr>, name: Option<&str>| {
            DeviceBaseUrl::from_parts(configured.map(String::from), "http", addr(listen), primary, name.map(String::from))
        };

        assert_eq!(choose(Some("https://ota.example.com"), "0.0.0.0:8080", primary, None).url, "https://ota.example.com");
        assert_eq!(choose(None, "10.0.0.5:8080", primary, None).url, "http://10.0.0.5:8080");
        let chosen = choose(None, "0.0.0.0:8080", primary, Some("gateway"));
        assert_eq!((chosen.url.as_str(), chosen.source), ("http://192.168.1.20:8080", BaseUrlSource::PrimaryAddress));
        let chosen = choose(None, "0.0.0.0:8080", None, Some("gateway"));
        assert_eq!((chosen.url.as_str(), chosen.source), ("http://gateway:8080", BaseUrlSource::HostName));
        let chosen = choose(None, "0.0.0.0:8080", None, None);
        assert_eq!((chosen.url.as_str(), chosen.source), ("http://127.0.0.1:8080", BaseUrlSource::Loopback));
        assert_eq!(choose(None, "[::]:8080", Some("fd00::7".parse().unwrap()), None).url, "http://[fd00::7]:8080");
    }
}

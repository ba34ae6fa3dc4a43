//! Building and running the server: connect storage, open blobs, resolve the admin key,
//! bind the listener, serve until a shutdown signal, then drain within a deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::blob::BlobStore;
use crate::config::Settings;
use crate::domain::secret;
use crate::http::{self, AppState};
use crate::net::LimitedListener;
use crate::services::Core;
use crate::services::compat::FotaSigner;
use crate::services::devices::{self, DeviceRuntime};
use crate::services::events::EventBus;
use crate::services::images::ImageFetcher;
use crate::services::keys::ServerKeys;
use crate::services::rollouts::{self, RolloutRuntime};
use crate::storage::Store;
use crate::telemetry;

const ADMIN_KEY_SECRET: &str = "admin_api_key_sha256";

/// A server that is bound and ready to run.
pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let started = Instant::now();
        let store = Store::connect(&settings.database_url, settings.database_max_connections).await?;
        let blobs = BlobStore::open(&settings.blob, settings.blob_cache_bytes).await?;
        let admin_key_digest = resolve_admin_key(&store, settings.admin_api_key.as_deref()).await?;
        let signing_key = resolve_signing_key(&store).await?;
        let keys = Arc::new(ServerKeys::load(&settings.content, &store).await?);
        let fetcher = Arc::new(ImageFetcher::new(&settings.content)?);
        let listener =
            TcpListener::bind(settings.listen).await.with_context(|| format!("cannot listen on {} (UPDRAFT_LISTEN)", settings.listen))?;
        tracing::info!(
            address = %listener.local_addr()?,
            database = ?store.backend(),
            blobs = %blobs.describe(),
            "updraft {} ready in {} ms",
            env!("CARGO_PKG_VERSION"),
            started.elapsed().as_millis()
        );
        let core = Core {
            store,
            blobs,
            events: EventBus::default(),
            devices: Arc::new(DeviceRuntime::new(settings.devices.clone(), signing_key)),
            keys,
            fetcher,
            rollouts: Arc::new(RolloutRuntime::new(settings.rollouts.clone())),
            outbox: Default::default(),
            commands: Default::default(),
        };
        // The rollout view is loaded before serving, so that no check-in is answered without it.
        rollouts::refresh(&core, true).await?;
        devices::spawn_background(core.clone());
        rollouts::spawn_background(core.clone());
        let fota_signer = match &settings.compat.esp32fota_keys_dir {
            Some(dir) => {
                let signer = FotaSigner::load_dir(dir)?;
                tracing::info!(products = ?signer.products(), "esp32FOTA images of these products are served signed");
                signer
            }
            None => FotaSigner::default(),
        };
        let mqtt = crate::mqtt::Mqtt::start(&core, &settings, listener.local_addr()?).await?.map(Arc::new);
        let state = AppState {
            mqtt,
            core,
            settings: Arc::new(settings),
            admin_key_digest,
            metrics: telemetry::metrics_handle(),
            started,
            fota_signer: Arc::new(fota_signer),
        };
        Ok(Application { listener, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
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
        let Application { listener, state } = self;
        let core = state.core.clone();
        let store = state.core.store.clone();
        let mqtt = state.mqtt.clone();
        let grace = state.settings.shutdown_timeout;
        let tls = match &state.settings.tls {
            Some(tls) => Some(crate::net::tls_config(&tls.cert, &tls.key)?),
            None => None,
        };
        let settings = &state.settings;
        let listener =
            LimitedListener::new(listener, settings.max_connections, settings.max_connections_per_ip, settings.trusted_proxies.clone());
        let app = http::router(state);

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let events = core.events.clone();
        tokio::spawn(async move {
            shutdown.await;
            // Stop accepting first, so that once this is logged no new connection is served.
            let _ = stop_tx.send(true);
            events.close();
            tracing::info!(grace_s = grace.as_secs(), "shutting down: no new connections; waiting for in-flight requests");
            // Keep the sender alive so that receivers do not see a closed channel.
            std::future::pending::<()>().await;
        });
        match tls {
            Some(config) => crate::net::serve(crate::net::TlsListener::new(listener, config)?, app, stop_rx, grace).await,
            None => crate::net::serve(listener, app, stop_rx, grace).await,
        }
        if let Some(mqtt) = &mqtt {
            mqtt.stop();
        }
        if let Err(e) = devices::flush_presence(&core, None).await {
            tracing::warn!(error = %e, "cannot write device presence at shutdown");
        }
        store.close().await;
        tracing::info!("stopped");
        Ok(())
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

#[allow(clippy::print_stderr)]
fn print_generated_key(key: &str) {
    eprintln!(
        "\n  Generated admin API key (shown only now; only its hash is stored):\n\n    {key}\n\n  \
         Use it as `Authorization: Bearer <key>`. Set UPDRAFT_ADMIN_API_KEY to choose your own,\n  \
         or run `updraft reset-admin-key` to replace a lost one.\n"
    );
}

//! Use cases: each function here runs one operation end to end, combining domain rules
//! with storage and blobs. Adapters (HTTP, device protocols, MQTT, CLI) call these and
//! never touch storage for writes themselves.

pub mod accounts;
pub mod assets;
pub mod audit;
pub mod commands;
pub mod compat;
pub mod config;
pub mod devices;
pub mod events;
pub mod firmware;
pub mod fleet;
pub mod images;
pub mod keys;
pub mod limiter;
pub mod mqtt_auth;
pub mod oidc;
pub mod ops;
pub mod orphan_blobs;
pub mod outbox;
pub mod rollouts;
pub mod tasks;
pub mod thingsboard;
pub mod usage;

use std::sync::Arc;

use crate::blob::BlobStore;
use crate::storage::Store;

/// What every use case may need: the database, the blob store, the event bus, the
/// in-memory device and rollout state, the content keys, the image fetcher, and the owner of
/// background work.
///
/// Cheap to clone (one reference count): handlers clone it for every request.
#[derive(Clone)]
pub struct Core(Arc<CoreParts>);

/// What a `Core` holds; reached through `Core`'s `Deref` (`core.store`, `core.devices`, ...).
pub struct CoreParts {
    pub store: Store,
    pub blobs: BlobStore,
    pub events: events::EventBus,
    pub devices: Arc<devices::DeviceRuntime>,
    pub keys: Arc<keys::ServerKeys>,
    pub fetcher: Arc<images::ImageFetcher>,
    pub rollouts: Arc<rollouts::RolloutRuntime>,
    pub outbox: outbox::Outbox,
    pub commands: Arc<commands::CommandRuntime>,
    pub tasks: tasks::Tasks,
    pub accounts: Arc<accounts::AccountsRuntime>,
    /// The audit log's queue (see `audit`).
    pub audit: Arc<audit::AuditLog>,
    /// Single sign-on (None when no OpenID provider is configured).
    pub oidc: Option<Arc<oidc::Oidc>>,
    /// When the orphan-blob collector runs and what it spares (see `orphan_blobs`).
    pub orphan_blobs: crate::config::OrphanBlobSettings,
}

impl std::ops::Deref for Core {
    type Target = CoreParts;

    fn deref(&self) -> &CoreParts {
        &self.0
    }
}

impl Core {
    /// The one place a `Core` is assembled: from the settings, an open store and blob store, and
    /// the key that signs download links. Starts nothing (see `spawn_background`).
    pub async fn build(settings: &crate::config::Settings, store: Store, blobs: BlobStore, signing_key: [u8; 32]) -> anyhow::Result<Core> {
        let keys = Arc::new(keys::ServerKeys::load(&settings.content, &store).await?);
        let fetcher = Arc::new(images::ImageFetcher::new(&settings.content)?);
        let oidc = settings.oidc.clone().map(|oidc| oidc::Oidc::new(oidc, &signing_key)).transpose()?.map(Arc::new);
        Ok(Core(Arc::new(CoreParts {
            store,
            blobs,
            events: events::EventBus::default(),
            devices: Arc::new(devices::DeviceRuntime::new(settings.devices.clone(), signing_key)),
            keys,
            fetcher,
            rollouts: Arc::new(rollouts::RolloutRuntime::new(settings.rollouts.clone())),
            outbox: outbox::Outbox::default(),
            commands: Arc::default(),
            tasks: tasks::Tasks::default(),
            accounts: Arc::new(accounts::AccountsRuntime::new(settings.accounts.clone())),
            audit: Arc::new(audit::AuditLog::new(settings.audit.clone())),
            oidc,
            orphan_blobs: settings.orphan_blobs,
        })))
    }

    /// The storage and blobs of `settings`, without a server: for maintenance commands
    /// (`updraft import ...`). Download links cannot be signed with it.
    pub async fn offline(settings: &crate::config::Settings) -> anyhow::Result<Core> {
        let store = Store::connect(settings.database_url.expose(), 2).await?;
        let blobs = BlobStore::open(&settings.blob, 0).await?;
        Core::build(settings, store, blobs, [0; 32]).await
    }

    /// Starts the services' background loops (under `tasks`): the device subsystem's, the
    /// rollouts', the commands', the accounts'.
    pub fn spawn_background(&self) {
        devices::spawn_background(self.clone());
        rollouts::spawn_background(self.clone());
        commands::spawn_background(self.clone());
        accounts::spawn_background(self.clone());
        audit::spawn_background(self.clone());
        oidc::spawn_background(self);
        orphan_blobs::spawn_background(self.clone());
    }
}

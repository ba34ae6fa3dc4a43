//! Operations: what the readiness probe and the metrics scrape ask of the server's parts.

use super::Core;
use crate::domain::Result;

/// Answers when the database does.
pub async fn database_ready(core: &Core) -> Result<()> {
    core.store.ping().await
}

/// The database behind the store: `sqlite` or `postgres`.
pub fn database_kind(core: &Core) -> &'static str {
    match core.store.backend() {
        crate::storage::Backend::Sqlite => "sqlite",
        crate::storage::Backend::Postgres => "postgres",
    }
}

/// Registered devices.
pub async fn device_count(core: &Core) -> Result<u64> {
    core.store.count_devices().await
}

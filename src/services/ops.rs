//! Operations: what the readiness probe and the metrics scrape ask of the server's parts.

use super::Core;
use crate::domain::Result;

/// Answers when the database does.
pub async fn database_ready(core: &Core) -> Result<()> {
    core.store.ping().await
}

//! What the orphan-blob collector asks the database: which blobs records point at.

use std::collections::HashSet;

use sqlx::Row;

use super::{Store, db_error};
use crate::domain::Result;

impl Store {
    /// Every blob key that an artifact, an asset version or a seed-003 file points at.
    pub async fn referenced_blob_keys(&self) -> Result<HashSet<String>> {
        let rows = sqlx::query("SELECT blob_key FROM artifact UNION SELECT blob_key FROM asset UNION SELECT blob_key FROM asset_file")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to list the blobs in use"))?;
        rows.iter()
            .map(|row| row.try_get::<String, _>("blob_key"))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| db_error(e, "failed to list the blobs in use"))
    }
}

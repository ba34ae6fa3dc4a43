//! The orphan-blob collector: deletes stored blobs that no artifact, asset version or
//! seed-003 file points at, once they are older than a grace period
//! (`UPDRAFT_ORPHAN_BLOB_GRACE_SECS`). Such blobs are left by a crash between an upload's
//! bytes being committed and its record being inserted, or by a blob removal that failed
//! after a deletion. It runs at start and then every `UPDRAFT_ORPHAN_BLOB_SCAN_SECS`, on the
//! local folder and S3 alike.
//!
//! Order matters: the blobs are listed first, then this process's leases are read (uploads
//! between blob and record, see `blob::BlobLease`), then the records. A blob listed was
//! committed before the listing, so its lease was taken before too: either it is still held
//! when the leases are read (the blob is skipped), or it was released earlier, after its record
//! was written, which the records read next then show. Uploads of other processes sharing the
//! store are protected by the grace period alone.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Core;
use crate::domain::Result;

/// What one run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collected {
    /// Blobs listed.
    pub blobs: usize,
    /// Orphans deleted.
    pub deleted: usize,
    /// Orphans that could not be deleted (logged; tried again on the next run).
    pub failed: usize,
}

/// Deletes every blob without a record that was last written before `cutoff`, except those
/// this process holds a lease on.
pub async fn collect(core: &Core, cutoff: DateTime<Utc>) -> Result<Collected> {
    let blobs = core.blobs.list().await?;
    let leased = core.blobs.leased();
    let referenced = core.store.referenced_blob_keys().await?;
    let mut collected = Collected { blobs: blobs.len(), ..Collected::default() };
    for blob in blobs {
        if blob.modified >= cutoff || leased.contains(&blob.key) || referenced.contains(&blob.key) {
            continue;
        }
        match core.blobs.delete(&blob.key).await {
            Ok(()) => {
                collected.deleted += 1;
                metrics::counter!("updraft_orphan_blobs_deleted_total").increment(1);
                tracing::info!(blob_key = %blob.key, modified = %blob.modified, "orphan blob deleted: no record points at it");
            }
            Err(e) => {
                collected.failed += 1;
                tracing::warn!(blob_key = %blob.key, error = %e, "cannot delete an orphan blob");
            }
        }
    }
    Ok(collected)
}

/// Runs the collector at start, then every `every` (the settings'), until the server stops.
pub fn spawn_background(core: Core) {
    let settings = core.orphan_blobs;
    let tasks = core.tasks.clone();
    tasks.spawn("orphan blobs", async move {
        // Registered at 0, so the series exists before the first orphan.
        metrics::counter!("updraft_orphan_blobs_deleted_total").increment(0);
        loop {
            run_once(&core, settings.grace).await;
            tokio::time::sleep(settings.every).await;
        }
    });
}

async fn run_once(core: &Core, grace: Duration) {
    let cutoff =
        chrono::Duration::from_std(grace).ok().and_then(|grace| Utc::now().checked_sub_signed(grace)).unwrap_or(DateTime::<Utc>::MIN_UTC);
    match collect(core, cutoff).await {
        Ok(collected) => {
            metrics::counter!("updraft_orphan_blob_scans_total").increment(1);
            tracing::debug!(blobs = collected.blobs, deleted = collected.deleted, failed = collected.failed, "orphan blobs collected");
        }
        Err(e) => {
            metrics::counter!("updraft_orphan_blob_scan_failures_total").increment(1);
            tracing::warn!(error = %e, "cannot collect orphan blobs");
        }
    }
}

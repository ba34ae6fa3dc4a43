//! The orphan-blob collector: a blob that no artifact or asset record points at (left by a
//! kill between an upload's blob commit and its record insert, simulated here by writing a
//! blob through `BlobStore` without a record) is deleted once older than the grace period;
//! young blobs, blobs with a record, and blobs of uploads still in progress are kept. Runs on
//! both backends (local folder and S3).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use reqwest::Method;

use crate::helpers::*;

/// Writes a blob under a fresh key of `prefix`, as an upload does, and returns the key with
/// the lease that an upload holds until its record is written.
async fn write_blob(blobs: &updraft::blob::BlobStore, prefix: &str, seed: u64) -> (String, updraft::blob::BlobLease) {
    let key = format!("{prefix}/{}", uuid::Uuid::new_v4());
    let mut writer = blobs.create(&key).await.unwrap();
    writer.write(Bytes::from(random_bytes(3000, seed))).await.unwrap();
    let lease = writer.commit().await.unwrap();
    (key, lease)
}

async fn stored_keys(blobs: &updraft::blob::BlobStore) -> HashSet<String> {
    blobs.list().await.unwrap().into_iter().map(|entry| entry.key).collect()
}

async fn deleted_metric(app: &TestApp) -> f64 {
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix("updraft_orphan_blobs_deleted_total ")?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_blob_without_a_record_is_deleted_once_older_than_the_grace_and_young_referenced_or_leased_ones_are_kept() {
    let app = spawn_app().await;
    let core = core_of(&app).await;
    // Blobs with records: an artifact and a native asset.
    let firmware = random_bytes(5000, 1);
    let artifact = app.create_artifact(firmware.clone(), "product=lamp&version=1.0.0&hardware=esp32").await;
    let asset = app.admin(Method::POST, "/api/v1/assets/lamp/font.bin").body(random_bytes(100, 2)).send().await.unwrap();
    assert_eq!(asset.status(), 201);
    let referenced = stored_keys(&core.blobs).await;
    assert_eq!(referenced.len(), 2, "{referenced:?}");

    // A kill between the blob commit and the record insert leaves blobs no record points at.
    let (orphan_artifact, lease) = write_blob(&core.blobs, "artifacts", 3).await;
    drop(lease);
    let (orphan_asset, lease) = write_blob(&core.blobs, "assets", 4).await;
    drop(lease);
    // An upload of this process, committed and about to write its record.
    let (in_flight, in_flight_lease) = write_blob(&core.blobs, "artifacts", 5).await;
    // Times of S3 listings may be whole seconds: the cutoff falls clearly between old and young.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let cutoff = Utc::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (young, lease) = write_blob(&core.blobs, "artifacts", 6).await;
    drop(lease);
    let before = deleted_metric(&app).await;

    let collected = updraft::services::orphan_blobs::collect(&core, cutoff).await.unwrap();

    assert_eq!((collected.blobs, collected.deleted, collected.failed), (6, 2, 0));
    let left = stored_keys(&core.blobs).await;
    assert!(!left.contains(&orphan_artifact) && !left.contains(&orphan_asset), "{left:?}");
    assert!(left.contains(&young) && left.contains(&in_flight), "{left:?}");
    assert!(referenced.is_subset(&left), "{left:?}");
    assert_eq!(deleted_metric(&app).await - before, 2.0);
    let id = artifact["id"].as_str().unwrap();
    let download = app.admin(Method::GET, &format!("/api/v1/firmware/{id}/download")).send().await.unwrap();
    assert_eq!(download.status(), 200);
    assert_eq!(download.bytes().await.unwrap()[..], firmware[..]);
    let asset = app.admin(Method::GET, "/api/v1/assets/lamp/font.bin/1").send().await.unwrap();
    assert_eq!(asset.status(), 200);

    // Once the upload gives up its lease without a record (it failed, or the process died), its
    // blob is an orphan like the others.
    drop(in_flight_lease);
    let collected = updraft::services::orphan_blobs::collect(&core, cutoff).await.unwrap();
    assert_eq!(collected.deleted, 1);
    let left = stored_keys(&core.blobs).await;
    assert_eq!(left, referenced.iter().cloned().chain([young]).collect::<HashSet<_>>());
    assert_eq!(deleted_metric(&app).await - before, 3.0);
    if uses_local_blobs() {
        assert_eq!(app.blob_files().len(), 3, "{:?}", app.blob_files());
    }
}

#[tokio::test]
async fn a_restarted_server_collects_the_orphans_of_a_crash_at_start_after_its_grace() {
    let app = spawn_app_with(|settings| settings.orphan_blobs.grace = Duration::ZERO).await;
    let artifact = app.create_artifact(random_bytes(5000, 7), "product=lamp&version=1.0.0&hardware=esp32").await;
    let (settings, data_dir) = app.stop_keeping_data().await;
    // The crash: blobs committed, records never inserted.
    let blobs = updraft::blob::BlobStore::open(&settings.blob, 0).await.unwrap();
    let (orphan, lease) = write_blob(&blobs, "artifacts", 8).await;
    drop(lease);
    assert!(stored_keys(&blobs).await.contains(&orphan));

    let app = start(settings, data_dir).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    while stored_keys(&blobs).await.contains(&orphan) {
        assert!(Instant::now() < deadline, "the orphan blob was not collected at start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored_keys(&blobs).await.len(), 1);
    assert!(deleted_metric(&app).await >= 1.0);
    let id = artifact["id"].as_str().unwrap();
    let download = app.admin(Method::GET, &format!("/api/v1/firmware/{id}/download")).send().await.unwrap();
    assert_eq!(download.status(), 200);
    app.stop().await;
}

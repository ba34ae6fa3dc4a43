//! The check-in's decisions on a real (in-memory SQLite) database and blob folder.

use bytes::Bytes;

use super::*;
use crate::config::{BlobSettings, Settings};
use crate::domain::esp_image::builder::EspImageBuilder;
use crate::domain::firmware::UploadMeta;
use crate::services::firmware;

async fn core(blobs: &std::path::Path) -> Core {
    let mut settings = Settings::defaults();
    settings.blob = BlobSettings::Local { root: blobs.to_path_buf() };
    let store = crate::storage::Store::connect("sqlite::memory:", 1).await.expect("an in-memory database");
    let blobs = crate::blob::BlobStore::open(&settings.blob, 0).await.expect("a blob folder");
    Core::build(&settings, store, blobs, [7; 32]).await.expect("a core")
}

async fn upload(core: &Core, product: &str, version: &str) -> Artifact {
    let image = EspImageBuilder::new(product, version).build();
    let body = futures::stream::iter([Ok(Bytes::from(image))]);
    let staged = firmware::stage(core, body, 1 << 20).await.expect("staged");
    let meta = UploadMeta { product: Some(product.into()), version: None, hardware: vec![], notes: None, channel: None };
    firmware::commit(core, staged, &meta).await.expect("stored").artifact
}

async fn pinned_device(core: &Core, mac: &str, version: &str, target: &str) -> Arc<ActiveDevice> {
    let request = NewDeviceRequest {
        mac: Some(mac.into()),
        uid: None,
        name: None,
        product: Some("stale".into()),
        hardware: None,
        channel: None,
        version: Some(version.into()),
        target_version: Some(target.into()),
        tags: vec![],
        metadata: None,
        owner: None,
    };
    let device = register(core, request, "test").await.expect("registered");
    active_by_id(core, &device.id).await.expect("read").expect("the device")
}

fn reporting(version: &str) -> CheckinReport {
    CheckinReport { version: Some(version.into()), ..Default::default() }
}

/// A re-evaluation working from a copy of the device read before the report that completed
/// its update (an MQTT connection's sync racing the first report after the reboot) does not
/// open a new attempt for the build the device now runs; a device that really went back to
/// the old version is offered the build again.
#[tokio::test]
async fn an_old_view_of_a_device_does_not_reopen_the_update_it_completed() {
    let blobs = tempfile::tempdir().expect("a folder");
    let core = core(blobs.path()).await;
    let artifact = upload(&core, "stale", "2.0.0").await;
    let before = pinned_device(&core, "02:00:00:00:5A:01", "1.0.0", "2.0.0").await;

    let offered = checkin(&core, before.clone(), reporting("1.0.0"), None).await.expect("check-in");
    let attempt_id = offered.offer.expect("the pinned build is offered").attempt_id;
    let now = active_by_id(&core, &before.id).await.unwrap().unwrap();
    let answer = checkin(&core, now, reporting("2.0.0"), None).await.expect("check-in");
    assert!(answer.offer.is_none(), "the device runs its pin");
    let completed = current_attempt(&core, &before.id).await.unwrap().expect("an attempt");
    assert_eq!((completed.id.as_str(), completed.state), (attempt_id.as_str(), UpdateState::Succeeded));

    // `before` still says 1.0.0.
    let answers = offers_for(&core, std::slice::from_ref(&before)).await.expect("re-evaluated");
    assert!(answers[0].offer.is_none(), "offered {:?} again from an old view", answers[0].offer.as_ref().map(|o| &o.attempt_id));
    let history = update_history(&core, &before.id).await.unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].state, UpdateState::Succeeded);
    // The same old copy on the check-in path.
    let answer = checkin(&core, before.clone(), CheckinReport::default(), None).await.expect("check-in");
    assert!(answer.offer.is_none());
    assert_eq!(update_history(&core, &before.id).await.unwrap().len(), 1);

    // The device went back to 1.0.0 (reflashed by hand): its pin is offered again.
    let now = active_by_id(&core, &before.id).await.unwrap().unwrap();
    let answer = checkin(&core, now, reporting("1.0.0"), None).await.expect("check-in");
    let again = answer.offer.expect("offered again");
    assert_eq!(again.artifact.id, artifact.id);
    assert_ne!(again.attempt_id, attempt_id);
    assert_eq!(update_history(&core, &before.id).await.unwrap().len(), 2);
}

//! Partial updates write only what changes; pairing is one transaction.

use super::*;
use crate::domain::device::UpdateState;

async fn changes_of(store: &Store, device_id: &str) -> usize {
    store.changed_devices_since(0).await.unwrap().iter().filter(|(id, _)| id == device_id).count()
}

#[tokio::test]
async fn a_patch_writes_only_its_fields() {
    let store = memory_store().await;
    let mut new = new_device("02:00:00:00:01:01");
    new.owner = Some("alice".into());
    new.tags = vec!["old".into()];
    let device = store.insert_device(&new).await.unwrap();
    // A report written after the caller read the device (a concurrent check-in).
    let report = DeviceReport {
        version: Some("1.2.0".into()),
        product: Some("lamp".parse().unwrap()),
        hardware: Some("esp32".parse().unwrap()),
        attributes: None,
    };
    store.record_report(&device.id, &report).await.unwrap();

    let renamed =
        store.update_device(&device.id, &DevicePatch { name: Some("kitchen".into()), ..Default::default() }).await.unwrap().unwrap();
    assert_eq!(renamed.name, "kitchen");
    assert_eq!(
        (renamed.version.as_deref(), renamed.product.as_deref(), renamed.hardware.as_deref()),
        (Some("1.2.0"), Some("lamp"), Some("esp32"))
    );
    assert_eq!((renamed.owner.as_deref(), renamed.tags.clone()), (Some("alice"), vec!["old".to_string()]));

    // `Some(None)` clears a field, `None` leaves it; tags are rewritten with their index.
    let patch = DevicePatch { owner: Some(None), tags: Some(vec!["new".into()]), ..Default::default() };
    let cleared = store.update_device(&device.id, &patch).await.unwrap().unwrap();
    assert_eq!((cleared.owner, cleared.name.as_str(), cleared.tags.clone()), (None, "kitchen", vec!["new".to_string()]));
    let tagged = DeviceFilter { tag: Some("new".into()), limit: 10, ..Default::default() };
    assert_eq!(store.list_devices(&tagged).await.unwrap().1, 1);
    let untagged = DeviceFilter { tag: Some("old".into()), limit: 10, ..Default::default() };
    assert_eq!(store.list_devices(&untagged).await.unwrap().1, 0);
}

#[tokio::test]
async fn patching_a_device_that_does_not_exist_writes_nothing() {
    let store = memory_store().await;
    let patch = DevicePatch { tags: Some(vec!["ghost".into()]), ..Default::default() };
    assert!(store.update_device("no-such-device", &patch).await.unwrap().is_none());
    let ghost = DeviceFilter { tag: Some("ghost".into()), limit: 10, ..Default::default() };
    assert_eq!(store.list_devices(&ghost).await.unwrap().1, 0);
    assert_eq!(changes_of(&store, "no-such-device").await, 0);
}

#[tokio::test]
async fn pairing_uses_the_key_and_sets_the_owner_together() {
    let store = memory_store().await;
    let device = store.insert_device(&new_device("02:00:00:00:01:02")).await.unwrap();
    store.record_report(&device.id, &DeviceReport { hardware: Some("esp32".parse().unwrap()), ..Default::default() }).await.unwrap();
    store.insert_pairing("key-1", "bob", in_a_minute()).await.unwrap();
    let before = changes_of(&store, &device.id).await;

    // A device that does not exist leaves the key unused.
    assert_eq!(store.pair_device("key-1", "no-such-device").await.unwrap(), None);
    assert_eq!(store.pair_device("key-1", &device.id).await.unwrap().as_deref(), Some("bob"));
    let paired = store.find_device(&device.id).await.unwrap().unwrap();
    assert_eq!((paired.owner.as_deref(), paired.hardware.as_deref()), (Some("bob"), Some("esp32")));
    assert_eq!(changes_of(&store, &device.id).await, before + 1, "the pairing is in the device change log");

    // Once only; an unknown or expired key pairs nothing.
    let other = store.insert_device(&new_device("02:00:00:00:01:03")).await.unwrap();
    assert_eq!(store.pair_device("key-1", &other.id).await.unwrap(), None);
    assert_eq!(store.pair_device("key-2", &other.id).await.unwrap(), None);
    store.insert_pairing("key-3", "carol", Utc::now() - Duration::seconds(1)).await.unwrap();
    assert_eq!(store.pair_device("key-3", &other.id).await.unwrap(), None);
    assert_eq!(store.find_device(&other.id).await.unwrap().unwrap().owner, None);
}

#[tokio::test]
async fn opening_an_attempt_and_its_success_are_device_changes_other_replicas_see() {
    let store = memory_store().await;
    let device = store.insert_device(&new_device("02:00:00:00:01:04")).await.unwrap();
    let before = changes_of(&store, &device.id).await;
    let offer = AttemptOffer {
        device_id: &device.id,
        artifact_id: "a1",
        release_id: "a1",
        from_version: None,
        to_version: "2.0.0",
        rollout: None,
        replacing: None,
    };
    let attempt = store.open_attempt(&offer).await.unwrap().unwrap();
    assert_eq!(changes_of(&store, &device.id).await, before + 1, "an opened attempt is in the device change log");
    // Progress changes nothing another replica keeps; a success changes the installed build.
    store.set_attempt_state(&attempt.id, UpdateState::Downloading, Some(10), None).await.unwrap();
    assert_eq!(changes_of(&store, &device.id).await, before + 1);
    store.set_attempt_state(&attempt.id, UpdateState::Succeeded, Some(100), None).await.unwrap();
    assert_eq!(changes_of(&store, &device.id).await, before + 2, "a success is in the device change log");
}

//! Dynamic filters: every combination binds its values where its fragment is written, texts
//! and numbers in any order.

use super::*;
use crate::domain::rollout::{Release, RolloutState};

/// A device of [`fleet`]: (mac, product, hardware, version, owner, tags, last seen minutes ago).
type Spec = (&'static str, &'static str, &'static str, &'static str, Option<&'static str>, &'static [&'static str], Option<i64>);

/// Six devices.
async fn fleet(store: &Store) -> Vec<String> {
    let now = Utc::now();
    let specs: [Spec; 6] = [
        ("02:00:00:00:02:01", "lamp", "esp32", "1.0.0", Some("alice"), &["north"], Some(1)),
        ("02:00:00:00:02:02", "lamp", "esp32", "1.1.0", Some("bob"), &["north", "beta"], Some(30)),
        ("02:00:00:00:02:03", "lamp", "esp32s3", "1.1.0", None, &["south"], None),
        ("02:00:00:00:02:04", "plug", "esp32", "1.0.0", Some("alice"), &[], Some(2)),
        ("02:00:00:00:02:05", "plug", "esp8266", "2.0.0", Some("100%_sure"), &["beta"], Some(120)),
        ("02:00:00:00:02:06", "lamp", "esp32", "1.0.0", None, &["north"], Some(5)),
    ];
    let mut ids = Vec::new();
    let mut seen = Vec::new();
    for (mac, product, hardware, version, owner, tags, minutes_ago) in specs {
        let mut new = new_device(mac);
        new.product = Some(product.parse().unwrap());
        new.hardware = Some(hardware.parse().unwrap());
        new.version = Some(version.into());
        new.owner = owner.map(str::to_string);
        new.tags = tags.iter().map(|t| t.to_string()).collect();
        let device = store.insert_device(&new).await.unwrap();
        if let Some(minutes) = minutes_ago {
            seen.push((device.id.clone(), now - Duration::minutes(minutes), Some("10.0.0.1".to_string())));
        }
        ids.push(device.id.into());
    }
    store.record_presence(&seen).await.unwrap();
    ids
}

/// The MACs' last bytes a filter finds (sorted) and the total it counts.
async fn found(store: &Store, filter: DeviceFilter) -> (Vec<String>, u64) {
    let (devices, total) = store.list_devices(&DeviceFilter { limit: filter.limit.max(1), ..filter }).await.unwrap();
    let mut macs: Vec<String> = devices.iter().map(|d| d.label()[15..].to_string()).collect();
    macs.sort();
    (macs, total)
}

fn macs(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn device_filters_combine_texts_and_numbers_in_any_order() {
    let store = memory_store().await;
    fleet(&store).await;
    let ten_minutes_ago = (Utc::now() - Duration::minutes(10)).timestamp_millis();
    let all = DeviceFilter { limit: 100, ..Default::default() };

    assert_eq!(found(&store, all.clone()).await, (macs(&["01", "02", "03", "04", "05", "06"]), 6));
    // A number, then texts: the order `?` replacement required (texts first) is gone.
    let online_lamps = DeviceFilter { online_since: Some((true, ten_minutes_ago)), product: Some("lamp".into()), ..all.clone() };
    assert_eq!(found(&store, online_lamps).await, (macs(&["01", "06"]), 2));
    let offline = DeviceFilter { online_since: Some((false, ten_minutes_ago)), ..all.clone() };
    assert_eq!(found(&store, offline).await, (macs(&["02", "03", "05"]), 3));
    let between = DeviceFilter {
        last_seen_after: Some((Utc::now() - Duration::minutes(60)).timestamp_millis()),
        last_seen_before: Some(ten_minutes_ago),
        tag: Some("north".into()),
        ..all.clone()
    };
    assert_eq!(found(&store, between).await, (macs(&["02"]), 1));
    let exact = DeviceFilter {
        product: Some("lamp".into()),
        hardware: Some("ESP32".parse().unwrap()),
        version: Some("1.0.0".into()),
        owner: None,
        tag: Some("north".into()),
        ..all.clone()
    };
    assert_eq!(found(&store, exact).await, (macs(&["01", "06"]), 2));
    let owned = DeviceFilter { owner: Some("alice".into()), online_since: Some((true, ten_minutes_ago)), ..all.clone() };
    assert_eq!(found(&store, owned).await, (macs(&["01", "04"]), 2));
}

#[tokio::test]
async fn the_search_escapes_like_patterns_and_pages_count_every_match() {
    let store = memory_store().await;
    fleet(&store).await;
    let all = DeviceFilter { limit: 100, ..Default::default() };
    // `%` and `_` are themselves, not wildcards.
    let percent = DeviceFilter { search: Some("100%_".into()), ..all.clone() };
    assert_eq!(found(&store, percent).await, (macs(&["05"]), 1));
    let wildcard = DeviceFilter { search: Some("%".into()), ..all.clone() };
    assert_eq!(found(&store, wildcard).await, (macs(&["05"]), 1));
    // MACs, names and owners, in any case, with numbers after the search.
    let search = DeviceFilter { search: Some("02:0".into()), online_since: Some((true, 0)), ..all.clone() };
    assert_eq!(found(&store, search).await.1, 5);
    let page = DeviceFilter { search: Some("ALICE".into()), sort: DeviceSort::Mac, limit: 1, offset: 1, ..Default::default() };
    let (devices, total) = store.list_devices(&page).await.unwrap();
    assert_eq!((devices.len(), total, devices[0].label()), (1, 2, "02:00:00:00:02:04".to_string()));
}

#[tokio::test]
async fn lists_of_ids_are_bound_one_placeholder_each() {
    let store = memory_store().await;
    let ids = fleet(&store).await;
    // More ids than one statement takes: they go in chunks.
    let mut wanted: Vec<String> = (0..1200).map(|i| format!("missing-{i}")).collect();
    wanted.push(ids[2].clone());
    wanted.push(ids[4].clone());
    let rows = store.target_rows_by_ids(&wanted).await.unwrap();
    let mut found: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    found.sort();
    let mut expected = vec![ids[2].as_str(), ids[4].as_str()];
    expected.sort();
    assert_eq!(found, expected);
    let device_ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert!(store.current_attempts(&device_ids).await.unwrap().is_empty());
}

#[tokio::test]
async fn rollouts_and_releases_filter_by_product_and_state() {
    let store = memory_store().await;
    for (id, product, version) in [("r1", "lamp", "1.0.0"), ("r2", "plug", "1.0.0")] {
        let release = Release {
            id: id.into(),
            product: product.parse().unwrap(),
            version: version.into(),
            version_key: version.parse().unwrap(),
            channel: Channel::stable(),
            notes: String::new(),
            artifact_ids: Vec::new(),
            created_at: Utc::now(),
        };
        store.insert_release(&release).await.unwrap();
    }
    assert_eq!(store.list_releases(None).await.unwrap().len(), 2);
    let lamp: Vec<String> = store.list_releases(Some("lamp")).await.unwrap().into_iter().map(|r| r.id.into()).collect();
    assert_eq!(lamp, vec!["r1".to_string()]);
    assert!(store.list_rollouts(&[RolloutState::Running, RolloutState::Paused], Some("lamp")).await.unwrap().is_empty());
    assert!(store.list_rollouts(&[], None).await.unwrap().is_empty());
}

#[tokio::test]
async fn only_devices_that_hold_a_token_are_counted_for_the_fleet_index() {
    let store = memory_store().await;
    assert_eq!(store.count_active_devices().await.unwrap(), 0);
    for (i, token) in [Some("digest-1"), None, Some("digest-3")].into_iter().enumerate() {
        let mut new = new_device(&format!("02:00:00:00:03:0{i}"));
        new.token_hash = token.map(String::from);
        store.insert_device(&new).await.unwrap();
    }
    assert_eq!(store.count_active_devices().await.unwrap(), 2);
    assert_eq!(store.list_active_devices("", 10).await.unwrap().len(), 2);
}

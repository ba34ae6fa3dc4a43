//! Storage seen end to end, on both databases: concurrent writers of one device each write
//! only their own fields, unique violations are named conflicts, and list filters bind
//! texts and numbers in any combination.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

const DEVICES: usize = 12;
const CHECK_INS: usize = 10;

/// Pairing (a pair key and the owner in one transaction) and operator patches write only
/// the fields they change. Before, both rewrote product, hardware, owner... from a read
/// made before the write, so a check-in's report landing in between was lost, and with it
/// an owner set by a pairing.
#[tokio::test]
async fn pairing_and_patches_never_lose_a_concurrent_check_in_report() {
    let test_app = spawn_app().await;
    let app = &test_app;
    let mut devices = Vec::new();
    for i in 0..DEVICES {
        let response = app
            .client
            .post(app.url("/api/v1/device/provision"))
            .json(&json!({"mac": format!("02:00:00:00:aa:{i:02x}"), "product": "racer", "version": "1.0.0"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        devices.push((body["device_id"].as_str().unwrap().to_string(), body["token"].as_str().unwrap().to_string()));
    }

    let runs = devices.iter().enumerate().map(|(i, (id, token))| async move {
        let checking_in = Arc::new(AtomicBool::new(true));
        let owner = format!("owner-{i}");
        let key: Value =
            app.admin(Method::POST, "/api/v1/pairing").json(&json!({"owner": owner})).send().await.unwrap().json().await.unwrap();
        let key = key["pair_key"].as_str().unwrap().to_string();
        // The device reports new hardware and a new version at every check-in.
        let check_ins = {
            let checking_in = checking_in.clone();
            async move {
                for n in 0..CHECK_INS {
                    let response = app
                        .client
                        .post(app.url("/api/v1/device/checkin"))
                        .bearer_auth(token)
                        .json(&json!({"version": format!("1.0.{}", n + 1), "hardware": format!("board-{n}")}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
                }
                checking_in.store(false, Ordering::SeqCst);
            }
        };
        // An operator renames it for as long as it checks in.
        let patches = {
            let checking_in = checking_in.clone();
            async move {
                let mut last = None;
                let mut n = 0;
                while checking_in.load(Ordering::SeqCst) {
                    let name = format!("name-{n}");
                    let response =
                        app.admin(Method::PATCH, &format!("/api/v1/devices/{id}")).json(&json!({"name": name})).send().await.unwrap();
                    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
                    last = Some(name);
                    n += 1;
                }
                last
            }
        };
        // It pairs while both go on.
        let pairing = async {
            let response =
                app.client.post(app.url("/api/v1/device/pair")).bearer_auth(token).json(&json!({"pair_key": key})).send().await.unwrap();
            assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
        };
        let ((), last_name, ()) = tokio::join!(check_ins, patches, pairing);
        let device: Value = app.admin(Method::GET, &format!("/api/v1/devices/{id}")).send().await.unwrap().json().await.unwrap();
        (device, owner, last_name)
    });
    for (device, owner, last_name) in futures::future::join_all(runs).await {
        assert_eq!(device["hardware"], format!("board-{}", CHECK_INS - 1), "{device}");
        assert_eq!(device["version"], format!("1.0.{CHECK_INS}"), "{device}");
        assert_eq!(device["owner"], owner, "{device}");
        if let Some(name) = last_name {
            assert_eq!(device["name"], name, "{device}");
        }
    }
    test_app.stop().await;
}

/// Each unique constraint an operator can run into answers with its own 409 on both
/// databases (PostgreSQL names the constraint in its error, SQLite only its columns).
#[tokio::test]
async fn each_unique_constraint_answers_its_own_conflict() {
    let app = spawn_app().await;
    let post = |path: &'static str, body: Value| {
        let app = &app;
        async move { app.admin(Method::POST, path).json(&body).send().await.unwrap() }
    };
    assert_eq!(post("/api/v1/devices", json!({"mac": "02:00:00:00:bb:01"})).await.status(), 201);
    assert_eq!(error_code(post("/api/v1/devices", json!({"mac": "02:00:00:00:bb:01"})).await, 409).await, "device_exists");

    assert_eq!(post("/api/v1/groups", json!({"name": "pilots"})).await.status(), 201);
    assert_eq!(error_code(post("/api/v1/groups", json!({"name": "pilots"})).await, 409).await, "group_exists");

    let build = app.create_artifact(random_bytes(2048, 71), "product=lamp&version=2.0.0&hardware=esp32").await;
    let build = build["id"].as_str().unwrap();
    let release = json!({"product": "lamp", "version": "2.0.0", "artifact_ids": [build]});
    assert_eq!(post("/api/v1/releases", release.clone()).await.status(), 201);
    assert_eq!(error_code(post("/api/v1/releases", release).await, 409).await, "release_exists");
    let keyed = |name: &str| {
        app.admin(Method::PUT, &format!("/api/v1/products/{name}"))
            .json(&json!({"provisioning": "key", "provision_key": "shared-key-1", "provision_secret": "a-long-provisioning-secret"}))
            .send()
    };
    assert_eq!(keyed("sensor").await.unwrap().status(), 200);
    assert_eq!(error_code(keyed("meter").await.unwrap(), 409).await, "provision_key_taken");
    app.stop().await;
}

/// Registers a device with a token; returns (id, token).
async fn registered(app: &TestApp, mac: &str, product: &str, tags: &[&str]) -> (String, String) {
    let body = json!({"mac": mac, "product": product, "hardware": "esp32", "version": "1.0.0", "tags": tags, "issue_token": true});
    let response = app.admin(Method::POST, "/api/v1/devices").json(&body).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    (body["id"].as_str().unwrap().to_string(), body["token"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn device_filters_mix_texts_and_numbers() {
    let app = spawn_app().await;
    let (_, north_lamp) = registered(&app, "02:00:00:00:cc:01", "lamp", &["north"]).await;
    registered(&app, "02:00:00:00:cc:02", "lamp", &["north"]).await;
    let (_, south_plug) = registered(&app, "02:00:00:00:cc:03", "plug", &["south_1"]).await;
    for token in [&north_lamp, &south_plug] {
        let response = app.client.post(app.url("/api/v1/device/checkin")).bearer_auth(token).json(&json!({})).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let an_hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let in_an_hour = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for (query, expected) in [
        ("status=online&product=lamp&tag=north".to_string(), vec!["02:00:00:00:CC:01"]),
        ("product=lamp&status=offline".to_string(), vec!["02:00:00:00:CC:02"]),
        (
            format!("last_seen_after={an_hour_ago}&last_seen_before={in_an_hour}&q=cc%3A0&sort=mac"),
            vec!["02:00:00:00:CC:01", "02:00:00:00:CC:03"],
        ),
        (
            format!("q=CC&status=online&last_seen_after={an_hour_ago}&hardware=ESP32&version=1.0.0&sort=mac&limit=1&offset=1"),
            vec!["02:00:00:00:CC:03"],
        ),
        ("tag=south_1&q=_".to_string(), vec![]),
        ("tag=south_1&q=cc".to_string(), vec!["02:00:00:00:CC:03"]),
    ] {
        let page: Value = app.admin(Method::GET, &format!("/api/v1/devices?{query}")).send().await.unwrap().json().await.unwrap();
        let macs: Vec<&str> = page["items"].as_array().unwrap().iter().map(|d| d["mac"].as_str().unwrap()).collect();
        assert_eq!(macs, expected, "{query}: {page}");
    }
    let page: Value = app.admin(Method::GET, "/api/v1/devices?status=online&sort=mac&limit=1").send().await.unwrap().json().await.unwrap();
    assert_eq!(page["total"], 2, "the total counts every match, not the page");
    app.stop().await;
}

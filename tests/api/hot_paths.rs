//! The hot paths' caches (`services::devices::caches`): an offered check-in's current attempt,
//! devices by MAC (seed 001 and the other MAC protocols), seed-003 configuration files and the
//! product names. Each test changes what a cache holds through the real server and checks that
//! the very next request sees the change, so each fails if that cache served stale data.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

/// Registers a device with a token; returns (device id, token).
async fn device(app: &TestApp, mac: &str, product: &str, tags: &[&str]) -> (String, String) {
    let body = json!({"mac": mac, "product": product, "hardware": "esp32", "version": "1.0.0", "tags": tags, "issue_token": true});
    let response = app.admin(Method::POST, "/api/v1/devices").json(&body).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    (body["id"].as_str().unwrap().to_string(), body["token"].as_str().unwrap().to_string())
}

/// A GET check-in at 1.0.0: the offered version, or null.
async fn offered(app: &TestApp, token: &str) -> Value {
    let response = app.client.get(app.url("/api/v1/device/checkin?version=1.0.0")).bearer_auth(token).send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body["update"]["version"].clone()
}

async fn update_status(app: &TestApp, token: &str, body: Value) -> u16 {
    app.client.post(app.url("/api/v1/device/update-status")).bearer_auth(token).json(&body).send().await.unwrap().status().as_u16()
}

async fn attempts(app: &TestApp, device_id: &str) -> Vec<Value> {
    let history: Value =
        app.admin(Method::GET, &format!("/api/v1/devices/{device_id}/updates")).send().await.unwrap().json().await.unwrap();
    history["items"].as_array().unwrap().clone()
}

async fn ok(response: reqwest::Result<reqwest::Response>) -> Value {
    let response = response.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{status}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

#[tokio::test]
async fn an_offered_check_in_sees_each_report_and_each_new_attempt_at_once() {
    let app = spawn_app().await;
    let first = app.create_artifact(random_bytes(3000, 140), "product=lamp&version=1.1.0&hardware=esp32").await;
    let (device_id, token) = device(&app, "02:00:00:00:14:01", "lamp", &[]).await;

    // Offered again and again: one attempt (the cached one is reused).
    for _ in 0..3 {
        assert_eq!(offered(&app, &token).await, "1.1.0");
    }
    assert_eq!(attempts(&app, &device_id).await.len(), 1);

    // The device fails it: the next check-in must not offer the build again at once (a stale
    // cached attempt, still `offered`, would be reused).
    assert_eq!(update_status(&app, &token, json!({"release_id": first["id"], "state": "failed", "message": "flash"})).await, 200);
    assert_eq!(offered(&app, &token).await, Value::Null, "the failed attempt was not seen");

    // A newer build: a new attempt, which the next check-in and report use.
    let second = app.create_artifact(random_bytes(3000, 141), "product=lamp&version=1.2.0&hardware=esp32").await;
    assert_eq!(offered(&app, &token).await, "1.2.0");
    assert_eq!(offered(&app, &token).await, "1.2.0");
    let history = attempts(&app, &device_id).await;
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(history[0]["release_id"], second["id"]);
    assert_eq!(update_status(&app, &token, json!({"release_id": second["id"], "state": "downloading"})).await, 200);
    assert_eq!(offered(&app, &token).await, "1.2.0", "an attempt in progress is offered on");
    assert_eq!(update_status(&app, &token, json!({"release_id": second["id"], "state": "rejected", "message": "no space"})).await, 200);
    assert_eq!(offered(&app, &token).await, Value::Null, "the rejected attempt was not seen");

    // A pin opens yet another attempt at once (the failed 1.1.0 attempt is no longer the
    // current one, so it does not hold the pin back), which reports then reach.
    ok(app.admin(Method::PATCH, &format!("/api/v1/devices/{device_id}")).json(&json!({"target_version": "1.1.0"})).send().await).await;
    assert_eq!(offered(&app, &token).await, "1.1.0", "the pin was not seen");
    let history = attempts(&app, &device_id).await;
    assert_eq!(history.len(), 3, "{history:?}");
    assert_eq!(update_status(&app, &token, json!({"release_id": first["id"], "state": "failed"})).await, 200);
    assert_eq!(offered(&app, &token).await, Value::Null, "the failed pinned attempt was not seen");
    app.stop().await;
}

#[tokio::test]
async fn a_deleted_device_s_cached_attempt_is_not_served_to_a_new_device() {
    let app = spawn_app().await;
    app.create_artifact(random_bytes(3000, 142), "product=lamp&version=1.1.0&hardware=esp32").await;
    let (old_id, old_token) = device(&app, "02:00:00:00:14:02", "lamp", &[]).await;
    assert_eq!(offered(&app, &old_token).await, "1.1.0");
    assert_eq!(app.admin(Method::DELETE, &format!("/api/v1/devices/{old_id}")).send().await.unwrap().status(), 204);
    assert_eq!(app.client.get(app.url("/api/v1/device/checkin?version=1.0.0")).bearer_auth(&old_token).send().await.unwrap().status(), 401);

    // The same MAC registered again is another device, with its own attempts.
    let (new_id, new_token) = device(&app, "02:00:00:00:14:02", "lamp", &[]).await;
    assert_eq!(offered(&app, &new_token).await, "1.1.0");
    let history = attempts(&app, &new_id).await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["current"], true);
    app.stop().await;
}

// ---- seed 001: devices by MAC and the product names ----

const SECRET: &str = "sekret";
const MAC: &str = "AA:BB:CC:DD:EE:FF";
/// djb2 of MAC (without colons) and SECRET, as PanicButton.ino computes it.
const TOKEN: &str = "e67490f8";

async fn seed001_check(app: &TestApp, version: &str) -> (u16, Value) {
    let response = app
        .client
        .get(app.url(&format!("/api/firmware?device_id=PanicAlarm_EEFF&hardware=esp32&version={version}&mac={MAC}")))
        .header("X-Device-Auth", TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn a_seed_001_check_sees_pins_deletions_and_new_builds_at_once() {
    // No default product: the only product there is.
    let app = spawn_app_with(|s| s.compat.shared_secret = Some(SECRET.into())).await;
    app.create_artifact(random_bytes(3000, 143), "product=panic&version=1.3.7&hardware=esp32").await;
    let added = ok(app.admin(Method::POST, "/api/v1/devices").json(&json!({"mac": MAC, "product": "panic"})).send().await).await;
    let device_id = added["id"].as_str().unwrap().to_string();

    let (status, body) = seed001_check(&app, "1.3.7").await;
    assert_eq!((status, &body["update_available"]), (200, &json!(false)), "{body}");
    let (_, body) = seed001_check(&app, "1.3.7").await;
    assert_eq!(body["update_available"], false);

    // A new build is offered at once.
    app.create_artifact(random_bytes(3000, 144), "product=panic&version=1.3.8&hardware=esp32").await;
    let (_, body) = seed001_check(&app, "1.3.7").await;
    assert_eq!(body["firmware_version"], "1.3.8", "{body}");

    // A pin to the running version: nothing to offer, at once (a stale cached device has no pin).
    ok(app.admin(Method::PATCH, &format!("/api/v1/devices/{device_id}")).json(&json!({"target_version": "1.3.7"})).send().await).await;
    let (_, body) = seed001_check(&app, "1.3.7").await;
    assert_eq!(body["update_available"], false, "the pin was not seen: {body}");
    ok(app.admin(Method::PATCH, &format!("/api/v1/devices/{device_id}")).json(&json!({"target_version": null})).send().await).await;
    let (_, body) = seed001_check(&app, "1.3.7").await;
    assert_eq!(body["firmware_version"], "1.3.8", "the unpin was not seen: {body}");

    // The device reports its new version: recorded, then up to date.
    let (_, body) = seed001_check(&app, "1.3.8").await;
    assert_eq!(body["update_available"], false);
    let stored = ok(app.admin(Method::GET, &format!("/api/v1/devices/{device_id}")).send().await).await;
    assert_eq!(stored["version"], "1.3.8");
    assert_eq!(stored["attributes"], json!({"board": "esp32", "device_id": "PanicAlarm_EEFF"}));

    // Deleted: refused at once.
    assert_eq!(app.admin(Method::DELETE, &format!("/api/v1/devices/{device_id}")).send().await.unwrap().status(), 204);
    let (status, body) = seed001_check(&app, "1.3.8").await;
    assert_eq!(status, 403, "a deleted device was still served: {body}");
    app.stop().await;
}

#[tokio::test]
async fn a_new_product_ends_the_default_product_at_once() {
    let app = spawn_app_with(|s| s.compat.shared_secret = Some(SECRET.into())).await;
    app.create_artifact(random_bytes(3000, 145), "product=panic&version=1.3.7&hardware=esp32").await;
    ok(app.admin(Method::POST, "/api/v1/devices").json(&json!({"mac": MAC, "product": "panic"})).send().await).await;
    ok(app.admin(Method::POST, "/api/v1/devices").json(&json!({"mac": "02:00:00:00:14:05", "product": "other"})).send().await).await;
    let listed = |app: &TestApp| {
        let request = app.client.get(app.url("/admin/api/devices")).header("X-Admin-API-Key", ADMIN_KEY);
        async move {
            let body: Value = ok(request.send().await).await;
            let mut macs: Vec<String> = body.as_object().unwrap().keys().cloned().collect();
            macs.sort();
            macs
        }
    };
    // `panic` is the only product: the seed-001 view is its devices.
    assert_eq!(listed(&app).await, [MAC]);
    assert_eq!(listed(&app).await, [MAC]);
    // A second product: no default product any more, so every device, at once.
    ok(app.admin(Method::PUT, "/api/v1/products/other").json(&json!({"provisioning": "open"})).send().await).await;
    assert_eq!(listed(&app).await, ["02:00:00:00:14:05", MAC], "the new product was not seen");
    app.stop().await;
}

// ---- seed 003: configuration files ----

async fn put_config(app: &TestApp, path: &str, content: Value) {
    ok(app.admin(Method::PUT, path).json(&json!({"content": content})).send().await).await;
}

async fn file(app: &TestApp, url: &str, token: Option<&str>) -> (u16, Value, String) {
    let mut request = app.client.get(url);
    if let Some(token) = token {
        request = request.header("X-Device-Token", token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let etag = response.headers().get("etag").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body, etag)
}

#[tokio::test]
async fn a_seed_003_file_sees_every_layer_secret_tag_and_device_change_at_once() {
    let app = spawn_app().await;
    let (device_id, token) = device(&app, "02:00:00:00:14:03", "lamp", &[]).await;
    let url = app.url("/api/configs/02-00-00-00-14-03.json");
    put_config(&app, "/api/configs/02-00-00-00-14-03", json!({"deviceName": "a", "wifi": {"password": {"$secret": "one"}}})).await;
    put_config(&app, "/api/v1/configs/product/lamp", json!({"interval": 60})).await;

    let (status, anonymous, public_etag) = file(&app, &url, None).await;
    assert_eq!((status, &anonymous), (200, &json!({"deviceName": "a", "interval": 60, "wifi": {}})));
    let (_, whole, etag) = file(&app, &url, Some(&token)).await;
    assert_eq!(whole, json!({"deviceName": "a", "interval": 60, "wifi": {"password": "one"}}));
    assert_eq!(public_etag, format!("{}-public\"", etag.trim_end_matches('"')));
    // Served again (from the cache): the same.
    assert_eq!(file(&app, &url, None).await.1, anonymous);
    assert_eq!(file(&app, &url, Some(&token)).await.1, whole);

    // The device's own document changes, its secret too.
    put_config(&app, "/api/configs/02-00-00-00-14-03", json!({"deviceName": "b", "wifi": {"password": {"$secret": "two"}}})).await;
    assert_eq!(file(&app, &url, None).await.1["deviceName"], "b");
    let (_, whole, new_etag) = file(&app, &url, Some(&token)).await;
    assert_eq!(whole["wifi"]["password"], "two", "the new secret was not seen");
    assert_ne!(new_etag, etag);

    // The product's layer changes.
    put_config(&app, "/api/v1/configs/product/lamp", json!({"interval": 30})).await;
    assert_eq!(file(&app, &url, None).await.1["interval"], 30, "the product layer change was not seen");

    // A tag layer applies once the device has the tag.
    put_config(&app, "/api/v1/configs/tag/kitchen", json!({"room": "kitchen"})).await;
    assert_eq!(file(&app, &url, None).await.1.get("room"), None);
    ok(app.admin(Method::PATCH, &format!("/api/v1/devices/{device_id}")).json(&json!({"tags": ["kitchen"]})).send().await).await;
    assert_eq!(file(&app, &url, None).await.1["room"], "kitchen", "the new tag was not seen");

    // Another product: its layers, not the old one's.
    put_config(&app, "/api/v1/configs/product/heater", json!({"interval": 5})).await;
    ok(app.admin(Method::PATCH, &format!("/api/v1/devices/{device_id}")).json(&json!({"product": "heater"})).send().await).await;
    assert_eq!(file(&app, &url, None).await.1["interval"], 5, "the device's new product was not seen");

    // The device's own document deleted (the product and tag layers remain).
    assert_eq!(app.admin(Method::DELETE, "/api/configs/02-00-00-00-14-03").send().await.unwrap().status(), 204);
    let (_, body, _) = file(&app, &url, None).await;
    assert_eq!(body, json!({"interval": 5, "room": "kitchen"}), "the deletion was not seen");
    app.stop().await;
}

#[tokio::test]
async fn a_cached_seed_003_file_is_served_only_to_its_own_device_and_current_tokens() {
    let app = spawn_app().await;
    let (device_id, token) = device(&app, "02:00:00:00:14:04", "lamp", &[]).await;
    let (_, other) = device(&app, "02:00:00:00:14:06", "lamp", &[]).await;
    let url = app.url("/api/configs/02-00-00-00-14-04.json");
    put_config(&app, "/api/configs/02-00-00-00-14-04", json!({"password": {"$secret": "mine"}})).await;
    put_config(&app, "/api/configs/02-00-00-00-14-06", json!({"password": {"$secret": "theirs"}})).await;
    assert_eq!(file(&app, &url, Some(&token)).await.1, json!({"password": "mine"}));

    // Another device's token does not read it, cached or not.
    assert_eq!(file(&app, &url, Some(&other)).await.0, 403);
    let (_, theirs, _) = file(&app, &app.url("/api/configs/02-00-00-00-14-06.json"), Some(&other)).await;
    assert_eq!(theirs, json!({"password": "theirs"}));

    // A rotated token: the old one is refused at once, the new one reads.
    let rotated = ok(app.admin(Method::POST, &format!("/api/v1/devices/{device_id}/token")).send().await).await;
    let new_token = rotated["token"].as_str().unwrap();
    assert_eq!(file(&app, &url, Some(&token)).await.0, 401);
    assert_eq!(file(&app, &url, Some(new_token)).await.1, json!({"password": "mine"}));

    // Deleted device: the MAC's own document alone (seed 003 keeps documents of any MAC), not
    // what was cached for the device.
    put_config(&app, "/api/v1/configs/product/lamp", json!({"product_only": true})).await;
    assert_eq!(file(&app, &url, None).await.1, json!({"product_only": true}));
    assert_eq!(app.admin(Method::DELETE, &format!("/api/v1/devices/{device_id}")).send().await.unwrap().status(), 204);
    assert_eq!(file(&app, &url, None).await.1, json!({}), "the deleted device's layers were still served");
    app.stop().await;
}

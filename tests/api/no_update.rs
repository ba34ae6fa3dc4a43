//! Issue 16: every "no update" an operator can fix is visible in the device record
//! (`no_update`: reason and remedy), whichever protocol the device speaks.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

async fn reason_after_checkin(app: &TestApp, id: &str, token: &str) -> Value {
    let response =
        app.client.post(app.url("/api/v1/device/checkin")).bearer_auth(token).json(&json!({"version": "1.0.0"})).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let device: Value = app.admin(Method::GET, &format!("/api/v1/devices/{id}")).send().await.unwrap().json().await.unwrap();
    if !device["no_update"].is_null() {
        assert!(device["no_update"]["remedy"].as_str().is_some_and(|r| !r.is_empty()), "{device}");
    }
    device["no_update"]["reason"].clone()
}

async fn patch(app: &TestApp, id: &str, body: Value) {
    let response = app.admin(Method::PATCH, &format!("/api/v1/devices/{id}")).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

#[tokio::test]
async fn each_fixable_reason_is_in_the_device_record_until_it_is_fixed() {
    let app = spawn_app().await;
    let body = json!({"mac": "02:00:00:00:16:a1", "version": "1.0.0", "issue_token": true});
    let created: Value = app.admin(Method::POST, "/api/v1/devices").json(&body).send().await.unwrap().json().await.unwrap();
    let (id, token) = (created["id"].as_str().unwrap(), created["token"].as_str().unwrap());
    assert_eq!(created["no_update"], Value::Null, "nothing decided yet");
    assert_eq!(reason_after_checkin(&app, id, token).await, "unknown_product");

    // Builds for two hardware ids: the device's cannot be guessed.
    app.create_artifact(random_bytes(2048, 1), "product=nu&version=1.0.0&hardware=esp32").await;
    app.create_artifact(random_bytes(2048, 2), "product=nu&version=1.0.0&hardware=esp32s3").await;
    patch(&app, id, json!({"product": "nu"})).await;
    assert_eq!(reason_after_checkin(&app, id, token).await, "unknown_hardware");
    patch(&app, id, json!({"hardware": "esp32c3"})).await;
    assert_eq!(reason_after_checkin(&app, id, token).await, "no_builds");
    patch(&app, id, json!({"hardware": "esp32", "target_version": "9.9.9"})).await;
    assert_eq!(reason_after_checkin(&app, id, token).await, "pinned_build_missing");
    patch(&app, id, json!({"target_version": null})).await;
    // Up to date: nothing to fix.
    assert_eq!(reason_after_checkin(&app, id, token).await, Value::Null);

    // A newer build in a release no rollout offers yet: held.
    let build = app.create_artifact(random_bytes(2048, 3), "product=nu&version=2.0.0&hardware=esp32").await;
    let release: Value = app
        .admin(Method::POST, "/api/v1/releases")
        .json(&json!({"product": "nu", "version": "2.0.0", "artifact_ids": [build["id"]]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reason_after_checkin(&app, id, token).await, "held_by_rollout");
    let rollout = app
        .admin(Method::POST, "/api/v1/rollouts")
        .json(&json!({"release_id": release["id"], "stages": [{"percent": 100}], "start": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(rollout.status(), 201);
    assert_eq!(reason_after_checkin(&app, id, token).await, Value::Null, "offered now");
    app.stop().await;
}

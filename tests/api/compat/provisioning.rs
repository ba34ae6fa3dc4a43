//! Seed 004: `GET /debug/provisioning` with the MAC in a JSON body or the query string.

use serde_json::{Value, json};

use super::*;
use crate::helpers::*;

async fn app() -> TestApp {
    spawn_app_with(|s| {
        s.compat.default_product = Some("elevia".into());
        s.compat.seed004_debug = true;
    })
    .await
}

#[tokio::test]
async fn a_get_with_a_json_body_creates_the_device_and_returns_a_working_token() {
    let app = app().await;
    // A GET with a body, as the seed describes it; devices may omit the Content-Type.
    let body = r#"{"mac-address": "CE:13:14:15:16:17"}"#;
    let raw = format!("GET /debug/provisioning HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n{body}", app.addr, body.len());

    let response = send(&app, &raw).await;

    assert_eq!(response.status, 200, "{}", response.head);
    let answer: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(answer.as_object().unwrap().len(), 1);
    let token = answer["access-token"].as_str().unwrap();
    let checkin = app.client.get(app.url("/api/v1/device/checkin?version=1.0.0")).bearer_auth(token).send().await.unwrap();
    assert_eq!(checkin.status(), 200);
    assert_eq!(device(&app, "CE:13:14:15:16:17").await["product"], "elevia");
    app.stop().await;
}

#[tokio::test]
async fn the_mac_may_come_in_the_query_and_a_new_token_replaces_the_old_one_only_when_allowed() {
    let app = app().await;
    let first: Value =
        app.client.get(app.url("/debug/provisioning?mac-address=CE-13-14-15-16-18")).send().await.unwrap().json().await.unwrap();
    let again = || {
        app.client
            .get(app.url("/debug/provisioning"))
            .header("content-type", "application/json")
            .body(json!({"mac-address": "ce:13:14:15:16:18"}).to_string())
            .send()
    };
    // Anyone who knows the MAC could ask: a device that holds a token keeps it.
    assert_eq!(error_code(again().await.unwrap(), 409).await, "device_has_token");
    // After an operator allows it (e.g. the device lost its flash), it gets a new one.
    let id = device(&app, "CE:13:14:15:16:18").await["id"].as_str().unwrap().to_string();
    let until = (chrono::Utc::now() + chrono::Duration::minutes(10)).to_rfc3339();
    let allowed = app
        .admin(reqwest::Method::PATCH, &format!("/api/v1/devices/{id}"))
        .json(&json!({"reprovision_until": until}))
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    let second: Value = again().await.unwrap().json().await.unwrap();

    assert_ne!(first["access-token"], second["access-token"]);
    let old = app.client.get(app.url("/api/v1/device/checkin")).bearer_auth(first["access-token"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(old.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn a_strict_product_or_a_bad_mac_is_refused_and_the_path_can_be_switched_off() {
    let app = app().await;
    set_provisioning(&app, "elevia", "preregistered").await;
    let refused = app.client.get(app.url("/debug/provisioning?mac=CE:13:14:15:16:19")).send().await.unwrap();
    assert_eq!(error_code(refused, 403).await, "forbidden");
    // The seed's own example MAC has four bytes.
    let short = app.client.get(app.url("/debug/provisioning")).body(r#"{"mac-address": "CE:13:14:15"}"#).send().await.unwrap();
    assert_eq!(error_code(short, 400).await, "invalid_mac");
    let missing = app.client.get(app.url("/debug/provisioning")).send().await.unwrap();
    assert_eq!(error_code(missing, 400).await, "missing_mac");
    app.stop().await;

    let off = spawn_app_with(|s| s.compat.seed004_debug = false).await;
    assert_eq!(off.client.get(off.url("/debug/provisioning?mac=CE:13:14:15:16:19")).send().await.unwrap().status(), 404);
    off.stop().await;
}

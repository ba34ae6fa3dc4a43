//! Seed 002, the Cyberdeck OTA server: the device's plain `HTTPClient` check
//! (`GET /ota?version=1.00`), then `httpUpdate.update()` on the same URL, and `/ota/info`.

use serde_json::{Value, json};

use super::*;
use crate::helpers::*;

/// `http.begin(url); http.GET()` of ESP32 `HTTPClient` (HTTP/1.1).
fn check(app: &TestApp, version: &str) -> String {
    request(
        "GET",
        &format!("/ota?version={version}"),
        "HTTP/1.1",
        app,
        &[
            ("User-Agent", "ESP32HTTPClient".into()),
            ("Connection", "keep-alive".into()),
            ("Accept-Encoding", "identity;q=1,chunked;q=0.1,*;q=0".into()),
        ],
    )
}

async fn two_builds(app: &TestApp) -> (Vec<u8>, Vec<u8>) {
    let first = image("cyberdeck", "1.00", 0, 10_000);
    let second = image("cyberdeck", "1.02", 0, 12_000);
    app.create_artifact(first.clone(), "notes=first").await;
    app.create_artifact(second.clone(), "notes=Fixed%20WiFi%20reconnect%20bug").await;
    (first, second)
}

#[tokio::test]
async fn nothing_uploaded_is_503_no_firmware_available() {
    let app = spawn_app().await;

    let response = send(&app, &check(&app, "1.00")).await;

    assert_eq!(response.status, 503);
    assert_eq!(response.body, b"No firmware available");
    app.stop().await;
}

#[tokio::test]
async fn an_older_device_gets_the_bin_and_a_current_or_newer_one_the_text_uptodate() {
    let app = spawn_app().await;
    let (_, second) = two_builds(&app).await;

    let older = send(&app, &check(&app, "1.00")).await;
    assert_eq!(older.status, 200, "{}", older.head);
    assert_eq!(older.header("content-length"), Some(second.len().to_string().as_str()));
    assert_eq!(older.header("x-md5"), Some(md5_hex(&second).as_str()));
    assert_eq!(older.header("transfer-encoding"), None);
    assert!(older.body == second);
    for version in ["1.02", "1.2.0", "2.0"] {
        let current = send(&app, &check(&app, version)).await;
        assert_eq!(current.status, 200, "{version}");
        assert_eq!(current.body, b"Uptodate", "{version}");
    }
    let info: Value = app.client.get(app.url("/ota/info")).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["latest"], "1.02");
    assert_eq!(info["sha256"], sha256_hex(&second));
    assert_eq!(info["size"], second.len());
    assert_eq!(info["notes"], "Fixed WiFi reconnect bug");
    let uploaded = info["uploaded"].as_str().unwrap();
    assert!(uploaded.len() == 20 && uploaded.ends_with(" UTC") && uploaded.as_bytes()[10] == b' ', "{uploaded}");
    app.stop().await;
}

#[tokio::test]
async fn the_build_an_operator_marks_latest_is_what_devices_receive() {
    let app = spawn_app().await;
    let (first, _) = two_builds(&app).await;

    let marked =
        app.admin(reqwest::Method::PUT, "/api/v1/products/cyberdeck/latest").json(&json!({"version": "1.00"})).send().await.unwrap();
    assert_eq!(marked.status(), 200);
    let marked: Value = marked.json().await.unwrap();
    assert_eq!((marked["version"].as_str(), marked["marked"].as_bool()), (Some("1.00"), Some(true)));

    assert_eq!(send(&app, &check(&app, "1.00")).await.body, b"Uptodate");
    assert_eq!(send(&app, &check(&app, "0.9")).await.body, first);
    let info: Value = app.client.get(app.url("/ota/info")).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["latest"], "1.00");

    let unmarked = app.admin(reqwest::Method::DELETE, "/api/v1/products/cyberdeck/latest").send().await.unwrap();
    assert_eq!(unmarked.status(), 204);
    assert_eq!(send(&app, &check(&app, "1.00")).await.status, 200);
    assert_ne!(send(&app, &check(&app, "1.00")).await.body, b"Uptodate");
    let unknown =
        app.admin(reqwest::Method::PUT, "/api/v1/products/cyberdeck/latest").json(&json!({"version": "7.0"})).send().await.unwrap();
    assert_eq!(error_code(unknown, 404).await, "not_found");
    app.stop().await;
}

#[tokio::test]
async fn the_httpupdate_call_identifies_the_device_and_records_the_update() {
    let app = spawn_app().await;
    let (first, second) = two_builds(&app).await;
    // The README sketch: `httpUpdate.update(client, host, 5000, "/ota?version=1.00")`.
    let update = request(
        "GET",
        "/ota?version=1.00",
        "HTTP/1.0",
        &app,
        &[
            ("User-Agent", "ESP32-http-Update".into()),
            ("Connection", "close".into()),
            ("Cache-Control", "no-cache".into()),
            ("x-ESP32-STA-MAC", "30:AE:A4:00:00:01".into()),
            ("x-ESP32-AP-MAC", "30:AE:A4:00:00:02".into()),
            ("x-ESP32-free-space", "1966080".into()),
            ("x-ESP32-sketch-size", first.len().to_string()),
            ("x-ESP32-sketch-md5", md5_hex(&first)),
            ("x-ESP32-chip-size", "4194304".into()),
            ("x-ESP32-sdk-version", "v4.4.7".into()),
            ("x-ESP32-mode", "sketch".into()),
        ],
    );

    let response = send(&app, &update).await;

    assert_eq!(response.status, 200, "{}", response.head);
    assert!(response.body == second);
    let device = device(&app, "30:AE:A4:00:00:01").await;
    assert_eq!(device["version"], "1.00");
    assert_eq!(updates(&app, device["id"].as_str().unwrap()).await[0]["to_version"], "1.02");
    app.stop().await;
}

#[tokio::test]
async fn with_several_products_the_default_product_setting_chooses() {
    let app = spawn_app_with(|s| s.compat.default_product = Some("cyberdeck".into())).await;
    two_builds(&app).await;
    app.create_artifact(image("other", "9.0.0", 0, 1000), "").await;

    let response = send(&app, &check(&app, "1.02")).await;

    assert_eq!(response.body, b"Uptodate");
    app.stop().await;
}

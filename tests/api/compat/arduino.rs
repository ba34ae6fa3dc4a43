//! Arduino `HTTPUpdate` (arduino-esp32) and `ESP8266httpUpdate`, unmodified: their exact
//! HTTP/1.0 requests, and the bytes they depend on (status, Content-Length without chunking,
//! `x-MD5` as 32 lower-case hex, the image starting with 0xE9).

use serde_json::json;

use super::*;
use crate::helpers::*;

const MAC: &str = "24:0A:C4:12:34:56";

/// `HTTPUpdate::handleUpdate()` of the newest arduino-esp32: HTTP/1.0 (`useHTTP10(true)`),
/// its User-Agent, then its headers in its order and casing. `version` is
/// `httpUpdate.update(client, url, currentVersion)`'s last argument, sent only if not empty.
fn esp32_request(app: &TestApp, path: &str, running: &[u8], version: Option<&str>, free_space: u64, mode: &str) -> String {
    let appended_sha256 = hex::encode_upper(&running[running.len() - 32..]);
    let mut headers = vec![
        ("User-Agent", "ESP32-http-Update".to_string()),
        ("Connection", "close".to_string()),
        ("Cache-Control", "no-cache".to_string()),
        ("x-ESP32-BASE-MAC", MAC.to_string()),
        ("x-ESP32-STA-MAC", MAC.to_string()),
        ("x-ESP32-AP-MAC", "24:0A:C4:12:34:57".to_string()),
        ("x-ESP32-free-space", free_space.to_string()),
        ("x-ESP32-sketch-size", running.len().to_string()),
        ("x-ESP32-sketch-md5", md5_hex(running)),
        ("x-ESP32-sketch-sha256", appended_sha256),
        ("x-ESP32-chip-size", "4194304".to_string()),
        ("x-ESP32-sdk-version", "v5.3.1".to_string()),
        ("x-ESP32-mode", mode.to_string()),
    ];
    if let Some(version) = version {
        headers.push(("x-ESP32-version", version.to_string()));
    }
    request("GET", path, "HTTP/1.0", app, &headers)
}

/// `ESP8266HTTPUpdate::handleUpdate()`: its headers, and `Content-Length: 0` even on GET.
fn esp8266_request(app: &TestApp, path: &str, running: &[u8], version: Option<&str>, mode: &str) -> String {
    let mut headers = vec![
        ("User-Agent", "ESP8266-http-Update".to_string()),
        ("Connection", "keep-alive".to_string()),
        ("x-ESP8266-Chip-ID", "1234567".to_string()),
        ("x-ESP8266-STA-MAC", "5C:CF:7F:00:00:01".to_string()),
        ("x-ESP8266-AP-MAC", "5E:CF:7F:00:00:01".to_string()),
        ("x-ESP8266-free-space", "2000000".to_string()),
        ("x-ESP8266-sketch-size", running.len().to_string()),
        ("x-ESP8266-sketch-md5", md5_hex(running)),
        ("x-ESP8266-chip-size", "4194304".to_string()),
        ("x-ESP8266-sdk-version", "2.2.2-dev(38a443e)".to_string()),
        ("x-ESP8266-mode", mode.to_string()),
    ];
    if let Some(version) = version {
        headers.push(("x-ESP8266-version", version.to_string()));
    }
    headers.push(("Content-Length", "0".to_string()));
    request("GET", path, "HTTP/1.0", app, &headers)
}

async fn builds(app: &TestApp) -> (Vec<u8>, Vec<u8>) {
    let old = image("lamp", "1.0.0", 0, 10_000);
    let new = image("lamp", "1.1.0", 0, 40_000);
    app.create_artifact(old.clone(), "").await;
    app.create_artifact(new.clone(), "").await;
    (old, new)
}

#[tokio::test]
async fn an_older_device_gets_the_raw_image_with_length_md5_and_sha256_never_chunked() {
    let app = spawn_app().await;
    let (old, new) = builds(&app).await;

    let response = send(&app, &esp32_request(&app, "/api/v1/arduino/lamp/update", &old, Some("1.0.0"), 1_966_080, "sketch")).await;

    assert_eq!(response.status, 200, "{}", response.head);
    assert_eq!(response.header("content-length"), Some(new.len().to_string().as_str()));
    assert_eq!(response.header("transfer-encoding"), None);
    let md5 = response.header("x-md5").unwrap();
    assert!(md5.len() == 32 && md5.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{md5}");
    assert_eq!(md5, md5_hex(&new));
    assert_eq!(response.header("x-sha256"), Some(sha256_hex(&new).as_str()));
    assert_eq!(response.body[0], 0xE9, "HTTPUpdate peeks for the image magic");
    assert!(response.body == new);

    // The device was registered (open mode) with what it told, and the offer recorded.
    let device = device(&app, MAC).await;
    assert_eq!(
        (device["product"].as_str(), device["hardware"].as_str(), device["version"].as_str()),
        (Some("lamp"), Some("esp32"), Some("1.0.0"))
    );
    assert_eq!(device["attributes"]["sdk_version"], "v5.3.1");
    let history = updates(&app, device["id"].as_str().unwrap()).await;
    assert_eq!((history[0]["state"].as_str(), history[0]["to_version"].as_str()), (Some("offered"), Some("1.1.0")));
    app.stop().await;
}

#[tokio::test]
async fn an_up_to_date_device_gets_304_and_its_version_completes_the_update() {
    let app = spawn_app().await;
    let (old, new) = builds(&app).await;
    send(&app, &esp32_request(&app, "/api/v1/arduino/lamp/update", &old, Some("1.0.0"), 1_966_080, "sketch")).await;

    let response = send(&app, &esp32_request(&app, "/api/v1/arduino/lamp/update", &new, Some("1.1.0"), 1_966_080, "sketch")).await;

    assert_eq!(response.status, 304, "{}", response.head);
    assert!(response.body.is_empty());
    let device = device(&app, MAC).await;
    assert_eq!(updates(&app, device["id"].as_str().unwrap()).await[0]["state"], "succeeded");
    app.stop().await;
}

#[tokio::test]
async fn without_a_version_header_the_running_build_is_recognised_by_its_sha256_or_md5() {
    let app = spawn_app().await;
    let (old, new) = builds(&app).await;

    // Running the newest build: recognised by x-ESP32-sketch-sha256 (upper case).
    let current = send(&app, &esp32_request(&app, "/api/v1/arduino/lamp/update", &new, None, 1_966_080, "sketch")).await;
    assert_eq!(current.status, 304, "{}", current.head);
    assert_eq!(device(&app, MAC).await["version"], "1.1.0");
    // ESP8266 sends only an MD5 of the sketch.
    let esp8266 = send(&app, &esp8266_request(&app, "/api/v1/arduino/lamp/update", &old, None, "sketch")).await;
    assert_eq!(esp8266.status, 200, "{}", esp8266.head);
    assert_eq!(device(&app, "5C:CF:7F:00:00:01").await["version"], "1.0.0");
    app.stop().await;
}

#[tokio::test]
async fn a_build_larger_than_the_free_space_is_not_offered_and_the_history_says_why() {
    let app = spawn_app().await;
    let (old, new) = builds(&app).await;

    let response = send(&app, &esp32_request(&app, "/api/v1/arduino/lamp/update", &old, Some("1.0.0"), 20_000, "sketch")).await;

    assert_eq!(response.status, 304, "{}", response.head);
    let device = device(&app, MAC).await;
    let attempt = &updates(&app, device["id"].as_str().unwrap()).await[0];
    assert_eq!(attempt["state"], "rejected");
    let message = attempt["message"].as_str().unwrap();
    assert!(message.contains(&new.len().to_string()) && message.contains("20000"), "{message}");
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_device_of_a_strict_product_gets_403() {
    let app = spawn_app().await;
    let (old, _) = builds(&app).await;
    set_provisioning(&app, "lamp", "preregistered").await;

    let response = send(&app, &esp32_request(&app, "/api/v1/arduino/lamp/update", &old, Some("1.0.0"), 1_966_080, "sketch")).await;

    assert_eq!(response.status, 403, "{}", response.head);
    // Once an operator registers it, it is served.
    let registered = app
        .admin(reqwest::Method::POST, "/api/v1/devices")
        .json(&json!({"mac": MAC, "product": "lamp", "hardware": "esp32"}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);
    let response = send(&app, &esp32_request(&app, "/api/v1/arduino/lamp/update", &old, Some("1.0.0"), 1_966_080, "sketch")).await;
    assert_eq!(response.status, 200, "{}", response.head);
    app.stop().await;
}

#[tokio::test]
async fn the_path_without_a_product_uses_the_only_product() {
    let app = spawn_app().await;
    let (old, new) = builds(&app).await;

    let response = send(&app, &esp32_request(&app, "/api/v1/arduino/update", &old, Some("1.0.0"), 1_966_080, "sketch")).await;

    assert_eq!(response.status, 200, "{}", response.head);
    assert!(response.body == new);
    app.stop().await;
}

#[tokio::test]
async fn esp8266_version_mode_gets_x_version() {
    let app = spawn_app().await;
    let (old, _) = builds(&app).await;

    let response = send(&app, &esp8266_request(&app, "/api/v1/arduino/lamp/update", &old, Some("1.0.0"), "version")).await;

    assert_eq!(response.status, 200, "{}", response.head);
    assert_eq!(response.header("x-version"), Some("1.1.0"));
    app.stop().await;
}

#[tokio::test]
async fn filesystem_modes_serve_the_products_filesystem_images() {
    let app = spawn_app().await;
    let (old, _) = builds(&app).await;
    let littlefs = random_bytes(8192, 7);
    app.create_artifact(littlefs.clone(), "product=lamp.littlefs&version=1.1.0&hardware=esp32").await;

    let response = send(&app, &esp32_request(&app, "/api/v1/arduino/lamp/update", &old, Some("1.0.0"), 1_966_080, "littlefs")).await;
    assert_eq!(response.status, 200, "{}", response.head);
    assert_eq!(response.header("content-length"), Some("8192"));
    assert!(response.body == littlefs);
    let current = send(&app, &esp32_request(&app, "/api/v1/arduino/lamp/update", &old, Some("1.1.0"), 1_966_080, "littlefs")).await;
    assert_eq!(current.status, 304);
    let spiffs = send(&app, &esp32_request(&app, "/api/v1/arduino/lamp/update", &old, Some("1.0.0"), 1_966_080, "spiffs")).await;
    assert_eq!(spiffs.status, 304, "no SPIFFS image was uploaded");
    app.stop().await;
}

#[tokio::test]
async fn a_request_without_updater_headers_is_a_400_and_the_surface_can_be_switched_off() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/api/v1/arduino/lamp/update")).send().await.unwrap();
    assert_eq!(response.status(), 400);
    app.stop().await;

    let off = spawn_app_with(|s| s.compat.arduino = false).await;
    let response = off.client.get(off.url("/api/v1/arduino/lamp/update")).header("x-ESP32-STA-MAC", MAC).send().await.unwrap();
    assert_eq!(response.status(), 404);
    off.stop().await;
}

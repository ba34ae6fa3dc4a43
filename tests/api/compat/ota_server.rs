//! Seed 001, "ESP32 OTA Update Server": the PanicButton firmware's update check and download,
//! and the admin API its Svelte frontend calls.

use reqwest::Method;
use serde_json::{Value, json};

use super::*;
use crate::helpers::*;

const SECRET: &str = "sekret";
const MAC: &str = "AA:BB:CC:DD:EE:FF";
/// What `generateAuthToken()` of PanicButton.ino sends for MAC and SECRET: djb2 from 0,
/// `String(hash, HEX)` (lower case, unpadded). Observed against the original server.
const FIRMWARE_TOKEN: &str = "e67490f8";

async fn app() -> TestApp {
    spawn_app_with(|s| {
        s.compat.shared_secret = Some(SECRET.into());
        s.compat.default_product = Some("panic".into());
    })
    .await
}

/// Builds 1.3.7 and 1.3.8 under file names, and the device pinned to 1.3.8 by the admin API.
async fn fleet(app: &TestApp) -> (Vec<u8>, Value) {
    let old = image("panic", "1.3.7", CHIP_ESP32C6, 20_000);
    let new = image("panic", "1.3.8", CHIP_ESP32C6, 30_000);
    for (name, bytes) in [("panic_1.3.7.bin", old), ("panic_1.3.8.bin", new.clone())] {
        let uploaded = upload_file(app, name, bytes).await;
        assert_eq!(uploaded["success"], true, "{uploaded}");
    }
    let added = app
        .client
        .post(app.url("/admin/api/devices"))
        .header("X-Admin-API-Key", ADMIN_KEY)
        .json(&json!({
            "mac_address": "aabbccddeeff",
            "device_id": "PanicAlarm_EEFF",
            "target_version": "1.3.8",
            "firmware_url": "http://0.0.0.0:5000/firmware/panic_1.3.8.bin",
            "checksum": md5_hex(&new),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 200);
    let added: Value = added.json().await.unwrap();
    (new, added)
}

async fn upload_file(app: &TestApp, name: &str, bytes: Vec<u8>) -> Value {
    let form = reqwest::multipart::Form::new().part("file", reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()));
    let response =
        app.client.post(app.url("/admin/api/firmware")).header("X-Admin-API-Key", ADMIN_KEY).multipart(form).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The update check exactly as PanicButton.ino's `checkForUpdates()` sends it (ESP32
/// `HTTPClient`, HTTP/1.1): device_id and hardware URL-encoded, the MAC with raw colons.
fn check_request(app: &TestApp, version: &str, mac: &str, token: Option<&str>) -> String {
    let path = format!("/api/firmware?device_id=PanicAlarm_EEFF&hardware=FireBeetle%202%20ESP32-C6&version={version}&mac={mac}");
    let mut headers = vec![("User-Agent", "ESP32HTTPClient".to_string()), ("Connection", "keep-alive".to_string())];
    headers.push(("Accept-Encoding", "identity;q=1,chunked;q=0.1,*;q=0".to_string()));
    if let Some(token) = token {
        headers.push(("X-Device-Auth", token.to_string()));
    }
    request("GET", &path, "HTTP/1.1", app, &headers)
}

#[tokio::test]
async fn a_device_behind_its_target_gets_the_update_and_downloads_it_without_auth() {
    let app = app().await;
    let (new, added) = fleet(&app).await;
    assert_eq!(added["mac_address"], MAC);
    assert_eq!(added["device"]["target_version"], "1.3.8");

    let response = send(&app, &check_request(&app, "1.3.7", MAC, Some(FIRMWARE_TOKEN))).await;

    assert_eq!(response.status, 200, "{}", response.head);
    let body: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body["update_available"], true);
    assert_eq!(body["firmware_version"], "1.3.8");
    assert_eq!(body["checksum"], md5_hex(&new));
    assert_eq!(body.as_object().unwrap().len(), 4, "{body}");
    assert!(response.body.len() < 1024, "PanicButton parses into a 1 KiB DynamicJsonDocument");
    // downloadAndUpdate(): a plain GET without the auth header; it needs a positive length.
    let url = url::Url::parse(body["firmware_url"].as_str().unwrap()).unwrap();
    let path = format!("{}?{}", url.path(), url.query().unwrap_or(""));
    let download = send(&app, &request("GET", &path, "HTTP/1.1", &app, &[("User-Agent", "ESP32HTTPClient".into())])).await;
    assert_eq!(download.status, 200, "{}", download.head);
    assert_eq!(download.header("content-length"), Some(new.len().to_string().as_str()));
    assert!(download.body == new);

    // The check recorded the device's version, address and board, and the offer.
    let device = device(&app, MAC).await;
    assert_eq!(device["version"], "1.3.7");
    assert_eq!(device["ip"], "127.0.0.1");
    assert_eq!(device["attributes"]["board"], "FireBeetle 2 ESP32-C6");
    assert_eq!(updates(&app, device["id"].as_str().unwrap()).await[0]["state"], "offered");
    app.stop().await;
}

#[tokio::test]
async fn a_device_on_its_target_gets_exactly_their_no_update_body_with_nulls() {
    let app = app().await;
    fleet(&app).await;

    let response = send(&app, &check_request(&app, "1.3.8", MAC, Some(FIRMWARE_TOKEN))).await;

    assert_eq!(response.status, 200);
    assert_eq!(
        String::from_utf8(response.body).unwrap(),
        r#"{"update_available":false,"firmware_version":null,"firmware_url":null,"checksum":null}"#
    );
    app.stop().await;
}

#[tokio::test]
async fn the_readme_token_variant_and_any_case_are_accepted() {
    let app = app().await;
    fleet(&app).await;
    let readme = format!("{:08X}", updraft::domain::compat::djb2(5381, &format!("AABBCCDDEEFF{SECRET}")));

    for token in [FIRMWARE_TOKEN.to_ascii_uppercase(), readme] {
        let response = send(&app, &check_request(&app, "1.3.8", MAC, Some(&token))).await;
        assert_eq!(response.status, 200, "{token}: {}", String::from_utf8_lossy(&response.body));
    }
    app.stop().await;
}

#[tokio::test]
async fn errors_have_their_status_codes_and_error_bodies() {
    let app = app().await;
    fleet(&app).await;
    let other_mac = "11:22:33:44:55:66";
    let other_token = format!("{:x}", updraft::domain::compat::djb2(0, &format!("112233445566{SECRET}")));
    let cases = [
        (check_request(&app, "1.3.7", MAC, None), 401, json!({"error": "Authentication header required"})),
        (check_request(&app, "1.3.7", "AA:BB:CC:DD:EE", Some(FIRMWARE_TOKEN)), 400, json!({"error": "Invalid MAC address format"})),
        (check_request(&app, "1.3.7", MAC, Some("deadbeef")), 401, json!({"error": "Authentication failed"})),
        // The original answered these two with 500 by mistake.
        (check_request(&app, "1.3.7", other_mac, Some(&other_token)), 403, json!({"error": "Device not authorized"})),
        (check_request(&app, "1.0.0-beta", MAC, Some(FIRMWARE_TOKEN)), 400, json!({"error": "Invalid version format"})),
    ];
    for (request, status, body) in cases {
        let response = send(&app, &request).await;
        assert_eq!(response.status, status, "{request}");
        assert_eq!(serde_json::from_slice::<Value>(&response.body).unwrap(), body, "{request}");
        if status == 401 {
            assert_eq!(response.header("www-authenticate"), Some("DeviceAuth"));
        }
    }
    let missing = app
        .client
        .get(app.url(&format!("/api/firmware?mac={MAC}&version=1.0")))
        .header("X-Device-Auth", FIRMWARE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 422);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["detail"][0]["loc"], json!(["query", "device_id"]));
    app.stop().await;
}

#[tokio::test]
async fn without_a_configured_secret_no_token_is_accepted() {
    let app = spawn_app_with(|s| s.compat.default_product = Some("panic".into())).await;
    fleet(&app).await;

    let response = send(&app, &check_request(&app, "1.3.7", MAC, Some(FIRMWARE_TOKEN))).await;

    assert_eq!(response.status, 401);
    app.stop().await;
}

#[tokio::test]
async fn firmware_files_download_by_name_without_auth_unless_switched_off() {
    let app = app().await;
    let (new, _) = fleet(&app).await;

    for path in ["/firmware/panic_1.3.8.bin", "/firmware_files/panic_1.3.8.bin"] {
        let response = send(&app, &request("GET", path, "HTTP/1.1", &app, &[])).await;
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(response.header("content-length"), Some(new.len().to_string().as_str()));
        assert!(response.body == new);
    }
    let missing = send(&app, &request("GET", "/firmware/nothing.bin", "HTTP/1.1", &app, &[])).await;
    assert_eq!(missing.status, 404);
    assert_eq!(serde_json::from_slice::<Value>(&missing.body).unwrap(), json!({"error": "Firmware file not found"}));
    app.stop().await;

    let closed = spawn_app_with(|s| s.compat.ota_server_downloads = false).await;
    let response = closed.client.get(closed.url("/firmware/panic_1.3.8.bin")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    closed.stop().await;
}

#[tokio::test]
async fn the_admin_api_wants_its_key_header() {
    let app = spawn_app_with(|s| s.compat.admin_api_key = Some("their-old-admin-key".into())).await;

    let missing = app.client.get(app.url("/admin/api/devices")).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.json::<Value>().await.unwrap(), json!({"detail": "API key is required"}));
    let wrong = app.client.get(app.url("/admin/api/devices")).header("X-Admin-API-Key", "nope").send().await.unwrap();
    assert_eq!(wrong.status(), 403);
    assert_eq!(wrong.json::<Value>().await.unwrap(), json!({"detail": "Invalid API key"}));
    for key in ["their-old-admin-key", ADMIN_KEY] {
        let ok = app.client.get(app.url("/admin/api/devices")).header("X-Admin-API-Key", key).send().await.unwrap();
        assert_eq!(ok.status(), 200, "{key}");
        assert_eq!(ok.json::<Value>().await.unwrap(), json!({}));
    }
    app.stop().await;
}

#[tokio::test]
async fn admin_devices_are_listed_read_changed_and_deleted_in_their_shapes() {
    let app = app().await;
    let (new, _) = fleet(&app).await;
    let admin = |method: Method, path: &str| app.client.request(method, app.url(path)).header("X-Admin-API-Key", ADMIN_KEY);
    send(&app, &check_request(&app, "1.3.7", MAC, Some(FIRMWARE_TOKEN))).await;

    let listed: Value = admin(Method::GET, "/admin/api/devices").send().await.unwrap().json().await.unwrap();
    let entry = &listed[MAC];
    assert_eq!(entry["device_id"], "PanicAlarm_EEFF");
    assert_eq!(entry["hardware_version"], "1.0");
    assert_eq!(entry["target_version"], "1.3.8");
    assert_eq!(entry["checksum"], md5_hex(&new));
    assert_eq!(entry["current_version"], "1.3.7");
    assert_eq!(entry["ip_address"], "127.0.0.1");
    assert!(entry["last_check"].as_str().is_some_and(|t| t.len() == 26 && t.contains('T')), "{entry}");
    assert!(entry["firmware_url"].as_str().unwrap().ends_with("/firmware/panic_1.3.8.bin"));
    assert_eq!(admin(Method::GET, "/admin/api/devices/aa-bb-cc-dd-ee-ff").send().await.unwrap().json::<Value>().await.unwrap(), *entry);

    let duplicate = admin(Method::POST, "/admin/api/devices")
        .json(&json!({"mac_address": MAC, "device_id": "x", "target_version": "1.0", "firmware_url": "u", "checksum": "c"}))
        .send()
        .await
        .unwrap();
    assert_eq!(duplicate.status(), 409);
    assert_eq!(duplicate.json::<Value>().await.unwrap(), json!({"detail": "Device already exists"}));
    let invalid = admin(Method::POST, "/admin/api/devices").json(&json!({"mac_address": MAC})).send().await.unwrap();
    assert_eq!(invalid.status(), 422);

    // A rollback: PUT a lower target; the device is then offered 1.3.7.
    let changed = admin(Method::PUT, &format!("/admin/api/devices/{MAC}"))
        .json(&json!({"target_version": "1.3.7", "notes": "rollback"}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    let changed: Value = changed.json().await.unwrap();
    assert_eq!(changed["success"], true);
    assert_eq!(changed["device"]["target_version"], "1.3.7");
    let check = send(&app, &check_request(&app, "1.3.8", MAC, Some(FIRMWARE_TOKEN))).await;
    assert_eq!(serde_json::from_slice::<Value>(&check.body).unwrap()["firmware_version"], "1.3.7");
    let bad = admin(Method::PUT, &format!("/admin/api/devices/{MAC}")).json(&json!({"target_version": "one"})).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.json::<Value>().await.unwrap(), json!({"detail": "Invalid target version format"}));

    let deleted = admin(Method::DELETE, &format!("/admin/api/devices/{MAC}")).send().await.unwrap();
    assert_eq!(deleted.json::<Value>().await.unwrap(), json!({"success": true}));
    let gone = admin(Method::GET, &format!("/admin/api/devices/{MAC}")).send().await.unwrap();
    assert_eq!(gone.status(), 404);
    assert_eq!(gone.json::<Value>().await.unwrap(), json!({"detail": "Device not found"}));
    let not_a_mac = admin(Method::GET, "/admin/api/devices/nope").send().await.unwrap();
    assert_eq!(not_a_mac.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn admin_firmware_files_are_uploaded_listed_described_and_deleted() {
    let app = app().await;
    let admin = |method: Method, path: &str| app.client.request(method, app.url(path)).header("X-Admin-API-Key", ADMIN_KEY);
    let bytes = image("panic", "2.0.0", CHIP_ESP32C6, 1_500_000);

    let uploaded = upload_file(&app, "big_2.0.0.bin", bytes.clone()).await;

    assert_eq!(uploaded["filename"], "big_2.0.0.bin");
    assert_eq!(uploaded["checksum"], md5_hex(&bytes));
    assert_eq!(uploaded["size"], bytes.len());
    assert_eq!(uploaded["success"], true);
    assert_eq!(uploaded["url"], format!("{}/firmware/big_2.0.0.bin", app.base));
    let listed: Value = admin(Method::GET, "/admin/api/firmware").send().await.unwrap().json().await.unwrap();
    let files = listed.as_array().unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0]["filename"], "big_2.0.0.bin");
    assert_eq!(files[0]["size"], bytes.len());
    let info: Value = admin(Method::GET, "/admin/api/firmware/big_2.0.0.bin/info").send().await.unwrap().json().await.unwrap();
    assert_eq!(info, files[0]);
    // The build is an ordinary Updraft artifact of the default product.
    let artifacts = app.list_artifacts("product=panic").await;
    assert_eq!(artifacts["items"][0]["version"], "2.0.0");

    let deleted = admin(Method::DELETE, "/admin/api/firmware/big_2.0.0.bin").send().await.unwrap();
    assert_eq!(deleted.json::<Value>().await.unwrap(), json!({"success": true}));
    assert_eq!(admin(Method::GET, "/admin/api/firmware/big_2.0.0.bin/info").send().await.unwrap().status(), 404);
    assert_eq!(app.list_artifacts("product=panic").await["items"], json!([]));
    app.stop().await;
}

#[tokio::test]
async fn a_build_goes_with_the_last_of_its_names() {
    let app = app().await;
    let admin = |method: Method, path: &str| app.client.request(method, app.url(path)).header("X-Admin-API-Key", ADMIN_KEY);
    let bytes = image("panic", "2.1.0", CHIP_ESP32C6, 20_000);
    upload_file(&app, "first.bin", bytes.clone()).await;
    upload_file(&app, "second.bin", bytes).await;
    assert_eq!(app.list_artifacts("product=panic").await["total"], 1, "one build, two names");

    let deleted = admin(Method::DELETE, "/admin/api/firmware/first.bin").send().await.unwrap();

    assert_eq!(deleted.json::<Value>().await.unwrap(), json!({"success": true}));
    assert_eq!(admin(Method::GET, "/admin/api/firmware/first.bin/info").send().await.unwrap().status(), 404);
    assert_eq!(admin(Method::GET, "/admin/api/firmware/second.bin/info").send().await.unwrap().status(), 200);
    assert_eq!(app.list_artifacts("product=panic").await["total"], 1, "another name still refers to the build");
    let deleted = admin(Method::DELETE, "/admin/api/firmware/second.bin").send().await.unwrap();
    assert_eq!(deleted.json::<Value>().await.unwrap(), json!({"success": true}));
    assert_eq!(app.list_artifacts("product=panic").await["total"], 0);
    app.stop().await;
}

#[tokio::test]
async fn a_file_whose_build_devices_are_updating_to_is_not_deleted() {
    let app = app().await;
    fleet(&app).await;
    let admin = |method: Method, path: &str| app.client.request(method, app.url(path)).header("X-Admin-API-Key", ADMIN_KEY);
    // The pinned device is offered 1.3.8: its update to that build is in progress.
    let response = send(&app, &check_request(&app, "1.3.7", MAC, Some(FIRMWARE_TOKEN))).await;
    assert_eq!(response.status, 200);

    let refused = admin(Method::DELETE, "/admin/api/firmware/panic_1.3.8.bin").send().await.unwrap();

    assert_eq!(refused.status(), 409);
    let detail = refused.json::<Value>().await.unwrap()["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("being updated"), "{detail}");
    // Nothing went: the name still names the build, and the build is still there.
    assert_eq!(admin(Method::GET, "/admin/api/firmware/panic_1.3.8.bin/info").send().await.unwrap().status(), 200);
    assert_eq!(app.list_artifacts("product=panic&version=1.3.8").await["total"], 1);
    app.stop().await;
}

#[tokio::test]
async fn names_of_one_build_deleted_at_once_leave_no_build_behind() {
    let app = app().await;
    let admin = |method: Method, path: &str| app.client.request(method, app.url(path)).header("X-Admin-API-Key", ADMIN_KEY);
    for round in 0..5 {
        let version = format!("3.0.{round}");
        let bytes = image("panic", &version, CHIP_ESP32C6, 20_000);
        let (a, b) = (format!("a_{round}.bin"), format!("b_{round}.bin"));
        upload_file(&app, &a, bytes.clone()).await;
        upload_file(&app, &b, bytes).await;

        let (first, second) = tokio::join!(
            admin(Method::DELETE, &format!("/admin/api/firmware/{a}")).send(),
            admin(Method::DELETE, &format!("/admin/api/firmware/{b}")).send()
        );

        assert_eq!(first.unwrap().status(), 200);
        assert_eq!(second.unwrap().status(), 200);
        // Whichever went second saw no other name and took the build with it.
        assert_eq!(app.list_artifacts(&format!("product=panic&version={version}")).await["total"], 0, "round {round}");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_surface_can_be_switched_off() {
    let app = spawn_app_with(|s| s.compat.ota_server = false).await;

    for path in ["/api/firmware?mac=AA:BB:CC:DD:EE:FF", "/admin/api/devices", "/firmware/x.bin", "/firmware_files/x.bin", "/status"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_status_route_answers_like_theirs() {
    let app = app().await;
    let response = app.client.get(app.url("/status")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["version"], "1.0.0");
    let timestamp = body["timestamp"].as_str().unwrap();
    assert!(chrono::NaiveDateTime::parse_from_str(timestamp, "%Y-%m-%dT%H:%M:%S%.f").is_ok(), "{timestamp}");
    app.stop().await;
}

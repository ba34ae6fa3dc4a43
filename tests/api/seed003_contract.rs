//! Seed 003 (pvginkel/IoTSupport, its file-based backend) route by route, as its README,
//! source and tests describe it: for each route, the status, the body's shape and the
//! headers a seed-003 client gets, with the admin key where Updraft requires one (seed 003
//! ran without authentication). Where Updraft answers differently on purpose, the test says
//! so and docs/API.md lists it under "Differences from seed 003".

use std::net::SocketAddr;

use axum::Router;
use axum::http::header;
use axum::routing::get;
use base64::Engine;
use chrono::{SecondsFormat, Utc};
use reqwest::Method;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

use crate::config_seed003::{seed_error, seed_validation};
use crate::helpers::*;

const MAC: &str = "aa-bb-cc-dd-ee-ff";

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value.as_object().unwrap_or_else(|| panic!("not an object: {value}")).keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

fn content_type(response: &reqwest::Response) -> String {
    response.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

/// Seed 003's error body: exactly `error`, `code`, `details.message`, `correlationId`, as JSON.
async fn seed_error_shape(response: reqwest::Response, status: u16) -> String {
    assert_eq!(content_type(&response), "application/json");
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(response.status().as_u16(), status);
    let body: Value = response.json().await.unwrap();
    assert_eq!(keys(&body), ["code", "correlationId", "details", "error"], "{body}");
    assert_eq!(keys(&body["details"]), ["message"], "{body}");
    assert_eq!(body["correlationId"], request_id);
    body["code"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn configurations_walk() {
    let app = spawn_app().await;
    let document = json!({"deviceName": "Hall", "deviceEntityId": "sensor.hall", "enableOTA": false, "wifi": {"ssid": "home"}});

    // GET /api/configs: {configs, count}, empty at first.
    let list = app.admin(Method::GET, "/api/configs").send().await.unwrap();
    assert_eq!((list.status().as_u16(), content_type(&list).as_str()), (200, "application/json"));
    assert_eq!(list.json::<Value>().await.unwrap(), json!({"configs": [], "count": 0}));

    // PUT /api/configs/{mac}: upsert; the answer is the detail.
    let saved = app.admin(Method::PUT, &format!("/api/configs/{MAC}")).json(&json!({"content": document})).send().await.unwrap();
    assert_eq!(saved.status(), 200);
    let saved: Value = saved.json().await.unwrap();
    assert_eq!(keys(&saved), ["content", "device_entity_id", "device_name", "enable_ota", "mac_address"]);
    assert_eq!(
        (saved["mac_address"].as_str(), saved["device_name"].as_str(), saved["enable_ota"].as_bool()),
        (Some(MAC), Some("Hall"), Some(false))
    );
    // allow_overwrite false on an existing document: 409 RECORD_EXISTS naming the MAC.
    let exists = app
        .admin(Method::PUT, &format!("/api/configs/{MAC}"))
        .json(&json!({"content": {}, "allow_overwrite": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(exists.status(), 409);
    let body: Value = exists.json().await.unwrap();
    assert_eq!(body["code"], "RECORD_EXISTS");
    assert!(body["error"].as_str().unwrap().contains(MAC), "{body}");
    // A body its schema refuses: 400 and the list of errors.
    let refused = app.admin(Method::PUT, &format!("/api/configs/{MAC}")).json(&json!({})).send().await.unwrap();
    assert_eq!(seed_validation(refused).await, [("content".to_string(), "missing".to_string())]);
    // A MAC that is not xx-xx-xx-xx-xx-xx: 400 INVALID_OPERATION.
    let colons = app.admin(Method::PUT, "/api/configs/aa:bb:cc:dd:ee:ff").json(&json!({"content": {}})).send().await.unwrap();
    assert_eq!(seed_error_shape(colons, 400).await, "INVALID_OPERATION");

    // GET /api/configs and GET /api/configs/{mac} (upper case is lower-cased).
    let list: Value = app.admin(Method::GET, "/api/configs").send().await.unwrap().json().await.unwrap();
    assert_eq!(list["count"], 1);
    assert_eq!(keys(&list["configs"][0]), ["device_entity_id", "device_name", "enable_ota", "mac_address"]);
    let one: Value = app.admin(Method::GET, "/api/configs/AA-BB-CC-DD-EE-FF").send().await.unwrap().json().await.unwrap();
    assert_eq!(one, saved);

    // GET /api/configs/{mac}.json: the raw document, no-cache, no credentials.
    let raw = app.client.get(app.url(&format!("/api/configs/{MAC}.json"))).send().await.unwrap();
    assert_eq!(raw.status(), 200);
    assert_eq!(raw.headers()["cache-control"], "no-cache");
    assert_eq!(content_type(&raw), "application/json");
    assert_eq!(raw.json::<Value>().await.unwrap(), document);
    let unknown = app.client.get(app.url("/api/configs/00-11-22-33-44-55.json")).send().await.unwrap();
    assert_eq!(seed_error_shape(unknown, 404).await, "RECORD_NOT_FOUND");

    // DELETE /api/configs/{mac}: 204, then 404.
    let deleted = app.admin(Method::DELETE, &format!("/api/configs/{MAC}")).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    assert!(deleted.bytes().await.unwrap().is_empty());
    let again = app.admin(Method::DELETE, &format!("/api/configs/{MAC}")).send().await.unwrap();
    assert_eq!(seed_error_shape(again, 404).await, "RECORD_NOT_FOUND");
    let gone = app.admin(Method::GET, &format!("/api/configs/{MAC}")).send().await.unwrap();
    assert_eq!(seed_error_shape(gone, 404).await, "RECORD_NOT_FOUND");

    // Difference: Updraft requires the admin key on the operator routes (401 in seed 003's shape).
    let anonymous = app.client.get(app.url("/api/configs")).send().await.unwrap();
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    assert_eq!(seed_error_shape(anonymous, 401).await, "AUTHENTICATION_REQUIRED");
    app.stop().await;
}

fn sign(timestamp: &str) -> String {
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::signature::{SignatureEncoding, Signer};
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(include_str!("../fixtures/seed003_signing_key.pem")).unwrap();
    base64::engine::general_purpose::STANDARD
        .encode(rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key).sign(timestamp.as_bytes()).to_bytes())
}

#[tokio::test]
async fn assets_walk() {
    let key = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed003_signing_key.pem");
    let app = spawn_app_with(move |s| s.content.signing_key_path = Some(key)).await;
    let upload = |name: &str, bytes: Vec<u8>, timestamp: &str, signature: &str| {
        let form = Form::new()
            .part("file", Part::bytes(bytes).file_name(name.to_string()))
            .text("timestamp", timestamp.to_string())
            .text("signature", signature.to_string());
        app.client.post(app.url("/api/assets")).multipart(form).send()
    };

    // POST /api/assets: multipart file, timestamp, signature; 200 {filename, size, uploaded_at}.
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, false);
    let response = upload("firmware-v1.bin", b"Binary firmware content here".to_vec(), &now, &sign(&now)).await.unwrap();
    assert_eq!((response.status().as_u16(), content_type(&response).as_str()), (200, "application/json"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(keys(&body), ["filename", "size", "uploaded_at"]);
    assert_eq!(body, json!({"filename": "firmware-v1.bin", "size": 28, "uploaded_at": now}));
    // Refusals: 400 VALIDATION_FAILED naming what is wrong.
    let stale = (Utc::now() - chrono::Duration::seconds(400)).to_rfc3339();
    for (response, what) in [
        (upload("a.bin", b"x".to_vec(), &now, "bm90").await.unwrap(), "signature"),
        (upload("a.bin", b"x".to_vec(), &stale, &sign(&stale)).await.unwrap(), "timestamp"),
        (upload("../etc/passwd", b"x".to_vec(), &now, &sign(&now)).await.unwrap(), "filename"),
        (upload("a.bin", Vec::new(), &now, &sign(&now)).await.unwrap(), "empty"),
    ] {
        assert_eq!(response.status(), 400, "{what}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "VALIDATION_FAILED", "{what}");
        assert!(body["error"].as_str().unwrap().to_lowercase().contains(what), "{what}: {body}");
    }

    // GET /api/assets/{filename}: the bytes, octet-stream, no-cache, inline with the name.
    let download = app.client.get(app.url("/api/assets/firmware-v1.bin")).send().await.unwrap();
    assert_eq!(download.status(), 200);
    assert_eq!(content_type(&download), "application/octet-stream");
    assert_eq!(download.headers()["cache-control"], "no-cache");
    assert_eq!(download.headers()["content-disposition"], "inline; filename=firmware-v1.bin");
    assert_eq!(download.bytes().await.unwrap().as_ref(), b"Binary firmware content here");
    assert_eq!(
        seed_error_shape(app.client.get(app.url("/api/assets/nonexistent.bin")).send().await.unwrap(), 404).await,
        "RECORD_NOT_FOUND"
    );
    assert_eq!(
        seed_error_shape(app.client.get(app.url("/api/assets/file..name.bin")).send().await.unwrap(), 400).await,
        "VALIDATION_FAILED"
    );
    // Seed 003's README names POST /api/assets/upload; its code (and Updraft) never served it.
    assert_eq!(app.client.post(app.url("/api/assets/upload")).send().await.unwrap().status(), 405);
    app.stop().await;
}

/// A 40×20 opaque PNG on loopback, and a body that is not an image.
async fn images() -> SocketAddr {
    let mut png = std::io::Cursor::new(Vec::new());
    image::RgbaImage::from_fn(40, 20, |x, y| image::Rgba([x as u8 * 6, y as u8 * 12, 99, 255]))
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    let png = png.into_inner();
    let router = Router::new().route("/a.png", get(move || async move { png })).route("/a.txt", get(|| async { "text" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

#[tokio::test]
async fn image_proxy_walk() {
    let server = images().await;
    let app = spawn_app_with(|s| s.content.image_fetch_allow_hosts = vec!["127.0.0.1".into()]).await;
    let get = |query: String| app.client.get(app.url(&format!("/api/images/lvgl?{query}"))).send();

    // GET /api/images/lvgl?url=&width=&height=: an LVGL 9 ARGB8888 .bin, no-store, scaled down only.
    let response = get(format!("url=http://{server}/a.png&width=15&height=15")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(content_type(&response), "application/octet-stream");
    assert_eq!(response.headers()["cache-control"], "no-store");
    let bin = response.bytes().await.unwrap();
    // 40×20 into 15×15: 15×7 (int(7.5)), stride 60.
    assert_eq!(&bin[..12], &[0x19, 0x10, 0, 0, 15, 0, 7, 0, 60, 0, 0, 0]);
    assert_eq!(bin.len(), 12 + 15 * 7 * 4);
    let unscaled = get(format!("url=http://{server}/a.png&width=400")).await.unwrap().bytes().await.unwrap();
    assert_eq!(&unscaled[4..8], &[40, 0, 20, 0]);

    // Parameters its schema refuses: 400 and the list of errors.
    assert_eq!(seed_validation(get(String::new()).await.unwrap()).await, [("url".to_string(), "missing".to_string())]);
    assert_eq!(seed_validation(get("url=not-a-valid-url".into()).await.unwrap()).await, [("url".to_string(), "url_parsing".to_string())]);
    let negative = get(format!("url=http://{server}/a.png&width=-10")).await.unwrap();
    assert_eq!(seed_validation(negative).await, [("width".to_string(), "greater_than".to_string())]);
    let extra = get(format!("url=http://{server}/a.png&format=png")).await.unwrap();
    assert_eq!(seed_validation(extra).await, [("format".to_string(), "extra_forbidden".to_string())]);
    // headers= names a header the request lacks: 400 INVALID_OPERATION.
    let missing = get(format!("url=http://{server}/a.png&headers=Authorization")).await.unwrap();
    assert_eq!(seed_error(missing, 400).await, "INVALID_OPERATION");
    // The fetch fails: 502 EXTERNAL_SERVICE_ERROR; the body is no image: 500 PROCESSING_ERROR.
    assert_eq!(seed_error_shape(get(format!("url=http://{server}/none.png")).await.unwrap(), 502).await, "EXTERNAL_SERVICE_ERROR");
    assert_eq!(seed_error_shape(get(format!("url=http://{server}/a.txt")).await.unwrap(), 500).await, "PROCESSING_ERROR");
    // Seed 003's README names /api/images/proxy; its code (and Updraft) never served it.
    assert_eq!(app.client.get(app.url("/api/images/proxy")).send().await.unwrap().status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn operations_walk() {
    let app = spawn_app().await;
    // GET /api/health: 200. Difference: the body is Updraft's liveness answer, not
    // {"status": "healthy"}; probes read the status code.
    let health = app.client.get(app.url("/api/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.json::<Value>().await.unwrap()["status"], "ok");
    // GET /metrics: Prometheus text. Difference: updraft_* metrics, not iot_*.
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(content_type(&metrics).starts_with("text/plain"));
    // GET /api/docs: the API's documentation page.
    let docs = app.client.get(app.url("/api/docs")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(content_type(&docs).starts_with("text/html"));
    app.stop().await;
}

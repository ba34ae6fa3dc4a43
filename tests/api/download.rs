//! The download contract of `GET`/`HEAD /api/v1/firmware/{id}/download`: a length and never
//! chunking, strong ETags, MD5 for Arduino, single ranges, conditional requests, and replays
//! of what ESP-IDF's `esp_https_ota` and Arduino's HTTPUpdate send over the wire.

use crate::helpers::*;
use crate::raw::RawConnection;
use md5::Md5;
use reqwest::Method;
use serde_json::Value;
use sha2::{Digest, Sha256};

const MIB: usize = 1 << 20;
/// The window size of `esp_https_ota`'s partial download (`max_http_request_size` default).
const ESP_WINDOW: usize = 64 * 1024;

#[tokio::test]
async fn a_full_download_has_its_length_etag_and_md5_and_is_never_chunked() {
    let app = spawn_app().await;
    let bytes = random_bytes(3 * MIB, 10);
    let artifact = app.create_artifact(bytes.clone(), "product=gateway&version=1.0.0&hardware=rpi4").await;
    let path = download_path(&artifact);

    let mut connection = RawConnection::open(&app).await;
    connection.send(&format!("GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\r\n", app.addr)).await;
    let response = connection.response(false).await;

    assert_eq!(response.status, 200, "{}", response.head);
    assert_eq!(response.header("content-length"), Some(bytes.len().to_string().as_str()));
    assert_eq!(response.header("transfer-encoding"), None, "{}", response.head);
    assert_eq!(response.header("accept-ranges"), Some("bytes"));
    assert_eq!(response.header("etag"), Some(format!("\"{}\"", sha256_hex(&bytes)).as_str()));
    assert_eq!(response.header("x-md5"), Some(md5_hex(&bytes).as_str()));
    assert_eq!(artifact["md5"], md5_hex(&bytes));
    assert_eq!(response.header("content-type"), Some("application/octet-stream"));
    assert_eq!(response.body.len(), bytes.len());
    assert!(response.body == bytes, "the downloaded bytes differ from the uploaded ones");
    app.stop().await;
}

#[tokio::test]
async fn a_head_request_has_the_length_and_no_body() {
    let app = spawn_app().await;
    let bytes = random_bytes(300_000, 11);
    let artifact = app.create_artifact(bytes.clone(), "product=p&version=1.0.0&hardware=esp32").await;
    let path = download_path(&artifact);

    let head = app.admin(Method::HEAD, &path).send().await.unwrap();

    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], bytes.len().to_string().as_str());
    assert_eq!(head.headers()["etag"], format!("\"{}\"", sha256_hex(&bytes)).as_str());
    assert_eq!(head.headers()["accept-ranges"], "bytes");
    assert!(head.bytes().await.unwrap().is_empty());

    // On the wire: no body follows the head, so the next response on the connection parses.
    let mut connection = RawConnection::open(&app).await;
    connection.send(&format!("HEAD {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\r\n", app.addr)).await;
    let raw_head = connection.response(true).await;
    assert_eq!(raw_head.status, 200, "{}", raw_head.head);
    assert_eq!(raw_head.header("content-length"), Some(bytes.len().to_string().as_str()));
    connection
        .send(&format!("GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {ADMIN_KEY}\r\nRange: bytes=0-9\r\n\r\n", app.addr))
        .await;
    let next = connection.response(false).await;
    assert_eq!(next.status, 206, "{}", next.head);
    assert_eq!(next.body, bytes[..10]);
    app.stop().await;
}

#[tokio::test]
async fn single_ranges_get_206_with_exactly_the_requested_bytes() {
    let app = spawn_app().await;
    let bytes = random_bytes(MIB + 12_345, 12);
    let size = bytes.len();
    let artifact = app.create_artifact(bytes.clone(), "product=p&version=1.0.0&hardware=esp32").await;
    let path = download_path(&artifact);

    let cases: Vec<(String, usize, usize)> = vec![
        ("bytes=0-0".into(), 0, 1),
        ("bytes=10-19".into(), 10, 20),
        ("bytes=100-".into(), 100, size),
        ("bytes=-100".into(), size - 100, size),
        // One past the end, as ESP-IDF asks for: clipped.
        (format!("bytes={}-{}", size - 2, size), size - 2, size),
        (format!("bytes=0-{}", 10 * size), 0, size),
    ];
    for (range, start, end) in cases {
        let response = app.admin(Method::GET, &path).header("range", &range).send().await.unwrap();

        assert_eq!(response.status(), 206, "{range}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-range"], format!("bytes {start}-{}/{size}", end - 1).as_str(), "{range}");
        assert_eq!(headers["content-length"], (end - start).to_string().as_str(), "{range}");
        assert_eq!(headers["etag"], format!("\"{}\"", sha256_hex(&bytes)).as_str(), "{range}");
        let body = response.bytes().await.unwrap();
        assert!(body[..] == bytes[start..end], "{range}: wrong bytes");
    }
    app.stop().await;
}

#[tokio::test]
async fn unsatisfiable_ranges_get_416_with_the_size() {
    let app = spawn_app().await;
    let bytes = random_bytes(50_000, 13);
    let size = bytes.len();
    let artifact = app.create_artifact(bytes, "product=p&version=1.0.0&hardware=esp32").await;
    let path = download_path(&artifact);

    for range in [format!("bytes={size}-"), "bytes=-0".to_string()] {
        let response = app.admin(Method::GET, &path).header("range", &range).send().await.unwrap();

        assert_eq!(
            response.headers().get("content-range").map(|v| v.to_str().unwrap().to_string()),
            Some(format!("bytes */{size}")),
            "{range}"
        );
        assert_eq!(error_code(response, 416).await, "range_not_satisfiable", "{range}");
    }
    app.stop().await;
}

#[tokio::test]
async fn if_none_match_with_the_current_etag_gets_304_without_a_body() {
    let app = spawn_app().await;
    let bytes = random_bytes(40_000, 14);
    let artifact = app.create_artifact(bytes.clone(), "product=p&version=1.0.0&hardware=esp32").await;
    let path = download_path(&artifact);
    let etag = format!("\"{}\"", sha256_hex(&bytes));

    let cached = app.admin(Method::GET, &path).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(cached.status(), 304);
    assert_eq!(cached.headers()["etag"], etag.as_str());
    assert!(cached.bytes().await.unwrap().is_empty());

    let other = format!("\"{}\"", sha256_hex(b"another build"));
    let changed = app.admin(Method::GET, &path).header("if-none-match", &other).send().await.unwrap();
    assert_eq!(changed.status(), 200);
    assert!(changed.bytes().await.unwrap()[..] == bytes[..]);
    app.stop().await;
}

#[tokio::test]
async fn if_range_with_a_stale_etag_gets_the_whole_file_and_with_the_current_one_the_range() {
    let app = spawn_app().await;
    let bytes = random_bytes(40_000, 15);
    let artifact = app.create_artifact(bytes.clone(), "product=p&version=1.0.0&hardware=esp32").await;
    let path = download_path(&artifact);
    let etag = format!("\"{}\"", sha256_hex(&bytes));
    let stale = format!("\"{}\"", sha256_hex(b"the previous build"));

    let whole = app.admin(Method::GET, &path).header("range", "bytes=100-199").header("if-range", &stale).send().await.unwrap();
    assert_eq!(whole.status(), 200);
    assert!(whole.headers().get("content-range").is_none());
    assert!(whole.bytes().await.unwrap()[..] == bytes[..]);

    let partial = app.admin(Method::GET, &path).header("range", "bytes=100-199").header("if-range", &etag).send().await.unwrap();
    assert_eq!(partial.status(), 206);
    assert_eq!(partial.headers()["content-range"], format!("bytes 100-199/{}", bytes.len()).as_str());
    assert!(partial.bytes().await.unwrap()[..] == bytes[100..200]);
    app.stop().await;
}

#[tokio::test]
async fn an_esp_https_ota_partial_download_reassembles_the_image() {
    let app = spawn_app().await;
    let image = updraft::domain::esp_image::builder::EspImageBuilder::new("sensor", "3.1.0").payload_len(200_000).build();
    let artifact = app.create_artifact(image.clone(), "").await;
    let path = download_path(&artifact);

    // esp_https_ota_begin: HEAD for the length, then the connection is closed.
    let mut connection = RawConnection::open(&app).await;
    connection.send(&esp_idf_request(&app, "HEAD", &path, None)).await;
    let head = connection.response(true).await;
    assert_eq!(head.status, 200, "{}", head.head);
    let image_length: usize = head.header("content-length").expect("HEAD has a Content-Length").parse().unwrap();
    assert_eq!(image_length, image.len());
    drop(connection);

    // Then one GET per 64 KiB window on a new connection each, the last one open-ended.
    let mut received = Vec::new();
    let mut ranges = Vec::new();
    while received.len() < image_length {
        let start = received.len();
        let range =
            if image_length - start > ESP_WINDOW { format!("bytes={start}-{}", start + ESP_WINDOW - 1) } else { format!("bytes={start}-") };
        let mut connection = RawConnection::open(&app).await;
        connection.send(&esp_idf_request(&app, "GET", &path, Some(&range))).await;
        let response = connection.response(false).await;

        assert_eq!(response.status, 206, "{range}: {}", response.head);
        let end = (start + ESP_WINDOW).min(image_length);
        assert_eq!(response.header("content-range"), Some(format!("bytes {start}-{}/{image_length}", end - 1).as_str()), "{range}");
        assert_eq!(response.header("content-length"), Some((end - start).to_string().as_str()), "{range}");
        assert_eq!(response.header("transfer-encoding"), None, "{range}");
        assert!(!response.body.is_empty(), "{range}: empty body");
        received.extend_from_slice(&response.body);
        ranges.push(range);
    }

    assert_eq!(ranges.first().map(String::as_str), Some("bytes=0-65535"));
    assert_eq!(ranges.last().map(String::as_str), Some(format!("bytes={}-", 3 * ESP_WINDOW).as_str()));
    assert_eq!(received.len(), image.len());
    assert_eq!(sha256_hex(&received), artifact["sha256"].as_str().unwrap());
    app.stop().await;
}

#[tokio::test]
async fn esp_https_ota_windows_can_share_one_keep_alive_connection() {
    let app = spawn_app().await;
    let image = updraft::domain::esp_image::builder::EspImageBuilder::new("sensor", "3.2.0").payload_len(200_000).build();
    let artifact = app.create_artifact(image.clone(), "").await;
    let path = download_path(&artifact);
    let mut connection = RawConnection::open(&app).await;

    connection.send(&esp_idf_request(&app, "HEAD", &path, None)).await;
    let head = connection.response(true).await;
    assert_eq!(head.status, 200, "{}", head.head);
    let image_length: usize = head.header("content-length").unwrap().parse().unwrap();
    let mut received = Vec::new();
    while received.len() < image_length {
        let start = received.len();
        let range =
            if image_length - start > ESP_WINDOW { format!("bytes={start}-{}", start + ESP_WINDOW - 1) } else { format!("bytes={start}-") };
        connection.send(&esp_idf_request(&app, "GET", &path, Some(&range))).await;
        let response = connection.response(false).await;
        assert_eq!(response.status, 206, "{range}: {}", response.head);
        assert!(!response.body.is_empty(), "{range}: empty body");
        received.extend_from_slice(&response.body);
    }

    assert_eq!(sha256_hex(&received), artifact["sha256"].as_str().unwrap());
    app.stop().await;
}

#[tokio::test]
async fn a_first_window_ending_one_past_a_small_image_gets_the_whole_image_as_206() {
    let app = spawn_app().await;
    let image = updraft::domain::esp_image::builder::EspImageBuilder::new("tiny", "1.0.0").payload_len(30_000).build();
    let size = image.len();
    assert!(size < ESP_WINDOW);
    let artifact = app.create_artifact(image.clone(), "").await;
    let path = download_path(&artifact);

    let mut connection = RawConnection::open(&app).await;
    connection.send(&esp_idf_request(&app, "GET", &path, Some(&format!("bytes=0-{size}")))).await;
    let response = connection.response(false).await;

    assert_eq!(response.status, 206, "{}", response.head);
    assert_eq!(response.header("content-range"), Some(format!("bytes 0-{}/{size}", size - 1).as_str()));
    assert_eq!(response.header("content-length"), Some(size.to_string().as_str()));
    assert!(response.body == image);
    app.stop().await;
}

#[tokio::test]
async fn resuming_from_an_offset_returns_the_tail_and_from_zero_the_whole_file_as_206() {
    let app = spawn_app().await;
    let bytes = random_bytes(500_000, 16);
    let size = bytes.len();
    let artifact = app.create_artifact(bytes.clone(), "product=p&version=1.0.0&hardware=esp32").await;
    let path = download_path(&artifact);

    for offset in [0, 1, 4096, 65_536, size / 2, size - 1] {
        let response = app.admin(Method::GET, &path).header("range", format!("bytes={offset}-")).send().await.unwrap();

        assert_eq!(response.status(), 206, "offset {offset}");
        assert_eq!(response.headers()["content-range"], format!("bytes {offset}-{}/{size}", size - 1).as_str());
        assert_eq!(response.headers()["content-length"], (size - offset).to_string().as_str());
        let body = response.bytes().await.unwrap();
        assert!(body[..] == bytes[offset..], "offset {offset}: wrong bytes");
    }
    app.stop().await;
}

#[tokio::test]
async fn an_http_1_0_client_gets_the_whole_file_with_a_length_and_then_the_connection_closes() {
    let app = spawn_app().await;
    let bytes = random_bytes(700_000, 17);
    let artifact = app.create_artifact(bytes.clone(), "product=p&version=1.0.0&hardware=esp32").await;
    let path = download_path(&artifact);
    // What Arduino's HTTPUpdate sends (HTTPClient in HTTP/1.0 mode), and a bare HTTP/1.0 request.
    let arduino = format!(
        "GET {path} HTTP/1.0\r\nHost: {}\r\nUser-Agent: ESP32-http-Update\r\nConnection: close\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\
         x-ESP32-STA-MAC: 24:0A:C4:00:00:01\r\nx-ESP32-AP-MAC: 24:0A:C4:00:00:02\r\nx-ESP32-free-space: 1966080\r\n\
         x-ESP32-sketch-size: 912345\r\nx-ESP32-sketch-md5: 00112233445566778899aabbccddeeff\r\nx-ESP32-chip-size: 4194304\r\n\
         x-ESP32-sdk-version: v4.4.7\r\nx-ESP32-mode: sketch\r\n\r\n",
        app.addr
    );
    let bare = format!("GET {path} HTTP/1.0\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\r\n");

    for request in [arduino, bare] {
        let mut connection = RawConnection::open(&app).await;
        connection.send(&request).await;
        let response = connection.response(false).await;

        assert_eq!(response.status, 200, "{}", response.head);
        assert_eq!(response.header("content-length"), Some(bytes.len().to_string().as_str()), "{}", response.head);
        assert_eq!(response.header("transfer-encoding"), None, "{}", response.head);
        assert_eq!(response.header("x-md5"), Some(md5_hex(&bytes).as_str()));
        assert!(response.body == bytes, "wrong bytes");
        assert!(connection.closed_by_server().await, "the connection stayed open after an HTTP/1.0 response");
    }
    app.stop().await;
}

#[tokio::test]
async fn multiple_ranges_are_ignored_and_the_whole_file_is_sent() {
    let app = spawn_app().await;
    let bytes = random_bytes(20_000, 18);
    let artifact = app.create_artifact(bytes.clone(), "product=p&version=1.0.0&hardware=esp32").await;

    let response = app.admin(Method::GET, &download_path(&artifact)).header("range", "bytes=0-1,5-6").send().await.unwrap();

    assert_eq!(response.status(), 200);
    assert!(response.headers().get("content-range").is_none());
    assert_eq!(response.headers()["content-length"], bytes.len().to_string().as_str());
    assert!(response.bytes().await.unwrap()[..] == bytes[..]);
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_id_is_404_and_a_download_without_the_key_is_401() {
    let app = spawn_app().await;
    let artifact = app.create_artifact(random_bytes(1000, 19), "product=p&version=1.0.0&hardware=esp32").await;

    let unknown = app.admin(Method::GET, "/api/v1/firmware/0193e0a1-1111-7000-8000-000000000000/download").send().await.unwrap();
    assert_eq!(error_code(unknown, 404).await, "not_found");

    let anonymous = app.client.get(app.url(&download_path(&artifact))).send().await.unwrap();
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    assert_eq!(error_code(anonymous, 401).await, "unauthenticated");
    let anonymous_head = app.client.head(app.url(&download_path(&artifact))).send().await.unwrap();
    assert_eq!(anonymous_head.status(), 401);
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------

fn download_path(artifact: &Value) -> String {
    format!("/api/v1/firmware/{}/download", artifact["id"].as_str().expect("the artifact has an id"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn md5_hex(bytes: &[u8]) -> String {
    hex::encode(Md5::digest(bytes))
}

/// A request as ESP-IDF's `esp_http_client` writes it: its header names and casing, its
/// User-Agent, and `Content-Length: 0` on requests without a body.
fn esp_idf_request(app: &TestApp, method: &str, path: &str, range: Option<&str>) -> String {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nUser-Agent: ESP32 HTTP Client/1.0\r\nHost: {}\r\nAuthorization: Bearer {ADMIN_KEY}\r\n",
        app.addr
    );
    if let Some(range) = range {
        request.push_str(&format!("Range: {range}\r\n"));
    }
    request.push_str("Content-Length: 0\r\n\r\n");
    request
}

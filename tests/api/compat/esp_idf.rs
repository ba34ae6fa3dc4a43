//! ESP-IDF `esp_https_ota` against the native device download (the signed `url` of a
//! check-in): the exact request sequence of partial-download mode, the `bytes=0-0` size probe,
//! a first window ending one past the image, the open-ended last window, and resumption.

use serde_json::{Value, json};

use super::*;
use crate::helpers::*;
use crate::raw::RawConnection;

const WINDOW: usize = 64 * 1024;

/// A request as `esp_http_client` writes it: its User-Agent, `Host`, optional `Range`, and
/// `Content-Length: 0` on requests without a body.
fn esp_idf(app: &TestApp, method: &str, path: &str, range: Option<&str>) -> String {
    let mut headers = vec![("User-Agent", "ESP32 HTTP Client/1.0".to_string())];
    if let Some(range) = range {
        headers.push(("Range", range.to_string()));
    }
    headers.push(("Content-Length", "0".to_string()));
    request(method, path, "HTTP/1.1", app, &headers)
}

/// A device checks in natively and gets the signed download path of `image`.
async fn offered_path(app: &TestApp, image: Vec<u8>) -> String {
    app.create_artifact(image, "").await;
    let provisioned: Value = app
        .client
        .post(app.url("/api/v1/device/provision"))
        .json(&json!({"mac": "24:0A:C4:AA:00:01", "product": "idf-app", "hardware": "esp32", "version": "0.1.0"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = provisioned["token"].as_str().unwrap();
    let answer: Value =
        app.client.get(app.url("/api/v1/device/checkin?version=0.1.0")).bearer_auth(token).send().await.unwrap().json().await.unwrap();
    let url = url::Url::parse(answer["update"]["url"].as_str().expect("an update is offered")).unwrap();
    format!("{}?{}", url.path(), url.query().unwrap())
}

#[tokio::test]
async fn partial_download_mode_reassembles_the_image_from_windows() {
    let app = spawn_app().await;
    let image = image("idf-app", "2.0.0", 0, 200_000);
    let path = offered_path(&app, image.clone()).await;
    let size = image.len();

    // esp_https_ota_begin: HEAD for the length.
    let mut connection = RawConnection::open(&app).await;
    connection.send(&esp_idf(&app, "HEAD", &path, None)).await;
    let head = connection.response(true).await;
    assert_eq!(head.status, 200, "{}", head.head);
    assert_eq!(head.header("content-length"), Some(size.to_string().as_str()));
    // The fallback when HEAD is not answered with 200: `Range: bytes=0-0`, 206 + Content-Range.
    connection.send(&esp_idf(&app, "GET", &path, Some("bytes=0-0"))).await;
    let probe = connection.response(false).await;
    assert_eq!(probe.status, 206, "{}", probe.head);
    assert_eq!(probe.header("content-range"), Some(format!("bytes 0-0/{size}").as_str()));
    assert_eq!(probe.body, [0xE9]);

    // Windows of max_http_request_size on the same connection, the last one open-ended.
    let mut received = Vec::new();
    while received.len() < size {
        let start = received.len();
        let range = if size - start > WINDOW { format!("bytes={start}-{}", start + WINDOW - 1) } else { format!("bytes={start}-") };
        connection.send(&esp_idf(&app, "GET", &path, Some(&range))).await;
        let response = connection.response(false).await;
        assert_eq!(response.status, 206, "{range}: {}", response.head);
        let end = (start + WINDOW).min(size);
        assert_eq!(response.header("content-range"), Some(format!("bytes {start}-{}/{size}", end - 1).as_str()), "{range}");
        assert_eq!(response.header("content-length"), Some((end - start).to_string().as_str()));
        assert_eq!(response.header("transfer-encoding"), None);
        received.extend_from_slice(&response.body);
    }
    assert_eq!(sha256_hex(&received), sha256_hex(&image));
    app.stop().await;
}

#[tokio::test]
async fn a_window_ending_one_past_the_image_and_resumption_get_206() {
    let app = spawn_app().await;
    let image = image("idf-app", "2.0.1", 0, 30_000);
    let path = offered_path(&app, image.clone()).await;
    let size = image.len();

    let whole = send(&app, &esp_idf(&app, "GET", &path, Some(&format!("bytes=0-{size}")))).await;
    assert_eq!(whole.status, 206, "{}", whole.head);
    assert_eq!(whole.header("content-range"), Some(format!("bytes 0-{}/{size}", size - 1).as_str()));
    assert!(whole.body == image);

    // ota_resumption: `bytes=<written>-` (written a multiple of 1024 and 16), and a fresh start.
    for offset in [0, 1024, 16_384] {
        let resumed = send(&app, &esp_idf(&app, "GET", &path, Some(&format!("bytes={offset}-")))).await;
        assert_eq!(resumed.status, 206, "offset {offset}");
        assert!(resumed.body[..] == image[offset..], "offset {offset}");
    }
    let past = send(&app, &esp_idf(&app, "GET", &path, Some(&format!("bytes={size}-")))).await;
    assert_eq!(past.status, 416);
    assert_eq!(past.header("content-range"), Some(format!("bytes */{size}").as_str()));
    app.stop().await;
}

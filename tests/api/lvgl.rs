//! LVGL images: seed 003's image proxy (`GET /api/images/lvgl`), its extensions (colour
//! formats, LVGL 8, C output), conversion of uploaded images, the SSRF guard, and the limits
//! on decoding (pixels, concurrent conversions). The images come from a small HTTP server on
//! loopback, which the tests open with the allow-list setting; without it, loopback is refused.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use reqwest::Method;

use crate::config_seed003::{seed_error, seed_validation};
use crate::helpers::*;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lvgl").join(name)).unwrap()
}

/// A 16×8 RGBA test picture.
fn picture() -> image::RgbaImage {
    image::RgbaImage::from_fn(16, 8, |x, y| image::Rgba([(x * 16) as u8, (y * 32) as u8, 200, if x < 8 { 255 } else { 128 }]))
}

fn png() -> Vec<u8> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    picture().write_to(&mut bytes, image::ImageFormat::Png).unwrap();
    bytes.into_inner()
}

#[derive(serde::Deserialize)]
struct To {
    to: String,
}

/// Serves test images on `bind` (a loopback address, port 0); returns its address.
async fn image_server(bind: &str) -> SocketAddr {
    let png = png();
    let router = Router::new()
        .route(
            "/img.png",
            get({
                let png = png.clone();
                move || async move { ([(header::CONTENT_TYPE, "image/png")], png) }
            }),
        )
        .route(
            "/auth.png",
            get({
                let png = png.clone();
                move |headers: HeaderMap| async move {
                    if headers.get(header::AUTHORIZATION).is_some_and(|v| v == "Bearer s3cret") {
                        png.into_response()
                    } else {
                        StatusCode::UNAUTHORIZED.into_response()
                    }
                }
            }),
        )
        .route("/redirect", get(|| async { Redirect::to("/img.png") }))
        .route("/loop", get(|| async { Redirect::to("/loop") }))
        .route("/away", get(|Query(to): Query<To>| async move { Redirect::to(&to.to) }))
        .route("/text", get(|| async { "not an image" }))
        .route("/bomb.png", get(|| async { fixture("bomb_8192.png") }))
        .route(
            "/wide.png",
            get(|| async {
                let mut bytes = std::io::Cursor::new(Vec::new());
                image::RgbaImage::from_pixel(300, 200, image::Rgba([9, 99, 199, 255]))
                    .write_to(&mut bytes, image::ImageFormat::Png)
                    .unwrap();
                bytes.into_inner()
            }),
        )
        .route("/big", get(|| async { vec![0u8; 50_000] }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(std::time::Duration::from_secs(20)).await;
                Response::new(axum::body::Body::empty())
            }),
        );
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

async fn proxy_app(allow: &str) -> TestApp {
    let allow = allow.to_string();
    spawn_app_with(move |s| s.content.image_fetch_allow_hosts = vec![allow]).await
}

async fn proxy(app: &TestApp, query: &str) -> reqwest::Response {
    app.client.get(app.url(&format!("/api/images/lvgl?{query}"))).send().await.unwrap()
}

fn encoded(url: &str) -> String {
    url::form_urlencoded::byte_serialize(url.as_bytes()).collect()
}

#[tokio::test]
async fn the_proxy_answers_an_lvgl_9_argb8888_bin_and_only_ever_scales_down() {
    let images = image_server("127.0.0.1:0").await;
    let app = proxy_app("127.0.0.1").await;
    let url = encoded(&format!("http://{images}/img.png"));

    let full = proxy(&app, &format!("url={url}")).await;
    assert_eq!(full.status(), 200);
    assert_eq!(full.headers()["cache-control"], "no-store");
    assert_eq!(full.headers()["content-type"], "application/octet-stream");
    let bytes = full.bytes().await.unwrap();
    let picture = picture();
    let expected = updraft::domain::lvgl::encode(
        picture.as_raw(),
        16,
        8,
        updraft::domain::lvgl::ColorFormat::Argb8888,
        updraft::domain::lvgl::LvglVersion::V9,
    )
    .unwrap();
    assert_eq!(bytes.as_ref(), expected.to_bin().as_slice());
    assert_eq!(&bytes[..12], &[0x19, 0x10, 0, 0, 16, 0, 8, 0, 64, 0, 0, 0]);
    // B, G, R, A of pixel (1, 0).
    assert_eq!(&bytes[16..20], &[200, 0, 16, 255]);

    let half = proxy(&app, &format!("url={url}&width=8")).await.bytes().await.unwrap();
    assert_eq!(&half[..12], &[0x19, 0x10, 0, 0, 8, 0, 4, 0, 32, 0, 0, 0]);
    assert_eq!(half.len(), 12 + 8 * 4 * 4);
    let boxed = proxy(&app, &format!("url={url}&width=100&height=2")).await.bytes().await.unwrap();
    assert_eq!(&boxed[4..8], &[4, 0, 2, 0]);
    let never_up = proxy(&app, &format!("url={url}&width=100&height=100")).await.bytes().await.unwrap();
    assert_eq!(never_up.len(), 524);
    app.stop().await;
}

#[tokio::test]
async fn colour_formats_lvgl_8_and_c_source_are_available_as_parameters() {
    let images = image_server("127.0.0.1:0").await;
    let app = proxy_app("127.0.0.1").await;
    let url = encoded(&format!("http://{images}/img.png"));

    let rgb565 = proxy(&app, &format!("url={url}&cf=RGB565")).await.bytes().await.unwrap();
    assert_eq!((rgb565[1], rgb565.len()), (0x12, 12 + 16 * 8 * 2));
    let v8 = proxy(&app, &format!("url={url}&cf=RGB565&lvgl=8")).await.bytes().await.unwrap();
    assert_eq!(u32::from_le_bytes(v8[..4].try_into().unwrap()), 4 | (16 << 10) | (8 << 21));
    assert_eq!(&v8[4..], &rgb565[12..]);
    for (cf, code) in [("RGB565A8", 0x14), ("RGB888", 0x0F), ("XRGB8888", 0x11), ("L8", 0x06), ("A8", 0x0E)] {
        let bin = proxy(&app, &format!("url={url}&cf={cf}")).await.bytes().await.unwrap();
        assert_eq!(bin[1], code, "{cf}");
    }
    let source = proxy(&app, &format!("url={url}&output=c&name=weather_icon")).await;
    assert_eq!(source.status(), 200);
    assert!(source.headers()["content-type"].to_str().unwrap().starts_with("text/x-csrc"));
    let source = source.text().await.unwrap();
    assert!(
        source.contains("const lv_image_dsc_t weather_icon = {") && source.contains(".header.cf = LV_COLOR_FORMAT_ARGB8888,"),
        "{source}"
    );
    let source_v8 = proxy(&app, &format!("url={url}&output=c&lvgl=8&cf=RGB565A8")).await.text().await.unwrap();
    assert!(source_v8.contains("const lv_img_dsc_t image = {") && source_v8.contains("LV_IMG_CF_TRUE_COLOR_ALPHA"), "{source_v8}");

    for (query, what) in [
        (format!("url={url}&cf=I4"), "cf"),
        (format!("url={url}&lvgl=7"), "lvgl"),
        (format!("url={url}&output=png"), "output"),
        (format!("url={url}&output=c&name=9lives"), "name"),
    ] {
        let errors = seed_validation(proxy(&app, &query).await).await;
        assert_eq!(errors, vec![(what.to_string(), "value_error".to_string())], "{what}");
    }
    // A combination the encoder refuses is found later, in seed 003's error body.
    assert_eq!(seed_error(proxy(&app, &format!("url={url}&cf=RGB888&lvgl=8")).await, 400).await, "VALIDATION_FAILED");
    app.stop().await;
}

#[tokio::test]
async fn parameters_seed_003_s_schema_refuses_get_its_list_of_errors() {
    let images = image_server("127.0.0.1:0").await;
    let app = proxy_app("127.0.0.1").await;
    let url = encoded(&format!("http://{images}/img.png"));
    let pair = |loc: &str, kind: &str| (loc.to_string(), kind.to_string());
    for (query, expected) in [
        // The cases, as seed 003 answered them.
        (String::new(), vec![pair("url", "missing")]),
        ("url=not-a-valid-url".to_string(), vec![pair("url", "url_parsing")]),
        (format!("url={url}&width=-10"), vec![pair("width", "greater_than")]),
        (format!("url={url}&height=0"), vec![pair("height", "greater_than")]),
        // More of them.
        (format!("url={url}&size=10"), vec![pair("size", "extra_forbidden")]),
        ("width=10".to_string(), vec![pair("url", "missing")]),
        (format!("url={url}&width=ten"), vec![pair("width", "int_parsing")]),
        (format!("url={url}&width=70000"), vec![pair("width", "less_than_equal")]),
        (format!("url={url}&url={url}"), vec![pair("url", "value_error")]),
        ("url=not%20a%20url".to_string(), vec![pair("url", "url_parsing")]),
        ("url=ftp%3A%2F%2Fexample.com%2Fa.png".to_string(), vec![pair("url", "url_scheme")]),
        // Every error at once, as pydantic reports them.
        (
            "width=0&height=x&colour=red".to_string(),
            vec![pair("url", "missing"), pair("width", "greater_than"), pair("height", "int_parsing"), pair("colour", "extra_forbidden")],
        ),
    ] {
        assert_eq!(seed_validation(proxy(&app, &query).await).await, expected, "{query}");
    }
    let body: serde_json::Value = proxy(&app, "").await.json().await.unwrap();
    assert_eq!(body[0]["msg"], "Field required");
    app.stop().await;
}

#[tokio::test]
async fn listed_headers_are_forwarded_and_a_missing_one_is_a_400() {
    let images = image_server("127.0.0.1:0").await;
    let app = proxy_app("127.0.0.1").await;
    let url = encoded(&format!("http://{images}/auth.png"));
    let with_auth =
        |query: String| app.client.get(app.url(&format!("/api/images/lvgl?{query}"))).header("authorization", "Bearer s3cret").send();

    assert_eq!(with_auth(format!("url={url}&headers=Authorization")).await.unwrap().status(), 200);
    assert_eq!(seed_error(with_auth(format!("url={url}")).await.unwrap(), 502).await, "EXTERNAL_SERVICE_ERROR");
    // Seed 003 refused a header missing from the request as an invalid operation.
    assert_eq!(seed_error(proxy(&app, &format!("url={url}&headers=Authorization")).await, 400).await, "INVALID_OPERATION");
    assert_eq!(seed_error(with_auth(format!("url={url}&headers=Host")).await.unwrap(), 400).await, "INVALID_OPERATION");
    app.stop().await;
}

#[tokio::test]
async fn a_failed_fetch_gets_502() {
    let images = image_server("127.0.0.1:0").await;
    let app = spawn_app_with(|s| {
        s.content.image_fetch_allow_hosts = vec!["127.0.0.1".into()];
        s.content.image_fetch_max_bytes = 10_000;
        s.content.image_fetch_timeout = std::time::Duration::from_secs(2);
    })
    .await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    for target in [
        format!("http://{images}/missing"),
        format!("http://{images}/big"),
        format!("http://{images}/loop"),
        format!("http://{images}/slow"),
        format!("http://{closed}/img.png"),
    ] {
        let response = proxy(&app, &format!("url={}", encoded(&target))).await;
        assert_eq!(seed_error(response, 502).await, "EXTERNAL_SERVICE_ERROR", "{target}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_body_that_is_no_image_gets_seed_003_s_500_processing_error() {
    let images = image_server("127.0.0.1:0").await;
    let app = proxy_app("127.0.0.1").await;
    let response = proxy(&app, &format!("url={}", encoded(&format!("http://{images}/text")))).await;
    assert_eq!(response.status(), 500);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "PROCESSING_ERROR");
    assert_eq!(body["details"]["message"], "Processing operation failed");
    assert!(body["error"].as_str().unwrap().starts_with("Cannot decode image because"), "{body}");
    // The native upload route keeps its 422.
    let native = app.admin(Method::POST, "/api/v1/images/lvgl").body("not an image").send().await.unwrap();
    assert_eq!(error_code(native, 422).await, "invalid_image");
    app.stop().await;
}

#[tokio::test]
async fn redirects_are_followed_and_each_target_is_checked_again() {
    // Only 127.0.0.2 is opened; the server there redirects to itself, then to 127.0.0.1.
    let images = image_server("127.0.0.2:0").await;
    let elsewhere = image_server("127.0.0.1:0").await;
    let app = proxy_app("127.0.0.2").await;
    let ok = proxy(&app, &format!("url={}", encoded(&format!("http://{images}/redirect")))).await;
    assert_eq!(ok.status(), 200);
    let away = format!("http://{images}/away?to={}", encoded(&format!("http://{elsewhere}/img.png")));
    let refused = proxy(&app, &format!("url={}", encoded(&away))).await;
    let body = refused.text().await.unwrap();
    assert!(body.contains("not a public address"), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn loopback_private_link_local_and_metadata_addresses_are_refused_by_default() {
    let images = image_server("127.0.0.1:0").await;
    let app = spawn_app().await;
    for target in [
        format!("http://{images}/img.png"),
        format!("http://localhost:{}/img.png", images.port()),
        format!("http://[::1]:{}/img.png", images.port()),
        format!("http://[::ffff:127.0.0.1]:{}/img.png", images.port()),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://10.0.0.1/a.png".to_string(),
        "http://192.168.1.1/a.png".to_string(),
        "http://100.64.0.1/a.png".to_string(),
        "http://[fd00:ec2::254]/a.png".to_string(),
        "http://0x7f000001/a.png".to_string(),
    ] {
        let response = proxy(&app, &format!("url={}", encoded(&target))).await;
        assert_eq!(seed_error(response, 400).await, "VALIDATION_FAILED", "{target}");
    }
    // Not http(s) at all: refused by seed 003's schema already.
    let file = proxy(&app, &format!("url={}", encoded("file:///etc/passwd"))).await;
    assert_eq!(seed_validation(file).await, vec![("url".to_string(), "url_scheme".to_string())]);
    app.stop().await;
}

#[tokio::test]
async fn an_uploaded_image_is_converted_for_the_admin() {
    let app = spawn_app().await;
    let post = |query: &str, body: Vec<u8>| app.admin(Method::POST, &format!("/api/v1/images/lvgl{query}")).body(body).send();
    let l8 = post("?cf=L8&width=4", png()).await.unwrap();
    assert_eq!(l8.status(), 200);
    assert_eq!(l8.headers()["cache-control"], "no-store");
    let l8 = l8.bytes().await.unwrap();
    assert_eq!(&l8[..12], &[0x19, 0x06, 0, 0, 4, 0, 2, 0, 4, 0, 0, 0]);
    let source = post("?output=c&name=logo&lvgl=8", png()).await.unwrap().text().await.unwrap();
    assert!(source.contains("const lv_img_dsc_t logo"), "{source}");

    assert_eq!(error_code(post("", b"not an image".to_vec()).await.unwrap(), 422).await, "invalid_image");
    // Files the fuzzer found (fuzz/corpus/image_decode): a GIF that decodes to no pixels (it
    // was a 500), and a TIFF whose tag claims millions of values (refused before decoding).
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/image_decode");
    let found = |name: &str| std::fs::read(corpus.join(name)).unwrap()[2..].to_vec();
    assert_eq!(error_code(post("?width=7&height=7", found("crash-gif-of-no-pixels")).await.unwrap(), 422).await, "invalid_image");
    let tiff = post("", found("crash-tiff-tag-of-millions-of-values")).await.unwrap();
    assert_eq!(error_code(tiff, 400).await, "image_too_large");
    assert_eq!(error_code(post("?cf=bogus", png()).await.unwrap(), 400).await, "invalid_color_format");
    assert_eq!(error_code(post("?colour=red", png()).await.unwrap(), 400).await, "invalid_query");
    let anonymous = app.client.post(app.url("/api/v1/images/lvgl")).body(png()).send().await.unwrap();
    assert_eq!(error_code(anonymous, 401).await, "unauthenticated");
    app.stop().await;
}

#[tokio::test]
async fn an_image_of_more_pixels_than_the_limit_is_refused_from_its_header_on_both_routes() {
    // 65 KB that decode to 8192×8192 pixels: 64 MiB grey, 256 MiB as RGBA.
    let images = image_server("127.0.0.1:0").await;
    let app = proxy_app("127.0.0.1").await;
    let public = proxy(&app, &format!("url={}", encoded(&format!("http://{images}/bomb.png")))).await;
    assert_eq!(public.status(), 400);
    let body: serde_json::Value = public.json().await.unwrap();
    assert_eq!(body["code"], "VALIDATION_FAILED");
    let message = body["error"].as_str().unwrap();
    assert!(message.contains("8192x8192") && message.contains("16777216") && message.contains("UPDRAFT_IMAGE_MAX_PIXELS"), "{message}");

    let admin = app.admin(Method::POST, "/api/v1/images/lvgl?width=64").body(fixture("bomb_8192.png")).send().await.unwrap();
    assert_eq!(admin.status(), 400);
    let body: serde_json::Value = admin.json().await.unwrap();
    assert_eq!(body["error"]["code"], "image_too_large");
    assert!(body["error"]["message"].as_str().unwrap().contains("UPDRAFT_IMAGE_MAX_PIXELS"), "{body}");
    app.stop().await;

    // The limit is the setting: 100 pixels refuse the 16×8 picture.
    let small = spawn_app_with(|s| s.content.image_max_pixels = 100).await;
    let refused = small.admin(Method::POST, "/api/v1/images/lvgl").body(png()).send().await.unwrap();
    assert_eq!(error_code(refused, 400).await, "image_too_large");
    small.stop().await;
}

/// An image server whose `/stall.png` answers only when `release` is notified, and says on
/// `arrived` that a request came in.
async fn stalling_server() -> (SocketAddr, tokio::sync::mpsc::Receiver<()>, Arc<tokio::sync::Notify>) {
    let (arrived_tx, arrived) = tokio::sync::mpsc::channel(8);
    let release = Arc::new(tokio::sync::Notify::new());
    let router = Router::new().route(
        "/stall.png",
        get({
            let release = release.clone();
            move || async move {
                arrived_tx.send(()).await.unwrap();
                release.notified().await;
                png()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (addr, arrived, release)
}

#[tokio::test]
async fn conversions_beyond_the_concurrency_cap_get_503_with_retry_after() {
    let images = image_server("127.0.0.1:0").await;
    let (stalling, mut arrived, release) = stalling_server().await;
    let app = spawn_app_with(|s| {
        s.content.image_fetch_allow_hosts = vec!["127.0.0.1".into()];
        s.content.image_max_concurrent = 1;
    })
    .await;
    // The first request takes the only slot and waits for its image.
    let first =
        tokio::spawn(app.client.get(app.url(&format!("/api/images/lvgl?url={}", encoded(&format!("http://{stalling}/stall.png"))))).send());
    arrived.recv().await.expect("the first fetch reached the image server");

    let url = format!("url={}", encoded(&format!("http://{images}/img.png")));
    let busy = proxy(&app, &url).await;
    assert_eq!(busy.headers().get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
    assert_eq!(seed_error(busy, 503).await, "SERVICE_UNAVAILABLE");
    let busy_admin = app.admin(Method::POST, "/api/v1/images/lvgl").body(png()).send().await.unwrap();
    assert_eq!(busy_admin.headers().get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
    assert_eq!(error_code(busy_admin, 503).await, "unavailable");

    // Once the first is done, its slot is free again.
    release.notify_one();
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    assert_eq!(proxy(&app, &url).await.status(), 200);
    assert_eq!(app.admin(Method::POST, "/api/v1/images/lvgl").body(png()).send().await.unwrap().status(), 200);
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let refused = metrics
        .lines()
        .find_map(|line| line.strip_prefix("updraft_image_conversions_busy_total "))
        .and_then(|value| value.trim().parse::<f64>().ok());
    assert!(refused.is_some_and(|n| n >= 2.0), "{metrics}");
    app.stop().await;
}

#[tokio::test]
async fn tiff_ico_tga_pnm_and_qoi_convert_and_other_formats_are_named() {
    let app = spawn_app().await;
    let convert = |body: Vec<u8>| app.admin(Method::POST, "/api/v1/images/lvgl").body(body).send();
    for (name, width, height) in
        [("image.tiff", 90, 60), ("alpha.tiff", 90, 60), ("icon.ico", 48, 48), ("image.tga", 70, 50), ("image.ppm", 60, 40)]
    {
        let response = convert(fixture(name)).await.unwrap();
        assert_eq!(response.status(), 200, "{name}");
        let bin = response.bytes().await.unwrap();
        assert_eq!((bin[0], u16::from_le_bytes([bin[4], bin[5]]), u16::from_le_bytes([bin[6], bin[7]])), (0x19, width, height), "{name}");
    }
    for format in [image::ImageFormat::Qoi, image::ImageFormat::Pnm] {
        let mut bytes = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_pixel(5, 3, image::Rgb([1, 2, 3])).write_to(&mut bytes, format).unwrap();
        let bin = convert(bytes.into_inner()).await.unwrap().bytes().await.unwrap();
        assert_eq!(&bin[12..16], &[3, 2, 1, 255], "{format:?}");
    }
    // Photoshop's PSD, which Pillow reads and the image crate does not: named in the answer.
    let psd = b"8BPS\x00\x01\x00\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x10\x00\x00\x00\x10\x00\x08\x00\x03".to_vec();
    let refused = convert(psd).await.unwrap();
    assert_eq!(refused.status(), 422);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("TIFF, ICO, TGA"), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn the_seed_003_route_truncates_scaled_sizes_and_the_native_route_rounds() {
    let images = image_server("127.0.0.1:0").await;
    let app = proxy_app("127.0.0.1").await;
    // 300×200 into 100×100: seed 003 made 100×66 (int(66.67)); the native rule 100×67.
    let seed = proxy(&app, &format!("url={}&width=100&height=100", encoded(&format!("http://{images}/wide.png")))).await;
    let seed = seed.bytes().await.unwrap();
    assert_eq!((u16::from_le_bytes([seed[4], seed[5]]), u16::from_le_bytes([seed[6], seed[7]])), (100, 66));
    let mut wide = std::io::Cursor::new(Vec::new());
    image::RgbaImage::from_pixel(300, 200, image::Rgba([9, 99, 199, 255])).write_to(&mut wide, image::ImageFormat::Png).unwrap();
    let native = app.admin(Method::POST, "/api/v1/images/lvgl?width=100&height=100").body(wide.into_inner()).send().await.unwrap();
    let native = native.bytes().await.unwrap();
    assert_eq!((u16::from_le_bytes([native[4], native[5]]), u16::from_le_bytes([native[6], native[7]])), (100, 67));
    app.stop().await;
}

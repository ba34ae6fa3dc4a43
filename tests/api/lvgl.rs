//! LVGL images: seed 003's image proxy (`GET /api/images/lvgl`), its extensions (colour
//! formats, LVGL 8, C output), conversion of uploaded images, and the SSRF guard. The
//! images come from a small HTTP server on loopback, which the tests open with the
//! allow-list setting; without it, loopback is refused.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use reqwest::Method;

use crate::config_seed003::seed_error;
use crate::helpers::*;

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
        (format!("url={url}&cf=RGB888&lvgl=8"), "RGB888"),
        (format!("url={url}&output=png"), "output"),
        (format!("url={url}&output=c&name=9lives"), "name"),
    ] {
        let response = proxy(&app, &query).await;
        assert_eq!(seed_error(response, 400).await, "VALIDATION_FAILED", "{what}");
    }
    app.stop().await;
}

#[tokio::test]
async fn unknown_or_malformed_parameters_get_400() {
    let images = image_server("127.0.0.1:0").await;
    let app = proxy_app("127.0.0.1").await;
    let url = encoded(&format!("http://{images}/img.png"));
    for query in [
        format!("url={url}&size=10"),
        "width=10".to_string(),
        format!("url={url}&width=0"),
        format!("url={url}&height=-1"),
        format!("url={url}&width=ten"),
        format!("url={url}&url={url}"),
        "url=not%20a%20url".to_string(),
    ] {
        assert_eq!(seed_error(proxy(&app, &query).await, 400).await, "VALIDATION_FAILED", "{query}");
    }
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
    assert_eq!(seed_error(proxy(&app, &format!("url={url}&headers=Authorization")).await, 400).await, "VALIDATION_FAILED");
    assert_eq!(seed_error(with_auth(format!("url={url}&headers=Host")).await.unwrap(), 400).await, "VALIDATION_FAILED");
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
        format!("http://{images}/text"),
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
        "file:///etc/passwd".to_string(),
    ] {
        let response = proxy(&app, &format!("url={}", encoded(&target))).await;
        assert_eq!(seed_error(response, 400).await, "VALIDATION_FAILED", "{target}");
    }
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
    assert_eq!(error_code(post("?cf=bogus", png()).await.unwrap(), 400).await, "invalid_color_format");
    assert_eq!(error_code(post("?colour=red", png()).await.unwrap(), 400).await, "invalid_query");
    let anonymous = app.client.post(app.url("/api/v1/images/lvgl")).body(png()).send().await.unwrap();
    assert_eq!(error_code(anonymous, 401).await, "unauthenticated");
    app.stop().await;
}

//! Pixel agreement with seed 003's converter: every case of tests/fixtures/lvgl/cases.txt
//! goes through `GET /api/images/lvgl` (the images served from loopback) and is compared
//! with the `.bin` seed 003's pipeline (Pillow, then LVGL's LVGLImage.py) made of it, once;
//! tests/fixtures/lvgl/README.md says how. Sizes must be equal; per channel, over every pixel,
//! the mean absolute difference must be under 1 level and the largest under 8. (Today every
//! case but the JPEG ones is byte for byte equal; JPEG decoders differ by a few levels.)

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::helpers::*;

fn fixtures() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lvgl")
}

/// Serves tests/fixtures/lvgl/ on loopback, as `application/octet-stream` whatever the file:
/// the converter must recognise the formats by their bytes.
async fn fixture_server() -> SocketAddr {
    let router = Router::new().route(
        "/{name}",
        get(|Path(name): Path<String>| async move {
            match std::fs::read(fixtures().join(&name)) {
                Ok(bytes) if !name.contains('/') => ([("content-type", "application/octet-stream")], bytes).into_response(),
                _ => StatusCode::NOT_FOUND.into_response(),
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

struct Case {
    input: String,
    width: Option<u32>,
    height: Option<u32>,
    reference: String,
}

fn cases() -> Vec<Case> {
    let index = std::fs::read_to_string(fixtures().join("cases.txt")).unwrap();
    let side = |text: &str| if text == "-" { None } else { Some(text.parse().unwrap()) };
    index
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Case { input: fields[0].into(), width: side(fields[1]), height: side(fields[2]), reference: fields[3].into() }
        })
        .collect()
}

/// Per channel (B, G, R, A of ARGB8888): mean and largest absolute difference.
struct Difference {
    mean: [f64; 4],
    max: [u8; 4],
}

fn compare(ours: &[u8], theirs: &[u8]) -> Difference {
    let mut sum = [0u64; 4];
    let mut max = [0u8; 4];
    for (a, b) in ours.chunks_exact(4).zip(theirs.chunks_exact(4)) {
        for channel in 0..4 {
            let d = a[channel].abs_diff(b[channel]);
            sum[channel] += u64::from(d);
            max[channel] = max[channel].max(d);
        }
    }
    let pixels = (ours.len() / 4).max(1) as f64;
    Difference { mean: sum.map(|s| s as f64 / pixels), max }
}

#[tokio::test]
async fn conversions_agree_with_seed_003_on_the_committed_test_images() {
    let images = fixture_server().await;
    let app = spawn_app_with(|s| s.content.image_fetch_allow_hosts = vec!["127.0.0.1".into()]).await;
    let mut failures = Vec::new();
    eprintln!("{:<16} {:>5} {:>5}  {:>9}  mean |d| B, G, R, A          max |d| B, G, R, A", "input", "w", "h", "size");
    for case in cases() {
        let mut query = format!("url=http://{images}/{}", case.input);
        if let Some(width) = case.width {
            query.push_str(&format!("&width={width}"));
        }
        if let Some(height) = case.height {
            query.push_str(&format!("&height={height}"));
        }
        let response = app.client.get(app.url(&format!("/api/images/lvgl?{query}"))).send().await.unwrap();
        assert_eq!(response.status(), 200, "{}: {}", case.input, response.text().await.unwrap());
        let ours = response.bytes().await.unwrap();
        let theirs = std::fs::read(fixtures().join(&case.reference)).unwrap();
        // The 12-byte header: magic, cf, flags, width, height, stride.
        assert_eq!(&ours[..12], &theirs[..12], "{}: the headers (and so the sizes) differ", case.reference);
        assert_eq!(ours.len(), theirs.len(), "{}", case.reference);
        let difference = compare(&ours[12..], &theirs[12..]);
        let (width, height) = (u16::from_le_bytes([ours[4], ours[5]]), u16::from_le_bytes([ours[6], ours[7]]));
        eprintln!(
            "{:<16} {:>5} {:>5}  {:>4}x{:<4}  {:5.3} {:5.3} {:5.3} {:5.3}   {:>3} {:>3} {:>3} {:>3}",
            case.input,
            case.width.map(|w| w.to_string()).unwrap_or("-".into()),
            case.height.map(|h| h.to_string()).unwrap_or("-".into()),
            width,
            height,
            difference.mean[0],
            difference.mean[1],
            difference.mean[2],
            difference.mean[3],
            difference.max[0],
            difference.max[1],
            difference.max[2],
            difference.max[3],
        );
        if difference.mean.iter().any(|m| *m >= 1.0) || difference.max.iter().any(|m| *m >= 8) {
            failures.push(case.reference.clone());
        }
    }
    assert!(failures.is_empty(), "differ from seed 003 by a mean of 1 level or more, or by 8 or more: {failures:?}");
    app.stop().await;
}

//! Operations endpoints: liveness, readiness, request ids, Prometheus metrics, the OpenAPI
//! document (served and committed) and its offline documentation page.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

#[tokio::test]
async fn liveness_and_readiness_answer_ok_on_a_healthy_server() {
    let app = spawn_app().await;

    let health = app.client.get(app.url("/api/health")).send().await.unwrap();
    let ready = app.client.get(app.url("/api/ready")).send().await.unwrap();

    assert_eq!(health.status(), 200);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["database"], "ok", "{ready}");
    assert_eq!(ready["blob_store"], "ok", "{ready}");
    app.stop().await;
}

#[tokio::test]
async fn readiness_turns_503_with_the_reason_when_the_blob_folder_disappears() {
    let app = spawn_app().await;
    let updraft::config::BlobSettings::Local { root } = app.settings.blob.clone() else {
        // The S3 backend cannot be broken from here; this test is about the local folder.
        app.stop().await;
        return;
    };
    assert_eq!(app.client.get(app.url("/api/ready")).send().await.unwrap().status(), 200);

    std::fs::remove_dir_all(&root).unwrap();
    let ready = app.client.get(app.url("/api/ready")).send().await.unwrap();
    let health = app.client.get(app.url("/api/health")).send().await.unwrap();

    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["status"], "unavailable", "{ready}");
    assert_eq!(ready["database"], "ok", "{ready}");
    let blob_store = ready["blob_store"].as_str().unwrap_or_else(|| panic!("no blob_store reason in {ready}"));
    assert_ne!(blob_store, "ok");
    assert!(blob_store.contains(&root.display().to_string()), "the reason does not name the folder: {blob_store}");
    assert_eq!(health.status(), 200, "liveness must not depend on the blob store");
    app.stop().await;
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_a_given_one_is_echoed() {
    let app = spawn_app().await;

    let responses = [
        app.client.get(app.url("/api/health")).send().await.unwrap(),
        app.client.get(app.url("/api/v1/firmware")).send().await.unwrap(), // 401
        app.client.get(app.url("/api/nothing-here")).send().await.unwrap(), // 404
        app.admin(Method::GET, "/api/v1/firmware").send().await.unwrap(),
    ];
    let mut ids = Vec::new();
    for response in &responses {
        let id = response.headers().get("x-request-id").unwrap_or_else(|| panic!("no x-request-id on {}", response.url()));
        let id = id.to_str().unwrap().to_string();
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "not a UUID: {id}");
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), responses.len(), "request ids repeat");

    let echoed = app.client.get(app.url("/api/health")).header("x-request-id", "from-the-client-42").send().await.unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "from-the-client-42");
    app.stop().await;
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_bytes_moved() {
    let app = spawn_app().await;
    let before = scrape(&app).await;
    let bytes = random_bytes(100_000, 30);
    let artifact = app.create_artifact(bytes.clone(), "product=p&version=1.0.0&hardware=esp32").await;
    let id = artifact["id"].as_str().unwrap();
    let download = app.admin(Method::GET, &format!("/api/v1/firmware/{id}/download")).send().await.unwrap();
    assert_eq!(download.status(), 200);
    assert_eq!(download.bytes().await.unwrap().len(), bytes.len());

    let response = app.client.get(app.url("/metrics")).send().await.unwrap();

    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();
    let downloads = sample(&text, "updraft_http_requests_total", &["route=\"/api/v1/firmware/{id}/download\"", "status=\"200\""]);
    assert!(downloads.is_some_and(|n| n >= 1.0), "no download request counted by its route template:\n{text}");
    assert!(!text.contains(id), "a concrete artifact id leaked into the metric labels:\n{text}");
    assert!(text.contains("updraft_http_request_duration_seconds_bucket{"), "no latency histogram:\n{text}");
    let timed = sample(&text, "updraft_http_request_duration_seconds_count", &["route=\"/api/v1/firmware/{id}/download\""]);
    assert!(timed.is_some_and(|n| n >= 1.0), "no download latency by its route template:\n{text}");
    assert!(sample(&text, "updraft_artifacts", &[]).is_some(), "no updraft_artifacts:\n{text}");
    assert!(sample(&text, "updraft_artifact_bytes", &[]).is_some(), "no updraft_artifact_bytes:\n{text}");
    let grew = |name: &str| {
        let old = sample(&before, name, &[]).unwrap_or(0.0);
        let new = sample(&text, name, &[]).unwrap_or_else(|| panic!("no {name}:\n{text}"));
        assert!(new >= old + bytes.len() as f64, "{name} went from {old} to {new} after moving {} bytes", bytes.len());
    };
    grew("updraft_upload_bytes_total");
    grew("updraft_download_bytes_total");
    app.stop().await;
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_and_the_security_schemes() {
    let app = spawn_app().await;

    let response = app.client.get(app.url("/api/openapi.json")).send().await.unwrap();

    assert_eq!(response.status(), 200);
    let document: Value = response.json().await.unwrap();
    assert!(document["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{}", document["openapi"]);
    for path in ["/api/v1/firmware", "/api/v1/firmware/{id}", "/api/v1/firmware/{id}/download", "/api/health", "/api/ready", "/metrics"] {
        assert!(document["paths"].get(path).is_some(), "{path} is missing from the paths");
    }
    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer", "{schemes}");
    assert_eq!(schemes["admin_key"]["name"], "X-Admin-API-Key", "{schemes}");
    assert_eq!(document, serde_json::to_value(updraft::http::openapi()).unwrap(), "the served document is not the generated one");
    // Served as JSON text kept at start, with a validator: a client that has it gets a 304.
    let response = app.client.get(app.url("/api/openapi.json")).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "application/json");
    let etag = response.headers()["etag"].clone();
    let again = app.client.get(app.url("/api/openapi.json")).header("if-none-match", etag.clone()).send().await.unwrap();
    assert_eq!((again.status().as_u16(), again.headers()["etag"].clone()), (304, etag));
    assert!(again.bytes().await.unwrap().is_empty());
    app.stop().await;
}

/// No server needed: compares the committed file with what the code generates.
#[test]
fn the_committed_openapi_document_is_up_to_date() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    let committed: Value = std::fs::read_to_string(path).ok().and_then(|text| serde_json::from_str(&text).ok()).unwrap_or(Value::Null);

    let generated = serde_json::to_value(updraft::http::openapi()).unwrap();

    assert!(committed == generated, "docs/openapi.json is out of date: run `cargo run -- openapi > docs/openapi.json`");
}

#[tokio::test]
async fn the_api_docs_page_is_served_from_the_binary_without_a_cdn() {
    let app = spawn_app().await;

    let page = app.client.get(app.url("/api/docs")).send().await.unwrap();

    assert_eq!(page.status(), 200);
    assert_eq!(page.url().path(), "/api/docs/");
    let content_type = page.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = page.text().await.unwrap();
    assert_no_cdn("the docs page", &html);
    let assets: Vec<String> = ["src", "href"].iter().flat_map(|attribute| attribute_values(&html, attribute)).collect();
    assert!(assets.iter().any(|a| a.ends_with(".js")), "no script in {html}");
    assert!(assets.iter().any(|a| a.ends_with(".css")), "no stylesheet in {html}");
    for asset in &assets {
        assert!(
            !(asset.starts_with("http:") || asset.starts_with("https:") || asset.starts_with("//")),
            "the docs page loads {asset} from elsewhere"
        );
        let url = page_url_join("/api/docs/", asset);
        let response = app.client.get(app.url(&url)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        let body = response.bytes().await.unwrap();
        assert!(!body.is_empty(), "{url} is empty");
        if asset.ends_with(".js") || asset.ends_with(".css") {
            assert_no_cdn(&url, &String::from_utf8_lossy(&body));
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn once_stop_returns_after_the_deadline_a_stalled_upload_is_cut_off_and_leaves_nothing() {
    if !uses_local_blobs() {
        // About staging files in a local folder.
        spawn_app().await.stop().await;
        return;
    }
    // A blob folder that outlives the server (its data dir goes away with `stop`).
    let blobs = tempfile::tempdir().unwrap();
    let root = blobs.path().join("blobs");
    let app = spawn_app_with(|settings| {
        settings.shutdown_timeout = Duration::from_secs(1);
        settings.blob = updraft::config::BlobSettings::Local { root: root.clone() };
    })
    .await;
    let body = random_bytes(1 << 20, 31);
    let mut upload = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/firmware?product=p&version=1.0.0&hardware=esp32 HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        app.addr,
        body.len()
    );
    upload.write_all(head.as_bytes()).await.unwrap();
    upload.write_all(&body[..body.len() / 4]).await.unwrap();
    for _ in 0..500 {
        if !files_under(&root).is_empty() {
            break; // the upload is being staged
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!files_under(&root).is_empty(), "the upload never started staging");

    app.stop().await;

    let left = files_under(&root);
    // The connection is closed: the rest of the body gets no answer.
    let _ = upload.write_all(&body[body.len() / 4..]).await;
    let mut answer = vec![0u8; 4096];
    let answer = match tokio::time::timeout(Duration::from_secs(5), upload.read(&mut answer)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&answer[..n]).to_string(),
        Ok(Err(_)) | Err(_) => String::new(),
    };
    assert!(
        left.is_empty() && answer.is_empty(),
        "the server stopped, yet the abandoned upload lives on: staging files {left:?}; the rest of its body was answered with:\n{answer}"
    );
}

// ---------------------------------------------------------------------------------------------

async fn scrape(app: &TestApp) -> String {
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The sum of the samples of `name` whose labels include every one of `labels`; `None` when
/// there are none. Only exact series names count (`updraft_artifacts` is not
/// `updraft_artifacts_bytes`).
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut total = None;
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (label_set, value) = if let Some(after) = rest.strip_prefix('{') {
            let Some((label_set, value)) = after.rsplit_once('}') else { continue };
            (label_set, value)
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue;
        };
        if !labels.iter().all(|label| label_set.split(',').any(|l| l == *label)) {
            continue;
        }
        let value: f64 = value.trim().split(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("bad sample {line:?}"));
        *total.get_or_insert(0.0) += value;
    }
    total
}

/// The values of `attribute="..."` (or single-quoted) in an HTML text.
fn attribute_values(html: &str, attribute: &str) -> Vec<String> {
    let mut values = Vec::new();
    for quote in ['"', '\''] {
        let needle = format!(" {attribute}={quote}");
        let mut rest = html;
        while let Some(start) = rest.find(&needle) {
            rest = &rest[start + needle.len()..];
            if let Some(end) = rest.find(quote) {
                values.push(rest[..end].to_string());
                rest = &rest[end..];
            }
        }
    }
    values
}

/// Resolves a relative reference against a folder path (`./a.js`, `a.js` or `/x/a.js`).
fn page_url_join(folder: &str, reference: &str) -> String {
    if reference.starts_with('/') { reference.to_string() } else { format!("{folder}{}", reference.trim_start_matches("./")) }
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() { folders.push(path) } else { files.push(path) }
        }
    }
    files
}

fn assert_no_cdn(what: &str, text: &str) {
    for cdn in ["unpkg.com", "cdn.jsdelivr", "jsdelivr.net", "cdnjs.", "cdn.", "googleapis.com"] {
        assert!(!text.contains(cdn), "{what} refers to a CDN ({cdn})");
    }
}

#[tokio::test]
async fn a_stopped_server_stops_every_background_loop() {
    let app = spawn_app().await;
    let tasks = app.tasks.clone();
    assert!(tasks.running() >= 5, "the device, rollout, command and MQTT loops run: {}", tasks.running());
    app.stop().await;
    assert_eq!(tasks.running(), 0, "nothing keeps running once the server has stopped");
}

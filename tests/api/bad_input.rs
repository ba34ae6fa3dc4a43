//! The bad-input sweep: every route that takes a name, a path or a body, walked from the
//! OpenAPI document (and the undocumented compatibility routes), gets path traversal
//! (`..`, `%2e%2e`, `..%2f`, `\`, `%5c`, absolute paths), CR/LF meant for headers, oversized
//! names and bodies, deeply nested and malformed JSON, with the admin key. Every answer must
//! be a 4xx in the route's error form (the JSON error shape on Updraft's own routes), never
//! a 5xx; no response header may carry what a request injected; and nothing may be written
//! outside the data folder (the folder around it is compared before and after).
//!
//! Requests go over a raw connection, so that paths reach the server byte for byte (a URL
//! library would resolve `%2e%2e` and `\`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::helpers::*;
use crate::raw::RawResponse;

/// What replaces a path parameter, as written in the request line.
const PATH_PAYLOADS: &[&str] = &[
    "..",
    "%2e%2e",
    "%2E%2E",
    "..%2f..%2f..%2fetc%2fpasswd",
    "%2e%2e%2f%2e%2e%2fescaped",
    "..%5c..%5cescaped",
    "..\\..\\escaped",
    "%5c%5cserver%5cshare",
    "%2fetc%2fpasswd",
    "C:%5cWindows%5cwin.ini",
    "..%252f..%252fescaped",
    "x%0d%0aX-Injected:%20yes",
    "x%0aX-Injected:%20yes",
    "x%00y",
    "%ff%fe",
];

/// What a string field of a JSON body is set to.
fn body_payloads() -> Vec<String> {
    vec![
        "../../../escaped".into(),
        "..\\..\\escaped".into(),
        "/etc/passwd".into(),
        "C:\\Windows\\win.ini".into(),
        "x\r\nX-Injected: yes".into(),
        "x\u{0}y".into(),
        "a".repeat(100_000),
    ]
}

/// Bodies that are valid but for the field under test, for writes that name a resource:
/// the name then decides the answer.
fn valid_body(method: &str, template: &str) -> Option<Value> {
    Some(match (method, template) {
        ("PUT", "/api/v1/mqtt/users/{username}") => json!({"password": "long-enough-pass-1", "role": "admin"}),
        ("PUT", "/api/v1/products/{name}") => json!({"provisioning": "open"}),
        ("PUT", "/api/v1/configs/{kind}/{name}") => json!({"content": {"a": 1}}),
        ("PUT", "/api/configs/{mac}") => json!({"content": {"a": 1}}),
        ("PUT", "/api/v1/devices/{id}/config") => json!({"content": {"a": 1}}),
        ("PUT", "/api/v1/products/{name}/config-schema") => json!({"type": "object"}),
        ("POST", "/api/v1/devices") => json!({"mac": "02:00:00:15:00:01", "product": "lamp"}),
        ("POST", "/api/v1/groups") => json!({"name": "g1"}),
        _ => return None,
    })
}

/// The undocumented compatibility routes that take a name: method and template.
const COMPAT_ROUTES: &[(&str, &str)] = &[
    ("GET", "/admin/api/devices/{mac}"),
    ("PUT", "/admin/api/devices/{mac}"),
    ("DELETE", "/admin/api/devices/{mac}"),
    ("GET", "/admin/api/firmware/{filename}"),
    ("DELETE", "/admin/api/firmware/{filename}"),
    ("GET", "/admin/api/firmware/{filename}/info"),
    ("GET", "/firmware/{filename}"),
    ("GET", "/firmware_files/{filename}"),
    ("GET", "/api/v1/arduino/{product}/update"),
    ("GET", "/api/v1/esp32fota/{manifest}"),
    ("GET", "/api/v1/esp32fota/{product}/{file}"),
    ("GET", "/api/v1/esphome/{product}/manifest.json"),
    ("GET", "/api/v1/esphome/{product}/{file}"),
];

static NEXT_SOURCE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// One request, answered.
async fn send(app: &TestApp, method: &str, path: &str, content_type: &str, body: &[u8]) -> RawResponse {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {ADMIN_KEY}\r\nX-Admin-API-Key: {ADMIN_KEY}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    // Each request from its own loopback address: refusals of the device routes count as
    // failed authentications, and must not throttle the requests after them.
    let n = NEXT_SOURCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let source = std::net::Ipv4Addr::new(127, 1 + (n / 62_500) as u8, ((n / 250) % 250) as u8, (n % 250 + 1) as u8);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::from((source, 0))).unwrap();
    let stream = socket.connect(app.addr).await.expect("connect");
    let mut connection = crate::raw::RawConnection::from_stream(stream);
    connection.send_bytes(&request).await;
    connection.response(method == "HEAD").await
}

/// The failures of one answer (empty when it is right).
fn judge(what: &str, template: &str, response: &RawResponse) -> Vec<String> {
    let mut problems = Vec::new();
    if response.status == 429 {
        problems.push(format!("{what}: throttled (429), so the sweep did not reach the route"));
    } else if !(400..500).contains(&response.status) {
        problems.push(format!("{what}: status {} (expected a 4xx)\n{}", response.status, String::from_utf8_lossy(&response.body)));
    }
    if response.headers.iter().any(|(name, value)| name.eq_ignore_ascii_case("x-injected") || value.contains("X-Injected")) {
        problems.push(format!("{what}: a header carries the injected text\n{}", response.head));
    }
    let json = response.header("content-type").is_some_and(|t| t.contains("json"));
    let compat = COMPAT_ROUTES.iter().any(|(_, t)| *t == template);
    let native = template.starts_with("/api/v1/") && !template.starts_with("/api/v1/mqtt/hooks/") && !compat;
    // HTTP's own refusal of a request head too large to read: no route saw it.
    if matches!(response.status, 414 | 431) && response.body.is_empty() {
        return problems;
    }
    if native {
        let body: Option<Value> = serde_json::from_slice(&response.body).ok();
        let shaped = body.as_ref().is_some_and(|b| b["error"]["code"].is_string() && b["error"]["message"].is_string());
        if !json || !shaped {
            problems.push(format!("{what}: not the JSON error shape\n{}\n{}", response.head, String::from_utf8_lossy(&response.body)));
        }
    } else if json && serde_json::from_slice::<Value>(&response.body).is_err() {
        problems.push(format!("{what}: a JSON content type with a body that is not JSON"));
    }
    problems
}

/// Every file and folder under `root`, except under `skip`.
fn snapshot(root: &Path, skip: &Path) -> BTreeSet<PathBuf> {
    fn walk(dir: &Path, skip: &Path, out: &mut BTreeSet<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.starts_with(skip) {
                continue;
            }
            out.insert(path.clone());
            if path.is_dir() {
                walk(&path, skip, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, skip, &mut out);
    out
}

/// The path template with `target` replaced by `payload` and other parameters by `x`.
fn fill(template: &str, target: &str, payload: &str) -> String {
    template
        .split('/')
        .map(|segment| match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) if name == target => payload.to_string(),
            Some(_) => "x".to_string(),
            None => segment.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn parameters(template: &str) -> Vec<&str> {
    template.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect()
}

/// The string properties of an operation's JSON body, resolved through `$ref`.
fn string_properties(openapi: &Value, operation: &Value) -> Vec<String> {
    let mut schema = operation["requestBody"]["content"]["application/json"]["schema"].clone();
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap();
        schema = openapi["components"]["schemas"][name].clone();
    }
    let Some(properties) = schema["properties"].as_object() else { return Vec::new() };
    properties
        .iter()
        .filter(|(_, p)| p["type"] == "string" || p["type"].as_array().is_some_and(|t| t.contains(&json!("string"))))
        .map(|(name, _)| name.clone())
        .collect()
}

#[tokio::test]
async fn bad_input_on_every_named_resource_gets_a_4xx_and_writes_nothing_outside_the_data_folder() {
    // The data folder inside a folder of its own, so that anything written next to it shows.
    let outer = tempfile::tempdir().unwrap();
    let data = outer.path().join("data");
    let (mut settings, keep) = test_settings().await;
    if settings.database_url.expose().starts_with("sqlite:") {
        settings.database_url = format!("sqlite://{}", data.join("updraft.db").display()).into();
    }
    if let updraft::config::BlobSettings::Local { root } = &mut settings.blob {
        *root = data.join("blobs");
    }
    settings.content.config_key_file = data.join("config.key");
    settings.data_dir = data.clone();
    settings.max_upload_bytes = 256 * 1024;
    settings.compat.default_product = Some("lamp".into());
    let app = start(settings, keep).await;
    let before = snapshot(outer.path(), &data);

    let openapi = serde_json::to_value(updraft::http::openapi()).unwrap();
    let mut problems = Vec::new();
    let mut requests = 0usize;
    let mut routes: Vec<(String, String, Value)> = Vec::new();
    for (template, item) in openapi["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            routes.push((method.to_uppercase(), template.clone(), operation.clone()));
        }
    }
    for (method, template) in COMPAT_ROUTES {
        routes.push((method.to_string(), template.to_string(), Value::Null));
    }

    for (method, template, operation) in &routes {
        let json_body = !operation["requestBody"]["content"]["application/json"].is_null();
        let base = valid_body(method, template).unwrap_or_else(|| json!({}));
        let base_bytes = if json_body || operation.is_null() && method != "GET" { serde_json::to_vec(&base).unwrap() } else { Vec::new() };

        // Path parameters: traversal, absolute paths, CR/LF, NUL, bytes that are no UTF-8, huge.
        for parameter in parameters(template) {
            // A long name that reaches the handler, and one too long for the request head.
            let long = "a".repeat(4_000);
            let huge = "a".repeat(100_000);
            for payload in PATH_PAYLOADS.iter().copied().chain([long.as_str(), huge.as_str()]) {
                let path = fill(template, parameter, payload);
                let response = send(&app, method, &path, "application/json", &base_bytes).await;
                requests += 1;
                let shown = if payload.len() > 40 { format!("a×{}", payload.len()) } else { payload.to_string() };
                problems.extend(judge(&format!("{method} {template} {{{parameter}}}={shown}"), template, &response));
            }
        }

        // Names and paths in JSON bodies.
        if json_body && !template.contains("/hooks/") && !template.starts_with("/api/v1/device/") {
            let path = fill(template, "", "x");
            for field in string_properties(&openapi, operation) {
                for payload in body_payloads() {
                    let mut body = base.clone();
                    if let Some(object) = body.as_object_mut() {
                        object.insert(field.clone(), Value::String(payload.clone()));
                    }
                    let response = send(&app, method, &path, "application/json", &serde_json::to_vec(&body).unwrap()).await;
                    requests += 1;
                    let shown: String = payload.chars().take(20).collect();
                    let response_problems = judge(&format!("{method} {template} body.{field}={shown:?}"), template, &response);
                    // A valid body with an odd but harmless text (a comment, a note) may be
                    // accepted; a 5xx or a header injection never.
                    problems
                        .extend(response_problems.into_iter().filter(|p| !(200..300).contains(&response.status) || p.contains("header")));
                }
            }
        }

        // Malformed, deeply nested and oversized JSON.
        if json_body {
            let path = fill(template, "", "x");
            let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
            let oversized = format!("{{\"content\": \"{}\"}}", "a".repeat(updraft::http::MAX_JSON_BYTES + 16));
            for (what, body) in [
                ("malformed JSON", b"{\"content\": ".to_vec()),
                ("not JSON", b"\xff\xfe garbage".to_vec()),
                ("deeply nested JSON", nested.into_bytes()),
                ("a body over the limit", oversized.into_bytes()),
            ] {
                let response = send(&app, method, &path, "application/json", &body).await;
                requests += 1;
                problems.extend(judge(&format!("{method} {template}: {what}"), template, &response));
            }
        }
    }

    // Uploads: file names with traversal and CR/LF, and bodies over the upload limit.
    for name in ["../../escaped.bin", "..\\..\\escaped.bin", "/etc/escaped.bin", "x\r\nX-Injected: yes.bin", "%2e%2e%2fescaped.bin"] {
        for (path, field) in
            [("/admin/api/firmware", "file"), ("/api/v1/firmware?product=lamp&version=1.0.0", "file"), ("/api/assets", "file")]
        {
            let boundary = "sweepboundary";
            let mut body = format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .into_bytes();
            body.extend_from_slice(&random_bytes(1024, 5));
            body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
            let response = send(&app, "POST", path, &format!("multipart/form-data; boundary={boundary}"), &body).await;
            requests += 1;
            let template = path.split('?').next().unwrap();
            problems.extend(judge(&format!("POST {path} filename={name:?}"), template, &response));
        }
    }
    for path in ["/api/v1/firmware?product=lamp&version=1.0.0", "/api/v1/assets/lamp/logo?version=1.0.0", "/api/v1/images/lvgl"] {
        let response = send(&app, "POST", path, "application/octet-stream", &random_bytes(300 * 1024, 6)).await;
        requests += 1;
        problems.extend(judge(&format!("POST {path}: a body over the upload limit"), path.split('?').next().unwrap(), &response));
    }

    let after = snapshot(outer.path(), &data);
    let written: Vec<_> = after.difference(&before).collect();
    assert!(written.is_empty(), "written outside the data folder: {written:?}");
    let stray: Vec<_> = walk_names(&data).into_iter().filter(|name| name.contains("escaped") || name.contains("passwd")).collect();
    assert!(stray.is_empty(), "files named by a request inside the data folder: {stray:?}");
    assert!(problems.is_empty(), "{} of {requests} requests were answered wrongly:\n{}", problems.len(), problems.join("\n"));
    eprintln!("bad-input sweep: {requests} requests over {} routes", routes.len());
    app.stop().await;
}

fn walk_names(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        names.push(entry.file_name().to_string_lossy().into_owned());
        if entry.path().is_dir() {
            names.extend(walk_names(&entry.path()));
        }
    }
    names
}

/// serde reads a struct from an array of its fields in order: `[null, "beta"]` would have
/// changed a build's channel. Every JSON body of the API is an object; an array, a string or
/// a number is refused, and nothing changes. A configuration schema may still be `true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_a_json_object_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let artifact = app.create_artifact(esp_image("lamp", "1.0.0", 0), "product=lamp&version=1.0.0&hardware=esp32").await;
    let id = artifact["id"].as_str().unwrap();
    for body in [json!([null, "beta"]), json!(["notes", "beta"]), json!("beta"), json!(7)] {
        let response = app.admin(reqwest::Method::PATCH, &format!("/api/v1/firmware/{id}")).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "invalid_json", "{error}");
    }
    let response =
        app.admin(reqwest::Method::POST, "/api/v1/devices").json(&json!(["24:0A:C4:00:00:09", null, "lamp"])).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let shown: Value = app.admin(reqwest::Method::GET, &format!("/api/v1/firmware/{id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(shown["channel"], "stable", "{shown}");
    assert!(shown["notes"].is_null() || shown["notes"] == "", "{shown}");
    let devices: Value = app.admin(reqwest::Method::GET, "/api/v1/devices").send().await.unwrap().json().await.unwrap();
    assert_eq!(devices["total"], 0, "{devices}");
    // A JSON Schema may be a boolean: that body is still taken.
    let response = app.admin(reqwest::Method::PUT, "/api/v1/products/lamp/config-schema").json(&json!(true)).send().await.unwrap();
    assert_eq!(response.status(), 204);
    app.stop().await;
}

/// PostgreSQL stores and compares no NUL in text: a query parameter with one (`%00`) is a 400
/// on every backend, never a database error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_parameter_with_a_nul_is_refused() {
    let app = spawn_app().await;
    for path in ["/api/v1/firmware?product=la%00mp", "/api/v1/devices?owner=a%00b", "/api/v1/updates?product=%00"] {
        let response = app.admin(reqwest::Method::GET, path).send().await.unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "invalid_query", "{path}: {error}");
    }
    app.stop().await;
}

//! What a new user meets first: error messages in Updraft's own words, uploads refused
//! without breaking the connection, and an API page that works offline.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

/// Status, code and message of an error answer.
async fn error_of(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("error bodies are JSON");
    let text = |key: &str| body["error"][key].as_str().unwrap_or_else(|| panic!("no error.{key} in {body}")).to_string();
    (status, text("code"), text("message"))
}

/// Wording of the libraries underneath that must never reach a client.
fn assert_own_words(message: &str) {
    for leak in ["deserialize", "target type", "invalid type:", "at line", "u32", "struct ", "Failed to"] {
        assert!(!message.contains(leak), "library wording `{leak}` in: {message}");
    }
}

#[tokio::test]
async fn request_body_and_query_errors_name_the_field_and_what_was_expected() {
    let app = spawn_app().await;
    let provision = |body: Value| app.client.post(app.url("/api/v1/device/provision")).json(&body).send();

    let cases = [
        (provision(json!({"product": "lamp"})).await.unwrap(), "invalid_json", "`mac` is required"),
        (provision(json!({"mac": 42, "product": "lamp"})).await.unwrap(), "invalid_json", "`mac` must be a string, not the number 42"),
        (
            provision(json!({"mac": "24:0A:C4:12:34:56", "colour": "red"})).await.unwrap(),
            "invalid_json",
            "`colour` is not a known field; the fields are ",
        ),
        (
            app.client
                .post(app.url("/api/v1/device/provision"))
                .header("content-type", "application/json")
                .body("{\"mac\": ")
                .send()
                .await
                .unwrap(),
            "invalid_json",
            "the request body is not valid JSON",
        ),
        (app.admin(Method::GET, "/api/v1/firmware?limit=lots").send().await.unwrap(), "invalid_query", "`limit` must be a whole number"),
        (app.admin(Method::GET, "/api/v1/firmware?colour=red").send().await.unwrap(), "invalid_query", "`colour` is not a known field"),
        (
            app.admin(Method::PATCH, "/api/v1/firmware/0192").json(&json!({"notes": ["a"]})).send().await.unwrap(),
            "invalid_json",
            "`notes` must be a string, not an array",
        ),
    ];
    for (response, code, expected) in cases {
        let (status, actual_code, message) = error_of(response).await;

        assert_eq!((status, actual_code.as_str()), (400, code), "{message}");
        assert!(message.starts_with(expected), "expected `{expected}…`, got: {message}");
        assert_own_words(&message);
    }
    app.stop().await;
}

#[tokio::test]
async fn an_empty_release_id_in_an_update_report_is_refused_naming_the_field() {
    let app = spawn_app().await;
    let provisioned: Value = app
        .client
        .post(app.url("/api/v1/device/provision"))
        .json(&json!({"mac": "24:0A:C4:12:34:56", "product": "lamp", "hardware": "esp32", "version": "1.0.0"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = provisioned["token"].as_str().unwrap();

    let response = app
        .client
        .post(app.url("/api/v1/device/update-status"))
        .bearer_auth(token)
        .json(&json!({"release_id": "", "state": "downloading"}))
        .send()
        .await
        .unwrap();

    let (status, code, message) = error_of(response).await;
    assert_eq!((status, code.as_str()), (400, "invalid_release_id"), "{message}");
    assert!(message.contains("release_id") && message.contains("empty"), "{message}");
    app.stop().await;
}

/// A multipart upload whose file is in `field`, sent whole before the answer is read, as
/// simple clients (and curl, mostly) do; returns the status, the `Connection` header and the
/// error code, or what went wrong on the way.
async fn upload_whole_then_read(app: &TestApp, key: &str, field: &str, file: &[u8]) -> Result<(u16, Option<String>, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let boundary = "updraft-test-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"product\"\r\n\r\nlamp\r\n--{boundary}\r\n\
         Content-Disposition: form-data; name=\"{field}\"; filename=\"lamp.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let head = format!(
        "POST /api/v1/firmware HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n",
        app.addr,
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.map_err(|e| e.to_string())?;
    stream.write_all(head.as_bytes()).await.map_err(|e| format!("sending the head: {e}"))?;
    stream.write_all(&body).await.map_err(|e| format!("sending the body: {e}"))?;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 8192];
    let (head_end, length) = loop {
        let n = stream.read(&mut buffer).await.map_err(|e| format!("reading the answer: {e}"))?;
        if n == 0 {
            return Err(format!("the connection closed without a whole answer: {:?}", String::from_utf8_lossy(&answer)));
        }
        answer.extend_from_slice(&buffer[..n]);
        if let Some(at) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..at]).to_ascii_lowercase();
            let length = head.lines().find_map(|l| l.strip_prefix("content-length: ")).and_then(|v| v.trim().parse::<usize>().ok());
            break (at + 4, length.ok_or("an answer without Content-Length")?);
        }
    };
    while answer.len() < head_end + length {
        let n = stream.read(&mut buffer).await.map_err(|e| format!("reading the answer's body: {e}"))?;
        if n == 0 {
            return Err("the connection closed in the middle of the answer".into());
        }
        answer.extend_from_slice(&buffer[..n]);
    }
    let head = String::from_utf8_lossy(&answer[..head_end]).to_ascii_lowercase();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or("no status")?;
    let connection = head.lines().find_map(|l| l.strip_prefix("connection: ")).map(|v| v.trim().to_string());
    let json: Value = serde_json::from_slice(&answer[head_end..head_end + length]).map_err(|e| e.to_string())?;
    Ok((status, connection, json["error"]["code"].as_str().unwrap_or_default().to_string()))
}

#[tokio::test]
async fn a_refused_upload_is_always_answered_while_the_client_is_still_sending() {
    // Before, an upload refused early (a wrong form field, a wrong key) could get `Broken pipe`
    // instead of its answer: the server closed the connection with the rest of the body
    // unread, and the kernel reset it. Sizes from below to far above the socket buffers, many
    // times over, so that the race would show.
    let app = spawn_app().await;
    for round in 0..120u64 {
        let file = random_bytes(((round % 8) as usize + 1) * (512 << 10), round);
        // (Nine wrong keys in all: a tenth from this address would be throttled.)
        let (key, field, expected) = match round % 13 {
            12 => ("upd_admin_not-the-key-at-all-0000", "file", (401, "unauthenticated")),
            _ => (ADMIN_KEY, "firmware", (400, "invalid_multipart")),
        };

        let answer = upload_whole_then_read(&app, key, field, &file).await;

        let (status, _, code) = answer.unwrap_or_else(|e| panic!("round {round} ({} bytes): {e}", file.len()));
        assert_eq!((status, code.as_str()), expected, "round {round}");
    }
    // Above what is drained (16 MiB), the answer still arrives in full, then the connection
    // closes.
    let large = random_bytes(24 << 20, 99);
    for round in 0..3 {
        let answer = upload_whole_then_read(&app, ADMIN_KEY, "firmware", &large).await;

        let (status, connection, code) = answer.unwrap_or_else(|e| panic!("large round {round}: {e}"));
        assert_eq!((status, code.as_str()), (400, "invalid_multipart"), "large round {round}");
        assert_eq!(connection.as_deref(), Some("close"));
    }
    // Nothing was stored, and uploads still work.
    assert_eq!(app.list_artifacts("").await["total"], 0);
    app.create_artifact(random_bytes(1000, 7), "product=lamp&version=1.0.0&hardware=esp32").await;
    app.stop().await;
}

#[tokio::test]
async fn the_api_page_works_offline_and_names_no_other_host() {
    let app = spawn_app().await;
    let get = |path: String| {
        let client = app.client.clone();
        let url = app.url(&path);
        async move {
            let response = client.get(&url).send().await.unwrap();
            assert_eq!(response.status(), 200, "{url}");
            response.text().await.unwrap()
        }
    };

    let page = get("/api/docs/".into()).await;
    let mut linked = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        for piece in page.split(attribute).skip(1) {
            let target = piece.split('"').next().unwrap();
            assert!(!target.contains("//") && !target.starts_with('/'), "the page loads {target} from elsewhere");
            linked.push(target.trim_start_matches("./").to_string());
        }
    }
    assert!(linked.iter().any(|l| l == "swagger-initializer.js"), "{linked:?}");
    let initializer = get("/api/docs/swagger-initializer.js".into()).await;
    assert!(initializer.contains("\"validatorUrl\": \"none\""), "Swagger UI's validator is on:\n{initializer}");

    // Updraft's own pages and documents name no host at all. Swagger UI's vendored scripts
    // contain links (licences, specifications), which the page never loads; the stylesheets
    // contain SVG namespaces inside data: URLs, which are names, not places.
    let mut own = vec![("/api/docs/".to_string(), page), ("swagger-initializer.js".into(), initializer)];
    own.push(("/api/openapi.json".into(), get("/api/openapi.json".into()).await));
    for target in &linked {
        if target.ends_with(".css") {
            let text = get(format!("/api/docs/{target}")).await.replace("http://www.w3.org/2000/svg", "");
            own.push((target.clone(), text));
        } else {
            get(format!("/api/docs/{target}")).await;
        }
    }
    for (name, text) in own {
        for scheme in ["http://", "https://"] {
            if let Some(at) = text.find(scheme) {
                panic!("{name} names another host: {}", &text[at..(at + 60).min(text.len())]);
            }
        }
    }
    app.stop().await;
}

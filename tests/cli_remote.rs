//! The operator commands (`updraft firmware|device|release|rollout|events`): the real binary,
//! run as a subprocess, against the real server on a random port (`api/helpers.rs`, so on
//! either backend pair). Every command, every exit code, the server's refusals shown as it
//! gave them, the upload streamed while it is read, `rollout status --watch` failing a CI step
//! when the rollout halts (the very step docs/DEPLOYMENT.md shows), and the event tail
//! reconnecting after a restart.

#![allow(
    clippy::print_stderr,
    clippy::disallowed_methods,
    reason = "tests report figures on stderr and drive blocking helpers from plain threads"
)]

#[allow(dead_code, reason = "the API tests' harness; this file uses part of it")]
#[path = "api/helpers.rs"]
mod helpers;

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use helpers::*;

// ---------------------------------------------------------------------------------------------
// Running the binary

/// What a finished run printed, and its exit code.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        let lines: Vec<&str> = self.stdout.lines().collect();
        assert_eq!(lines.len(), 1, "--json prints one line:\n{}", self.stdout);
        serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {}", lines[0]))
    }

    fn expect_ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success: {self:?}");
        self
    }

    /// Expects the server's refusal: exit 1, its code and message on one line of stderr.
    fn expect_refused(&self, code: &str, message: &str) {
        assert_eq!(self.code, 1, "expected a refusal: {self:?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr: {self:?}");
        assert!(lines[0].contains(code), "the code {code} is not shown: {}", lines[0]);
        assert!(lines[0].contains(message), "the server's message {message:?} is not shown as given: {}", lines[0]);
    }
}

/// `updraft` with a clean environment (PATH and HOME only) and the server and key in
/// `UPDRAFT_SERVER` / `UPDRAFT_API_KEY`.
fn updraft(server: &str, key: &str) -> tokio::process::Command {
    clean_command(env!("CARGO_BIN_EXE_updraft"), server, key)
}

fn clean_command(program: &str, server: &str, key: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command.env_clear().kill_on_drop(true);
    for name in ["PATH", "HOME"] {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command.env("UPDRAFT_SERVER", server).env("UPDRAFT_API_KEY", key);
    command
}

/// Runs `updraft ARGS` against `app` with the admin key, to its end.
async fn cli(app: &TestApp, args: &[&str]) -> Run {
    run(updraft(&app.base, ADMIN_KEY).args(args)).await
}

async fn run(command: &mut tokio::process::Command) -> Run {
    let child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start updraft");
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await.expect("updraft exits by itself").unwrap();
    Run {
        code: output.status.code().expect("an exit code, not a signal"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A command running in the background whose output can be read while it runs.
struct Background {
    child: tokio::process::Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Background {
    fn start(command: &mut tokio::process::Command) -> Background {
        let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start updraft");
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Background { child, stdout, stderr }
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    async fn wait_for(&self, what: &str, condition: impl Fn(&Background) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !condition(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}; stdout:\n{}\nstderr:\n{}", self.stdout(), self.stderr());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the command to exit by itself.
    async fn finish(mut self) -> Run {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("updraft did not exit; stdout:\n{}\nstderr:\n{}", self.stdout(), self.stderr()))
            .unwrap();
        // The readers end with the pipes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Run { code: status.code().expect("an exit code"), stdout: self.stdout(), stderr: self.stderr() }
    }
}

fn collect(stream: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut text = sink.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    });
    text
}

// ---------------------------------------------------------------------------------------------
// The server's side, over its API

async fn api(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = app.admin(method, path);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Registers a device with a token; returns its token.
async fn register(app: &TestApp, mac: &str, version: &str) -> String {
    let body = json!({"mac": mac, "product": "lamp", "hardware": "esp32", "version": version, "issue_token": true});
    let (status, body) = api(app, Method::POST, "/api/v1/devices", Some(body)).await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_string()
}

/// A device's check-in; returns the status and the update offered.
async fn checkin(app: &TestApp, token: &str, version: &str) -> (u16, Value) {
    let response =
        app.client.post(app.url("/api/v1/device/checkin")).bearer_auth(token).json(&json!({"version": version})).send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["update"].clone())
}

async fn report(app: &TestApp, token: &str, state: &str) {
    let response =
        app.client.post(app.url("/api/v1/device/update-status")).bearer_auth(token).json(&json!({"state": state})).send().await.unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

/// The error the API gives for a raw upload of `bytes` (what the CLI must show as given).
async fn api_upload_error(app: &TestApp, bytes: Vec<u8>, query: &str, status: u16) -> (String, String) {
    let response = app.upload_raw(bytes, query).await;
    assert_eq!(response.status().as_u16(), status);
    let body: Value = response.json().await.unwrap();
    (body["error"]["code"].as_str().unwrap().to_string(), body["error"]["message"].as_str().unwrap().to_string())
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A loopback port nothing listens on (it was free a moment ago).
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

// ---------------------------------------------------------------------------------------------
// Exit codes

#[tokio::test]
async fn bad_usage_exits_2_before_anything_is_sent() {
    let files = tempfile::tempdir().unwrap();
    let folder = files.path().display().to_string();
    let server = closed_port_url();
    let cases: [&[&str]; 12] = [
        &["firmware"],
        &["firmware", "lst"],
        &["firmware", "upload"],
        &["firmware", "upload", "/no/such/file.bin"],
        &["firmware", "upload", &folder],
        &["device", "pin", "02:00:00:00:00:01"],
        &["device", "list", "--limit", "many"],
        &["release", "create", "--product", "lamp", "--version", "1.0.0"],
        &["rollout", "create", "r", "--stages", "1%,ten,100%"],
        &["rollout", "create", "r", "--error-threshold", "lots"],
        &["rollout", "status", "r", "--watch", "--interval", "soon"],
        &["events", "--no-such-flag"],
    ];
    for args in cases {
        let outcome = run(updraft(&server, ADMIN_KEY).args(args)).await;
        assert_eq!(outcome.code, 2, "{args:?}: {outcome:?}");
        assert!(outcome.stdout.is_empty(), "{args:?}: {outcome:?}");
        assert!(!outcome.stderr.contains("cannot reach"), "{args:?} was sent: {outcome:?}");
    }

    // No server, no key, a server that is not a URL: one line naming the problem.
    let mut no_server = updraft("", ADMIN_KEY);
    no_server.env_remove("UPDRAFT_SERVER");
    let outcome = run(no_server.args(["firmware", "list"])).await;
    assert_eq!((outcome.code, outcome.stderr.trim()), (2, "updraft: no server: pass --server URL or set UPDRAFT_SERVER"));
    let mut no_key = updraft(&server, "");
    no_key.env_remove("UPDRAFT_API_KEY");
    let outcome = run(no_key.args(["device", "list"])).await;
    assert_eq!((outcome.code, outcome.stderr.trim()), (2, "updraft: no API key: pass --api-key KEY or set UPDRAFT_API_KEY"));
    let outcome = run(updraft(&server, ADMIN_KEY).args(["rollout", "list", "--server", "localhost:8080"])).await;
    assert_eq!(outcome.code, 2, "{outcome:?}");
    assert!(outcome.stderr.contains("is not a server URL"), "{outcome:?}");
    assert_eq!(outcome.stderr.lines().count(), 1, "{outcome:?}");
}

#[tokio::test]
async fn an_unreachable_server_is_one_line_and_exit_3_for_every_command_group() {
    let files = tempfile::tempdir().unwrap();
    let build = write_file(files.path(), "app.bin", &random_bytes(1000, 1));
    let server = closed_port_url();
    let cases: [&[&str]; 7] = [
        &["firmware", "list"],
        &["firmware", "upload", &build, "--product", "lamp", "--version", "1.0.0"],
        &["device", "show", "02:00:00:00:00:01"],
        &["release", "list"],
        &["rollout", "status", "r"],
        &["rollout", "start", "r"],
        &["events", "--json"],
    ];
    for args in cases {
        let outcome = run(updraft(&server, ADMIN_KEY).args(args)).await;
        assert_eq!(outcome.code, 3, "{args:?}: {outcome:?}");
        assert_eq!(outcome.stderr.lines().count(), 1, "{args:?}: one line: {outcome:?}");
        assert!(outcome.stderr.starts_with(&format!("updraft: cannot reach {server}: ")), "{args:?}: {outcome:?}");
        assert!(outcome.stdout.is_empty(), "{args:?}: {outcome:?}");
    }
}

#[tokio::test]
async fn a_wrong_key_is_refused_with_the_server_s_code_and_message_and_exit_1() {
    let app = spawn_app().await;
    let direct = app.client.get(app.url("/api/v1/firmware")).bearer_auth("not-the-key-0123456789").send().await.unwrap();
    let body: Value = direct.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();

    let outcome = run(updraft(&app.base, "not-the-key-0123456789").args(["firmware", "list"])).await;
    outcome.expect_refused("401 unauthenticated", message);
    assert!(outcome.stdout.is_empty());

    // With --json the refusal is also on stdout, as the server gave it.
    let outcome = run(updraft(&app.base, "not-the-key-0123456789").args(["device", "list", "--json"])).await;
    assert_eq!(outcome.code, 1);
    assert_eq!(outcome.json(), json!({"error": {"code": "unauthenticated", "message": message}, "status": 401}));
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// firmware

#[tokio::test]
async fn firmware_upload_streams_a_file_and_prints_the_artifact_and_what_the_image_header_said() {
    let app = spawn_app().await;
    let files = tempfile::tempdir().unwrap();
    let image = esp_image("thermostat", "2.4.1", 0x0009);
    let path = write_file(files.path(), "thermostat.bin", &image);

    // Metadata from the image header; the key given as a flag this time.
    let mut command = updraft(&app.base, "wrong-key-in-the-environment");
    let outcome = run(command.args(["firmware", "upload", &path, "--api-key", ADMIN_KEY, "--notes", "first build"])).await.expect_ok();

    let listed = app.list_artifacts("").await;
    let stored = &listed["items"][0];
    let id = stored["id"].as_str().unwrap();
    assert!(outcome.stdout.starts_with("uploaded thermostat 2.4.1\n"), "{}", outcome.stdout);
    for shown in [id, &sha256_hex(&image), "esp32s3", "esp32-app", "first build"] {
        assert!(outcome.stdout.contains(shown), "{shown} is not shown:\n{}", outcome.stdout);
    }
    let idf = stored["image"]["idf_ver"].as_str().unwrap();
    assert!(outcome.stdout.contains(idf), "the image's IDF version is not shown:\n{}", outcome.stdout);
    assert_eq!(stored["size"], image.len());
    assert_eq!(stored["sha256"], sha256_hex(&image));
    assert_eq!(stored["notes"], "first build");

    // The same bytes again: the server answers 200 with the stored build; --json prints it.
    let outcome = cli(&app, &["firmware", "upload", &path, "--json"]).await.expect_ok();
    let printed = outcome.json();
    assert_eq!(printed["id"], id);
    assert_eq!(printed["sha256"], sha256_hex(&image));
    assert_eq!(printed["image"]["chip"], "esp32s3");
    let outcome = cli(&app, &["firmware", "upload", &path]).await.expect_ok();
    assert!(outcome.stdout.starts_with("already stored"), "{}", outcome.stdout);

    // --quiet: the id alone, for scripts without jq.
    let raw = write_file(files.path(), "gateway.bin", &random_bytes(300_000, 7));
    let outcome = cli(&app, &["firmware", "upload", &raw, "--product", "gateway", "--version", "1.0.0", "--hardware", "rpi4,rpi5", "-q"])
        .await
        .expect_ok();
    let (status, stored) = api(&app, Method::GET, &format!("/api/v1/firmware/{}", outcome.stdout.trim()), None).await;
    assert_eq!(status, 200, "{outcome:?}");
    assert_eq!(stored["hardware"], json!(["rpi4", "rpi5"]));
    assert_eq!(stored["size"], 300_000);
    app.stop().await;
}

#[tokio::test]
async fn version_conflicts_and_corrupt_images_are_shown_as_the_server_gave_them() {
    let app = spawn_app().await;
    let files = tempfile::tempdir().unwrap();
    app.create_artifact(random_bytes(5000, 1), "product=lamp&version=1.0.0&hardware=esp32").await;
    let other = random_bytes(5000, 2);
    let path = write_file(files.path(), "other.bin", &other);

    let outcome = cli(&app, &["firmware", "upload", &path, "--product", "lamp", "--version", "1.0.0", "--hardware", "esp32"]).await;

    let (code, message) = api_upload_error(&app, other, "product=lamp&version=1.0.0&hardware=esp32", 409).await;
    assert_eq!(code, "version_exists");
    outcome.expect_refused("409 version_exists", &message);

    let mut corrupt = esp_image("app", "1.0.0", 0x0005);
    corrupt[400] ^= 0x55;
    let path = write_file(files.path(), "corrupt.bin", &corrupt);
    let outcome = cli(&app, &["firmware", "upload", &path]).await;
    let (code, message) = api_upload_error(&app, corrupt, "", 422).await;
    assert!(code.starts_with("esp_image_"), "{code}");
    outcome.expect_refused(&format!("422 {code}"), &message);

    // An image whose version contradicts --version: the server's 422 reason.
    let image = esp_image("app", "1.0.0", 0x0005);
    let path = write_file(files.path(), "app.bin", &image);
    let outcome = cli(&app, &["firmware", "upload", &path, "--version", "2.0.0"]).await;
    let (code, message) = api_upload_error(&app, image, "version=2.0.0", 422).await;
    assert_eq!(code, "version_mismatch");
    outcome.expect_refused("422 version_mismatch", &message);
    assert_eq!(app.list_artifacts("").await["total"], 1, "nothing more was stored");
    app.stop().await;
}

/// The upload is the request body itself, read from the file as the connection takes it: a
/// server sees the first bytes while the rest is not even written yet. (A client that read
/// the whole file first would send nothing here until its input ends.) Read from a pipe, the
/// body goes chunked, with the key as `Authorization: Bearer`.
#[tokio::test]
async fn an_upload_from_standard_input_reaches_the_server_while_it_is_still_being_written() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    let mut child = updraft(&server, "streaming-key")
        .args(["firmware", "upload", "-", "--product", "gw", "--version", "1.0.0", "--hardware", "rpi4", "-q"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    const FIRST: usize = 256 * 1024;
    stdin.write_all(&vec![1u8; FIRST]).await.unwrap();
    stdin.flush().await.unwrap();

    let (mut socket, _) = tokio::time::timeout(Duration::from_secs(30), listener.accept()).await.expect("the CLI connects").unwrap();
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let head_end = loop {
        let n = tokio::time::timeout(Duration::from_secs(30), socket.read(&mut buffer)).await.expect("a request head").unwrap();
        assert!(n > 0, "the connection closed");
        received.extend_from_slice(&buffer[..n]);
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&received[..head_end]).to_ascii_lowercase();
    assert!(head.starts_with("post /api/v1/firmware?product=gw&version=1.0.0&hardware=rpi4 http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nauthorization: bearer streaming-key\r\n"), "{head}");
    assert!(head.contains("\r\ncontent-type: application/octet-stream\r\n"), "{head}");
    assert!(head.contains("\r\ntransfer-encoding: chunked\r\n"), "{head}");
    // The first part arrives while standard input is still open (0x01 never occurs in the
    // chunk framing, which is hex digits and CRLF).
    let ones = |bytes: &[u8]| bytes.iter().filter(|&&b| b == 1).count();
    while ones(&received[head_end..]) < FIRST {
        let n = tokio::time::timeout(Duration::from_secs(30), socket.read(&mut buffer))
            .await
            .expect("the first part is sent before the input ends")
            .unwrap();
        assert!(n > 0, "the connection closed");
        received.extend_from_slice(&buffer[..n]);
    }
    stdin.write_all(&vec![2u8; 1000]).await.unwrap();
    drop(stdin);
    while !received.ends_with(b"\r\n0\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(30), socket.read(&mut buffer)).await.expect("the rest").unwrap();
        assert!(n > 0, "the connection closed");
        received.extend_from_slice(&buffer[..n]);
    }
    assert_eq!(received[head_end..].iter().filter(|&&b| b == 2).count(), 1000);
    let artifact = json!({"id": "019a0000-0000-7000-8000-000000000001", "product": "gw", "version": "1.0.0", "hardware": ["rpi4"],
        "channel": "stable", "notes": "", "size": FIRST + 1000, "sha256": "00", "created_at": "2026-01-01T00:00:00.000Z", "image": null});
    let body = artifact.to_string();
    let answer = format!("HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len());
    socket.write_all(answer.as_bytes()).await.unwrap();

    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await.unwrap().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "019a0000-0000-7000-8000-000000000001\n");
}

#[tokio::test]
async fn firmware_is_listed_shown_and_deleted_and_a_build_in_use_is_kept() {
    let app = spawn_app().await;
    let old = app.create_artifact(random_bytes(2048, 1), "product=lamp&version=1.0.0&hardware=esp32").await;
    let new = app.create_artifact(random_bytes(4096, 2), "product=lamp&version=2.0.0&hardware=esp32").await;
    let (old_id, new_id) = (old["id"].as_str().unwrap(), new["id"].as_str().unwrap());

    let outcome = cli(&app, &["firmware", "list"]).await.expect_ok();
    let lines: Vec<&str> = outcome.stdout.lines().collect();
    assert!(lines[0].contains("ID") && lines[0].contains("VERSION") && lines[0].contains("HARDWARE"), "{}", outcome.stdout);
    assert!(lines[1].contains(new_id) && lines[1].contains("2.0.0"), "newest first:\n{}", outcome.stdout);
    assert!(lines[2].contains(old_id) && lines[2].contains("1.0.0"), "{}", outcome.stdout);
    assert_eq!(lines.last().unwrap().trim(), "showing 1-2 of 2 builds");

    let outcome = cli(&app, &["firmware", "list", "--version", "1.0.0", "--limit", "1", "--json"]).await.expect_ok();
    let (_, page) = api(&app, Method::GET, "/api/v1/firmware?version=1.0.0&limit=1", None).await;
    assert_eq!(outcome.json(), page, "--json prints the API's page as it is");

    let outcome = cli(&app, &["firmware", "show", old_id]).await.expect_ok();
    assert!(outcome.stdout.contains(old["sha256"].as_str().unwrap()), "{}", outcome.stdout);
    assert!(outcome.stdout.contains("not an ESP32 app image"), "{}", outcome.stdout);

    let (status, _) =
        api(&app, Method::POST, "/api/v1/releases", Some(json!({"product": "lamp", "version": "2.0.0", "artifact_ids": [new_id]}))).await;
    assert_eq!(status, 201);
    let outcome = cli(&app, &["firmware", "delete", new_id]).await;
    assert_eq!(
        error_code(app.admin(Method::DELETE, &format!("/api/v1/firmware/{new_id}")).send().await.unwrap(), 409).await,
        "artifact_in_release"
    );
    assert_eq!(outcome.code, 1, "{outcome:?}");
    assert!(outcome.stderr.contains("409 artifact_in_release"), "{outcome:?}");

    let outcome = cli(&app, &["firmware", "delete", old_id, "--json"]).await.expect_ok();
    assert_eq!(outcome.json(), json!({"deleted": old_id}));
    let outcome = cli(&app, &["firmware", "show", old_id]).await;
    assert_eq!(outcome.code, 1);
    assert!(outcome.stderr.starts_with("updraft: the server refused (404 not_found): "), "{outcome:?}");
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// device

#[tokio::test]
async fn devices_are_listed_shown_pinned_unpinned_and_given_a_new_token() {
    let app = spawn_app().await;
    let old_token = register(&app, "02:00:00:00:11:01", "1.0.0").await;
    register(&app, "02:00:00:00:11:02", "1.1.0").await;
    app.create_artifact(random_bytes(2048, 1), "product=lamp&version=1.0.0&hardware=esp32").await;

    let outcome = cli(&app, &["device", "list", "--version", "1.0.0"]).await.expect_ok();
    assert!(outcome.stdout.contains("02:00:00:00:11:01"), "{}", outcome.stdout);
    assert!(!outcome.stdout.contains("02:00:00:00:11:02"), "the filter is sent:\n{}", outcome.stdout);
    let outcome = cli(&app, &["device", "list", "--json"]).await.expect_ok();
    assert_eq!(outcome.json()["total"], 2);

    // Any MAC form names the device.
    let outcome = cli(&app, &["device", "show", "020000001101"]).await.expect_ok();
    assert!(outcome.stdout.contains("02:00:00:00:11:01") && outcome.stdout.contains("1.0.0"), "{}", outcome.stdout);

    let outcome = cli(&app, &["device", "pin", "02:00:00:00:11:01", "1.0.0"]).await.expect_ok();
    assert!(outcome.stdout.starts_with("device 02:00:00:00:11:01 pinned to 1.0.0"), "{}", outcome.stdout);
    let (_, device) = api(&app, Method::GET, "/api/v1/devices/02:00:00:00:11:01", None).await;
    assert_eq!(device["target_version"], "1.0.0");
    let outcome = cli(&app, &["device", "unpin", "02:00:00:00:11:01", "--json"]).await.expect_ok();
    assert_eq!(outcome.json()["target_version"], Value::Null);
    let (_, device) = api(&app, Method::GET, "/api/v1/devices/02:00:00:00:11:01", None).await;
    assert_eq!(device["target_version"], Value::Null);

    let outcome = cli(&app, &["device", "token", "02:00:00:00:11:01"]).await.expect_ok();
    let new_token = outcome.stdout.trim();
    assert!(outcome.stderr.contains("shown only now"), "{outcome:?}");
    assert_eq!(checkin(&app, new_token, "1.0.0").await.0, 200, "the new token works");
    assert_eq!(checkin(&app, &old_token, "1.0.0").await.0, 401, "the old token stopped working");

    let outcome = cli(&app, &["device", "show", "02:00:00:00:99:99"]).await;
    assert_eq!(outcome.code, 1);
    assert!(outcome.stderr.contains("404 not_found"), "{outcome:?}");
    let outcome = cli(&app, &["device", "pin", "02:00:00:00:11:01", "1.x"]).await;
    let (status, refused) = api(&app, Method::PATCH, "/api/v1/devices/02:00:00:00:11:01", Some(json!({"target_version": "1.x"}))).await;
    assert_eq!(status, 400);
    outcome.expect_refused("400 invalid_version", refused["error"]["message"].as_str().unwrap());
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// release and rollout

/// Builds 1.0.0 (open) and 2.0.0 of `lamp`, a release of 2.0.0 made with the CLI; its id.
async fn lamp_release(app: &TestApp) -> String {
    app.create_artifact(random_bytes(2048, 1), "product=lamp&version=1.0.0&hardware=esp32").await;
    let build = app.create_artifact(random_bytes(2048, 2), "product=lamp&version=2.0.0&hardware=esp32").await;
    let build = build["id"].as_str().unwrap();
    let outcome = cli(app, &["release", "create", "--product", "lamp", "--version", "2.0.0", "--artifact", build, "--notes", "n", "-q"])
        .await
        .expect_ok();
    outcome.stdout.trim().to_string()
}

#[tokio::test]
async fn releases_and_rollouts_go_through_their_whole_life_cycle() {
    let app = spawn_app().await;
    for i in 0..3 {
        register(&app, &format!("02:00:00:00:22:0{i}"), "1.0.0").await;
    }
    let release = lamp_release(&app).await;
    let (status, stored) = api(&app, Method::GET, &format!("/api/v1/releases/{release}"), None).await;
    assert_eq!((status, stored["version"].as_str()), (200, Some("2.0.0")));
    let outcome = cli(&app, &["release", "list", "--product", "lamp"]).await.expect_ok();
    assert!(outcome.stdout.contains(&release), "{}", outcome.stdout);
    let outcome = cli(&app, &["release", "show", &release, "--json"]).await.expect_ok();
    assert_eq!(outcome.json(), stored);
    // The same release again: the server's refusal.
    let outcome =
        cli(&app, &["release", "create", "--product", "lamp", "--version", "2.0.0", "--artifact", "019a0000-0000-7000-8000-000000000000"])
            .await;
    assert_eq!(outcome.code, 1, "{outcome:?}");

    let outcome = cli(&app, &["rollout", "create", &release, "--name", "lamp 2.0", "--stages", "1%,10%,100%", "--soak", "1h", "--json"])
        .await
        .expect_ok();
    let created = outcome.json();
    let id = created["id"].as_str().unwrap().to_string();
    let (_, rollout) = api(&app, Method::GET, &format!("/api/v1/rollouts/{id}"), None).await;
    assert_eq!(rollout["state"], "draft");
    assert_eq!(rollout["name"], "lamp 2.0");
    let stages: Vec<(f64, u64)> =
        rollout["stages"].as_array().unwrap().iter().map(|s| (s["percent"].as_f64().unwrap(), s["min_soak_s"].as_u64().unwrap())).collect();
    assert_eq!(stages, [(1.0, 3600), (10.0, 3600), (100.0, 3600)]);

    for (verb, state, stage) in [("start", "running", 1), ("pause", "paused", 1), ("resume", "running", 1), ("advance", "running", 2)] {
        let outcome = cli(&app, &["rollout", verb, &id, "--reason", &format!("{verb} by the test")]).await.expect_ok();
        assert!(outcome.stdout.starts_with(&format!("rollout {id} is {state}\n")), "{verb}: {}", outcome.stdout);
        let (_, rollout) = api(&app, Method::GET, &format!("/api/v1/rollouts/{id}"), None).await;
        assert_eq!((rollout["state"].as_str(), rollout["current_stage"].as_u64()), (Some(state), Some(stage)), "{verb}");
    }
    let (_, history) = api(&app, Method::GET, &format!("/api/v1/rollouts/{id}/history"), None).await;
    assert_eq!(history["items"].as_array().unwrap().last().unwrap()["reason"], "advance by the test");

    let outcome = cli(&app, &["rollout", "status", &id]).await.expect_ok();
    for shown in ["running", "2 of 3", "3 devices", "STAGE", "10%", "current"] {
        assert!(outcome.stdout.contains(shown), "{shown} is not shown:\n{}", outcome.stdout);
    }
    let outcome = cli(&app, &["rollout", "status", &id, "--json"]).await.expect_ok();
    assert_eq!(outcome.json()["id"], id.as_str());
    let outcome = cli(&app, &["rollout", "list", "--state", "running"]).await.expect_ok();
    assert!(outcome.stdout.contains(&id), "{}", outcome.stdout);

    let outcome = cli(&app, &["rollout", "cancel", &id, "--json"]).await.expect_ok();
    assert_eq!(outcome.json()["state"], "cancelled");
    let outcome = cli(&app, &["rollout", "start", &id]).await;
    let refused = app.admin(Method::POST, &format!("/api/v1/rollouts/{id}/start")).send().await.unwrap();
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["error"]["code"], "invalid_transition");
    outcome.expect_refused("409 invalid_transition", refused["error"]["message"].as_str().unwrap());
    let outcome = cli(&app, &["rollout", "rollback", &id]).await.expect_ok();
    assert!(outcome.stdout.starts_with(&format!("rollout {id} is rolled_back")), "{}", outcome.stdout);

    // The server's 422 for an unknown release, as given.
    let outcome = cli(&app, &["rollout", "create", "019a0000-0000-7000-8000-000000000000"]).await;
    let (status, refused) =
        api(&app, Method::POST, "/api/v1/rollouts", Some(json!({"release_id": "019a0000-0000-7000-8000-000000000000"}))).await;
    assert_eq!(status, 422);
    outcome.expect_refused("422 unknown_release", refused["error"]["message"].as_str().unwrap());
    app.stop().await;
}

#[tokio::test]
async fn rollout_status_watch_follows_the_rollout_and_exits_0_when_it_completes() {
    let app = spawn_app().await;
    let release = lamp_release(&app).await;
    let outcome = cli(&app, &["rollout", "create", &release, "--stages", "1%,10%,100%", "--start", "-q"]).await.expect_ok();
    let id = outcome.stdout.trim().to_string();
    let watch =
        Background::start(updraft(&app.base, ADMIN_KEY).args(["rollout", "status", &id, "--watch", "--interval", "100ms", "--json"]));
    watch.wait_for("the first report", |w| w.stdout().contains("\"running\"")).await;

    for stage in 1..=3 {
        let (status, _) = api(&app, Method::POST, &format!("/api/v1/rollouts/{id}/advance"), None).await;
        assert_eq!(status, 200, "advance from stage {stage}");
    }

    let outcome = watch.finish().await;
    assert_eq!(outcome.code, 0, "{outcome:?}");
    let reports: Vec<Value> = outcome.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(reports.first().unwrap()["state"], "running");
    assert_eq!(reports.last().unwrap()["state"], "completed");
    app.stop().await;
}

#[tokio::test]
async fn rollout_status_watch_exits_4_with_the_reason_when_the_rollout_halts() {
    let app = spawn_app_with(|s| s.rollouts.evaluate_every = Duration::from_secs(1)).await;
    let token = register(&app, "02:00:00:00:33:01", "1.0.0").await;
    let release = lamp_release(&app).await;
    let outcome = cli(
        &app,
        &["rollout", "create", &release, "--device", "02:00:00:00:33:01", "--stages", "100%", "--error-threshold", "1", "--start", "-q"],
    )
    .await
    .expect_ok();
    let id = outcome.stdout.trim().to_string();
    let watch = Background::start(updraft(&app.base, ADMIN_KEY).args(["rollout", "status", &id, "--watch", "--interval", "200ms"]));
    watch.wait_for("the first report", |w| w.stdout().contains("running")).await;

    let (_, offered) = checkin(&app, &token, "1.0.0").await;
    assert!(offered.is_object(), "the device is offered the release");
    report(&app, &token, "failed").await;

    let outcome = watch.finish().await;
    assert_eq!(outcome.code, 4, "{outcome:?}");
    let (_, rollout) = api(&app, Method::GET, &format!("/api/v1/rollouts/{id}"), None).await;
    assert_eq!(rollout["state"], "halted");
    let reason = rollout["reason"].as_str().unwrap();
    assert_eq!(outcome.stderr.trim(), format!("updraft: rollout {id} is halted: {reason}"));
    assert!(outcome.stdout.lines().last().unwrap().contains("halted"), "{}", outcome.stdout);
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The CI step of docs/DEPLOYMENT.md

/// The shell step between the `ci-step` markers of docs/DEPLOYMENT.md.
fn documented_ci_step() -> String {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/DEPLOYMENT.md")).unwrap();
    let start = doc.find("<!-- ci-step: begin").expect("docs/DEPLOYMENT.md marks its CI step");
    let end = doc.find("<!-- ci-step: end -->").expect("docs/DEPLOYMENT.md marks the end of its CI step");
    let block = &doc[start..end];
    let code_start = block.find("```sh\n").expect("the CI step is a sh block") + "```sh\n".len();
    let code_end = block[code_start..].find("```").unwrap() + code_start;
    block[code_start..code_end].to_string()
}

/// Runs the documented step with bash (`set -euo pipefail`, as CI runners do), the binary
/// first on PATH, and the pipeline's variables.
async fn run_ci_step(app: &TestApp, build: &str, version: &str) -> Background {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_updraft")).parent().unwrap().display().to_string();
    let mut bash = clean_command("bash", &app.base, ADMIN_KEY);
    bash.env("PATH", format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default()));
    bash.env("BUILD_FILE", build).env("PRODUCT", "lamp").env("VERSION", version).env("HARDWARE", "esp32");
    bash.args(["-c", &format!("set -euo pipefail\n{}", documented_ci_step())]);
    Background::start(&mut bash)
}

/// Devices that check in every 100 ms, install what they are offered and come back with the
/// new version, except `bad` ones, which report a failure.
fn simulate_fleet(app: &TestApp, tokens: Vec<(String, bool)>, version: &'static str) -> tokio::task::JoinHandle<()> {
    let client = app.client.clone();
    let base = app.base.clone();
    tokio::spawn(async move {
        let mut running: Vec<&str> = tokens.iter().map(|_| "1.0.0").collect();
        loop {
            for (i, (token, bad)) in tokens.iter().enumerate() {
                let checkin = client
                    .post(format!("{base}/api/v1/device/checkin"))
                    .bearer_auth(token)
                    .json(&json!({"version": running[i]}))
                    .send()
                    .await;
                let Ok(checkin) = checkin else { continue };
                let body: Value = checkin.json().await.unwrap_or(Value::Null);
                if body["update"].is_object() {
                    let state = if *bad { "failed" } else { "installed" };
                    let _ = client
                        .post(format!("{base}/api/v1/device/update-status"))
                        .bearer_auth(token)
                        .json(&json!({"state": state}))
                        .send()
                        .await;
                    if !bad {
                        running[i] = version;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

#[tokio::test]
async fn the_documented_ci_step_passes_when_the_canary_rollout_completes_and_fails_when_it_halts() {
    let app = spawn_app_with(|s| s.rollouts.evaluate_every = Duration::from_secs(1)).await;
    let files = tempfile::tempdir().unwrap();
    let mut fleet = Vec::new();
    for i in 0..6 {
        fleet.push((register(&app, &format!("02:00:00:00:44:0{i}"), "1.0.0").await, false));
    }
    app.create_artifact(random_bytes(2048, 1), "product=lamp&version=1.0.0&hardware=esp32").await;

    // 2.0.0: every device installs it; the step exits 0.
    let devices = simulate_fleet(&app, fleet.clone(), "2.0.0");
    let build = write_file(files.path(), "lamp-2.0.0.bin", &random_bytes(4096, 2));
    let step = run_ci_step(&app, &build, "2.0.0").await;
    let outcome = step.finish().await;
    devices.abort();
    assert_eq!(outcome.code, 0, "{outcome:?}");
    let (_, rollouts) = api(&app, Method::GET, "/api/v1/rollouts?product=lamp", None).await;
    let rollout = &rollouts["items"][0];
    assert_eq!(rollout["state"], "completed");
    let percents: Vec<f64> = rollout["stages"].as_array().unwrap().iter().map(|s| s["percent"].as_f64().unwrap()).collect();
    assert_eq!(percents, [1.0, 10.0, 100.0], "the canary stages of the documented step");

    // 3.0.0: every device fails to install it; the rollout halts and so does the step.
    for device in &mut fleet {
        device.1 = true;
    }
    let devices = simulate_fleet(&app, fleet.iter().map(|(t, bad)| (t.clone(), *bad)).collect(), "3.0.0");
    let build = write_file(files.path(), "lamp-3.0.0.bin", &random_bytes(4096, 3));
    let step = run_ci_step(&app, &build, "3.0.0").await;
    let outcome = step.finish().await;
    devices.abort();
    assert_ne!(outcome.code, 0, "the pipeline must fail: {outcome:?}");
    assert!(outcome.stderr.contains("is halted"), "{outcome:?}");
    let (_, rollouts) = api(&app, Method::GET, "/api/v1/rollouts?product=lamp&state=halted", None).await;
    assert_eq!(rollouts["items"].as_array().unwrap().len(), 1, "{rollouts}");
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// events

#[tokio::test]
async fn events_prints_one_json_line_per_event_and_reconnects_after_a_restart() {
    let app = spawn_app().await;
    let addr = app.addr;
    let tail = Background::start(updraft(&app.base, ADMIN_KEY).args(["events", "--json"]));
    tail.wait_for("the stream to open", |t| t.stderr().contains("listening to")).await;
    let human = Background::start(updraft(&app.base, ADMIN_KEY).args(["events", "--type", "device.created"]));
    human.wait_for("the stream to open", |t| t.stderr().contains("listening to")).await;

    register(&app, "02:00:00:00:55:01", "1.0.0").await;
    tail.wait_for("the event", |t| t.stdout().contains("02:00:00:00:55:01")).await;
    let (_, device) = api(&app, Method::GET, "/api/v1/devices/02:00:00:00:55:01", None).await;
    let created: Value = tail
        .stdout()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("not one JSON event per line ({e}): {line}")))
        .find(|event| event["type"] == "device.created")
        .expect("a device.created event");
    assert_eq!(created["device_id"], device["id"]);
    assert_eq!(created["data"]["mac"], "02:00:00:00:55:01");
    assert!(created["at"].as_str().unwrap().ends_with('Z'));
    human.wait_for("the human line", |t| t.stdout().contains("device.created")).await;
    let line = human.stdout();
    assert!(line.contains(device["id"].as_str().unwrap()) && line.contains("02:00:00:00:55:01"), "{line}");

    // The server restarts on the same address: the tail says so, reconnects, and goes on.
    let (mut settings, data_dir) = app.stop_keeping_data().await;
    tail.wait_for("the end of the stream", |t| t.stderr().contains("the event stream ended")).await;
    settings.listen = addr;
    let app = start(settings, data_dir).await;
    tail.wait_for("the reconnection", |t| t.stderr().contains("reconnected to")).await;
    register(&app, "02:00:00:00:55:02", "1.0.0").await;
    tail.wait_for("the event after the restart", |t| t.stdout().contains("02:00:00:00:55:02")).await;
    let lines: Vec<Value> = tail.stdout().lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let reconnected = lines.iter().position(|e| e["type"] == "reconnected").expect("a reconnected line");
    let after = lines.iter().position(|e| e["data"]["mac"] == "02:00:00:00:55:02").unwrap();
    assert!(reconnected < after, "{lines:?}");
    app.stop().await;
}

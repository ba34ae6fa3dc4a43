//! API property tests: schemathesis (PyPI, the version pinned in `SCHEMATHESIS`) generates
//! requests from the OpenAPI document (`/api/openapi.json`) and checks every answer of the real
//! server: no 5xx, every answer's status and body as the document says, every request the
//! document forbids refused, every request it allows accepted (see `[checks]` of
//! tests/schemathesis/operators.toml for the checks and the reason for each one left out).
//! Bounded: a fixed seed and a capped number of examples per operation.
//!
//! Three passes, each on a fresh server, so that no pass sends a credential the server refuses
//! to an operation that is not about checking it (the limiter of failed authentications would
//! then answer 429 to everything else): the operator API with the admin key, the device
//! protocol with a device's token, and the operations that check a credential the generator
//! cannot know, each request from its own address behind a trusted proxy. The configuration of
//! each pass is in tests/schemathesis/.
//!
//! Python: `UPDRAFT_TEST_SCHEMATHESIS_PYTHON` (scripts/test.sh makes target/venv-st), else a
//! venv made once under target/.

use std::path::{Path, PathBuf};

use reqwest::Method;
use serde_json::{Value, json};

use super::helpers::{ADMIN_KEY, TestApp, esp_image, spawn_app, spawn_app_with};
use super::mqtt::client_python;

/// The schemathesis release the passes are written for.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

fn schemathesis_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis")
}

/// Runs `st run` with `config` (a file of tests/schemathesis/) against `app`'s document, with
/// `env` set; fails the test with schemathesis's report when it finds anything.
async fn schemathesis(app: &TestApp, config: &str, env: &[(&str, &str)]) {
    let python = client_python("UPDRAFT_TEST_SCHEMATHESIS_PYTHON", "venv-st", &[SCHEMATHESIS]);
    let st = Path::new(&python).with_file_name("st");
    // schemathesis and hypothesis keep state (caches, examples) in the working directory.
    let work = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(&st)
        .current_dir(work.path())
        .arg("--config-file")
        .arg(schemathesis_dir().join(config))
        .args(["--no-color", "run", &app.url("/api/openapi.json")])
        // The findings not fixed yet, each with what was found (see operators.toml);
        // UPDRAFT_BLESS=1 adds this run's to them.
        .arg("--baseline")
        .arg(schemathesis_dir().join(config.replace(".toml", ".baseline.json")))
        .args(std::env::var_os("UPDRAFT_BLESS").map(|_| "--baseline-update"))
        .env("UPDRAFT_ST_ADMIN_KEY", ADMIN_KEY)
        .env("UPDRAFT_ST_HOOKS", schemathesis_dir().join("hooks.py"))
        .envs(env.iter().copied())
        .env_remove("SCHEMATHESIS_HOOKS")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", st.display()));
    let report = String::from_utf8_lossy(&output.stdout);
    let summary = report.lines().rev().find(|line| line.contains(" in ") && line.starts_with('=')).unwrap_or("").to_string();
    eprintln!("schemathesis {config}: {summary}");
    if std::env::var_os("UPDRAFT_BLESS").is_some() {
        // The baseline now holds this run's findings; here they are.
        eprintln!("{report}");
        return;
    }
    assert!(output.status.success(), "schemathesis found problems ({config}):\n{report}\n{}", String::from_utf8_lossy(&output.stderr));
}

/// A device registered by the admin, and the token the admin issued it.
async fn device(app: &TestApp, mac: &str) -> String {
    let response =
        app.admin(Method::POST, "/api/v1/devices").json(&json!({"mac": mac, "product": "lamp", "version": "1.0.0"})).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let response = app.admin(Method::POST, &format!("/api/v1/devices/{id}/token")).send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_api_keeps_to_its_openapi_document() {
    let app = spawn_app().await;
    // Something to find: a device, a build, a product.
    device(&app, "24:0A:C4:00:00:01").await;
    app.create_artifact(esp_image("lamp", "1.1.0", 0), "product=lamp&version=1.1.0&hardware=esp32").await;
    schemathesis(&app, "operators.toml", &[]).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_protocol_keeps_to_its_openapi_document() {
    let app = spawn_app().await;
    let token = device(&app, "24:0A:C4:00:00:02").await;
    app.create_artifact(esp_image("lamp", "1.1.0", 0), "product=lamp&version=1.1.0&hardware=esp32").await;
    schemathesis(&app, "devices.toml", &[("UPDRAFT_ST_DEVICE_TOKEN", &token)]).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credential_checks_keep_to_their_openapi_document() {
    let app = spawn_app_with(|s| {
        s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        s.mqtt.auth_hooks = true;
    })
    .await;
    let token = device(&app, "24:0A:C4:00:00:03").await;
    schemathesis(&app, "credentials.toml", &[("UPDRAFT_ST_DEVICE_TOKEN", &token)]).await;
    app.stop().await;
}

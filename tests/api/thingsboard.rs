//! The ThingsBoard device API with the unmodified `tb-mqtt-client` SDK (tests/clients/):
//! devices nobody registered, rollouts, failures, shared attributes, server-side RPC.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::mqtt::{Broker, Setup, setup, thingsboard_python};

pub(crate) const KEY: &str = "tb-key-2026";
pub(crate) const SECRET: &str = "tb-secret-0123456789";

/// A product whose devices provision with the key and secret.
pub(crate) async fn keyed_product(app: &TestApp, product: &str) {
    let response = app
        .admin(Method::PUT, &format!("/api/v1/products/{product}"))
        .json(&json!({"provisioning": "key", "provision_key": format!("{KEY}-{product}"), "provision_secret": SECRET}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.text().await.unwrap());
}

/// Runs tests/clients/tb_device.py (provision with the product's key, connect, update) and
/// returns its result line and the folder it wrote the image into.
pub(crate) async fn run_sdk(s: &Setup, product: &str, device_name: &str, chunk_size: usize) -> (Value, tempfile::TempDir, String) {
    let workdir = tempfile::tempdir().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/tb_device.py");
    let output = tokio::process::Command::new(thingsboard_python())
        .arg(script)
        .args([&s.broker.ip().to_string(), &s.broker.port().to_string(), &format!("{KEY}-{product}"), SECRET, device_name])
        .arg(workdir.path())
        .env("TB_CHUNK_SIZE", chunk_size.to_string())
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), output).await.expect("the SDK finishes").unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let last = stdout.lines().last().unwrap_or_default();
    let result: Value = serde_json::from_str(last).unwrap_or_else(|_| panic!("no result from the SDK: {stdout}\n{stderr}"));
    (result, workdir, stderr)
}

async fn history(app: &TestApp, device: &str) -> Value {
    app.admin(Method::GET, &format!("/api/v1/devices/{device}/updates")).send().await.unwrap().json().await.unwrap()
}

/// Issue 16: a device nobody registered (provisioned with the product's key, no hardware
/// given) gets the product's build: its hardware is the one all the product's builds share.
/// By MAC and by a name that is not one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_provisions_an_unknown_device_and_updates_it() {
    let s = setup(Broker::Embedded).await;
    keyed_product(&s.app, "tbnew").await;
    let build = random_bytes(30_000, 161);
    s.app.create_artifact(build.clone(), "product=tbnew&version=2.0.0&hardware=esp32").await;
    for name in ["02:00:00:00:16:71", "boiler-room.7"] {
        let (result, workdir, stderr) = run_sdk(&s, "tbnew", name, 0).await;
        assert_eq!(result["state"], "UPDATED", "{name}: {result}\n{stderr}");
        assert_eq!(std::fs::read(workdir.path().join("tbnew")).unwrap(), build);
        let device = s.device_view(name).await;
        assert_eq!((device["hardware"].clone(), device["version"].clone()), (json!("esp32"), json!("2.0.0")), "{device}");
        assert_eq!(history(&s.app, name).await["items"][0]["state"], "succeeded");
    }
    s.app.stop().await;
}

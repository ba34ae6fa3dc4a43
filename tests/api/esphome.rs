//! ESPHome manifests (`http_request` update platform, ESP Web Tools):
//! `GET /api/v1/esphome/{product}/manifest.json[?channel=&device=<MAC>]`.

use md5::Digest;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

/// The ESP32-S3 chip id of the image header.
const ESP32_S3: u16 = 0x0009;

async fn get_manifest(app: &TestApp, product: &str, query: &str) -> reqwest::Response {
    app.client.get(app.url(&format!("/api/v1/esphome/{product}/manifest.json{query}"))).send().await.unwrap()
}

/// Fetches `ota.path` as ESPHome does (no redirect followed) and checks the file is the
/// build and its MD5 is the manifest's; returns the URL.
async fn download_matches(manifest: &Value, build: &[u8]) -> String {
    let path = manifest["builds"][0]["ota"]["path"].as_str().unwrap().to_string();
    assert!(path.len() < 512, "ota.path is {} bytes: {path}", path.len());
    assert_eq!(manifest["builds"][0]["parts"][0]["path"], path.as_str(), "ESP Web Tools installs the same file");
    let client = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let response = client.get(&path).send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    let body = response.bytes().await.unwrap();
    assert_eq!(body.as_ref(), build);
    assert_eq!(hex::encode(md5::Md5::digest(&body)), manifest["builds"][0]["ota"]["md5"].as_str().unwrap());
    path
}

/// The manifest's shape, its channel, the download behind `ota.path`, and what an unknown
/// product or a bad MAC get.
#[tokio::test]
async fn an_open_product_s_manifest_names_its_newest_build_per_channel() {
    let app = spawn_app().await;
    let stable = esp_image("esphx", "2.0.0", ESP32_S3);
    let artifact = app.create_artifact(stable.clone(), "product=esphx&version=2.0.0&hardware=s3-board&notes=Faster%20Wi-Fi").await;
    let beta = esp_image("esphx", "2.1.0-beta.1", ESP32_S3);
    app.create_artifact(beta.clone(), "product=esphx&version=2.1.0-beta.1&hardware=s3-board&channel=beta").await;

    let response = get_manifest(&app, "esphx", "").await;
    assert_eq!(response.status(), 200);
    let manifest: Value = response.json().await.unwrap();
    let path = manifest["builds"][0]["ota"]["path"].as_str().unwrap();
    assert_eq!(
        manifest,
        json!({"name": "esphx", "version": "2.0.0", "builds": [{
            "chipFamily": "ESP32-S3",
            "parts": [{"path": path, "offset": 0x10000}],
            "ota": {"path": path, "md5": artifact["md5"], "summary": "Faster Wi-Fi"},
        }]})
    );
    assert!(path.starts_with(&app.base), "an absolute URL: {path}");
    download_matches(&manifest, &stable).await;

    // The beta channel gets its own build (and stable ones); its link works, and the same
    // file without the channel is not what anyone is offered.
    let beta_manifest: Value = get_manifest(&app, "esphx", "?channel=beta").await.json().await.unwrap();
    assert_eq!(beta_manifest["version"], "2.1.0-beta.1");
    let beta_path = download_matches(&beta_manifest, &beta).await;
    let unchanneled = beta_path.split('?').next().unwrap();
    assert_eq!(error_code(app.client.get(unchanneled).send().await.unwrap(), 403).await, "forbidden");

    assert_eq!(error_code(get_manifest(&app, "nosuchproduct", "").await, 404).await, "not_found");
    assert_eq!(error_code(get_manifest(&app, "esphx", "?device=02:00:00:zz:00:01").await, 400).await, "invalid_mac");
    assert_eq!(error_code(get_manifest(&app, "esphx", "?channel=not%20a%20channel").await, 400).await, "invalid_channel");
    app.stop().await;
}

/// With `?device=<MAC>` the device is identified (registered when its product is open) and
/// gets its own offer through a signed link; a product that serves only registered devices
/// answers nothing without it, and nothing for an unknown MAC.
#[tokio::test]
async fn a_device_gets_its_own_offer_and_a_signed_link() {
    let app = spawn_app().await;
    let build = esp_image("esphy", "3.0.0", ESP32_S3);
    app.create_artifact(build.clone(), "product=esphy&version=3.0.0&hardware=s3-board").await;
    let response = app.admin(Method::PUT, "/api/v1/products/esphy").json(&json!({"provisioning": "preregistered"})).send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.text().await.unwrap());

    assert_eq!(error_code(get_manifest(&app, "esphy", "").await, 403).await, "forbidden", "no anonymous manifest");
    assert_eq!(error_code(get_manifest(&app, "esphy", "?device=02:00:00:00:16:e1").await, 403).await, "forbidden");

    let body = json!({"mac": "02:00:00:00:16:e1", "product": "esphy", "hardware": "s3-board", "version": "2.0.0"});
    assert_eq!(app.admin(Method::POST, "/api/v1/devices").json(&body).send().await.unwrap().status(), 201);
    let response = get_manifest(&app, "esphy", "?device=02-00-00-00-16-E1").await;
    assert_eq!(response.status(), 200);
    let manifest: Value = response.json().await.unwrap();
    assert_eq!((manifest["name"].clone(), manifest["version"].clone()), (json!("esphy"), json!("3.0.0")));
    let path = download_matches(&manifest, &build).await;
    assert!(path.contains("signature="), "a link signed for the device: {path}");
    let unsigned = path.split('?').next().unwrap();
    assert_eq!(error_code(app.client.get(unsigned).send().await.unwrap(), 403).await, "forbidden");
    let forged = path.replace("signature=", "signature=00");
    assert_eq!(error_code(app.client.get(&forged).send().await.unwrap(), 403).await, "forbidden");

    // The check-in is recorded: the device was offered 3.0.0.
    let history: Value = app.admin(Method::GET, "/api/v1/devices/02:00:00:00:16:e1/updates").send().await.unwrap().json().await.unwrap();
    assert_eq!(history["items"][0]["to_version"], "3.0.0", "{history}");

    // An open product registers a device it does not know.
    app.create_artifact(esp_image("esphz", "1.0.0", ESP32_S3), "product=esphz&version=1.0.0&hardware=s3-board").await;
    assert_eq!(get_manifest(&app, "esphz", "?device=02:00:00:00:16:e2").await.status(), 200);
    let device: Value = app.admin(Method::GET, "/api/v1/devices/02:00:00:00:16:e2").send().await.unwrap().json().await.unwrap();
    assert_eq!(device["product"], "esphz", "{device}");
    app.stop().await;
}

/// The manifest type-checks against the `Manifest` and `Build` types of the npm
/// `esp-web-tools` package the dashboard uses (web/node_modules), with ESPHome's `ota` added
/// to each build: a renamed, missing or extra field fails `tsc`.
#[tokio::test]
async fn the_manifest_is_an_esp_web_tools_manifest() {
    let app = spawn_app().await;
    app.create_artifact(esp_image("esphw", "1.0.0", ESP32_S3), "product=esphw&version=1.0.0&hardware=s3-board&notes=n").await;
    let manifest: Value = get_manifest(&app, "esphw", "").await.json().await.unwrap();
    app.stop().await;

    let web = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    let check = |manifest: &Value| {
        let dir = tempfile::Builder::new().prefix(".esphome-manifest-check-").tempdir_in(&web).unwrap();
        let source = format!(
            "import type {{ Build, Manifest }} from \"esp-web-tools/dist/const\";\n\
             type EspHomeBuild = Build & {{ ota: {{ path: string; md5: string; summary?: string; release_url?: string }} }};\n\
             type EspHomeManifest = Manifest & {{ builds: EspHomeBuild[] }};\n\
             export const manifest: EspHomeManifest = {manifest};\n"
        );
        std::fs::write(dir.path().join("manifest.ts"), source).unwrap();
        let output = std::process::Command::new("node")
            .arg(web.join("node_modules/typescript/bin/tsc"))
            .args(["--noEmit", "--strict", "--skipLibCheck", "--moduleResolution", "bundler", "--module", "esnext"])
            .arg(dir.path().join("manifest.ts"))
            .current_dir(&web)
            .output()
            .expect("node runs tsc (web/node_modules is installed by the web build)");
        (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let (ok, errors) = check(&manifest);
    assert!(ok, "{manifest}\n{errors}");
    // The check can fail: a renamed field does.
    let mut renamed = manifest.clone();
    renamed["builds"][0]["chip_family"] = renamed["builds"][0]["chipFamily"].take();
    renamed["builds"][0].as_object_mut().unwrap().remove("chipFamily");
    let (ok, errors) = check(&renamed);
    assert!(!ok && errors.contains("chip_family"), "{errors}");
}

//! esp32FOTA: the manifest `execHTTPcheck()` fetches (with `use_device_id`, `?id=` the decimal
//! eFuse MAC), and the image `getHTTPStream()` fetches from its `url`, plain or signed.

use std::process::Command;

use serde_json::Value;

use super::*;
use crate::helpers::*;

const MAC: &str = "24:0A:C4:12:34:56";

/// `ESP.getEfuseMac()` of MAC, as esp32FOTA prints it: the 48-bit value, lowest byte first.
fn efuse_decimal() -> String {
    0x5634_12C4_0A24u64.to_string()
}

/// esp32FOTA's `HTTPClient` GET (HTTP/1.1, redirects followed, no extra headers).
fn get(app: &TestApp, path_and_query: &str) -> String {
    request(
        "GET",
        path_and_query,
        "HTTP/1.1",
        app,
        &[
            ("User-Agent", "ESP32HTTPClient".into()),
            ("Connection", "keep-alive".into()),
            ("Accept-Encoding", "identity;q=1,chunked;q=0.1,*;q=0".into()),
        ],
    )
}

fn path_of(url: &str) -> String {
    let url = url::Url::parse(url).unwrap();
    match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_string(),
    }
}

#[tokio::test]
async fn a_device_gets_a_small_manifest_with_a_plain_version_and_a_working_url() {
    let app = spawn_app().await;
    app.create_artifact(image("esp32-fota-http", "1.0.0", 0, 5000), "").await;
    let newest = image("esp32-fota-http", "v2.1", 0, 20_000);
    app.create_artifact(newest.clone(), "").await;

    let response = send(&app, &get(&app, &format!("/api/v1/esp32fota/esp32-fota-http.json?id={}", efuse_decimal()))).await;

    assert_eq!(response.status, 200, "{}", response.head);
    assert!(response.body.len() < 2048, "esp32FOTA parses into a 2 KiB JSON document");
    let manifest: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(manifest["type"], "esp32-fota-http");
    assert_eq!(manifest["version"], "2.1.0", "esp32FOTA reads only X.Y.Z");
    let image = send(&app, &get(&app, &path_of(manifest["url"].as_str().unwrap()))).await;
    assert_eq!(image.status, 200, "{}", image.head);
    assert_eq!(image.header("content-length"), Some(newest.len().to_string().as_str()));
    assert_eq!(image.header("transfer-encoding"), None);
    assert!(image.body == newest);
    // The eFuse MAC identified (and registered) the device.
    let device = device(&app, MAC).await;
    assert_eq!(device["product"], "esp32-fota-http");
    app.stop().await;
}

/// A MAC whose last bytes are zero has a short eFuse value: 12 digits (which would read as a
/// hex MAC) or fewer. It is still that device.
#[tokio::test]
async fn short_efuse_values_name_their_device() {
    let app = spawn_app().await;
    app.create_artifact(image("fota", "2.0.0", 0, 5000), "").await;
    for (mac, efuse) in [("24:0A:C4:12:34:00", 0x0034_12C4_0A24u64), ("24:0A:C4:00:00:00", 0x0000_00C4_0A24u64)] {
        let response = send(&app, &get(&app, &format!("/api/v1/esp32fota/fota.json?id={efuse}"))).await;
        assert_eq!(response.status, 200, "{mac} ({efuse}): {}", response.head);
        assert_eq!(device(&app, mac).await["product"], "fota", "{efuse} registered {mac}");
    }
    app.stop().await;
}

#[tokio::test]
async fn nothing_to_offer_or_a_pre_release_is_204() {
    let app = spawn_app().await;
    let none = send(&app, &get(&app, "/api/v1/esp32fota/fota.json")).await;
    assert_eq!(none.status, 204);
    app.create_artifact(image("fota", "3.0.0-rc.1", 0, 1000), "").await;

    let pre_release = send(&app, &get(&app, &format!("/api/v1/esp32fota/fota.json?id={}", efuse_decimal()))).await;

    assert_eq!(pre_release.status, 204, "{}", String::from_utf8_lossy(&pre_release.body));
    app.stop().await;
}

#[tokio::test]
async fn without_id_the_manifest_is_anonymous_and_only_open_products_serve_unsigned_links() {
    let app = spawn_app().await;
    let build = image("fota", "1.2.3", 0, 3000);
    app.create_artifact(build.clone(), "").await;

    let manifest: Value = serde_json::from_slice(&send(&app, &get(&app, "/api/v1/esp32fota/fota.json")).await.body).unwrap();
    assert_eq!(manifest["version"], "1.2.3");
    let url = path_of(manifest["url"].as_str().unwrap());
    assert!(send(&app, &get(&app, &url)).await.body == build);

    set_provisioning(&app, "fota", "preregistered").await;
    let refused = send(&app, &get(&app, &url)).await;
    assert_eq!(refused.status, 403);
    let unknown_device = send(&app, &get(&app, &format!("/api/v1/esp32fota/fota.json?id={}", efuse_decimal()))).await;
    assert_eq!(unknown_device.status, 403);
    app.stop().await;
}

#[tokio::test]
async fn held_builds_and_strict_products_are_not_served_to_anonymous_devices() {
    let app = spawn_app().await;
    let stable = image("fota", "1.0.0", 0, 3000);
    let stable_id = app.create_artifact(stable.clone(), "").await["id"].as_str().unwrap().to_string();
    // A release holds 2.0.0 for a rollout that has not started.
    let held = app.create_artifact(image("fota", "2.0.0", 0, 3000), "").await;
    let release = app
        .admin(reqwest::Method::POST, "/api/v1/releases")
        .json(&serde_json::json!({"product": "fota", "version": "2.0.0", "artifact_ids": [held["id"]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(release.status(), 201, "{}", release.text().await.unwrap());

    // The anonymous manifest names the stable build, and the held one is not served by id.
    let manifest: Value = serde_json::from_slice(&send(&app, &get(&app, "/api/v1/esp32fota/fota.json")).await.body).unwrap();
    assert_eq!(manifest["version"], "1.0.0");
    let held_image = send(&app, &get(&app, &format!("/api/v1/esp32fota/fota/{}.bin", held["id"].as_str().unwrap()))).await;
    assert_eq!(held_image.status, 403, "a build held for a rollout is not served unsigned");
    let stable_image = send(&app, &get(&app, &format!("/api/v1/esp32fota/fota/{stable_id}.bin"))).await;
    assert!(stable_image.status == 200 && stable_image.body == stable);

    // A product in key mode names nothing to anyone who does not identify the device.
    set_provisioning_key(&app, "fota").await;
    let manifest = send(&app, &get(&app, "/api/v1/esp32fota/fota.json")).await;
    assert_eq!(manifest.status, 403, "{}", String::from_utf8_lossy(&manifest.body));
    assert!(!String::from_utf8_lossy(&manifest.body).contains("1.0.0"));
    app.stop().await;
}

async fn set_provisioning_key(app: &TestApp, product: &str) {
    let response = app
        .admin(reqwest::Method::PUT, &format!("/api/v1/products/{product}"))
        .json(&serde_json::json!({"provisioning": "key", "provision_key": "fota-key-0001", "provision_secret": "fota-secret-0123456789"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// The signed form, checked the way the device does (mbedTLS `pk_verify` with RSA and
/// SHA-256 over the flashed bytes) with `openssl dgst -verify`, and against the form the
/// esp32FOTA README makes with `openssl dgst -sign ... -sha256`.
#[tokio::test]
async fn a_product_with_a_key_serves_a_512_byte_rsa_signature_then_the_image() {
    let keys = tempfile::tempdir().unwrap();
    let key_path = keys.path().join("signed.pem");
    let generated = Command::new("openssl").args(["genrsa", "-out"]).arg(&key_path).arg("4096").output().unwrap();
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));
    let keys_dir = keys.path().to_path_buf();
    let app = spawn_app_with(|s| s.compat.esp32fota_keys_dir = Some(keys_dir)).await;
    let build = image("signed", "1.0.1", 0, 50_000);
    app.create_artifact(build.clone(), "").await;

    let manifest: Value =
        serde_json::from_slice(&send(&app, &get(&app, &format!("/api/v1/esp32fota/signed.json?id={}", efuse_decimal()))).await.body)
            .unwrap();
    let served = send(&app, &get(&app, &path_of(manifest["url"].as_str().unwrap()))).await;

    assert_eq!(served.status, 200, "{}", served.head);
    assert_eq!(served.header("content-length"), Some((512 + build.len()).to_string().as_str()));
    assert!(served.body[512..] == build[..], "the image follows the signature unchanged");
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("firmware.bin"), &build).unwrap();
    std::fs::write(work.path().join("firmware.sign"), &served.body[..512]).unwrap();
    let public = Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&key_path)
        .arg("-out")
        .arg(work.path().join("pub.pem"))
        .output()
        .unwrap();
    assert!(public.status.success());
    let verified = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(work.path().join("pub.pem"))
        .arg("-signature")
        .arg(work.path().join("firmware.sign"))
        .arg(work.path().join("firmware.bin"))
        .output()
        .unwrap();
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stdout));
    let readme = Command::new("openssl")
        .args(["dgst", "-sign"])
        .arg(&key_path)
        .args(["-sha256", "-binary"])
        .arg(work.path().join("firmware.bin"))
        .output()
        .unwrap();
    assert!(readme.stdout == served.body[..512], "PKCS#1 v1.5 signatures are deterministic: the README's command makes the same bytes");
    let head = send(&app, &request("HEAD", &path_of(manifest["url"].as_str().unwrap()), "HTTP/1.1", &app, &[])).await;
    assert_eq!(head.header("content-length"), Some((512 + build.len()).to_string().as_str()));
    app.stop().await;
}

#[tokio::test]
async fn the_surface_can_be_switched_off() {
    let app = spawn_app_with(|s| s.compat.esp32fota = false).await;
    let response = app.client.get(app.url("/api/v1/esp32fota/fota.json")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    app.stop().await;
}

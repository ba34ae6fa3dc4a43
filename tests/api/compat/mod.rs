//! The compatibility protocols, replayed as their real clients send them: the seed servers'
//! devices, Arduino `HTTPUpdate` (ESP32 and ESP8266 cores), esp32FOTA, ESP-IDF
//! `esp_https_ota` and seed 004's provisioning call.

mod arduino;
mod cyberdeck;
mod esp32fota;
mod esp_idf;
mod ota_server;
mod provisioning;

use md5::Md5;
use reqwest::Method;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::helpers::TestApp;
use crate::raw::{RawResponse, exchange};

/// ESP32-C6 in the image header.
pub const CHIP_ESP32C6: u16 = 0x000D;

pub fn md5_hex(bytes: &[u8]) -> String {
    hex::encode(Md5::digest(bytes))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A valid ESP32 app image of `project` `version` for `chip_id`, `payload` bytes long.
pub fn image(project: &str, version: &str, chip_id: u16, payload: usize) -> Vec<u8> {
    updraft::domain::esp_image::builder::EspImageBuilder::new(project, version).chip_id(chip_id).payload_len(payload).build()
}

/// A request line and headers, then an empty line; `headers` in the order and casing given.
pub fn request(method: &str, path: &str, version: &str, app: &TestApp, headers: &[(&str, String)]) -> String {
    let mut text = format!("{method} {path} {version}\r\nHost: {}\r\n", app.addr);
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text
}

pub async fn send(app: &TestApp, request: &str) -> RawResponse {
    exchange(app, request).await
}

/// The registry's view of a device, found by MAC.
pub async fn device(app: &TestApp, mac: &str) -> Value {
    let response = app.admin(Method::GET, &format!("/api/v1/devices/{mac}")).send().await.unwrap();
    assert_eq!(response.status(), 200, "device {mac}");
    response.json().await.unwrap()
}

/// A device's update history, newest first.
pub async fn updates(app: &TestApp, device_id: &str) -> Vec<Value> {
    let response = app.admin(Method::GET, &format!("/api/v1/devices/{device_id}/updates")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["items"].as_array().unwrap().clone()
}

/// Sets a product's provisioning mode.
pub async fn set_provisioning(app: &TestApp, product: &str, mode: &str) {
    let response = app
        .admin(Method::PUT, &format!("/api/v1/products/{product}"))
        .json(&serde_json::json!({"provisioning": mode}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.text().await.unwrap());
}

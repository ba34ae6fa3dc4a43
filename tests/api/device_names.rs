//! Devices known by a unique name instead of (or beside) a MAC (issue 16): ThingsBoard's
//! `deviceName`, hawkBit DDI's `controllerId`. One lookup, "id, MAC or name", for every route
//! that names a device.

use std::time::Duration;

use reqwest::Method;
use rumqttc::{MqttOptions, QoS};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::mqtt::{Broker, Client, setup};

async fn create(app: &TestApp, body: Value) -> reqwest::Response {
    app.admin(Method::POST, "/api/v1/devices").json(&body).send().await.unwrap()
}

#[tokio::test]
async fn a_device_without_a_mac_is_registered_and_found_by_its_unique_name() {
    let app = spawn_app().await;
    let response = create(&app, json!({"uid": "sensor-1.lab", "product": "lamp", "hardware": "esp32"})).await;
    assert_eq!(response.status(), 201);
    let device: Value = response.json().await.unwrap();
    assert_eq!(
        (device["mac"].clone(), device["uid"].clone(), device["name"].clone()),
        (Value::Null, json!("sensor-1.lab"), json!("sensor-1.lab"))
    );
    let id = device["id"].as_str().unwrap();

    // Found by id and by name, on every route that names a device.
    for key in [id, "sensor-1.lab"] {
        let found: Value = app.admin(Method::GET, &format!("/api/v1/devices/{key}")).send().await.unwrap().json().await.unwrap();
        assert_eq!(found["id"], id, "{key}");
    }
    let patched = app.admin(Method::PATCH, "/api/v1/devices/sensor-1.lab").json(&json!({"tags": ["lab"]})).send().await.unwrap();
    assert_eq!(patched.status(), 200);
    assert_eq!(app.admin(Method::GET, "/api/v1/devices/sensor-1.lab/updates").send().await.unwrap().status(), 200);
    // Names are case-sensitive and exact.
    assert_eq!(app.admin(Method::GET, "/api/v1/devices/SENSOR-1.lab").send().await.unwrap().status(), 404);

    // Unique: a second device with that name is refused, with or without a MAC.
    for body in [json!({"uid": "sensor-1.lab"}), json!({"uid": "sensor-1.lab", "mac": "02:00:00:00:16:01"})] {
        assert_eq!(error_code(create(&app, body).await, 409).await, "device_exists");
    }
    // A device with both is found by either.
    let both: Value = create(&app, json!({"uid": "gw-7", "mac": "02:00:00:00:16:02"})).await.json().await.unwrap();
    for key in ["gw-7", "02-00-00-00-16-02", "020000001602"] {
        let found: Value = app.admin(Method::GET, &format!("/api/v1/devices/{key}")).send().await.unwrap().json().await.unwrap();
        assert_eq!(found["id"], both["id"], "{key}");
    }

    // Listing: search finds names, sorting by MAC puts devices without one last, on both databases.
    let listed: Value = app.admin(Method::GET, "/api/v1/devices?q=sensor").send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["total"], 1, "{listed}");
    let sorted: Value = app.admin(Method::GET, "/api/v1/devices?sort=mac").send().await.unwrap().json().await.unwrap();
    let macs: Vec<Value> = sorted["items"].as_array().unwrap().iter().map(|d| d["mac"].clone()).collect();
    assert_eq!(macs, vec![json!("02:00:00:00:16:02"), Value::Null], "{sorted}");

    // A device without a MAC has no configuration layer of its own (layers are keyed by MAC).
    let own = app.admin(Method::PUT, "/api/v1/devices/sensor-1.lab/config").json(&json!({"content": {"a": 1}})).send().await.unwrap();
    assert_eq!(error_code(own, 409).await, "no_device_layer");
    app.stop().await;
}

#[tokio::test]
async fn names_that_are_not_safe_or_are_macs_are_refused() {
    let app = spawn_app().await;
    for uid in ["", "a b", "a/b", "a+b", "a#b", "caf\u{e9}", "x\u{7}", &"x".repeat(129)] {
        assert_eq!(error_code(create(&app, json!({"uid": uid})).await, 400).await, "invalid_uid", "{uid:?}");
    }
    // A MAC is a MAC: it goes in `mac`.
    assert_eq!(error_code(create(&app, json!({"uid": "AA-BB-CC-DD-EE-FF"})).await, 400).await, "invalid_uid");
    assert_eq!(error_code(create(&app, json!({"name": "no identity"})).await, 400).await, "missing_identity");
    assert_eq!(create(&app, json!({"uid": "x".repeat(128)})).await.status(), 201);
    app.stop().await;
}

#[tokio::test]
async fn the_csv_import_takes_a_uid_column() {
    let app = spawn_app().await;
    let csv = "uid,mac,product\nrpi-1,,lamp\nrpi-1,,lamp\n,02:00:00:00:16:03,lamp\nrpi-2,02:00:00:00:16:04,lamp\n";
    let response = app.admin(Method::POST, "/api/v1/devices/import").header("content-type", "text/csv").body(csv).send().await.unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["created"], 3, "{body}");
    assert_eq!(body["errors"][0]["code"], "duplicate_uid", "{body}");
    assert_eq!(app.admin(Method::GET, "/api/v1/devices/rpi-2").send().await.unwrap().status(), 200);
    app.stop().await;
}

/// ThingsBoard's `/provision/request` with a `deviceName` that is not a MAC creates a device
/// known by that name; asking again with the same name is the same device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thingsboard_provisioning_takes_a_device_name_that_is_not_a_mac() {
    let s = setup(Broker::Embedded).await;
    let response = s
        .app
        .admin(Method::PUT, "/api/v1/products/tbname")
        .json(&json!({"provisioning": "key", "provision_key": "tbn-key-2026", "provision_secret": "tbn-secret-0123456789"}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let provision = |name: &str| {
        let request = json!({"provisionDeviceKey": "tbn-key-2026", "provisionDeviceSecret": "tbn-secret-0123456789", "deviceName": name});
        let broker = s.broker;
        async move {
            let mut options = MqttOptions::new("", broker.ip().to_string(), broker.port());
            options.set_credentials("provision", "");
            options.set_clean_session(true);
            let mut client = Client::connect(options).await.expect("the provision user connects");
            client.client.subscribe("/provision/response", QoS::AtMostOnce).await.unwrap();
            client.expect_suback().await;
            client.client.publish("/provision/request", QoS::AtLeastOnce, false, request.to_string()).await.unwrap();
            let answer = client.message_on("/provision/response", Duration::from_secs(10)).await.expect("an answer");
            serde_json::from_slice::<Value>(&answer.payload).unwrap()
        }
    };
    let answer = provision("Thermostat A-12").await;
    assert_eq!(answer["status"], "FAILURE", "spaces are not in a device name: {answer}");
    let answer = provision("thermostat-a12").await;
    assert_eq!(answer["status"], "SUCCESS", "{answer}");
    let device = s.device_view("thermostat-a12").await;
    assert_eq!(
        (device["uid"].clone(), device["mac"].clone(), device["product"].clone()),
        (json!("thermostat-a12"), Value::Null, json!("tbname"))
    );
    assert_eq!(device["has_token"], true);
    s.app.stop().await;
}

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

/// Shared attributes follow the configuration (changed keys pushed, removed keys as
/// `{"deleted": [...]}`), and `POST /api/v1/devices/{id}/commands` reaches the SDK as a
/// server-side RPC whose reply completes the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_follows_shared_attributes_and_answers_server_side_rpc() {
    use tokio::io::AsyncBufReadExt;
    let s = setup(Broker::Embedded).await;
    let (id, token) = s.device("02:00:00:00:16:81", "tbattr", "1.0.0").await;
    let put = |content: Value| s.app.admin(Method::PUT, "/api/v1/configs/product/tbattr").json(&json!({"content": content})).send();
    assert!(put(json!({"interval": 10, "mode": "eco"})).await.unwrap().status().is_success());

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/tb_attributes_rpc.py");
    let mut child = tokio::process::Command::new(thingsboard_python())
        .arg(script)
        .args([&s.broker.ip().to_string(), &s.broker.port().to_string(), &token, "30"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.expect("the SDK says something").unwrap();
        serde_json::from_str(&line.expect("the SDK is running")).unwrap()
    };
    assert_eq!(next().await, json!({"ready": true}));

    // A change: only the changed and new keys; then a removal.
    assert!(put(json!({"interval": 30, "mode": "eco", "led": true})).await.unwrap().status().is_success());
    assert_eq!(next().await, json!({"attributes": {"interval": 30, "led": true}}));
    assert!(put(json!({"interval": 30, "led": true})).await.unwrap().status().is_success());
    assert_eq!(next().await, json!({"attributes": {"deleted": ["mode"]}}));

    // A command, waited for: the SDK's reply is its result.
    let response = s
        .app
        .admin(Method::POST, &format!("/api/v1/devices/{id}/commands"))
        .json(&json!({"name": "set-led", "params": {"on": true}, "timeout_s": 20, "wait_s": 15}))
        .send()
        .await
        .unwrap();
    let command: Value = response.json().await.unwrap();
    let rpc = next().await;
    assert_eq!(rpc["rpc"]["method"], "set-led", "{rpc}");
    assert!(rpc["rpc"]["id"].as_str().unwrap().parse::<u64>().is_ok(), "an integer request id: {rpc}");
    assert_eq!(command["state"], "succeeded", "{command}");
    assert_eq!(command["result"], json!({"echo": {"on": true}, "method": "set-led"}));
    let _ = child.kill().await;
    s.app.stop().await;
}

/// ThingsBoard's HTTP device API: its status codes, and the same build as MQTT, whole and in
/// chunks. (tests/api/secrets_in_logs.rs checks the token stays out of logs, metrics and bodies.)
#[tokio::test]
async fn the_http_device_api_answers_with_thingsboard_s_codes() {
    let app = spawn_app().await;
    let body = json!({"mac": "02:00:00:00:16:91", "product": "tbhttp", "version": "1.0.0", "issue_token": true});
    let created: Value = app.admin(Method::POST, "/api/v1/devices").json(&body).send().await.unwrap().json().await.unwrap();
    let token = created["token"].as_str().unwrap();
    let url = |path: &str| app.url(&format!("/api/v1/{token}/{path}"));
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(status(app.client.post(url("telemetry")).json(&json!({"t": 1})).send().await.unwrap()), 200);
    assert_eq!(status(app.client.post(url("attributes")).json(&json!({"sdk": "http"})).send().await.unwrap()), 200);
    assert_eq!(status(app.client.post(app.url("/api/v1/upd_dev_nope/telemetry")).json(&json!({"t": 1})).send().await.unwrap()), 401);
    assert_eq!(status(app.client.get(url("firmware?title=tbhttp&version=2.0.0")).send().await.unwrap()), 404, "nothing offered");

    let build = random_bytes(10_000, 191);
    app.create_artifact(build.clone(), "product=tbhttp&version=2.0.0&hardware=esp32").await;
    let attributes: Value =
        app.client.get(url("attributes?clientKeys=sdk&sharedKeys=fw_version,fw_size")).send().await.unwrap().json().await.unwrap();
    assert_eq!(attributes, json!({"client": {"sdk": "http"}, "shared": {"fw_version": "2.0.0", "fw_size": 10_000}}));
    assert_eq!(status(app.client.get(url("firmware?title=tbhttp&version=1.9.9")).send().await.unwrap()), 400);
    let whole = app.client.get(url("firmware?title=tbhttp&version=2.0.0")).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(whole.as_ref(), build.as_slice());
    let mut chunks = Vec::new();
    for n in 0.. {
        let chunk = app.client.get(url(&format!("firmware?title=tbhttp&version=2.0.0&size=4096&chunk={n}"))).send().await.unwrap();
        assert_eq!(chunk.status(), 200);
        let bytes = chunk.bytes().await.unwrap();
        if bytes.is_empty() {
            break;
        }
        chunks.extend_from_slice(&bytes);
    }
    assert_eq!(chunks, build, "4096-byte chunks, then an empty body past the end");
    app.stop().await;
}

/// The next PUBLISH an MQTT 5 client receives, or why none came within 10 s.
async fn next_publish_v5(eventloop: &mut rumqttc::v5::EventLoop) -> Result<rumqttc::v5::mqttbytes::v5::Publish, String> {
    use rumqttc::v5::{Event, mqttbytes::v5::Packet};
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) => return Err("nothing within 10 s".into()),
            Ok(Err(e)) => return Err(format!("the connection broke: {e}")),
            Ok(Ok(Event::Incoming(Packet::Publish(publish)))) => return Ok(publish),
            Ok(Ok(_)) => {}
        }
    }
}

/// Issue 16: `v2/fw` chunks fit the smaller of `UPDRAFT_MQTT_MAX_PACKET_BYTES` and the
/// session's MQTT 5 Maximum Packet Size, topic and header included. A client that allows
/// 2048-byte packets and asks for 4096-byte chunks (or the whole image) gets
/// `PAYLOAD_TOO_LARGE` on `v2/fw/error` and stays connected (before, the chunk was sent too
/// big and the connection dropped); at the documented largest size (2048 − topic − 32) it
/// gets every chunk, each within its limit, and the exact image. A session without the
/// property gets 4096-byte chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_chunks_fit_the_session_s_maximum_packet_size() {
    use rumqttc::v5::mqttbytes::QoS;
    let s = setup(Broker::Embedded).await;
    let (id, token) = s.device("02:00:00:00:16:a1", "tbchunk", "1.0.0").await;
    let build = random_bytes(10_000, 1601);
    s.app.create_artifact(build.clone(), "product=tbchunk&version=2.0.0&hardware=esp32").await;

    let connect = |max_packet: Option<u32>| {
        let mut options = s.options_v5(&id, &id, &token);
        options.set_max_packet_size(max_packet);
        crate::mqtt::connect_v5(options)
    };
    let (client, mut eventloop) = connect(Some(2048)).await.expect("the device connects");
    // Ask for the offer first: that opens the update the chunks are read from.
    client.publish("v1/devices/me/attributes/request/1", QoS::AtLeastOnce, false, r#"{"sharedKeys":"fw_version,fw_size"}"#).await.unwrap();
    let offer = next_publish_v5(&mut eventloop).await.unwrap();
    assert_eq!(offer.topic, "v1/devices/me/attributes/response/1");
    assert_eq!(serde_json::from_slice::<Value>(&offer.payload).unwrap()["shared"]["fw_size"], 10_000);

    // The largest chunk the limit allows for these topics (`v2/fw/response/N/chunk/M`, N and
    // M < 10); one byte more is too large.
    let size = 2048 - "v2/fw/response/4/chunk/0".len() - 32;
    for (rid, asked) in [(1, "4096".to_string()), (2, String::new()), (3, (size + 1).to_string())] {
        client.publish(format!("v2/fw/request/{rid}/chunk/0"), QoS::AtLeastOnce, false, asked.clone()).await.unwrap();
        let answer = next_publish_v5(&mut eventloop).await.unwrap_or_else(|e| panic!("asked {asked:?}: {e}"));
        assert_eq!((answer.topic.as_ref(), answer.payload.as_ref()), (&b"v2/fw/error"[..], &b"PAYLOAD_TOO_LARGE"[..]), "asked {asked:?}");
    }

    let mut image = Vec::new();
    for n in 0.. {
        client.publish(format!("v2/fw/request/4/chunk/{n}"), QoS::AtLeastOnce, false, size.to_string()).await.unwrap();
        let chunk = next_publish_v5(&mut eventloop).await.unwrap_or_else(|e| panic!("chunk {n}: {e}"));
        assert_eq!(chunk.topic, format!("v2/fw/response/4/chunk/{n}"));
        assert!(chunk.payload.len() <= size);
        image.extend_from_slice(&chunk.payload);
        if image.len() >= build.len() {
            break;
        }
    }
    assert_eq!(image, build, "every chunk arrived, in order");
    drop(client);
    drop(eventloop);

    // Without a Maximum Packet Size, only UPDRAFT_MQTT_MAX_PACKET_BYTES (4 MiB) counts.
    let (client, mut eventloop) = connect(None).await.expect("the device reconnects");
    client.publish("v2/fw/request/5/chunk/0", QoS::AtLeastOnce, false, "4096").await.unwrap();
    let chunk = next_publish_v5(&mut eventloop).await.unwrap();
    assert_eq!((chunk.topic.as_ref(), chunk.payload.as_ref()), (&b"v2/fw/response/5/chunk/0"[..], &build[..4096]));
    s.app.stop().await;
}

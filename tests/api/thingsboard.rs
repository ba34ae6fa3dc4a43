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
    assert_eq!(status(app.client.post(url("telemetry")).json(&json!({})).send().await.unwrap()), 200, "tb_device_http's connection test");
    assert_eq!(status(app.client.post(url("telemetry")).json(&json!(42)).send().await.unwrap()), 400);
    assert_eq!(status(app.client.post(url("attributes")).json(&json!({"sdk": "http"})).send().await.unwrap()), 200);
    assert_eq!(status(app.client.post(app.url("/api/v1/upd_dev_nope/telemetry")).json(&json!({"t": 1})).send().await.unwrap()), 401);
    assert_eq!(status(app.client.get(url("firmware?title=tbhttp&version=2.0.0")).send().await.unwrap()), 404, "nothing offered");

    let build = random_bytes(10_000, 191);
    app.create_artifact(build.clone(), "product=tbhttp&version=2.0.0&hardware=esp32").await;
    let attributes: Value =
        app.client.get(url("attributes?clientKeys=sdk&sharedKeys=fw_version,fw_size")).send().await.unwrap().json().await.unwrap();
    assert_eq!(attributes, json!({"client": {"sdk": "http"}, "shared": {"fw_version": "2.0.0", "fw_size": 10_000}}));
    let repeated: Value =
        app.client.get(url("attributes?sharedKeys=fw_version&sharedKeys=fw_size")).send().await.unwrap().json().await.unwrap();
    assert_eq!(repeated, json!({"shared": {"fw_version": "2.0.0", "fw_size": 10_000}}), "repeated keys, as tb_device_http sends them");
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

/// A product with the provisioning key, a build of `size` bytes in a release, and a running
/// rollout of it to every device; returns the build and the rollout's id.
async fn rolled_out_build(app: &TestApp, product: &str, size: usize, seed: u64) -> (Vec<u8>, Value, String) {
    keyed_product(app, product).await;
    let build = random_bytes(size, seed);
    let artifact = app.create_artifact(build.clone(), &format!("product={product}&version=2.0.0&hardware=esp32")).await;
    let body = json!({"product": product, "version": "2.0.0", "artifact_ids": [artifact["id"]]});
    let release: Value = app.admin(Method::POST, "/api/v1/releases").json(&body).send().await.unwrap().json().await.unwrap();
    let body = json!({"release_id": release["id"], "stages": [{"percent": 100}], "start": true});
    let response = app.admin(Method::POST, "/api/v1/rollouts").json(&body).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let rollout: Value = response.json().await.unwrap();
    assert_eq!(rollout["state"], "running", "{rollout}");
    (build, artifact, rollout["id"].as_str().unwrap().to_string())
}

async fn rollout_counts(app: &TestApp, id: &str) -> Value {
    app.admin(Method::GET, &format!("/api/v1/rollouts/{id}")).send().await.unwrap().json::<Value>().await.unwrap()["counts"].clone()
}

/// Issue 16's acceptance: the unmodified SDK gets a build that a rollout offers, in 4096-byte
/// chunks and whole, and the rollout counts both devices `succeeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_updates_from_a_rollout_in_chunks_and_whole() {
    let s = setup(Broker::Embedded).await;
    let (build, _, rollout) = rolled_out_build(&s.app, "tbroll", 20_000, 1611).await;
    let release_id = s.app.admin(Method::GET, &format!("/api/v1/rollouts/{rollout}")).send().await.unwrap().json::<Value>().await.unwrap()
        ["release_id"]
        .clone();
    for (name, chunk_size) in [("02:00:00:00:16:b1", 4096), ("02:00:00:00:16:b2", 0)] {
        let (result, workdir, stderr) = run_sdk(&s, "tbroll", name, chunk_size).await;
        assert_eq!(result["state"], "UPDATED", "{name}: {result}\n{stderr}");
        assert_eq!(std::fs::read(workdir.path().join("tbroll")).unwrap(), build, "chunks of {chunk_size}");
        let history = history(&s.app, name).await;
        assert_eq!(history["items"][0]["state"], "succeeded", "{history}");
        assert_eq!(history["items"][0]["release_id"], release_id, "offered by the rollout's release");
        // The offer is announced once (the answer to the SDK's own attribute request is not
        // pushed again), so the SDK downloads once.
        let events: Vec<&str> = history["items"][0]["events"].as_array().unwrap().iter().map(|e| e["state"].as_str().unwrap()).collect();
        assert_eq!(events.iter().filter(|e| **e == "downloading").count(), 1, "{name}: one download: {history}");
    }
    let counts = rollout_counts(&s.app, &rollout).await;
    assert_eq!((counts["succeeded"].clone(), counts["failed"].clone()), (json!(2), json!(0)), "{counts}");
    s.app.stop().await;
}

/// Issue 16's acceptance: a build whose stored blob was damaged after upload fails the SDK's
/// checksum; it reports `FAILED`, the rollout counts it failed, and the server does not offer
/// the build again (the SDK asks again at once: no second `DOWNLOADING`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_build_fails_once_and_is_not_offered_again() {
    let s = setup(Broker::Embedded).await;
    let (build, artifact, rollout) = rolled_out_build(&s.app, "tbbad", 12_000, 1621).await;
    // Damage the stored blob, same size, through the blob store (a local file or an S3
    // object alike), before anything has read it.
    let core = core_of(&s.app).await;
    let id = updraft::domain::ArtifactId::from(artifact["id"].as_str().unwrap());
    let stored = core.store.find_artifact(&id).await.unwrap().unwrap();
    let mut damaged = build.clone();
    damaged[5_000..5_016].copy_from_slice(&[0xAA; 16]);
    let mut writer = core.blobs.create(&stored.blob_key).await.unwrap();
    writer.write(damaged.into()).await.unwrap();
    drop(writer.commit().await.unwrap());

    let name = "02:00:00:00:16:c1";
    let (result, _workdir, stderr) = run_sdk(&s, "tbbad", name, 4096).await;
    assert_eq!(result["state"], "FAILED", "{result}\n{stderr}");
    assert_eq!(result["after_failed"], json!({"state": "FAILED", "offered": false}), "{result}\n{stderr}");
    let history = history(&s.app, name).await;
    let items = history["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "one attempt: {history}");
    assert_eq!(items[0]["state"], "failed", "{history}");
    let events: Vec<&str> = items[0]["events"].as_array().unwrap().iter().map(|e| e["state"].as_str().unwrap()).collect();
    let failed_at = events.iter().position(|e| *e == "failed").expect("a failed event");
    assert!(!events[failed_at..].contains(&"downloading"), "no download after the failure: {history}");
    let counts = rollout_counts(&s.app, &rollout).await;
    assert_eq!((counts["failed"].clone(), counts["succeeded"].clone()), (json!(1), json!(0)), "{counts}");
    s.app.stop().await;
}

/// Issue 16's acceptance: the SDK's own HTTP client (`tb_device_http.TBHTTPDevice`) downloads
/// the build a rollout offers from the HTTP device API, whole and in 4096-byte chunks, checks
/// its checksum and reports it installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_s_http_client_downloads_the_same_build() {
    let app = spawn_app_with(|s| s.compat.thingsboard_http = true).await;
    let (build, _, rollout) = rolled_out_build(&app, "tbweb", 10_000, 1631).await;
    for (mac, chunk_size) in [("02:00:00:00:16:d1", "4096"), ("02:00:00:00:16:d2", "0")] {
        let body = json!({"mac": mac, "product": "tbweb", "hardware": "esp32", "version": "1.0.0", "issue_token": true});
        let created: Value = app.admin(Method::POST, "/api/v1/devices").json(&body).send().await.unwrap().json().await.unwrap();
        let workdir = tempfile::tempdir().unwrap();
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/tb_http_device.py");
        let output = tokio::process::Command::new(thingsboard_python())
            .arg(script)
            .args([&app.base, created["token"].as_str().unwrap(), chunk_size])
            .arg(workdir.path())
            .output();
        let output = tokio::time::timeout(Duration::from_secs(120), output).await.expect("the SDK finishes").unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
            .unwrap_or_else(|_| panic!("no result from the SDK: {stdout}\n{stderr}"));
        assert_eq!(result["connected"], true, "{result}\n{stderr}");
        assert_eq!(result["state"], "UPDATING", "the checksum matched (else FAILED): {result}\n{stderr}");
        assert_eq!(std::fs::read(workdir.path().join("tbweb")).unwrap(), build, "chunks of {chunk_size}");
        // Its last report (`UPDATED` with `current_fw_version`) completes the update.
        let mut state = Value::Null;
        for _ in 0..100 {
            state = history(&app, mac).await["items"][0]["state"].clone();
            if state == "succeeded" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(state, "succeeded");
    }
    assert_eq!(rollout_counts(&app, &rollout).await["succeeded"], 2);
    app.stop().await;
}

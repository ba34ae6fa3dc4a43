//! Accountability: configuration versions, rollout transitions, pins, token issues and
//! revocations, device registrations and commands record the authenticated principal's actor
//! (`key:<name>`, `user:<name>`, `oidc:<name>`); a client's `author` is accepted but not
//! trusted. Rules keep their own actors (`rule:error_threshold`, see rollouts.rs).

use std::time::Duration;

use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

/// A credential with the operator role, and the actor that records must name.
async fn operator(app: &TestApp) -> (String, String) {
    let response =
        app.admin(Method::POST, "/api/v1/api-keys").json(&json!({"name": "deploy-bot", "role": "operator"})).send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    (body["key"].as_str().unwrap().to_string(), "key:deploy-bot".to_string())
}

fn with(app: &TestApp, key: &str, method: Method, path: &str) -> reqwest::RequestBuilder {
    app.client.request(method, app.url(path)).bearer_auth(key)
}

async fn status_of(response: reqwest::Response, expected: u16) -> Value {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(status, expected, "{text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

#[tokio::test]
async fn configuration_versions_name_the_principal_not_the_author_a_client_sends() {
    let app = spawn_app().await;
    let (key, actor) = operator(&app).await;
    let path = "/api/v1/configs/product/lamp";
    let body = json!({"content": {"a": 1}, "author": "mallory", "comment": "first"});
    status_of(with(&app, &key, Method::PUT, path).json(&body).send().await.unwrap(), 200).await;
    let body = json!({"content": {"a": 2}, "author": "mallory"});
    status_of(with(&app, &key, Method::PUT, "/api/v1/devices/02:00:00:00:AC:01/config").json(&body).send().await.unwrap(), 200).await;
    let revert = json!({"version": 1, "author": "mallory"});
    status_of(with(&app, &key, Method::PUT, path).json(&json!({"content": {"a": 3}})).send().await.unwrap(), 200).await;
    status_of(with(&app, &key, Method::POST, &format!("{path}/revert")).json(&revert).send().await.unwrap(), 200).await;
    status_of(with(&app, &key, Method::DELETE, &format!("{path}?author=mallory")).send().await.unwrap(), 204).await;
    // Seed 003's API records the principal too.
    let seed = json!({"content": {"deviceName": "hall"}});
    status_of(with(&app, &key, Method::PUT, "/api/configs/aa-bb-cc-00-ac-02").json(&seed).send().await.unwrap(), 200).await;

    for scope in ["product/lamp", "device/02:00:00:00:AC:01", "device/aa-bb-cc-00-ac-02"] {
        let history = status_of(app.admin(Method::GET, &format!("/api/v1/configs/{scope}/history")).send().await.unwrap(), 200).await;
        let authors: Vec<&str> = history["items"].as_array().unwrap().iter().map(|v| v["author"].as_str().unwrap()).collect();
        assert!(!authors.is_empty() && authors.iter().all(|a| *a == actor), "{scope}: {authors:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn rollout_transitions_name_the_principal_who_made_them() {
    let app = spawn_app().await;
    let (key, actor) = operator(&app).await;
    let build = app.create_artifact(random_bytes(2048, 7), "product=lamp&version=2.0.0&hardware=esp32").await;
    let release = json!({"product": "lamp", "version": "2.0.0", "artifact_ids": [build["id"]]});
    let release = status_of(with(&app, &key, Method::POST, "/api/v1/releases").json(&release).send().await.unwrap(), 201).await;
    let rollout = json!({"release_id": release["id"], "start": true});
    let rollout = status_of(with(&app, &key, Method::POST, "/api/v1/rollouts").json(&rollout).send().await.unwrap(), 201).await;
    let id = rollout["rollout"]["id"].as_str().or(rollout["id"].as_str()).unwrap().to_string();
    for verb in ["pause", "resume", "cancel"] {
        status_of(with(&app, &key, Method::POST, &format!("/api/v1/rollouts/{id}/{verb}")).send().await.unwrap(), 200).await;
    }
    let history = status_of(app.admin(Method::GET, &format!("/api/v1/rollouts/{id}/history")).send().await.unwrap(), 200).await;
    let steps: Vec<(&str, &str)> =
        history["items"].as_array().unwrap().iter().map(|t| (t["to"].as_str().unwrap(), t["actor"].as_str().unwrap())).collect();
    assert_eq!(
        steps,
        [("draft", actor.as_str()), ("running", &actor), ("paused", &actor), ("running", &actor), ("cancelled", &actor)],
        "creation, the start at creation and every action name the principal"
    );
    app.stop().await;
}

/// Reads the event stream until an event of `kind` about `device_id` arrives; returns its data.
async fn next_event(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    seen: &mut String,
    kind: &str,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(start) = seen.find(&format!("event: {kind}\n")) {
            let rest = &seen[start..];
            if let Some(end) = rest.find("\n\n") {
                let block = rest[..end].to_string();
                *seen = seen[start + end + 2..].to_string();
                let data = block.lines().find_map(|l| l.strip_prefix("data: ")).expect("an event has data");
                return serde_json::from_str::<Value>(data).unwrap()["data"].clone();
            }
        }
        let chunk =
            tokio::time::timeout_at(deadline, stream.next()).await.expect("the event arrives in time").expect("stream open").unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn registrations_pins_tokens_and_commands_name_the_principal() {
    let app = spawn_app_with(|s| {
        s.compat.default_product = Some("panic".into());
        s.compat.admin_api_key = Some("their-old-admin-key".into());
    })
    .await;
    let (key, actor) = operator(&app).await;
    let response = app.admin(Method::GET, "/api/v1/events").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut seen = String::new();

    let body = json!({"mac": "02:00:00:00:AC:10", "product": "lamp", "issue_token": true});
    let device = status_of(with(&app, &key, Method::POST, "/api/v1/devices").json(&body).send().await.unwrap(), 201).await;
    let id = device["id"].as_str().unwrap().to_string();
    assert_eq!(next_event(&mut stream, &mut seen, "device.created").await["by"], actor.as_str());
    assert_eq!(next_event(&mut stream, &mut seen, "device.token_issued").await["by"], actor.as_str());

    let pin = json!({"target_version": "1.2.3"});
    status_of(with(&app, &key, Method::PATCH, &format!("/api/v1/devices/{id}")).json(&pin).send().await.unwrap(), 200).await;
    let pinned = next_event(&mut stream, &mut seen, "device.updated").await;
    assert_eq!((pinned["target_version"].as_str(), pinned["by"].as_str()), (Some("1.2.3"), Some(actor.as_str())));

    status_of(with(&app, &key, Method::POST, &format!("/api/v1/devices/{id}/token")).send().await.unwrap(), 200).await;
    assert_eq!(next_event(&mut stream, &mut seen, "device.token_issued").await["by"], actor.as_str(), "a rotation");
    status_of(with(&app, &key, Method::DELETE, &format!("/api/v1/devices/{id}/token")).send().await.unwrap(), 204).await;
    assert_eq!(next_event(&mut stream, &mut seen, "device.token_revoked").await["by"], actor.as_str());

    let command = json!({"name": "reboot"});
    let sent =
        status_of(with(&app, &key, Method::POST, &format!("/api/v1/devices/{id}/commands")).json(&command).send().await.unwrap(), 202)
            .await;
    assert_eq!(sent["created_by"], actor.as_str());
    let listed = status_of(app.admin(Method::GET, &format!("/api/v1/devices/{id}/commands")).send().await.unwrap(), 200).await;
    assert_eq!(listed["items"][0]["created_by"], actor.as_str(), "stored");

    // Seed 001's admin API with its own key: the key `compat-admin`.
    let seed = json!({"mac_address": "02:00:00:00:AC:11", "device_id": "panic-1", "target_version": "1.0.1", "firmware_url": "x", "checksum": "y"});
    let created = app.client.post(app.url("/admin/api/devices")).header("x-admin-api-key", "their-old-admin-key").json(&seed).send().await;
    status_of(created.unwrap(), 200).await;
    assert_eq!(next_event(&mut stream, &mut seen, "device.created").await["by"], "key:compat-admin");
    let repin = app
        .client
        .put(app.url("/admin/api/devices/02:00:00:00:AC:11"))
        .header("x-admin-api-key", "their-old-admin-key")
        .json(&json!({"target_version": "1.0.2"}))
        .send()
        .await;
    status_of(repin.unwrap(), 200).await;
    let pinned = next_event(&mut stream, &mut seen, "device.updated").await;
    assert_eq!((pinned["target_version"].as_str(), pinned["by"].as_str()), (Some("1.0.2"), Some("key:compat-admin")));
    // ... and with an operator key through the same API.
    let repin = app
        .client
        .put(app.url("/admin/api/devices/02:00:00:00:AC:11"))
        .header("x-admin-api-key", &key)
        .json(&json!({"target_version": "1.0.3"}))
        .send()
        .await;
    status_of(repin.unwrap(), 200).await;
    assert_eq!(next_event(&mut stream, &mut seen, "device.updated").await["by"], actor.as_str());
    drop(stream);
    app.stop().await;
}

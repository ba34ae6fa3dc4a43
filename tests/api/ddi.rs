//! hawkBit DDI (`/{tenant}/controller/v1/...`): authentication (target and gateway tokens),
//! the poll and its links, deployments with numeric action ids, artifacts, feedback into the
//! attempt's history and the rollout's counts, 410 for inactive actions, cancellation,
//! configData and the installed base, bad bodies. The unmodified SWUpdate client runs in
//! `swupdate_installs_a_rollout_over_ddi` (tests/clients/swupdate/).

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

const MAC: &str = "02:00:00:00:DD:01";

struct Ddi {
    app: TestApp,
    device_id: String,
    token: String,
}

impl Ddi {
    fn controller(&self) -> String {
        format!("/DEFAULT/controller/v1/{}", self.device_id)
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let url = if path.starts_with("http") { path.to_string() } else { self.app.url(&format!("{}{path}", self.controller())) };
        self.app.client.request(method, url).header("Authorization", format!("TargetToken {}", self.token))
    }

    async fn poll(&self) -> Value {
        let response = self.request(Method::GET, "").send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    async fn feedback(&self, action: i64, body: Value) -> reqwest::Response {
        self.request(Method::POST, &format!("/deploymentBase/{action}/feedback")).json(&body).send().await.unwrap()
    }
}

async fn register(app: &TestApp, mac: &str, product: &str) -> (String, String) {
    let body = json!({"mac": mac, "product": product, "hardware": "board", "version": "1.0.0", "issue_token": true});
    let response = app.admin(Method::POST, "/api/v1/devices").json(&body).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    (body["id"].as_str().unwrap().to_string(), body["token"].as_str().unwrap().to_string())
}

async fn admin_json(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> Value {
    let mut request = app.admin(method, path);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{path}: {status} {body}");
    body
}

/// A device of `gw` on 1.0.0 and a forced rollout of 2.0.0 to it; returns the rollout id.
async fn setup() -> (Ddi, String, Value) {
    let app = spawn_app().await;
    let (device_id, token) = register(&app, MAC, "gw").await;
    let artifact = app.create_artifact(random_bytes(4096, 7), "product=gw&version=2.0.0&hardware=board").await;
    let release = admin_json(
        &app,
        Method::POST,
        "/api/v1/releases",
        Some(json!({"product": "gw", "version": "2.0.0", "artifact_ids": [artifact["id"]]})),
    )
    .await;
    let rollout = admin_json(
        &app,
        Method::POST,
        "/api/v1/rollouts",
        Some(json!({"release_id": release["id"], "stages": [{"percent": 100}], "start": true, "forced": true})),
    )
    .await;
    (Ddi { app, device_id, token }, rollout["id"].as_str().unwrap().to_string(), artifact)
}

fn action_of(link: &Value) -> i64 {
    let href = link["href"].as_str().unwrap();
    let path = href.split('?').next().unwrap();
    path.rsplit('/').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn polls_need_the_token_of_that_controller() {
    let (ddi, _, _) = setup().await;
    let (other_id, other_token) = register(&ddi.app, "02:00:00:00:DD:02", "gw").await;
    let url = ddi.app.url(&ddi.controller());
    let status = |r: reqwest::Response| r.status().as_u16();
    // No credential, a bearer token, an unknown token, another device's token: 401.
    assert_eq!(status(ddi.app.client.get(&url).send().await.unwrap()), 401);
    assert_eq!(status(ddi.app.client.get(&url).bearer_auth(&ddi.token).send().await.unwrap()), 401);
    let unknown = ddi.app.client.get(&url).header("Authorization", "TargetToken upd_dev_nope").send().await.unwrap();
    assert_eq!(unknown.status(), 401);
    assert!(unknown.headers().get("www-authenticate").is_some());
    let body: Value = unknown.json().await.unwrap();
    assert!(body["errorCode"].as_str().unwrap().starts_with("hawkbit.server.error."), "{body}");
    let other = ddi.app.client.get(&url).header("Authorization", format!("TargetToken {other_token}")).send().await.unwrap();
    assert_eq!(other.status(), 401, "a token reaches only its own device");
    // Its own token, with its id or its MAC (any form) as controller id.
    assert_eq!(ddi.poll().await["config"]["polling"]["sleep"], "01:00:00");
    for controller in [MAC, "02000000dd01", other_id.as_str()] {
        let response = ddi
            .app
            .client
            .get(ddi.app.url(&format!("/DEFAULT/controller/v1/{controller}")))
            .header("Authorization", format!("TargetToken {}", ddi.token))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), if controller == other_id { 401 } else { 200 }, "{controller}");
    }
    // Another tenant: no such API.
    let response = ddi.app.client.get(ddi.app.url(&format!("/OTHER/controller/v1/{}", ddi.device_id))).send().await.unwrap();
    assert_eq!(response.status(), 404);
    // An overlong token is just a bad token.
    let long = "x".repeat(300);
    let response = ddi.app.client.get(&url).header("Authorization", format!("TargetToken {long}")).send().await.unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn a_rollout_is_deployed_downloaded_reported_and_counted() {
    let (ddi, rollout_id, artifact) = setup().await;
    let poll = ddi.poll().await;
    let links = &poll["_links"];
    assert!(links.get("cancelAction").is_none() && links.get("installedBase").is_none(), "{poll}");
    assert!(links["configData"]["href"].as_str().unwrap().ends_with("/configData"), "{poll}");
    let deployment_href = links["deploymentBase"]["href"].as_str().unwrap().to_string();
    assert!(deployment_href.contains("?c="), "{deployment_href}");
    let action = action_of(&links["deploymentBase"]);
    // The same action, the same link, poll after poll.
    assert_eq!(ddi.poll().await["_links"]["deploymentBase"]["href"], deployment_href.as_str());

    let response = ddi.request(Method::GET, &deployment_href).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let deployment: Value = response.json().await.unwrap();
    assert_eq!(deployment["id"], action.to_string());
    assert_eq!(deployment["deployment"]["download"], "forced", "a forced rollout: {deployment}");
    assert_eq!(deployment["deployment"]["update"], "forced");
    assert!(deployment["deployment"].get("maintenanceWindow").is_none(), "no window: {deployment}");
    let chunk = &deployment["deployment"]["chunks"][0];
    assert_eq!(chunk["part"], "os");
    assert_eq!(chunk["version"], "2.0.0");
    assert_eq!(chunk["name"], "gw");
    let file = &chunk["artifacts"][0];
    assert_eq!(file["size"], 4096);
    assert_eq!(file["hashes"]["sha1"], artifact["sha1"]);
    assert_eq!(file["hashes"]["md5"], artifact["md5"]);
    assert_eq!(file["hashes"]["sha256"], artifact["sha256"]);
    let download = file["_links"]["download-http"]["href"].as_str().unwrap().to_string();
    assert_eq!(file["_links"]["download"]["href"], download.as_str());
    assert!(download.starts_with(&ddi.app.url(&ddi.controller())), "{download}");
    assert!(download.contains("/softwaremodules/"), "{download}");

    // The file: HEAD, GET, a range, x-MD5; the MD5SUM line; nothing without the token.
    let head = ddi.request(Method::HEAD, &download).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "4096");
    assert_eq!(head.headers()["x-md5"], artifact["md5"].as_str().unwrap());
    let whole = ddi.request(Method::GET, &download).send().await.unwrap();
    assert_eq!(whole.bytes().await.unwrap().to_vec(), random_bytes(4096, 7));
    let part = ddi.request(Method::GET, &download).header("Range", "bytes=4000-").send().await.unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.unwrap().to_vec(), random_bytes(4096, 7)[4000..].to_vec());
    let md5sum = ddi.request(Method::GET, file["_links"]["md5sum"]["href"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(md5sum.status(), 200);
    let name = file["filename"].as_str().unwrap();
    assert_eq!(md5sum.text().await.unwrap(), format!("{}  {name}\n", artifact["md5"].as_str().unwrap()));
    assert_eq!(ddi.app.client.get(&download).send().await.unwrap().status(), 401);
    let listed = ddi.request(Method::GET, download.rsplit_once('/').unwrap().0).send().await.unwrap();
    assert_eq!(listed.json::<Value>().await.unwrap()[0]["filename"], name);
    // Another build of the product is not this device's to fetch.
    let other = ddi.app.create_artifact(random_bytes(100, 9), "product=gw&version=3.0.0-rc.1&hardware=board").await;
    let other_url = format!("/softwaremodules/{}/artifacts/x", other["id"].as_str().unwrap());
    assert_eq!(ddi.request(Method::GET, &other_url).send().await.unwrap().status(), 404);

    // Feedback as SWUpdate sends it; each line goes into the history.
    let lines = [
        json!({"id": action, "status": {"execution": "download", "result": {"finished": "none"}, "details": ["Downloading"]}}),
        json!({"id": action, "status": {"execution": "downloaded", "result": {"finished": "none"}, "details": ["Downloaded"]}}),
        json!({"id": action, "time": "20261123T105700", "status": {"result": {"progress": {"cnt": 1, "of": 2}, "finished": "none"}, "execution": "proceeding", "details": ["Installed Chunk."]}}),
        json!({"id": action, "status": {"result": {"progress": {"cnt": 2, "of": 2}, "finished": "none"}, "execution": "proceeding", "details": ["All Chunks Installed."]}}),
        json!({"id": action, "status": {"result": {"finished": "success"}, "execution": "closed", "details": ["Update successful"]}}),
    ];
    for line in lines {
        let response = ddi.feedback(action, line.clone()).await;
        assert_eq!(response.status(), 200, "{line}: {}", response.text().await.unwrap());
    }
    let updates = admin_json(&ddi.app, Method::GET, &format!("/api/v1/devices/{}/updates", ddi.device_id), None).await;
    let attempt = &updates["items"][0];
    assert_eq!(attempt["state"], "succeeded", "{attempt}");
    assert_eq!(attempt["action_id"], action);
    let events: Vec<(String, Value, Value)> = attempt["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["state"].as_str().unwrap().to_string(), e["progress"].clone(), e["message"].clone()))
        .collect();
    let expected = [
        ("offered", Value::Null, Value::Null),
        ("downloading", Value::Null, json!("Downloading")),
        ("downloaded", Value::Null, json!("Downloaded")),
        ("installing", json!(50), json!("Installed Chunk.")),
        ("installing", json!(100), json!("All Chunks Installed.")),
        ("succeeded", json!(100), json!("Update successful")),
    ];
    assert_eq!(events, expected.iter().map(|(s, p, m)| (s.to_string(), p.clone(), m.clone())).collect::<Vec<_>>());
    let device = admin_json(&ddi.app, Method::GET, &format!("/api/v1/devices/{}", ddi.device_id), None).await;
    assert_eq!(device["version"], "2.0.0", "a success records the version: {device}");
    let rollout = admin_json(&ddi.app, Method::GET, &format!("/api/v1/rollouts/{rollout_id}"), None).await;
    assert_eq!(rollout["counts"]["succeeded"], 1, "{rollout}");

    // Closed: more feedback is 410; the poll shows the installed base, no deployment.
    let late = ddi.feedback(action, json!({"status": {"execution": "proceeding", "result": {"finished": "none"}}})).await;
    assert_eq!(late.status(), 410);
    let poll = ddi.poll().await;
    assert!(poll["_links"].get("deploymentBase").is_none(), "{poll}");
    let installed = poll["_links"]["installedBase"]["href"].as_str().unwrap();
    assert!(installed.ends_with(&format!("/installedBase/{action}")), "{poll}");
    let response = ddi.request(Method::GET, &format!("{installed}?actionHistory=-1")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let base: Value = response.json().await.unwrap();
    assert_eq!(base["deployment"]["chunks"][0]["version"], "2.0.0");
    assert_eq!(base["actionHistory"]["status"], "FINISHED");
    assert_eq!(base["actionHistory"]["messages"][0], "succeeded: Update successful");
    // Unknown actions: 404.
    assert_eq!(ddi.feedback(999_999, json!({"status": {"execution": "closed"}})).await.status(), 404);
    assert_eq!(ddi.request(Method::GET, "/deploymentBase/abc").send().await.unwrap().status(), 404);
    assert_eq!(ddi.request(Method::GET, "/installedBase/999999").send().await.unwrap().status(), 404);
}

#[tokio::test]
async fn a_failure_is_counted_and_a_rejection_refused() {
    let (ddi, rollout_id, _) = setup().await;
    let action = action_of(&ddi.poll().await["_links"]["deploymentBase"]);
    let failure = json!({"id": action, "status": {"execution": "closed", "result": {"finished": "failure"}, "details": ["Image invalid or corrupted. Not installing ..."]}});
    assert_eq!(ddi.feedback(action, failure).await.status(), 200);
    let rollout = admin_json(&ddi.app, Method::GET, &format!("/api/v1/rollouts/{rollout_id}"), None).await;
    assert_eq!(rollout["counts"]["failed"], 1, "{rollout}");
    let updates = admin_json(&ddi.app, Method::GET, &format!("/api/v1/devices/{}/updates", ddi.device_id), None).await;
    assert_eq!(updates["items"][0]["state"], "failed");
    assert_eq!(updates["items"][0]["message"], "Image invalid or corrupted. Not installing ...");
    // The failed build is not offered again by the rollout.
    assert!(ddi.poll().await["_links"].get("deploymentBase").is_none());
    assert_eq!(ddi.feedback(action, json!({"status": {"execution": "closed", "result": {"finished": "success"}}})).await.status(), 410);
}

#[tokio::test]
async fn a_cancelled_rollout_becomes_a_cancel_action_that_closes_as_cancelled() {
    let (ddi, rollout_id, _) = setup().await;
    let action = action_of(&ddi.poll().await["_links"]["deploymentBase"]);
    let started = json!({"status": {"execution": "proceeding", "result": {"finished": "none"}, "details": ["started"]}});
    assert_eq!(ddi.feedback(action, started).await.status(), 200);
    admin_json(&ddi.app, Method::POST, &format!("/api/v1/rollouts/{rollout_id}/cancel"), None).await;

    let poll = ddi.poll().await;
    assert!(poll["_links"].get("deploymentBase").is_none(), "{poll}");
    let cancel = poll["_links"]["cancelAction"]["href"].as_str().unwrap().to_string();
    assert_eq!(action_of(&poll["_links"]["cancelAction"]), action);
    let body: Value = ddi.request(Method::GET, &cancel).send().await.unwrap().json().await.unwrap();
    assert_eq!(body, json!({"id": action.to_string(), "cancelAction": {"stopId": action.to_string()}}));

    // Acknowledged: the attempt ends cancelled, not failed, and the poll is quiet.
    let ack = json!({"id": action, "status": {"execution": "closed", "result": {"finished": "success"}}});
    let response = ddi.request(Method::POST, &format!("{cancel}/feedback")).json(&ack).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let updates = admin_json(&ddi.app, Method::GET, &format!("/api/v1/devices/{}/updates", ddi.device_id), None).await;
    assert_eq!(updates["items"][0]["state"], "cancelled", "{updates}");
    let poll = ddi.poll().await;
    assert!(poll["_links"].get("cancelAction").is_none() && poll["_links"].get("deploymentBase").is_none(), "{poll}");
    // A second acknowledgement: the action is no longer active.
    let response = ddi.request(Method::POST, &format!("{cancel}/feedback")).json(&ack).send().await.unwrap();
    assert_eq!(response.status(), 410);
}

#[tokio::test]
async fn a_pin_replaces_the_offered_action_after_a_cancellation() {
    let (ddi, _, _) = setup().await;
    let first = action_of(&ddi.poll().await["_links"]["deploymentBase"]);
    ddi.app.create_artifact(random_bytes(1000, 11), "product=gw&version=1.5.0&hardware=board").await;
    admin_json(&ddi.app, Method::PATCH, &format!("/api/v1/devices/{}", ddi.device_id), Some(json!({"target_version": "1.5.0"}))).await;
    let poll = ddi.poll().await;
    assert_eq!(action_of(&poll["_links"]["cancelAction"]), first, "{poll}");
    let ack = json!({"status": {"execution": "closed", "result": {"finished": "success"}}});
    let response = ddi.request(Method::POST, &format!("/cancelAction/{first}/feedback")).json(&ack).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let poll = ddi.poll().await;
    let second = action_of(&poll["_links"]["deploymentBase"]);
    assert!(second > first, "{poll}");
    let href = poll["_links"]["deploymentBase"]["href"].as_str().unwrap();
    let deployment: Value = ddi.request(Method::GET, href).send().await.unwrap().json().await.unwrap();
    assert_eq!(deployment["deployment"]["chunks"][0]["version"], "1.5.0");
    assert_eq!(deployment["deployment"]["update"], "forced", "a pin is mandatory");
}

#[tokio::test]
async fn config_data_merges_replaces_and_removes_attributes() {
    let (ddi, _, _) = setup().await;
    let put = |body: Value| ddi.request(Method::PUT, "/configData").header("Expect", "100-continue").json(&body).send();
    let attributes =
        || async { admin_json(&ddi.app, Method::GET, &format!("/api/v1/devices/{}", ddi.device_id), None).await["attributes"].clone() };
    assert_eq!(put(json!({"mode": "merge", "data": {"hwRevision": "2", "VIN": "JH4"}})).await.unwrap().status(), 200);
    assert_eq!(put(json!({"data": {"board": "x"}})).await.unwrap().status(), 200);
    assert_eq!(attributes().await, json!({"hwRevision": "2", "VIN": "JH4", "board": "x"}));
    assert_eq!(put(json!({"mode": "remove", "data": {"VIN": ""}})).await.unwrap().status(), 200);
    assert_eq!(attributes().await, json!({"hwRevision": "2", "board": "x"}));
    assert_eq!(put(json!({"mode": "replace", "data": {"only": "1"}})).await.unwrap().status(), 200);
    assert_eq!(attributes().await, json!({"only": "1"}));
    // Once reported, the poll stops asking.
    assert!(ddi.poll().await["_links"].get("configData").is_none());

    // Bad bodies: the DDI error form, never a 500.
    let raw = |body: Vec<u8>| ddi.request(Method::PUT, "/configData").header("Content-Type", "application/json").body(body).send();
    for (body, status) in [
        (b"not json".to_vec(), 400),
        (br#"{"mode":"sideways","data":{}}"#.to_vec(), 400),
        (br#"{"mode":"merge"}"#.to_vec(), 400),
        (br#"{"mode":"merge","data":[1]}"#.to_vec(), 400),
        (format!(r#"{{"data":{{"k":"{}"}}}}"#, "x".repeat(70_000)).into_bytes(), 413),
    ] {
        let response = raw(body).await.unwrap();
        assert_eq!(response.status(), status);
        let error: Value = response.json().await.unwrap();
        assert!(error["errorCode"].is_string(), "{error}");
    }
    let feedback = ddi.request(Method::POST, "/deploymentBase/1/feedback").body("{").send().await.unwrap();
    assert_eq!(feedback.status(), 400);
    let huge = json!({"status": {"execution": "proceeding", "details": vec!["y".repeat(1000); 100]}});
    assert_eq!(ddi.feedback(1, huge).await.status(), 413);
    let unknown = json!({"status": {"execution": "exploded"}});
    assert_eq!(ddi.feedback(1, unknown).await.status(), 400);
}

#[tokio::test]
async fn installed_base_records_the_version_like_a_check_in() {
    let (ddi, _, _) = setup().await;
    let response = ddi.request(Method::PUT, "/installedBase").json(&json!({"name": "gw", "version": "2.0.0"})).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let device = admin_json(&ddi.app, Method::GET, &format!("/api/v1/devices/{}", ddi.device_id), None).await;
    assert_eq!(device["version"], "2.0.0");
    // Up to date: nothing to deploy.
    assert!(ddi.poll().await["_links"].get("deploymentBase").is_none());
    let response =
        ddi.request(Method::PUT, "/installedBase").json(&json!({"name": "gw", "version": "not a version"})).send().await.unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn gateway_tokens_register_controllers_of_their_own_product_only() {
    let (ddi, _, _) = setup().await;
    let app = &ddi.app;
    let gateway = "gw-gateway-token-0123456789";
    admin_json(app, Method::PUT, "/api/v1/products/gw", Some(json!({"provisioning": "open", "ddi_gateway_token": gateway}))).await;
    let view = admin_json(app, Method::GET, "/api/v1/products/gw", None).await;
    assert_eq!(view["has_ddi_gateway_token"], true);
    assert!(!view.to_string().contains(gateway), "the token is never shown: {view}");
    let other = "other-gateway-token-0123456789";
    admin_json(app, Method::PUT, "/api/v1/products/other", Some(json!({"provisioning": "open", "ddi_gateway_token": other}))).await;
    let poll = |controller: &str, token: &str| {
        app.client
            .get(app.url(&format!("/DEFAULT/controller/v1/{controller}")))
            .header("Authorization", format!("GatewayToken {token}"))
            .send()
    };
    // A registered device of the product, by id.
    assert_eq!(poll(&ddi.device_id, gateway).await.unwrap().status(), 200);
    // Another product's gateway token: 401, for the device and for its MAC.
    assert_eq!(poll(&ddi.device_id, other).await.unwrap().status(), 401);
    assert_eq!(poll(MAC, other).await.unwrap().status(), 401);
    assert_eq!(poll(MAC, "not-the-gateway-token-at-all").await.unwrap().status(), 401);
    // An unknown controller is registered in the token's product (open) and polls.
    let response = poll("02:00:00:00:DD:33", gateway).await.unwrap();
    assert_eq!(response.status(), 200);
    let devices = admin_json(app, Method::GET, "/api/v1/devices?product=gw", None).await;
    assert!(devices["items"].as_array().unwrap().iter().any(|d| d["mac"] == "02:00:00:00:DD:33"), "{devices}");
    // A controller id that is not a MAC becomes the new device's unique name.
    assert_eq!(poll("gateway-cabinet-7", gateway).await.unwrap().status(), 200);
    let named = admin_json(app, Method::GET, "/api/v1/devices/gateway-cabinet-7", None).await;
    assert_eq!(named["uid"], "gateway-cabinet-7");
    assert_eq!(named["product"], "gw");
    assert_eq!(named["mac"], Value::Null);
    // A preregistered product refuses unknown controllers.
    admin_json(app, Method::PUT, "/api/v1/products/gw", Some(json!({"provisioning": "preregistered"}))).await;
    assert_eq!(poll("02:00:00:00:DD:34", gateway).await.unwrap().status(), 403);
    // Removing the token: 401.
    admin_json(app, Method::PUT, "/api/v1/products/gw", Some(json!({"provisioning": "open", "ddi_gateway_token": null}))).await;
    assert_eq!(poll(&ddi.device_id, gateway).await.unwrap().status(), 401);
    // Too short a token is refused.
    let response = app
        .admin(Method::PUT, "/api/v1/products/gw")
        .json(&json!({"provisioning": "open", "ddi_gateway_token": "short"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response, 400).await, "invalid_ddi_gateway_token");
}

#[tokio::test]
async fn the_ddi_api_can_be_switched_off_and_moved_to_another_tenant() {
    let app = spawn_app_with(|s| s.compat.ddi = false).await;
    let (id, token) = register(&app, MAC, "gw").await;
    let response = app
        .client
        .get(app.url(&format!("/DEFAULT/controller/v1/{id}")))
        .header("Authorization", format!("TargetToken {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let app = spawn_app_with(|s| s.compat.ddi_tenant = "acme".into()).await;
    let (id, token) = register(&app, MAC, "gw").await;
    let poll = |tenant: &str| {
        app.client.get(app.url(&format!("/{tenant}/controller/v1/{id}"))).header("Authorization", format!("TargetToken {token}")).send()
    };
    assert_eq!(poll("acme").await.unwrap().status(), 200);
    assert_eq!(poll("DEFAULT").await.unwrap().status(), 404);
}

/// A running SWUpdate (its own process group, so that its helper processes stop with it).
struct Swupdate {
    child: std::process::Child,
}

impl Swupdate {
    fn start(dir: &std::path::Path, url: &str, controller: &str, token: &str, confirm: Option<u8>, log: &str) -> Swupdate {
        use std::os::unix::process::CommandExt;
        let client = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/swupdate");
        let mut suricatta = format!("-t DEFAULT -u {url} -i {controller} -p 1 -r 2 -w 2 -k {token}");
        if let Some(code) = confirm {
            suricatta.push_str(&format!(" -c {code}"));
        }
        let log = std::fs::File::create(dir.join(log)).unwrap();
        let child = std::process::Command::new("swupdate")
            .args(["-v", "-f", &format!("{client}/swupdate.cfg"), "-H", "board:1.0", "-k"])
            .arg(dir.join("signer.pem"))
            .args(["-u", &suricatta])
            .env("TMPDIR", dir)
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("swupdate is installed (apt-get install swupdate cpio; scripts/test.sh does it)");
        Swupdate { child }
    }
}

impl Drop for Swupdate {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = std::process::Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

/// The unmodified Debian SWUpdate (suricatta, hawkBit mode) installs a CMS-signed `.swu`
/// offered by a rollout with its target token, then, restarted with `-c 2`, reports success.
#[tokio::test]
async fn swupdate_installs_a_rollout_over_ddi() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let installed = dir.path().join("installed.bin");
    let made = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/swupdate/make_swu.sh"))
        .arg(dir.path())
        .arg("2.0.0")
        .arg(&installed)
        .status()
        .expect("bash, openssl and cpio are installed");
    assert!(made.success());
    let swu = std::fs::read(dir.path().join("update.swu")).unwrap();
    let payload = std::fs::read(dir.path().join("payload.bin")).unwrap();

    admin_json(&app, Method::PUT, "/api/v1/products/swu", Some(json!({"provisioning": "preregistered", "poll_interval_s": 10}))).await;
    let (device_id, token) = register(&app, "02:00:00:00:5A:01", "swu").await;
    let artifact = app.create_artifact(swu, "product=swu&version=2.0.0&hardware=board").await;
    let release = admin_json(
        &app,
        Method::POST,
        "/api/v1/releases",
        Some(json!({"product": "swu", "version": "2.0.0", "artifact_ids": [artifact["id"]]})),
    )
    .await;
    let rollout = admin_json(
        &app,
        Method::POST,
        "/api/v1/rollouts",
        Some(json!({"release_id": release["id"], "stages": [{"percent": 100}], "start": true})),
    )
    .await;
    let updates =
        || async { admin_json(&app, Method::GET, &format!("/api/v1/devices/{device_id}/updates"), None).await["items"][0].clone() };
    let messages = |attempt: &Value| -> Vec<String> {
        attempt["events"].as_array().into_iter().flatten().filter_map(|e| e["message"].as_str().map(str::to_string)).collect()
    };
    let url = app.url("");

    // First run: it downloads, installs with rawfile, reports its progress and waits for a reboot.
    let first = Swupdate::start(dir.path(), &url, &device_id, &token, None, "first.log");
    let mut attempt = Value::Null;
    for _ in 0..600 {
        attempt = updates().await;
        if messages(&attempt).iter().any(|m| m.contains("All Chunks Installed")) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let log = || std::fs::read_to_string(dir.path().join("first.log")).unwrap_or_default();
    assert!(messages(&attempt).iter().any(|m| m.contains("All Chunks Installed")), "{attempt}\n{}", log());
    assert_eq!(std::fs::read(&installed).unwrap(), payload, "rawfile wrote the payload");
    assert_eq!(attempt["state"], "installing", "{attempt}");
    let action = attempt["action_id"].as_i64().unwrap();
    drop(first);

    // Restarted after the "reboot" with -c 2: it reports closed/success for the same action.
    let second = Swupdate::start(dir.path(), &url, &device_id, &token, Some(2), "second.log");
    let version = || async { admin_json(&app, Method::GET, &format!("/api/v1/devices/{device_id}"), None).await["version"].clone() };
    for _ in 0..600 {
        attempt = updates().await;
        // The attempt is recorded a moment before the device's new version (the feedback
        // handler records the attempt, then checks the device in with the new version).
        if attempt["state"] == "succeeded" && version().await == "2.0.0" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    drop(second);
    let log = std::fs::read_to_string(dir.path().join("second.log")).unwrap_or_default();
    assert_eq!(attempt["state"], "succeeded", "{attempt}\n{log}");
    assert_eq!(attempt["action_id"], action);
    // Every feedback line is in the history, in order.
    let lines = messages(&attempt);
    let installed_chunk = lines.iter().position(|m| m.contains("Installed Chunk")).expect("Installed Chunk.");
    let all_installed = lines.iter().position(|m| m.contains("All Chunks Installed")).unwrap();
    assert!(installed_chunk < all_installed, "{lines:?}");
    let states: Vec<&str> = attempt["events"].as_array().unwrap().iter().map(|e| e["state"].as_str().unwrap()).collect();
    assert_eq!(states.first(), Some(&"offered"));
    assert_eq!(states.last(), Some(&"succeeded"), "{attempt}");
    let rollout = admin_json(&app, Method::GET, &format!("/api/v1/rollouts/{}", rollout["id"].as_str().unwrap()), None).await;
    assert_eq!(rollout["counts"]["succeeded"], 1, "{rollout}");
    let device = admin_json(&app, Method::GET, &format!("/api/v1/devices/{device_id}"), None).await;
    assert_eq!(device["version"], "2.0.0");
    // Its configData (the `identify` entries of swupdate.cfg) became attributes.
    assert_eq!(device["attributes"]["board"], "updraft-test", "{device}");
}

#[tokio::test]
async fn a_device_known_by_its_name_polls_with_its_name_as_controller_id() {
    let (ddi, _, _) = setup().await;
    let app = &ddi.app;
    let body = json!({"uid": "rauc-box-01", "product": "gw", "hardware": "board", "version": "1.0.0", "issue_token": true});
    let response = app.admin(Method::POST, "/api/v1/devices").json(&body).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let token = created["token"].as_str().unwrap();
    let poll = |controller: &str, token: &str| {
        app.client
            .get(app.url(&format!("/DEFAULT/controller/v1/{controller}")))
            .header("Authorization", format!("TargetToken {token}"))
            .send()
    };
    let response = poll("rauc-box-01", token).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(body["_links"]["deploymentBase"]["href"].as_str().unwrap().contains("/controller/v1/rauc-box-01/deploymentBase/"), "{body}");
    // Another device's name, or its own name with another device's token: 401.
    assert_eq!(poll("rauc-box-01", &ddi.token).await.unwrap().status(), 401);
    assert_eq!(poll("no-such-box", token).await.unwrap().status(), 401);
}

/// A replica that knew the device had no open attempt learns of one opened on another replica
/// (through the device change log): the cancellation of that attempt's rollout reaches it.
#[tokio::test]
async fn a_cancellation_reaches_a_poll_on_another_replica() {
    let app = spawn_app().await;
    let (device_id, token) = register(&app, MAC, "gw").await;
    let artifact = app.create_artifact(random_bytes(4096, 7), "product=gw&version=2.0.0&hardware=board").await;
    let release = admin_json(
        &app,
        Method::POST,
        "/api/v1/releases",
        Some(json!({"product": "gw", "version": "2.0.0", "artifact_ids": [artifact["id"]]})),
    )
    .await;
    let replica = start(app.settings.clone(), DataDir::for_replica()).await;
    let on_replica = Ddi { app: replica, device_id: device_id.clone(), token: token.clone() };
    let on_first = Ddi { app, device_id, token };
    // The replica settles the device (no attempt at all) once the registration has left the
    // change log's overlap window (5 s) and stops dropping its entry.
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    for _ in 0..2 {
        let poll = on_replica.poll().await;
        assert!(poll["_links"].get("deploymentBase").is_none() && poll["_links"].get("cancelAction").is_none(), "{poll}");
    }

    let rollout = admin_json(
        &on_first.app,
        Method::POST,
        "/api/v1/rollouts",
        Some(json!({"release_id": release["id"], "stages": [{"percent": 100}], "start": true, "forced": true})),
    )
    .await;
    let action = action_of(&on_first.poll().await["_links"]["deploymentBase"]);
    admin_json(&on_first.app, Method::POST, &format!("/api/v1/rollouts/{}/cancel", rollout["id"].as_str().unwrap()), None).await;

    let mut last = Value::Null;
    for _ in 0..60 {
        last = on_replica.poll().await;
        if last["_links"].get("cancelAction").is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(action_of(&last["_links"]["cancelAction"]), action, "the replica never showed the cancellation: {last}");
    on_replica.app.stop().await;
    on_first.app.stop().await;
}

/// A device of `gw` on 1.0.0 and a forced rollout of 2.0.0 to it with `window`.
async fn windowed(window: Value) -> (Ddi, String) {
    let app = spawn_app().await;
    let (device_id, token) = register(&app, MAC, "gw").await;
    let artifact = app.create_artifact(random_bytes(4096, 8), "product=gw&version=2.0.0&hardware=board").await;
    let body = json!({"product": "gw", "version": "2.0.0", "artifact_ids": [artifact["id"]]});
    let release = admin_json(&app, Method::POST, "/api/v1/releases", Some(body)).await;
    let body = json!({"release_id": release["id"], "stages": [{"percent": 100}], "start": true, "forced": true, "window": window});
    let rollout = admin_json(&app, Method::POST, "/api/v1/rollouts", Some(body)).await;
    (Ddi { app, device_id, token }, rollout["id"].as_str().unwrap().to_string())
}

/// Issue 16: a rollout's `window` reaches the deployment as hawkBit sends a maintenance
/// window (`DdiDeployment.maintenanceWindow`, `DataConversionHelper`): `available` inside it,
/// with the update as the action says; once it closes on an action already under way,
/// `unavailable` with `update: skip` (the download may go on), and the link's `c=` changes.
/// The window is in its own time zone (Kathmandu, UTC+05:45: read as UTC it would be shut).
/// It closes at the next minute boundary at least 10 s away, so the test waits up to ~70 s.
#[tokio::test]
async fn a_rollout_s_maintenance_window_reaches_the_deployment() {
    use chrono::Timelike;
    let now = chrono::Utc::now().with_timezone(&chrono_tz::Asia::Kathmandu);
    // The window closes at the first minute boundary at least 30 s away: room for the setup and
    // the first poll and GET on a loaded machine (with 10 s, the window sometimes closed between
    // the poll and the GET of the "open" half).
    let closes = now + chrono::Duration::seconds(90 - i64::from((now + chrono::Duration::seconds(30)).second()));
    let window = json!({"start": (now - chrono::Duration::hours(1)).format("%H:%M").to_string(),
                        "end": closes.format("%H:%M").to_string(), "time_zone": "Asia/Kathmandu"});
    let (ddi, _) = windowed(window.clone()).await;
    let deployment = async || -> (String, Value) {
        let poll = ddi.poll().await;
        let href =
            poll["_links"]["deploymentBase"]["href"].as_str().unwrap_or_else(|| panic!("a deployment ({window}): {poll}")).to_string();
        let body: Value = ddi.request(Method::GET, &href).send().await.unwrap().json().await.unwrap();
        (href, body["deployment"].clone())
    };
    let (open_href, open) = deployment().await;
    let fields = |d: &Value| json!({"download": d["download"], "update": d["update"], "maintenanceWindow": d["maintenanceWindow"]});
    assert_eq!(fields(&open), json!({"download": "forced", "update": "forced", "maintenanceWindow": "available"}), "{window} at {now}");

    let mut closed = (open_href.clone(), open);
    for _ in 0..200 {
        if closed.1["maintenanceWindow"] == "unavailable" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        closed = deployment().await;
    }
    assert_eq!(closed.1["maintenanceWindow"], "unavailable", "the window never closed: {}", closed.1);
    // The poll and the GET of that round may straddle the window's end (the link read while
    // it was open, the body after): ask once more, now that both come after it.
    let (closed_href, closed) = deployment().await;
    assert_eq!((closed["maintenanceWindow"].clone(), closed["update"].clone()), (json!("unavailable"), json!("skip")), "{closed}");
    assert_eq!(closed["download"], "forced", "the download may go on, and a forced rollout stays forced as in hawkBit: {closed}");
    assert_ne!(open_href, closed_href, "the link changes with the window");
    assert_eq!(open_href.split('?').next(), closed_href.split('?').next(), "the same action");
    ddi.app.stop().await;
}

/// Issue 16: `closed` with `finished: none` is a finished action in hawkBit
/// (docs/direct-device-integration-api.md: closed + success or none → FINISHED; only
/// `failure` is an error): Updraft counts it a success too.
#[tokio::test]
async fn closed_with_finished_none_counts_as_a_success_as_in_hawkbit() {
    let (ddi, rollout_id, _) = setup().await;
    let action = action_of(&ddi.poll().await["_links"]["deploymentBase"]);
    let closed = json!({"id": action, "status": {"execution": "closed", "result": {"finished": "none"}, "details": ["Done"]}});
    assert_eq!(ddi.feedback(action, closed).await.status(), 200);
    let updates = admin_json(&ddi.app, Method::GET, &format!("/api/v1/devices/{}/updates", ddi.device_id), None).await;
    assert_eq!(updates["items"][0]["state"], "succeeded", "{updates}");
    let rollout = admin_json(&ddi.app, Method::GET, &format!("/api/v1/rollouts/{rollout_id}"), None).await;
    assert_eq!((rollout["counts"]["succeeded"].clone(), rollout["counts"]["failed"].clone()), (json!(1), json!(0)), "{rollout}");
    // The same without any `result`.
    let (ddi, _, _) = setup().await;
    let action = action_of(&ddi.poll().await["_links"]["deploymentBase"]);
    assert_eq!(ddi.feedback(action, json!({"id": action, "status": {"execution": "closed"}})).await.status(), 200);
    let updates = admin_json(&ddi.app, Method::GET, &format!("/api/v1/devices/{}/updates", ddi.device_id), None).await;
    assert_eq!(updates["items"][0]["state"], "succeeded", "{updates}");
}

//! The routes the web dashboard needs (issue 15): the fleet summary, the rollout preview and
//! the deletion of drafts, bulk device changes, update attempts across the fleet, build usage,
//! the server's description and the sign-in methods. Each against the real server, with its
//! role checks and bad input.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

/// An API key with `role`.
async fn key(app: &TestApp, role: &str) -> String {
    let body = json!({"name": format!("dashboard-{role}"), "role": role});
    let response = app.admin(Method::POST, "/api/v1/api-keys").json(&body).send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    body["key"].as_str().unwrap().to_string()
}

fn with_key(app: &TestApp, key: &str, method: Method, path: &str) -> reqwest::RequestBuilder {
    app.client.request(method, app.url(path)).bearer_auth(key)
}

/// The JSON answer of a request, which must have `status`.
async fn answer(request: reqwest::RequestBuilder, status: u16) -> Value {
    let response = request.send().await.unwrap();
    let got = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(got, status, "{body}");
    body
}

async fn get(app: &TestApp, path: &str) -> Value {
    answer(app.admin(Method::GET, path), 200).await
}

/// Registers a device; returns its id (and its token when `token`).
async fn register(app: &TestApp, body: Value) -> (String, Option<String>) {
    let body = answer(app.admin(Method::POST, "/api/v1/devices").json(&body), 201).await;
    (body["id"].as_str().unwrap().to_string(), body["token"].as_str().map(str::to_string))
}

async fn checkin(app: &TestApp, token: &str, version: &str) -> Value {
    let request = app.client.post(app.url("/api/v1/device/checkin")).bearer_auth(token).json(&json!({"version": version}));
    answer(request, 200).await
}

async fn upload(app: &TestApp, product: &str, version: &str, hardware: &str, seed: u64) -> String {
    let artifact = app.create_artifact(random_bytes(2048, seed), &format!("product={product}&version={version}&hardware={hardware}")).await;
    artifact["id"].as_str().unwrap().to_string()
}

/// A release `lamp` 2.0.0 (with an open 1.0.0 build before it); returns (release id, build id).
async fn lamp_release(app: &TestApp) -> (String, String) {
    upload(app, "lamp", "1.0.0", "esp32", 1).await;
    let build = upload(app, "lamp", "2.0.0", "esp32", 2).await;
    let body = json!({"product": "lamp", "version": "2.0.0", "artifact_ids": [build]});
    let release = answer(app.admin(Method::POST, "/api/v1/releases").json(&body), 201).await;
    (release["id"].as_str().unwrap().to_string(), build)
}

fn bucket(list: &Value, key: Value) -> u64 {
    list.as_array().unwrap().iter().find(|b| b["key"] == key).map(|b| b["count"].as_u64().unwrap()).unwrap_or(0)
}

#[tokio::test]
async fn the_summary_counts_presence_versions_products_and_hardware_in_one_answer() {
    let app = spawn_app().await;
    for i in 0..3 {
        register(&app, json!({"mac": format!("02:00:00:01:00:0{i}"), "product": "lamp", "hardware": "esp32", "version": "1.0.0"})).await;
    }
    register(&app, json!({"mac": "02:00:00:01:00:10", "product": "lamp", "hardware": "esp32s3", "version": "1.1.0"})).await;
    register(&app, json!({"mac": "02:00:00:01:00:11", "product": "fan"})).await;
    let (_, token) =
        register(&app, json!({"mac": "02:00:00:01:00:12", "product": "fan", "hardware": "esp32", "version": "3.0.0", "issue_token": true}))
            .await;
    checkin(&app, &token.unwrap(), "3.0.0").await;

    let viewer = key(&app, "viewer").await;
    let all = answer(with_key(&app, &viewer, Method::GET, "/api/v1/devices/summary"), 200).await;
    assert_eq!((all["total"].as_u64(), all["online"].as_u64(), all["offline"].as_u64()), (Some(6), Some(1), Some(5)), "{all}");
    assert_eq!(bucket(&all["by_version"], json!("1.0.0")), 3);
    assert_eq!(bucket(&all["by_version"], json!("1.1.0")), 1);
    assert_eq!(bucket(&all["by_version"], json!("3.0.0")), 1);
    assert_eq!(bucket(&all["by_version"], Value::Null), 1, "a device that never reported a version counts under null");
    assert_eq!(bucket(&all["by_product"], json!("lamp")), 4);
    assert_eq!(bucket(&all["by_product"], json!("fan")), 2);
    assert_eq!(bucket(&all["by_hardware"], json!("esp32")), 4);
    assert_eq!(bucket(&all["by_hardware"], Value::Null), 1);
    // Largest first.
    assert_eq!(all["by_version"][0], json!({"key": "1.0.0", "count": 3}));
    assert_eq!(all["by_product"][0], json!({"key": "lamp", "count": 4}));

    let fan = get(&app, "/api/v1/devices/summary?product=fan").await;
    assert_eq!((fan["total"].as_u64(), fan["online"].as_u64()), (Some(2), Some(1)), "{fan}");
    assert_eq!(fan["by_product"], json!([{"key": "fan", "count": 2}]));
    let none = get(&app, "/api/v1/devices/summary?product=nothing").await;
    assert_eq!(none, json!({"total": 0, "online": 0, "offline": 0, "by_version": [], "by_product": [], "by_hardware": []}));

    assert_eq!(error_code(app.admin(Method::GET, "/api/v1/devices/summary?colour=red").send().await.unwrap(), 400).await, "invalid_query");
    let anonymous = app.client.get(app.url("/api/v1/devices/summary")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn the_preview_counts_what_a_rollout_would_target_and_creates_nothing() {
    let app = spawn_app().await;
    let (release, _) = lamp_release(&app).await;
    for i in 0..20 {
        let tags = if i < 8 { json!(["north"]) } else { json!([]) };
        register(
            &app,
            json!({"mac": format!("02:00:00:02:00:{i:02x}"), "product": "lamp", "hardware": "esp32", "version": "1.0.0", "tags": tags}),
        )
        .await;
    }
    register(&app, json!({"mac": "02:00:00:02:01:00", "product": "fan", "hardware": "esp32", "version": "1.0.0"})).await;
    // A draft on the northern devices, to overlap with.
    let draft = answer(
        app.admin(Method::POST, "/api/v1/rollouts").json(&json!({"release_id": release, "name": "north", "target": {"tags": ["north"]}})),
        201,
    )
    .await;
    let before = get(&app, "/api/v1/rollouts").await;
    let audit_before = get(&app, "/api/v1/audit?action=create_rollout").await["total"].as_u64().unwrap();

    let body = json!({"release_id": release, "stages": [{"count": 5}, {"percent": 50}, {"percent": 100}]});
    let viewer = key(&app, "viewer").await;
    let preview = answer(with_key(&app, &viewer, Method::POST, "/api/v1/rollouts/preview").json(&body), 200).await;
    assert_eq!(preview["target_size"], 20, "{preview}");
    let stages = preview["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 3);
    assert_eq!(stages[0], json!({"number": 1, "percent": null, "count": 5, "devices": 5}));
    assert_eq!(stages[2]["percent"], 100.0);
    let sum: u64 = stages.iter().map(|s| s["devices"].as_u64().unwrap()).sum();
    assert_eq!(sum, 20, "the stages together cover the target: {preview}");
    assert_eq!(
        preview["overlaps"],
        json!([{"rollout_id": draft["id"], "release_id": release, "name": "north", "state": "draft", "release_version": "2.0.0", "devices": 8}])
    );

    // Nothing was created: the same rollouts, no new creation in the audit log.
    assert_eq!(get(&app, "/api/v1/rollouts").await, before);
    assert_eq!(get(&app, "/api/v1/audit?action=create_rollout").await["total"].as_u64().unwrap(), audit_before);

    // The target narrows as in a creation.
    let north = json!({"release_id": release, "target": {"tags": ["north"]}});
    assert_eq!(answer(app.admin(Method::POST, "/api/v1/rollouts/preview").json(&north), 200).await["target_size"], 8);
    let one = json!({"release_id": release, "target": {"devices": ["02:00:00:02:00:00"]}, "stages": [{"percent": 100}]});
    let one = answer(app.admin(Method::POST, "/api/v1/rollouts/preview").json(&one), 200).await;
    assert_eq!((one["target_size"].as_u64(), one["stages"][0]["devices"].as_u64()), (Some(1), Some(1)), "{one}");

    // The creation's errors, and the creation agrees on the count.
    for (bad, status, code) in [
        (json!({"release_id": "00000000-0000-7000-8000-000000000009"}), 422, "unknown_release"),
        (json!({"release_id": release, "colour": "red"}), 400, "invalid_json"),
        (json!({"release_id": release, "stages": [{"percent": 50}, {"percent": 10}]}), 400, "invalid_stages"),
        (json!({"release_id": release, "target": {"devices": ["02:00:00:09:09:09"]}}), 0, ""),
    ] {
        let preview = app.admin(Method::POST, "/api/v1/rollouts/preview").json(&bad).send().await.unwrap();
        let create = app.admin(Method::POST, "/api/v1/rollouts").json(&bad).send().await.unwrap();
        let (preview_status, create_status) = (preview.status().as_u16(), create.status().as_u16());
        let (preview_body, create_body): (Value, Value) = (preview.json().await.unwrap(), create.json().await.unwrap());
        assert_eq!(preview_status, create_status, "{bad}: {preview_body} vs {create_body}");
        assert_eq!(preview_body["error"]["code"], create_body["error"]["code"], "{bad}");
        if status != 0 {
            assert_eq!((preview_status, preview_body["error"]["code"].as_str().unwrap()), (status, code), "{bad}");
        }
    }
    let created = answer(app.admin(Method::POST, "/api/v1/rollouts").json(&body), 201).await;
    assert_eq!(created["target_size"], 0, "a draft counts when it starts");
    let started = answer(app.admin(Method::POST, &format!("/api/v1/rollouts/{}/start", created["id"].as_str().unwrap())), 200).await;
    assert_eq!(started["target_size"], 20);
    assert_eq!(started["stages"][0]["devices"], 5, "a count stage is exact");
    app.stop().await;
}

#[tokio::test]
async fn a_draft_can_be_deleted_by_an_operator_and_a_started_rollout_cannot() {
    let app = spawn_app().await;
    let (release, _) = lamp_release(&app).await;
    register(&app, json!({"mac": "02:00:00:03:00:01", "product": "lamp", "hardware": "esp32", "version": "1.0.0"})).await;
    let draft = answer(app.admin(Method::POST, "/api/v1/rollouts").json(&json!({"release_id": release})), 201).await;
    let path = format!("/api/v1/rollouts/{}", draft["id"].as_str().unwrap());

    let viewer = key(&app, "viewer").await;
    assert_eq!(with_key(&app, &viewer, Method::DELETE, &path).send().await.unwrap().status(), 403);
    let operator = key(&app, "operator").await;
    assert_eq!(with_key(&app, &operator, Method::DELETE, &path).send().await.unwrap().status(), 204);
    assert_eq!(app.admin(Method::GET, &path).send().await.unwrap().status(), 404);
    assert_eq!(error_code(app.admin(Method::DELETE, &path).send().await.unwrap(), 404).await, "not_found");
    assert_eq!(get(&app, "/api/v1/rollouts").await["items"], json!([]));
    let record = get(&app, "/api/v1/audit?action=delete_rollout&result=ok").await;
    assert_eq!(record["total"], 1, "{record}");
    assert_eq!(record["items"][0]["actor"], "key:dashboard-operator");

    // A release whose only rollout was a deleted draft can be deleted again.
    let running = answer(app.admin(Method::POST, "/api/v1/rollouts").json(&json!({"release_id": release, "start": true})), 201).await;
    let path = format!("/api/v1/rollouts/{}", running["id"].as_str().unwrap());
    assert_eq!(error_code(app.admin(Method::DELETE, &path).send().await.unwrap(), 409).await, "rollout_not_draft");
    answer(app.admin(Method::POST, &format!("{path}/cancel")), 200).await;
    assert_eq!(error_code(app.admin(Method::DELETE, &path).send().await.unwrap(), 409).await, "rollout_not_draft");
    assert_eq!(get(&app, &path).await["state"], "cancelled");
    assert_eq!(get(&app, &format!("{path}/history")).await["items"].as_array().unwrap().len(), 3);
    app.stop().await;
}

async fn bulk(app: &TestApp, body: Value, status: u16) -> Value {
    answer(app.admin(Method::POST, "/api/v1/devices/bulk").json(&body), status).await
}

#[tokio::test]
async fn bulk_changes_tag_pin_and_unpin_each_device_through_the_single_device_rules() {
    let app = spawn_app().await;
    // The anti-rollback floor of `lamp` is 2.0.0; `fan` has none.
    let floor = json!({"provisioning": "open", "min_version": "2.0.0"});
    answer(app.admin(Method::PUT, "/api/v1/products/lamp").json(&floor), 200).await;
    let (lamp, _) = register(&app, json!({"mac": "02:00:00:04:00:01", "product": "lamp", "version": "2.1.0", "tags": ["old"]})).await;
    let (fan, _) = register(&app, json!({"mac": "02:00:00:04:00:02", "product": "fan", "version": "1.0.0"})).await;
    let (other, _) = register(&app, json!({"mac": "02:00:00:04:00:03", "product": "fan", "version": "1.0.0", "owner": "kim"})).await;

    // By list (ids and MACs): the pin below lamp's floor is refused for lamp only, as PATCH would.
    let single = app.admin(Method::PATCH, &format!("/api/v1/devices/{lamp}")).json(&json!({"target_version": "1.5.0"}));
    let single_code = error_code(single.send().await.unwrap(), 409).await;
    let body = json!({"devices": [lamp, "02-00-00-04-00-02", "02:00:00:09:09:09"], "set": {"tags_add": ["new"], "tags_remove": ["old"], "target_version": "1.5.0"}});
    let result = bulk(&app, body, 200).await;
    assert_eq!((result["matched"].as_u64(), result["changed"].as_u64()), (Some(3), Some(1)), "{result}");
    let results = result["results"].as_array().unwrap();
    assert_eq!(results[0]["device_id"], lamp);
    assert_eq!((results[0]["ok"].clone(), results[0]["code"].as_str()), (json!(false), Some(single_code.as_str())));
    assert_eq!(single_code, "below_anti_rollback_floor");
    assert!(results[0]["message"].as_str().unwrap().contains("2.0.0"));
    assert_eq!(results[1], json!({"device_id": fan, "ok": true, "changed": true}));
    assert_eq!((results[2]["device_id"].as_str(), results[2]["code"].as_str()), (Some("02:00:00:09:09:09"), Some("not_found")));
    let lamp_now = get(&app, &format!("/api/v1/devices/{lamp}")).await;
    assert_eq!((lamp_now["tags"].clone(), lamp_now["target_version"].clone()), (json!(["old"]), Value::Null), "refused: unchanged");
    let fan_now = get(&app, &format!("/api/v1/devices/{fan}")).await;
    assert_eq!((fan_now["tags"].clone(), fan_now["target_version"].clone()), (json!(["new"]), json!("1.5.0")));

    // The same again changes nothing; by filter, `null` unpins.
    let again = bulk(&app, json!({"devices": [fan], "set": {"tags_add": ["new"], "target_version": "1.5.0"}}), 200).await;
    assert_eq!(again["results"][0], json!({"device_id": fan, "ok": true, "changed": false}));
    let unpin = bulk(&app, json!({"filter": {"product": "fan"}, "set": {"target_version": null}}), 200).await;
    assert_eq!((unpin["matched"].as_u64(), unpin["changed"].as_u64()), (Some(2), Some(1)), "{unpin}");
    assert_eq!(get(&app, &format!("/api/v1/devices/{fan}")).await["target_version"], Value::Null);
    let owned = bulk(&app, json!({"filter": {"owner": "kim", "q": "04:00"}, "set": {"tags_add": ["kims"]}}), 200).await;
    assert_eq!(owned["results"], json!([{"device_id": other, "ok": true, "changed": true}]));
    let pinned_above = bulk(&app, json!({"filter": {"product": "lamp"}, "set": {"target_version": "2.2.0"}}), 200).await;
    assert_eq!(pinned_above["changed"], 1, "at or above the floor, a pin is fine");

    // Audited with the actor, like PATCH.
    let record = get(&app, "/api/v1/audit?action=bulk_devices").await;
    assert_eq!(record["items"][0]["actor"], "key:admin", "{record}");

    // Bad input.
    for (bad, status, code) in [
        (json!({"devices": [fan], "filter": {}, "set": {"tags_add": ["x"]}}), 400, "invalid_bulk"),
        (json!({"set": {"tags_add": ["x"]}}), 400, "invalid_bulk"),
        (json!({"devices": [], "set": {"tags_add": ["x"]}}), 400, "invalid_bulk"),
        (json!({"devices": [fan], "set": {}}), 400, "nothing_to_change"),
        (json!({"devices": [fan], "set": {"tags_add": ["no spaces"]}}), 400, "invalid_tag"),
        (json!({"devices": [fan], "set": {"target_version": "not a version"}}), 400, "invalid_version"),
        (json!({"devices": [fan], "set": {"name": "x"}}), 400, "invalid_json"),
        (json!({"devices": [fan], "set": {"tags_add": ["x"]}, "force": true}), 400, "invalid_json"),
        (json!({"filter": {"colour": "red"}, "set": {"tags_add": ["x"]}}), 400, "invalid_json"),
        (json!({"filter": {"status": "asleep"}, "set": {"tags_add": ["x"]}}), 400, "invalid_query"),
        (json!({"filter": {"last_seen_before": "yesterday"}, "set": {"tags_add": ["x"]}}), 400, "invalid_query"),
    ] {
        let response = app.admin(Method::POST, "/api/v1/devices/bulk").json(&bad).send().await.unwrap();
        assert_eq!(error_code(response, status).await, code, "{bad}");
    }
    let many: Vec<String> = (0..10_001).map(|i| format!("02:00:{:02x}:{:02x}:00:00", i / 256, i % 256)).collect();
    let too_many = app.admin(Method::POST, "/api/v1/devices/bulk").json(&json!({"devices": many, "set": {"tags_add": ["x"]}}));
    let response = too_many.send().await.unwrap();
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_devices");
    assert!(body["error"]["message"].as_str().unwrap().contains("10000"), "{body}");

    // Roles: a viewer may not.
    let viewer = key(&app, "viewer").await;
    let response =
        with_key(&app, &viewer, Method::POST, "/api/v1/devices/bulk").json(&json!({"devices": [fan], "set": {"tags_add": ["x"]}}));
    assert_eq!(response.send().await.unwrap().status(), 403);
    app.stop().await;
}

#[tokio::test]
async fn bulk_changes_by_filter_are_capped_at_ten_thousand_devices() {
    let app = spawn_app().await;
    let rows: Vec<Value> =
        (0..10_001).map(|i| json!({"mac": format!("02:01:{:02x}:{:02x}:00:00", i / 256, i % 256), "product": "bulb"})).collect();
    let imported = answer(app.admin(Method::POST, "/api/v1/devices/import").json(&rows[..10_000]), 200).await;
    assert_eq!(imported["created"], 10_000);
    let at_cap = bulk(&app, json!({"filter": {"product": "bulb"}, "set": {"tags_add": ["cap"]}}), 200).await;
    assert_eq!((at_cap["matched"].as_u64(), at_cap["changed"].as_u64()), (Some(10_000), Some(10_000)));
    answer(app.admin(Method::POST, "/api/v1/devices/import").json(&rows[10_000..]), 200).await;
    let over = app.admin(Method::POST, "/api/v1/devices/bulk").json(&json!({"filter": {"product": "bulb"}, "set": {"tags_add": ["x"]}}));
    assert_eq!(error_code(over.send().await.unwrap(), 422).await, "too_many_devices");
    assert_eq!(get(&app, "/api/v1/devices?tag=x&limit=1").await["total"], 0, "nothing was changed");
    app.stop().await;
}

#[tokio::test]
async fn recent_failures_are_listed_across_the_fleet() {
    let app = spawn_app().await;
    upload(&app, "lamp", "1.1.0", "esp32", 3).await;
    let mut tokens = Vec::new();
    for i in 0..3 {
        let body = json!({"mac": format!("02:00:00:05:00:0{i}"), "name": format!("lamp {i}"), "product": "lamp", "hardware": "esp32", "version": "1.0.0", "issue_token": true});
        let (id, token) = register(&app, body).await;
        let token = token.unwrap();
        assert_eq!(checkin(&app, &token, "1.0.0").await["update"]["version"], "1.1.0");
        tokens.push((id, token));
    }
    let report = |token: String, state: &'static str| {
        let request =
            app.client.post(app.url("/api/v1/device/update-status")).bearer_auth(token).json(&json!({"state": state, "message": "boom"}));
        async move { assert_eq!(request.send().await.unwrap().status(), 200) }
    };
    report(tokens[0].1.clone(), "failed").await;
    report(tokens[1].1.clone(), "downloading").await;

    let viewer = key(&app, "viewer").await;
    let failed = answer(with_key(&app, &viewer, Method::GET, "/api/v1/updates?state=failed"), 200).await;
    assert_eq!(failed["total"], 1, "{failed}");
    let item = &failed["items"][0];
    assert_eq!((item["device_id"].as_str(), item["device_name"].as_str()), (Some(tokens[0].0.as_str()), Some("lamp 0")));
    assert_eq!((item["mac"].as_str(), item["product"].as_str()), (Some("02:00:00:05:00:00"), Some("lamp")));
    assert_eq!(
        (item["state"].as_str(), item["to_version"].as_str(), item["message"].as_str()),
        (Some("failed"), Some("1.1.0"), Some("boom"))
    );
    let events: Vec<&str> = item["events"].as_array().unwrap().iter().map(|e| e["state"].as_str().unwrap()).collect();
    assert_eq!(events, ["offered", "failed"]);

    let all = get(&app, "/api/v1/updates").await;
    assert_eq!(all["total"], 3);
    assert_eq!(all["items"][0]["state"], "downloading", "the latest change first: {all}");
    assert_eq!(get(&app, "/api/v1/updates?state=failed,downloading").await["total"], 2);
    assert_eq!(get(&app, "/api/v1/updates?product=fan").await["total"], 0);
    let page = get(&app, "/api/v1/updates?limit=1&offset=1").await;
    assert_eq!((page["items"].as_array().unwrap().len(), page["total"].as_u64(), page["limit"].as_u64()), (1, Some(3), Some(1)));
    let since = (chrono::Utc::now() + chrono::Duration::minutes(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(get(&app, &format!("/api/v1/updates?since={since}")).await["total"], 0);
    let earlier = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(get(&app, &format!("/api/v1/updates?state=failed&since={earlier}")).await["total"], 1);

    for bad in ["state=exploded", "since=yesterday", "since=2026-13-01T00:00:00Z", "limit=0", "limit=501", "colour=red"] {
        let response = app.admin(Method::GET, &format!("/api/v1/updates?{bad}")).send().await.unwrap();
        assert_eq!(response.status(), 400, "{bad}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{bad}: {body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn build_usage_names_releases_rollouts_and_devices() {
    let app = spawn_app().await;
    let (release, build) = lamp_release(&app).await;
    let old = app.list_artifacts("product=lamp&version=1.0.0").await["items"][0]["id"].as_str().unwrap().to_string();
    register(&app, json!({"mac": "02:00:00:06:00:01", "product": "lamp", "hardware": "esp32", "version": "2.0.0"})).await;
    register(&app, json!({"mac": "02:00:00:06:00:02", "product": "lamp", "hardware": "esp32", "version": "2.0"})).await;
    register(&app, json!({"mac": "02:00:00:06:00:03", "product": "lamp", "hardware": "esp32s3", "version": "2.0.0"})).await;
    register(
        &app,
        json!({"mac": "02:00:00:06:00:04", "product": "lamp", "hardware": "esp32", "version": "1.0.0", "target_version": "2.0.0"}),
    )
    .await;
    let rollout = answer(app.admin(Method::POST, "/api/v1/rollouts").json(&json!({"release_id": release, "name": "r1"})), 201).await;

    let viewer = key(&app, "viewer").await;
    let usage = answer(with_key(&app, &viewer, Method::GET, &format!("/api/v1/firmware/{build}/usage")), 200).await;
    assert_eq!(usage["releases"], json!([{"id": release, "product": "lamp", "version": "2.0.0", "channel": "stable"}]));
    assert_eq!(usage["rollouts"], json!([{"id": rollout["id"], "name": "r1", "state": "draft", "release_id": release}]));
    // 2.0 is 2.0.0; the esp32s3 device does not run this esp32 build.
    assert_eq!((usage["devices_running"].as_u64(), usage["devices_pinned"].as_u64()), (Some(2), Some(1)), "{usage}");
    assert_eq!(usage["devices_offered"], 0);
    let old_usage = get(&app, &format!("/api/v1/firmware/{old}/usage")).await;
    assert_eq!(old_usage, json!({"releases": [], "rollouts": [], "devices_running": 1, "devices_pinned": 0, "devices_offered": 0}));

    // The list carries the counts of every build.
    let list = get(&app, "/api/v1/firmware?product=lamp").await;
    let usage_of = |id: &str| list["items"].as_array().unwrap().iter().find(|a| a["id"] == id).unwrap()["usage"].clone();
    assert_eq!(usage_of(&build), json!({"releases": 1, "devices_running": 2}));
    assert_eq!(usage_of(&old), json!({"releases": 0, "devices_running": 1}));
    assert_eq!(get(&app, &format!("/api/v1/firmware/{build}")).await["usage"], json!({"releases": 1, "devices_running": 2}));

    let unknown = app.admin(Method::GET, "/api/v1/firmware/00000000-0000-7000-8000-000000000009/usage").send().await.unwrap();
    assert_eq!(error_code(unknown, 404).await, "not_found");
    app.stop().await;
}

#[tokio::test]
async fn the_server_describes_what_it_runs_on_to_any_role() {
    let app = spawn_app().await;
    register(&app, json!({"mac": "02:00:00:07:00:01"})).await;
    let viewer = key(&app, "viewer").await;
    let info = answer(with_key(&app, &viewer, Method::GET, "/api/v1/server"), 200).await;
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    let database = if std::env::var("UPDRAFT_TEST_DATABASE").is_ok_and(|v| v != "sqlite") { "postgres" } else { "sqlite" };
    assert_eq!(info["database"], database);
    assert_eq!(info["blob_store"], if uses_local_blobs() { "local" } else { "s3" });
    assert_eq!(info["mqtt"], "embedded");
    assert_eq!((info["oidc"].clone(), info["devices"].clone(), info["public_url"].clone()), (json!(false), json!(1), Value::Null));
    assert!(info["uptime_s"].as_u64().is_some());
    let started = chrono::DateTime::parse_from_rfc3339(info["started_at"].as_str().unwrap()).unwrap();
    assert!(started <= chrono::Utc::now());
    assert_eq!(app.client.get(app.url("/api/v1/server")).send().await.unwrap().status(), 401);
    app.stop().await;

    let app = spawn_app_with(|s| {
        s.mqtt.enabled = false;
        s.public_url = Some("https://fleet.example.com/".parse().unwrap());
    })
    .await;
    let info = get(&app, "/api/v1/server").await;
    assert_eq!((info["mqtt"].as_str(), info["public_url"].as_str()), (Some("off"), Some("https://fleet.example.com")));
    app.stop().await;
}

#[tokio::test]
async fn the_sign_in_page_learns_the_methods_without_a_credential() {
    let app = spawn_app().await;
    let methods = answer(app.client.get(app.url("/api/v1/session/methods")), 200).await;
    assert_eq!(methods, json!({"password": true, "api_key": true, "oidc": false}));
    app.stop().await;
}

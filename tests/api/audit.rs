//! The audit log (`GET /api/v1/audit`, its JSON-lines export, retention) and the
//! per-credential limits of the expensive routes.

use reqwest::Method;
use serde_json::{Value, json};
use updraft::config::Rate;

use crate::helpers::*;

/// The audit log's records matching `query`, newest first, and their total.
async fn audit(app: &TestApp, query: &str) -> (Vec<Value>, u64) {
    let response = app.admin(Method::GET, &format!("/api/v1/audit?{query}")).send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    (body["items"].as_array().unwrap().clone(), body["total"].as_u64().unwrap())
}

/// The one record of `action`.
async fn only(app: &TestApp, action: &str) -> Value {
    let (items, total) = audit(app, &format!("action={}", url_encoded(action))).await;
    assert_eq!(total, 1, "{items:?}");
    items[0].clone()
}

fn url_encoded(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[tokio::test]
async fn every_kind_of_operator_action_is_recorded_with_who_what_target_where_and_result() {
    let app = spawn_app_with(|s| {
        s.compat.admin_api_key = Some("seed001-old-key".into());
        s.compat.default_product = Some("panic".into());
    })
    .await;

    // An MQTT credential change.
    let put = app.admin(Method::PUT, "/api/v1/mqtt/users/alice").json(&json!({"password": "secret-pass-1", "role": "fleet-read"}));
    let response = put.header("x-request-id", "req-put-alice").send().await.unwrap();
    assert_eq!(response.status(), 201);
    let record = only(&app, "put_user").await;
    assert_eq!(record["actor"], "key:admin");
    assert_eq!(record["role"], "admin");
    assert_eq!(record["method"], "PUT");
    assert_eq!(record["route"], "/api/v1/mqtt/users/{username}");
    assert_eq!(record["target"], "/api/v1/mqtt/users/alice");
    assert_eq!(record["resource"], "alice");
    assert_eq!(record["ip"], "127.0.0.1");
    assert_eq!(record["status"], 201);
    assert_eq!(record["result"], "ok");
    assert_eq!(record["request_id"], "req-put-alice");
    assert!(record["at"].as_str().is_some_and(|at| chrono::DateTime::parse_from_rfc3339(at).is_ok()));

    // A deletion that fails (404) is recorded as failed.
    let response = app.admin(Method::DELETE, "/api/v1/mqtt/users/nobody").send().await.unwrap();
    assert_eq!(response.status(), 404);
    let record = only(&app, "delete_user").await;
    assert_eq!((record["status"].clone(), record["result"].clone()), (json!(404), json!("failed")));

    // Seed 001's admin API, which the OpenAPI document does not list, with its own old key.
    let response = app
        .client
        .post(app.url("/admin/api/devices"))
        .header("X-Admin-API-Key", "seed001-old-key")
        .json(&json!({
            "mac_address": "aabbccddee01",
            "device_id": "Panic_0001",
            "target_version": "1.0.0",
            "firmware_url": "http://0.0.0.0:5000/firmware/p.bin",
            "checksum": "00000000000000000000000000000000",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let record = only(&app, "POST /admin/api/devices").await;
    assert_eq!(record["actor"], "key:compat-admin");
    assert_eq!(record["result"], "ok");
    let response = app.client.delete(app.url("/admin/api/devices/aabbccddee01")).header("X-Admin-API-Key", ADMIN_KEY).send().await.unwrap();
    assert!(response.status().is_success());
    let record = only(&app, "DELETE /admin/api/devices/{mac}").await;
    assert_eq!((record["actor"].clone(), record["resource"].clone()), (json!("key:admin"), json!("aabbccddee01")));

    // Seed 003's upload, authorised by its signature rather than a credential: recorded
    // with a note saying so (here refused: no signature).
    let form = reqwest::multipart::Form::new().part("file", reqwest::multipart::Part::bytes(vec![1, 2, 3]).file_name("a.bin"));
    let response = app.client.post(app.url("/api/assets")).multipart(form).send().await.unwrap();
    assert!(response.status().is_client_error());
    let (uploads, _) = audit(&app, "actor=anonymous").await;
    let upload = uploads.iter().find(|r| r["route"] == "/api/assets").expect("the seed-003 upload is recorded");
    assert_eq!(upload["action"], "upload_asset");
    assert!(upload["note"].as_str().is_some_and(|n| n.contains("signed")), "{upload}");

    // A rollout transition and a device write.
    let response =
        app.admin(Method::POST, "/api/v1/devices").json(&json!({"mac": "02:00:00:14:00:01", "product": "lamp"})).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let device: Value = response.json().await.unwrap();
    let record = only(&app, "create_device").await;
    assert_eq!((record["target"].clone(), record["resource"].clone()), (json!("/api/v1/devices"), Value::Null));
    let id = device["id"].as_str().unwrap();
    let response = app.admin(Method::PATCH, &format!("/api/v1/devices/{id}")).json(&json!({"tags": ["north"]})).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(only(&app, "patch_device").await["resource"], id);
    app.stop().await;
}

#[tokio::test]
async fn refused_attempts_are_recorded_as_denied_and_anonymous() {
    let app = spawn_app().await;
    let no_key = app.client.post(app.url("/api/v1/devices")).json(&json!({"mac": "02:00:00:14:00:02"})).send().await.unwrap();
    assert_eq!(no_key.status(), 401);
    let wrong_key = app.client.put(app.url("/api/v1/mqtt/users/mallory")).bearer_auth("not-the-key").json(&json!({})).send().await.unwrap();
    assert_eq!(wrong_key.status(), 401);
    // A refused read of an admin route is recorded too; an allowed one is not.
    let read = app.client.get(app.url("/api/v1/audit")).send().await.unwrap();
    assert_eq!(read.status(), 401);
    assert_eq!(app.admin(Method::GET, "/api/v1/devices").send().await.unwrap().status(), 200);

    let (denied, total) = audit(&app, "result=denied").await;
    assert_eq!(total, 3, "{denied:?}");
    assert!(denied.iter().all(|r| r["actor"] == "anonymous" && r["status"] == 401 && r["role"].is_null()), "{denied:?}");
    let actions: Vec<&str> = denied.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["list_audit", "put_user", "create_device"], "newest first");
    assert_eq!(audit(&app, "result=401").await.1, 3);
    assert_eq!(audit(&app, "").await.1, 3, "the allowed read is not recorded");
    app.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_is_recorded() {
    let app = spawn_app_with(|s| s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    let response = app
        .admin(Method::PUT, "/api/v1/mqtt/users/bob")
        .header("X-Forwarded-For", "198.51.100.1, 203.0.113.9")
        .json(&json!({"password": "secret-pass-2", "role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(only(&app, "put_user").await["ip"], "203.0.113.9");
    // From an untrusted peer, its forged header counts for nothing.
    let response =
        app.admin_from(2, Method::DELETE, "/api/v1/mqtt/users/bob").header("X-Forwarded-For", "203.0.113.77").send().await.unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(only(&app, "delete_user").await["ip"], "127.0.0.2");
    app.stop().await;
}

#[tokio::test]
async fn filters_and_paging_narrow_the_log_and_the_export_is_json_lines() {
    let app = spawn_app().await;
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    for n in 0..5 {
        let response = app
            .admin(Method::PUT, &format!("/api/v1/mqtt/users/u{n}"))
            .json(&json!({"password": "secret-pass-3", "role": "admin"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    let response = app.client.delete(app.url("/api/v1/mqtt/users/u0")).send().await.unwrap();
    assert_eq!(response.status(), 401);

    assert_eq!(audit(&app, "").await.1, 6);
    assert_eq!(audit(&app, "actor=key:admin").await.1, 5);
    assert_eq!(audit(&app, "actor=anonymous").await.1, 1);
    assert_eq!(audit(&app, "action=put_user&result=ok").await.1, 5);
    assert_eq!(audit(&app, "action=put_user&result=denied").await.1, 0);
    let since = url_encoded(&before.to_rfc3339());
    assert_eq!(audit(&app, &format!("since={since}")).await.1, 6);
    assert_eq!(audit(&app, &format!("until={since}")).await.1, 0);
    let (page, total) = audit(&app, "action=put_user&limit=2&offset=1").await;
    assert_eq!(total, 5);
    let targets: Vec<&str> = page.iter().map(|r| r["target"].as_str().unwrap()).collect();
    assert_eq!(targets, ["/api/v1/mqtt/users/u3", "/api/v1/mqtt/users/u2"]);
    for bad in ["result=maybe", "since=yesterday", "limit=0", "colour=red"] {
        let response = app.admin(Method::GET, &format!("/api/v1/audit?{bad}")).send().await.unwrap();
        assert_eq!(error_code(response, 400).await, "invalid_query", "{bad}");
    }

    let response = app.admin(Method::GET, &format!("/api/v1/audit/export?since={since}")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let text = response.text().await.unwrap();
    let lines: Vec<Value> = text.lines().map(|line| serde_json::from_str(line).expect("each line is JSON")).collect();
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[0]["target"], "/api/v1/mqtt/users/u0", "oldest first");
    assert_eq!(lines[5]["result"], "denied");
    // Both routes are for admins only.
    for path in ["/api/v1/audit", "/api/v1/audit/export"] {
        assert_eq!(app.client.get(app.url(path)).send().await.unwrap().status(), 401);
    }
    app.stop().await;
}

#[tokio::test]
async fn the_export_streams_more_records_than_one_batch() {
    let app = spawn_app().await;
    let core = core_of(&app).await;
    let now = chrono::Utc::now();
    let records: Vec<_> =
        (0..1203).map(|n| record(&format!("/api/v1/devices/d{n}"), now - chrono::Duration::milliseconds(2000 - n))).collect();
    for chunk in records.chunks(200) {
        core.store.insert_audit_records(chunk).await.unwrap();
    }
    let response = app.admin(Method::GET, "/api/v1/audit/export").send().await.unwrap();
    let text = response.text().await.unwrap();
    let targets: Vec<String> =
        text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["target"].as_str().unwrap().to_string()).collect();
    assert_eq!(targets.len(), 1203);
    assert_eq!(targets.first().unwrap(), "/api/v1/devices/d0");
    assert_eq!(targets.last().unwrap(), "/api/v1/devices/d1202");
    app.stop().await;
}

fn record(target: &str, at: chrono::DateTime<chrono::Utc>) -> updraft::domain::audit::AuditRecord {
    updraft::domain::audit::AuditRecord {
        id: uuid::Uuid::now_v7().to_string(),
        at,
        actor: "key:admin".into(),
        role: Some("admin".into()),
        action: "patch_device".into(),
        method: "PATCH".into(),
        route: "/api/v1/devices/{id}".into(),
        target: target.into(),
        resource: None,
        ip: "127.0.0.1".into(),
        status: 200,
        outcome: updraft::domain::audit::Outcome::Ok,
        request_id: None,
        note: None,
    }
}

#[tokio::test]
async fn retention_prunes_what_is_older_and_keeps_the_rest() {
    let app = spawn_app().await;
    let core = core_of(&app).await;
    let now = chrono::Utc::now();
    let old: Vec<_> = (0..2500).map(|n| record(&format!("/old/{n}"), now - chrono::Duration::days(400))).collect();
    for chunk in old.chunks(250) {
        core.store.insert_audit_records(chunk).await.unwrap();
    }
    core.store.insert_audit_records(&[record("/recent", now - chrono::Duration::days(364))]).await.unwrap();
    assert_eq!(audit(&app, "").await.1, 2501);
    // The default retention is 365 days; the prune deletes in batches until none is left.
    assert_eq!(updraft::services::audit::prune(&core, now).await.unwrap(), 2500);
    let (items, total) = audit(&app, "").await;
    assert_eq!((total, items[0]["target"].as_str().unwrap()), (1, "/recent"));
    app.stop().await;
}

#[tokio::test]
async fn device_traffic_and_broker_hooks_add_nothing_to_the_audit() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/api/v1/device/provision"))
        .json(&json!({"mac": "02:00:00:14:00:09", "product": "lamp", "hardware": "esp32", "version": "1.0.0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let token = response.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string();
    for _ in 0..3 {
        let response = app.client.post(app.url("/api/v1/device/checkin")).bearer_auth(&token).json(&json!({})).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let response = app.client.get(app.url("/api/v1/device/checkin?version=1.0.0")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let wrong = app.client.post(app.url("/api/v1/device/checkin")).bearer_auth("upd_dev_wrong").json(&json!({})).send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let hook = app
        .client
        .post(app.url("/api/v1/mqtt/hooks/mosquitto/user"))
        .json(&json!({"username": "x", "password": "y"}))
        .send()
        .await
        .unwrap();
    assert!(hook.status().is_client_error() || hook.status().is_success());
    assert_eq!(audit(&app, "").await.1, 0);
    app.stop().await;
}

#[tokio::test]
async fn records_hold_no_secret_from_bodies_or_query_strings() {
    let app = spawn_app().await;
    let response = app
        .admin(Method::PUT, "/api/v1/mqtt/users/carol?token=query-secret-123")
        .json(&json!({"password": "body-secret-456", "role": "admin"}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error() || response.status().is_success());
    let response =
        app.client.put(app.url("/api/v1/mqtt/users/carol")).bearer_auth("bearer-secret-789").json(&json!({})).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let export = app.admin(Method::GET, "/api/v1/audit/export").send().await.unwrap().text().await.unwrap();
    assert_eq!(export.lines().count(), 2, "{export}");
    for secret in ["query-secret-123", "body-secret-456", "bearer-secret-789", ADMIN_KEY] {
        assert!(!export.contains(secret), "{secret} in {export}");
    }
    app.stop().await;
}

#[tokio::test]
async fn records_queued_before_a_shutdown_are_written() {
    let app = spawn_app().await;
    for n in 0..4 {
        let response = app
            .admin(Method::PUT, &format!("/api/v1/mqtt/users/s{n}"))
            .json(&json!({"password": "secret-pass-4", "role": "admin"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    let (settings, data_dir) = app.stop_keeping_data().await;
    let app = start(settings, data_dir).await;
    assert_eq!(audit(&app, "action=put_user").await.1, 4);
    app.stop().await;
}

// ---- per-credential limits ----

#[tokio::test]
async fn an_upload_burst_over_the_limit_gets_429_and_other_credentials_are_not_affected() {
    let app = spawn_app_with(|s| {
        s.limits.uploads = Rate { per_minute: 1, burst: 2 };
        s.compat.admin_api_key = Some("seed001-old-key".into());
    })
    .await;
    for _ in 0..2 {
        let response = app.upload_raw(b"not firmware".to_vec(), "product=lamp&version=1.0.0").await;
        assert_ne!(response.status(), 429);
    }
    let response = app.upload_raw(b"not firmware".to_vec(), "product=lamp&version=1.0.0").await;
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(error_code(response, 429).await, "too_many_requests");
    // The same credential in the other header shares the bucket, on every upload route.
    let response =
        app.client.post(app.url("/api/v1/assets/lamp/logo")).header("X-Admin-API-Key", ADMIN_KEY).body("x").send().await.unwrap();
    assert_eq!(response.status(), 429);
    // Another credential has its own bucket: seed 001's key uploads, a wrong key gets 401.
    let form = reqwest::multipart::Form::new().part("file", reqwest::multipart::Part::bytes(vec![1, 2, 3]).file_name("a.bin"));
    let response =
        app.client.post(app.url("/admin/api/firmware")).header("X-Admin-API-Key", "seed001-old-key").multipart(form).send().await.unwrap();
    assert_ne!(response.status(), 429);
    let response =
        app.client.post(app.url("/api/v1/firmware?product=lamp&version=1.0.0")).bearer_auth("someone-else").body("x").send().await.unwrap();
    assert_eq!(response.status(), 401);
    // The refusal is in the audit log.
    let (denied, _) = audit(&app, "result=429").await;
    assert!(denied.iter().any(|r| r["action"] == "upload_firmware" && r["actor"] == "anonymous"), "{denied:?}");
    // Reads are not limited.
    assert_eq!(app.admin(Method::GET, "/api/v1/firmware").send().await.unwrap().status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn seed001_uploads_over_the_limit_answer_in_their_own_form() {
    let app = spawn_app_with(|s| s.limits.uploads = Rate { per_minute: 1, burst: 1 }).await;
    let upload = || {
        let form = reqwest::multipart::Form::new().part("file", reqwest::multipart::Part::bytes(vec![1, 2, 3]).file_name("a.bin"));
        app.client.post(app.url("/admin/api/firmware")).header("X-Admin-API-Key", ADMIN_KEY).multipart(form).send()
    };
    assert_ne!(upload().await.unwrap().status(), 429);
    let response = upload().await.unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    assert!(response.json::<Value>().await.unwrap()["detail"].is_string());
    app.stop().await;
}

#[tokio::test]
async fn rollout_creation_is_limited_per_credential() {
    let app = spawn_app_with(|s| s.limits.rollouts = Rate { per_minute: 1, burst: 1 }).await;
    let create = || app.admin(Method::POST, "/api/v1/rollouts").json(&json!({"release_id": "nope"})).send();
    assert_ne!(create().await.unwrap().status(), 429);
    assert_eq!(error_code(create().await.unwrap(), 429).await, "too_many_requests");
    // Other rollout routes are not limited.
    assert_eq!(app.admin(Method::GET, "/api/v1/rollouts").send().await.unwrap().status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn the_public_lvgl_route_is_limited_per_address_whatever_credential_is_sent() {
    let app = spawn_app_with(|s| s.limits.lvgl = Rate { per_minute: 1, burst: 3 }).await;
    for n in 0..3 {
        let response = app.client.get(app.url("/api/images/lvgl")).bearer_auth(format!("made-up-{n}")).send().await.unwrap();
        assert_ne!(response.status(), 429);
    }
    let response = app.client.get(app.url("/api/images/lvgl")).bearer_auth("made-up-4").send().await.unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "TOO_MANY_REQUESTS", "seed 003's error body: {body}");
    assert!(body["correlationId"].as_str().is_some_and(|id| !id.is_empty()), "{body}");
    // Another address is not affected.
    let neighbour = reqwest::Client::builder().no_proxy().local_address(std::net::IpAddr::from([127, 0, 0, 3])).build().unwrap();
    let response = neighbour.get(app.url("/api/images/lvgl")).send().await.unwrap();
    assert_ne!(response.status(), 429);
    app.stop().await;
}

#[tokio::test]
async fn a_flood_of_unauthenticated_attempts_is_recorded_up_to_a_budget_per_address() {
    let app = spawn_app().await;
    let attacker = reqwest::Client::builder().no_proxy().local_address(std::net::IpAddr::from([127, 0, 0, 5])).build().unwrap();
    for _ in 0..45 {
        let response = attacker.post(app.url("/api/v1/devices")).bearer_auth("guess").json(&json!({})).send().await.unwrap();
        assert!(matches!(response.status().as_u16(), 401 | 429));
    }
    // The 401s, then the limiter's 429s: 30 recorded (the budget per address and minute).
    let (records, total) = audit(&app, "actor=anonymous&limit=500").await;
    assert_eq!(total, 30);
    assert!(records.iter().any(|r| r["status"] == 429) && records.iter().any(|r| r["status"] == 401));
    // An operator's own actions are still recorded.
    let response = app.admin(Method::POST, "/api/v1/groups").json(&json!({"name": "after-the-flood"})).send().await.unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(only(&app, "create_group").await["actor"], "key:admin");
    app.stop().await;
}

#[tokio::test]
async fn logins_are_recorded_with_who_tried_and_who_got_in_and_never_the_password() {
    let app = spawn_app().await;
    let user = json!({"username": "alice", "password": "correct horse battery", "role": "viewer"});
    assert_eq!(app.admin(Method::POST, "/api/v1/users").json(&user).send().await.unwrap().status(), 201);

    let wrong = json!({"username": "alice", "password": "wrong horse battery"});
    let response = app.client.post(app.url("/api/v1/session")).json(&wrong).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let right = json!({"username": "alice", "password": "correct horse battery"});
    let response = app.client.post(app.url("/api/v1/session")).json(&right).send().await.unwrap();
    assert_eq!(response.status(), 201);

    let (items, total) = audit(&app, "action=login").await;
    assert_eq!(total, 2, "{items:?}");
    // Newest first.
    assert_eq!((items[0]["actor"].clone(), items[0]["result"].clone()), (json!("user:alice"), json!("ok")), "{items:?}");
    assert_eq!(items[0]["role"], "viewer");
    assert_eq!((items[1]["actor"].clone(), items[1]["result"].clone()), (json!("anonymous"), json!("denied")), "{items:?}");
    assert_eq!(items[1]["note"], "username=alice");
    let text = serde_json::to_string(&items).unwrap();
    assert!(!text.contains("horse"), "a password reached the audit log: {text}");
}

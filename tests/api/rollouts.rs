//! Releases, groups and staged rollouts over the admin API and the native device protocol:
//! held builds, the life cycle and its history, success and failure rules, thresholds,
//! rollback and the anti-rollback floor, targets, windows, download slots, overlaps, bad
//! input, a restart in the middle of a rollout, and a simulation of 10,000 devices.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

async fn upload(app: &TestApp, product: &str, version: &str, hardware: &str, seed: u64) -> String {
    let artifact = app.create_artifact(random_bytes(2048, seed), &format!("product={product}&version={version}&hardware={hardware}")).await;
    artifact["id"].as_str().unwrap().to_string()
}

/// Registers a device with a token; returns (id, token).
async fn device(app: &TestApp, mac: &str, product: &str, version: &str, tags: &[&str]) -> (String, String) {
    let body = json!({"mac": mac, "product": product, "hardware": "esp32", "version": version, "tags": tags, "issue_token": true});
    let response = app.admin(Method::POST, "/api/v1/devices").json(&body).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    (body["id"].as_str().unwrap().to_string(), body["token"].as_str().unwrap().to_string())
}

async fn checkin(app: &TestApp, token: &str, version: &str) -> Value {
    let response =
        app.client.post(app.url("/api/v1/device/checkin")).bearer_auth(token).json(&json!({"version": version})).send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body["update"].clone()
}

async fn report(app: &TestApp, token: &str, state: &str) {
    let response =
        app.client.post(app.url("/api/v1/device/update-status")).bearer_auth(token).json(&json!({"state": state})).send().await.unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

async fn post(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.admin(Method::POST, path).json(&body).send().await.unwrap()
}

async fn created(app: &TestApp, path: &str, body: Value) -> Value {
    let response = post(app, path, body).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    body
}

async fn get(app: &TestApp, path: &str) -> Value {
    let response = app.admin(Method::GET, path).send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

async fn act(app: &TestApp, rollout_id: &str, verb: &str) -> reqwest::Response {
    app.admin(Method::POST, &format!("/api/v1/rollouts/{rollout_id}/{verb}")).send().await.unwrap()
}

async fn acted(app: &TestApp, rollout_id: &str, verb: &str) -> Value {
    let response = act(app, rollout_id, verb).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{verb}: {body}");
    body
}

/// A product `lamp` with an open 1.0.0 build and a release 2.0.0; returns the release id.
async fn lamp_release(app: &TestApp) -> String {
    upload(app, "lamp", "1.0.0", "esp32", 1).await;
    let build = upload(app, "lamp", "2.0.0", "esp32", 2).await;
    let release =
        created(app, "/api/v1/releases", json!({"product": "lamp", "version": "2.0.0", "artifact_ids": [build], "notes": "n"})).await;
    release["id"].as_str().unwrap().to_string()
}

async fn wait_for_state(app: &TestApp, rollout_id: &str, state: &str) -> Value {
    let mut rollout = Value::Null;
    for _ in 0..100 {
        rollout = get(app, &format!("/api/v1/rollouts/{rollout_id}")).await;
        if rollout["state"] == state {
            return rollout;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the rollout did not become {state}: {rollout}");
}

#[tokio::test]
async fn a_released_build_is_offered_only_through_its_rollout() {
    let app = spawn_app().await;
    let (_, token) = device(&app, "02:00:00:00:50:01", "lamp", "1.0.0", &[]).await;
    let release_id = lamp_release(&app).await;
    // Released, but no rollout: the device stays on its version.
    assert_eq!(checkin(&app, &token, "1.0.0").await, Value::Null);
    let release = get(&app, &format!("/api/v1/releases/{release_id}")).await;
    assert_eq!(release["version"], "2.0.0");
    assert_eq!(get(&app, "/api/v1/releases?product=lamp").await["items"].as_array().unwrap().len(), 1);

    let rollout =
        created(&app, "/api/v1/rollouts", json!({"release_id": release_id, "stages": [{"percent": 100}], "start": true, "forced": true}))
            .await;
    assert_eq!(rollout["state"], "running");
    assert_eq!(rollout["current_stage"], 1);
    assert_eq!(rollout["target_size"], 1);
    let offer = checkin(&app, &token, "1.0.0").await;
    assert_eq!(offer["version"], "2.0.0");
    assert_eq!(offer["release_id"], release_id, "the offer names the release");
    assert_eq!(offer["mandatory"], true, "a forced rollout's offer is mandatory");

    // A release with a rollout is kept; the build cannot be deleted under it.
    let response = app.admin(Method::DELETE, &format!("/api/v1/releases/{release_id}")).send().await.unwrap();
    assert_eq!(error_code(response, 409).await, "release_in_use");
    let build_id = release["artifact_ids"][0].as_str().unwrap();
    let response = app.admin(Method::DELETE, &format!("/api/v1/firmware/{build_id}")).send().await.unwrap();
    assert_eq!(response.status(), 409);
    app.stop().await;
}

#[tokio::test]
async fn success_needs_the_new_version_and_a_device_back_on_the_old_one_failed() {
    let app = spawn_app().await;
    let (_, booted) = device(&app, "02:00:00:00:51:01", "lamp", "1.0.0", &[]).await;
    let (_, fell_back) = device(&app, "02:00:00:00:51:02", "lamp", "1.0.0", &[]).await;
    let release_id = lamp_release(&app).await;
    let rollout = created(&app, "/api/v1/rollouts", json!({"release_id": release_id, "stages": [{"percent": 100}], "start": true})).await;
    let id = rollout["id"].as_str().unwrap();
    for token in [&booted, &fell_back] {
        assert_eq!(checkin(&app, token, "1.0.0").await["mandatory"], false, "a soft rollout");
        report(&app, token, "downloading").await;
        report(&app, token, "installed").await;
    }
    let counts = &get(&app, &format!("/api/v1/rollouts/{id}")).await["counts"];
    assert_eq!(counts["installed"], 2, "installed is not success: {counts}");
    assert_eq!(counts["succeeded"], 0);

    assert_eq!(checkin(&app, &booted, "2.0.0").await, Value::Null);
    // The bootloader went back to the old image: the device reports 1.0.0 again.
    checkin(&app, &fell_back, "1.0.0").await;
    let rollout = get(&app, &format!("/api/v1/rollouts/{id}")).await;
    assert_eq!(rollout["counts"]["succeeded"], 1, "{rollout}");
    assert_eq!(rollout["counts"]["failed"], 1, "{rollout}");
    assert_eq!(rollout["failure_rate"], 0.5);
    assert_eq!(rollout["stages"][0]["counts"]["failed"], 1);
    let updates = get(&app, &format!("/api/v1/devices/{}/updates", "02:00:00:00:51:02")).await;
    assert!(updates["items"][0]["message"].as_str().unwrap().contains("boot failure"), "{updates}");
    app.stop().await;
}

#[tokio::test]
async fn the_life_cycle_is_enforced_and_every_transition_recorded() {
    let app = spawn_app().await;
    let (_, token) = device(&app, "02:00:00:00:52:01", "lamp", "1.0.0", &[]).await;
    let release_id = lamp_release(&app).await;
    let rollout = created(
        &app,
        "/api/v1/rollouts",
        json!({"release_id": release_id, "name": "lamp 2", "stages": [{"count": 1, "min_soak_s": 3600}, {"percent": 100}]}),
    )
    .await;
    let id = rollout["id"].as_str().unwrap().to_string();
    assert_eq!(rollout["state"], "draft");
    assert_eq!(rollout["current_stage"], 0);
    assert_eq!(checkin(&app, &token, "1.0.0").await, Value::Null, "a draft offers nothing");
    assert_eq!(error_code(act(&app, &id, "pause").await, 409).await, "invalid_transition");

    assert_eq!(acted(&app, &id, "start").await["state"], "running");
    assert_eq!(error_code(act(&app, &id, "start").await, 409).await, "invalid_transition");
    assert_eq!(acted(&app, &id, "pause").await["state"], "paused");
    assert_eq!(checkin(&app, &token, "1.0.0").await, Value::Null, "a paused rollout offers nothing");
    assert_eq!(acted(&app, &id, "resume").await["state"], "running");
    assert_eq!(checkin(&app, &token, "1.0.0").await["version"], "2.0.0");
    let advanced = acted(&app, &id, "advance").await;
    assert_eq!(advanced["current_stage"], 2);
    assert_eq!(advanced["stages"][0]["status"], "done");
    let response = app
        .admin(Method::POST, &format!("/api/v1/rollouts/{id}/advance"))
        .json(&json!({"reason": "all good in the lab"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let completed: Value = response.json().await.unwrap();
    assert_eq!(completed["state"], "completed");
    assert_eq!(error_code(act(&app, &id, "resume").await, 409).await, "invalid_transition");

    let history = get(&app, &format!("/api/v1/rollouts/{id}/history")).await;
    let steps: Vec<(String, String)> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["to"].as_str().unwrap().to_string(), t["actor"].as_str().unwrap().to_string()))
        .collect();
    let expected = ["draft", "running", "paused", "running", "running", "completed"];
    assert_eq!(steps.iter().map(|(to, _)| to.as_str()).collect::<Vec<_>>(), expected);
    assert!(steps.iter().all(|(_, actor)| actor == "key:admin"), "the principal made every transition: {steps:?}");
    assert_eq!(history["items"][5]["reason"], "all good in the lab");
    assert!(history["items"].as_array().unwrap().iter().all(|t| t["at"].as_str().is_some()));

    // Cancel a second rollout; a cancelled one cannot start.
    let other = created(&app, "/api/v1/rollouts", json!({"release_id": release_id})).await;
    let other_id = other["id"].as_str().unwrap();
    assert_eq!(other["stages"].as_array().unwrap().len(), 4, "default stages 1, 10, 50, 100 %");
    assert_eq!(acted(&app, other_id, "cancel").await["state"], "cancelled");
    assert_eq!(error_code(act(&app, other_id, "start").await, 409).await, "invalid_transition");
    assert_eq!(get(&app, "/api/v1/rollouts?state=cancelled").await["items"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn the_error_threshold_halts_and_a_rollback_pins_devices_back_above_the_floor() {
    let app = spawn_app_with(|s| s.rollouts.evaluate_every = Duration::from_secs(1)).await;
    let (good_id, good) = device(&app, "02:00:00:00:53:01", "lamp", "1.0.0", &[]).await;
    let (bad_id, bad) = device(&app, "02:00:00:00:53:02", "lamp", "1.0.0", &[]).await;
    let (_, late) = device(&app, "02:00:00:00:53:03", "lamp", "1.0.0", &[]).await;
    let release_id = lamp_release(&app).await;
    let rollout = created(
        &app,
        "/api/v1/rollouts",
        json!({"release_id": release_id, "target": {"devices": ["02:00:00:00:53:01", "02:00:00:00:53:02"]},
               "stages": [{"percent": 100, "success_threshold": 100, "error_threshold": {"count": 1}}], "start": true}),
    )
    .await;
    let id = rollout["id"].as_str().unwrap().to_string();
    assert_eq!(rollout["target_size"], 2);
    assert_eq!(checkin(&app, &late, "1.0.0").await, Value::Null, "not in the device list");
    checkin(&app, &good, "1.0.0").await;
    report(&app, &good, "installed").await;
    checkin(&app, &good, "2.0.0").await;
    checkin(&app, &bad, "1.0.0").await;
    report(&app, &bad, "failed").await;

    let halted = wait_for_state(&app, &id, "halted").await;
    assert!(halted["reason"].as_str().unwrap().contains("error threshold"), "{halted}");
    let history = get(&app, &format!("/api/v1/rollouts/{id}/history")).await;
    assert_eq!(history["items"].as_array().unwrap().last().unwrap()["actor"], "rule:error_threshold");

    // The floor refuses a rollback below it, and changes nothing.
    let response = app
        .admin(Method::PUT, "/api/v1/products/lamp")
        .json(&json!({"provisioning": "open", "min_version": "1.5.0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response: Value = response.json().await.unwrap();
    assert_eq!(response["min_version"], "1.5.0");
    assert_eq!(error_code(act(&app, &id, "rollback").await, 409).await, "below_anti_rollback_floor");
    assert_eq!(get(&app, &format!("/api/v1/rollouts/{id}")).await["state"], "halted");
    let pin_below =
        app.admin(Method::PATCH, &format!("/api/v1/devices/{good_id}")).json(&json!({"target_version": "1.0.0"})).send().await.unwrap();
    assert_eq!(error_code(pin_below, 409).await, "below_anti_rollback_floor");
    let response =
        app.admin(Method::PUT, "/api/v1/products/lamp").json(&json!({"provisioning": "open", "min_version": null})).send().await.unwrap();
    assert_eq!(response.status(), 200);

    assert_eq!(acted(&app, &id, "rollback").await["state"], "rolled_back");
    let offer = checkin(&app, &good, "2.0.0").await;
    assert_eq!(offer["version"], "1.0.0", "pinned back to the version it ran");
    assert_eq!(offer["mandatory"], true);
    assert_eq!(get(&app, &format!("/api/v1/devices/{good_id}")).await["target_version"], "1.0.0");
    // The device that failed never left 1.0.0: no pin holds it there.
    assert_eq!(get(&app, &format!("/api/v1/devices/{bad_id}")).await["target_version"], Value::Null);
    report(&app, &good, "installed").await;
    assert_eq!(checkin(&app, &good, "1.0.0").await, Value::Null);
    app.stop().await;
}

#[tokio::test]
async fn targets_groups_windows_and_download_slots_limit_who_is_offered() {
    let app = spawn_app().await;
    let (_, eu) = device(&app, "02:00:00:00:54:01", "lamp", "1.0.0", &["eu"]).await;
    let (_, eu2) = device(&app, "02:00:00:00:54:02", "lamp", "1.0.0", &["eu"]).await;
    let (_, us) = device(&app, "02:00:00:00:54:03", "lamp", "1.0.0", &["us"]).await;
    let (grouped_id, grouped) = device(&app, "02:00:00:00:54:04", "lamp", "0.5.0", &[]).await;
    let release_id = lamp_release(&app).await;

    // Tags, and at most one download at a time.
    created(
        &app,
        "/api/v1/rollouts",
        json!({"release_id": release_id, "target": {"tags": ["eu"]}, "stages": [{"percent": 100}], "max_concurrent": 1, "start": true}),
    )
    .await;
    assert_eq!(checkin(&app, &us, "1.0.0").await, Value::Null, "not tagged eu");
    assert_eq!(checkin(&app, &eu, "1.0.0").await["version"], "2.0.0");
    assert_eq!(checkin(&app, &eu2, "1.0.0").await, Value::Null, "the only download slot is taken");
    assert_eq!(checkin(&app, &eu, "1.0.0").await["version"], "2.0.0", "the device holding the slot keeps its offer");
    report(&app, &eu, "installed").await;
    checkin(&app, &eu, "2.0.0").await;
    let mut offered = Value::Null;
    for _ in 0..30 {
        // Slots are recounted from the database each second.
        offered = checkin(&app, &eu2, "1.0.0").await;
        if !offered.is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(offered["version"], "2.0.0", "the slot was freed");

    // A group and a version range, in a window that is closed now.
    let group = created(&app, "/api/v1/groups", json!({"name": "pilots", "devices": ["02:00:00:00:54:04"]})).await;
    let group_id = group["id"].as_str().unwrap();
    assert_eq!(group["size"], 1);
    assert_eq!(get(&app, &format!("/api/v1/groups/{group_id}")).await["devices"][0], grouped_id);
    let now = chrono::Utc::now();
    let closed = |offset: i64| (now + chrono::Duration::hours(offset)).format("%H:00").to_string();
    let windowed = created(
        &app,
        "/api/v1/rollouts",
        json!({"release_id": release_id, "target": {"group": group_id, "version_max": "1.0.0"}, "stages": [{"percent": 100}],
               "window": {"start": closed(2), "end": closed(3), "time_zone": "UTC"}, "start": true}),
    )
    .await;
    assert_eq!(windowed["target_size"], 1);
    let outside = checkin(&app, &grouped, "0.5.0").await;
    assert_eq!(outside["version"], "1.0.0", "outside the maintenance window: only the open build");
    let response = app.admin(Method::DELETE, &format!("/api/v1/groups/{group_id}")).send().await.unwrap();
    assert_eq!(error_code(response, 409).await, "group_in_use");
    let changed =
        app.admin(Method::PATCH, &format!("/api/v1/groups/{group_id}")).json(&json!({"remove": [grouped_id]})).send().await.unwrap();
    assert_eq!(changed.json::<Value>().await.unwrap()["size"], 0);
    assert_eq!(get(&app, "/api/v1/groups").await["items"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn overlapping_rollouts_are_reported_and_the_newer_release_wins() {
    let app = spawn_app().await;
    let (_, both) = device(&app, "02:00:00:00:55:01", "lamp", "1.0.0", &["eu"]).await;
    let release_2 = lamp_release(&app).await;
    let build_3 = upload(&app, "lamp", "3.0.0", "esp32", 3).await;
    let release_3 = created(&app, "/api/v1/releases", json!({"product": "lamp", "version": "3.0.0", "artifact_ids": [build_3]})).await;
    let first = created(&app, "/api/v1/rollouts", json!({"release_id": release_2, "stages": [{"percent": 100}], "start": true})).await;
    assert_eq!(first["overlaps"], json!([]));
    let second = created(
        &app,
        "/api/v1/rollouts",
        json!({"release_id": release_3["id"], "target": {"tags": ["eu"]}, "stages": [{"percent": 100}], "start": true}),
    )
    .await;
    assert_eq!(second["overlaps"][0]["rollout_id"], first["id"]);
    assert_eq!(second["overlaps"][0]["devices"], 1);
    assert_eq!(checkin(&app, &both, "1.0.0").await["version"], "3.0.0", "the newer release wins");
    app.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx() {
    let app = spawn_app().await;
    let release_id = lamp_release(&app).await;
    let cases = [
        ("/api/v1/releases", json!({"product": "lamp", "version": "2.0.0", "artifact_ids": []}), 400, "invalid_artifacts"),
        ("/api/v1/releases", json!({"product": "lamp", "version": "9.0.0", "artifact_ids": ["nope"]}), 422, "unknown_artifact"),
        ("/api/v1/releases", json!({"product": "lamp", "version": "x.y", "artifact_ids": ["a"]}), 400, "invalid_version"),
        ("/api/v1/rollouts", json!({"release_id": "nope"}), 422, "unknown_release"),
        ("/api/v1/rollouts", json!({"release_id": release_id, "stages": []}), 400, "invalid_stages"),
        ("/api/v1/rollouts", json!({"release_id": release_id, "stages": [{"percent": 50}, {"percent": 10}]}), 400, "invalid_stages"),
        ("/api/v1/rollouts", json!({"release_id": release_id, "stages": [{"percent": 10, "count": 5}]}), 400, "invalid_stages"),
        (
            "/api/v1/rollouts",
            json!({"release_id": release_id, "stages": [{"percent": 100, "success_threshold": 150}]}),
            400,
            "invalid_stages",
        ),
        ("/api/v1/rollouts", json!({"release_id": release_id, "window": {"start": "25:00", "end": "01:00"}}), 400, "invalid_window"),
        (
            "/api/v1/rollouts",
            json!({"release_id": release_id, "window": {"start": "01:00", "end": "02:00", "time_zone": "Nowhere/City"}}),
            400,
            "invalid_window",
        ),
        ("/api/v1/rollouts", json!({"release_id": release_id, "start_at": "tomorrow"}), 400, "invalid_options"),
        ("/api/v1/rollouts", json!({"release_id": release_id, "device_deadline_s": 1}), 400, "invalid_options"),
        (
            "/api/v1/rollouts",
            json!({"release_id": release_id, "target": {"version_min": "2.0", "version_max": "1.0"}}),
            400,
            "invalid_target",
        ),
        ("/api/v1/rollouts", json!({"release_id": release_id, "target": {"devices": ["02:00:00:00:99:99"]}}), 422, "unknown_device"),
        ("/api/v1/rollouts", json!({"release_id": release_id, "target": {"group": "nope"}}), 422, "unknown_group"),
        ("/api/v1/rollouts", json!({"release_id": release_id, "surprise": true}), 400, "invalid_json"),
        ("/api/v1/groups", json!({"name": ""}), 400, "invalid_name"),
    ];
    for (path, body, status, code) in cases {
        let response = post(&app, path, body.clone()).await;
        assert_eq!(error_code(response, status).await, code, "{path} {body}");
    }
    let response = post(&app, "/api/v1/releases", json!({"product": "lamp", "version": "2.0.0", "artifact_ids": ["x"]})).await;
    assert!(response.status().is_client_error());
    assert_eq!(error_code(act(&app, "nope", "start").await, 404).await, "not_found");
    let response = app.admin(Method::POST, "/api/v1/rollouts/nope/start").body("{not json").send().await.unwrap();
    assert_eq!(error_code(response, 400).await, "invalid_json");
    let response = app.admin(Method::GET, "/api/v1/rollouts?state=sideways").send().await.unwrap();
    assert_eq!(error_code(response, 400).await, "invalid_state");
    let response = app.client.get(app.url("/api/v1/rollouts")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn a_scheduled_rollout_starts_by_rule_and_events_and_metrics_follow() {
    let app = spawn_app_with(|s| s.rollouts.evaluate_every = Duration::from_secs(1)).await;
    device(&app, "02:00:00:00:56:01", "lamp", "1.0.0", &[]).await;
    let release_id = lamp_release(&app).await;
    let mut events = app.admin(Method::GET, "/api/v1/events").send().await.unwrap();
    let start_at = (chrono::Utc::now() + chrono::Duration::seconds(1)).to_rfc3339();
    let rollout = created(&app, "/api/v1/rollouts", json!({"release_id": release_id, "start_at": start_at})).await;
    let id = rollout["id"].as_str().unwrap();
    assert_eq!(rollout["state"], "draft");
    wait_for_state(&app, id, "running").await;
    let history = get(&app, &format!("/api/v1/rollouts/{id}/history")).await;
    assert_eq!(history["items"][1]["actor"], "rule:schedule");

    let mut seen = String::new();
    while !seen.contains("rollout.transition") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), events.chunk()).await.expect("an event").unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("rollout.created"), "{seen}");
    let series = format!("updraft_rollout_devices{{rollout=\"{id}\",stage=\"1\",state=\"pending\"}}");
    let metrics = metrics_until(&app, |text| text.contains(&series)).await;
    assert!(metrics.contains("# TYPE updraft_rollout_devices gauge"), "{metrics}");
    // A cancelled rollout is no longer evaluated: its series leave the scrape (the recorder
    // would have kept them for ever, one set per rollout ever run).
    assert_eq!(acted(&app, id, "cancel").await["state"], "cancelled");
    let metrics = metrics_until(&app, |text| !text.contains(&format!("rollout=\"{id}\""))).await;
    assert!(!metrics.contains("updraft_rollout_devices{"), "{metrics}");
    app.stop().await;
}

/// `/metrics` once `done` holds for it (within 6 s).
async fn metrics_until(app: &TestApp, done: impl Fn(&str) -> bool) -> String {
    let mut metrics = String::new();
    for _ in 0..30 {
        metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
        if done(&metrics) {
            return metrics;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("/metrics never got there: {metrics}");
}

#[tokio::test]
async fn a_restart_mid_rollout_loses_no_state_and_repeats_no_transition() {
    let app = spawn_app_with(|s| s.rollouts.evaluate_every = Duration::from_secs(1)).await;
    let mut tokens = Vec::new();
    for i in 0..4 {
        tokens.push(device(&app, &format!("02:00:00:00:57:0{i}"), "lamp", "1.0.0", &[]).await.1);
    }
    let release_id = lamp_release(&app).await;
    let rollout = created(
        &app,
        "/api/v1/rollouts",
        json!({"release_id": release_id, "stages": [{"count": 1, "success_threshold": 100}, {"count": 2}, {"percent": 100}], "start": true}),
    )
    .await;
    let id = rollout["id"].as_str().unwrap().to_string();
    // The one device of stage 1 succeeds: the evaluator opens stage 2.
    let mut first = None;
    for token in &tokens {
        if !checkin(&app, token, "1.0.0").await.is_null() {
            assert!(first.is_none(), "stage 1 holds exactly one device");
            first = Some(token.clone());
        }
    }
    let first = first.expect("one device in stage 1");
    report(&app, &first, "installed").await;
    checkin(&app, &first, "2.0.0").await;
    let mut before = Value::Null;
    for _ in 0..100 {
        before = get(&app, &format!("/api/v1/rollouts/{id}")).await;
        if before["current_stage"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(before["current_stage"], 2, "{before}");
    let history_before = get(&app, &format!("/api/v1/rollouts/{id}/history")).await;

    let (settings, data_dir) = app.stop_keeping_data().await;
    let app = start(settings, data_dir).await;
    // Let the new process's evaluator run a few times.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = get(&app, &format!("/api/v1/rollouts/{id}")).await;
    for field in ["state", "current_stage", "stages", "counts", "target_size", "started_at", "stage_started_at"] {
        assert_eq!(after[field], before[field], "{field} changed across the restart");
    }
    assert_eq!(get(&app, &format!("/api/v1/rollouts/{id}/history")).await, history_before, "a transition was repeated");
    // Membership is recomputed identically: the stage-1 device is still the one offered.
    assert_eq!(checkin(&app, &first, "2.0.0").await, Value::Null);
    app.stop().await;
}

/// 10,000 simulated devices, driven through the services in-process (the admin API sets
/// up): a four-stage rollout advances while failures stay under the threshold, halts inside
/// the stage where they cross it (nobody new is offered afterwards), and a rollback brings
/// every device that took the release back to its previous version.
#[tokio::test]
async fn a_simulated_fleet_advances_halts_within_the_crossing_stage_and_rolls_back() {
    use std::collections::HashMap;
    use std::net::IpAddr;
    use std::sync::Arc;

    use futures::StreamExt;
    use updraft::services::devices::{self, CheckinReport, StatusReport};
    use updraft::services::rollouts;

    const DEVICES: usize = 10_000;
    let app = spawn_app_with(|s| s.rollouts.evaluate_every = Duration::from_secs(3600)).await;
    upload(&app, "sim", "1.0.0", "esp32", 10).await;
    let build = upload(&app, "sim", "2.0.0", "esp32", 11).await;
    let release = created(&app, "/api/v1/releases", json!({"product": "sim", "version": "2.0.0", "artifact_ids": [build]})).await;
    let core = core_of(&app).await;

    // Register the fleet straight into storage (with tokens), then authenticate each device once.
    let ip: IpAddr = [127, 0, 0, 1].into();
    let started = std::time::Instant::now();
    // Straight into the database in one transaction, as bench/checkin_seed.py does: the
    // registry's one-by-one path is not what this test is about.
    let fleet: Vec<(String, String)> = (0..DEVICES).map(|i| (uuid::Uuid::now_v7().to_string(), format!("upd_dev_sim_{i}"))).collect();
    {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let url = if app.settings.database_url.expose().starts_with("sqlite:") && !app.settings.database_url.expose().contains('?') {
            format!("{}?mode=rwc", app.settings.database_url.expose())
        } else {
            app.settings.database_url.expose().to_string()
        };
        let mut conn = sqlx::AnyConnection::connect(&url).await.expect("the test database");
        let mut tx = conn.begin().await.unwrap();
        let now = chrono::Utc::now().timestamp_millis();
        for (chunk_index, chunk) in fleet.chunks(100).enumerate() {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    format!(
                        "(${}, ${}, ${}, 'sim', 'esp32', 'stable', '1.0.0', '[]', '{{}}', '{{}}', ${}, ${}, ${}, ${})",
                        7 * i + 1,
                        7 * i + 2,
                        7 * i + 3,
                        7 * i + 4,
                        7 * i + 5,
                        7 * i + 6,
                        7 * i + 7
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO device (id, mac, name, product, hardware, channel, version, tags, attributes, metadata, token_hash, token_created_at, created_at, updated_at) VALUES {}",
                values.join(", ")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (offset, (id, token)) in chunk.iter().enumerate() {
                let i = chunk_index * 100 + offset;
                query = query
                    .bind(id.clone())
                    .bind(format!("02:10:00:{:02X}:{:02X}:{:02X}", i >> 16, (i >> 8) & 0xff, i & 0xff))
                    .bind(format!("sim-{i}"))
                    .bind(updraft::domain::secret::digest_hex(token))
                    .bind(now)
                    .bind(now)
                    .bind(now);
            }
            query.execute(&mut *tx).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    eprintln!("registered {DEVICES} devices in {:?}", started.elapsed());
    // Stages 1 %, 5 %, 20 %, 100 %: every property below shows as well as with 50 % for the
    // third stage, with half as many devices to update and roll back (the test's cost is
    // almost all in those devices' writes).
    let rollout = created(
        &app,
        "/api/v1/rollouts",
        json!({"release_id": release["id"], "start": true, "stages": [
            {"percent": 1, "success_threshold": 80, "error_threshold": {"percent": 15}},
            {"percent": 5, "success_threshold": 80, "error_threshold": {"percent": 15}},
            {"percent": 20, "success_threshold": 80, "error_threshold": {"percent": 15}},
            {"percent": 100, "success_threshold": 80, "error_threshold": {"percent": 3}}]}),
    )
    .await;
    let id = rollout["id"].as_str().unwrap().to_string();
    assert_eq!(rollout["target_size"], DEVICES as u64);

    // What each device runs, as it would report it.
    let running: Arc<std::sync::Mutex<HashMap<String, String>>> =
        Arc::new(std::sync::Mutex::new(fleet.iter().map(|(id, _)| (id.clone(), "1.0.0".to_string())).collect()));
    // One pass: every device checks in; an offered device installs (reports `installed`), then either
    // boots the new version or fails (1 in `fail_one_in`). Returns how many were offered.
    let pass = |fail_one_in: usize, devices: Vec<(usize, String, String)>| {
        let core = core.clone();
        let running = running.clone();
        async move {
            let outcomes = futures::stream::iter(devices)
                .map(|(index, device_id, token)| {
                    let core = core.clone();
                    let running = running.clone();
                    async move {
                        let version = running.lock().unwrap()[&device_id].clone();
                        let device = devices::authenticate(&core, Some(&token), ip).await.unwrap();
                        let report = |version: &str| CheckinReport {
                            version: Some(version.to_string()),
                            product: None,
                            hardware: None,
                            attributes: None,
                        };
                        let answer = devices::checkin(&core, device.clone(), report(&version), Some(ip)).await.unwrap();
                        let Some(offer) = answer.offer else { return false };
                        let status = |state: &str| StatusReport {
                            release_id: None,
                            version: None,
                            state: state.into(),
                            progress: None,
                            message: None,
                        };
                        if fail_one_in > 0 && index % fail_one_in == 0 {
                            devices::report_update(&core, &device, status("failed")).await.unwrap();
                        } else {
                            devices::report_update(&core, &device, status("installed")).await.unwrap();
                            let device = devices::authenticate(&core, Some(&token), ip).await.unwrap();
                            devices::checkin(&core, device, report(&offer.artifact.version), Some(ip)).await.unwrap();
                            running.lock().unwrap().insert(device_id.clone(), offer.artifact.version.clone());
                        }
                        true
                    }
                })
                .buffer_unordered(4)
                .collect::<Vec<bool>>()
                .await;
            outcomes.into_iter().filter(|offered| *offered).count()
        }
    };
    let all =
        |fleet: &[(String, String)]| fleet.iter().enumerate().map(|(i, (id, token))| (i, id.clone(), token.clone())).collect::<Vec<_>>();
    let rollout_state = |core: updraft::services::Core, id: String| async move { rollouts::find_rollout(&core, &id).await.unwrap() };

    // Stages 1-3 with 1 in 20 failing (5%, under the 15% threshold): each completes and the next opens.
    // Every device still on 1.0.0 checks in (devices on 2.0.0 cannot be offered it again).
    let not_updated = |fleet: &[(String, String)]| {
        let running = running.lock().unwrap();
        all(fleet).into_iter().filter(|(_, id, _)| running[id] == "1.0.0").collect::<Vec<_>>()
    };
    let mut offered_total = 0;
    for stage in 0..3 {
        rollouts::refresh(&core, true).await.unwrap();
        let offered = pass(20, not_updated(&fleet)).await;
        offered_total += offered;
        let current = rollout_state(core.clone(), id.clone()).await;
        assert_eq!(current.current_stage, stage);
        let expected: u64 = current.stage_sizes[stage];
        assert_eq!(offered as u64, expected, "stage {}: exactly its devices are offered", stage + 1);
        eprintln!("stage {} done at {:?}", stage + 1, started.elapsed());
        rollouts::evaluate(&core, chrono::Utc::now()).await.unwrap();
        let current = rollout_state(core.clone(), id.clone()).await;
        assert_eq!(current.current_stage, stage + 1, "stage {} advanced: {}", stage + 1, current.reason);
    }
    assert!((1_600..2_400).contains(&offered_total), "about a fifth of the fleet after three stages: {offered_total}");

    // Stage 4 with 1 in 3 failing (its threshold: 3%): evaluated after every batch of 500, it
    // halts inside the stage.
    rollouts::refresh(&core, true).await.unwrap();
    let untouched = not_updated(&fleet);
    let mut halted_after = None;
    for (batch, devices) in untouched.chunks(500).enumerate() {
        pass(3, devices.to_vec()).await;
        rollouts::evaluate(&core, chrono::Utc::now()).await.unwrap();
        if rollout_state(core.clone(), id.clone()).await.state == updraft::domain::rollout::RolloutState::Halted {
            halted_after = Some(batch);
            break;
        }
    }
    let halted_after = halted_after.expect("the rollout halted");
    eprintln!("halted at {:?}", started.elapsed());
    let halted = rollout_state(core.clone(), id.clone()).await;
    assert_eq!(halted.current_stage, 3, "halted in the stage where the threshold was crossed");
    let members_at_halt = get(&app, &format!("/api/v1/rollouts/{id}")).await["stages"][3]["counts"].clone();
    let stage_size = halted.stage_sizes[3];
    let offered_in_stage: u64 = ["offered", "downloading", "installing", "installed", "succeeded", "failed", "timed_out"]
        .iter()
        .map(|s| members_at_halt[*s].as_u64().unwrap())
        .sum();
    assert!(offered_in_stage < stage_size / 2, "halted early in the stage ({offered_in_stage} of {stage_size}, batch {halted_after})");
    // Nobody new is offered after the halt.
    rollouts::refresh(&core, true).await.unwrap();
    assert_eq!(pass(3, all(&fleet)).await, 0, "a halted rollout offered the release");
    assert_eq!(get(&app, &format!("/api/v1/rollouts/{id}")).await["stages"][3]["counts"], members_at_halt);

    // Timed out: a device that never reports counts as failed once its deadline passed.
    rollouts::evaluate(&core, chrono::Utc::now() + chrono::Duration::days(2)).await.unwrap();

    // Rollback: every device that took 2.0.0 is pinned back to 1.0.0 and gets there.
    acted(&app, &id, "rollback").await;
    rollouts::refresh(&core, true).await.unwrap();
    let took: Vec<(usize, String, String)> = all(&fleet).into_iter().filter(|(_, id, _)| running.lock().unwrap()[id] == "2.0.0").collect();
    assert!(!took.is_empty());
    // The pins reach this "replica" through the device change log; drop its cached devices.
    for (_, device_id, _) in &took {
        devices::forget_cached_device(&core, device_id);
    }
    let rolled_back = pass(0, took.clone()).await;
    assert_eq!(rolled_back, took.len(), "every affected device was offered its previous version");
    eprintln!("rolled back at {:?}", started.elapsed());
    let all_back = running.lock().unwrap().values().all(|v| v == "1.0.0");
    assert!(all_back, "every device runs 1.0.0 again");
    app.stop().await;
}

async fn history_items(app: &TestApp, rollout_id: &str) -> Vec<Value> {
    get(app, &format!("/api/v1/rollouts/{rollout_id}/history")).await["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_resumed_halted_rollout_counts_only_new_failures_and_records_who_resumed_it() {
    let app = spawn_app_with(|s| s.rollouts.evaluate_every = Duration::from_secs(1)).await;
    let (_, first) = device(&app, "02:00:00:00:58:01", "lamp", "1.0.0", &[]).await;
    let (_, second) = device(&app, "02:00:00:00:58:02", "lamp", "1.0.0", &[]).await;
    let (_, third) = device(&app, "02:00:00:00:58:03", "lamp", "1.0.0", &[]).await;
    let release_id = lamp_release(&app).await;
    let rollout = created(
        &app,
        "/api/v1/rollouts",
        json!({"release_id": release_id, "stages": [{"percent": 100, "success_threshold": 100, "error_threshold": {"count": 1}}], "start": true}),
    )
    .await;
    let id = rollout["id"].as_str().unwrap().to_string();
    assert_eq!(checkin(&app, &first, "1.0.0").await["version"], "2.0.0");
    report(&app, &first, "failed").await;
    wait_for_state(&app, &id, "halted").await;

    // The operator looked at the failure and resumes: the evaluator must not halt again on it.
    let response = app
        .admin(Method::POST, &format!("/api/v1/rollouts/{id}/resume"))
        .json(&json!({"reason": "the failing unit had a flat battery"}))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["state"], "running", "{body}");
    assert_eq!(body["counts"]["failed"], 1, "the failure is still shown");
    assert_eq!(body["counts"]["excused"], 1);
    let resumed = history_items(&app, &id).await.last().unwrap().clone();
    assert_eq!((resumed["from"].as_str(), resumed["to"].as_str()), (Some("halted"), Some("running")));
    assert_eq!(resumed["actor"], "key:admin");
    let reason = resumed["reason"].as_str().unwrap();
    assert!(reason.contains("flat battery") && reason.contains("1 failures so far excused"), "{reason}");
    // Several evaluations later it is still running, and it offers again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(get(&app, &format!("/api/v1/rollouts/{id}")).await["state"], "running");
    assert_eq!(checkin(&app, &second, "1.0.0").await["version"], "2.0.0");
    report(&app, &second, "installed").await;
    checkin(&app, &second, "2.0.0").await;

    // A new failure counts against the threshold again.
    assert_eq!(checkin(&app, &third, "1.0.0").await["version"], "2.0.0");
    report(&app, &third, "failed").await;
    let halted = wait_for_state(&app, &id, "halted").await;
    assert_eq!(halted["counts"]["failed"], 2);
    assert_eq!(halted["counts"]["excused"], 1);
    let items = history_items(&app, &id).await;
    assert_eq!(items.iter().filter(|t| t["actor"] == "rule:error_threshold").count(), 2, "halted once before, once after the resume");
    app.stop().await;
}

#[tokio::test]
async fn a_device_that_failed_in_a_rollout_is_not_offered_its_release_again_until_pinned() {
    let app = spawn_app_with(|s| s.devices.retry_failed_after = Duration::from_secs(0)).await;
    let (failing_id, failing) = device(&app, "02:00:00:00:59:01", "lamp", "1.0.0", &[]).await;
    let (_, timing_out) = device(&app, "02:00:00:00:59:02", "lamp", "1.0.0", &[]).await;
    let release_id = lamp_release(&app).await;
    let rollout = created(
        &app,
        "/api/v1/rollouts",
        json!({"release_id": release_id, "stages": [{"percent": 100, "error_threshold": {"count": 10}}], "start": true}),
    )
    .await;
    let id = rollout["id"].as_str().unwrap().to_string();
    assert_eq!(checkin(&app, &failing, "1.0.0").await["version"], "2.0.0");
    report(&app, &failing, "failed").await;
    // Even with no wait before retrying a failed build, the rollout does not offer it again.
    for _ in 0..3 {
        assert_eq!(checkin(&app, &failing, "1.0.0").await, Value::Null, "re-offered after failing");
    }
    // A device that timed out and then failed stays failed too.
    assert_eq!(checkin(&app, &timing_out, "1.0.0").await["version"], "2.0.0");
    let core = core_of(&app).await;
    updraft::services::rollouts::evaluate(&core, chrono::Utc::now() + chrono::Duration::days(2)).await.unwrap();
    report(&app, &timing_out, "failed").await;
    assert_eq!(checkin(&app, &timing_out, "1.0.0").await, Value::Null);
    let counts = get(&app, &format!("/api/v1/rollouts/{id}")).await["counts"].clone();
    assert_eq!(counts["failed"], 2, "{counts}");
    assert_eq!(counts["offered"], 0, "{counts}");

    // The operator re-includes the failed device with an explicit pin.
    let response =
        app.admin(Method::PATCH, &format!("/api/v1/devices/{failing_id}")).json(&json!({"target_version": "2.0.0"})).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(checkin(&app, &failing, "1.0.0").await["version"], "2.0.0", "a pin reaches it");
    app.stop().await;
}

#[tokio::test]
async fn fresh_uploads_of_a_product_managed_by_rollouts_are_held_and_other_products_are_unchanged() {
    let app = spawn_app().await;
    let (lamp_id, lamp) = device(&app, "02:00:00:00:5a:01", "lamp", "1.0.0", &[]).await;
    let (_, old_lamp) = device(&app, "02:00:00:00:5a:02", "lamp", "0.5.0", &[]).await;
    let (_, fan) = device(&app, "02:00:00:00:5a:03", "fan", "1.0.0", &[]).await;
    let release_id = lamp_release(&app).await;
    // A build uploaded after lamp's first release, in no release: held for a rollout.
    let build_3 = upload(&app, "lamp", "3.0.0", "esp32", 30).await;
    assert_eq!(checkin(&app, &lamp, "1.0.0").await, Value::Null, "a fresh upload of a managed product went to the fleet");
    assert_eq!(checkin(&app, &old_lamp, "0.5.0").await["version"], "1.0.0", "builds from before the first release stay open");
    // Still held once the product's only release is gone ("had" releases).
    let response = app.admin(Method::DELETE, &format!("/api/v1/releases/{release_id}")).send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    upload(&app, "lamp", "4.0.0", "esp32", 40).await;
    // 2.0.0, uploaded before the product was managed, is an open build again; 3.0.0 and
    // 4.0.0 stay held.
    assert_eq!(checkin(&app, &lamp, "1.0.0").await["version"], "2.0.0", "held after the release was deleted");
    // Through a rollout of a release holding it, it goes out.
    let release_3 = created(&app, "/api/v1/releases", json!({"product": "lamp", "version": "3.0.0", "artifact_ids": [build_3]})).await;
    created(
        &app,
        "/api/v1/rollouts",
        json!({"release_id": release_3["id"], "target": {"devices": [lamp_id]}, "stages": [{"percent": 100}], "start": true}),
    )
    .await;
    assert_eq!(checkin(&app, &lamp, "1.0.0").await["version"], "3.0.0");
    // Or through a pin.
    let response =
        app.admin(Method::PATCH, "/api/v1/devices/02:00:00:00:5a:02").json(&json!({"target_version": "4.0.0"})).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(checkin(&app, &old_lamp, "0.5.0").await["version"], "4.0.0");

    // A product that never had a release: every upload goes out by the newest-build rule.
    upload(&app, "fan", "1.1.0", "esp32", 50).await;
    assert_eq!(checkin(&app, &fan, "1.0.0").await["version"], "1.1.0");
    upload(&app, "fan", "1.2.0", "esp32", 51).await;
    assert_eq!(checkin(&app, &fan, "1.0.0").await["version"], "1.2.0");
    app.stop().await;
}

#[tokio::test]
async fn a_completed_rollout_offers_to_late_devices_during_its_catch_up_period_only() {
    let app = spawn_app_with(|s| s.rollouts.catch_up = Duration::from_secs(3)).await;
    device(&app, "02:00:00:00:5b:01", "lamp", "1.0.0", &[]).await;
    let release_id = lamp_release(&app).await;
    let rollout =
        created(&app, "/api/v1/rollouts", json!({"release_id": release_id, "stages": [{"percent": 100}], "dynamic": true, "start": true}))
            .await;
    let id = rollout["id"].as_str().unwrap().to_string();
    let completed = acted(&app, &id, "advance").await;
    assert_eq!(completed["state"], "completed");
    assert!(completed["completed_at"].as_str().is_some(), "{completed}");
    let completed_at = std::time::Instant::now();
    // A device that appears during the catch-up period and matches is offered the release.
    let (_, early) = device(&app, "02:00:00:00:5b:02", "lamp", "1.0.0", &[]).await;
    assert_eq!(checkin(&app, &early, "1.0.0").await["version"], "2.0.0", "a late device within the catch-up period");
    // Afterwards the rollout has left the view: a late device gets nothing.
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(completed_at.elapsed())).await;
    let (_, late) = device(&app, "02:00:00:00:5b:03", "lamp", "1.0.0", &[]).await;
    assert_eq!(checkin(&app, &late, "1.0.0").await, Value::Null, "offered after the catch-up period");
    assert_eq!(get(&app, &format!("/api/v1/rollouts/{id}")).await["state"], "completed");
    app.stop().await;
}

#[tokio::test]
async fn target_counts_follow_devices_registered_changed_and_deleted_after_the_first_count() {
    let app = spawn_app().await;
    let (first_id, _) = device(&app, "02:00:00:00:5c:01", "lamp", "1.0.0", &["eu"]).await;
    device(&app, "02:00:00:00:5c:02", "lamp", "1.0.0", &["eu"]).await;
    let (third_id, _) = device(&app, "02:00:00:00:5c:03", "lamp", "1.0.0", &["us"]).await;
    device(&app, "02:00:00:00:5c:04", "fan", "1.0.0", &["eu"]).await;
    let release_id = lamp_release(&app).await;
    let eu = json!({"release_id": release_id, "target": {"tags": ["eu"]}, "stages": [{"percent": 100}], "start": true});
    let first = created(&app, "/api/v1/rollouts", eu.clone()).await;
    assert_eq!(first["target_size"], 2);

    // After the first count: a new device, a retagged one, a deleted one, one of another
    // product moved to this one.
    device(&app, "02:00:00:00:5c:05", "lamp", "1.0.0", &["eu"]).await;
    let response =
        app.admin(Method::PATCH, &format!("/api/v1/devices/{third_id}")).json(&json!({"tags": ["eu", "pilot"]})).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let response = app.admin(Method::DELETE, &format!("/api/v1/devices/{first_id}")).send().await.unwrap();
    assert_eq!(response.status(), 204);
    let response = app.admin(Method::PATCH, "/api/v1/devices/02:00:00:00:5c:04").json(&json!({"product": "lamp"})).send().await.unwrap();
    assert_eq!(response.status(), 200);

    let second = created(&app, "/api/v1/rollouts", eu).await;
    assert_eq!(second["target_size"], 4, "02, 03 (retagged), 04 (moved), 05 (new); not 01 (deleted)");
    assert_eq!(second["overlaps"][0]["devices"], 4);
    app.stop().await;
}

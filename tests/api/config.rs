//! Device configuration, native API: layers and the merge, versions, history, diffs and
//! reverts, schemas, secrets, concurrent writers, delivery with ETags, acknowledgements,
//! the stale view and change events.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

/// Registers a device and returns its id.
async fn register(app: &TestApp, mac: &str, product: &str, tags: &[&str]) -> String {
    let response =
        app.admin(Method::POST, "/api/v1/devices").json(&json!({"mac": mac, "product": product, "tags": tags})).send().await.unwrap();
    assert_eq!(response.status(), 201);
    response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
}

/// Provisions an open-mode device and returns (device id, token).
async fn provisioned(app: &TestApp, mac: &str, product: &str) -> (String, String) {
    let response =
        app.client.post(app.url("/api/v1/device/provision")).json(&json!({"mac": mac, "product": product})).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    (body["device_id"].as_str().unwrap().to_string(), body["token"].as_str().unwrap().to_string())
}

async fn put(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.admin(Method::PUT, path).json(&body).send().await.unwrap()
}

async fn put_ok(app: &TestApp, path: &str, body: Value) -> Value {
    let response = put(app, path, body).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

async fn get_json(app: &TestApp, path: &str) -> Value {
    let response = app.admin(Method::GET, path).send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    body
}

#[tokio::test]
async fn the_effective_configuration_merges_product_tags_and_device_and_names_each_key_s_layer() {
    let app = spawn_app().await;
    let id = register(&app, "02:00:00:10:00:01", "lamp", &["outdoor", "eu"]).await;
    put_ok(
        &app,
        "/api/v1/configs/product/lamp",
        json!({"content": {"wifi": {"ssid": "factory", "channel": 6}, "led": true, "servers": ["a", "b"], "debug": 1}}),
    )
    .await;
    put_ok(&app, "/api/v1/configs/tag/eu", json!({"content": {"wifi": {"ssid": "eu-net"}, "servers": ["c"]}})).await;
    put_ok(&app, "/api/v1/configs/tag/outdoor", json!({"content": {"wifi": {"ssid": "outdoor-net"}, "ip65": true}})).await;
    put_ok(&app, &format!("/api/v1/devices/{id}/config"), json!({"content": {"led": false, "debug": null}})).await;

    let effective = get_json(&app, &format!("/api/v1/devices/{id}/config?effective=true")).await;

    // Tags apply in ascending order: eu, then outdoor.
    assert_eq!(effective["content"], json!({"wifi": {"ssid": "outdoor-net", "channel": 6}, "led": false, "servers": ["c"], "ip65": true}));
    assert_eq!(
        effective["sources"],
        json!({"/wifi/ssid": "tag:outdoor", "/wifi/channel": "product:lamp", "/led": "device", "/servers": "tag:eu", "/ip65": "tag:outdoor"})
    );
    let layers: Vec<&str> = effective["layers"].as_array().unwrap().iter().map(|l| l["scope"].as_str().unwrap()).collect();
    assert_eq!(layers, ["product:lamp", "tag:eu", "tag:outdoor", "device:02:00:00:10:00:01"]);
    assert_eq!(effective["version"].as_str().unwrap().len(), 16);
    // The same view by MAC, and on the generic route.
    let by_mac = get_json(&app, "/api/v1/configs/device/02-00-00-10-00-01?effective=true").await;
    assert_eq!(by_mac["content"], effective["content"]);
    // The device's own document alone.
    assert_eq!(get_json(&app, &format!("/api/v1/devices/{id}/config")).await["content"], json!({"led": false, "debug": null}));
    app.stop().await;
}

#[tokio::test]
async fn every_change_is_a_version_with_its_principal_comment_history_diff_and_revert() {
    let app = spawn_app().await;
    let path = "/api/v1/configs/product/lamp";
    let first = put_ok(&app, path, json!({"content": {"a": 1, "b": {"c": 2}}, "comment": "initial", "author": "alice"})).await;
    assert_eq!(first["version"], 1);
    let second = put_ok(&app, path, json!({"content": {"a": 1, "b": {"c": 3}, "d": true}, "comment": "tune c", "author": "bob"})).await;
    assert_eq!(second["version"], 2);
    let deleted = app.admin(Method::DELETE, &format!("{path}?comment=retire&author=carol")).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(error_code(app.admin(Method::GET, path).send().await.unwrap(), 404).await, "not_found");

    let history = get_json(&app, &format!("{path}/history")).await;
    assert_eq!(history["total"], 3);
    let items = history["items"].as_array().unwrap();
    assert_eq!(items.iter().map(|v| v["version"].as_i64().unwrap()).collect::<Vec<_>>(), [3, 2, 1]);
    assert_eq!(
        (items[0]["author"].as_str(), items[0]["comment"].as_str(), items[0]["deleted"].as_bool()),
        (Some("key:admin"), Some("retire"), Some(true))
    );
    // A client's `author` is accepted but not trusted: every version names the principal.
    assert_eq!((items[1]["author"].as_str(), items[1]["comment"].as_str()), (Some("key:admin"), Some("tune c")));
    assert!(items.iter().all(|v| v["author"] == "key:admin"), "{items:?}");
    assert!(items[2]["created_at"].as_str().unwrap().ends_with('Z'));

    let diff = get_json(&app, &format!("{path}/diff?from=1&to=2")).await;
    assert_eq!(diff["changes"], json!([{"path": "/b/c", "op": "changed", "from": 2, "to": 3}, {"path": "/d", "op": "added", "to": true}]));
    let version_one = get_json(&app, &format!("{path}/versions/1")).await;
    assert_eq!(version_one["content"], json!({"a": 1, "b": {"c": 2}}));

    let reverted = app.admin(Method::POST, &format!("{path}/revert")).json(&json!({"version": 1, "author": "dave"})).send().await.unwrap();
    assert_eq!(reverted.status(), 200);
    assert_eq!(reverted.headers()["etag"], "\"4\"");
    let reverted: Value = reverted.json().await.unwrap();
    assert_eq!((reverted["version"].as_i64(), &reverted["content"]), (Some(4), &json!({"a": 1, "b": {"c": 2}})));
    let latest = &get_json(&app, &format!("{path}/history?limit=1")).await["items"][0];
    assert_eq!((latest["author"].as_str(), latest["comment"].as_str()), (Some("key:admin"), Some("revert to version 1")));
    assert_eq!(error_code(app.admin(Method::GET, &format!("{path}/diff?from=1&to=9")).send().await.unwrap(), 404).await, "not_found");
    app.stop().await;
}

#[tokio::test]
async fn if_match_keeps_concurrent_writers_from_losing_updates() {
    let app = spawn_app().await;
    let path = "/api/v1/configs/tag/kitchen";
    let created = put(&app, path, json!({"content": {"n": 0}})).await;
    assert_eq!(created.headers()["etag"], "\"1\"");

    // Ten editors read version 1 and write at once: exactly one wins, the others get 412.
    let writers = (1..=10).map(|n| {
        let request = app.admin(Method::PUT, path).header("if-match", "\"1\"").json(&json!({"content": {"n": n}}));
        tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
    });
    let statuses: Vec<u16> = futures::future::join_all(writers).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 412).count(), 9, "{statuses:?}");
    assert_eq!(get_json(&app, path).await["version"], 2);

    // Writers without If-Match are serialised: every write becomes its own version.
    let writers = (1..=12).map(|n| {
        let request = app.admin(Method::PUT, path).json(&json!({"content": {"m": n}}));
        tokio::spawn(async move {
            let body = request.send().await.unwrap().json::<Value>().await.unwrap();
            body["version"].as_i64().unwrap_or_else(|| panic!("a write failed: {body}"))
        })
    });
    let mut versions: Vec<i64> = futures::future::join_all(writers).await.into_iter().map(Result::unwrap).collect();
    versions.sort();
    assert_eq!(versions, (3..=14).collect::<Vec<_>>());
    assert_eq!(get_json(&app, &format!("{path}/history")).await["total"], 14);

    let stale = app.admin(Method::PUT, path).header("if-match", "\"2\"").json(&json!({"content": {}})).send().await.unwrap();
    assert_eq!(error_code(stale, 412).await, "precondition_failed");
    let garbage = app.admin(Method::PUT, path).header("if-match", "yesterday").json(&json!({"content": {}})).send().await.unwrap();
    assert_eq!(error_code(garbage, 400).await, "invalid_if_match");
    app.stop().await;
}

#[tokio::test]
async fn a_product_schema_rejects_invalid_effective_configurations_listing_the_errors() {
    let app = spawn_app().await;
    let id = register(&app, "02:00:00:10:00:02", "thermo", &[]).await;
    let schema = json!({
        "type": "object",
        "required": ["wifi", "interval"],
        "properties": {
            "wifi": {"type": "object", "required": ["ssid"], "properties": {"ssid": {"type": "string"}, "password": {"type": "string", "minLength": 8}}},
            "interval": {"type": "integer", "minimum": 10}
        }
    });
    let stored = app.admin(Method::PUT, "/api/v1/products/thermo/config-schema").json(&schema).send().await.unwrap();
    assert_eq!(stored.status(), 204);
    assert_eq!(get_json(&app, "/api/v1/products/thermo/config-schema").await, schema);

    let device_path = format!("/api/v1/devices/{id}/config");
    let invalid = put(&app, &device_path, json!({"content": {"wifi": {"ssid": 5}, "interval": 2}})).await;
    assert_eq!(invalid.status(), 422);
    let message = invalid.json::<Value>().await.unwrap()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("/wifi/ssid") && message.contains("/interval"), "{message}");
    // Product defaults complete the device's document.
    put_ok(&app, "/api/v1/configs/product/thermo", json!({"content": {"interval": 60}})).await;
    put_ok(&app, &device_path, json!({"content": {"wifi": {"ssid": "home"}}})).await;
    // A layer change that would break a device is refused too, naming the device.
    let breaking = put(&app, "/api/v1/configs/product/thermo", json!({"content": {"interval": "often"}})).await;
    assert_eq!(breaking.status(), 422);
    assert!(breaking.json::<Value>().await.unwrap()["error"]["message"].as_str().unwrap().contains(&id));
    // A secret that fails the schema is not quoted back.
    let weak = put(&app, &device_path, json!({"content": {"wifi": {"ssid": "home", "password": {"$secret": "short"}}}})).await;
    let message = weak.json::<Value>().await.unwrap()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("/wifi/password") && !message.contains("short"), "{message}");

    let not_a_schema = app.admin(Method::PUT, "/api/v1/products/thermo/config-schema").json(&json!({"type": 12})).send().await.unwrap();
    assert_eq!(error_code(not_a_schema, 400).await, "invalid_schema");
    assert_eq!(app.admin(Method::DELETE, "/api/v1/products/thermo/config-schema").send().await.unwrap().status(), 204);
    put_ok(&app, "/api/v1/configs/product/thermo", json!({"content": {"interval": "often"}})).await;
    app.stop().await;
}

#[tokio::test]
async fn secrets_are_encrypted_at_rest_masked_for_operators_and_delivered_to_the_device() {
    let app = spawn_app().await;
    let (id, token) = provisioned(&app, "02:00:00:10:00:03", "lamp").await;
    let path = format!("/api/v1/devices/{id}/config");
    let written = put_ok(&app, &path, json!({"content": {"wifi": {"ssid": "home", "password": {"$secret": "hunter2-secret"}}}})).await;
    assert_eq!(written["content"]["wifi"]["password"], json!({"$secret": null}));

    for view in [
        get_json(&app, &path).await,
        get_json(&app, &format!("{path}?effective=true")).await,
        get_json(&app, &format!("/api/v1/configs/device/{id}/versions/1")).await,
        get_json(&app, "/api/configs/02-00-00-10-00-03").await,
        get_json(&app, "/api/configs").await,
    ] {
        assert!(!view.to_string().contains("hunter2"), "a secret was shown: {view}");
    }
    if app.settings.database_url.expose().starts_with("sqlite") {
        for file in std::fs::read_dir(app.data_dir.path()).unwrap().flatten() {
            if file.file_name().to_string_lossy().starts_with("updraft.db") {
                let bytes = std::fs::read(file.path()).unwrap();
                assert!(!bytes.windows(7).any(|w| w == b"hunter2"), "{:?} holds the secret in clear", file.path());
            }
        }
    }

    let delivered: Value = app.client.get(app.url("/api/v1/device/config")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(delivered, json!({"wifi": {"ssid": "home", "password": "hunter2-secret"}}));

    // Writing back what an operator sees keeps the secret.
    let mut edited = get_json(&app, &path).await["content"].clone();
    edited["wifi"]["ssid"] = json!("home-5g");
    put_ok(&app, &path, json!({"content": edited})).await;
    let delivered: Value = app.client.get(app.url("/api/v1/device/config")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(delivered["wifi"], json!({"ssid": "home-5g", "password": "hunter2-secret"}));
    let diff = get_json(&app, &format!("/api/v1/configs/device/{id}/diff?from=1&to=2")).await;
    assert_eq!(diff["changes"].as_array().unwrap().len(), 1, "{diff}");
    // Keeping a secret that does not exist is an error.
    let missing = put(&app, &path, json!({"content": {"token": {"$secret": null}}})).await;
    assert_eq!(error_code(missing, 400).await, "secret_missing");
    app.stop().await;
}

#[tokio::test]
async fn devices_fetch_with_etags_acknowledge_and_operators_see_who_is_stale() {
    let app = spawn_app().await;
    let (id, token) = provisioned(&app, "02:00:00:10:00:04", "lamp").await;
    let (other, other_token) = provisioned(&app, "02:00:00:10:00:05", "lamp").await;
    let _unconfigured = provisioned(&app, "02:00:00:10:00:06", "meter").await;
    put_ok(&app, "/api/v1/configs/product/lamp", json!({"content": {"interval": 60}})).await;

    let fetch = |token: String, etag: Option<String>| {
        let mut request = app.client.get(app.url("/api/v1/device/config")).bearer_auth(token);
        if let Some(etag) = etag {
            request = request.header("if-none-match", etag);
        }
        request.send()
    };
    let first = fetch(token.clone(), None).await.unwrap();
    assert_eq!(first.status(), 200);
    let etag = first.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(first.json::<Value>().await.unwrap(), json!({"interval": 60}));
    let again = fetch(token.clone(), Some(etag.clone())).await.unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);

    // Before any acknowledgement both lamps are stale; the meter has no configuration.
    let stale = get_json(&app, "/api/v1/configs/stale").await;
    assert_eq!(stale["total"], 2);
    assert!(stale["items"].as_array().unwrap().iter().all(|d| d["acknowledged_version"].is_null()));

    let version = etag.trim_matches('"').to_string();
    let ack =
        app.client.post(app.url("/api/v1/device/config/ack")).bearer_auth(&token).json(&json!({"version": version})).send().await.unwrap();
    assert_eq!(ack.status(), 204);
    let stale = get_json(&app, "/api/v1/configs/stale").await;
    assert_eq!(stale["total"], 1);
    assert_eq!(stale["items"][0]["device_id"], other.as_str());
    let ack_other = app
        .client
        .post(app.url("/api/v1/device/config/ack"))
        .bearer_auth(&other_token)
        .json(&json!({"version": version}))
        .send()
        .await
        .unwrap();
    assert_eq!(ack_other.status(), 204);
    assert_eq!(get_json(&app, "/api/v1/configs/stale").await["total"], 0);

    // A change to the first lamp's own document makes only it stale, and changes its ETag.
    put_ok(&app, &format!("/api/v1/devices/{id}/config"), json!({"content": {"name": "porch"}})).await;
    let stale = get_json(&app, "/api/v1/configs/stale?product=lamp").await;
    assert_eq!(stale["total"], 1);
    assert_eq!(
        (stale["items"][0]["device_id"].as_str(), stale["items"][0]["acknowledged_version"].as_str()),
        (Some(id.as_str()), Some(version.as_str()))
    );
    let changed = fetch(token.clone(), Some(etag.clone())).await.unwrap();
    assert_eq!(changed.status(), 200);
    assert_ne!(changed.headers()["etag"].to_str().unwrap(), etag);

    let bad_ack =
        app.client.post(app.url("/api/v1/device/config/ack")).bearer_auth(&token).json(&json!({"version": "../x"})).send().await.unwrap();
    assert_eq!(error_code(bad_ack, 400).await, "invalid_version");
    assert_eq!(app.client.get(app.url("/api/v1/device/config")).send().await.unwrap().status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn a_change_publishes_one_event_naming_exactly_the_affected_devices() {
    use futures::StreamExt;
    let app = spawn_app().await;
    let lamp_a = register(&app, "02:00:00:10:00:07", "lamp", &["eu"]).await;
    let lamp_b = register(&app, "02:00:00:10:00:08", "lamp", &[]).await;
    let meter = register(&app, "02:00:00:10:00:09", "meter", &["eu"]).await;
    let response = app.admin(Method::GET, "/api/v1/events").send().await.unwrap();
    let mut stream = response.bytes_stream();

    put_ok(&app, "/api/v1/configs/product/lamp", json!({"content": {"x": 1}})).await;
    put_ok(&app, "/api/v1/configs/tag/eu", json!({"content": {"y": 1}})).await;

    let mut events = Vec::new();
    let mut buffer = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while events.len() < 2 {
        let chunk = tokio::time::timeout_at(deadline, stream.next()).await.expect("events arrive in time").unwrap().unwrap();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            if block.contains("event: config.changed") {
                let data = block.lines().find_map(|l| l.strip_prefix("data:")).unwrap().trim().to_string();
                events.push(serde_json::from_str::<Value>(&data).unwrap());
            }
        }
    }
    let devices = |event: &Value| {
        let mut ids: Vec<String> = event["data"]["devices"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_string()).collect();
        ids.sort();
        ids
    };
    let mut lamps = vec![lamp_a.clone(), lamp_b.clone()];
    lamps.sort();
    let mut eu = vec![lamp_a.clone(), meter.clone()];
    eu.sort();
    assert_eq!(events[0]["data"]["scope"], "product:lamp");
    assert_eq!(devices(&events[0]), lamps);
    assert_eq!(events[1]["data"]["scope"], "tag:eu");
    assert_eq!(devices(&events[1]), eu);
    // The seed-003 notification for every affected device's file.
    let files: Vec<&str> =
        events[1]["data"]["notifications"].as_array().unwrap().iter().map(|n| n["payload"]["filename"].as_str().unwrap()).collect();
    assert!(files.contains(&"02-00-00-10-00-07.json") && files.contains(&"02-00-00-10-00-09.json"), "{files:?}");
    assert!(events[1]["data"]["notifications"].as_array().unwrap().iter().all(|n| n["topic"] == "iotsupport/updates/configs"));
    app.stop().await;
}

#[tokio::test]
async fn bad_requests_get_clear_4xx_answers() {
    let app = spawn_app().await;
    let cases: Vec<(Method, &str, Option<Value>, u16, &str)> = vec![
        (Method::GET, "/api/v1/configs/galaxy/x", None, 400, "invalid_scope"),
        (Method::PUT, "/api/v1/configs/product/lamp", Some(json!({"content": [1]})), 400, "invalid_config"),
        (Method::PUT, "/api/v1/configs/product/lamp", Some(json!({"content": {}, "colour": 1})), 400, "invalid_json"),
        (Method::PUT, "/api/v1/configs/product/bad name", Some(json!({"content": {}})), 400, "invalid_product"),
        (Method::PUT, "/api/v1/configs/device/not-a-mac", Some(json!({"content": {}})), 404, "not_found"),
        (Method::GET, "/api/v1/configs/product/lamp?effective=true", None, 400, "invalid_query"),
        (Method::GET, "/api/v1/configs/product/lamp/versions/x", None, 400, "invalid_version"),
        (Method::POST, "/api/v1/configs/product/lamp/revert", Some(json!({"version": 7})), 404, "not_found"),
        (Method::DELETE, "/api/v1/configs/tag/none", None, 404, "not_found"),
        (Method::GET, "/api/v1/configs/stale?limit=0", None, 400, "invalid_query"),
    ];
    for (method, path, body, status, code) in cases {
        let mut request = app.admin(method.clone(), path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        assert_eq!(error_code(request.send().await.unwrap(), status).await, code, "{method} {path}");
    }
    let unauthenticated = app.client.get(app.url("/api/v1/configs/product/lamp")).send().await.unwrap();
    assert_eq!(error_code(unauthenticated, 401).await, "unauthenticated");
    let mut deep = json!(1);
    for _ in 0..40 {
        deep = json!({ "a": deep });
    }
    assert_eq!(error_code(put(&app, "/api/v1/configs/product/lamp", json!({"content": deep})).await, 400).await, "config_too_deep");
    app.stop().await;
}

//! The device registry, identity (tokens, provisioning modes, pairing), the native check-in
//! protocol, update reports and the live event stream.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

async fn provision(app: &TestApp, body: Value) -> reqwest::Response {
    app.client.post(app.url("/api/v1/device/provision")).json(&body).send().await.unwrap()
}

/// Provisions an open-mode device and returns (device id, token).
async fn provisioned(app: &TestApp, mac: &str, product: &str, hardware: &str, version: &str) -> (String, String) {
    let response = provision(app, json!({"mac": mac, "product": product, "hardware": hardware, "version": version})).await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    (body["device_id"].as_str().unwrap().to_string(), body["token"].as_str().unwrap().to_string())
}

async fn checkin(app: &TestApp, token: &str, body: Value) -> Value {
    let response = app.client.post(app.url("/api/v1/device/checkin")).bearer_auth(token).json(&body).send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

async fn update_status(app: &TestApp, token: &str, body: Value) -> reqwest::Response {
    app.client.post(app.url("/api/v1/device/update-status")).bearer_auth(token).json(&body).send().await.unwrap()
}

async fn get_device(app: &TestApp, id: &str) -> Value {
    let response = app.admin(Method::GET, &format!("/api/v1/devices/{id}")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn macs_are_accepted_in_every_common_form_and_stored_canonically() {
    let app = spawn_app().await;
    for (input, expected) in [
        ("aa:bb:cc:dd:ee:01", "AA:BB:CC:DD:EE:01"),
        ("AA-BB-CC-DD-EE-02", "AA:BB:CC:DD:EE:02"),
        ("aabbccddee03", "AA:BB:CC:DD:EE:03"),
        // esp32FOTA's decimal eFuse MAC of 24:0A:C4:12:34:56
        ("94781653125668", "24:0A:C4:12:34:56"),
    ] {
        let response = app.admin(Method::POST, "/api/v1/devices").json(&json!({"mac": input})).send().await.unwrap();
        assert_eq!(response.status(), 201, "{input}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["mac"], expected);
    }
    let duplicate = app.admin(Method::POST, "/api/v1/devices").json(&json!({"mac": "AA:BB:CC:DD:EE:01"})).send().await.unwrap();
    assert_eq!(error_code(duplicate, 409).await, "device_exists");
    let malformed = app.admin(Method::POST, "/api/v1/devices").json(&json!({"mac": "CE:13:14:15"})).send().await.unwrap();
    assert_eq!(malformed.status(), 400);
    let body: Value = malformed.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_mac");
    assert!(body["error"]["message"].as_str().unwrap().contains("accepted forms"));
    // A device is found by id or by any form of its MAC.
    let by_mac = get_device(&app, "aa-bb-cc-dd-ee-02").await;
    assert_eq!(by_mac["mac"], "AA:BB:CC:DD:EE:02");
    app.stop().await;
}

#[tokio::test]
async fn the_registry_lists_filters_sorts_and_paginates() {
    let app = spawn_app().await;
    let devices = [
        json!({"mac": "02:00:00:00:00:01", "name": "Kitchen lamp", "product": "lamp", "hardware": "esp32", "version": "1.0.0", "tags": ["eu", "kitchen"], "owner": "alice"}),
        json!({"mac": "02:00:00:00:00:02", "name": "Hall lamp", "product": "lamp", "hardware": "esp32s3", "version": "1.1.0", "tags": ["eu"]}),
        json!({"mac": "02:00:00:00:00:03", "name": "Thermostat", "product": "thermo", "hardware": "esp32", "version": "2.0.0", "tags": ["us"]}),
    ];
    for device in &devices {
        let response = app.admin(Method::POST, "/api/v1/devices").json(device).send().await.unwrap();
        assert_eq!(response.status(), 201);
    }
    let list = |query: &'static str| {
        let app = &app;
        async move {
            let response = app.admin(Method::GET, &format!("/api/v1/devices?{query}")).send().await.unwrap();
            assert_eq!(response.status(), 200, "{query}");
            response.json::<Value>().await.unwrap()
        }
    };
    assert_eq!(list("").await["total"], 3);
    assert_eq!(list("product=lamp").await["total"], 2);
    assert_eq!(list("hardware=ESP32").await["total"], 2);
    assert_eq!(list("version=2.0.0").await["total"], 1);
    assert_eq!(list("tag=eu").await["total"], 2);
    assert_eq!(list("tag=eu&product=lamp&hardware=esp32s3").await["items"][0]["name"], "Hall lamp");
    assert_eq!(list("q=LAMP").await["total"], 2);
    assert_eq!(list("q=00:03").await["items"][0]["name"], "Thermostat");
    assert_eq!(list("q=100%25").await["total"], 0);
    assert_eq!(list("owner=alice").await["total"], 1);
    assert_eq!(list("status=offline").await["total"], 3);
    assert_eq!(list("status=online").await["total"], 0);
    assert_eq!(list("sort=name&limit=1").await["items"][0]["name"], "Hall lamp");
    let second = list("sort=name&limit=1&offset=1").await;
    assert_eq!(second["items"][0]["name"], "Kitchen lamp");
    assert_eq!(second["total"], 3);
    for bad in ["status=maybe", "sort=colour", "limit=0", "last_seen_before=yesterday", "nope=1"] {
        let response = app.admin(Method::GET, &format!("/api/v1/devices?{bad}")).send().await.unwrap();
        assert_eq!(response.status(), 400, "{bad}");
    }
    app.stop().await;
}

#[tokio::test]
async fn devices_can_be_edited_pinned_unpinned_and_deleted() {
    let app = spawn_app().await;
    let created: Value = app
        .admin(Method::POST, "/api/v1/devices")
        .json(&json!({"mac": "02:00:00:00:00:10", "product": "lamp"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let path = format!("/api/v1/devices/{id}");

    let patched: Value = app
        .admin(Method::PATCH, &path)
        .json(&json!({"name": "Porch", "target_version": "1.2.0", "tags": ["outdoor"], "metadata": {"room": "porch"}, "channel": "beta", "owner": "bob"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(patched["name"], "Porch");
    assert_eq!(patched["target_version"], "1.2.0");
    assert_eq!(patched["tags"], json!(["outdoor"]));
    assert_eq!(patched["metadata"], json!({"room": "porch"}));
    assert_eq!(patched["channel"], "beta");

    let unpinned: Value =
        app.admin(Method::PATCH, &path).json(&json!({"target_version": null, "owner": null})).send().await.unwrap().json().await.unwrap();
    assert_eq!(unpinned["target_version"], Value::Null);
    assert_eq!(unpinned["owner"], Value::Null);
    assert_eq!(unpinned["name"], "Porch");

    let bad = app.admin(Method::PATCH, &path).json(&json!({"target_version": "soon"})).send().await.unwrap();
    assert_eq!(error_code(bad, 400).await, "invalid_version");
    let bad_meta = app.admin(Method::PATCH, &path).json(&json!({"metadata": [1, 2]})).send().await.unwrap();
    assert_eq!(error_code(bad_meta, 400).await, "invalid_json");

    assert_eq!(app.admin(Method::DELETE, &path).send().await.unwrap().status(), 204);
    let gone = app.admin(Method::GET, &path).send().await.unwrap();
    assert_eq!(error_code(gone, 404).await, "not_found");
    app.stop().await;
}

#[tokio::test]
async fn devices_can_be_imported_from_csv_and_json() {
    let app = spawn_app().await;
    let csv = "mac,name,product,hardware,tags\n02:00:00:00:01:01,A,lamp,esp32,eu;kitchen\n02-00-00-00-01-02,B,lamp,esp32,\nnot-a-mac,C,lamp,esp32,\n02:00:00:00:01:01,dup,lamp,esp32,\n";
    let response = app.admin(Method::POST, "/api/v1/devices/import").header("content-type", "text/csv").body(csv).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let result: Value = response.json().await.unwrap();
    assert_eq!(result["created"], 2);
    let errors = result["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{result}");
    assert_eq!(errors[0]["row"], 2);
    assert_eq!(errors[0]["code"], "invalid_mac");
    assert_eq!(errors[1]["code"], "duplicate_mac");

    let json_rows = json!([{"mac": "02:00:00:00:02:01", "product": "thermo", "tags": ["us"]}, {"mac": "02:00:00:00:01:02"}]);
    let result: Value = app.admin(Method::POST, "/api/v1/devices/import").json(&json_rows).send().await.unwrap().json().await.unwrap();
    assert_eq!(result["created"], 1);
    assert_eq!(result["errors"][0]["code"], "device_exists");

    let tagged: Value = app.admin(Method::GET, "/api/v1/devices?tag=kitchen").send().await.unwrap().json().await.unwrap();
    assert_eq!(tagged["total"], 1);
    let bad_header =
        app.admin(Method::POST, "/api/v1/devices/import").header("content-type", "text/csv").body("serial\n1\n").send().await.unwrap();
    assert_eq!(error_code(bad_header, 400).await, "invalid_csv");
    let wrong_type = app.admin(Method::POST, "/api/v1/devices/import").header("content-type", "text/plain").body("x").send().await.unwrap();
    assert_eq!(wrong_type.status(), 415);
    app.stop().await;
}

#[tokio::test]
async fn device_tokens_are_shown_once_stored_hashed_and_rotate() {
    let app = spawn_app().await;
    let created: Value = app
        .admin(Method::POST, "/api/v1/devices")
        .json(&json!({"mac": "02:00:00:00:03:01", "product": "lamp", "issue_token": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first = created["token"].as_str().unwrap().to_string();
    assert!(first.len() >= 32, "tokens carry at least 128 bits");
    let id = created["id"].as_str().unwrap();
    assert_eq!(checkin(&app, &first, json!({"version": "1.0.0"})).await["update"], Value::Null);
    // The token never appears again.
    let shown = get_device(&app, id).await;
    assert!(!shown.to_string().contains(&first));
    assert_eq!(shown["has_token"], true);

    let rotated: Value = app.admin(Method::POST, &format!("/api/v1/devices/{id}/token")).send().await.unwrap().json().await.unwrap();
    let second = rotated["token"].as_str().unwrap();
    assert_ne!(second, first);
    let old = app.client.post(app.url("/api/v1/device/checkin")).bearer_auth(&first).json(&json!({})).send().await.unwrap();
    assert_eq!(error_code(old, 401).await, "unauthenticated");
    let by_header = app.client.get(app.url("/api/v1/device/checkin?version=1.0.0")).header("X-Device-Token", second).send().await.unwrap();
    assert_eq!(by_header.status(), 200);
    let none = app.client.get(app.url("/api/v1/device/checkin")).send().await.unwrap();
    assert_eq!(error_code(none, 401).await, "unauthenticated");
    app.stop().await;
}

#[tokio::test]
async fn open_provisioning_creates_unknown_devices_and_reissues_tokens() {
    let app = spawn_app().await;
    let first = provision(&app, json!({"mac": "aa:bb:cc:00:00:01", "product": "lamp", "hardware": "esp32", "version": "1.0.0"})).await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["poll_interval_s"], 3600);
    assert!(first["mqtt"]["topic_prefix"].as_str().unwrap().starts_with("updraft/"));

    // Knowing the MAC is not enough to take a device's identity: it needs its current token.
    let stranger = provision(&app, json!({"mac": "AABBCC000001", "product": "lamp"})).await;
    assert_eq!(error_code(stranger, 409).await, "device_has_token");
    let again = app
        .client
        .post(app.url("/api/v1/device/provision"))
        .bearer_auth(first["token"].as_str().unwrap())
        .json(&json!({"mac": "AABBCC000001", "product": "lamp"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["device_id"], first["device_id"]);
    // The old token is revoked.
    let old = app
        .client
        .post(app.url("/api/v1/device/checkin"))
        .bearer_auth(first["token"].as_str().unwrap())
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 401);
    checkin(&app, again["token"].as_str().unwrap(), json!({})).await;

    let other_product = provision(&app, json!({"mac": "aa:bb:cc:00:00:01", "product": "thermo"})).await;
    assert_eq!(error_code(other_product, 409).await, "product_mismatch");
    let no_product = provision(&app, json!({"mac": "aa:bb:cc:00:00:02"})).await;
    assert_eq!(error_code(no_product, 400).await, "missing_product");
    let bad_mac = provision(&app, json!({"mac": "zz", "product": "lamp"})).await;
    assert_eq!(error_code(bad_mac, 400).await, "invalid_mac");
    app.stop().await;
}

#[tokio::test]
async fn key_provisioning_requires_the_products_key_and_secret() {
    let app = spawn_app().await;
    let put = app
        .admin(Method::PUT, "/api/v1/products/sensor")
        .json(&json!({"provisioning": "key", "provision_key": "sensor-key-1", "provision_secret": "a-long-provisioning-secret", "poll_interval_s": 120}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let product: Value = put.json().await.unwrap();
    assert_eq!(product["provisioning"], "key");
    assert_eq!(product["has_provision_secret"], true);
    assert!(!product.to_string().contains("a-long-provisioning-secret"));

    let without = provision(&app, json!({"mac": "02:00:00:00:04:01", "product": "sensor"})).await;
    assert_eq!(error_code(without, 403).await, "forbidden");
    let wrong = provision(
        &app,
        json!({"mac": "02:00:00:00:04:01", "provision_key": "sensor-key-1", "provision_secret": "wrong-secret-wrong-secret"}),
    )
    .await;
    assert_eq!(wrong.status(), 403);
    let right = provision(&app, json!({"mac": "02:00:00:00:04:01", "provision_key": "sensor-key-1", "provision_secret": "a-long-provisioning-secret", "hardware": "esp32c3"})).await;
    assert_eq!(right.status(), 201);
    let right: Value = right.json().await.unwrap();
    assert_eq!(right["poll_interval_s"], 120);
    assert_eq!(get_device(&app, right["device_id"].as_str().unwrap()).await["product"], "sensor");

    let incomplete = app.admin(Method::PUT, "/api/v1/products/other").json(&json!({"provisioning": "key"})).send().await.unwrap();
    assert_eq!(error_code(incomplete, 400).await, "invalid_provisioning");
    app.stop().await;
}

#[tokio::test]
async fn a_products_floor_is_written_with_its_policy_and_kept_until_changed() {
    let app = spawn_app().await;
    let put = |body: Value| app.admin(Method::PUT, "/api/v1/products/lamp").json(&body).send();

    // A new product and its floor, in one change.
    let created = put(json!({"provisioning": "open", "min_version": "1.5.0"})).await.unwrap();
    assert_eq!(created.status(), 200);
    let created: Value = created.json().await.unwrap();
    assert_eq!((created["configured"].clone(), created["min_version"].clone()), (json!(true), json!("1.5.0")));
    // A change that does not name the floor keeps it.
    let changed: Value = put(json!({"provisioning": "open", "poll_interval_s": 120})).await.unwrap().json().await.unwrap();
    assert_eq!((changed["poll_interval_s"].clone(), changed["min_version"].clone()), (json!(120), json!("1.5.0")));
    // A refused change writes neither the policy nor the floor.
    let refused = put(json!({"provisioning": "open", "provision_secret": "short", "min_version": "2.0.0"})).await.unwrap();
    assert_eq!(error_code(refused, 400).await, "invalid_provision_secret");
    let read: Value = app.admin(Method::GET, "/api/v1/products/lamp").send().await.unwrap().json().await.unwrap();
    assert_eq!(read["min_version"], "1.5.0");
    let bad_floor = put(json!({"provisioning": "key", "min_version": "not a version"})).await.unwrap();
    assert_eq!(error_code(bad_floor, 400).await, "invalid_version");
    // `null` removes it.
    let cleared: Value = put(json!({"provisioning": "open", "min_version": null})).await.unwrap().json().await.unwrap();
    assert_eq!(cleared["min_version"], Value::Null);
    let listed: Value = app.admin(Method::GET, "/api/v1/products").send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["items"][0]["name"], "lamp");
    assert_eq!(listed["items"][0]["min_version"], Value::Null);
    assert_eq!(listed["items"][0]["poll_interval_s"], 120);
    app.stop().await;
}

#[tokio::test]
async fn preregistered_provisioning_serves_only_devices_an_operator_created() {
    let app = spawn_app().await;
    app.admin(Method::PUT, "/api/v1/products/meter").json(&json!({"provisioning": "preregistered"})).send().await.unwrap();

    let stranger = provision(&app, json!({"mac": "02:00:00:00:05:01", "product": "meter"})).await;
    assert_eq!(error_code(stranger, 403).await, "forbidden");

    app.admin(Method::POST, "/api/v1/devices").json(&json!({"mac": "02:00:00:00:05:02", "product": "meter"})).send().await.unwrap();
    let known = provision(&app, json!({"mac": "02:00:00:00:05:02", "product": "meter"})).await;
    assert_eq!(known.status(), 200);
    let again = provision(&app, json!({"mac": "02:00:00:00:05:02", "product": "meter"})).await;
    assert_eq!(error_code(again, 409).await, "device_has_token");
    app.stop().await;
}

#[tokio::test]
async fn repeated_failed_authentication_is_slowed_down() {
    let app = spawn_app().await;
    let mut last = None;
    for _ in 0..12 {
        let response =
            app.client.post(app.url("/api/v1/device/checkin")).bearer_auth("upd_dev_guess").json(&json!({})).send().await.unwrap();
        last = Some(response);
    }
    let last = last.unwrap();
    let retry_after: u64 = last.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after));
    assert_eq!(error_code(last, 429).await, "too_many_requests");
    // Other addresses are unaffected (the limit is per address; it counts wrong admin keys
    // too, and holds every credential from that address back).
    let other = reqwest::Client::builder().no_proxy().local_address(std::net::IpAddr::from([127, 0, 0, 9])).build().unwrap();
    assert_eq!(other.get(app.url("/api/v1/devices")).bearer_auth(ADMIN_KEY).send().await.unwrap().status(), 200);
    assert_eq!(app.admin(Method::GET, "/api/v1/devices").send().await.unwrap().status(), 429);
    app.stop().await;
}

#[tokio::test]
async fn pairing_binds_a_device_to_the_owner_once() {
    let app = spawn_app().await;
    let (device_id, token) = provisioned(&app, "02:00:00:00:06:01", "lamp", "esp32", "1.0.0").await;
    let created = app.admin(Method::POST, "/api/v1/pairing").json(&json!({"owner": "alice@example.com"})).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let key = created["pair_key"].as_str().unwrap().to_string();
    assert!(created["expires_at"].as_str().unwrap().ends_with('Z'));

    let paired = app
        .client
        .post(app.url("/api/v1/device/pair"))
        .bearer_auth(&token)
        .json(&json!({"pair_key": key.to_lowercase()}))
        .send()
        .await
        .unwrap();
    assert_eq!(paired.status(), 200);
    assert_eq!(get_device(&app, &device_id).await["owner"], "alice@example.com");

    let reused = app.client.post(app.url("/api/v1/device/pair")).bearer_auth(&token).json(&json!({"pair_key": key})).send().await.unwrap();
    assert_eq!(error_code(reused, 409).await, "invalid_pair_key");
    let unknown =
        app.client.post(app.url("/api/v1/device/pair")).bearer_auth(&token).json(&json!({"pair_key": "ZZZZ-ZZZZ"})).send().await.unwrap();
    assert_eq!(unknown.status(), 409);
    let anonymous = app.client.post(app.url("/api/v1/device/pair")).json(&json!({"pair_key": "ZZZZ-ZZZZ"})).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn an_expired_pair_key_is_refused() {
    let app = spawn_app().await;
    let (_, token) = provisioned(&app, "02:00:00:00:06:02", "lamp", "esp32", "1.0.0").await;
    let short = app.admin(Method::POST, "/api/v1/pairing").json(&json!({"owner": "bob", "ttl_s": 1})).send().await.unwrap();
    assert_eq!(error_code(short, 400).await, "invalid_ttl");
    let created: Value =
        app.admin(Method::POST, "/api/v1/pairing").json(&json!({"owner": "bob", "ttl_s": 30})).send().await.unwrap().json().await.unwrap();
    let key = created["pair_key"].as_str().unwrap();
    // Expire it in the database rather than waiting 30 s.
    expire_pairings(&app).await;
    let late = app.client.post(app.url("/api/v1/device/pair")).bearer_auth(&token).json(&json!({"pair_key": key})).send().await.unwrap();
    assert_eq!(error_code(late, 409).await, "invalid_pair_key");
    app.stop().await;
}

async fn expire_pairings(app: &TestApp) {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let url = if app.settings.database_url.expose().starts_with("sqlite:") {
        format!("{}?mode=rw", app.settings.database_url.expose())
    } else {
        app.settings.database_url.expose().to_string()
    };
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    sqlx::query("UPDATE pairing SET expires_at = 0").execute(&mut conn).await.unwrap();
}

#[tokio::test]
async fn setup_progress_is_recorded_with_the_seed_codes() {
    let app = spawn_app().await;
    let (device_id, token) = provisioned(&app, "02:00:00:00:07:01", "lamp", "esp32", "1.0.0").await;
    let report = |body: Value| {
        let app = &app;
        let token = token.clone();
        async move { app.client.post(app.url("/api/v1/device/setup-status")).bearer_auth(token).json(&body).send().await.unwrap() }
    };
    assert_eq!(report(json!({"status_code": 1})).await.status(), 204);
    assert_eq!(report(json!({"status_code": 6, "title": "MQTT_CONNECT_BAD_CREDENTIALS", "description": "rc=4"})).await.status(), 204);
    assert_eq!(report(json!({"statusCode": 4, "title": "done"})).await.status(), 204);
    assert_eq!(error_code(report(json!({"status_code": 5, "title": "SERVER_ERROR"})).await, 400).await, "invalid_setup_status");
    assert_eq!(error_code(report(json!({"status_code": 9})).await, 400).await, "invalid_setup_status");

    let device = get_device(&app, &device_id).await;
    assert_eq!(device["setup_status"]["status_code"], 4);
    let history: Value =
        app.admin(Method::GET, &format!("/api/v1/devices/{device_id}/setup-history")).send().await.unwrap().json().await.unwrap();
    let items = history["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["title"], "CONNECTING_TO_WIFI");
    assert_eq!(items[1]["title"], "MQTT_CONNECT_BAD_CREDENTIALS");
    assert_eq!(items[1]["description"], "rc=4");
    app.stop().await;
}

#[tokio::test]
async fn a_device_checks_in_downloads_its_update_and_reports_success() {
    let app = spawn_app().await;
    let build = random_bytes(300_000, 90);
    let artifact = app.create_artifact(build.clone(), "product=lamp&version=1.1.0&hardware=esp32").await;
    app.create_artifact(random_bytes(1000, 91), "product=lamp&version=9.0.0&hardware=esp32s3").await;
    let (device_id, token) = provisioned(&app, "02:00:00:00:08:01", "lamp", "esp32", "1.0.0").await;

    let answer = checkin(&app, &token, json!({"version": "1.0.0", "attributes": {"rssi": -60}})).await;
    let update = &answer["update"];
    assert_eq!(update["version"], "1.1.0");
    assert_eq!(update["size"], build.len());
    assert_eq!(update["sha256"], artifact["sha256"]);
    assert_eq!(update["md5"], artifact["md5"]);
    assert_eq!(update["release_id"], artifact["id"]);
    assert_eq!(update["mandatory"], false);
    assert_eq!(answer["poll_interval_s"], 3600);

    // The URL works on its own (signed), with ranges, and not once tampered with.
    let url = update["url"].as_str().unwrap();
    let bytes = app.client.get(url).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(bytes.as_ref(), build.as_slice());
    let ranged = app.client.get(url).header("range", "bytes=100-199").send().await.unwrap();
    assert_eq!(ranged.status(), 206);
    assert_eq!(ranged.headers()["x-md5"], artifact["md5"].as_str().unwrap());
    let tampered = url.replace("signature=", "signature=00");
    assert_eq!(app.client.get(&tampered).send().await.unwrap().status(), 403);
    let unsigned = url.split('?').next().unwrap();
    assert_eq!(app.client.get(unsigned).send().await.unwrap().status(), 401);
    assert_eq!(app.client.get(unsigned).bearer_auth(&token).send().await.unwrap().status(), 200);

    for state in ["downloading", "downloaded", "installing", "installed"] {
        let response = update_status(&app, &token, json!({"release_id": artifact["id"], "state": state, "progress": 50})).await;
        assert_eq!(response.status(), 200, "{state}");
    }
    // Installed is not yet success: the device must come back running the new version.
    let history: Value =
        app.admin(Method::GET, &format!("/api/v1/devices/{device_id}/updates")).send().await.unwrap().json().await.unwrap();
    assert_eq!(history["items"][0]["state"], "installed");

    let after = checkin(&app, &token, json!({"version": "1.1.0"})).await;
    assert_eq!(after["update"], Value::Null);
    let history: Value =
        app.admin(Method::GET, &format!("/api/v1/devices/{device_id}/updates")).send().await.unwrap().json().await.unwrap();
    let attempt = &history["items"][0];
    assert_eq!(attempt["state"], "succeeded");
    assert_eq!(attempt["from_version"], "1.0.0");
    assert_eq!(attempt["to_version"], "1.1.0");
    let states: Vec<&str> = attempt["events"].as_array().unwrap().iter().map(|e| e["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["offered", "downloading", "downloaded", "installing", "installed", "succeeded"]);

    let device = get_device(&app, &device_id).await;
    assert_eq!(device["version"], "1.1.0");
    assert_eq!(device["status"], "online");
    assert_eq!(device["ip"], "127.0.0.1");
    assert_eq!(device["attributes"], json!({"rssi": -60}));
    assert!(device["last_seen"].is_string());
    app.stop().await;
}

#[tokio::test]
async fn concurrent_check_ins_of_one_device_share_one_current_attempt() {
    // Devices such as the ThingsBoard SDK ask twice at once (attributes request and a
    // telemetry report); on PostgreSQL two racing check-ins once opened two current attempts.
    let app = spawn_app().await;
    let artifact = app.create_artifact(random_bytes(5000, 92), "product=lamp&version=1.1.0&hardware=esp32").await;
    let (device_id, token) = provisioned(&app, "02:00:00:00:08:02", "lamp", "esp32", "1.0.0").await;
    for round in 0..5 {
        let answers = futures::future::join_all((0..16).map(|_| checkin(&app, &token, json!({"version": "1.0.0"})))).await;
        let offered: Vec<&Value> = answers.iter().map(|a| &a["update"]).filter(|u| !u.is_null()).collect();
        assert!(!offered.is_empty(), "round {round}: nobody was offered the update");
        assert!(offered.iter().all(|u| u["release_id"] == artifact["id"]), "round {round}");
    }
    let history: Value =
        app.admin(Method::GET, &format!("/api/v1/devices/{device_id}/updates")).send().await.unwrap().json().await.unwrap();
    let items = history["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "one attempt for one build, however many check-ins raced: {history}");
    assert_eq!(items[0]["current"], true);
    assert_eq!(items[0]["state"], "offered");
    // And the device's one attempt goes on to success.
    for state in ["downloading", "installed"] {
        assert_eq!(update_status(&app, &token, json!({"release_id": artifact["id"], "state": state})).await.status(), 200);
    }
    checkin(&app, &token, json!({"version": "1.1.0"})).await;
    let history: Value =
        app.admin(Method::GET, &format!("/api/v1/devices/{device_id}/updates")).send().await.unwrap().json().await.unwrap();
    assert_eq!(history["items"][0]["state"], "succeeded", "{history}");
    app.stop().await;
}

#[tokio::test]
async fn reports_about_an_update_that_is_not_current_are_refused() {
    let app = spawn_app().await;
    let artifact = app.create_artifact(random_bytes(1000, 92), "product=lamp&version=1.1.0&hardware=esp32").await;
    let (_, token) = provisioned(&app, "02:00:00:00:09:01", "lamp", "esp32", "1.0.0").await;

    let nothing_yet = update_status(&app, &token, json!({"state": "downloading"})).await;
    assert_eq!(error_code(nothing_yet, 409).await, "update_not_current");
    checkin(&app, &token, json!({"version": "1.0.0"})).await;
    let other_release = update_status(&app, &token, json!({"release_id": "something-else", "state": "downloading"})).await;
    assert_eq!(error_code(other_release, 409).await, "update_not_current");
    let other_version = update_status(&app, &token, json!({"version": "2.0.0", "state": "downloading"})).await;
    assert_eq!(error_code(other_version, 409).await, "update_not_current");
    let bad_state = update_status(&app, &token, json!({"state": "exploded"})).await;
    assert_eq!(error_code(bad_state, 400).await, "invalid_state");
    let bad_progress = update_status(&app, &token, json!({"state": "downloading", "progress": 101})).await;
    assert_eq!(error_code(bad_progress, 400).await, "invalid_progress");

    let failed =
        update_status(&app, &token, json!({"release_id": artifact["id"], "state": "failed", "message": "checksum mismatch"})).await;
    assert_eq!(failed.status(), 200);
    let after_final = update_status(&app, &token, json!({"release_id": artifact["id"], "state": "installing"})).await;
    assert_eq!(error_code(after_final, 409).await, "update_not_current");
    // A build the device just failed is not offered again at once (no retry storm).
    assert_eq!(checkin(&app, &token, json!({"version": "1.0.0"})).await["update"], Value::Null);
    app.stop().await;
}

#[tokio::test]
async fn a_pin_wins_and_may_downgrade() {
    let app = spawn_app().await;
    let old = app.create_artifact(random_bytes(1000, 93), "product=lamp&version=1.0.0&hardware=esp32").await;
    app.create_artifact(random_bytes(1000, 94), "product=lamp&version=2.0.0&hardware=esp32").await;
    let (device_id, token) = provisioned(&app, "02:00:00:00:0A:01", "lamp", "esp32", "2.0.0").await;
    assert_eq!(checkin(&app, &token, json!({"version": "2.0.0"})).await["update"], Value::Null);

    app.admin(Method::PATCH, &format!("/api/v1/devices/{device_id}")).json(&json!({"target_version": "1.0.0"})).send().await.unwrap();
    let answer = checkin(&app, &token, json!({"version": "2.0.0"})).await;
    assert_eq!(answer["update"]["version"], "1.0.0");
    assert_eq!(answer["update"]["release_id"], old["id"]);
    assert_eq!(answer["update"]["mandatory"], true);
    assert_eq!(checkin(&app, &token, json!({"version": "1.0.0"})).await["update"], Value::Null);
    app.stop().await;
}

#[tokio::test]
async fn a_device_reaches_only_its_own_products_builds() {
    let app = spawn_app().await;
    let foreign = app.create_artifact(random_bytes(1000, 95), "product=thermo&version=1.0.0&hardware=esp32").await;
    let (_, token) = provisioned(&app, "02:00:00:00:0B:01", "lamp", "esp32", "1.0.0").await;
    let response = app
        .client
        .get(app.url(&format!("/api/v1/device/firmware/{}", foreign["id"].as_str().unwrap())))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    // Admin endpoints refuse device tokens.
    let admin = app.client.get(app.url("/api/v1/devices")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(admin.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn the_event_stream_carries_device_events_live() {
    use futures::StreamExt;
    let app = spawn_app().await;
    let response = app.admin(Method::GET, "/api/v1/events").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut stream = response.bytes_stream();

    let (_, token) = provisioned(&app, "02:00:00:00:0C:01", "lamp", "esp32", "1.0.0").await;
    checkin(&app, &token, json!({"version": "1.0.0"})).await;

    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !(seen.contains("event: device.created") && seen.contains("event: device.online") && seen.contains("event: device.checkin")) {
        let chunk = tokio::time::timeout_at(deadline, stream.next()).await.expect("events arrive in time").expect("stream open").unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("\"device_id\""));
    app.stop().await;
}

#[tokio::test]
async fn a_silent_device_turns_offline_and_the_stream_says_so() {
    use futures::StreamExt;
    let app = spawn_app_with(|s| s.devices.offline_after = std::time::Duration::from_secs(2)).await;
    let (device_id, token) = provisioned(&app, "02:00:00:00:0D:01", "lamp", "esp32", "1.0.0").await;
    let mut stream = app.admin(Method::GET, "/api/v1/events").send().await.unwrap().bytes_stream();
    checkin(&app, &token, json!({"version": "1.0.0"})).await;
    assert_eq!(get_device(&app, &device_id).await["status"], "online");
    let online: Value = app.admin(Method::GET, "/api/v1/devices?status=online").send().await.unwrap().json().await.unwrap();
    assert_eq!(online["total"], 1);

    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    while !seen.contains("event: device.offline") {
        let chunk = tokio::time::timeout_at(deadline, stream.next()).await.expect("offline event in time").expect("stream open").unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert_eq!(get_device(&app, &device_id).await["status"], "offline");
    let offline: Value = app.admin(Method::GET, "/api/v1/devices?status=offline").send().await.unwrap().json().await.unwrap();
    assert_eq!(offline["total"], 1);
    drop(stream);
    app.stop().await;
}

#[tokio::test]
async fn a_token_revoked_on_one_replica_stops_working_on_the_others() {
    let app = spawn_app().await;
    // A second replica on the same database and blob store.
    let replica = start(app.settings.clone(), DataDir::for_replica()).await;
    let (device_id, token) = provisioned(&app, "02:00:00:00:0E:01", "lamp", "esp32", "1.0.0").await;
    // The replica caches the device on first use.
    assert_eq!(checkin(&replica, &token, json!({"version": "1.0.0"})).await["update"], Value::Null);

    app.admin(Method::POST, &format!("/api/v1/devices/{device_id}/token")).send().await.unwrap();

    let mut status = 200;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        status = replica
            .client
            .post(replica.url("/api/v1/device/checkin"))
            .bearer_auth(&token)
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if status == 401 {
            break;
        }
    }
    assert_eq!(status, 401, "the replica still accepts the revoked token");
    replica.stop().await;
    app.stop().await;
}

async fn metric(app: &TestApp, name: &str) -> Option<f64> {
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|line| line.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
}

#[tokio::test]
async fn a_replica_loads_every_token_holder_into_its_fleet_index_at_start() {
    let app = spawn_app().await;
    let mut tokens = Vec::new();
    for i in 0..5 {
        tokens.push(provisioned(&app, &format!("02:00:00:00:0F:0{i}"), "lamp", "esp32", "1.0.0").await.1);
    }
    // A registered device without a token is not indexed.
    let created = app.admin(Method::POST, "/api/v1/devices").json(&json!({"mac": "02:00:00:00:0F:09"})).send().await.unwrap();
    assert_eq!(created.status(), 201);

    let replica = start(app.settings.clone(), DataDir::for_replica()).await;
    let mut indexed = None;
    for _ in 0..50 {
        indexed = metric(&replica, "updraft_fleet_index_devices ").await;
        if indexed == Some(5.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(indexed, Some(5.0), "the replica did not load the fleet");
    for token in &tokens {
        assert_eq!(checkin(&replica, token, json!({"version": "1.0.0"})).await["update"], Value::Null);
    }
    replica.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn devices_beyond_the_fleet_index_still_check_in_and_report() {
    // An index of 3 for 12 devices: most check-ins find their device cold (evicted, or never
    // loaded) and read it from the database.
    let app = spawn_app_with(|s| s.devices.cache_entries = 3).await;
    let mut devices = Vec::new();
    for i in 0..12 {
        devices.push(provisioned(&app, &format!("02:00:00:00:0E:{i:02X}"), "lamp", "esp32", "1.0.0").await);
    }
    for round in ["1.0.0", "1.1.0", "1.1.0"] {
        for (_, token) in &devices {
            assert_eq!(checkin(&app, token, json!({"version": round, "attributes": {"round": round}})).await["update"], Value::Null);
        }
    }
    for (id, _) in &devices {
        let device = get_device(&app, id).await;
        assert_eq!((device["version"].as_str(), device["status"].as_str()), (Some("1.1.0"), Some("online")), "{device}");
        assert_eq!(device["attributes"], json!({"round": "1.1.0"}));
    }
    let indexed = metric(&app, "updraft_fleet_index_devices ").await;
    assert!(indexed.is_some_and(|n| n <= 3.0), "{indexed:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_device_that_moves_is_recorded_at_its_new_address_at_once() {
    let app = spawn_app_with(|s| s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    let (device_id, token) = provisioned(&app, "02:00:00:00:0F:11", "lamp", "esp32", "1.0.0").await;
    for ip in ["10.0.0.1", "10.0.0.2", "10.0.0.1"] {
        let response = app
            .client
            .get(app.url("/api/v1/device/checkin?version=1.0.0"))
            .bearer_auth(&token)
            .header("X-Forwarded-For", ip)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(get_device(&app, &device_id).await["ip"], ip);
    }
    // And it reaches the database (what other replicas read) within the flush period.
    let replica = start(app.settings.clone(), DataDir::for_replica()).await;
    let mut seen = Value::Null;
    for _ in 0..30 {
        seen = get_device(&replica, &device_id).await["ip"].clone();
        if seen == "10.0.0.1" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(seen, "10.0.0.1");
    replica.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn reported_attributes_are_merged_each_time_they_differ() {
    let app = spawn_app().await;
    let (device_id, token) = provisioned(&app, "02:00:00:00:0F:21", "lamp", "esp32", "1.0.0").await;
    for (reported, expected) in [
        (json!({"rssi": -60, "ssid": "home"}), json!({"rssi": -60, "ssid": "home"})),
        (json!({"rssi": -60, "ssid": "home"}), json!({"rssi": -60, "ssid": "home"})),
        (json!({"rssi": -70}), json!({"rssi": -70, "ssid": "home"})),
        (json!({"rssi": -60, "ssid": "home"}), json!({"rssi": -60, "ssid": "home"})),
        (json!({"ssid": null}), json!({"rssi": -60})),
    ] {
        checkin(&app, &token, json!({"version": "1.0.0", "attributes": reported})).await;
        assert_eq!(get_device(&app, &device_id).await["attributes"], expected);
    }
    app.stop().await;
}

#[tokio::test]
async fn a_stopping_server_writes_every_buffered_last_seen_before_it_exits() {
    // The periodic write is held to 100 rows a second, so most of these check-ins are still
    // buffered when the server stops: only the final write at shutdown stores them.
    let app = spawn_app_with(|s| s.devices.presence_writes_per_sec = 100).await;
    let mut devices = Vec::new();
    for i in 0..500 {
        devices.push(provisioned(&app, &format!("02:00:00:00:{:02X}:{:02X}", i / 256, i % 256), "lamp", "esp32", "1.0.0").await);
    }
    for (_, token) in &devices {
        assert_eq!(checkin(&app, token, json!({"version": "1.0.0"})).await["update"], Value::Null);
    }
    let (settings, data_dir) = app.stop_keeping_data().await;
    let app = start(settings, data_dir).await;
    let mut missing = 0;
    for (id, _) in &devices {
        if get_device(&app, id).await["last_seen"].is_null() {
            missing += 1;
        }
    }
    assert_eq!(missing, 0, "{missing} of {} check-ins left no last_seen after a clean stop", devices.len());
    app.stop().await;
}

#[tokio::test]
async fn presence_writes_are_rate_limited_but_all_reach_the_database() {
    let app = spawn_app_with(|s| s.devices.presence_writes_per_sec = 100).await;
    let mut ids = Vec::new();
    for i in 0..250 {
        let (id, token) = provisioned(&app, &format!("02:00:00:00:1{}:{:02X}", i / 256, i % 256), "lamp", "esp32", "1.0.0").await;
        assert_eq!(checkin(&app, &token, json!({"version": "1.0.0"})).await["update"], Value::Null);
        ids.push(id);
    }
    // This replica's own view is exact at once.
    for id in ids.iter().take(5) {
        assert_eq!(get_device(&app, id).await["status"], "online");
    }
    // Another replica reads the database: every last_seen arrives, 100 rows a second.
    let replica = start(app.settings.clone(), DataDir::for_replica()).await;
    let mut stored = 0;
    for _ in 0..100 {
        stored = 0;
        for id in &ids {
            if !get_device(&replica, id).await["last_seen"].is_null() {
                stored += 1;
            }
        }
        if stored == ids.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(stored, ids.len());
    replica.stop().await;
    app.stop().await;
}

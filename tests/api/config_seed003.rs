//! Seed 003's configuration API: its routes, MAC rule, bodies, raw device files, its error
//! shape `{"error","code","details":{"message"},"correlationId"}` and, for bodies its schema
//! refuses, its list of validation errors `[{"loc","msg","type"}]`.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

/// Asserts seed 003's error shape and returns its code; the correlation id is the request id.
pub async fn seed_error(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    let request_id = response.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_string());
    let body: Value = response.json().await.expect("error bodies are JSON");
    assert!(body["error"].as_str().is_some_and(|m| !m.is_empty()), "no error in {body}");
    assert!(body["details"]["message"].as_str().is_some_and(|m| !m.is_empty()), "no details.message in {body}");
    assert!(body["correlationId"].as_str().is_some_and(|c| !c.is_empty()), "no correlationId in {body}");
    assert_eq!(body["correlationId"].as_str().map(str::to_string), request_id);
    body["code"].as_str().unwrap_or_else(|| panic!("no code in {body}")).to_string()
}

/// Asserts seed 003's validation answer (400 and a list of pydantic errors, each with `loc`,
/// `msg` and `type`); returns `(loc joined with '.', type)` of each.
pub async fn seed_validation(response: reqwest::Response) -> Vec<(String, String)> {
    assert_eq!(response.status().as_u16(), 400, "unexpected status");
    let body: Value = response.json().await.expect("validation answers are JSON");
    let errors = body.as_array().unwrap_or_else(|| panic!("not a list of errors: {body}"));
    assert!(!errors.is_empty(), "an empty list of errors");
    errors
        .iter()
        .map(|error| {
            assert!(error["msg"].as_str().is_some_and(|m| !m.is_empty()), "no msg in {error}");
            let loc = error["loc"].as_array().unwrap_or_else(|| panic!("no loc in {error}"));
            let loc: Vec<&str> = loc.iter().map(|part| part.as_str().unwrap()).collect();
            (loc.join("."), error["type"].as_str().unwrap_or_else(|| panic!("no type in {error}")).to_string())
        })
        .collect()
}

fn one(loc: &str, kind: &str) -> Vec<(String, String)> {
    vec![(loc.to_string(), kind.to_string())]
}

#[tokio::test]
async fn configs_are_created_listed_read_served_raw_and_deleted_as_seed_003_does() {
    let app = spawn_app().await;
    let content = json!({"deviceName": "Kitchen", "deviceEntityId": "sensor.kitchen", "enableOTA": true, "mqtt": {"host": "broker"}});
    // Upper case is lower-cased first.
    let saved = app
        .admin(Method::PUT, "/api/configs/AA-BB-CC-00-00-01")
        .json(&json!({"content": content, "allow_overwrite": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(saved.status(), 200);
    let saved: Value = saved.json().await.unwrap();
    assert_eq!(
        saved,
        json!({"mac_address": "aa-bb-cc-00-00-01", "device_name": "Kitchen", "device_entity_id": "sensor.kitchen", "enable_ota": true, "content": content})
    );
    app.admin(Method::PUT, "/api/configs/aa-bb-cc-00-00-00").json(&json!({"content": {"x": 1}})).send().await.unwrap();

    let list: Value = app.admin(Method::GET, "/api/configs").send().await.unwrap().json().await.unwrap();
    assert_eq!(list["count"], 2);
    assert_eq!(
        list["configs"],
        json!([
            {"mac_address": "aa-bb-cc-00-00-00", "device_name": null, "device_entity_id": null, "enable_ota": null},
            {"mac_address": "aa-bb-cc-00-00-01", "device_name": "Kitchen", "device_entity_id": "sensor.kitchen", "enable_ota": true}
        ])
    );
    let one: Value = app.admin(Method::GET, "/api/configs/aa-bb-cc-00-00-01").send().await.unwrap().json().await.unwrap();
    assert_eq!(one, saved);

    // Devices read the raw document without credentials.
    let raw = app.client.get(app.url("/api/configs/aa-bb-cc-00-00-01.json")).send().await.unwrap();
    assert_eq!(raw.status(), 200);
    assert_eq!(raw.headers()["cache-control"], "no-cache");
    assert_eq!(raw.json::<Value>().await.unwrap(), content);

    let deleted = app.admin(Method::DELETE, "/api/configs/aa-bb-cc-00-00-01").send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(seed_error(app.admin(Method::GET, "/api/configs/aa-bb-cc-00-00-01").send().await.unwrap(), 404).await, "RECORD_NOT_FOUND");
    assert_eq!(
        seed_error(app.client.get(app.url("/api/configs/aa-bb-cc-00-00-01.json")).send().await.unwrap(), 404).await,
        "RECORD_NOT_FOUND"
    );
    assert_eq!(
        seed_error(app.admin(Method::DELETE, "/api/configs/aa-bb-cc-00-00-01").send().await.unwrap(), 404).await,
        "RECORD_NOT_FOUND"
    );
    assert_eq!(app.admin(Method::GET, "/api/configs").send().await.unwrap().json::<Value>().await.unwrap()["count"], 1);
    // The history of the seed-003 document is kept like any other.
    let history: Value =
        app.admin(Method::GET, "/api/v1/configs/device/aa-bb-cc-00-00-01/history").send().await.unwrap().json().await.unwrap();
    assert_eq!(history["total"], 2);
    assert_eq!(history["items"][1]["author"], "key:admin", "the principal, whatever the API");
    app.stop().await;
}

#[tokio::test]
async fn seed_003_error_cases_answer_in_its_error_shape() {
    let app = spawn_app().await;
    let put = |path: &str, body: Value| app.admin(Method::PUT, path).json(&body).send();

    // Colons, and anything else but xx-xx-xx-xx-xx-xx, are refused.
    for mac in ["aa:bb:cc:00:00:02", "aabbcc000002", "aa-bb-cc-00-00", "aa-bb-cc-00-00-0g"] {
        assert_eq!(
            seed_error(put(&format!("/api/configs/{mac}"), json!({"content": {}})).await.unwrap(), 400).await,
            "INVALID_OPERATION",
            "{mac}"
        );
        assert_eq!(
            seed_error(app.client.get(app.url(&format!("/api/configs/{mac}.json"))).send().await.unwrap(), 400).await,
            "INVALID_OPERATION"
        );
    }
    // A body the schema refuses: seed 003's list of errors.
    let refused = |body: Value| put("/api/configs/aa-bb-cc-00-00-02", body);
    assert_eq!(seed_validation(refused(json!({"content": [1, 2]})).await.unwrap()).await, one("content", "dict_type"));
    assert_eq!(seed_validation(refused(json!({"content": "text"})).await.unwrap()).await, one("content", "dict_type"));
    assert_eq!(seed_validation(refused(json!({"allow_overwrite": true})).await.unwrap()).await, one("content", "missing"));
    assert_eq!(seed_validation(refused(json!({})).await.unwrap()).await, one("content", "missing"));
    assert_eq!(
        seed_validation(refused(json!({"content": 1, "allow_overwrite": null})).await.unwrap()).await,
        vec![("content".to_string(), "dict_type".to_string()), ("allow_overwrite".to_string(), "bool_type".to_string())]
    );
    let malformed =
        app.admin(Method::PUT, "/api/configs/aa-bb-cc-00-00-02").header("content-type", "application/json").body("{").send().await.unwrap();
    assert_eq!(seed_validation(malformed).await, one("body", "json_invalid"));
    // The body is checked before the MAC, as seed 003's schema ran before its handler.
    assert_eq!(seed_validation(put("/api/configs/aa:bb", json!({})).await.unwrap()).await, one("content", "missing"));

    // allow_overwrite: false refuses to replace an existing configuration.
    assert_eq!(put("/api/configs/aa-bb-cc-00-00-02", json!({"content": {"v": 1}, "allow_overwrite": false})).await.unwrap().status(), 200);
    let refused = put("/api/configs/aa-bb-cc-00-00-02", json!({"content": {"v": 2}, "allow_overwrite": false})).await.unwrap();
    assert_eq!(seed_error(refused, 409).await, "RECORD_EXISTS");
    let kept: Value = app.client.get(app.url("/api/configs/aa-bb-cc-00-00-02.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(kept, json!({"v": 1}));
    assert_eq!(put("/api/configs/aa-bb-cc-00-00-02", json!({"content": {"v": 2}, "allow_overwrite": true})).await.unwrap().status(), 200);

    // The operator routes need the admin key; the raw file does not.
    let anonymous = app.client.get(app.url("/api/configs")).send().await.unwrap();
    assert_eq!(seed_error(anonymous, 401).await, "AUTHENTICATION_REQUIRED");
    let anonymous = app.client.put(app.url("/api/configs/aa-bb-cc-00-00-02")).json(&json!({"content": {}})).send().await.unwrap();
    assert_eq!(seed_error(anonymous, 401).await, "AUTHENTICATION_REQUIRED");
    app.stop().await;
}

#[tokio::test]
async fn allow_overwrite_takes_what_seed_003_took_and_refuses_what_it_refused() {
    let app = spawn_app().await;
    let path = "/api/configs/aa-bb-cc-00-00-06";
    let put = |body: Value| app.admin(Method::PUT, path).json(&body).send();
    assert_eq!(put(json!({"content": {"v": 0}})).await.unwrap().status(), 200);
    // pydantic's bool: these are false, so an existing document is not replaced.
    for falsy in [json!(false), json!("false"), json!(0), json!("0"), json!("no"), json!("off"), json!("F"), json!(0.0)] {
        let response = put(json!({"content": {"v": 1}, "allow_overwrite": falsy})).await.unwrap();
        assert_eq!(seed_error(response, 409).await, "RECORD_EXISTS", "{falsy}");
    }
    // ... and these true.
    for truthy in [json!(true), json!("true"), json!(1), json!("1"), json!("yes"), json!("on"), json!("Y")] {
        assert_eq!(put(json!({"content": {"v": 2}, "allow_overwrite": truthy})).await.unwrap().status(), 200, "{truthy}");
    }
    // null, other numbers and other strings are refused with the list of errors.
    assert_eq!(
        seed_validation(put(json!({"content": {}, "allow_overwrite": null})).await.unwrap()).await,
        one("allow_overwrite", "bool_type")
    );
    for bad in [json!(2), json!("maybe"), json!(0.5)] {
        let errors = seed_validation(put(json!({"content": {}, "allow_overwrite": bad})).await.unwrap()).await;
        assert_eq!(errors, one("allow_overwrite", "bool_parsing"), "{bad}");
    }
    assert_eq!(
        seed_validation(put(json!({"content": {}, "allow_overwrite": []})).await.unwrap()).await,
        one("allow_overwrite", "bool_type")
    );
    let kept: Value = app.client.get(app.url("/api/configs/aa-bb-cc-00-00-06.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(kept, json!({"v": 2}));
    app.stop().await;
}

#[tokio::test]
async fn a_put_without_a_json_content_type_is_a_400() {
    let app = spawn_app().await;
    let body = json!({"content": {"v": 1}}).to_string();
    for content_type in [None, Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("multipart/form-data; boundary=x")] {
        let mut request = app.admin(Method::PUT, "/api/configs/aa-bb-cc-00-00-07").body(body.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        assert_eq!(seed_validation(request.send().await.unwrap()).await, one("body", "content_type"), "{content_type:?}");
    }
    for content_type in ["application/json", "application/json; charset=utf-8", "application/merge-patch+json"] {
        let response = app
            .admin(Method::PUT, "/api/configs/aa-bb-cc-00-00-07")
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{content_type}");
    }
    app.stop().await;
}

#[tokio::test]
async fn with_public_files_off_the_raw_file_needs_that_device_s_token() {
    let app = spawn_app_with(|s| s.content.public_config_files = false).await;
    let provision = |mac: &str| app.client.post(app.url("/api/v1/device/provision")).json(&json!({"mac": mac, "product": "lamp"})).send();
    let token: String = provision("aa:bb:cc:00:00:03").await.unwrap().json::<Value>().await.unwrap()["token"].as_str().unwrap().into();
    let other: String = provision("aa:bb:cc:00:00:04").await.unwrap().json::<Value>().await.unwrap()["token"].as_str().unwrap().into();
    app.admin(Method::PUT, "/api/configs/aa-bb-cc-00-00-03").json(&json!({"content": {"k": 1}})).send().await.unwrap();
    let path = app.url("/api/configs/aa-bb-cc-00-00-03.json");

    assert_eq!(seed_error(app.client.get(&path).send().await.unwrap(), 401).await, "AUTHENTICATION_REQUIRED");
    assert_eq!(seed_error(app.client.get(&path).bearer_auth(&other).send().await.unwrap(), 403).await, "FORBIDDEN");
    assert_eq!(app.client.get(&path).bearer_auth(&token).send().await.unwrap().status(), 200);
    assert_eq!(app.admin(Method::GET, "/api/configs/aa-bb-cc-00-00-03.json").send().await.unwrap().status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn the_raw_file_of_a_registered_device_is_its_effective_configuration() {
    let app = spawn_app().await;
    app.admin(Method::POST, "/api/v1/devices").json(&json!({"mac": "aa:bb:cc:00:00:05", "product": "lamp"})).send().await.unwrap();
    app.admin(Method::PUT, "/api/v1/configs/product/lamp")
        .json(&json!({"content": {"interval": 60, "name": "lamp"}}))
        .send()
        .await
        .unwrap();
    // Only product defaults: the device's file exists.
    let raw: Value = app.client.get(app.url("/api/configs/aa-bb-cc-00-00-05.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(raw, json!({"interval": 60, "name": "lamp"}));
    app.admin(Method::PUT, "/api/configs/aa-bb-cc-00-00-05").json(&json!({"content": {"name": "porch"}})).send().await.unwrap();
    let raw: Value = app.client.get(app.url("/api/configs/aa-bb-cc-00-00-05.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(raw, json!({"interval": 60, "name": "porch"}));
    // The seed-003 view of the document is the device's own layer.
    let own: Value = app.admin(Method::GET, "/api/configs/aa-bb-cc-00-00-05").send().await.unwrap().json().await.unwrap();
    assert_eq!(own["content"], json!({"name": "porch"}));
    app.stop().await;
}

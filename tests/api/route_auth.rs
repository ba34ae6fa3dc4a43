//! The route auth test: walks the OpenAPI document the server serves and, for every operation
//! that takes an operator credential, checks that it refuses no credential (401), a wrong one
//! (401), a device token (401 or 403) and every role its `security` scopes do not list (403),
//! and lets every role they list through (neither 401 nor 403; a 404 or 400 after
//! authentication is fine: only authentication is checked here). Every other operation must be
//! in one of the explicit lists below, each with its reason; the seed-001 `/admin/api` routes,
//! which are not in the document, are a list of their own.

use std::collections::BTreeMap;
use std::net::IpAddr;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

const ROLES: [&str; 4] = ["admin", "operator", "viewer", "provisioner"];
const READ: &[&str] = &["admin", "operator", "viewer", "provisioner"];
const OPERATE: &[&str] = &["admin", "operator"];

/// Operations of the document that need no operator credential, on purpose.
const PUBLIC: &[(&str, &str, &str)] = &[
    ("GET", "/api/health", "liveness probe"),
    ("GET", "/api/ready", "readiness probe"),
    ("GET", "/metrics", "Prometheus scrapes; UPDRAFT_METRICS_TOKEN guards it when set"),
    ("GET", "/api/v1/keys", "the server's public keys, which devices use to check signed assets"),
    ("POST", "/api/v1/device/provision", "devices provision themselves; the product's policy (open, key, preregistered) decides"),
    ("POST", "/api/v1/mqtt/hooks/mosquitto/user", "broker hook: the external broker asks with the MQTT client's credentials in the body"),
    ("POST", "/api/v1/mqtt/hooks/mosquitto/superuser", "broker hook (as above)"),
    ("POST", "/api/v1/mqtt/hooks/mosquitto/acl", "broker hook (as above)"),
    ("POST", "/api/v1/mqtt/hooks/emqx/authn", "broker hook (as above)"),
    ("POST", "/api/v1/mqtt/hooks/emqx/authz", "broker hook (as above)"),
    ("POST", "/api/assets", "seed 003's asset upload: an RSA-signed timestamp is the authorisation"),
    ("GET", "/api/assets/{filename}", "seed 003's asset files, read by its devices without credentials (they check the signature)"),
    ("GET", "/api/images/lvgl", "seed 003's public LVGL image proxy (SSRF-guarded, bounded)"),
    ("POST", "/api/v1/session", "the login: a username and password, or an API key, in the body"),
    ("GET", "/api/v1/session/methods", "the sign-in page asks how one may sign in before anyone is signed in; nothing secret"),
    ("GET", "/api/v1/session/oidc/login", "the start of the OpenID login: a redirect to the provider (404 unless single sign-on is on)"),
    ("GET", "/api/v1/session/oidc/callback", "the end of the OpenID login: the provider's code and the login's signed state cookie"),
];

/// Operations of the document that devices call with their own token (or a signed link).
const DEVICE_FACING: &[(&str, &str, &str)] = &[
    ("GET", "/api/v1/device/checkin", "the native device protocol"),
    ("POST", "/api/v1/device/checkin", "the native device protocol"),
    ("GET", "/api/v1/device/config", "a device's own configuration, secrets included"),
    ("POST", "/api/v1/device/config/ack", "a device acknowledges its configuration"),
    ("GET", "/api/v1/device/firmware/{id}", "a download with the device token or a signed link"),
    ("POST", "/api/v1/device/pair", "a device binds itself to an owner with a pair key"),
    ("POST", "/api/v1/device/setup-status", "a device reports its setup"),
    ("POST", "/api/v1/device/update-status", "a device reports an update"),
];

/// Routes outside the document that take no operator credential, on purpose. The compatibility
/// surfaces are other servers' device protocols (docs/CLIENT.md), each switched off by its
/// `UPDRAFT_COMPAT_*` setting.
const OUTSIDE_THE_DOCUMENT: &[(&str, &str, &str)] = &[
    ("GET", "/api/openapi.json", "the API description"),
    ("GET", "/api/docs/", "the API description's page (Swagger UI, served from the binary)"),
    (
        "GET",
        "/api/configs/{mac}.json",
        "seed 003's raw configuration files: public without secret values while UPDRAFT_PUBLIC_CONFIG_FILES is on, else the device's token (see below)",
    ),
    ("GET", "/api/firmware", "seed 001's device check, with its djb2 X-Device-Auth"),
    ("GET", "/firmware/{filename}", "seed 001's downloads, unauthenticated as in the original (UPDRAFT_COMPAT_OTA_SERVER_DOWNLOADS)"),
    ("GET", "/firmware_files/{filename}", "the same, under seed 001's static mount"),
    ("GET", "/status", "seed 001's liveness route"),
    ("GET", "/ota", "seed 002's devices (Cyberdeck), by version or Arduino HTTPUpdate headers"),
    ("GET", "/ota/info", "seed 002's description of its latest build"),
    ("GET", "/api/v1/arduino/update", "Arduino HTTPUpdate devices, identified by their MAC headers"),
    ("GET", "/api/v1/arduino/{product}/update", "the same, for one product"),
    ("GET", "/api/v1/esp32fota/{manifest}", "esp32FOTA manifests"),
    ("GET", "/api/v1/esp32fota/{product}/{file}", "esp32FOTA images, by signed link"),
    ("GET", "/api/v1/esphome/{product}/manifest.json", "ESPHome manifests"),
    ("GET", "/api/v1/esphome/{product}/{file}", "ESPHome images, by signed link or what an open product offers anyone"),
    ("GET", "/debug/provisioning", "seed 004's debug provisioning call (off unless UPDRAFT_COMPAT_SEED004_DEBUG)"),
];

/// The seed-001 admin API (not in the document: its wire forms are that server's). It answers
/// a wrong key with 403, as the original did; everything else as the native API.
const SEED001_ADMIN: &[(&str, &str, &[&str])] = &[
    ("GET", "/admin/api/devices", READ),
    ("POST", "/admin/api/devices", OPERATE),
    ("GET", "/admin/api/devices/AA:BB:CC:DD:EE:01", READ),
    ("PUT", "/admin/api/devices/AA:BB:CC:DD:EE:01", OPERATE),
    ("DELETE", "/admin/api/devices/AA:BB:CC:DD:EE:01", OPERATE),
    ("GET", "/admin/api/firmware", READ),
    ("POST", "/admin/api/firmware", OPERATE),
    ("GET", "/admin/api/firmware/firmware.bin", READ),
    ("DELETE", "/admin/api/firmware/firmware.bin", OPERATE),
    ("GET", "/admin/api/firmware/firmware.bin/info", READ),
];

/// An API key with each role (the admin key is the first admin key).
async fn role_keys(app: &TestApp) -> BTreeMap<&'static str, String> {
    let mut keys = BTreeMap::new();
    for role in ROLES {
        let body = json!({"name": format!("route-auth-{role}"), "role": role});
        let response = app.admin(Method::POST, "/api/v1/api-keys").json(&body).send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 201, "{body}");
        keys.insert(role, body["key"].as_str().unwrap().to_string());
    }
    keys
}

/// A plausible value for a path parameter (a 404 after authentication is fine).
fn fill(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        let end = rest[start..].find('}').unwrap() + start;
        out.push_str(&rest[..start]);
        let value = match &rest[start + 1..end] {
            "id" if path.starts_with("/api/v1/devices/") => "02:00:00:00:EE:01",
            "kind" => "product",
            "name" | "product" => "lamp",
            "version" => "1",
            "username" => "route-auth",
            "mac" => "aa-bb-cc-dd-ee-01",
            "filename" => "firmware.bin",
            _ => "00000000-0000-7000-8000-000000000001",
        };
        out.push_str(value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// A client whose requests come from 127.0.`a`.`b`, so that the wrong credentials this test
/// sends on purpose do not throttle one address (10 failures a minute).
fn client_from(n: usize) -> reqwest::Client {
    let address = IpAddr::from([127, 0, 1 + (n / 250) as u8, 1 + (n % 250) as u8]);
    reqwest::Client::builder().no_proxy().local_address(address).build().unwrap()
}

/// The roles the operation's operator credentials (`bearer`, `admin_key`, `session`) may
/// have, if it takes one.
fn scopes(operation: &Value) -> Option<Vec<String>> {
    operation["security"].as_array()?.iter().find_map(|requirement| {
        let roles: Vec<String> = ["bearer", "admin_key", "session"]
            .iter()
            .find_map(|scheme| requirement.get(*scheme))?
            .as_array()?
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect();
        (!roles.is_empty()).then_some(roles)
    })
}

/// A device token (of a device of product `lamp`).
async fn device_token(app: &TestApp) -> String {
    let body = json!({"mac": "02:00:00:00:EE:99", "product": "lamp", "issue_token": true});
    let response = app.admin(Method::POST, "/api/v1/devices").json(&body).send().await.unwrap();
    assert_eq!(response.status(), 201);
    response.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string()
}

struct Check<'a> {
    app: &'a TestApp,
    method: Method,
    path: String,
    /// The header the credential goes in: `authorization` (as a bearer) or `x-admin-api-key`.
    header: &'static str,
}

impl Check<'_> {
    async fn send(&self, client: &reqwest::Client, credential: Option<&str>) -> u16 {
        let mut request = client.request(self.method.clone(), self.app.url(&self.path));
        if let Some(credential) = credential {
            request = match self.header {
                "authorization" => request.bearer_auth(credential),
                header => request.header(header, credential),
            };
        }
        if matches!(self.method, Method::POST | Method::PUT | Method::PATCH) {
            request = request.json(&json!({}));
        }
        // The status only: the body may be a download or an event stream.
        request.send().await.unwrap().status().as_u16()
    }
}

/// Walks every check for one operation; returns the failures as text.
async fn check_operation(
    check: &Check<'_>,
    index: usize,
    allowed: &[String],
    keys: &BTreeMap<&'static str, String>,
    device: Option<&str>,
    wrong_key_status: u16,
) -> Vec<String> {
    let name = format!("{} {}", check.method, check.path);
    let mut failures = Vec::new();
    let anonymous = check.send(&check.app.client, None).await;
    if anonymous != 401 {
        failures.push(format!("{name}: without a credential {anonymous}, not 401"));
    }
    let elsewhere = client_from(index);
    let wrong = check.send(&elsewhere, Some("upd_key_not-a-key-0123456789abcdef")).await;
    if wrong != wrong_key_status {
        failures.push(format!("{name}: with a wrong credential {wrong}, not {wrong_key_status}"));
    }
    if let Some(device) = device {
        let status = check.send(&elsewhere, Some(device)).await;
        if status != 401 && status != 403 {
            failures.push(format!("{name}: with a device token {status}, not 401 or 403"));
        }
    }
    for (role, key) in keys {
        let status = check.send(&check.app.client, Some(key)).await;
        let listed = allowed.iter().any(|r| r == role);
        if listed && (status == 401 || status == 403) {
            failures.push(format!("{name}: role {role} is in its scopes but got {status}"));
        }
        if !listed && status != 403 {
            failures.push(format!("{name}: role {role} is not in its scopes but got {status}, not 403"));
        }
    }
    failures
}

#[tokio::test]
async fn every_operation_of_the_document_needs_the_roles_its_security_lists() {
    let app = spawn_app_with(|s| s.mqtt.auth_hooks = true).await;
    let document: Value = app.client.get(app.url("/api/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(document, serde_json::to_value(updraft::http::openapi()).unwrap(), "the served document is the generated one");
    let keys = role_keys(&app).await;
    let device = device_token(&app).await;
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut index = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let Ok(method) = method.to_ascii_uppercase().parse::<Method>() else { continue };
            index += 1;
            let listed = |list: &[(&str, &str, &str)]| list.iter().any(|(m, p, _)| *m == method.as_str() && p == path);
            let Some(allowed) = scopes(operation) else {
                if !listed(PUBLIC) && !listed(DEVICE_FACING) {
                    failures.push(format!("{method} {path}: takes no operator credential and is in neither PUBLIC nor DEVICE_FACING"));
                }
                continue;
            };
            if listed(PUBLIC) || listed(DEVICE_FACING) {
                failures.push(format!("{method} {path}: listed as public, but its security names roles"));
            }
            // The scopes of every scheme that carries an operator credential agree.
            for requirement in operation["security"].as_array().unwrap() {
                for (scheme, roles) in requirement.as_object().unwrap() {
                    if scheme != "device_token" && roles != &json!(allowed) {
                        failures.push(format!("{method} {path}: scheme {scheme} lists {roles}, bearer {allowed:?}"));
                    }
                }
            }
            // In `Need::roles` order: admin, operator, viewer, provisioner.
            let ordered: Vec<String> = ROLES.iter().filter(|r| allowed.iter().any(|a| a == *r)).map(|r| r.to_string()).collect();
            if ordered != allowed || !allowed.iter().any(|r| r == "admin") {
                failures.push(format!("{method} {path}: scopes {allowed:?} are not a need's roles"));
            }
            // Routes that devices may also read (their own product's assets) take a device token.
            let takes_device_tokens = operation["security"].as_array().unwrap().iter().any(|r| r.get("device_token").is_some());
            let check = Check { app: &app, method: method.clone(), path: fill(path), header: "authorization" };
            let device = (!takes_device_tokens).then_some(device.as_str());
            failures.extend(check_operation(&check, index, &allowed, &keys, device, 401).await);
            // The other header takes the same credentials.
            let by_header = Check { header: "x-admin-api-key", ..check };
            let status = by_header.send(&app.client, Some(&keys["admin"])).await;
            if status == 401 || status == 403 {
                failures.push(format!("{method} {path}: the admin key in X-Admin-API-Key got {status}"));
            }
            checked += 1;
        }
    }
    for (method, path, reason) in PUBLIC.iter().chain(DEVICE_FACING) {
        assert!(!reason.is_empty());
        if document["paths"][path][method.to_ascii_lowercase()].is_null() {
            failures.push(format!("{method} {path} is listed but not in the document"));
        }
    }
    assert!(checked > 60, "only {checked} operations take an operator credential");
    assert!(failures.is_empty(), "{} problems:\n{}", failures.len(), failures.join("\n"));
    app.stop().await;
}

#[tokio::test]
async fn the_api_description_is_public() {
    let app = spawn_app().await;
    for (method, path, reason) in
        OUTSIDE_THE_DOCUMENT.iter().filter(|(_, path, _)| path.starts_with("/api/docs") || path.ends_with("openapi.json"))
    {
        assert_eq!(*method, "GET");
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}: {reason}");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_seed_001_admin_api_needs_roles_too() {
    let app = spawn_app_with(|s| {
        s.compat.default_product = Some("panic".into());
        s.compat.admin_api_key = Some("their-old-admin-key".into());
    })
    .await;
    let keys = role_keys(&app).await;
    let device = device_token(&app).await;
    let mut failures = Vec::new();
    for (index, (method, path, allowed)) in SEED001_ADMIN.iter().enumerate() {
        let allowed: Vec<String> = allowed.iter().map(|r| r.to_string()).collect();
        let check = Check { app: &app, method: method.parse().unwrap(), path: path.to_string(), header: "x-admin-api-key" };
        // A wrong key is 403 `{"detail": "Invalid API key"}`, as seed 001 answered.
        failures.extend(check_operation(&check, 500 + index, &allowed, &keys, Some(&device), 403).await);
        // Its own key (`UPDRAFT_COMPAT_ADMIN_API_KEY`) acts as an operator, and a bearer key works too.
        let status = check.send(&app.client, Some("their-old-admin-key")).await;
        if status == 401 || status == 403 {
            failures.push(format!("{method} {path}: UPDRAFT_COMPAT_ADMIN_API_KEY got {status}"));
        }
        let bearer = Check { header: "authorization", ..check };
        let status = bearer.send(&app.client, Some(&keys["operator"])).await;
        if status == 401 || status == 403 {
            failures.push(format!("{method} {path}: an operator key as a bearer got {status}"));
        }
    }
    assert!(failures.is_empty(), "{} problems:\n{}", failures.len(), failures.join("\n"));
    app.stop().await;
}

#[tokio::test]
async fn seed_003_raw_configuration_files_are_public_only_while_public_config_files_is_on() {
    // On (the default, as in seed 003): anonymous readers get the file without secret values.
    let app = spawn_app().await;
    let keys = role_keys(&app).await;
    let put = app
        .admin(Method::PUT, "/api/configs/aa-bb-cc-dd-ee-02")
        .json(&json!({"content": {"wifi": {"password": {"$secret": "hunter2"}}, "name": "hall"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let path = "/api/configs/aa-bb-cc-dd-ee-02.json";
    let anonymous = app.client.get(app.url(path)).send().await.unwrap();
    assert_eq!(anonymous.status(), 200);
    assert!(!anonymous.text().await.unwrap().contains("hunter2"));
    // A credential gets the whole file, secrets included: admins only (and the device itself).
    for role in ["operator", "viewer", "provisioner"] {
        let response = app.client.get(app.url(path)).bearer_auth(&keys[role]).send().await.unwrap();
        assert_eq!(response.status(), 403, "{role} may not read secret values");
    }
    let whole = app.client.get(app.url(path)).bearer_auth(&keys["admin"]).send().await.unwrap();
    assert_eq!(whole.status(), 200);
    assert!(whole.text().await.unwrap().contains("hunter2"));
    app.stop().await;

    // Off: a credential is needed.
    let app = spawn_app_with(|s| s.content.public_config_files = false).await;
    let response = app.client.get(app.url(path)).send().await.unwrap();
    assert_eq!(response.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn making_configuration_secrets_public_needs_the_admin_role() {
    let app = spawn_app().await;
    let keys = role_keys(&app).await;
    let body = json!({"provisioning": "open", "public_secrets": true});
    let response = app.client.put(app.url("/api/v1/products/lamp")).bearer_auth(&keys["provisioner"]).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 403);
    let private = json!({"provisioning": "open", "public_secrets": false});
    let response = app.client.put(app.url("/api/v1/products/lamp")).bearer_auth(&keys["provisioner"]).json(&private).send().await.unwrap();
    assert_eq!(response.status(), 200, "the rest of the product is the provisioner's");
    let response = app.client.put(app.url("/api/v1/products/lamp")).bearer_auth(&keys["admin"]).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_session_cookie_carries_its_role_to_every_surface() {
    let app = spawn_app().await;
    let keys = role_keys(&app).await;
    let login = app.client.post(app.url("/api/v1/session")).json(&json!({"api_key": keys["viewer"]})).send().await.unwrap();
    assert_eq!(login.status(), 201);
    let cookies: Vec<String> =
        login.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string()).collect();
    let cookie = cookies.join("; ");
    let get = |path: &str| app.client.get(app.url(path)).header("cookie", &cookie).send();
    // Reads pass on the native API and on the compatibility admin routes (each in its own form).
    for path in ["/api/v1/devices", "/api/configs", "/admin/api/devices", "/api/v1/products/lamp/latest"] {
        assert_eq!(get(path).await.unwrap().status(), 200, "{path}");
    }
    assert_eq!(get("/api/v1/assets/lamp/logo/1").await.unwrap().status(), 404, "authenticated, then no such asset");
    // Credentials and secrets do not.
    for path in ["/api/v1/mqtt/users", "/api/v1/api-keys", "/api/configs/aa-bb-cc-dd-ee-03.json"] {
        assert_eq!(get(path).await.unwrap().status(), 403, "{path}");
    }
    app.stop().await;
}

//! Operators: named API keys, users, browser sessions (cookies, CSRF, Origin, idle and
//! absolute expiry, listing and revoking), the login limiter, CORS.

use std::net::IpAddr;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, TestApp, error_code, spawn_app, spawn_app_with};

const PASSWORD: &str = "correct horse battery staple";

fn client_from(octet: u8) -> reqwest::Client {
    reqwest::Client::builder().no_proxy().local_address(IpAddr::from([127, 0, 0, octet])).build().unwrap()
}

async fn create_key(app: &TestApp, body: Value) -> Value {
    let response = app.admin(Method::POST, "/api/v1/api-keys").json(&body).send().await.unwrap();
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

async fn create_user(app: &TestApp, username: &str, role: &str) {
    let response = app
        .admin(Method::POST, "/api/v1/users")
        .json(&json!({"username": username, "password": PASSWORD, "role": role}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
}

/// A browser's session: the cookies a login set, and its CSRF token.
struct Browser {
    session: String,
    csrf: String,
    set_cookies: Vec<String>,
    body: Value,
}

impl Browser {
    fn cookie_header(&self) -> String {
        format!("updraft_session={}; updraft_csrf={}", self.session, self.csrf)
    }

    fn request(&self, app: &TestApp, method: Method, path: &str) -> reqwest::RequestBuilder {
        app.client.request(method, app.url(path)).header("cookie", self.cookie_header())
    }

    /// A state-changing request as the page sends it: cookie, CSRF token, own origin.
    fn unsafe_request(&self, app: &TestApp, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.request(app, method, path).header("x-csrf-token", &self.csrf).header("origin", &app.base)
    }
}

async fn login_from(app: &TestApp, client: &reqwest::Client, body: Value) -> reqwest::Response {
    client.post(app.url("/api/v1/session")).json(&body).send().await.unwrap()
}

async fn browser(response: reqwest::Response) -> Browser {
    assert_eq!(response.status(), 201);
    let set_cookies: Vec<String> = response.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    let value = |name: &str| {
        set_cookies
            .iter()
            .find_map(|c| c.strip_prefix(&format!("{name}=")).map(|rest| rest.split(';').next().unwrap().to_string()))
            .unwrap_or_else(|| panic!("no {name} cookie in {set_cookies:?}"))
    };
    let (session, csrf) = (value("updraft_session"), value("updraft_csrf"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["csrf_token"], csrf.as_str());
    Browser { session, csrf, set_cookies, body }
}

async fn login(app: &TestApp, username: &str) -> Browser {
    browser(login_from(app, &app.client, json!({"username": username, "password": PASSWORD})).await).await
}

#[tokio::test]
async fn a_named_key_is_shown_once_works_in_both_headers_with_its_role_and_stops_at_once_when_revoked() {
    let app = spawn_app().await;

    let created = create_key(&app, json!({"name": "ci-deploy", "role": "viewer"})).await;
    let key = created["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("upd_") && key.len() > 60, "{key}");
    for field in ["id", "name", "role", "expires_at", "created_at"] {
        assert!(created.get(field).is_some(), "no {field} in {created}");
    }
    assert_eq!((created["name"].as_str(), created["role"].as_str()), (Some("ci-deploy"), Some("viewer")));

    // Both headers, like the admin key; the role applies.
    let bearer = app.client.get(app.url("/api/v1/session")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(bearer.status(), 200);
    let me: Value = bearer.json().await.unwrap();
    assert_eq!((me["kind"].as_str(), me["name"].as_str(), me["role"].as_str()), (Some("api_key"), Some("ci-deploy"), Some("viewer")));
    let header = app.client.get(app.url("/api/v1/session")).header("x-admin-api-key", &key).send().await.unwrap();
    assert_eq!(header.status(), 200);
    let refused = app.client.get(app.url("/api/v1/users")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(error_code(refused, 403).await, "forbidden");

    // Listed without any secret; the original admin key is the key `admin`.
    let list: Value = app.admin(Method::GET, "/api/v1/api-keys").send().await.unwrap().json().await.unwrap();
    let text = list.to_string();
    assert!(!text.contains(&key) && !text.contains(&key[20..]), "a secret is listed: {text}");
    let names: Vec<&str> = list["items"].as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["admin", "ci-deploy"]);
    assert_eq!(list["items"][0]["role"], "admin");

    // A second key of the same name is refused while the first lives.
    let taken = app.admin(Method::POST, "/api/v1/api-keys").json(&json!({"name": "ci-deploy", "role": "viewer"})).send().await.unwrap();
    assert_eq!(error_code(taken, 409).await, "key_exists");

    let revoked = app.admin(Method::DELETE, "/api/v1/api-keys/ci-deploy").send().await.unwrap();
    assert_eq!(revoked.status(), 200);
    let after = app.client.get(app.url("/api/v1/session")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(error_code(after, 401).await, "unauthenticated");
    let again = app.admin(Method::DELETE, "/api/v1/api-keys/ci-deploy").send().await.unwrap();
    assert_eq!(error_code(again, 404).await, "not_found");
    // The name is free again.
    create_key(&app, json!({"name": "ci-deploy", "role": "operator"})).await;
}

#[tokio::test]
async fn an_admin_key_manages_keys_and_a_key_expires() {
    let app = spawn_app().await;
    let admin = create_key(&app, json!({"name": "root2", "role": "admin"})).await;
    let admin_key = admin["key"].as_str().unwrap();
    // A named admin key creates keys, and records who did.
    let expires_at = chrono::Utc::now() + chrono::Duration::seconds(2);
    let response = app
        .client
        .post(app.url("/api/v1/api-keys"))
        .header("x-admin-api-key", admin_key)
        .json(&json!({"name": "short", "role": "operator", "expires_at": expires_at}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let short: Value = response.json().await.unwrap();
    let short_key = short["key"].as_str().unwrap();
    assert_eq!(app.client.get(app.url("/api/v1/session")).bearer_auth(short_key).send().await.unwrap().status(), 200);
    let list: Value = app.admin(Method::GET, "/api/v1/api-keys").send().await.unwrap().json().await.unwrap();
    let listed = list["items"].as_array().unwrap().iter().find(|k| k["name"] == "short").unwrap().clone();
    assert_eq!(listed["created_by"], "key:root2");
    assert!(listed["last_used_at"].is_string(), "the use is listed: {listed}");

    let wait = (expires_at - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(100);
    tokio::time::sleep(wait).await;
    let expired = app.client.get(app.url("/api/v1/session")).bearer_auth(short_key).send().await.unwrap();
    assert_eq!(error_code(expired, 401).await, "unauthenticated");

    // Bad input: 400, never 500.
    for body in [
        json!({"name": "past", "role": "viewer", "expires_at": "2001-01-01T00:00:00Z"}),
        json!({"name": "x/../y", "role": "viewer"}),
        json!({"name": "ok", "role": "root"}),
        json!({"name": "ok"}),
    ] {
        let response = app.admin(Method::POST, "/api/v1/api-keys").json(&body).send().await.unwrap();
        assert_eq!(response.status(), 400, "{body}");
    }
}

#[tokio::test]
async fn the_original_admin_key_is_the_key_admin_and_can_be_revoked() {
    let app = spawn_app().await;
    let backup = create_key(&app, json!({"name": "backup", "role": "admin"})).await;
    let backup = backup["key"].as_str().unwrap();
    let me: Value = app.admin(Method::GET, "/api/v1/session").send().await.unwrap().json().await.unwrap();
    assert_eq!(me["actor"], "key:admin");
    assert_eq!(app.client.get(app.url("/api/v1/users")).header("x-admin-api-key", ADMIN_KEY).send().await.unwrap().status(), 200);

    let response = app.client.delete(app.url("/api/v1/api-keys/admin")).bearer_auth(backup).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let refused = app.admin(Method::GET, "/api/v1/users").send().await.unwrap();
    assert_eq!(error_code(refused, 401).await, "unauthenticated");
}

#[tokio::test]
async fn a_key_s_last_use_is_written_at_shutdown() {
    let app = spawn_app().await;
    let created = create_key(&app, json!({"name": "grafana", "role": "viewer"})).await;
    let key = created["key"].as_str().unwrap().to_string();
    assert_eq!(app.client.get(app.url("/api/v1/session")).bearer_auth(&key).send().await.unwrap().status(), 200);

    let (settings, data_dir) = app.stop_keeping_data().await;
    let app = crate::helpers::start(settings, data_dir).await;
    let list: Value = app.admin(Method::GET, "/api/v1/api-keys").send().await.unwrap().json().await.unwrap();
    let grafana = list["items"].as_array().unwrap().iter().find(|k| k["name"] == "grafana").unwrap().clone();
    assert!(grafana["last_used_at"].is_string(), "the last use was not written at shutdown: {grafana}");
}

#[tokio::test]
async fn a_user_logs_in_with_cookies_that_are_http_only_and_strict_and_the_cookie_works_where_a_key_does() {
    let app = spawn_app().await;
    create_user(&app, "alice", "operator").await;

    let alice = login(&app, "alice").await;
    assert_eq!((alice.body["kind"].as_str(), alice.body["user"].as_str()), (Some("user"), Some("alice")));
    assert_eq!(alice.body["role"], "operator");
    assert!(alice.body["expires_at"].is_string());
    let session_cookie = alice.set_cookies.iter().find(|c| c.starts_with("updraft_session=")).unwrap();
    let csrf_cookie = alice.set_cookies.iter().find(|c| c.starts_with("updraft_csrf=")).unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(session_cookie.contains(attribute), "{session_cookie}");
    }
    assert!(!session_cookie.contains("Secure"), "plain HTTP without an https public URL: {session_cookie}");
    assert!(!csrf_cookie.contains("HttpOnly") && csrf_cookie.contains("SameSite=Strict"), "{csrf_cookie}");

    // The cookie is accepted where a key is (the role applies), and GET needs no CSRF token.
    let me: Value = alice.request(&app, Method::GET, "/api/v1/session").send().await.unwrap().json().await.unwrap();
    assert_eq!(me["actor"], "user:alice");
    assert_eq!(alice.request(&app, Method::GET, "/api/v1/sessions").send().await.unwrap().status(), 200);
    let users = alice.request(&app, Method::GET, "/api/v1/users").send().await.unwrap();
    assert_eq!(error_code(users, 403).await, "forbidden");

    // Wrong credentials: one answer whether the user exists or not.
    let wrong = login_from(&app, &app.client, json!({"username": "alice", "password": "not the password at all"})).await;
    let unknown = login_from(&app, &app.client, json!({"username": "nobody", "password": "not the password at all"})).await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(unknown.status(), 401);
    let (wrong, unknown): (Value, Value) = (wrong.json().await.unwrap(), unknown.json().await.unwrap());
    assert_eq!(wrong, unknown);
    let malformed = login_from(&app, &app.client, json!({"username": "alice"})).await;
    assert_eq!(error_code(malformed, 400).await, "invalid_login");

    // Logout ends the session and clears the cookies.
    let out = alice.unsafe_request(&app, Method::DELETE, "/api/v1/session").send().await.unwrap();
    assert_eq!(out.status(), 204);
    let cleared: Vec<&str> = out.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
    assert!(cleared.iter().any(|c| c.starts_with("updraft_session=;") && c.contains("Max-Age=0")), "{cleared:?}");
    let after = alice.request(&app, Method::GET, "/api/v1/session").send().await.unwrap();
    assert_eq!(error_code(after, 401).await, "unauthenticated");
}

#[tokio::test]
async fn the_cookie_is_secure_when_the_public_url_is_https() {
    let app = spawn_app_with(|s| s.public_url = Some("https://ota.example.com".parse().unwrap())).await;
    create_user(&app, "alice", "viewer").await;
    let alice = login_from(&app, &app.client, json!({"username": "alice", "password": PASSWORD})).await;
    let alice = browser(alice).await;
    assert!(alice.set_cookies.iter().all(|c| c.contains("; Secure")), "{:?}", alice.set_cookies);
}

#[tokio::test]
async fn state_changing_requests_with_the_cookie_need_the_csrf_token_and_a_known_origin() {
    let app = spawn_app_with(|s| s.accounts.cors_origins = vec!["https://dash.example.com".into()]).await;
    create_user(&app, "root", "admin").await;
    let root = login(&app, "root").await;
    let body = json!({"name": "from-browser", "role": "viewer"});

    let missing = root.request(&app, Method::POST, "/api/v1/api-keys").json(&body).send().await.unwrap();
    assert_eq!(error_code(missing, 403).await, "csrf_token_missing");
    let wrong = root.request(&app, Method::POST, "/api/v1/api-keys").header("x-csrf-token", "forged").json(&body).send().await.unwrap();
    assert_eq!(error_code(wrong, 403).await, "csrf_token_invalid");
    let foreign = root
        .request(&app, Method::POST, "/api/v1/api-keys")
        .header("x-csrf-token", &root.csrf)
        .header("origin", "https://evil.example.net")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(foreign, 403).await, "csrf_origin");

    let ok = root.unsafe_request(&app, Method::POST, "/api/v1/api-keys").json(&body).send().await.unwrap();
    assert_eq!(ok.status(), 201);
    let created: Value = ok.json().await.unwrap();
    assert_eq!(created["name"], "from-browser");
    // An allowed CORS origin passes; no Origin at all passes (not a browser's cross-site request).
    let allowed = root
        .request(&app, Method::DELETE, "/api/v1/api-keys/from-browser")
        .header("x-csrf-token", &root.csrf)
        .header("origin", "https://dash.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);

    // Another session's CSRF token is not this one's.
    let other = login(&app, "root").await;
    let crossed = root.request(&app, Method::DELETE, "/api/v1/session").header("x-csrf-token", &other.csrf).send().await.unwrap();
    assert_eq!(error_code(crossed, 403).await, "csrf_token_invalid");

    // A key in a header needs no CSRF token, even with the cookie present.
    let with_key = root.request(&app, Method::POST, "/api/v1/api-keys").bearer_auth(ADMIN_KEY).json(&body).send().await.unwrap();
    assert_eq!(with_key.status(), 201);

    // A login from a foreign origin is refused too.
    let foreign_login = app
        .client
        .post(app.url("/api/v1/session"))
        .header("origin", "https://evil.example.net")
        .json(&json!({"username": "root", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(foreign_login, 403).await, "csrf_origin");
}

#[tokio::test]
async fn disabling_a_user_ends_its_sessions_at_once_and_refuses_its_logins() {
    let app = spawn_app().await;
    create_user(&app, "bob", "viewer").await;
    let bob = login(&app, "bob").await;
    assert_eq!(bob.request(&app, Method::GET, "/api/v1/session").send().await.unwrap().status(), 200);

    let response = app.admin(Method::PATCH, "/api/v1/users/bob").json(&json!({"disabled": true})).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["disabled"], true);
    let after = bob.request(&app, Method::GET, "/api/v1/session").send().await.unwrap();
    assert_eq!(error_code(after, 401).await, "unauthenticated");
    let relogin = login_from(&app, &app.client, json!({"username": "bob", "password": PASSWORD})).await;
    assert_eq!(relogin.status(), 401);

    // Enabled again with a new password: the old one no longer works.
    let new_password = "another long passphrase";
    let response =
        app.admin(Method::PATCH, "/api/v1/users/bob").json(&json!({"disabled": false, "password": new_password})).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let old = login_from(&app, &app.client, json!({"username": "bob", "password": PASSWORD})).await;
    assert_eq!(old.status(), 401);
    let new = login_from(&app, &app.client, json!({"username": "bob", "password": new_password})).await;
    assert_eq!(new.status(), 201);

    // Users listed without passwords; bad input is 4xx.
    let list: Value = app.admin(Method::GET, "/api/v1/users").send().await.unwrap().json().await.unwrap();
    assert!(!list.to_string().contains("argon2") && !list.to_string().contains(new_password));
    for (body, status) in [
        (json!({"username": "Bob", "password": PASSWORD, "role": "viewer"}), 400),
        (json!({"username": "../etc", "password": PASSWORD, "role": "viewer"}), 400),
        (json!({"username": "carol", "password": "short", "role": "viewer"}), 400),
        (json!({"username": "bob", "password": PASSWORD, "role": "viewer"}), 409),
    ] {
        let response = app.admin(Method::POST, "/api/v1/users").json(&body).send().await.unwrap();
        assert_eq!(response.status(), status, "{body}");
    }
    let missing = app.admin(Method::PATCH, "/api/v1/users/nobody").json(&json!({"role": "admin"})).send().await.unwrap();
    assert_eq!(error_code(missing, 404).await, "not_found");
}

#[tokio::test]
async fn a_session_ends_when_idle() {
    let app = spawn_app_with(|s| s.accounts.session_idle = Duration::from_secs(2)).await;
    create_user(&app, "carol", "viewer").await;
    let carol = login(&app, "carol").await;
    // Uses keep it alive past the idle expiry...
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(carol.request(&app, Method::GET, "/api/v1/session").send().await.unwrap().status(), 200);
    }
    // ...and without use it ends.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let idle = carol.request(&app, Method::GET, "/api/v1/session").send().await.unwrap();
    assert_eq!(error_code(idle, 401).await, "unauthenticated");
}

#[tokio::test]
async fn a_session_ends_at_its_absolute_expiry_however_active() {
    let app = spawn_app_with(|s| s.accounts.session_absolute = Duration::from_secs(2)).await;
    create_user(&app, "dave", "viewer").await;
    let dave = login(&app, "dave").await;
    let ends = chrono::DateTime::parse_from_rfc3339(dave.body["absolute_expires_at"].as_str().unwrap()).unwrap();
    while chrono::Utc::now() < ends {
        assert_eq!(dave.request(&app, Method::GET, "/api/v1/session").send().await.unwrap().status(), 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ended = dave.request(&app, Method::GET, "/api/v1/session").send().await.unwrap();
    assert_eq!(error_code(ended, 401).await, "unauthenticated");
}

#[tokio::test]
async fn sessions_are_listed_per_user_and_revoked_by_their_owner_or_an_admin() {
    let app = spawn_app().await;
    create_user(&app, "erin", "viewer").await;
    create_user(&app, "frank", "viewer").await;
    let erin1 = login(&app, "erin").await;
    let erin2 = login(&app, "erin").await;
    let frank = login(&app, "frank").await;

    let own: Value = erin1.request(&app, Method::GET, "/api/v1/sessions").send().await.unwrap().json().await.unwrap();
    let own = own["items"].as_array().unwrap().clone();
    assert_eq!(own.len(), 2, "{own:?}");
    assert!(own.iter().all(|s| s["name"] == "erin"));
    assert_eq!(own.iter().filter(|s| s["current"] == true).count(), 1);
    let text = serde_json::to_string(&own).unwrap();
    assert!(!text.contains(&erin1.session) && !text.contains(&erin1.csrf), "a session secret is listed");
    let others = erin1.request(&app, Method::GET, "/api/v1/sessions?user=frank").send().await.unwrap();
    assert_eq!(error_code(others, 403).await, "forbidden");

    let all: Value = app.admin(Method::GET, "/api/v1/sessions").send().await.unwrap().json().await.unwrap();
    assert_eq!(all["items"].as_array().unwrap().len(), 3);
    let franks: Value = app.admin(Method::GET, "/api/v1/sessions?user=frank").send().await.unwrap().json().await.unwrap();
    let frank_id = franks["items"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(franks["items"].as_array().unwrap().len(), 1);

    // Erin cannot revoke Frank's session (it is not hers: 404), but her own other one.
    let not_hers = erin1.unsafe_request(&app, Method::DELETE, &format!("/api/v1/sessions/{frank_id}")).send().await.unwrap();
    assert_eq!(error_code(not_hers, 404).await, "not_found");
    let erin2_id = erin2.body["session_id"].as_str().unwrap();
    let revoked = erin1.unsafe_request(&app, Method::DELETE, &format!("/api/v1/sessions/{erin2_id}")).send().await.unwrap();
    assert_eq!(revoked.status(), 204);
    assert_eq!(erin2.request(&app, Method::GET, "/api/v1/session").send().await.unwrap().status(), 401);
    // An admin revokes anyone's.
    assert_eq!(app.admin(Method::DELETE, &format!("/api/v1/sessions/{frank_id}")).send().await.unwrap().status(), 204);
    assert_eq!(frank.request(&app, Method::GET, "/api/v1/session").send().await.unwrap().status(), 401);
    assert_eq!(erin1.request(&app, Method::GET, "/api/v1/session").send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn an_api_key_logs_in_and_its_revocation_ends_that_session() {
    let app = spawn_app().await;
    let created = create_key(&app, json!({"name": "dash", "role": "viewer"})).await;
    let dash = browser(login_from(&app, &app.client, json!({"api_key": created["key"]})).await).await;
    assert_eq!((dash.body["kind"].as_str(), dash.body["name"].as_str()), (Some("api_key"), Some("dash")));
    assert_eq!(dash.request(&app, Method::GET, "/api/v1/session").send().await.unwrap().status(), 200);
    assert_eq!(app.admin(Method::DELETE, "/api/v1/api-keys/dash").send().await.unwrap().status(), 200);
    assert_eq!(dash.request(&app, Method::GET, "/api/v1/session").send().await.unwrap().status(), 401);
    let wrong = login_from(&app, &app.client, json!({"api_key": "upd_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"})).await;
    assert_eq!(error_code(wrong, 401).await, "unauthenticated");
}

#[tokio::test]
async fn failed_logins_are_limited_per_address() {
    let app = spawn_app().await;
    create_user(&app, "gina", "viewer").await;
    let attacker = client_from(21);
    let mut statuses = Vec::new();
    for n in 0..12 {
        let response = login_from(&app, &attacker, json!({"username": format!("guess{n}"), "password": "wrong password 123"})).await;
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            assert!(response.headers().get("retry-after").is_some());
        }
    }
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 10, "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429));
    // Even the right password waits on that address; another address logs in.
    let right = login_from(&app, &attacker, json!({"username": "gina", "password": PASSWORD})).await;
    assert_eq!(right.status(), 429);
    let elsewhere = login_from(&app, &client_from(22), json!({"username": "gina", "password": PASSWORD})).await;
    assert_eq!(elsewhere.status(), 201);
}

#[tokio::test]
async fn failed_logins_are_limited_per_username_without_locking_the_user_out() {
    let app = spawn_app_with(|s| s.accounts.login_max_failures = 3).await;
    create_user(&app, "hank", "viewer").await;
    // Three addresses guess one password each.
    for octet in [31, 32, 33] {
        let response = login_from(&app, &client_from(octet), json!({"username": "hank", "password": "wrong password 123"})).await;
        assert_eq!(response.status(), 401);
    }
    // The username is locked for the addresses that failed, even with the right password...
    for octet in [31, 32, 33] {
        let response = login_from(&app, &client_from(octet), json!({"username": "hank", "password": PASSWORD})).await;
        assert_eq!(response.status(), 429, "address .{octet}");
        assert!(response.headers().get("retry-after").is_some());
    }
    // ...but the real user, from an address that did not fail, still logs in.
    let user = login_from(&app, &client_from(34), json!({"username": "hank", "password": PASSWORD})).await;
    assert_eq!(user.status(), 201);
}

#[tokio::test]
async fn without_cors_origins_there_are_no_cors_headers() {
    let app = spawn_app().await;
    let response = app
        .client
        .request(Method::OPTIONS, app.url("/api/v1/session"))
        .header("origin", "https://dash.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(response.headers().keys().all(|h| !h.as_str().starts_with("access-control-")), "{:?}", response.headers());
    let get = app.admin(Method::GET, "/api/v1/session").header("origin", "https://dash.example.com").send().await.unwrap();
    assert!(get.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn with_cors_origins_exactly_those_get_credentials_and_preflights_are_answered() {
    let app = spawn_app_with(|s| s.accounts.cors_origins = vec!["https://dash.example.com".into()]).await;
    let preflight = app
        .client
        .request(Method::OPTIONS, app.url("/api/v1/api-keys"))
        .header("origin", "https://dash.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type,x-csrf-token")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let headers = preflight.headers();
    assert_eq!(headers["access-control-allow-origin"], "https://dash.example.com");
    assert_eq!(headers["access-control-allow-credentials"], "true");
    assert!(headers["access-control-allow-headers"].to_str().unwrap().to_lowercase().contains("x-csrf-token"));
    assert!(headers["access-control-allow-methods"].to_str().unwrap().contains("POST"));

    let get = app.admin(Method::GET, "/api/v1/session").header("origin", "https://dash.example.com").send().await.unwrap();
    assert_eq!(get.headers()["access-control-allow-origin"], "https://dash.example.com");
    let other = app.admin(Method::GET, "/api/v1/session").header("origin", "https://evil.example.net").send().await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

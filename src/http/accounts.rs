//! Operators over HTTP: users (`/api/v1/users`), named API keys (`/api/v1/api-keys`; not to
//! be confused with `/api/v1/keys`, the public asset-signing keys), browser sessions
//! (`/api/v1/session`, `/api/v1/sessions`), the session cookie and its CSRF checks.
//!
//! A login sets two cookies: `updraft_session` (HttpOnly) and `updraft_csrf` (readable by the
//! page), both `SameSite=Strict; Path=/`, `Secure` when the server's own URL is https. A
//! state-changing request (POST, PUT, PATCH, DELETE) authenticated by the session cookie must
//! send the CSRF token as `X-CSRF-Token`, and, when it has an `Origin`, come from the
//! server's own origin or one of `UPDRAFT_CORS_ORIGINS`; else 403 (`csrf_token_missing`,
//! `csrf_token_invalid`, `csrf_origin`). Requests with a key in a header need neither.

use std::net::IpAddr;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::audit::AuditNote;
use super::auth::{ActorSlot, Admin, Viewer};
use super::device_api::ClientIp;
use super::error::{ApiJson, ApiQuery, ApiResult, ErrorBody};
use crate::domain::accounts::{ApiKey, Session, User};
use crate::domain::auth::{Need, Principal, PrincipalKind, Role};
use crate::domain::{Error, accounts as rules};
use crate::services::accounts::sessions::{self, Check, Credentials, NewSession};
use crate::services::accounts::{keys, users};

/// The session cookie (HttpOnly).
pub const SESSION_COOKIE: &str = "updraft_session";
/// The CSRF cookie (readable by the page, sent back as `X-CSRF-Token`).
pub const CSRF_COOKIE: &str = "updraft_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_key, list_keys))
        .routes(routes!(revoke_key))
        .routes(routes!(create_user, list_users))
        .routes(routes!(get_user, patch_user))
        .routes(routes!(login, whoami, logout))
        .routes(routes!(login_methods))
        .routes(routes!(list_sessions))
        .routes(routes!(revoke_session))
}

// ---- the cookie in authentication ----

/// The value of the session cookie, if the request has one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    cookie(headers, SESSION_COOKIE)
}

/// The value of the cookie `name`, if the request has one (every `Cookie` header is read).
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

/// Authenticates a request by its session cookie; on a state-changing method, checks the
/// CSRF token and the Origin. A value no session ever had counts as a failed authentication
/// of `ip`; an ended session does not (browsers keep sending old cookies).
pub async fn authenticate_session(parts: &Parts, state: &AppState, token: &str, ip: IpAddr) -> Result<Principal, Error> {
    let session = match sessions::verify(&state.core, token).await? {
        Check::Live(session) => session,
        Check::Ended => return Err(Error::Unauthenticated("the session has ended (expired, revoked or logged out): log in again".into())),
        Check::Unknown => {
            state.core.devices.limiter.record_failure(ip);
            tracing::info!(%ip, "unknown session cookie");
            return Err(Error::Unauthenticated("the session cookie is not valid: log in again".into()));
        }
    };
    if !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
        let Some(presented) = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()) else {
            return Err(Error::denied(
                "csrf_token_missing",
                "a state-changing request with the session cookie must send the CSRF token (the `updraft_csrf` cookie) as \
                 `X-CSRF-Token`",
            ));
        };
        if !sessions::csrf_matches(&session, presented) {
            return Err(Error::denied("csrf_token_invalid", "`X-CSRF-Token` is not this session's CSRF token"));
        }
        check_origin(&parts.headers, state)?;
    }
    Ok(session.principal)
}

/// Refuses a request whose `Origin` is neither the server's own nor one of
/// `UPDRAFT_CORS_ORIGINS` (a request without `Origin` passes).
pub fn check_origin(headers: &HeaderMap, state: &AppState) -> Result<(), Error> {
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    let origin = origin.to_str().unwrap_or("").trim_end_matches('/').to_ascii_lowercase();
    let own = state.base_url(Some(headers)).to_ascii_lowercase();
    let own = url::Url::parse(&own).map(|u| u.origin().ascii_serialization()).unwrap_or(own);
    if origin == own || state.settings.accounts.cors_origins.contains(&origin) {
        return Ok(());
    }
    Err(Error::denied(
        "csrf_origin",
        "a request with the session cookie from another origin is refused: only this server's own origin and \
         UPDRAFT_CORS_ORIGINS may send it",
    ))
}

/// The `Set-Cookie` values that give a browser `new`'s session: the HttpOnly session cookie
/// and the readable CSRF cookie (`Secure` when the server's URL is https).
pub fn session_cookies(state: &AppState, headers: &HeaderMap, new: &NewSession) -> [HeaderValue; 2] {
    let max_age = (new.session.expires_at - Utc::now()).num_seconds().max(0);
    let secure = if state.base_url(Some(headers)).starts_with("https://") { "; Secure" } else { "" };
    let value = |text: String| HeaderValue::from_str(&text).expect("cookie values are base64url");
    [
        value(format!("{SESSION_COOKIE}={}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}", new.token)),
        value(format!("{CSRF_COOKIE}={}; Path=/; Max-Age={max_age}; SameSite=Strict{secure}", new.csrf_token)),
    ]
}

/// The `Set-Cookie` values that remove both cookies.
pub fn cleared_cookies(state: &AppState, headers: &HeaderMap) -> [HeaderValue; 2] {
    let secure = if state.base_url(Some(headers)).starts_with("https://") { "; Secure" } else { "" };
    [SESSION_COOKIE, CSRF_COOKIE]
        .map(|name| HeaderValue::from_str(&format!("{name}=; Path=/; Max-Age=0; SameSite=Strict{secure}")).expect("a valid cookie"))
}

/// A response with `new`'s cookies and the session's description (as the login answers).
pub fn session_response(state: &AppState, headers: &HeaderMap, new: &NewSession, status: StatusCode) -> Response {
    let ends = sessions::ends_at(&state.core, &new.session);
    let body = SessionView::of(&new.session.principal, Some(&new.session), ends, Some(new.csrf_token.clone()));
    let mut response = (status, Json(body)).into_response();
    for cookie in session_cookies(state, headers, new) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

// ---- wire types ----

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyBody {
    /// 1-64 characters of A-Z, a-z, 0-9, `.`, `_`, `-`; unique among keys that are not revoked.
    pub name: String,
    pub role: Role,
    /// When the key stops working; none: never.
    pub expires_at: Option<DateTime<Utc>>,
    /// A user the key acts for: refused while that user is disabled.
    pub owner: Option<String>,
}

/// A new key: `key` is shown only in this answer (only its digest is stored).
#[derive(Serialize, ToSchema)]
pub struct KeyCreated {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// The key (`upd_<id>_<secret>`): send it as `Authorization: Bearer <key>` or
    /// `X-Admin-API-Key: <key>`. It cannot be shown again.
    pub key: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// About the last use (uses are written about once a minute).
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub owner: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ApiKeyList {
    pub items: Vec<KeyView>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct KeyListQuery {
    /// Include revoked keys [default: false].
    pub include_revoked: Option<bool>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserBody {
    /// 1-64 characters of a-z, 0-9, `.`, `_`, `-`, `@`, starting with a letter or digit.
    pub username: String,
    /// 12-256 characters, no control characters; stored only as an Argon2id hash.
    #[schema(min_length = 12, max_length = 256, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    pub password: String,
    pub role: Role,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchUserBody {
    pub role: Option<Role>,
    /// True ends the user's sessions and refuses its logins and the keys it owns.
    pub disabled: Option<bool>,
    /// A new password (12-256 characters, no control characters); ends the user's sessions.
    #[schema(min_length = 12, max_length = 256, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    pub password: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct UserView {
    pub username: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct UserList {
    pub items: Vec<UserView>,
}

/// `{"username","password"}` or `{"api_key"}` (its schema says so: `login_body_schema`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    pub username: Option<String>,
    pub password: Option<String>,
    pub api_key: Option<String>,
}

/// The longest username or password a login reads, in characters.
const MAX_LOGIN_FIELD_CHARS: usize = 256;

impl utoipa::PartialSchema for LoginBody {
    /// One of the two forms `login` accepts, each with its fields required and no other.
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Type};
        let text = |description: &str, max: Option<usize>| {
            ObjectBuilder::new().schema_type(Type::String).max_length(max).description(Some(description)).build()
        };
        let password = ObjectBuilder::new()
            .title(Some("Password"))
            .property("username", text("The user's name", Some(MAX_LOGIN_FIELD_CHARS)))
            .property("password", text("The user's password", Some(MAX_LOGIN_FIELD_CHARS.max(rules::MAX_PASSWORD_LEN))))
            .required("username")
            .required("password")
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        let key = ObjectBuilder::new()
            .title(Some("API key"))
            .property("api_key", text("A named API key or the admin key", None))
            .required("api_key")
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        OneOfBuilder::new().item(password).item(key).description(Some("`{\"username\", \"password\"}` or `{\"api_key\"}`")).into()
    }
}

impl utoipa::ToSchema for LoginBody {}

/// Who is logged in.
#[derive(Serialize, ToSchema)]
pub struct SessionView {
    /// `user`, `api_key` or `oidc`.
    pub kind: PrincipalKind,
    /// The user, key or OpenID name.
    pub name: String,
    /// The username, for a user.
    pub user: Option<String>,
    pub role: Role,
    /// `user:alice`, `key:ci`, `oidc:bob`: what records name.
    pub actor: String,
    /// The session's id (absent when the request used a key).
    pub session_id: Option<String>,
    /// Only in the login's answer (later, read the `updraft_csrf` cookie): send it as
    /// `X-CSRF-Token` with every state-changing request made with the cookie.
    pub csrf_token: Option<String>,
    /// When the session ends if not used again (idle or absolute expiry, whichever first).
    pub expires_at: Option<DateTime<Utc>>,
    /// When it ends however active.
    pub absolute_expires_at: Option<DateTime<Utc>>,
}

impl SessionView {
    fn of(principal: &Principal, session: Option<&Session>, ends: DateTime<Utc>, csrf_token: Option<String>) -> SessionView {
        SessionView {
            kind: principal.kind,
            name: principal.name.clone(),
            user: (principal.kind == PrincipalKind::User).then(|| principal.name.clone()),
            role: principal.role,
            actor: principal.actor(),
            session_id: session.map(|s| s.id.clone()),
            csrf_token,
            expires_at: session.map(|_| ends),
            absolute_expires_at: session.map(|s| s.expires_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct SessionInfo {
    pub id: String,
    pub kind: PrincipalKind,
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    /// When it ends if not used again.
    pub expires_at: DateTime<Utc>,
    pub absolute_expires_at: DateTime<Utc>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    /// The session of this request's cookie.
    pub current: bool,
}

#[derive(Serialize, ToSchema)]
pub struct SessionList {
    pub items: Vec<SessionInfo>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SessionListQuery {
    /// Admin: the sessions of this user only. Others see only their own sessions.
    pub user: Option<String>,
}

fn key_view(key: &ApiKey) -> KeyView {
    KeyView {
        id: key.id.clone(),
        name: key.name.clone(),
        role: key.role,
        expires_at: key.expires_at,
        created_by: key.created_by.clone(),
        created_at: key.created_at,
        last_used_at: key.last_used_at,
        revoked_at: key.revoked_at,
        owner: key.owner.clone(),
    }
}

fn user_view(user: &User) -> UserView {
    UserView {
        username: user.username.clone(),
        role: user.role,
        disabled: user.disabled,
        created_at: user.created_at,
        updated_at: user.updated_at,
    }
}

// ---- API keys ----

/// Create a named API key. Its text is in this answer only.
#[utoipa::path(
    post, path = "/api/v1/api-keys", tag = "accounts",
    request_body = CreateKeyBody,
    responses((status = 201, body = KeyCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, description = "A key that is not revoked has this name", body = ErrorBody)),
    security(("bearer" = ["admin"]), ("admin_key" = ["admin"]), ("session" = ["admin"]))
)]
async fn create_key(State(state): State<AppState>, admin: Admin, ApiJson(body): ApiJson<CreateKeyBody>) -> ApiResult<Response> {
    let actor = admin.principal().actor();
    let spec =
        keys::KeySpec { name: &body.name, role: body.role, expires_at: body.expires_at, created_by: &actor, owner: body.owner.as_deref() };
    let new = keys::create(&state.core, spec).await?;
    let body = KeyCreated {
        id: new.key.id.clone(),
        name: new.key.name.clone(),
        role: new.key.role,
        key: new.secret,
        expires_at: new.key.expires_at,
        created_at: new.key.created_at,
    };
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The API keys (never their secrets), oldest first, with when each was last used.
#[utoipa::path(
    get, path = "/api/v1/api-keys", tag = "accounts",
    params(KeyListQuery),
    responses((status = 200, body = ApiKeyList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = ["admin"]), ("admin_key" = ["admin"]), ("session" = ["admin"]))
)]
async fn list_keys(State(state): State<AppState>, _admin: Admin, ApiQuery(query): ApiQuery<KeyListQuery>) -> ApiResult<Json<ApiKeyList>> {
    let keys = keys::list(&state.core, query.include_revoked.unwrap_or(false)).await?;
    Ok(Json(ApiKeyList { items: keys.iter().map(key_view).collect() }))
}

/// Revoke a key (by name or id): it stops working at once on this replica, and the sessions
/// opened with it end.
#[utoipa::path(
    delete, path = "/api/v1/api-keys/{key}", tag = "accounts",
    params(("key" = String, Path, description = "The key's name or id")),
    responses((status = 200, body = KeyView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin"]), ("admin_key" = ["admin"]), ("session" = ["admin"]))
)]
async fn revoke_key(State(state): State<AppState>, _admin: Admin, Path(key): Path<String>) -> ApiResult<Json<KeyView>> {
    let mut revoked = keys::revoke(&state.core, &key).await?;
    revoked.revoked_at.get_or_insert_with(Utc::now);
    Ok(Json(key_view(&revoked)))
}

// ---- users ----

/// Create a user account.
#[utoipa::path(
    post, path = "/api/v1/users", tag = "accounts",
    request_body = CreateUserBody,
    responses((status = 201, body = UserView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = ["admin"]), ("admin_key" = ["admin"]), ("session" = ["admin"]))
)]
async fn create_user(
    State(state): State<AppState>,
    _admin: Admin,
    ApiJson(body): ApiJson<CreateUserBody>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    let user = users::create(&state.core, &body.username, &body.password, body.role).await?;
    Ok((StatusCode::CREATED, Json(user_view(&user))))
}

/// The user accounts.
#[utoipa::path(
    get, path = "/api/v1/users", tag = "accounts",
    responses((status = 200, body = UserList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = ["admin"]), ("admin_key" = ["admin"]), ("session" = ["admin"]))
)]
async fn list_users(State(state): State<AppState>, _admin: Admin) -> ApiResult<Json<UserList>> {
    let users = users::list_in(&state.core.store).await?;
    Ok(Json(UserList { items: users.iter().map(user_view).collect() }))
}

/// One user account.
#[utoipa::path(
    get, path = "/api/v1/users/{username}", tag = "accounts",
    params(("username" = String, Path)),
    responses((status = 200, body = UserView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin"]), ("admin_key" = ["admin"]), ("session" = ["admin"]))
)]
async fn get_user(State(state): State<AppState>, _admin: Admin, Path(username): Path<String>) -> ApiResult<Json<UserView>> {
    Ok(Json(user_view(&users::find(&state.core, &username).await?)))
}

/// Change a user's role, password, or whether it is disabled. Disabling it, or changing its
/// role or password, ends its sessions.
#[utoipa::path(
    patch, path = "/api/v1/users/{username}", tag = "accounts",
    params(("username" = String, Path)),
    request_body = PatchUserBody,
    responses((status = 200, body = UserView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin"]), ("admin_key" = ["admin"]), ("session" = ["admin"]))
)]
async fn patch_user(
    State(state): State<AppState>,
    _admin: Admin,
    Path(username): Path<String>,
    ApiJson(body): ApiJson<PatchUserBody>,
) -> ApiResult<Json<UserView>> {
    if body.role.is_none() && body.disabled.is_none() && body.password.is_none() {
        return Err(Error::invalid("nothing_to_change", "send at least one of `role`, `disabled`, `password`").into());
    }
    let patch = users::UserPatch { role: body.role, disabled: body.disabled, password: body.password };
    Ok(Json(user_view(&users::change(&state.core, &username, patch).await?)))
}

// ---- sessions ----

/// Log in with `{"username","password"}` or `{"api_key"}`: sets the session cookie
/// (HttpOnly) and the CSRF cookie, and answers who is logged in with the CSRF token. A wrong
/// credential is 401 (the same whether the user exists or not); repeated failures are 429.
#[utoipa::path(
    post, path = "/api/v1/session", tag = "accounts",
    request_body = LoginBody,
    responses((status = 201, body = SessionView, description = "Logged in; `Set-Cookie` carries the session"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, description = "A foreign Origin", body = ErrorBody), (status = 429, body = ErrorBody)),
    security(())
)]
async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LoginBody>,
) -> ApiResult<Response> {
    check_origin(&headers, &state)?;
    let credentials = match (&body.username, &body.password, &body.api_key) {
        (Some(username), Some(password), None) => Credentials::Password { username, password },
        (None, None, Some(key)) => Credentials::ApiKey(key),
        _ => {
            return Err(Error::invalid("invalid_login", "send either `username` and `password`, or `api_key`").into());
        }
    };
    if let Credentials::Password { username, password } = &credentials
        && (username.chars().count() > MAX_LOGIN_FIELD_CHARS
            || password.chars().count() > MAX_LOGIN_FIELD_CHARS.max(rules::MAX_PASSWORD_LEN))
    {
        return Err(Error::invalid("invalid_login", "the username or password is too long").into());
    }
    let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok());
    // For the audit log: who tried (never the password or key's secret), and who got in.
    let attempted = match &credentials {
        Credentials::Password { username, .. } => format!("username={username}"),
        Credentials::ApiKey(key) => format!("api_key_id={}", rules::key_id(key).unwrap_or("admin")),
    };
    AuditNote::set(&extensions, attempted);
    let new = sessions::login(&state.core, credentials, ip, user_agent).await?;
    ActorSlot::record(&extensions, &new.session.principal);
    Ok(session_response(&state, &headers, &new, StatusCode::CREATED))
}

/// How operators can sign in here (the dashboard's sign-in page asks before anyone is signed in).
#[derive(Serialize, ToSchema)]
pub struct LoginMethods {
    /// A username and password (`POST /api/v1/session`).
    pub password: bool,
    /// An API key (`POST /api/v1/session` with `api_key`).
    pub api_key: bool,
    /// Single sign-on: `GET /api/v1/session/oidc/login?return_to=/path` starts it.
    pub oidc: bool,
}

/// How one may sign in: password and API key always; single sign-on when an OpenID provider
/// and the dashboard's client (UPDRAFT_OIDC_CLIENT_ID) are configured. No credential needed;
/// it tells nothing secret.
#[utoipa::path(
    get, path = "/api/v1/session/methods", tag = "accounts",
    responses((status = 200, body = LoginMethods)),
    security(())
)]
async fn login_methods(State(state): State<AppState>) -> Json<LoginMethods> {
    let oidc = state.core.oidc.as_ref().is_some_and(|oidc| oidc.settings.client_id.is_some());
    Json(LoginMethods { password: true, api_key: true, oidc })
}

/// Who the request's credential is (any role): with the session cookie, the session's
/// expiry too.
#[utoipa::path(
    get, path = "/api/v1/session", tag = "accounts",
    responses((status = 200, body = SessionView), (status = 401, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]), ("session" = ["admin", "operator", "viewer", "provisioner"]))
)]
async fn whoami(State(state): State<AppState>, me: Viewer, headers: HeaderMap) -> ApiResult<Json<SessionView>> {
    let session = current_session(&state, &headers, me.principal()).await?;
    let ends = session.as_ref().map(|s| sessions::ends_at(&state.core, s)).unwrap_or_else(Utc::now);
    Ok(Json(SessionView::of(me.principal(), session.as_ref(), ends, None)))
}

/// Log out: ends the cookie's session and clears the cookies (with the cookie, send
/// `X-CSRF-Token`).
#[utoipa::path(
    delete, path = "/api/v1/session", tag = "accounts",
    responses((status = 204, description = "Logged out; the cookies are cleared"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("session" = ["admin", "operator", "viewer", "provisioner"]))
)]
async fn logout(State(state): State<AppState>, me: Viewer, headers: HeaderMap) -> ApiResult<Response> {
    if let Some(session) = current_session(&state, &headers, me.principal()).await? {
        sessions::close(&state.core, &session).await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    for cookie in cleared_cookies(&state, &headers) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

/// The session of the request's cookie, when the request was authenticated by it (not by a
/// key in a header).
async fn current_session(state: &AppState, headers: &HeaderMap, principal: &Principal) -> Result<Option<Session>, Error> {
    if super::auth::credential(headers, "x-admin-api-key").is_some() {
        return Ok(None);
    }
    let Some(token) = session_cookie(headers) else { return Ok(None) };
    Ok(match sessions::verify(&state.core, token).await? {
        Check::Live(session) if session.principal == *principal => Some(session),
        _ => None,
    })
}

/// Live sessions: an admin sees everyone's (or one user's with `?user=`); others their own.
#[utoipa::path(
    get, path = "/api/v1/sessions", tag = "accounts",
    params(SessionListQuery),
    responses((status = 200, body = SessionList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]), ("session" = ["admin", "operator", "viewer", "provisioner"]))
)]
async fn list_sessions(
    State(state): State<AppState>,
    me: Viewer,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<SessionListQuery>,
) -> ApiResult<Json<SessionList>> {
    let me = me.principal();
    let is_admin = me.require(Need::Admin).is_ok();
    let found = match (&query.user, is_admin) {
        (Some(user), true) => sessions::list(&state.core, Some(PrincipalKind::User), Some(user)).await?,
        (None, true) => sessions::list(&state.core, None, None).await?,
        (Some(user), false) if !(me.kind == PrincipalKind::User && me.name == *user) => {
            return Err(
                Error::Forbidden(format!("only an admin sees the sessions of others; `{}` has the role {}", me.actor(), me.role)).into()
            );
        }
        (_, false) => sessions::list(&state.core, Some(me.kind), Some(&me.name)).await?,
    };
    let current = session_cookie(&headers).map(crate::domain::secret::digest_hex);
    let items = found
        .iter()
        .map(|s| SessionInfo {
            id: s.id.clone(),
            kind: s.principal.kind,
            name: s.principal.name.clone(),
            role: s.principal.role,
            created_at: s.created_at,
            last_seen_at: s.last_seen_at,
            expires_at: sessions::ends_at(&state.core, s),
            absolute_expires_at: s.expires_at,
            client_ip: s.client_ip.clone(),
            user_agent: s.user_agent.clone(),
            current: current.as_deref() == Some(s.token_digest.as_str()),
        })
        .collect();
    Ok(Json(SessionList { items }))
}

/// Revoke a session: an admin any, others their own.
#[utoipa::path(
    delete, path = "/api/v1/sessions/{id}", tag = "accounts",
    params(("id" = String, Path, description = "The session's id")),
    responses((status = 204, description = "Revoked"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]), ("session" = ["admin", "operator", "viewer", "provisioner"]))
)]
async fn revoke_session(State(state): State<AppState>, me: Viewer, Path(id): Path<String>) -> ApiResult<StatusCode> {
    sessions::revoke(&state.core, &id, me.principal()).await?;
    Ok(StatusCode::NO_CONTENT)
}

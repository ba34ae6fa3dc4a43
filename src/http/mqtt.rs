//! Admin API of the MQTT side: broker status, operator/service credentials, device commands
//! and telemetry; and the HTTP auth hooks that let an external broker (mosquitto-go-auth's
//! HTTP backend, EMQX's HTTP authn/authz) ask Updraft who may connect and where.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::{Admin, Operator, Viewer};
use super::device_api::ClientIp;
use super::error::{ApiJson, ApiQuery, ApiResult, ErrorBody};
use crate::domain::Error;
use crate::domain::command::{self, Command};
use crate::domain::mqtt::MqttUser;
use crate::domain::mqtt::{self, Access, ClientId, Principal};
use crate::services::commands::{self, NewCommand};
use crate::services::mqtt_auth;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(mqtt_status))
        .routes(routes!(list_users))
        .routes(routes!(put_user, delete_user))
        .routes(routes!(send_command, list_commands))
        .routes(routes!(get_command))
        .routes(routes!(get_telemetry))
        .routes(routes!(mosquitto_user))
        .routes(routes!(mosquitto_superuser))
        .routes(routes!(mosquitto_acl))
        .routes(routes!(emqx_authn))
        .routes(routes!(emqx_authz))
}

// ---- wire types ----

#[derive(Serialize, ToSchema)]
pub struct MqttStatusView {
    pub enabled: bool,
    /// `embedded` or `external`.
    pub mode: Option<String>,
    /// Updraft's own client is connected to the broker.
    pub connected: bool,
    /// Embedded broker: open sessions.
    pub sessions: Option<u64>,
    pub listeners: Option<Vec<String>>,
    pub external_broker: Option<String>,
    /// Devices this replica knows to hold an MQTT session.
    pub connected_devices: usize,
}

#[derive(Serialize, ToSchema)]
pub struct MqttUserView {
    pub username: String,
    /// fleet-read, gateway or admin.
    pub role: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct MqttUserList {
    pub items: Vec<MqttUserView>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutUserBody {
    /// 6-256 characters (prefer long ones); stored only as an Argon2id hash.
    #[schema(min_length = 6, max_length = 256)]
    pub password: String,
    /// `fleet-read` (subscribe to every device's messages), `gateway` (seed-000 topics of any
    /// MAC) or `admin` (everything).
    #[schema(pattern = r"^(?:fleet-read|gateway|admin)$")]
    pub role: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandBody {
    /// `reboot`, `check-update`, `ping`, or a name the device knows.
    pub name: String,
    #[schema(value_type = Option<Object>)]
    pub params: Option<Value>,
    /// Seconds the device has to answer [default: 30, at most 86400].
    pub timeout_s: Option<u64>,
    /// Wait up to this many seconds (at most 60) for the answer before responding.
    pub wait_s: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct CommandView {
    pub id: String,
    pub device_id: String,
    pub name: String,
    #[schema(value_type = Option<Object>)]
    pub params: Option<Value>,
    /// sent, succeeded, failed, timed_out.
    pub state: String,
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    pub error: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
pub struct CommandPage {
    pub items: Vec<CommandView>,
    pub total: u64,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// 1-500 [default: 50].
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    #[param(maximum = 1099511627776_u64)]
    pub offset: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct TelemetryView {
    pub device_id: String,
    pub received_at: DateTime<Utc>,
    #[schema(value_type = Object)]
    pub telemetry: Value,
}

fn user_view(user: &MqttUser) -> MqttUserView {
    MqttUserView { username: user.username.clone(), role: user.role.clone(), created_at: user.created_at, updated_at: user.updated_at }
}

fn command_view(c: &Command) -> CommandView {
    CommandView {
        id: c.id.to_string(),
        device_id: c.device_id.to_string(),
        name: c.name.clone(),
        params: c.params.clone(),
        state: c.state.as_str().into(),
        result: c.result.clone(),
        error: c.error.clone(),
        created_by: c.created_by.clone(),
        created_at: c.created_at,
        expires_at: c.expires_at,
        completed_at: c.completed_at,
    }
}

// ---- admin ----

/// The MQTT side: mode, connection, listeners, sessions.
#[utoipa::path(
    get, path = "/api/v1/mqtt", tag = "mqtt",
    responses((status = 200, body = MqttStatusView), (status = 401, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
async fn mqtt_status(State(state): State<AppState>, _viewer: Viewer) -> Json<MqttStatusView> {
    let connected_devices = state.core.devices.connected_count();
    Json(match &state.mqtt {
        Some(mqtt) => {
            let status = mqtt.status();
            MqttStatusView {
                enabled: true,
                mode: Some(status.mode.into()),
                connected: status.connected,
                sessions: status.sessions,
                listeners: status.listeners,
                external_broker: status.external,
                connected_devices,
            }
        }
        None => MqttStatusView {
            enabled: false,
            mode: None,
            connected: false,
            sessions: None,
            listeners: None,
            external_broker: None,
            connected_devices,
        },
    })
}

/// Operator and service credentials of the broker (devices use their tokens).
#[utoipa::path(
    get, path = "/api/v1/mqtt/users", tag = "mqtt",
    responses((status = 200, body = MqttUserList), (status = 401, body = ErrorBody)),
    security(("bearer" = ["admin"]), ("admin_key" = ["admin"]))
)]
async fn list_users(State(state): State<AppState>, _who: Admin) -> ApiResult<Json<MqttUserList>> {
    let users = mqtt_auth::list_users(&state.core).await?;
    Ok(Json(MqttUserList { items: users.iter().map(user_view).collect() }))
}

/// Create or replace a credential (201 when created, 200 when replaced).
#[utoipa::path(
    put, path = "/api/v1/mqtt/users/{username}", tag = "mqtt",
    params(("username" = String, Path, description = "1-64 characters of A-Z, a-z, 0-9, `.`, `_`, `-` or `@`, starting with a letter or digit", pattern = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")),
    request_body = PutUserBody,
    responses((status = 200, body = MqttUserView), (status = 201, body = MqttUserView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = ["admin"]), ("admin_key" = ["admin"]))
)]
async fn put_user(
    State(state): State<AppState>,
    _who: Admin,
    Path(username): Path<String>,
    ApiJson(body): ApiJson<PutUserBody>,
) -> ApiResult<(StatusCode, Json<MqttUserView>)> {
    let (user, created) = mqtt_auth::put_user(&state.core, &username, &body.password, &body.role).await?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(user_view(&user))))
}

/// Delete a credential. Open connections that used it stay until they disconnect.
#[utoipa::path(
    delete, path = "/api/v1/mqtt/users/{username}", tag = "mqtt",
    params(("username" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin"]), ("admin_key" = ["admin"]))
)]
async fn delete_user(State(state): State<AppState>, _who: Admin, Path(username): Path<String>) -> ApiResult<StatusCode> {
    mqtt_auth::delete_user(&state.core, &username).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Send a command to a device over MQTT (`updraft/{id}/cmd`). Answers 202 with the command;
/// with `wait_s`, waits for the device's answer (200 once it ended, else 202).
#[utoipa::path(
    post, path = "/api/v1/devices/{id}/commands", tag = "mqtt",
    params(("id" = String, Path, description = "Device id")),
    request_body = CommandBody,
    responses((status = 200, body = CommandView), (status = 202, body = CommandView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, description = "MQTT is off", body = ErrorBody)),
    security(("bearer" = ["admin", "operator"]), ("admin_key" = ["admin", "operator"]))
)]
async fn send_command(
    State(state): State<AppState>,
    who: Operator,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CommandBody>,
) -> ApiResult<(StatusCode, Json<CommandView>)> {
    let wait = body.wait_s.unwrap_or(0);
    if wait > 60 {
        return Err(Error::invalid("invalid_wait", "wait_s is at most 60").into());
    }
    let timeout = Duration::from_secs(body.timeout_s.unwrap_or(command::DEFAULT_TIMEOUT_SECS));
    let sent =
        commands::issue(&state.core, &id, NewCommand { name: body.name, params: body.params, timeout }, &who.principal().actor()).await?;
    let command = if wait > 0 { commands::wait(&state.core, &id, &sent.id, Duration::from_secs(wait)).await? } else { sent };
    let status = if command.state.is_final() { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(command_view(&command))))
}

/// A device's commands, newest first.
#[utoipa::path(
    get, path = "/api/v1/devices/{id}/commands", tag = "mqtt",
    params(("id" = String, Path, description = "Device id"), PageQuery),
    responses((status = 200, body = CommandPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
async fn list_commands(
    State(state): State<AppState>,
    _viewer: Viewer,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Json<CommandPage>> {
    let super::page::Page { limit, offset } = super::page::page(query.limit, query.offset)?;
    let (items, total) = commands::list(&state.core, &id, limit, offset).await?;
    Ok(Json(CommandPage { items: items.iter().map(command_view).collect(), total }))
}

/// One command and its outcome.
#[utoipa::path(
    get, path = "/api/v1/devices/{id}/commands/{command_id}", tag = "mqtt",
    params(("id" = String, Path, description = "Device id"), ("command_id" = String, Path)),
    responses((status = 200, body = CommandView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
async fn get_command(
    State(state): State<AppState>,
    _viewer: Viewer,
    Path((id, command_id)): Path<(String, String)>,
) -> ApiResult<Json<CommandView>> {
    Ok(Json(command_view(&commands::find(&state.core, &id, &command_id).await?)))
}

/// The latest telemetry message the device sent over MQTT (as this replica received it).
#[utoipa::path(
    get, path = "/api/v1/devices/{id}/telemetry", tag = "mqtt",
    params(("id" = String, Path, description = "Device id")),
    responses((status = 200, body = TelemetryView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
async fn get_telemetry(State(state): State<AppState>, _viewer: Viewer, Path(id): Path<String>) -> ApiResult<Json<TelemetryView>> {
    let (received_at, telemetry) = state.core.devices.latest_telemetry(&id).ok_or_else(|| Error::not_found("telemetry of device", &id))?;
    Ok(Json(TelemetryView { device_id: id, received_at, telemetry }))
}

// ---- auth hooks of external brokers ----

/// The fields the hooks read, from a JSON or form body (mosquitto-go-auth's `json` and
/// `form` parameter modes; EMQX sends JSON).
#[derive(Deserialize, Default, ToSchema)]
pub struct HookBody {
    pub username: Option<String>,
    pub password: Option<String>,
    pub clientid: Option<String>,
    pub topic: Option<String>,
    /// mosquitto-go-auth: 1 read, 2 write, 3 read and write, 4 subscribe.
    #[schema(schema_with = crate::http::schemas::hook_acc)]
    pub acc: Option<Value>,
    /// EMQX: `publish` or `subscribe`.
    #[schema(pattern = r"^(?:publish|subscribe)$")]
    pub action: Option<String>,
}

/// `HookBody` as mosquitto-go-auth's ACL check sends it: `acc` is required.
#[derive(ToSchema)]
#[allow(dead_code, reason = "describes the ACL hook's body in the OpenAPI document")]
pub struct AclHookBody {
    username: Option<String>,
    password: Option<String>,
    clientid: Option<String>,
    topic: Option<String>,
    /// 1 read, 2 write, 3 read and write, 4 subscribe.
    #[schema(schema_with = crate::http::schemas::hook_acc_given)]
    acc: Value,
    #[schema(pattern = r"^(?:publish|subscribe)$")]
    action: Option<String>,
}

/// `HookBody` as EMQX's authorization sends it: `action` is required.
#[derive(ToSchema)]
#[allow(dead_code, reason = "describes the authorization hook's body in the OpenAPI document")]
pub struct AuthzHookBody {
    username: Option<String>,
    password: Option<String>,
    clientid: Option<String>,
    topic: Option<String>,
    #[schema(schema_with = crate::http::schemas::hook_acc)]
    acc: Option<Value>,
    /// `publish` or `subscribe`.
    #[schema(pattern = r"^(?:publish|subscribe)$")]
    action: String,
}

/// A hook's `acc` (a number or its digits), if it is one of 1-4.
fn hook_acc(acc: &Value) -> Option<u64> {
    match acc {
        // JSON Schema's integer: also `1.0`.
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && (1.0..=4.0).contains(f)).map(|f| f as u64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .filter(|acc| (1..=4).contains(acc))
}

fn invalid_acc() -> Error {
    Error::invalid("invalid_acc", "acc must be 1 (read), 2 (write), 3 (read and write) or 4 (subscribe)")
}

fn invalid_action() -> Error {
    Error::invalid("invalid_action", "action must be publish or subscribe")
}

/// A hook's request, JSON or a form; an `acc` or `action` that is given must be one the hooks
/// know, whichever hook reads it.
fn hook_body(headers: &HeaderMap, body: &Bytes) -> Result<HookBody, Error> {
    let body = read_hook_body(headers, body)?;
    if body.acc.as_ref().is_some_and(|acc| hook_acc(acc).is_none()) {
        return Err(invalid_acc());
    }
    if body.action.as_deref().is_some_and(|action| !matches!(action, "publish" | "subscribe")) {
        return Err(invalid_action());
    }
    Ok(body)
}

fn read_hook_body(headers: &HeaderMap, body: &Bytes) -> Result<HookBody, Error> {
    let form =
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    if form {
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
        let get = |k: &str| pairs.iter().find(|(name, _)| name == k).map(|(_, v)| v.clone());
        Ok(HookBody {
            username: get("username"),
            password: get("password"),
            clientid: get("clientid"),
            topic: get("topic"),
            acc: get("acc").map(Value::String),
            action: get("action"),
        })
    } else {
        serde_json::from_slice::<HookBody>(body).map_err(|e| Error::invalid("invalid_body", format!("not a hook request: {e}")))
    }
}

fn hooks_enabled(state: &AppState) -> Result<(), Error> {
    if state.settings.mqtt.enabled && state.settings.mqtt.auth_hooks {
        Ok(())
    } else {
        Err(Error::not_found("route", "MQTT auth hooks (UPDRAFT_MQTT_AUTH_HOOKS=false)"))
    }
}

fn hook_answer(allowed: bool, error: &str) -> Response {
    let status = if allowed { StatusCode::OK } else { StatusCode::FORBIDDEN };
    (status, Json(json!({"ok": allowed, "error": if allowed { "" } else { error }}))).into_response()
}

async fn check_credentials(state: &AppState, ip: std::net::IpAddr, body: &HookBody) -> Option<Principal> {
    let identity = state.mqtt.as_ref().and_then(|m| m.hook_identity().cloned());
    let login = mqtt_auth::authenticate(
        &state.core,
        identity.as_ref(),
        body.username.as_deref(),
        body.password.as_deref().map(str::as_bytes),
        Some(ip),
    )
    .await
    .ok()?;
    // The broker may have assigned the client id, which cannot be told from here: only a
    // client id that names another device is refused.
    if let Some(client_id) = body.clientid.as_deref().filter(|c| !c.is_empty())
        && let Err(refusal) = mqtt_auth::check_client_id(&state.core, &login.principal, ClientId::Unknown(client_id)).await
    {
        tracing::info!(client_id = ?client_id, %ip, reason = refusal.as_str(), "MQTT connection refused by the auth hook");
        return None;
    }
    Some(login.principal)
}

async fn check_access(state: &AppState, body: &HookBody, access: Access) -> Result<bool, Error> {
    let (Some(username), Some(topic)) = (body.username.as_deref(), body.topic.as_deref()) else {
        return Ok(false);
    };
    let identity = state.mqtt.as_ref().and_then(|m| m.hook_identity().cloned());
    let principal = mqtt_auth::principal_of(&state.core, identity.as_ref(), username).await?;
    let allowed = principal.is_some_and(|p| mqtt::allowed(&p, access, topic));
    if !allowed {
        metrics::counter!("updraft_mqtt_acl_denied_total", "action" => if access == Access::Publish { "publish" } else { "subscribe" })
            .increment(1);
    }
    Ok(allowed)
}

/// mosquitto-go-auth HTTP backend, `http_getuser_uri`: 200 when the credentials are valid.
#[utoipa::path(
    post, path = "/api/v1/mqtt/hooks/mosquitto/user", tag = "mqtt",
    request_body = HookBody,
    responses((status = 200, description = "Allowed: {\"ok\":true}"), (status = 403, description = "Refused: {\"ok\":false}"), (status = 400, description = "Not a hook request, or an `acc` or `action` no hook knows", body = ErrorBody), (status = 404, description = "Hooks are off", body = ErrorBody)),
)]
async fn mosquitto_user(State(state): State<AppState>, ClientIp(ip): ClientIp, headers: HeaderMap, body: Bytes) -> ApiResult<Response> {
    hooks_enabled(&state)?;
    let body = hook_body(&headers, &body)?;
    Ok(hook_answer(check_credentials(&state, ip, &body).await.is_some(), "bad user name or password"))
}

/// mosquitto-go-auth HTTP backend, `http_superuser_uri`: only Updraft's own credential.
#[utoipa::path(
    post, path = "/api/v1/mqtt/hooks/mosquitto/superuser", tag = "mqtt",
    request_body = HookBody,
    responses((status = 200, description = "Superuser"), (status = 403, description = "Not a superuser"), (status = 400, description = "Not a hook request, or an `acc` or `action` no hook knows", body = ErrorBody), (status = 404, description = "Hooks are off", body = ErrorBody)),
)]
async fn mosquitto_superuser(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> ApiResult<Response> {
    hooks_enabled(&state)?;
    let body = hook_body(&headers, &body)?;
    let identity = state.mqtt.as_ref().and_then(|m| m.hook_identity().cloned());
    let superuser = match body.username.as_deref() {
        Some(username) => mqtt_auth::principal_of(&state.core, identity.as_ref(), username)
            .await?
            .is_some_and(|p| matches!(p, Principal::Server | Principal::User { role: mqtt::Role::Admin, .. })),
        None => false,
    };
    Ok(hook_answer(superuser, "not a superuser"))
}

/// mosquitto-go-auth HTTP backend, `http_aclcheck_uri`: `acc` 1 read, 2 write, 3 both, 4 subscribe.
#[utoipa::path(
    post, path = "/api/v1/mqtt/hooks/mosquitto/acl", tag = "mqtt",
    request_body = AclHookBody,
    responses((status = 200, description = "Allowed"), (status = 403, description = "Refused"), (status = 400, description = "Not a hook request, or an `acc` or `action` no hook knows", body = ErrorBody), (status = 404, description = "Hooks are off", body = ErrorBody)),
)]
async fn mosquitto_acl(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> ApiResult<Response> {
    hooks_enabled(&state)?;
    let body = hook_body(&headers, &body)?;
    let allowed = match body.acc.as_ref().and_then(hook_acc) {
        Some(1) | Some(4) => check_access(&state, &body, Access::Subscribe).await?,
        Some(2) => check_access(&state, &body, Access::Publish).await?,
        Some(3) => check_access(&state, &body, Access::Subscribe).await? && check_access(&state, &body, Access::Publish).await?,
        _ => return Err(invalid_acc().into()),
    };
    Ok(hook_answer(allowed, "not allowed"))
}

/// EMQX HTTP authentication: `{"result": "allow" | "deny", "is_superuser": bool}`.
#[utoipa::path(
    post, path = "/api/v1/mqtt/hooks/emqx/authn", tag = "mqtt",
    request_body = HookBody,
    responses((status = 200, description = "The decision"), (status = 400, description = "Not a hook request, or an `acc` or `action` no hook knows", body = ErrorBody), (status = 404, description = "Hooks are off", body = ErrorBody)),
)]
async fn emqx_authn(State(state): State<AppState>, ClientIp(ip): ClientIp, headers: HeaderMap, body: Bytes) -> ApiResult<Response> {
    hooks_enabled(&state)?;
    let body = hook_body(&headers, &body)?;
    let answer = match check_credentials(&state, ip, &body).await {
        Some(principal) => {
            let superuser = matches!(principal, Principal::Server | Principal::User { role: mqtt::Role::Admin, .. });
            json!({"result": "allow", "is_superuser": superuser})
        }
        None => json!({"result": "deny", "is_superuser": false}),
    };
    Ok(Json(answer).into_response())
}

/// EMQX HTTP authorization: `action` is `publish` or `subscribe`; `{"result": "allow" | "deny"}`.
#[utoipa::path(
    post, path = "/api/v1/mqtt/hooks/emqx/authz", tag = "mqtt",
    request_body = AuthzHookBody,
    responses((status = 200, description = "The decision"), (status = 400, description = "Not a hook request, or an `acc` or `action` no hook knows", body = ErrorBody), (status = 404, description = "Hooks are off", body = ErrorBody)),
)]
async fn emqx_authz(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> ApiResult<Response> {
    hooks_enabled(&state)?;
    let body = hook_body(&headers, &body)?;
    let access = match body.action.as_deref() {
        Some("publish") => Access::Publish,
        Some("subscribe") => Access::Subscribe,
        _ => return Err(invalid_action().into()),
    };
    let allowed = check_access(&state, &body, access).await?;
    Ok(Json(json!({"result": if allowed { "allow" } else { "deny" }})).into_response())
}

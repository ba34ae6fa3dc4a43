//! Admin API for the device registry: devices, tokens, import, history, products
//! (provisioning policy), pair keys, and the live event stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use futures::Stream;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::Admin;
use super::error::{ApiJson, ApiQuery, ApiResult, ErrorBody};
use super::firmware::timestamp;
use crate::domain::Error;
use crate::domain::device::{Device, Product, Provisioning, SetupEvent, UpdateAttempt};
use crate::domain::firmware::{Channel, HardwareId};
use crate::domain::version::Version;
use crate::services::devices::{self as service, NewDeviceRequest};
use crate::storage::{DeviceFilter, DevicePatch, DeviceSort};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_device, list_devices))
        .routes(routes!(import_devices))
        .routes(routes!(get_device, patch_device, delete_device))
        .routes(routes!(issue_token, revoke_token))
        .routes(routes!(device_updates))
        .routes(routes!(device_setup_history))
        .routes(routes!(list_products))
        .routes(routes!(get_product, put_product))
        .routes(routes!(create_pairing))
        .routes(routes!(events))
}

// ---- wire types ----

/// A registered device.
#[derive(Serialize, ToSchema)]
pub struct DeviceView {
    pub id: String,
    /// Canonical MAC, `AA:BB:CC:DD:EE:FF`.
    pub mac: String,
    pub name: String,
    pub product: Option<String>,
    pub hardware: Option<String>,
    pub channel: String,
    /// The version the device reports.
    pub version: Option<String>,
    /// The version an operator pinned, if any.
    pub target_version: Option<String>,
    pub tags: Vec<String>,
    /// Device-reported attributes.
    #[schema(value_type = Object)]
    pub attributes: Value,
    /// Operator-owned metadata.
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub owner: Option<String>,
    /// `online` or `offline`.
    pub status: &'static str,
    pub last_seen: Option<String>,
    pub ip: Option<String>,
    pub setup_status: Option<SetupStatusView>,
    pub has_token: bool,
    /// Until then the device may provision again without its token (an operator allowed it).
    pub reprovision_until: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct SetupStatusView {
    pub status_code: u8,
    pub title: String,
    pub description: String,
    pub at: String,
}

#[derive(Serialize, ToSchema)]
pub struct DevicePage {
    pub items: Vec<DeviceView>,
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

/// A device just created, with its token when one was requested (shown only now).
#[derive(Serialize, ToSchema)]
pub struct DeviceCreated {
    #[serde(flatten)]
    pub device: DeviceView,
    pub token: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenIssued {
    pub device_id: String,
    /// The new token; shown only now. The previous token no longer works.
    pub token: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDeviceBody {
    /// Any common form: `AA:BB:CC:DD:EE:FF`, `aa-bb-cc-dd-ee-ff`, `aabbccddeeff`, or the decimal eFuse MAC.
    pub mac: String,
    pub name: Option<String>,
    pub product: Option<String>,
    pub hardware: Option<String>,
    /// `stable` (default), `beta`, or another channel name.
    pub channel: Option<String>,
    pub version: Option<String>,
    pub target_version: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    pub owner: Option<String>,
    /// Also issue a device token (returned once in the answer).
    #[serde(default)]
    pub issue_token: bool,
}

impl CreateDeviceBody {
    fn into_request(self) -> NewDeviceRequest {
        NewDeviceRequest {
            mac: self.mac,
            name: self.name,
            product: self.product,
            hardware: self.hardware,
            channel: self.channel,
            version: self.version,
            target_version: self.target_version,
            tags: self.tags,
            metadata: self.metadata,
            owner: self.owner,
        }
    }
}

/// Fields to change; `null` clears a clearable field.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchDeviceBody {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "clearable")]
    #[schema(value_type = Option<String>)]
    pub product: Option<Option<String>>,
    #[serde(default, deserialize_with = "clearable")]
    #[schema(value_type = Option<String>)]
    pub hardware: Option<Option<String>>,
    pub channel: Option<String>,
    /// Pin a version (may be older than the running one: that is a rollback); `null` unpins.
    #[serde(default, deserialize_with = "clearable")]
    #[schema(value_type = Option<String>)]
    pub target_version: Option<Option<String>>,
    pub tags: Option<Vec<String>>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    #[serde(default, deserialize_with = "clearable")]
    #[schema(value_type = Option<String>)]
    pub owner: Option<Option<String>>,
    /// Let the device provision again without its current token until this time (RFC 3339, at
    /// most 30 days ahead), e.g. after a factory reset wiped its token; used up by the first
    /// provisioning. `null` closes the window.
    #[serde(default, deserialize_with = "clearable")]
    #[schema(value_type = Option<String>)]
    pub reprovision_until: Option<Option<String>>,
}

/// A re-provisioning window's end: in the future, at most 30 days ahead.
fn reprovision_window(text: &str) -> Result<chrono::DateTime<Utc>, Error> {
    let until = chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|_| Error::invalid("invalid_reprovision_until", format!("reprovision_until `{text}` is not an RFC 3339 time")))?
        .with_timezone(&Utc);
    let now = Utc::now();
    if until <= now || until > now + chrono::Duration::days(30) {
        return Err(Error::invalid("invalid_reprovision_until", "reprovision_until must be in the future and at most 30 days ahead"));
    }
    Ok(until)
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
fn clearable<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeviceListQuery {
    pub product: Option<String>,
    pub hardware: Option<String>,
    /// Reported version, exactly as reported.
    pub version: Option<String>,
    pub tag: Option<String>,
    /// `online` or `offline`.
    pub status: Option<String>,
    /// RFC 3339 time: devices last seen before it.
    pub last_seen_before: Option<String>,
    /// RFC 3339 time: devices last seen after it.
    pub last_seen_after: Option<String>,
    pub owner: Option<String>,
    /// Case-insensitive text search in name, MAC, owner and id.
    pub q: Option<String>,
    /// `-created_at` (default), `created_at`, `-last_seen`, `name`, `mac`.
    pub sort: Option<String>,
    /// Page size, 1-500 [default: 50].
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct ImportResult {
    pub created: usize,
    pub device_ids: Vec<String>,
    pub errors: Vec<ImportError>,
}

#[derive(Serialize, ToSchema)]
pub struct ImportError {
    /// 0-based row (CSV: data row after the header).
    pub row: usize,
    pub code: String,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub struct AttemptView {
    pub id: String,
    pub release_id: String,
    pub artifact_id: String,
    pub from_version: Option<String>,
    pub to_version: String,
    /// offered, downloading, downloaded, installing, installed, succeeded, failed, rejected.
    pub state: &'static str,
    pub progress: Option<u8>,
    pub message: Option<String>,
    pub current: bool,
    pub created_at: String,
    pub updated_at: String,
    pub events: Vec<AttemptEventView>,
}

#[derive(Serialize, ToSchema)]
pub struct AttemptEventView {
    pub state: &'static str,
    pub progress: Option<u8>,
    pub message: Option<String>,
    pub at: String,
}

#[derive(Serialize, ToSchema)]
pub struct AttemptList {
    pub items: Vec<AttemptView>,
}

#[derive(Serialize, ToSchema)]
pub struct SetupHistory {
    pub items: Vec<SetupStatusView>,
}

/// A product's device policy.
#[derive(Serialize, ToSchema)]
pub struct ProductView {
    pub name: String,
    /// `open`, `key` or `preregistered`.
    pub provisioning: &'static str,
    pub provision_key: Option<String>,
    pub has_provision_secret: bool,
    pub poll_interval_s: u32,
    /// The hardware ids the product admits; empty admits any. When set, a device's hardware is
    /// fixed by an operator or at provisioning, and a check-in naming another gets 409.
    pub hardware: Vec<String>,
    /// Anonymous reads of seed 003's `GET /api/configs/{mac}.json` include secret values.
    pub public_secrets: bool,
    /// The anti-rollback floor: rollbacks and pins below this version are refused.
    pub min_version: Option<String>,
    /// False when the product was never configured and the defaults apply.
    pub configured: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutProductBody {
    /// `open`, `key` or `preregistered`.
    pub provisioning: String,
    pub provision_key: Option<String>,
    /// At least 16 characters; stored only as a hash. Omit to keep the current one.
    pub provision_secret: Option<String>,
    pub poll_interval_s: Option<u32>,
    /// The hardware ids the product admits (`[]`: any); omit to keep the current list.
    pub hardware: Option<Vec<String>>,
    /// Let anonymous readers of seed 003's `GET /api/configs/{mac}.json` see secret values, for
    /// seed-003 devices that need Wi-Fi credentials and cannot send a token. Weak: anyone who
    /// knows a MAC reads them. Omit to keep the current value [default: false].
    pub public_secrets: Option<bool>,
    /// The anti-rollback floor (a version); `null` removes it; omit to keep the current one.
    #[serde(default, deserialize_with = "clearable")]
    #[schema(value_type = Option<String>)]
    pub min_version: Option<Option<String>>,
}

#[derive(Serialize, ToSchema)]
pub struct ProductList {
    pub items: Vec<ProductView>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePairingBody {
    /// The owner the device will be bound to.
    pub owner: String,
    /// Lifetime in seconds (30-86400) [default: UPDRAFT_PAIRING_TTL_SECS].
    pub ttl_s: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct PairKey {
    pub pair_key: String,
    pub expires_at: String,
}

// ---- conversions ----

pub fn device_view(state: &AppState, device: &Device) -> DeviceView {
    let runtime = &state.core.devices;
    DeviceView {
        id: device.id.clone(),
        mac: device.mac.canonical(),
        name: device.name.clone(),
        product: device.product.clone(),
        hardware: device.hardware.clone(),
        channel: device.channel.clone(),
        version: device.version.clone(),
        target_version: device.target_version.clone(),
        tags: device.tags.clone(),
        attributes: device.attributes.clone(),
        metadata: device.metadata.clone(),
        owner: device.owner.clone(),
        status: if runtime.is_online(device) { "online" } else { "offline" },
        last_seen: runtime.last_seen(device).map(timestamp),
        ip: runtime.ip(device),
        setup_status: device.setup_status.as_ref().map(|s| SetupStatusView {
            status_code: s.code,
            title: s.title.clone(),
            description: s.description.clone(),
            at: timestamp(s.at),
        }),
        has_token: device.has_token,
        reprovision_until: device.reprovision_until.filter(|until| *until > Utc::now()).map(timestamp),
        created_at: timestamp(device.created_at),
        updated_at: timestamp(device.updated_at),
    }
}

pub fn attempt_view(attempt: &UpdateAttempt) -> AttemptView {
    AttemptView {
        id: attempt.id.clone(),
        release_id: attempt.release_id.clone(),
        artifact_id: attempt.artifact_id.clone(),
        from_version: attempt.from_version.clone(),
        to_version: attempt.to_version.clone(),
        state: attempt.state.as_str(),
        progress: attempt.progress,
        message: attempt.message.clone(),
        current: attempt.current,
        created_at: timestamp(attempt.created_at),
        updated_at: timestamp(attempt.updated_at),
        events: attempt
            .events
            .iter()
            .map(|e| AttemptEventView { state: e.state.as_str(), progress: e.progress, message: e.message.clone(), at: timestamp(e.at) })
            .collect(),
    }
}

fn product_view(product: &Product, configured: bool, min_version: Option<String>) -> ProductView {
    ProductView {
        min_version,
        name: product.name.clone(),
        provisioning: product.provisioning.as_str(),
        provision_key: product.provision_key.clone(),
        has_provision_secret: product.provision_secret_hash.is_some(),
        poll_interval_s: product.poll_interval_s,
        hardware: product.hardware.clone(),
        public_secrets: product.public_secrets,
        configured,
    }
}

fn setup_view(event: &SetupEvent) -> SetupStatusView {
    SetupStatusView { status_code: event.code, title: event.title.clone(), description: event.description.clone(), at: timestamp(event.at) }
}

// ---- devices ----

/// Register a device.
#[utoipa::path(
    post, path = "/api/v1/devices", tag = "devices",
    request_body = CreateDeviceBody,
    responses((status = 201, body = DeviceCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, description = "MAC already registered", body = ErrorBody)),
    security(("bearer" = []), ("admin_key" = []))
)]
async fn create_device(
    State(state): State<AppState>,
    _admin: Admin,
    ApiJson(body): ApiJson<CreateDeviceBody>,
) -> ApiResult<(StatusCode, Json<DeviceCreated>)> {
    let issue_token = body.issue_token;
    let mut device = service::register(&state.core, body.into_request()).await?;
    let mut token = None;
    if issue_token {
        let (with_token, issued) = service::issue_token(&state.core, &device.id).await?;
        device = with_token;
        token = Some(issued);
    }
    Ok((StatusCode::CREATED, Json(DeviceCreated { device: device_view(&state, &device), token })))
}

/// List devices, filtered, sorted and paginated.
#[utoipa::path(
    get, path = "/api/v1/devices", tag = "devices",
    params(DeviceListQuery),
    responses((status = 200, body = DevicePage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = []), ("admin_key" = []))
)]
async fn list_devices(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(query): ApiQuery<DeviceListQuery>,
) -> ApiResult<Json<DevicePage>> {
    let super::page::Page { limit, offset } = super::page::page(query.limit, query.offset)?;
    let sort = match query.sort.as_deref() {
        None | Some("-created_at") => DeviceSort::NewestFirst,
        Some("created_at") => DeviceSort::OldestFirst,
        Some("-last_seen") | Some("last_seen") => DeviceSort::LastSeen,
        Some("name") => DeviceSort::Name,
        Some("mac") => DeviceSort::Mac,
        Some(other) => {
            return Err(Error::invalid(
                "invalid_query",
                format!("sort `{other}` is not one of -created_at, created_at, -last_seen, name, mac"),
            )
            .into());
        }
    };
    let time = |name: &str, value: &Option<String>| -> Result<Option<i64>, Error> {
        match value {
            None => Ok(None),
            Some(text) => chrono::DateTime::parse_from_rfc3339(text)
                .map(|t| Some(t.timestamp_millis()))
                .map_err(|_| Error::invalid("invalid_query", format!("{name} must be an RFC 3339 time such as 2026-11-23T12:00:00Z"))),
        }
    };
    // Presence is buffered for up to a second (longer under a flood of check-ins); flush so
    // the filters see it, but never more than ten seconds' worth of writes in a request.
    service::flush_presence(&state.core, Some(state.core.devices.policy.presence_writes_per_sec.saturating_mul(10))).await?;
    let offline_after = chrono::Duration::from_std(state.core.devices.policy.offline_after).unwrap_or(chrono::Duration::MAX);
    let cutoff = (Utc::now() - offline_after).timestamp_millis();
    let online_since = match query.status.as_deref() {
        None => None,
        Some("online") => Some((true, cutoff)),
        Some("offline") => Some((false, cutoff)),
        Some(other) => return Err(Error::invalid("invalid_query", format!("status `{other}` is not one of online, offline")).into()),
    };
    let hardware = query.hardware.as_deref().map(HardwareId::parse).transpose()?.map(|h| h.as_str().to_string());
    let filter = DeviceFilter {
        product: query.product.clone(),
        hardware,
        version: query.version.clone(),
        tag: query.tag.clone(),
        online_since,
        last_seen_before: time("last_seen_before", &query.last_seen_before)?,
        last_seen_after: time("last_seen_after", &query.last_seen_after)?,
        owner: query.owner.clone(),
        search: query.q.clone().filter(|q| !q.trim().is_empty()),
        sort,
        limit,
        offset,
    };
    let (devices, total) = state.core.store.list_devices(&filter).await?;
    Ok(Json(DevicePage { items: devices.iter().map(|d| device_view(&state, d)).collect(), total, limit, offset: filter.offset }))
}

/// Show a device (by id or MAC).
#[utoipa::path(
    get, path = "/api/v1/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "Device id or MAC")),
    responses((status = 200, body = DeviceView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []), ("admin_key" = []))
)]
async fn get_device(State(state): State<AppState>, _admin: Admin, Path(id): Path<String>) -> ApiResult<Json<DeviceView>> {
    let device = service::find(&state.core, &id).await?;
    Ok(Json(device_view(&state, &device)))
}

/// Change a device: name, product, hardware, channel, pin (`target_version`), tags, metadata, owner.
#[utoipa::path(
    patch, path = "/api/v1/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "Device id or MAC")),
    request_body = PatchDeviceBody,
    responses((status = 200, body = DeviceView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []), ("admin_key" = []))
)]
async fn patch_device(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PatchDeviceBody>,
) -> ApiResult<Json<DeviceView>> {
    use crate::domain::device::{check_json_object, check_tags, check_text};
    use crate::domain::firmware::Product as ProductName;
    let device = service::find(&state.core, &id).await?;
    let patch = DevicePatch {
        name: body.name.as_deref().map(|n| check_text("name", "invalid_name", n, 128)).transpose()?,
        product: body.product.map(|p| p.map(|p| ProductName::parse(&p).map(|p| p.as_str().to_string())).transpose()).transpose()?,
        hardware: body.hardware.map(|h| h.map(|h| HardwareId::parse(&h).map(|h| h.as_str().to_string())).transpose()).transpose()?,
        channel: body.channel.as_deref().map(Channel::parse).transpose()?.map(|c| c.as_str().to_string()),
        target_version: body.target_version,
        tags: body.tags.as_deref().map(check_tags).transpose()?,
        metadata: match body.metadata {
            Some(m) => {
                check_json_object("metadata", &m)?;
                Some(m)
            }
            None => None,
        },
        owner: body.owner.map(|o| o.map(|o| check_text("owner", "invalid_owner", &o, 128)).transpose()).transpose()?,
        reprovision_until: body.reprovision_until.map(|until| until.as_deref().map(reprovision_window).transpose()).transpose()?,
    };
    let device = service::update(&state.core, &device.id, patch).await?;
    Ok(Json(device_view(&state, &device)))
}

/// Delete a device, its token and its history.
#[utoipa::path(
    delete, path = "/api/v1/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "Device id or MAC")),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []), ("admin_key" = []))
)]
async fn delete_device(State(state): State<AppState>, _admin: Admin, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let device = service::find(&state.core, &id).await?;
    service::delete(&state.core, &device.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Issue or rotate a device token. The old token stops working at once.
#[utoipa::path(
    post, path = "/api/v1/devices/{id}/token", tag = "devices",
    params(("id" = String, Path, description = "Device id or MAC")),
    responses((status = 200, body = TokenIssued), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []), ("admin_key" = []))
)]
async fn issue_token(State(state): State<AppState>, _admin: Admin, Path(id): Path<String>) -> ApiResult<Json<TokenIssued>> {
    let device = service::find(&state.core, &id).await?;
    let (device, token) = service::issue_token(&state.core, &device.id).await?;
    Ok(Json(TokenIssued { device_id: device.id, token }))
}

/// Revoke a device's token. It stops working at once: HTTP requests with it get 401 and the
/// device's MQTT sessions on the embedded broker are closed. The device stays registered; an
/// operator can issue a new token or open a re-provisioning window.
#[utoipa::path(
    delete, path = "/api/v1/devices/{id}/token", tag = "devices",
    params(("id" = String, Path, description = "Device id or MAC")),
    responses((status = 204, description = "Revoked"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []), ("admin_key" = []))
)]
async fn revoke_token(State(state): State<AppState>, _admin: Admin, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let device = service::find(&state.core, &id).await?;
    service::revoke_token(&state.core, &device.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Register many devices from CSV (`text/csv`, header row `mac,name,product,hardware,channel,version,target_version,tags,owner`; tags separated by `;`) or JSON (an array of device objects). Each row succeeds or fails on its own.
#[utoipa::path(
    post, path = "/api/v1/devices/import", tag = "devices",
    request_body(content((String = "text/csv"), (Vec<CreateDeviceBody> = "application/json"))),
    responses((status = 200, body = ImportResult), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 415, body = ErrorBody)),
    security(("bearer" = []), ("admin_key" = []))
)]
async fn import_devices(State(state): State<AppState>, _admin: Admin, headers: HeaderMap, body: Bytes) -> ApiResult<Json<ImportResult>> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let rows: Vec<NewDeviceRequest> = if content_type.starts_with("application/json") {
        let bodies: Vec<CreateDeviceBody> =
            serde_json::from_slice(&body).map_err(|e| Error::invalid("invalid_json", format!("expected a JSON array of devices: {e}")))?;
        bodies.into_iter().map(CreateDeviceBody::into_request).collect()
    } else if content_type.starts_with("text/csv") {
        parse_csv(&body)?
    } else {
        return Err(Error::UnsupportedMediaType("send text/csv or application/json".into()).into());
    };
    let outcome = service::import(&state.core, rows).await?;
    Ok(Json(ImportResult {
        created: outcome.created.len(),
        device_ids: outcome.created.iter().map(|d| d.id.clone()).collect(),
        errors: outcome.errors.into_iter().map(|(row, code, message)| ImportError { row, code, message }).collect(),
    }))
}

fn parse_csv(body: &[u8]) -> Result<Vec<NewDeviceRequest>, Error> {
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).flexible(false).from_reader(body);
    let headers = reader.headers().map_err(|e| Error::invalid("invalid_csv", format!("cannot read the CSV header: {e}")))?.clone();
    const KNOWN: &[&str] = &["mac", "name", "product", "hardware", "channel", "version", "target_version", "tags", "owner"];
    for h in headers.iter() {
        if !KNOWN.contains(&h) {
            return Err(Error::invalid("invalid_csv", format!("unknown CSV column `{h}`; known: {}", KNOWN.join(","))));
        }
    }
    if !headers.iter().any(|h| h == "mac") {
        return Err(Error::invalid("invalid_csv", "the CSV header must have a `mac` column"));
    }
    let mut rows = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let record = record.map_err(|e| Error::invalid("invalid_csv", format!("row {index}: {e}")))?;
        let field =
            |name: &str| headers.iter().position(|h| h == name).and_then(|i| record.get(i)).filter(|v| !v.is_empty()).map(str::to_string);
        rows.push(NewDeviceRequest {
            mac: field("mac").unwrap_or_default(),
            name: field("name"),
            product: field("product"),
            hardware: field("hardware"),
            channel: field("channel"),
            version: field("version"),
            target_version: field("target_version"),
            tags: field("tags")
                .map(|t| t.split(';').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect())
                .unwrap_or_default(),
            metadata: None,
            owner: field("owner"),
        });
    }
    Ok(rows)
}

/// A device's update history: attempts, newest first, with their states and times.
#[utoipa::path(
    get, path = "/api/v1/devices/{id}/updates", tag = "devices",
    params(("id" = String, Path, description = "Device id or MAC")),
    responses((status = 200, body = AttemptList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []), ("admin_key" = []))
)]
async fn device_updates(State(state): State<AppState>, _admin: Admin, Path(id): Path<String>) -> ApiResult<Json<AttemptList>> {
    let device = service::find(&state.core, &id).await?;
    let attempts = state.core.store.list_attempts(&device.id, 100).await?;
    Ok(Json(AttemptList { items: attempts.iter().map(attempt_view).collect() }))
}

/// A device's setup reports (seed-004 status codes), oldest first.
#[utoipa::path(
    get, path = "/api/v1/devices/{id}/setup-history", tag = "devices",
    params(("id" = String, Path, description = "Device id or MAC")),
    responses((status = 200, body = SetupHistory), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []), ("admin_key" = []))
)]
async fn device_setup_history(State(state): State<AppState>, _admin: Admin, Path(id): Path<String>) -> ApiResult<Json<SetupHistory>> {
    let device = service::find(&state.core, &id).await?;
    let events = state.core.store.list_setup_events(&device.id).await?;
    Ok(Json(SetupHistory { items: events.iter().map(setup_view).collect() }))
}

// ---- products ----

/// List configured products and their provisioning policy.
#[utoipa::path(
    get, path = "/api/v1/products", tag = "devices",
    responses((status = 200, body = ProductList), (status = 401, body = ErrorBody)),
    security(("bearer" = []), ("admin_key" = []))
)]
async fn list_products(State(state): State<AppState>, _admin: Admin) -> ApiResult<Json<ProductList>> {
    let products = state.core.store.list_products().await?;
    let mut items = Vec::with_capacity(products.len());
    for product in &products {
        items.push(product_view(product, true, state.core.store.product_min_version(&product.name).await?));
    }
    Ok(Json(ProductList { items }))
}

/// A product's policy (the defaults when it was never configured).
#[utoipa::path(
    get, path = "/api/v1/products/{name}", tag = "devices",
    params(("name" = String, Path, description = "Product name")),
    responses((status = 200, body = ProductView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = []), ("admin_key" = []))
)]
async fn get_product(State(state): State<AppState>, _admin: Admin, Path(name): Path<String>) -> ApiResult<Json<ProductView>> {
    let name = crate::domain::firmware::Product::parse(&name)?;
    let configured = state.core.store.find_product(name.as_str()).await?.is_some();
    let product = service::product_policy(&state.core, name.as_str()).await?;
    let min_version = state.core.store.product_min_version(&product.name).await?;
    Ok(Json(product_view(&product, configured, min_version)))
}

/// Create or change a product's provisioning policy and poll interval.
#[utoipa::path(
    put, path = "/api/v1/products/{name}", tag = "devices",
    params(("name" = String, Path, description = "Product name")),
    request_body = PutProductBody,
    responses((status = 200, body = ProductView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = []), ("admin_key" = []))
)]
async fn put_product(
    State(state): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<PutProductBody>,
) -> ApiResult<Json<ProductView>> {
    let provisioning = Provisioning::parse(&body.provisioning)?;
    let min_version = body
        .min_version
        .map(|v| {
            v.as_deref()
                .map(|v| {
                    Version::parse(v).map(|v| v.canonical()).map_err(|e| Error::invalid("invalid_version", format!("min_version: {e}")))
                })
                .transpose()
        })
        .transpose()?;
    let change = service::ProductChange {
        provisioning,
        provision_key: body.provision_key,
        provision_secret: body.provision_secret,
        poll_interval_s: body.poll_interval_s,
        hardware: body.hardware,
        public_secrets: body.public_secrets,
    };
    let product = service::put_product(&state.core, &name, change).await?;
    if let Some(min_version) = min_version {
        state.core.store.set_product_min_version(&product.name, min_version.as_deref()).await?;
    }
    let min_version = state.core.store.product_min_version(&product.name).await?;
    Ok(Json(product_view(&product, true, min_version)))
}

// ---- pairing ----

/// Create a short-lived, single-use pair key for an owner. The owner's phone app hands it
/// to the device with the Wi-Fi credentials; the device presents it at `POST /api/v1/device/pair`.
#[utoipa::path(
    post, path = "/api/v1/pairing", tag = "devices",
    request_body = CreatePairingBody,
    responses((status = 201, body = PairKey), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = []), ("admin_key" = []))
)]
async fn create_pairing(
    State(state): State<AppState>,
    _admin: Admin,
    ApiJson(body): ApiJson<CreatePairingBody>,
) -> ApiResult<(StatusCode, Json<PairKey>)> {
    let (pair_key, expires_at) = service::create_pair_key(&state.core, &body.owner, body.ttl_s.map(Duration::from_secs)).await?;
    Ok((StatusCode::CREATED, Json(PairKey { pair_key, expires_at: timestamp(expires_at) })))
}

// ---- live events ----

/// Server-Sent Events for operators: `device.created`, `device.updated`, `device.deleted`,
/// `device.online`, `device.offline`, `device.checkin`, `device.update_status`,
/// `device.setup_status`, `device.paired`, `device.token_issued`. Each event's data is
/// `{"type","device_id","at","data"}`. A consumer more than 1024 events behind is
/// disconnected (after a final `dropped` event) and should reconnect.
#[utoipa::path(
    get, path = "/api/v1/events", tag = "devices",
    responses((status = 200, description = "An event stream", content_type = "text/event-stream", body = String), (status = 401, body = ErrorBody)),
    security(("bearer" = []), ("admin_key" = []))
)]
async fn events(State(state): State<AppState>, _admin: Admin) -> Response {
    let receiver = state.core.events.subscribe();
    let bus = state.core.events.clone();
    let stream = futures::StreamExt::take_until(event_stream(receiver), Box::pin(async move { bus.closed().await }));
    let mut response = Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response();
    // Proxies must pass events through at once.
    response.headers_mut().insert(header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-cache"));
    response.headers_mut().insert("x-accel-buffering", axum::http::HeaderValue::from_static("no"));
    response
}

fn event_stream(
    receiver: tokio::sync::broadcast::Receiver<std::sync::Arc<crate::services::events::Event>>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    use tokio::sync::broadcast::error::RecvError;
    futures::stream::unfold(Some(receiver), |receiver| async move {
        let mut receiver = receiver?;
        match receiver.recv().await {
            Ok(event) => {
                let data =
                    serde_json::json!({"type": event.kind, "device_id": event.device_id, "at": timestamp(event.at), "data": event.data});
                Some((Ok(SseEvent::default().event(event.kind).data(data.to_string())), Some(receiver)))
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::info!(missed, "dropping a slow event-stream consumer");
                let data = serde_json::json!({"reason": "too slow", "missed": missed});
                Some((Ok(SseEvent::default().event("dropped").data(data.to_string())), None))
            }
            Err(RecvError::Closed) => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::services::events::EventBus;

    #[tokio::test]
    async fn a_consumer_that_falls_behind_is_dropped_not_buffered() {
        let bus = EventBus::default();
        let stream = event_stream(bus.subscribe());
        for i in 0..2000 {
            bus.publish("device.checkin", Some("d"), serde_json::json!({"i": i}));
        }
        let items: Vec<_> = stream.collect().await;
        // Only the final `dropped` notice: the backlog was discarded and the stream ended.
        assert_eq!(items.len(), 1);
    }

    #[tokio::test]
    async fn a_consumer_that_keeps_up_gets_every_event_in_order() {
        let bus = EventBus::default();
        let mut stream = Box::pin(event_stream(bus.subscribe()));
        for i in 0..3 {
            bus.publish("device.online", Some("d"), serde_json::json!({"i": i}));
        }
        for _ in 0..3 {
            assert!(stream.next().await.is_some());
        }
    }
}

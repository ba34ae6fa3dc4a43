//! Devices: register, list, show, change, delete, tokens, import, histories.

use super::*;

/// Register a device.
#[utoipa::path(
    post, path = "/api/v1/devices", tag = "devices",
    request_body = CreateDeviceBody,
    responses((status = 201, body = DeviceCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, description = "MAC already registered", body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "provisioner"]), ("admin_key" = ["admin", "operator", "provisioner"]))
)]
pub(super) async fn create_device(
    State(state): State<AppState>,
    who: Registrar,
    ApiJson(body): ApiJson<CreateDeviceBody>,
) -> ApiResult<(StatusCode, Json<DeviceCreated>)> {
    let issue_token = body.issue_token;
    let actor = who.principal().actor();
    let mut device = service::register(&state.core, body.into_request(), &actor).await?;
    let mut token = None;
    if issue_token {
        let (with_token, issued) = service::issue_token(&state.core, &device.id, &actor).await?;
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
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
pub(super) async fn list_devices(
    State(state): State<AppState>,
    _viewer: Viewer,
    ApiQuery(query): ApiQuery<DeviceListQuery>,
) -> ApiResult<Json<DevicePage>> {
    let crate::http::page::Page { limit, offset } = crate::http::page::page(query.limit, query.offset)?;
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
    let presence = match query.status.as_deref() {
        None => None,
        Some("online") => Some(service::PresenceFilter::Online),
        Some("offline") => Some(service::PresenceFilter::Offline),
        Some(other) => return Err(Error::invalid("invalid_query", format!("status `{other}` is not one of online, offline")).into()),
    };
    let hardware = query.hardware.as_deref().map(HardwareId::parse).transpose()?;
    let filter = DeviceFilter {
        product: query.product.clone(),
        hardware,
        version: query.version.clone(),
        tag: query.tag.clone(),
        online_since: None,
        last_seen_before: time("last_seen_before", &query.last_seen_before)?,
        last_seen_after: time("last_seen_after", &query.last_seen_after)?,
        owner: query.owner.clone(),
        search: query.q.clone().filter(|q| !q.trim().is_empty()),
        sort,
        limit,
        offset,
    };
    let (devices, total) = service::list_devices(&state.core, filter, presence).await?;
    Ok(Json(DevicePage { items: devices.iter().map(|d| device_view(&state, d)).collect(), total, limit, offset }))
}

/// Show a device (by id or MAC).
#[utoipa::path(
    get, path = "/api/v1/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "Device id or MAC")),
    responses((status = 200, body = DeviceView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
pub(super) async fn get_device(State(state): State<AppState>, _viewer: Viewer, Path(id): Path<String>) -> ApiResult<Json<DeviceView>> {
    let device = service::find(&state.core, &id).await?;
    Ok(Json(device_view(&state, &device)))
}

/// Change a device: name, product, hardware, channel, pin (`target_version`), tags, metadata, owner.
#[utoipa::path(
    patch, path = "/api/v1/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "Device id or MAC")),
    request_body = PatchDeviceBody,
    responses((status = 200, body = DeviceView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin", "operator"]), ("admin_key" = ["admin", "operator"]))
)]
pub(super) async fn patch_device(
    State(state): State<AppState>,
    who: Operator,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PatchDeviceBody>,
) -> ApiResult<Json<DeviceView>> {
    use crate::domain::device::{check_json_object, check_tags, check_text};
    use crate::domain::firmware::ProductName;
    let device = service::find(&state.core, &id).await?;
    let patch = DevicePatch {
        name: body.name.as_deref().map(|n| check_text("name", "invalid_name", n, 128)).transpose()?,
        product: body.product.map(|p| p.as_deref().map(ProductName::parse).transpose()).transpose()?,
        hardware: body.hardware.map(|h| h.as_deref().map(HardwareId::parse).transpose()).transpose()?,
        channel: body.channel.as_deref().map(Channel::parse).transpose()?,
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
    let device = service::update(&state.core, &device.id, patch, &who.principal().actor()).await?;
    Ok(Json(device_view(&state, &device)))
}

/// Delete a device, its token and its history.
#[utoipa::path(
    delete, path = "/api/v1/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "Device id or MAC")),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin", "operator"]), ("admin_key" = ["admin", "operator"]))
)]
pub(super) async fn delete_device(State(state): State<AppState>, _who: Operator, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let device = service::find(&state.core, &id).await?;
    service::delete(&state.core, &device.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Issue or rotate a device token. The old token stops working at once.
#[utoipa::path(
    post, path = "/api/v1/devices/{id}/token", tag = "devices",
    params(("id" = String, Path, description = "Device id or MAC")),
    responses((status = 200, body = TokenIssued), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin", "operator"]), ("admin_key" = ["admin", "operator"]))
)]
pub(super) async fn issue_token(State(state): State<AppState>, who: Operator, Path(id): Path<String>) -> ApiResult<Json<TokenIssued>> {
    let device = service::find(&state.core, &id).await?;
    let (device, token) = service::issue_token(&state.core, &device.id, &who.principal().actor()).await?;
    Ok(Json(TokenIssued { device_id: device.id.into(), token }))
}

/// Revoke a device's token. It stops working at once: HTTP requests with it get 401 and the
/// device's MQTT sessions on the embedded broker are closed. The device stays registered; an
/// operator can issue a new token or open a re-provisioning window.
#[utoipa::path(
    delete, path = "/api/v1/devices/{id}/token", tag = "devices",
    params(("id" = String, Path, description = "Device id or MAC")),
    responses((status = 204, description = "Revoked"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin", "operator"]), ("admin_key" = ["admin", "operator"]))
)]
pub(super) async fn revoke_token(State(state): State<AppState>, who: Operator, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let device = service::find(&state.core, &id).await?;
    service::revoke_token(&state.core, &device.id, &who.principal().actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Register many devices from CSV (`text/csv`, header row `mac,name,product,hardware,channel,version,target_version,tags,owner`; tags separated by `;`) or JSON (an array of device objects). Each row succeeds or fails on its own.
#[utoipa::path(
    post, path = "/api/v1/devices/import", tag = "devices",
    request_body(content((String = "text/csv"), (Vec<CreateDeviceBody> = "application/json"))),
    responses((status = 200, body = ImportResult), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 415, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "provisioner"]), ("admin_key" = ["admin", "operator", "provisioner"]))
)]
pub(super) async fn import_devices(
    State(state): State<AppState>,
    who: Registrar,
    headers: HeaderMap,
    ApiBytes(body): ApiBytes,
) -> ApiResult<Json<ImportResult>> {
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
    let outcome = service::import(&state.core, rows, &who.principal().actor()).await?;
    Ok(Json(ImportResult {
        created: outcome.created.len(),
        device_ids: outcome.created.iter().map(|d| d.id.to_string()).collect(),
        errors: outcome.errors.into_iter().map(|(row, code, message)| ImportError { row, code, message }).collect(),
    }))
}

pub(super) fn parse_csv(body: &[u8]) -> Result<Vec<NewDeviceRequest>, Error> {
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).flexible(false).from_reader(body);
    let headers = reader.headers().map_err(|e| Error::invalid("invalid_csv", format!("cannot read the CSV header: {e}")))?.clone();
    const KNOWN: &[&str] = &["mac", "uid", "name", "product", "hardware", "channel", "version", "target_version", "tags", "owner"];
    for h in headers.iter() {
        if !KNOWN.contains(&h) {
            return Err(Error::invalid("invalid_csv", format!("unknown CSV column `{h}`; known: {}", KNOWN.join(","))));
        }
    }
    if !headers.iter().any(|h| h == "mac" || h == "uid") {
        return Err(Error::invalid("invalid_csv", "the CSV header must have a `mac` or a `uid` column"));
    }
    let mut rows = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let record = record.map_err(|e| Error::invalid("invalid_csv", format!("row {index}: {e}")))?;
        let field =
            |name: &str| headers.iter().position(|h| h == name).and_then(|i| record.get(i)).filter(|v| !v.is_empty()).map(str::to_string);
        rows.push(NewDeviceRequest {
            mac: field("mac"),
            uid: field("uid"),
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
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
pub(super) async fn device_updates(State(state): State<AppState>, _viewer: Viewer, Path(id): Path<String>) -> ApiResult<Json<AttemptList>> {
    let device = service::find(&state.core, &id).await?;
    let attempts = service::update_history(&state.core, &device.id).await?;
    Ok(Json(AttemptList { items: attempts.iter().map(attempt_view).collect() }))
}

/// A device's setup reports (seed-004 status codes), oldest first.
#[utoipa::path(
    get, path = "/api/v1/devices/{id}/setup-history", tag = "devices",
    params(("id" = String, Path, description = "Device id or MAC")),
    responses((status = 200, body = SetupHistory), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
pub(super) async fn device_setup_history(
    State(state): State<AppState>,
    _viewer: Viewer,
    Path(id): Path<String>,
) -> ApiResult<Json<SetupHistory>> {
    let device = service::find(&state.core, &id).await?;
    let events = service::setup_history(&state.core, &device.id).await?;
    Ok(Json(SetupHistory { items: events.iter().map(setup_view).collect() }))
}

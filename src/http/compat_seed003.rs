//! The seed-003 adapter (pvginkel/IoTSupport): its real routes and wire formats.
//!
//! - `GET /api/configs`, `GET|PUT|DELETE /api/configs/{mac}` (admin key);
//!   `GET /api/configs/{mac}.json`, the raw document devices read (public while
//!   `UPDRAFT_PUBLIC_CONFIG_FILES` is on, as in seed 003; else the device's token or the
//!   admin key). The MAC is lower-cased, then must be `xx-xx-xx-xx-xx-xx`.
//! - `POST /api/assets` (multipart `file`, `timestamp`, `signature`: an RSA-signed
//!   timestamp is the authorisation), `GET /api/assets/{filename}` (public).
//! - `GET /api/images/lvgl?url=&width=&height=&headers=` (public), plus Updraft's `cf`,
//!   `lvgl`, `output` and `name`.
//!
//! Errors on these routes use seed 003's bodies, built here and only here:
//! `{"error": <message>, "code": <CODE>, "details": {"message": <text>}, "correlationId": <request id>}`,
//! and, for a request its schema refuses (spectree's validation of query and JSON body), 400
//! with pydantic's list of errors, `[{"loc": ["url"], "msg": "Field required", "type": "missing", "input": …}]`.

use std::marker::PhantomData;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Multipart, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::assets::{content_disposition, serve_blob};
use super::auth::{NeedOperate, NeedRead, RouteNeed};
use super::error::status_of;
use super::roles::{Reader, authorize, operator_or_device};
use crate::domain::Error;
use crate::domain::auth::{Need, Principal};
use crate::domain::config::{self, Scope};
use crate::domain::lvgl::{ColorFormat, LvglVersion, SizeRule};
use crate::domain::mac::Mac;
use crate::services::assets::{self as assets_service, StagedUpload};
use crate::services::config::{self as config_service, ChangeRequest};
use crate::services::images::{self, ConvertOptions};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_configs))
        .routes(routes!(get_config, put_config, delete_config))
        // The upload streams its file; its size is limited by UPDRAFT_MAX_UPLOAD_BYTES instead.
        .merge(OpenApiRouter::new().routes(routes!(upload_asset)).layer(DefaultBodyLimit::disable()))
        .routes(routes!(get_asset))
        .routes(routes!(lvgl_image))
        .layer(middleware::from_fn(correlate))
}

// ---- the seed-003 error body ----

/// Seed 003's error body.
#[derive(Clone, Serialize, ToSchema)]
pub struct Seed003ErrorBody {
    pub error: String,
    /// RECORD_NOT_FOUND, INVALID_OPERATION, VALIDATION_FAILED, RECORD_EXISTS, ...
    pub code: String,
    pub details: Seed003ErrorDetails,
    /// The request id (`X-Request-Id`).
    #[serde(rename = "correlationId")]
    pub correlation_id: String,
}

#[derive(Clone, Serialize, ToSchema)]
pub struct Seed003ErrorDetails {
    pub message: String,
}

/// Seed 003's `400`: the list of refused fields (pydantic's), or one error (a malformed MAC, a
/// refused address, a path that is not text: `Seed003ErrorBody`).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code, reason = "describes the two forms of the answer in the OpenAPI document")]
pub enum Seed003BadRequest {
    Fields(Vec<Seed003FieldError>),
    Error(Seed003ErrorBody),
}

/// One entry of seed 003's validation answer: what pydantic reports for a field.
#[derive(Serialize, ToSchema)]
pub struct Seed003FieldError {
    /// Where: `["url"]`, `["content"]`, `["body"]`; `[]` for the body as a whole.
    pub loc: Vec<String>,
    pub msg: String,
    /// pydantic's error type: `missing`, `url_parsing`, `greater_than`, `int_parsing`,
    /// `extra_forbidden`, `dict_type`, `bool_parsing`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The value refused: the text of a parameter, a JSON value of the body, or (for
    /// `missing`) the whole input.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Value)]
    pub input: Option<Value>,
}

fn field_error(loc: &str, kind: &str, msg: impl Into<String>, input: Option<Value>) -> Seed003FieldError {
    Seed003FieldError {
        loc: if loc.is_empty() { Vec::new() } else { vec![loc.to_string()] },
        msg: msg.into(),
        kind: kind.to_string(),
        input,
    }
}

/// A seed-003 answer that is not a success, in seed 003's forms. Every variant but
/// `Refused` is seed 003's error body, whose `correlationId` (the request id) `correlate`
/// fills in: the routes of `router` carry that middleware.
pub enum Seed003Error {
    /// Any error: its status (400 for every validation failure, as seed 003 answered) and
    /// seed 003's code for it.
    Failed(Error),
    /// A request its schema refuses (spectree's validation of query and JSON body): 400 and
    /// pydantic's list of errors.
    Refused(Vec<Seed003FieldError>),
    /// 503 with `Retry-After`: every image conversion slot is in use.
    Busy,
    /// 500 `PROCESSING_ERROR`: the image proxy's URL did not return an image (seed 003's
    /// ProcessingException).
    NotAnImage(String),
}

impl From<Error> for Seed003Error {
    fn from(error: Error) -> Self {
        Seed003Error::Failed(error)
    }
}

pub type Seed003Result<T> = Result<T, Seed003Error>;

impl IntoResponse for Seed003Error {
    fn into_response(self) -> Response {
        let error = match self {
            Seed003Error::Refused(errors) => {
                tracing::info!(status = 400, errors = errors.len(), first = %errors.first().map(|e| e.msg.as_str()).unwrap_or(""), "seed-003 request refused by its schema");
                return (StatusCode::BAD_REQUEST, Json(errors)).into_response();
            }
            Seed003Error::Busy => {
                tracing::info!(status = 503, "seed-003 image conversion refused: every slot is in use");
                let mut response = error_body(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "SERVICE_UNAVAILABLE",
                    format!(
                        "Every image conversion slot is in use (UPDRAFT_IMAGE_MAX_CONCURRENT); retry in {} s",
                        images::BUSY_RETRY_AFTER_SECS
                    ),
                    "The service is busy",
                );
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(images::BUSY_RETRY_AFTER_SECS));
                return response;
            }
            Seed003Error::NotAnImage(message) => {
                tracing::info!(status = 500, code = "PROCESSING_ERROR", %message, "seed-003 image proxy: the URL did not return an image");
                return error_body(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "PROCESSING_ERROR",
                    format!("Cannot decode image because {message}"),
                    "Processing operation failed",
                );
            }
            Seed003Error::Failed(error) => error,
        };
        let status = match &error {
            // Seed 003 answers every validation failure with 400.
            Error::Unprocessable { .. } => StatusCode::BAD_REQUEST,
            other => status_of(other),
        };
        let (code, details) = match &error {
            Error::NotFound { .. } => ("RECORD_NOT_FOUND", "The requested resource could not be found"),
            Error::Invalid { code: "invalid_mac" | "missing_header" | "invalid_header", .. } => {
                ("INVALID_OPERATION", "The requested operation cannot be performed")
            }
            Error::Invalid { .. } | Error::Unprocessable { .. } => ("VALIDATION_FAILED", "Validation failed"),
            Error::Conflict { .. } => ("RECORD_EXISTS", "The resource already exists"),
            Error::Unauthenticated(_) => ("AUTHENTICATION_REQUIRED", "Authentication is required"),
            Error::Forbidden(_) => ("FORBIDDEN", "The operation is not allowed"),
            Error::PayloadTooLarge { .. } => ("PAYLOAD_TOO_LARGE", "The request body is too large"),
            Error::UnsupportedMediaType(_) => ("UNSUPPORTED_MEDIA_TYPE", "The content type is not accepted"),
            Error::Upstream(_) => ("EXTERNAL_SERVICE_ERROR", "External service request failed"),
            Error::TooManyRequests { .. } => ("TOO_MANY_REQUESTS", "Too many requests"),
            Error::InsufficientStorage => ("INSUFFICIENT_STORAGE", "The server has no space left"),
            Error::Unavailable(_) => ("SERVICE_UNAVAILABLE", "A dependency is unavailable"),
            _ => ("INTERNAL_ERROR", "An internal error occurred; it has been logged"),
        };
        let message = if status.is_server_error() && !matches!(error, Error::Upstream(_) | Error::Unavailable(_)) {
            tracing::error!(status = status.as_u16(), error = format!("{error:#}"), "seed-003 request failed");
            "Internal server error".to_string()
        } else {
            tracing::info!(status = status.as_u16(), code, message = %error, "seed-003 request refused");
            error.to_string()
        };
        let mut response = error_body(status, code, message, details);
        if let Error::Unauthenticated(_) = error {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Seed 003's error body with `status`. Its `correlationId` is filled in by `correlate`; the
/// body waits for it in the response's extensions.
fn error_body(status: StatusCode, code: &str, message: String, details: &str) -> Response {
    let body = Seed003ErrorBody {
        error: message,
        code: code.to_string(),
        details: Seed003ErrorDetails { message: details.to_string() },
        correlation_id: String::new(),
    };
    let mut response = (status, Json(&body)).into_response();
    response.extensions_mut().insert(Uncorrelated(Arc::new(body)));
    response
}

/// `error` in seed 003's error body, its `correlationId` already `request_id`: for layers
/// outside the seed-003 routes' own (the per-credential limits).
pub fn error_response(error: Error, request_id: &str) -> Response {
    let mut response = Seed003Error::Failed(error).into_response();
    let Some(Uncorrelated(body)) = response.extensions_mut().remove::<Uncorrelated>() else {
        return response;
    };
    let body = Seed003ErrorBody { correlation_id: request_id.to_string(), ..Arc::unwrap_or_clone(body) };
    let (parts, _) = response.into_parts();
    match serde_json::to_vec(&body) {
        Ok(bytes) => Response::from_parts(parts, axum::body::Body::from(bytes)),
        Err(_) => Response::from_parts(parts, axum::body::Body::empty()),
    }
}

/// A seed-003 error body without its `correlationId` yet.
#[derive(Clone)]
struct Uncorrelated(Arc<Seed003ErrorBody>);

/// Middleware of the seed-003 routes: writes the request id (`X-Request-Id`) into the
/// `correlationId` of a seed-003 error body.
async fn correlate(request: Request, next: Next) -> Response {
    let correlation_id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let mut response = next.run(request).await;
    let Some(Uncorrelated(body)) = response.extensions_mut().remove::<Uncorrelated>() else {
        return response;
    };
    let body = Seed003ErrorBody { correlation_id, ..Arc::unwrap_or_clone(body) };
    let (parts, _) = response.into_parts();
    match serde_json::to_vec(&body) {
        Ok(bytes) => Response::from_parts(parts, axum::body::Body::from(bytes)),
        Err(e) => {
            Seed003Error::Failed(Error::Internal(anyhow::Error::new(e).context("cannot encode a seed-003 error body"))).into_response()
        }
    }
}

/// Proof that a seed-003 admin request carries an operator credential whose role allows `N`
/// (`X-Admin-API-Key` or `Authorization: Bearer` with an API key or the admin key, a session
/// cookie); refusals come in seed 003's error body (401, 403, 429).
pub struct Seed003Admin<N: RouteNeed>(Principal, PhantomData<N>);

/// Reading seed 003's configurations (secrets masked): any role.
pub type Seed003Viewer = Seed003Admin<NeedRead>;
/// Writing them: operator or admin.
pub type Seed003Operator = Seed003Admin<NeedOperate>;

impl<N: RouteNeed> FromRequestParts<AppState> for Seed003Admin<N> {
    type Rejection = Seed003Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Seed003Error> {
        Ok(Seed003Admin(authorize(parts, state, N::NEED).await?, PhantomData))
    }
}

/// Seed 003's MAC rule: lower-cased, then `xx-xx-xx-xx-xx-xx`.
pub fn parse_mac(text: &str, operation: &str) -> Result<Mac, Error> {
    let lower = text.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let well_formed =
        bytes.len() == 17 && bytes.iter().enumerate().all(|(i, b)| if i % 3 == 2 { *b == b'-' } else { b.is_ascii_hexdigit() });
    if !well_formed {
        return Err(Error::invalid(
            "invalid_mac",
            format!(
                "Cannot {operation} because MAC address '{}' is not in the format xx-xx-xx-xx-xx-xx",
                text.chars().take(40).collect::<String>()
            ),
        ));
    }
    Mac::parse(&lower)
}

// ---- configurations ----

/// A configuration in seed 003's listing.
#[derive(Serialize, ToSchema)]
pub struct Seed003Summary {
    /// `aa-bb-cc-dd-ee-ff`.
    pub mac_address: String,
    /// `deviceName` of the document.
    pub device_name: Option<String>,
    /// `deviceEntityId` of the document.
    pub device_entity_id: Option<String>,
    /// `enableOTA` of the document.
    pub enable_ota: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct Seed003List {
    pub configs: Vec<Seed003Summary>,
    pub count: usize,
}

#[derive(Serialize, ToSchema)]
pub struct Seed003Config {
    pub mac_address: String,
    pub device_name: Option<String>,
    pub device_entity_id: Option<String>,
    pub enable_ota: Option<bool>,
    /// The device's own document (secrets masked).
    #[schema(value_type = Object)]
    pub content: Value,
}

/// The body of `PUT /api/configs/{mac}` (`Content-Type: application/json`).
#[derive(ToSchema)]
#[allow(dead_code, reason = "describes the body in the OpenAPI document; the handler parses it itself")]
pub struct Seed003SaveBody {
    /// The document: a JSON object.
    #[schema(value_type = Object)]
    content: Value,
    /// False: refuse (409) when a configuration exists [default: true]. As pydantic's `bool`:
    /// also `0`/`1` and the strings `true`, `false`, `yes`, `no`, `on`, `off`, `t`, `f`, `y`,
    /// `n`, `1`, `0`; `null` is refused.
    #[schema(schema_with = crate::http::schemas::pydantic_bool)]
    allow_overwrite: Option<bool>,
}

/// pydantic's lax `bool`: what seed 003's schema accepted for `allow_overwrite`.
fn lax_bool(value: &Value) -> Result<bool, Seed003FieldError> {
    let parsing = || {
        field_error("allow_overwrite", "bool_parsing", "Input should be a valid boolean, unable to interpret input", Some(value.clone()))
    };
    match value {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) => match n.as_f64() {
            Some(0.0) => Ok(false),
            Some(1.0) => Ok(true),
            _ => Err(parsing()),
        },
        Value::String(text) => match text.to_ascii_lowercase().as_str() {
            "0" | "off" | "f" | "false" | "n" | "no" => Ok(false),
            "1" | "on" | "t" | "true" | "y" | "yes" => Ok(true),
            _ => Err(parsing()),
        },
        _ => Err(field_error("allow_overwrite", "bool_type", "Input should be a valid boolean", Some(value.clone()))),
    }
}

/// Validates the body as seed 003's schema did (`content`: an object; `allow_overwrite`:
/// a lax bool, default true); a body that is not JSON is refused in the same list.
fn parse_save_body(headers: &HeaderMap, body: &[u8]) -> Result<(Value, bool), Vec<Seed003FieldError>> {
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let json = mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"));
    if !json {
        return Err(vec![field_error(
            "body",
            "content_type",
            "Input should be a JSON object sent with Content-Type: application/json",
            None,
        )]);
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| vec![field_error("body", "json_invalid", format!("Invalid JSON: {e}"), None)])?;
    let Value::Object(mut map) = value else {
        return Err(vec![field_error(
            "",
            "model_attributes_type",
            "Input should be a valid dictionary or object to extract fields from",
            Some(value),
        )]);
    };
    let mut errors = Vec::new();
    let content = match map.get("content") {
        None => {
            errors.push(field_error("content", "missing", "Field required", Some(Value::Object(map.clone()))));
            None
        }
        Some(Value::Object(_)) => map.remove("content"),
        Some(other) => {
            errors.push(field_error("content", "dict_type", "Input should be a valid dictionary", Some(other.clone())));
            None
        }
    };
    let allow_overwrite = match map.get("allow_overwrite").map(lax_bool) {
        None => true,
        Some(Ok(allow)) => allow,
        Some(Err(error)) => {
            errors.push(error);
            true
        }
    };
    match content {
        Some(content) if errors.is_empty() => Ok((content, allow_overwrite)),
        _ => Err(errors),
    }
}

fn summary(mac: &Mac, content: &Value) -> Seed003Summary {
    let summary = config::summary(content);
    Seed003Summary {
        mac_address: mac.hyphenated_lower(),
        device_name: summary.device_name,
        device_entity_id: summary.device_entity_id,
        enable_ota: summary.enable_ota,
    }
}

fn detail(mac: &Mac, content: &Value) -> Seed003Config {
    let s = summary(mac, content);
    Seed003Config {
        mac_address: s.mac_address,
        device_name: s.device_name,
        device_entity_id: s.device_entity_id,
        enable_ota: s.enable_ota,
        content: config::mask(content),
    }
}

/// List every device configuration (seed 003).
#[utoipa::path(
    get, path = "/api/configs", tag = "seed-003",
    responses((status = 200, body = Seed003List), (status = 401, body = Seed003ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
async fn list_configs(State(state): State<AppState>, _viewer: Seed003Viewer) -> Seed003Result<Json<Seed003List>> {
    let documents = config_service::device_documents(&state.core).await?;
    let configs: Vec<Seed003Summary> = documents.iter().map(|(mac, content)| summary(mac, content)).collect();
    Ok(Json(Seed003List { count: configs.len(), configs }))
}

/// Get a device's configuration (admin), or with a `.json` suffix
/// (`/api/configs/aa-bb-cc-dd-ee-ff.json`) the raw document a device reads: its effective
/// configuration, with `Cache-Control: no-cache`. With the device's token (or the admin key)
/// it is whole, secrets included. While UPDRAFT_PUBLIC_CONFIG_FILES is on (the default, as in
/// seed 003) it can also be read without authentication, but then values marked secret are
/// left out, unless the device's product sets `public_secrets`.
#[utoipa::path(
    get, path = "/api/configs/{mac}", tag = "seed-003",
    params(("mac" = String, Path, description = "aa-bb-cc-dd-ee-ff, or aa-bb-cc-dd-ee-ff.json for the raw document", pattern = r"^[0-9A-Fa-f]{2}(?:-[0-9A-Fa-f]{2}){5}(?:\.json)?$")),
    responses(
        (status = 200, body = Seed003Config),
        (status = 400, description = "Malformed MAC", body = Seed003ErrorBody),
        (status = 401, body = Seed003ErrorBody),
        (status = 404, body = Seed003ErrorBody),
    ),
security((), ("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
async fn get_config(State(state): State<AppState>, Path(mac): Path<String>, parts: Parts) -> Seed003Result<Response> {
    if let Some(mac) = mac.strip_suffix(".json") {
        return device_document(&state, &parts, mac).await;
    }
    // The credential is checked before the MAC, as on the other admin routes.
    authorize(&parts, &state, Need::Read).await?;
    let mac = parse_mac(&mac, "get configuration")?;
    let (_, content) = config_service::get(&state.core, &Scope::Device(mac))
        .await
        .map_err(|e| if let Error::NotFound { .. } = e { Error::not_found("Device config", mac.hyphenated_lower()) } else { e })?;
    Ok(Json(detail(&mac, &content)).into_response())
}

/// `GET /api/configs/{mac}.json`: the raw document a device reads.
async fn device_document(state: &AppState, parts: &Parts, mac: &str) -> Seed003Result<Response> {
    let headers = &parts.headers;
    let mac = parse_mac(mac, "get configuration")?;
    // A reader that sends a credential gets the whole document, once it is checked;
    // an anonymous one (allowed while UPDRAFT_PUBLIC_CONFIG_FILES is on) gets it
    // without secret values, unless the device's product opted in (`public_secrets`).
    let anonymous = state.settings.content.public_config_files
        && ["authorization", "x-admin-api-key", "x-device-token"].iter().all(|h| !headers.contains_key(*h))
        && super::accounts::session_cookie(headers).is_none();
    if !anonymous {
        authorize_device_or_admin(state, parts, &mac).await?;
    }
    let (product, file) =
        config_service::device_file(&state.core, &mac).await?.ok_or_else(|| Error::not_found("Device config", mac.hyphenated_lower()))?;
    let whole = !anonymous || config_service::secrets_public(&state.core, product.as_ref()).await?;
    let (body, etag) = if whole {
        let revealed = config_service::reveal(&state.core, &file.content)?;
        let body = serde_json::to_vec(&revealed).map_err(|e| Error::Internal(anyhow::anyhow!("cannot serialise a configuration: {e}")))?;
        (Bytes::from(body), format!("\"{}\"", file.version))
    } else {
        (file.public_body.clone(), format!("\"{}-public\"", file.version))
    };
    let mut response = ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response.headers_mut().insert(header::VARY, HeaderValue::from_static("Authorization, X-Admin-API-Key, X-Device-Token, Cookie"));
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

/// A reader that sends a credential: the token of the device with this MAC, or an operator
/// credential with the admin role (the whole document reveals secret values, which only
/// the device itself and admins may read).
async fn authorize_device_or_admin(state: &AppState, parts: &Parts, mac: &Mac) -> Result<(), Error> {
    match operator_or_device(parts, state, Need::Admin).await? {
        Reader::Operator(_) => Ok(()),
        Reader::Device(device) if device.mac == Some(*mac) => Ok(()),
        Reader::Device(_) => Err(Error::Forbidden("a device may read only its own configuration".into())),
    }
}

/// Create or replace a device's configuration (seed 003). `content` must be a JSON object;
/// with `allow_overwrite: false` an existing configuration is a 409. A body its schema
/// refuses gets 400 with seed 003's list of errors.
#[utoipa::path(
    put, path = "/api/configs/{mac}", tag = "seed-003",
    params(("mac" = String, Path, description = "aa-bb-cc-dd-ee-ff", pattern = r"^[0-9A-Fa-f]{2}(?:-[0-9A-Fa-f]{2}){5}$")),
    request_body = Seed003SaveBody,
    responses(
        (status = 200, body = Seed003Config),
        (status = 400, description = "A malformed MAC (`INVALID_OPERATION`), or a list of errors when the body is refused", body = Seed003BadRequest),
        (status = 401, body = Seed003ErrorBody),
        (status = 409, description = "Exists and allow_overwrite is false", body = Seed003ErrorBody),
    ),
    security(("bearer" = ["admin", "operator"]), ("admin_key" = ["admin", "operator"]))
)]
async fn put_config(
    State(state): State<AppState>,
    who: Seed003Operator,
    headers: HeaderMap,
    Path(mac): Path<String>,
    body: Bytes,
) -> Seed003Result<Json<Seed003Config>> {
    // Seed 003 validated the body (spectree) before it looked at the MAC.
    let (content, allow_overwrite) = parse_save_body(&headers, &body).map_err(Seed003Error::Refused)?;
    let mac = parse_mac(&mac, "save configuration")?;
    let request = ChangeRequest {
        content: Some(content),
        author: who.0.actor(),
        comment: String::new(),
        if_match: None,
        create_only: !allow_overwrite,
    };
    let document = config_service::put(&state.core, &Scope::Device(mac), request).await.map_err(|e| match e {
        Error::Conflict { code: "config_exists", .. } => {
            Error::conflict("config_exists", format!("Cannot save configuration because {} already exists", mac.hyphenated_lower()))
        }
        other => other,
    })?;
    Ok(Json(detail(&mac, document.content.as_ref().unwrap_or(&Value::Null))))
}

/// Delete a device's configuration (seed 003): 204.
#[utoipa::path(
    delete, path = "/api/configs/{mac}", tag = "seed-003",
    params(("mac" = String, Path, description = "aa-bb-cc-dd-ee-ff", pattern = r"^[0-9A-Fa-f]{2}(?:-[0-9A-Fa-f]{2}){5}$")),
    responses((status = 204, description = "Deleted"), (status = 400, body = Seed003ErrorBody), (status = 401, body = Seed003ErrorBody), (status = 404, body = Seed003ErrorBody)),
    security(("bearer" = ["admin", "operator"]), ("admin_key" = ["admin", "operator"]))
)]
async fn delete_config(State(state): State<AppState>, who: Seed003Operator, Path(mac): Path<String>) -> Seed003Result<StatusCode> {
    let mac = parse_mac(&mac, "delete configuration")?;
    let request = ChangeRequest { content: None, author: who.0.actor(), comment: String::new(), if_match: None, create_only: false };
    config_service::put(&state.core, &Scope::Device(mac), request)
        .await
        .map_err(|e| if let Error::NotFound { .. } = e { Error::not_found("Device config", mac.hyphenated_lower()) } else { e })?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- assets ----

/// The multipart form of `POST /api/assets`.
#[derive(ToSchema)]
#[allow(dead_code, reason = "describes the form in the OpenAPI document; the handler reads the multipart stream itself")]
pub struct Seed003UploadForm {
    #[schema(format = Binary, value_type = String)]
    file: Vec<u8>,
    /// ISO 8601; without a zone it is UTC; within ±300 s of the server's clock.
    timestamp: String,
    /// base64 RSA PKCS#1 v1.5 SHA-256 signature of the timestamp string.
    signature: String,
}

#[derive(Serialize, ToSchema)]
pub struct Seed003Uploaded {
    pub filename: String,
    pub size: u64,
    /// The signed `timestamp`, written as Python's `isoformat()` (offset kept; `+00:00` when
    /// it had none), as seed 003 answered.
    pub uploaded_at: String,
}

const MAX_FIELD_BYTES: usize = 4096;

/// Upload an asset (seed 003). The signed timestamp is the authorisation; the key is
/// UPDRAFT_SIGNING_KEY_PATH (or SIGNING_KEY_PATH). A file of the same name is replaced.
#[utoipa::path(
    post, path = "/api/assets", tag = "seed-003",
    request_body(content = Seed003UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, body = Seed003Uploaded),
        (status = 400, description = "Missing field, bad or blank filename, empty file, bad timestamp or signature", body = Seed003ErrorBody),
        (status = 403, description = "No signing key configured", body = Seed003ErrorBody),
        (status = 413, body = Seed003ErrorBody),
    )
)]
async fn upload_asset(State(state): State<AppState>, request: Request) -> Seed003Result<Json<Seed003Uploaded>> {
    // The audit log's actor is `anonymous`: no credential, the signature is the authority.
    super::audit::AuditNote::set(request.extensions(), "seed-003 upload authorised by a signed timestamp");
    Ok(upload(&state, request).await?)
}

async fn upload(state: &AppState, request: Request) -> Result<Json<Seed003Uploaded>, Error> {
    let limit = state.settings.max_upload_bytes;
    let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    if !content_type.starts_with("multipart/form-data") {
        return Err(Error::invalid("invalid_body", "Expected multipart/form-data with the fields file, timestamp and signature"));
    }
    let mut multipart = Multipart::from_request(request, state)
        .await
        .map_err(|e| Error::invalid("invalid_multipart", format!("malformed multipart body: {}", e.body_text())))?;
    let mut timestamp: Option<String> = None;
    let mut signature: Option<String> = None;
    let mut signed_at = None;
    let mut upload: Option<(StagedUpload, String)> = None;
    let outcome: Result<(), Error> = async {
        while let Some(mut field) = multipart.next_field().await.map_err(|e| multipart_error(e, limit))? {
            match field.name().unwrap_or("") {
                "file" => {
                    if upload.is_some() {
                        return Err(Error::invalid("invalid_multipart", "only one `file` field is allowed"));
                    }
                    let filename = field.file_name().unwrap_or("").to_string();
                    assets_service::check_filename(&filename)?;
                    if let (Some(ts), Some(sig)) = (&timestamp, &signature) {
                        // Both known before the bytes: refuse before storing anything.
                        signed_at = Some(assets_service::check_signed_timestamp(&state.core, ts, sig, Utc::now())?);
                    }
                    let mut staged = StagedUpload::begin(&state.core, limit).await?;
                    let written: Result<(), Error> = async {
                        while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, limit))? {
                            staged.write(chunk).await?;
                        }
                        Ok(())
                    }
                    .await;
                    if let Err(e) = written {
                        staged.abort().await;
                        return Err(e);
                    }
                    upload = Some((staged, filename));
                }
                name @ ("timestamp" | "signature") => {
                    let name = name.to_string();
                    let mut value = Vec::new();
                    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, MAX_FIELD_BYTES as u64))? {
                        if value.len() + chunk.len() > MAX_FIELD_BYTES {
                            return Err(Error::invalid("invalid_multipart", format!("field '{name}' is too long")));
                        }
                        value.extend_from_slice(&chunk);
                    }
                    let value = String::from_utf8(value)
                        .map_err(|_| Error::invalid("invalid_multipart", format!("field '{name}' is not UTF-8")))?;
                    if name == "timestamp" { timestamp = Some(value) } else { signature = Some(value) }
                }
                // Seed 003 ignores other fields.
                _ => while field.chunk().await.map_err(|e| multipart_error(e, limit))?.is_some() {},
            }
        }
        Ok(())
    }
    .await;
    let missing = |name: &str| Error::invalid("missing_field", format!("Missing required field '{name}'"));
    let checked_upload = outcome.and_then(|()| {
        let (ts, sig) = match (&timestamp, &signature) {
            (_, _) if upload.is_none() => return Err(missing("file")),
            (None, _) => return Err(missing("timestamp")),
            (_, None) => return Err(missing("signature")),
            (Some(ts), Some(sig)) => (ts, sig),
        };
        match signed_at {
            Some(at) => Ok(at),
            None => assets_service::check_signed_timestamp(&state.core, ts, sig, Utc::now()),
        }
    });
    let signed_at = match checked_upload {
        Ok(at) => at,
        Err(e) => {
            if let Some((staged, _)) = upload {
                staged.abort().await;
            }
            return Err(e);
        }
    };
    let (staged, filename) = upload.expect("checked above");
    let file = assets_service::commit_file(&state.core, staged, &filename).await?;
    Ok(Json(Seed003Uploaded { filename: file.filename, size: file.size, uploaded_at: assets_service::python_isoformat(&signed_at) }))
}

fn multipart_error(error: axum::extract::multipart::MultipartError, limit: u64) -> Error {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Error::PayloadTooLarge { limit }
    } else {
        Error::invalid("invalid_multipart", format!("malformed multipart body: {}", error.body_text()))
    }
}

/// The path of `GET /api/assets/{filename}`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct AssetFileName {
    /// A name `POST /api/assets` accepts.
    #[param(
        pattern = r"^(?:[^./\\\x00-\x1f\x7f-\x9f]*[^./\\\x00-\x1f\x7f-\x9f\s][^./\\\x00-\x1f\x7f-\x9f]*|\.(?:[^./\\\x00-\x1f\x7f-\x9f]+\.)*[^./\\\x00-\x1f\x7f-\x9f]*|(?:[^./\\\x00-\x1f\x7f-\x9f]+\.)+[^./\\\x00-\x1f\x7f-\x9f]*)$",
        min_length = 1,
        max_length = 255
    )]
    filename: String,
}

/// Download an asset uploaded through `POST /api/assets` (public, `Cache-Control: no-cache`,
/// `Content-Disposition: inline; filename=…`). A name with `..`, `/` or `\` is a 400.
#[utoipa::path(
    get, path = "/api/assets/{filename}", tag = "seed-003",
    params(AssetFileName),
    responses(
        (status = 200, description = "The file", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 304, description = "Unchanged (If-None-Match)"),
        (status = 400, description = "A name seed 003 refuses", body = Seed003ErrorBody),
        (status = 404, body = Seed003ErrorBody),
    )
)]
async fn get_asset(
    State(state): State<AppState>,
    method: axum::http::Method,
    headers: HeaderMap,
    Path(AssetFileName { filename }): Path<AssetFileName>,
) -> Seed003Result<Response> {
    let file = assets_service::find_file(&state.core, &filename).await?;
    let mut response =
        serve_blob(&state.core.blobs, &file.blob_key, file.size, &file.sha256, "application/octet-stream", &method, &headers).await?;
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Some(disposition) = content_disposition(&file.filename) {
        response.headers_mut().insert(header::CONTENT_DISPOSITION, disposition);
    }
    Ok(response)
}

// ---- LVGL images ----

/// Query of `GET /api/images/lvgl`; any other parameter is a 400.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code, reason = "describes the query in the OpenAPI document; the handler parses it itself")]
pub struct LvglQuery {
    /// The image to fetch (http or https; public addresses unless allow-listed).
    #[param(pattern = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#@]+(?:[/?#]\S*)?$", max_length = 2083)]
    url: String,
    /// Names of request headers to forward to `url`, comma-separated; each must be present.
    headers: Option<String>,
    /// Largest width; the image is only ever scaled down, keeping its aspect ratio.
    #[param(minimum = 1, maximum = 65535)]
    width: Option<u32>,
    /// Largest height.
    #[param(minimum = 1, maximum = 65535)]
    height: Option<u32>,
    /// Colour format: RGB565, RGB565A8, RGB888, XRGB8888, ARGB8888 (default), L8, A8.
    #[param(schema_with = super::schemas::lvgl_color_format)]
    cf: Option<String>,
    /// LVGL major version of the header: 8 or 9 (default).
    #[param(
        pattern = r"^[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[89][\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    lvgl: Option<String>,
    /// `bin` (default) or `c` (C source).
    #[param(pattern = r"^(?:[Bb][Ii][Nn]|[Cc])$")]
    output: Option<String>,
    /// C identifier of the image in C output [default: image].
    name: Option<String>,
}

/// Hop-by-hop and framing headers are never forwarded.
const UNFORWARDABLE: &[&str] = &[
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "expect",
];

/// Conversion parameters shared by the proxy and the upload route.
pub struct ImageParams {
    pub options: ConvertOptions,
    pub file_name: String,
}

/// Parses `width`, `height`, `cf`, `lvgl`, `output` and `name`; the first error.
pub fn image_params(
    width: Option<&str>,
    height: Option<&str>,
    cf: Option<&str>,
    lvgl: Option<&str>,
    output: Option<&str>,
    name: Option<&str>,
    size_rule: SizeRule,
) -> Result<ImageParams, Error> {
    image_params_by_field(width, height, cf, lvgl, output, name, size_rule).map_err(|mut errors| errors.remove(0).1)
}

/// As `image_params`, with every error and the parameter it is about.
fn image_params_by_field(
    width: Option<&str>,
    height: Option<&str>,
    cf: Option<&str>,
    lvgl: Option<&str>,
    output: Option<&str>,
    name: Option<&str>,
    size_rule: SizeRule,
) -> Result<ImageParams, Vec<(&'static str, Error)>> {
    let mut errors = Vec::new();
    let mut side = |field: &'static str, value: Option<&str>| -> Option<u32> {
        let value = value?;
        let side = value.trim().parse::<u32>().ok().filter(|n| (1..=65535).contains(n));
        if side.is_none() {
            errors.push((field, Error::invalid("invalid_query", format!("{field} must be a whole number from 1 to 65535"))));
        }
        side
    };
    let (width, height) = (side("width", width), side("height", height));
    let cf = cf.map(ColorFormat::parse).transpose().unwrap_or_else(|e| {
        errors.push(("cf", e));
        None
    });
    let version = lvgl.map(LvglVersion::parse).transpose().unwrap_or_else(|e| {
        errors.push(("lvgl", e));
        None
    });
    let name = name.map(str::to_string).unwrap_or_else(|| "image".into());
    let c_array = match output.map(str::to_ascii_lowercase).as_deref() {
        None | Some("bin") => None,
        Some("c") => crate::domain::lvgl::check_c_name(&name).map(Some).unwrap_or_else(|e| {
            errors.push(("name", e));
            None
        }),
        Some(_) => {
            errors.push(("output", Error::invalid("invalid_query", "output must be bin or c")));
            None
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let file_name = if c_array.is_some() { format!("{name}.c") } else { "image.bin".to_string() };
    Ok(ImageParams {
        options: ConvertOptions {
            width,
            height,
            size_rule,
            cf: cf.unwrap_or(ColorFormat::Argb8888),
            version: version.unwrap_or(LvglVersion::V9),
            c_array,
        },
        file_name,
    })
}

/// Encoded image response: `.bin` or C source, never cached.
pub fn image_response(bytes: Vec<u8>, params: &ImageParams) -> Response {
    let content_type = if params.options.c_array.is_some() { "text/x-csrc; charset=utf-8" } else { "application/octet-stream" };
    let mut response = Response::new(axum::body::Body::from(bytes));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(value) = HeaderValue::from_str(&format!("inline; filename=\"{}\"", params.file_name)) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

/// The parameters of `GET /api/images/lvgl`, validated as seed 003's schema did
/// (`LvglImageQuerySchema`: `url` an http(s) URL, `width` and `height` whole numbers above 0,
/// nothing else) plus Updraft's own; every error is reported, in pydantic's list.
struct LvglRequest {
    url: String,
    forward: Option<String>,
    params: ImageParams,
}

const LVGL_PARAMETERS: [&str; 8] = ["url", "headers", "width", "height", "cf", "lvgl", "output", "name"];

fn parse_lvgl_query(query: &str) -> Result<LvglRequest, Vec<Seed003FieldError>> {
    let mut fields: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    let mut extra = Vec::new();
    let mut repeated = Vec::new();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if !LVGL_PARAMETERS.contains(&key.as_ref()) {
            let key: String = key.chars().take(40).collect();
            extra.push(field_error(&key, "extra_forbidden", "Extra inputs are not permitted", Some(Value::String(value.into_owned()))));
        } else if fields.contains_key(key.as_ref()) {
            repeated.push(field_error(
                &key,
                "value_error",
                "Value error, the parameter is given more than once",
                Some(Value::String(value.into_owned())),
            ));
        } else {
            fields.insert(key.into_owned(), value.into_owned());
        }
    }
    let mut errors = Vec::new();
    match fields.get("url") {
        None => {
            let input = fields.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
            errors.push(field_error("url", "missing", "Field required", Some(Value::Object(input))));
        }
        Some(url) => errors.extend(check_http_url(url)),
    }
    for side in ["width", "height"] {
        if let Some(value) = fields.get(side) {
            let input = Some(Value::String(value.clone()));
            match value.trim().parse::<i64>() {
                Err(_) => errors.push(field_error(
                    side,
                    "int_parsing",
                    "Input should be a valid integer, unable to parse string as an integer",
                    input,
                )),
                Ok(n) if n <= 0 => errors.push(field_error(side, "greater_than", "Input should be greater than 0", input)),
                Ok(n) if n > 65535 => {
                    errors.push(field_error(side, "less_than_equal", "Input should be less than or equal to 65535", input))
                }
                Ok(_) => {}
            }
        }
    }
    let get = |k: &str| fields.get(k).map(String::as_str);
    let params = image_params_by_field(get("width"), get("height"), get("cf"), get("lvgl"), get("output"), get("name"), SizeRule::Seed003);
    if let Err(extension_errors) = &params {
        for (field, error) in extension_errors {
            if !matches!(*field, "width" | "height") {
                errors.push(field_error(
                    field,
                    "value_error",
                    format!("Value error, {error}"),
                    fields.get(*field).cloned().map(Value::String),
                ));
            }
        }
    }
    errors.extend(repeated);
    errors.extend(extra);
    match params {
        Ok(params) if errors.is_empty() => {
            Ok(LvglRequest { url: fields.remove("url").unwrap_or_default(), forward: fields.remove("headers"), params })
        }
        _ => Err(errors),
    }
}

/// pydantic's `HttpUrl`: it parses (the same `url` crate), is http or https, has a host.
fn check_http_url(text: &str) -> Option<Seed003FieldError> {
    let input = Some(Value::String(text.to_string()));
    if text.len() > 2083 {
        return Some(field_error("url", "url_too_long", "URL should have at most 2083 characters", input));
    }
    match url::Url::parse(text) {
        Err(e) => Some(field_error("url", "url_parsing", format!("Input should be a valid URL, {e}"), input)),
        Ok(url) if !matches!(url.scheme(), "http" | "https") => {
            Some(field_error("url", "url_scheme", "URL scheme should be 'http' or 'https'", input))
        }
        Ok(url) if url.host_str().is_none_or(str::is_empty) => {
            Some(field_error("url", "url_parsing", "Input should be a valid URL, empty host", input))
        }
        Ok(_) => None,
    }
}

/// Fetch an image and convert it for LVGL (seed 003): by default an LVGL 9 `.bin` in
/// ARGB8888, scaled down to fit `width`×`height` (the other side truncated, as seed 003
/// did). Parameters its schema refuses get 400 with seed 003's list of errors; a failed
/// fetch 502; a body that is no image 500 `PROCESSING_ERROR`, as in seed 003; more than
/// UPDRAFT_IMAGE_MAX_PIXELS pixels 400; every conversion slot busy 503 with Retry-After.
/// The answer carries `Cache-Control: no-store`.
#[utoipa::path(
    get, path = "/api/images/lvgl", tag = "seed-003",
    params(LvglQuery),
    responses(
        (status = 200, description = "The LVGL image", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "Parameters refused (a list of errors), a missing forwarded header (`INVALID_OPERATION`), a refused address or an image larger than UPDRAFT_IMAGE_MAX_PIXELS (`VALIDATION_FAILED`)", body = Seed003BadRequest),
        (status = 500, description = "The URL did not return an image (`PROCESSING_ERROR`)", body = Seed003ErrorBody),
        (status = 502, description = "The fetch failed", body = Seed003ErrorBody),
        (status = 503, description = "Every conversion slot is in use; see Retry-After", body = Seed003ErrorBody),
    )
)]
async fn lvgl_image(State(state): State<AppState>, uri: axum::http::Uri, headers: HeaderMap) -> Seed003Result<Response> {
    let request = parse_lvgl_query(uri.query().unwrap_or("")).map_err(Seed003Error::Refused)?;
    let mut forwarded = HeaderMap::new();
    for name in request.forward.as_deref().unwrap_or("").split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let header_name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(|_| {
            Error::invalid(
                "invalid_header",
                format!("Cannot forward headers because '{}' is not a header name", name.chars().take(40).collect::<String>()),
            )
        })?;
        if UNFORWARDABLE.contains(&header_name.as_str()) {
            return Err(
                Error::invalid("invalid_header", format!("Cannot forward headers because header '{name}' is never forwarded")).into()
            );
        }
        let value = headers.get(&header_name).ok_or_else(|| {
            Error::invalid("missing_header", format!("Cannot forward headers because header '{name}' not present in request"))
        })?;
        forwarded.insert(header_name, value.clone());
    }
    let slot = state.core.fetcher.try_slot().map_err(|_| Seed003Error::Busy)?;
    let bytes = state.core.fetcher.fetch(&request.url, forwarded).await?;
    metrics::counter!("updraft_image_fetch_bytes_total").increment(bytes.len() as u64);
    match images::convert(&state.core.fetcher, slot, bytes, request.params.options.clone()).await {
        Ok(encoded) => Ok(image_response(encoded, &request.params)),
        // Seed 003 answered an undecodable body with a 500 (its ProcessingException).
        Err(Error::Unprocessable { code: "invalid_image", message }) => Err(Seed003Error::NotAnImage(message)),
        Err(other) => Err(other.into()),
    }
}

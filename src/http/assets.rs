//! Native assets (admin upload; download by the admin or a device of the product), the
//! server's public keys, and LVGL conversion of uploaded images.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::{Operator, Viewer};
use super::compat_seed003::{image_params, image_response};
use super::error::{ApiError, ApiQuery, ApiResult, ErrorBody};
use super::firmware::timestamp;
use super::range::{self, RangeRequest};
use super::roles::{Reader, operator_or_device};
use crate::blob::BlobStore;
use crate::domain::Error;
use crate::domain::asset::Asset;
use crate::domain::auth::Need;
use crate::domain::lvgl::SizeRule;
use crate::services::assets::{self as service, StagedUpload};
use crate::services::images;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_assets))
        .routes(routes!(upload_asset, list_versions))
        .routes(routes!(download_asset))
        .routes(routes!(asset_signature))
        .routes(routes!(keys))
        .routes(routes!(convert_image))
}

// ---- wire types ----

/// One version of an asset.
#[derive(Serialize, ToSchema)]
pub struct AssetView {
    pub product: String,
    pub name: String,
    pub version: i64,
    pub size: u64,
    /// Hex SHA-256 of the bytes: the asset's identity and `ETag`.
    pub sha256: String,
    pub content_type: String,
    pub comment: String,
    pub created_at: String,
    /// base64 Ed25519 signature of `signed`, by the key of `GET /api/v1/keys`.
    pub signature: String,
    /// The signed statement: `updraft-asset-v1\n<product>\n<name>\n<version>\n<size>\n<sha256>\n`.
    pub signed: String,
    /// Path of the bytes.
    pub url: String,
}

#[derive(Serialize, ToSchema)]
pub struct AssetList {
    pub items: Vec<AssetView>,
}

/// A page of an asset's versions, newest first.
#[derive(Serialize, ToSchema)]
pub struct AssetVersionPage {
    pub items: Vec<AssetView>,
    /// How many versions the asset has.
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

/// The most versions one page holds, and the default: an asset rarely has more, and a
/// client that reads `items` alone keeps seeing them all.
const MAX_VERSIONS_PAGE: u32 = 1000;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct VersionsQuery {
    /// Page size, 1-1000 [default: 1000].
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    #[param(maximum = 1099511627776_u64)]
    pub offset: Option<u64>,
}

/// The signature served beside an asset.
#[derive(Serialize, ToSchema)]
pub struct AssetSignature {
    pub algorithm: String,
    pub key_id: String,
    /// base64 of the 64-byte Ed25519 signature.
    pub signature: String,
    pub signed: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Serialize, ToSchema)]
pub struct PublicKey {
    /// What the key signs: `asset`.
    #[serde(rename = "use")]
    pub usage: String,
    pub algorithm: String,
    pub key_id: String,
    /// base64 of the 32-byte Ed25519 public key.
    pub public_key: String,
    pub public_key_hex: String,
}

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<PublicKey>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[param(
        pattern = r"^[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub product: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    pub comment: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ConvertQuery {
    /// Largest width; only ever scaled down, keeping the aspect ratio.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 65535)]
    pub width: Option<String>,
    #[param(value_type = Option<u32>, minimum = 1, maximum = 65535)]
    pub height: Option<String>,
    /// RGB565, RGB565A8, RGB888, XRGB8888, ARGB8888 (default), L8, A8.
    #[param(schema_with = super::schemas::lvgl_color_format)]
    pub cf: Option<String>,
    /// 8 or 9 (default).
    #[param(
        pattern = r"^[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[89][\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub lvgl: Option<String>,
    /// bin (default) or c.
    #[param(pattern = r"^(?:[Bb][Ii][Nn]|[Cc])$")]
    pub output: Option<String>,
    /// C identifier for C output [default: image].
    pub name: Option<String>,
}

fn asset_view(asset: &Asset) -> AssetView {
    AssetView {
        product: asset.product.to_string(),
        name: asset.name.clone(),
        version: asset.version,
        size: asset.size,
        sha256: asset.sha256.clone(),
        content_type: asset.content_type.clone(),
        comment: asset.comment.clone(),
        created_at: timestamp(asset.created_at),
        signature: asset.signature.clone(),
        signed: service::signed_statement(&asset.product, &asset.name, asset.version, asset.size, &asset.sha256),
        url: format!("/api/v1/assets/{}/{}/{}", asset.product, asset.name, asset.version),
    }
}

fn parse_version(text: &str) -> Result<Option<i64>, Error> {
    if text == "latest" {
        return Ok(None);
    }
    text.parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .map(Some)
        .ok_or_else(|| Error::invalid("invalid_version", "version must be a number or `latest`"))
}

/// Any operator credential (reading), or the token of a device of `product`.
async fn authorize_reader(state: &AppState, parts: &Parts, product: &str) -> Result<(), Error> {
    match operator_or_device(parts, state, Need::Read).await? {
        Reader::Operator(_) => Ok(()),
        Reader::Device(device) if device.product.as_deref() == Some(product) => Ok(()),
        Reader::Device(_) => Err(Error::not_found("asset", product)),
    }
}

/// Serves a blob: `Content-Length`, a strong `ETag` (the SHA-256), `If-None-Match` → 304,
/// single ranges, `HEAD`.
pub async fn serve_blob(
    blobs: &BlobStore,
    key: &str,
    size: u64,
    sha256: &str,
    content_type: &str,
    method: &Method,
    request: &HeaderMap,
) -> Result<Response, Error> {
    let etag = format!("\"{sha256}\"");
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, HeaderValue::from_str(&etag).map_err(|e| Error::Internal(e.into()))?);
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert("x-sha256", HeaderValue::from_str(sha256).map_err(|e| Error::Internal(e.into()))?);
    if super::conditional::none_match(request, &etag) {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        response.headers_mut().extend(headers);
        return Ok(response);
    }
    let (status, range) = match range::resolve(request.get(header::RANGE).and_then(|v| v.to_str().ok()), size) {
        RangeRequest::Full => (StatusCode::OK, 0..size),
        RangeRequest::Partial(range) => {
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {}-{}/{size}", range.start, range.end - 1)).map_err(|e| Error::Internal(e.into()))?,
            );
            (StatusCode::PARTIAL_CONTENT, range)
        }
        RangeRequest::Unsatisfiable => return Err(Error::RangeNotSatisfiable { size }),
    };
    headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/octet-stream")));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(range.end - range.start));
    let body =
        if *method == Method::HEAD || range.is_empty() { Body::empty() } else { Body::from_stream(blobs.read(key, size, range).await?) };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// `Content-Disposition: inline` naming the file, as Flask's `send_file` writes it: the
/// name bare when it is a token, else quoted; a name that is not ASCII also as `filename*`.
pub fn content_disposition(filename: &str) -> Option<HeaderValue> {
    fn quoted(name: &str) -> String {
        let token = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if token { name.to_string() } else { format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\"")) }
    }
    let value = if filename.is_ascii() {
        format!("inline; filename={}", quoted(filename))
    } else {
        let simple: String = filename.chars().filter(|c| c.is_ascii() && !c.is_ascii_control()).collect();
        let encoded: String = filename
            .bytes()
            .map(
                |b| if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) { char::from(b).to_string() } else { format!("%{b:02X}") },
            )
            .collect();
        format!("inline; filename={}; filename*=UTF-8''{encoded}", quoted(&simple))
    };
    HeaderValue::from_str(&value).ok()
}

/// 503 with `Retry-After`: every image conversion slot is in use.
fn conversions_busy() -> Response {
    let mut response = ApiError(Error::Unavailable(format!(
        "every image conversion slot is in use (UPDRAFT_IMAGE_MAX_CONCURRENT); retry in {} s",
        images::BUSY_RETRY_AFTER_SECS
    )))
    .into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(images::BUSY_RETRY_AFTER_SECS));
    response
}

// ---- handlers ----

/// The newest version of every asset (of one product, if given).
#[utoipa::path(
    get, path = "/api/v1/assets", tag = "assets",
    params(ListQuery),
    responses((status = 200, body = AssetList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
async fn list_assets(State(state): State<AppState>, _viewer: Viewer, ApiQuery(query): ApiQuery<ListQuery>) -> ApiResult<Json<AssetList>> {
    let product = query.product.as_deref().map(service::check_product).transpose()?;
    let assets = service::list_latest(&state.core, product.as_deref()).await?;
    Ok(Json(AssetList { items: assets.iter().map(asset_view).collect() }))
}

/// Upload a new version of an asset: the raw body (streamed; its `Content-Type` is kept).
/// The version is signed with the server's Ed25519 key.
#[utoipa::path(
    post, path = "/api/v1/assets/{product}/{name}", tag = "assets",
    params(("product" = String, Path, pattern = r"^[ \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}[ \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"), ("name" = String, Path), UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = AssetView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 413, body = ErrorBody), (status = 507, body = ErrorBody)),
    security(("bearer" = ["admin", "operator"]), ("admin_key" = ["admin", "operator"]))
)]
async fn upload_asset(
    State(state): State<AppState>,
    _who: Operator,
    Path((product, name)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<UploadQuery>,
    request: Request,
) -> ApiResult<Response> {
    let product = service::check_product(&product)?;
    let name = service::check_name(&name)?;
    let limit = state.settings.max_upload_bytes;
    if request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit)
    {
        return Err(Error::PayloadTooLarge { limit }.into());
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128 && !v.starts_with("multipart/"))
        .unwrap_or("application/octet-stream")
        .to_string();
    let mut staged = StagedUpload::begin(&state.core, limit).await?;
    let mut body = request.into_body().into_data_stream();
    while let Some(chunk) = body.next().await {
        let written = match chunk {
            Ok(chunk) => staged.write(chunk).await,
            Err(e) => Err(super::body_guard::read_error(&e)),
        };
        if let Err(e) = written {
            staged.abort().await;
            return Err(e.into());
        }
    }
    let asset = service::create(&state.core, &product, &name, &content_type, query.comment.as_deref().unwrap_or(""), staged).await?;
    Ok((StatusCode::CREATED, Json(asset_view(&asset))).into_response())
}

/// The versions of an asset, newest first, a page at a time (`total` says how many there are).
#[utoipa::path(
    get, path = "/api/v1/assets/{product}/{name}", tag = "assets",
    params(("product" = String, Path, pattern = r"^[ \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}[ \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"), ("name" = String, Path), VersionsQuery),
    responses((status = 200, body = AssetVersionPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
async fn list_versions(
    State(state): State<AppState>,
    _viewer: Viewer,
    Path((product, name)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<VersionsQuery>,
) -> ApiResult<Json<AssetVersionPage>> {
    let limit = query.limit.unwrap_or(MAX_VERSIONS_PAGE);
    if !(1..=MAX_VERSIONS_PAGE).contains(&limit) {
        return Err(Error::invalid("invalid_query", format!("limit must be between 1 and {MAX_VERSIONS_PAGE}")).into());
    }
    let offset = super::page::page(None, query.offset)?.offset;
    let (versions, total) = service::versions(&state.core, &product, &name, limit, offset).await?;
    Ok(Json(AssetVersionPage { items: versions.iter().map(asset_view).collect(), total, limit, offset }))
}

/// Download a version (`latest` for the newest) with the admin key or the token of a
/// device of the product. `X-Updraft-Signature` carries the signature, `ETag` the SHA-256.
#[utoipa::path(
    get, path = "/api/v1/assets/{product}/{name}/{version}", tag = "assets",
    params(("product" = String, Path, pattern = r"^[ \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}[ \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"), ("name" = String, Path), ("version" = String, Path, description = "A version number or `latest`", pattern = r"^(?:latest|\+?0*[1-9][0-9]{0,17})$")),
    responses(
        (status = 200, description = "The bytes", body = Vec<u8>),
        (status = 304, description = "Unchanged (If-None-Match)"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]), ("device_token" = []))
)]
async fn download_asset(
    State(state): State<AppState>,
    Path((product, name, version)): Path<(String, String, String)>,
    parts: Parts,
) -> ApiResult<Response> {
    authorize_reader(&state, &parts, &product).await?;
    let (method, headers) = (&parts.method, &parts.headers);
    let asset = service::find(&state.core, &product, &name, parse_version(&version)?).await?;
    let mut response =
        serve_blob(&state.core.blobs, &asset.blob_key, asset.size, &asset.sha256, &asset.content_type, method, headers).await?;
    let extra = response.headers_mut();
    extra.insert("x-updraft-signature", HeaderValue::from_str(&asset.signature).map_err(|e| Error::Internal(e.into()))?);
    extra.insert("x-updraft-asset-version", HeaderValue::from(asset.version));
    extra.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
    if let Some(disposition) = content_disposition(&asset.name) {
        extra.insert(header::CONTENT_DISPOSITION, disposition);
    }
    Ok(response)
}

/// The Ed25519 signature of a version and the statement it signs.
#[utoipa::path(
    get, path = "/api/v1/assets/{product}/{name}/{version}/signature", tag = "assets",
    params(("product" = String, Path, pattern = r"^[ \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}[ \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"), ("name" = String, Path), ("version" = String, Path, description = "A version number or `latest`", pattern = r"^(?:latest|\+?0*[1-9][0-9]{0,17})$")),
    responses((status = 200, body = AssetSignature), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]), ("device_token" = []))
)]
async fn asset_signature(
    State(state): State<AppState>,
    Path((product, name, version)): Path<(String, String, String)>,
    parts: Parts,
) -> ApiResult<Json<AssetSignature>> {
    authorize_reader(&state, &parts, &product).await?;
    let asset = service::find(&state.core, &product, &name, parse_version(&version)?).await?;
    Ok(Json(AssetSignature {
        algorithm: "Ed25519".into(),
        key_id: state.core.keys.asset_key_id(),
        signature: asset.signature.clone(),
        signed: service::signed_statement(&asset.product, &asset.name, asset.version, asset.size, &asset.sha256),
        sha256: asset.sha256,
        size: asset.size,
    }))
}

/// The server's public keys (no authentication): the Ed25519 key that signs assets.
#[utoipa::path(
    get, path = "/api/v1/keys", tag = "assets",
    responses((status = 200, body = KeyList))
)]
async fn keys(State(state): State<AppState>) -> Json<KeyList> {
    let public = state.core.keys.asset_public_key();
    Json(KeyList {
        keys: vec![PublicKey {
            usage: "asset".into(),
            algorithm: "Ed25519".into(),
            key_id: state.core.keys.asset_key_id(),
            public_key: base64::engine::general_purpose::STANDARD.encode(public),
            public_key_hex: hex::encode(public),
        }],
    })
}

/// Convert an uploaded image (the raw body: PNG, JPEG, GIF, WebP, BMP, TIFF, ICO, TGA, PNM,
/// QOI or DDS) for LVGL. At most UPDRAFT_IMAGE_MAX_PIXELS pixels; at most
/// UPDRAFT_IMAGE_MAX_CONCURRENT conversions at once (503 with Retry-After beyond).
#[utoipa::path(
    post, path = "/api/v1/images/lvgl", tag = "assets",
    params(ConvertQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "The LVGL image (.bin or C source)", body = Vec<u8>),
        (status = 400, description = "Bad parameter, or an image larger than UPDRAFT_IMAGE_MAX_PIXELS (`image_too_large`)", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, description = "Not a decodable image", body = ErrorBody),
        (status = 503, description = "Every conversion slot is in use; see Retry-After", body = ErrorBody),
    ),
    security(("bearer" = ["admin", "operator"]), ("admin_key" = ["admin", "operator"]))
)]
async fn convert_image(
    State(state): State<AppState>,
    _who: Operator,
    ApiQuery(query): ApiQuery<ConvertQuery>,
    request: Request,
) -> ApiResult<Response> {
    let params = image_params(
        query.width.as_deref(),
        query.height.as_deref(),
        query.cf.as_deref(),
        query.lvgl.as_deref(),
        query.output.as_deref(),
        query.name.as_deref(),
        SizeRule::Nearest,
    )?;
    // The slot is taken before the body is read: it bounds the bodies held in memory too.
    let Ok(slot) = state.core.fetcher.try_slot() else {
        return Ok(conversions_busy());
    };
    let limit = state.core.fetcher.max_bytes();
    let mut bytes = Vec::new();
    let mut body = request.into_body().into_data_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| super::body_guard::read_error(&e))?;
        if bytes.len() as u64 + chunk.len() as u64 > limit {
            return Err(Error::PayloadTooLarge { limit }.into());
        }
        bytes.extend_from_slice(&chunk);
    }
    let encoded = images::convert(&state.core.fetcher, slot, bytes, params.options.clone()).await?;
    Ok(image_response(encoded, &params))
}

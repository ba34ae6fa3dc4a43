//! Admin API for the firmware store: upload, list, show, edit, delete, download.

use axum::Json;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::{Operator, Viewer};
use super::download::serve_artifact;
use super::error::{ApiError, ApiJson, ApiQuery, ApiResult, ErrorBody};
use crate::domain::firmware::{self, Artifact, Channel, ImageFacts, UploadMeta};
use crate::domain::firmware::{ArtifactFilter, ArtifactPatch, ArtifactSort};
use crate::domain::version::Version;
use crate::domain::{ArtifactId, Error};
use crate::services::firmware::{self as service, BodyError};
use crate::services::usage;

pub fn router() -> OpenApiRouter<AppState> {
    // Uploads stream under their own limit (`UPDRAFT_MAX_UPLOAD_BYTES`), not the JSON body limit.
    let uploads = OpenApiRouter::new()
        .routes(routes!(upload_firmware, list_firmware))
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(super::error::drain_rejected_body));
    OpenApiRouter::new()
        .merge(uploads)
        .routes(routes!(get_firmware, patch_firmware, delete_firmware))
        .routes(routes!(download_firmware))
        .routes(routes!(firmware_usage))
}

/// A stored firmware build.
#[derive(Serialize, ToSchema)]
pub struct ArtifactView {
    pub id: String,
    pub product: String,
    /// The version as uploaded (or as embedded in the image).
    pub version: String,
    /// The canonical semantic version used for ordering and uniqueness.
    pub version_canonical: String,
    pub hardware: Vec<String>,
    pub channel: String,
    pub notes: String,
    pub size: u64,
    pub sha256: String,
    pub sha1: String,
    pub md5: String,
    pub created_at: String,
    pub updated_at: String,
    /// What was read from an ESP32 app image; null for other files.
    pub image: Option<ImageView>,
    /// Admin download link.
    pub download_url: String,
    /// How much the build is used (in lists and `GET /api/v1/firmware/{id}`; absent in the
    /// answers of uploads and changes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageCounts>,
}

/// How much a build is used, in short.
#[derive(Serialize, ToSchema)]
pub struct UsageCounts {
    /// Releases that ship it (a build belongs to at most one).
    pub releases: u64,
    /// Devices of its product that report its version (and, when it names hardware, have one
    /// of those).
    pub devices_running: u64,
}

/// A release that ships a build.
#[derive(Serialize, ToSchema)]
pub struct UsageRelease {
    pub id: String,
    pub product: String,
    pub version: String,
    pub channel: String,
}

/// A rollout of a release that ships a build.
#[derive(Serialize, ToSchema)]
pub struct UsageRollout {
    pub id: String,
    pub name: String,
    /// draft, running, paused, completed, cancelled, halted, rolled_back.
    pub state: &'static str,
    pub release_id: String,
}

/// Who uses a build.
#[derive(Serialize, ToSchema)]
pub struct ArtifactUsage {
    pub releases: Vec<UsageRelease>,
    /// Rollouts of those releases, newest first.
    pub rollouts: Vec<UsageRollout>,
    /// Devices of its product that report its version (and, when it names hardware, have one
    /// of those).
    pub devices_running: u64,
    /// Devices of its product pinned to its version.
    pub devices_pinned: u64,
    /// Devices being updated to it now (offered, not finished).
    pub devices_offered: u64,
}

/// Facts read from an ESP32 app image header and app descriptor.
#[derive(Serialize, ToSchema)]
pub struct ImageView {
    pub format: String,
    pub chip_id: u16,
    pub chip: Option<String>,
    pub project_name: String,
    pub version: String,
    pub idf_ver: String,
    pub compile_time: String,
    pub compile_date: String,
    pub secure_version: u32,
    pub segment_count: u8,
    pub hash_appended: bool,
    pub appended_sha256: Option<String>,
    pub app_elf_sha256: String,
    pub min_chip_rev_full: u16,
    pub max_chip_rev_full: u16,
    pub flash_size_bytes: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct ArtifactPage {
    pub items: Vec<ArtifactView>,
    /// Number of artifacts matching the filter, over all pages.
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

/// Metadata of a raw (`application/octet-stream`) upload, in the query string.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// Product (application) name; read from an ESP32 image's project name when absent.
    pub product: Option<String>,
    /// Semantic version; read from an ESP32 image's app descriptor when absent.
    pub version: Option<String>,
    /// Comma-separated board/chip identifiers; an ESP32 image's chip when absent.
    pub hardware: Option<String>,
    pub notes: Option<String>,
    /// Release channel [default: stable].
    pub channel: Option<String>,
}

/// Multipart form of an upload: the `file` part plus metadata fields.
#[derive(ToSchema)]
#[allow(dead_code, reason = "describes the form in the OpenAPI document; the handler streams the multipart body itself")]
pub struct UploadForm {
    #[schema(format = Binary, value_type = String)]
    file: Vec<u8>,
    product: Option<String>,
    version: Option<String>,
    /// One or more fields, each an identifier or a comma-separated list.
    hardware: Option<String>,
    notes: Option<String>,
    channel: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Exactly this product.
    pub product: Option<String>,
    /// Builds for this hardware.
    #[param(schema_with = crate::http::schemas::hardware)]
    pub hardware: Option<String>,
    /// This version (in any spelling of it: `v1.02` is `1.2.0`).
    #[param(schema_with = crate::http::schemas::version)]
    pub version: Option<String>,
    /// Exactly this channel (any case).
    pub channel: Option<String>,
    /// `-created_at` (default, newest first), `created_at`, or `product`.
    #[param(pattern = r"^(?:-created_at|created_at|product)$")]
    pub sort: Option<String>,
    /// Page size, 1-500 [default: 50].
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    #[param(maximum = 1099511627776_u64)]
    pub offset: Option<u64>,
}

/// Editable fields of an artifact.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchArtifactBody {
    pub notes: Option<String>,
    #[schema(schema_with = crate::http::schemas::optional_channel)]
    pub channel: Option<String>,
}

pub(crate) const MAX_FIELD_BYTES: usize = firmware::MAX_NOTES_LEN;
/// Room for multipart boundaries and headers on top of the file itself.
const MULTIPART_OVERHEAD: u64 = 1 << 20;

/// Upload a firmware build.
///
/// Accepts `multipart/form-data` (field `file` plus metadata fields) or a raw
/// `application/octet-stream` body with metadata in the query string. The body is streamed,
/// hashed and, for ESP32 app images, validated; missing metadata is read from the image.
/// A repeat upload of the same bytes answers 200 with the stored artifact.
#[utoipa::path(
    post, path = "/api/v1/firmware", tag = "firmware",
    params(UploadQuery),
    request_body(content(
        (UploadForm = "multipart/form-data"),
        (Vec<u8> = "application/octet-stream"),
    )),
    responses(
        (status = 201, description = "Stored", body = ArtifactView),
        (status = 200, description = "The same bytes were already stored for this product and version", body = ArtifactView),
        (status = 400, description = "Bad metadata or body", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin key", body = ErrorBody),
        (status = 409, description = "The version exists with different bytes", body = ErrorBody),
        (status = 413, description = "Larger than UPDRAFT_MAX_UPLOAD_BYTES", body = ErrorBody),
        (status = 415, description = "Neither multipart nor octet-stream", body = ErrorBody),
        (status = 422, description = "Corrupt ESP image or contradicting version", body = ErrorBody),
        (status = 507, description = "Storage full; nothing stored", body = ErrorBody),
    ),
    security(("bearer" = ["admin", "operator"]), ("admin_key" = ["admin", "operator"]))
)]
async fn upload_firmware(State(state): State<AppState>, _who: Operator, request: Request) -> ApiResult<Response> {
    let limit = state.settings.max_upload_bytes;
    let headers = request.headers().clone();
    let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let declared_length = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());

    let ingested = if content_type.starts_with("multipart/form-data") {
        if declared_length.is_some_and(|n| n > limit.saturating_add(MULTIPART_OVERHEAD)) {
            return Err(Error::PayloadTooLarge { limit }.into());
        }
        let ApiQuery(query) = ApiQuery::<UploadQuery>::from_request(request_parts_query(&request), &state).await?;
        if query.has_any() {
            return Err(Error::invalid("invalid_query", "with multipart uploads, send metadata as form fields, not in the query").into());
        }
        let multipart = Multipart::from_request(request, &state)
            .await
            .map_err(|e| Error::invalid("invalid_multipart", format!("malformed multipart body: {}", e.body_text())))?;
        upload_multipart(&state, multipart, limit).await?
    } else if content_type.is_empty() || content_type.starts_with("application/octet-stream") {
        if declared_length.is_some_and(|n| n > limit) {
            return Err(Error::PayloadTooLarge { limit }.into());
        }
        let ApiQuery(query) = ApiQuery::<UploadQuery>::from_request(request_parts_query(&request), &state).await?;
        let meta = query.into_meta();
        firmware::precheck(&meta)?;
        let body = request.into_body().into_data_stream().map(|chunk| chunk.map_err(body_error));
        let staged = service::stage(&state.core, body, limit).await?;
        service::commit(&state.core, staged, &meta).await?
    } else {
        return Err(Error::UnsupportedMediaType(format!(
            "content type `{content_type}` is not accepted; send multipart/form-data or application/octet-stream"
        ))
        .into());
    };
    let status = if ingested.created { StatusCode::CREATED } else { StatusCode::OK };
    let view = artifact_view(&state, &ingested.artifact, Some(&headers));
    Ok((status, Json(view)).into_response())
}

/// A request holding only the URI of `request`, for extracting its query.
fn request_parts_query(request: &Request) -> Request {
    let mut only_uri = Request::new(axum::body::Body::empty());
    *only_uri.uri_mut() = request.uri().clone();
    only_uri
}

impl UploadQuery {
    fn has_any(&self) -> bool {
        self.product.is_some() || self.version.is_some() || self.hardware.is_some() || self.notes.is_some() || self.channel.is_some()
    }

    pub(crate) fn into_meta(self) -> UploadMeta {
        UploadMeta {
            product: self.product,
            version: self.version,
            hardware: self.hardware.into_iter().collect(),
            notes: self.notes,
            channel: self.channel,
        }
    }
}

async fn upload_multipart(state: &AppState, mut multipart: Multipart, limit: u64) -> ApiResult<service::Ingested> {
    let mut meta = UploadMeta::default();
    let mut staged = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return Err(multipart_error(e, limit).into()),
        };
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "file" => {
                if staged.is_some() {
                    return Err(Error::invalid("invalid_multipart", "only one `file` field is allowed").into());
                }
                let body = field.map(|chunk| chunk.map_err(multipart_body_error));
                staged = Some(service::stage(&state.core, body, limit).await?);
            }
            "product" | "version" | "hardware" | "notes" | "channel" => {
                let value = read_text_field(field, &name).await?;
                set_meta_field(&mut meta, &name, value)?;
            }
            other => return Err(unknown_field(other).into()),
        }
    }
    let Some(staged) = staged else {
        return Err(Error::invalid("missing_file", "the form has no `file` field").into());
    };
    Ok(service::commit(&state.core, staged, &meta).await?)
}

/// Puts a metadata form field into `meta`; each may appear once, except `hardware`.
pub(crate) fn set_meta_field(meta: &mut UploadMeta, name: &str, value: String) -> Result<(), Error> {
    let slot = match name {
        "product" => &mut meta.product,
        "version" => &mut meta.version,
        "notes" => &mut meta.notes,
        "channel" => &mut meta.channel,
        "hardware" => {
            meta.hardware.push(value);
            return Ok(());
        }
        other => return Err(unknown_field(other)),
    };
    match slot.replace(value) {
        Some(_) => Err(Error::invalid("invalid_multipart", format!("form field `{name}` appears more than once"))),
        None => Ok(()),
    }
}

fn unknown_field(name: &str) -> Error {
    Error::invalid("invalid_multipart", format!("unknown form field `{name}`; expected file, product, version, hardware, notes, channel"))
}

async fn read_text_field(mut field: axum::extract::multipart::Field<'_>, name: &str) -> ApiResult<String> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, MAX_FIELD_BYTES as u64))? {
        if bytes.len() + chunk.len() > MAX_FIELD_BYTES {
            return Err(Error::invalid("invalid_multipart", format!("form field `{name}` is longer than {MAX_FIELD_BYTES} bytes")).into());
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes).map_err(|_| Error::invalid("invalid_multipart", format!("form field `{name}` is not UTF-8")).into())
}

fn multipart_error(error: axum::extract::multipart::MultipartError, limit: u64) -> Error {
    if let Some(slow) = super::body_guard::SlowBody::find(&error) {
        return slow.into();
    }
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Error::PayloadTooLarge { limit }
    } else {
        Error::invalid("invalid_multipart", format!("malformed multipart body: {}", error.body_text()))
    }
}

pub(crate) fn multipart_body_error(error: axum::extract::multipart::MultipartError) -> BodyError {
    if let Some(slow) = super::body_guard::SlowBody::find(&error) {
        return BodyError::TooSlow(slow.to_string());
    }
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE { BodyError::TooLarge } else { BodyError::Interrupted(error.body_text()) }
}

pub(crate) fn body_error(error: axum::Error) -> BodyError {
    if let Some(slow) = super::body_guard::SlowBody::find(&error) {
        return BodyError::TooSlow(slow.to_string());
    }
    let text = error.to_string();
    if text.contains("length limit exceeded") { BodyError::TooLarge } else { BodyError::Interrupted(text) }
}

/// List firmware builds, newest first, filtered and paginated.
#[utoipa::path(
    get, path = "/api/v1/firmware", tag = "firmware",
    params(ListQuery),
    responses(
        (status = 200, body = ArtifactPage),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
    ),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
async fn list_firmware(
    State(state): State<AppState>,
    _viewer: Viewer,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<ArtifactPage>> {
    let super::page::Page { limit, offset } = super::page::page(query.limit, query.offset)?;
    let sort = match query.sort.as_deref() {
        None | Some("-created_at") => ArtifactSort::NewestFirst,
        Some("created_at") => ArtifactSort::OldestFirst,
        Some("product") => ArtifactSort::Product,
        Some(other) => {
            return Err(Error::invalid("invalid_query", format!("sort `{other}` is not one of -created_at, created_at, product")).into());
        }
    };
    let version_key = match &query.version {
        Some(v) => Some(Version::parse(v)?.canonical()),
        None => None,
    };
    let hardware = match &query.hardware {
        Some(h) => Some(firmware::HardwareId::parse(h)?),
        None => None,
    };
    let filter = ArtifactFilter {
        product: query.product.clone(),
        hardware,
        version_key,
        channel: query.channel.as_deref().map(|c| c.trim().to_ascii_lowercase()),
        sort,
        limit,
        offset,
    };
    let (artifacts, total) = service::list(&state.core, &filter).await?;
    let counts = usage::usage_counts(&state.core, &artifacts).await?;
    let items = artifacts
        .iter()
        .zip(counts)
        .map(|(a, c)| ArtifactView {
            usage: Some(UsageCounts { releases: c.releases, devices_running: c.devices_running }),
            ..artifact_view(&state, a, Some(&headers))
        })
        .collect();
    Ok(Json(ArtifactPage { items, total, limit, offset: filter.offset }))
}

/// Show one firmware build.
#[utoipa::path(
    get, path = "/api/v1/firmware/{id}", tag = "firmware",
    params(("id" = String, Path, description = "Artifact id")),
    responses((status = 200, body = ArtifactView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
async fn get_firmware(
    State(state): State<AppState>,
    _viewer: Viewer,
    headers: HeaderMap,
    Path(id): Path<ArtifactId>,
) -> ApiResult<Json<ArtifactView>> {
    let artifact = find(&state, &id).await?;
    let counts = usage::usage_counts(&state.core, std::slice::from_ref(&artifact)).await?.pop().unwrap_or_default();
    let usage = Some(UsageCounts { releases: counts.releases, devices_running: counts.devices_running });
    Ok(Json(ArtifactView { usage, ..artifact_view(&state, &artifact, Some(&headers)) }))
}

/// Who uses a build: the releases that ship it and their rollouts, and how many devices run
/// it, are pinned to its version, or are being updated to it.
#[utoipa::path(
    get, path = "/api/v1/firmware/{id}/usage", tag = "firmware",
    params(("id" = String, Path, description = "Artifact id")),
    responses((status = 200, body = ArtifactUsage), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
async fn firmware_usage(State(state): State<AppState>, _viewer: Viewer, Path(id): Path<ArtifactId>) -> ApiResult<Json<ArtifactUsage>> {
    let artifact = find(&state, &id).await?;
    let found = usage::artifact_usage(&state.core, &artifact).await?;
    Ok(Json(ArtifactUsage {
        releases: found
            .releases
            .iter()
            .map(|r| UsageRelease {
                id: r.id.to_string(),
                product: r.product.to_string(),
                version: r.version.clone(),
                channel: r.channel.to_string(),
            })
            .collect(),
        rollouts: found
            .rollouts
            .iter()
            .map(|r| UsageRollout {
                id: r.id.to_string(),
                name: r.name.clone(),
                state: r.state.as_str(),
                release_id: r.release_id.to_string(),
            })
            .collect(),
        devices_running: found.devices_running,
        devices_pinned: found.devices_pinned,
        devices_offered: found.devices_offered,
    }))
}

/// Edit the notes or channel of a firmware build.
#[utoipa::path(
    patch, path = "/api/v1/firmware/{id}", tag = "firmware",
    params(("id" = String, Path, description = "Artifact id")),
    request_body = PatchArtifactBody,
    responses((status = 200, body = ArtifactView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin", "operator"]), ("admin_key" = ["admin", "operator"]))
)]
async fn patch_firmware(
    State(state): State<AppState>,
    _who: Operator,
    headers: HeaderMap,
    Path(id): Path<ArtifactId>,
    ApiJson(body): ApiJson<PatchArtifactBody>,
) -> ApiResult<Json<ArtifactView>> {
    if body.notes.as_ref().is_some_and(|n| n.len() > firmware::MAX_NOTES_LEN) {
        return Err(Error::invalid("invalid_notes", format!("notes must be at most {} bytes", firmware::MAX_NOTES_LEN)).into());
    }
    let channel = match &body.channel {
        Some(c) => Some(Channel::parse(c)?),
        None => None,
    };
    let patch = ArtifactPatch { notes: body.notes, channel };
    let artifact = service::update(&state.core, &id, &patch).await?;
    Ok(Json(artifact_view(&state, &artifact, Some(&headers))))
}

/// Delete a firmware build and its file.
#[utoipa::path(
    delete, path = "/api/v1/firmware/{id}", tag = "firmware",
    params(("id" = String, Path, description = "Artifact id")),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, description = "Still in use", body = ErrorBody)),
    security(("bearer" = ["admin", "operator"]), ("admin_key" = ["admin", "operator"]))
)]
async fn delete_firmware(State(state): State<AppState>, _who: Operator, Path(id): Path<ArtifactId>) -> ApiResult<StatusCode> {
    service::delete(&state.core, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Download a firmware build (`GET` and `HEAD`), with single-range support.
#[utoipa::path(
    get, path = "/api/v1/firmware/{id}/download", tag = "firmware",
    params(
        ("id" = String, Path, description = "Artifact id"),
        ("Range" = Option<String>, Header, description = "bytes=a-b, bytes=a- or bytes=-n"),
        ("If-None-Match" = Option<String>, Header, description = "ETag of a copy the client has"),
    ),
    responses(
        (status = 200, description = "The whole file", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "The requested range", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 304, description = "Not modified"),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 416, description = "Range not satisfiable", body = ErrorBody),
    ),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
async fn download_firmware(
    State(state): State<AppState>,
    _viewer: Viewer,
    method: Method,
    headers: HeaderMap,
    Path(id): Path<ArtifactId>,
) -> ApiResult<Response> {
    let artifact = find(&state, &id).await?;
    serve_artifact(&state.core.blobs, &artifact, &method, &headers).await
}

async fn find(state: &AppState, id: &ArtifactId) -> Result<Artifact, ApiError> {
    Ok(service::find(&state.core, id).await?)
}

fn artifact_view(state: &AppState, artifact: &Artifact, headers: Option<&HeaderMap>) -> ArtifactView {
    let base = state.base_url(headers);
    ArtifactView {
        id: artifact.id.to_string(),
        product: artifact.product.to_string(),
        version: artifact.version.clone(),
        version_canonical: artifact.version_key.canonical(),
        hardware: artifact.hardware.iter().map(ToString::to_string).collect(),
        channel: artifact.channel.to_string(),
        notes: artifact.notes.clone(),
        size: artifact.size,
        sha256: artifact.sha256.clone(),
        sha1: artifact.sha1.clone(),
        md5: artifact.md5.clone(),
        created_at: timestamp(artifact.created_at),
        updated_at: timestamp(artifact.updated_at),
        image: artifact.image.as_ref().map(image_view),
        download_url: format!("{base}/api/v1/firmware/{}/download", artifact.id),
        usage: None,
    }
}

fn image_view(i: &ImageFacts) -> ImageView {
    ImageView {
        format: i.format.clone(),
        chip_id: i.chip_id,
        chip: i.chip.clone(),
        project_name: i.project_name.clone(),
        version: i.version.clone(),
        idf_ver: i.idf_ver.clone(),
        compile_time: i.compile_time.clone(),
        compile_date: i.compile_date.clone(),
        secure_version: i.secure_version,
        segment_count: i.segment_count,
        hash_appended: i.hash_appended,
        appended_sha256: i.appended_sha256.clone(),
        app_elf_sha256: i.app_elf_sha256.clone(),
        min_chip_rev_full: i.min_chip_rev_full,
        max_chip_rev_full: i.max_chip_rev_full,
        flash_size_bytes: i.flash_size_bytes,
    }
}

pub fn timestamp(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The properties of `crate::fuzzing` (shared with `fuzz/`), for a bounded number of cases.
#[cfg(test)]
mod properties {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use crate::domain::esp_image::builder::EspImageBuilder;
    use crate::fuzzing;

    fn field() -> impl Strategy<Value = (String, String)> {
        let name = prop_oneof![Just("product"), Just("version"), Just("hardware"), Just("notes"), Just("channel"), Just("colour"),];
        let value = prop_oneof![
            Just("blink".to_string()),
            Just("1.0.1".to_string()),
            Just("v1.0".to_string()),
            Just("2.0.0-rc.1".to_string()),
            Just("esp32, esp32s3".to_string()),
            Just("beta".to_string()),
            Just(String::new()),
            "[a-zA-Z0-9 ,._+-]{0,20}",
        ];
        (name.prop_map(str::to_string), value)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn upload_metadata_is_valid_and_agrees_with_the_image(
            fields in vec(field(), 0..6),
            image in prop_oneof![Just(None), Just(Some("1.0.1")), Just(Some("not-a-version")), Just(Some(""))],
            junk in any::<bool>(),
        ) {
            let file = match image {
                Some(version) => EspImageBuilder::new("blink", version).payload_len(16).build(),
                None => if junk { b"\x7fELF".to_vec() } else { Vec::new() },
            };
            let mut parts: Vec<(&str, &[u8])> = fields.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
            parts.push(("file", file.as_slice()));
            fuzzing::firmware_upload(&fuzzing::multipart_body(&parts));
            let query: Vec<String> = fields.iter().map(|(n, v)| format!("{n}={v}")).collect();
            fuzzing::firmware_upload(query.join("&").as_bytes());
        }

        #[test]
        fn any_body_is_read_or_refused(body in vec(any::<u8>(), 0..300)) {
            let mut data = format!("--{}\r\nContent-Disposition: form-data; name=\"version\"\r\n\r\n", fuzzing::BOUNDARY).into_bytes();
            data.extend(body);
            fuzzing::firmware_upload(&data);
        }
    }
}

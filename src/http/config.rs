//! Device configuration, native API: layered documents (admin), their history, diffs and
//! reverts, product schemas, the stale-config view, and delivery to devices (device token).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::{Operator, Viewer};
use super::device_api::DeviceAuth;
use super::error::{ApiJson, ApiQuery, ApiResult, ErrorBody};
use super::firmware::timestamp;
use crate::domain::Error;
use crate::domain::config::{self, Scope};
use crate::domain::config::{StoredDocument, StoredVersion};
use crate::services::config::{self as service, ChangeRequest, Effective};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_config, put_config, delete_config))
        .routes(routes!(config_history))
        .routes(routes!(config_version))
        .routes(routes!(config_diff))
        .routes(routes!(revert_config))
        .routes(routes!(get_device_config, put_device_config))
        .routes(routes!(get_schema, put_schema, delete_schema))
        .routes(routes!(stale_configs))
        .routes(routes!(device_config))
        .routes(routes!(acknowledge_config))
}

// ---- wire types ----

/// The current document of one layer. Secret values show as `{"$secret": null}`.
#[derive(Serialize, ToSchema)]
pub struct ConfigView {
    /// `product:<name>`, `tag:<tag>` or `device:<MAC>`.
    pub scope: String,
    /// Increases with every change (deletions included); the `ETag`.
    pub version: i64,
    #[schema(value_type = Object)]
    pub content: Value,
    pub updated_at: String,
}

/// The layer each key of an effective configuration came from.
#[derive(Serialize, ToSchema)]
pub struct LayerRef {
    pub scope: String,
    pub version: i64,
}

/// A device's effective configuration: the merge of its layers.
#[derive(Serialize, ToSchema)]
pub struct EffectiveView {
    pub device_id: Option<String>,
    pub mac: String,
    /// What the device is told as `ETag` and acknowledges.
    pub version: String,
    /// The merged document; secrets show as `{"$secret": null}`.
    #[schema(value_type = Object)]
    pub content: Value,
    /// For every leaf (JSON pointer): `device`, `product:<name>` or `tag:<tag>`.
    pub sources: BTreeMap<String, String>,
    /// The layers that exist for this device, in merge order.
    pub layers: Vec<LayerRef>,
}

/// A new version of a layer's document.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutConfigBody {
    /// A JSON object. `{"$secret": value}` marks a secret (encrypted at rest, never shown);
    /// `{"$secret": null}` keeps the secret stored at that place.
    #[schema(value_type = Object)]
    pub content: Value,
    pub comment: Option<String>,
    /// Ignored: accepted for compatibility only. The history records the authenticated
    /// principal (`key:<name>`, `user:<name>`, `oidc:<name>`), never what a client says.
    pub author: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevertBody {
    /// The version whose content becomes the new version.
    pub version: i64,
    pub comment: Option<String>,
    /// Ignored (accepted for compatibility): the authenticated principal is recorded.
    pub author: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    pub comment: Option<String>,
    /// Ignored (accepted for compatibility): the authenticated principal is recorded.
    pub author: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct GetQuery {
    /// Devices only: the merged configuration with the source of every key.
    pub effective: Option<bool>,
}

/// One version in a layer's history.
#[derive(Serialize, ToSchema)]
pub struct VersionView {
    pub version: i64,
    /// Who wrote this version: the principal's actor (`key:ci`, `user:alice`, `oidc:bob`).
    pub author: String,
    pub comment: String,
    pub created_at: String,
    /// True when this version deleted the document.
    pub deleted: bool,
    /// The document (secrets masked); absent in history lists and for deletions.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub content: Option<Value>,
}

#[derive(Serialize, ToSchema)]
pub struct HistoryPage {
    pub scope: String,
    pub items: Vec<VersionView>,
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Page size, 1-500 [default: 50].
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    #[param(maximum = 1099511627776_u64)]
    pub offset: Option<u64>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DiffQuery {
    pub from: i64,
    pub to: i64,
}

/// One difference between two versions.
#[derive(Serialize, ToSchema)]
pub struct ChangeView {
    /// JSON pointer.
    pub path: String,
    /// `added`, `removed` or `changed`.
    pub op: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub from: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub to: Option<Value>,
}

#[derive(Serialize, ToSchema)]
pub struct DiffView {
    pub scope: String,
    pub from: i64,
    pub to: i64,
    pub changes: Vec<ChangeView>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StaleQuery {
    #[param(
        pattern = r"^[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    pub product: Option<String>,
    /// Page size, 1-500 [default: 50].
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    #[param(maximum = 1099511627776_u64)]
    pub offset: Option<u64>,
}

/// A device that has not acknowledged its current configuration.
#[derive(Serialize, ToSchema)]
pub struct StaleView {
    pub device_id: String,
    /// Null for a device known only by its unique name.
    pub mac: Option<String>,
    pub name: String,
    pub product: Option<String>,
    pub current_version: String,
    /// The version it last acknowledged, or null if it never did.
    pub acknowledged_version: Option<String>,
    pub acknowledged_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct StalePage {
    pub items: Vec<StaleView>,
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    /// The `ETag` of the configuration the device applied (quotes allowed).
    #[schema(
        pattern = r#"^[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*"*[A-Za-z0-9._-]{1,64}"*[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"#
    )]
    pub version: String,
}

// ---- helpers ----

async fn resolve_scope(state: &AppState, kind: &str, name: &str) -> Result<Scope, Error> {
    match kind {
        "device" | "devices" => Ok(service::device_scope(&state.core, name).await?.0),
        other => Scope::parse(other, name),
    }
}

/// Parses `If-Match: "3"` (also `W/"3"` or `3`).
pub fn if_match(headers: &HeaderMap) -> Result<Option<i64>, Error> {
    let Some(value) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let text = value.to_str().unwrap_or("").trim();
    let text = text.trim_start_matches("W/").trim_matches('"');
    text.parse::<i64>().map(Some).map_err(|_| Error::invalid("invalid_if_match", "If-Match must be the ETag of the document, e.g. \"3\""))
}

fn document_view(document: &StoredDocument, content: &Value) -> ConfigView {
    ConfigView {
        scope: document.scope.clone(),
        version: document.version,
        content: config::mask(content),
        updated_at: timestamp(document.updated_at),
    }
}

fn with_etag(view: ConfigView) -> Response {
    let etag = format!("\"{}\"", view.version);
    let mut response = Json(view).into_response();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

fn version_view(version: &StoredVersion, with_content: bool) -> VersionView {
    VersionView {
        version: version.version,
        author: version.author.clone(),
        comment: version.comment.clone(),
        created_at: timestamp(version.created_at),
        deleted: version.content.is_none(),
        content: if with_content { version.content.as_ref().map(config::mask) } else { None },
    }
}

fn effective_view(device_id: Option<String>, mac: String, effective: Effective) -> EffectiveView {
    EffectiveView {
        device_id,
        mac,
        version: effective.version,
        content: config::mask(&effective.merged.content),
        sources: effective.merged.sources,
        layers: effective.layers.into_iter().map(|(scope, version)| LayerRef { scope, version }).collect(),
    }
}

async fn get_scope(state: &AppState, scope: &Scope) -> ApiResult<Response> {
    let (document, content) = service::get(&state.core, scope).await?;
    Ok(with_etag(document_view(&document, &content)))
}

/// Writes a new version as `actor` (the principal's; a client's `author` is ignored).
async fn put_scope(state: &AppState, actor: String, scope: &Scope, headers: &HeaderMap, body: PutConfigBody) -> ApiResult<Response> {
    let request = ChangeRequest {
        content: Some(body.content),
        author: actor,
        comment: body.comment.unwrap_or_default(),
        if_match: if_match(headers)?,
        create_only: false,
    };
    let document = service::put(&state.core, scope, request).await?;
    let content = document.content.clone().unwrap_or_default();
    Ok(with_etag(document_view(&document, &content)))
}

async fn effective_of(state: &AppState, name: &str) -> ApiResult<Response> {
    let (scope, device) = service::device_scope(&state.core, name).await?;
    let Scope::Device(mac) = scope else { unreachable!("device_scope returns device scopes") };
    let Some(device) = device else {
        // An unregistered MAC (seed 003): its own document is all there is.
        let effective =
            service::effective_for_mac(&state.core, &mac).await?.ok_or_else(|| Error::not_found("configuration", scope.key()))?;
        return Ok(Json(effective_view(None, mac.canonical(), effective)).into_response());
    };
    let effective = service::effective(&state.core, &device).await?;
    Ok(Json(effective_view(Some(device.id.to_string()), mac.canonical(), effective)).into_response())
}

// ---- handlers: layers ----

/// Get a layer's document (`kind`: product, tag or device; for devices the name is the
/// device id or MAC). With `effective=true` (devices only): the merged configuration with
/// the layer each key came from.
#[utoipa::path(
    get, path = "/api/v1/configs/{kind}/{name}", tag = "configuration",
    params(("kind" = String, Path, description = "product, tag or device", pattern = r"^(?:products?|tags?|devices?)$"), ("name" = String, Path), GetQuery),
    responses((status = 200, body = ConfigView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
async fn get_config(
    State(state): State<AppState>,
    _viewer: Viewer,
    Path((kind, name)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<GetQuery>,
) -> ApiResult<Response> {
    if query.effective == Some(true) {
        if !matches!(kind.as_str(), "device" | "devices") {
            return Err(Error::invalid("invalid_query", "effective=true applies to devices only").into());
        }
        return effective_of(&state, &name).await;
    }
    let scope = resolve_scope(&state, &kind, &name).await?;
    get_scope(&state, &scope).await
}

/// Write a new version of a layer's document. With `If-Match: "<version>"` the write
/// happens only if the document is still at that version (else 412), so concurrent
/// editors lose no update. The document must keep every affected device's effective
/// configuration valid against its product's schema (else 422 listing the errors).
#[utoipa::path(
    put, path = "/api/v1/configs/{kind}/{name}", tag = "configuration",
    params(("kind" = String, Path, description = "product, tag or device", pattern = r"^(?:products?|tags?|devices?)$"), ("name" = String, Path), ("If-Match" = Option<String>, Header, description = "The version the change is based on: the document's ETag, e.g. `\"3\"`", pattern = r#"^[ \t]*(?:W/)*"*[+-]?[0-9]{1,18}"*[ \t]*$"#)),
    request_body = PutConfigBody,
    responses(
        (status = 200, body = ConfigView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, description = "A device layer of a device that is not registered", body = ErrorBody),
        (status = 412, description = "The document changed since If-Match's version", body = ErrorBody),
        (status = 422, description = "Schema violations", body = ErrorBody),
    ),
    security(("bearer" = ["admin", "operator"]), ("admin_key" = ["admin", "operator"]))
)]
async fn put_config(
    State(state): State<AppState>,
    who: Operator,
    Path((kind, name)): Path<(String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PutConfigBody>,
) -> ApiResult<Response> {
    let scope = resolve_scope(&state, &kind, &name).await?;
    put_scope(&state, who.principal().actor(), &scope, &headers, body).await
}

/// Delete a layer's document (a new version that records the deletion).
#[utoipa::path(
    delete, path = "/api/v1/configs/{kind}/{name}", tag = "configuration",
    params(("kind" = String, Path, description = "product, tag or device", pattern = r"^(?:products?|tags?|devices?)$"), ("name" = String, Path), DeleteQuery, ("If-Match" = Option<String>, Header, description = "The document's ETag, e.g. `\"3\"`", pattern = r#"^[ \t]*(?:W/)*"*[+-]?[0-9]{1,18}"*[ \t]*$"#)),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 412, body = ErrorBody)),
    security(("bearer" = ["admin", "operator"]), ("admin_key" = ["admin", "operator"]))
)]
async fn delete_config(
    State(state): State<AppState>,
    who: Operator,
    Path((kind, name)): Path<(String, String)>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<DeleteQuery>,
) -> ApiResult<StatusCode> {
    let scope = resolve_scope(&state, &kind, &name).await?;
    let request = ChangeRequest {
        content: None,
        author: who.principal().actor(),
        comment: query.comment.unwrap_or_default(),
        if_match: if_match(&headers)?,
        create_only: false,
    };
    service::put(&state.core, &scope, request).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A layer's versions, newest first (author, time, comment).
#[utoipa::path(
    get, path = "/api/v1/configs/{kind}/{name}/history", tag = "configuration",
    params(("kind" = String, Path, description = "product, tag or device", pattern = r"^(?:products?|tags?|devices?)$"), ("name" = String, Path), PageQuery),
    responses((status = 200, body = HistoryPage), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
async fn config_history(
    State(state): State<AppState>,
    _viewer: Viewer,
    Path((kind, name)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Json<HistoryPage>> {
    let scope = resolve_scope(&state, &kind, &name).await?;
    let super::page::Page { limit, offset } = super::page::page(query.limit, query.offset)?;
    let (versions, total) = service::history(&state.core, &scope, limit, offset).await?;
    Ok(Json(HistoryPage { scope: scope.key(), items: versions.iter().map(|v| version_view(v, false)).collect(), total, limit, offset }))
}

/// One version of a layer, with its document (secrets masked).
#[utoipa::path(
    get, path = "/api/v1/configs/{kind}/{name}/versions/{version}", tag = "configuration",
    params(("kind" = String, Path, description = "product, tag or device", pattern = r"^(?:products?|tags?|devices?)$"), ("name" = String, Path), ("version" = i64, Path)),
    responses((status = 200, body = VersionView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
async fn config_version(
    State(state): State<AppState>,
    _viewer: Viewer,
    Path((kind, name, version)): Path<(String, String, String)>,
) -> ApiResult<Json<VersionView>> {
    let scope = resolve_scope(&state, &kind, &name).await?;
    let version = version.parse::<i64>().map_err(|_| Error::invalid("invalid_version", "version must be a whole number"))?;
    let stored = service::version(&state.core, &scope, version).await?;
    Ok(Json(version_view(&stored, true)))
}

/// The differences between two versions of a layer (secrets masked).
#[utoipa::path(
    get, path = "/api/v1/configs/{kind}/{name}/diff", tag = "configuration",
    params(("kind" = String, Path, description = "product, tag or device", pattern = r"^(?:products?|tags?|devices?)$"), ("name" = String, Path), DiffQuery),
    responses((status = 200, body = DiffView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
async fn config_diff(
    State(state): State<AppState>,
    _viewer: Viewer,
    Path((kind, name)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<DiffQuery>,
) -> ApiResult<Json<DiffView>> {
    let scope = resolve_scope(&state, &kind, &name).await?;
    let changes = service::diff(&state.core, &scope, query.from, query.to).await?;
    Ok(Json(DiffView {
        scope: scope.key(),
        from: query.from,
        to: query.to,
        changes: changes.into_iter().map(|c| ChangeView { path: c.path, op: c.op.as_str().to_string(), from: c.from, to: c.to }).collect(),
    }))
}

/// Make an earlier version's document current again (as a new version).
#[utoipa::path(
    post, path = "/api/v1/configs/{kind}/{name}/revert", tag = "configuration",
    params(("kind" = String, Path, description = "product, tag or device", pattern = r"^(?:products?|tags?|devices?)$"), ("name" = String, Path), ("If-Match" = Option<String>, Header, description = "The document's ETag, e.g. `\"3\"`", pattern = r#"^[ \t]*(?:W/)*"*[+-]?[0-9]{1,18}"*[ \t]*$"#)),
    request_body = RevertBody,
    responses((status = 200, body = ConfigView), (status = 204, description = "The reverted-to version was a deletion"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 412, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = ["admin", "operator"]), ("admin_key" = ["admin", "operator"]))
)]
async fn revert_config(
    State(state): State<AppState>,
    who: Operator,
    Path((kind, name)): Path<(String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RevertBody>,
) -> ApiResult<Response> {
    let scope = resolve_scope(&state, &kind, &name).await?;
    let author = who.principal().actor();
    let document =
        service::revert(&state.core, &scope, body.version, &author, body.comment.as_deref().unwrap_or(""), if_match(&headers)?).await?;
    match &document.content {
        Some(content) => Ok(with_etag(document_view(&document, content))),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// A device's own configuration document (by device id or MAC); with `effective=true`,
/// the merged configuration and the layer each key came from.
#[utoipa::path(
    get, path = "/api/v1/devices/{id}/config", tag = "configuration",
    params(("id" = String, Path, description = "Device id or MAC"), GetQuery),
    responses((status = 200, description = "ConfigView, or EffectiveView with effective=true", body = EffectiveView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
async fn get_device_config(
    State(state): State<AppState>,
    _viewer: Viewer,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<GetQuery>,
) -> ApiResult<Response> {
    if query.effective == Some(true) {
        return effective_of(&state, &id).await;
    }
    let (scope, _) = service::device_scope(&state.core, &id).await?;
    get_scope(&state, &scope).await
}

/// Write a device's own configuration document (as `PUT /api/v1/configs/device/{id}`).
#[utoipa::path(
    put, path = "/api/v1/devices/{id}/config", tag = "configuration",
    params(("id" = String, Path, description = "Device id or MAC"), ("If-Match" = Option<String>, Header, description = "The document's ETag, e.g. `\"3\"`", pattern = r#"^[ \t]*(?:W/)*"*[+-]?[0-9]{1,18}"*[ \t]*$"#)),
    request_body = PutConfigBody,
    responses((status = 200, body = ConfigView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, description = "No such device", body = ErrorBody), (status = 412, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = ["admin", "operator"]), ("admin_key" = ["admin", "operator"]))
)]
async fn put_device_config(
    State(state): State<AppState>,
    who: Operator,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PutConfigBody>,
) -> ApiResult<Response> {
    let (scope, _) = service::device_scope(&state.core, &id).await?;
    put_scope(&state, who.principal().actor(), &scope, &headers, body).await
}

// ---- handlers: schemas ----

/// A product's configuration JSON Schema.
#[utoipa::path(
    get, path = "/api/v1/products/{name}/config-schema", tag = "configuration",
    params(("name" = String, Path, description = "Product name", pattern = r"^[ \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}[ \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$")),
    responses((status = 200, description = "The JSON Schema", body = crate::http::schemas::JsonSchemaDocument), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
async fn get_schema(State(state): State<AppState>, _viewer: Viewer, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let product = crate::services::assets::check_product(&name)?;
    Ok(Json(service::get_schema(&state.core, &product).await?))
}

/// Set a product's configuration JSON Schema. Every later write must keep the effective
/// configuration of the product's devices valid; existing documents are not re-checked.
#[utoipa::path(
    put, path = "/api/v1/products/{name}/config-schema", tag = "configuration",
    params(("name" = String, Path, description = "Product name", pattern = r"^[ \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}[ \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$")),
    request_body(content = crate::http::schemas::JsonSchemaDocument, description = "A JSON Schema (draft 2020-12 unless `$schema` says otherwise)"),
    responses((status = 204, description = "Stored"), (status = 400, description = "Not a JSON Schema", body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = ["admin", "operator"]), ("admin_key" = ["admin", "operator"]))
)]
async fn put_schema(
    State(state): State<AppState>,
    _who: Operator,
    Path(name): Path<String>,
    // A schema may be `true` or `false` too: not an `ApiJson` (objects only).
    crate::http::error::ApiJsonValue(schema): crate::http::error::ApiJsonValue,
) -> ApiResult<StatusCode> {
    let product = crate::services::assets::check_product(&name)?;
    service::put_schema(&state.core, &product, &schema).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    delete, path = "/api/v1/products/{name}/config-schema", tag = "configuration",
    params(("name" = String, Path, description = "Product name", pattern = r"^[ \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}[ \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$")),
    responses((status = 204, description = "Removed"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin", "operator"]), ("admin_key" = ["admin", "operator"]))
)]
async fn delete_schema(State(state): State<AppState>, _who: Operator, Path(name): Path<String>) -> ApiResult<StatusCode> {
    let product = crate::services::assets::check_product(&name)?;
    service::delete_schema(&state.core, &product).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- handlers: delivery ----

/// Devices whose acknowledged configuration is not their current one (or that never
/// acknowledged one), among devices with at least one configuration layer.
#[utoipa::path(
    get, path = "/api/v1/configs/stale", tag = "configuration",
    params(StaleQuery),
    responses((status = 200, body = StalePage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
async fn stale_configs(
    State(state): State<AppState>,
    _viewer: Viewer,
    ApiQuery(query): ApiQuery<StaleQuery>,
) -> ApiResult<Json<StalePage>> {
    let super::page::Page { limit, offset } = super::page::page(query.limit, query.offset)?;
    let product = query.product.as_deref().map(crate::services::assets::check_product).transpose()?;
    let (stale, total) = service::stale(&state.core, product.as_deref(), limit, offset).await?;
    let items = stale
        .into_iter()
        .map(|s| StaleView {
            device_id: s.device.id.to_string(),
            mac: s.device.mac.map(|m| m.canonical()),
            name: s.device.name.clone(),
            product: s.device.product.as_ref().map(ToString::to_string),
            current_version: s.current_version,
            acknowledged_version: s.acknowledged.as_ref().map(|(v, _)| v.clone()),
            acknowledged_at: s.acknowledged.map(|(_, at)| timestamp(at)),
        })
        .collect();
    Ok(Json(StalePage { items, total, limit, offset }))
}

/// The device's effective configuration as a plain JSON object, secrets included. The
/// `ETag` is its version; send it as `If-None-Match` to get 304 while nothing changed.
#[utoipa::path(
    get, path = "/api/v1/device/config", tag = "device",
    params(("If-None-Match" = Option<String>, Header)),
    responses(
        (status = 200, description = "The configuration", body = Object, headers(("ETag" = String, description = "The version"))),
        (status = 304, description = "Unchanged since If-None-Match"),
        (status = 401, body = ErrorBody), (status = 429, body = ErrorBody),
    ),
    security(("device_token" = []))
)]
async fn device_config(State(state): State<AppState>, DeviceAuth(device, _): DeviceAuth, headers: HeaderMap) -> ApiResult<Response> {
    // The fleet index does not hold tags: read the whole device (config fetches are rare).
    let device =
        crate::services::devices::find_by_id(&state.core, &device.id).await?.ok_or_else(|| Error::not_found("device", &*device.id))?;
    let effective = service::effective(&state.core, &device).await?;
    let etag = format!("\"{}\"", effective.version);
    let unchanged = super::conditional::none_match(&headers, &etag);
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Json(service::reveal(&state.core, &effective.merged.content)?).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, HeaderValue::from_str(&etag).map_err(|e| Error::Internal(e.into()))?);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
    Ok(response)
}

/// Report the configuration version (its `ETag`) the device applied.
#[utoipa::path(
    post, path = "/api/v1/device/config/ack", tag = "device",
    request_body = AckBody,
    responses((status = 204, description = "Recorded"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("device_token" = []))
)]
async fn acknowledge_config(
    State(state): State<AppState>,
    DeviceAuth(device, _): DeviceAuth,
    ApiJson(body): ApiJson<AckBody>,
) -> ApiResult<StatusCode> {
    service::acknowledge(&state.core, &device.id, &body.version).await?;
    Ok(StatusCode::NO_CONTENT)
}

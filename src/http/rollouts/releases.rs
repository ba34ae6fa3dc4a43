//! Releases.

use super::*;

/// Create a release from uploaded builds of one product and version. From then on its
/// builds are offered only through its rollouts (see docs/API.md, "Releases").
#[utoipa::path(
    post, path = "/api/v1/releases", tag = "rollouts",
    request_body = CreateReleaseBody,
    responses((status = 201, body = ReleaseView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = ["admin", "operator"]), ("admin_key" = ["admin", "operator"]))
)]
pub(super) async fn create_release(
    State(state): State<AppState>,
    _who: Operator,
    ApiJson(body): ApiJson<CreateReleaseBody>,
) -> ApiResult<(StatusCode, Json<ReleaseView>)> {
    let release = service::create_release(
        &state.core,
        NewRelease {
            product: body.product,
            version: body.version,
            channel: body.channel,
            notes: body.notes,
            artifact_ids: body.artifact_ids,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(release_view(&release))))
}

/// List releases, newest first.
#[utoipa::path(
    get, path = "/api/v1/releases", tag = "rollouts",
    params(ReleaseListQuery),
    responses((status = 200, body = ReleaseList), (status = 401, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
pub(super) async fn list_releases(
    State(state): State<AppState>,
    _viewer: Viewer,
    ApiQuery(query): ApiQuery<ReleaseListQuery>,
) -> ApiResult<Json<ReleaseList>> {
    let releases = service::list_releases(&state.core, query.product.as_deref()).await?;
    Ok(Json(ReleaseList { items: releases.iter().map(release_view).collect() }))
}

#[utoipa::path(
    get, path = "/api/v1/releases/{id}", tag = "rollouts",
    params(("id" = String, Path, description = "Release id")),
    responses((status = 200, body = ReleaseView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
pub(super) async fn get_release(State(state): State<AppState>, _viewer: Viewer, Path(id): Path<ReleaseId>) -> ApiResult<Json<ReleaseView>> {
    Ok(Json(release_view(&service::find_release(&state.core, &id).await?)))
}

/// Delete a release that no rollout uses; its builds are offered directly again.
#[utoipa::path(
    delete, path = "/api/v1/releases/{id}", tag = "rollouts",
    params(("id" = String, Path, description = "Release id")),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = ["admin", "operator"]), ("admin_key" = ["admin", "operator"]))
)]
pub(super) async fn delete_release(State(state): State<AppState>, _who: Operator, Path(id): Path<ReleaseId>) -> ApiResult<StatusCode> {
    service::delete_release(&state.core, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

//! Device groups.

use super::*;

/// Save a group of devices that rollouts can target.
#[utoipa::path(
    post, path = "/api/v1/groups", tag = "rollouts",
    request_body = CreateGroupBody,
    responses((status = 201, body = GroupView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = ["admin", "operator"]), ("admin_key" = ["admin", "operator"]))
)]
pub(super) async fn create_group(
    State(state): State<AppState>,
    _who: Operator,
    ApiJson(body): ApiJson<CreateGroupBody>,
) -> ApiResult<(StatusCode, Json<GroupView>)> {
    let group = service::create_group(&state.core, &body.name, &body.devices).await?;
    Ok((StatusCode::CREATED, Json(group_view(&group))))
}

#[utoipa::path(
    get, path = "/api/v1/groups", tag = "rollouts",
    responses((status = 200, body = GroupList), (status = 401, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
pub(super) async fn list_groups(State(state): State<AppState>, _viewer: Viewer) -> ApiResult<Json<GroupList>> {
    let groups = service::list_groups(&state.core).await?;
    Ok(Json(GroupList { items: groups.iter().map(group_view).collect() }))
}

/// A group with its devices.
#[utoipa::path(
    get, path = "/api/v1/groups/{id}", tag = "rollouts",
    params(("id" = String, Path, description = "Group id")),
    responses((status = 200, body = GroupDetail), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
pub(super) async fn get_group(State(state): State<AppState>, _viewer: Viewer, Path(id): Path<GroupId>) -> ApiResult<Json<GroupDetail>> {
    let (group, devices) = service::find_group(&state.core, &id).await?;
    Ok(Json(GroupDetail { group: group_view(&group), devices: devices.iter().map(ToString::to_string).collect() }))
}

/// Rename a group, add or remove devices. Running rollouts that target it follow at once.
#[utoipa::path(
    patch, path = "/api/v1/groups/{id}", tag = "rollouts",
    params(("id" = String, Path, description = "Group id")),
    request_body = PatchGroupBody,
    responses((status = 200, body = GroupView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = ["admin", "operator"]), ("admin_key" = ["admin", "operator"]))
)]
pub(super) async fn patch_group(
    State(state): State<AppState>,
    _who: Operator,
    Path(id): Path<GroupId>,
    ApiJson(body): ApiJson<PatchGroupBody>,
) -> ApiResult<Json<GroupView>> {
    let group = service::change_group(&state.core, &id, body.name.as_deref(), &body.add, &body.remove).await?;
    Ok(Json(group_view(&group)))
}

/// Delete a group that no active rollout targets.
#[utoipa::path(
    delete, path = "/api/v1/groups/{id}", tag = "rollouts",
    params(("id" = String, Path, description = "Group id")),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = ["admin", "operator"]), ("admin_key" = ["admin", "operator"]))
)]
pub(super) async fn delete_group(State(state): State<AppState>, _who: Operator, Path(id): Path<GroupId>) -> ApiResult<StatusCode> {
    service::delete_group(&state.core, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

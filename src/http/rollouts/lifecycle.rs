//! Rollouts: create, list, show, history, and the operator's life-cycle actions.

use super::*;

/// Create a staged rollout of a release: a draft, or running with `start: true`, or
/// starting at `start_at`. The answer lists other rollouts whose targets share devices with
/// this one (those devices get the newer release).
#[utoipa::path(
    post, path = "/api/v1/rollouts", tag = "rollouts",
    request_body = CreateRolloutBody,
    responses((status = 201, body = RolloutCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = ["admin", "operator"]), ("admin_key" = ["admin", "operator"]))
)]
pub(super) async fn create_rollout(
    State(state): State<AppState>,
    who: Operator,
    ApiJson(body): ApiJson<CreateRolloutBody>,
) -> ApiResult<(StatusCode, Json<RolloutCreated>)> {
    let new = new_rollout(&state, body, who.principal().actor())?;
    let (rollout, overlaps) = service::create_rollout(&state.core, new).await?;
    let status = service::status(&state.core, &rollout.id).await?;
    Ok((
        StatusCode::CREATED,
        Json(RolloutCreated { rollout: rollout_view(&status), overlaps: overlaps.iter().map(overlap_view).collect() }),
    ))
}

/// The service's request from the body of `POST /api/v1/rollouts` (also the preview's).
fn new_rollout(state: &AppState, body: CreateRolloutBody, actor: String) -> Result<NewRollout, Error> {
    let target = parse_target(&body.target)?;
    let stages = parse_stages(body.stages)?;
    let window = match &body.window {
        Some(w) => Some(Window::parse(&w.days, &w.start, &w.end, w.time_zone.as_deref())?),
        None => None,
    };
    let options = RolloutOptions {
        start_at: parse_time("start_at", &body.start_at)?,
        window,
        max_concurrent: body.max_concurrent,
        forced: body.forced,
        dynamic: body.dynamic.unwrap_or(true),
        device_deadline_s: body.device_deadline_s.unwrap_or(state.core.rollouts.policy.device_deadline.as_secs()),
    };
    Ok(NewRollout {
        name: body.name,
        release_id: body.release_id.into(),
        target,
        devices: body.target.devices,
        stages,
        options,
        start: body.start,
        actor,
    })
}

/// What `POST /api/v1/rollouts` with this body would target, without creating anything: the
/// devices it matches now, how many each stage would add, and the overlaps with other
/// rollouts. The same checks and errors as the creation. Any role may ask (it writes
/// nothing and shows only counts a viewer can read from the device list). Percent stages of
/// the rollout created afterwards may differ by a few devices (membership hashes the new
/// rollout's id); count stages are exact.
#[utoipa::path(
    post, path = "/api/v1/rollouts/preview", tag = "rollouts",
    request_body = CreateRolloutBody,
    responses((status = 200, body = RolloutPreview), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
pub(super) async fn preview_rollout(
    State(state): State<AppState>,
    who: Viewer,
    ApiJson(body): ApiJson<CreateRolloutBody>,
) -> ApiResult<Json<RolloutPreview>> {
    let new = new_rollout(&state, body, who.principal().actor())?;
    let preview = service::preview_rollout(&state.core, new).await?;
    let stages = preview
        .stages
        .iter()
        .zip(&preview.stage_sizes)
        .enumerate()
        .map(|(index, (stage, devices))| {
            let (percent, count) = match stage.size {
                StageSize::Percent(p) => (Some(p), None),
                StageSize::Count(c) => (None, Some(c)),
            };
            PreviewStage { number: index + 1, percent, count, devices: *devices }
        })
        .collect();
    Ok(Json(RolloutPreview { target_size: preview.target_size, stages, overlaps: preview.overlaps.iter().map(overlap_view).collect() }))
}

/// Delete a draft (a rollout never started), with its history. A rollout that started is kept
/// as history: 409 `rollout_not_draft` (cancel it instead).
#[utoipa::path(
    delete, path = "/api/v1/rollouts/{id}", tag = "rollouts",
    params(("id" = String, Path, description = "Rollout id")),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, description = "Not a draft", body = ErrorBody)),
    security(("bearer" = ["admin", "operator"]), ("admin_key" = ["admin", "operator"]))
)]
pub(super) async fn delete_rollout(State(state): State<AppState>, who: Operator, Path(id): Path<RolloutId>) -> ApiResult<StatusCode> {
    service::delete_draft(&state.core, &id, &who.principal().actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List rollouts, newest first.
#[utoipa::path(
    get, path = "/api/v1/rollouts", tag = "rollouts",
    params(RolloutListQuery),
    responses((status = 200, body = RolloutList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
pub(super) async fn list_rollouts(
    State(state): State<AppState>,
    _viewer: Viewer,
    ApiQuery(query): ApiQuery<RolloutListQuery>,
) -> ApiResult<Json<RolloutList>> {
    let states = match &query.state {
        Some(text) => vec![RolloutState::parse(text)?],
        None => Vec::new(),
    };
    let rollouts = service::list_rollouts(&state.core, &states, query.product.as_deref()).await?;
    let mut items = Vec::with_capacity(rollouts.len());
    for rollout in rollouts.iter().take(100) {
        items.push(rollout_view(&service::status(&state.core, &rollout.id).await?));
    }
    Ok(Json(RolloutList { items }))
}

/// A rollout with live counts per stage and state, its failure rate and why it is in its state.
#[utoipa::path(
    get, path = "/api/v1/rollouts/{id}", tag = "rollouts",
    params(("id" = String, Path, description = "Rollout id")),
    responses((status = 200, body = RolloutView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
pub(super) async fn get_rollout(State(state): State<AppState>, _viewer: Viewer, Path(id): Path<RolloutId>) -> ApiResult<Json<RolloutView>> {
    Ok(Json(rollout_view(&service::status(&state.core, &id).await?)))
}

/// Every transition: who (operator or rule), when, why.
#[utoipa::path(
    get, path = "/api/v1/rollouts/{id}/history", tag = "rollouts",
    params(("id" = String, Path, description = "Rollout id")),
    responses((status = 200, body = History), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
pub(super) async fn rollout_history(State(state): State<AppState>, _viewer: Viewer, Path(id): Path<RolloutId>) -> ApiResult<Json<History>> {
    let history = service::history(&state.core, &id).await?;
    Ok(Json(History { items: history.iter().map(transition_view).collect() }))
}

macro_rules! action_endpoint {
    ($name:ident, $path:literal, $action:expr, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(
            post, path = $path, tag = "rollouts",
            params(("id" = String, Path, description = "Rollout id")),
            request_body(content = Option<ActionBody>, description = "Optional: a reason recorded in the history"),
            responses((status = 200, body = RolloutView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, description = "Not allowed in the rollout's state", body = ErrorBody)),
            security(("bearer" = ["admin", "operator"]), ("admin_key" = ["admin", "operator"]))
        )]
        pub(super) async fn $name(State(state): State<AppState>, who: Operator, Path(id): Path<RolloutId>, ApiBytes(body): ApiBytes) -> ApiResult<Json<RolloutView>> {
            act(&state, &who.principal().actor(), &id, $action, &body).await
        }
    };
}

action_endpoint!(start_rollout, "/api/v1/rollouts/{id}/start", Action::Start, "Start a draft: the first stage opens.");
action_endpoint!(
    pause_rollout,
    "/api/v1/rollouts/{id}/pause",
    Action::Pause,
    "Pause: nobody new is offered the release; devices already offered may finish."
);
action_endpoint!(
    resume_rollout,
    "/api/v1/rollouts/{id}/resume",
    Action::Resume,
    "Resume a paused rollout, or a halted one: the failures that halted it are excused (the error threshold counts new ones only)."
);
action_endpoint!(
    cancel_rollout,
    "/api/v1/rollouts/{id}/cancel",
    Action::Cancel,
    "Cancel: nobody new is offered the release; nothing is rolled back."
);
action_endpoint!(
    advance_rollout,
    "/api/v1/rollouts/{id}/advance",
    Action::Advance,
    "Open the next stage now, whatever the thresholds (after the last stage: complete)."
);
action_endpoint!(
    rollback_rollout,
    "/api/v1/rollouts/{id}/rollback",
    Action::Rollback,
    "Roll back: pin every device the rollout offered the release to the version it ran before (refused below the product's anti-rollback floor)."
);

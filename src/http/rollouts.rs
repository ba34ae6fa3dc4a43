//! Admin API for releases, device groups and staged rollouts (life cycle, live counts,
//! history).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::Admin;
use super::error::{ApiJson, ApiQuery, ApiResult, ErrorBody};
use super::firmware::timestamp;
use crate::domain::Error;
use crate::domain::firmware::HardwareId;
use crate::domain::rollout::{
    Action, DEFAULT_ERROR_PERCENT, DEFAULT_SUCCESS_PERCENT, ErrorThreshold, Group, Release, RolloutOptions, RolloutState, Stage, StageSize,
    Tally, Target, Transition, Window,
};
use crate::domain::version::Version;
use crate::services::rollouts::{self as service, NewRelease, NewRollout, Overlap, RolloutStatus};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_release, list_releases))
        .routes(routes!(get_release, delete_release))
        .routes(routes!(create_group, list_groups))
        .routes(routes!(get_group, patch_group, delete_group))
        .routes(routes!(create_rollout, list_rollouts))
        .routes(routes!(get_rollout))
        .routes(routes!(rollout_history))
        .routes(routes!(start_rollout))
        .routes(routes!(pause_rollout))
        .routes(routes!(resume_rollout))
        .routes(routes!(cancel_rollout))
        .routes(routes!(advance_rollout))
        .routes(routes!(rollback_rollout))
}

// ---- wire types ----

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateReleaseBody {
    pub product: String,
    /// The version of every build of the release.
    pub version: String,
    /// `stable` (default), `beta` or another channel. Devices on `beta` also receive `stable`.
    pub channel: Option<String>,
    pub notes: Option<String>,
    /// Uploaded builds of this product and version, at most one per hardware.
    pub artifact_ids: Vec<String>,
}

/// Builds of one product shipped together under one version. Its builds are offered only
/// through its rollouts.
#[derive(Serialize, ToSchema)]
pub struct ReleaseView {
    pub id: String,
    pub product: String,
    pub version: String,
    pub channel: String,
    pub notes: String,
    pub artifact_ids: Vec<String>,
    pub created_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct ReleaseList {
    pub items: Vec<ReleaseView>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReleaseListQuery {
    pub product: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroupBody {
    pub name: String,
    /// Device ids or MACs.
    #[serde(default)]
    pub devices: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchGroupBody {
    pub name: Option<String>,
    /// Device ids or MACs to add.
    #[serde(default)]
    pub add: Vec<String>,
    /// Device ids or MACs to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A saved list of devices that rollouts can target.
#[derive(Serialize, ToSchema)]
pub struct GroupView {
    pub id: String,
    pub name: String,
    pub size: u64,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct GroupDetail {
    #[serde(flatten)]
    pub group: GroupView,
    /// Device ids.
    pub devices: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct GroupList {
    pub items: Vec<GroupView>,
}

/// Which devices a rollout is for; every given criterion must hold. The product is the
/// release's.
#[derive(Deserialize, Serialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct TargetBody {
    /// Hardware ids [default: every hardware the release has a build for].
    #[serde(default)]
    pub hardware: Vec<String>,
    /// Device channels [default: every channel that receives the release's channel].
    #[serde(default)]
    pub channels: Vec<String>,
    /// The device has all of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The device runs at least this version.
    pub version_min: Option<String>,
    /// The device runs a version below this one.
    pub version_max: Option<String>,
    /// Only these devices (ids or MACs).
    pub devices: Option<Vec<String>>,
    /// Only members of this saved group (id).
    pub group: Option<String>,
}

#[derive(Deserialize, Serialize, ToSchema, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct ErrorThresholdBody {
    /// Halt when this many devices of a stage failed.
    pub count: Option<u64>,
    /// Halt when this percentage of a stage's devices failed.
    pub percent: Option<f64>,
}

/// One stage: give `percent` or `count`, both cumulative (stage 3 of `[1, 10, 50]` percent
/// covers half the target, including the first two stages' devices).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StageBody {
    pub percent: Option<f64>,
    pub count: Option<u64>,
    /// Percentage of the stage's devices that must succeed before the next stage opens [default: 90].
    pub success_threshold: Option<f64>,
    /// [default: `{"percent": 10}`]
    pub error_threshold: Option<ErrorThresholdBody>,
    /// Seconds the stage runs at least before the next one opens automatically [default: 0].
    pub min_soak_s: Option<u64>,
}

/// Hours of some days, in a time zone, outside which devices are not offered the update.
#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowBody {
    /// `mon` … `sun` [default: every day].
    #[serde(default)]
    pub days: Vec<String>,
    /// `HH:MM`, e.g. `22:00`.
    pub start: String,
    /// `HH:MM`; before `start` means the window runs past midnight (on the day it opened).
    pub end: String,
    /// IANA time zone, e.g. `Europe/Berlin` [default: UTC].
    pub time_zone: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRolloutBody {
    pub name: Option<String>,
    pub release_id: String,
    #[serde(default)]
    pub target: TargetBody,
    /// [default: 1%, 10%, 50%, 100%]
    pub stages: Option<Vec<StageBody>>,
    /// Start at once [default: false: a draft until `start` or `start_at`].
    #[serde(default)]
    pub start: bool,
    /// RFC 3339 time to start automatically.
    pub start_at: Option<String>,
    pub window: Option<WindowBody>,
    /// Devices offered but not yet done downloading and installing, at most.
    pub max_concurrent: Option<u32>,
    /// Forced: offers are `mandatory` (a hint to devices that support it) [default: false].
    #[serde(default)]
    pub forced: bool,
    /// Devices registered after the start join too [default: true].
    pub dynamic: Option<bool>,
    /// A device offered the release that neither succeeds nor fails within this time has
    /// timed out (counts as failed) [default: UPDRAFT_ROLLOUT_DEVICE_DEADLINE_SECS].
    pub device_deadline_s: Option<u64>,
}

/// Devices by state. `pending`: in a started stage's share of the target but not offered yet.
#[derive(Serialize, ToSchema, Default)]
pub struct CountsView {
    pub pending: u64,
    pub offered: u64,
    pub downloading: u64,
    pub installing: u64,
    pub installed: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    /// Of `failed` and `timed_out`: failures excused when an operator resumed the rollout
    /// after a halt. The error threshold counts only the others.
    pub excused: u64,
}

#[derive(Serialize, ToSchema)]
pub struct StageView {
    /// 1-based.
    pub number: usize,
    pub percent: Option<f64>,
    pub count: Option<u64>,
    pub success_threshold: f64,
    pub error_threshold: ErrorThresholdBody,
    pub min_soak_s: u64,
    /// `pending` (not started), `current` or `done`.
    pub status: &'static str,
    /// Cumulative share of the target, fixed when the stage started.
    pub share: Option<f64>,
    /// Devices of the target in this stage (last counted).
    pub devices: Option<u64>,
    pub counts: CountsView,
    /// Failed and timed out ÷ devices with an outcome.
    pub failure_rate: f64,
}

#[derive(Serialize, ToSchema)]
pub struct OptionsView {
    pub start_at: Option<String>,
    pub window: Option<WindowBody>,
    pub max_concurrent: Option<u32>,
    pub forced: bool,
    pub dynamic: bool,
    pub device_deadline_s: u64,
}

#[derive(Serialize, ToSchema)]
pub struct RolloutView {
    pub id: String,
    pub name: String,
    pub release_id: String,
    pub release_version: Option<String>,
    pub product: String,
    /// draft, running, paused, completed, cancelled, halted, rolled_back.
    pub state: &'static str,
    /// Why it is in its state.
    pub reason: String,
    /// 1-based; 0 before the start.
    pub current_stage: usize,
    pub stages: Vec<StageView>,
    pub target: TargetBody,
    pub options: OptionsView,
    /// Devices matching the target (last counted).
    pub target_size: u64,
    pub counts: CountsView,
    pub failure_rate: f64,
    pub started_at: Option<String>,
    pub stage_started_at: Option<String>,
    /// When it completed; it offers its release to late devices for the catch-up period
    /// (`UPDRAFT_ROLLOUT_CATCH_UP_SECS`) after this.
    pub completed_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// Another rollout of the product whose target shares devices with the new one. Those
/// devices get the newer of the two releases.
#[derive(Serialize, ToSchema)]
pub struct OverlapView {
    pub rollout_id: String,
    pub name: String,
    pub state: &'static str,
    pub release_version: String,
    pub devices: u64,
}

#[derive(Serialize, ToSchema)]
pub struct RolloutCreated {
    #[serde(flatten)]
    pub rollout: RolloutView,
    pub overlaps: Vec<OverlapView>,
}

#[derive(Serialize, ToSchema)]
pub struct RolloutList {
    pub items: Vec<RolloutView>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RolloutListQuery {
    pub product: Option<String>,
    pub state: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TransitionView {
    /// Empty for the creation.
    pub from: String,
    pub to: String,
    /// 1-based stage after the transition.
    pub stage: usize,
    /// `operator`, or `rule:schedule`, `rule:success_threshold`, `rule:error_threshold`.
    pub actor: String,
    pub reason: String,
    pub at: String,
}

#[derive(Serialize, ToSchema)]
pub struct History {
    pub items: Vec<TransitionView>,
}

/// Optional body of the life-cycle actions.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    /// Recorded in the history.
    pub reason: Option<String>,
}

// ---- conversions ----

fn release_view(release: &Release) -> ReleaseView {
    ReleaseView {
        id: release.id.clone(),
        product: release.product.clone(),
        version: release.version.clone(),
        channel: release.channel.clone(),
        notes: release.notes.clone(),
        artifact_ids: release.artifact_ids.clone(),
        created_at: timestamp(release.created_at),
    }
}

fn group_view(group: &Group) -> GroupView {
    GroupView {
        id: group.id.clone(),
        name: group.name.clone(),
        size: group.size,
        created_at: timestamp(group.created_at),
        updated_at: timestamp(group.updated_at),
    }
}

fn counts_view(tally: &Tally, size: Option<u64>) -> CountsView {
    CountsView {
        pending: size.unwrap_or(0).saturating_sub(tally.members()),
        offered: tally.offered,
        downloading: tally.downloading,
        installing: tally.installing,
        installed: tally.installed,
        succeeded: tally.succeeded,
        failed: tally.failed,
        timed_out: tally.timed_out,
        excused: tally.excused,
    }
}

fn window_view(window: &Window) -> WindowBody {
    WindowBody {
        days: window.day_names().into_iter().map(str::to_string).collect(),
        start: format!("{:02}:{:02}", window.start_min / 60, window.start_min % 60),
        end: format!("{:02}:{:02}", window.end_min / 60, window.end_min % 60),
        time_zone: Some(window.time_zone.name().to_string()),
    }
}

fn rollout_view(status: &RolloutStatus) -> RolloutView {
    let rollout = &status.rollout;
    let started = rollout.state != RolloutState::Draft && !rollout.shares.is_empty();
    let stages = rollout
        .stages
        .iter()
        .enumerate()
        .map(|(index, stage)| {
            let (percent, count) = match stage.size {
                StageSize::Percent(p) => (Some(p), None),
                StageSize::Count(c) => (None, Some(c)),
            };
            let tally = status.tallies.get(index).cloned().unwrap_or_default();
            let size = rollout.stage_sizes.get(index).copied();
            StageView {
                number: index + 1,
                percent,
                count,
                success_threshold: stage.success_percent,
                error_threshold: ErrorThresholdBody { count: stage.error.count, percent: stage.error.percent },
                min_soak_s: stage.min_soak_s,
                status: match () {
                    _ if !started || index > rollout.current_stage => "pending",
                    _ if index == rollout.current_stage && rollout.state != RolloutState::Completed => "current",
                    _ => "done",
                },
                share: rollout.shares.get(index).copied(),
                devices: size,
                failure_rate: tally.failure_rate(),
                counts: counts_view(&tally, size),
            }
        })
        .collect();
    let started_size: u64 = rollout.stage_sizes.iter().sum();
    RolloutView {
        id: rollout.id.clone(),
        name: rollout.name.clone(),
        release_id: rollout.release_id.clone(),
        release_version: status.release.as_ref().map(|r| r.version.clone()),
        product: rollout.product.clone(),
        state: rollout.state.as_str(),
        reason: rollout.reason.clone(),
        current_stage: if started { rollout.current_stage + 1 } else { 0 },
        stages,
        target: TargetBody {
            hardware: rollout.target.hardware.clone(),
            channels: rollout.target.channels.clone(),
            tags: rollout.target.tags.clone(),
            version_min: rollout.target.version_min.as_ref().map(Version::canonical),
            version_max: rollout.target.version_max.as_ref().map(Version::canonical),
            devices: rollout.target.devices.as_ref().map(|d| {
                let mut ids: Vec<String> = d.iter().cloned().collect();
                ids.sort();
                ids
            }),
            group: rollout.target.group.clone(),
        },
        options: OptionsView {
            start_at: rollout.options.start_at.map(timestamp),
            window: rollout.options.window.as_ref().map(window_view),
            max_concurrent: rollout.options.max_concurrent,
            forced: rollout.options.forced,
            dynamic: rollout.options.dynamic,
            device_deadline_s: rollout.options.device_deadline_s,
        },
        target_size: rollout.target_size,
        counts: counts_view(&status.total, Some(started_size)),
        failure_rate: status.total.failure_rate(),
        started_at: rollout.started_at.map(timestamp),
        stage_started_at: rollout.stage_started_at.map(timestamp),
        completed_at: rollout.completed_at.map(timestamp),
        created_at: timestamp(rollout.created_at),
        updated_at: timestamp(rollout.updated_at),
    }
}

fn overlap_view(overlap: &Overlap) -> OverlapView {
    OverlapView {
        rollout_id: overlap.rollout_id.clone(),
        name: overlap.name.clone(),
        state: overlap.state.as_str(),
        release_version: overlap.release_version.clone(),
        devices: overlap.devices,
    }
}

fn transition_view(transition: &Transition) -> TransitionView {
    TransitionView {
        from: transition.from.clone(),
        to: transition.to.clone(),
        stage: transition.stage + 1,
        actor: transition.actor.clone(),
        reason: transition.reason.clone(),
        at: timestamp(transition.at),
    }
}

fn parse_version(field: &str, value: &Option<String>) -> Result<Option<Version>, Error> {
    value.as_deref().map(|v| Version::parse(v).map_err(|e| Error::invalid("invalid_target", format!("target.{field}: {e}")))).transpose()
}

fn parse_target(body: &TargetBody) -> Result<Target, Error> {
    let hardware = body.hardware.iter().map(|h| HardwareId::parse(h).map(|h| h.as_str().to_string())).collect::<Result<Vec<_>, _>>()?;
    let channels = body
        .channels
        .iter()
        .map(|c| crate::domain::firmware::Channel::parse(c).map(|c| c.as_str().to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let tags = crate::domain::device::check_tags(&body.tags)?;
    Ok(Target {
        hardware,
        channels,
        tags,
        version_min: parse_version("version_min", &body.version_min)?,
        version_max: parse_version("version_max", &body.version_max)?,
        devices: None,
        group: body.group.clone(),
    })
}

fn parse_stages(bodies: Option<Vec<StageBody>>) -> Result<Vec<Stage>, Error> {
    let default_error = ErrorThreshold { count: None, percent: Some(DEFAULT_ERROR_PERCENT) };
    let Some(bodies) = bodies else {
        return Ok([1.0, 10.0, 50.0, 100.0]
            .into_iter()
            .map(|p| Stage { size: StageSize::Percent(p), success_percent: DEFAULT_SUCCESS_PERCENT, error: default_error, min_soak_s: 0 })
            .collect());
    };
    bodies
        .into_iter()
        .enumerate()
        .map(|(index, body)| {
            let size = match (body.percent, body.count) {
                (Some(p), None) => StageSize::Percent(p),
                (None, Some(c)) => StageSize::Count(c),
                _ => return Err(Error::invalid("invalid_stages", format!("stage {}: give either `percent` or `count`", index + 1))),
            };
            let error = match body.error_threshold {
                Some(ErrorThresholdBody { count: None, percent: None }) => {
                    return Err(Error::invalid(
                        "invalid_stages",
                        format!("stage {}: error_threshold needs `count` or `percent`", index + 1),
                    ));
                }
                Some(e) => ErrorThreshold { count: e.count, percent: e.percent },
                None => default_error,
            };
            Ok(Stage {
                size,
                success_percent: body.success_threshold.unwrap_or(DEFAULT_SUCCESS_PERCENT),
                error,
                min_soak_s: body.min_soak_s.unwrap_or(0),
            })
        })
        .collect()
}

fn parse_time(field: &str, value: &Option<String>) -> Result<Option<DateTime<Utc>>, Error> {
    value
        .as_deref()
        .map(|text| {
            DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| Error::invalid("invalid_options", format!("{field} must be an RFC 3339 time such as 2026-11-23T22:00:00Z")))
        })
        .transpose()
}

fn action_reason(body: &Bytes) -> Result<String, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(String::new());
    }
    let body: ActionBody = serde_json::from_slice(body)
        .map_err(|e| Error::invalid("invalid_json", format!("expected {{\"reason\": \"...\"}} or no body: {e}")))?;
    crate::domain::device::check_text("reason", "invalid_reason", body.reason.as_deref().unwrap_or(""), 1024)
}

async fn act(state: &AppState, id: &str, action: Action, body: &Bytes) -> ApiResult<Json<RolloutView>> {
    let reason = action_reason(body)?;
    service::act(&state.core, id, action, "operator", &reason).await?;
    let status = service::status(&state.core, id).await?;
    Ok(Json(rollout_view(&status)))
}

// ---- releases ----

/// Create a release from uploaded builds of one product and version. From then on its
/// builds are offered only through its rollouts (see docs/API.md, "Releases").
#[utoipa::path(
    post, path = "/api/v1/releases", tag = "rollouts",
    request_body = CreateReleaseBody,
    responses((status = 201, body = ReleaseView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = []), ("admin_key" = []))
)]
async fn create_release(
    State(state): State<AppState>,
    _admin: Admin,
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
    security(("bearer" = []), ("admin_key" = []))
)]
async fn list_releases(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(query): ApiQuery<ReleaseListQuery>,
) -> ApiResult<Json<ReleaseList>> {
    let releases = state.core.store.list_releases(query.product.as_deref()).await?;
    Ok(Json(ReleaseList { items: releases.iter().map(release_view).collect() }))
}

#[utoipa::path(
    get, path = "/api/v1/releases/{id}", tag = "rollouts",
    params(("id" = String, Path, description = "Release id")),
    responses((status = 200, body = ReleaseView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []), ("admin_key" = []))
)]
async fn get_release(State(state): State<AppState>, _admin: Admin, Path(id): Path<String>) -> ApiResult<Json<ReleaseView>> {
    Ok(Json(release_view(&service::find_release(&state.core, &id).await?)))
}

/// Delete a release that no rollout uses; its builds are offered directly again.
#[utoipa::path(
    delete, path = "/api/v1/releases/{id}", tag = "rollouts",
    params(("id" = String, Path, description = "Release id")),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = []), ("admin_key" = []))
)]
async fn delete_release(State(state): State<AppState>, _admin: Admin, Path(id): Path<String>) -> ApiResult<StatusCode> {
    service::delete_release(&state.core, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- groups ----

/// Save a group of devices that rollouts can target.
#[utoipa::path(
    post, path = "/api/v1/groups", tag = "rollouts",
    request_body = CreateGroupBody,
    responses((status = 201, body = GroupView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = []), ("admin_key" = []))
)]
async fn create_group(
    State(state): State<AppState>,
    _admin: Admin,
    ApiJson(body): ApiJson<CreateGroupBody>,
) -> ApiResult<(StatusCode, Json<GroupView>)> {
    let group = service::create_group(&state.core, &body.name, &body.devices).await?;
    Ok((StatusCode::CREATED, Json(group_view(&group))))
}

#[utoipa::path(
    get, path = "/api/v1/groups", tag = "rollouts",
    responses((status = 200, body = GroupList), (status = 401, body = ErrorBody)),
    security(("bearer" = []), ("admin_key" = []))
)]
async fn list_groups(State(state): State<AppState>, _admin: Admin) -> ApiResult<Json<GroupList>> {
    let groups = state.core.store.list_groups().await?;
    Ok(Json(GroupList { items: groups.iter().map(group_view).collect() }))
}

/// A group with its devices.
#[utoipa::path(
    get, path = "/api/v1/groups/{id}", tag = "rollouts",
    params(("id" = String, Path, description = "Group id")),
    responses((status = 200, body = GroupDetail), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []), ("admin_key" = []))
)]
async fn get_group(State(state): State<AppState>, _admin: Admin, Path(id): Path<String>) -> ApiResult<Json<GroupDetail>> {
    let (group, devices) = service::find_group(&state.core, &id).await?;
    Ok(Json(GroupDetail { group: group_view(&group), devices }))
}

/// Rename a group, add or remove devices. Running rollouts that target it follow at once.
#[utoipa::path(
    patch, path = "/api/v1/groups/{id}", tag = "rollouts",
    params(("id" = String, Path, description = "Group id")),
    request_body = PatchGroupBody,
    responses((status = 200, body = GroupView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = []), ("admin_key" = []))
)]
async fn patch_group(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
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
    security(("bearer" = []), ("admin_key" = []))
)]
async fn delete_group(State(state): State<AppState>, _admin: Admin, Path(id): Path<String>) -> ApiResult<StatusCode> {
    service::delete_group(&state.core, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- rollouts ----

/// Create a staged rollout of a release: a draft, or running with `start: true`, or
/// starting at `start_at`. The answer lists other rollouts whose targets share devices with
/// this one (those devices get the newer release).
#[utoipa::path(
    post, path = "/api/v1/rollouts", tag = "rollouts",
    request_body = CreateRolloutBody,
    responses((status = 201, body = RolloutCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = []), ("admin_key" = []))
)]
async fn create_rollout(
    State(state): State<AppState>,
    _admin: Admin,
    ApiJson(body): ApiJson<CreateRolloutBody>,
) -> ApiResult<(StatusCode, Json<RolloutCreated>)> {
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
    let (rollout, overlaps) = service::create_rollout(
        &state.core,
        NewRollout {
            name: body.name,
            release_id: body.release_id,
            target,
            devices: body.target.devices,
            stages,
            options,
            start: body.start,
        },
    )
    .await?;
    let status = service::status(&state.core, &rollout.id).await?;
    Ok((
        StatusCode::CREATED,
        Json(RolloutCreated { rollout: rollout_view(&status), overlaps: overlaps.iter().map(overlap_view).collect() }),
    ))
}

/// List rollouts, newest first.
#[utoipa::path(
    get, path = "/api/v1/rollouts", tag = "rollouts",
    params(RolloutListQuery),
    responses((status = 200, body = RolloutList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = []), ("admin_key" = []))
)]
async fn list_rollouts(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(query): ApiQuery<RolloutListQuery>,
) -> ApiResult<Json<RolloutList>> {
    let states = match &query.state {
        Some(text) => vec![RolloutState::parse(text)?],
        None => Vec::new(),
    };
    let rollouts = state.core.store.list_rollouts(&states, query.product.as_deref()).await?;
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
    security(("bearer" = []), ("admin_key" = []))
)]
async fn get_rollout(State(state): State<AppState>, _admin: Admin, Path(id): Path<String>) -> ApiResult<Json<RolloutView>> {
    Ok(Json(rollout_view(&service::status(&state.core, &id).await?)))
}

/// Every transition: who (operator or rule), when, why.
#[utoipa::path(
    get, path = "/api/v1/rollouts/{id}/history", tag = "rollouts",
    params(("id" = String, Path, description = "Rollout id")),
    responses((status = 200, body = History), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []), ("admin_key" = []))
)]
async fn rollout_history(State(state): State<AppState>, _admin: Admin, Path(id): Path<String>) -> ApiResult<Json<History>> {
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
            security(("bearer" = []), ("admin_key" = []))
        )]
        async fn $name(State(state): State<AppState>, _admin: Admin, Path(id): Path<String>, body: Bytes) -> ApiResult<Json<RolloutView>> {
            act(&state, &id, $action, &body).await
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

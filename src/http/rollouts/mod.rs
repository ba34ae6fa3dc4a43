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
use super::auth::{Operator, Viewer};
use super::error::{ApiBytes, ApiJson, ApiQuery, ApiResult, ErrorBody};
use super::firmware::timestamp;
use crate::domain::firmware::HardwareId;
use crate::domain::rollout::{
    Action, DEFAULT_SUCCESS_PERCENT, ErrorThreshold, Group, Release, RolloutOptions, RolloutState, Stage, StageSize, Tally, Target,
    Transition, Window,
};
use crate::domain::version::Version;
use crate::domain::{Error, GroupId, ReleaseId, RolloutId};
use crate::services::rollouts::{self as service, NewRelease, NewRollout, Overlap, RolloutStatus};

mod convert;
mod groups;
mod lifecycle;
mod releases;
mod wire;

use convert::*;
pub use groups::*;
pub use lifecycle::*;
pub use releases::*;
pub use wire::*;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_release, list_releases))
        .routes(routes!(get_release, delete_release))
        .routes(routes!(create_group, list_groups))
        .routes(routes!(get_group, patch_group, delete_group))
        .routes(routes!(create_rollout, list_rollouts))
        .routes(routes!(preview_rollout))
        .routes(routes!(get_rollout, delete_rollout))
        .routes(routes!(rollout_history))
        .routes(routes!(start_rollout))
        .routes(routes!(pause_rollout))
        .routes(routes!(resume_rollout))
        .routes(routes!(cancel_rollout))
        .routes(routes!(advance_rollout))
        .routes(routes!(rollback_rollout))
}

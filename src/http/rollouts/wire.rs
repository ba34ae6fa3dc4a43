//! The rollout API's wire types.

use super::*;

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
    pub release_id: String,
    pub name: String,
    pub state: &'static str,
    pub release_version: String,
    pub devices: u64,
}

/// One stage of a preview.
#[derive(Serialize, ToSchema)]
pub struct PreviewStage {
    /// 1-based.
    pub number: usize,
    pub percent: Option<f64>,
    pub count: Option<u64>,
    /// Devices this stage would add (not cumulative), if the rollout started now.
    pub devices: u64,
}

/// What a rollout would target (`POST /api/v1/rollouts/preview`).
#[derive(Serialize, ToSchema)]
pub struct RolloutPreview {
    /// Devices matching the target now.
    pub target_size: u64,
    pub stages: Vec<PreviewStage>,
    /// Other rollouts of the product whose targets share devices with this one.
    pub overlaps: Vec<OverlapView>,
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
    #[param(pattern = r"^(?:draft|running|paused|completed|cancelled|halted|rolled_back)$")]
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

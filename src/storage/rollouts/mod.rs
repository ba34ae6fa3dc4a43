//! Releases, device groups, rollouts, their devices and transitions, and the revision
//! counter replicas poll. Rollout definitions (target, stages, options) are stored as JSON.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{Any, AssertSqlSafe, Row};

use super::row::{self, Corrupt, Table, map_row, map_rows};
use super::sql::{self, Builder, violates};
use super::{Store, db_error, now_millis};
use crate::domain::firmware::{Channel, HardwareId, ProductName};
use crate::domain::rollout::{
    ErrorThreshold, Group, MemberState, Release, Rollout, RolloutOptions, RolloutState, Stage, StageSize, Target, Transition, Window,
};
use crate::domain::version::Version;
use crate::domain::{ArtifactId, DeviceId, Error, GroupId, ReleaseId, Result, RolloutId};

mod groups;
mod managed;
mod members;
mod records;
mod releases;
mod revision;

pub(super) const ROLLOUT_COLUMNS: &str = "id, name, release_id, product, target, stages, options, state, reason, current_stage, shares, stage_sizes, target_size, start_at, started_at, stage_started_at, counted_at, created_at, updated_at, completed_at";

/// A device of the product, as a target filter sees it (for counting targets).
#[derive(Debug)]
pub struct TargetRow {
    pub id: String,
    pub product: Option<String>,
    pub hardware: Option<String>,
    pub channel: String,
    pub version: Option<String>,
    pub tags: Vec<String>,
    pub created_at: i64,
}

/// A rollout's device, for rollbacks.
pub struct MemberRow {
    pub device_id: String,
    pub state: MemberState,
    pub from_version: Option<String>,
}

/// A change of a rollout's state or stage, applied only if the rollout is still as read.
pub struct TransitionWrite<'a> {
    pub rollout_id: &'a str,
    pub from: RolloutState,
    pub from_stage: usize,
    pub to: RolloutState,
    pub to_stage: usize,
    pub actor: &'a str,
    pub reason: &'a str,
    /// New shares and sizes (when a stage starts or targets were recounted).
    pub shares: Option<(&'a [f64], &'a [u64], u64)>,
    pub started: bool,
    /// Resuming after a halt: the failures so far are excused (the error threshold counts
    /// only later ones).
    pub excuse_failures: bool,
}

pub(super) async fn bump_revision(tx: &mut sqlx::Transaction<'_, Any>) -> Result<()> {
    sqlx::query("UPDATE rollout_revision SET n = n + 1 WHERE id = 1")
        .execute(&mut **tx)
        .await
        .map_err(|e| db_error(e, "failed to bump the rollout revision"))?;
    Ok(())
}

pub(super) async fn add_group_members(tx: &mut sqlx::Transaction<'_, Any>, id: &GroupId, device_ids: &[DeviceId]) -> Result<()> {
    for device_id in device_ids {
        let exists: i64 = sqlx::query("SELECT COUNT(*) AS n FROM device_group_member WHERE group_id = $1 AND device_id = $2")
            .bind(id.as_str())
            .bind(device_id.as_str())
            .fetch_one(&mut **tx)
            .await
            .map_err(|e| db_error(e, "failed to read a group member"))?
            .get("n");
        if exists == 0 {
            sqlx::query("INSERT INTO device_group_member (group_id, device_id) VALUES ($1, $2)")
                .bind(id.as_str())
                .bind(device_id.as_str())
                .execute(&mut **tx)
                .await
                .map_err(|e| db_error(e, "failed to add a group member"))?;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments, reason = "one row of the transition history, column by column")]
pub(super) async fn insert_transition(
    tx: &mut sqlx::Transaction<'_, Any>,
    rollout_id: &str,
    from: &str,
    to: &str,
    stage: usize,
    actor: &str,
    reason: &str,
    at: i64,
) -> Result<()> {
    sqlx::query("INSERT INTO rollout_transition (id, rollout_id, from_state, to_state, stage, actor, reason, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(rollout_id)
        .bind(from)
        .bind(to)
        .bind(stage as i64)
        .bind(actor)
        .bind(reason)
        .bind(at)
        .execute(&mut **tx)
        .await
        .map_err(|e| db_error(e, "failed to record a rollout transition"))?;
    Ok(())
}

/// Reads one text column of every row (ids, names).
pub(super) fn texts(rows: &[AnyRow], column: &str) -> Result<Vec<String>> {
    rows.iter().map(|r| r.try_get::<String, _>(column).map_err(|e| db_error(e, "failed to decode a row"))).collect()
}

// ---- rows ----

/// A `device` row, as target filters see it.
#[derive(sqlx::FromRow)]
pub(super) struct TargetDeviceRow {
    id: String,
    product: Option<String>,
    hardware: Option<String>,
    channel: String,
    version: Option<String>,
    tags: String,
    created_at: i64,
}

/// The columns of [`TargetDeviceRow`].
pub(super) const TARGET_COLUMNS: &str = "id, product, hardware, channel, version, tags, created_at";

impl Table for TargetDeviceRow {
    const TABLE: &'static str = "device";
    const KEY: &'static [&'static str] = &["id"];
}

impl TryFrom<TargetDeviceRow> for TargetRow {
    type Error = Corrupt;

    fn try_from(row: TargetDeviceRow) -> std::result::Result<TargetRow, Corrupt> {
        row::time("created_at", row.created_at)?;
        Ok(TargetRow {
            tags: row::json("tags", &row.tags)?,
            created_at: row.created_at,
            id: row.id,
            product: row.product,
            hardware: row.hardware,
            channel: row.channel,
            version: row.version,
        })
    }
}

/// A `firmware_release` row (its builds are read apart).
#[derive(sqlx::FromRow)]
pub(super) struct ReleaseRow {
    id: String,
    product: String,
    version: String,
    version_key: String,
    channel: String,
    notes: String,
    created_at: i64,
}

impl Table for ReleaseRow {
    const TABLE: &'static str = "firmware_release";
    const KEY: &'static [&'static str] = &["id"];
}

impl TryFrom<ReleaseRow> for Release {
    type Error = Corrupt;

    fn try_from(row: ReleaseRow) -> std::result::Result<Release, Corrupt> {
        Ok(Release {
            created_at: row::time("created_at", row.created_at)?,
            id: row.id.into(),
            product: row::parsed("product", &row.product, ProductName::parse)?,
            version: row.version,
            version_key: row::parsed("version_key", &row.version_key, |text| Ok(Version::parse(text)?))?,
            channel: row::parsed("channel", &row.channel, Channel::parse)?,
            notes: row.notes,
            artifact_ids: Vec::new(),
        })
    }
}

/// A `device_group` row with its number of members.
#[derive(sqlx::FromRow)]
pub(super) struct GroupRow {
    id: String,
    name: String,
    size: i64,
    created_at: i64,
    updated_at: i64,
}

impl Table for GroupRow {
    const TABLE: &'static str = "device_group";
    const KEY: &'static [&'static str] = &["id"];
}

impl TryFrom<GroupRow> for Group {
    type Error = Corrupt;

    fn try_from(row: GroupRow) -> std::result::Result<Group, Corrupt> {
        Ok(Group {
            size: row::int("size", row.size)?,
            created_at: row::time("created_at", row.created_at)?,
            updated_at: row::time("updated_at", row.updated_at)?,
            id: row.id.into(),
            name: row.name,
        })
    }
}

/// A `rollout` row.
#[derive(sqlx::FromRow)]
pub(super) struct RolloutRow {
    id: String,
    name: String,
    release_id: String,
    product: String,
    target: String,
    stages: String,
    options: String,
    state: String,
    reason: String,
    current_stage: i64,
    shares: String,
    stage_sizes: String,
    target_size: i64,
    start_at: Option<i64>,
    started_at: Option<i64>,
    stage_started_at: Option<i64>,
    counted_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
    completed_at: Option<i64>,
}

impl Table for RolloutRow {
    const TABLE: &'static str = "rollout";
    const KEY: &'static [&'static str] = &["id"];
}

impl TryFrom<RolloutRow> for Rollout {
    type Error = Corrupt;

    fn try_from(row: RolloutRow) -> std::result::Result<Rollout, Corrupt> {
        let start_at = row::time_opt("start_at", row.start_at)?;
        Ok(Rollout {
            target: row::json::<StoredTarget>("target", &row.target)?.into_target("target")?,
            stages: row::json::<Vec<StoredStage>>("stages", &row.stages)?
                .into_iter()
                .map(|stage| stage.into_stage("stages"))
                .collect::<std::result::Result<_, _>>()?,
            options: row::json::<StoredOptions>("options", &row.options)?.into_options("options", start_at)?,
            state: row::named("state", &row.state, |text| RolloutState::parse(text).ok())?,
            current_stage: row::int("current_stage", row.current_stage)?,
            shares: row::json("shares", &row.shares)?,
            stage_sizes: row::json("stage_sizes", &row.stage_sizes)?,
            target_size: row::int("target_size", row.target_size)?,
            started_at: row::time_opt("started_at", row.started_at)?,
            stage_started_at: row::time_opt("stage_started_at", row.stage_started_at)?,
            counted_at: row::time_opt("counted_at", row.counted_at)?,
            completed_at: row::time_opt("completed_at", row.completed_at)?,
            created_at: row::time("created_at", row.created_at)?,
            updated_at: row::time("updated_at", row.updated_at)?,
            id: row.id.into(),
            name: row.name,
            release_id: row.release_id.into(),
            product: row::parsed("product", &row.product, ProductName::parse)?,
            reason: row.reason,
        })
    }
}

/// A `rollout_member` row, as rollbacks and checks read it.
#[derive(sqlx::FromRow)]
pub(super) struct RolloutMemberRow {
    #[allow(dead_code, reason = "read to name the row in errors")]
    rollout_id: String,
    device_id: String,
    state: String,
    from_version: Option<String>,
}

impl Table for RolloutMemberRow {
    const TABLE: &'static str = "rollout_member";
    const KEY: &'static [&'static str] = &["rollout_id", "device_id"];
}

impl TryFrom<RolloutMemberRow> for MemberRow {
    type Error = Corrupt;

    fn try_from(row: RolloutMemberRow) -> std::result::Result<MemberRow, Corrupt> {
        Ok(MemberRow { state: member_state(&row.state)?, device_id: row.device_id, from_version: row.from_version })
    }
}

/// Devices of a rollout counted by (stage, state, excused).
#[derive(sqlx::FromRow)]
pub(super) struct TallyRow {
    stage: i64,
    state: String,
    excused: i64,
    n: i64,
}

impl Table for TallyRow {
    const TABLE: &'static str = "rollout_member";
    const KEY: &'static [&'static str] = &["stage", "state"];
}

impl TryFrom<TallyRow> for (usize, MemberState, bool, u64) {
    type Error = Corrupt;

    fn try_from(row: TallyRow) -> std::result::Result<(usize, MemberState, bool, u64), Corrupt> {
        Ok((row::int("stage", row.stage)?, member_state(&row.state)?, row::flag("excused", row.excused)?, row::int("n", row.n)?))
    }
}

/// A `rollout_transition` row.
#[derive(sqlx::FromRow)]
pub(super) struct TransitionRow {
    #[allow(dead_code, reason = "read to name the row in errors")]
    id: String,
    from_state: String,
    to_state: String,
    stage: i64,
    actor: String,
    reason: String,
    at: i64,
}

impl Table for TransitionRow {
    const TABLE: &'static str = "rollout_transition";
    const KEY: &'static [&'static str] = &["id"];
}

impl TryFrom<TransitionRow> for Transition {
    type Error = Corrupt;

    fn try_from(row: TransitionRow) -> std::result::Result<Transition, Corrupt> {
        Ok(Transition {
            stage: row::int("stage", row.stage)?,
            at: row::time("at", row.at)?,
            from: row.from_state,
            to: row.to_state,
            actor: row.actor,
            reason: row.reason,
        })
    }
}

/// A `managed_product` row.
#[derive(sqlx::FromRow)]
pub(super) struct ManagedProductRow {
    product: String,
    since: i64,
}

impl Table for ManagedProductRow {
    const TABLE: &'static str = "managed_product";
    const KEY: &'static [&'static str] = &["product"];
}

impl TryFrom<ManagedProductRow> for (String, DateTime<Utc>) {
    type Error = Corrupt;

    fn try_from(row: ManagedProductRow) -> std::result::Result<(String, DateTime<Utc>), Corrupt> {
        Ok((row.product, row::time("since", row.since)?))
    }
}

/// A rollout's target, for checks that read only that (`rollout` table).
#[derive(sqlx::FromRow)]
pub(super) struct RolloutTargetRow {
    #[allow(dead_code, reason = "read to name the row in errors")]
    id: String,
    target: String,
}

impl Table for RolloutTargetRow {
    const TABLE: &'static str = "rollout";
    const KEY: &'static [&'static str] = &["id"];
}

impl TryFrom<RolloutTargetRow> for Target {
    type Error = Corrupt;

    fn try_from(row: RolloutTargetRow) -> std::result::Result<Target, Corrupt> {
        row::json::<StoredTarget>("target", &row.target)?.into_target("target")
    }
}

/// A member state by its stored name.
fn member_state(text: &str) -> std::result::Result<MemberState, Corrupt> {
    row::named("state", text, |text| MemberState::ALL.into_iter().find(|state| state.as_str() == text))
}

// ---- JSON columns ----

/// The `target` column.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredTarget {
    hardware: Vec<HardwareId>,
    channels: Vec<Channel>,
    tags: Vec<String>,
    /// Canonical versions.
    version_min: Option<String>,
    version_max: Option<String>,
    /// Sorted, so equal targets are equal texts.
    devices: Option<Vec<DeviceId>>,
    group: Option<GroupId>,
}

impl StoredTarget {
    pub fn of(target: &Target) -> StoredTarget {
        let devices = target.devices.as_ref().map(|devices| {
            let mut devices: Vec<DeviceId> = devices.iter().cloned().collect();
            devices.sort();
            devices
        });
        StoredTarget {
            hardware: target.hardware.clone(),
            channels: target.channels.clone(),
            tags: target.tags.clone(),
            version_min: target.version_min.as_ref().map(Version::canonical),
            version_max: target.version_max.as_ref().map(Version::canonical),
            devices,
            group: target.group.clone(),
        }
    }

    fn into_target(self, column: &'static str) -> std::result::Result<Target, Corrupt> {
        let version = |text: Option<String>| {
            text.map(|v| Version::parse(&v).map_err(|e| Corrupt::new(column, format!("version `{v}`: {e}")))).transpose()
        };
        Ok(Target {
            version_min: version(self.version_min)?,
            version_max: version(self.version_max)?,
            hardware: self.hardware,
            channels: self.channels,
            tags: self.tags,
            devices: self.devices.map(|devices| devices.into_iter().collect()),
            group: self.group,
        })
    }
}

/// One stage in the `stages` column: exactly one of `percent` and `count`.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredStage {
    percent: Option<f64>,
    count: Option<u64>,
    success_percent: f64,
    error_count: Option<u64>,
    error_percent: Option<f64>,
    min_soak_s: u64,
}

impl StoredStage {
    pub fn of(stage: &Stage) -> StoredStage {
        let (percent, count) = match stage.size {
            StageSize::Percent(p) => (Some(p), None),
            StageSize::Count(c) => (None, Some(c)),
        };
        StoredStage {
            percent,
            count,
            success_percent: stage.success_percent,
            error_count: stage.error.count,
            error_percent: stage.error.percent,
            min_soak_s: stage.min_soak_s,
        }
    }

    fn into_stage(self, column: &'static str) -> std::result::Result<Stage, Corrupt> {
        let size = match (self.percent, self.count) {
            (Some(p), _) => StageSize::Percent(p),
            (None, Some(c)) => StageSize::Count(c),
            (None, None) => return Err(Corrupt::new(column, "a stage has neither a percent nor a count")),
        };
        Ok(Stage {
            size,
            success_percent: self.success_percent,
            error: ErrorThreshold { count: self.error_count, percent: self.error_percent },
            min_soak_s: self.min_soak_s,
        })
    }
}

/// The `options` column (`start_at` has a column of its own).
#[derive(Serialize, Deserialize)]
pub(super) struct StoredOptions {
    window: Option<StoredWindow>,
    max_concurrent: Option<u32>,
    forced: bool,
    dynamic: bool,
    device_deadline_s: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredWindow {
    days: Vec<String>,
    /// `HH:MM`.
    start: String,
    end: String,
    time_zone: String,
}

impl StoredOptions {
    pub fn of(options: &RolloutOptions) -> StoredOptions {
        StoredOptions {
            window: options.window.as_ref().map(|w| StoredWindow {
                days: w.day_names().into_iter().map(str::to_string).collect(),
                start: format!("{:02}:{:02}", w.start_min / 60, w.start_min % 60),
                end: format!("{:02}:{:02}", w.end_min / 60, w.end_min % 60),
                time_zone: w.time_zone.name().to_string(),
            }),
            max_concurrent: options.max_concurrent,
            forced: options.forced,
            dynamic: options.dynamic,
            device_deadline_s: options.device_deadline_s,
        }
    }

    fn into_options(self, column: &'static str, start_at: Option<DateTime<Utc>>) -> std::result::Result<RolloutOptions, Corrupt> {
        let window = self
            .window
            .map(|w| Window::parse(&w.days, &w.start, &w.end, Some(&w.time_zone)).map_err(|e| Corrupt::new(column, format!("window: {e}"))))
            .transpose()?;
        Ok(RolloutOptions {
            start_at,
            window,
            max_concurrent: self.max_concurrent,
            forced: self.forced,
            dynamic: self.dynamic,
            device_deadline_s: self.device_deadline_s,
        })
    }
}

/// A value serialized for a JSON column.
pub(super) fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("stored JSON types serialize")
}

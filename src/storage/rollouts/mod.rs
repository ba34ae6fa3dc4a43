//! Releases, device groups, rollouts, their devices and transitions, and the revision
//! counter replicas poll. Rollout definitions (target, stages, options) are stored as JSON.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::any::AnyRow;
use sqlx::{Any, AssertSqlSafe, Row};

use super::{Store, db_error, from_millis, is_unique_violation, now_millis};
use crate::domain::rollout::{
    ErrorThreshold, Group, MemberState, Release, Rollout, RolloutOptions, RolloutState, Stage, StageSize, Target, Transition, Window,
};
use crate::domain::version::Version;
use crate::domain::{Error, Result};

mod groups;
mod managed;
mod members;
mod records;
mod releases;
mod revision;

pub(super) const ROLLOUT_COLUMNS: &str = "id, name, release_id, product, target, stages, options, state, reason, current_stage, shares, stage_sizes, target_size, start_at, started_at, stage_started_at, counted_at, created_at, updated_at, completed_at";

/// A device of the product, as a target filter sees it (for counting targets).
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

pub(super) async fn add_group_members(tx: &mut sqlx::Transaction<'_, Any>, id: &str, device_ids: &[String]) -> Result<()> {
    for device_id in device_ids {
        let exists: i64 = sqlx::query("SELECT COUNT(*) AS n FROM device_group_member WHERE group_id = $1 AND device_id = $2")
            .bind(id)
            .bind(device_id)
            .fetch_one(&mut **tx)
            .await
            .map_err(|e| db_error(e, "failed to read a group member"))?
            .get("n");
        if exists == 0 {
            sqlx::query("INSERT INTO device_group_member (group_id, device_id) VALUES ($1, $2)")
                .bind(id)
                .bind(device_id)
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

pub(super) fn target_row(r: &AnyRow) -> TargetRow {
    let tags: String = r.get("tags");
    TargetRow {
        id: r.get("id"),
        product: r.get("product"),
        hardware: r.get("hardware"),
        channel: r.get("channel"),
        version: r.get("version"),
        tags: serde_json::from_str(&tags).unwrap_or_default(),
        created_at: r.get("created_at"),
    }
}

pub(super) fn release_from_row(row: &AnyRow) -> Result<Release> {
    let decode = |e: sqlx::Error| db_error(e, "failed to decode a release");
    Ok(Release {
        id: row.try_get("id").map_err(decode)?,
        product: row.try_get("product").map_err(decode)?,
        version: row.try_get("version").map_err(decode)?,
        version_key: row.try_get("version_key").map_err(decode)?,
        channel: row.try_get("channel").map_err(decode)?,
        notes: row.try_get("notes").map_err(decode)?,
        artifact_ids: Vec::new(),
        created_at: from_millis(row.try_get("created_at").map_err(decode)?),
    })
}

pub(super) fn group_from_row(row: &AnyRow) -> Result<Group> {
    let decode = |e: sqlx::Error| db_error(e, "failed to decode a group");
    Ok(Group {
        id: row.try_get("id").map_err(decode)?,
        name: row.try_get("name").map_err(decode)?,
        size: row.try_get::<i64, _>("size").map_err(decode)? as u64,
        created_at: from_millis(row.try_get("created_at").map_err(decode)?),
        updated_at: from_millis(row.try_get("updated_at").map_err(decode)?),
    })
}

pub(super) fn rollout_from_row(row: &AnyRow) -> Result<Rollout> {
    let decode = |e: sqlx::Error| db_error(e, "failed to decode a rollout");
    let corrupt = |what: &str| Error::Internal(anyhow::anyhow!("corrupt {what} in the rollout table"));
    let json = |name: &str| -> Result<Value> {
        let text: String = row.try_get(name).map_err(decode)?;
        serde_json::from_str(&text).map_err(|_| corrupt(name))
    };
    let time = |name: &str| -> Result<Option<DateTime<Utc>>> { Ok(row.try_get::<Option<i64>, _>(name).map_err(decode)?.map(from_millis)) };
    let state: String = row.try_get("state").map_err(decode)?;
    let shares = json("shares")?;
    let sizes = json("stage_sizes")?;
    Ok(Rollout {
        id: row.try_get("id").map_err(decode)?,
        name: row.try_get("name").map_err(decode)?,
        release_id: row.try_get("release_id").map_err(decode)?,
        product: row.try_get("product").map_err(decode)?,
        target: decode_target(&json("target")?).ok_or_else(|| corrupt("target"))?,
        stages: decode_stages(&json("stages")?).ok_or_else(|| corrupt("stages"))?,
        options: decode_options(&json("options")?, time("start_at")?).ok_or_else(|| corrupt("options"))?,
        state: RolloutState::parse(&state).map_err(|_| corrupt("state"))?,
        reason: row.try_get("reason").map_err(decode)?,
        current_stage: row.try_get::<i64, _>("current_stage").map_err(decode)? as usize,
        shares: shares.as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default(),
        stage_sizes: sizes.as_array().map(|a| a.iter().filter_map(Value::as_u64).collect()).unwrap_or_default(),
        target_size: row.try_get::<i64, _>("target_size").map_err(decode)? as u64,
        started_at: time("started_at")?,
        stage_started_at: time("stage_started_at")?,
        counted_at: time("counted_at")?,
        completed_at: time("completed_at")?,
        created_at: from_millis(row.try_get("created_at").map_err(decode)?),
        updated_at: from_millis(row.try_get("updated_at").map_err(decode)?),
    })
}

pub(super) fn encode_target(target: &Target) -> Value {
    let mut devices: Option<Vec<&String>> = target.devices.as_ref().map(|d| d.iter().collect());
    if let Some(devices) = &mut devices {
        devices.sort();
    }
    json!({
        "hardware": target.hardware,
        "channels": target.channels,
        "tags": target.tags,
        "version_min": target.version_min.as_ref().map(Version::canonical),
        "version_max": target.version_max.as_ref().map(Version::canonical),
        "devices": devices,
        "group": target.group,
    })
}

pub(super) fn decode_target(value: &Value) -> Option<Target> {
    let strings = |name: &str| -> Vec<String> {
        value[name].as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()).unwrap_or_default()
    };
    let version = |name: &str| value[name].as_str().and_then(|v| Version::parse(v).ok());
    Some(Target {
        hardware: strings("hardware"),
        channels: strings("channels"),
        tags: strings("tags"),
        version_min: version("version_min"),
        version_max: version("version_max"),
        devices: value["devices"].is_array().then(|| strings("devices").into_iter().collect()),
        group: value["group"].as_str().map(str::to_string),
    })
}

pub(super) fn encode_stages(stages: &[Stage]) -> Value {
    Value::Array(
        stages
            .iter()
            .map(|stage| {
                let (percent, count) = match stage.size {
                    StageSize::Percent(p) => (Some(p), None),
                    StageSize::Count(c) => (None, Some(c)),
                };
                json!({
                    "percent": percent,
                    "count": count,
                    "success_percent": stage.success_percent,
                    "error_count": stage.error.count,
                    "error_percent": stage.error.percent,
                    "min_soak_s": stage.min_soak_s,
                })
            })
            .collect(),
    )
}

pub(super) fn decode_stages(value: &Value) -> Option<Vec<Stage>> {
    value
        .as_array()?
        .iter()
        .map(|stage| {
            let size = match (stage["percent"].as_f64(), stage["count"].as_u64()) {
                (Some(p), _) => StageSize::Percent(p),
                (None, Some(c)) => StageSize::Count(c),
                _ => return None,
            };
            Some(Stage {
                size,
                success_percent: stage["success_percent"].as_f64()?,
                error: ErrorThreshold { count: stage["error_count"].as_u64(), percent: stage["error_percent"].as_f64() },
                min_soak_s: stage["min_soak_s"].as_u64().unwrap_or(0),
            })
        })
        .collect()
}

pub(super) fn encode_options(options: &RolloutOptions) -> Value {
    json!({
        "window": options.window.as_ref().map(|w| json!({
            "days": w.day_names(),
            "start": format!("{:02}:{:02}", w.start_min / 60, w.start_min % 60),
            "end": format!("{:02}:{:02}", w.end_min / 60, w.end_min % 60),
            "time_zone": w.time_zone.name(),
        })),
        "max_concurrent": options.max_concurrent,
        "forced": options.forced,
        "dynamic": options.dynamic,
        "device_deadline_s": options.device_deadline_s,
    })
}

pub(super) fn decode_options(value: &Value, start_at: Option<DateTime<Utc>>) -> Option<RolloutOptions> {
    let window = match &value["window"] {
        Value::Null => None,
        w => {
            let days: Vec<String> =
                w["days"].as_array().map(|a| a.iter().filter_map(|d| d.as_str().map(str::to_string)).collect()).unwrap_or_default();
            Some(Window::parse(&days, w["start"].as_str()?, w["end"].as_str()?, w["time_zone"].as_str()).ok()?)
        }
    };
    Some(RolloutOptions {
        start_at,
        window,
        max_concurrent: value["max_concurrent"].as_u64().map(|n| n.min(u64::from(u32::MAX)) as u32),
        forced: value["forced"].as_bool().unwrap_or(false),
        dynamic: value["dynamic"].as_bool().unwrap_or(true),
        device_deadline_s: value["device_deadline_s"].as_u64().unwrap_or(86_400),
    })
}

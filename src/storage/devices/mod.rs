//! Products, devices, tags, pairing keys, setup reports and update attempts.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{Any, AssertSqlSafe, Row};

use super::{Store, db_error, from_millis, is_unique_violation, now_millis};
use crate::domain::device::{
    Device, DeviceFilter, DevicePatch, DeviceSort, Product, Provisioning, SetupEvent, SetupStatus, UpdateAttempt, UpdateEvent, UpdateState,
};
use crate::domain::mac::Mac;
use crate::domain::{Error, Result};

mod attempts;
mod pairing;
mod products;
mod registry;
mod setup;

pub(super) const PRODUCT_COLUMNS: &str =
    "name, provisioning, provision_key, provision_secret_hash, poll_interval_s, hardware, public_secrets, created_at, updated_at";

pub(super) const DEVICE_COLUMNS: &str = "id, mac, name, product, hardware, channel, version, target_version, tags, attributes, metadata, owner, token_hash, last_seen, ip, setup_status, created_at, updated_at";
/// What reads of a device select: `DEVICE_COLUMNS` and the columns an insert leaves empty.
pub(super) const DEVICE_SELECT: &str = "id, mac, name, product, hardware, channel, version, target_version, tags, attributes, metadata, owner, token_hash, last_seen, ip, setup_status, created_at, updated_at, reprovision_until";

/// Rows per presence statement (the periodic flush writes about this many at a time).
pub(super) const PRESENCE_ROWS: usize = 100;

/// The columns of `ActiveRow`.
pub(super) const ACTIVE_COLUMNS: &str = "id, mac, product, hardware, channel, version, target_version, last_seen, ip, tags, created_at, \
    (SELECT COUNT(*) FROM update_attempt a WHERE a.device_id = device.id AND a.current = 1 AND a.state = 'installed') AS awaiting_boot";

/// What the fleet index keeps of a device (see `services::fleet`).
pub struct ActiveRow {
    pub id: String,
    pub mac: Mac,
    pub product: Option<String>,
    pub hardware: Option<String>,
    pub channel: String,
    pub version: Option<String>,
    pub target_version: Option<String>,
    pub last_seen: Option<DateTime<Utc>>,
    pub ip: Option<String>,
    pub tags: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// The device reported `installed` and has not checked in since.
    pub awaiting_boot: bool,
}

/// How many update attempts [`Store::open_attempts`] opens in one transaction.
pub(super) const ATTEMPT_BATCH: usize = 500;

/// A new update attempt.
#[derive(Clone)]
pub struct AttemptOffer<'a> {
    pub device_id: &'a str,
    pub artifact_id: &'a str,
    /// The release's id; for a build that belongs to no release, the build's own id.
    pub release_id: &'a str,
    pub from_version: Option<&'a str>,
    pub to_version: &'a str,
    pub rollout: Option<RolloutSlot<'a>>,
    /// The device's current attempt as the caller saw it (None: it had none). The new
    /// attempt opens only if that is still so.
    pub replacing: Option<&'a str>,
}

/// The rollout an attempt belongs to.
#[derive(Clone, Copy)]
pub struct RolloutSlot<'a> {
    pub rollout_id: &'a str,
    pub stage: usize,
    pub deadline_s: u64,
}

/// Fields of a new device.
pub struct NewDevice {
    pub mac: Mac,
    pub name: String,
    pub product: Option<String>,
    pub hardware: Option<String>,
    pub channel: String,
    pub version: Option<String>,
    pub target_version: Option<String>,
    pub tags: Vec<String>,
    pub attributes: Value,
    pub metadata: Value,
    pub owner: Option<String>,
    pub token_hash: Option<String>,
}

/// What a device reported about itself in a check-in.
#[derive(Debug, Default, Clone)]
pub struct DeviceReport {
    pub version: Option<String>,
    pub product: Option<String>,
    pub hardware: Option<String>,
    pub attributes: Option<Value>,
}

pub(super) async fn log_change(tx: &mut sqlx::Transaction<'_, Any>, device_id: &str) -> Result<()> {
    sqlx::query("INSERT INTO device_change (id, device_id, at) VALUES ($1, $2, $3)")
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(device_id)
        .bind(now_millis())
        .execute(&mut **tx)
        .await
        .map_err(|e| db_error(e, "failed to log a device change"))?;
    Ok(())
}

pub(super) async fn insert_event(
    tx: &mut sqlx::Transaction<'_, Any>,
    attempt_id: &str,
    state: UpdateState,
    progress: Option<u8>,
    message: Option<&str>,
    at: i64,
) -> Result<()> {
    insert_event_raw(tx, attempt_id, state, progress, message, at).await.map_err(|e| db_error(e, "failed to record an update event"))
}

pub(super) async fn insert_event_raw(
    tx: &mut sqlx::Transaction<'_, Any>,
    attempt_id: &str,
    state: UpdateState,
    progress: Option<u8>,
    message: Option<&str>,
    at: i64,
) -> std::result::Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO update_event (id, attempt_id, state, progress, message, at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(attempt_id)
        .bind(state.as_str())
        .bind(progress.map(i64::from))
        .bind(message.map(str::to_string))
        .bind(at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub(super) fn provision_key_taken() -> Error {
    Error::conflict("provision_key_taken", "another product already uses this provisioning key")
}

/// The `hardware` column: a JSON array, or NULL for "any".
pub(super) fn hardware_column(hardware: &[String]) -> Option<String> {
    (!hardware.is_empty()).then(|| serde_json::to_string(hardware).expect("strings serialize"))
}

pub(super) fn product_from_row(row: &AnyRow) -> Result<Product> {
    let decode = |e: sqlx::Error| db_error(e, "failed to decode a product row");
    let provisioning: String = row.try_get("provisioning").map_err(decode)?;
    Ok(Product {
        name: row.try_get("name").map_err(decode)?,
        provisioning: Provisioning::parse(&provisioning).unwrap_or(Provisioning::Preregistered),
        provision_key: row.try_get("provision_key").map_err(decode)?,
        provision_secret_hash: row.try_get("provision_secret_hash").map_err(decode)?,
        poll_interval_s: row.try_get::<i64, _>("poll_interval_s").map_err(decode)? as u32,
        hardware: match row.try_get::<Option<String>, _>("hardware").map_err(decode)? {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| Error::Internal(anyhow::anyhow!("corrupt hardware list in the product table: {e}")))?,
            None => Vec::new(),
        },
        public_secrets: row.try_get::<i64, _>("public_secrets").map_err(decode)? != 0,
        created_at: from_millis(row.try_get("created_at").map_err(decode)?),
        updated_at: from_millis(row.try_get("updated_at").map_err(decode)?),
    })
}

pub(super) fn active_from_row(row: &AnyRow) -> Result<ActiveRow> {
    let decode = |e: sqlx::Error| db_error(e, "failed to decode a device row");
    let mac: String = row.try_get("mac").map_err(decode)?;
    Ok(ActiveRow {
        id: row.try_get("id").map_err(decode)?,
        mac: Mac::parse(&mac).map_err(|_| Error::Internal(anyhow::anyhow!("corrupt MAC in the device table")))?,
        product: row.try_get("product").map_err(decode)?,
        hardware: row.try_get("hardware").map_err(decode)?,
        channel: row.try_get("channel").map_err(decode)?,
        version: row.try_get("version").map_err(decode)?,
        target_version: row.try_get("target_version").map_err(decode)?,
        last_seen: row.try_get::<Option<i64>, _>("last_seen").map_err(decode)?.map(from_millis),
        ip: row.try_get("ip").map_err(decode)?,
        tags: serde_json::from_str(&row.try_get::<String, _>("tags").map_err(decode)?).unwrap_or_default(),
        created_at: from_millis(row.try_get("created_at").map_err(decode)?),
        awaiting_boot: row.try_get::<i64, _>("awaiting_boot").map_err(decode)? > 0,
    })
}

pub(super) fn device_from_row(row: &AnyRow) -> Result<Device> {
    let decode = |e: sqlx::Error| db_error(e, "failed to decode a device row");
    let corrupt = |what: &str| Error::Internal(anyhow::anyhow!("corrupt {what} in the device table"));
    let mac: String = row.try_get("mac").map_err(decode)?;
    let tags: String = row.try_get("tags").map_err(decode)?;
    let attributes: String = row.try_get("attributes").map_err(decode)?;
    let metadata: String = row.try_get("metadata").map_err(decode)?;
    let setup_status: Option<String> = row.try_get("setup_status").map_err(decode)?;
    let token_hash: Option<String> = row.try_get("token_hash").map_err(decode)?;
    let setup_status = match setup_status {
        Some(json) => {
            let value: Value = serde_json::from_str(&json).map_err(|_| corrupt("setup status"))?;
            Some(SetupStatus {
                code: value["code"].as_u64().unwrap_or(0) as u8,
                title: value["title"].as_str().unwrap_or_default().to_string(),
                description: value["description"].as_str().unwrap_or_default().to_string(),
                at: from_millis(value["at"].as_i64().unwrap_or(0)),
            })
        }
        None => None,
    };
    Ok(Device {
        id: row.try_get("id").map_err(decode)?,
        mac: Mac::parse(&mac).map_err(|_| corrupt("MAC"))?,
        name: row.try_get("name").map_err(decode)?,
        product: row.try_get("product").map_err(decode)?,
        hardware: row.try_get("hardware").map_err(decode)?,
        channel: row.try_get("channel").map_err(decode)?,
        version: row.try_get("version").map_err(decode)?,
        target_version: row.try_get("target_version").map_err(decode)?,
        tags: serde_json::from_str(&tags).map_err(|_| corrupt("tags"))?,
        attributes: serde_json::from_str(&attributes).map_err(|_| corrupt("attributes"))?,
        metadata: serde_json::from_str(&metadata).map_err(|_| corrupt("metadata"))?,
        owner: row.try_get("owner").map_err(decode)?,
        has_token: token_hash.is_some(),
        last_seen: row.try_get::<Option<i64>, _>("last_seen").map_err(decode)?.map(from_millis),
        ip: row.try_get("ip").map_err(decode)?,
        setup_status,
        reprovision_until: row.try_get::<Option<i64>, _>("reprovision_until").map_err(decode)?.map(from_millis),
        created_at: from_millis(row.try_get("created_at").map_err(decode)?),
        updated_at: from_millis(row.try_get("updated_at").map_err(decode)?),
    })
}

pub(super) fn attempt_from_row(row: &AnyRow) -> Result<UpdateAttempt> {
    let decode = |e: sqlx::Error| db_error(e, "failed to decode an update attempt");
    Ok(UpdateAttempt {
        id: row.try_get("id").map_err(decode)?,
        device_id: row.try_get("device_id").map_err(decode)?,
        artifact_id: row.try_get("artifact_id").map_err(decode)?,
        release_id: row.try_get("release_id").map_err(decode)?,
        rollout_id: row.try_get("rollout_id").map_err(decode)?,
        from_version: row.try_get("from_version").map_err(decode)?,
        to_version: row.try_get("to_version").map_err(decode)?,
        state: UpdateState::parse_stored(&row.try_get::<String, _>("state").map_err(decode)?),
        progress: row.try_get::<Option<i64>, _>("progress").map_err(decode)?.map(|p| p.clamp(0, 100) as u8),
        message: row.try_get("message").map_err(decode)?,
        current: row.try_get::<i64, _>("current").map_err(decode)? == 1,
        created_at: from_millis(row.try_get("created_at").map_err(decode)?),
        updated_at: from_millis(row.try_get("updated_at").map_err(decode)?),
        events: Vec::new(),
    })
}

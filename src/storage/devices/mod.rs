//! Products, devices, tags, pairing keys, setup reports and update attempts.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{Any, AssertSqlSafe, Row};

use super::row::{self, Corrupt, Table, map_row, map_rows};
use super::sql::{self, Builder, violates};
use super::{Store, db_error, now_millis};
use crate::domain::device::{
    Device, DeviceFilter, DevicePatch, DeviceSort, DeviceUid, Product, Provisioning, SetupEvent, SetupStatus, UpdateAttempt, UpdateEvent,
    UpdateState,
};
use crate::domain::firmware::{Channel, HardwareId, ProductName};
use crate::domain::ids::{ArtifactId, DeviceId};
use crate::domain::mac::Mac;
use crate::domain::{Error, Result};

mod attempts;
mod dashboard;
mod pairing;
mod products;
mod registry;
mod setup;

pub use dashboard::SummaryRow;

pub(super) const PRODUCT_COLUMNS: &str =
    "name, provisioning, provision_key, provision_secret_hash, poll_interval_s, hardware, public_secrets, created_at, updated_at";

pub(super) const DEVICE_COLUMNS: &str = "id, mac, uid, name, product, hardware, channel, version, target_version, tags, attributes, metadata, owner, token_hash, last_seen, ip, setup_status, created_at, updated_at";
/// What reads of a device select: `DEVICE_COLUMNS` and the columns an insert leaves empty.
pub(super) const DEVICE_SELECT: &str = "id, mac, uid, name, product, hardware, channel, version, target_version, tags, attributes, metadata, owner, token_hash, last_seen, ip, setup_status, created_at, updated_at, reprovision_until";

/// Rows per presence statement (the periodic flush writes about this many at a time).
pub(super) const PRESENCE_ROWS: usize = 100;

/// The columns of [`ActiveDeviceRow`].
pub(super) const ACTIVE_COLUMNS: &str = "id, mac, product, hardware, channel, version, target_version, last_seen, ip, tags, created_at, \
    (SELECT COUNT(*) FROM update_attempt a WHERE a.device_id = device.id AND a.current = 1 AND a.state = 'installed') AS awaiting_boot";

/// What the fleet index keeps of a device (see `services::fleet`).
#[derive(Debug)]
pub struct ActiveRow {
    pub id: DeviceId,
    pub mac: Option<Mac>,
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
    pub mac: Option<Mac>,
    pub uid: Option<DeviceUid>,
    pub name: String,
    pub product: Option<ProductName>,
    pub hardware: Option<HardwareId>,
    pub channel: Channel,
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
    pub product: Option<ProductName>,
    pub hardware: Option<HardwareId>,
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
pub(super) fn hardware_column(hardware: &[HardwareId]) -> Option<String> {
    (!hardware.is_empty()).then(|| serde_json::to_string(hardware).expect("strings serialize"))
}

// ---- rows ----

/// A `product` row.
#[derive(sqlx::FromRow)]
pub(super) struct ProductRow {
    name: String,
    provisioning: String,
    provision_key: Option<String>,
    provision_secret_hash: Option<String>,
    poll_interval_s: i64,
    hardware: Option<String>,
    public_secrets: i64,
    created_at: i64,
    updated_at: i64,
}

impl Table for ProductRow {
    const TABLE: &'static str = "product";
    const KEY: &'static [&'static str] = &["name"];
}

impl TryFrom<ProductRow> for Product {
    type Error = Corrupt;

    fn try_from(row: ProductRow) -> std::result::Result<Product, Corrupt> {
        Ok(Product {
            provisioning: row::named("provisioning", &row.provisioning, |text| Provisioning::parse(text).ok())?,
            provision_key: row.provision_key,
            provision_secret_hash: row.provision_secret_hash,
            poll_interval_s: row::int("poll_interval_s", row.poll_interval_s)?,
            hardware: row::parsed_list(
                "hardware",
                row::json_opt::<Vec<String>>("hardware", row.hardware.as_deref())?.unwrap_or_default(),
                HardwareId::parse,
            )?,
            public_secrets: row::flag("public_secrets", row.public_secrets)?,
            created_at: row::time("created_at", row.created_at)?,
            updated_at: row::time("updated_at", row.updated_at)?,
            name: row::parsed("name", &row.name, ProductName::parse)?,
        })
    }
}

/// A `device` row, as [`DEVICE_SELECT`] reads it.
#[derive(sqlx::FromRow)]
pub(super) struct DeviceRow {
    id: String,
    mac: Option<String>,
    uid: Option<String>,
    name: String,
    product: Option<String>,
    hardware: Option<String>,
    channel: String,
    version: Option<String>,
    target_version: Option<String>,
    tags: String,
    attributes: String,
    metadata: String,
    owner: Option<String>,
    token_hash: Option<String>,
    last_seen: Option<i64>,
    ip: Option<String>,
    setup_status: Option<String>,
    created_at: i64,
    updated_at: i64,
    reprovision_until: Option<i64>,
}

impl Table for DeviceRow {
    const TABLE: &'static str = "device";
    const KEY: &'static [&'static str] = &["id"];
}

impl TryFrom<DeviceRow> for Device {
    type Error = Corrupt;

    fn try_from(row: DeviceRow) -> std::result::Result<Device, Corrupt> {
        Ok(Device {
            mac: row.mac.as_deref().map(|m| mac("mac", m)).transpose()?,
            uid: row::parsed_opt("uid", row.uid.as_deref(), DeviceUid::parse)?,
            tags: row::json("tags", &row.tags)?,
            attributes: row::json("attributes", &row.attributes)?,
            metadata: row::json("metadata", &row.metadata)?,
            has_token: row.token_hash.is_some(),
            last_seen: row::time_opt("last_seen", row.last_seen)?,
            setup_status: row::json_opt::<StoredSetupStatus>("setup_status", row.setup_status.as_deref())?
                .map(|s| s.into_status("setup_status"))
                .transpose()?,
            reprovision_until: row::time_opt("reprovision_until", row.reprovision_until)?,
            created_at: row::time("created_at", row.created_at)?,
            updated_at: row::time("updated_at", row.updated_at)?,
            id: row.id.into(),
            name: row.name,
            product: row::parsed_opt("product", row.product.as_deref(), ProductName::parse)?,
            hardware: row::parsed_opt("hardware", row.hardware.as_deref(), HardwareId::parse)?,
            channel: row::parsed("channel", &row.channel, Channel::parse)?,
            version: row.version,
            target_version: row.target_version,
            owner: row.owner,
            ip: row.ip,
        })
    }
}

/// The `setup_status` column: the last setup report (JSON).
#[derive(Serialize, Deserialize)]
pub(super) struct StoredSetupStatus {
    pub code: u8,
    pub title: String,
    pub description: String,
    /// Unix milliseconds.
    pub at: i64,
}

impl StoredSetupStatus {
    fn into_status(self, column: &'static str) -> std::result::Result<SetupStatus, Corrupt> {
        Ok(SetupStatus { code: self.code, title: self.title, description: self.description, at: row::time(column, self.at)? })
    }
}

/// A `device` row, as [`ACTIVE_COLUMNS`] reads it (the fleet index's entry).
#[derive(sqlx::FromRow)]
pub(super) struct ActiveDeviceRow {
    id: String,
    mac: Option<String>,
    product: Option<String>,
    hardware: Option<String>,
    channel: String,
    version: Option<String>,
    target_version: Option<String>,
    last_seen: Option<i64>,
    ip: Option<String>,
    tags: String,
    created_at: i64,
    awaiting_boot: i64,
}

impl Table for ActiveDeviceRow {
    const TABLE: &'static str = "device";
    const KEY: &'static [&'static str] = &["id"];
}

impl TryFrom<ActiveDeviceRow> for ActiveRow {
    type Error = Corrupt;

    fn try_from(row: ActiveDeviceRow) -> std::result::Result<ActiveRow, Corrupt> {
        Ok(ActiveRow {
            mac: row.mac.as_deref().map(|m| mac("mac", m)).transpose()?,
            last_seen: row::time_opt("last_seen", row.last_seen)?,
            tags: row::json("tags", &row.tags)?,
            created_at: row::time("created_at", row.created_at)?,
            awaiting_boot: row.awaiting_boot > 0,
            id: row.id.into(),
            product: row.product,
            hardware: row.hardware,
            channel: row.channel,
            version: row.version,
            target_version: row.target_version,
            ip: row.ip,
        })
    }
}

/// [`ActiveDeviceRow`] and the token digest (the fleet index's start-up load).
#[derive(sqlx::FromRow)]
pub(super) struct TokenHolderRow {
    token_hash: String,
    #[sqlx(flatten)]
    device: ActiveDeviceRow,
}

impl Table for TokenHolderRow {
    const TABLE: &'static str = "device";
    const KEY: &'static [&'static str] = &["id"];
}

impl TryFrom<TokenHolderRow> for (String, ActiveRow) {
    type Error = Corrupt;

    fn try_from(row: TokenHolderRow) -> std::result::Result<(String, ActiveRow), Corrupt> {
        Ok((row.token_hash, row.device.try_into()?))
    }
}

/// The columns of [`AttemptRow`].
pub(super) const ATTEMPT_COLUMNS: &str = "id, device_id, artifact_id, release_id, rollout_id, action_id, from_version, to_version, state, progress, message, current, created_at, updated_at";

/// An `update_attempt` row.
#[derive(sqlx::FromRow)]
pub(super) struct AttemptRow {
    id: String,
    device_id: String,
    artifact_id: String,
    release_id: String,
    rollout_id: Option<String>,
    action_id: Option<i64>,
    from_version: Option<String>,
    to_version: String,
    state: String,
    progress: Option<i64>,
    message: Option<String>,
    current: i64,
    created_at: i64,
    updated_at: i64,
}

impl Table for AttemptRow {
    const TABLE: &'static str = "update_attempt";
    const KEY: &'static [&'static str] = &["id"];
}

impl TryFrom<AttemptRow> for UpdateAttempt {
    type Error = Corrupt;

    fn try_from(row: AttemptRow) -> std::result::Result<UpdateAttempt, Corrupt> {
        Ok(UpdateAttempt {
            state: row::named("state", &row.state, update_state)?,
            progress: progress("progress", row.progress)?,
            current: row::flag("current", row.current)?,
            created_at: row::time("created_at", row.created_at)?,
            updated_at: row::time("updated_at", row.updated_at)?,
            id: row.id.into(),
            device_id: row.device_id.into(),
            artifact_id: row.artifact_id.into(),
            release_id: row.release_id.into(),
            rollout_id: row.rollout_id.map(Into::into),
            action_id: row.action_id,
            from_version: row.from_version,
            to_version: row.to_version,
            message: row.message,
            events: Vec::new(),
        })
    }
}

/// An `update_event` row.
#[derive(sqlx::FromRow)]
pub(super) struct UpdateEventRow {
    #[allow(dead_code, reason = "read to name the row in errors")]
    id: String,
    state: String,
    progress: Option<i64>,
    message: Option<String>,
    at: i64,
}

impl Table for UpdateEventRow {
    const TABLE: &'static str = "update_event";
    const KEY: &'static [&'static str] = &["id"];
}

impl TryFrom<UpdateEventRow> for UpdateEvent {
    type Error = Corrupt;

    fn try_from(row: UpdateEventRow) -> std::result::Result<UpdateEvent, Corrupt> {
        Ok(UpdateEvent {
            state: row::named("state", &row.state, update_state)?,
            progress: progress("progress", row.progress)?,
            message: row.message,
            at: row::time("at", row.at)?,
        })
    }
}

/// A `setup_event` row.
#[derive(sqlx::FromRow)]
pub(super) struct SetupEventRow {
    #[allow(dead_code, reason = "read to name the row in errors")]
    id: String,
    code: i64,
    title: String,
    description: String,
    at: i64,
}

impl Table for SetupEventRow {
    const TABLE: &'static str = "setup_event";
    const KEY: &'static [&'static str] = &["id"];
}

impl TryFrom<SetupEventRow> for SetupEvent {
    type Error = Corrupt;

    fn try_from(row: SetupEventRow) -> std::result::Result<SetupEvent, Corrupt> {
        Ok(SetupEvent { code: row::int("code", row.code)?, title: row.title, description: row.description, at: row::time("at", row.at)? })
    }
}

fn mac(column: &'static str, text: &str) -> std::result::Result<Mac, Corrupt> {
    Mac::parse(text).map_err(|e| Corrupt::new(column, e.to_string()))
}

/// A progress in percent (0-100).
fn progress(column: &'static str, value: Option<i64>) -> std::result::Result<Option<u8>, Corrupt> {
    match value {
        Some(p) if !(0..=100).contains(&p) => Err(Corrupt::new(column, format!("{p} is not a percentage"))),
        Some(p) => Ok(Some(p as u8)),
        None => Ok(None),
    }
}

/// An update state by its stored name (exactly as [`UpdateState::as_str`] writes it).
pub(super) fn update_state(text: &str) -> Option<UpdateState> {
    use UpdateState::*;
    // Exhaustive: a new state fails to compile here until it is added to `ALL`.
    let _every_state_is_listed = |state: UpdateState| match state {
        Offered | Downloading | Downloaded | Installing | Installed | Failed | Rejected | Succeeded | Cancelled => (),
    };
    const ALL: [UpdateState; 9] = [Offered, Downloading, Downloaded, Installing, Installed, Failed, Rejected, Succeeded, Cancelled];
    ALL.into_iter().find(|state| state.as_str() == text)
}

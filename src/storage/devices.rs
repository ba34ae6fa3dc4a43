//! Products, devices, tags, pairing keys, setup reports and update attempts.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{Any, AssertSqlSafe, Row};

use super::{Store, db_error, from_millis, is_unique_violation, now_millis};
use crate::domain::device::{Device, Product, Provisioning, SetupEvent, SetupStatus, UpdateAttempt, UpdateEvent, UpdateState};
use crate::domain::mac::Mac;
use crate::domain::{Error, Result};

const PRODUCT_COLUMNS: &str =
    "name, provisioning, provision_key, provision_secret_hash, poll_interval_s, hardware, public_secrets, created_at, updated_at";

const DEVICE_COLUMNS: &str = "id, mac, name, product, hardware, channel, version, target_version, tags, attributes, metadata, owner, token_hash, last_seen, ip, setup_status, created_at, updated_at";
/// What reads of a device select: `DEVICE_COLUMNS` and the columns an insert leaves empty.
const DEVICE_SELECT: &str = "id, mac, name, product, hardware, channel, version, target_version, tags, attributes, metadata, owner, token_hash, last_seen, ip, setup_status, created_at, updated_at, reprovision_until";

/// Rows per presence statement (the periodic flush writes about this many at a time).
const PRESENCE_ROWS: usize = 100;

/// The columns of `ActiveRow`.
const ACTIVE_COLUMNS: &str = "id, mac, product, hardware, channel, version, target_version, last_seen, ip, tags, created_at, \
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
const ATTEMPT_BATCH: usize = 500;

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

/// Operator changes to a device; `Some(None)` clears a field.
#[derive(Debug, Default, Clone)]
pub struct DevicePatch {
    pub name: Option<String>,
    pub product: Option<Option<String>>,
    pub hardware: Option<Option<String>>,
    pub channel: Option<String>,
    pub target_version: Option<Option<String>>,
    pub tags: Option<Vec<String>>,
    pub metadata: Option<Value>,
    pub owner: Option<Option<String>>,
    /// Until then, the device may provision again without its token; `Some(None)` closes it.
    pub reprovision_until: Option<Option<DateTime<Utc>>>,
}

/// What a device reported about itself in a check-in.
#[derive(Debug, Default, Clone)]
pub struct DeviceReport {
    pub version: Option<String>,
    pub product: Option<String>,
    pub hardware: Option<String>,
    pub attributes: Option<Value>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceSort {
    #[default]
    NewestFirst,
    OldestFirst,
    LastSeen,
    Name,
    Mac,
}

#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    pub product: Option<String>,
    pub hardware: Option<String>,
    pub version: Option<String>,
    pub tag: Option<String>,
    /// `Some(true)`: seen since the cut-off; `Some(false)`: not.
    pub online_since: Option<(bool, i64)>,
    pub last_seen_before: Option<i64>,
    pub last_seen_after: Option<i64>,
    pub owner: Option<String>,
    pub search: Option<String>,
    pub sort: DeviceSort,
    pub limit: u32,
    pub offset: u64,
}

impl Store {
    // ---- products ----

    pub async fn find_product(&self, name: &str) -> Result<Option<Product>> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {PRODUCT_COLUMNS} FROM product WHERE name = $1")))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a product"))?;
        row.map(|r| product_from_row(&r)).transpose()
    }

    pub async fn list_products(&self) -> Result<Vec<Product>> {
        let rows = sqlx::query(AssertSqlSafe(format!("SELECT {PRODUCT_COLUMNS} FROM product ORDER BY name")))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to list products"))?;
        rows.iter().map(product_from_row).collect()
    }

    /// Creates or replaces a product's policy.
    pub async fn upsert_product(&self, product: &Product) -> Result<Product> {
        let now = now_millis();
        let updated = sqlx::query(
            "UPDATE product SET provisioning = $1, provision_key = $2, provision_secret_hash = $3, poll_interval_s = $4, updated_at = $5, \
             hardware = $6, public_secrets = $7 WHERE name = $8",
        )
        .bind(product.provisioning.as_str())
        .bind(product.provision_key.clone())
        .bind(product.provision_secret_hash.clone())
        .bind(i64::from(product.poll_interval_s))
        .bind(now)
        .bind(hardware_column(&product.hardware))
        .bind(i64::from(product.public_secrets))
        .bind(&product.name)
        .execute(&self.pool)
        .await;
        let updated = match updated {
            Ok(result) => result.rows_affected(),
            Err(e) if is_unique_violation(&e) => return Err(provision_key_taken()),
            Err(e) => return Err(db_error(e, "failed to update a product")),
        };
        if updated == 0 {
            let inserted = sqlx::query(
                "INSERT INTO product (name, provisioning, provision_key, provision_secret_hash, poll_interval_s, hardware, public_secrets, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&product.name)
            .bind(product.provisioning.as_str())
            .bind(product.provision_key.clone())
            .bind(product.provision_secret_hash.clone())
            .bind(i64::from(product.poll_interval_s))
            .bind(hardware_column(&product.hardware))
            .bind(i64::from(product.public_secrets))
            .bind(now)
            .bind(now)
            .execute(&self.pool)
            .await;
            match inserted {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => {
                    // Either the name was created concurrently or the key is taken.
                    if self.find_product(&product.name).await?.is_none() {
                        return Err(provision_key_taken());
                    }
                    return Box::pin(self.upsert_product(product)).await;
                }
                Err(e) => return Err(db_error(e, "failed to insert a product")),
            }
        }
        self.find_product(&product.name).await?.ok_or_else(|| Error::Internal(anyhow::anyhow!("product vanished after upsert")))
    }

    pub async fn find_product_by_provision_key(&self, key: &str) -> Result<Option<Product>> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {PRODUCT_COLUMNS} FROM product WHERE provision_key = $1")))
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a product"))?;
        row.map(|r| product_from_row(&r)).transpose()
    }

    // ---- devices ----

    pub async fn insert_device(&self, new: &NewDevice) -> Result<Device> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_millis();
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        let inserted = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO device ({DEVICE_COLUMNS}, token_created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, NULL, NULL, NULL, $14, $15, $16)"
        )))
        .bind(&id)
        .bind(new.mac.canonical())
        .bind(&new.name)
        .bind(new.product.clone())
        .bind(new.hardware.clone())
        .bind(&new.channel)
        .bind(new.version.clone())
        .bind(new.target_version.clone())
        .bind(serde_json::to_string(&new.tags).expect("tags serialize"))
        .bind(new.attributes.to_string())
        .bind(new.metadata.to_string())
        .bind(new.owner.clone())
        .bind(new.token_hash.clone())
        .bind(now)
        .bind(now)
        .bind(new.token_hash.as_ref().map(|_| now))
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(Error::conflict("device_exists", format!("a device with MAC {} is already registered", new.mac)));
            }
            Err(e) => return Err(db_error(e, "failed to insert a device")),
        }
        for tag in &new.tags {
            sqlx::query("INSERT INTO device_tag (device_id, tag) VALUES ($1, $2)")
                .bind(&id)
                .bind(tag)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error(e, "failed to tag a device"))?;
        }
        tx.commit().await.map_err(|e| db_error(e, "failed to commit a device"))?;
        self.find_device(&id).await?.ok_or_else(|| Error::Internal(anyhow::anyhow!("device vanished after insert")))
    }

    pub async fn find_device(&self, id: &str) -> Result<Option<Device>> {
        self.find_device_where("id = $1", id).await
    }

    pub async fn find_device_by_mac(&self, mac: &Mac) -> Result<Option<Device>> {
        self.find_device_where("mac = $1", &mac.canonical()).await
    }

    pub async fn find_device_by_token_hash(&self, token_hash: &str) -> Result<Option<Device>> {
        self.find_device_where("token_hash = $1", token_hash).await
    }

    async fn find_device_where(&self, condition: &str, value: &str) -> Result<Option<Device>> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {DEVICE_SELECT} FROM device WHERE {condition}")))
            .bind(value)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a device"))?;
        row.map(|r| device_from_row(&r)).transpose()
    }

    /// The index entry of the device holding a token (by digest), without the device's
    /// JSON fields: the fleet index's miss path.
    pub async fn find_active_device(&self, token_hash: &str) -> Result<Option<ActiveRow>> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {ACTIVE_COLUMNS} FROM device WHERE token_hash = $1")))
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a device"))?;
        row.map(|r| active_from_row(&r)).transpose()
    }

    /// Index entries of devices holding a token, in id order after `after`: the fleet
    /// index's start-up load, a page at a time.
    pub async fn list_active_devices(&self, after: &str, limit: u32) -> Result<Vec<(String, ActiveRow)>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ACTIVE_COLUMNS}, token_hash FROM device WHERE token_hash IS NOT NULL AND id > $1 ORDER BY id LIMIT $2"
        )))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to list devices"))?;
        rows.iter()
            .map(|r| {
                let token_hash: String = r.try_get("token_hash").map_err(|e| db_error(e, "failed to decode a device row"))?;
                Ok((token_hash, active_from_row(r)?))
            })
            .collect()
    }

    pub async fn list_devices(&self, filter: &DeviceFilter) -> Result<(Vec<Device>, u64)> {
        let mut conditions: Vec<String> = Vec::new();
        let mut texts: Vec<String> = Vec::new();
        let mut numbers: Vec<(usize, i64)> = Vec::new();
        let mut next = 0usize;
        let mut text = |condition: &str, value: String, conditions: &mut Vec<String>| {
            next += 1;
            texts.push(value);
            conditions.push(condition.replace('?', &format!("${next}")));
            next
        };
        if let Some(v) = &filter.product {
            text("product = ?", v.clone(), &mut conditions);
        }
        if let Some(v) = &filter.hardware {
            text("hardware = ?", v.to_ascii_lowercase(), &mut conditions);
        }
        if let Some(v) = &filter.version {
            text("version = ?", v.clone(), &mut conditions);
        }
        if let Some(v) = &filter.owner {
            text("owner = ?", v.clone(), &mut conditions);
        }
        if let Some(v) = &filter.tag {
            text("id IN (SELECT device_id FROM device_tag WHERE tag = ?)", v.clone(), &mut conditions);
        }
        if let Some(q) = &filter.search {
            let pattern = format!("%{}%", q.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
            // One placeholder, used four times (both databases allow reusing `$n`).
            text(
                "(LOWER(name) LIKE ? ESCAPE '\\' OR LOWER(mac) LIKE ? ESCAPE '\\' OR LOWER(COALESCE(owner, '')) LIKE ? ESCAPE '\\' OR id LIKE ? ESCAPE '\\')",
                pattern,
                &mut conditions,
            );
        }
        // Numbers are bound after all texts.
        let mut number_conditions = Vec::new();
        if let Some((online, cutoff)) = filter.online_since {
            number_conditions.push((if online { "last_seen >= ?" } else { "(last_seen IS NULL OR last_seen < ?)" }, cutoff));
        }
        if let Some(before) = filter.last_seen_before {
            number_conditions.push(("last_seen < ?", before));
        }
        if let Some(after) = filter.last_seen_after {
            number_conditions.push(("last_seen > ?", after));
        }
        for (condition, value) in number_conditions {
            next += 1;
            numbers.push((next, value));
            conditions.push(condition.replace('?', &format!("${next}")));
        }
        let where_clause = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
        let order = match filter.sort {
            DeviceSort::NewestFirst => "created_at DESC, id DESC",
            DeviceSort::OldestFirst => "created_at ASC, id ASC",
            DeviceSort::LastSeen => "last_seen DESC, id DESC",
            DeviceSort::Name => "name ASC, id ASC",
            DeviceSort::Mac => "mac ASC",
        };
        let bind_all = |sql: String| {
            let mut query = sqlx::query::<Any>(AssertSqlSafe(sql));
            for value in &texts {
                query = query.bind(value.clone());
            }
            for (_, value) in &numbers {
                query = query.bind(*value);
            }
            query
        };
        let total: i64 = bind_all(format!("SELECT COUNT(*) AS n FROM device {where_clause}"))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to count devices"))?
            .get("n");
        let rows = bind_all(format!(
            "SELECT {DEVICE_SELECT} FROM device {where_clause} ORDER BY {order} LIMIT {} OFFSET {}",
            filter.limit, filter.offset
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to list devices"))?;
        let devices = rows.iter().map(device_from_row).collect::<Result<Vec<_>>>()?;
        Ok((devices, total as u64))
    }

    pub async fn count_devices(&self) -> Result<u64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM device")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to count devices"))?;
        Ok(row.get::<i64, _>("n") as u64)
    }

    pub async fn update_device(&self, id: &str, patch: &DevicePatch) -> Result<Option<Device>> {
        let Some(current) = self.find_device(id).await? else { return Ok(None) };
        let name = patch.name.clone().unwrap_or(current.name);
        let product = patch.product.clone().unwrap_or(current.product);
        let hardware = patch.hardware.clone().unwrap_or(current.hardware);
        let channel = patch.channel.clone().unwrap_or(current.channel);
        let target_version = patch.target_version.clone().unwrap_or(current.target_version);
        let metadata = patch.metadata.clone().unwrap_or(current.metadata);
        let owner = patch.owner.clone().unwrap_or(current.owner);
        let reprovision_until = patch.reprovision_until.unwrap_or(current.reprovision_until);
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        sqlx::query(
            "UPDATE device SET name = $1, product = $2, hardware = $3, channel = $4, target_version = $5, metadata = $6, owner = $7, updated_at = $8, \
             reprovision_until = $9 WHERE id = $10",
        )
        .bind(name)
        .bind(product)
        .bind(hardware)
        .bind(channel)
        .bind(target_version)
        .bind(metadata.to_string())
        .bind(owner)
        .bind(now_millis())
        .bind(reprovision_until.map(|t| t.timestamp_millis()))
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(e, "failed to update a device"))?;
        if let Some(tags) = &patch.tags {
            sqlx::query("UPDATE device SET tags = $1 WHERE id = $2")
                .bind(serde_json::to_string(tags).expect("tags serialize"))
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error(e, "failed to update tags"))?;
            sqlx::query("DELETE FROM device_tag WHERE device_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error(e, "failed to update tags"))?;
            for tag in tags {
                sqlx::query("INSERT INTO device_tag (device_id, tag) VALUES ($1, $2)")
                    .bind(id)
                    .bind(tag)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| db_error(e, "failed to update tags"))?;
            }
        }
        log_change(&mut tx, id).await?;
        tx.commit().await.map_err(|e| db_error(e, "failed to commit a device update"))?;
        self.find_device(id).await
    }

    /// Writes what a device reported (only the fields given).
    pub async fn record_report(&self, id: &str, report: &DeviceReport) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        sqlx::query(
            "UPDATE device SET version = COALESCE($1, version), product = COALESCE($2, product), hardware = COALESCE($3, hardware), attributes = COALESCE($4, attributes), updated_at = $5 WHERE id = $6",
        )
        .bind(report.version.clone())
        .bind(report.product.clone())
        .bind(report.hardware.clone())
        .bind(report.attributes.as_ref().map(|a| a.to_string()))
        .bind(now_millis())
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(e, "failed to record a device report"))?;
        log_change(&mut tx, id).await?;
        tx.commit().await.map_err(|e| db_error(e, "failed to commit a device report"))
    }

    /// Writes a batch of (device id, last seen, address) in one transaction, a few hundred
    /// devices per statement.
    pub async fn record_presence<S: AsRef<str> + Sync>(&self, batch: &[(S, DateTime<Utc>, Option<String>)]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        for rows in batch.chunks(PRESENCE_ROWS) {
            // A VALUES list named by a CTE and joined by primary key: the same statement runs
            // on SQLite (3.33+) and PostgreSQL, in time linear in the rows.
            let values: Vec<String> = (0..rows.len()).map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3)).collect();
            let sql = format!(
                "WITH seen (id, at, ip) AS (VALUES {}) \
                 UPDATE device SET last_seen = seen.at, ip = COALESCE(seen.ip, device.ip) FROM seen WHERE device.id = seen.id",
                values.join(", ")
            );
            // Only the full-size statement is worth keeping prepared.
            let mut query = sqlx::query::<Any>(AssertSqlSafe(sql)).persistent(rows.len() == PRESENCE_ROWS);
            for (id, seen, ip) in rows {
                query = query.bind(id.as_ref().to_string()).bind(seen.timestamp_millis()).bind(ip.clone());
            }
            query.execute(&mut *tx).await.map_err(|e| db_error(e, "failed to record presence"))?;
        }
        tx.commit().await.map_err(|e| db_error(e, "failed to commit presence"))
    }

    /// Sets or clears a device's token digest; returns false if the device does not exist.
    pub async fn set_device_token(&self, id: &str, token_hash: Option<&str>) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        let result = sqlx::query("UPDATE device SET token_hash = $1, token_created_at = $2, updated_at = $2 WHERE id = $3")
            .bind(token_hash.map(str::to_string))
            .bind(now_millis())
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to store a device token"))?;
        log_change(&mut tx, id).await?;
        tx.commit().await.map_err(|e| db_error(e, "failed to commit a device token"))?;
        Ok(result.rows_affected() == 1)
    }

    /// Uses up the device's re-provisioning window if it is still open at `now`: true for the
    /// one caller that closed it.
    pub async fn take_reprovision_window(&self, id: &str, now: DateTime<Utc>) -> Result<bool> {
        let result = sqlx::query("UPDATE device SET reprovision_until = NULL WHERE id = $1 AND reprovision_until > $2")
            .bind(id)
            .bind(now.timestamp_millis())
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to use a re-provisioning window"))?;
        Ok(result.rows_affected() == 1)
    }

    pub async fn delete_device(&self, id: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        for sql in [
            "DELETE FROM device_tag WHERE device_id = $1",
            "DELETE FROM device_group_member WHERE device_id = $1",
            "DELETE FROM setup_event WHERE device_id = $1",
            "DELETE FROM update_event WHERE attempt_id IN (SELECT id FROM update_attempt WHERE device_id = $1)",
            "DELETE FROM update_attempt WHERE device_id = $1",
        ] {
            sqlx::query(sql).bind(id).execute(&mut *tx).await.map_err(|e| db_error(e, "failed to delete a device's records"))?;
        }
        let deleted = sqlx::query("DELETE FROM device WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to delete a device"))?;
        log_change(&mut tx, id).await?;
        tx.commit().await.map_err(|e| db_error(e, "failed to commit a device deletion"))?;
        Ok(deleted.rows_affected() == 1)
    }

    /// Devices changed at or after `since` (Unix ms), for cache invalidation.
    pub async fn changed_devices_since(&self, since: i64) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT device_id, at FROM device_change WHERE at >= $1")
            .bind(since)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read device changes"))?;
        Ok(rows.iter().map(|r| (r.get("device_id"), r.get("at"))).collect())
    }

    pub async fn prune_device_changes(&self, before: i64) -> Result<()> {
        sqlx::query("DELETE FROM device_change WHERE at < $1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to prune device changes"))?;
        Ok(())
    }

    // ---- pairing ----

    pub async fn insert_pairing(&self, key_hash: &str, owner: &str, expires_at: DateTime<Utc>) -> Result<()> {
        sqlx::query("INSERT INTO pairing (key_hash, owner, expires_at, created_at) VALUES ($1, $2, $3, $4)")
            .bind(key_hash)
            .bind(owner)
            .bind(expires_at.timestamp_millis())
            .bind(now_millis())
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to store a pair key"))?;
        Ok(())
    }

    /// Uses a pair key once: returns its owner if the key exists, is unused and has not
    /// expired; marks it used by `device_id` in the same statement.
    pub async fn claim_pairing(&self, key_hash: &str, device_id: &str) -> Result<Option<String>> {
        let now = now_millis();
        let claimed =
            sqlx::query("UPDATE pairing SET used_at = $1, device_id = $2 WHERE key_hash = $3 AND used_at IS NULL AND expires_at > $4")
                .bind(now)
                .bind(device_id)
                .bind(key_hash)
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(|e| db_error(e, "failed to use a pair key"))?;
        if claimed.rows_affected() != 1 {
            return Ok(None);
        }
        let row = sqlx::query("SELECT owner FROM pairing WHERE key_hash = $1")
            .bind(key_hash)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a pair key"))?;
        Ok(Some(row.get("owner")))
    }

    // ---- setup progress ----

    pub async fn insert_setup_event(&self, device_id: &str, code: u8, title: &str, description: &str) -> Result<()> {
        let now = now_millis();
        let status = serde_json::json!({"code": code, "title": title, "description": description, "at": now});
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        sqlx::query("INSERT INTO setup_event (id, device_id, code, title, description, at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(device_id)
            .bind(i64::from(code))
            .bind(title)
            .bind(description)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to record a setup report"))?;
        sqlx::query("UPDATE device SET setup_status = $1 WHERE id = $2")
            .bind(status.to_string())
            .bind(device_id)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to record a setup report"))?;
        log_change(&mut tx, device_id).await?;
        tx.commit().await.map_err(|e| db_error(e, "failed to commit a setup report"))
    }

    pub async fn list_setup_events(&self, device_id: &str) -> Result<Vec<SetupEvent>> {
        let rows = sqlx::query("SELECT code, title, description, at FROM setup_event WHERE device_id = $1 ORDER BY id")
            .bind(device_id)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read setup reports"))?;
        Ok(rows
            .iter()
            .map(|r| SetupEvent {
                code: r.get::<i64, _>("code") as u8,
                title: r.get("title"),
                description: r.get("description"),
                at: from_millis(r.get("at")),
            })
            .collect())
    }

    // ---- update attempts ----

    pub async fn current_attempt(&self, device_id: &str) -> Result<Option<UpdateAttempt>> {
        let row = sqlx::query(
            "SELECT id, device_id, artifact_id, release_id, rollout_id, from_version, to_version, state, progress, message, current, created_at, updated_at FROM update_attempt WHERE device_id = $1 AND current = 1",
        )
        .bind(device_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to read an update attempt"))?;
        row.map(|r| attempt_from_row(&r)).transpose()
    }

    /// The current attempts of many devices (those that have one), [`ATTEMPT_BATCH`] devices
    /// per query.
    pub async fn current_attempts(&self, device_ids: &[&str]) -> Result<Vec<UpdateAttempt>> {
        let mut attempts = Vec::new();
        for chunk in device_ids.chunks(ATTEMPT_BATCH) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT id, device_id, artifact_id, release_id, rollout_id, from_version, to_version, state, progress, message, current, created_at, updated_at FROM update_attempt WHERE current = 1 AND device_id IN ({})",
                placeholders.join(", ")
            );
            // Only numbered placeholders are formatted in; the ids are bound.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(*id);
            }
            let rows = query.fetch_all(&self.pool).await.map_err(|e| db_error(e, "failed to read update attempts"))?;
            for row in &rows {
                attempts.push(attempt_from_row(row)?);
            }
        }
        Ok(attempts)
    }

    /// Starts a new current attempt (the previous one stops being current). With a rollout,
    /// also records the device as the rollout's (again, if it was before), in the same
    /// transaction. `None` when the device's current attempt is no longer `offer.replacing`
    /// (a concurrent check-in of the same device opened one first); nothing is written then.
    /// On PostgreSQL, where two transactions may both see no current attempt, the unique
    /// index of current attempts refuses the second.
    pub async fn open_attempt(&self, offer: &AttemptOffer<'_>) -> Result<Option<UpdateAttempt>> {
        match self.open_attempts(std::slice::from_ref(offer)).await?.pop().flatten() {
            Some(_) => self.current_attempt(offer.device_id).await,
            None => Ok(None),
        }
    }

    /// [`Store::open_attempt`] for many devices (one device at most once), in one
    /// transaction per [`ATTEMPT_BATCH`] offers: the ids of the opened attempts, `None` where
    /// a concurrent check-in got there first. This is what lets a push re-evaluate 10,000
    /// connected devices in well under a second on SQLite.
    pub async fn open_attempts(&self, offers: &[AttemptOffer<'_>]) -> Result<Vec<Option<String>>> {
        let mut opened = Vec::with_capacity(offers.len());
        for chunk in offers.chunks(ATTEMPT_BATCH) {
            match self.open_attempts_once(chunk).await {
                Ok(ids) => opened.extend(ids),
                // PostgreSQL: a racing check-in committed a current attempt for one of these
                // devices, and the unique index aborted the whole transaction. One by one,
                // the others still open.
                Err(e) if is_unique_violation(&e) && chunk.len() > 1 => {
                    for offer in chunk {
                        match self.open_attempts_once(std::slice::from_ref(offer)).await {
                            Ok(ids) => opened.extend(ids),
                            Err(e) if is_unique_violation(&e) => opened.push(None),
                            Err(e) => return Err(db_error(e, "failed to open an update attempt")),
                        }
                    }
                }
                Err(e) if is_unique_violation(&e) => opened.push(None),
                Err(e) => return Err(db_error(e, "failed to open update attempts")),
            }
        }
        Ok(opened)
    }

    async fn open_attempts_once(&self, offers: &[AttemptOffer<'_>]) -> std::result::Result<Vec<Option<String>>, sqlx::Error> {
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        let mut opened = Vec::with_capacity(offers.len());
        for offer in offers {
            // Close the attempt the caller saw, or (it saw none) whatever is current: either
            // way exactly what the caller expects must have been closed.
            let close = match offer.replacing {
                Some(attempt_id) => sqlx::query("UPDATE update_attempt SET current = 0 WHERE id = $1 AND current = 1").bind(attempt_id),
                None => sqlx::query("UPDATE update_attempt SET current = 0 WHERE device_id = $1 AND current = 1").bind(offer.device_id),
            };
            let closed = close.execute(&mut *tx).await?.rows_affected();
            if closed != u64::from(offer.replacing.is_some()) {
                if closed > 0 {
                    // Not what the caller saw: undo, leave this device as it is.
                    tx.rollback().await?;
                    return self.open_attempts_skipping(offers, offer.device_id).await;
                }
                opened.push(None);
                continue;
            }
            let id = uuid::Uuid::now_v7().to_string();
            sqlx::query(
                "INSERT INTO update_attempt (id, device_id, artifact_id, release_id, rollout_id, from_version, to_version, state, progress, message, current, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'offered', NULL, NULL, 1, $8, $9)",
            )
            .bind(&id)
            .bind(offer.device_id)
            .bind(offer.artifact_id)
            .bind(offer.release_id)
            .bind(offer.rollout.map(|r| r.rollout_id.to_string()))
            .bind(offer.from_version.map(str::to_string))
            .bind(offer.to_version)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            insert_event_raw(&mut tx, &id, UpdateState::Offered, None, None, now).await?;
            if let Some(rollout) = offer.rollout {
                sqlx::query(
                    "INSERT INTO rollout_member (rollout_id, device_id, stage, state, attempt_id, from_version, message, offered_at, deadline_at, updated_at) \
                     VALUES ($1, $2, $3, 'offered', $4, $5, NULL, $6, $7, $6) \
                     ON CONFLICT (rollout_id, device_id) DO UPDATE SET stage = $3, state = 'offered', attempt_id = $4, \
                     from_version = COALESCE(rollout_member.from_version, $5), message = NULL, offered_at = $6, deadline_at = $7, updated_at = $6",
                )
                .bind(rollout.rollout_id)
                .bind(offer.device_id)
                .bind(rollout.stage as i64)
                .bind(&id)
                .bind(offer.from_version.map(str::to_string))
                .bind(now)
                .bind(now.saturating_add(i64::try_from(rollout.deadline_s.saturating_mul(1000)).unwrap_or(i64::MAX)))
                .execute(&mut *tx)
                .await?;
            }
            opened.push(Some(id));
        }
        tx.commit().await?;
        Ok(opened)
    }

    /// [`Store::open_attempts_once`] without one device (whose current attempt changed).
    async fn open_attempts_skipping(
        &self,
        offers: &[AttemptOffer<'_>],
        device_id: &str,
    ) -> std::result::Result<Vec<Option<String>>, sqlx::Error> {
        let others: Vec<AttemptOffer<'_>> = offers.iter().filter(|o| o.device_id != device_id).cloned().collect();
        let mut ids = Box::pin(self.open_attempts_once(&others)).await?.into_iter();
        Ok(offers.iter().map(|o| if o.device_id == device_id { None } else { ids.next().flatten() }).collect())
    }

    /// Moves an attempt to a state (and the rollout's record of the device with it). An
    /// `installed` attempt is logged as a device change: every replica then knows that the
    /// device's next check-in tells whether the new build booted.
    pub async fn set_attempt_state(&self, attempt_id: &str, state: UpdateState, progress: Option<u8>, message: Option<&str>) -> Result<()> {
        let now = now_millis();
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        sqlx::query("UPDATE update_attempt SET state = $1, progress = $2, message = COALESCE($3, message), updated_at = $4 WHERE id = $5")
            .bind(state.as_str())
            .bind(progress.map(i64::from))
            .bind(message.map(str::to_string))
            .bind(now)
            .bind(attempt_id)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to update an attempt"))?;
        insert_event(&mut tx, attempt_id, state, progress, message, now).await?;
        let member_state = match state {
            UpdateState::Offered => None,
            UpdateState::Downloading | UpdateState::Downloaded => Some("downloading"),
            UpdateState::Installing => Some("installing"),
            UpdateState::Installed => Some("installed"),
            UpdateState::Failed | UpdateState::Rejected => Some("failed"),
            UpdateState::Succeeded => Some("succeeded"),
        };
        if let Some(member_state) = member_state {
            // A success is final; a late report after a time-out still counts.
            sqlx::query(
                "UPDATE rollout_member SET state = $1, message = COALESCE($2, message), updated_at = $3 WHERE attempt_id = $4 AND state <> 'succeeded'",
            )
            .bind(member_state)
            .bind(message.map(str::to_string))
            .bind(now)
            .bind(attempt_id)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to update a rollout's device"))?;
        }
        if state == UpdateState::Installed {
            let device_id: String = sqlx::query("SELECT device_id FROM update_attempt WHERE id = $1")
                .bind(attempt_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| db_error(e, "failed to read an attempt"))?
                .get("device_id");
            log_change(&mut tx, &device_id).await?;
        }
        tx.commit().await.map_err(|e| db_error(e, "failed to commit an attempt update"))
    }

    /// A device's attempts, newest first, each with its events.
    pub async fn list_attempts(&self, device_id: &str, limit: u32) -> Result<Vec<UpdateAttempt>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, device_id, artifact_id, release_id, rollout_id, from_version, to_version, state, progress, message, current, created_at, updated_at FROM update_attempt WHERE device_id = $1 ORDER BY id DESC LIMIT {limit}"
        )))
        .bind(device_id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to read update attempts"))?;
        let mut attempts = rows.iter().map(attempt_from_row).collect::<Result<Vec<_>>>()?;
        for attempt in &mut attempts {
            let events = sqlx::query("SELECT state, progress, message, at FROM update_event WHERE attempt_id = $1 ORDER BY id")
                .bind(&attempt.id)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error(e, "failed to read update events"))?;
            attempt.events = events
                .iter()
                .map(|r| UpdateEvent {
                    state: UpdateState::parse_stored(&r.get::<String, _>("state")),
                    progress: r.get::<Option<i64>, _>("progress").map(|p| p.clamp(0, 100) as u8),
                    message: r.get("message"),
                    at: from_millis(r.get("at")),
                })
                .collect();
        }
        Ok(attempts)
    }

    /// True when an update attempt refers to this artifact (so it cannot be deleted).
    pub async fn artifact_in_use(&self, artifact_id: &str) -> Result<bool> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM update_attempt WHERE artifact_id = $1 AND current = 1 AND state NOT IN ('succeeded', 'failed', 'rejected')")
            .bind(artifact_id)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to check artifact use"))?;
        Ok(row.get::<i64, _>("n") > 0)
    }
}

async fn log_change(tx: &mut sqlx::Transaction<'_, Any>, device_id: &str) -> Result<()> {
    sqlx::query("INSERT INTO device_change (id, device_id, at) VALUES ($1, $2, $3)")
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(device_id)
        .bind(now_millis())
        .execute(&mut **tx)
        .await
        .map_err(|e| db_error(e, "failed to log a device change"))?;
    Ok(())
}

async fn insert_event(
    tx: &mut sqlx::Transaction<'_, Any>,
    attempt_id: &str,
    state: UpdateState,
    progress: Option<u8>,
    message: Option<&str>,
    at: i64,
) -> Result<()> {
    insert_event_raw(tx, attempt_id, state, progress, message, at).await.map_err(|e| db_error(e, "failed to record an update event"))
}

async fn insert_event_raw(
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

fn provision_key_taken() -> Error {
    Error::conflict("provision_key_taken", "another product already uses this provisioning key")
}

/// The `hardware` column: a JSON array, or NULL for "any".
fn hardware_column(hardware: &[String]) -> Option<String> {
    (!hardware.is_empty()).then(|| serde_json::to_string(hardware).expect("strings serialize"))
}

fn product_from_row(row: &AnyRow) -> Result<Product> {
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

fn active_from_row(row: &AnyRow) -> Result<ActiveRow> {
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

fn device_from_row(row: &AnyRow) -> Result<Device> {
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

fn attempt_from_row(row: &AnyRow) -> Result<UpdateAttempt> {
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

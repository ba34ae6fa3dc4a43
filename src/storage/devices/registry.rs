//! Devices: rows, lists and filters, reports, presence, tokens, the change log.

use super::*;
use crate::storage::Backend;

impl Store {
    pub async fn insert_device(&self, new: &NewDevice) -> Result<Device> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_millis();
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        let inserted = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO device ({DEVICE_COLUMNS}, token_created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, NULL, NULL, NULL, $15, $16, $17)"
        )))
        .bind(&id)
        .bind(new.mac.map(|m| m.canonical()))
        .bind(new.uid.as_ref().map(|u| u.to_string()))
        .bind(&new.name)
        .bind(new.product.as_deref().map(str::to_string))
        .bind(new.hardware.as_deref().map(str::to_string))
        .bind(new.channel.as_str())
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
            Err(e) if violates(&e, "device_mac_idx") => {
                let mac = new.mac.map(|m| m.canonical()).unwrap_or_default();
                return Err(Error::conflict("device_exists", format!("a device with MAC {mac} is already registered")));
            }
            Err(e) if violates(&e, "device_uid_idx") => {
                let uid = new.uid.as_ref().map(|u| u.to_string()).unwrap_or_default();
                return Err(Error::conflict("device_exists", format!("a device named {uid} is already registered")));
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

    pub async fn find_device_by_uid(&self, uid: &DeviceUid) -> Result<Option<Device>> {
        self.find_device_where("uid = $1", uid.as_str()).await
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
        row.map(|r| map_row::<DeviceRow, Device>(&r)).transpose()
    }

    /// The index entry of the device holding a token (by digest), without the device's
    /// JSON fields: the fleet index's miss path.
    pub async fn find_active_device(&self, token_hash: &str) -> Result<Option<ActiveRow>> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {ACTIVE_COLUMNS} FROM device WHERE token_hash = $1")))
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a device"))?;
        row.map(|r| map_row::<ActiveDeviceRow, ActiveRow>(&r)).transpose()
    }

    /// The index entry of a device by id, or by MAC, whether or not it holds a token: the
    /// miss path of devices that authenticate with a client certificate.
    pub async fn find_active_device_by_id(&self, id: &str) -> Result<Option<ActiveRow>> {
        self.find_active_device_where("id = $1", id).await
    }

    pub async fn find_active_device_by_mac(&self, mac: &Mac) -> Result<Option<ActiveRow>> {
        self.find_active_device_where("mac = $1", &mac.canonical()).await
    }

    async fn find_active_device_where(&self, condition: &str, value: &str) -> Result<Option<ActiveRow>> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {ACTIVE_COLUMNS} FROM device WHERE {condition}")))
            .bind(value)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a device"))?;
        row.map(|r| map_row::<ActiveDeviceRow, ActiveRow>(&r)).transpose()
    }

    /// Index entries of devices holding a token, in id order after `after`: the fleet
    /// index's start-up load, a page at a time.
    /// How many devices hold a token (the fleet index's size once loaded).
    pub async fn count_active_devices(&self) -> Result<u64> {
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM device WHERE token_hash IS NOT NULL")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to count devices"))?
            .get("n");
        Ok(u64::try_from(n).unwrap_or(0))
    }

    pub async fn list_active_devices(&self, after: &str, limit: u32) -> Result<Vec<(String, ActiveRow)>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ACTIVE_COLUMNS}, token_hash FROM device WHERE token_hash IS NOT NULL AND id > $1 ORDER BY id LIMIT $2"
        )))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to list devices"))?;
        map_rows::<TokenHolderRow, (String, ActiveRow)>(&rows)
    }

    pub async fn list_devices(&self, filter: &DeviceFilter) -> Result<(Vec<Device>, u64)> {
        let mut count = Builder::new("SELECT COUNT(*) AS n FROM device");
        push_device_filter(&mut count, filter, Purpose::Count, self.backend);
        let total: i64 = count.build().fetch_one(&self.pool).await.map_err(|e| db_error(e, "failed to count devices"))?.get("n");
        let order = match filter.sort {
            DeviceSort::NewestFirst => "created_at DESC, id DESC",
            DeviceSort::OldestFirst => "created_at ASC, id ASC",
            DeviceSort::LastSeen => "last_seen DESC, id DESC",
            DeviceSort::Name => "name ASC, id ASC",
            DeviceSort::Mac => "(mac IS NULL), mac ASC, uid ASC, id ASC",
        };
        // The page's ids are chosen first, from narrow index entries, and only the page's rows
        // are read whole: sorting thousands of whole rows (a tag, deep in the list) is what
        // made such pages slow.
        let purpose = if filter.offset < DEEP_PAGE { Purpose::Page } else { Purpose::DeepPage };
        let mut list = Builder::new(&format!("SELECT {DEVICE_SELECT} FROM device WHERE id IN (SELECT id FROM device"));
        push_device_filter(&mut list, filter, purpose, self.backend);
        list.push(" ORDER BY ").push(order);
        // Written, not bound (they are integers): PostgreSQL plans a known limit better.
        list.push(&format!(" LIMIT {} OFFSET {})", filter.limit, filter.offset));
        list.push(" ORDER BY ").push(order);
        let rows = sql::fetch_all(list, &self.pool).await.map_err(|e| db_error(e, "failed to list devices"))?;
        Ok((map_rows::<DeviceRow, Device>(&rows)?, total as u64))
    }

    pub async fn count_devices(&self) -> Result<u64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM device")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to count devices"))?;
        Ok(row.get::<i64, _>("n") as u64)
    }

    /// Writes the fields a patch gives, and only those, in one statement (with the tag
    /// index in the same transaction): a concurrent check-in's report is never overwritten
    /// by a stale read. `None` when the device does not exist.
    pub async fn update_device(&self, id: &str, patch: &DevicePatch) -> Result<Option<Device>> {
        let mut update = Builder::new("UPDATE device SET updated_at = ");
        update.push_bind(now_millis());
        if let Some(name) = &patch.name {
            update.push(", name = ").push_bind(name.clone());
        }
        if let Some(product) = &patch.product {
            update.push(", product = ").push_bind(product.as_deref().map(str::to_string));
        }
        if let Some(hardware) = &patch.hardware {
            update.push(", hardware = ").push_bind(hardware.as_deref().map(str::to_string));
        }
        if let Some(channel) = &patch.channel {
            update.push(", channel = ").push_bind(channel.to_string());
        }
        if let Some(target_version) = &patch.target_version {
            update.push(", target_version = ").push_bind(target_version.clone());
        }
        if let Some(tags) = &patch.tags {
            update.push(", tags = ").push_bind(serde_json::to_string(tags).expect("tags serialize"));
        }
        if let Some(metadata) = &patch.metadata {
            update.push(", metadata = ").push_bind(metadata.to_string());
        }
        if let Some(owner) = &patch.owner {
            update.push(", owner = ").push_bind(owner.clone());
        }
        if let Some(until) = &patch.reprovision_until {
            update.push(", reprovision_until = ").push_bind(until.map(|t| t.timestamp_millis()));
        }
        update.push(" WHERE id = ").push_bind(id.to_string());
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        let updated = sql::execute(update, &mut *tx).await.map_err(|e| db_error(e, "failed to update a device"))?;
        if updated.rows_affected() == 0 {
            return Ok(None);
        }
        if let Some(tags) = &patch.tags {
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
        .bind(report.product.as_deref().map(str::to_string))
        .bind(report.hardware.as_deref().map(str::to_string))
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
        // In key order, so that neighbouring rows share pages: on a large table several times
        // faster than arrival order (bench/shutdown.sh).
        let mut sorted: Vec<_> = batch.iter().collect();
        sorted.sort_unstable_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        for rows in sorted.chunks(PRESENCE_ROWS) {
            // A VALUES list named by a CTE and joined by primary key: the same statement runs
            // on SQLite (3.33+) and PostgreSQL, in time linear in the rows.
            let mut update = Builder::new("WITH seen (id, at, ip) AS (VALUES ");
            for (i, (id, seen, ip)) in rows.iter().enumerate() {
                update.push(if i == 0 { "(" } else { ", (" });
                update.push_bind(id.as_ref()).push(", ").push_bind(seen.timestamp_millis()).push(", ").push_bind(ip.as_deref()).push(")");
            }
            update.push(") UPDATE device SET last_seen = seen.at, ip = COALESCE(seen.ip, device.ip) FROM seen WHERE device.id = seen.id");
            // Only the full-size statement is worth keeping prepared.
            update
                .build()
                .persistent(rows.len() == PRESENCE_ROWS)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error(e, "failed to record presence"))?;
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
        let decode = |e| db_error(e, "failed to decode a device change");
        rows.iter().map(|r| Ok((r.try_get("device_id").map_err(decode)?, r.try_get("at").map_err(decode)?))).collect()
    }

    pub async fn prune_device_changes(&self, before: i64) -> Result<()> {
        sqlx::query("DELETE FROM device_change WHERE at < $1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to prune device changes"))?;
        Ok(())
    }
}

/// The `WHERE` clause of a device filter, its values bound in place.
/// From this offset on, a page of a tag's devices is found through the tag's index rather
/// than by walking the sort's index (which would probe this many devices and more).
const DEEP_PAGE: u64 = 1000;

/// What a device filter is for: its SQL differs where the planners need it to (measured at
/// 100,000 devices, bench/dashboard.sh).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// `COUNT(*)`: a tag is an `IN` over the tag index (one lookup per tagged device).
    Count,
    /// One of the first pages: a tag is an `EXISTS` probe, so the planner walks the sort's
    /// index and stops after the page, instead of sorting every tagged device (SQLite: 1 ms
    /// instead of 40 for a tag on 10 % of 100,000 devices).
    Page,
    /// A page past `DEEP_PAGE`: a tag is an `IN`, and the tagged devices' ids are sorted.
    DeepPage,
}

fn push_device_filter(query: &mut Builder, filter: &DeviceFilter, purpose: Purpose, backend: Backend) {
    let mut conditions = query.separated(" WHERE ", " AND ");
    if let Some(product) = &filter.product {
        conditions.next().push("product = ").push_bind(product.clone());
    }
    if let Some(hardware) = &filter.hardware {
        conditions.next().push("hardware = ").push_bind(hardware.to_string());
    }
    if let Some(version) = &filter.version {
        conditions.next().push("version = ").push_bind(version.clone());
    }
    if let Some(owner) = &filter.owner {
        conditions.next().push("owner = ").push_bind(owner.clone());
    }
    if let Some(tag) = &filter.tag {
        match purpose {
            Purpose::Count | Purpose::DeepPage => {
                conditions.next().push("id IN (SELECT device_id FROM device_tag WHERE tag = ").push_bind(tag.clone()).push(")")
            }
            Purpose::Page => conditions
                .next()
                .push("EXISTS (SELECT 1 FROM device_tag WHERE device_tag.device_id = device.id AND device_tag.tag = ")
                .push_bind(tag.clone())
                .push(")"),
        };
    }
    if let Some((online, cutoff)) = filter.online_since {
        if online {
            conditions.next().push("last_seen >= ").push_bind(cutoff);
        } else {
            conditions.next().push("(last_seen IS NULL OR last_seen < ").push_bind(cutoff).push(")");
        }
    }
    if let Some(before) = filter.last_seen_before {
        conditions.next().push("last_seen < ").push_bind(before);
    }
    if let Some(after) = filter.last_seen_after {
        conditions.next().push("last_seen > ").push_bind(after);
    }
    if let Some(search) = &filter.search {
        let pattern = format!("%{}%", search.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
        // SQLite's LIKE ignores ASCII case by itself (and its LOWER folds only ASCII too):
        // without LOWER a search reads the covering index several times faster.
        // PostgreSQL's LIKE is case-sensitive: there the columns are lowered.
        let column = |name: &str| match backend {
            Backend::Sqlite => name.to_string(),
            Backend::Postgres => format!("LOWER({name})"),
        };
        let query = conditions.next();
        query.push(&format!("({} LIKE ", column("name"))).push_bind(pattern.clone()).push(" ESCAPE '\\'");
        query.push(&format!(" OR {} LIKE ", column("mac"))).push_bind(pattern.clone()).push(" ESCAPE '\\'");
        query.push(&format!(" OR {} LIKE ", column("uid"))).push_bind(pattern.clone()).push(" ESCAPE '\\'");
        query.push(&format!(" OR {} LIKE ", column("owner"))).push_bind(pattern.clone()).push(" ESCAPE '\\'");
        query.push(" OR id LIKE ").push_bind(pattern).push(" ESCAPE '\\')");
    }
}

//! Devices: rows, lists and filters, reports, presence, tokens, the change log.

use super::*;

impl Store {
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
}

//! A rollout's devices: membership states, counts, download slots.

use super::*;

impl Store {
    /// Devices per (stage, state, excused).
    pub async fn rollout_tally(&self, id: &RolloutId) -> Result<Vec<(usize, MemberState, bool, u64)>> {
        let rows = sqlx::query(
            "SELECT stage, state, excused, COUNT(*) AS n FROM rollout_member WHERE rollout_id = $1 GROUP BY stage, state, excused",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to count a rollout's devices"))?;
        map_rows::<TallyRow, (usize, MemberState, bool, u64)>(&rows)
    }

    /// Where a device stands in a rollout, if the rollout ever offered it its release.
    pub async fn rollout_member_state(&self, rollout_id: &RolloutId, device_id: &DeviceId) -> Result<Option<MemberState>> {
        let row =
            sqlx::query("SELECT rollout_id, device_id, state, from_version FROM rollout_member WHERE rollout_id = $1 AND device_id = $2")
                .bind(rollout_id.as_str())
                .bind(device_id.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| db_error(e, "failed to read a rollout's device"))?;
        Ok(row.map(|r| map_row::<RolloutMemberRow, MemberRow>(&r)).transpose()?.map(|member| member.state))
    }

    /// Devices holding a download slot, per rollout.
    pub async fn rollouts_in_flight(&self) -> Result<Vec<(String, u64)>> {
        let rows = sqlx::query(
            "SELECT m.rollout_id AS rollout_id, COUNT(*) AS n FROM rollout_member m JOIN rollout r ON r.id = m.rollout_id \
             WHERE r.state IN ('running', 'completed') AND m.state IN ('offered', 'downloading', 'installing') GROUP BY m.rollout_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to count downloads in flight"))?;
        rows.iter()
            .map(|r| {
                let decode = |e| db_error(e, "failed to decode a count");
                Ok((r.try_get("rollout_id").map_err(decode)?, r.try_get::<i64, _>("n").map_err(decode)? as u64))
            })
            .collect()
    }

    /// Marks devices that reported no outcome before their deadline as timed out.
    pub async fn time_out_members(&self, id: &RolloutId, now: DateTime<Utc>) -> Result<u64> {
        let result = sqlx::query(
            "UPDATE rollout_member SET state = 'timed_out', message = 'no outcome reported before the deadline', updated_at = $1 \
             WHERE rollout_id = $2 AND state IN ('offered', 'downloading', 'installing', 'installed') AND deadline_at < $1",
        )
        .bind(now.timestamp_millis())
        .bind(id.as_str())
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to time out devices"))?;
        Ok(result.rows_affected())
    }

    pub async fn rollout_members(&self, id: &RolloutId) -> Result<Vec<MemberRow>> {
        let rows = sqlx::query("SELECT rollout_id, device_id, state, from_version FROM rollout_member WHERE rollout_id = $1")
            .bind(id.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a rollout's devices"))?;
        map_rows::<RolloutMemberRow, MemberRow>(&rows)
    }

    /// Rolls back: pins every device of the rollout with a known previous version to that
    /// version, except those that failed (they reported a failure or booted back into the old
    /// build: they run it, and a pin would only hold them there), logs the device changes and moves the rollout to `rolled_back`, all in one
    /// transaction (and only if the rollout is still as read).
    pub async fn roll_back(&self, change: &TransitionWrite<'_>) -> Result<bool> {
        let now = now_millis();
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        let updated =
            sqlx::query("UPDATE rollout SET state = $1, reason = $2, updated_at = $3 WHERE id = $4 AND state = $5 AND current_stage = $6")
                .bind(change.to.as_str())
                .bind(change.reason)
                .bind(now)
                .bind(change.rollout_id)
                .bind(change.from.as_str())
                .bind(change.from_stage as i64)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error(e, "failed to change a rollout"))?;
        if updated.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE device SET target_version = (SELECT m.from_version FROM rollout_member m WHERE m.rollout_id = $1 AND m.device_id = device.id), \
             updated_at = $2 WHERE id IN (SELECT device_id FROM rollout_member WHERE rollout_id = $1 AND from_version IS NOT NULL AND state <> 'failed')",
        )
        .bind(change.rollout_id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(e, "failed to pin devices back"))?;
        // One change-log row per device (ids unique per rollout: a rollout rolls back once).
        sqlx::query(
            "INSERT INTO device_change (id, device_id, at) SELECT 'rollback:' || rollout_id || ':' || device_id, device_id, $2 \
             FROM rollout_member WHERE rollout_id = $1 AND from_version IS NOT NULL AND state <> 'failed'",
        )
        .bind(change.rollout_id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(e, "failed to log pinned devices"))?;
        insert_transition(
            &mut tx,
            change.rollout_id,
            change.from.as_str(),
            change.to.as_str(),
            change.to_stage,
            change.actor,
            change.reason,
            now,
        )
        .await?;
        bump_revision(&mut tx).await?;
        tx.commit().await.map_err(|e| db_error(e, "failed to commit a rollback"))?;
        Ok(true)
    }

    /// Devices of a product as target filters see them, in id order after `after`.
    pub async fn target_rows(&self, product: &str, after: &str, limit: u32) -> Result<Vec<TargetRow>> {
        let rows =
            sqlx::query(AssertSqlSafe(format!("SELECT {TARGET_COLUMNS} FROM device WHERE product = $1 AND id > $2 ORDER BY id LIMIT $3")))
                .bind(product)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error(e, "failed to read devices"))?;
        map_rows::<TargetDeviceRow, TargetRow>(&rows)
    }

    /// The devices of these ids that exist, as target filters see them.
    pub async fn target_rows_by_ids(&self, ids: &[String]) -> Result<Vec<TargetRow>> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let mut query = Builder::new(&format!("SELECT {TARGET_COLUMNS} FROM device WHERE id IN ("));
            query.push_list(chunk.iter().map(String::as_str)).push(")");
            let rows = sql::fetch_all(query, &self.pool).await.map_err(|e| db_error(e, "failed to read devices"))?;
            found.extend(map_rows::<TargetDeviceRow, TargetRow>(&rows)?);
        }
        Ok(found)
    }
}

//! Update attempts and their events.

use super::*;

/// The unique index that allows one current attempt per device.
const ONE_CURRENT: &str = "update_attempt_one_current_idx";

impl Store {
    pub async fn current_attempt(&self, device_id: &str) -> Result<Option<UpdateAttempt>> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {ATTEMPT_COLUMNS} FROM update_attempt WHERE device_id = $1 AND current = 1")))
            .bind(device_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read an update attempt"))?;
        row.map(|r| map_row::<AttemptRow, UpdateAttempt>(&r)).transpose()
    }

    /// The current attempts of many devices (those that have one), [`ATTEMPT_BATCH`] devices
    /// per query.
    pub async fn current_attempts(&self, device_ids: &[&str]) -> Result<Vec<UpdateAttempt>> {
        let mut attempts = Vec::new();
        for chunk in device_ids.chunks(ATTEMPT_BATCH) {
            let mut query = Builder::new(&format!("SELECT {ATTEMPT_COLUMNS} FROM update_attempt WHERE current = 1 AND device_id IN ("));
            query.push_list(chunk.iter().copied()).push(")");
            let rows = sql::fetch_all(query, &self.pool).await.map_err(|e| db_error(e, "failed to read update attempts"))?;
            attempts.extend(map_rows::<AttemptRow, UpdateAttempt>(&rows)?);
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
                Err(e) if violates(&e, ONE_CURRENT) && chunk.len() > 1 => {
                    for offer in chunk {
                        match self.open_attempts_once(std::slice::from_ref(offer)).await {
                            Ok(ids) => opened.extend(ids),
                            Err(e) if violates(&e, ONE_CURRENT) => opened.push(None),
                            Err(e) => return Err(db_error(e, "failed to open an update attempt")),
                        }
                    }
                }
                Err(e) if violates(&e, ONE_CURRENT) => opened.push(None),
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
            let action_id = next_action_id(&mut tx).await?;
            sqlx::query(
                "INSERT INTO update_attempt (id, device_id, artifact_id, release_id, rollout_id, from_version, to_version, state, progress, message, current, created_at, updated_at, action_id) VALUES ($1, $2, $3, $4, $5, $6, $7, 'offered', NULL, NULL, 1, $8, $9, $10)",
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
            .bind(action_id)
            .execute(&mut *tx)
            .await?;
            insert_event_raw(&mut tx, &id, UpdateState::Offered, None, None, now).await?;
            // Every replica drops what it knew of this device's attempts (`fleet::Settled`).
            sqlx::query("INSERT INTO device_change (id, device_id, at) VALUES ($1, $2, $3)")
                .bind(uuid::Uuid::now_v7().to_string())
                .bind(offer.device_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
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
    /// device's next check-in tells whether the new build booted. So is a success: every
    /// replica then knows the device's last installed build (`fleet::Settled`).
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
            // The offer was withdrawn (the rollout was cancelled or rolled back, or the device
            // was pinned elsewhere): the rollout's record of the device stays as it was.
            UpdateState::Cancelled => None,
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
        if matches!(state, UpdateState::Installed | UpdateState::Succeeded) {
            let device_id: String = sqlx::query("SELECT device_id FROM update_attempt WHERE id = $1")
                .bind(attempt_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| db_error(e, "failed to read an attempt"))?
                .try_get("device_id")
                .map_err(|e| db_error(e, "failed to read an attempt"))?;
            log_change(&mut tx, &device_id).await?;
        }
        tx.commit().await.map_err(|e| db_error(e, "failed to commit an attempt update"))
    }

    /// A device's attempts, newest first, each with its events.
    pub async fn list_attempts(&self, device_id: &str, limit: u32) -> Result<Vec<UpdateAttempt>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ATTEMPT_COLUMNS} FROM update_attempt WHERE device_id = $1 ORDER BY id DESC LIMIT {limit}"
        )))
        .bind(device_id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to read update attempts"))?;
        let mut attempts = map_rows::<AttemptRow, UpdateAttempt>(&rows)?;
        for attempt in &mut attempts {
            let events = sqlx::query("SELECT id, state, progress, message, at FROM update_event WHERE attempt_id = $1 ORDER BY id")
                .bind(attempt.id.as_str())
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error(e, "failed to read update events"))?;
            attempt.events = map_rows::<UpdateEventRow, UpdateEvent>(&events)?;
        }
        Ok(attempts)
    }

    /// True when an update attempt refers to this artifact (so it cannot be deleted).
    pub async fn artifact_in_use(&self, artifact_id: &ArtifactId) -> Result<bool> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM update_attempt WHERE artifact_id = $1 AND current = 1 AND state NOT IN ('succeeded', 'failed', 'rejected', 'cancelled')")
            .bind(artifact_id.as_str())
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to check artifact use"))?;
        Ok(row.get::<i64, _>("n") > 0)
    }

    /// A device's attempt with this DDI action id, with its events.
    pub async fn attempt_by_action(&self, device_id: &str, action_id: i64) -> Result<Option<UpdateAttempt>> {
        let row =
            sqlx::query(AssertSqlSafe(format!("SELECT {ATTEMPT_COLUMNS} FROM update_attempt WHERE device_id = $1 AND action_id = $2")))
                .bind(device_id)
                .bind(action_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| db_error(e, "failed to read an update attempt"))?;
        let Some(row) = row else { return Ok(None) };
        let mut attempt = map_row::<AttemptRow, UpdateAttempt>(&row)?;
        let events = sqlx::query("SELECT id, state, progress, message, at FROM update_event WHERE attempt_id = $1 ORDER BY id")
            .bind(attempt.id.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read update events"))?;
        attempt.events = map_rows::<UpdateEventRow, UpdateEvent>(&events)?;
        Ok(Some(attempt))
    }

    /// A device's newest succeeded attempt, if any (without its events).
    pub async fn last_succeeded_attempt(&self, device_id: &str) -> Result<Option<UpdateAttempt>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ATTEMPT_COLUMNS} FROM update_attempt WHERE device_id = $1 AND state = 'succeeded' ORDER BY id DESC LIMIT 1"
        )))
        .bind(device_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to read an update attempt"))?;
        row.map(|r| map_row::<AttemptRow, UpdateAttempt>(&r)).transpose()
    }

    /// The DDI action id of an attempt, numbering an attempt opened before numbers existed.
    pub async fn ensure_action_id(&self, attempt_id: &str) -> Result<i64> {
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        let existing: Option<i64> = sqlx::query("SELECT action_id FROM update_attempt WHERE id = $1")
            .bind(attempt_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to read an update attempt"))?
            .and_then(|row| row.try_get::<Option<i64>, _>("action_id").ok().flatten());
        if let Some(id) = existing {
            return Ok(id);
        }
        let id = next_action_id(&mut tx).await.map_err(|e| db_error(e, "failed to number an action"))?;
        sqlx::query("UPDATE update_attempt SET action_id = $1 WHERE id = $2 AND action_id IS NULL")
            .bind(id)
            .bind(attempt_id)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to number an action"))?;
        tx.commit().await.map_err(|e| db_error(e, "failed to number an action"))?;
        Ok(id)
    }
}

/// The next DDI action id (see migrations/0017_ddi.sql): the one-row sequence, locked until
/// the transaction ends.
async fn next_action_id(tx: &mut sqlx::Transaction<'_, Any>) -> std::result::Result<i64, sqlx::Error> {
    let row = sqlx::query("UPDATE action_sequence SET next_id = next_id + 1 WHERE id = 1 RETURNING next_id").fetch_one(&mut **tx).await?;
    Ok(row.try_get::<i64, _>("next_id")? - 1)
}

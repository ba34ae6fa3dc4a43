//! Rollout rows and their transitions (conditional updates with history).

use super::*;

impl Store {
    /// Inserts a new rollout with its first transition, recorded as `actor`'s.
    pub async fn insert_rollout(&self, rollout: &Rollout, actor: &str) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO rollout ({ROLLOUT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, NULL, NULL, NULL, $15, $16, NULL)"
        )))
        .bind(rollout.id.as_str())
        .bind(&rollout.name)
        .bind(rollout.release_id.as_str())
        .bind(rollout.product.as_str())
        .bind(to_json(&StoredTarget::of(&rollout.target)))
        .bind(to_json(&rollout.stages.iter().map(StoredStage::of).collect::<Vec<_>>()))
        .bind(to_json(&StoredOptions::of(&rollout.options)))
        .bind(rollout.state.as_str())
        .bind(&rollout.reason)
        .bind(0i64)
        .bind("[]")
        .bind("[]")
        .bind(0i64)
        .bind(rollout.options.start_at.map(|t| t.timestamp_millis()))
        .bind(rollout.created_at.timestamp_millis())
        .bind(rollout.created_at.timestamp_millis())
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(e, "failed to insert a rollout"))?;
        insert_transition(&mut tx, &rollout.id, "", rollout.state.as_str(), 0, actor, &rollout.reason, now_millis()).await?;
        bump_revision(&mut tx).await?;
        tx.commit().await.map_err(|e| db_error(e, "failed to commit a rollout"))
    }

    /// Deletes a rollout that is still a draft, with its history: `None` when there is no such
    /// rollout, `Some(false)` when it is no longer a draft (nothing is deleted then).
    pub async fn delete_draft_rollout(&self, id: &RolloutId) -> Result<Option<bool>> {
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        sqlx::query(
            "DELETE FROM rollout_transition WHERE rollout_id = $1 AND EXISTS (SELECT 1 FROM rollout WHERE id = $1 AND state = 'draft')",
        )
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(e, "failed to delete a rollout's history"))?;
        // Conditional on the state again: a draft started meanwhile is kept, history and all.
        let deleted = sqlx::query("DELETE FROM rollout WHERE id = $1 AND state = 'draft'")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to delete a rollout"))?;
        if deleted.rows_affected() == 0 {
            tx.rollback().await.map_err(|e| db_error(e, "failed to roll back a rollout deletion"))?;
            return Ok(self.find_rollout(id).await?.map(|_| false));
        }
        bump_revision(&mut tx).await?;
        tx.commit().await.map_err(|e| db_error(e, "failed to commit a rollout deletion"))?;
        Ok(Some(true))
    }

    pub async fn find_rollout(&self, id: &RolloutId) -> Result<Option<Rollout>> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {ROLLOUT_COLUMNS} FROM rollout WHERE id = $1")))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a rollout"))?;
        row.map(|r| map_row::<RolloutRow, Rollout>(&r)).transpose()
    }

    /// Rollouts in any of `states` (all when empty), of `product` if given, newest first.
    pub async fn list_rollouts(&self, states: &[RolloutState], product: Option<&str>) -> Result<Vec<Rollout>> {
        let mut query = Builder::new(&format!("SELECT {ROLLOUT_COLUMNS} FROM rollout"));
        let mut conditions = query.separated(" WHERE ", " AND ");
        if let Some(product) = product {
            conditions.next().push("product = ").push_bind(product.to_string());
        }
        if !states.is_empty() {
            conditions.next().push("state IN (").push_list(states.iter().map(|s| s.as_str())).push(")");
        }
        query.push(" ORDER BY created_at DESC, id DESC LIMIT 1000");
        let rows = sql::fetch_all(query, &self.pool).await.map_err(|e| db_error(e, "failed to list rollouts"))?;
        map_rows::<RolloutRow, Rollout>(&rows)
    }

    /// Rollouts that offer their release: running ones, and completed ones that completed at
    /// or after `completed_since` (in their catch-up period). Not limited: there are few.
    pub async fn list_live_rollouts(&self, completed_since: DateTime<Utc>) -> Result<Vec<Rollout>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollout WHERE state = 'running' \
             OR (state = 'completed' AND COALESCE(completed_at, updated_at) >= $1) ORDER BY created_at DESC, id DESC"
        )))
        .bind(completed_since.timestamp_millis())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to list live rollouts"))?;
        map_rows::<RolloutRow, Rollout>(&rows)
    }

    /// Applies a transition if the rollout is still in `from` at `from_stage`; false if
    /// another replica (or an earlier run) got there first.
    pub async fn transition_rollout(&self, change: &TransitionWrite<'_>) -> Result<bool> {
        let now = now_millis();
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        let stage_changed = change.to_stage != change.from_stage || change.started;
        let (shares, sizes, target_size) = match change.shares {
            Some((shares, sizes, target_size)) => {
                (Some(to_json(&shares)), Some(to_json(&sizes)), Some(i64::try_from(target_size).unwrap_or(i64::MAX)))
            }
            None => (None, None, None),
        };
        let updated = sqlx::query(
            "UPDATE rollout SET state = $1, current_stage = $2, reason = $3, updated_at = $4, \
             shares = COALESCE($5, shares), stage_sizes = COALESCE($6, stage_sizes), target_size = COALESCE($7, target_size), \
             counted_at = CASE WHEN $5 IS NULL THEN counted_at ELSE $4 END, \
             stage_started_at = CASE WHEN $8 = 1 THEN $4 ELSE stage_started_at END, \
             started_at = CASE WHEN $9 = 1 THEN $4 ELSE started_at END, \
             completed_at = CASE WHEN $1 = 'completed' THEN $4 ELSE completed_at END \
             WHERE id = $10 AND state = $11 AND current_stage = $12",
        )
        .bind(change.to.as_str())
        .bind(change.to_stage as i64)
        .bind(change.reason)
        .bind(now)
        .bind(shares)
        .bind(sizes)
        .bind(target_size)
        .bind(i64::from(stage_changed))
        .bind(i64::from(change.started))
        .bind(change.rollout_id)
        .bind(change.from.as_str())
        .bind(change.from_stage as i64)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(e, "failed to change a rollout"))?;
        if updated.rows_affected() != 1 {
            return Ok(false);
        }
        if change.excuse_failures {
            sqlx::query("UPDATE rollout_member SET excused = 1 WHERE rollout_id = $1 AND state IN ('failed', 'timed_out') AND excused = 0")
                .bind(change.rollout_id)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error(e, "failed to excuse a rollout's failures"))?;
        }
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
        tx.commit().await.map_err(|e| db_error(e, "failed to commit a rollout change"))?;
        Ok(true)
    }

    /// Stores recounted target sizes (no transition; no revision bump: sizes do not change
    /// what devices are offered).
    pub async fn record_rollout_count(&self, id: &RolloutId, sizes: &[u64], target_size: u64) -> Result<()> {
        sqlx::query("UPDATE rollout SET stage_sizes = $1, target_size = $2, counted_at = $3 WHERE id = $4")
            .bind(to_json(&sizes))
            .bind(i64::try_from(target_size).unwrap_or(i64::MAX))
            .bind(now_millis())
            .bind(id.as_str())
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to record a rollout count"))?;
        Ok(())
    }

    pub async fn rollout_history(&self, id: &RolloutId) -> Result<Vec<Transition>> {
        let rows = sqlx::query(
            "SELECT id, from_state, to_state, stage, actor, reason, at FROM rollout_transition WHERE rollout_id = $1 ORDER BY id",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to read a rollout's history"))?;
        map_rows::<TransitionRow, Transition>(&rows)
    }
}

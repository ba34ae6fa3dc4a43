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

const ROLLOUT_COLUMNS: &str = "id, name, release_id, product, target, stages, options, state, reason, current_stage, shares, stage_sizes, target_size, start_at, started_at, stage_started_at, counted_at, created_at, updated_at, completed_at";

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

impl Store {
    // ---- revision ----

    pub async fn rollout_revision(&self) -> Result<i64> {
        let row = sqlx::query("SELECT n FROM rollout_revision WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read the rollout revision"))?;
        Ok(row.get("n"))
    }

    // ---- releases ----

    pub async fn insert_release(&self, release: &Release) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        let inserted = sqlx::query(
            "INSERT INTO firmware_release (id, product, version, version_key, channel, notes, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&release.id)
        .bind(&release.product)
        .bind(&release.version)
        .bind(&release.version_key)
        .bind(&release.channel)
        .bind(&release.notes)
        .bind(release.created_at.timestamp_millis())
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(Error::conflict(
                    "release_exists",
                    format!("product `{}` already has a release {}", release.product, release.version_key),
                ));
            }
            Err(e) => return Err(db_error(e, "failed to insert a release")),
        }
        for artifact_id in &release.artifact_ids {
            let attached = sqlx::query("INSERT INTO release_artifact (artifact_id, release_id) VALUES ($1, $2)")
                .bind(artifact_id)
                .bind(&release.id)
                .execute(&mut *tx)
                .await;
            match attached {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => {
                    return Err(Error::conflict("artifact_in_release", format!("build {artifact_id} already belongs to another release")));
                }
                Err(e) => return Err(db_error(e, "failed to attach a build to a release")),
            }
        }
        sqlx::query("INSERT INTO managed_product (product, since) VALUES ($1, $2) ON CONFLICT (product) DO NOTHING")
            .bind(&release.product)
            .bind(release.created_at.timestamp_millis())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to record a managed product"))?;
        bump_revision(&mut tx).await?;
        tx.commit().await.map_err(|e| db_error(e, "failed to commit a release"))
    }

    pub async fn find_release(&self, id: &str) -> Result<Option<Release>> {
        let row = sqlx::query("SELECT id, product, version, version_key, channel, notes, created_at FROM firmware_release WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a release"))?;
        let Some(row) = row else { return Ok(None) };
        let mut release = release_from_row(&row)?;
        release.artifact_ids = self.release_artifacts(&release.id).await?;
        Ok(Some(release))
    }

    pub async fn list_releases(&self, product: Option<&str>) -> Result<Vec<Release>> {
        let condition = if product.is_some() { "WHERE product = $1" } else { "WHERE $1 = $1" };
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, product, version, version_key, channel, notes, created_at FROM firmware_release {condition} ORDER BY created_at DESC, id DESC LIMIT 500"
        )))
        .bind(product.unwrap_or_default().to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to list releases"))?;
        let mut releases = rows.iter().map(release_from_row).collect::<Result<Vec<_>>>()?;
        for release in &mut releases {
            release.artifact_ids = self.release_artifacts(&release.id).await?;
        }
        Ok(releases)
    }

    async fn release_artifacts(&self, release_id: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT artifact_id FROM release_artifact WHERE release_id = $1 ORDER BY artifact_id")
            .bind(release_id)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a release's builds"))?;
        Ok(rows.iter().map(|r| r.get("artifact_id")).collect())
    }

    /// Deletes a release no rollout uses; false if it does not exist.
    pub async fn delete_release(&self, id: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        // A write first: on SQLite, a transaction that reads first and then writes fails at
        // once (no busy wait) when another connection wrote in between.
        bump_revision(&mut tx).await?;
        let used: i64 = sqlx::query("SELECT COUNT(*) AS n FROM rollout WHERE release_id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to check a release's rollouts"))?
            .get("n");
        if used > 0 {
            return Err(Error::conflict("release_in_use", "a rollout uses this release; releases with rollouts are kept as history"));
        }
        sqlx::query("DELETE FROM release_artifact WHERE release_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to delete a release"))?;
        let deleted = sqlx::query("DELETE FROM firmware_release WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to delete a release"))?;
        tx.commit().await.map_err(|e| db_error(e, "failed to commit a release deletion"))?;
        Ok(deleted.rows_affected() == 1)
    }

    /// Every build that belongs to a release, with its product.
    pub async fn held_artifacts(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT r.product AS product, a.artifact_id AS artifact_id FROM release_artifact a JOIN firmware_release r ON r.id = a.release_id")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read released builds"))?;
        Ok(rows.iter().map(|r| (r.get("product"), r.get("artifact_id"))).collect())
    }

    /// Products managed by rollouts, with the time (Unix ms) they became so: their first release.
    pub async fn managed_products(&self) -> Result<Vec<(String, DateTime<Utc>)>> {
        let rows = sqlx::query("SELECT product, since FROM managed_product")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read managed products"))?;
        Ok(rows.iter().map(|r| (r.get("product"), from_millis(r.get("since")))).collect())
    }

    /// True when a build belongs to a release (so it cannot be deleted).
    pub async fn artifact_released(&self, artifact_id: &str) -> Result<bool> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM release_artifact WHERE artifact_id = $1")
            .bind(artifact_id)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to check a build's release"))?;
        Ok(row.get::<i64, _>("n") > 0)
    }

    // ---- groups ----

    pub async fn insert_group(&self, id: &str, name: &str, device_ids: &[String]) -> Result<()> {
        let now = now_millis();
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        let inserted = sqlx::query("INSERT INTO device_group (id, name, created_at, updated_at) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(name)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(Error::conflict("group_exists", format!("a group named `{name}` exists"))),
            Err(e) => return Err(db_error(e, "failed to insert a group")),
        }
        add_group_members(&mut tx, id, device_ids).await?;
        bump_revision(&mut tx).await?;
        tx.commit().await.map_err(|e| db_error(e, "failed to commit a group"))
    }

    pub async fn find_group(&self, id: &str) -> Result<Option<Group>> {
        let row = sqlx::query(
            "SELECT id, name, created_at, updated_at, (SELECT COUNT(*) FROM device_group_member m WHERE m.group_id = device_group.id) AS size FROM device_group WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to read a group"))?;
        row.map(|r| group_from_row(&r)).transpose()
    }

    pub async fn list_groups(&self) -> Result<Vec<Group>> {
        let rows = sqlx::query(
            "SELECT id, name, created_at, updated_at, (SELECT COUNT(*) FROM device_group_member m WHERE m.group_id = device_group.id) AS size FROM device_group ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to list groups"))?;
        rows.iter().map(group_from_row).collect()
    }

    pub async fn group_members(&self, id: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT device_id FROM device_group_member WHERE group_id = $1 ORDER BY device_id")
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a group's devices"))?;
        Ok(rows.iter().map(|r| r.get("device_id")).collect())
    }

    /// Adds and removes devices of a group; false if it does not exist.
    pub async fn change_group(&self, id: &str, name: Option<&str>, add: &[String], remove: &[String]) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        let updated = sqlx::query("UPDATE device_group SET name = COALESCE($1, name), updated_at = $2 WHERE id = $3")
            .bind(name.map(str::to_string))
            .bind(now_millis())
            .bind(id)
            .execute(&mut *tx)
            .await;
        match updated {
            Ok(result) if result.rows_affected() == 0 => return Ok(false),
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(Error::conflict("group_exists", "another group has this name")),
            Err(e) => return Err(db_error(e, "failed to update a group")),
        }
        add_group_members(&mut tx, id, add).await?;
        for device_id in remove {
            sqlx::query("DELETE FROM device_group_member WHERE group_id = $1 AND device_id = $2")
                .bind(id)
                .bind(device_id)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error(e, "failed to remove a group member"))?;
        }
        bump_revision(&mut tx).await?;
        tx.commit().await.map_err(|e| db_error(e, "failed to commit a group change"))?;
        Ok(true)
    }

    /// Deletes a group no rollout that may still offer uses; false if it does not exist.
    pub async fn delete_group(&self, id: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        let rows = sqlx::query("SELECT target FROM rollout WHERE state IN ('draft', 'running', 'paused', 'halted', 'completed')")
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to check a group's rollouts"))?;
        for row in rows {
            let target: String = row.get("target");
            let target: Value = serde_json::from_str(&target).unwrap_or_default();
            if target["group"].as_str() == Some(id) {
                return Err(Error::conflict("group_in_use", "a rollout targets this group; cancel it first"));
            }
        }
        sqlx::query("DELETE FROM device_group_member WHERE group_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to delete a group"))?;
        let deleted = sqlx::query("DELETE FROM device_group WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to delete a group"))?;
        bump_revision(&mut tx).await?;
        tx.commit().await.map_err(|e| db_error(e, "failed to commit a group deletion"))?;
        Ok(deleted.rows_affected() == 1)
    }

    // ---- rollouts ----

    pub async fn insert_rollout(&self, rollout: &Rollout) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO rollout ({ROLLOUT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, NULL, NULL, NULL, $15, $16, NULL)"
        )))
        .bind(&rollout.id)
        .bind(&rollout.name)
        .bind(&rollout.release_id)
        .bind(&rollout.product)
        .bind(encode_target(&rollout.target).to_string())
        .bind(encode_stages(&rollout.stages).to_string())
        .bind(encode_options(&rollout.options).to_string())
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
        insert_transition(&mut tx, &rollout.id, "", rollout.state.as_str(), 0, "operator", &rollout.reason, now_millis()).await?;
        bump_revision(&mut tx).await?;
        tx.commit().await.map_err(|e| db_error(e, "failed to commit a rollout"))
    }

    pub async fn find_rollout(&self, id: &str) -> Result<Option<Rollout>> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {ROLLOUT_COLUMNS} FROM rollout WHERE id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a rollout"))?;
        row.map(|r| rollout_from_row(&r)).transpose()
    }

    /// Rollouts in any of `states` (all when empty), of `product` if given, newest first.
    pub async fn list_rollouts(&self, states: &[RolloutState], product: Option<&str>) -> Result<Vec<Rollout>> {
        let states_sql = if states.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = states.iter().map(|s| format!("'{}'", s.as_str())).collect();
            format!("AND state IN ({})", list.join(", "))
        };
        let product_sql = if product.is_some() { "product = $1" } else { "$1 = $1" };
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollout WHERE {product_sql} {states_sql} ORDER BY created_at DESC, id DESC LIMIT 1000"
        )))
        .bind(product.unwrap_or_default().to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to list rollouts"))?;
        rows.iter().map(rollout_from_row).collect()
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
        rows.iter().map(rollout_from_row).collect()
    }

    /// Applies a transition if the rollout is still in `from` at `from_stage`; false if
    /// another replica (or an earlier run) got there first.
    pub async fn transition_rollout(&self, change: &TransitionWrite<'_>) -> Result<bool> {
        let now = now_millis();
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        let stage_changed = change.to_stage != change.from_stage || change.started;
        let (shares, sizes, target_size) = match change.shares {
            Some((shares, sizes, target_size)) => {
                (Some(json!(shares).to_string()), Some(json!(sizes).to_string()), Some(i64::try_from(target_size).unwrap_or(i64::MAX)))
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
    pub async fn record_rollout_count(&self, id: &str, sizes: &[u64], target_size: u64) -> Result<()> {
        sqlx::query("UPDATE rollout SET stage_sizes = $1, target_size = $2, counted_at = $3 WHERE id = $4")
            .bind(json!(sizes).to_string())
            .bind(i64::try_from(target_size).unwrap_or(i64::MAX))
            .bind(now_millis())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to record a rollout count"))?;
        Ok(())
    }

    pub async fn rollout_history(&self, id: &str) -> Result<Vec<Transition>> {
        let rows =
            sqlx::query("SELECT from_state, to_state, stage, actor, reason, at FROM rollout_transition WHERE rollout_id = $1 ORDER BY id")
                .bind(id)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error(e, "failed to read a rollout's history"))?;
        Ok(rows
            .iter()
            .map(|r| Transition {
                from: r.get("from_state"),
                to: r.get("to_state"),
                stage: r.get::<i64, _>("stage") as usize,
                actor: r.get("actor"),
                reason: r.get("reason"),
                at: from_millis(r.get("at")),
            })
            .collect())
    }

    // ---- a rollout's devices ----

    /// Devices per (stage, state, excused).
    pub async fn rollout_tally(&self, id: &str) -> Result<Vec<(usize, MemberState, bool, u64)>> {
        let rows = sqlx::query(
            "SELECT stage, state, excused, COUNT(*) AS n FROM rollout_member WHERE rollout_id = $1 GROUP BY stage, state, excused",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to count a rollout's devices"))?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<i64, _>("stage") as usize,
                    MemberState::parse_stored(&r.get::<String, _>("state")),
                    r.get::<i64, _>("excused") != 0,
                    r.get::<i64, _>("n") as u64,
                )
            })
            .collect())
    }

    /// Where a device stands in a rollout, if the rollout ever offered it its release.
    pub async fn rollout_member_state(&self, rollout_id: &str, device_id: &str) -> Result<Option<MemberState>> {
        let row = sqlx::query("SELECT state FROM rollout_member WHERE rollout_id = $1 AND device_id = $2")
            .bind(rollout_id)
            .bind(device_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a rollout's device"))?;
        Ok(row.map(|r| MemberState::parse_stored(&r.get::<String, _>("state"))))
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
        Ok(rows.iter().map(|r| (r.get("rollout_id"), r.get::<i64, _>("n") as u64)).collect())
    }

    /// Marks devices that reported no outcome before their deadline as timed out.
    pub async fn time_out_members(&self, id: &str, now: DateTime<Utc>) -> Result<u64> {
        let result = sqlx::query(
            "UPDATE rollout_member SET state = 'timed_out', message = 'no outcome reported before the deadline', updated_at = $1 \
             WHERE rollout_id = $2 AND state IN ('offered', 'downloading', 'installing', 'installed') AND deadline_at < $1",
        )
        .bind(now.timestamp_millis())
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to time out devices"))?;
        Ok(result.rows_affected())
    }

    pub async fn rollout_members(&self, id: &str) -> Result<Vec<MemberRow>> {
        let rows = sqlx::query("SELECT device_id, state, from_version FROM rollout_member WHERE rollout_id = $1")
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a rollout's devices"))?;
        Ok(rows
            .iter()
            .map(|r| MemberRow {
                device_id: r.get("device_id"),
                state: MemberState::parse_stored(&r.get::<String, _>("state")),
                from_version: r.get("from_version"),
            })
            .collect())
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
        let rows = sqlx::query(
            "SELECT id, product, hardware, channel, version, tags, created_at FROM device WHERE product = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(product)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to read devices"))?;
        Ok(rows.iter().map(target_row).collect())
    }

    /// The devices of these ids that exist, as target filters see them.
    pub async fn target_rows_by_ids(&self, ids: &[String]) -> Result<Vec<TargetRow>> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT id, product, hardware, channel, version, tags, created_at FROM device WHERE id IN ({})",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(id.clone());
            }
            let rows = query.fetch_all(&self.pool).await.map_err(|e| db_error(e, "failed to read devices"))?;
            found.extend(rows.iter().map(target_row));
        }
        Ok(found)
    }

    // ---- products ----

    pub async fn set_product_min_version(&self, product: &str, min_version: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE product SET min_version = $1, updated_at = $2 WHERE name = $3")
            .bind(min_version.map(str::to_string))
            .bind(now_millis())
            .bind(product)
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to set the anti-rollback floor"))?;
        Ok(())
    }

    pub async fn product_min_version(&self, product: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT min_version FROM product WHERE name = $1")
            .bind(product)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read the anti-rollback floor"))?;
        Ok(row.and_then(|r| r.get::<Option<String>, _>("min_version")))
    }
}

async fn bump_revision(tx: &mut sqlx::Transaction<'_, Any>) -> Result<()> {
    sqlx::query("UPDATE rollout_revision SET n = n + 1 WHERE id = 1")
        .execute(&mut **tx)
        .await
        .map_err(|e| db_error(e, "failed to bump the rollout revision"))?;
    Ok(())
}

async fn add_group_members(tx: &mut sqlx::Transaction<'_, Any>, id: &str, device_ids: &[String]) -> Result<()> {
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

#[allow(clippy::too_many_arguments)]
async fn insert_transition(
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

fn target_row(r: &AnyRow) -> TargetRow {
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

fn release_from_row(row: &AnyRow) -> Result<Release> {
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

fn group_from_row(row: &AnyRow) -> Result<Group> {
    let decode = |e: sqlx::Error| db_error(e, "failed to decode a group");
    Ok(Group {
        id: row.try_get("id").map_err(decode)?,
        name: row.try_get("name").map_err(decode)?,
        size: row.try_get::<i64, _>("size").map_err(decode)? as u64,
        created_at: from_millis(row.try_get("created_at").map_err(decode)?),
        updated_at: from_millis(row.try_get("updated_at").map_err(decode)?),
    })
}

fn rollout_from_row(row: &AnyRow) -> Result<Rollout> {
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

fn encode_target(target: &Target) -> Value {
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

fn decode_target(value: &Value) -> Option<Target> {
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

fn encode_stages(stages: &[Stage]) -> Value {
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

fn decode_stages(value: &Value) -> Option<Vec<Stage>> {
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

fn encode_options(options: &RolloutOptions) -> Value {
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

fn decode_options(value: &Value, start_at: Option<DateTime<Utc>>) -> Option<RolloutOptions> {
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

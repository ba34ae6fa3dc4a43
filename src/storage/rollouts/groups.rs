//! Device groups and their members.

use super::*;

impl Store {
    pub async fn insert_group(&self, id: &GroupId, name: &str, device_ids: &[DeviceId]) -> Result<()> {
        let now = now_millis();
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        let inserted = sqlx::query("INSERT INTO device_group (id, name, created_at, updated_at) VALUES ($1, $2, $3, $4)")
            .bind(id.as_str())
            .bind(name)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await;
        match inserted {
            Ok(_) => {}
            Err(e) if violates(&e, "device_group_name_idx") => {
                return Err(Error::conflict("group_exists", format!("a group named `{name}` exists")));
            }
            Err(e) => return Err(db_error(e, "failed to insert a group")),
        }
        add_group_members(&mut tx, id, device_ids).await?;
        bump_revision(&mut tx).await?;
        tx.commit().await.map_err(|e| db_error(e, "failed to commit a group"))
    }

    pub async fn find_group(&self, id: &GroupId) -> Result<Option<Group>> {
        let row = sqlx::query(
            "SELECT id, name, created_at, updated_at, (SELECT COUNT(*) FROM device_group_member m WHERE m.group_id = device_group.id) AS size FROM device_group WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to read a group"))?;
        row.map(|r| map_row::<GroupRow, Group>(&r)).transpose()
    }

    pub async fn list_groups(&self) -> Result<Vec<Group>> {
        let rows = sqlx::query(
            "SELECT id, name, created_at, updated_at, (SELECT COUNT(*) FROM device_group_member m WHERE m.group_id = device_group.id) AS size FROM device_group ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to list groups"))?;
        map_rows::<GroupRow, Group>(&rows)
    }

    pub async fn group_members(&self, id: &GroupId) -> Result<Vec<DeviceId>> {
        let rows = sqlx::query("SELECT device_id FROM device_group_member WHERE group_id = $1 ORDER BY device_id")
            .bind(id.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a group's devices"))?;
        Ok(texts(&rows, "device_id")?.into_iter().map(DeviceId::from).collect())
    }

    /// Adds and removes devices of a group; false if it does not exist.
    pub async fn change_group(&self, id: &GroupId, name: Option<&str>, add: &[DeviceId], remove: &[DeviceId]) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        let updated = sqlx::query("UPDATE device_group SET name = COALESCE($1, name), updated_at = $2 WHERE id = $3")
            .bind(name.map(str::to_string))
            .bind(now_millis())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await;
        match updated {
            Ok(result) if result.rows_affected() == 0 => return Ok(false),
            Ok(_) => {}
            Err(e) if violates(&e, "device_group_name_idx") => return Err(Error::conflict("group_exists", "another group has this name")),
            Err(e) => return Err(db_error(e, "failed to update a group")),
        }
        add_group_members(&mut tx, id, add).await?;
        for device_id in remove {
            sqlx::query("DELETE FROM device_group_member WHERE group_id = $1 AND device_id = $2")
                .bind(id.as_str())
                .bind(device_id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error(e, "failed to remove a group member"))?;
        }
        bump_revision(&mut tx).await?;
        tx.commit().await.map_err(|e| db_error(e, "failed to commit a group change"))?;
        Ok(true)
    }

    /// Deletes a group no rollout that may still offer uses; false if it does not exist.
    pub async fn delete_group(&self, id: &GroupId) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        // A write first: on SQLite a transaction that reads and then writes fails at once
        // (SQLITE_BUSY, a 500) when another connection wrote in between (the audit writer,
        // presence); one that writes first waits for the lock instead.
        bump_revision(&mut tx).await?;
        let rows = sqlx::query("SELECT id, target FROM rollout WHERE state IN ('draft', 'running', 'paused', 'halted', 'completed')")
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to check a group's rollouts"))?;
        for target in map_rows::<RolloutTargetRow, Target>(&rows)? {
            if target.group.as_ref().is_some_and(|group| group == id) {
                return Err(Error::conflict("group_in_use", "a rollout targets this group; cancel it first"));
            }
        }
        sqlx::query("DELETE FROM device_group_member WHERE group_id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to delete a group"))?;
        let deleted = sqlx::query("DELETE FROM device_group WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to delete a group"))?;
        tx.commit().await.map_err(|e| db_error(e, "failed to commit a group deletion"))?;
        Ok(deleted.rows_affected() == 1)
    }
}

//! Pair keys.

use super::*;

impl Store {
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

    /// Pairs a device: uses a pair key once (it exists, is unused and has not expired), marks
    /// it used by `device_id` and makes its owner the device's owner, all in one transaction,
    /// writing no other column of the device. Returns the owner; `None` (nothing written) when
    /// the key cannot be used or the device does not exist.
    pub async fn pair_device(&self, key_hash: &str, device_id: &str) -> Result<Option<String>> {
        let now = now_millis();
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        // A write first: on SQLite, the transaction takes the write lock at once.
        let claimed = sqlx::query(
            "UPDATE pairing SET used_at = $1, device_id = $2 WHERE key_hash = $3 AND used_at IS NULL AND expires_at > $1 RETURNING owner",
        )
        .bind(now)
        .bind(device_id)
        .bind(key_hash)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| db_error(e, "failed to use a pair key"))?;
        let Some(claimed) = claimed else { return Ok(None) };
        let owner: String = claimed.try_get("owner").map_err(|e| db_error(e, "failed to read a pair key"))?;
        let updated = sqlx::query("UPDATE device SET owner = $1, updated_at = $2 WHERE id = $3")
            .bind(&owner)
            .bind(now)
            .bind(device_id)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to set a device's owner"))?;
        if updated.rows_affected() == 0 {
            return Ok(None);
        }
        log_change(&mut tx, device_id).await?;
        tx.commit().await.map_err(|e| db_error(e, "failed to commit a pairing"))?;
        Ok(Some(owner))
    }
}

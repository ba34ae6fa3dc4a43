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
}

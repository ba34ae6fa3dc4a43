//! Server-wide secrets, stored as digests (the admin API key when none is configured).

use sqlx::Row;

use super::sql::violates;
use super::{Store, db_error, now_millis};
use crate::domain::Result;

impl Store {
    pub async fn find_server_secret(&self, name: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT value FROM server_secret WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a server secret"))?;
        row.map(|r| r.try_get::<String, _>("value")).transpose().map_err(|e| db_error(e, "failed to read a server secret"))
    }

    /// Stores a secret unless one of that name exists. Returns false when another replica
    /// (or an earlier start) stored one first.
    pub async fn insert_server_secret(&self, name: &str, value: &str) -> Result<bool> {
        let result = sqlx::query("INSERT INTO server_secret (name, value, created_at) VALUES ($1, $2, $3)")
            .bind(name)
            .bind(value)
            .bind(now_millis())
            .execute(&self.pool)
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if violates(&e, "server_secret_pkey") => Ok(false),
            Err(e) => Err(db_error(e, "failed to store a server secret")),
        }
    }
}

impl Store {
    /// Stores or overwrites a secret.
    pub async fn replace_server_secret(&self, name: &str, value: &str) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        sqlx::query("DELETE FROM server_secret WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to replace a server secret"))?;
        sqlx::query("INSERT INTO server_secret (name, value, created_at) VALUES ($1, $2, $3)")
            .bind(name)
            .bind(value)
            .bind(now_millis())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to replace a server secret"))?;
        tx.commit().await.map_err(|e| db_error(e, "failed to replace a server secret"))
    }
}

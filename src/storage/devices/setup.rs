//! Setup progress reports (seed 004's codes).

use super::*;

impl Store {
    pub async fn insert_setup_event(&self, device_id: &str, code: u8, title: &str, description: &str) -> Result<()> {
        let now = now_millis();
        let status = StoredSetupStatus { code, title: title.to_string(), description: description.to_string(), at: now };
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        sqlx::query("INSERT INTO setup_event (id, device_id, code, title, description, at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(device_id)
            .bind(i64::from(code))
            .bind(title)
            .bind(description)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to record a setup report"))?;
        sqlx::query("UPDATE device SET setup_status = $1 WHERE id = $2")
            .bind(serde_json::to_string(&status).expect("a setup status serializes"))
            .bind(device_id)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to record a setup report"))?;
        log_change(&mut tx, device_id).await?;
        tx.commit().await.map_err(|e| db_error(e, "failed to commit a setup report"))
    }

    pub async fn list_setup_events(&self, device_id: &str) -> Result<Vec<SetupEvent>> {
        let rows = sqlx::query("SELECT id, code, title, description, at FROM setup_event WHERE device_id = $1 ORDER BY id")
            .bind(device_id)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read setup reports"))?;
        map_rows::<SetupEventRow, SetupEvent>(&rows)
    }
}

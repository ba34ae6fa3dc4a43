//! The rollout revision counter every replica polls.

use super::*;

impl Store {
    pub async fn rollout_revision(&self) -> Result<i64> {
        let row = sqlx::query("SELECT n FROM rollout_revision WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read the rollout revision"))?;
        row.try_get("n").map_err(|e| db_error(e, "failed to decode the rollout revision"))
    }
}

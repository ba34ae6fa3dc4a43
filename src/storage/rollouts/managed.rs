//! Products managed by rollouts since their first release.

use super::*;

impl Store {
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
        Ok(row
            .map(|r| r.try_get::<Option<String>, _>("min_version"))
            .transpose()
            .map_err(|e| db_error(e, "failed to decode a product"))?
            .flatten())
    }
}

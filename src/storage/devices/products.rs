//! Products: the device policy rows.

use super::*;

impl Store {
    /// Sets (or with `None` removes) a product's DDI gateway token digest.
    pub async fn set_ddi_gateway_token(&self, name: &str, digest_hex: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE product SET ddi_gateway_token_hash = $1, updated_at = $2 WHERE name = $3")
            .bind(digest_hex.map(str::to_string))
            .bind(now_millis())
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to set a gateway token"))?;
        Ok(())
    }

    /// Whether a product has a DDI gateway token.
    pub async fn has_ddi_gateway_token(&self, name: &str) -> Result<bool> {
        let row = sqlx::query("SELECT ddi_gateway_token_hash FROM product WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a product"))?;
        Ok(row.and_then(|r| r.try_get::<Option<String>, _>("ddi_gateway_token_hash").ok().flatten()).is_some())
    }

    /// The product whose DDI gateway token has this digest. An exact match on digests of
    /// long secrets: timing reveals nothing usable.
    pub async fn product_of_gateway_token(&self, digest_hex: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT name FROM product WHERE ddi_gateway_token_hash = $1")
            .bind(digest_hex)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a product"))?;
        Ok(row.and_then(|r| r.try_get::<String, _>("name").ok()))
    }

    pub async fn find_product(&self, name: &str) -> Result<Option<Product>> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {PRODUCT_COLUMNS} FROM product WHERE name = $1")))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a product"))?;
        row.map(|r| map_row::<ProductRow, Product>(&r)).transpose()
    }

    pub async fn list_products(&self) -> Result<Vec<Product>> {
        let rows = sqlx::query(AssertSqlSafe(format!("SELECT {PRODUCT_COLUMNS} FROM product ORDER BY name")))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to list products"))?;
        map_rows::<ProductRow, Product>(&rows)
    }

    /// Creates or replaces a product's policy and, when `min_version` is given, sets its
    /// anti-rollback floor (`Some(None)` removes it), in one transaction.
    pub async fn upsert_product(&self, product: &Product, min_version: Option<Option<&str>>) -> Result<Product> {
        let now = now_millis();
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        let updated = sqlx::query(
            "UPDATE product SET provisioning = $1, provision_key = $2, provision_secret_hash = $3, poll_interval_s = $4, updated_at = $5, \
             hardware = $6, public_secrets = $7 WHERE name = $8",
        )
        .bind(product.provisioning.as_str())
        .bind(product.provision_key.clone())
        .bind(product.provision_secret_hash.clone())
        .bind(i64::from(product.poll_interval_s))
        .bind(now)
        .bind(hardware_column(&product.hardware))
        .bind(i64::from(product.public_secrets))
        .bind(product.name.as_str())
        .execute(&mut *tx)
        .await;
        let updated = match updated {
            Ok(result) => result.rows_affected(),
            Err(e) => return Err(db_error(e, "failed to update a product")),
        };
        if updated == 0 {
            let inserted = sqlx::query(
                "INSERT INTO product (name, provisioning, provision_key, provision_secret_hash, poll_interval_s, hardware, public_secrets, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(product.name.as_str())
            .bind(product.provisioning.as_str())
            .bind(product.provision_key.clone())
            .bind(product.provision_secret_hash.clone())
            .bind(i64::from(product.poll_interval_s))
            .bind(hardware_column(&product.hardware))
            .bind(i64::from(product.public_secrets))
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await;
            match inserted {
                Ok(_) => {}
                Err(e) if violates(&e, "product_pkey") => {
                    // The name was created concurrently: update it. The failed statement ends
                    // this transaction (PostgreSQL aborts it).
                    drop(tx);
                    return Box::pin(self.upsert_product(product, min_version)).await;
                }
                Err(e) => return Err(db_error(e, "failed to insert a product")),
            }
        }
        if let Some(min_version) = min_version {
            sqlx::query("UPDATE product SET min_version = $1, updated_at = $2 WHERE name = $3")
                .bind(min_version.map(str::to_string))
                .bind(now)
                .bind(product.name.as_str())
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error(e, "failed to set the anti-rollback floor"))?;
        }
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {PRODUCT_COLUMNS} FROM product WHERE name = $1")))
            .bind(product.name.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to read a product"))?;
        tx.commit().await.map_err(|e| db_error(e, "failed to commit a product"))?;
        row.map(|r| map_row::<ProductRow, Product>(&r))
            .transpose()?
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("product vanished after upsert")))
    }

    pub async fn find_product_by_provision_key(&self, key: &str) -> Result<Option<Product>> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {PRODUCT_COLUMNS} FROM product WHERE provision_key = $1")))
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a product"))?;
        row.map(|r| map_row::<ProductRow, Product>(&r)).transpose()
    }
}

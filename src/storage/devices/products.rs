//! Products: the device policy rows.

use super::*;

impl Store {
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

    /// Creates or replaces a product's policy.
    pub async fn upsert_product(&self, product: &Product) -> Result<Product> {
        let now = now_millis();
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
        .bind(&product.name)
        .execute(&self.pool)
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
            .bind(&product.name)
            .bind(product.provisioning.as_str())
            .bind(product.provision_key.clone())
            .bind(product.provision_secret_hash.clone())
            .bind(i64::from(product.poll_interval_s))
            .bind(hardware_column(&product.hardware))
            .bind(i64::from(product.public_secrets))
            .bind(now)
            .bind(now)
            .execute(&self.pool)
            .await;
            match inserted {
                Ok(_) => {}
                // The name was created concurrently: update it.
                Err(e) if violates(&e, "product_pkey") => return Box::pin(self.upsert_product(product)).await,
                Err(e) => return Err(db_error(e, "failed to insert a product")),
            }
        }
        self.find_product(&product.name).await?.ok_or_else(|| Error::Internal(anyhow::anyhow!("product vanished after upsert")))
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

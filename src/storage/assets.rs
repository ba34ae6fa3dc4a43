//! Assets: seed-003 files by name, and native versioned, signed assets.

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::{Store, db_error, from_millis, is_unique_violation};
use crate::domain::Result;
use crate::domain::asset::{Asset, AssetFile};

const ASSET_COLUMNS: &str = "id, product, name, version, size, sha256, content_type, blob_key, signature, comment, created_at";

impl Store {
    pub async fn find_asset_file(&self, filename: &str) -> Result<Option<AssetFile>> {
        let row = sqlx::query("SELECT filename, blob_key, size, sha256, uploaded_at FROM asset_file WHERE filename = $1")
            .bind(filename)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read an asset file"))?;
        Ok(row.map(|r| AssetFile {
            filename: r.get("filename"),
            blob_key: r.get("blob_key"),
            size: r.get::<i64, _>("size") as u64,
            sha256: r.get("sha256"),
            uploaded_at: from_millis(r.get("uploaded_at")),
        }))
    }

    /// Stores or replaces a file; returns the blob key it replaced, if any.
    pub async fn put_asset_file(&self, file: &AssetFile) -> Result<Option<String>> {
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        // Delete first: the write lock is taken at once, so concurrent uploads serialise.
        let previous = sqlx::query("DELETE FROM asset_file WHERE filename = $1 RETURNING blob_key")
            .bind(&file.filename)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to replace an asset file"))?
            .map(|r| r.get::<String, _>("blob_key"));
        sqlx::query("INSERT INTO asset_file (filename, blob_key, size, sha256, uploaded_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(&file.filename)
            .bind(&file.blob_key)
            .bind(file.size as i64)
            .bind(&file.sha256)
            .bind(file.uploaded_at.timestamp_millis())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to store an asset file"))?;
        tx.commit().await.map_err(|e| db_error(e, "failed to store an asset file"))?;
        Ok(previous)
    }

    // ---- native assets ----

    /// The newest version number of an asset (0 when none).
    pub async fn latest_asset_version(&self, product: &str, name: &str) -> Result<i64> {
        let row = sqlx::query("SELECT MAX(version) AS v FROM asset WHERE product = $1 AND name = $2")
            .bind(product)
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read asset versions"))?;
        Ok(row.get::<Option<i64>, _>("v").unwrap_or(0))
    }

    /// Inserts a version; `false` when that version number was taken meanwhile.
    pub async fn insert_asset(&self, asset: &Asset) -> Result<bool> {
        let inserted = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO asset ({ASSET_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        )))
        .bind(&asset.id)
        .bind(&asset.product)
        .bind(&asset.name)
        .bind(asset.version)
        .bind(asset.size as i64)
        .bind(&asset.sha256)
        .bind(&asset.content_type)
        .bind(&asset.blob_key)
        .bind(&asset.signature)
        .bind(&asset.comment)
        .bind(asset.created_at.timestamp_millis())
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => Ok(true),
            Err(e) if is_unique_violation(&e) => Ok(false),
            Err(e) => Err(db_error(e, "failed to store an asset")),
        }
    }

    /// The blob of any asset version with these bytes.
    pub async fn find_asset_blob_by_sha256(&self, sha256: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT blob_key FROM asset WHERE sha256 = $1 LIMIT 1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to look up an asset blob"))?;
        Ok(row.map(|r| r.get("blob_key")))
    }

    pub async fn find_asset(&self, product: &str, name: &str, version: Option<i64>) -> Result<Option<Asset>> {
        let row = match version {
            Some(version) => {
                sqlx::query(AssertSqlSafe(format!("SELECT {ASSET_COLUMNS} FROM asset WHERE product = $1 AND name = $2 AND version = $3")))
                    .bind(product)
                    .bind(name)
                    .bind(version)
                    .fetch_optional(&self.pool)
                    .await
            }
            None => {
                sqlx::query(AssertSqlSafe(format!(
                    "SELECT {ASSET_COLUMNS} FROM asset WHERE product = $1 AND name = $2 ORDER BY version DESC LIMIT 1"
                )))
                .bind(product)
                .bind(name)
                .fetch_optional(&self.pool)
                .await
            }
        }
        .map_err(|e| db_error(e, "failed to read an asset"))?;
        Ok(row.map(|r| asset_from_row(&r)))
    }

    /// Versions of one asset, newest first.
    pub async fn list_asset_versions(&self, product: &str, name: &str) -> Result<Vec<Asset>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ASSET_COLUMNS} FROM asset WHERE product = $1 AND name = $2 ORDER BY version DESC LIMIT 1000"
        )))
        .bind(product)
        .bind(name)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to list asset versions"))?;
        Ok(rows.iter().map(asset_from_row).collect())
    }

    /// The newest version of every asset (of one product, if given), by product and name.
    pub async fn list_latest_assets(&self, product: Option<&str>) -> Result<Vec<Asset>> {
        let filter = if product.is_some() { "WHERE a.product = $1" } else { "" };
        let sql = format!(
            "SELECT {} FROM asset a JOIN (SELECT product, name, MAX(version) AS latest FROM asset GROUP BY product, name) m \
             ON a.product = m.product AND a.name = m.name AND a.version = m.latest {filter} ORDER BY a.product, a.name LIMIT 10000",
            ASSET_COLUMNS.split(", ").map(|c| format!("a.{c}")).collect::<Vec<_>>().join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        if let Some(product) = product {
            query = query.bind(product.to_string());
        }
        let rows = query.fetch_all(&self.pool).await.map_err(|e| db_error(e, "failed to list assets"))?;
        Ok(rows.iter().map(asset_from_row).collect())
    }
}

fn asset_from_row(row: &AnyRow) -> Asset {
    Asset {
        id: row.get("id"),
        product: row.get("product"),
        name: row.get("name"),
        version: row.get("version"),
        size: row.get::<i64, _>("size") as u64,
        sha256: row.get("sha256"),
        content_type: row.get("content_type"),
        blob_key: row.get("blob_key"),
        signature: row.get("signature"),
        comment: row.get("comment"),
        created_at: from_millis(row.get("created_at")),
    }
}

//! Assets: seed-003 files by name, and native versioned, signed assets.

use sqlx::{AssertSqlSafe, Row};

use super::row::{self, Corrupt, Table, map_row, map_rows};
use super::sql::{self, Builder, violates};
use super::{Store, db_error};
use crate::domain::Result;
use crate::domain::asset::{Asset, AssetFile};
use crate::domain::firmware::ProductName;

const ASSET_COLUMNS: &str = "id, product, name, version, size, sha256, content_type, blob_key, signature, comment, created_at";

impl Store {
    pub async fn find_asset_file(&self, filename: &str) -> Result<Option<AssetFile>> {
        let row = sqlx::query("SELECT filename, blob_key, size, sha256, uploaded_at FROM asset_file WHERE filename = $1")
            .bind(filename)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read an asset file"))?;
        row.map(|r| map_row::<AssetFileRow, AssetFile>(&r)).transpose()
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
            .map(|r| r.try_get::<String, _>("blob_key"))
            .transpose()
            .map_err(|e| db_error(e, "failed to replace an asset file"))?;
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
        Ok(row.try_get::<Option<i64>, _>("v").map_err(|e| db_error(e, "failed to read asset versions"))?.unwrap_or(0))
    }

    /// Inserts a version; `false` when that version number was taken meanwhile.
    pub async fn insert_asset(&self, asset: &Asset) -> Result<bool> {
        let inserted = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO asset ({ASSET_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        )))
        .bind(asset.id.as_str())
        .bind(asset.product.as_str())
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
            Err(e) if violates(&e, "asset_version_idx") => Ok(false),
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
        row.map(|r| r.try_get("blob_key")).transpose().map_err(|e| db_error(e, "failed to look up an asset blob"))
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
        row.map(|r| map_row::<AssetRow, Asset>(&r)).transpose()
    }

    /// A page of one asset's versions, newest first, and how many it has.
    pub async fn list_asset_versions(&self, product: &str, name: &str, limit: u32, offset: u64) -> Result<(Vec<Asset>, u64)> {
        let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM asset WHERE product = $1 AND name = $2")
            .bind(product)
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to count asset versions"))?
            .get("n");
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ASSET_COLUMNS} FROM asset WHERE product = $1 AND name = $2 ORDER BY version DESC LIMIT {limit} OFFSET {offset}"
        )))
        .bind(product)
        .bind(name)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to list asset versions"))?;
        Ok((map_rows::<AssetRow, Asset>(&rows)?, total as u64))
    }

    /// The newest version of every asset (of one product, if given), by product and name.
    pub async fn list_latest_assets(&self, product: Option<&str>) -> Result<Vec<Asset>> {
        let mut query = Builder::new(&format!(
            "SELECT {} FROM asset a JOIN (SELECT product, name, MAX(version) AS latest FROM asset GROUP BY product, name) m \
             ON a.product = m.product AND a.name = m.name AND a.version = m.latest",
            ASSET_COLUMNS.split(", ").map(|c| format!("a.{c}")).collect::<Vec<_>>().join(", ")
        ));
        if let Some(product) = product {
            query.push(" WHERE a.product = ").push_bind(product.to_string());
        }
        query.push(" ORDER BY a.product, a.name LIMIT 10000");
        let rows = sql::fetch_all(query, &self.pool).await.map_err(|e| db_error(e, "failed to list assets"))?;
        map_rows::<AssetRow, Asset>(&rows)
    }
}

/// An `asset_file` row.
#[derive(sqlx::FromRow)]
struct AssetFileRow {
    filename: String,
    blob_key: String,
    size: i64,
    sha256: String,
    uploaded_at: i64,
}

impl Table for AssetFileRow {
    const TABLE: &'static str = "asset_file";
    const KEY: &'static [&'static str] = &["filename"];
}

impl TryFrom<AssetFileRow> for AssetFile {
    type Error = Corrupt;

    fn try_from(row: AssetFileRow) -> Result<AssetFile, Corrupt> {
        Ok(AssetFile {
            size: row::int("size", row.size)?,
            uploaded_at: row::time("uploaded_at", row.uploaded_at)?,
            filename: row.filename,
            blob_key: row.blob_key,
            sha256: row.sha256,
        })
    }
}

/// An `asset` row.
#[derive(sqlx::FromRow)]
struct AssetRow {
    id: String,
    product: String,
    name: String,
    version: i64,
    size: i64,
    sha256: String,
    content_type: String,
    blob_key: String,
    signature: String,
    comment: String,
    created_at: i64,
}

impl Table for AssetRow {
    const TABLE: &'static str = "asset";
    const KEY: &'static [&'static str] = &["id"];
}

impl TryFrom<AssetRow> for Asset {
    type Error = Corrupt;

    fn try_from(row: AssetRow) -> Result<Asset, Corrupt> {
        Ok(Asset {
            size: row::int("size", row.size)?,
            created_at: row::time("created_at", row.created_at)?,
            id: row.id.into(),
            product: row::parsed("product", &row.product, ProductName::parse)?,
            name: row.name,
            version: row.version,
            sha256: row.sha256,
            content_type: row.content_type,
            blob_key: row.blob_key,
            signature: row.signature,
            comment: row.comment,
        })
    }
}

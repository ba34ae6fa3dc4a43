//! Storage of the compatibility protocols: seed-001 firmware file names and the seed-002
//! "latest" mark. Both point at artifacts without a foreign key (see migration 0004); every
//! read joins `artifact`, so a name of a deleted build no longer resolves.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::row::{self, Corrupt, Table, map_row, map_rows};
use super::{Store, db_error, now_millis};
use crate::domain::Result;

/// A seed-001 firmware file name and the build it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompatFile {
    pub name: String,
    pub artifact_id: String,
    pub created_at: DateTime<Utc>,
}

impl Store {
    /// Names `artifact_id` `name`, replacing what the name pointed at before (the seed-001
    /// server overwrote files of the same name).
    pub async fn put_compat_file(&self, name: &str, artifact_id: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO compat_file (name, artifact_id, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET artifact_id = excluded.artifact_id, created_at = excluded.created_at",
        )
        .bind(name)
        .bind(artifact_id)
        .bind(now_millis())
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to name a firmware file"))?;
        Ok(())
    }

    pub async fn find_compat_file(&self, name: &str) -> Result<Option<CompatFile>> {
        let row = sqlx::query(
            "SELECT f.name, f.artifact_id, f.created_at FROM compat_file f JOIN artifact a ON a.id = f.artifact_id WHERE f.name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to read a firmware file name"))?;
        row.map(|r| map_row::<CompatFileRow, CompatFile>(&r)).transpose()
    }

    /// Every named file whose build still exists, by name.
    pub async fn list_compat_files(&self) -> Result<Vec<CompatFile>> {
        let rows = sqlx::query(
            "SELECT f.name, f.artifact_id, f.created_at FROM compat_file f JOIN artifact a ON a.id = f.artifact_id ORDER BY f.name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to list firmware file names"))?;
        map_rows::<CompatFileRow, CompatFile>(&rows)
    }

    /// The names of one build, oldest first.
    pub async fn compat_file_names(&self, artifact_id: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT name FROM compat_file WHERE artifact_id = $1 ORDER BY created_at, name")
            .bind(artifact_id)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read firmware file names"))?;
        texts(&rows, "name")
    }

    pub async fn delete_compat_file(&self, name: &str) -> Result<bool> {
        let result = sqlx::query("DELETE FROM compat_file WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to delete a firmware file name"))?;
        Ok(result.rows_affected() > 0)
    }

    /// Marks (or with `None` unmarks) the build a product's seed-002 devices receive.
    pub async fn set_product_latest(&self, product: &str, artifact_id: Option<&str>) -> Result<()> {
        let query = match artifact_id {
            Some(id) => sqlx::query(
                "INSERT INTO product_latest (product, artifact_id, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (product) DO UPDATE SET artifact_id = excluded.artifact_id, updated_at = excluded.updated_at",
            )
            .bind(product)
            .bind(id)
            .bind(now_millis()),
            None => sqlx::query("DELETE FROM product_latest WHERE product = $1").bind(product),
        };
        query.execute(&self.pool).await.map_err(|e| db_error(e, "failed to mark the latest build"))?;
        Ok(())
    }

    pub async fn find_product_latest(&self, product: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT l.artifact_id FROM product_latest l JOIN artifact a ON a.id = l.artifact_id WHERE l.product = $1")
            .bind(product)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read the latest build"))?;
        row.map(|r| r.try_get::<String, _>("artifact_id")).transpose().map_err(|e| db_error(e, "failed to read the latest build"))
    }

    /// Names of every product with a policy or a build, sorted.
    pub async fn product_names(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT name FROM product UNION SELECT DISTINCT product AS name FROM artifact ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to list products"))?;
        texts(&rows, "name")
    }
}

fn texts(rows: &[sqlx::any::AnyRow], column: &str) -> Result<Vec<String>> {
    rows.iter().map(|r| r.try_get::<String, _>(column).map_err(|e| db_error(e, "failed to decode a row"))).collect()
}

/// A `compat_file` row.
#[derive(sqlx::FromRow)]
struct CompatFileRow {
    name: String,
    artifact_id: String,
    created_at: i64,
}

impl Table for CompatFileRow {
    const TABLE: &'static str = "compat_file";
    const KEY: &'static [&'static str] = &["name"];
}

impl TryFrom<CompatFileRow> for CompatFile {
    type Error = Corrupt;

    fn try_from(row: CompatFileRow) -> Result<CompatFile, Corrupt> {
        Ok(CompatFile { created_at: row::time("created_at", row.created_at)?, name: row.name, artifact_id: row.artifact_id })
    }
}

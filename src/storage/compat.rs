//! Storage of the compatibility protocols: seed-001 firmware file names and the seed-002
//! "latest" mark. Both point at artifacts without a foreign key (see migration 0004); every
//! read joins `artifact`, so a name of a deleted build no longer resolves.

use sqlx::Row;

use super::row::{self, Corrupt, Table, map_row, map_rows};
use super::{Store, db_error, now_millis};
use crate::domain::compat::CompatFile;
use crate::domain::{ArtifactId, Result};

/// What `remove_compat_file` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompatFileRemoval {
    /// The name does not (or no longer) name that build: nothing changed.
    NotFound,
    /// The name is gone; other names still refer to the build.
    Name,
    /// The name and the build (its record and slots) are gone; the blob is the caller's.
    NameAndBuild,
    /// Nothing changed: devices are being updated to the build, its last name.
    BuildInUse,
    /// Nothing changed: the build, its last name, belongs to a release.
    BuildReleased,
}

impl Store {
    /// Names `artifact_id` `name`, replacing what the name pointed at before (the seed-001
    /// server overwrote files of the same name).
    pub async fn put_compat_file(&self, name: &str, artifact_id: &ArtifactId) -> Result<()> {
        sqlx::query(
            "INSERT INTO compat_file (name, artifact_id, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET artifact_id = excluded.artifact_id, created_at = excluded.created_at",
        )
        .bind(name)
        .bind(artifact_id.as_str())
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
    pub async fn compat_file_names(&self, artifact_id: &ArtifactId) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT name FROM compat_file WHERE artifact_id = $1 ORDER BY created_at, name")
            .bind(artifact_id.as_str())
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

    /// Removes the name `name` of build `artifact_id` and, when no other name refers to the
    /// build, the build's record too, in one transaction: nothing changes when the build
    /// would go while an update to it is in progress or it belongs to a release (the
    /// conditions of `artifact_in_use` and `artifact_released`). Concurrent removals of a
    /// build's names are serialised, so that the last one removes the build.
    pub async fn remove_compat_file(&self, name: &str, artifact_id: &ArtifactId) -> Result<CompatFileRemoval> {
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        // A write first: it takes SQLite's write lock, and on PostgreSQL it locks the build's
        // names until the end of the transaction.
        sqlx::query("UPDATE compat_file SET artifact_id = artifact_id WHERE artifact_id = $1")
            .bind(artifact_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to lock firmware file names"))?;
        let removed = sqlx::query("DELETE FROM compat_file WHERE name = $1 AND artifact_id = $2")
            .bind(name)
            .bind(artifact_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to delete a firmware file name"))?;
        if removed.rows_affected() == 0 {
            return Ok(CompatFileRemoval::NotFound);
        }
        let by_artifact = |sql: &'static str| sqlx::query(sql).bind(artifact_id.to_string());
        let others = by_artifact("SELECT COUNT(*) AS n FROM compat_file WHERE artifact_id = $1")
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to read firmware file names"))?;
        if others.get::<i64, _>("n") > 0 {
            tx.commit().await.map_err(|e| db_error(e, "failed to commit a firmware file deletion"))?;
            return Ok(CompatFileRemoval::Name);
        }
        let in_use = by_artifact(
            "SELECT COUNT(*) AS n FROM update_attempt WHERE artifact_id = $1 AND current = 1 AND state NOT IN ('succeeded', 'failed', 'rejected', 'cancelled')",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| db_error(e, "failed to check artifact use"))?;
        if in_use.get::<i64, _>("n") > 0 {
            return Ok(CompatFileRemoval::BuildInUse);
        }
        let released = by_artifact("SELECT COUNT(*) AS n FROM release_artifact WHERE artifact_id = $1")
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to check a build's release"))?;
        if released.get::<i64, _>("n") > 0 {
            return Ok(CompatFileRemoval::BuildReleased);
        }
        for (sql, context) in [
            ("DELETE FROM artifact_hardware WHERE artifact_id = $1", "failed to delete artifact slots"),
            ("DELETE FROM artifact WHERE id = $1", "failed to delete an artifact"),
        ] {
            by_artifact(sql).execute(&mut *tx).await.map_err(|e| db_error(e, context))?;
        }
        tx.commit().await.map_err(|e| db_error(e, "failed to commit a firmware file deletion"))?;
        Ok(CompatFileRemoval::NameAndBuild)
    }

    /// Marks (or with `None` unmarks) the build a product's seed-002 devices receive.
    pub async fn set_product_latest(&self, product: &str, artifact_id: Option<&ArtifactId>) -> Result<()> {
        let query = match artifact_id {
            Some(id) => sqlx::query(
                "INSERT INTO product_latest (product, artifact_id, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (product) DO UPDATE SET artifact_id = excluded.artifact_id, updated_at = excluded.updated_at",
            )
            .bind(product)
            .bind(id.as_str())
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
        Ok(CompatFile { created_at: row::time("created_at", row.created_at)?, name: row.name, artifact_id: row.artifact_id.into() })
    }
}

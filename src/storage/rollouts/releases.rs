//! Releases and their builds.

use super::*;

impl Store {
    pub async fn insert_release(&self, release: &Release) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        let inserted = sqlx::query(
            "INSERT INTO firmware_release (id, product, version, version_key, channel, notes, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(release.id.as_str())
        .bind(release.product.as_str())
        .bind(&release.version)
        .bind(release.version_key.canonical())
        .bind(release.channel.as_str())
        .bind(&release.notes)
        .bind(release.created_at.timestamp_millis())
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if violates(&e, "firmware_release_version_idx") => {
                return Err(Error::conflict(
                    "release_exists",
                    format!("product `{}` already has a release {}", release.product, release.version_key),
                ));
            }
            Err(e) => return Err(db_error(e, "failed to insert a release")),
        }
        for artifact_id in &release.artifact_ids {
            let attached = sqlx::query("INSERT INTO release_artifact (artifact_id, release_id) VALUES ($1, $2)")
                .bind(artifact_id.as_str())
                .bind(release.id.as_str())
                .execute(&mut *tx)
                .await;
            match attached {
                Ok(_) => {}
                Err(e) if violates(&e, "release_artifact_pkey") => {
                    return Err(Error::conflict("artifact_in_release", format!("build {artifact_id} already belongs to another release")));
                }
                Err(e) => return Err(db_error(e, "failed to attach a build to a release")),
            }
        }
        sqlx::query("INSERT INTO managed_product (product, since) VALUES ($1, $2) ON CONFLICT (product) DO NOTHING")
            .bind(release.product.as_str())
            .bind(release.created_at.timestamp_millis())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to record a managed product"))?;
        bump_revision(&mut tx).await?;
        tx.commit().await.map_err(|e| db_error(e, "failed to commit a release"))
    }

    pub async fn find_release(&self, id: &ReleaseId) -> Result<Option<Release>> {
        let row = sqlx::query("SELECT id, product, version, version_key, channel, notes, created_at FROM firmware_release WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a release"))?;
        let Some(row) = row else { return Ok(None) };
        let mut release = map_row::<ReleaseRow, Release>(&row)?;
        release.artifact_ids = self.release_artifacts(&release.id).await?;
        Ok(Some(release))
    }

    pub async fn list_releases(&self, product: Option<&str>) -> Result<Vec<Release>> {
        let mut query = Builder::new("SELECT id, product, version, version_key, channel, notes, created_at FROM firmware_release");
        if let Some(product) = product {
            query.push(" WHERE product = ").push_bind(product.to_string());
        }
        query.push(" ORDER BY created_at DESC, id DESC LIMIT 500");
        let rows = sql::fetch_all(query, &self.pool).await.map_err(|e| db_error(e, "failed to list releases"))?;
        let mut releases = map_rows::<ReleaseRow, Release>(&rows)?;
        for release in &mut releases {
            release.artifact_ids = self.release_artifacts(&release.id).await?;
        }
        Ok(releases)
    }

    async fn release_artifacts(&self, release_id: &ReleaseId) -> Result<Vec<ArtifactId>> {
        let rows = sqlx::query("SELECT artifact_id FROM release_artifact WHERE release_id = $1 ORDER BY artifact_id")
            .bind(release_id.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a release's builds"))?;
        Ok(texts(&rows, "artifact_id")?.into_iter().map(ArtifactId::from).collect())
    }

    /// Deletes a release no rollout uses; false if it does not exist.
    pub async fn delete_release(&self, id: &ReleaseId) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        // A write first: on SQLite, a transaction that reads first and then writes fails at
        // once (no busy wait) when another connection wrote in between.
        bump_revision(&mut tx).await?;
        let used: i64 = sqlx::query("SELECT COUNT(*) AS n FROM rollout WHERE release_id = $1")
            .bind(id.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to check a release's rollouts"))?
            .get("n");
        if used > 0 {
            return Err(Error::conflict("release_in_use", "a rollout uses this release; releases with rollouts are kept as history"));
        }
        sqlx::query("DELETE FROM release_artifact WHERE release_id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to delete a release"))?;
        let deleted = sqlx::query("DELETE FROM firmware_release WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to delete a release"))?;
        tx.commit().await.map_err(|e| db_error(e, "failed to commit a release deletion"))?;
        Ok(deleted.rows_affected() == 1)
    }

    /// Every build that belongs to a release, with its product.
    pub async fn held_artifacts(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT r.product AS product, a.artifact_id AS artifact_id FROM release_artifact a JOIN firmware_release r ON r.id = a.release_id")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read released builds"))?;
        Ok(texts(&rows, "product")?.into_iter().zip(texts(&rows, "artifact_id")?).collect())
    }

    /// Products managed by rollouts, with the time (Unix ms) they became so: their first release.
    pub async fn managed_products(&self) -> Result<Vec<(String, DateTime<Utc>)>> {
        let rows = sqlx::query("SELECT product, since FROM managed_product")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read managed products"))?;
        map_rows::<ManagedProductRow, (String, DateTime<Utc>)>(&rows)
    }

    /// True when a build belongs to a release (so it cannot be deleted).
    pub async fn artifact_released(&self, artifact_id: &ArtifactId) -> Result<bool> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM release_artifact WHERE artifact_id = $1")
            .bind(artifact_id.as_str())
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to check a build's release"))?;
        Ok(row.get::<i64, _>("n") > 0)
    }
}

//! Build usage: the releases and rollouts that ship a firmware build, and the devices that
//! run, are pinned to, or are being offered it.

use sqlx::{AssertSqlSafe, Row};

use super::rollouts::ROLLOUT_COLUMNS;
use super::row::map_rows;
use super::sql::{self, Builder};
use super::{Store, db_error};
use crate::domain::rollout::Rollout;
use crate::domain::{ArtifactId, ReleaseId, Result};

/// Which version column of the device table a count reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionColumn {
    /// The version the device reports.
    Running,
    /// The version an operator pinned.
    Pinned,
}

/// Devices of one (product, hardware, version text).
#[derive(Debug)]
pub struct VersionCount {
    pub product: String,
    pub hardware: Option<String>,
    pub version: String,
    pub devices: u64,
}

impl Store {
    /// Devices of these products grouped by hardware and the version in `column` (devices
    /// without one are left out): one grouped query.
    pub async fn device_version_counts(&self, products: &[&str], column: VersionColumn) -> Result<Vec<VersionCount>> {
        if products.is_empty() {
            return Ok(Vec::new());
        }
        let column = match column {
            VersionColumn::Running => "version",
            VersionColumn::Pinned => "target_version",
        };
        let mut query = Builder::new(&format!("SELECT product, hardware, {column} AS v, COUNT(*) AS n FROM device WHERE product IN ("));
        query.push_list(products.iter().map(|p| p.to_string()));
        query.push(&format!(") AND {column} IS NOT NULL GROUP BY product, hardware, {column}"));
        let rows = sql::fetch_all(query, &self.pool).await.map_err(|e| db_error(e, "failed to count devices by version"))?;
        let decode = |e| db_error(e, "failed to decode a version count");
        rows.iter()
            .map(|r| {
                Ok(VersionCount {
                    product: r.try_get("product").map_err(decode)?,
                    hardware: r.try_get("hardware").map_err(decode)?,
                    version: r.try_get("v").map_err(decode)?,
                    devices: r.try_get::<i64, _>("n").map_err(decode)?.max(0) as u64,
                })
            })
            .collect()
    }

    /// The release of each of these builds that belongs to one.
    pub async fn releases_of_artifacts(&self, artifact_ids: &[&ArtifactId]) -> Result<Vec<(ArtifactId, ReleaseId)>> {
        if artifact_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut query = Builder::new("SELECT artifact_id, release_id FROM release_artifact WHERE artifact_id IN (");
        query.push_list(artifact_ids.iter().map(|a| a.to_string())).push(")");
        let rows = sql::fetch_all(query, &self.pool).await.map_err(|e| db_error(e, "failed to read builds' releases"))?;
        let decode = |e| db_error(e, "failed to decode a build's release");
        rows.iter()
            .map(|r| {
                let artifact: String = r.try_get("artifact_id").map_err(decode)?;
                let release: String = r.try_get("release_id").map_err(decode)?;
                Ok((artifact.into(), release.into()))
            })
            .collect()
    }

    /// Rollouts of a release, newest first.
    pub async fn rollouts_of_release(&self, release_id: &ReleaseId) -> Result<Vec<Rollout>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollout WHERE release_id = $1 ORDER BY created_at DESC, id DESC"
        )))
        .bind(release_id.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to list a release's rollouts"))?;
        map_rows::<super::rollouts::RolloutRow, Rollout>(&rows)
    }

    /// Devices whose current attempt brings them to this build and has not finished.
    pub async fn devices_offered_artifact(&self, artifact_id: &ArtifactId) -> Result<u64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM update_attempt WHERE artifact_id = $1 AND current = 1 AND state NOT IN ('succeeded', 'failed', 'rejected')",
        )
        .bind(artifact_id.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to count offered devices"))?;
        Ok(row.get::<i64, _>("n").max(0) as u64)
    }
}

//! Artifacts: firmware builds and the (product, version, hardware) slots they occupy.

use serde::{Deserialize, Serialize};
// Dynamic SQL here is assembled only from constants and `$n` placeholders; values are bound.
use sqlx::{AssertSqlSafe, Row};

use super::row::{self, Corrupt, Table, map_row, map_rows};
use super::sql::{self, Builder, violates};
use super::{Store, db_error, now_millis};
use crate::domain::firmware::{
    Artifact, ArtifactFilter, ArtifactPatch, ArtifactSort, ArtifactSpec, Channel, Digests, HardwareId, ImageFacts, ProductName,
};
use crate::domain::version::Version;
use crate::domain::{ArtifactId, Error, Result};

/// Everything needed to record a new artifact.
pub struct NewArtifact<'a> {
    pub id: &'a ArtifactId,
    pub spec: &'a ArtifactSpec,
    pub digests: &'a Digests,
    pub blob_key: &'a str,
    pub image: Option<&'a ImageFacts>,
}

const COLUMNS: &str =
    "id, product, version, version_key, hardware, channel, notes, size, sha256, sha1, md5, blob_key, image, created_at, updated_at";

impl Store {
    /// Records an artifact and claims its slots, atomically. A slot taken concurrently by
    /// another upload is a conflict.
    pub async fn insert_artifact(&self, new: NewArtifact<'_>) -> Result<Artifact> {
        let now = now_millis();
        let hardware: Vec<&str> = new.spec.hardware.iter().map(|h| h.as_str()).collect();
        let hardware_json = serde_json::to_string(&hardware).expect("a list of strings serializes");
        let image_json = new.image.map(|i| serde_json::to_string(&StoredImage::from(i)).expect("image facts serialize"));
        let version_key = new.spec.version.canonical();

        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO artifact ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        )))
        .bind(new.id.as_str())
        .bind(new.spec.product.as_str())
        .bind(&new.spec.version_label)
        .bind(&version_key)
        .bind(&hardware_json)
        .bind(new.spec.channel.as_str())
        .bind(&new.spec.notes)
        .bind(new.digests.size as i64)
        .bind(&new.digests.sha256)
        .bind(&new.digests.sha1)
        .bind(&new.digests.md5)
        .bind(new.blob_key)
        .bind(image_json)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(e, "failed to insert an artifact"))?;
        for hardware_id in &hardware {
            let result = sqlx::query("INSERT INTO artifact_hardware (product, version_key, hardware, artifact_id) VALUES ($1, $2, $3, $4)")
                .bind(new.spec.product.as_str())
                .bind(&version_key)
                .bind(hardware_id)
                .bind(new.id.as_str())
                .execute(&mut *tx)
                .await;
            match result {
                Ok(_) => {}
                Err(e) if violates(&e, "artifact_hardware_pkey") => {
                    return Err(Error::conflict(
                        "version_exists",
                        format!(
                            "{} {} for hardware `{hardware_id}` was stored concurrently with different bytes",
                            new.spec.product.as_str(),
                            new.spec.version_label
                        ),
                    ));
                }
                Err(e) => return Err(db_error(e, "failed to claim an artifact slot")),
            }
        }
        tx.commit().await.map_err(|e| db_error(e, "failed to commit an artifact"))?;
        self.find_artifact(new.id).await?.ok_or_else(|| Error::Internal(anyhow::anyhow!("artifact vanished after insert")))
    }

    pub async fn find_artifact(&self, id: &ArtifactId) -> Result<Option<Artifact>> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {COLUMNS} FROM artifact WHERE id = $1")))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read an artifact"))?;
        row.map(|r| map_row::<ArtifactRow, Artifact>(&r)).transpose()
    }

    /// Artifacts of a product and version (any hardware).
    pub async fn find_artifacts_by_version(&self, product: &str, version_key: &str) -> Result<Vec<Artifact>> {
        let rows = sqlx::query(AssertSqlSafe(format!("SELECT {COLUMNS} FROM artifact WHERE product = $1 AND version_key = $2")))
            .bind(product)
            .bind(version_key)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read artifacts"))?;
        map_rows::<ArtifactRow, Artifact>(&rows)
    }

    /// A page of artifacts and the total number matching the filter.
    pub async fn list_artifacts(&self, filter: &ArtifactFilter) -> Result<(Vec<Artifact>, u64)> {
        let mut count = Builder::new("SELECT COUNT(*) AS n FROM artifact");
        push_artifact_filter(&mut count, filter);
        let total: i64 = count.build().fetch_one(&self.pool).await.map_err(|e| db_error(e, "failed to count artifacts"))?.get("n");
        let order = match filter.sort {
            ArtifactSort::NewestFirst => "created_at DESC, id DESC",
            ArtifactSort::OldestFirst => "created_at ASC, id ASC",
            ArtifactSort::Product => "product ASC, created_at DESC, id DESC",
        };
        let mut list = Builder::new(&format!("SELECT {COLUMNS} FROM artifact"));
        push_artifact_filter(&mut list, filter);
        list.push(" ORDER BY ").push(order);
        // Written, not bound (they are integers): PostgreSQL plans a known limit better.
        list.push(&format!(" LIMIT {} OFFSET {}", filter.limit, filter.offset));
        let rows = sql::fetch_all(list, &self.pool).await.map_err(|e| db_error(e, "failed to list artifacts"))?;
        Ok((map_rows::<ArtifactRow, Artifact>(&rows)?, total as u64))
    }

    pub async fn update_artifact(&self, id: &ArtifactId, patch: &ArtifactPatch) -> Result<Option<Artifact>> {
        let result =
            sqlx::query("UPDATE artifact SET notes = COALESCE($1, notes), channel = COALESCE($2, channel), updated_at = $3 WHERE id = $4")
                .bind(patch.notes.clone())
                .bind(patch.channel.as_deref().map(str::to_string))
                .bind(now_millis())
                .bind(id.as_str())
                .execute(&self.pool)
                .await
                .map_err(|e| db_error(e, "failed to update an artifact"))?;
        if result.rows_affected() == 0 {
            return Ok(None);
        }
        self.find_artifact(id).await
    }

    /// Removes an artifact's record and slots. Returns the removed artifact.
    pub async fn delete_artifact(&self, id: &ArtifactId) -> Result<Option<Artifact>> {
        let Some(artifact) = self.find_artifact(id).await? else {
            return Ok(None);
        };
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        sqlx::query("DELETE FROM artifact_hardware WHERE artifact_id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to delete artifact slots"))?;
        let deleted = sqlx::query("DELETE FROM artifact WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to delete an artifact"))?;
        tx.commit().await.map_err(|e| db_error(e, "failed to commit an artifact deletion"))?;
        Ok((deleted.rows_affected() > 0).then_some(artifact))
    }

    /// Number of artifacts and their total size in bytes.
    pub async fn artifact_totals(&self) -> Result<(u64, u64)> {
        let row = sqlx::query("SELECT COUNT(*) AS n, CAST(COALESCE(SUM(size), 0) AS BIGINT) AS bytes FROM artifact")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to total artifacts"))?;
        Ok((row.get::<i64, _>("n") as u64, row.get::<i64, _>("bytes") as u64))
    }

    /// True when some artifact record points at this blob.
    pub async fn blob_in_use(&self, blob_key: &str) -> Result<bool> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM artifact WHERE blob_key = $1")
            .bind(blob_key)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to look up a blob"))?;
        Ok(row.get::<i64, _>("n") > 0)
    }
}

/// The `WHERE` clause of an artifact filter, its values bound in place.
fn push_artifact_filter(query: &mut Builder, filter: &ArtifactFilter) {
    let mut conditions = query.separated(" WHERE ", " AND ");
    if let Some(product) = &filter.product {
        conditions.next().push("product = ").push_bind(product.clone());
    }
    if let Some(version_key) = &filter.version_key {
        conditions.next().push("version_key = ").push_bind(version_key.clone());
    }
    if let Some(channel) = &filter.channel {
        conditions.next().push("channel = ").push_bind(channel.clone());
    }
    if let Some(hardware) = &filter.hardware {
        conditions
            .next()
            .push("id IN (SELECT artifact_id FROM artifact_hardware WHERE hardware = ")
            .push_bind(hardware.to_string())
            .push(")");
    }
}

/// An `artifact` row.
#[derive(sqlx::FromRow)]
struct ArtifactRow {
    id: String,
    product: String,
    version: String,
    version_key: String,
    hardware: String,
    channel: String,
    notes: String,
    size: i64,
    sha256: String,
    sha1: String,
    md5: String,
    blob_key: String,
    image: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl Table for ArtifactRow {
    const TABLE: &'static str = "artifact";
    const KEY: &'static [&'static str] = &["id"];
}

impl TryFrom<ArtifactRow> for Artifact {
    type Error = Corrupt;

    fn try_from(row: ArtifactRow) -> Result<Artifact, Corrupt> {
        Ok(Artifact {
            hardware: row::parsed_list("hardware", row::json("hardware", &row.hardware)?, HardwareId::parse)?,
            size: row::int("size", row.size)?,
            image: row::json_opt::<StoredImage>("image", row.image.as_deref())?.map(ImageFacts::from),
            created_at: row::time("created_at", row.created_at)?,
            updated_at: row::time("updated_at", row.updated_at)?,
            id: row.id.into(),
            product: row::parsed("product", &row.product, ProductName::parse)?,
            version: row.version,
            version_key: row::parsed("version_key", &row.version_key, |text| Ok(Version::parse(text)?))?,
            channel: row::parsed("channel", &row.channel, Channel::parse)?,
            notes: row.notes,
            sha256: row.sha256,
            sha1: row.sha1,
            md5: row.md5,
            blob_key: row.blob_key,
        })
    }
}

/// The JSON form of `ImageFacts` in the `image` column.
#[derive(Serialize, Deserialize)]
struct StoredImage {
    format: String,
    chip_id: u16,
    chip: Option<String>,
    project_name: String,
    version: String,
    idf_ver: String,
    compile_time: String,
    compile_date: String,
    secure_version: u32,
    segment_count: u8,
    hash_appended: bool,
    appended_sha256: Option<String>,
    app_elf_sha256: String,
    min_chip_rev_full: u16,
    max_chip_rev_full: u16,
    flash_size_bytes: Option<u64>,
}

impl From<&ImageFacts> for StoredImage {
    fn from(i: &ImageFacts) -> Self {
        StoredImage {
            format: i.format.clone(),
            chip_id: i.chip_id,
            chip: i.chip.clone(),
            project_name: i.project_name.clone(),
            version: i.version.clone(),
            idf_ver: i.idf_ver.clone(),
            compile_time: i.compile_time.clone(),
            compile_date: i.compile_date.clone(),
            secure_version: i.secure_version,
            segment_count: i.segment_count,
            hash_appended: i.hash_appended,
            appended_sha256: i.appended_sha256.clone(),
            app_elf_sha256: i.app_elf_sha256.clone(),
            min_chip_rev_full: i.min_chip_rev_full,
            max_chip_rev_full: i.max_chip_rev_full,
            flash_size_bytes: i.flash_size_bytes,
        }
    }
}

impl From<StoredImage> for ImageFacts {
    fn from(i: StoredImage) -> Self {
        ImageFacts {
            format: i.format,
            chip_id: i.chip_id,
            chip: i.chip,
            project_name: i.project_name,
            version: i.version,
            idf_ver: i.idf_ver,
            compile_time: i.compile_time,
            compile_date: i.compile_date,
            secure_version: i.secure_version,
            segment_count: i.segment_count,
            hash_appended: i.hash_appended,
            appended_sha256: i.appended_sha256,
            app_elf_sha256: i.app_elf_sha256,
            min_chip_rev_full: i.min_chip_rev_full,
            max_chip_rev_full: i.max_chip_rev_full,
            flash_size_bytes: i.flash_size_bytes,
        }
    }
}

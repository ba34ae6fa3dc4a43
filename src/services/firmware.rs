//! The firmware store: streaming ingestion of uploads, and deletion.
//!
//! An upload is streamed into a staged blob while being hashed (SHA-256, SHA-1, MD5) and
//! parsed as an ESP image, all on the fly; memory use does not depend on the file size.
//! The artifact becomes visible only once the blob is committed and its record inserted.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::Core;
use crate::blob::BlobWriter;
use crate::domain::esp_image::{EspImageInfo, EspImageParser};
use crate::domain::firmware::{self, Artifact, ArtifactFilter, Digests, Existing, ImageFacts, UploadMeta};
use crate::domain::{ArtifactId, Error, Result};
use crate::storage::NewArtifact;

/// Why a body stream ended early, as reported by the adapter.
#[derive(Debug)]
pub enum BodyError {
    /// The body exceeded a size limit enforced below us.
    TooLarge,
    /// The client went away or sent a malformed body.
    Interrupted(String),
    /// The client sent too slowly (see `http::body_guard`).
    TooSlow(String),
}

/// A fully received upload, not yet visible.
pub struct StagedUpload {
    id: ArtifactId,
    blob_key: String,
    writer: BlobWriter,
    digests: Digests,
    image: Option<EspImageInfo>,
}

/// The outcome of an upload: the artifact, and whether it was newly created (false when
/// the same bytes were already stored for that product and version).
pub struct Ingested {
    pub artifact: Artifact,
    pub created: bool,
}

impl StagedUpload {
    /// What the file is as an ESP32 app image, if it is one.
    pub fn image(&self) -> Option<&EspImageInfo> {
        self.image.as_ref()
    }
}

/// Streams a body into a staged blob, hashing and parsing it on the way. Stops with 413 as
/// soon as more than `limit` bytes arrive.
pub async fn stage<S>(core: &Core, mut body: S, limit: u64) -> Result<StagedUpload>
where
    S: Stream<Item = std::result::Result<Bytes, BodyError>> + Unpin,
{
    let id = ArtifactId::new();
    let blob_key = format!("artifacts/{id}");
    let mut writer = core.blobs.create(&blob_key).await?;
    let mut hasher = UploadHasher::default();
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(BodyError::TooLarge) => {
                writer.abort().await;
                return Err(Error::PayloadTooLarge { limit });
            }
            Err(BodyError::Interrupted(reason)) => {
                writer.abort().await;
                return Err(Error::invalid("upload_interrupted", format!("the upload did not complete: {reason}")));
            }
            Err(BodyError::TooSlow(reason)) => {
                writer.abort().await;
                return Err(Error::RequestTimeout(reason));
            }
        };
        if hasher.size + chunk.len() as u64 > limit {
            writer.abort().await;
            return Err(Error::PayloadTooLarge { limit });
        }
        hasher.update(&chunk);
        if let Err(e) = writer.write(chunk).await {
            writer.abort().await;
            return Err(e);
        }
    }
    if hasher.size == 0 {
        writer.abort().await;
        return Err(Error::invalid("empty_file", "the uploaded file is empty"));
    }
    let (digests, parsed) = hasher.finish();
    let image = match parsed {
        Ok(image) => image,
        Err(e) => {
            writer.abort().await;
            return Err(Error::unprocessable(e.code(), format!("corrupt ESP32 app image: {e}")));
        }
    };
    metrics::counter!("updraft_upload_bytes_total").increment(digests.size);
    Ok(StagedUpload { id, blob_key, writer, digests, image })
}

/// Validates the metadata against the staged file and commits it as an artifact.
pub async fn commit(core: &Core, staged: StagedUpload, meta: &UploadMeta) -> Result<Ingested> {
    let StagedUpload { id, blob_key, writer, digests, image } = staged;
    let spec = match firmware::resolve(meta, image.as_ref()) {
        Ok(spec) => spec,
        Err(e) => {
            writer.abort().await;
            return Err(e);
        }
    };
    // A repeat of an upload is answered with what is stored; different bytes in the same
    // slot are a conflict. Both are decided before anything becomes visible.
    let stored = core.store.find_artifacts_by_version(spec.product.as_str(), &spec.version.canonical()).await?;
    match firmware::classify_existing(&stored, &spec, &digests) {
        Existing::Same(artifact) => {
            writer.abort().await;
            return Ok(Ingested { artifact: artifact.clone(), created: false });
        }
        Existing::Conflict(artifact) => {
            writer.abort().await;
            return Err(conflict(spec.product.as_str(), &spec.version_label, artifact));
        }
        Existing::None => {}
    }
    // Held until the record is written: the orphan-blob collector leaves the blob alone.
    let _lease = writer.commit().await?;
    let facts = image.as_ref().map(ImageFacts::from_esp);
    let inserted = core
        .store
        .insert_artifact(NewArtifact { id: &id, spec: &spec, digests: &digests, blob_key: &blob_key, image: facts.as_ref() })
        .await;
    match inserted {
        Ok(artifact) => {
            core.devices.forget_builds(&artifact.product);
            announce_builds_changed(core, &artifact.product);
            tracing::info!(artifact_id = %artifact.id, product = %artifact.product, version = %artifact.version, size = artifact.size, "artifact stored");
            Ok(Ingested { artifact, created: true })
        }
        Err(error) => {
            // Nothing points at the blob: remove it so a failed insert leaves nothing behind.
            if let Err(e) = core.blobs.delete(&blob_key).await {
                tracing::warn!(%blob_key, error = %e, "could not remove the blob of a failed upload");
            }
            // A concurrent upload of the same bytes won the race: that is a repeat, not an error.
            if let Error::Conflict { .. } = error {
                let stored = core.store.find_artifacts_by_version(spec.product.as_str(), &spec.version.canonical()).await?;
                if let Existing::Same(artifact) = firmware::classify_existing(&stored, &spec, &digests) {
                    return Ok(Ingested { artifact: artifact.clone(), created: false });
                }
            }
            Err(error)
        }
    }
}

fn conflict(product: &str, version: &str, existing: &Artifact) -> Error {
    Error::conflict(
        "version_exists",
        format!(
            "{product} {version} is already stored with different bytes (artifact {}, sha256 {}) for an overlapping hardware set ({}); upload it under a new version",
            existing.id,
            existing.sha256,
            existing.hardware.iter().map(|h| h.as_str()).collect::<Vec<_>>().join(", ")
        ),
    )
}

/// Edits an artifact's notes or channel.
pub async fn update(core: &Core, id: &ArtifactId, patch: &firmware::ArtifactPatch) -> Result<Artifact> {
    let artifact = core.store.update_artifact(id, patch).await?.ok_or_else(|| Error::not_found("artifact", id))?;
    core.devices.forget_builds(&artifact.product);
    announce_builds_changed(core, &artifact.product);
    Ok(artifact)
}

/// A build by id.
pub async fn find(core: &Core, id: &ArtifactId) -> Result<Artifact> {
    core.store.find_artifact(id).await?.ok_or_else(|| Error::not_found("artifact", id))
}

/// A page of the builds `filter` selects, and how many it selects in all.
pub async fn list(core: &Core, filter: &ArtifactFilter) -> Result<(Vec<Artifact>, u64)> {
    core.store.list_artifacts(filter).await
}

/// The number of builds and their total size in bytes.
pub async fn totals(core: &Core) -> Result<(u64, u64)> {
    core.store.artifact_totals().await
}

/// Deletes an artifact and its blob. The record goes first, so a failure to remove the
/// blob leaves an orphan blob (logged) rather than a record without bytes.
pub async fn delete(core: &Core, id: &ArtifactId) -> Result<Artifact> {
    if core.store.artifact_in_use(id).await? {
        return Err(in_use());
    }
    if core.store.artifact_released(id).await? {
        return Err(released());
    }
    let artifact = core.store.delete_artifact(id).await?.ok_or_else(|| Error::not_found("artifact", id))?;
    deleted(core, &artifact).await?;
    Ok(artifact)
}

/// Why a build cannot be deleted while devices are being updated to it.
pub(super) fn in_use() -> Error {
    Error::conflict("artifact_in_use", "devices are being updated to this build; wait until their updates finish")
}

/// Why a build of a release cannot be deleted.
pub(super) fn released() -> Error {
    Error::conflict("artifact_in_release", "this build belongs to a release; delete the release first")
}

/// What follows the deletion of a build's record: its blob goes when no other record uses it,
/// and caches and subscribers learn that the product's builds changed.
pub(super) async fn deleted(core: &Core, artifact: &Artifact) -> Result<()> {
    if !core.store.blob_in_use(&artifact.blob_key).await?
        && let Err(e) = core.blobs.delete(&artifact.blob_key).await
    {
        tracing::warn!(blob_key = %artifact.blob_key, error = %e, "artifact deleted but its blob could not be removed");
    }
    core.devices.forget_builds(&artifact.product);
    announce_builds_changed(core, &artifact.product);
    tracing::info!(artifact_id = %artifact.id, product = %artifact.product, version = %artifact.version, "artifact deleted");
    Ok(())
}

/// Hashes and parses an upload as it streams by.
struct UploadHasher {
    size: u64,
    sha256: Sha256,
    sha1: Sha1,
    md5: Md5,
    esp: EspImageParser,
}

impl Default for UploadHasher {
    fn default() -> Self {
        UploadHasher { size: 0, sha256: Sha256::new(), sha1: Sha1::new(), md5: Md5::new(), esp: EspImageParser::new() }
    }
}

impl UploadHasher {
    fn update(&mut self, chunk: &[u8]) {
        self.size += chunk.len() as u64;
        self.sha256.update(chunk);
        self.sha1.update(chunk);
        self.md5.update(chunk);
        self.esp.update(chunk);
    }

    fn finish(self) -> (Digests, std::result::Result<Option<EspImageInfo>, crate::domain::esp_image::EspImageError>) {
        let digests = Digests {
            size: self.size,
            sha256: hex::encode(self.sha256.finalize()),
            sha1: hex::encode(self.sha1.finalize()),
            md5: hex::encode(self.md5.finalize()),
        };
        (digests, self.esp.finish())
    }
}

/// Tells live consumers (the MQTT pusher) that a product's builds changed, so that connected
/// devices are offered what a check-in would now offer them.
fn announce_builds_changed(core: &Core, product: &str) {
    core.events.publish(super::events::Event::FirmwareChanged { product: product.to_string() });
}

//! Assets: seed 003's named files (uploads authorised by an RSA-signed timestamp), and
//! native assets: per product and name, immutable numbered versions identified by their
//! SHA-256 (identical bytes share one blob), each signed with the server's Ed25519 key.
//!
//! Uploads stream into a staged blob while hashing; nothing is visible until the blob is
//! committed and its record written.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};
use sha2::{Digest, Sha256};

use super::Core;
use super::events::Event;
use crate::blob::BlobWriter;
use crate::domain::asset::{Asset, AssetFile};
use crate::domain::firmware::ProductName;
use crate::domain::{AssetId, Error, Result};

/// How far a signed upload timestamp may be from the server's clock.
pub const TIMESTAMP_TOLERANCE_SECS: i64 = 300;

/// An upload being streamed into the blob store.
pub struct StagedUpload {
    writer: BlobWriter,
    key: String,
    hasher: Sha256,
    size: u64,
    limit: u64,
}

impl StagedUpload {
    pub async fn begin(core: &Core, limit: u64) -> Result<StagedUpload> {
        let key = format!("assets/{}", uuid::Uuid::now_v7());
        let writer = core.blobs.create(&key).await?;
        Ok(StagedUpload { writer, key, hasher: Sha256::new(), size: 0, limit })
    }

    pub async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.size += chunk.len() as u64;
        if self.size > self.limit {
            return Err(Error::PayloadTooLarge { limit: self.limit });
        }
        self.hasher.update(&chunk);
        self.writer.write(chunk).await
    }

    pub async fn abort(self) {
        self.writer.abort().await;
    }

    /// Refuses an empty upload (and removes its staging data), as firmware uploads do.
    async fn refuse_empty(self) -> Result<StagedUpload> {
        if self.size > 0 {
            return Ok(self);
        }
        self.abort().await;
        Err(Error::invalid("empty_file", "the file is empty; an asset must have at least one byte"))
    }

    fn finish(self) -> (BlobWriter, String, u64, String) {
        (self.writer, self.key, self.size, hex::encode(self.hasher.finalize()))
    }
}

// ---- seed 003 ----

/// Seed 003's filename rule: no `..`, `/` or `\` (and, here, not blank and no control
/// characters).
pub fn check_filename(filename: &str) -> Result<()> {
    if filename.trim().is_empty() {
        return Err(Error::invalid("invalid_filename", "Missing filename in uploaded file"));
    }
    if filename.contains("..") || filename.contains('/') || filename.contains('\\') {
        return Err(Error::invalid("invalid_filename", format!("Invalid filename '{filename}': it must not contain '..', '/' or '\\'")));
    }
    // Characters, not bytes: the OpenAPI document can say characters (`maxLength`).
    if filename.chars().count() > 255 || filename.chars().any(char::is_control) {
        return Err(Error::invalid("invalid_filename", "Invalid filename: at most 255 characters without control characters"));
    }
    Ok(())
}

/// Parses an ISO 8601 timestamp as Python's `fromisoformat` does; without a zone it is UTC.
pub fn parse_timestamp(text: &str) -> Result<DateTime<Utc>> {
    Ok(parse_timestamp_with_offset(text)?.with_timezone(&Utc))
}

/// As `parse_timestamp`, keeping the offset the timestamp was written with (`+00:00`
/// without one), as the `datetime` seed 003 answered with.
pub fn parse_timestamp_with_offset(text: &str) -> Result<DateTime<FixedOffset>> {
    let text = text.trim();
    if let Ok(with_zone) = DateTime::parse_from_rfc3339(text) {
        return Ok(with_zone);
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%dT%H:%M%:z"] {
        if let Ok(with_zone) = DateTime::parse_from_str(text, format) {
            return Ok(with_zone);
        }
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(naive.and_utc().fixed_offset());
        }
    }
    Err(Error::invalid(
        "invalid_timestamp",
        format!("Invalid timestamp format: '{}' is not ISO 8601", text.chars().take(64).collect::<String>()),
    ))
}

/// Python's `datetime.isoformat()`: `2026-01-20T12:30:00+00:00`, with `.ffffff` only when
/// there are microseconds.
pub fn python_isoformat(at: &DateTime<FixedOffset>) -> String {
    let micros = at.timestamp_subsec_micros();
    if micros == 0 {
        at.format("%Y-%m-%dT%H:%M:%S%:z").to_string()
    } else {
        format!("{}.{micros:06}{}", at.format("%Y-%m-%dT%H:%M:%S"), at.format("%:z"))
    }
}

/// Checks seed 003's upload authorisation: `signature` (base64 RSA PKCS#1 v1.5 SHA-256)
/// over the timestamp string, and the timestamp within ±300 s of `now`. Returns the signed
/// time, which seed 003 answered as `uploaded_at`.
pub fn check_signed_timestamp(core: &Core, timestamp: &str, signature: &str, now: DateTime<Utc>) -> Result<DateTime<FixedOffset>> {
    if !core.keys.seed003_enabled() {
        return Err(Error::Forbidden("asset uploads are disabled: the server has no UPDRAFT_SIGNING_KEY_PATH".into()));
    }
    let at = parse_timestamp_with_offset(timestamp)?;
    let skew = (now - at.with_timezone(&Utc)).num_seconds().abs();
    if skew > TIMESTAMP_TOLERANCE_SECS {
        return Err(Error::invalid(
            "invalid_timestamp",
            format!("Timestamp is {skew} s away from the server's time; at most {TIMESTAMP_TOLERANCE_SECS} s are allowed"),
        ));
    }
    let signature =
        STANDARD.decode(signature.trim()).map_err(|_| Error::invalid("invalid_signature", "Invalid signature: it is not base64"))?;
    core.keys.verify_seed003(timestamp.as_bytes(), &signature)?;
    Ok(at)
}

/// Stores a seed-003 upload whose signature was checked; replaces a file of that name.
/// An empty file is refused (`empty_file`).
pub async fn commit_file(core: &Core, staged: StagedUpload, filename: &str) -> Result<AssetFile> {
    let (writer, blob_key, size, sha256) = staged.refuse_empty().await?.finish();
    // Held until the record is written: the orphan-blob collector leaves the blob alone.
    let _lease = writer.commit().await?;
    let file = AssetFile { filename: filename.to_string(), blob_key: blob_key.clone(), size, sha256, uploaded_at: Utc::now() };
    let previous = match core.store.put_asset_file(&file).await {
        Ok(previous) => previous,
        Err(e) => {
            let _ = core.blobs.delete(&blob_key).await;
            return Err(e);
        }
    };
    if let Some(previous) = previous
        && let Err(e) = core.blobs.delete(&previous).await
    {
        tracing::warn!(error = %e, blob = %previous, "cannot delete the replaced asset file's blob");
    }
    core.events.publish(Event::AssetFileUploaded { filename: filename.to_string(), size, sha256: file.sha256.clone() });
    Ok(file)
}

/// A seed-003 file by name; a name seed 003 refuses (`..`, `/`, `\`) is `invalid_filename`
/// (400), as there.
pub async fn find_file(core: &Core, filename: &str) -> Result<AssetFile> {
    check_filename(filename)?;
    core.store.find_asset_file(filename).await?.ok_or_else(|| Error::not_found("asset", filename))
}

// ---- native assets ----

/// An asset name: 1-128 characters of letters, digits, `.`, `_`, `-`, not starting with `.`.
pub fn check_name(name: &str) -> Result<String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(name.to_string())
    } else {
        Err(Error::invalid(
            "invalid_asset_name",
            "an asset name is 1-128 characters of letters, digits, `.`, `_` or `-`, not starting with `.`",
        ))
    }
}

pub fn check_product(product: &str) -> Result<ProductName> {
    ProductName::parse(product)
}

/// What the Ed25519 signature of an asset version covers (UTF-8, each line ending in `\n`).
pub fn signed_statement(product: &str, name: &str, version: i64, size: u64, sha256: &str) -> String {
    format!("updraft-asset-v1\n{product}\n{name}\n{version}\n{size}\n{sha256}\n")
}

/// Creates the next version of an asset from a finished upload; an empty one is refused
/// (`empty_file`).
pub async fn create(
    core: &Core,
    product: &ProductName,
    name: &str,
    content_type: &str,
    comment: &str,
    staged: StagedUpload,
) -> Result<Asset> {
    let staged = staged.refuse_empty().await?;
    let comment = comment.trim();
    if comment.chars().count() > 1000 || comment.chars().any(char::is_control) {
        staged.abort().await;
        return Err(Error::invalid("invalid_comment", "comment must be at most 1000 characters without control characters"));
    }
    let (writer, staged_key, size, sha256) = staged.finish();
    // Content addressing: bytes already stored are not stored twice.
    // The blob is leased until its record is written: the orphan-blob collector leaves it alone.
    let (blob_key, _lease) = match core.store.find_asset_blob_by_sha256(&sha256).await {
        Ok(Some(existing)) => {
            writer.abort().await;
            let lease = core.blobs.lease(&existing);
            (existing, lease)
        }
        Ok(None) => {
            let lease = writer.commit().await?;
            (staged_key.clone(), lease)
        }
        Err(e) => {
            writer.abort().await;
            return Err(e);
        }
    };
    for _ in 0..8 {
        let version = core.store.latest_asset_version(product, name).await? + 1;
        let statement = signed_statement(product, name, version, size, &sha256);
        let asset = Asset {
            id: AssetId::new(),
            product: product.clone(),
            name: name.to_string(),
            version,
            size,
            sha256: sha256.clone(),
            content_type: content_type.to_string(),
            blob_key: blob_key.clone(),
            signature: STANDARD.encode(core.keys.sign_asset(statement.as_bytes())),
            comment: comment.to_string(),
            created_at: Utc::now(),
        };
        if core.store.insert_asset(&asset).await? {
            core.events.publish(Event::AssetUploaded {
                product: product.to_string(),
                name: name.to_string(),
                version,
                sha256: sha256.clone(),
                size,
            });
            return Ok(asset);
        }
    }
    Err(Error::conflict("asset_busy", format!("{product}/{name} is being uploaded by others; retry")))
}

/// The newest version of every asset (of one product, if given).
pub async fn list_latest(core: &Core, product: Option<&str>) -> Result<Vec<Asset>> {
    core.store.list_latest_assets(product).await
}

/// A page of an asset's versions, newest first, and how many it has; not found when it has
/// none.
pub async fn versions(core: &Core, product: &str, name: &str, limit: u32, offset: u64) -> Result<(Vec<Asset>, u64)> {
    let (versions, total) = core.store.list_asset_versions(product, name, limit, offset).await?;
    if total == 0 {
        return Err(Error::not_found("asset", format!("{product}/{name}")));
    }
    Ok((versions, total))
}

/// A version (`None`: the newest) of an asset.
pub async fn find(core: &Core, product: &str, name: &str, version: Option<i64>) -> Result<Asset> {
    let what = || match version {
        Some(v) => format!("{product}/{name} version {v}"),
        None => format!("{product}/{name}"),
    };
    core.store.find_asset(product, name, version).await?.ok_or_else(|| Error::not_found("asset", what()))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn timestamps_without_a_zone_are_utc() {
        let expected = Utc.with_ymd_and_hms(2026, 1, 20, 12, 30, 0).unwrap();
        for text in [
            "2026-01-20T12:30:00",
            "2026-01-20 12:30:00",
            "2026-01-20T12:30:00Z",
            "2026-01-20T14:30:00+02:00",
            "2026-01-20T12:30:00.000000",
        ] {
            assert_eq!(parse_timestamp(text).unwrap(), expected, "{text}");
        }
        assert_eq!(parse_timestamp("yesterday").unwrap_err().code(), "invalid_timestamp");
    }

    #[test]
    fn uploaded_at_is_written_as_python_writes_the_signed_time() {
        let at = parse_timestamp_with_offset("2026-01-20T14:30:00+02:00").unwrap();
        assert_eq!(python_isoformat(&at), "2026-01-20T14:30:00+02:00");
        let at = parse_timestamp_with_offset("2026-01-20T12:30:00.250").unwrap();
        assert_eq!(python_isoformat(&at), "2026-01-20T12:30:00.250000+00:00");
        let at = parse_timestamp_with_offset("2026-01-20T12:30:00Z").unwrap();
        assert_eq!(python_isoformat(&at), "2026-01-20T12:30:00+00:00");
    }

    #[test]
    fn filenames_follow_seed_003_rules() {
        for bad in ["", "   ", "../x", "a/b", "a\\b", "a..b", "x\n"] {
            assert!(check_filename(bad).is_err(), "{bad:?}");
        }
        assert!(check_filename("logo v2.png").is_ok());
        assert!(check_name("fonts.bin").is_ok());
        assert!(check_name(".hidden").is_err());
    }
}

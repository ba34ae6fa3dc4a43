//! Assets: seed-003 files by name, and native versioned, signed assets, as stored.

use chrono::{DateTime, Utc};

use super::firmware::ProductName;
use super::ids::AssetId;

/// A seed-003 asset file.
#[derive(Debug, Clone)]
pub struct AssetFile {
    pub filename: String,
    pub blob_key: String,
    pub size: u64,
    pub sha256: String,
    pub uploaded_at: DateTime<Utc>,
}

/// One version of a native asset.
#[derive(Debug, Clone)]
pub struct Asset {
    pub id: AssetId,
    pub product: ProductName,
    pub name: String,
    pub version: i64,
    pub size: u64,
    pub sha256: String,
    pub content_type: String,
    pub blob_key: String,
    pub signature: String,
    pub comment: String,
    pub created_at: DateTime<Utc>,
}

//! Blob storage behind one interface, with two backends: a local folder (default) and
//! S3-compatible object storage. Writes are staged and become visible only on `commit`;
//! a writer dropped without commit (client gone, shutdown, error) leaves nothing behind.
//!
//! A committed blob becomes reachable once its record is written, a moment later. Until then
//! the writer's `BlobLease` marks it in use, so that the orphan-blob collector
//! (`services::orphan_blobs`), which deletes blobs no record points at, leaves it alone.

mod cache;
mod local;
mod s3;

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::config::BlobSettings;
use crate::domain::{Error, Result};

/// A stream of a blob's bytes.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

#[derive(Clone)]
pub struct BlobStore {
    backend: Arc<Backend>,
    cache: Arc<cache::BlobCache>,
    leases: Arc<Leases>,
}

/// The prefixes under which the server creates blobs (`artifacts/<id>`, `assets/<uuid>`):
/// listing looks only there, so nothing else in a shared folder or bucket is ever touched.
pub const KEY_PREFIXES: [&str; 2] = ["artifacts", "assets"];

/// A stored blob, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobEntry {
    pub key: String,
    /// When its bytes were last written.
    pub modified: DateTime<Utc>,
}

/// Keys in use by this process without a record yet (being written, or committed and waiting
/// for their record), each with the number of leases held on it.
#[derive(Default)]
struct Leases(Mutex<HashMap<String, usize>>);

impl Leases {
    fn take(self: &Arc<Self>, key: &str) -> BlobLease {
        *self.0.lock().expect("blob leases lock").entry(key.to_string()).or_insert(0) += 1;
        BlobLease { leases: self.clone(), key: key.to_string() }
    }

    fn held(&self) -> std::collections::HashSet<String> {
        self.0.lock().expect("blob leases lock").keys().cloned().collect()
    }
}

/// Marks a blob as in use by this process until dropped: hold it until the blob's record is
/// written (or the blob deleted).
#[must_use = "the blob is protected from the orphan-blob collector only while its lease is held"]
pub struct BlobLease {
    leases: Arc<Leases>,
    key: String,
}

impl Drop for BlobLease {
    fn drop(&mut self) {
        let mut held = self.leases.0.lock().expect("blob leases lock");
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// Size of the slices a cached blob is sent in.
const SLICE: usize = 256 << 10;

enum Backend {
    Local(local::LocalBlobs),
    S3(s3::S3Blobs),
}

impl BlobStore {
    /// Opens the configured backend. A local folder is created if missing, and staging
    /// files left by an earlier crash are removed.
    pub async fn open(settings: &BlobSettings, cache_bytes: usize) -> anyhow::Result<BlobStore> {
        let backend = match settings {
            BlobSettings::Local { root } => Backend::Local(local::LocalBlobs::open(root).await?),
            BlobSettings::S3(s3) => Backend::S3(s3::S3Blobs::open(s3)?),
        };
        Ok(BlobStore { backend: Arc::new(backend), cache: Arc::new(cache::BlobCache::new(cache_bytes)), leases: Arc::default() })
    }

    /// A human description for logs, without credentials.
    pub fn describe(&self) -> String {
        match &*self.backend {
            Backend::Local(local) => format!("local folder {}", local.root().display()),
            Backend::S3(s3) => s3.describe(),
        }
    }

    /// Starts writing a new blob under `key`. It is invisible until `commit`, and leased
    /// (see `BlobLease`) from now on.
    pub async fn create(&self, key: &str) -> Result<BlobWriter> {
        check_key(key)?;
        let lease = self.leases.take(key);
        let inner = match &*self.backend {
            Backend::Local(local) => WriterInner::Local(local.create(key).await?),
            Backend::S3(s3) => WriterInner::S3(s3.create(key).await?),
        };
        Ok(BlobWriter { inner, lease })
    }

    /// Leases a stored blob that a record is about to point at again (content addressing).
    pub fn lease(&self, key: &str) -> BlobLease {
        self.leases.take(key)
    }

    /// The keys this process holds a lease on (read before the records, see
    /// `services::orphan_blobs`).
    pub fn leased(&self) -> std::collections::HashSet<String> {
        self.leases.held()
    }

    /// Every stored blob under `KEY_PREFIXES`, with when it was written (staging data and
    /// unfinished uploads are not blobs).
    pub async fn list(&self) -> Result<Vec<BlobEntry>> {
        let mut entries = Vec::new();
        for prefix in KEY_PREFIXES {
            let found = match &*self.backend {
                Backend::Local(local) => local.list(prefix).await?,
                Backend::S3(s3) => s3.list(prefix).await?,
            };
            entries.extend(found.into_iter().filter(|entry| check_key(&entry.key).is_ok()));
        }
        Ok(entries)
    }

    /// Streams the bytes `range` of a blob of `size` bytes (the caller has checked the range).
    /// Small blobs come from the in-memory cache as zero-copy slices.
    pub async fn read(&self, key: &str, size: u64, range: Range<u64>) -> Result<ByteStream> {
        check_key(key)?;
        if self.cache.accepts(size) {
            let all = self.cache.get_or_load(key, || self.read_all(key, size)).await?;
            if all.len() as u64 != size {
                self.cache.remove(key);
                return Err(Error::Internal(anyhow::anyhow!("blob {key} has {} bytes, its record says {size}", all.len())));
            }
            let part = all.slice(range.start as usize..range.end as usize);
            let length = part.len();
            let slices = (0..length).step_by(SLICE).map(move |offset| Ok(part.slice(offset..(offset + SLICE).min(length))));
            return Ok(futures::stream::iter(slices).boxed());
        }
        match &*self.backend {
            Backend::Local(local) => local.read(key, range).await,
            Backend::S3(s3) => s3.read(key, range).await,
        }
    }

    async fn read_all(&self, key: &str, size: u64) -> Result<Bytes> {
        use futures::TryStreamExt;
        let stream = match &*self.backend {
            Backend::Local(local) => local.read(key, 0..size).await?,
            Backend::S3(s3) => s3.read(key, 0..size).await?,
        };
        let mut all = Vec::with_capacity(size as usize);
        let mut stream = stream;
        while let Some(chunk) = stream.try_next().await.map_err(|e| io_error(e, "cannot read a blob"))? {
            all.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(all))
    }

    /// Deletes a blob; deleting a missing blob is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        self.cache.remove(key);
        match &*self.backend {
            Backend::Local(local) => local.delete(key).await,
            Backend::S3(s3) => s3.delete(key).await,
        }
    }

    /// Answers when the store does, for the readiness probe.
    pub async fn check(&self) -> Result<()> {
        match &*self.backend {
            Backend::Local(local) => local.check().await,
            Backend::S3(s3) => s3.check().await,
        }
    }
}

/// A blob being written.
pub struct BlobWriter {
    inner: WriterInner,
    lease: BlobLease,
}

enum WriterInner {
    Local(local::LocalWriter),
    S3(s3::S3Writer),
}

impl BlobWriter {
    pub async fn write(&mut self, chunk: Bytes) -> Result<()> {
        match &mut self.inner {
            WriterInner::Local(w) => w.write(chunk).await,
            WriterInner::S3(w) => w.write(chunk).await,
        }
    }

    /// Makes the blob durable and visible under its key. Keep the lease until the blob's
    /// record is written.
    pub async fn commit(self) -> Result<BlobLease> {
        match self.inner {
            WriterInner::Local(w) => w.commit().await?,
            WriterInner::S3(w) => w.commit().await?,
        }
        Ok(self.lease)
    }

    /// Discards everything written.
    pub async fn abort(self) {
        match self.inner {
            WriterInner::Local(w) => w.abort().await,
            WriterInner::S3(w) => w.abort().await,
        }
    }
}

/// Keys are generated by the server (`artifacts/<uuid>`); this guards against a bug ever
/// turning one into a path outside the store.
fn check_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.len() <= 200
        && key.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'));
    if ok { Ok(()) } else { Err(Error::Internal(anyhow::anyhow!("refusing unsafe blob key {key:?}"))) }
}

/// Bytes read from blobs and not yet sent (held by slow clients' connections, mostly).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// The size of the next read: large while little is in flight (fast clients get few, big
/// writes), small once much is (a thousand slow clients each pin only a small chunk).
/// Together with the HTTP server's small write queue this bounds download memory.
fn next_chunk_size() -> usize {
    match IN_FLIGHT.load(Ordering::Relaxed) {
        n if n < 4 << 20 => 256 << 10,
        n if n < 8 << 20 => 32 << 10,
        _ => 8 << 10,
    }
}

/// A chunk counted in `IN_FLIGHT` until the server has written and dropped it.
struct CountedChunk(Vec<u8>);

impl AsRef<[u8]> for CountedChunk {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for CountedChunk {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(self.0.len(), Ordering::Relaxed);
    }
}

/// Wraps a chunk read for sending, counting it in `IN_FLIGHT` while it lives.
fn counted(chunk: Vec<u8>) -> Bytes {
    IN_FLIGHT.fetch_add(chunk.len(), Ordering::Relaxed);
    Bytes::from_owner(CountedChunk(chunk))
}

fn io_error(error: io::Error, context: &str) -> Error {
    Error::from_io(error, context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape_the_store() {
        for key in ["../etc/passwd", "a/../../b", "/abs", "a//b", "a/./b", "", "a\\b", "a b"] {
            assert!(check_key(key).is_err(), "{key:?} accepted");
        }
        assert!(check_key("artifacts/0193e0a1-1111-7000-8000-000000000000").is_ok());
    }
}

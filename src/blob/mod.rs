//! Blob storage behind one interface, with two backends: a local folder (default) and
//! S3-compatible object storage. Writes are staged and become visible only on `commit`;
//! a writer dropped without commit (client gone, shutdown, error) leaves nothing behind.

mod cache;
mod local;
mod s3;

use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
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
        Ok(BlobStore { backend: Arc::new(backend), cache: Arc::new(cache::BlobCache::new(cache_bytes)) })
    }

    /// A human description for logs, without credentials.
    pub fn describe(&self) -> String {
        match &*self.backend {
            Backend::Local(local) => format!("local folder {}", local.root().display()),
            Backend::S3(s3) => s3.describe(),
        }
    }

    /// Starts writing a new blob under `key`. It is invisible until `commit`.
    pub async fn create(&self, key: &str) -> Result<BlobWriter> {
        check_key(key)?;
        let inner = match &*self.backend {
            Backend::Local(local) => WriterInner::Local(local.create(key).await?),
            Backend::S3(s3) => WriterInner::S3(s3.create(key).await?),
        };
        Ok(BlobWriter { inner })
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

    /// Makes the blob durable and visible under its key.
    pub async fn commit(self) -> Result<()> {
        match self.inner {
            WriterInner::Local(w) => w.commit().await,
            WriterInner::S3(w) => w.commit().await,
        }
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

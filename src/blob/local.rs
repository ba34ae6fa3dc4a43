//! Local-folder blobs. A write goes to `<root>/.staging/<uuid>.part`, is fsynced, then
//! renamed into place, so a reader never sees a partial file.

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use tokio::fs;
use tokio::io::{AsyncWriteExt, BufWriter};

use super::{BlobEntry, ByteStream, io_error};
use crate::domain::{Error, Result};

const STAGING: &str = ".staging";
const WRITE_BUFFER: usize = 1 << 20;

pub struct LocalBlobs {
    root: PathBuf,
}

impl LocalBlobs {
    pub async fn open(root: &Path) -> anyhow::Result<LocalBlobs> {
        let staging = root.join(STAGING);
        fs::create_dir_all(&staging).await.with_context(|| format!("cannot create the blob folder {}", root.display()))?;
        // Staging files belong to uploads that did not finish before a crash or kill.
        let mut entries = fs::read_dir(&staging).await.with_context(|| format!("cannot read {}", staging.display()))?;
        while let Some(entry) = entries.next_entry().await? {
            let _ = fs::remove_file(entry.path()).await;
        }
        Ok(LocalBlobs { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    pub async fn create(&self, key: &str) -> Result<LocalWriter> {
        let staging_path = self.root.join(STAGING).join(format!("{}.part", uuid::Uuid::new_v4()));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staging_path)
            .await
            .map_err(|e| io_error(e, "cannot create a staging file"))?;
        Ok(LocalWriter {
            file: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            staging_path: Some(staging_path),
            final_path: self.path(key),
        })
    }

    pub async fn read(&self, key: &str, range: Range<u64>) -> Result<ByteStream> {
        let path = self.path(key);
        let file = match fs::File::open(&path).await {
            Ok(file) => file.into_std().await,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::not_found("blob", key)),
            Err(e) => return Err(io_error(e, "cannot open a blob")),
        };
        Ok(positioned_read(Arc::new(file), range).boxed())
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        match fs::remove_file(self.path(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(e, "cannot delete a blob")),
        }
    }

    /// The files under `<root>/<prefix>`, as keys (`<prefix>/...`).
    pub async fn list(&self, prefix: &str) -> Result<Vec<BlobEntry>> {
        let mut entries = Vec::new();
        let mut folders = vec![(self.root.join(prefix), prefix.to_string())];
        while let Some((folder, key_prefix)) = folders.pop() {
            let mut listing = match fs::read_dir(&folder).await {
                Ok(listing) => listing,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(e, "cannot list the blob folder")),
            };
            while let Some(entry) = listing.next_entry().await.map_err(|e| io_error(e, "cannot list the blob folder"))? {
                let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
                let key = format!("{key_prefix}/{name}");
                let metadata = match entry.metadata().await {
                    Ok(metadata) => metadata,
                    // Deleted since the listing.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_error(e, "cannot read a blob's metadata")),
                };
                if metadata.is_dir() {
                    folders.push((entry.path(), key));
                } else if metadata.is_file() {
                    let modified = metadata.modified().map_err(|e| io_error(e, "cannot read a blob's time"))?;
                    entries.push(BlobEntry { key, modified: modified.into() });
                }
            }
        }
        Ok(entries)
    }

    pub async fn check(&self) -> Result<()> {
        let metadata = fs::metadata(self.root.join(STAGING))
            .await
            .map_err(|e| Error::Unavailable(format!("blob folder {}: {e}", self.root.display())))?;
        if metadata.permissions().readonly() {
            return Err(Error::Unavailable(format!("blob folder {} is read-only", self.root.display())));
        }
        Ok(())
    }
}

/// Reads `range` of a file with positioned reads (`pread`) straight into the chunks that are
/// sent, on the blocking pool. Unlike `tokio::fs::File`, nothing keeps a second buffer per
/// open download, so a thousand stalled downloads hold only the chunks in flight.
fn positioned_read(file: Arc<std::fs::File>, range: Range<u64>) -> impl futures::Stream<Item = io::Result<bytes::Bytes>> + Send {
    futures::stream::unfold(Some((file, range.start)), move |state| {
        let end = range.end;
        async move {
            let (file, offset) = state?;
            if offset >= end {
                return None;
            }
            let want = usize::try_from(end - offset).unwrap_or(usize::MAX).min(super::next_chunk_size());
            let read_file = file.clone();
            // Allocated here, on the runtime's worker, where it will also be freed: keeping
            // allocations out of the blocking threads' own allocator arenas keeps RSS down.
            let mut buffer = vec![0u8; want];
            let read = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let n = read_file.read_at(&mut buffer, offset)?;
                buffer.truncate(n);
                Ok::<_, io::Error>(buffer)
            })
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)));
            match read {
                Ok(buffer) if buffer.is_empty() => {
                    Some((Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the blob is shorter than its record")), None))
                }
                Ok(buffer) => {
                    let n = buffer.len() as u64;
                    Some((Ok(super::counted(buffer)), Some((file, offset + n))))
                }
                Err(e) => Some((Err(e), None)),
            }
        }
    })
}

pub struct LocalWriter {
    file: Option<BufWriter<fs::File>>,
    /// Set while the staging file exists and is ours to remove.
    staging_path: Option<PathBuf>,
    final_path: PathBuf,
}

impl LocalWriter {
    pub async fn write(&mut self, chunk: Bytes) -> Result<()> {
        let file = self.file.as_mut().expect("writer used after commit");
        file.write_all(&chunk).await.map_err(|e| io_error(e, "cannot write a staging file"))
    }

    pub async fn commit(mut self) -> Result<()> {
        let mut file = self.file.take().expect("writer committed twice");
        file.flush().await.map_err(|e| io_error(e, "cannot flush a staging file"))?;
        let file = file.into_inner();
        file.sync_all().await.map_err(|e| io_error(e, "cannot sync a staging file"))?;
        drop(file);
        let staging_path = self.staging_path.clone().expect("staging path present until commit");
        if let Some(parent) = self.final_path.parent() {
            fs::create_dir_all(parent).await.map_err(|e| io_error(e, "cannot create a blob folder"))?;
        }
        fs::rename(&staging_path, &self.final_path).await.map_err(|e| io_error(e, "cannot move a blob into place"))?;
        self.staging_path = None;
        // Make the rename itself durable.
        if let Some(parent) = self.final_path.parent()
            && let Ok(dir) = fs::File::open(parent).await
        {
            let _ = dir.sync_all().await;
        }
        Ok(())
    }

    pub async fn abort(mut self) {
        self.file = None;
        if let Some(path) = self.staging_path.take() {
            let _ = fs::remove_file(path).await;
        }
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        // Dropped mid-upload (client gone, shutdown): remove the partial file synchronously,
        // since there may be no runtime left to do it later.
        self.file = None;
        if let Some(path) = self.staging_path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

//! Local-folder blobs. A write goes to `<root>/.staging/<uuid>.part`, is fsynced, then
//! renamed into place, so a reader never sees a partial file.

use std::io::{self, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use tokio::fs;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufWriter};
use tokio_util::io::ReaderStream;

use super::{ByteStream, io_error};
use crate::domain::{Error, Result};

const STAGING: &str = ".staging";
const WRITE_BUFFER: usize = 1 << 20;
const READ_CHUNK: usize = 256 * 1024;

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
        let mut file = match fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::not_found("blob", key)),
            Err(e) => return Err(io_error(e, "cannot open a blob")),
        };
        if range.start > 0 {
            file.seek(SeekFrom::Start(range.start)).await.map_err(|e| io_error(e, "cannot seek in a blob"))?;
        }
        let length = range.end.saturating_sub(range.start);
        let stream = ReaderStream::with_capacity(file.take(length), READ_CHUNK);
        Ok(stream.boxed())
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        match fs::remove_file(self.path(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(e, "cannot delete a blob")),
        }
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
        if let Some(parent) = self.final_path.parent() {
            if let Ok(dir) = fs::File::open(parent).await {
                let _ = dir.sync_all().await;
            }
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

//! S3-compatible object storage through the `object_store` crate. A write is a multipart
//! upload that becomes an object only when completed; an aborted or dropped writer aborts
//! the multipart upload.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart};

use super::{BlobEntry, ByteStream};
use crate::config::S3Settings;
use crate::domain::{Error, Result};

/// Part size of multipart uploads; memory per upload is about this times `UPLOAD_CONCURRENCY`.
const PART_SIZE: usize = 8 << 20;
const UPLOAD_CONCURRENCY: usize = 2;

pub struct S3Blobs {
    store: Arc<AmazonS3>,
    bucket: String,
    prefix: String,
    endpoint: Option<String>,
}

impl S3Blobs {
    pub fn open(settings: &S3Settings) -> anyhow::Result<S3Blobs> {
        let mut builder =
            AmazonS3Builder::new().with_bucket_name(&settings.bucket).with_region(&settings.region).with_allow_http(settings.allow_http);
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint).with_virtual_hosted_style_request(false);
        }
        if let (Some(id), Some(secret)) = (&settings.access_key_id, &settings.secret_access_key) {
            builder = builder.with_access_key_id(id.expose()).with_secret_access_key(secret.expose());
        }
        let store = builder.build().map_err(|e| anyhow::anyhow!("invalid S3 settings: {e}"))?;
        Ok(S3Blobs {
            store: Arc::new(store),
            bucket: settings.bucket.clone(),
            prefix: settings.prefix.clone(),
            endpoint: settings.endpoint.clone(),
        })
    }

    pub fn describe(&self) -> String {
        let endpoint = self.endpoint.as_deref().unwrap_or("AWS");
        format!("S3 bucket {} prefix {:?} at {endpoint}", self.bucket, self.prefix)
    }

    fn path(&self, key: &str) -> Path {
        if self.prefix.is_empty() { Path::from(key) } else { Path::from(format!("{}/{key}", self.prefix)) }
    }

    pub async fn create(&self, key: &str) -> Result<S3Writer> {
        let upload = self.store.put_multipart(&self.path(key)).await.map_err(|e| s3_error(e, "cannot start an S3 upload"))?;
        Ok(S3Writer { upload: Some(WriteMultipart::new_with_chunk_size(upload, PART_SIZE)) })
    }

    pub async fn read(&self, key: &str, range: Range<u64>) -> Result<ByteStream> {
        if range.is_empty() {
            return Ok(futures::stream::empty().boxed());
        }
        let options = GetOptions { range: Some(GetRange::Bounded(range)), ..Default::default() };
        let result = self.store.get_opts(&self.path(key), options).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => Error::not_found("blob", key),
            other => s3_error(other, "cannot read from S3"),
        })?;
        Ok(result.into_stream().map(|chunk| chunk.map_err(std::io::Error::other)).boxed())
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(s3_error(e, "cannot delete from S3")),
        }
    }

    /// The objects under `<prefix>/<key prefix>/`, as keys. Unfinished multipart uploads
    /// are not objects and are not listed.
    pub async fn list(&self, key_prefix: &str) -> Result<Vec<BlobEntry>> {
        use futures::TryStreamExt;
        let store_prefix = if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) };
        let objects: Vec<_> =
            self.store.list(Some(&self.path(key_prefix))).try_collect().await.map_err(|e| s3_error(e, "cannot list S3 objects"))?;
        Ok(objects
            .into_iter()
            .filter_map(|object| {
                let key = object.location.as_ref().strip_prefix(&store_prefix)?.to_string();
                Some(BlobEntry { key, modified: object.last_modified })
            })
            .collect())
    }

    pub async fn check(&self) -> Result<()> {
        match self.store.head(&self.path(".updraft-readiness-probe")).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::Unavailable(format!("S3 bucket {}: {e}", self.bucket))),
        }
    }
}

pub struct S3Writer {
    upload: Option<WriteMultipart>,
}

impl S3Writer {
    pub async fn write(&mut self, chunk: Bytes) -> Result<()> {
        let upload = self.upload.as_mut().expect("writer used after commit");
        upload.wait_for_capacity(UPLOAD_CONCURRENCY).await.map_err(|e| s3_error(e, "S3 part upload failed"))?;
        upload.write(&chunk);
        Ok(())
    }

    pub async fn commit(mut self) -> Result<()> {
        let upload = self.upload.take().expect("writer committed twice");
        upload.finish().await.map(|_| ()).map_err(|e| s3_error(e, "cannot complete an S3 upload"))
    }

    pub async fn abort(mut self) {
        if let Some(upload) = self.upload.take() {
            let _ = upload.abort().await;
        }
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        // Dropped mid-upload: abort the multipart upload in the background if a runtime is
        // still there. If not (process exit), the incomplete upload holds no object; a bucket
        // lifecycle rule removes its parts (docs/DEPLOYMENT.md).
        if let Some(upload) = self.upload.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(async move {
                let _ = upload.abort().await;
            });
        }
    }
}

fn s3_error(error: object_store::Error, context: &'static str) -> Error {
    Error::Internal(anyhow::Error::new(error).context(context))
}

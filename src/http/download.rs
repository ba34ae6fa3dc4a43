//! Serving an artifact's bytes to any client: `Content-Length` always (never chunked),
//! single ranges with 206, 416 for unsatisfiable ranges, a strong `ETag` (the SHA-256),
//! `If-None-Match` → 304, `If-Range`, `x-MD5` for Arduino's updater, and `HEAD`.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::error::ApiResult;
use super::range::{self, RangeRequest};
use crate::blob::{BlobStore, ByteStream};
use crate::domain::Error;
use crate::domain::firmware::Artifact;

pub async fn serve_artifact(blobs: &BlobStore, artifact: &Artifact, method: &Method, request: &HeaderMap) -> ApiResult<Response> {
    let etag = format!("\"{}\"", artifact.sha256);
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::ETAG, header_value(&etag));
    headers.insert("x-md5", header_value(&artifact.md5));
    headers.insert("x-sha256", header_value(&artifact.sha256));
    headers.insert(header::LAST_MODIFIED, header_value(&artifact.created_at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=0, must-revalidate"));

    if super::conditional::none_match(request, &etag) {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        *response.headers_mut() = headers;
        return Ok(response);
    }

    // A range applies only if `If-Range` (when present) still names this representation.
    let range_header = request.get(header::RANGE).and_then(|v| v.to_str().ok());
    let range_applies = match request.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        Some(if_range) => if_range.trim() == etag,
        None => true,
    };
    let size = artifact.size;
    let (status, range) = match range::resolve(range_header.filter(|_| range_applies), size) {
        RangeRequest::Full => (StatusCode::OK, 0..size),
        RangeRequest::Partial(range) => {
            headers.insert(header::CONTENT_RANGE, header_value(&format!("bytes {}-{}/{size}", range.start, range.end - 1)));
            (StatusCode::PARTIAL_CONTENT, range)
        }
        RangeRequest::Unsatisfiable => return Err(Error::RangeNotSatisfiable { size }.into()),
    };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(range.end - range.start));
    headers.insert(header::CONTENT_DISPOSITION, header_value(&format!("attachment; filename=\"{}\"", download_file_name(artifact))));

    let body = if method == Method::HEAD || range.is_empty() {
        Body::empty()
    } else {
        let stream = blobs.read(&artifact.blob_key, artifact.size, range).await?;
        Body::from_stream(CountedStream { inner: stream })
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// Serves `prefix` followed by an artifact's bytes as one file (esp32FOTA's signed form:
/// signature, then image): `200` with `Content-Length`, never chunked, `HEAD` without a
/// body. Ranges are not offered (`Accept-Ranges: none`); no client of this form uses them.
pub async fn serve_with_prefix(blobs: &BlobStore, artifact: &Artifact, prefix: &[u8], method: &Method) -> ApiResult<Response> {
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("none"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(prefix.len() as u64 + artifact.size));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=0, must-revalidate"));
    headers.insert(header::CONTENT_DISPOSITION, header_value(&format!("attachment; filename=\"{}\"", download_file_name(artifact))));
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        let rest = blobs.read(&artifact.blob_key, artifact.size, 0..artifact.size).await?;
        let first: ByteStream = Box::pin(futures::stream::once(std::future::ready(Ok(Bytes::copy_from_slice(prefix)))));
        Body::from_stream(CountedStream { inner: Box::pin(first.chain(rest)) })
    };
    let mut response = Response::new(body);
    *response.headers_mut() = headers;
    Ok(response)
}

/// `<product>-<version>.bin`, restricted to characters that need no quoting.
pub fn download_file_name(artifact: &Artifact) -> String {
    let raw = format!("{}-{}.bin", artifact.product, artifact.version);
    raw.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+') { c } else { '_' }).collect()
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Counts bytes sent, for the `updraft_download_bytes_total` metric.
struct CountedStream {
    inner: ByteStream,
}

impl Stream for CountedStream {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &polled {
            metrics::counter!("updraft_download_bytes_total").increment(chunk.len() as u64);
        }
        polled
    }
}

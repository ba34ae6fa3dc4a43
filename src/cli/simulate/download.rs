//! Downloads as devices do them: streamed into SHA-256 and MD5 as the bytes arrive (nothing
//! is kept but the first bytes, where an ESP32 image names its version), resumed with
//! `Range: bytes=<received>-` after a break, and checked against what the offer said.

use md5::Md5;
use sha2::{Digest, Sha256};

use super::fleet::Shared;
use super::wire::{self, WireError};

/// How many times a device tries one download (the first try and two resumptions).
const ATTEMPTS: u32 = 3;
/// The first bytes kept: the image header, its first segment header and the app descriptor
/// up to its version.
const HEAD: usize = 80;

/// What the offer says the file is.
pub struct Expect<'a> {
    pub size: Option<u64>,
    pub sha256: Option<&'a str>,
    pub md5: Option<&'a str>,
}

/// A download in progress: its digests so far.
pub struct Hashes {
    sha256: Sha256,
    md5: Md5,
    pub received: u64,
    head: Vec<u8>,
}

impl Hashes {
    pub fn new() -> Hashes {
        Hashes { sha256: Sha256::new(), md5: Md5::new(), received: 0, head: Vec::new() }
    }

    fn update(&mut self, bytes: &[u8]) {
        if self.head.len() < HEAD {
            let take = (HEAD - self.head.len()).min(bytes.len());
            self.head.extend_from_slice(&bytes[..take]);
        }
        self.sha256.update(bytes);
        self.md5.update(bytes);
        self.received += bytes.len() as u64;
    }

    /// Checks size and digests; the version the image names, if it is an ESP32 app image.
    pub fn finish(self, expect: &Expect<'_>) -> Result<Fetched, String> {
        if let Some(size) = expect.size
            && size != self.received
        {
            return Err(format!("received {} bytes, the offer said {size}", self.received));
        }
        let sha256 = hex::encode(self.sha256.finalize());
        let md5 = hex::encode(self.md5.finalize());
        if let Some(expected) = expect.sha256
            && !expected.eq_ignore_ascii_case(&sha256)
        {
            return Err(format!("SHA-256 mismatch: got {sha256}, expected {expected}"));
        }
        if let Some(expected) = expect.md5
            && !expected.eq_ignore_ascii_case(&md5)
        {
            return Err(format!("MD5 mismatch: got {md5}, expected {expected}"));
        }
        Ok(Fetched { version: image_version(&self.head) })
    }
}

/// A download that arrived whole and matched.
pub struct Fetched {
    /// The version in the ESP32 app descriptor, when the file is an app image.
    pub version: Option<String>,
}

/// The version an ESP32 app image names: magic 0xE9, then after the 24-byte image header and
/// the 8-byte header of the first segment the app descriptor (magic 0xABCD5432), whose
/// `version` is 32 bytes at its offset 16.
fn image_version(head: &[u8]) -> Option<String> {
    if head.len() < HEAD || head[0] != 0xE9 || head[32..36] != 0xABCD_5432u32.to_le_bytes() {
        return None;
    }
    let field = &head[48..80];
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    std::str::from_utf8(&field[..end]).ok().map(str::to_string)
}

/// Reads a response body into `hashes`. With `break_at`, the connection is dropped once that
/// many bytes (counted from the file's start) have arrived: Ok(false).
pub async fn read_body(mut response: reqwest::Response, hashes: &mut Hashes, break_at: Option<u64>) -> Result<bool, String> {
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let chunk = match break_at {
                    Some(at) if hashes.received + chunk.len() as u64 >= at => {
                        let keep = usize::try_from(at.saturating_sub(hashes.received)).unwrap_or(0).min(chunk.len());
                        hashes.update(&chunk[..keep]);
                        return Ok(false);
                    }
                    _ => chunk,
                };
                hashes.update(&chunk);
            }
            Ok(None) => return Ok(true),
            Err(e) => return Err(format!("the download broke off after {} bytes: {}", hashes.received, wire::describe(&e))),
        }
    }
}

/// Downloads `url` whole. A device fated to lose its downloads (`breaks`) loses the
/// connection halfway through the remaining bytes each time, resumes with a range, and gives
/// up after three tries.
pub async fn fetch(shared: &Shared, url: &str, authorization: Option<&str>, expect: Expect<'_>, breaks: bool) -> Result<Fetched, String> {
    let mut hashes = Hashes::new();
    // Arduino's `HTTPUpdate` and esp32FOTA check the `x-MD5` header; so does every device here.
    let mut header_md5: Option<String> = None;
    for attempt in 1..=ATTEMPTS {
        let mut request = shared.http.get(url);
        if let Some(authorization) = authorization {
            request = request.header(reqwest::header::AUTHORIZATION, authorization);
        }
        if hashes.received > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={}-", hashes.received));
        }
        let response = match wire::send(shared, request).await {
            Ok(response) => response,
            Err(WireError::Unreachable(e)) if attempt < ATTEMPTS => {
                tracing::debug!("download failed, retrying: {e}");
                continue;
            }
            Err(e) => return Err(format!("the download failed: {e}")),
        };
        let status = response.status().as_u16();
        if let Some(md5) = response.headers().get("x-md5").and_then(|v| v.to_str().ok()) {
            header_md5 = Some(md5.to_string());
        }
        let total = match status {
            200 => {
                // The server ignored the range (or this is the first try): start over.
                hashes = Hashes::new();
                expect.size.or(response.content_length())
            }
            206 => {
                let range = response.headers().get(reqwest::header::CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or_default();
                let expected = format!("bytes {}-", hashes.received);
                if !range.starts_with(&expected) {
                    return Err(format!("asked for {expected}, the server answered Content-Range `{range}`"));
                }
                range.rsplit('/').next().and_then(|size| size.parse().ok())
            }
            _ => {
                let error = wire::json_answer(response).await.err().map(|e| e.to_string()).unwrap_or_default();
                return Err(format!("the download answered {status} {error}").trim_end().to_string());
            }
        };
        let break_at = match (breaks, total) {
            (true, Some(total)) if total > hashes.received + 1 => Some(hashes.received + (total - hashes.received) / 2),
            _ => None,
        };
        if read_body(response, &mut hashes, break_at).await? {
            let md5 = expect.md5.or(header_md5.as_deref());
            return hashes.finish(&Expect { md5, ..expect });
        }
    }
    Err(format!("the download broke off {ATTEMPTS} times (resumed with Range each time), at byte {}", hashes.received))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_esp32_app_image_names_its_version_and_other_files_do_not() {
        let mut head = vec![0u8; HEAD];
        head[0] = 0xE9;
        head[32..36].copy_from_slice(&0xABCD_5432u32.to_le_bytes());
        head[48..53].copy_from_slice(b"2.1.0");
        assert_eq!(image_version(&head).as_deref(), Some("2.1.0"));
        head[0] = 0;
        assert_eq!(image_version(&head), None);
        assert_eq!(image_version(&head[..40]), None);
    }

    #[test]
    fn a_download_must_match_the_offer_s_size_and_digests() {
        let mut hashes = Hashes::new();
        hashes.update(b"abc");
        let sha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert!(hashes.finish(&Expect { size: Some(3), sha256: Some(sha), md5: Some("900150983cd24fb0d6963f7d28e17f72") }).is_ok());
        let mut hashes = Hashes::new();
        hashes.update(b"abd");
        let error = hashes.finish(&Expect { size: Some(3), sha256: Some(sha), md5: None }).err().unwrap();
        assert!(error.contains("SHA-256 mismatch"), "{error}");
        let mut hashes = Hashes::new();
        hashes.update(b"ab");
        assert!(hashes.finish(&Expect { size: Some(3), sha256: None, md5: None }).is_err());
    }
}

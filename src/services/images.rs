//! Images for LVGL displays: fetching an image by URL without opening an SSRF hole, then
//! decoding, scaling down and encoding it (`domain::lvgl`).
//!
//! The fetch refuses every address that is not public unicast (loopback, private,
//! link-local and cloud metadata, CGNAT, unique-local, multicast, documentation and
//! reserved ranges, and IPv4 addresses embedded in IPv6 ones). Names are checked after DNS
//! resolution by the HTTP client's own resolver, so the address checked is the address
//! connected to; IP literals are checked before the request. Redirects are followed by hand,
//! at most `MAX_REDIRECTS`, each target checked again; forwarded headers are dropped when a
//! redirect leaves the original host. The whole fetch has a time limit and the body a size
//! limit. `UPDRAFT_IMAGE_FETCH_ALLOW_HOSTS` opens chosen names, addresses or networks.
//!
//! Decoding is bounded, because a small file can describe a huge image (a 261 KB PNG of
//! 8192×8192 pixels decodes to 256 MiB): the pixel count is read from the image's header
//! and checked against `UPDRAFT_IMAGE_MAX_PIXELS` before anything is decoded, the decoder
//! runs under the `image` crate's `Limits` (sides, allocation), and at most
//! `UPDRAFT_IMAGE_MAX_CONCURRENT` fetches and conversions run at once ([`ConversionSlot`]:
//! callers that find every slot taken answer 503). Every large buffer is dropped as soon
//! as the next step has its own, and the slot is held until the blocking work has ended,
//! even when the client has gone.
//!
//! Scaling resamples as Pillow, which seed 003 used, does (`lvgl::resize_like_pillow`:
//! Lanczos-3, two passes in 8-bit fixed point, in premultiplied alpha so that transparent
//! pixels do not bleed their colour into the edges), and 16-bit images become 8-bit as Pillow
//! reads them (the high byte).

use std::io::Cursor;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use reqwest::header::{HeaderMap, LOCATION};
use reqwest::{StatusCode, Url};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ContentSettings;
use crate::domain::lvgl::{self, ColorFormat, LvglVersion, SizeRule};
use crate::domain::{Error, Result};

pub const MAX_REDIRECTS: usize = 5;
/// Largest decoded image side (also the largest side of an LVGL 9 image).
pub const MAX_DECODED_SIDE: u32 = 65535;
/// Largest image, in pixels, converted into C source (about 6 bytes of text per byte).
pub const MAX_C_ARRAY_PIXELS: u64 = 1 << 20;
/// What a caller that found every conversion slot taken tells its client to wait.
pub const BUSY_RETRY_AFTER_SECS: u64 = 1;
/// The decoders Updraft has: what Pillow's default build reads and the `image` crate decodes.
pub const INPUT_FORMATS: &str = "PNG, JPEG, GIF, WebP, BMP, TIFF, ICO, TGA, PNM (PBM, PGM, PPM, PAM), QOI or DDS";

/// What to make of an image.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// How the scaled size is rounded (seed 003's route truncates).
    pub size_rule: SizeRule,
    pub cf: ColorFormat,
    pub version: LvglVersion,
    /// `None`: the `.bin` file; `Some(name)`: C source defining `name`.
    pub c_array: Option<String>,
}

/// The HTTP client for image fetches, with the address policy built in, and the limits of
/// image conversion (pixels, concurrent conversions).
pub struct ImageFetcher {
    client: reqwest::Client,
    policy: Arc<AddressPolicy>,
    max_bytes: u64,
    timeout: Duration,
    max_pixels: u64,
    slots: Arc<Semaphore>,
}

/// One of the `UPDRAFT_IMAGE_MAX_CONCURRENT` places for a fetch and conversion; released
/// when dropped, after the conversion it was moved into has finished.
pub struct ConversionSlot(#[allow(dead_code, reason = "held for its drop: the slot frees when the conversion ends")] OwnedSemaphorePermit);

/// Every conversion slot is taken: answer 503 with `Retry-After: BUSY_RETRY_AFTER_SECS`.
#[derive(Debug)]
pub struct Busy;

impl ImageFetcher {
    pub fn new(settings: &ContentSettings) -> anyhow::Result<ImageFetcher> {
        let policy = Arc::new(AddressPolicy::new(&settings.image_fetch_allow_hosts));
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver { policy: policy.clone() }))
            .connect_timeout(settings.image_fetch_timeout)
            .user_agent(concat!("updraft/", env!("CARGO_PKG_VERSION"), " image-proxy"))
            .build()?;
        Ok(ImageFetcher {
            client,
            policy,
            max_bytes: settings.image_fetch_max_bytes,
            timeout: settings.image_fetch_timeout,
            max_pixels: settings.image_max_pixels,
            slots: Arc::new(Semaphore::new(settings.image_max_concurrent)),
        })
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Takes a conversion slot at once, or says that all are busy; never waits.
    pub fn try_slot(&self) -> std::result::Result<ConversionSlot, Busy> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Ok(ConversionSlot(permit)),
            Err(_) => {
                metrics::counter!("updraft_image_conversions_busy_total").increment(1);
                Err(Busy)
            }
        }
    }

    /// Fetches `url` with `headers`; every failure to get an image's bytes is `Upstream`
    /// (502), except a URL the policy refuses (400).
    pub async fn fetch(&self, url: &str, headers: HeaderMap) -> Result<Vec<u8>> {
        let url = Url::parse(url).map_err(|e| Error::invalid("invalid_url", format!("url is not a valid URL: {e}")))?;
        match tokio::time::timeout(self.timeout, self.fetch_following(url, headers)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Upstream(format!("fetching the image took longer than {} s", self.timeout.as_secs()))),
        }
    }

    async fn fetch_following(&self, mut url: Url, mut headers: HeaderMap) -> Result<Vec<u8>> {
        let origin = url.host_str().map(str::to_string);
        for _ in 0..=MAX_REDIRECTS {
            self.policy.check_url(&url)?;
            let response = self.client.get(url.clone()).headers(headers.clone()).send().await.map_err(|e| send_error(&url, e))?;
            let status = response.status();
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                let location = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| Error::Upstream(format!("the image server answered {status} without a Location")))?;
                url = url.join(location).map_err(|_| Error::Upstream("the image server redirected to an invalid URL".into()))?;
                if url.host_str().map(str::to_string) != origin {
                    headers.clear();
                }
                continue;
            }
            if !status.is_success() {
                return Err(Error::Upstream(format!("the image server answered {status}")));
            }
            if response.content_length().is_some_and(|n| n > self.max_bytes) {
                return Err(Error::Upstream(format!("the image is larger than the limit of {} bytes", self.max_bytes)));
            }
            let mut body = Vec::new();
            let mut stream = response.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| Error::Upstream(format!("reading the image failed: {e}")))?;
                if body.len() as u64 + chunk.len() as u64 > self.max_bytes {
                    return Err(Error::Upstream(format!("the image is larger than the limit of {} bytes", self.max_bytes)));
                }
                body.extend_from_slice(&chunk);
            }
            return Ok(body);
        }
        Err(Error::Upstream(format!("the image server redirected more than {MAX_REDIRECTS} times")))
    }
}

fn send_error(url: &Url, error: reqwest::Error) -> Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<Refused>() {
            return Error::invalid("url_not_allowed", refused.0.clone());
        }
        source = cause.source();
    }
    let host = url.host_str().unwrap_or("");
    if error.is_timeout() {
        Error::Upstream(format!("connecting to {host} timed out"))
    } else if error.is_connect() {
        Error::Upstream(format!("cannot connect to {host}"))
    } else {
        Error::Upstream(format!("fetching the image from {host} failed"))
    }
}

/// Decodes, scales down and encodes an image, off the async threads, in `slot`: the slot
/// is released when the work is done, even if the caller stopped waiting for it.
/// Not an image (or a broken one): `invalid_image` (422); too large: `image_too_large`.
pub async fn convert(fetcher: &ImageFetcher, slot: ConversionSlot, bytes: Vec<u8>, options: ConvertOptions) -> Result<Vec<u8>> {
    let max_pixels = fetcher.max_pixels;
    tokio::task::spawn_blocking(move || {
        let result = convert_blocking(bytes, &options, max_pixels);
        drop(slot);
        result
    })
    .await
    .map_err(|e| Error::Internal(anyhow::Error::new(e).context("image conversion task failed")))?
}

fn too_large(detail: String, max_pixels: u64) -> Error {
    Error::invalid(
        "image_too_large",
        format!(
            "{detail}; images of at most {max_pixels} pixels (UPDRAFT_IMAGE_MAX_PIXELS) and {MAX_DECODED_SIDE} pixels a side are converted"
        ),
    )
}

pub(crate) fn convert_blocking(bytes: Vec<u8>, options: &ConvertOptions, max_pixels: u64) -> Result<Vec<u8>> {
    let invalid = |message: String| Error::unprocessable("invalid_image", message);
    let format = image::guess_format(&bytes)
        .ok()
        .or_else(|| looks_like_tga(&bytes).then_some(image::ImageFormat::Tga))
        .ok_or_else(|| invalid(format!("the data is not an image Updraft reads ({INPUT_FORMATS})")))?;
    if format == image::ImageFormat::Tiff {
        check_tiff_value_counts(&bytes).map_err(|detail| too_large(detail, max_pixels))?;
    }
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes.as_slice()), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_DECODED_SIDE);
    limits.max_image_height = Some(MAX_DECODED_SIDE);
    // Room for the largest image at 8 bytes a pixel (16-bit RGBA) and the decoder's own buffers.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(16 << 20));
    reader.limits(limits.clone());
    let decode_error = |e: image::ImageError| match e {
        image::ImageError::Limits(limit) => too_large(format!("the image exceeds a decoding limit ({limit})"), max_pixels),
        other => invalid(format!("cannot decode the image: {other}")),
    };
    // Only the header has been read so far: refuse what is too large before decoding it.
    let decoder = reader.into_decoder().map_err(decode_error)?;
    let (width, height) = image::ImageDecoder::dimensions(&decoder);
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(too_large(format!("the image is {width}x{height} = {pixels} pixels"), max_pixels));
    }
    limits.reserve(image::ImageDecoder::total_bytes(&decoder)).map_err(decode_error)?;
    let decoded = image::DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    drop(bytes);
    let rgba = to_rgba8_like_pillow(decoded);
    let (mut width, mut height) = rgba.dimensions();
    if width == 0 || height == 0 {
        return Err(invalid(format!("the image has no pixels ({width}x{height})")));
    }
    let mut rgba = rgba.into_raw();
    if let Some((new_width, new_height)) = options.size_rule.fit(width, height, options.width, options.height) {
        rgba = lvgl::resize_like_pillow(rgba, (width, height), (new_width, new_height));
        (width, height) = (new_width, new_height);
    }
    if options.c_array.is_some() && u64::from(width) * u64::from(height) > MAX_C_ARRAY_PIXELS {
        return Err(Error::invalid(
            "image_too_large",
            format!("C source is made of images of at most {MAX_C_ARRAY_PIXELS} pixels; pass width and height to scale it down"),
        ));
    }
    let encoded = lvgl::encode(&rgba, width, height, options.cf, options.version)?;
    drop(rgba);
    match &options.c_array {
        None => Ok(encoded.into_bin()),
        Some(name) => Ok(encoded.to_c_array(name)?.into_bytes()),
    }
}

/// The most values a TIFF tag that the decoder reads up front may hold. The largest real need
/// is the strip or tile offsets of the largest image converted (one strip per row of
/// `MAX_DECODED_SIDE` rows, times 4 planes, is 65,536; tiles of 16x16 within the pixel limit
/// are as many): four times that.
const MAX_TIFF_TAG_VALUES: u64 = 1 << 18;

/// Bounds the tags of a TIFF's first image before the decoder sees them. The `tiff` crate
/// (0.11) reads that image's tags in its constructor, before the `image` crate hands it the
/// limits, and reserves 32 bytes a value for what a tag claims to hold (up to 256 MiB, from a
/// file of a few hundred bytes, and as much touched memory as the file holds values). No
/// crate offers this check, so it is written here: the header, the first directory's entries,
/// for both TIFF and BigTIFF, in either byte order. A file too short to hold its directory is
/// left to the decoder, which refuses it.
fn check_tiff_value_counts(bytes: &[u8]) -> std::result::Result<(), String> {
    // The tags the decoder reads while opening the file (tiff 0.11, `Image::from_reader`).
    const READ_UP_FRONT: [u16; 19] = [256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 317, 322, 323, 324, 325, 338, 339, 347, 530];
    let little = match bytes.get(..2) {
        Some(b"II") => true,
        Some(b"MM") => false,
        _ => return Ok(()),
    };
    let read = |at: u64, len: usize| -> Option<u64> {
        let at = usize::try_from(at).ok()?;
        let raw = bytes.get(at..at.checked_add(len)?)?;
        let mut value = 0u64;
        for i in 0..len {
            let byte = u64::from(if little { raw[len - 1 - i] } else { raw[i] });
            value = (value << 8) | byte;
        }
        Some(value)
    };
    let big = match read(2, 2) {
        Some(42) => false,
        Some(43) => true,
        _ => return Ok(()),
    };
    let (offset_len, first_at) = if big { (8, 8) } else { (4, 4) };
    let Some(directory) = read(first_at, offset_len) else { return Ok(()) };
    let (count_len, entry_len) = if big { (8, 20) } else { (2, 12) };
    let Some(entries) = read(directory, count_len) else { return Ok(()) };
    for index in 0..entries.min(4096) {
        let entry = directory + count_len as u64 + index * entry_len;
        let (Some(tag), Some(values)) = (read(entry, 2), read(entry + 4, offset_len)) else { return Ok(()) };
        if values > MAX_TIFF_TAG_VALUES && READ_UP_FRONT.contains(&(tag as u16)) {
            return Err(format!("the TIFF's tag {tag} holds {values} values, more than the {MAX_TIFF_TAG_VALUES} read"));
        }
    }
    Ok(())
}

/// Pillow's TGA check (TGA files have no magic number): a known colour-map type, image
/// type and depth, and sides that are not 0.
fn looks_like_tga(bytes: &[u8]) -> bool {
    bytes.len() >= 18
        && bytes[1] <= 1
        && matches!(bytes[2], 1 | 2 | 3 | 9 | 10 | 11)
        && u16::from_le_bytes([bytes[12], bytes[13]]) > 0
        && u16::from_le_bytes([bytes[14], bytes[15]]) > 0
        && matches!(bytes[16], 1 | 8 | 15 | 16 | 24 | 32)
}

/// 8-bit RGBA; 16-bit samples keep their high byte, as Pillow reads 16-bit PNG and TIFF
/// (`RGBA;16B` and the like), where `image` would round.
fn to_rgba8_like_pillow(image: image::DynamicImage) -> image::RgbaImage {
    use image::{DynamicImage, ImageBuffer};
    fn high_bytes(samples: Vec<u16>) -> Vec<u8> {
        samples.into_iter().map(|v| (v >> 8) as u8).collect()
    }
    let eight_bit = match image {
        DynamicImage::ImageRgba16(x) => {
            let (w, h) = x.dimensions();
            ImageBuffer::from_raw(w, h, high_bytes(x.into_raw())).map(DynamicImage::ImageRgba8)
        }
        DynamicImage::ImageRgb16(x) => {
            let (w, h) = x.dimensions();
            ImageBuffer::from_raw(w, h, high_bytes(x.into_raw())).map(DynamicImage::ImageRgb8)
        }
        DynamicImage::ImageLumaA16(x) => {
            let (w, h) = x.dimensions();
            ImageBuffer::from_raw(w, h, high_bytes(x.into_raw())).map(DynamicImage::ImageLumaA8)
        }
        DynamicImage::ImageLuma16(x) => {
            let (w, h) = x.dimensions();
            ImageBuffer::from_raw(w, h, high_bytes(x.into_raw())).map(DynamicImage::ImageLuma8)
        }
        other => Some(other),
    };
    eight_bit.map(DynamicImage::into_rgba8).unwrap_or_default()
}

// ---- the address policy ----

/// Raised by the resolver; found again in the error chain to answer 400 instead of 502.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

enum Allowed {
    Name(String),
    Network(IpAddr, u8),
}

pub struct AddressPolicy {
    allowed: Vec<Allowed>,
}

impl AddressPolicy {
    pub fn new(entries: &[String]) -> AddressPolicy {
        let allowed = entries
            .iter()
            .map(|entry| {
                let entry = entry.trim().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
                if let Some((net, bits)) = entry.split_once('/')
                    && let (Ok(ip), Ok(bits)) = (net.parse::<IpAddr>(), bits.parse::<u8>())
                {
                    return Allowed::Network(ip, bits);
                }
                match entry.parse::<IpAddr>() {
                    Ok(ip) => Allowed::Network(ip, if ip.is_ipv4() { 32 } else { 128 }),
                    Err(_) => Allowed::Name(entry.trim_end_matches('.').to_string()),
                }
            })
            .collect();
        AddressPolicy { allowed }
    }

    fn name_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allowed.iter().any(|a| matches!(a, Allowed::Name(name) if *name == host))
    }

    fn ip_allowed(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.allowed.iter().any(|a| matches!(a, Allowed::Network(net, bits) if in_network(ip, *net, *bits)))
    }

    /// Checks scheme and, for IP literals, the address (names are checked on resolution).
    fn check_url(&self, url: &Url) -> Result<()> {
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(Error::invalid("url_not_allowed", "only http:// and https:// URLs can be fetched"));
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(url::Host::Domain(_)) => return Ok(()),
            None => return Err(Error::invalid("url_not_allowed", "the URL has no host")),
        };
        if self.ip_allowed(ip) || self.name_allowed(&ip.to_string()) {
            Ok(())
        } else {
            Err(Error::invalid("url_not_allowed", format!("{ip} is not a public address; the image proxy does not fetch from it")))
        }
    }
}

struct GuardedResolver {
    policy: Arc<AddressPolicy>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let open_name = policy.name_allowed(&host);
            let allowed: Vec<SocketAddr> = addresses.iter().copied().filter(|a| open_name || policy.ip_allowed(a.ip())).collect();
            if allowed.is_empty() {
                let reason = if addresses.is_empty() {
                    format!("{host} does not resolve")
                } else {
                    format!("{host} resolves to a non-public address; the image proxy does not fetch from it")
                };
                return Err(Box::new(Refused(reason)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - u32::from(bits.min(32))) };
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - u32::from(bits.min(128))) };
            u128::from(ip) & mask == u128::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V4(_)) => ip.to_ipv4_mapped().is_some_and(|v4| in_network(IpAddr::V4(v4), net, bits)),
        _ => false,
    }
}

/// True for globally routable unicast addresses only.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => is_public_v6(ip),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0                                   // "this network"
        || a == 10                             // private
        || a == 127                            // loopback
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 169 && b == 254)              // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b)) // private
        || (a == 192 && b == 0 && c == 0)      // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)      // documentation
        || (a == 192 && b == 88 && c == 99)    // 6to4 relay anycast
        || (a == 192 && b == 168)              // private
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || (a == 198 && b == 51 && c == 100)   // documentation
        || (a == 203 && b == 0 && c == 113)    // documentation
        || a >= 224) // multicast, reserved, broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    // IPv4 inside IPv6: mapped (::ffff:0:0/96), compatible (::/96), NAT64 (64:ff9b::/96), 6to4 (2002::/16).
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    if segments[..6] == [0, 0, 0, 0, 0, 0] {
        return !ip.is_unspecified() && !ip.is_loopback() && is_public_v4(Ipv4Addr::from(u128::from(ip) as u32));
    }
    if segments[0] == 0x64 && segments[1] == 0xff9b && segments[2..6] == [0, 0, 0, 0] {
        return is_public_v4(Ipv4Addr::from(u128::from(ip) as u32));
    }
    if segments[0] == 0x2002 {
        return is_public_v4(Ipv4Addr::new((segments[1] >> 8) as u8, segments[1] as u8, (segments[2] >> 8) as u8, segments[2] as u8));
    }
    !((segments[0] & 0xfe00) == 0xfc00          // unique local fc00::/7 (incl. fd00:ec2::254 metadata)
        || (segments[0] & 0xffc0) == 0xfe80     // link-local
        || (segments[0] & 0xffc0) == 0xfec0     // site-local (deprecated)
        || (segments[0] & 0xff00) == 0xff00     // multicast
        || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
        || (segments[0] == 0x2001 && segments[1] == 0)      // Teredo
        || segments[0] == 0x0100 && segments[1..4] == [0, 0, 0]) // discard-only 100::/64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `image_decode` fuzz target: a 396-byte TIFF made the decoder reserve
    /// 251 MB for one tag's values before any limit applied.
    #[test]
    fn a_tiff_tag_claiming_millions_of_values_is_refused_before_decoding() {
        for little in [true, false] {
            for big in [false, true] {
                let mut file = Vec::new();
                let number = |file: &mut Vec<u8>, value: u64, len: usize| {
                    let bytes = value.to_be_bytes();
                    let mut field = bytes[8 - len..].to_vec();
                    if little {
                        field.reverse();
                    }
                    file.extend(field);
                };
                file.extend(if little { b"II" } else { b"MM" });
                if big {
                    number(&mut file, 43, 2);
                    number(&mut file, 8, 2);
                    number(&mut file, 0, 2);
                    number(&mut file, 16, 8);
                    number(&mut file, 1, 8); // one entry
                    number(&mut file, 273, 2); // StripOffsets
                    number(&mut file, 1, 2); // BYTE
                    number(&mut file, 8_000_000, 8);
                    number(&mut file, 44, 8);
                } else {
                    number(&mut file, 42, 2);
                    number(&mut file, 8, 4);
                    number(&mut file, 1, 2);
                    number(&mut file, 273, 2);
                    number(&mut file, 1, 2);
                    number(&mut file, 8_000_000, 4);
                    number(&mut file, 26, 4);
                }
                file.extend([0u8; 64]);
                let refused = check_tiff_value_counts(&file).unwrap_err();
                assert!(refused.contains("tag 273 holds 8000000 values"), "little {little}, big {big}: {refused}");
                // (The `image` crate does not read BigTIFF at all: refused before the check.)
                let error = convert_blocking(file, &options(None, None), 1 << 24).unwrap_err();
                let expected = if big { "invalid_image" } else { "image_too_large" };
                assert_eq!(error.code(), expected, "little {little}, big {big}: {error}");
            }
        }
        // The same tag with a count a real image needs is left to the decoder.
        let mut tiff = Cursor::new(Vec::new());
        image::RgbaImage::from_pixel(64, 48, image::Rgba([1, 2, 3, 255])).write_to(&mut tiff, image::ImageFormat::Tiff).unwrap();
        let tiff = tiff.into_inner();
        assert_eq!(check_tiff_value_counts(&tiff), Ok(()));
        assert!(convert_blocking(tiff, &options(None, None), 1 << 24).is_ok());
    }

    /// Found by the `image_decode` fuzz target: this GIF decodes to an image 0 pixels wide,
    /// which the scaling then failed on (a panic in the conversion task: a 500).
    #[test]
    fn an_image_that_decodes_to_no_pixels_is_refused() {
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/image_decode/crash-gif-of-no-pixels");
        let gif = std::fs::read(corpus).unwrap()[2..].to_vec();
        let error = convert_blocking(gif, &options(Some(7), Some(7)), 1 << 24).unwrap_err();
        assert_eq!(error.code(), "invalid_image", "{error}");
        assert!(error.to_string().contains("no pixels"), "{error}");
    }

    fn options(width: Option<u32>, height: Option<u32>) -> ConvertOptions {
        ConvertOptions { width, height, size_rule: SizeRule::Nearest, cf: ColorFormat::Argb8888, version: LvglVersion::V9, c_array: None }
    }

    fn png_of(image: &image::RgbaImage) -> Vec<u8> {
        let mut bytes = Cursor::new(Vec::new());
        image.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
        bytes.into_inner()
    }

    #[test]
    fn an_antialiased_icon_keeps_its_colour_at_the_edges_when_scaled() {
        // A white disc on transparent black, antialiased by coverage, 128 → 32 pixels.
        let disc = image::RgbaImage::from_fn(128, 128, |x, y| {
            let inside = (0..16)
                .filter(|s| {
                    let (dx, dy) =
                        (f64::from(x) + (f64::from(s % 4) + 0.5) / 4.0 - 64.0, f64::from(y) + (f64::from(s / 4) + 0.5) / 4.0 - 64.0);
                    dx * dx + dy * dy <= 56.0 * 56.0
                })
                .count();
            // Fully transparent pixels are transparent black, as image editors store them.
            if inside == 0 { image::Rgba([0, 0, 0, 0]) } else { image::Rgba([255, 255, 255, (inside * 255 / 16) as u8]) }
        });
        let bin = convert_blocking(png_of(&disc), &options(Some(32), Some(32)), 1 << 20).unwrap();
        assert_eq!(&bin[4..8], &[32, 0, 32, 0]);
        let mut edge_pixels = 0;
        for pixel in bin[12..].chunks_exact(4) {
            let (b, g, r, a) = (pixel[0], pixel[1], pixel[2], pixel[3]);
            if a > 0 {
                // No pixel that shows is darker than the icon's own white (a halo would be grey).
                assert!(r >= 250 && g >= 250 && b >= 250, "a dark edge pixel: {r},{g},{b},{a}");
                edge_pixels += usize::from(a < 255);
            }
        }
        assert!(edge_pixels > 20, "the disc has an antialiased edge ({edge_pixels} pixels)");
    }

    #[test]
    fn the_pixel_count_is_checked_from_the_header_before_decoding() {
        // A PNG header claiming 8192×8192, with no pixel data at all.
        use image::ImageEncoder;
        fn crc32(data: &[u8]) -> u32 {
            let mut crc = !0u32;
            for &byte in data {
                crc ^= u32::from(byte);
                for _ in 0..8 {
                    crc = if crc & 1 == 1 { 0xEDB8_8320 ^ (crc >> 1) } else { crc >> 1 };
                }
            }
            !crc
        }
        let mut header = Vec::new();
        image::codecs::png::PngEncoder::new(&mut header).write_image(&[0u8; 4 * 4 * 4], 4, 4, image::ExtendedColorType::Rgba8).unwrap();
        let ihdr = header.windows(4).position(|w| w == b"IHDR").unwrap();
        header[ihdr + 4..ihdr + 8].copy_from_slice(&8192u32.to_be_bytes());
        header[ihdr + 8..ihdr + 12].copy_from_slice(&8192u32.to_be_bytes());
        let crc = crc32(&header[ihdr..ihdr + 17]);
        header[ihdr + 17..ihdr + 21].copy_from_slice(&crc.to_be_bytes());
        let error = convert_blocking(header, &options(None, None), 16_777_216).unwrap_err();
        assert_eq!(error.code(), "image_too_large");
        assert!(error.to_string().contains("8192x8192") && error.to_string().contains("UPDRAFT_IMAGE_MAX_PIXELS"), "{error}");
    }

    #[test]
    fn the_decoder_runs_under_the_image_crate_s_limits() {
        // 70000×1 is few pixels but more than any LVGL 9 side: the decoder's own limit refuses it.
        let wide = image::GrayImage::new(70_000, 1);
        let mut png = Cursor::new(Vec::new());
        wide.write_to(&mut png, image::ImageFormat::Png).unwrap();
        let error = convert_blocking(png.into_inner(), &options(Some(100), None), 1 << 24).unwrap_err();
        assert_eq!(error.code(), "image_too_large");
        assert!(error.to_string().contains("decoding limit"), "{error}");
    }

    #[test]
    fn c_source_is_made_only_of_images_that_make_reasonable_source() {
        let big = image::RgbaImage::from_pixel(1025, 1024, image::Rgba([1, 2, 3, 4]));
        let mut c = options(None, None);
        c.c_array = Some("big".into());
        assert_eq!(convert_blocking(png_of(&big), &c, 1 << 24).unwrap_err().code(), "image_too_large");
        c.width = Some(100);
        assert!(convert_blocking(png_of(&big), &c, 1 << 24).is_ok());
    }

    #[test]
    fn tga_is_recognised_by_its_header() {
        let image = image::RgbaImage::from_pixel(3, 2, image::Rgba([10, 20, 30, 255]));
        let mut tga = Cursor::new(Vec::new());
        image.write_to(&mut tga, image::ImageFormat::Tga).unwrap();
        let bin = convert_blocking(tga.into_inner(), &options(None, None), 1 << 20).unwrap();
        assert_eq!(&bin[12..16], &[30, 20, 10, 255]);
        assert!(!looks_like_tga(b"definitely not an image at all"));
    }

    #[test]
    fn only_public_unicast_addresses_are_public() {
        for blocked in [
            "0.0.0.0",
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "192.0.0.1",
            "192.0.2.5",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2001:db8::1",
            "2001::1",
        ] {
            assert!(!is_public(blocked.parse().unwrap()), "{blocked} counted as public");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "2002:0808:0808::",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public} counted as private");
        }
    }

    #[test]
    fn the_allow_list_opens_names_addresses_and_networks() {
        let policy = AddressPolicy::new(&["cams.lan".into(), "10.0.0.0/8".into(), "127.0.0.1".into(), "[::1]".into()]);
        assert!(policy.name_allowed("CAMS.lan."));
        assert!(!policy.name_allowed("other.lan"));
        assert!(policy.ip_allowed("10.9.8.7".parse().unwrap()));
        assert!(policy.ip_allowed("::ffff:10.9.8.7".parse().unwrap()));
        assert!(policy.ip_allowed("127.0.0.1".parse().unwrap()));
        assert!(!policy.ip_allowed("127.0.0.2".parse().unwrap()));
        assert!(policy.ip_allowed("::1".parse().unwrap()));
        assert!(!policy.ip_allowed("192.168.0.1".parse().unwrap()));
    }

    #[test]
    fn literal_urls_are_checked_before_any_request() {
        let policy = AddressPolicy::new(&[]);
        for url in [
            "http://127.0.0.1/x.png",
            "http://[::1]:8080/",
            "http://169.254.169.254/latest/meta-data",
            "http://0x7f000001/",
            "file:///etc/passwd",
            "ftp://example.com/a",
        ] {
            let url = Url::parse(url).unwrap();
            assert_eq!(policy.check_url(&url).unwrap_err().code(), "url_not_allowed", "{url}");
        }
        assert!(policy.check_url(&Url::parse("https://example.com/a.png").unwrap()).is_ok());
        assert!(policy.check_url(&Url::parse("http://8.8.8.8/a.png").unwrap()).is_ok());
    }
}

/// The properties of `crate::fuzzing` (shared with `fuzz/`), for a bounded number of cases.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use proptest::sample::Index;

    use crate::fuzzing;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn an_image_is_converted_within_its_limits_or_refused(
            width in 1u32..300,
            height in 1u32..300,
            format in 0usize..6,
            options in any::<u8>(),
            side in any::<u8>(),
            flip in proptest::option::of((any::<Index>(), 1u8..=255)),
        ) {
            let picture = image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(width, height, |x, y| image::Rgba([x as u8, y as u8, 7, (x ^ y) as u8])));
            let format = [image::ImageFormat::Png, image::ImageFormat::Gif, image::ImageFormat::Bmp, image::ImageFormat::Tga, image::ImageFormat::Qoi, image::ImageFormat::Jpeg][format];
            let picture = if format == image::ImageFormat::Jpeg { image::DynamicImage::ImageRgb8(picture.to_rgb8()) } else { picture };
            let mut file = std::io::Cursor::new(Vec::new());
            picture.write_to(&mut file, format).unwrap();
            let mut data = vec![options, side];
            data.extend(file.into_inner());
            if let Some((at, bits)) = flip {
                let i = 2 + at.index(data.len() - 2);
                data[i] ^= bits;
            }
            fuzzing::image_decode(&data);
        }
    }
}

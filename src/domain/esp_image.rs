//! Streaming parser and validator for ESP32-family application images.
//!
//! An ESP-IDF application image (the `.bin` that OTA writes into an app partition) is laid out as
//! described in ESP-IDF's `esp_app_format.h` and checked by `esp_image_format.c`:
//!
//! * a 24-byte image header (`esp_image_header_t`, magic `0xE9`, segment count, flash settings,
//!   entry point, chip id, chip revision range, `hash_appended` flag);
//! * `segment_count` segments, each an 8-byte header `{load_addr, data_len}` followed by its data;
//!   the first segment starts with the 256-byte application descriptor (`esp_app_desc_t`, magic
//!   `0xABCD5432`) at file offset 32;
//! * zero padding up to the byte before the next 16-byte boundary, then one checksum byte (the XOR
//!   of all segment data bytes, seeded with `0xEF`);
//! * when `hash_appended == 1`, the SHA-256 of every byte before it;
//! * optionally anything else (a secure-boot signature block, flash padding), reported as trailing bytes.
//!
//! [`EspImageParser`] checks all of this on the fly while an upload streams in, in chunks of any
//! size, with memory that does not grow with the image. [`builder::EspImageBuilder`] produces valid
//! images for tests.

use sha2::{Digest, Sha256};
use std::fmt;

/// The first byte of every ESP image (ESP8266 and ESP32 family alike).
pub const IMAGE_MAGIC: u8 = 0xE9;
/// The magic word at the start of `esp_app_desc_t`.
pub const APP_DESC_MAGIC: u32 = 0xABCD_5432;
/// The size of `esp_image_header_t`.
pub const IMAGE_HEADER_LEN: usize = 24;
/// The size of `esp_image_segment_header_t`.
pub const SEGMENT_HEADER_LEN: usize = 8;
/// The file offset of the application descriptor (image header plus first segment header).
pub const APP_DESC_OFFSET: u64 = 32;
/// The size of `esp_app_desc_t`.
pub const APP_DESC_LEN: usize = 256;
/// The largest segment count the bootloader accepts (`ESP_IMAGE_MAX_SEGMENTS`).
pub const MAX_SEGMENTS: u8 = 16;
/// The largest input accepted, trailing bytes included (16 MiB).
pub const MAX_IMAGE_LEN: u64 = 16 * 1024 * 1024;
/// The seed of the image checksum (`ESP_ROM_CHECKSUM_INITIAL`).
pub const CHECKSUM_SEED: u8 = 0xEF;

/// Chip ids of the image header (`esp_chip_id_t`) and the names ESP-IDF uses for them.
pub const KNOWN_CHIPS: [(u16, &str); 10] = [
    (0x0000, "esp32"),
    (0x0002, "esp32s2"),
    (0x0005, "esp32c3"),
    (0x0009, "esp32s3"),
    (0x000C, "esp32c2"),
    (0x000D, "esp32c6"),
    (0x0010, "esp32h2"),
    (0x0012, "esp32p4"),
    (0x0014, "esp32c61"),
    (0x0017, "esp32c5"),
];

/// The chip family as ESP Web Tools and ESPHome manifests name it (`esp32s3` → `ESP32-S3`),
/// for an ESP-IDF target name (any case) or `esp8266`; `None` for anything else.
pub fn chip_family(target: &str) -> Option<&'static str> {
    const FAMILIES: [(&str, &str); 11] = [
        ("esp32", "ESP32"),
        ("esp32s2", "ESP32-S2"),
        ("esp32s3", "ESP32-S3"),
        ("esp32c2", "ESP32-C2"),
        ("esp32c3", "ESP32-C3"),
        ("esp32c5", "ESP32-C5"),
        ("esp32c6", "ESP32-C6"),
        ("esp32c61", "ESP32-C61"),
        ("esp32h2", "ESP32-H2"),
        ("esp32p4", "ESP32-P4"),
        ("esp8266", "ESP8266"),
    ];
    let target = target.trim().to_ascii_lowercase().replace('-', "");
    FAMILIES.iter().find(|(name, _)| *name == target).map(|(_, family)| *family)
}

/// Returns the ESP-IDF target name of a header chip id, or `None` for an unknown id.
pub fn chip_name(chip_id: u16) -> Option<&'static str> {
    KNOWN_CHIPS.iter().find(|(id, _)| *id == chip_id).map(|(_, name)| *name)
}

/// Tells whether the first bytes of a file claim to be an ESP32-family app image header.
///
/// The claim is: magic `0xE9`, a known chip id, zero reserved bytes 19..23 and a `hash_appended`
/// byte of 0 or 1. ESP8266 images also start with `0xE9` but have an 8-byte header, so their bytes
/// 12..24 are segment data and almost never satisfy this. Fewer than 24 bytes never claim anything.
pub fn looks_like_esp32_app(first_bytes: &[u8]) -> bool {
    let Some(h) = first_bytes.get(..IMAGE_HEADER_LEN) else {
        return false;
    };
    h[0] == IMAGE_MAGIC && chip_name(u16::from_le_bytes([h[12], h[13]])).is_some() && h[19..23] == [0, 0, 0, 0] && h[23] <= 1
}

/// XORs `data` into the running checksum `acc`, eight bytes at a time.
///
/// XOR is associative and commutative, so folding 64-bit words and then their bytes gives the same
/// result as XOR-ing every byte, and the same as the IDF's 32-bit word XOR folded to one byte.
fn xor_checksum(acc: u8, data: &[u8]) -> u8 {
    let mut words = data.chunks_exact(8);
    let mut wide = 0u64;
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        wide ^= u64::from_le_bytes(bytes);
    }
    let folded = wide.to_le_bytes().iter().fold(acc, |a, b| a ^ b);
    words.remainder().iter().fold(folded, |a, b| a ^ b)
}

/// Why a file that claims to be an ESP32 app image is not a valid one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EspImageError {
    /// The header declares zero segments.
    NoSegments,
    /// The header declares more than [`MAX_SEGMENTS`] segments.
    TooManySegments {
        /// The declared segment count.
        count: u8,
    },
    /// The file ends inside the 8-byte header of a segment.
    TruncatedSegmentHeader {
        /// Zero-based segment index.
        index: u8,
        /// How many header bytes were present.
        available: usize,
    },
    /// The file ends inside the data of a segment.
    TruncatedSegment {
        /// Zero-based segment index.
        index: u8,
        /// The data length the segment header declares.
        declared: u32,
        /// How many data bytes were present.
        available: u32,
    },
    /// The file ends before the checksum byte.
    TruncatedChecksum {
        /// The file offset where the checksum byte belongs.
        offset: u64,
    },
    /// The header announces an appended SHA-256 but the file ends inside it.
    TruncatedHash {
        /// How many of the 32 hash bytes were present.
        available: usize,
    },
    /// A segment length is not a multiple of 4, which the bootloader refuses.
    UnalignedSegment {
        /// Zero-based segment index.
        index: u8,
        /// The declared data length.
        len: u32,
    },
    /// The first segment is too short to hold the 256-byte app descriptor.
    AppDescTooShort {
        /// The declared data length of the first segment.
        len: u32,
    },
    /// The app descriptor magic word is missing at offset 32.
    NoAppDesc {
        /// The word found there instead.
        found: u32,
    },
    /// A string field of the app descriptor is not valid UTF-8.
    BadString {
        /// The `esp_app_desc_t` field name.
        field: &'static str,
    },
    /// The stored checksum byte differs from the XOR of the segment data.
    Checksum {
        /// The checksum computed over the segment data.
        computed: u8,
        /// The checksum byte stored in the image.
        stored: u8,
    },
    /// The appended SHA-256 differs from the hash of the image contents.
    Hash {
        /// The SHA-256 computed over the image.
        computed: [u8; 32],
        /// The SHA-256 stored after the checksum.
        stored: [u8; 32],
    },
    /// The input is larger than [`MAX_IMAGE_LEN`].
    TooLarge,
}

impl EspImageError {
    /// A stable machine-readable code for API responses and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoSegments => "esp_image_no_segments",
            Self::TooManySegments { .. } => "esp_image_too_many_segments",
            Self::TruncatedSegmentHeader { .. }
            | Self::TruncatedSegment { .. }
            | Self::TruncatedChecksum { .. }
            | Self::TruncatedHash { .. } => "esp_image_truncated",
            Self::UnalignedSegment { .. } => "esp_image_unaligned_segment",
            Self::AppDescTooShort { .. } | Self::NoAppDesc { .. } => "esp_image_no_app_desc",
            Self::BadString { .. } => "esp_image_bad_string",
            Self::Checksum { .. } => "esp_image_checksum",
            Self::Hash { .. } => "esp_image_hash",
            Self::TooLarge => "esp_image_too_large",
        }
    }
}

impl fmt::Display for EspImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSegments => write!(f, "ESP image header declares no segments"),
            Self::TooManySegments { count } => {
                write!(f, "ESP image header declares {count} segments, more than the maximum of {MAX_SEGMENTS}")
            }
            Self::TruncatedSegmentHeader { index, available } => write!(
                f,
                "ESP image is truncated: the header of segment {index} needs {SEGMENT_HEADER_LEN} bytes but only {available} remain"
            ),
            Self::TruncatedSegment { index, declared, available } => {
                write!(f, "ESP image is truncated: segment {index} declares {declared} bytes but only {available} remain")
            }
            Self::TruncatedChecksum { offset } => write!(f, "ESP image is truncated: the checksum byte at offset {offset} is missing"),
            Self::TruncatedHash { available } => {
                write!(f, "ESP image is truncated: the header announces an appended SHA-256 but only {available} of its 32 bytes remain")
            }
            Self::UnalignedSegment { index, len } => {
                write!(f, "ESP image segment {index} is {len} bytes long, which is not a multiple of 4")
            }
            Self::AppDescTooShort { len } => write!(
                f,
                "ESP image first segment is {len} bytes, too short for the {APP_DESC_LEN}-byte app descriptor (is this a bootloader?)"
            ),
            Self::NoAppDesc { found } => write!(
                f,
                "app descriptor magic 0x{APP_DESC_MAGIC:08X} not found at offset {APP_DESC_OFFSET} (found 0x{found:08X}; is this a bootloader or a non-app image?)"
            ),
            Self::BadString { field } => {
                write!(f, "app descriptor field `{field}` is not valid UTF-8")
            }
            Self::Checksum { computed, stored } => {
                write!(f, "ESP image checksum mismatch: computed 0x{computed:02x}, stored 0x{stored:02x}")
            }
            Self::Hash { .. } => write!(f, "appended SHA-256 does not match the image contents"),
            Self::TooLarge => write!(f, "ESP image is larger than the 16 MiB limit"),
        }
    }
}

impl std::error::Error for EspImageError {}

/// What a valid ESP32-family app image says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspImageInfo {
    /// Raw chip id from the image header.
    pub chip_id: u16,
    /// ESP-IDF target name of `chip_id`, such as `"esp32s3"`.
    pub chip: Option<&'static str>,
    /// Number of segments.
    pub segment_count: u8,
    /// Raw SPI flash mode (0 QIO, 1 QOUT, 2 DIO, 3 DOUT, 4 FAST_READ, 5 SLOW_READ).
    pub spi_mode: u8,
    /// Raw SPI flash speed code (low nibble of header byte 3; its meaning depends on the chip).
    pub spi_speed: u8,
    /// Raw SPI flash size code (high nibble of header byte 3); see [`EspImageInfo::flash_size_bytes`].
    pub spi_size: u8,
    /// Entry point address.
    pub entry_addr: u32,
    /// Minimal chip revision, as major * 100 + minor.
    pub min_chip_rev_full: u16,
    /// Maximal chip revision, as major * 100 + minor.
    pub max_chip_rev_full: u16,
    /// Whether a SHA-256 of the image follows the checksum byte.
    pub hash_appended: bool,
    /// `esp_app_desc_t.version`.
    pub version: String,
    /// `esp_app_desc_t.project_name`.
    pub project_name: String,
    /// `esp_app_desc_t.idf_ver`.
    pub idf_ver: String,
    /// `esp_app_desc_t.time`.
    pub compile_time: String,
    /// `esp_app_desc_t.date`.
    pub compile_date: String,
    /// `esp_app_desc_t.secure_version` (anti-rollback counter).
    pub secure_version: u32,
    /// `esp_app_desc_t.app_elf_sha256`: SHA-256 of the ELF file the image was made from.
    pub app_elf_sha256: [u8; 32],
    /// The appended SHA-256, when `hash_appended` is set (already verified).
    pub appended_sha256: Option<[u8; 32]>,
    /// Bytes up to and including the appended hash: what the bootloader verifies.
    pub image_len: u64,
    /// Bytes after `image_len` (signature block, flash padding, ...).
    pub trailing_bytes: u64,
}

impl EspImageInfo {
    /// The flash size the image was built for, in bytes, or `None` for an unknown size code.
    pub fn flash_size_bytes(&self) -> Option<u64> {
        (self.spi_size <= 7).then(|| (1u64 << 20) << self.spi_size)
    }

    /// The name of the SPI flash mode, or `None` for an unknown mode.
    pub fn spi_mode_name(&self) -> Option<&'static str> {
        ["QIO", "QOUT", "DIO", "DOUT", "FAST_READ", "SLOW_READ"].get(usize::from(self.spi_mode)).copied()
    }

    /// `app_elf_sha256` as 64 lowercase hex digits.
    pub fn app_elf_sha256_hex(&self) -> String {
        hex::encode(self.app_elf_sha256)
    }

    /// `appended_sha256` as 64 lowercase hex digits.
    pub fn appended_sha256_hex(&self) -> Option<String> {
        self.appended_sha256.map(hex::encode)
    }
}

/// The fields of `esp_app_desc_t` once it has been read and validated.
#[derive(Debug, Clone)]
struct AppDesc {
    secure_version: u32,
    version: String,
    project_name: String,
    compile_time: String,
    compile_date: String,
    idf_ver: String,
    app_elf_sha256: [u8; 32],
}

/// Where the parser is in the image; every stage knows how many bytes it still expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Collecting the 24-byte image header into `scratch`.
    Header,
    /// Collecting the 8-byte header of segment `index` into `scratch`.
    SegmentHeader { index: u8 },
    /// Reading the data of segment `index`, of which `remaining` bytes are still expected.
    SegmentData { index: u8, declared: u32, remaining: u32 },
    /// Skipping the padding before the checksum byte.
    Padding { remaining: u64 },
    /// Expecting the checksum byte.
    Checksum,
    /// Collecting the 32-byte appended SHA-256 into `scratch`.
    Hash,
    /// The image is complete and valid; counting what follows.
    Trailing,
    /// The input does not claim to be an ESP32 app image; ignoring the rest.
    NotEsp,
}

/// Incremental validator of an ESP32 app image fed in arbitrary chunks.
///
/// Memory use is fixed (a few hundred bytes plus a SHA-256 state) whatever the image size.
/// Feed every chunk to [`update`](Self::update), then call [`finish`](Self::finish).
#[derive(Debug, Clone)]
pub struct EspImageParser {
    stage: Stage,
    /// The first error found; once set, the rest of the input is ignored.
    error: Option<EspImageError>,
    /// Bytes consumed so far.
    offset: u64,
    /// Small buffer for the fixed-size records (image header, segment header, appended hash).
    scratch: [u8; 32],
    scratch_len: usize,
    header: [u8; IMAGE_HEADER_LEN],
    segment_count: u8,
    /// The first 256 data bytes of segment 0, i.e. the raw app descriptor.
    desc_raw: [u8; APP_DESC_LEN],
    desc_len: usize,
    desc: Option<AppDesc>,
    checksum: u8,
    checksum_offset: u64,
    /// Running SHA-256 of the image, present only when the header announces an appended hash.
    hasher: Option<Sha256>,
    computed_hash: [u8; 32],
    appended_hash: Option<[u8; 32]>,
    image_len: u64,
}

impl Default for EspImageParser {
    fn default() -> Self {
        Self::new()
    }
}

impl EspImageParser {
    /// Creates a parser expecting the first byte of a file.
    pub fn new() -> Self {
        Self {
            stage: Stage::Header,
            error: None,
            offset: 0,
            scratch: [0; 32],
            scratch_len: 0,
            header: [0; IMAGE_HEADER_LEN],
            segment_count: 0,
            desc_raw: [0; APP_DESC_LEN],
            desc_len: 0,
            desc: None,
            checksum: CHECKSUM_SEED,
            checksum_offset: 0,
            hasher: None,
            computed_hash: [0; 32],
            appended_hash: None,
            image_len: 0,
        }
    }

    /// Feeds the next chunk of the file; chunks may have any size, including zero. Never panics.
    pub fn update(&mut self, chunk: &[u8]) {
        if self.error.is_some() || self.stage == Stage::NotEsp {
            return;
        }
        // Accept at most what still fits under the size limit; anything beyond is an error.
        let room = usize::try_from(MAX_IMAGE_LEN.saturating_sub(self.offset)).unwrap_or(usize::MAX);
        let (mut rest, overflow) = chunk.split_at(chunk.len().min(room));
        while !rest.is_empty() && self.error.is_none() && self.stage != Stage::NotEsp {
            let consumed = self.step(rest);
            if consumed == 0 {
                break; // Defensive: every stage consumes at least one byte of non-empty input.
            }
            rest = &rest[consumed..];
        }
        if !overflow.is_empty() && self.error.is_none() && self.stage != Stage::NotEsp {
            self.error = Some(EspImageError::TooLarge);
        }
    }

    /// Ends the input and reports the result.
    ///
    /// Returns `Ok(None)` when the input does not claim to be an ESP32 app image (see
    /// [`looks_like_esp32_app`]; empty input and inputs shorter than 24 bytes included),
    /// `Ok(Some(info))` for a valid image and `Err` for a claimed image that fails a check.
    pub fn finish(self) -> Result<Option<EspImageInfo>, EspImageError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        match self.stage {
            Stage::Header | Stage::NotEsp => Ok(None),
            Stage::SegmentHeader { index } => Err(EspImageError::TruncatedSegmentHeader { index, available: self.scratch_len }),
            Stage::SegmentData { index, declared, remaining } => {
                Err(EspImageError::TruncatedSegment { index, declared, available: declared - remaining })
            }
            Stage::Padding { .. } | Stage::Checksum => Err(EspImageError::TruncatedChecksum { offset: self.checksum_offset }),
            Stage::Hash => Err(EspImageError::TruncatedHash { available: self.scratch_len }),
            Stage::Trailing => {
                // Segment 0 is at least 256 bytes long and was read completely, so the descriptor
                // is always present here; the fallback only avoids a panic path.
                let desc = self.desc.ok_or(EspImageError::AppDescTooShort { len: 0 })?;
                let h = &self.header;
                Ok(Some(EspImageInfo {
                    chip_id: u16::from_le_bytes([h[12], h[13]]),
                    chip: chip_name(u16::from_le_bytes([h[12], h[13]])),
                    segment_count: self.segment_count,
                    spi_mode: h[2],
                    spi_speed: h[3] & 0x0F,
                    spi_size: h[3] >> 4,
                    entry_addr: u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
                    min_chip_rev_full: u16::from_le_bytes([h[15], h[16]]),
                    max_chip_rev_full: u16::from_le_bytes([h[17], h[18]]),
                    hash_appended: h[23] == 1,
                    version: desc.version,
                    project_name: desc.project_name,
                    idf_ver: desc.idf_ver,
                    compile_time: desc.compile_time,
                    compile_date: desc.compile_date,
                    secure_version: desc.secure_version,
                    app_elf_sha256: desc.app_elf_sha256,
                    appended_sha256: self.appended_hash,
                    image_len: self.image_len,
                    trailing_bytes: self.offset - self.image_len,
                }))
            }
        }
    }

    /// Consumes a prefix of `input` (at least one byte) in the current stage and returns its length.
    fn step(&mut self, input: &[u8]) -> usize {
        // First decide how many bytes the current stage can take, then account for them, so that
        // `self.offset` is already past `data` when a stage transition looks at it.
        let want: u64 = match self.stage {
            Stage::Header => (IMAGE_HEADER_LEN - self.scratch_len) as u64,
            Stage::SegmentHeader { .. } => (SEGMENT_HEADER_LEN - self.scratch_len) as u64,
            Stage::SegmentData { remaining, .. } => u64::from(remaining),
            Stage::Padding { remaining } => remaining,
            Stage::Checksum => 1,
            Stage::Hash => (32 - self.scratch_len) as u64,
            Stage::Trailing | Stage::NotEsp => u64::MAX,
        };
        let n = usize::try_from(want).map_or(input.len(), |want| want.min(input.len()));
        let data = &input[..n];
        self.offset += n as u64;

        match self.stage {
            Stage::Header => {
                if self.scratch_len == 0 && data.first() != Some(&IMAGE_MAGIC) {
                    self.stage = Stage::NotEsp;
                    return input.len();
                }
                self.push_scratch(data);
                if self.scratch_len == IMAGE_HEADER_LEN {
                    self.on_image_header();
                }
            }
            Stage::SegmentHeader { index } => {
                self.push_scratch(data);
                if self.scratch_len == SEGMENT_HEADER_LEN {
                    self.on_segment_header(index);
                }
            }
            Stage::SegmentData { index, declared, remaining } => {
                self.checksum = xor_checksum(self.checksum, data);
                self.absorb(data);
                let remaining = remaining - n as u32;
                self.stage = Stage::SegmentData { index, declared, remaining };
                if index == 0 && self.desc_len < APP_DESC_LEN {
                    let k = n.min(APP_DESC_LEN - self.desc_len);
                    self.desc_raw[self.desc_len..self.desc_len + k].copy_from_slice(&data[..k]);
                    self.desc_len += k;
                    if self.desc_len == APP_DESC_LEN {
                        match parse_app_desc(&self.desc_raw) {
                            Ok(desc) => self.desc = Some(desc),
                            Err(e) => self.error = Some(e),
                        }
                    }
                }
                if remaining == 0 && self.error.is_none() {
                    self.end_segment(index);
                }
            }
            Stage::Padding { remaining } => {
                self.absorb(data);
                let remaining = remaining - n as u64;
                self.stage = if remaining == 0 { Stage::Checksum } else { Stage::Padding { remaining } };
            }
            Stage::Checksum => {
                self.absorb(data);
                let stored = data[0];
                if stored != self.checksum {
                    self.error = Some(EspImageError::Checksum { computed: self.checksum, stored });
                } else if let Some(hasher) = self.hasher.take() {
                    self.computed_hash = hasher.finalize().into();
                    self.stage = Stage::Hash;
                } else {
                    self.image_len = self.offset;
                    self.stage = Stage::Trailing;
                }
            }
            Stage::Hash => {
                self.push_scratch(data);
                if self.scratch_len == 32 {
                    let stored = self.scratch;
                    if stored != self.computed_hash {
                        self.error = Some(EspImageError::Hash { computed: self.computed_hash, stored });
                    } else {
                        self.appended_hash = Some(stored);
                        self.image_len = self.offset;
                        self.stage = Stage::Trailing;
                    }
                }
            }
            Stage::Trailing | Stage::NotEsp => {}
        }
        n
    }

    /// Appends `data` to `scratch`; callers never pass more than the current record still needs.
    fn push_scratch(&mut self, data: &[u8]) {
        let end = self.scratch_len + data.len();
        self.scratch[self.scratch_len..end].copy_from_slice(data);
        self.scratch_len = end;
    }

    /// Feeds bytes to the running SHA-256, when the image has one appended.
    fn absorb(&mut self, data: &[u8]) {
        if let Some(hasher) = self.hasher.as_mut() {
            hasher.update(data);
        }
    }

    /// Decides, from the complete 24-byte header, whether this is an ESP32 app image and what follows.
    fn on_image_header(&mut self) {
        self.header.copy_from_slice(&self.scratch[..IMAGE_HEADER_LEN]);
        self.scratch_len = 0;
        if !looks_like_esp32_app(&self.header) {
            self.stage = Stage::NotEsp;
            return;
        }
        let count = self.header[1];
        if count == 0 {
            self.error = Some(EspImageError::NoSegments);
            return;
        }
        if count > MAX_SEGMENTS {
            self.error = Some(EspImageError::TooManySegments { count });
            return;
        }
        self.segment_count = count;
        if self.header[23] == 1 {
            self.hasher = Some(Sha256::new());
        }
        let header = self.header;
        self.absorb(&header);
        self.stage = Stage::SegmentHeader { index: 0 };
    }

    /// Checks a complete segment header and moves on to its data.
    fn on_segment_header(&mut self, index: u8) {
        let seg = self.scratch;
        self.scratch_len = 0;
        self.absorb(&seg[..SEGMENT_HEADER_LEN]);
        let len = u32::from_le_bytes([seg[4], seg[5], seg[6], seg[7]]);
        if !len.is_multiple_of(4) {
            self.error = Some(EspImageError::UnalignedSegment { index, len });
        } else if index == 0 && (len as usize) < APP_DESC_LEN {
            self.error = Some(EspImageError::AppDescTooShort { len });
        } else if len == 0 {
            self.end_segment(index);
        } else {
            self.stage = Stage::SegmentData { index, declared: len, remaining: len };
        }
    }

    /// Moves past segment `index`, whose last byte has just been consumed.
    fn end_segment(&mut self, index: u8) {
        if index + 1 < self.segment_count {
            self.stage = Stage::SegmentHeader { index: index + 1 };
            return;
        }
        // The checksum byte is the last byte of the 16-byte block in which the padding starts.
        let end = self.offset;
        self.checksum_offset = (end + 1).next_multiple_of(16) - 1;
        let padding = self.checksum_offset - end;
        self.stage = if padding == 0 { Stage::Checksum } else { Stage::Padding { remaining: padding } };
    }
}

/// Validates the raw `esp_app_desc_t` and extracts its fields.
fn parse_app_desc(raw: &[u8; APP_DESC_LEN]) -> Result<AppDesc, EspImageError> {
    let word = |at: usize| u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
    let magic = word(0);
    if magic != APP_DESC_MAGIC {
        return Err(EspImageError::NoAppDesc { found: magic });
    }
    let mut app_elf_sha256 = [0u8; 32];
    app_elf_sha256.copy_from_slice(&raw[144..176]);
    Ok(AppDesc {
        secure_version: word(4),
        version: c_string("version", &raw[16..48])?,
        project_name: c_string("project_name", &raw[48..80])?,
        compile_time: c_string("time", &raw[80..96])?,
        compile_date: c_string("date", &raw[96..112])?,
        idf_ver: c_string("idf_ver", &raw[112..144])?,
        app_elf_sha256,
    })
}

/// Reads a fixed-size C string field up to its first NUL (or its end); it must be valid UTF-8.
fn c_string(field: &'static str, raw: &[u8]) -> Result<String, EspImageError> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    std::str::from_utf8(&raw[..end]).map(str::to_owned).map_err(|_| EspImageError::BadString { field })
}

/// Parses a complete image held in memory; the same as one `update` followed by `finish`.
pub fn parse(bytes: &[u8]) -> Result<Option<EspImageInfo>, EspImageError> {
    let mut parser = EspImageParser::new();
    parser.update(bytes);
    parser.finish()
}

/// Produces valid ESP32 app images for tests.
pub mod builder {
    use super::{APP_DESC_LEN, APP_DESC_MAGIC, CHECKSUM_SEED, IMAGE_MAGIC, xor_checksum};
    use sha2::{Digest, Sha256};

    /// Builds a byte-exact, valid ESP32-family app image.
    ///
    /// The image has a first segment (in the chip's DROM range) holding the app descriptor plus
    /// 64 bytes of constant data, then, if `payload_len > 0`, a segment of deterministic
    /// pseudo-random bytes (in the IROM range), then a 64-byte segment in IRAM. The trailer has
    /// zero padding, the checksum byte and, unless disabled, the appended SHA-256. The defaults are
    /// chip ESP32, 1024 payload bytes, IDF `v5.3.1`, DIO flash mode, 40 MHz, 4 MB flash.
    #[derive(Debug, Clone)]
    pub struct EspImageBuilder {
        project_name: String,
        version: String,
        chip_id: u16,
        idf_ver: String,
        compile_time: String,
        compile_date: String,
        secure_version: u32,
        hash_appended: bool,
        payload_len: usize,
        seed: u64,
        spi: (u8, u8, u8),
        trailing: Vec<u8>,
    }

    impl EspImageBuilder {
        /// Starts an image with the given project name and version (each at most 31 bytes are kept).
        pub fn new(project_name: &str, version: &str) -> Self {
            Self {
                project_name: project_name.to_owned(),
                version: version.to_owned(),
                chip_id: 0x0000,
                idf_ver: "v5.3.1".to_owned(),
                compile_time: "12:00:00".to_owned(),
                compile_date: "Jan  1 2026".to_owned(),
                secure_version: 0,
                hash_appended: true,
                payload_len: 1024,
                seed: 1,
                spi: (2, 0, 2),
                trailing: Vec::new(),
            }
        }

        /// Sets the header chip id (for example `0x0009` for ESP32-S3).
        pub fn chip_id(mut self, chip_id: u16) -> Self {
            self.chip_id = chip_id;
            self
        }

        /// Sets the ESP-IDF version string of the app descriptor.
        pub fn idf_ver(mut self, idf_ver: &str) -> Self {
            self.idf_ver = idf_ver.to_owned();
            self
        }

        /// Sets the compile date and time strings of the app descriptor.
        pub fn compiled(mut self, date: &str, time: &str) -> Self {
            self.compile_date = date.to_owned();
            self.compile_time = time.to_owned();
            self
        }

        /// Sets the anti-rollback `secure_version` of the app descriptor.
        pub fn secure_version(mut self, secure_version: u32) -> Self {
            self.secure_version = secure_version;
            self
        }

        /// Chooses whether a SHA-256 is appended after the checksum (default `true`).
        pub fn hash_appended(mut self, hash_appended: bool) -> Self {
            self.hash_appended = hash_appended;
            self
        }

        /// Sets the size of the pseudo-random payload segment (rounded up to a multiple of 4;
        /// 0 omits the segment). Use it to make large images.
        pub fn payload_len(mut self, payload_len: usize) -> Self {
            self.payload_len = payload_len;
            self
        }

        /// Sets the seed of the pseudo-random bytes, so different seeds give different images.
        pub fn seed(mut self, seed: u64) -> Self {
            self.seed = seed;
            self
        }

        /// Sets the raw flash mode, speed code and size code of the header.
        pub fn flash(mut self, mode: u8, speed: u8, size: u8) -> Self {
            self.spi = (mode, speed & 0x0F, size & 0x0F);
            self
        }

        /// Sets bytes appended after the image (for example a signature block or 0xFF flash padding).
        pub fn trailing_bytes(mut self, bytes: &[u8]) -> Self {
            self.trailing = bytes.to_vec();
            self
        }

        /// Produces the image bytes.
        pub fn build(&self) -> Vec<u8> {
            let (drom, irom, iram) = memory_map(self.chip_id);
            let mut segments: Vec<(u32, Vec<u8>)> = Vec::new();

            // Segment 0: the app descriptor followed by some constant data, mapped from flash.
            let mut seg0 = self.app_desc().to_vec();
            seg0.extend(prng_bytes(self.seed ^ 0xD0, 64));
            segments.push((drom + 0x20, seg0));

            // Segment 1: the payload; its address keeps the flash-offset/address congruence modulo
            // 64 KiB that the MMU needs for mapped segments.
            if self.payload_len > 0 {
                let data_offset = 24 + 8 + segments[0].1.len() + 8;
                let addr = irom + 0x1_0000 + (data_offset as u32 & 0xFFFF);
                segments.push((addr, prng_bytes(self.seed, self.payload_len.next_multiple_of(4))));
            }

            // Last segment: a little code loaded into IRAM, where the entry point lies.
            segments.push((iram, prng_bytes(self.seed ^ 0x1A, 64)));

            let mut out = Vec::with_capacity(self.payload_len + 1024 + self.trailing.len());
            let (mode, speed, size) = self.spi;
            out.extend([IMAGE_MAGIC, segments.len() as u8, mode, (size << 4) | speed]);
            out.extend((iram + 4).to_le_bytes()); // entry_addr
            out.extend([0xEE, 0, 0, 0]); // wp_pin disabled, spi_pin_drv
            out.extend(self.chip_id.to_le_bytes());
            out.push(0); // min_chip_rev
            out.extend(0u16.to_le_bytes()); // min_chip_rev_full
            out.extend(99u16.to_le_bytes()); // max_chip_rev_full (v0.99)
            out.extend([0, 0, 0, 0]); // reserved
            out.push(u8::from(self.hash_appended));

            let mut checksum = CHECKSUM_SEED;
            for (addr, data) in &segments {
                out.extend(addr.to_le_bytes());
                out.extend((data.len() as u32).to_le_bytes());
                out.extend(data);
                checksum = xor_checksum(checksum, data);
            }
            out.resize((out.len() + 1).next_multiple_of(16) - 1, 0);
            out.push(checksum);
            if self.hash_appended {
                let digest = Sha256::digest(&out);
                out.extend(digest);
            }
            out.extend(&self.trailing);
            out
        }

        /// Lays out the 256-byte `esp_app_desc_t`.
        fn app_desc(&self) -> [u8; APP_DESC_LEN] {
            let mut d = [0u8; APP_DESC_LEN];
            d[0..4].copy_from_slice(&APP_DESC_MAGIC.to_le_bytes());
            d[4..8].copy_from_slice(&self.secure_version.to_le_bytes());
            put_str(&mut d[16..48], &self.version);
            put_str(&mut d[48..80], &self.project_name);
            put_str(&mut d[80..96], &self.compile_time);
            put_str(&mut d[96..112], &self.compile_date);
            put_str(&mut d[112..144], &self.idf_ver);
            let elf = Sha256::new()
                .chain_update(self.project_name.as_bytes())
                .chain_update([0])
                .chain_update(self.version.as_bytes())
                .chain_update(self.seed.to_le_bytes())
                .finalize();
            d[144..176].copy_from_slice(&elf);
            d
        }
    }

    /// Copies `s` into a NUL-terminated fixed field, cut at a character boundary if too long.
    fn put_str(field: &mut [u8], s: &str) {
        let mut end = s.len().min(field.len() - 1);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        field[..end].copy_from_slice(&s.as_bytes()[..end]);
    }

    /// Typical (DROM, IROM, IRAM) base addresses of a chip, so that esptool names the segments.
    fn memory_map(chip_id: u16) -> (u32, u32, u32) {
        match chip_id {
            0x0000 => (0x3F40_0000, 0x400D_0000, 0x4008_0000),
            0x0002 => (0x3F00_0000, 0x4008_0000, 0x4002_0000),
            0x0009 => (0x3C00_0000, 0x4200_0000, 0x4037_4000),
            0x0005 | 0x000C => (0x3C00_0000, 0x4200_0000, 0x4038_0000),
            0x000D | 0x0010 => (0x4280_0000, 0x4200_0000, 0x4080_0000),
            0x0012 => (0x4000_0000, 0x4000_0000, 0x4FF0_0000),
            _ => (0x4200_0000, 0x4200_0000, 0x4080_0000),
        }
    }

    /// Deterministic pseudo-random bytes (xorshift64*), so test images are reproducible.
    pub(super) fn prng_bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            out.extend(state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::builder::{EspImageBuilder, prng_bytes};
    use super::*;

    /// Found by the `esp_image` fuzz target (its property wrongly said "under 32 bytes"): a
    /// field that fills its 32 bytes has no NUL, as ESP-IDF's `strncpy` leaves a 32-character
    /// version. It is read whole, and nothing beyond it.
    #[test]
    fn a_text_field_that_fills_its_32_bytes_without_a_nul_is_read_whole() {
        let mut raw = [0u8; APP_DESC_LEN];
        raw[..4].copy_from_slice(&APP_DESC_MAGIC.to_le_bytes());
        raw[16..48].copy_from_slice(&[b'7'; 32]);
        raw[48..80].copy_from_slice(&[b'p'; 32]);
        raw[112..144].copy_from_slice(b"v5.2.1-0123456789abcdefghijklmno");
        let desc = parse_app_desc(&raw).unwrap();
        assert_eq!((desc.version.len(), desc.project_name.len(), desc.idf_ver.len()), (32, 32, 32));
        assert_eq!(desc.idf_ver, "v5.2.1-0123456789abcdefghijklmno");
    }

    #[test]
    fn chip_families_are_named_as_esp_web_tools_names_them() {
        assert_eq!(chip_family("esp32"), Some("ESP32"));
        assert_eq!(chip_family("esp32s3"), Some("ESP32-S3"));
        assert_eq!(chip_family("ESP32-C61"), Some("ESP32-C61"));
        assert_eq!(chip_family("esp8266"), Some("ESP8266"));
        for (_, name) in KNOWN_CHIPS {
            assert!(chip_family(name).is_some(), "{name}");
        }
        assert_eq!(chip_family("esp33"), None);
        assert_eq!(chip_family(""), None);
    }

    /// Feeds `image` to a fresh parser in chunks of `size` bytes.
    fn parse_in_chunks(image: &[u8], size: usize) -> Result<Option<EspImageInfo>, EspImageError> {
        let mut parser = EspImageParser::new();
        for chunk in image.chunks(size) {
            parser.update(chunk);
        }
        parser.finish()
    }

    /// File offsets of an image's parts, found by walking a well-formed image.
    struct Layout {
        /// Offset of each segment header.
        segments: Vec<usize>,
        /// Offset just after the last segment's data.
        data_end: usize,
        /// Offset of the checksum byte.
        checksum_at: usize,
    }

    fn layout(image: &[u8]) -> Layout {
        let mut pos = IMAGE_HEADER_LEN;
        let mut segments = Vec::new();
        for _ in 0..image[1] {
            segments.push(pos);
            let len = u32::from_le_bytes(image[pos + 4..pos + 8].try_into().unwrap()) as usize;
            pos += SEGMENT_HEADER_LEN + len;
        }
        Layout { segments, data_end: pos, checksum_at: (pos + 1).next_multiple_of(16) - 1 }
    }

    /// Recomputes the checksum and appended hash after a test edited bytes inside the segments,
    /// so that the edit under test is the only thing wrong with the image.
    fn reseal(image: &mut [u8]) {
        let l = layout(image);
        let mut checksum = CHECKSUM_SEED;
        for &at in &l.segments {
            let len = u32::from_le_bytes(image[at + 4..at + 8].try_into().unwrap()) as usize;
            checksum = xor_checksum(checksum, &image[at + 8..at + 8 + len]);
        }
        image[l.checksum_at] = checksum;
        if image[23] == 1 {
            let digest = Sha256::digest(&image[..=l.checksum_at]);
            image[l.checksum_at + 1..l.checksum_at + 33].copy_from_slice(&digest);
        }
    }

    /// The IDF's algorithm: XOR of little-endian 32-bit words seeded with 0xEF, folded to a byte.
    fn idf_word_checksum(data: &[u8]) -> u8 {
        let mut word = u32::from(CHECKSUM_SEED);
        for chunk in data.chunks_exact(4) {
            word ^= u32::from_le_bytes(chunk.try_into().unwrap());
        }
        (word ^ (word >> 8) ^ (word >> 16) ^ (word >> 24)) as u8
    }

    /// Small deterministic generator for the fuzz-like tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    #[test]
    fn valid_images_of_several_chips_parse_identically_for_every_chunk_size() {
        let chips =
            [(0x0000, "esp32"), (0x0002, "esp32s2"), (0x0005, "esp32c3"), (0x0009, "esp32s3"), (0x000D, "esp32c6"), (0x0017, "esp32c5")];
        for (i, (chip_id, name)) in chips.into_iter().enumerate() {
            let image =
                EspImageBuilder::new("thermostat", "1.4.2").chip_id(chip_id).hash_appended(i % 2 == 0).payload_len(1000 + 37 * i).build();
            let expected = parse(&image).unwrap().unwrap();
            assert_eq!(expected.chip, Some(name));
            assert_eq!(expected.chip_id, chip_id);
            assert_eq!(expected.project_name, "thermostat");
            assert_eq!(expected.version, "1.4.2");
            assert_eq!(expected.hash_appended, i % 2 == 0);
            assert_eq!(expected.image_len, image.len() as u64);
            assert_eq!(expected.trailing_bytes, 0);
            for size in (1..=64).chain([4096]) {
                assert_eq!(parse_in_chunks(&image, size), Ok(Some(expected.clone())), "chip {name}, chunk size {size}");
            }
        }
    }

    #[test]
    fn every_field_reports_what_the_builder_wrote() {
        let image = EspImageBuilder::new("weather-station", "v2.0.0-rc.1+build.7")
            .chip_id(0x0009)
            .idf_ver("v5.2.2-dirty")
            .compiled("Mar 14 2026", "09:26:53")
            .secure_version(3)
            .flash(3, 0xF, 3)
            .build();
        let info = parse(&image).unwrap().unwrap();
        let l = layout(&image);
        assert_eq!(info.segment_count, 3);
        assert_eq!((info.spi_mode, info.spi_speed, info.spi_size), (3, 0xF, 3));
        assert_eq!(info.spi_mode_name(), Some("DOUT"));
        assert_eq!(info.flash_size_bytes(), Some(8 * 1024 * 1024));
        assert_eq!(info.entry_addr, 0x4037_4004);
        assert_eq!((info.min_chip_rev_full, info.max_chip_rev_full), (0, 99));
        assert_eq!(info.idf_ver, "v5.2.2-dirty");
        assert_eq!((info.compile_date.as_str(), info.compile_time.as_str()), ("Mar 14 2026", "09:26:53"));
        assert_eq!(info.secure_version, 3);
        assert_eq!(info.app_elf_sha256[..], image[32 + 144..32 + 176]);
        assert_eq!(info.app_elf_sha256_hex(), hex::encode(&image[176..208]));
        assert_eq!(info.appended_sha256.unwrap()[..], Sha256::digest(&image[..=l.checksum_at])[..]);
        assert_eq!(info.appended_sha256_hex().unwrap().len(), 64);
        assert_eq!(info.image_len as usize, l.checksum_at + 33);
        assert_eq!(image.len() % 16, 0, "checksum byte ends a 16-byte block and the hash is 32 bytes");
    }

    #[test]
    fn image_without_appended_hash_ends_at_the_checksum_byte() {
        let image = EspImageBuilder::new("p", "1").hash_appended(false).build();
        let info = parse(&image).unwrap().unwrap();
        assert!(!info.hash_appended);
        assert_eq!(info.appended_sha256, None);
        assert_eq!(info.image_len as usize, layout(&image).checksum_at + 1);
        assert_eq!(info.image_len % 16, 0);
    }

    #[test]
    fn trailing_bytes_after_the_image_are_counted_and_accepted() {
        let plain = EspImageBuilder::new("p", "1").build();
        let padded = EspImageBuilder::new("p", "1").trailing_bytes(&[0xFF; 4096 + 5]).build();
        let info = parse_in_chunks(&padded, 7).unwrap().unwrap();
        assert_eq!(info.trailing_bytes, 4101);
        assert_eq!(info.image_len, plain.len() as u64);
    }

    #[test]
    fn every_possible_padding_length_is_handled() {
        // Segment data lengths are multiples of 4, so the padding is always 3, 7, 11 or 15 bytes.
        let mut seen = std::collections::BTreeSet::new();
        for payload in (0..64).step_by(4) {
            let image = EspImageBuilder::new("p", "1").payload_len(payload).hash_appended(false).build();
            let l = layout(&image);
            seen.insert(l.checksum_at - l.data_end);
            assert_eq!(parse_in_chunks(&image, 3).unwrap().unwrap().image_len as usize, l.checksum_at + 1);
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [3, 7, 11, 15]);
    }

    #[test]
    fn a_multi_megabyte_image_streams_in_large_and_odd_chunks() {
        let image = EspImageBuilder::new("big", "9.9.9").payload_len(3 * 1024 * 1024 + 3).build();
        let expected = parse_in_chunks(&image, 1 << 20).unwrap().unwrap();
        assert_eq!(parse_in_chunks(&image, 65_537), Ok(Some(expected.clone())));
        assert!(expected.image_len > 3 * 1024 * 1024);
    }

    #[test]
    fn parser_memory_is_fixed_and_small() {
        assert!(std::mem::size_of::<EspImageParser>() < 1024, "{}", std::mem::size_of::<EspImageParser>());
    }

    #[test]
    fn a_flipped_segment_data_byte_is_a_checksum_mismatch() {
        for hash in [false, true] {
            let mut image = EspImageBuilder::new("p", "1").hash_appended(hash).build();
            let l = layout(&image);
            let at = l.segments[1] + 8 + 10;
            image[at] ^= 0x5A;
            let computed = image[l.checksum_at] ^ 0x5A;
            let stored = image[l.checksum_at];
            let err = parse_in_chunks(&image, 5).unwrap_err();
            assert_eq!(err, EspImageError::Checksum { computed, stored });
            assert_eq!(err.code(), "esp_image_checksum");
            assert_eq!(err.to_string(), format!("ESP image checksum mismatch: computed 0x{computed:02x}, stored 0x{stored:02x}"));
        }
    }

    #[test]
    fn a_flipped_hash_byte_or_padding_byte_is_a_hash_mismatch() {
        let image = EspImageBuilder::new("p", "1").build();
        let l = layout(&image);
        for at in [l.checksum_at + 1, l.checksum_at + 32, l.data_end] {
            let mut bad = image.clone();
            bad[at] ^= 1;
            let err = parse_in_chunks(&bad, 9).unwrap_err();
            assert!(matches!(err, EspImageError::Hash { .. }), "{err:?}");
            assert_eq!(err.code(), "esp_image_hash");
            assert_eq!(err.to_string(), "appended SHA-256 does not match the image contents");
        }
    }

    #[test]
    fn truncation_reports_which_part_is_missing() {
        let image = EspImageBuilder::new("p", "1").build();
        let l = layout(&image);
        let [s0, s1, s2] = l.segments[..] else { panic!("three segments expected") };
        let seg_len = |at: usize| u32::from_le_bytes(image[at + 4..at + 8].try_into().unwrap());
        use EspImageError::*;
        let cases = [
            (24, TruncatedSegmentHeader { index: 0, available: 0 }),
            (28, TruncatedSegmentHeader { index: 0, available: 4 }),
            (100, TruncatedSegment { index: 0, declared: seg_len(s0), available: 68 }),
            (s1 + 3, TruncatedSegmentHeader { index: 1, available: 3 }),
            (s1 + 8 + 100, TruncatedSegment { index: 1, declared: seg_len(s1), available: 100 }),
            (s2 + 8, TruncatedSegment { index: 2, declared: seg_len(s2), available: 0 }),
            (l.data_end, TruncatedChecksum { offset: l.checksum_at as u64 }),
            (l.checksum_at, TruncatedChecksum { offset: l.checksum_at as u64 }),
            (l.checksum_at + 1, TruncatedHash { available: 0 }),
            (l.checksum_at + 29, TruncatedHash { available: 28 }),
        ];
        for (len, expected) in cases {
            for size in [1, 7, 4096] {
                let err = parse_in_chunks(&image[..len], size).unwrap_err();
                assert_eq!(err, expected, "cut at {len}, chunk size {size}");
                assert_eq!(err.code(), "esp_image_truncated");
            }
        }
        let message = parse(&image[..s1 + 8 + 100]).unwrap_err().to_string();
        assert_eq!(message, "ESP image is truncated: segment 1 declares 1024 bytes but only 100 remain");
    }

    #[test]
    fn a_file_shorter_than_the_header_is_not_claimed_as_an_esp32_image() {
        let image = EspImageBuilder::new("p", "1").build();
        for len in [0, 1, 12, 23] {
            assert_eq!(parse(&image[..len]), Ok(None));
        }
    }

    #[test]
    fn segment_counts_of_zero_and_seventeen_are_rejected() {
        let mut image = EspImageBuilder::new("p", "1").build();
        image[1] = 0;
        assert_eq!(parse(&image), Err(EspImageError::NoSegments));
        image[1] = 17;
        let err = parse(&image).unwrap_err();
        assert_eq!(err, EspImageError::TooManySegments { count: 17 });
        assert_eq!(err.code(), "esp_image_too_many_segments");
        assert_eq!(err.to_string(), "ESP image header declares 17 segments, more than the maximum of 16");
    }

    #[test]
    fn a_bad_app_descriptor_magic_is_rejected() {
        let mut image = EspImageBuilder::new("p", "1").build();
        image[32] = 0x33;
        reseal(&mut image);
        let err = parse_in_chunks(&image, 2).unwrap_err();
        assert_eq!(err, EspImageError::NoAppDesc { found: 0xABCD_5433 });
        assert_eq!(err.code(), "esp_image_no_app_desc");
        assert!(err.to_string().starts_with("app descriptor magic 0xABCD5432 not found at offset 32"), "{err}");
    }

    #[test]
    fn a_first_segment_too_short_for_the_app_descriptor_is_rejected() {
        let mut image = EspImageBuilder::new("p", "1").build();
        image[28..32].copy_from_slice(&128u32.to_le_bytes());
        let err = parse(&image).unwrap_err();
        assert_eq!(err, EspImageError::AppDescTooShort { len: 128 });
        assert_eq!(err.code(), "esp_image_no_app_desc");
    }

    #[test]
    fn an_oversized_declared_segment_is_reported_as_truncated() {
        let mut image = EspImageBuilder::new("p", "1").build();
        let l = layout(&image);
        let s1 = l.segments[1];
        image[s1 + 4..s1 + 8].copy_from_slice(&0x7FFF_FFF0u32.to_le_bytes());
        let available = (image.len() - s1 - 8) as u32;
        let err = parse_in_chunks(&image, 33).unwrap_err();
        assert_eq!(err, EspImageError::TruncatedSegment { index: 1, declared: 0x7FFF_FFF0, available });
        assert_eq!(err.to_string(), format!("ESP image is truncated: segment 1 declares 2147483632 bytes but only {available} remain"));
    }

    #[test]
    fn a_segment_length_that_is_not_a_multiple_of_four_is_rejected() {
        let mut image = EspImageBuilder::new("p", "1").build();
        let s2 = layout(&image).segments[2];
        image[s2 + 4..s2 + 8].copy_from_slice(&63u32.to_le_bytes());
        let err = parse(&image).unwrap_err();
        assert_eq!(err, EspImageError::UnalignedSegment { index: 2, len: 63 });
        assert_eq!(err.code(), "esp_image_unaligned_segment");
    }

    #[test]
    fn invalid_utf8_in_a_descriptor_string_is_rejected_not_replaced() {
        for (offset, field) in [(16, "version"), (48, "project_name"), (112, "idf_ver"), (80, "time")] {
            let mut image = EspImageBuilder::new("p", "1").build();
            image[32 + offset + 1] = 0xC3; // A lead byte followed by NUL is not valid UTF-8.
            reseal(&mut image);
            let err = parse_in_chunks(&image, 11).unwrap_err();
            assert_eq!(err, EspImageError::BadString { field });
            assert_eq!(err.code(), "esp_image_bad_string");
            assert_eq!(err.to_string(), format!("app descriptor field `{field}` is not valid UTF-8"));
        }
    }

    #[test]
    fn a_descriptor_string_without_nul_uses_the_whole_field() {
        let mut image = EspImageBuilder::new("p", "1").build();
        image[48..80].fill(b'v');
        reseal(&mut image);
        assert_eq!(parse(&image).unwrap().unwrap().version, "v".repeat(32));
        let long = EspImageBuilder::new(&"é".repeat(20), "1").build();
        assert_eq!(parse(&long).unwrap().unwrap().project_name, "é".repeat(15), "builder cuts at a char boundary");
    }

    #[test]
    fn input_beyond_sixteen_mebibytes_is_rejected_while_streaming() {
        // A valid image followed by padding up to exactly the limit is fine; one more byte is not.
        let image = EspImageBuilder::new("p", "1").build();
        let filler = vec![0xFF; 1 << 20];
        let mut parser = EspImageParser::new();
        parser.update(&image);
        let mut fed = image.len() as u64;
        while fed < MAX_IMAGE_LEN {
            let n = filler.len().min((MAX_IMAGE_LEN - fed) as usize);
            parser.update(&filler[..n]);
            fed += n as u64;
        }
        let at_limit = parser.clone().finish().unwrap().unwrap();
        assert_eq!(at_limit.trailing_bytes, MAX_IMAGE_LEN - image.len() as u64);
        parser.update(&[0]);
        assert_eq!(parser.finish(), Err(EspImageError::TooLarge));

        // A segment that declares 17 MiB fails as soon as the input passes 16 MiB.
        let mut huge = image.clone();
        let s2 = layout(&huge).segments[2];
        huge[s2 + 4..s2 + 8].copy_from_slice(&(17u32 << 20).to_le_bytes());
        let mut parser = EspImageParser::new();
        parser.update(&huge[..s2 + 8]);
        for _ in 0..17 {
            parser.update(&filler);
        }
        let err = parser.finish().unwrap_err();
        assert_eq!((err.code(), err.to_string().as_str()), ("esp_image_too_large", "ESP image is larger than the 16 MiB limit"));
    }

    #[test]
    fn data_that_is_not_an_esp32_app_image_gives_none() {
        assert_eq!(parse(&[]), Ok(None));
        assert_eq!(parse(b"#!/bin/sh\necho not firmware\n"), Ok(None));
        let mut rng = Rng(42);
        for i in 0..200 {
            let mut data = prng_bytes(rng.next(), 24 + rng.below(3000));
            if i % 2 == 0 {
                data[0] = IMAGE_MAGIC;
            }
            assert_eq!(parse_in_chunks(&data, 1 + rng.below(100)), Ok(None), "random input {i}");
        }
        // A valid image with an unknown chip id, non-zero reserved bytes or hash flag 2 makes no claim.
        let image = EspImageBuilder::new("p", "1").build();
        for (at, value) in [(12, 0xFF), (13, 0xFF), (19, 1), (22, 0x80), (23, 2)] {
            let mut other = image.clone();
            other[at] = value;
            assert_eq!(parse(&other), Ok(None), "byte {at} = {value:#x}");
            assert!(!looks_like_esp32_app(&other));
        }
        assert!(looks_like_esp32_app(&image));
        assert!(!looks_like_esp32_app(&image[..23]));
    }

    #[test]
    fn an_esp8266_image_starting_with_e9_gives_none() {
        // ESP8266 layout: 8-byte header, then segments {load_addr, len, data}; no extended header.
        let mut image = vec![IMAGE_MAGIC, 2, 0, 0x20];
        image.extend(0x4010_0004u32.to_le_bytes());
        for (addr, len) in [(0x4010_0000u32, 0x06C8u32), (0x3FFE_8000, 0x0318)] {
            image.extend(addr.to_le_bytes());
            image.extend(len.to_le_bytes());
            image.extend(prng_bytes(u64::from(addr), len as usize));
        }
        image.resize((image.len() + 1).next_multiple_of(16), 0);
        assert_eq!(parse(&image), Ok(None));
        assert_eq!(parse_in_chunks(&image, 1), Ok(None));
        assert!(!looks_like_esp32_app(&image));
    }

    #[test]
    fn xor_of_bytes_equals_the_idf_word_xor_and_fold() {
        let mut rng = Rng(7);
        for len in (0..400).step_by(4).chain([4096, 65_536]) {
            let data = prng_bytes(rng.next(), len);
            let bytewise = data.iter().fold(CHECKSUM_SEED, |a, b| a ^ b);
            assert_eq!(idf_word_checksum(&data), bytewise, "len {len}");
            assert_eq!(xor_checksum(CHECKSUM_SEED, &data), bytewise, "len {len}");
            // Streaming in uneven pieces gives the same value.
            let split = rng.below(len + 1);
            assert_eq!(xor_checksum(xor_checksum(CHECKSUM_SEED, &data[..split]), &data[split..]), bytewise);
        }
    }

    #[test]
    fn every_single_byte_flip_inside_a_hashed_image_is_detected() {
        let image = EspImageBuilder::new("p", "1").payload_len(64).build();
        for at in 0..image.len() {
            for mask in [0x01, 0x80, 0xFF] {
                let mut bad = image.clone();
                bad[at] ^= mask;
                let result = parse(&bad);
                if at == 23 && mask == 0x01 {
                    // Clearing hash_appended turns the hash into 32 trailing bytes; the bootloader
                    // would accept that image too, so it is reported as valid without a hash.
                    let info = result.unwrap().unwrap();
                    assert_eq!((info.hash_appended, info.trailing_bytes), (false, 32));
                } else {
                    assert!(!matches!(result, Ok(Some(_))), "flip {mask:#x} at {at} went unnoticed");
                }
            }
        }
    }

    #[test]
    fn random_mutations_never_panic_and_chunking_never_changes_the_result() {
        let bases = [
            EspImageBuilder::new("p", "1").build(),
            EspImageBuilder::new("q", "2").chip_id(0x0005).hash_appended(false).payload_len(300).build(),
            EspImageBuilder::new("r", "3").chip_id(0x0009).payload_len(0).trailing_bytes(&[0xFF; 40]).build(),
        ];
        let mut rng = Rng(0x5EED);
        let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
        for round in 0..2000 {
            let mut data = bases[round % bases.len()].clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(data.len());
                match rng.below(6) {
                    0 => data[at] ^= 1 << rng.below(8),
                    1 => data[at] = rng.next() as u8,
                    2 => data.truncate(at),
                    3 => data.splice(at..at, prng_bytes(rng.next(), rng.below(40))).for_each(drop),
                    4 => data.drain(at..(at + rng.below(40)).min(data.len())).for_each(drop),
                    _ => {
                        // Overwrite a 32-bit field with an extreme value (a length, a count, a magic).
                        let value = [0u32, 3, 0xFFFF_FFFC, 0xFFFF_FFFF, 1 << 24][rng.below(5)];
                        let end = (at + 4).min(data.len());
                        data[at..end].copy_from_slice(&value.to_le_bytes()[..end - at]);
                    }
                }
                if data.is_empty() {
                    break;
                }
            }
            let whole = parse(&data);
            let mut parser = EspImageParser::new();
            let mut rest = &data[..];
            while !rest.is_empty() {
                let n = (1 + rng.below(300)).min(rest.len());
                parser.update(&rest[..n]);
                parser.update(&[]);
                rest = &rest[n..];
            }
            assert_eq!(parser.finish(), whole, "round {round}");
            let outcome = match &whole {
                Ok(Some(_)) => "valid",
                Ok(None) => "not_esp",
                Err(e) => e.code(),
            };
            *outcomes.entry(outcome).or_default() += 1;
        }
        // The mutations reach every kind of outcome, not just one early failure.
        for kind in ["valid", "not_esp", "esp_image_truncated", "esp_image_checksum", "esp_image_hash"] {
            assert!(outcomes.contains_key(kind), "no {kind} outcome in {outcomes:?}");
        }
    }

    #[test]
    fn error_codes_are_stable() {
        use EspImageError::*;
        let codes = [
            (NoSegments, "esp_image_no_segments"),
            (TruncatedChecksum { offset: 1 }, "esp_image_truncated"),
            (TruncatedHash { available: 1 }, "esp_image_truncated"),
            (TooLarge, "esp_image_too_large"),
            (Hash { computed: [0; 32], stored: [1; 32] }, "esp_image_hash"),
        ];
        for (error, code) in codes {
            assert_eq!(error.code(), code);
            assert!(!error.to_string().is_empty());
        }
    }

    #[test]
    fn known_chip_ids_have_names_and_the_builder_is_deterministic() {
        for (id, name) in KNOWN_CHIPS {
            assert_eq!(chip_name(id), Some(name));
            let image = EspImageBuilder::new("p", "1").chip_id(id).build();
            assert_eq!(parse(&image).unwrap().unwrap().chip, Some(name));
        }
        assert_eq!(chip_name(0xFFFF), None);
        let a = EspImageBuilder::new("p", "1").seed(5);
        assert_eq!(a.build(), a.clone().build());
        assert_ne!(a.build(), a.seed(6).build());
    }
}

/// The properties of `crate::fuzzing` (shared with `fuzz/`), for a bounded number of cases.
#[cfg(test)]
mod properties {
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::sample::Index;

    use super::KNOWN_CHIPS;
    use super::builder::EspImageBuilder;
    use crate::fuzzing;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn a_built_image_reads_back_whatever_its_settings_and_chunks(
            project in "[a-zA-Z0-9_ -]{0,40}",
            version in "[0-9a-z.+-]{0,40}",
            chip in 0..KNOWN_CHIPS.len(),
            payload_len in 0usize..2048,
            seed in any::<u64>(),
            hash in any::<bool>(),
            flash in (0u8..6, any::<u8>(), any::<u8>()),
            trailing in vec(any::<u8>(), 0..64),
        ) {
            fuzzing::esp_image_built(&project, &version, KNOWN_CHIPS[chip].0, payload_len, seed, hash, flash, &trailing);
        }

        #[test]
        fn a_damaged_image_gets_the_same_answer_whole_or_in_chunks(
            seed in any::<u32>(),
            payload_len in 0usize..512,
            flips in vec((any::<Index>(), 1u8..=255), 0..4),
            cut in proptest::option::of(any::<Index>()),
        ) {
            let mut image = EspImageBuilder::new("blink", "1.0.1").payload_len(payload_len).build();
            for (at, bits) in flips {
                let i = at.index(image.len());
                image[i] ^= bits;
            }
            if let Some(cut) = cut {
                image.truncate(cut.index(image.len() + 1));
            }
            let mut data = seed.to_le_bytes().to_vec();
            data.extend(image);
            fuzzing::esp_image(&data);
        }

        #[test]
        fn any_bytes_get_the_same_answer_whole_or_in_chunks(data in vec(any::<u8>(), 0..600)) {
            fuzzing::esp_image(&data);
        }
    }
}

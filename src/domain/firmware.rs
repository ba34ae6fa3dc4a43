//! Firmware artifacts: what an upload must carry, and how metadata given by the uploader
//! is merged with what the ESP image itself says ("automatic versioning").

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use super::error::{Error, Result};
use super::esp_image::EspImageInfo;
use super::ids::ArtifactId;
use super::version::Version;

/// A product (application) name: 1-64 characters of letters, digits, `.`, `_`, `-`, not
/// starting with `.` (names like `..` and `.staging` are reserved: product names become
/// parts of paths and keys).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProductName(String);

impl ProductName {
    pub fn parse(input: &str) -> Result<ProductName> {
        let text = input.trim();
        let ok = !text.is_empty()
            && text.len() <= 64
            && !text.starts_with('.')
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(ProductName(text.to_string()))
        } else {
            Err(Error::invalid(
                "invalid_product",
                format!("product `{}` must be 1-64 characters of letters, digits, `.`, `_` or `-`, not starting with `.`", clip(input)),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A board or chip identifier, compared case-insensitively and stored in lower case.
/// Spaces are allowed because boards in the field report names like "FireBeetle 2 ESP32-C6".
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HardwareId(String);

impl HardwareId {
    pub fn parse(input: &str) -> Result<HardwareId> {
        let text = input.trim();
        let ok = !text.is_empty()
            && text.len() <= 64
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b' ' | b':' | b'/' | b'+' | b'(' | b')'));
        if ok {
            Ok(HardwareId(text.to_ascii_lowercase()))
        } else {
            Err(Error::invalid(
                "invalid_hardware",
                format!("hardware `{}` must be 1-64 characters of letters, digits, spaces or `._-:/+()`", clip(input)),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A release channel such as `stable` or `beta`: 1-32 lower-case letters, digits or `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channel(String);

impl Channel {
    pub const DEFAULT: &'static str = "stable";

    /// The default channel, `stable`.
    pub fn stable() -> Channel {
        Channel(Channel::DEFAULT.into())
    }

    pub fn parse(input: &str) -> Result<Channel> {
        let text = input.trim().to_ascii_lowercase();
        let ok = !text.is_empty() && text.len() <= 32 && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if ok {
            Ok(Channel(text))
        } else {
            Err(Error::invalid("invalid_channel", format!("channel `{}` must be 1-32 letters, digits or `-`", clip(input))))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The traits every parsed name shares: it reads and prints as its (normalised) text,
/// serialises as that text, and deserialises only through `parse`.
macro_rules! parsed_text {
    ($($name:ident),*) => {$(
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(text: &str) -> Result<Self> {
                $name::parse(text)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;

            fn try_from(text: String) -> Result<Self> {
                $name::parse(&text)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                $name::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    )*};
}

parsed_text!(ProductName, HardwareId, Channel);

pub const MAX_NOTES_LEN: usize = 16 * 1024;

/// Metadata as an uploader sent it; every field optional until merged with the image.
#[derive(Debug, Clone, Default)]
pub struct UploadMeta {
    pub product: Option<String>,
    pub version: Option<String>,
    /// One entry per identifier; entries may also be comma-separated lists.
    pub hardware: Vec<String>,
    pub notes: Option<String>,
    pub channel: Option<String>,
}

/// Validated metadata of a new artifact.
#[derive(Debug, Clone)]
pub struct ArtifactSpec {
    pub product: ProductName,
    pub version: Version,
    /// The version as the uploader (or the image) wrote it, e.g. `1.02`.
    pub version_label: String,
    pub hardware: Vec<HardwareId>,
    pub notes: String,
    pub channel: Channel,
}

/// Checks the parts of the metadata that do not depend on the file, so a bad request is
/// refused before any byte is stored.
pub fn precheck(meta: &UploadMeta) -> Result<()> {
    if let Some(product) = &meta.product {
        ProductName::parse(product)?;
    }
    if let Some(version) = &meta.version {
        Version::parse(version)?;
    }
    parse_hardware_list(&meta.hardware)?;
    if let Some(channel) = &meta.channel {
        Channel::parse(channel)?;
    }
    if meta.notes.as_ref().is_some_and(|n| n.len() > MAX_NOTES_LEN) {
        return Err(Error::invalid("invalid_notes", format!("notes must be at most {MAX_NOTES_LEN} bytes")));
    }
    Ok(())
}

/// Merges the uploader's metadata with the facts read from an ESP image. Missing
/// product, version and hardware are taken from the image; an embedded version that
/// contradicts the given one is refused.
pub fn resolve(meta: &UploadMeta, image: Option<&EspImageInfo>) -> Result<ArtifactSpec> {
    precheck(meta)?;
    let product = match (&meta.product, image) {
        (Some(product), _) => ProductName::parse(product)?,
        (None, Some(image)) if !image.project_name.is_empty() => ProductName::parse(&image.project_name).map_err(|_| {
            Error::invalid(
                "missing_product",
                format!(
                    "no product given, and the image's project name `{}` is not a valid product name; pass `product`",
                    clip(&image.project_name)
                ),
            )
        })?,
        (None, _) => {
            return Err(Error::invalid("missing_product", "`product` is required (the file is not an ESP32 app image that names it)"));
        }
    };

    let embedded_version = image.map(|i| i.version.as_str()).filter(|v| !v.is_empty());
    let (version, version_label) = match (&meta.version, embedded_version) {
        (Some(given), embedded) => {
            let version = Version::parse(given)?;
            if let Some(embedded) = embedded {
                // An embedded version that is not a version at all (e.g. a git hash) cannot
                // contradict anything; one that is a version must agree.
                if let Ok(embedded_version) = Version::parse(embedded)
                    && embedded_version.canonical() != version.canonical()
                {
                    return Err(Error::unprocessable(
                        "version_mismatch",
                        format!("the given version `{}` contradicts the version `{embedded}` embedded in the ESP image", given.trim()),
                    ));
                }
            }
            (version, given.trim().to_string())
        }
        (None, Some(embedded)) => {
            let version = Version::parse(embedded).map_err(|e| {
                Error::invalid(
                    "invalid_version",
                    format!("no version given, and the version embedded in the ESP image is not usable ({e}); pass `version`"),
                )
            })?;
            (version, embedded.trim().to_string())
        }
        (None, None) => {
            return Err(Error::invalid("missing_version", "`version` is required (the file is not an ESP32 app image that names it)"));
        }
    };

    let mut hardware = parse_hardware_list(&meta.hardware)?;
    if hardware.is_empty() {
        match image.and_then(|i| i.chip) {
            Some(chip) => hardware.push(HardwareId::parse(chip)?),
            None => {
                return Err(Error::invalid(
                    "missing_hardware",
                    "`hardware` is required (one or more board/chip identifiers; it is read from ESP32 app images)",
                ));
            }
        }
    }

    let channel = match &meta.channel {
        Some(channel) => Channel::parse(channel)?,
        None => Channel::stable(),
    };
    Ok(ArtifactSpec { product, version, version_label, hardware, notes: meta.notes.clone().unwrap_or_default(), channel })
}

/// Splits, validates, lower-cases and de-duplicates hardware identifiers.
pub fn parse_hardware_list(entries: &[String]) -> Result<Vec<HardwareId>> {
    let mut list = Vec::new();
    for entry in entries {
        for part in entry.split(',') {
            if part.trim().is_empty() {
                continue;
            }
            let id = HardwareId::parse(part)?;
            if !list.contains(&id) {
                list.push(id);
            }
        }
    }
    if list.len() > 32 {
        return Err(Error::invalid("invalid_hardware", "at most 32 hardware identifiers per artifact"));
    }
    list.sort();
    Ok(list)
}

/// What was read from an uploaded ESP32 app image, kept with the artifact.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFacts {
    pub format: String,
    pub chip_id: u16,
    pub chip: Option<String>,
    pub project_name: String,
    pub version: String,
    pub idf_ver: String,
    pub compile_time: String,
    pub compile_date: String,
    pub secure_version: u32,
    pub segment_count: u8,
    pub hash_appended: bool,
    pub appended_sha256: Option<String>,
    pub app_elf_sha256: String,
    pub min_chip_rev_full: u16,
    pub max_chip_rev_full: u16,
    pub flash_size_bytes: Option<u64>,
}

impl ImageFacts {
    pub fn from_esp(info: &EspImageInfo) -> ImageFacts {
        ImageFacts {
            format: "esp32-app".into(),
            chip_id: info.chip_id,
            chip: info.chip.map(str::to_string),
            project_name: info.project_name.clone(),
            version: info.version.clone(),
            idf_ver: info.idf_ver.clone(),
            compile_time: info.compile_time.clone(),
            compile_date: info.compile_date.clone(),
            secure_version: info.secure_version,
            segment_count: info.segment_count,
            hash_appended: info.hash_appended,
            appended_sha256: info.appended_sha256.map(hex::encode),
            app_elf_sha256: hex::encode(info.app_elf_sha256),
            min_chip_rev_full: info.min_chip_rev_full,
            max_chip_rev_full: info.max_chip_rev_full,
            flash_size_bytes: info.flash_size_bytes(),
        }
    }
}

/// A stored firmware build.
#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    pub id: ArtifactId,
    pub product: ProductName,
    pub version: String,
    /// The version, parsed; it prints as its canonical text (the stored `version_key`).
    pub version_key: Version,
    pub hardware: Vec<HardwareId>,
    pub channel: Channel,
    pub notes: String,
    pub size: u64,
    pub sha256: String,
    pub sha1: String,
    pub md5: String,
    pub blob_key: String,
    pub image: Option<ImageFacts>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Digests of a stored file, lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub size: u64,
    pub sha256: String,
    pub sha1: String,
    pub md5: String,
}

/// How an upload relates to what is stored: the same product, version and an overlapping
/// hardware set is the same artifact slot.
pub enum Existing<'a> {
    /// Nothing occupies the slot.
    None,
    /// The same bytes are already stored: the upload is a repeat.
    Same(&'a Artifact),
    /// Different bytes occupy the slot.
    Conflict(&'a Artifact),
}

pub fn classify_existing<'a>(candidates: &'a [Artifact], spec: &ArtifactSpec, digests: &Digests) -> Existing<'a> {
    let overlapping = candidates.iter().filter(|a| {
        a.product == spec.product.as_str()
            && a.version_key.is_identical(&spec.version)
            && a.hardware.iter().any(|h| spec.hardware.contains(h))
    });
    let mut first = None;
    for artifact in overlapping {
        if artifact.sha256 != digests.sha256 {
            return Existing::Conflict(artifact);
        }
        first.get_or_insert(artifact);
    }
    match first {
        Some(artifact) => Existing::Same(artifact),
        None => Existing::None,
    }
}

fn clip(text: &str) -> String {
    text.chars().take(80).collect()
}

// ---- build queries and changes (what adapters and services hand to storage) ----

/// Which builds a listing returns, in what order, which page.
#[derive(Debug, Clone, Default)]
pub struct ArtifactFilter {
    pub product: Option<String>,
    pub hardware: Option<HardwareId>,
    /// Canonical version.
    pub version_key: Option<String>,
    pub channel: Option<String>,
    pub sort: ArtifactSort,
    pub limit: u32,
    pub offset: u64,
}

/// The order of a build listing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ArtifactSort {
    #[default]
    NewestFirst,
    OldestFirst,
    Product,
}

/// An operator's change to a build (`None`: keep).
#[derive(Debug, Clone, Default)]
pub struct ArtifactPatch {
    pub notes: Option<String>,
    pub channel: Option<Channel>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(product: Option<&str>, version: Option<&str>, hardware: &[&str]) -> UploadMeta {
        UploadMeta {
            product: product.map(Into::into),
            version: version.map(Into::into),
            hardware: hardware.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn names_print_as_their_normalised_text_and_parse_back() {
        let product: ProductName = " lamp.v2 ".parse().unwrap();
        assert_eq!(product.to_string(), "lamp.v2");
        let printed = format!("{product}");
        assert_eq!(ProductName::parse(&printed).unwrap(), product);
        assert_eq!(product, "lamp.v2");
        let hardware = HardwareId::parse("FireBeetle 2 ESP32-C6").unwrap();
        assert_eq!(hardware.as_ref() as &str, "firebeetle 2 esp32-c6");
        assert_eq!(String::from(hardware.clone()), "firebeetle 2 esp32-c6");
        assert_eq!(HardwareId::try_from(hardware.to_string()).unwrap(), hardware);
        assert_eq!(Channel::parse("Beta").unwrap().to_string(), "beta");
    }

    #[test]
    fn bad_text_is_refused_with_the_code_of_its_type() {
        assert_eq!("..".parse::<ProductName>().unwrap_err().code(), "invalid_product");
        assert_eq!(HardwareId::try_from("esp32;rm".to_string()).unwrap_err().code(), "invalid_hardware");
        assert_eq!("a_b".parse::<Channel>().unwrap_err().code(), "invalid_channel");
    }

    #[test]
    fn names_serialise_as_bare_text_and_deserialise_only_when_valid() {
        let product = ProductName::parse("lamp").unwrap();
        assert_eq!(serde_json::to_string(&product).unwrap(), "\"lamp\"");
        assert_eq!(serde_json::from_str::<ProductName>("\"lamp\"").unwrap(), product);
        assert!(serde_json::from_str::<ProductName>("\".hidden\"").is_err());
        let hardware: Vec<HardwareId> = serde_json::from_str(r#"["ESP32","esp32-s3"]"#).unwrap();
        assert_eq!(serde_json::to_string(&hardware).unwrap(), r#"["esp32","esp32-s3"]"#);
        assert!(serde_json::from_str::<HardwareId>("\"\"").is_err());
    }

    #[test]
    fn hardware_lists_are_split_lowercased_and_deduplicated() {
        let list = parse_hardware_list(&["ESP32-S3, esp32".into(), "esp32s3".into(), "esp32".into()]).unwrap();
        let names: Vec<_> = list.iter().map(HardwareId::as_str).collect();
        assert_eq!(names, ["esp32", "esp32-s3", "esp32s3"]);
    }

    #[test]
    fn metadata_without_an_image_must_be_complete() {
        assert_eq!(resolve(&meta(None, Some("1.0.0"), &["esp32"]), None).unwrap_err().code(), "missing_product");
        assert_eq!(resolve(&meta(Some("app"), None, &["esp32"]), None).unwrap_err().code(), "missing_version");
        assert_eq!(resolve(&meta(Some("app"), Some("1.0.0"), &[]), None).unwrap_err().code(), "missing_hardware");
        let spec = resolve(&meta(Some("app"), Some("v1.2"), &["esp32"]), None).unwrap();
        assert_eq!((spec.version.canonical().as_str(), spec.version_label.as_str()), ("1.2.0", "v1.2"));
        assert_eq!(spec.channel.as_str(), "stable");
    }

    #[test]
    fn bad_names_are_refused_with_their_own_codes() {
        assert_eq!(ProductName::parse("my app").unwrap_err().code(), "invalid_product");
        for reserved in ["..", ".", ".staging", ".hidden"] {
            assert_eq!(ProductName::parse(reserved).unwrap_err().code(), "invalid_product", "{reserved}");
        }
        assert!(ProductName::parse("lamp.v2").is_ok() && ProductName::parse("lamp..x").is_ok());
        assert_eq!(HardwareId::parse("esp32;rm").unwrap_err().code(), "invalid_hardware");
        assert_eq!(Channel::parse("be ta").unwrap_err().code(), "invalid_channel");
        assert_eq!(precheck(&meta(None, Some("one"), &[])).unwrap_err().code(), "invalid_version");
    }
}

//! Use cases of the compatibility protocols (seed servers, Arduino `HTTPUpdate`, esp32FOTA).
//!
//! These protocols identify a device by its MAC at most and often omit its hardware or
//! version. The functions here fill in those facts (from the registry, from the digests of
//! the running build, from the product's builds) and then call the same `devices::checkin`
//! and `update::decide` as the native protocol: there is no second update logic.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use futures::StreamExt;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::{Pkcs1v15Sign, RsaPrivateKey};
use serde_json::{Value, json};
use sha2::Sha256;

use super::Core;
use super::devices::{self, CheckinAnswer, CheckinReport, NewDeviceRequest};
use super::firmware::{self as firmware_service, BodyError};
use super::fleet::ActiveDevice;
use super::rollouts;
use crate::domain::compat::{self, CompatFile};
use crate::domain::device::{Device, DevicePatch};
use crate::domain::firmware::{Artifact, Channel, HardwareId, ProductName, UploadMeta};
use crate::domain::mac::Mac;
use crate::domain::update::{self, Decision, DeviceFacts, Held, Releases};
use crate::domain::version::Version;
use crate::domain::{ArtifactId, Error, Result};
use crate::storage::CompatFileRemoval;

/// The product of protocols that name none: the configured one, else the only product the
/// server knows (by policy or by build), else none.
pub async fn default_product(core: &Core, configured: Option<&str>) -> Result<Option<String>> {
    if let Some(product) = configured {
        return Ok(Some(product.to_string()));
    }
    let names = devices::product_names(core).await?;
    Ok(if names.len() == 1 { names.first().cloned() } else { None })
}

/// What a device that identifies itself by MAC said in a request.
pub struct MacCheckin {
    pub mac: Mac,
    /// The product for a device that has none yet (and for registering an unknown one).
    pub product: Option<String>,
    /// Register an unknown device when its product's provisioning mode is `open`; when
    /// false, an unknown device is refused (403) whatever the mode.
    pub register: bool,
    /// The running version as reported; ignored when it is not a version.
    pub version: Option<String>,
    /// `x-ESP32-sketch-sha256` (the running image's appended SHA-256).
    pub sketch_sha256: Option<String>,
    /// `x-ESP32-sketch-md5` / `x-ESP8266-sketch-md5` (MD5 of the running image).
    pub sketch_md5: Option<String>,
    pub attributes: Option<Value>,
}

pub struct MacCheckinAnswer {
    pub device: Arc<Device>,
    pub answer: CheckinAnswer,
    /// The version the device runs, as reported or recognised from its digests.
    pub version: Option<String>,
}

/// Identifies a device by MAC (registering it if allowed), completes what it did not say
/// about itself, and runs the check-in (presence, reported facts, the update decision,
/// the offer in its history).
pub async fn checkin_by_mac(core: &Core, request: MacCheckin, ip: Option<IpAddr>) -> Result<MacCheckinAnswer> {
    let version = request.version.filter(|v| Version::parse(v).is_ok());
    let device = if request.register {
        let Some(product) = &request.product else {
            return Err(Error::invalid(
                "missing_product",
                "this request names no product and no default product is known; set UPDRAFT_COMPAT_DEFAULT_PRODUCT",
            ));
        };
        match devices::device_by_mac(core, &request.mac).await? {
            Some(device) => device,
            None => Arc::new(devices::identify_by_mac(core, &request.mac, product, None, version.as_deref()).await?),
        }
    } else {
        devices::device_by_mac(core, &request.mac).await?.ok_or_else(|| Error::Forbidden(format!("{} is not registered", request.mac)))?
    };
    let product = device.product.as_ref().map(ToString::to_string).or(request.product);
    let builds = match &product {
        Some(product) => devices::builds_of(core, product).await?,
        None => Arc::new(Vec::new()),
    };
    let running = compat::build_by_digest(&builds, request.sketch_sha256.as_deref(), request.sketch_md5.as_deref());
    let version = version.or_else(|| running.map(|build| build.version.clone()));
    let hardware = match (&device.hardware, &product) {
        (None, Some(product)) => running
            .filter(|build| build.hardware.len() == 1)
            .map(|build| build.hardware[0].to_string())
            .or_else(|| compat::sole_hardware(&builds, product).map(String::from)),
        _ => None,
    };
    // Attributes that would change nothing are not reported: the check-in would read the
    // stored ones again only to find that out (the device record at hand is current: see
    // `devices::device_by_mac`).
    let attributes = request.attributes.filter(|reported| {
        !reported.is_object() || crate::domain::device::merge_attributes(&device.attributes, reported) != device.attributes
    });
    let report =
        CheckinReport { version: version.clone(), product: if device.product.is_none() { product } else { None }, hardware, attributes };
    let answer = devices::checkin(core, Arc::new(ActiveDevice::of(&device)), report, ip).await?;
    // Read back what the check-in recorded, for adapters that answer with device facts.
    let device = Arc::new(Device { version: version.clone().or(device.version.clone()), ..(*device).clone() });
    Ok(MacCheckinAnswer { device, answer, version })
}

/// The decision for a device nobody can identify (seed 002 without its MAC headers,
/// esp32FOTA without `id`): the product's builds, the version it says it runs, and the one
/// hardware all builds share (or `hardware`). Same `update::decide` as every check-in; with
/// `only` it decides between that build and nothing (seed 002's "latest"). Builds that
/// belong to a release (`held`) are not offered: rollouts need to know the device.
pub fn decide_anonymous<'a>(
    builds: &'a [Artifact],
    held: Option<&Held>,
    product: &str,
    version: Option<&Version>,
    hardware: Option<&str>,
    only: Option<&'a Artifact>,
) -> Option<&'a Artifact> {
    decide_anonymous_on(builds, held, product, Channel::DEFAULT, version, hardware, only)
}

/// [`decide_anonymous`] for a device on `channel` (ESPHome manifests name one): builds of
/// that channel and of `stable`, as for a known device on it.
pub fn decide_anonymous_on<'a>(
    builds: &'a [Artifact],
    held: Option<&Held>,
    product: &str,
    channel: &str,
    version: Option<&Version>,
    hardware: Option<&str>,
    only: Option<&'a Artifact>,
) -> Option<&'a Artifact> {
    let candidates: Vec<Artifact> = match only {
        Some(build) => vec![build.clone()],
        None => builds.to_vec(),
    };
    let hardware = hardware
        .map(str::to_string)
        .or_else(|| only.and_then(|b| b.hardware.first().map(ToString::to_string)))
        .or_else(|| compat::sole_hardware(builds, product).map(String::from));
    let facts = DeviceFacts {
        product: Some(product.to_string()),
        hardware,
        channel: channel.into(),
        version: version.cloned(),
        target_version: None,
    };
    let releases = Releases { held, offers: &[] };
    let offered_id = match update::decide(&facts, &candidates, releases) {
        Decision::Offer { artifact, .. } => artifact.id.clone(),
        Decision::None(_) => return None,
    };
    builds.iter().chain(only).find(|a| a.id == offered_id)
}

// ---- seed 002 ("Cyberdeck OTA Server") ----

/// The build seed-002 devices of `product` receive: the marked one, else the newest stable.
pub async fn cyberdeck_latest(core: &Core, product: &str) -> Result<Option<Artifact>> {
    let builds = devices::builds_of(core, product).await?;
    let marked = core.store.find_product_latest(product).await?;
    // The operator's mark wins (like a pin); otherwise builds held for rollouts are skipped.
    let held = rollouts::of_product(core, product);
    let open: Vec<Artifact> = builds
        .iter()
        .filter(|a| marked.as_deref() == Some(a.id.as_str()) || !held.as_ref().is_some_and(|h| h.held.holds(a)))
        .cloned()
        .collect();
    Ok(compat::cyberdeck_latest(&open, product, marked.as_deref()).cloned())
}

/// The build seed-002 devices of `product` receive, and whether an operator marked it.
pub struct Latest {
    pub build: Option<Artifact>,
    /// True when an operator marked it; false when it is simply the newest stable build.
    pub marked: bool,
}

/// What `GET /api/v1/products/{name}/latest` shows: `cyberdeck_latest` and its mark.
pub async fn latest_with_mark(core: &Core, product: &str) -> Result<Latest> {
    let marked = core.store.find_product_latest(product).await?;
    let build = cyberdeck_latest(core, product).await?;
    Ok(Latest { marked: marked.is_some() && marked.as_deref() == build.as_ref().map(|b| b.id.as_str()), build })
}

/// Marks a build of `product` as the one seed-002 devices receive (`None` unmarks).
pub async fn mark_latest(core: &Core, product: &str, version: Option<&str>) -> Result<Option<Artifact>> {
    let product = ProductName::parse(product)?;
    let Some(version) = version else {
        core.store.set_product_latest(&product, None).await?;
        return Ok(None);
    };
    let key = Version::parse(version)?.canonical();
    let mut builds = core.store.find_artifacts_by_version(&product, &key).await?;
    builds.sort_by_key(|a| a.created_at);
    let build = builds.pop().ok_or_else(|| Error::not_found("build", format!("{product} {version}")))?;
    core.store.set_product_latest(&product, Some(&build.id)).await?;
    Ok(Some(build))
}

// ---- esp32FOTA signing ----

/// RSA keys that sign esp32FOTA images, one per product, and the signatures made so far.
///
/// The served form of a signed build is `signature || image`, the signature being RSA
/// PKCS#1 v1.5 over SHA-256 of the image (`openssl dgst -sign key.pem -sha256`); its length
/// is the key's (512 bytes for the 4096-bit keys esp32FOTA expects by default). Signing
/// uses the stored SHA-256 (no re-reading of the image), with blinding, once per build:
/// signatures are deterministic and cached, so the private key is not exercised per request.
#[derive(Default)]
pub struct FotaSigner {
    keys: HashMap<ProductName, RsaPrivateKey>,
    signatures: Mutex<HashMap<ArtifactId, Arc<[u8]>>>,
}

impl FotaSigner {
    /// Loads `<product>.pem` files (PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`).
    pub fn load_dir(dir: &Path) -> anyhow::Result<FotaSigner> {
        let mut keys = HashMap::new();
        let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read the esp32FOTA key folder {}", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("pem") {
                continue;
            }
            let Some(product) = path.file_stem().and_then(|s| s.to_str()) else { continue };
            let product = ProductName::parse(product).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let pem = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let key = RsaPrivateKey::from_pkcs8_pem(&pem)
                .or_else(|_| RsaPrivateKey::from_pkcs1_pem(&pem))
                .map_err(|e| anyhow::anyhow!("{} is not an RSA private key in PEM form: {e}", path.display()))?;
            keys.insert(product, key);
        }
        Ok(FotaSigner { keys, signatures: Mutex::default() })
    }

    pub fn products(&self) -> Vec<&str> {
        self.keys.keys().map(|product| product.as_str()).collect()
    }

    pub fn signs(&self, product: &str) -> bool {
        self.keys.contains_key(product)
    }

    /// The signature prefix of a build, or `None` when its product has no key.
    pub fn signature(&self, artifact: &Artifact) -> Result<Option<Arc<[u8]>>> {
        let Some(key) = self.keys.get(&artifact.product) else { return Ok(None) };
        if let Some(signature) = self.signatures.lock().expect("signature cache lock").get(&artifact.id) {
            return Ok(Some(signature.clone()));
        }
        let digest = hex::decode(&artifact.sha256).map_err(|e| Error::Internal(anyhow::Error::new(e).context("corrupt sha256")))?;
        let signature: Arc<[u8]> = sign_prehashed(key, &digest)?.into();
        self.signatures.lock().expect("signature cache lock").insert(artifact.id.clone(), signature.clone());
        Ok(Some(signature))
    }
}

/// PKCS#1 v1.5 over a SHA-256 digest, blinded.
fn sign_prehashed(key: &RsaPrivateKey, digest: &[u8]) -> Result<Vec<u8>> {
    key.sign_with_rng(&mut rsa::rand_core::OsRng, Pkcs1v15Sign::new::<Sha256>(), digest)
        .map_err(|e| Error::Internal(anyhow::anyhow!("cannot sign an esp32FOTA image: {e}")))
}

// ---- seed 001 ("ESP32 OTA Update Server") registry and files ----

/// The seed-001 fields Updraft keeps in a device's `metadata.ota_server`.
pub const OTA_SERVER_METADATA: &str = "ota_server";

/// The actor of what `updraft import ota-server` records (it runs with the server stopped,
/// without an operator credential).
pub const IMPORT_ACTOR: &str = "cli:import";

/// Stores a file under its seed-001 name: an artifact of `product` (version and hardware
/// from the ESP image when not given), then the name, replacing what it named before.
pub async fn ingest_named_file<S>(
    core: &Core,
    name: &str,
    body: S,
    limit: u64,
    meta: UploadMeta,
    default_hardware: Option<&str>,
) -> Result<Artifact>
where
    S: futures::Stream<Item = std::result::Result<bytes::Bytes, BodyError>> + Unpin,
{
    check_file_name(name)?;
    let staged = firmware_service::stage(core, body, limit).await?;
    commit_named_file(core, name, staged, meta, default_hardware).await
}

/// The second half of `ingest_named_file`, for adapters that stage the file first and read
/// the rest of the form after it.
pub async fn commit_named_file(
    core: &Core,
    name: &str,
    staged: firmware_service::StagedUpload,
    meta: UploadMeta,
    default_hardware: Option<&str>,
) -> Result<Artifact> {
    check_file_name(name)?;
    let mut meta = meta;
    if meta.hardware.is_empty() && staged.image().and_then(|i| i.chip).is_none() {
        meta.hardware.extend(default_hardware.map(str::to_string));
    }
    let ingested = firmware_service::commit(core, staged, &meta).await?;
    core.store.put_compat_file(name, &ingested.artifact.id).await?;
    Ok(ingested.artifact)
}

/// A seed-001 file name: what the original accepted (no `/` or `\`), and nothing that
/// needs quoting in a URL path segment.
pub fn check_file_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'));
    if ok { Ok(()) } else { Err(Error::invalid("invalid_filename", "Invalid filename")) }
}

/// The build a seed-001 file name or URL (`http://host/firmware/<name>`) refers to.
pub async fn build_by_file_url(core: &Core, url_or_name: &str) -> Result<Option<Artifact>> {
    let name = url_or_name.rsplit('/').next().unwrap_or(url_or_name);
    match core.store.find_compat_file(name).await? {
        Some(file) => core.store.find_artifact(&file.artifact_id).await,
        None => Ok(None),
    }
}

/// A seed-001 file name and its build.
pub async fn named_file(core: &Core, name: &str) -> Result<Option<(CompatFile, Artifact)>> {
    let Some(file) = core.store.find_compat_file(name).await? else { return Ok(None) };
    Ok(core.store.find_artifact(&file.artifact_id).await?.map(|artifact| (file, artifact)))
}

/// Every seed-001 file name whose build exists, by name, with its build.
pub async fn named_files(core: &Core) -> Result<Vec<(CompatFile, Artifact)>> {
    let mut named = Vec::new();
    for file in core.store.list_compat_files().await? {
        if let Some(artifact) = core.store.find_artifact(&file.artifact_id).await? {
            named.push((file, artifact));
        }
    }
    Ok(named)
}

/// The oldest seed-001 name of a build.
pub async fn first_file_name(core: &Core, artifact_id: &ArtifactId) -> Result<Option<String>> {
    Ok(core.store.compat_file_names(artifact_id).await?.into_iter().next())
}

/// Removes a seed-001 file name, and its build when no other name refers to it, in one
/// transaction: while devices are being updated to that build, or it belongs to a release,
/// nothing is removed (409). `Ok(false)`: no file has this name.
pub async fn delete_named_file(core: &Core, name: &str) -> Result<bool> {
    let Some((_, build)) = named_file(core, name).await? else { return Ok(false) };
    match core.store.remove_compat_file(name, &build.id).await? {
        CompatFileRemoval::NotFound => Ok(false),
        CompatFileRemoval::Name => Ok(true),
        CompatFileRemoval::NameAndBuild => {
            firmware_service::deleted(core, &build).await?;
            Ok(true)
        }
        CompatFileRemoval::BuildInUse => Err(firmware_service::in_use()),
        CompatFileRemoval::BuildReleased => Err(firmware_service::released()),
    }
}

/// The build a seed-001 device's pin names: a build of its product and pinned version.
pub async fn pinned_build(core: &Core, device: &Device) -> Result<Option<Artifact>> {
    let (Some(product), Some(target)) = (&device.product, &device.target_version) else { return Ok(None) };
    let Ok(version) = Version::parse(target) else { return Ok(None) };
    Ok(core.store.find_artifacts_by_version(product, &version.canonical()).await?.into_iter().next())
}

/// A device as the seed-001 admin API and `devices.json` describe it.
#[derive(Debug, Clone, Default)]
pub struct OtaServerDevice {
    pub mac: String,
    pub device_id: Option<String>,
    pub hardware_version: Option<String>,
    pub target_version: Option<String>,
    pub firmware_url: Option<String>,
    pub checksum: Option<String>,
    pub current_version: Option<String>,
    pub last_update: Option<String>,
}

/// Registers (or, with `update_existing`, updates) a seed-001 device: `target_version`
/// becomes a pin, the device's hardware is that of the build its `firmware_url` names (or
/// of its pinned version's build), the remaining fields are kept in `metadata.ota_server`.
pub async fn put_ota_server_device(
    core: &Core,
    product: &str,
    entry: &OtaServerDevice,
    default_hardware: Option<&str>,
    update_existing: bool,
    actor: &str,
) -> Result<(Device, bool)> {
    let mac = Mac::parse(&entry.mac)?;
    if let Some(target) = &entry.target_version
        && !compat::ota_server_version_valid(target)
    {
        return Err(Error::invalid("invalid_version", "Invalid target version format"));
    }
    let by_url = match &entry.firmware_url {
        Some(url) => build_by_file_url(core, url).await?,
        None => None,
    };
    let by_version = match &entry.target_version {
        Some(target) => {
            let key = Version::parse(target)?.canonical();
            core.store.find_artifacts_by_version(product, &key).await?.into_iter().next()
        }
        None => None,
    };
    let hardware = match by_url.or(by_version).and_then(|b| b.hardware.first().cloned()) {
        Some(hardware) => Some(hardware),
        None => default_hardware.map(HardwareId::parse).transpose()?,
    };
    let metadata = json!({ OTA_SERVER_METADATA: {
        "device_id": entry.device_id,
        "hardware_version": entry.hardware_version.clone().unwrap_or_else(|| "1.0".into()),
        "firmware_url": entry.firmware_url,
        "checksum": entry.checksum,
        "last_update": entry.last_update,
    }});
    match core.store.find_device_by_mac(&mac).await? {
        Some(existing) if update_existing => {
            let mut merged = existing.metadata.clone();
            if let Some(object) = merged.as_object_mut() {
                object.insert(OTA_SERVER_METADATA.into(), metadata[OTA_SERVER_METADATA].clone());
            }
            let patch = DevicePatch {
                name: entry.device_id.clone(),
                product: if existing.product.is_none() { Some(Some(ProductName::parse(product)?)) } else { None },
                hardware: existing.hardware.is_none().then_some(hardware),
                target_version: Some(entry.target_version.clone()),
                metadata: Some(merged),
                ..Default::default()
            };
            Ok((devices::update(core, &existing.id, patch, actor).await?, false))
        }
        Some(_) => Err(Error::conflict("device_exists", "Device already exists")),
        None => {
            let device = devices::register(
                core,
                NewDeviceRequest {
                    mac: Some(mac.canonical()),
                    uid: None,
                    name: entry.device_id.clone(),
                    product: Some(product.to_string()),
                    hardware: hardware.map(String::from),
                    channel: None,
                    version: entry.current_version.clone().filter(|v| Version::parse(v).is_ok()),
                    target_version: entry.target_version.clone(),
                    tags: Vec::new(),
                    metadata: Some(metadata),
                    owner: None,
                },
                actor,
            )
            .await?;
            Ok((device, true))
        }
    }
}

/// What `updraft import ota-server` did.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub files: Vec<(String, String)>,
    pub devices_created: usize,
    pub devices_updated: usize,
    pub errors: Vec<String>,
}

/// Imports a seed-001 installation: every file of `firmware_dir` becomes a build of
/// `product` under its file name (version from the ESP image, else from a device whose
/// `firmware_url` names the file), then every device of `devices.json` is registered or
/// updated, its `target_version` becoming a pin. Each item succeeds or fails on its own.
pub async fn import_ota_server(
    core: &Core,
    devices_json: &str,
    firmware_dir: Option<&Path>,
    product: &str,
    default_hardware: &str,
    limit: u64,
) -> Result<ImportReport> {
    let product = ProductName::parse(product)?;
    let registry: serde_json::Map<String, Value> = serde_json::from_str(devices_json)
        .map_err(|e| Error::invalid("invalid_json", format!("devices.json is not a JSON object of devices by MAC: {e}")))?;
    let entries: Vec<OtaServerDevice> = registry.iter().map(|(mac, value)| ota_server_entry(mac, value)).collect();
    let mut report = ImportReport::default();

    if let Some(dir) = firmware_dir {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| Error::invalid("invalid_firmware_dir", format!("cannot read {}: {e}", dir.display())))?
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.path().is_file())
            .filter_map(|entry| entry.file_name().to_str().map(str::to_string))
            .collect();
        names.sort();
        for name in names {
            let version = entries
                .iter()
                .find(|d| d.firmware_url.as_deref().is_some_and(|u| u.rsplit('/').next() == Some(name.as_str())))
                .and_then(|d| d.target_version.clone());
            let meta = UploadMeta { product: Some(product.to_string()), version, ..Default::default() };
            let file = match tokio::fs::File::open(dir.join(&name)).await {
                Ok(file) => file,
                Err(e) => {
                    report.errors.push(format!("{name}: cannot open: {e}"));
                    continue;
                }
            };
            let body = tokio_util::io::ReaderStream::new(file).map(|chunk| chunk.map_err(|e| BodyError::Interrupted(e.to_string())));
            match ingest_named_file(core, &name, body, limit, meta, Some(default_hardware)).await {
                Ok(artifact) => report.files.push((name, artifact.version)),
                Err(Error::Internal(e)) => return Err(Error::Internal(e)),
                Err(e) => report.errors.push(format!("{name}: {e}")),
            }
        }
    }

    for entry in &entries {
        match put_ota_server_device(core, &product, entry, Some(default_hardware), true, IMPORT_ACTOR).await {
            Ok((_, true)) => report.devices_created += 1,
            Ok((_, false)) => report.devices_updated += 1,
            Err(Error::Internal(e)) => return Err(Error::Internal(e)),
            Err(e) => report.errors.push(format!("device {}: {e}", entry.mac)),
        }
    }
    Ok(report)
}

/// Reads one `devices.json` entry (unknown fields are ignored, wrong types read as absent).
pub fn ota_server_entry(mac: &str, value: &Value) -> OtaServerDevice {
    let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_string);
    OtaServerDevice {
        mac: mac.to_string(),
        device_id: text("device_id"),
        hardware_version: text("hardware_version"),
        target_version: text("target_version"),
        firmware_url: text("firmware_url"),
        checksum: text("checksum"),
        current_version: text("current_version"),
        last_update: text("last_update"),
    }
}

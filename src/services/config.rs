//! Configuration use cases: writing versioned layers (with optimistic concurrency, schema
//! checks and secret encryption), history, diffs and reverts, the effective configuration
//! of a device, acknowledgements and the stale-config view.
//!
//! Every change publishes `config.changed` on the event bus with exactly the devices whose
//! effective configuration it changes, and the seed-003 notifications the MQTT adapter
//! forwards (see docs/ARCHITECTURE.md).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::Core;
use super::devices::ConfigFile;
use super::events::{ConfigChanged, Event};
use crate::domain::config::{self, Change, Merged, Scope};
use crate::domain::config::{StoredDocument, StoredVersion};
use crate::domain::device::Device;
use crate::domain::device::DeviceFilter;
use crate::domain::firmware::ProductName;
use crate::domain::mac::Mac;
use crate::domain::{Error, Result};
use crate::storage::ConfigWrite;

/// Attempts of a write without `If-Match` that keeps losing races to other writers.
const MAX_ATTEMPTS: usize = 100;
const MAX_SCHEMA_ERRORS: usize = 20;

/// A change to one layer.
pub struct ChangeRequest {
    /// The new document as the operator wrote it; `None` deletes the document.
    pub content: Option<Value>,
    pub author: String,
    pub comment: String,
    /// `If-Match`: the version the writer last saw; a different current version is a 412.
    pub if_match: Option<i64>,
    /// Seed 003's `allow_overwrite: false`: refuse (409) when a document exists.
    pub create_only: bool,
}

/// What a device receives.
pub struct Effective {
    /// The `ETag`: see `domain::config::effective_version`.
    pub version: String,
    /// The merged stored layers (secrets still encrypted) and the source of each leaf.
    pub merged: Merged,
    /// The layers that exist for the device, in merge order, with their versions.
    pub layers: Vec<(String, i64)>,
}

/// The scope of a device's own document: by device id or any MAC form. A MAC need not
/// belong to a registered device (seed 003 keeps configurations of any MAC).
pub async fn device_scope(core: &Core, id_or_mac: &str) -> Result<(Scope, Option<Device>)> {
    let found = match super::devices::find(core, id_or_mac).await {
        Ok(device) => Some(device),
        Err(Error::NotFound { .. }) => None,
        Err(e) => return Err(e),
    };
    if let Some(device) = found {
        let Some(mac) = device.mac else {
            return Err(Error::conflict(
                "no_device_layer",
                format!("{} has no MAC, so no configuration of its own: use its product's or a tag's", device.label()),
            ));
        };
        return Ok((Scope::Device(mac), Some(device)));
    }
    let mac = Mac::parse(id_or_mac).map_err(|_| Error::not_found("device", id_or_mac))?;
    let device = core.store.find_device_by_mac(&mac).await?;
    Ok((Scope::Device(mac), device))
}

/// The current document of a layer; 404 when it does not exist or was deleted.
pub async fn get(core: &Core, scope: &Scope) -> Result<(StoredDocument, Value)> {
    let document = core.store.find_config(&scope.key()).await?.ok_or_else(|| Error::not_found("configuration", scope.key()))?;
    let content = document.content.clone().ok_or_else(|| Error::not_found("configuration", scope.key()))?;
    Ok((document, content))
}

/// Writes (or deletes) a layer's document as a new version.
pub async fn put(core: &Core, scope: &Scope, request: ChangeRequest) -> Result<StoredDocument> {
    let keys = core.keys.clone();
    let deleting = request.content.is_none();
    apply(core, scope, &request.author, &request.comment, request.if_match, request.create_only, |current| match &request.content {
        Some(input) => {
            let previous = current.and_then(|d| d.content.as_ref());
            config::prepare(input, previous, &mut |value| keys.encrypt_secret(value)).map(Some)
        }
        None if current.is_some_and(|d| d.content.is_some()) => Ok(None),
        None => Err(Error::not_found("configuration", scope.key())),
    })
    .await
    .inspect(|_| {
        if deleting {
            tracing::info!(scope = %scope.key(), "configuration deleted");
        }
    })
}

/// Writes a new version whose content is that of an earlier `version`.
pub async fn revert(
    core: &Core,
    scope: &Scope,
    version: i64,
    author: &str,
    comment: &str,
    if_match: Option<i64>,
) -> Result<StoredDocument> {
    let target = core
        .store
        .find_config_version(&scope.key(), version)
        .await?
        .ok_or_else(|| Error::not_found("configuration version", format!("{}@{version}", scope.key())))?;
    let comment = if comment.is_empty() { format!("revert to version {version}") } else { comment.to_string() };
    apply(core, scope, author, &comment, if_match, false, |_| Ok(target.content.clone())).await
}

/// The shared write path: read, compute, check, write conditionally; retried when another
/// writer got in between (unless the client pinned the version with `If-Match`).
async fn apply(
    core: &Core,
    scope: &Scope,
    author: &str,
    comment: &str,
    if_match: Option<i64>,
    create_only: bool,
    compute: impl Fn(Option<&StoredDocument>) -> Result<Option<Value>>,
) -> Result<StoredDocument> {
    let key = scope.key();
    let author = check_label("author", author, 128)?;
    let comment = check_label("comment", comment, 1000)?;
    let devices = affected_devices(core, scope).await?;
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            // Another writer won the race; step back a little so that the losers do not
            // collide again in lock step.
            let jitter = rand::random_range(0..(2 + 2 * attempt as u64).min(50));
            tokio::time::sleep(std::time::Duration::from_millis(jitter)).await;
        }
        let current = core.store.find_config(&key).await?;
        let current_version = current.as_ref().map(|d| d.version).unwrap_or(0);
        if let Some(expected) = if_match
            && expected != current_version
        {
            return Err(precondition_failed(&key, expected, current_version));
        }
        if create_only && current.as_ref().is_some_and(|d| d.content.is_some()) {
            return Err(Error::conflict("config_exists", format!("a configuration for {key} exists; allow overwriting it to replace it")));
        }
        let content = compute(current.as_ref())?;
        if let Some(content) = &content {
            check_schemas(core, scope, content, &devices).await?;
        }
        let written = core
            .store
            .write_config(&ConfigWrite {
                scope: &key,
                expected_version: current.as_ref().map(|d| d.version),
                content: content.as_ref(),
                author: &author,
                comment: &comment,
            })
            .await?;
        if written.is_some() {
            core.devices.caches.config_changed();
        }
        match written {
            Some(document) => {
                publish_change(core, scope, &document, &devices);
                return Ok(document);
            }
            None if if_match.is_some() => {
                let now = core.store.find_config(&key).await?.map(|d| d.version).unwrap_or(0);
                return Err(precondition_failed(&key, current_version, now));
            }
            None => continue,
        }
    }
    Err(Error::conflict("config_busy", format!("{key} is being changed by others; retry")))
}

fn precondition_failed(key: &str, expected: i64, current: i64) -> Error {
    Error::PreconditionFailed(format!(
        "{key} is at version {current}, not {expected} as If-Match says; read it again and re-apply your change"
    ))
}

fn check_label(field: &str, value: &str, max: usize) -> Result<String> {
    let value = value.trim();
    if value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(Error::invalid(
            "invalid_config_change",
            format!("{field} must be at most {max} characters without control characters"),
        ));
    }
    Ok(value.to_string())
}

/// The registered devices whose effective configuration a layer takes part in.
pub async fn affected_devices(core: &Core, scope: &Scope) -> Result<Vec<Device>> {
    match scope {
        Scope::Device(mac) => Ok(core.store.find_device_by_mac(mac).await?.into_iter().collect()),
        Scope::Product(product) => all_devices(core, DeviceFilter { product: Some(product.to_string()), ..Default::default() }).await,
        Scope::Tag(tag) => all_devices(core, DeviceFilter { tag: Some(tag.clone()), ..Default::default() }).await,
    }
}

async fn all_devices(core: &Core, filter: DeviceFilter) -> Result<Vec<Device>> {
    const PAGE: u32 = 1000;
    let mut devices = Vec::new();
    loop {
        let page = DeviceFilter { limit: PAGE, offset: devices.len() as u64, ..filter.clone() };
        let (batch, _) = core.store.list_devices(&page).await?;
        let done = batch.len() < PAGE as usize;
        devices.extend(batch);
        if done {
            return Ok(devices);
        }
    }
}

fn publish_change(core: &Core, scope: &Scope, document: &StoredDocument, devices: &[Device]) {
    let deleted = document.content.is_none();
    // Seed 003 announces saves (not deletions) of `<mac>.json`; that file is the effective
    // configuration, so every affected MAC is announced.
    let mut macs: Vec<Mac> = devices.iter().filter_map(|d| d.mac).collect();
    if let Scope::Device(mac) = scope
        && macs.is_empty()
    {
        macs.push(*mac);
    }
    let device_id = match devices {
        [only] => Some(only.id.to_string()),
        _ => None,
    };
    core.events.publish(Event::ConfigChanged(ConfigChanged {
        device_id,
        scope: scope.key(),
        version: document.version,
        deleted,
        devices: devices.iter().map(|d| d.id.to_string()).collect(),
        seed003_files: if deleted { Vec::new() } else { macs },
    }));
}

// ---- reading ----

pub async fn history(core: &Core, scope: &Scope, limit: u32, offset: u64) -> Result<(Vec<StoredVersion>, u64)> {
    let (versions, total) = core.store.list_config_versions(&scope.key(), limit, offset).await?;
    if total == 0 {
        return Err(Error::not_found("configuration", scope.key()));
    }
    Ok((versions, total))
}

pub async fn version(core: &Core, scope: &Scope, version: i64) -> Result<StoredVersion> {
    core.store
        .find_config_version(&scope.key(), version)
        .await?
        .ok_or_else(|| Error::not_found("configuration version", format!("{}@{version}", scope.key())))
}

/// The changes from version `from` to version `to` of a layer (secrets masked).
pub async fn diff(core: &Core, scope: &Scope, from: i64, to: i64) -> Result<Vec<Change>> {
    let old = version(core, scope, from).await?;
    let new = version(core, scope, to).await?;
    Ok(config::diff(old.content.as_ref(), new.content.as_ref()))
}

/// The effective configuration of a registered device.
pub async fn effective(core: &Core, device: &Device) -> Result<Effective> {
    let scopes = config::device_layers(device.product.as_ref(), &device.tags, device.mac.as_ref());
    let documents = core.store.find_configs(&scopes.iter().map(Scope::key).collect::<Vec<_>>()).await?;
    let by_scope: HashMap<String, StoredDocument> = documents.into_iter().map(|d| (d.scope.clone(), d)).collect();
    Ok(merge_layers(&scopes, &|key| by_scope.get(key)))
}

/// The effective configuration for a MAC: that of its device when one is registered, else
/// its own document alone. `None` when nothing applies (no layer exists).
pub async fn effective_for_mac(core: &Core, mac: &Mac) -> Result<Option<Effective>> {
    let effective = match core.store.find_device_by_mac(mac).await? {
        Some(device) => effective(core, &device).await?,
        None => {
            let document = core.store.find_config(&Scope::Device(*mac).key()).await?;
            merge_layers(&[Scope::Device(*mac)], &|_| document.as_ref())
        }
    };
    Ok((!effective.layers.is_empty()).then_some(effective))
}

fn merge_layers<'a>(scopes: &[Scope], document: &dyn Fn(&str) -> Option<&'a StoredDocument>) -> Effective {
    let mut layers = Vec::new();
    let mut contents: Vec<(String, &Value)> = Vec::new();
    for scope in scopes {
        let key = scope.key();
        if let Some(doc) = document(&key) {
            layers.push((key.clone(), doc.version));
            if let Some(content) = &doc.content {
                let label = if matches!(scope, Scope::Device(_)) { "device".to_string() } else { key };
                contents.push((label, content));
            }
        }
    }
    Effective { version: config::effective_version(&layers), merged: config::merge(&contents), layers }
}

/// A MAC's seed-003 configuration file (`GET /api/configs/{mac}.json`) and the product of its
/// device, or `None` when it has none (no layer applies, or only empty ones and no document of
/// its own). Kept in the device's entry of the hot-path caches (`devices::HotCaches`) until a
/// configuration layer or the device changes, for registered devices; the file of a MAC no
/// device has is computed each time.
pub async fn device_file(core: &Core, mac: &Mac) -> Result<Option<(Option<ProductName>, Arc<ConfigFile>)>> {
    let caches = &core.devices.caches;
    if let Some((device, file)) = caches.config_file(mac) {
        return Ok(Some((device.product.clone(), file)));
    }
    let (generation, config_generation) = (caches.generation(), caches.config_generation());
    let device = super::devices::device_by_mac(core, mac).await?;
    let scopes = match &device {
        Some(device) => config::device_layers(device.product.as_ref(), &device.tags, device.mac.as_ref()),
        None => vec![Scope::Device(*mac)],
    };
    let documents = core.store.find_configs(&scopes.iter().map(Scope::key).collect::<Vec<_>>()).await?;
    let by_scope: HashMap<String, StoredDocument> = documents.into_iter().map(|d| (d.scope.clone(), d)).collect();
    let effective = merge_layers(&scopes, &|key| by_scope.get(key));
    let own = by_scope.get(&Scope::Device(*mac).key()).is_some_and(|d| d.content.is_some());
    if effective.layers.is_empty() || (effective.merged.content.as_object().is_none_or(|m| m.is_empty()) && !own) {
        return Ok(None);
    }
    let public = serde_json::to_vec(&config::without_secrets(&effective.merged.content))
        .map_err(|e| Error::Internal(anyhow::anyhow!("cannot serialise a configuration: {e}")))?;
    let file = Arc::new(ConfigFile::new(effective.version, effective.merged.content, public.into(), config_generation));
    if let Some(device) = &device {
        caches.store_config_file(device, file.clone(), generation);
    }
    Ok(Some((device.and_then(|d| d.product.clone()), file)))
}

/// Whether anonymous readers of a seed-003 configuration file of a device of `product` see
/// its secret values: only when the product opted in (`public_secrets`).
pub async fn secrets_public(core: &Core, product: Option<&ProductName>) -> Result<bool> {
    match product {
        Some(product) => Ok(super::devices::product_policy(core, product).await?.public_secrets),
        None => Ok(false),
    }
}

/// The device's view of a stored document: secrets decrypted.
pub fn reveal(core: &Core, stored: &Value) -> Result<Value> {
    config::reveal(stored, &mut |token| core.keys.decrypt_secret(token))
}

// ---- schemas ----

pub async fn get_schema(core: &Core, product: &str) -> Result<Value> {
    core.store.find_config_schema(product).await?.ok_or_else(|| Error::not_found("configuration schema", product))
}

/// Stores a product's JSON Schema after checking it is one.
pub async fn put_schema(core: &Core, product: &str, schema: &Value) -> Result<()> {
    if !schema.is_object() && !schema.is_boolean() {
        return Err(Error::invalid("invalid_schema", "a JSON Schema is an object (or a boolean)"));
    }
    jsonschema::validator_for(schema).map_err(|e| Error::invalid("invalid_schema", format!("not a valid JSON Schema: {e}")))?;
    core.store.put_config_schema(product, schema).await
}

pub async fn delete_schema(core: &Core, product: &str) -> Result<()> {
    if core.store.delete_config_schema(product).await? { Ok(()) } else { Err(Error::not_found("configuration schema", product)) }
}

/// Checks that the effective configuration of every affected device that has a document of
/// its own, with `content` in place of the layer being written, validates against its
/// product's schema.
async fn check_schemas(core: &Core, scope: &Scope, content: &Value, devices: &[Device]) -> Result<()> {
    let mut schemas: BTreeMap<String, Option<jsonschema::Validator>> = BTreeMap::new();
    for product in devices.iter().filter_map(|d| d.product.as_deref()) {
        if !schemas.contains_key(product) {
            let validator = match core.store.find_config_schema(product).await? {
                Some(schema) => Some(
                    jsonschema::validator_for(&schema)
                        .map_err(|e| Error::Internal(anyhow::anyhow!("the stored schema of {product} is invalid: {e}")))?,
                ),
                None => None,
            };
            schemas.insert(product.to_string(), validator);
        }
    }
    if schemas.values().all(Option::is_none) {
        return Ok(());
    }
    let key = scope.key();
    let replacement = StoredDocument { scope: key.clone(), version: 0, content: Some(content.clone()), updated_at: Utc::now() };
    let mut errors = Vec::new();
    for device in devices {
        let Some(Some(validator)) = device.product.as_deref().map(|p| &schemas[p]) else { continue };
        let scopes = config::device_layers(device.product.as_ref(), &device.tags, device.mac.as_ref());
        let documents = core.store.find_configs(&scopes.iter().map(Scope::key).collect::<Vec<_>>()).await?;
        let by_scope: HashMap<String, StoredDocument> = documents.into_iter().map(|d| (d.scope.clone(), d)).collect();
        // A device without a document of its own is not configured yet: product and tag
        // defaults alone need not satisfy a schema whose required keys are per device.
        let own = device.mac.map(|mac| Scope::Device(mac).key());
        if own.as_ref().is_none_or(|own| *own != key && by_scope.get(own).is_none_or(|d| d.content.is_none())) {
            continue;
        }
        let effective = merge_layers(&scopes, &|k| if k == key { Some(&replacement) } else { by_scope.get(k) });
        let secrets: Vec<&String> = effective
            .merged
            .sources
            .keys()
            .filter(|p| pointer_get(&effective.merged.content, p).is_some_and(config::is_encrypted))
            .collect();
        let instance = reveal(core, &effective.merged.content)?;
        for error in validator.iter_errors(&instance) {
            let at = error.instance_path().to_string();
            let at_display = if at.is_empty() { "/".to_string() } else { at.clone() };
            // Messages may quote the value; never quote a secret.
            let message = if secrets.iter().any(|s| at == **s || at.starts_with(&format!("{s}/"))) {
                "the secret value does not match the schema".to_string()
            } else {
                error.to_string()
            };
            let prefix = if matches!(scope, Scope::Device(_)) { String::new() } else { format!("device {}: ", device.id) };
            errors.push(format!("{prefix}at {at_display}: {message}"));
            if errors.len() >= MAX_SCHEMA_ERRORS {
                break;
            }
        }
        if errors.len() >= MAX_SCHEMA_ERRORS {
            break;
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::unprocessable(
            "schema_violation",
            format!("the configuration does not match the product's schema: {}", errors.join("; ")),
        ))
    }
}

fn pointer_get<'a>(value: &'a Value, pointer: &str) -> Option<&'a Value> {
    value.pointer(pointer)
}

// ---- delivery state ----

/// Records the effective version a device says it applied.
pub async fn acknowledge(core: &Core, device_id: &str, version: &str) -> Result<()> {
    let version = version.trim().trim_matches('"');
    if version.is_empty() || version.len() > 64 || !version.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')) {
        return Err(Error::invalid("invalid_version", "version must be the ETag of GET /api/v1/device/config (letters and digits)"));
    }
    core.store.record_config_ack(device_id, version).await?;
    core.events.publish(Event::ConfigAcknowledged { device_id: device_id.to_string(), version: version.to_string() });
    Ok(())
}

/// A device that has not acknowledged its current configuration.
pub struct StaleDevice {
    pub device: Device,
    pub current_version: String,
    pub acknowledged: Option<(String, DateTime<Utc>)>,
}

/// Devices (of `product`, if given) whose last acknowledged version is not the current
/// one, among those with at least one configuration layer; ordered as the registry lists
/// them (newest first).
pub async fn stale(core: &Core, product: Option<&str>, limit: u32, offset: u64) -> Result<(Vec<StaleDevice>, u64)> {
    let documents = core.store.list_configs("").await?;
    let by_scope: HashMap<String, StoredDocument> = documents.into_iter().map(|d| (d.scope.clone(), d)).collect();
    let acks = core.store.list_config_acks().await?;
    let devices = all_devices(core, DeviceFilter { product: product.map(str::to_string), ..Default::default() }).await?;
    let mut stale = Vec::new();
    let mut total = 0u64;
    for device in devices {
        let scopes = config::device_layers(device.product.as_ref(), &device.tags, device.mac.as_ref());
        let layers: Vec<(String, i64)> =
            scopes.iter().filter_map(|s| by_scope.get(&s.key()).map(|d| (d.scope.clone(), d.version))).collect();
        if layers.is_empty() {
            continue;
        }
        let current_version = config::effective_version(&layers);
        let acknowledged = acks.get(device.id.as_str()).cloned();
        if acknowledged.as_ref().is_some_and(|(v, _)| *v == current_version) {
            continue;
        }
        total += 1;
        if total > offset && stale.len() < limit as usize {
            stale.push(StaleDevice { device, current_version, acknowledged });
        }
    }
    Ok((stale, total))
}

/// Every device document (not deleted), by MAC, for seed 003's listing.
pub async fn device_documents(core: &Core) -> Result<Vec<(Mac, Value)>> {
    let documents = core.store.list_configs("device:").await?;
    Ok(documents
        .into_iter()
        .filter_map(|d| match (Scope::from_key(&d.scope), d.content) {
            (Some(Scope::Device(mac)), Some(content)) => Some((mac, content)),
            _ => None,
        })
        .collect())
}

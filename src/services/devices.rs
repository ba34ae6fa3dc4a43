//! Devices: identity (tokens, provisioning, pairing), check-ins and the update decision,
//! update reports, setup progress, and the operator's registry operations.
//!
//! The check-in path is kept free of per-request writes: devices are looked up through a
//! short-lived cache keyed by token digest, builds per product are cached, and `last_seen`
//! is buffered and written in batches by `flush_presence`. Writes happen only when something
//! changed (a new version, a new offer, a report).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac as _};
use indexmap::IndexMap;
use serde_json::{Value, json};
use sha2::Sha256;

use super::Core;
use super::fleet::{ActiveDevice, FleetIndex};
use super::limiter::AuthLimiter;
use super::rollouts;
use crate::domain::device::{self, Device, Product, Provisioning, UpdateAttempt, UpdateState};
use crate::domain::firmware::{Artifact, Channel, HardwareId, Product as ProductName};
use crate::domain::mac::Mac;
use crate::domain::update::{self, Decision, NoUpdate, Releases, RolloutOffer};
use crate::domain::version::Version;
use crate::domain::{Error, Result, secret};
use crate::storage::{ArtifactFilter, ArtifactSort, AttemptOffer, DevicePatch, DeviceReport, NewDevice, RolloutSlot};

/// Device-related settings.
#[derive(Debug, Clone)]
pub struct DevicePolicy {
    pub offline_after: Duration,
    pub default_poll_interval_s: u32,
    pub default_provisioning: Provisioning,
    pub pairing_ttl: Duration,
    pub retry_failed_after: Duration,
    pub download_url_ttl: Duration,
    /// Devices kept in each replica's fleet index (see `services::fleet`).
    pub cache_entries: usize,
    /// Most `last_seen` rows written per second; the rest wait in memory, oldest first.
    pub presence_writes_per_sec: usize,
}

impl Default for DevicePolicy {
    fn default() -> Self {
        DevicePolicy {
            offline_after: Duration::from_secs(600),
            default_poll_interval_s: 3600,
            default_provisioning: Provisioning::Open,
            pairing_ttl: Duration::from_secs(600),
            retry_failed_after: Duration::from_secs(3600),
            download_url_ttl: Duration::from_secs(24 * 3600),
            cache_entries: 1_000_000,
            presence_writes_per_sec: 1_000,
        }
    }
}

/// How long a replica trusts its cached view of a product's builds or policy. Bounds how
/// stale another replica's change can look here.
const CACHE_TTL: Duration = Duration::from_secs(5);

/// A product's builds and when they were read.
type CachedBuilds = (Arc<Vec<Artifact>>, Instant);
/// A device's latest telemetry message and when it arrived.
type Telemetry = (DateTime<Utc>, Value);
/// When a device was last heard from, and from which address.
type Presence = (DateTime<Utc>, Option<String>);
/// When a device was last heard from, and the `last_seen` and address last buffered for
/// writing (or found stored).
struct Heard {
    seen: DateTime<Utc>,
    written: DateTime<Utc>,
    written_ip: Option<IpAddr>,
}

/// In-memory state of the device subsystem (per process).
pub struct DeviceRuntime {
    pub policy: DevicePolicy,
    pub limiter: AuthLimiter,
    signing_key: [u8; 32],
    fleet: RwLock<FleetIndex>,
    builds: RwLock<HashMap<String, CachedBuilds>>,
    products: RwLock<HashMap<String, (Product, Instant)>>,
    /// `last_seen` values waiting to be written, in the order they first waited.
    presence: Mutex<IndexMap<Arc<str>, Presence>>,
    /// Devices heard from recently: when last heard, and when `last_seen` was last buffered
    /// for writing.
    online: Mutex<HashMap<Arc<str>, Heard>>,
    /// Devices with an open MQTT session (as this replica heard through `status`): online
    /// until they disconnect, however long they stay silent.
    connected: Mutex<HashSet<Arc<str>>>,
    /// When MQTT devices disconnected: offline from then on, until heard from again.
    disconnected: Mutex<HashMap<Arc<str>, DateTime<Utc>>>,
    /// The latest MQTT telemetry message of each device (at most `cache_entries`).
    telemetry: Mutex<IndexMap<Arc<str>, Telemetry>>,
    /// Devices changed on any replica, as `follow_device_changes` reads them from the change
    /// log once a second (the embedded broker re-checks their sessions' tokens).
    pub changed: tokio::sync::broadcast::Sender<Arc<[String]>>,
}

impl DeviceRuntime {
    pub fn new(policy: DevicePolicy, signing_key: [u8; 32]) -> Self {
        DeviceRuntime {
            fleet: RwLock::new(FleetIndex::new(policy.cache_entries)),
            policy,
            limiter: AuthLimiter::default(),
            signing_key,
            builds: RwLock::default(),
            products: RwLock::default(),
            presence: Mutex::default(),
            online: Mutex::default(),
            connected: Mutex::default(),
            disconnected: Mutex::default(),
            telemetry: Mutex::default(),
            changed: tokio::sync::broadcast::channel(64).0,
        }
    }

    pub(super) fn forget_device(&self, device_id: &str) {
        self.fleet.write().expect("fleet lock").forget(device_id);
    }

    /// Devices in this replica's fleet index.
    pub fn indexed_devices(&self) -> usize {
        self.fleet.read().expect("fleet lock").len()
    }

    /// Drops cached builds of a product (after an upload, edit or delete on this replica).
    pub fn forget_builds(&self, product: &str) {
        self.builds.write().expect("cache lock").remove(product);
    }

    /// The freshest known `last_seen` of a device (buffered or stored).
    pub fn last_seen(&self, device: &Device) -> Option<DateTime<Utc>> {
        let buffered = self.presence.lock().expect("presence lock").get(device.id.as_str()).map(|(at, _)| *at);
        let heard = self.online.lock().expect("online lock").get(device.id.as_str()).map(|heard| heard.seen);
        let buffered = buffered.max(heard);
        match (buffered, device.last_seen) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// The freshest known address of a device (buffered or stored).
    pub fn ip(&self, device: &Device) -> Option<String> {
        // The buffer, else what this replica last buffered (also while a flush is in flight,
        // when the value is in neither the buffer nor the database yet), else the database.
        let buffered = self.presence.lock().expect("presence lock").get(device.id.as_str()).and_then(|(_, ip)| ip.clone());
        buffered
            .or_else(|| {
                self.online.lock().expect("online lock").get(device.id.as_str()).and_then(|heard| heard.written_ip).map(|ip| ip.to_string())
            })
            .or_else(|| device.ip.clone())
    }

    pub fn is_online(&self, device: &Device) -> bool {
        if self.is_connected(&device.id) {
            return true;
        }
        let offline_after = chrono::Duration::from_std(self.policy.offline_after).unwrap_or(chrono::Duration::MAX);
        let gone = self.disconnected.lock().expect("disconnected lock").get(device.id.as_str()).copied();
        self.last_seen(device).is_some_and(|seen| Utc::now() - seen < offline_after && gone.is_none_or(|gone| seen > gone))
    }
}

impl DeviceRuntime {
    /// True while the device holds an MQTT session.
    pub fn is_connected(&self, device_id: &str) -> bool {
        self.connected.lock().expect("connected lock").contains(device_id)
    }

    /// Devices holding an MQTT session, as this replica knows them.
    pub fn connected_devices(&self) -> Vec<Arc<str>> {
        self.connected.lock().expect("connected lock").iter().cloned().collect()
    }

    /// The latest telemetry message of a device, when this replica received one.
    pub fn latest_telemetry(&self, device_id: &str) -> Option<(DateTime<Utc>, Value)> {
        self.telemetry.lock().expect("telemetry lock").get(device_id).cloned()
    }
}

/// Drops a device from this replica's fleet index (it is read again on its next check-in).
pub fn forget_cached_device(core: &Core, device_id: &str) {
    core.devices.forget_device(device_id);
}

// ---- identity ----

/// The device a token belongs to, from the fleet index (or the database on a miss).
/// Failures count against the caller's address.
pub async fn authenticate(core: &Core, token: Option<&str>, ip: IpAddr) -> Result<Arc<ActiveDevice>> {
    let runtime = &core.devices;
    runtime.limiter.check(ip)?;
    let Some(token) = token.filter(|t| !t.is_empty() && t.len() <= 256) else {
        return Err(Error::Unauthenticated(
            "a device token is required: send `Authorization: Bearer <token>` or `X-Device-Token: <token>`".into(),
        ));
    };
    match device_of_token(core, token).await? {
        Some(device) => Ok(device),
        None => {
            runtime.limiter.record_failure(ip);
            Err(Error::Unauthenticated("the device token is not valid".into()))
        }
    }
}

/// The device a token belongs to, if any, without counting a miss as a failed login (for
/// callers that try a credential as a token first, like the MQTT broker).
pub async fn device_of_token(core: &Core, token: &str) -> Result<Option<Arc<ActiveDevice>>> {
    let runtime = &core.devices;
    let digest = secret::digest(token);
    if let Some(device) = runtime.fleet.read().expect("fleet lock").get(&digest) {
        return Ok(Some(device));
    }
    // The digest lookup is an exact match on a unique index of SHA-256 digests of random
    // tokens: equal digests mean equal tokens, and timing reveals nothing usable.
    Ok(core
        .store
        .find_active_device(&hex::encode(digest))
        .await?
        .map(|row| runtime.fleet.write().expect("fleet lock").insert(digest, ActiveDevice::from_row(row))))
}

/// Loads every device that holds a token into the fleet index (up to its capacity), so that
/// check-ins after a restart do not each read the database. Runs in the background at start.
pub async fn preload_fleet(core: &Core) -> Result<usize> {
    const PAGE: u32 = 2_000;
    let mut after = String::new();
    let mut loaded = 0;
    loop {
        let page = core.store.list_active_devices(&after, PAGE).await?;
        let Some((_, last)) = page.last() else { break };
        after = last.id.clone();
        let last_page = page.len() < PAGE as usize;
        let index_full = {
            let mut fleet = core.devices.fleet.write().expect("fleet lock");
            for (token_hash, row) in page {
                if fleet.len() >= fleet.capacity() {
                    break;
                }
                let Some(digest) = secret::parse_digest_hex(&token_hash) else { continue };
                if fleet.get(&digest).is_none() {
                    fleet.insert(digest, ActiveDevice::from_row(row));
                    loaded += 1;
                }
            }
            fleet.len() >= fleet.capacity()
        };
        if last_page || index_full {
            break;
        }
        // Let check-ins in between pages.
        tokio::task::yield_now().await;
    }
    Ok(loaded)
}

/// The product's policy, or the default policy for products nobody configured. Cached
/// briefly: it is read on every check-in.
pub async fn product_policy(core: &Core, name: &str) -> Result<Product> {
    if let Some((product, fetched)) = core.devices.products.read().expect("cache lock").get(name)
        && fetched.elapsed() < CACHE_TTL
    {
        return Ok(product.clone());
    }
    let product = load_product_policy(core, name).await?;
    core.devices.products.write().expect("cache lock").insert(name.to_string(), (product.clone(), Instant::now()));
    Ok(product)
}

async fn load_product_policy(core: &Core, name: &str) -> Result<Product> {
    if let Some(product) = core.store.find_product(name).await? {
        return Ok(product);
    }
    let now = Utc::now();
    Ok(Product {
        name: name.to_string(),
        provisioning: core.devices.policy.default_provisioning,
        provision_key: None,
        provision_secret_hash: None,
        poll_interval_s: core.devices.policy.default_poll_interval_s,
        hardware: Vec::new(),
        public_secrets: false,
        created_at: now,
        updated_at: now,
    })
}

pub struct ProvisionRequest {
    pub mac: String,
    pub product: Option<String>,
    pub hardware: Option<String>,
    pub version: Option<String>,
    pub provision_key: Option<String>,
    pub provision_secret: Option<String>,
    pub name: Option<String>,
    /// The device's current token, which lets a device that holds one provision again.
    pub current_token: Option<String>,
    /// A pair key, which lets a device that holds a token provision again (and pairs it).
    pub pair_key: Option<String>,
}

pub struct Provisioned {
    pub device: Device,
    pub token: String,
    pub poll_interval_s: u32,
    pub created: bool,
}

/// Why a device that already holds a token may be given a new one.
enum Reprovision {
    /// It presented its current token.
    OwnToken,
    /// An operator opened a window for it (`reprovision_until`), now used up.
    OperatorWindow,
    /// It presented a pair key; it is now paired with the key's owner.
    PairKey(String),
}

/// Gives a device a token according to its product's provisioning mode. A new token
/// revokes the previous one.
///
/// An unknown device is created when the mode allows it (`open`; `key` with the product's key
/// and secret). A device that already holds a token gets a new one only when it proves it may:
/// its current token, a pair key, or a re-provisioning window an operator opened. Knowing a
/// device's MAC is not enough to take its identity.
pub async fn provision(core: &Core, request: ProvisionRequest, ip: IpAddr) -> Result<Provisioned> {
    core.devices.limiter.check(ip)?;
    let mac = Mac::parse(&request.mac)?;
    let existing = core.store.find_device_by_mac(&mac).await?;

    // With a provisioning key, the key names the product.
    let keyed_product = match &request.provision_key {
        Some(key) => core.store.find_product_by_provision_key(key).await?,
        None => None,
    };
    let product_name = match (&keyed_product, &request.product, existing.as_ref().and_then(|d| d.product.clone())) {
        (Some(product), _, _) => product.name.clone(),
        (None, Some(name), _) => ProductName::parse(name)?.as_str().to_string(),
        (None, None, Some(name)) => name,
        (None, None, None) => return Err(Error::invalid("missing_product", "`product` is required to provision a device")),
    };
    let product = match keyed_product {
        Some(product) => product,
        None => load_product_policy(core, &product_name).await?,
    };

    match product.provisioning {
        Provisioning::Open => {}
        Provisioning::Key => {
            let valid = match (&request.provision_key, &request.provision_secret, &product.provision_key, &product.provision_secret_hash) {
                (Some(key), Some(secret_text), Some(expected_key), Some(expected_hash)) => {
                    let expected_digest = secret::parse_digest_hex(expected_hash);
                    secret::constant_time_eq(key, expected_key) && expected_digest.is_some_and(|d| secret::verify(secret_text, &d))
                }
                _ => false,
            };
            if !valid {
                core.devices.limiter.record_failure(ip);
                return Err(Error::Forbidden(format!("product `{}` requires a valid provision_key and provision_secret", product.name)));
            }
        }
        Provisioning::Preregistered => {
            if existing.is_none() {
                core.devices.limiter.record_failure(ip);
                return Err(Error::Forbidden(format!(
                    "product `{}` only provisions devices an operator registered; {mac} is not registered",
                    product.name
                )));
            }
        }
    }
    if let Some(device) = &existing
        && let Some(product_of_device) = &device.product
        && *product_of_device != product.name
    {
        return Err(Error::conflict(
            "product_mismatch",
            format!("{mac} is registered for product `{product_of_device}`, not `{}`", product.name),
        ));
    }

    let mut hardware = request.hardware.as_deref().map(HardwareId::parse).transpose()?.map(|h| h.as_str().to_string());
    if let Some(claimed) = &hardware {
        device::check_hardware_claim(existing.as_ref().and_then(|d| d.hardware.as_deref()), claimed, Some(&product))?;
    } else if existing.as_ref().is_none_or(|d| d.hardware.is_none()) {
        hardware = product.sole_hardware().map(str::to_string);
    }
    if let Some(version) = &request.version {
        Version::parse(version).map_err(|e| Error::invalid("invalid_version", e.to_string()))?;
    }
    let reprovision = match &existing {
        Some(device) if device.has_token => Some(reprovision_proof(core, device, &request, ip).await?),
        _ => None,
    };
    let token = secret::generate("upd_dev_");
    let token_hash = secret::digest_hex(&token);
    let (device, created) = match existing {
        Some(device) => {
            core.store.set_device_token(&device.id, Some(&token_hash)).await?;
            core.store
                .record_report(
                    &device.id,
                    &DeviceReport {
                        version: request.version.clone(),
                        product: Some(product.name.clone()),
                        hardware: hardware.clone(),
                        attributes: None,
                    },
                )
                .await?;
            if let Some(Reprovision::PairKey(owner)) = &reprovision {
                core.store.update_device(&device.id, &DevicePatch { owner: Some(Some(owner.clone())), ..Default::default() }).await?;
                core.events.publish("device.paired", Some(&device.id), json!({"owner": owner}));
            }
            core.devices.forget_device(&device.id);
            let device = core.store.find_device(&device.id).await?.ok_or_else(|| Error::not_found("device", &device.id))?;
            let by = match reprovision {
                None => "provisioning",
                Some(Reprovision::OwnToken) => "provisioning with its token",
                Some(Reprovision::OperatorWindow) => "provisioning in an operator's window",
                Some(Reprovision::PairKey(_)) => "provisioning with a pair key",
            };
            core.events.publish("device.token_issued", Some(&device.id), json!({"mac": device.mac.canonical(), "by": by}));
            (device, false)
        }
        None => {
            let name = match &request.name {
                Some(name) => device::check_text("name", "invalid_name", name, 128)?,
                None => mac.canonical(),
            };
            let device = core
                .store
                .insert_device(&NewDevice {
                    mac,
                    name,
                    product: Some(product.name.clone()),
                    hardware,
                    channel: Channel::DEFAULT.into(),
                    version: request.version.clone(),
                    target_version: None,
                    tags: Vec::new(),
                    attributes: json!({}),
                    metadata: json!({}),
                    owner: None,
                    token_hash: Some(token_hash),
                })
                .await?;
            core.events.publish("device.created", Some(&device.id), json!({"mac": device.mac.canonical(), "by": "provisioning"}));
            (device, true)
        }
    };
    tracing::info!(device_id = %device.id, mac = %device.mac, product = %product.name, created, "device provisioned");
    Ok(Provisioned { device, token, poll_interval_s: product.poll_interval_s, created })
}

/// The proof that lets a device holding a token provision again, or 409 `device_has_token`
/// (counted as a failed authentication: guessing MACs must not pay).
async fn reprovision_proof(core: &Core, device: &Device, request: &ProvisionRequest, ip: IpAddr) -> Result<Reprovision> {
    if let Some(token) = request.current_token.as_deref().filter(|t| !t.is_empty() && t.len() <= 256) {
        if device_of_token(core, token).await?.is_some_and(|d| *d.id == device.id) {
            return Ok(Reprovision::OwnToken);
        }
        core.devices.limiter.record_failure(ip);
        return Err(Error::Unauthenticated(format!("the token sent is not {}'s current token", device.mac)));
    }
    if let Some(key) = &request.pair_key {
        let digest = secret::digest_hex(&normalize_pair_key(key));
        return match core.store.claim_pairing(&digest, &device.id).await? {
            Some(owner) => Ok(Reprovision::PairKey(owner)),
            None => {
                core.devices.limiter.record_failure(ip);
                Err(Error::conflict("invalid_pair_key", "the pair key is unknown, expired or already used"))
            }
        };
    }
    if core.store.take_reprovision_window(&device.id, Utc::now()).await? {
        return Ok(Reprovision::OperatorWindow);
    }
    core.devices.limiter.record_failure(ip);
    tracing::warn!(device_id = %device.id, mac = %device.mac, %ip, "provisioning refused: the device already holds a token");
    Err(Error::conflict(
        "device_has_token",
        format!(
            "{} already has a token. To provision it again, send its current token (`Authorization: Bearer`) or a pair key \
             (`pair_key`); or an operator allows it (PATCH /api/v1/devices/{{id}} with `reprovision_until`) or issues a token \
             (POST /api/v1/devices/{{id}}/token)",
            device.mac
        ),
    ))
}

/// Issues (or rotates) a device's token from the admin API.
pub async fn issue_token(core: &Core, device_id: &str) -> Result<(Device, String)> {
    let token = secret::generate("upd_dev_");
    if !core.store.set_device_token(device_id, Some(&secret::digest_hex(&token))).await? {
        return Err(Error::not_found("device", device_id));
    }
    core.devices.forget_device(device_id);
    let device = core.store.find_device(device_id).await?.ok_or_else(|| Error::not_found("device", device_id))?;
    core.events.publish("device.token_issued", Some(device_id), json!({"mac": device.mac.canonical(), "by": "operator"}));
    Ok((device, token))
}

/// Revokes a device's token from the admin API: it stops working at once, over HTTP and MQTT.
/// The device can get a new one only through an operator (a new token, or a re-provisioning
/// window).
pub async fn revoke_token(core: &Core, device_id: &str) -> Result<Device> {
    if !core.store.set_device_token(device_id, None).await? {
        return Err(Error::not_found("device", device_id));
    }
    core.devices.forget_device(device_id);
    let device = core.store.find_device(device_id).await?.ok_or_else(|| Error::not_found("device", device_id))?;
    core.events.publish("device.token_revoked", Some(device_id), json!({"mac": device.mac.canonical(), "by": "operator"}));
    tracing::info!(device_id, "device token revoked");
    Ok(device)
}

// ---- pairing and setup ----

/// A new single-use pair key for `owner`.
pub async fn create_pair_key(core: &Core, owner: &str, ttl: Option<Duration>) -> Result<(String, DateTime<Utc>)> {
    let owner = device::check_text("owner", "invalid_owner", owner, 128)?;
    if owner.is_empty() {
        return Err(Error::invalid("invalid_owner", "owner is required"));
    }
    let ttl = ttl.unwrap_or(core.devices.policy.pairing_ttl);
    if ttl < Duration::from_secs(30) || ttl > Duration::from_secs(24 * 3600) {
        return Err(Error::invalid("invalid_ttl", "ttl_s must be between 30 and 86400"));
    }
    let key = pair_key();
    let expires_at = Utc::now() + chrono::Duration::from_std(ttl).expect("bounded ttl");
    core.store.insert_pairing(&secret::digest_hex(&normalize_pair_key(&key)), &owner, expires_at).await?;
    Ok((key, expires_at))
}

/// Eight characters from an alphabet without look-alikes (about 40 bits): short enough to
/// type, and with single use, expiry and rate limiting, long enough not to be guessed.
fn pair_key() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";
    let mut rng = rand::rng();
    let chars: String = (0..8).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect();
    format!("{}-{}", &chars[..4], &chars[4..])
}

fn normalize_pair_key(key: &str) -> String {
    key.trim().to_ascii_uppercase().replace('-', "")
}

/// Binds a device to the owner of a pair key.
pub async fn pair(core: &Core, device: &ActiveDevice, key: &str, ip: IpAddr) -> Result<String> {
    core.devices.limiter.check(ip)?;
    let digest = secret::digest_hex(&normalize_pair_key(key));
    let Some(owner) = core.store.claim_pairing(&digest, &device.id).await? else {
        core.devices.limiter.record_failure(ip);
        return Err(Error::conflict("invalid_pair_key", "the pair key is unknown, expired or already used"));
    };
    // The fleet index does not hold the owner: nothing to forget.
    core.store.update_device(&device.id, &DevicePatch { owner: Some(Some(owner.clone())), ..Default::default() }).await?;
    core.events.publish("device.paired", Some(&device.id), json!({"owner": owner}));
    tracing::info!(device_id = %device.id, %owner, "device paired");
    Ok(owner)
}

pub async fn report_setup(core: &Core, device: &ActiveDevice, code: i64, title: Option<&str>, description: Option<&str>) -> Result<()> {
    let (code, title) = device::check_setup_report(code, title)?;
    let description = device::check_text("description", "invalid_setup_status", description.unwrap_or(""), 1024)?;
    core.store.insert_setup_event(&device.id, code, &title, &description).await?;
    core.events.publish("device.setup_status", Some(&device.id), json!({"status_code": code, "title": title, "description": description}));
    Ok(())
}

// ---- check-in and updates ----

#[derive(Default)]
pub struct CheckinReport {
    pub version: Option<String>,
    pub product: Option<String>,
    pub hardware: Option<String>,
    pub attributes: Option<Value>,
}

pub struct Offer {
    pub artifact: Artifact,
    pub attempt_id: String,
    /// The release's id; for a build that belongs to no release, the build's own id.
    pub release_id: String,
    /// Pins and forced rollouts.
    pub mandatory: bool,
}

pub struct CheckinAnswer {
    pub offer: Option<Offer>,
    pub no_update: Option<NoUpdate>,
    pub poll_interval_s: u32,
}

/// Records a check-in and decides whether the device should update.
pub async fn checkin(core: &Core, device: Arc<ActiveDevice>, report: CheckinReport, ip: Option<IpAddr>) -> Result<CheckinAnswer> {
    let runtime = &core.devices;
    let now = Utc::now();

    // Validate what the device reports before anything is recorded: a refused check-in
    // changes nothing.
    if let Some(version) = &report.version {
        Version::parse(version).map_err(|e| Error::invalid("invalid_version", e.to_string()))?;
    }
    let product = report.product.as_deref().map(ProductName::parse).transpose()?.map(|p| p.as_str().to_string());
    let hardware = report.hardware.as_deref().map(HardwareId::parse).transpose()?.map(|h| h.as_str().to_string());
    check_claims(core, &device, product.as_deref(), hardware.as_deref()).await?;
    mark_seen(core, &device, now, ip);

    // Apply what the device reports, writing only what changed.
    let (attributes, reported_attributes) = match &report.attributes {
        Some(reported) => {
            device::check_json_object("attributes", reported)?;
            let hash = attributes_hash(reported);
            if hash == device.reported_attributes {
                // The same object as last time: merging it again changes nothing.
                (None, hash)
            } else {
                let stored = core.store.find_device(&device.id).await?.ok_or_else(|| Error::not_found("device", &*device.id))?;
                let merged = device::merge_attributes(&stored.attributes, reported);
                ((merged != stored.attributes).then_some(merged), hash)
            }
        }
        None => (None, device.reported_attributes),
    };
    let changed = DeviceReport {
        version: report.version.clone().filter(|v| device.version.as_deref() != Some(v.as_str())),
        product: product.filter(|p| device.product.as_deref() != Some(p.as_str())),
        hardware: hardware.filter(|h| device.hardware.as_deref() != Some(h.as_str())),
        attributes,
    };
    let anything_changed =
        changed.version.is_some() || changed.product.is_some() || changed.hardware.is_some() || changed.attributes.is_some();
    let device = if anything_changed || reported_attributes != device.reported_attributes {
        let mut updated = (*device).clone();
        if anything_changed {
            core.store.record_report(&device.id, &changed).await?;
        }
        if let Some(v) = &changed.version {
            updated.version = Some(v.as_str().into());
        }
        if let Some(p) = &changed.product {
            updated.product = Some(p.as_str().into());
        }
        if let Some(h) = &changed.hardware {
            updated.hardware = Some(h.as_str().into());
        }
        updated.reported_attributes = reported_attributes;
        runtime.fleet.write().expect("fleet lock").replace(updated.clone());
        if anything_changed {
            core.events.publish(
                "device.updated",
                Some(&updated.id),
                json!({"version": updated.version.as_deref(), "product": updated.product.as_deref(), "hardware": updated.hardware.as_deref()}),
            );
        }
        Arc::new(updated)
    } else {
        device
    };

    // A reported version equal to the current attempt's target completes it. A device that
    // reported `installed` and now reports another version did not boot the new build (its
    // bootloader went back): the attempt failed.
    if (changed.version.is_some() || (device.awaiting_boot && report.version.is_some()))
        && let Some(attempt) = core.store.current_attempt(&device.id).await?
    {
        let reported = device.version.as_deref().and_then(|v| Version::parse(v).ok());
        let target = Version::parse(&attempt.to_version).ok();
        let outcome = if attempt.state.is_final() || reported.is_none() {
            None
        } else if reported == target {
            Some((UpdateState::Succeeded, None))
        } else if attempt.state == UpdateState::Installed {
            let running = device.version.as_deref().unwrap_or_default();
            Some((UpdateState::Failed, Some(format!("boot failure: the device runs {running} after installing {}", attempt.to_version))))
        } else {
            None
        };
        if let Some((state, message)) = outcome {
            let progress = (state == UpdateState::Succeeded).then_some(100);
            core.store.set_attempt_state(&attempt.id, state, progress, message.as_deref()).await?;
            core.events.publish(
                "device.update_status",
                Some(&device.id),
                json!({"release_id": attempt.release_id, "rollout_id": attempt.rollout_id, "state": state.as_str(), "message": message, "version": attempt.to_version}),
            );
        }
    }
    let device = if device.awaiting_boot {
        let mut updated = (*device).clone();
        updated.awaiting_boot = false;
        runtime.fleet.write().expect("fleet lock").replace(updated.clone());
        Arc::new(updated)
    } else {
        device
    };

    let (poll_interval_s, decided) = decide_for(core, &device, now).await?;
    let answer = match decided {
        Err(reason) => CheckinAnswer { offer: None, no_update: Some(reason), poll_interval_s },
        Ok(chosen) => match offer_attempt(core, &device, &chosen.artifact, chosen.rollout.as_ref(), chosen.rollouts.as_deref()).await? {
            Some(attempt) => CheckinAnswer {
                offer: Some(Offer {
                    artifact: chosen.artifact,
                    attempt_id: attempt.id,
                    release_id: attempt.release_id,
                    mandatory: chosen.mandatory,
                }),
                no_update: None,
                poll_interval_s,
            },
            None => CheckinAnswer { offer: None, no_update: Some(NoUpdate::UpToDate), poll_interval_s },
        },
    };
    if core.events.active() {
        core.events.publish(
            "device.checkin",
            Some(&device.id),
            json!({"version": device.version.as_deref(), "offered": answer.offer.as_ref().map(|o| o.artifact.version.clone())}),
        );
    }
    Ok(answer)
}

/// Refuses a check-in that names another product than the device's, or another hardware than
/// its product admits (see `device::check_product_claim`); logged, as it is either a
/// misconfigured device or one trying to reach another product's builds and secrets.
async fn check_claims(core: &Core, device: &ActiveDevice, product: Option<&str>, hardware: Option<&str>) -> Result<()> {
    let claimed_product = match product {
        Some(name) if device.product.as_deref() != Some(name) => {
            let policy = product_policy(core, name).await?;
            if let Err(e) = device::check_product_claim(device.product.as_deref(), &policy) {
                tracing::warn!(device_id = %device.id, product = ?device.product.as_deref(), claimed = name, "check-in refused: it names another product");
                return Err(e);
            }
            Some(policy)
        }
        _ => None,
    };
    if let Some(hardware) = hardware.filter(|h| device.hardware.as_deref() != Some(*h)) {
        let policy = match (claimed_product, &device.product) {
            (Some(policy), _) => Some(policy),
            (None, Some(name)) => Some(product_policy(core, name).await?),
            (None, None) => None,
        };
        if let Err(e) = device::check_hardware_claim(device.hardware.as_deref(), hardware, policy.as_ref()) {
            tracing::warn!(device_id = %device.id, hardware = ?device.hardware.as_deref(), claimed = hardware, "check-in refused: it names hardware its product does not admit");
            return Err(e);
        }
    }
    Ok(())
}

/// A hash of a reported attributes object, to notice a device reporting the same one again.
fn attributes_hash(value: &Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.to_string().hash(&mut hasher);
    // 0 means "unknown".
    hasher.finish().max(1)
}

/// The build a device should be offered now (with the rollout offering it), or why none.
struct Chosen {
    artifact: Artifact,
    mandatory: bool,
    rollout: Option<RolloutOffer>,
    rollouts: Option<Arc<rollouts::ProductRollouts>>,
}

/// The update decision for a device as it is now, and its poll interval: what a check-in
/// answers and what an MQTT push sends, before any attempt is opened.
async fn decide_for(core: &Core, device: &ActiveDevice, now: DateTime<Utc>) -> Result<(u32, std::result::Result<Chosen, NoUpdate>)> {
    let poll_interval_s = match &device.product {
        Some(product) => product_policy(core, product).await?.poll_interval_s,
        None => core.devices.policy.default_poll_interval_s,
    };
    let builds = match &device.product {
        Some(product) => builds_of(core, product).await?,
        None => Arc::new(Vec::new()),
    };
    let facts = device.facts();
    let rollouts = device.product.as_deref().and_then(|product| rollouts::of_product(core, product));
    let offers: Vec<RolloutOffer> = rollouts.as_ref().and_then(|r| r.offer_for(device, facts.version.as_ref(), now)).into_iter().collect();
    let releases = Releases { held: rollouts.as_ref().map(|r| &r.held), offers: &offers };
    let decided = match update::decide(&facts, &builds, releases) {
        Decision::None(reason) => Err(reason),
        Decision::Offer { artifact, mandatory, rollout, .. } => {
            Ok(Chosen { artifact: artifact.clone(), mandatory, rollout: rollout.cloned(), rollouts: rollouts.clone() })
        }
    };
    Ok((poll_interval_s, decided))
}

/// What an offer of `artifact` does, given the device's current attempt: reuse that attempt
/// when it is for this build and still open; nothing when the device failed or rejected the
/// build recently (devices such as the ThingsBoard SDK retry at once, forever); otherwise a
/// new attempt. A device that failed (or timed out) in a rollout is not offered its release by
/// it again. A rollout's offer to a device it did not offer before takes one of its download
/// slots; none left, no offer this time.
enum AttemptPlan<'a> {
    Reuse(UpdateAttempt),
    Refuse,
    Open { release_id: &'a str, slot: Option<RolloutSlot<'a>> },
}

async fn plan_attempt<'a>(
    core: &Core,
    device_id: &str,
    artifact: &'a Artifact,
    rollout: Option<&'a RolloutOffer>,
    rollouts: Option<&rollouts::ProductRollouts>,
    current: Option<UpdateAttempt>,
) -> Result<AttemptPlan<'a>> {
    if let Some(attempt) = current
        && attempt.artifact_id == artifact.id
    {
        if !attempt.state.is_final() {
            return Ok(AttemptPlan::Reuse(attempt));
        }
        let retry_after = chrono::Duration::from_std(core.devices.policy.retry_failed_after).unwrap_or(chrono::Duration::MAX);
        if matches!(attempt.state, UpdateState::Failed | UpdateState::Rejected) && Utc::now() - attempt.updated_at < retry_after {
            return Ok(AttemptPlan::Refuse);
        }
    }
    let slot = match (rollout, rollouts) {
        (Some(offer), Some(rollouts)) => {
            // A device that failed (or timed out) in this rollout is not offered its release by
            // it again: it stays failed. A pin or another rollout can include it again.
            if core.store.rollout_member_state(&offer.rollout_id, device_id).await?.is_some_and(|state| state.is_failure()) {
                return Ok(AttemptPlan::Refuse);
            }
            if !rollouts.take_slot(&offer.rollout_id) {
                return Ok(AttemptPlan::Refuse);
            }
            Some(RolloutSlot {
                rollout_id: &offer.rollout_id,
                stage: offer.stage,
                deadline_s: rollouts.deadline_s(&offer.rollout_id).unwrap_or(core.rollouts.policy.device_deadline.as_secs()),
            })
        }
        _ => None,
    };
    Ok(AttemptPlan::Open { release_id: rollout.map(|r| &*r.release_id).unwrap_or(&artifact.id), slot })
}

fn publish_offered(core: &Core, device_id: &str, release_id: &str, rollout: Option<&RolloutOffer>, artifact: &Artifact) {
    core.events.publish(
        "device.update_status",
        Some(device_id),
        json!({"release_id": release_id, "rollout_id": rollout.map(|r| &*r.rollout_id), "state": "offered", "version": artifact.version}),
    );
}

/// The attempt backing an offer (see [`AttemptPlan`]).
async fn offer_attempt(
    core: &Core,
    device: &ActiveDevice,
    artifact: &Artifact,
    rollout: Option<&RolloutOffer>,
    rollouts: Option<&rollouts::ProductRollouts>,
) -> Result<Option<UpdateAttempt>> {
    let current = core.store.current_attempt(&device.id).await?;
    let replacing = current.as_ref().map(|a| a.id.clone());
    let (release_id, slot) = match plan_attempt(core, &device.id, artifact, rollout, rollouts, current).await? {
        AttemptPlan::Reuse(attempt) => return Ok(Some(attempt)),
        AttemptPlan::Refuse => return Ok(None),
        AttemptPlan::Open { release_id, slot } => (release_id, slot),
    };
    let opened = core
        .store
        .open_attempt(&AttemptOffer {
            device_id: &device.id,
            artifact_id: &artifact.id,
            release_id,
            from_version: device.version.as_deref(),
            to_version: &artifact.version,
            rollout: slot,
            replacing: replacing.as_deref(),
        })
        .await?;
    let Some(attempt) = opened else {
        // A concurrent check-in of this device opened an attempt first: answer with it when
        // it is for this build (the download slot, if one was taken, is recounted later).
        let current = core.store.current_attempt(&device.id).await?;
        return Ok(current.filter(|a| a.artifact_id == artifact.id && !a.state.is_final()));
    };
    publish_offered(core, &device.id, release_id, rollout, artifact);
    Ok(Some(attempt))
}

/// What each of these devices would be answered if it checked in now without news: the
/// server's own re-evaluation, for MQTT pushes. Unlike a check-in it does not mark anybody
/// seen, and it batches its IO: one query per [`ATTEMPT_BATCH`] devices for the current
/// attempts and one transaction per as many new attempts.
pub async fn offers_for(core: &Core, devices: &[Arc<ActiveDevice>]) -> Result<Vec<CheckinAnswer>> {
    let now = Utc::now();
    struct Pending {
        index: usize,
        artifact: Artifact,
        mandatory: bool,
        rollout: Option<RolloutOffer>,
        rollouts: Option<Arc<rollouts::ProductRollouts>>,
    }
    let mut answers = Vec::with_capacity(devices.len());
    let mut pending = Vec::new();
    for (index, device) in devices.iter().enumerate() {
        let (poll_interval_s, decided) = decide_for(core, device, now).await?;
        match decided {
            Err(reason) => answers.push(CheckinAnswer { offer: None, no_update: Some(reason), poll_interval_s }),
            Ok(Chosen { artifact, mandatory, rollout, rollouts }) => {
                pending.push(Pending { index, artifact, mandatory, rollout, rollouts });
                answers.push(CheckinAnswer { offer: None, no_update: Some(NoUpdate::UpToDate), poll_interval_s });
            }
        }
    }
    if pending.is_empty() {
        return Ok(answers);
    }
    let ids: Vec<&str> = pending.iter().map(|p| &*devices[p.index].id).collect();
    let mut current: HashMap<String, UpdateAttempt> =
        core.store.current_attempts(&ids).await?.into_iter().map(|a| (a.device_id.clone(), a)).collect();
    let mut to_open = Vec::new();
    let mut opening = Vec::new();
    for p in &pending {
        let device = &devices[p.index];
        let seen = current.remove(&*device.id);
        let replacing = seen.as_ref().map(|a| a.id.clone());
        match plan_attempt(core, &device.id, &p.artifact, p.rollout.as_ref(), p.rollouts.as_deref(), seen).await? {
            AttemptPlan::Reuse(attempt) => {
                answers[p.index].offer = Some(Offer {
                    artifact: p.artifact.clone(),
                    attempt_id: attempt.id,
                    release_id: attempt.release_id,
                    mandatory: p.mandatory,
                });
                answers[p.index].no_update = None;
            }
            AttemptPlan::Refuse => {}
            AttemptPlan::Open { release_id, slot } => {
                opening.push((p, replacing));
                to_open.push((release_id, slot));
            }
        }
    }
    let offers: Vec<AttemptOffer<'_>> = opening
        .iter()
        .zip(&to_open)
        .map(|((p, replacing), (release_id, slot))| AttemptOffer {
            device_id: &devices[p.index].id,
            artifact_id: &p.artifact.id,
            release_id,
            from_version: devices[p.index].version.as_deref(),
            to_version: &p.artifact.version,
            rollout: *slot,
            replacing: replacing.as_deref(),
        })
        .collect();
    let opened = core.store.open_attempts(&offers).await?;
    let mut raced = Vec::new();
    for (((p, _), offer), id) in opening.iter().zip(&offers).zip(opened) {
        match id {
            Some(id) => {
                publish_offered(core, offer.device_id, offer.release_id, p.rollout.as_ref(), &p.artifact);
                answers[p.index].offer = Some(Offer {
                    artifact: p.artifact.clone(),
                    attempt_id: id,
                    release_id: offer.release_id.to_string(),
                    mandatory: p.mandatory,
                });
                answers[p.index].no_update = None;
            }
            None => raced.push(*p),
        }
    }
    if !raced.is_empty() {
        // The devices' own check-ins opened attempts meanwhile: answer with those that are
        // for the same build, as a check-in losing the same race does.
        let ids: Vec<&str> = raced.iter().map(|p| &*devices[p.index].id).collect();
        let current: HashMap<String, UpdateAttempt> =
            core.store.current_attempts(&ids).await?.into_iter().map(|a| (a.device_id.clone(), a)).collect();
        for p in raced {
            if let Some(attempt) = current.get(&*devices[p.index].id)
                && attempt.artifact_id == p.artifact.id
                && !attempt.state.is_final()
            {
                answers[p.index].offer = Some(Offer {
                    artifact: p.artifact.clone(),
                    attempt_id: attempt.id.clone(),
                    release_id: attempt.release_id.clone(),
                    mandatory: p.mandatory,
                });
                answers[p.index].no_update = None;
            }
        }
    }
    Ok(answers)
}

/// The builds of a product, from a short-lived cache.
pub async fn builds_of(core: &Core, product: &str) -> Result<Arc<Vec<Artifact>>> {
    if let Some((builds, fetched)) = core.devices.builds.read().expect("cache lock").get(product)
        && fetched.elapsed() < CACHE_TTL
    {
        return Ok(builds.clone());
    }
    let mut all = Vec::new();
    let mut offset = 0u64;
    loop {
        let filter = ArtifactFilter {
            product: Some(product.to_string()),
            sort: ArtifactSort::NewestFirst,
            limit: 500,
            offset,
            ..Default::default()
        };
        let (page, total) = core.store.list_artifacts(&filter).await?;
        offset += page.len() as u64;
        let done = page.is_empty() || offset >= total;
        all.extend(page);
        if done {
            break;
        }
    }
    let builds = Arc::new(all);
    core.devices.builds.write().expect("cache lock").insert(product.to_string(), (builds.clone(), Instant::now()));
    Ok(builds)
}

pub struct StatusReport {
    pub release_id: Option<String>,
    pub version: Option<String>,
    pub state: String,
    pub progress: Option<i64>,
    pub message: Option<String>,
}

/// Records a device's report on its current update.
pub async fn report_update(core: &Core, device: &ActiveDevice, report: StatusReport) -> Result<UpdateAttempt> {
    if report.release_id.as_deref().is_some_and(|id| id.trim().is_empty()) {
        return Err(Error::invalid("invalid_release_id", "release_id is empty: send the offer's release_id, or leave it out"));
    }
    let state = UpdateState::parse_reported(&report.state)?;
    let progress = match report.progress {
        Some(p) if (0..=100).contains(&p) => Some(p as u8),
        Some(_) => return Err(Error::invalid("invalid_progress", "progress must be between 0 and 100")),
        None => None,
    };
    let message = match &report.message {
        Some(m) => Some(device::check_text("message", "invalid_message", m, 1024)?),
        None => None,
    };
    let Some(attempt) = core.store.current_attempt(&device.id).await? else {
        return Err(Error::conflict("update_not_current", "this device has no update in progress"));
    };
    if let Some(release_id) = &report.release_id
        && *release_id != attempt.release_id
    {
        return Err(Error::conflict(
            "update_not_current",
            format!("release {release_id} is not this device's current update (that is {})", attempt.release_id),
        ));
    }
    if let Some(version) = &report.version {
        let reported = Version::parse(version).map_err(|e| Error::invalid("invalid_version", e.to_string()))?;
        if Version::parse(&attempt.to_version).ok().as_ref() != Some(&reported) {
            return Err(Error::conflict(
                "update_not_current",
                format!("version {version} is not this device's current update (that is {})", attempt.to_version),
            ));
        }
    }
    if attempt.state.is_final() {
        return Err(Error::conflict(
            "update_not_current",
            format!("the update to {} is already {}", attempt.to_version, attempt.state.as_str()),
        ));
    }
    core.store.set_attempt_state(&attempt.id, state, progress, message.as_deref()).await?;
    if state == UpdateState::Installed {
        // Its next check-in tells whether the new build booted.
        let mut updated = device.clone();
        updated.awaiting_boot = true;
        core.devices.fleet.write().expect("fleet lock").replace(updated);
    }
    mark_seen(core, device, Utc::now(), None);
    core.events.publish(
        "device.update_status",
        Some(&device.id),
        json!({"release_id": attempt.release_id, "state": state.as_str(), "progress": progress, "message": message, "version": attempt.to_version}),
    );
    // The newest attempt is the current one; read it back with its events.
    core.store.list_attempts(&device.id, 1).await?.pop().ok_or_else(|| Error::Internal(anyhow::anyhow!("attempt vanished")))
}

// ---- presence ----

fn mark_seen(core: &Core, device: &ActiveDevice, now: DateTime<Utc>, ip: Option<IpAddr>) {
    let runtime = &core.devices;
    // `last_seen` is stored at a granularity of half the offline period: a device that
    // checks in often costs one write per period, not one per request. Every replica therefore
    // sees a device online while it is (the stored value is at most half the offline period
    // old); a replica that did not serve a silent device may call it offline up to half the
    // offline period early. The replica serving it is exact.
    let granularity = chrono::Duration::from_std(runtime.policy.offline_after / 2).unwrap_or(chrono::Duration::MAX);
    let (came_online, write) = {
        let mut online = runtime.online.lock().expect("online lock");
        match online.get_mut(&*device.id) {
            Some(heard) => {
                heard.seen = now;
                let moved = ip.is_some() && ip != heard.written_ip;
                let write = moved || now - heard.written >= granularity;
                if write {
                    heard.written = now;
                    heard.written_ip = ip.or(heard.written_ip);
                }
                (false, write)
            }
            None => {
                let moved = ip.is_some() && ip != device.stored_ip;
                let stored_fresh = device.stored_last_seen.is_some_and(|stored| now - stored < granularity) && !moved;
                let written = if stored_fresh { device.stored_last_seen.unwrap_or(now) } else { now };
                online.insert(device.id.clone(), Heard { seen: now, written, written_ip: ip.or(device.stored_ip) });
                (true, !stored_fresh)
            }
        }
    };
    if write {
        runtime.presence.lock().expect("presence lock").insert(device.id.clone(), (now, ip.map(|i| i.to_string())));
    }
    if came_online {
        core.events.publish("device.online", Some(&device.id), json!({"mac": device.mac.canonical()}));
    }
}

/// Writes buffered `last_seen` values, oldest first: at most `limit` of them (the periodic
/// flush passes `presence_writes_per_sec`; shutdown passes `None`, for all). Bounding the
/// rate keeps the database's write load, and so the check-in cost, independent of how many
/// devices check in: under a flood the stored values lag, while this replica's own view
/// (online state, `last_seen` in its answers) stays exact.
pub async fn flush_presence(core: &Core, limit: Option<usize>) -> Result<usize> {
    let batch: Vec<(Arc<str>, DateTime<Utc>, Option<String>)> = {
        let mut presence = core.devices.presence.lock().expect("presence lock");
        let take = limit.unwrap_or(usize::MAX).min(presence.len());
        presence.drain(..take).map(|(id, (at, ip))| (id, at, ip)).collect()
    };
    let written = batch.len();
    if let Err(e) = core.store.record_presence(&batch).await {
        // Put them back so the next flush tries again (newer values win).
        let mut presence = core.devices.presence.lock().expect("presence lock");
        for (id, at, ip) in batch {
            presence.entry(id).or_insert((at, ip));
        }
        return Err(e);
    }
    if limit.is_some() {
        metrics::gauge!("updraft_presence_backlog").set(core.devices.presence.lock().expect("presence lock").len() as f64);
    }
    Ok(written)
}

/// Marks devices offline after `offline_after` of silence.
pub fn sweep_offline(core: &Core) -> Vec<String> {
    let cutoff = Utc::now() - chrono::Duration::from_std(core.devices.policy.offline_after).unwrap_or(chrono::Duration::MAX);
    let mut gone = Vec::new();
    let connected = core.devices.connected.lock().expect("connected lock").clone();
    core.devices.online.lock().expect("online lock").retain(|id, heard| {
        let keep = heard.seen >= cutoff || connected.contains(id);
        if !keep {
            gone.push(id.to_string());
        }
        keep
    });
    for id in &gone {
        core.events.publish("device.offline", Some(id), json!({}));
    }
    gone
}

/// Runs presence flushing and the offline sweep until the process ends.
pub fn spawn_background(core: Core) {
    // Offline transitions are noticed within a quarter of the silence period (1-5 s).
    let sweep_every = (core.devices.policy.offline_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(5));
    let core_for_changes = core.clone();
    tokio::spawn(async move {
        // Ten small batches a second rather than one large one: a write holds the database
        // (and, on SQLite, a core) for a tenth as long, which keeps check-in latency steady.
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let per_flush = core.devices.policy.presence_writes_per_sec.div_ceil(10).max(1);
        let mut last_sweep = Instant::now();
        loop {
            tick.tick().await;
            if let Err(e) = flush_presence(&core, Some(per_flush)).await {
                tracing::warn!(error = %e, "cannot write device presence; will retry");
            }
            if last_sweep.elapsed() >= sweep_every {
                sweep_offline(&core);
                last_sweep = Instant::now();
            }
        }
    });
    tokio::spawn(async move {
        // Follow changes from before the load starts, so that nothing loaded stays stale.
        let follower = tokio::spawn(follow_device_changes(core_for_changes.clone()));
        let started = Instant::now();
        match preload_fleet(&core_for_changes).await {
            Ok(loaded) => tracing::info!(devices = loaded, elapsed_ms = started.elapsed().as_millis() as u64, "fleet index loaded"),
            Err(e) => tracing::warn!(error = %e, "cannot load the fleet index; devices are read on their first check-in"),
        }
        let _ = follower.await;
    });
}

/// Drops cached devices that changed anywhere (this or another replica), once a second.
async fn follow_device_changes(core: Core) {
    // Overlap the windows: a change committed late with an earlier timestamp is still seen.
    const OVERLAP_MS: i64 = 5_000;
    let mut since = Utc::now().timestamp_millis();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_prune = Instant::now();
    loop {
        tick.tick().await;
        let now = Utc::now().timestamp_millis();
        match core.store.changed_devices_since(since - OVERLAP_MS).await {
            Ok(changes) => {
                if !changes.is_empty() {
                    let mut fleet = core.devices.fleet.write().expect("fleet lock");
                    for (device_id, _) in &changes {
                        fleet.forget(device_id);
                    }
                    drop(fleet);
                    let _ = core.devices.changed.send(changes.into_iter().map(|(device_id, _)| device_id).collect());
                }
                since = now;
            }
            Err(e) => tracing::warn!(error = %e, "cannot read device changes; cached devices may be stale"),
        }
        if last_prune.elapsed() >= Duration::from_secs(60) {
            if let Err(e) = core.store.prune_device_changes(now - 10 * 60 * 1000).await {
                tracing::warn!(error = %e, "cannot prune the device change log");
            }
            last_prune = Instant::now();
        }
    }
}

// ---- download links ----

type HmacSha256 = Hmac<Sha256>;

/// A signed, expiring query string that authorises one device to download one build.
pub fn sign_download(core: &Core, artifact_id: &str, device_id: &str) -> String {
    let expires = (Utc::now() + chrono::Duration::from_std(core.devices.policy.download_url_ttl).expect("bounded ttl")).timestamp();
    let signature = download_signature(&core.devices.signing_key, artifact_id, device_id, expires);
    format!("device={device_id}&expires={expires}&signature={signature}")
}

fn download_signature(key: &[u8; 32], artifact_id: &str, device_id: &str, expires: i64) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("download\n{artifact_id}\n{device_id}\n{expires}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Checks a signed download link; returns the device it was issued to.
pub fn verify_download(core: &Core, artifact_id: &str, device_id: &str, expires: i64, signature: &str) -> Result<()> {
    if expires < Utc::now().timestamp() {
        return Err(Error::Forbidden("the download link has expired; check in again for a new one".into()));
    }
    let Ok(signature) = hex::decode(signature) else {
        return Err(Error::Forbidden("the download link's signature is not valid".into()));
    };
    let mut mac = HmacSha256::new_from_slice(&core.devices.signing_key).expect("HMAC takes any key length");
    mac.update(format!("download\n{artifact_id}\n{device_id}\n{expires}").as_bytes());
    mac.verify_slice(&signature).map_err(|_| Error::Forbidden("the download link's signature is not valid".into()))
}

// ---- registry (admin) ----

pub struct NewDeviceRequest {
    pub mac: String,
    pub name: Option<String>,
    pub product: Option<String>,
    pub hardware: Option<String>,
    pub channel: Option<String>,
    pub version: Option<String>,
    pub target_version: Option<String>,
    pub tags: Vec<String>,
    pub metadata: Option<Value>,
    pub owner: Option<String>,
}

/// Validates and registers a device (no token; see `issue_token`).
pub async fn register(core: &Core, request: NewDeviceRequest) -> Result<Device> {
    let mac = Mac::parse(&request.mac)?;
    let name = match &request.name {
        Some(name) => device::check_text("name", "invalid_name", name, 128)?,
        None => mac.canonical(),
    };
    let product = request.product.as_deref().map(ProductName::parse).transpose()?.map(|p| p.as_str().to_string());
    let hardware = request.hardware.as_deref().map(HardwareId::parse).transpose()?.map(|h| h.as_str().to_string());
    let channel = Channel::parse(request.channel.as_deref().unwrap_or(Channel::DEFAULT))?.as_str().to_string();
    for (field, value) in [("version", &request.version), ("target_version", &request.target_version)] {
        if let Some(v) = value {
            Version::parse(v).map_err(|e| Error::invalid("invalid_version", format!("{field}: {e}")))?;
        }
    }
    let metadata = request.metadata.unwrap_or_else(|| json!({}));
    device::check_json_object("metadata", &metadata)?;
    let owner = request.owner.as_deref().map(|o| device::check_text("owner", "invalid_owner", o, 128)).transpose()?;
    let device = core
        .store
        .insert_device(&NewDevice {
            mac,
            name,
            product,
            hardware,
            channel,
            version: request.version,
            target_version: request.target_version,
            tags: device::check_tags(&request.tags)?,
            attributes: json!({}),
            metadata,
            owner,
            token_hash: None,
        })
        .await?;
    core.events.publish("device.created", Some(&device.id), json!({"mac": device.mac.canonical(), "by": "operator"}));
    Ok(device)
}

/// Finds a device by id or by MAC (any accepted form).
pub async fn find(core: &Core, id_or_mac: &str) -> Result<Device> {
    if let Some(device) = core.store.find_device(id_or_mac).await? {
        return Ok(device);
    }
    if let Ok(mac) = Mac::parse(id_or_mac)
        && let Some(device) = core.store.find_device_by_mac(&mac).await?
    {
        return Ok(device);
    }
    Err(Error::not_found("device", id_or_mac))
}

pub async fn update(core: &Core, id: &str, patch: DevicePatch) -> Result<Device> {
    if let Some(Some(version)) = &patch.target_version {
        let pin = Version::parse(version).map_err(|e| Error::invalid("invalid_version", format!("target_version: {e}")))?;
        let product = match &patch.product {
            Some(product) => product.clone(),
            None => core.store.find_device(id).await?.and_then(|d| d.product),
        };
        if let Some(product) = product
            && let Some(floor) = core.store.product_min_version(&product).await?.and_then(|f| Version::parse(&f).ok())
            && pin < floor
        {
            return Err(Error::conflict(
                "below_anti_rollback_floor",
                format!("version {pin} is below {floor}, the anti-rollback floor of product `{product}`"),
            ));
        }
    }
    let device = core.store.update_device(id, &patch).await?.ok_or_else(|| Error::not_found("device", id))?;
    core.devices.forget_device(id);
    core.events.publish("device.updated", Some(id), json!({"target_version": device.target_version, "by": "operator"}));
    Ok(device)
}

pub async fn delete(core: &Core, id: &str) -> Result<()> {
    if !core.store.delete_device(id).await? {
        return Err(Error::not_found("device", id));
    }
    core.devices.forget_device(id);
    core.devices.online.lock().expect("online lock").remove(id);
    core.events.publish("device.deleted", Some(id), json!({}));
    Ok(())
}

/// An operator's change to a product's device policy (`None`: keep the current value).
pub struct ProductChange {
    pub provisioning: Provisioning,
    pub provision_key: Option<String>,
    pub provision_secret: Option<String>,
    pub poll_interval_s: Option<u32>,
    /// The hardware the product admits; an empty list admits any.
    pub hardware: Option<Vec<String>>,
    pub public_secrets: Option<bool>,
}

/// Creates or replaces a product's device policy.
pub async fn put_product(core: &Core, name: &str, change: ProductChange) -> Result<Product> {
    let name = ProductName::parse(name)?.as_str().to_string();
    let existing = core.store.find_product(&name).await?;
    let provision_secret_hash = match (&change.provision_secret, &existing) {
        (Some(secret_text), _) => {
            if secret_text.len() < 16 {
                return Err(Error::invalid("invalid_provision_secret", "provision_secret must be at least 16 characters"));
            }
            Some(secret::digest_hex(secret_text))
        }
        (None, Some(existing)) => existing.provision_secret_hash.clone(),
        (None, None) => None,
    };
    let provision_key = change.provision_key.or_else(|| existing.as_ref().and_then(|p| p.provision_key.clone()));
    let provisioning = change.provisioning;
    if provisioning == Provisioning::Key && (provision_key.is_none() || provision_secret_hash.is_none()) {
        return Err(Error::invalid("invalid_provisioning", "provisioning `key` needs provision_key and provision_secret"));
    }
    if let Some(key) = &provision_key
        && (key.len() < 8 || key.len() > 128)
    {
        return Err(Error::invalid("invalid_provision_key", "provision_key must be 8-128 characters"));
    }
    let poll_interval_s = match change.poll_interval_s {
        Some(s) => device::check_poll_interval(s)?,
        None => existing.as_ref().map(|p| p.poll_interval_s).unwrap_or(core.devices.policy.default_poll_interval_s),
    };
    let hardware = match change.hardware {
        Some(list) => {
            if list.len() > 100 {
                return Err(Error::invalid("invalid_hardware", "a product admits at most 100 hardware ids"));
            }
            let mut parsed = list.iter().map(|h| HardwareId::parse(h).map(|h| h.as_str().to_string())).collect::<Result<Vec<_>>>()?;
            parsed.sort();
            parsed.dedup();
            parsed
        }
        None => existing.as_ref().map(|p| p.hardware.clone()).unwrap_or_default(),
    };
    let public_secrets = change.public_secrets.or(existing.as_ref().map(|p| p.public_secrets)).unwrap_or(false);
    let now = Utc::now();
    let product = core
        .store
        .upsert_product(&Product {
            name,
            provisioning,
            provision_key,
            provision_secret_hash,
            poll_interval_s,
            hardware,
            public_secrets,
            created_at: now,
            updated_at: now,
        })
        .await?;
    core.devices.products.write().expect("cache lock").remove(&product.name);
    if product.public_secrets {
        tracing::warn!(product = %product.name, "product serves secret configuration values to anonymous seed-003 readers (public_secrets)");
    }
    Ok(product)
}

pub struct ImportOutcome {
    pub created: Vec<Device>,
    pub errors: Vec<(usize, String, String)>,
}

/// Registers many devices; each row succeeds or fails on its own.
pub async fn import(core: &Core, rows: Vec<NewDeviceRequest>) -> Result<ImportOutcome> {
    if rows.len() > 10_000 {
        return Err(Error::invalid("too_many_rows", "at most 10000 devices per import"));
    }
    let mut outcome = ImportOutcome { created: Vec::new(), errors: Vec::new() };
    let mut seen = HashSet::new();
    for (index, row) in rows.into_iter().enumerate() {
        if let Ok(mac) = Mac::parse(&row.mac)
            && !seen.insert(mac)
        {
            outcome.errors.push((index, "duplicate_mac".into(), format!("{mac} appears more than once in the import")));
            continue;
        }
        match register(core, row).await {
            Ok(device) => outcome.created.push(device),
            Err(Error::Internal(e)) => return Err(Error::Internal(e)),
            Err(e) => outcome.errors.push((index, e.code().to_string(), e.to_string())),
        }
    }
    Ok(outcome)
}

// ---- devices identified by MAC alone (compatibility protocols without tokens) ----

/// The device with this MAC, registering it when its product's provisioning mode allows
/// that for a device that presents nothing but its MAC (`open`). Used by protocols whose
/// clients cannot carry a token (Arduino `HTTPUpdate`, esp32FOTA, the seed servers).
pub async fn identify_by_mac(core: &Core, mac: &Mac, product: &str, hardware: Option<&str>, version: Option<&str>) -> Result<Device> {
    if let Some(device) = core.store.find_device_by_mac(mac).await? {
        return Ok(device);
    }
    let product = ProductName::parse(product)?.as_str().to_string();
    let policy = product_policy(core, &product).await?;
    if policy.provisioning != Provisioning::Open {
        return Err(Error::Forbidden(format!("{mac} is not registered, and product `{product}` only serves registered devices")));
    }
    let hardware = hardware.map(HardwareId::parse).transpose()?.map(|h| h.as_str().to_string());
    let version = version.filter(|v| Version::parse(v).is_ok()).map(str::to_string);
    let inserted = core
        .store
        .insert_device(&NewDevice {
            mac: *mac,
            name: mac.canonical(),
            product: Some(product),
            hardware,
            channel: Channel::DEFAULT.into(),
            version,
            target_version: None,
            tags: Vec::new(),
            attributes: json!({}),
            metadata: json!({}),
            owner: None,
            token_hash: None,
        })
        .await;
    match inserted {
        Ok(device) => {
            core.events.publish("device.created", Some(&device.id), json!({"mac": device.mac.canonical(), "by": "first contact"}));
            Ok(device)
        }
        // Registered concurrently by another request of the same device.
        Err(Error::Conflict { .. }) => core.store.find_device_by_mac(mac).await?.ok_or_else(|| Error::not_found("device", mac.canonical())),
        Err(e) => Err(e),
    }
}

/// Withdraws an offer for a reason the operator should see in the device's history (e.g. the
/// build does not fit the device's free space): its attempt is closed as `rejected` with the
/// reason, and the build is not offered again for `UPDRAFT_UPDATE_RETRY_AFTER_SECS`.
pub async fn refuse_offer(core: &Core, device_id: &str, offer: &Offer, reason: &str) -> Result<()> {
    let artifact = &offer.artifact;
    core.store.set_attempt_state(&offer.attempt_id, UpdateState::Rejected, None, Some(reason)).await?;
    core.events.publish(
        "device.update_status",
        Some(device_id),
        json!({"release_id": offer.release_id, "state": "rejected", "message": reason, "version": artifact.version}),
    );
    Ok(())
}

// ---- MQTT sessions ----

/// The device of an id, from the fleet index or the database; None when it does not exist.
pub async fn active_by_id(core: &Core, device_id: &str) -> Result<Option<Arc<ActiveDevice>>> {
    if let Some(device) = core.devices.fleet.read().expect("fleet lock").get_by_id(device_id) {
        return Ok(Some(device));
    }
    Ok(core.store.find_device(device_id).await?.map(|device| Arc::new(ActiveDevice::of(&device))))
}

/// The device of a MAC (seed 000 names devices by MAC only).
pub async fn active_by_mac(core: &Core, mac: &Mac) -> Result<Option<Arc<ActiveDevice>>> {
    let Some(device) = core.store.find_device_by_mac(mac).await? else {
        return Ok(None);
    };
    Ok(Some(active_by_id(core, &device.id).await?.unwrap_or_else(|| Arc::new(ActiveDevice::of(&device)))))
}

/// The device opened an MQTT session: online until `mark_disconnected`. Returns true when
/// it was not connected before.
pub fn mark_connected(core: &Core, device: &ActiveDevice, ip: Option<IpAddr>) -> bool {
    let fresh = core.devices.connected.lock().expect("connected lock").insert(device.id.clone());
    core.devices.disconnected.lock().expect("disconnected lock").remove(&*device.id);
    mark_seen(core, device, Utc::now(), ip);
    if fresh {
        core.events.publish("device.connected", Some(&device.id), json!({"via": "mqtt"}));
    }
    fresh
}

/// The device's MQTT session ended (it disconnected, or its last will arrived).
pub fn mark_disconnected(core: &Core, device_id: &str) -> bool {
    let was = core.devices.connected.lock().expect("connected lock").remove(device_id);
    if was {
        let mut disconnected = core.devices.disconnected.lock().expect("disconnected lock");
        if disconnected.len() >= core.devices.policy.cache_entries.max(1) {
            // Entries only matter for `offline_after`; drop the oldest half when full.
            let cutoff = Utc::now() - chrono::Duration::from_std(core.devices.policy.offline_after).unwrap_or(chrono::Duration::MAX);
            disconnected.retain(|_, at| *at > cutoff);
        }
        disconnected.insert(Arc::from(device_id), Utc::now());
        drop(disconnected);
        let removed = core.devices.online.lock().expect("online lock").remove(device_id).is_some();
        core.events.publish("device.disconnected", Some(device_id), json!({"via": "mqtt"}));
        if removed {
            core.events.publish("device.offline", Some(device_id), json!({}));
        }
    }
    was
}

/// A device was heard from over MQTT (a message other than a check-in).
pub fn mark_heard(core: &Core, device: &ActiveDevice) {
    mark_seen(core, device, Utc::now(), None);
}

/// Records a telemetry message: kept as the device's latest and announced as an event.
pub fn record_telemetry(core: &Core, device: &ActiveDevice, value: Value) {
    mark_seen(core, device, Utc::now(), None);
    let now = Utc::now();
    if core.events.active() {
        core.events.publish("device.telemetry", Some(&device.id), value.clone());
    }
    let mut telemetry = core.devices.telemetry.lock().expect("telemetry lock");
    if !telemetry.contains_key(&*device.id) && telemetry.len() >= core.devices.policy.cache_entries.max(1) {
        telemetry.shift_remove_index(0);
    }
    telemetry.insert(device.id.clone(), (now, value));
}

//! The operator's registry: register, find, change and delete devices.

use super::*;

pub struct NewDeviceRequest {
    /// The MAC (any accepted form); a device needs a MAC, a `uid`, or both.
    pub mac: Option<String>,
    /// The unique name the device calls itself by (see `DeviceUid`).
    pub uid: Option<String>,
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

/// Validates and registers a device (no token; see `issue_token`). `actor` is who registered
/// it (`Principal::actor`, or a system actor such as `cli:import`).
pub async fn register(core: &Core, request: NewDeviceRequest, actor: &str) -> Result<Device> {
    let mac = request.mac.as_deref().map(Mac::parse).transpose()?;
    let uid = request.uid.as_deref().map(DeviceUid::parse).transpose()?;
    let default_name = match (&mac, &uid) {
        (Some(mac), _) => mac.canonical(),
        (None, Some(uid)) => uid.to_string(),
        (None, None) => return Err(Error::invalid("missing_identity", "a device needs a `mac`, a `uid`, or both")),
    };
    let name = match &request.name {
        Some(name) => device::check_text("name", "invalid_name", name, 128)?,
        None => default_name,
    };
    let product = request.product.as_deref().map(ProductName::parse).transpose()?;
    let hardware = request.hardware.as_deref().map(HardwareId::parse).transpose()?;
    let channel = Channel::parse(request.channel.as_deref().unwrap_or(Channel::DEFAULT))?;
    for (field, value) in [("version", &request.version), ("target_version", &request.target_version)] {
        if let Some(v) = value {
            Version::parse(v).map_err(|e| e.in_field(field))?;
        }
    }
    let metadata = request.metadata.unwrap_or_else(|| json!({}));
    device::check_json_object("metadata", &metadata)?;
    let owner = request.owner.as_deref().map(|o| device::check_text("owner", "invalid_owner", o, 128)).transpose()?;
    let device = core
        .store
        .insert_device(&NewDevice {
            mac,
            uid,
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
    core.events.publish(Event::DeviceCreated { device_id: device.id.to_string(), mac: device.mac, by: actor.to_string() });
    if device.target_version.is_some() {
        tracing::info!(device_id = %device.id, target_version = ?device.target_version, actor, "device pinned at registration");
    }
    Ok(device)
}

/// The device with this id, if it is registered.
pub async fn find_by_id(core: &Core, id: &str) -> Result<Option<Device>> {
    core.store.find_device(id).await
}

/// The device with this MAC, if it is registered.
pub async fn find_by_mac(core: &Core, mac: &Mac) -> Result<Option<Device>> {
    core.store.find_device_by_mac(mac).await
}

/// Which devices the operator's listing keeps, by presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceFilter {
    /// Heard from within the offline period.
    Online,
    /// Not heard from within the offline period.
    Offline,
}

/// The operator's device listing: a page of the devices `filter` selects, and how many it
/// selects in all. Presence is buffered for up to a second (longer under a flood of
/// check-ins): it is flushed first, so that the filters and the sort on `last_seen` see it,
/// but never more than ten seconds' worth of writes in one request. `presence` cuts at the
/// offline period.
pub async fn list_devices(core: &Core, filter: DeviceFilter, presence: Option<PresenceFilter>) -> Result<(Vec<Device>, u64)> {
    flush_presence(core, Some(core.devices.policy.presence_writes_per_sec.saturating_mul(10))).await?;
    let offline_after = chrono::Duration::from_std(core.devices.policy.offline_after).unwrap_or(chrono::Duration::MAX);
    let cutoff = (Utc::now() - offline_after).timestamp_millis();
    let filter = DeviceFilter { online_since: presence.map(|presence| (presence == PresenceFilter::Online, cutoff)), ..filter };
    core.store.list_devices(&filter).await
}

/// A page of the devices `filter` selects, as stored (buffered presence not flushed), and
/// how many it selects in all.
pub async fn find_devices(core: &Core, filter: &DeviceFilter) -> Result<(Vec<Device>, u64)> {
    core.store.list_devices(filter).await
}

/// The device a protocol names by its MAC or unique name, if it is registered.
pub async fn find_by_key(core: &Core, key: &DeviceKey) -> Result<Option<Device>> {
    match key {
        DeviceKey::Mac(mac) => core.store.find_device_by_mac(mac).await,
        DeviceKey::Uid(uid) => core.store.find_device_by_uid(uid).await,
    }
}

/// Finds a device by id, by MAC (any accepted form) or by unique name: the one lookup of
/// every route that names a device. An id wins over a name that happens to equal it.
pub async fn find(core: &Core, id_mac_or_name: &str) -> Result<Device> {
    if let Some(device) = core.store.find_device(id_mac_or_name).await? {
        return Ok(device);
    }
    if let Ok(key) = DeviceKey::parse(id_mac_or_name)
        && let Some(device) = find_by_key(core, &key).await?
    {
        return Ok(device);
    }
    Err(Error::not_found("device", id_mac_or_name))
}

/// Changes a device as `actor` (`Principal::actor`): recorded in the event and, for a pin,
/// in the log.
pub async fn update(core: &Core, id: &str, patch: DevicePatch, actor: &str) -> Result<Device> {
    if let Some(Some(version)) = &patch.target_version {
        let pin = Version::parse(version).map_err(|e| e.in_field("target_version"))?;
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
    if patch.target_version.is_some() {
        tracing::info!(device_id = id, target_version = ?device.target_version, actor, "device pin set");
    }
    core.events.publish(Event::DeviceUpdated {
        device_id: id.to_string(),
        change: DeviceChange::Operator { target_version: device.target_version.clone(), by: actor.to_string() },
    });
    Ok(device)
}

pub async fn delete(core: &Core, id: &str) -> Result<()> {
    if !core.store.delete_device(id).await? {
        return Err(Error::not_found("device", id));
    }
    core.devices.forget_device(id);
    core.devices.presence().forget(id);
    core.events.publish(Event::DeviceDeleted { device_id: id.to_string() });
    Ok(())
}

/// A device's update history: its newest 100 attempts, newest first.
pub async fn update_history(core: &Core, device_id: &str) -> Result<Vec<UpdateAttempt>> {
    core.store.list_attempts(device_id, 100).await
}

/// A device's setup reports (seed-004 status codes), oldest first.
pub async fn setup_history(core: &Core, device_id: &str) -> Result<Vec<device::SetupEvent>> {
    core.store.list_setup_events(device_id).await
}

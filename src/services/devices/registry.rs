//! The operator's registry: register, find, change and delete devices.

use super::*;

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
    core.events.publish(Event::DeviceCreated { device_id: device.id.clone(), mac: device.mac, by: "operator" });
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
    core.events.publish(Event::DeviceUpdated {
        device_id: id.to_string(),
        change: DeviceChange::Operator { target_version: device.target_version.clone() },
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

//! Devices identified by their MAC alone (compatibility protocols without tokens), and offers withdrawn for a reason.

use super::*;

/// The device with this MAC, registering it when its product's provisioning mode allows
/// that for a device that presents nothing but its MAC (`open`). Used by protocols whose
/// clients cannot carry a token (Arduino `HTTPUpdate`, esp32FOTA, the seed servers).
pub async fn identify_by_mac(core: &Core, mac: &Mac, product: &str, hardware: Option<&str>, version: Option<&str>) -> Result<Device> {
    if let Some(device) = core.store.find_device_by_mac(mac).await? {
        return Ok(device);
    }
    let product = ProductName::parse(product)?;
    let policy = product_policy(core, &product).await?;
    if policy.provisioning != Provisioning::Open {
        return Err(Error::Forbidden(format!("{mac} is not registered, and product `{product}` only serves registered devices")));
    }
    let hardware = hardware.map(HardwareId::parse).transpose()?;
    let version = version.filter(|v| Version::parse(v).is_ok()).map(str::to_string);
    let inserted = core
        .store
        .insert_device(&NewDevice {
            mac: Some(*mac),
            uid: None,
            name: mac.canonical(),
            product: Some(product),
            hardware,
            channel: Channel::stable(),
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
            core.events.publish(Event::DeviceCreated { device_id: device.id.to_string(), mac: device.mac, by: "first contact".into() });
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
    let written = core.store.set_attempt_state(&offer.attempt_id, UpdateState::Rejected, None, Some(reason)).await;
    core.devices.attempt_changed(device_id);
    written?;
    core.events.publish(Event::UpdateStatus(UpdateStatus {
        device_id: device_id.to_string(),
        release_id: offer.release_id.clone(),
        rollout_id: None,
        state: UpdateState::Rejected,
        progress: None,
        message: Some(reason.to_string()),
        version: artifact.version.clone(),
    }));
    Ok(())
}

//! MQTT sessions: which devices hold one, and their latest telemetry.

use super::*;

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
    let fresh = core.devices.presence().connected(&device.id);
    mark_seen(core, device, Utc::now(), ip);
    if fresh {
        core.events.publish(Event::DeviceConnected { device_id: device.id.to_string() });
    }
    fresh
}

/// The device's MQTT session ended (it disconnected, or its last will arrived).
pub fn mark_disconnected(core: &Core, device_id: &str) -> bool {
    let Some(was_online) = core.devices.presence().disconnected(device_id, Utc::now()) else {
        return false;
    };
    core.events.publish(Event::DeviceDisconnected { device_id: device_id.to_string() });
    if was_online {
        core.events.publish(Event::DeviceOffline { device_id: device_id.to_string() });
    }
    true
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
        core.events.publish(Event::DeviceTelemetry { device_id: device.id.to_string(), value: value.clone() });
    }
    let mut telemetry = core.devices.telemetry.lock().expect("telemetry lock");
    if !telemetry.contains_key(&*device.id) && telemetry.len() >= core.devices.policy.cache_entries.max(1) {
        telemetry.shift_remove_index(0);
    }
    telemetry.insert(device.id.clone(), (now, value));
}

//! The event bus: what happened, as typed `Event`s, to the live stream behind
//! `GET /api/v1/events` and to the server's own followers (the MQTT adapter). It is a bounded
//! broadcast channel: a consumer that falls more than `CAPACITY` events behind is dropped,
//! never buffered without bound.
//!
//! Events are Rust values inside the process; they are serialised only where they leave it
//! (the SSE stream, in `http`). Adding a variant makes the compiler ask every consumer what it
//! does with it (`Event::is_change` and the MQTT adapter match without a catch-all).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::domain::device::{UpdateAttempt, UpdateState};
use crate::domain::mac::Mac;

const CAPACITY: usize = 1024;
const CHANGE_CAPACITY: usize = 4096;

/// Something that happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    DeviceCreated {
        device_id: String,
        mac: Option<Mac>,
        /// The operator's actor (`key:ci`, `user:alice`), or how the device came
        /// (`provisioning`, `first contact`).
        by: String,
    },
    DeviceUpdated {
        device_id: String,
        change: DeviceChange,
    },
    DeviceDeleted {
        device_id: String,
    },
    DeviceOnline {
        device_id: String,
        mac: Option<Mac>,
    },
    DeviceOffline {
        device_id: String,
    },
    /// The device opened an MQTT session.
    DeviceConnected {
        device_id: String,
    },
    /// The device's MQTT session ended.
    DeviceDisconnected {
        device_id: String,
    },
    /// A check-in (built only while someone reads the stream: see `EventBus::active`).
    DeviceCheckin {
        device_id: String,
        version: Option<String>,
        offered: Option<String>,
    },
    /// An MQTT telemetry message (built only while someone reads the stream).
    DeviceTelemetry {
        device_id: String,
        value: Value,
    },
    UpdateStatus(UpdateStatus),
    SetupStatus {
        device_id: String,
        code: u8,
        title: String,
        description: String,
    },
    DevicePaired {
        device_id: String,
        owner: String,
    },
    TokenIssued {
        device_id: String,
        mac: Option<Mac>,
        /// The operator's actor, or the provisioning path that issued it.
        by: String,
    },
    TokenRevoked {
        device_id: String,
        mac: Option<Mac>,
        /// The operator's actor.
        by: String,
    },
    ProductUpdated {
        product: String,
    },
    /// A build of the product was uploaded, edited or deleted.
    FirmwareChanged {
        product: String,
    },
    ReleaseCreated {
        release_id: String,
        product: String,
        version: String,
    },
    RolloutCreated {
        rollout_id: String,
        release_id: String,
        overlaps: usize,
    },
    RolloutTransition {
        rollout_id: String,
        from: String,
        to: String,
        stage: usize,
        actor: String,
        reason: String,
    },
    ConfigChanged(ConfigChanged),
    ConfigAcknowledged {
        device_id: String,
        version: String,
    },
    /// A seed-003 file (`POST /api/assets`).
    AssetFileUploaded {
        filename: String,
        size: u64,
        sha256: String,
    },
    /// A new version of a native asset.
    AssetUploaded {
        product: String,
        name: String,
        version: i64,
        sha256: String,
        size: u64,
    },
    CommandSent {
        device_id: String,
        command_id: String,
        name: String,
    },
    CommandCompleted {
        device_id: String,
        command_id: String,
        state: String,
    },
}

/// What changed about a device.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceChange {
    /// The device reported these in a check-in.
    Reported { version: Option<String>, product: Option<String>, hardware: Option<String> },
    /// An operator changed the device (its pin, possibly); `by` is the operator's actor.
    Operator { target_version: Option<String>, by: String },
}

/// An update attempt moved to a new state.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateStatus {
    pub device_id: String,
    pub release_id: String,
    pub rollout_id: Option<String>,
    pub state: UpdateState,
    pub progress: Option<u8>,
    pub message: Option<String>,
    /// The version the attempt brings the device to.
    pub version: String,
}

impl UpdateStatus {
    /// The status of `attempt` (its device, release, rollout and target version) in `state`.
    pub fn of(attempt: &UpdateAttempt, state: UpdateState, progress: Option<u8>, message: Option<String>) -> UpdateStatus {
        UpdateStatus {
            device_id: attempt.device_id.to_string(),
            release_id: attempt.release_id.to_string(),
            rollout_id: attempt.rollout_id.as_ref().map(ToString::to_string),
            state,
            progress,
            message,
            version: attempt.to_version.clone(),
        }
    }
}

/// A configuration layer changed.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigChanged {
    /// The one device affected, when there is exactly one.
    pub device_id: Option<String>,
    pub scope: String,
    pub version: i64,
    pub deleted: bool,
    /// Exactly the registered devices whose effective configuration changed.
    pub devices: Vec<String>,
    /// The MACs whose seed-003 file (`<mac>.json`) changed (none for a deletion, as seed 003).
    pub seed003_files: Vec<Mac>,
}

impl Event {
    /// The event's name, e.g. `device.online` (the SSE event type).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::DeviceCreated { .. } => "device.created",
            Event::DeviceUpdated { .. } => "device.updated",
            Event::DeviceDeleted { .. } => "device.deleted",
            Event::DeviceOnline { .. } => "device.online",
            Event::DeviceOffline { .. } => "device.offline",
            Event::DeviceConnected { .. } => "device.connected",
            Event::DeviceDisconnected { .. } => "device.disconnected",
            Event::DeviceCheckin { .. } => "device.checkin",
            Event::DeviceTelemetry { .. } => "device.telemetry",
            Event::UpdateStatus(_) => "device.update_status",
            Event::SetupStatus { .. } => "device.setup_status",
            Event::DevicePaired { .. } => "device.paired",
            Event::TokenIssued { .. } => "device.token_issued",
            Event::TokenRevoked { .. } => "device.token_revoked",
            Event::ProductUpdated { .. } => "product.updated",
            Event::FirmwareChanged { .. } => "firmware.changed",
            Event::ReleaseCreated { .. } => "release.created",
            Event::RolloutCreated { .. } => "rollout.created",
            Event::RolloutTransition { .. } => "rollout.transition",
            Event::ConfigChanged(_) => "config.changed",
            Event::ConfigAcknowledged { .. } => "config.acknowledged",
            Event::AssetFileUploaded { .. } | Event::AssetUploaded { .. } => "asset.uploaded",
            Event::CommandSent { .. } => "command.sent",
            Event::CommandCompleted { .. } => "command.completed",
        }
    }

    /// The device the event is about, if one.
    pub fn device_id(&self) -> Option<&str> {
        match self {
            Event::DeviceCreated { device_id, .. }
            | Event::DeviceUpdated { device_id, .. }
            | Event::DeviceDeleted { device_id }
            | Event::DeviceOnline { device_id, .. }
            | Event::DeviceOffline { device_id }
            | Event::DeviceConnected { device_id }
            | Event::DeviceDisconnected { device_id }
            | Event::DeviceCheckin { device_id, .. }
            | Event::DeviceTelemetry { device_id, .. }
            | Event::UpdateStatus(UpdateStatus { device_id, .. })
            | Event::SetupStatus { device_id, .. }
            | Event::DevicePaired { device_id, .. }
            | Event::TokenIssued { device_id, .. }
            | Event::TokenRevoked { device_id, .. }
            | Event::ConfigAcknowledged { device_id, .. }
            | Event::CommandSent { device_id, .. }
            | Event::CommandCompleted { device_id, .. } => Some(device_id),
            Event::ConfigChanged(change) => change.device_id.as_deref(),
            Event::ProductUpdated { .. }
            | Event::FirmwareChanged { .. }
            | Event::ReleaseCreated { .. }
            | Event::RolloutCreated { .. }
            | Event::RolloutTransition { .. }
            | Event::AssetFileUploaded { .. }
            | Event::AssetUploaded { .. } => None,
        }
    }

    /// Changes what devices are offered, configured or allowed: besides the stream, these go
    /// to a second, low-rate channel that the server's own followers (the MQTT adapter) read,
    /// so that a flood of check-ins neither makes them fall behind nor keeps hot paths building
    /// events nobody reads.
    pub fn is_change(&self) -> bool {
        match self {
            Event::FirmwareChanged { .. }
            | Event::ReleaseCreated { .. }
            | Event::RolloutCreated { .. }
            | Event::RolloutTransition { .. }
            | Event::ProductUpdated { .. }
            | Event::DeviceUpdated { .. }
            | Event::ConfigChanged(_)
            | Event::AssetFileUploaded { .. }
            | Event::AssetUploaded { .. }
            // A device's credential changed: the embedded broker ends its sessions at once.
            | Event::TokenIssued { .. }
            | Event::TokenRevoked { .. }
            | Event::DeviceDeleted { .. } => true,
            Event::DeviceCreated { .. }
            | Event::DeviceOnline { .. }
            | Event::DeviceOffline { .. }
            | Event::DeviceConnected { .. }
            | Event::DeviceDisconnected { .. }
            | Event::DeviceCheckin { .. }
            | Event::DeviceTelemetry { .. }
            | Event::UpdateStatus(_)
            | Event::SetupStatus { .. }
            | Event::DevicePaired { .. }
            | Event::ConfigAcknowledged { .. }
            | Event::CommandSent { .. }
            | Event::CommandCompleted { .. } => false,
        }
    }
}

/// An event and when it happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub event: Event,
    pub at: DateTime<Utc>,
}

#[derive(Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Arc<Published>>,
    /// Changes only (`Event::is_change`).
    changes: broadcast::Sender<Arc<Published>>,
    closing: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            sender: broadcast::channel(CAPACITY).0,
            changes: broadcast::channel(CHANGE_CAPACITY).0,
            closing: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }
}

impl EventBus {
    pub fn publish(&self, event: Event) {
        let change = event.is_change();
        if !change && !self.active() {
            return;
        }
        let published = Arc::new(Published { event, at: Utc::now() });
        if change {
            let _ = self.changes.send(published.clone());
        }
        // No subscribers is fine: nothing is kept.
        let _ = self.sender.send(published);
    }

    /// True while someone reads the stream; lets hot paths skip building events nobody reads.
    pub fn active(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// Every event (the stream of `GET /api/v1/events`).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.sender.subscribe()
    }

    /// The changes only.
    pub fn subscribe_changes(&self) -> broadcast::Receiver<Arc<Published>> {
        self.changes.subscribe()
    }

    /// Ends every open stream (at shutdown, so that graceful shutdown does not wait for them).
    pub fn close(&self) {
        let _ = self.closing.send(true);
    }

    /// Resolves once `close` was called.
    pub async fn closed(&self) {
        let mut receiver = self.closing.subscribe();
        let _ = receiver.wait_for(|closed| *closed).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn changes_reach_followers_and_other_events_only_readers_of_the_stream() {
        let bus = EventBus::default();
        let mut changes = bus.subscribe_changes();
        bus.publish(Event::DeviceOffline { device_id: "d1".into() });
        bus.publish(Event::ProductUpdated { product: "lamp".into() });
        let first = changes.recv().await.unwrap();
        assert_eq!(first.event, Event::ProductUpdated { product: "lamp".into() }, "the offline event went nowhere");
        let mut stream = bus.subscribe();
        bus.publish(Event::DeviceOffline { device_id: "d1".into() });
        assert_eq!(stream.recv().await.unwrap().event.kind(), "device.offline");
    }
}

//! The live event bus behind `GET /api/v1/events`: a bounded broadcast channel. A consumer
//! that falls more than `CAPACITY` events behind is dropped, never buffered without bound.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::broadcast;

const CAPACITY: usize = 1024;

/// The kinds that change what devices are offered or configured: besides the stream, they go
/// to a second, low-rate channel that the server's own followers (the MQTT pushes) read. So
/// a flood of check-ins neither makes those followers fall behind nor keeps the hot paths
/// building events nobody reads.
pub const CHANGE_KINDS: &[&str] = &[
    "firmware.changed",
    "release.created",
    "rollout.created",
    "rollout.transition",
    "product.updated",
    "device.updated",
    "config.changed",
    "asset.uploaded",
    // A device's credential changed: the embedded broker ends its sessions at once.
    "device.token_issued",
    "device.token_revoked",
    "device.deleted",
];
const CHANGE_CAPACITY: usize = 4096;

#[derive(Debug, Clone)]
pub struct Event {
    /// e.g. `device.created`, `device.online`, `device.checkin`, `device.update_status`.
    pub kind: &'static str,
    pub device_id: Option<String>,
    pub data: Value,
    pub at: DateTime<Utc>,
}

#[derive(Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Arc<Event>>,
    /// [`CHANGE_KINDS`] only.
    changes: broadcast::Sender<Arc<Event>>,
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
    pub fn publish(&self, kind: &'static str, device_id: Option<&str>, data: Value) {
        let change = CHANGE_KINDS.contains(&kind);
        if !change && !self.active() {
            return;
        }
        let event = Arc::new(Event { kind, device_id: device_id.map(str::to_string), data, at: Utc::now() });
        if change {
            let _ = self.changes.send(event.clone());
        }
        // No subscribers is fine: nothing is kept.
        let _ = self.sender.send(event);
    }

    /// True while someone reads the stream; lets hot paths skip building events nobody reads.
    pub fn active(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// Every event (the stream of `GET /api/v1/events`).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.sender.subscribe()
    }

    /// The [`CHANGE_KINDS`] events only.
    pub fn subscribe_changes(&self) -> broadcast::Receiver<Arc<Event>> {
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

//! The live event bus behind `GET /api/v1/events`: a bounded broadcast channel. A consumer
//! that falls more than `CAPACITY` events behind is dropped, never buffered without bound.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::broadcast;

const CAPACITY: usize = 1024;

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
    closing: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus { sender: broadcast::channel(CAPACITY).0, closing: Arc::new(tokio::sync::watch::channel(false).0) }
    }
}

impl EventBus {
    pub fn publish(&self, kind: &'static str, device_id: Option<&str>, data: Value) {
        // No subscribers is fine: nothing is kept.
        let _ = self.sender.send(Arc::new(Event { kind, device_id: device_id.map(str::to_string), data, at: Utc::now() }));
    }

    /// True while someone listens; lets hot paths skip building events nobody reads.
    pub fn active(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.sender.subscribe()
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

//! The port through which use cases send MQTT messages (commands, for instance). The MQTT
//! adapter installs its client at start; without a broker, sending fails with 503.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::domain::{Error, Result};

/// What the MQTT adapter offers to use cases: QoS 1 publishing.
pub trait MessageSink: Send + Sync {
    fn publish(&self, topic: String, payload: Bytes, retain: bool) -> BoxFuture<'static, Result<()>>;
}

/// Device-side RPC of sessions that speak another protocol than Updraft's (ThingsBoard's
/// `v1/devices/me/rpc/request/{n}`): the embedded broker's adapter installs it.
pub trait DeviceRpc: Send + Sync {
    /// Sends `method` and `params` as command `command_id` if the device holds such a
    /// session; false when it does not (the command then goes to `updraft/{id}/cmd`).
    fn send(&self, device_id: &str, command_id: &str, method: &str, params: &serde_json::Value) -> BoxFuture<'static, bool>;
}

#[derive(Clone, Default)]
pub struct Outbox {
    sink: Arc<OnceLock<Arc<dyn MessageSink>>>,
    rpc: Arc<OnceLock<Arc<dyn DeviceRpc>>>,
}

impl Outbox {
    pub fn install(&self, sink: Arc<dyn MessageSink>) {
        let _ = self.sink.set(sink);
    }

    pub fn install_rpc(&self, rpc: Arc<dyn DeviceRpc>) {
        let _ = self.rpc.set(rpc);
    }

    /// Sends a command through another protocol's RPC, if the device holds such a session.
    pub async fn rpc(&self, device_id: &str, command_id: &str, method: &str, params: &serde_json::Value) -> bool {
        match self.rpc.get() {
            Some(rpc) => rpc.send(device_id, command_id, method, params).await,
            None => false,
        }
    }

    pub fn available(&self) -> bool {
        self.sink.get().is_some()
    }

    pub async fn publish(&self, topic: String, payload: Bytes, retain: bool) -> Result<()> {
        match self.sink.get() {
            Some(sink) => sink.publish(topic, payload, retain).await,
            None => Err(Error::Unavailable("MQTT is switched off (UPDRAFT_MQTT_ENABLED=false)".into())),
        }
    }
}

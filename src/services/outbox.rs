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

#[derive(Clone, Default)]
pub struct Outbox {
    sink: Arc<OnceLock<Arc<dyn MessageSink>>>,
}

impl Outbox {
    pub fn install(&self, sink: Arc<dyn MessageSink>) {
        let _ = self.sink.set(sink);
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

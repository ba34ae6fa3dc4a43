//! The one client interface between Updraft's logic and a broker: MQTT 3.1.1 client
//! connections (rumqttc) to the embedded broker or to the external one. Two of them: one
//! publishes at QoS 1 and is always read (its acknowledgements never wait behind message
//! handling), the other follows the device topics (shared subscriptions, so replicas split
//! the traffic) and hands every message to the handler, in order per device; when the handler
//! falls behind, it stops reading and the broker holds (or, past its queue limit, drops) the
//! rest. With one connection, a handler waiting to publish could wait for itself.
//!
//! Use cases' messages (commands, through the outbox) are confirmed: the call returns once the
//! broker has acknowledged the message, that is, routed it to the device's session or its
//! queue. A device that reconnects after that finds it there.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, Transport};
use tokio::sync::{mpsc, watch};

use crate::domain::mqtt::{self, Inbound};
use crate::domain::{Error, Result};
use crate::services::outbox::MessageSink;

/// Messages a handler worker may have waiting; the client stops reading beyond that.
pub const WORKER_QUEUE: usize = 1024;
pub const WORKERS: usize = 8;
/// How long a confirmed publish waits for the broker's acknowledgement; then it returns
/// anyway (the message stays queued in the client) and says so in the log.
const CONFIRM_WAIT: Duration = Duration::from_secs(10);

/// Where the bus connects, and as whom.
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub username: String,
    pub password: Option<String>,
    pub max_packet_bytes: usize,
    /// Share the device traffic with other replicas (external broker).
    pub split: bool,
}

/// A message for the handler.
pub struct Incoming {
    pub inbound: Inbound,
    pub payload: Bytes,
}

/// What the connection reports besides messages.
pub enum Signal {
    /// (Re)connected and subscribed: retained state may need republishing.
    Connected,
}

#[derive(Clone)]
pub struct Bus {
    /// The publishing connection.
    client: AsyncClient,
    /// The subscribing connection (used only to subscribe).
    follower: AsyncClient,
    connected: Arc<AtomicBool>,
    split: bool,
    acks: Arc<Acks>,
}

/// The publishing connection's acknowledgements, counted against its publishes. A broker
/// acknowledges one connection's QoS 1 publishes in order, each after routing it: once
/// `acked` reaches a publish's place in the queue, the broker has routed that publish.
struct Acks {
    /// Hands publishes to the client one at a time, so that `sent` is each one's place.
    queue: tokio::sync::Mutex<()>,
    /// Publishes handed to the client so far.
    sent: AtomicU64,
    /// Acknowledgements received. When the connection breaks it jumps to `sent`: what was in
    /// flight is replayed or lost, which cannot be told apart, so nobody waits for it (and a
    /// few publishes after a reconnect are confirmed early, as without confirmation).
    acked: watch::Sender<u64>,
}

/// The two connections' event loops, driven by `Bus::run`.
pub struct Loops {
    pub publisher: EventLoop,
    pub follower: EventLoop,
}

fn options(endpoint: &Endpoint, role: &str) -> MqttOptions {
    let client_id = format!("updraft-{role}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let mut options = MqttOptions::new(client_id, endpoint.host.clone(), endpoint.port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(true);
    options.set_max_packet_size(endpoint.max_packet_bytes, endpoint.max_packet_bytes);
    options.set_inflight(1000);
    options.set_request_channel_capacity(10_000);
    if let Some(password) = &endpoint.password {
        options.set_credentials(endpoint.username.clone(), password.clone());
    } else {
        options.set_credentials(endpoint.username.clone(), "");
    }
    if endpoint.tls {
        options.set_transport(Transport::tls_with_default_config());
    }
    options
}

impl Bus {
    /// Creates the clients; `run` drives the connections.
    pub fn new(endpoint: &Endpoint) -> (Bus, Loops) {
        let (client, publisher) = AsyncClient::new(options(endpoint, "pub"), 10_000);
        let (follower, follower_loop) = AsyncClient::new(options(endpoint, "sub"), 100);
        let acks = Arc::new(Acks { queue: tokio::sync::Mutex::new(()), sent: AtomicU64::new(0), acked: watch::channel(0).0 });
        (Bus { client, follower, connected: Arc::default(), split: endpoint.split, acks }, Loops { publisher, follower: follower_loop })
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Publishes at QoS 1. Returns once the message is queued for the broker.
    pub async fn publish(&self, topic: String, payload: Bytes, retain: bool) -> Result<()> {
        self.enqueue(topic, payload, retain).await.map(|_| ())
    }

    /// Publishes at QoS 1. Returns once the broker has acknowledged the message (or after
    /// [`CONFIRM_WAIT`], logging that it did not).
    pub async fn publish_confirmed(&self, topic: String, payload: Bytes, retain: bool) -> Result<()> {
        let place = self.enqueue(topic.clone(), payload, retain).await?;
        let mut acked = self.acks.acked.subscribe();
        if tokio::time::timeout(CONFIRM_WAIT, acked.wait_for(|acked| *acked >= place)).await.is_err() {
            tracing::warn!(topic, "the MQTT broker did not acknowledge a message in time; it stays queued");
        }
        Ok(())
    }

    /// Hands a publish to the client; returns its place in the publishing queue.
    async fn enqueue(&self, topic: String, payload: Bytes, retain: bool) -> Result<u64> {
        let _turn = self.acks.queue.lock().await;
        // Counted first: the acknowledgement may arrive before this task runs again.
        let place = self.acks.sent.fetch_add(1, Ordering::SeqCst) + 1;
        self.client
            .publish_bytes(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .map_err(|e| Error::Unavailable(format!("the MQTT client is not running: {e}")))?;
        metrics::counter!("updraft_mqtt_messages_published_total").increment(1);
        Ok(place)
    }

    /// Publishes a device's retained `status` (embedded broker: on its first connection and
    /// after its last one ends).
    pub fn announce_status(&self, device_id: &str, online: bool) {
        let bus = self.clone();
        let topic = mqtt::status_topic(device_id);
        tokio::spawn(async move {
            let payload = Bytes::from_static(if online { b"online" } else { b"offline" });
            if let Err(e) = bus.publish(topic, payload, true).await {
                tracing::warn!(error = %e, "cannot announce a device's MQTT status");
            }
        });
    }

    /// Drives the publishing connection (counting acknowledgements) until the server stops;
    /// reconnects after a second on failure.
    pub async fn run_publisher(self, mut publisher: EventLoop) {
        let acks = self.acks.clone();
        let mut failures = 0u32;
        loop {
            match publisher.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => failures = 0,
                Ok(Event::Incoming(Packet::PubAck(_))) => acks.acked.send_modify(|acked| *acked += 1),
                Ok(_) => {}
                Err(e) => {
                    let sent = acks.sent.load(Ordering::SeqCst);
                    acks.acked.send_modify(|acked| *acked = (*acked).max(sent));
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(60) {
                        tracing::warn!(error = %e, failures, "MQTT publishing connection lost; reconnecting every second");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Drives the following connection until the server stops: reconnects after a second on
    /// failure, subscribes after every connect, and routes messages to the handler workers by
    /// device.
    pub async fn run_follower(self, mut follower: EventLoop, workers: Vec<mpsc::Sender<Incoming>>, signals: mpsc::UnboundedSender<Signal>) {
        let mut failures = 0u32;
        loop {
            match follower.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    failures = 0;
                    tracing::info!(code = ?ack.code, "connected to the MQTT broker");
                    let filters: Vec<rumqttc::SubscribeFilter> = Inbound::subscriptions(self.split)
                        .into_iter()
                        .map(|(filter, _)| rumqttc::SubscribeFilter::new(filter, QoS::AtLeastOnce))
                        .collect();
                    let client = self.follower.clone();
                    let connected = self.connected.clone();
                    let signals = signals.clone();
                    tokio::spawn(async move {
                        match client.subscribe_many(filters).await {
                            Ok(()) => {
                                connected.store(true, Ordering::Relaxed);
                                let _ = signals.send(Signal::Connected);
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot subscribe to the device topics"),
                        }
                    });
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                        tracing::error!("the MQTT broker refused some of Updraft's subscriptions: check its ACL for Updraft's user");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    metrics::counter!("updraft_mqtt_messages_received_total").increment(1);
                    let Some(inbound) = Inbound::parse(&publish.topic) else {
                        continue;
                    };
                    let worker = &workers[shard(&inbound)];
                    // Waiting here stops reading from the broker: back-pressure, not a buffer.
                    if worker.send(Incoming { inbound, payload: publish.payload }).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    self.connected.store(false, Ordering::Relaxed);
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(60) {
                        tracing::warn!(error = %e, failures, "MQTT broker connection lost; reconnecting every second");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

impl MessageSink for Bus {
    fn publish(&self, topic: String, payload: Bytes, retain: bool) -> BoxFuture<'static, Result<()>> {
        let bus = self.clone();
        Box::pin(async move { bus.publish_confirmed(topic, payload, retain).await })
    }
}

/// Messages of one device always go to the same worker, so they are handled in order.
pub fn shard(inbound: &Inbound) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    match inbound {
        Inbound::Status { device_id }
        | Inbound::Telemetry { device_id }
        | Inbound::Attributes { device_id }
        | Inbound::OtaStatus { device_id }
        | Inbound::CommandResult { device_id } => device_id.hash(&mut hasher),
        Inbound::LegacyFlashing { mac, .. } | Inbound::LegacyKeepalive { mac, .. } => mac.bytes().hash(&mut hasher),
    }
    (hasher.finish() as usize) % WORKERS
}

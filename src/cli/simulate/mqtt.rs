//! One device's MQTT session (rumqttc), kept small: 64 KiB packets at most, four messages in
//! flight, a request channel of eight. The session's event loop is driven by whatever the
//! device waits for (`next`, `during`), so a device is one task, not two.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, LastWill, MqttOptions, Packet, Publish, QoS};

use super::fleet::{Device, Fatal, Protocol, Shared};
use super::{EXIT_REFUSED, EXIT_UNREACHABLE};

/// The largest packet a device takes or sends: a ThingsBoard firmware chunk (16 KiB) with
/// its topic, or a configuration.
pub const MAX_PACKET: usize = 64 * 1024;
/// Publishes kept while the device is busy with something else.
const INBOX: usize = 16;

/// Why a session did not start.
pub enum ConnectError {
    Unreachable(String),
    Refused(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Unreachable(e) => write!(f, "unreachable: {e}"),
            ConnectError::Refused(e) => write!(f, "refused: {e}"),
        }
    }
}

impl ConnectError {
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectError::Unreachable(_) => "mqtt_unreachable",
            ConnectError::Refused(_) => "mqtt_refused",
        }
    }
}

pub struct Session {
    client: AsyncClient,
    eventloop: EventLoop,
    inbox: VecDeque<Publish>,
    /// Set once the connection failed: the device then starts a new session.
    pub broken: Option<String>,
}

/// Options with small buffers.
pub fn options(shared: &Shared, client_id: &str, username: &str, password: &str) -> MqttOptions {
    let (host, port) = &shared.plan.mqtt;
    let mut options = MqttOptions::new(client_id, host.as_str(), *port);
    options
        .set_credentials(username, password)
        .set_keep_alive(Duration::from_secs(60))
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_inflight(4)
        .set_request_channel_capacity(8)
        .set_clean_session(true);
    options
}

/// The last will of a native device: `updraft/{id}/status` `offline`, retained.
pub fn will(device_id: &str) -> LastWill {
    LastWill::new(format!("updraft/{device_id}/status"), "offline", QoS::AtLeastOnce, true)
}

impl Session {
    /// Connects and waits for the CONNACK.
    pub async fn connect(shared: &Shared, options: MqttOptions) -> Result<Session, ConnectError> {
        let (client, mut eventloop) = AsyncClient::new(options, 8);
        let connected = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) if ack.code == ConnectReturnCode::Success => return Ok(()),
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => return Err(ConnectError::Refused(format!("{:?}", ack.code))),
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return Err(ConnectError::Refused(format!("{code:?}"))),
                    Err(e) => return Err(ConnectError::Unreachable(e.to_string())),
                }
            }
        })
        .await;
        match connected {
            Ok(Ok(())) => {
                shared.stats.sessions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(Session { client, eventloop, inbox: VecDeque::new(), broken: None })
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ConnectError::Unreachable("no CONNACK within 10 s".into())),
        }
    }

    fn absorb(&mut self, event: Result<Event, rumqttc::ConnectionError>) {
        match event {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if self.inbox.len() == INBOX {
                    self.inbox.pop_front();
                }
                self.inbox.push_back(publish);
            }
            Ok(_) => {}
            Err(e) => self.broken = Some(e.to_string()),
        }
    }

    /// Runs `work` while keeping the session alive (acknowledgements, pings, incoming
    /// messages kept for later).
    pub async fn during<F: Future>(&mut self, work: F) -> F::Output {
        tokio::pin!(work);
        loop {
            if self.broken.is_some() {
                return work.await;
            }
            tokio::select! {
                output = &mut work => return output,
                event = self.eventloop.poll() => self.absorb(event),
            }
        }
    }

    /// Publishes at QoS 1.
    pub async fn publish(&mut self, shared: &Shared, topic: String, payload: Vec<u8>, retain: bool) -> Result<(), super::wire::WireError> {
        shared.stats.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let client = self.client.clone();
        let sent = self.during(client.publish(topic, QoS::AtLeastOnce, retain, payload)).await;
        match (sent, &self.broken) {
            (Ok(()), None) => Ok(()),
            (Err(e), _) => Err(super::wire::WireError::Unreachable(e.to_string())),
            (_, Some(broken)) => Err(super::wire::WireError::Unreachable(broken.clone())),
        }
    }

    pub async fn subscribe(&mut self, topics: &[&str]) -> Result<(), String> {
        let client = self.client.clone();
        let filters: Vec<rumqttc::SubscribeFilter> =
            topics.iter().map(|t| rumqttc::SubscribeFilter::new(t.to_string(), QoS::AtLeastOnce)).collect();
        self.during(client.subscribe_many(filters)).await.map_err(|e| e.to_string())
    }

    /// The next message, or None at `until` or when the session broke.
    pub async fn next(&mut self, until: tokio::time::Instant) -> Option<Publish> {
        loop {
            if let Some(publish) = self.inbox.pop_front() {
                return Some(publish);
            }
            if self.broken.is_some() {
                return None;
            }
            tokio::select! {
                event = self.eventloop.poll() => self.absorb(event),
                () = tokio::time::sleep_until(until) => return None,
            }
        }
    }

    /// Disconnects cleanly (a reboot, or going silent).
    pub async fn close(mut self, shared: &Shared) {
        shared.stats.sessions.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if self.broken.is_some() {
            return;
        }
        let client = self.client.clone();
        let _ = self.during(client.disconnect()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async { while self.eventloop.poll().await.is_ok() {} }).await;
    }
}

/// Before the fleet starts: the broker takes the first device's login.
pub async fn probe(shared: &Shared, first: &Device) -> Result<(), Fatal> {
    let device_id = first.device_id.as_deref().unwrap_or_default();
    let token = first.token.as_deref().unwrap_or_default();
    let options = match first.protocol {
        Protocol::Thingsboard => options(shared, &first.mac_hyphen(), token, ""),
        _ => options(shared, &format!("{device_id}-probe"), device_id, token),
    };
    let (host, port) = &shared.plan.mqtt;
    match Session::connect(shared, options).await {
        Ok(session) => {
            session.close(shared).await;
            Ok(())
        }
        Err(ConnectError::Unreachable(e)) => {
            Err(Fatal::new(EXIT_UNREACHABLE, format!("cannot reach the MQTT broker at {host}:{port} (--mqtt): {e}")))
        }
        Err(ConnectError::Refused(e)) => {
            Err(Fatal::new(EXIT_REFUSED, format!("the MQTT broker at {host}:{port} refused the first device's login: {e}")))
        }
    }
}

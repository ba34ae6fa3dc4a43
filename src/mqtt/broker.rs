//! The embedded broker: rmqtt as a library, with Updraft's authentication and topic rules
//! as hooks, an in-memory retained-message store, and listeners for MQTT, MQTT over TLS
//! and MQTT over WebSocket. Updraft's own logic does not call rmqtt: it connects as a
//! client like everyone else (`bus.rs`), so embedded and external mode run the same code.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use rmqtt::codec::v5::PublishAckReason;
use rmqtt::codec::v5::SubscribeAckReason;
use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType, Type};
use rmqtt::net::Builder;
use rmqtt::retain::{DefaultRetainStorage, RetainStorage};
use rmqtt::server::MqttServer;
use rmqtt::types::{AuthResult, Id, PublishAclResult, PublishResult, Retain, SubscribeAclResult, TopicFilter, TopicName};

use super::bus::Bus;
use super::thingsboard::{self, ThingsBoard};
use crate::config::{MqttSettings, TlsSettings};
use crate::domain::mqtt::{self, Access, Principal};
use crate::services::Core;
use crate::services::mqtt_auth::{self, Refusal, ServerIdentity};

/// Retained messages kept at most (each topic holds one).
const MAX_RETAINED: isize = 2_000_000;

/// Addresses the broker listens on.
#[derive(Debug, Clone)]
pub struct BrokerAddrs {
    pub tcp: SocketAddr,
    pub tls: Option<SocketAddr>,
    pub ws: Option<SocketAddr>,
}

pub struct Broker {
    pub addrs: BrokerAddrs,
    task: tokio::task::JoinHandle<()>,
    scx: ServerContext,
    hooks: Arc<Hooks>,
}

/// The broker's listeners, bound but not serving yet (`Broker::bind`, then `Broker::start`):
/// a port that is taken stops start-up before anything is generated or stored.
pub struct BrokerListeners {
    pub addrs: BrokerAddrs,
    /// With their listener ids, which must be unique (ports may be 0, so they are numbered).
    bound: Vec<(rmqtt::net::Listener, rmqtt::types::ListenerId)>,
}

impl Broker {
    /// Starts serving on the bound listeners. `server` is Updraft's own connection's credential.
    pub async fn start(
        listeners: BrokerListeners,
        core: Core,
        settings: &MqttSettings,
        server: ServerIdentity,
        bus: Arc<OnceLock<Bus>>,
        workers: Arc<OnceLock<Vec<tokio::sync::mpsc::Sender<super::bus::Incoming>>>>,
    ) -> anyhow::Result<Broker> {
        let scx = ServerContext::new().mqtt_max_sessions(settings.max_connections as isize).build().await;
        *scx.extends.retain_mut().await = Box::new(MemoryRetain(DefaultRetainStorage::new()));

        let tb = ThingsBoard::new(core.clone(), scx.clone(), settings.max_packet_bytes as usize);
        let hooks = Arc::new(Hooks { core, server, principals: Mutex::default(), sessions: Mutex::default(), bus, workers, tb });
        let register = scx.extends.hook_mgr().register();
        for typ in [
            Type::ClientAuthenticate,
            Type::ClientSubscribeCheckAcl,
            Type::MessagePublishCheckAcl,
            Type::ClientConnected,
            Type::ClientDisconnected,
            Type::MessageDropped,
        ] {
            register.add(typ, Box::new(HookHandler(hooks.clone()))).await;
        }
        register.start().await;

        let BrokerListeners { addrs, bound } = listeners;
        let mut server = MqttServer::new(scx.clone());
        for (listener, id) in bound {
            server = server.listener_by_id(listener, id);
        }
        let server = server.build();
        let task = tokio::spawn(async move {
            if let Err(e) = server.run().await {
                tracing::error!(error = %e, "the MQTT broker stopped");
            }
        });
        tracing::info!(tcp = %addrs.tcp, tls = ?addrs.tls, ws = ?addrs.ws, "embedded MQTT broker listening");
        Ok(Broker { addrs, task, scx, hooks })
    }

    /// Binds the listeners without serving. An error names the setting of the listener.
    pub fn bind(settings: &MqttSettings, tls: Option<&TlsSettings>) -> anyhow::Result<BrokerListeners> {
        let base = |name: &str, addr: SocketAddr| {
            Builder::new()
                .name(name)
                .laddr(addr)
                .max_connections(settings.max_connections)
                .max_handshaking_limit(1_000)
                .max_packet_size(settings.max_packet_bytes)
                .allow_anonymous(false)
                .max_inflight(NonZeroU16::new(settings.max_inflight).unwrap_or(NonZeroU16::MIN))
                .max_mqueue_len(settings.max_queued)
                .session_expiry_interval(settings.session_expiry)
                .max_session_expiry_interval(settings.session_expiry)
                .handshake_timeout(Duration::from_secs(10))
                .reuseaddr(Some(true))
                .nodelay(true)
        };
        let failed = |what: &str, addr: SocketAddr, setting: &str| format!("cannot listen on {addr} for {what} ({setting})");
        let tcp = base("tcp", settings.listen)
            .bind()
            .and_then(|l| l.tcp())
            .map_err(|e| anyhow::anyhow!("{}: {e}", failed("MQTT", settings.listen, "UPDRAFT_MQTT_LISTEN")))?;
        let mut addrs = BrokerAddrs { tcp: tcp.local_addr()?, tls: None, ws: None };
        let mut bound = vec![(tcp, 1)];
        if let Some(tls) = tls {
            let listener = base("tls", settings.tls_listen)
                .tls_cert(Some(tls.cert.display().to_string()))
                .tls_key(Some(tls.key.display().to_string()))
                .bind()
                .and_then(|l| l.tls())
                .map_err(|e| anyhow::anyhow!("{}: {e}", failed("MQTT over TLS", settings.tls_listen, "UPDRAFT_MQTT_TLS_LISTEN")))?;
            addrs.tls = Some(listener.local_addr()?);
            bound.push((listener, 2));
        }
        if let Some(ws) = settings.ws_listen {
            let listener = base("ws", ws)
                .bind()
                .and_then(|l| l.ws())
                .map_err(|e| anyhow::anyhow!("{}: {e}", failed("MQTT over WebSocket", ws, "UPDRAFT_MQTT_WS_LISTEN")))?;
            addrs.ws = Some(listener.local_addr()?);
            bound.push((listener, 3));
        }
        Ok(BrokerListeners { addrs, bound })
    }

    /// Open sessions (connected or kept for a persistent client).
    pub fn sessions(&self) -> isize {
        self.scx.sessions.count()
    }

    /// The ThingsBoard device API of this broker.
    pub fn thingsboard(&self) -> Arc<ThingsBoard> {
        self.hooks.tb.clone()
    }

    /// Whether a device holds a session right now.
    pub fn session_checker(&self) -> super::handler::SessionCheck {
        let hooks = self.hooks.clone();
        Arc::new(move |device_id: &str| hooks.sessions.lock().expect("sessions lock").contains_key(device_id))
    }

    /// Stops accepting connections. Open sessions end with the process.
    pub fn stop(&self) {
        self.task.abort();
    }
}

struct Hooks {
    core: Core,
    server: ServerIdentity,
    /// Who each connection is, from its authentication until it disconnects.
    principals: Mutex<HashMap<Id, Principal>>,
    /// Open connections per device: `online` is announced on the first, `offline` after
    /// the last (a reconnect that replaces a session does not flap).
    sessions: Mutex<HashMap<String, u32>>,
    /// Set once Updraft's own client exists (it connects to this broker, so it comes second).
    bus: Arc<OnceLock<Bus>>,
    /// The handler's queues: connections and disconnections go straight to them (in order per
    /// device), besides the retained `status` announced for everyone else.
    workers: Arc<OnceLock<Vec<tokio::sync::mpsc::Sender<super::bus::Incoming>>>>,
    /// The ThingsBoard device API (answered in the hooks).
    tb: Arc<ThingsBoard>,
}

struct HookHandler(Arc<Hooks>);

#[async_trait]
impl Handler for HookHandler {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        let hooks = &self.0;
        match param {
            Parameter::ClientAuthenticate(info) => {
                let username = info.username().map(|u| u.to_string());
                let password = info.password().map(|p| p.to_vec());
                let ip = info.ipaddress().map(|a| a.ip());
                // ThingsBoard provisioning: username (or client id) `provision`, no password.
                let provisioning = username.as_deref() == Some("provision") || (username.is_none() && &**info.client_id() == "provision");
                if provisioning && password.as_deref().is_none_or(|p| p.is_empty()) {
                    hooks.principals.lock().expect("principals lock").insert(info.id().clone(), Principal::Provision);
                    return (false, Some(HookResult::AuthResult(AuthResult::Allow(false, None))));
                }
                let outcome = mqtt_auth::authenticate(&hooks.core, Some(&hooks.server), username.as_deref(), password.as_deref(), ip).await;
                match outcome {
                    Ok(principal) => {
                        let superuser = principal == Principal::Server;
                        hooks.principals.lock().expect("principals lock").insert(info.id().clone(), principal);
                        (false, Some(HookResult::AuthResult(AuthResult::Allow(superuser, None))))
                    }
                    Err(refusal) => {
                        tracing::info!(client_id = %info.client_id(), username = ?username, ip = ?ip, ?refusal, "MQTT connection refused");
                        let result = match refusal {
                            Refusal::BadCredentials => AuthResult::BadUsernameOrPassword,
                            Refusal::RateLimited => AuthResult::NotAuthorized,
                        };
                        (false, Some(HookResult::AuthResult(result)))
                    }
                }
            }
            Parameter::ClientSubscribeCheckAcl(session, subscribe) => {
                let filter: &str = &subscribe.topic_filter;
                let device = hooks.device_of(&session.id);
                if let Some(device_id) = device.as_deref().filter(|_| thingsboard::device_filter(filter)) {
                    hooks.tb.subscribed(device_id, &session.id.client_id, filter);
                    return (false, Some(HookResult::SubscribeAclResult(SubscribeAclResult::new_success(subscribe.opts.qos(), None))));
                }
                let allowed = hooks.allowed(&session.id, Access::Subscribe, filter);
                if allowed {
                    (false, Some(HookResult::SubscribeAclResult(SubscribeAclResult::new_success(subscribe.opts.qos(), None))))
                } else {
                    metrics::counter!("updraft_mqtt_acl_denied_total", "action" => "subscribe").increment(1);
                    tracing::info!(client_id = %session.id.client_id, filter = %subscribe.topic_filter, "MQTT subscription refused");
                    (false, Some(HookResult::SubscribeAclResult(SubscribeAclResult::new_failure(SubscribeAckReason::NotAuthorized))))
                }
            }
            Parameter::MessagePublishCheckAcl(session, publish) => {
                let topic: &str = &publish.topic;
                // ThingsBoard-style requests are answered here and never routed: every device
                // uses the same topic names.
                let answered = || {
                    (
                        false,
                        Some(HookResult::PublishAclResult(PublishAclResult(PublishResult::reason_code(
                            PublishAckReason::NoMatchingSubscribers,
                            None,
                            false,
                        )))),
                    )
                };
                if let Some(device_id) = hooks.device_of(&session.id).filter(|_| thingsboard::device_topic(topic)) {
                    if let Err(e) = hooks.tb.on_device_publish(&device_id, &session.id.client_id, topic, &publish.payload).await {
                        metrics::counter!("updraft_mqtt_messages_refused_total", "kind" => "thingsboard").increment(1);
                        tracing::info!(%device_id, topic, error = %e, "ThingsBoard-style message refused");
                    }
                    return answered();
                }
                if topic == thingsboard::PROVISION_REQUEST && hooks.is_provisioning(&session.id) {
                    hooks.tb.provision(&session.id.client_id, session.id.remote_addr.map(|a| a.ip()), &publish.payload).await;
                    return answered();
                }
                if hooks.allowed(&session.id, Access::Publish, topic) {
                    (false, Some(HookResult::PublishAclResult(PublishAclResult::allow())))
                } else {
                    metrics::counter!("updraft_mqtt_acl_denied_total", "action" => "publish").increment(1);
                    tracing::info!(client_id = %session.id.client_id, topic = %publish.topic, "MQTT publish refused and dropped");
                    (false, Some(HookResult::PublishAclResult(PublishAclResult::rejected(false, None))))
                }
            }
            Parameter::ClientConnected(session) => {
                let device = match hooks.principals.lock().expect("principals lock").get(&session.id) {
                    Some(Principal::Device { id, .. }) => Some(id.clone()),
                    _ => None,
                };
                if let Some(device_id) = device {
                    let first = {
                        let mut sessions = hooks.sessions.lock().expect("sessions lock");
                        let count = sessions.entry(device_id.clone()).or_insert(0);
                        *count += 1;
                        *count == 1
                    };
                    if first {
                        hooks.announce(&device_id, true).await;
                    }
                }
                (true, acc)
            }
            Parameter::ClientDisconnected(session, _reason) => {
                let principal = hooks.principals.lock().expect("principals lock").remove(&session.id);
                let device_id = match &principal {
                    Some(Principal::Device { id, .. }) => Some(id.as_str()),
                    _ => None,
                };
                hooks.tb.disconnected(device_id, &session.id.client_id);
                if let Some(Principal::Device { id, .. }) = principal {
                    let last = {
                        let mut sessions = hooks.sessions.lock().expect("sessions lock");
                        match sessions.get_mut(&id) {
                            Some(count) if *count > 1 => {
                                *count -= 1;
                                false
                            }
                            Some(_) => {
                                sessions.remove(&id);
                                true
                            }
                            None => false,
                        }
                    };
                    if last {
                        hooks.announce(&id, false).await;
                    }
                }
                (true, acc)
            }
            Parameter::MessageDropped(_, _, _, reason) => {
                // A subscriber too slow for what it is sent: its inflight window and queue
                // (UPDRAFT_MQTT_MAX_INFLIGHT, UPDRAFT_MQTT_MAX_QUEUED) are full.
                metrics::counter!("updraft_mqtt_messages_dropped_total", "reason" => drop_reason(reason)).increment(1);
                (true, acc)
            }
            _ => (true, acc),
        }
    }
}

/// The metric label of why the broker dropped a message.
fn drop_reason(reason: &rmqtt::types::Reason) -> &'static str {
    use rmqtt::types::Reason;
    match reason {
        Reason::MessageQueueFull => "queue_full",
        Reason::InflightWindowFull => "inflight_full",
        Reason::MessageExpiration => "expired",
        Reason::Reasons(reasons) => reasons.first().map(drop_reason).unwrap_or("other"),
        _ => "other",
    }
}

impl Hooks {
    async fn announce(&self, device_id: &str, online: bool) {
        match self.bus.get() {
            Some(bus) => bus.announce_status(device_id, online),
            None => tracing::warn!(device_id, online, "a device's MQTT status changed before Updraft's client was up"),
        }
        if let Some(workers) = self.workers.get() {
            let inbound = crate::domain::mqtt::Inbound::Status { device_id: device_id.to_string() };
            let worker = &workers[super::bus::shard(&inbound)];
            let payload = bytes::Bytes::from_static(if online { b"online" } else { b"offline" });
            // Waiting slows a connection storm down to what the handler keeps up with.
            let _ = worker.send(super::bus::Incoming { inbound, payload }).await;
        }
    }

    fn device_of(&self, id: &Id) -> Option<String> {
        match self.principals.lock().expect("principals lock").get(id) {
            Some(Principal::Device { id, .. }) => Some(id.clone()),
            _ => None,
        }
    }

    fn is_provisioning(&self, id: &Id) -> bool {
        matches!(self.principals.lock().expect("principals lock").get(id), Some(Principal::Provision))
    }

    fn allowed(&self, id: &Id, access: Access, topic: &str) -> bool {
        match self.principals.lock().expect("principals lock").get(id) {
            Some(principal) => mqtt::allowed(principal, access, topic),
            None => false,
        }
    }
}

/// Retained messages in memory (rmqtt leaves storage to a plugin; this is the plugin). Lost
/// at restart: Updraft republishes every connected device's `ota` and `config` then.
struct MemoryRetain(DefaultRetainStorage);

#[async_trait]
impl RetainStorage for MemoryRetain {
    fn enable(&self) -> bool {
        true
    }

    async fn set(&self, topic: &TopicName, retain: Retain, expiry: Option<Duration>) -> rmqtt::Result<()> {
        if !retain.publish.payload.is_empty() && self.0.count().await >= MAX_RETAINED {
            tracing::warn!(%topic, "retained message dropped: the store is full");
            return Ok(());
        }
        self.0.set_with_timeout(topic, retain, expiry).await
    }

    async fn get(&self, filter: &TopicFilter) -> rmqtt::Result<Vec<(TopicName, Retain)>> {
        self.0.get_message(filter).await
    }

    async fn count(&self) -> isize {
        self.0.count().await
    }

    async fn max(&self) -> isize {
        self.0.max().await
    }
}

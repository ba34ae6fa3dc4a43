//! The embedded broker: rmqtt as a library, with Updraft's authentication and topic rules
//! as hooks, an in-memory retained-message store, and listeners for MQTT, MQTT over TLS
//! and MQTT over WebSocket. Updraft's own logic does not call rmqtt: it connects as a
//! client like everyone else (`bus.rs`), so embedded and external mode run the same code.
//!
//! Besides who may publish and subscribe where, the hooks keep who created each client id's
//! session: a session is resumed only by its creator (`domain::mqtt::may_resume`), and a
//! device's sessions end as soon as its token stops being valid (rotated, revoked, device
//! deleted), whichever replica made the change.
//!
//! rmqtt is vendored with seven small patches (vendor/rmqtt/UPDRAFT-PATCHES.md), and rmqtt-net
//! with three (vendor/rmqtt-net/UPDRAFT-PATCHES.md): among them, the TLS listener takes
//! Updraft's own rustls configuration (`crate::tls`), so that renewed certificates are served
//! without a restart and devices may log in with a client certificate, and an idle connection
//! holds little memory (small buffers, a small task).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rmqtt::codec::v5::PublishAckReason;
use rmqtt::codec::v5::SubscribeAckReason;
use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType, Type};
use rmqtt::net::Builder;
use rmqtt::retain::{DefaultRetainStorage, RetainStorage};
use rmqtt::server::MqttServer;
use rmqtt::types::{AuthResult, ConnectInfo, Id, PublishAclResult, PublishResult, Retain, SubscribeAclResult, TopicFilter, TopicName};
use tokio::sync::broadcast::error::RecvError;

use super::bus::Bus;
use super::thingsboard::{self, ThingsBoard};
use crate::config::MqttSettings;
use crate::domain::mqtt::{self, Access, ClientId, ClientIdRefusal, Owner, Principal};
use crate::services::Core;
use crate::services::devices::{self, CertificateIdentity};
use crate::services::events::Event;
use crate::services::fleet::ActiveDevice;
use crate::services::mqtt_auth::{self, Login, Refusal, ServerIdentity};
use crate::tls::Certificates;

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
    /// Ends the sessions of devices whose token stopped being valid.
    scx: ServerContext,
    hooks: Arc<Hooks>,
}

/// The broker's listeners, bound but not serving yet (`Broker::bind`, then `Broker::start`):
/// a port that is taken stops start-up before anything is generated or stored.
pub struct BrokerListeners {
    pub addrs: BrokerAddrs,
    /// With their listener ids, which must be unique (ports may be 0, so they are numbered).
    bound: Vec<(rmqtt::net::Listener, rmqtt::types::ListenerId)>,
    /// The TLS listener's certificates, when devices may present client certificates.
    client_certs: Option<Arc<Certificates>>,
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
        let client_certs = listeners.client_certs.clone();
        let scx = ServerContext::new()
            .mqtt_max_sessions(settings.max_connections as isize)
            .mqtt_queue_full_wait(settings.queue_full_wait)
            .build()
            .await;
        *scx.extends.retain_mut().await = Box::new(MemoryRetain(DefaultRetainStorage::new()));

        let tb = ThingsBoard::new(core.clone(), scx.clone(), settings.max_packet_bytes as usize);
        let hooks = Arc::new(Hooks {
            core,
            server,
            principals: Mutex::default(),
            sessions: Mutex::default(),
            owners: Mutex::default(),
            bus,
            workers,
            tb,
            scx: scx.clone(),
            handshake_timeout: settings.handshake_timeout,
            client_certs,
        });
        let register = scx.extends.hook_mgr().register();
        for typ in [
            Type::ClientAuthenticate,
            Type::ClientSubscribeCheckAcl,
            Type::MessagePublishCheckAcl,
            Type::ClientConnected,
            Type::ClientDisconnected,
            Type::SessionTerminated,
            Type::MessageDropped,
        ] {
            register.add(typ, Box::new(HookHandler(hooks.clone()))).await;
        }
        register.start().await;

        let BrokerListeners { addrs, bound, .. } = listeners;
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
        hooks.core.tasks.spawn("mqtt credentials follower", hooks.clone().follow_credentials());
        tracing::info!(tcp = %addrs.tcp, tls = ?addrs.tls, ws = ?addrs.ws, "embedded MQTT broker listening");
        Ok(Broker { addrs, task, scx, hooks })
    }

    /// Binds the listeners without serving. An error names the setting of the listener.
    /// `tls`: MQTT over TLS serves these certificates (reloaded when their files change, with
    /// optional client certificates for devices).
    pub fn bind(settings: &MqttSettings, tls: Option<&Arc<Certificates>>) -> anyhow::Result<BrokerListeners> {
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
                .io_buffer_capacity(settings.io_buffer_bytes)
                .session_expiry_interval(settings.session_expiry)
                .max_session_expiry_interval(settings.session_expiry)
                .handshake_timeout(settings.handshake_timeout)
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
        let client_certs = tls.filter(|c| c.asks_for_client_certs()).cloned();
        if let Some(certificates) = tls {
            // rmqtt hands a verified client certificate's subject to the authentication hook.
            let listener = base("tls", settings.tls_listen)
                .collect_cert_info(certificates.asks_for_client_certs())
                .bind()
                .and_then(|l| l.tls_with_config(certificates.server_config(&[])))
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
        Ok(BrokerListeners { addrs, bound, client_certs })
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
    /// Who created the session of each client id, by client id.
    owners: Mutex<HashMap<String, Owned>>,
    scx: ServerContext,
    handshake_timeout: Duration,
    /// Set when devices may log in with a client certificate (MQTT over TLS).
    client_certs: Option<Arc<Certificates>>,
}

/// The session of a client id, as its last accepted login left it.
struct Owned {
    owner: Owner,
    /// The connection that logged in (its session has this id once it exists).
    id: Id,
    /// A device's token (digest): the session ends once the token is no longer valid.
    token_digest: Option<String>,
    /// A device's client certificate identity: the session ends once it names no device (or
    /// another one).
    certificate: Option<Arc<str>>,
    /// The connection completed its handshake: its session exists until `SessionTerminated`.
    connected: bool,
    since: Instant,
}

struct HookHandler(Arc<Hooks>);

#[async_trait]
impl Handler for HookHandler {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        let hooks = &self.0;
        match param {
            Parameter::ClientAuthenticate(info) => {
                let result = match hooks.log_in(info).await {
                    Ok(principal) => {
                        let superuser = principal == Principal::Server;
                        hooks.principals.lock().expect("principals lock").insert(info.id().clone(), principal);
                        AuthResult::Allow(superuser, None)
                    }
                    Err(Refused::Login(Refusal::BadCredentials)) => AuthResult::BadUsernameOrPassword,
                    Err(Refused::Login(Refusal::RateLimited)) => AuthResult::NotAuthorized,
                    Err(Refused::ClientId(_)) => AuthResult::IdentifierRejected,
                };
                (false, Some(HookResult::AuthResult(result)))
            }
            Parameter::ClientSubscribeCheckAcl(session, subscribe) => {
                let filter: &str = &subscribe.topic_filter;
                let device = hooks.device_of(&session.id);
                if let Some(device_id) = device.as_deref().filter(|_| thingsboard::device_filter(filter)) {
                    hooks.tb.subscribed(device_id, &session.id.client_id, filter).await;
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
                    let max_packet = session.connect_info().await.ok().and_then(|c| c.max_packet_size()).map(|m| m.get());
                    if let Err(e) = hooks.tb.on_device_publish(&device_id, &session.id.client_id, max_packet, topic, &publish.payload).await
                    {
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
                if let Some(owned) = hooks.owners.lock().expect("owners lock").get_mut(&*session.id.client_id)
                    && owned.id == session.id
                {
                    owned.connected = true;
                }
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
            Parameter::SessionTerminated(session, _reason) => {
                let mut owners = hooks.owners.lock().expect("owners lock");
                if owners.get(&*session.id.client_id).is_some_and(|owned| owned.id == session.id) {
                    owners.remove(&*session.id.client_id);
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

/// Why a CONNECT was refused.
enum Refused {
    Login(Refusal),
    ClientId(ClientIdRefusal),
}

impl Refused {
    fn as_str(&self) -> &'static str {
        match self {
            Refused::Login(refusal) => refusal.as_str(),
            Refused::ClientId(refusal) => refusal.as_str(),
        }
    }
}

/// rmqtt gives a client that sent an empty client id a v4 UUID as 32 lower-case hex digits.
/// (A client may choose such an id too: it is random, so it names no device and resumes no
/// one else's session, which is all the client id rule asks.)
fn assigned_by_broker(client_id: &str) -> bool {
    client_id.len() == 32 && client_id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Hooks {
    /// Authenticates a CONNECT, then checks its client id: the client id rule, then that it
    /// does not resume someone else's session. Logs one line per refusal (never a credential).
    async fn log_in(&self, info: &ConnectInfo) -> Result<Principal, Refused> {
        let result = self.check_login(info).await;
        if let Err(refused) = &result {
            let addr = info.id().remote_addr.map(|a| a.to_string()).unwrap_or_default();
            tracing::info!(client_id = ?&**info.client_id(), %addr, reason = refused.as_str(), "MQTT connection refused");
            if let Refused::ClientId(_) = refused {
                metrics::counter!("updraft_mqtt_client_id_refused_total").increment(1);
            }
        }
        result
    }

    async fn check_login(&self, info: &ConnectInfo) -> Result<Principal, Refused> {
        let username = info.username().map(|u| u.to_string());
        let password = info.password().map(|p| p.to_vec());
        let ip = info.ipaddress().map(|a| a.ip());
        // A verified client certificate (MQTT over TLS with UPDRAFT_TLS_CLIENT_CA): Some(None)
        // when it has no identity.
        let certificate = match (&self.client_certs, info.cert()) {
            (Some(certs), Some(cert)) => Some(certs.mqtt_identity(cert.common_name.as_deref(), &cert.subject, cert.serial.as_deref())),
            _ => None,
        };
        let no_password = password.as_deref().is_none_or(|p| p.is_empty());
        // ThingsBoard provisioning: username (or client id) `provision`, no password.
        let provisioning = username.as_deref() == Some("provision") || (username.is_none() && &**info.client_id() == "provision");
        let login = if provisioning && no_password && certificate.is_none() {
            Login { principal: Principal::Provision, token_digest: None }
        } else if let (Some(identity), true) = (&certificate, no_password) {
            // The certificate is the credential; a user name, if any, must name its device.
            let device = self.certificate_device(identity.as_deref(), ip).await?;
            if let Some(username) = username.as_deref().filter(|u| !u.is_empty())
                && username != &*device.id
                && crate::domain::mac::Mac::parse(username).ok().is_none_or(|m| Some(m) != device.mac)
            {
                return Err(Refused::Login(Refusal::BadCredentials));
            }
            Login { principal: Principal::Device { id: device.id.to_string(), mac: device.mac }, token_digest: None }
        } else {
            let login = mqtt_auth::authenticate(&self.core, Some(&self.server), username.as_deref(), password.as_deref(), ip)
                .await
                .map_err(Refused::Login)?;
            // A device's token on a connection with a client certificate: the same device's.
            if let (Some(identity), Principal::Device { id, .. }) = (&certificate, &login.principal) {
                let device = self.certificate_device(identity.as_deref(), ip).await?;
                if *device.id != **id {
                    tracing::info!(certificate = %device.id, token = %id, "MQTT login refused: the token and the client certificate name different devices");
                    return Err(Refused::Login(Refusal::BadCredentials));
                }
            }
            login
        };
        let client_id: &str = info.client_id();
        let named = if assigned_by_broker(client_id) { ClientId::Assigned } else { ClientId::Chosen(client_id) };
        mqtt_auth::check_client_id(&self.core, &login.principal, named).await.map_err(Refused::ClientId)?;
        let by_certificate = match (&login.principal, &certificate) {
            (Principal::Device { .. }, Some(Some(identity))) if login.token_digest.is_none() => Some(identity.clone()),
            _ => None,
        };
        self.claim(info.id(), &login, by_certificate).await.map_err(Refused::ClientId)?;
        Ok(login.principal)
    }

    /// The registered device a client certificate's identity names.
    async fn certificate_device(&self, identity: Option<&str>, ip: Option<std::net::IpAddr>) -> Result<Arc<ActiveDevice>, Refused> {
        let field = match self.client_certs.as_ref().map(|c| c.client_identity()) {
            Some(crate::config::ClientIdentity::San) => "subject alternative name",
            _ => "subject common name",
        };
        let ip = ip.unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
        devices::authenticate_certificate(&self.core, CertificateIdentity { identity, field }, ip).await.map_err(|e| match e {
            crate::domain::Error::TooManyRequests { .. } => Refused::Login(Refusal::RateLimited),
            e => {
                tracing::info!(error = %e, "MQTT client certificate refused");
                Refused::Login(Refusal::BadCredentials)
            }
        })
    }

    /// Records `login` as the owner of its client id's session, unless that session (kept
    /// for a persistent client, connected, or being connected right now) is someone else's.
    /// `certificate`: the device logged in with this client certificate identity.
    async fn claim(&self, id: &Id, login: &Login, certificate: Option<Arc<str>>) -> Result<(), ClientIdRefusal> {
        let client_id = id.client_id.to_string();
        let exists = self.scx.extends.shared().await.exist(&client_id);
        let mut owners = self.owners.lock().expect("owners lock");
        if let Some(current) = owners.get(&client_id) {
            let connecting = !current.connected && current.since.elapsed() < self.handshake_timeout;
            if (exists || connecting) && !mqtt::may_resume(&current.owner, &login.principal) {
                return Err(ClientIdRefusal::SessionOfAnother);
            }
        }
        let owned = Owned {
            owner: login.principal.owner(),
            id: id.clone(),
            token_digest: login.token_digest.clone(),
            certificate,
            connected: false,
            since: Instant::now(),
        };
        owners.insert(client_id, owned);
        // Logins whose handshake failed after this hook leave an entry behind: drop them now
        // and then (sessions that exist remove theirs when they end).
        if owners.len().is_multiple_of(1024) {
            let timeout = self.handshake_timeout;
            owners.retain(|_, owned| owned.connected || owned.since.elapsed() < timeout);
        }
        Ok(())
    }

    /// Follows token and device changes (this replica's events at once, every replica's
    /// through the device change log within a second or two) and ends the sessions whose
    /// device token is no longer valid.
    async fn follow_credentials(self: Arc<Self>) {
        let mut events = self.core.events.subscribe_changes();
        let mut changes = self.core.devices.changed.subscribe();
        loop {
            let devices: Option<HashSet<String>> = tokio::select! {
                event = events.recv() => match event {
                    Ok(published) => match &published.event {
                        Event::TokenIssued { device_id, .. } | Event::TokenRevoked { device_id, .. } | Event::DeviceDeleted { device_id } => {
                            Some(HashSet::from([device_id.clone()]))
                        }
                        _ => continue,
                    },
                    Err(RecvError::Lagged(_)) => None,
                    Err(RecvError::Closed) => return,
                },
                changed = changes.recv() => match changed {
                    Ok(device_ids) => {
                        let mine = self.devices_with_sessions();
                        let concerned: HashSet<String> = device_ids.iter().filter(|id| mine.contains(id.as_str())).cloned().collect();
                        if concerned.is_empty() {
                            continue;
                        }
                        Some(concerned)
                    }
                    Err(RecvError::Lagged(_)) => None,
                    Err(RecvError::Closed) => return,
                },
            };
            self.end_invalid_sessions(devices.as_ref()).await;
        }
    }

    fn devices_with_sessions(&self) -> HashSet<String> {
        let owners = self.owners.lock().expect("owners lock");
        owners
            .values()
            .filter_map(|owned| match &owned.owner {
                Owner::Device(device_id) => Some(device_id.clone()),
                _ => None,
            })
            .collect()
    }

    /// Ends the sessions (connected or kept) of `devices` (None: every device) whose token
    /// is no longer valid.
    async fn end_invalid_sessions(&self, devices: Option<&HashSet<String>>) {
        type Session = (Id, String, Option<String>, Option<Arc<str>>);
        let sessions: Vec<Session> = {
            let owners = self.owners.lock().expect("owners lock");
            owners
                .values()
                .filter_map(|owned| match &owned.owner {
                    Owner::Device(device_id) if devices.is_none_or(|d| d.contains(device_id)) => {
                        Some((owned.id.clone(), device_id.clone(), owned.token_digest.clone(), owned.certificate.clone()))
                    }
                    _ => None,
                })
                .collect()
        };
        for (id, device_id, token_digest, certificate) in sessions {
            let valid = match (&token_digest, &certificate) {
                (Some(digest), _) => mqtt_auth::token_still_valid(&self.core, &device_id, digest).await,
                (None, Some(identity)) => {
                    devices::device_of_certificate(&self.core, identity).await.map(|device| device.is_some_and(|d| *d.id == *device_id))
                }
                (None, None) => Ok(false),
            };
            match valid {
                Ok(true) => {}
                Ok(false) => {
                    if self.end_session(&id).await {
                        metrics::counter!("updraft_mqtt_sessions_ended_total", "reason" => "credential").increment(1);
                        tracing::info!(%device_id, client_id = ?&*id.client_id, "MQTT session ended: the device's token is no longer valid");
                    }
                }
                Err(e) => tracing::warn!(%device_id, error = %e, "cannot check a device's token; its MQTT sessions stay for now"),
            }
        }
    }

    /// Ends a session (connected or kept), if it is still the one `id` names. Holds the
    /// client id's lock (rmqtt's, which logins take too) only while it kicks: a login of the
    /// same client id waits for it, and then does not resume the ended session.
    async fn end_session(&self, id: &Id) -> bool {
        let shared = self.scx.extends.shared().await;
        let is_this_one = |entry: &dyn rmqtt::shared::Entry| entry.session().is_some_and(|session| session.id == *id);
        if !is_this_one(shared.entry(id.clone()).as_ref()) {
            return false;
        }
        let mut entry = match shared.entry(id.clone()).try_lock().await {
            Ok(entry) => entry,
            Err(e) => {
                tracing::warn!(client_id = ?&*id.client_id, error = %e, "cannot end an MQTT session");
                return false;
            }
        };
        if !is_this_one(entry.as_ref()) {
            return false;
        }
        // As an administrator's kick: the session is cleaned, not handed over.
        match entry.kick(true, true, true).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(client_id = ?&*id.client_id, error = %e, "cannot end an MQTT session");
                false
            }
        }
    }

    async fn announce(&self, device_id: &str, online: bool) {
        match self.bus.get() {
            Some(bus) => bus.announce_status(device_id, online),
            None => tracing::warn!(device_id, online, "a device's MQTT status changed before Updraft's client was up"),
        }
        if let Some(workers) = self.workers.get() {
            let inbound = crate::domain::mqtt::Inbound::Status { device_id: device_id.into() };
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

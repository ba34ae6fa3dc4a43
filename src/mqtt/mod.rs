//! The MQTT adapter (docs/CLIENT.md lists every topic).
//!
//! - `broker`: the embedded broker (rmqtt) with Updraft's authentication and topic rules;
//!   off when `UPDRAFT_MQTT_URL` names an external broker.
//! - `bus`: Updraft's own client connection to whichever broker runs: the one interface its
//!   logic uses in both modes.
//! - `handler`: device → server messages; `push`: server → device messages.
//!
//! The topic grammar and the access rules are pure and live in `domain::mqtt`.

pub mod broker;
pub mod bus;
pub mod handler;
pub mod push;
pub mod thingsboard;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use tokio::sync::mpsc;

use crate::config::Settings;
use crate::domain::secret;
use crate::services::Core;
use crate::services::commands;
use crate::services::mqtt_auth::{SERVER_USERNAME_PREFIX, ServerIdentity};
use broker::{Broker, BrokerAddrs, BrokerListeners};
use bus::{Bus, Endpoint, Signal};

/// The running MQTT side of a server.
pub struct Mqtt {
    broker: Option<Broker>,
    bus: Bus,
    external: Option<String>,
    /// With an external broker: Updraft's own credential there, recognised by the auth hooks.
    hook_identity: Option<ServerIdentity>,
}

impl Mqtt {
    /// Binds the embedded broker's listeners (none when MQTT is off or the broker external),
    /// before anything else starts: an error names the setting of the listener.
    /// `tls`: the certificates of MQTT over TLS (the HTTPS ones), when TLS is configured.
    pub fn bind(settings: &Settings, tls: Option<&std::sync::Arc<crate::tls::Certificates>>) -> anyhow::Result<Option<BrokerListeners>> {
        let mqtt = &settings.mqtt;
        if !mqtt.enabled || mqtt.url.is_some() {
            return Ok(None);
        }
        Broker::bind(mqtt, tls).map(Some)
    }

    /// Starts the embedded broker on `listeners` (from `bind`; none with an external broker),
    /// connects Updraft's client to it, and starts handling and pushing messages.
    /// `base_url` starts the download URLs in offers (`UPDRAFT_PUBLIC_URL` or what start-up chose).
    pub async fn start(
        core: &Core,
        settings: &Settings,
        listeners: Option<BrokerListeners>,
        base_url: String,
    ) -> anyhow::Result<Option<Mqtt>> {
        let mqtt = &settings.mqtt;
        if !mqtt.enabled {
            return Ok(None);
        }
        let bus_cell: Arc<OnceLock<Bus>> = Arc::default();
        let workers_cell: Arc<OnceLock<Vec<mpsc::Sender<bus::Incoming>>>> = Arc::default();
        let (broker, endpoint, external) = match &mqtt.url {
            None => {
                let listeners = listeners.context("the embedded MQTT broker's listeners were not bound")?;
                let password = secret::generate("");
                let username = format!("{SERVER_USERNAME_PREFIX}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
                let identity = ServerIdentity { username: username.clone(), digest: secret::digest(&password) };
                let broker = Broker::start(listeners, core.clone(), mqtt, identity, bus_cell.clone(), workers_cell.clone())
                    .await
                    .context("cannot start the embedded MQTT broker")?;
                let tcp = broker.addrs.tcp;
                let host = if tcp.ip().is_unspecified() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { tcp.ip() };
                let endpoint = Endpoint {
                    host: host.to_string(),
                    port: tcp.port(),
                    tls: false,
                    username,
                    password: Some(password),
                    max_packet_bytes: mqtt.max_packet_bytes as usize,
                    split: false,
                };
                (Some(broker), endpoint, None)
            }
            Some(url) => {
                let tls = matches!(url.scheme(), "mqtts" | "ssl");
                let endpoint = Endpoint {
                    host: url.host_str().unwrap_or("localhost").to_string(),
                    port: url.port().unwrap_or(if tls { 8883 } else { 1883 }),
                    tls,
                    username: mqtt.username.clone(),
                    password: mqtt.password.as_ref().map(|p| p.expose().to_string()),
                    max_packet_bytes: mqtt.max_packet_bytes as usize,
                    split: true,
                };
                tracing::info!(broker = %crate::config::redact_url(url.as_str()), "using an external MQTT broker; the embedded one is off");
                (None, endpoint, Some(crate::config::redact_url(url.as_str())))
            }
        };

        // rustls has two crypto providers compiled in (ring for us, aws-lc-rs for rmqtt's
        // listeners); clients that use the process default need one chosen.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (bus, eventloop) = Bus::new(&endpoint);
        let _ = bus_cell.set(bus.clone());
        core.outbox.install(Arc::new(bus.clone()));

        let tb = broker.as_ref().map(Broker::thingsboard);
        if let Some(tb) = &tb {
            core.outbox.install_rpc(Arc::new(thingsboard::Rpc(tb.clone())));
        }
        let pusher = Arc::new(push::Pusher::new(core.clone(), bus.clone(), base_url, mqtt.max_packet_bytes as usize, tb));
        let handler = Arc::new(handler::Handler {
            pusher: pusher.clone(),
            holds_session: broker.as_ref().map(Broker::session_checker),
            connect_syncs: Arc::new(tokio::sync::Semaphore::new(32)),
        });
        let mut senders = Vec::with_capacity(bus::WORKERS);
        for _ in 0..bus::WORKERS {
            let (sender, receiver) = mpsc::channel(bus::WORKER_QUEUE);
            senders.push(sender);
            core.tasks.spawn("mqtt handler", handler.clone().run(receiver));
        }
        let _ = workers_cell.set(senders.clone());
        let (signal_tx, mut signal_rx) = mpsc::unbounded_channel();
        let on_connect = pusher.clone();
        core.tasks.spawn("mqtt reconnect resync", async move {
            while let Some(Signal::Connected) = signal_rx.recv().await {
                // After a (re)connection the broker may have lost retained state.
                on_connect.resync(None, true).await;
            }
        });
        let bus::Loops { publisher, follower } = eventloop;
        core.tasks.spawn("mqtt publisher", bus.clone().run_publisher(publisher));
        core.tasks.spawn("mqtt follower", bus.clone().run_follower(follower, senders, signal_tx));
        core.tasks.spawn("mqtt pushes", pusher.clone().follow_events());
        let periodic = pusher.clone();
        let every = mqtt.resync_every;
        core.tasks.spawn("mqtt periodic resync", async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                // Maintenance windows open, schedules start: offers change with time alone.
                periodic.resync(None, false).await;
            }
        });
        commands::spawn_background(core.clone());
        let hook_identity = external.as_ref().and_then(|_| {
            mqtt.password.as_ref().map(|p| ServerIdentity { username: mqtt.username.clone(), digest: secret::digest(p.expose()) })
        });
        Ok(Some(Mqtt { broker, bus, external, hook_identity }))
    }

    /// The embedded broker's listeners (None with an external broker).
    pub fn broker_addrs(&self) -> Option<&BrokerAddrs> {
        self.broker.as_ref().map(|b| &b.addrs)
    }

    /// For `/api/v1/mqtt` and readiness.
    pub fn status(&self) -> MqttStatus {
        MqttStatus {
            mode: if self.broker.is_some() { "embedded" } else { "external" },
            connected: self.bus.is_connected(),
            sessions: self.broker.as_ref().map(|b| b.sessions().max(0) as u64),
            listeners: self.broker_addrs().map(|a| {
                let mut list = vec![format!("mqtt://{}", a.tcp)];
                list.extend(a.tls.map(|t| format!("mqtts://{t}")));
                list.extend(a.ws.map(|w| format!("ws://{w}/mqtt")));
                list
            }),
            external: self.external.clone(),
        }
    }

    pub fn hook_identity(&self) -> Option<&ServerIdentity> {
        self.hook_identity.as_ref()
    }

    pub fn stop(&self) {
        if let Some(broker) = &self.broker {
            broker.stop();
        }
    }
}

pub struct MqttStatus {
    pub mode: &'static str,
    /// Updraft's own client is connected to the broker.
    pub connected: bool,
    pub sessions: Option<u64>,
    pub listeners: Option<Vec<String>>,
    pub external: Option<String>,
}

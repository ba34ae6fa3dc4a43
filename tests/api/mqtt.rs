//! MQTT, end to end with real brokers: every scenario runs against the embedded broker and
//! against Mosquitto (Debian package) as an external broker, which Updraft then joins as a
//! client. Mosquitto gets a password file (made with `mosquitto_passwd`) and an ACL file,
//! written by the test as docs/DEPLOYMENT.md describes.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

use crate::helpers::*;

const UPDRAFT_USER: &str = "updraft";
const UPDRAFT_PASSWORD: &str = "updraft-broker-password";

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Broker {
    Embedded,
    Mosquitto,
}

/// A Mosquitto broker on a free loopback port, stopped by PID when dropped.
struct Mosquitto {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start() -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let passwords = dir.path().join("passwords");
        std::fs::write(&passwords, "").unwrap();
        add_password(&passwords, UPDRAFT_USER, UPDRAFT_PASSWORD);
        // Devices: their own tree only (as Updraft's embedded broker enforces); Updraft: all.
        let acl = "pattern write updraft/%u/status\npattern write updraft/%u/telemetry\npattern write updraft/%u/attributes\n\
                   pattern write updraft/%u/ota/status\npattern write updraft/%u/cmd/result\npattern read updraft/%u/ota\n\
                   pattern read updraft/%u/config\npattern read updraft/%u/cmd\npattern read iotsupport/updates/+\n\
                   user updraft\ntopic readwrite #\n";
        std::fs::write(dir.path().join("acl"), acl).unwrap();
        let config = format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\nacl_file {}\npersistence false\nmax_packet_size 8388608\n",
            passwords.display(),
            dir.path().join("acl").display()
        );
        std::fs::write(dir.path().join("mosquitto.conf"), config).unwrap();
        let child = Command::new(mosquitto_binary())
            .args(["-c", &dir.path().join("mosquitto.conf").display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto must be installed (apt-get install mosquitto); scripts/test.sh does it");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto { child, port, dir }
    }

    /// Lets a device in: adds its id and token to the password file and reloads it.
    fn allow(&self, username: &str, password: &str) {
        add_password(&self.dir.path().join("passwords"), username, password);
        let _ = Command::new("kill").args(["-HUP", &self.child.id().to_string()]).status();
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mosquitto_binary() -> String {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"].iter().find(|p| std::path::Path::new(p).exists()).unwrap_or(&"mosquitto").to_string()
}

fn add_password(file: &std::path::Path, username: &str, password: &str) {
    let status =
        Command::new("mosquitto_passwd").args(["-b", &file.display().to_string(), username, password]).status().expect("mosquitto_passwd");
    assert!(status.success());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Updraft plus the broker its devices talk to.
pub(crate) struct Setup {
    pub(crate) app: TestApp,
    pub(crate) broker: SocketAddr,
    mosquitto: Option<Mosquitto>,
}

pub(crate) async fn setup(kind: Broker) -> Setup {
    match kind {
        Broker::Embedded => {
            let app = spawn_app().await;
            let broker = app.mqtt_addr.expect("the embedded broker runs");
            Setup { app, broker, mosquitto: None }
        }
        Broker::Mosquitto => {
            let mosquitto = Mosquitto::start();
            let port = mosquitto.port;
            let app = spawn_app_with(|s| {
                s.mqtt.url = Some(format!("mqtt://127.0.0.1:{port}").parse().unwrap());
                s.mqtt.username = UPDRAFT_USER.into();
                s.mqtt.password = Some(UPDRAFT_PASSWORD.into());
                s.mqtt.auth_hooks = true;
            })
            .await;
            assert!(app.mqtt_addr.is_none(), "the embedded broker is off with an external one");
            let setup = Setup { app, broker: SocketAddr::from(([127, 0, 0, 1], port)), mosquitto: Some(mosquitto) };
            setup.wait_until_connected().await;
            setup
        }
    }
}

impl Setup {
    pub(crate) async fn wait_until_connected(&self) {
        for _ in 0..100 {
            let status: Value = self.app.admin(Method::GET, "/api/v1/mqtt").send().await.unwrap().json().await.unwrap();
            if status["connected"] == true {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("Updraft did not connect to the broker");
    }

    /// Registers a device with a token (and lets it into Mosquitto).
    pub(crate) async fn device(&self, mac: &str, product: &str, version: &str) -> (String, String) {
        let response = self
            .app
            .admin(Method::POST, "/api/v1/devices")
            .json(&json!({"mac": mac, "product": product, "hardware": "esp32", "version": version, "issue_token": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        let (id, token) = (body["id"].as_str().unwrap().to_string(), body["token"].as_str().unwrap().to_string());
        if let Some(m) = &self.mosquitto {
            m.allow(&id, &token);
        }
        (id, token)
    }

    /// A device connected the documented way: client id and username = id, password =
    /// token, a retained `offline` last will, then `online`, then subscribed to its own tree.
    pub(crate) async fn connect_device(&self, id: &str, token: &str) -> Client {
        let mut options = self.options(id, id, token);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_last_will(LastWill::new(format!("updraft/{id}/status"), "offline", QoS::AtLeastOnce, true));
        let mut client = Client::connect(options).await.unwrap_or_else(|code| panic!("the device cannot connect: {code:?}"));
        client.client.subscribe(format!("updraft/{id}/#"), QoS::AtLeastOnce).await.unwrap();
        client.expect_suback().await;
        client.client.publish(format!("updraft/{id}/status"), QoS::AtLeastOnce, true, "online").await.unwrap();
        client
    }

    /// MQTT 3.1.1 options for this broker.
    pub(crate) fn options(&self, client_id: &str, username: &str, password: &str) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, self.broker.ip().to_string(), self.broker.port());
        options.set_credentials(username, password);
        options
    }

    /// MQTT 5 options for this broker.
    pub(crate) fn options_v5(&self, client_id: &str, username: &str, password: &str) -> rumqttc::v5::MqttOptions {
        let mut options = rumqttc::v5::MqttOptions::new(client_id, self.broker.ip().to_string(), self.broker.port());
        options.set_credentials(username, password);
        options
    }

    /// Waits until the server has seen every device's MQTT connection end.
    pub(crate) async fn wait_until_no_device_is_connected(&self) {
        for _ in 0..200 {
            let text = self.app.client.get(self.app.url("/metrics")).send().await.unwrap().text().await.unwrap();
            if text.lines().any(|l| l == "updraft_mqtt_connected_devices 0") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("a device still counts as connected");
    }

    /// Sends a command (not waiting for its answer); returns its id.
    pub(crate) async fn send_command(&self, id: &str, name: &str) -> String {
        let response =
            self.app.admin(Method::POST, &format!("/api/v1/devices/{id}/commands")).json(&json!({"name": name})).send().await.unwrap();
        assert_eq!(response.status(), 202);
        response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
    }

    /// An operator or service credential.
    pub(crate) async fn user(&self, username: &str, password: &str, role: &str) {
        let response = self
            .app
            .admin(Method::PUT, &format!("/api/v1/mqtt/users/{username}"))
            .json(&json!({"password": password, "role": role}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.text().await.unwrap());
    }

    pub(crate) async fn device_view(&self, id: &str) -> Value {
        self.app.admin(Method::GET, &format!("/api/v1/devices/{id}")).send().await.unwrap().json().await.unwrap()
    }

    pub(crate) async fn wait_for_status(&self, id: &str, status: &str) {
        for _ in 0..200 {
            if self.device_view(id).await["status"] == status {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("device {id} never became {status}: {}", self.device_view(id).await);
    }
}

/// A test MQTT client that records what it receives.
pub(crate) struct Client {
    pub(crate) client: AsyncClient,
    pub(crate) eventloop: EventLoop,
    /// The CONNACK said the broker resumed a session.
    pub(crate) session_present: bool,
}

impl Client {
    pub(crate) async fn connect(options: MqttOptions) -> Result<Client, ConnectReturnCode> {
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        loop {
            match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await.expect("CONNACK in time") {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    return if ack.code == ConnectReturnCode::Success {
                        Ok(Client { client, eventloop, session_present: ack.session_present })
                    } else {
                        Err(ack.code)
                    };
                }
                Ok(_) => {}
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return Err(code),
                Err(e) => panic!("connection failed without a CONNACK: {e}"),
            }
        }
    }

    /// True when the broker closes the connection within `wait` (what arrives until then is
    /// skipped).
    pub(crate) async fn closed_within(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, async { while self.eventloop.poll().await.is_ok() {} }).await.is_ok()
    }

    pub(crate) async fn expect_suback(&mut self) -> Vec<rumqttc::SubscribeReasonCode> {
        loop {
            if let Event::Incoming(Packet::SubAck(ack)) = self.next_event(Duration::from_secs(10)).await.expect("SUBACK in time") {
                return ack.return_codes;
            }
        }
    }

    pub(crate) async fn next_event(&mut self, wait: Duration) -> Option<Event> {
        match tokio::time::timeout(wait, self.eventloop.poll()).await {
            Ok(Ok(event)) => Some(event),
            Ok(Err(e)) => panic!("the connection broke: {e}"),
            Err(_) => None,
        }
    }

    /// The next message on `topic` within `wait` (others are skipped).
    pub(crate) async fn message_on(&mut self, topic: &str, wait: Duration) -> Option<rumqttc::Publish> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.next_event(left).await {
                Some(Event::Incoming(Packet::Publish(p))) if p.topic == topic => return Some(p),
                Some(_) => {}
                None => return None,
            }
        }
    }

    /// The next non-empty `ota` message within `wait`.
    pub(crate) async fn offer(&mut self, id: &str, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let message = self.message_on(&format!("updraft/{id}/ota"), left).await?;
            if !message.payload.is_empty() {
                return Some(serde_json::from_slice(&message.payload).expect("ota is JSON"));
            }
        }
    }

    /// Keeps the connection serviced for a while (acks, pings), returning what arrived.
    pub(crate) async fn drain(&mut self, wait: Duration) -> Vec<rumqttc::Publish> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut received = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return received;
            }
            match self.next_event(left).await {
                Some(Event::Incoming(Packet::Publish(p))) => received.push(p),
                Some(_) => {}
                None => return received,
            }
        }
    }
}

/// An MQTT 5 connection: the client and its event loop, or the CONNACK's refusal.
pub(crate) async fn connect_v5(
    options: rumqttc::v5::MqttOptions,
) -> Result<(rumqttc::v5::AsyncClient, rumqttc::v5::EventLoop), rumqttc::v5::mqttbytes::v5::ConnectReturnCode> {
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as Code, Packet as PacketV5};
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 10);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await.expect("CONNACK in time") {
            Ok(rumqttc::v5::Event::Incoming(PacketV5::ConnAck(ack))) if ack.code == Code::Success => return Ok((client, eventloop)),
            Ok(rumqttc::v5::Event::Incoming(PacketV5::ConnAck(ack))) => return Err(ack.code),
            Ok(_) => {}
            Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => return Err(code),
            Err(e) => panic!("no CONNACK: {e}"),
        }
    }
}

macro_rules! both_brokers {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Broker::Embedded).await })*
        }
        mod mosquitto {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Broker::Mosquitto).await })*
        }
    };
}

both_brokers!(
    wrong_credentials_are_refused_with_a_connack_code,
    devices_stay_in_their_own_topic_tree,
    a_retained_offer_reaches_a_device_that_connects_later,
    the_last_will_turns_a_device_offline,
    a_command_round_trip_and_a_timeout,
    a_new_build_is_pushed_only_to_the_devices_concerned,
    update_status_telemetry_and_attributes_flow_in,
    a_product_s_new_poll_interval_reaches_connected_devices_at_once,
);

async fn wrong_credentials_are_refused_with_a_connack_code(kind: Broker) {
    let s = setup(kind).await;
    let (id, token) = s.device("02:00:00:00:60:01", "lamp", "1.0.0").await;
    let mut options = MqttOptions::new("wrong", s.broker.ip().to_string(), s.broker.port());
    options.set_credentials(id.clone(), format!("{token}x"));
    let code = Client::connect(options).await.err().expect("a wrong token is refused");
    match kind {
        // Updraft's broker says exactly what is wrong (3.1.1 return code 4).
        Broker::Embedded => assert_eq!(code, ConnectReturnCode::BadUserNamePassword),
        // Mosquitto answers 5 ("not authorised") for a wrong password; refused all the same.
        Broker::Mosquitto => assert!(matches!(code, ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized)),
    }
    // The right token of another device does not open this one's name.
    let (_, other_token) = s.device("02:00:00:00:60:02", "lamp", "1.0.0").await;
    let mut options = MqttOptions::new("swap", s.broker.ip().to_string(), s.broker.port());
    options.set_credentials(id.clone(), other_token);
    assert!(Client::connect(options).await.is_err());
    if kind == Broker::Embedded {
        // MQTT 5: reason 0x86.
        let mut options = rumqttc::v5::MqttOptions::new("v5", s.broker.ip().to_string(), s.broker.port());
        options.set_credentials(id.clone(), "nope");
        let (_client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 10);
        let refused = loop {
            match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await.unwrap() {
                Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(ack))) => break ack.code,
                Ok(_) => {}
                Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => break code,
                Err(e) => panic!("no CONNACK: {e}"),
            }
        };
        assert_eq!(refused, rumqttc::v5::mqttbytes::v5::ConnectReturnCode::BadUserNamePassword);
        // The token alone as the username, with an empty client id (how ThingsBoard devices
        // connect), works.
        let mut options = MqttOptions::new("", s.broker.ip().to_string(), s.broker.port());
        options.set_credentials(token, "");
        assert!(Client::connect(options).await.is_ok());
    }
    s.app.stop().await;
}

async fn devices_stay_in_their_own_topic_tree(kind: Broker) {
    let s = setup(kind).await;
    let (a, a_token) = s.device("02:00:00:00:61:01", "lamp", "1.0.0").await;
    let (b, b_token) = s.device("02:00:00:00:61:02", "lamp", "1.0.0").await;
    let mut device_a = s.connect_device(&a, &a_token).await;
    let mut device_b = s.connect_device(&b, &b_token).await;

    // A may not read B's commands.
    device_a.client.subscribe(format!("updraft/{b}/cmd"), QoS::AtLeastOnce).await.unwrap();
    let codes = device_a.expect_suback().await;
    if kind == Broker::Embedded {
        assert_eq!(codes, vec![rumqttc::SubscribeReasonCode::Failure], "a foreign subscription is refused in the SUBACK");
    }
    device_a.client.subscribe("updraft/+/telemetry", QoS::AtLeastOnce).await.unwrap();
    let codes = device_a.expect_suback().await;
    if kind == Broker::Embedded {
        assert_eq!(codes, vec![rumqttc::SubscribeReasonCode::Failure]);
    }
    // A may not publish as B, nor forge its own offer.
    device_a.client.publish(format!("updraft/{b}/telemetry"), QoS::AtLeastOnce, false, r#"{"forged":true}"#).await.unwrap();
    device_a.client.publish(format!("updraft/{a}/ota"), QoS::AtLeastOnce, true, r#"{"update":{"url":"http://evil"}}"#).await.unwrap();
    device_a.drain(Duration::from_millis(500)).await;
    // Neither B nor the server saw anything (B listens to its own tree; a command to A still works).
    let seen = device_b.drain(Duration::from_millis(500)).await;
    assert!(seen.iter().all(|p| !p.payload.starts_with(b"{\"forged")), "B received a forged message");
    let telemetry = s.app.admin(Method::GET, &format!("/api/v1/devices/{b}/telemetry")).send().await.unwrap();
    assert_eq!(telemetry.status(), 404, "the forged telemetry must not be recorded");
    if kind == Broker::Embedded {
        let metrics = s.app.client.get(s.app.url("/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(metrics.contains("updraft_mqtt_acl_denied_total{action=\"publish\"}"), "refused publishes are counted");
    }
    s.app.stop().await;
}

async fn a_retained_offer_reaches_a_device_that_connects_later(kind: Broker) {
    let s = setup(kind).await;
    let (id, token) = s.device("02:00:00:00:62:01", "lamp", "1.0.0").await;
    let build = random_bytes(50_000, 62);
    let artifact = s.app.create_artifact(build.clone(), "product=lamp&version=1.2.0&hardware=esp32").await;
    // The device was offline when the build arrived; it connects now.
    let mut device = s.connect_device(&id, &token).await;
    let offer = device.offer(&id, Duration::from_secs(10)).await.expect("the pending offer arrives");
    assert_eq!(offer["update"]["version"], "1.2.0");
    assert_eq!(offer["update"]["sha256"], artifact["sha256"]);
    assert_eq!(offer["update"]["size"], build.len());
    let bytes = s.app.client.get(offer["update"]["url"].as_str().unwrap()).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(bytes.as_ref(), build.as_slice(), "the signed URL in the offer downloads the build");
    // A second connection of the same device finds the offer retained.
    drop(device);
    let mut again = s.connect_device(&id, &token).await;
    let retained = again.offer(&id, Duration::from_secs(10)).await.expect("the retained offer");
    assert_eq!(retained["update"]["version"], "1.2.0");
    s.app.stop().await;
}

async fn the_last_will_turns_a_device_offline(kind: Broker) {
    let s = setup(kind).await;
    let (id, token) = s.device("02:00:00:00:63:01", "lamp", "1.0.0").await;
    let mut device = s.connect_device(&id, &token).await;
    device.drain(Duration::from_millis(200)).await;
    s.wait_for_status(&id, "online").await;
    // The connection dies without DISCONNECT: the broker publishes the will.
    drop(device);
    s.wait_for_status(&id, "offline").await;
    s.app.stop().await;
}

async fn a_command_round_trip_and_a_timeout(kind: Broker) {
    let s = setup(kind).await;
    let (id, token) = s.device("02:00:00:00:64:01", "lamp", "1.0.0").await;
    let mut device = s.connect_device(&id, &token).await;
    device.drain(Duration::from_millis(300)).await;
    let app = s.app.client.clone();
    let url = s.app.url(&format!("/api/v1/devices/{id}/commands"));
    let request = tokio::spawn(async move {
        app.post(url).bearer_auth(ADMIN_KEY).json(&json!({"name": "ping", "params": {"n": 1}, "wait_s": 10})).send().await.unwrap()
    });
    let command = device.message_on(&format!("updraft/{id}/cmd"), Duration::from_secs(10)).await.expect("the command arrives");
    let command: Value = serde_json::from_slice(&command.payload).unwrap();
    assert_eq!(command["name"], "ping");
    assert_eq!(command["params"]["n"], 1);
    let answer = json!({"id": command["id"], "ok": true, "result": {"pong": true}});
    device.client.publish(format!("updraft/{id}/cmd/result"), QoS::AtLeastOnce, false, answer.to_string()).await.unwrap();
    let pump = tokio::spawn(async move {
        device.drain(Duration::from_secs(4)).await;
        device
    });
    let response = request.await.unwrap();
    assert_eq!(response.status(), 200);
    let done: Value = response.json().await.unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"]["pong"], true);
    let _device = pump.await.unwrap();

    // Nobody answers this one.
    let response = s
        .app
        .admin(Method::POST, &format!("/api/v1/devices/{id}/commands"))
        .json(&json!({"name": "reboot", "timeout_s": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let sent: Value = response.json().await.unwrap();
    let mut state = Value::Null;
    for _ in 0..100 {
        let command: Value = s
            .app
            .admin(Method::GET, &format!("/api/v1/devices/{id}/commands/{}", sent["id"].as_str().unwrap()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        state = command["state"].clone();
        if state == "timed_out" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, "timed_out");
    // Bad requests are 4xx in the usual shape.
    let response =
        s.app.admin(Method::POST, &format!("/api/v1/devices/{id}/commands")).json(&json!({"name": "Bad Name"})).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let response = s.app.admin(Method::POST, "/api/v1/devices/nope/commands").json(&json!({"name": "ping"})).send().await.unwrap();
    assert_eq!(response.status(), 404);
    s.app.stop().await;
}

async fn a_new_build_is_pushed_only_to_the_devices_concerned(kind: Broker) {
    let s = setup(kind).await;
    let (a1, t1) = s.device("02:00:00:00:65:01", "lamp", "1.0.0").await;
    let (a2, t2) = s.device("02:00:00:00:65:02", "lamp", "1.0.0").await;
    let (b1, t3) = s.device("02:00:00:00:65:03", "fan", "1.0.0").await;
    let mut d1 = s.connect_device(&a1, &t1).await;
    let mut d2 = s.connect_device(&a2, &t2).await;
    let mut d3 = s.connect_device(&b1, &t3).await;
    for d in [&mut d1, &mut d2, &mut d3] {
        d.drain(Duration::from_millis(300)).await;
    }
    s.app.create_artifact(random_bytes(10_000, 65), "product=lamp&version=1.1.0&hardware=esp32").await;
    assert_eq!(d1.offer(&a1, Duration::from_secs(10)).await.expect("lamp 1 is offered")["update"]["version"], "1.1.0");
    assert_eq!(d2.offer(&a2, Duration::from_secs(10)).await.expect("lamp 2 is offered")["update"]["version"], "1.1.0");
    assert!(d3.offer(&b1, Duration::from_millis(1500)).await.is_none(), "the fan is not concerned");
    // A pin concerns one device only.
    s.app.create_artifact(random_bytes(10_000, 66), "product=lamp&version=0.9.0&hardware=esp32").await;
    let response =
        s.app.admin(Method::PATCH, &format!("/api/v1/devices/{a2}")).json(&json!({"target_version": "0.9.0"})).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(d2.offer(&a2, Duration::from_secs(10)).await.expect("the pinned device")["update"]["version"], "0.9.0");
    assert!(d1.offer(&a1, Duration::from_millis(1500)).await.is_none(), "the other lamp keeps its offer");
    s.app.stop().await;
}

async fn a_product_s_new_poll_interval_reaches_connected_devices_at_once(kind: Broker) {
    let s = setup(kind).await;
    let (id, token) = s.device("02:00:00:00:65:11", "lamp", "1.0.0").await;
    s.app.create_artifact(random_bytes(10_000, 68), "product=lamp&version=1.1.0&hardware=esp32").await;
    let mut device = s.connect_device(&id, &token).await;
    let offer = device.offer(&id, Duration::from_secs(10)).await.expect("an offer");
    assert_eq!(offer["poll_interval_s"], 3600);
    device.drain(Duration::from_millis(300)).await;
    let response = s
        .app
        .admin(Method::PUT, "/api/v1/products/lamp")
        .json(&json!({"provisioning": "open", "poll_interval_s": 120}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Within a second, not at the next periodic resync (60 s by default).
    let offer = device.offer(&id, Duration::from_secs(1)).await.expect("the offer again, with the new poll interval");
    assert_eq!(offer["poll_interval_s"], 120);
    assert_eq!(offer["update"]["version"], "1.1.0");
    s.app.stop().await;
}

async fn update_status_telemetry_and_attributes_flow_in(kind: Broker) {
    let s = setup(kind).await;
    let (id, token) = s.device("02:00:00:00:66:01", "lamp", "1.0.0").await;
    let artifact = s.app.create_artifact(random_bytes(10_000, 67), "product=lamp&version=1.1.0&hardware=esp32").await;
    let mut device = s.connect_device(&id, &token).await;
    let offer = device.offer(&id, Duration::from_secs(10)).await.expect("offer");
    assert_eq!(offer["update"]["release_id"], artifact["id"]);
    for state in ["downloading", "installing", "installed"] {
        let report = json!({"release_id": artifact["id"], "state": state});
        device.client.publish(format!("updraft/{id}/ota/status"), QoS::AtLeastOnce, false, report.to_string()).await.unwrap();
    }
    device.client.publish(format!("updraft/{id}/telemetry"), QoS::AtLeastOnce, false, r#"{"temp":21.5}"#).await.unwrap();
    device.client.publish(format!("updraft/{id}/attributes"), QoS::AtLeastOnce, false, r#"{"rssi":-61}"#).await.unwrap();
    device.client.publish(format!("updraft/{id}/telemetry"), QoS::AtLeastOnce, false, "not json").await.unwrap();
    device.drain(Duration::from_millis(800)).await;
    let history: Value = s.app.admin(Method::GET, &format!("/api/v1/devices/{id}/updates")).send().await.unwrap().json().await.unwrap();
    assert_eq!(history["items"][0]["state"], "installed", "{history}");
    let telemetry: Value = s.app.admin(Method::GET, &format!("/api/v1/devices/{id}/telemetry")).send().await.unwrap().json().await.unwrap();
    assert_eq!(telemetry["telemetry"]["temp"], 21.5, "bad JSON does not replace the last good message");
    assert_eq!(s.device_view(&id).await["attributes"]["rssi"], -61);
    s.app.stop().await;
}

// ---- embedded only ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_racing_the_devices_own_check_ins_opens_one_attempt_per_device() {
    // The push re-evaluates connected devices in batches while the same devices check in
    // over HTTP: every device ends with one attempt for the new build, and gets it pushed.
    let s = setup(Broker::Embedded).await;
    let mut devices = Vec::new();
    for i in 0..24 {
        let (id, token) = s.device(&format!("02:00:00:00:66:{i:02x}"), "lamp", "1.0.0").await;
        let client = s.connect_device(&id, &token).await;
        devices.push((id, token, client));
    }
    for (_, _, client) in devices.iter_mut() {
        client.drain(Duration::from_millis(100)).await;
    }
    let checkins: Vec<_> = devices
        .iter()
        .map(|(_, token, _)| {
            let (client, url, token) = (s.app.client.clone(), s.app.url("/api/v1/device/checkin"), token.clone());
            tokio::spawn(async move {
                for _ in 0..15 {
                    let response = client.post(&url).bearer_auth(&token).json(&json!({"version": "1.0.0"})).send().await.unwrap();
                    assert_eq!(response.status(), 200);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();
    let artifact = s.app.create_artifact(random_bytes(10_000, 67), "product=lamp&version=1.1.0&hardware=esp32").await;
    for (id, _, client) in devices.iter_mut() {
        let offer = client.offer(id, Duration::from_secs(10)).await.expect("every connected lamp is offered");
        assert_eq!(offer["update"]["release_id"], artifact["id"]);
    }
    for task in checkins {
        task.await.unwrap();
    }
    for (id, _, _) in &devices {
        let history: Value = s.app.admin(Method::GET, &format!("/api/v1/devices/{id}/updates")).send().await.unwrap().json().await.unwrap();
        let items = history["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "one attempt per device for one build: {history}");
        assert_eq!(items[0]["current"], true);
    }
    s.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_s_overflow_is_dropped_and_counted() {
    // The broker holds at most max_inflight unacknowledged + max_queued waiting messages per
    // client: a device that stops reading does not grow the server's memory, and what is
    // dropped shows in the metrics.
    let app = spawn_app_with(|s| {
        s.mqtt.max_inflight = 1;
        s.mqtt.max_queued = 2;
    })
    .await;
    let broker = app.mqtt_addr.expect("the embedded broker runs");
    let s = Setup { app, broker, mosquitto: None };
    let (id, token) = s.device("02:00:00:00:68:01", "lamp", "1.0.0").await;
    let mut device = s.connect_device(&id, &token).await;
    device.drain(Duration::from_millis(300)).await;
    // The device stops reading (its event loop is not polled): no PUBACK goes back.
    for n in 0..12 {
        let response = s
            .app
            .admin(Method::POST, &format!("/api/v1/devices/{id}/commands"))
            .json(&json!({"name": "ping", "params": {"n": n}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    }
    let mut dropped = 0.0;
    for _ in 0..100 {
        let text = s.app.client.get(s.app.url("/metrics")).send().await.unwrap().text().await.unwrap();
        dropped = text
            .lines()
            .filter(|l| l.starts_with("updraft_mqtt_messages_dropped_total{") && l.contains("reason=\"queue_full\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if dropped >= 9.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dropped >= 9.0, "12 commands to a stalled device with room for 3: at least 9 dropped, counted {dropped}");
    // Reading again, the device gets what was kept, in order, and nothing more.
    let received = device.drain(Duration::from_secs(2)).await;
    let mut kept: Vec<i64> = received
        .iter()
        .filter(|p| p.topic == format!("updraft/{id}/cmd"))
        .map(|p| serde_json::from_slice::<Value>(&p.payload).unwrap()["params"]["n"].as_i64().unwrap())
        .collect();
    // (A slow machine may see the inflight message again, flagged DUP, after the retry interval.)
    assert!(kept.windows(2).all(|w| w[0] <= w[1]), "in order: {kept:?}");
    kept.dedup();
    assert!(!kept.is_empty() && kept.len() <= 3, "kept {kept:?}");
    s.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_000_devices_receive_the_image_and_report_flashing() {
    let s = setup(Broker::Embedded).await;
    let mac = "aa:bb:cc:00:00:01";
    let (id, _) = s.device(mac, "gateway-fw", "1.0.0").await;
    let build = random_bytes(200_000, 70);
    s.app.create_artifact(build.clone(), "product=gateway-fw&version=1.1.0&hardware=esp32").await;
    let response = s
        .app
        .admin(Method::PUT, "/api/v1/mqtt/users/firmware-server-dev")
        .json(&json!({"password": "test123", "role": "gateway"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    // The seed's device mock: a shared credential, `{mac}/firmware`, keepalive pings, then
    // flashing → idle → done.
    let mut options = MqttOptions::new("mock", s.broker.ip().to_string(), s.broker.port());
    options.set_credentials("firmware-server-dev", "test123");
    options.set_max_packet_size(8 << 20, 8 << 20);
    let mut mock = Client::connect(options).await.expect("the gateway credential connects");
    mock.client.subscribe(format!("{mac}/firmware"), QoS::AtLeastOnce).await.unwrap();
    assert_eq!(mock.expect_suback().await, vec![rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    mock.client.publish(format!("{mac}/keepalive"), QoS::AtLeastOnce, false, "ping").await.unwrap();
    let image = mock.message_on(&format!("{mac}/firmware"), Duration::from_secs(10)).await.expect("the image arrives");
    assert_eq!(image.payload.as_ref(), build.as_slice());
    for state in ["flashing", "idle", "done"] {
        mock.client.publish(format!("{mac}/flashing/status"), QoS::AtLeastOnce, false, state).await.unwrap();
    }
    mock.drain(Duration::from_millis(800)).await;
    let history: Value = s.app.admin(Method::GET, &format!("/api/v1/devices/{id}/updates")).send().await.unwrap().json().await.unwrap();
    assert_eq!(history["items"][0]["state"], "succeeded", "{history}");
    assert_eq!(s.device_view(&id).await["version"], "1.1.0");
    // More pings do not resend the image.
    mock.client.publish(format!("{mac}/keepalive"), QoS::AtLeastOnce, false, "ping").await.unwrap();
    assert!(mock.message_on(&format!("{mac}/firmware"), Duration::from_millis(1000)).await.is_none());
    s.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_003_notifications_and_config_pushes() {
    let s = setup(Broker::Embedded).await;
    let (id, token) = s.device("02:00:00:00:67:01", "lamp", "1.0.0").await;
    s.app
        .admin(Method::PUT, "/api/v1/mqtt/users/nodered")
        .json(&json!({"password": "reader-password", "role": "fleet-read"}))
        .send()
        .await
        .unwrap();
    let mut options = MqttOptions::new("reader", s.broker.ip().to_string(), s.broker.port());
    options.set_credentials("nodered", "reader-password");
    let mut reader = Client::connect(options).await.unwrap();
    reader.client.subscribe("iotsupport/updates/+", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(reader.expect_suback().await, vec![rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    reader.client.subscribe("updraft/+/cmd", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(reader.expect_suback().await, vec![rumqttc::SubscribeReasonCode::Failure], "a reader may not read commands");
    let mut device = s.connect_device(&id, &token).await;
    device.drain(Duration::from_millis(300)).await;

    let response = s
        .app
        .admin(Method::PUT, "/api/configs/02-00-00-00-67-01")
        .json(&json!({"content": {"deviceName": "lamp-1", "brightness": 7}}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.text().await.unwrap());
    let note = reader.message_on("iotsupport/updates/configs", Duration::from_secs(10)).await.expect("the seed-003 notification");
    assert_eq!(serde_json::from_slice::<Value>(&note.payload).unwrap(), json!({"filename": "02-00-00-00-67-01.json"}));
    assert_eq!(note.qos, QoS::AtLeastOnce);
    let config = device.message_on(&format!("updraft/{id}/config"), Duration::from_secs(10)).await.expect("the config push");
    let config: Value = serde_json::from_slice(&config.payload).unwrap();
    assert_eq!(config["config"]["brightness"], 7);
    s.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_broker_auth_hooks_answer_like_mosquitto_go_auth_and_emqx() {
    let s = setup(Broker::Mosquitto).await;
    let (id, token) = s.device("02:00:00:00:68:01", "lamp", "1.0.0").await;
    let (other, _) = s.device("02:00:00:00:68:02", "lamp", "1.0.0").await;
    let post = |path: &str, body: Value| s.app.client.post(s.app.url(path)).json(&body).send();
    let ok = post("/api/v1/mqtt/hooks/mosquitto/user", json!({"username": id, "password": token, "clientid": "x"})).await.unwrap();
    assert_eq!(ok.status(), 200);
    // A client id that names another device is refused.
    let user = |clientid: &str| post("/api/v1/mqtt/hooks/mosquitto/user", json!({"username": id, "password": token, "clientid": clientid}));
    assert_eq!(user(&other).await.unwrap().status(), 403);
    assert_eq!(user("02:00:00:00:68:02").await.unwrap().status(), 403);
    assert_eq!(user("02:00:00:00:68:01").await.unwrap().status(), 200);
    let bad = post("/api/v1/mqtt/hooks/mosquitto/user", json!({"username": id, "password": "wrong", "clientid": "x"})).await.unwrap();
    assert_eq!(bad.status(), 403);
    let acl = |topic: String, acc: u8| {
        post("/api/v1/mqtt/hooks/mosquitto/acl", json!({"username": id, "clientid": "x", "topic": topic, "acc": acc}))
    };
    assert_eq!(acl(format!("updraft/{id}/telemetry"), 2).await.unwrap().status(), 200);
    assert_eq!(acl("updraft/other/telemetry".into(), 2).await.unwrap().status(), 403);
    assert_eq!(acl(format!("updraft/{id}/ota"), 4).await.unwrap().status(), 200);
    let form = s
        .app
        .client
        .post(s.app.url("/api/v1/mqtt/hooks/mosquitto/superuser"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("username={UPDRAFT_USER}"))
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 200, "Updraft's own user is the superuser");
    let authn: Value =
        post("/api/v1/mqtt/hooks/emqx/authn", json!({"username": id, "password": token})).await.unwrap().json().await.unwrap();
    assert_eq!(authn, json!({"result": "allow", "is_superuser": false}));
    let authz: Value = post("/api/v1/mqtt/hooks/emqx/authz", json!({"username": id, "topic": "updraft/other/cmd", "action": "subscribe"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(authz, json!({"result": "deny"}));
    s.app.stop().await;
}

/// A Python with a real client library in its own venv: `$env_var`, else a venv made once
/// under target/ (each library in its own: tb-mqtt-client ships its own paho).
pub(crate) fn client_python(env_var: &str, venv: &str, packages: &[&str]) -> String {
    if let Ok(python) = std::env::var(env_var) {
        return python;
    }
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join(venv);
    let python = venv.join("bin/python");
    if !python.exists() {
        let ok = Command::new("python3").args(["-m", "venv", &venv.display().to_string()]).status().is_ok_and(|s| s.success())
            && Command::new(&python)
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
                .args(packages)
                .status()
                .is_ok_and(|s| s.success());
        assert!(ok, "cannot install {packages:?} into {}", venv.display());
    }
    python.display().to_string()
}

pub(crate) fn thingsboard_python() -> String {
    client_python("UPDRAFT_TEST_TB_PYTHON", "venv-tb", &["tb-mqtt-client", "mmh3"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_000_s_paho_device_mock_is_updated_over_mqtt() {
    let s = setup(Broker::Embedded).await;
    let mac = "aa:bb:cc:00:00:02";
    let (id, _) = s.device(mac, "gateway-fw", "1.0.0").await;
    let build = random_bytes(300_000, 72);
    s.app.create_artifact(build.clone(), "product=gateway-fw&version=1.2.0&hardware=esp32").await;
    s.app
        .admin(Method::PUT, "/api/v1/mqtt/users/firmware-server-dev")
        .json(&json!({"password": "test123", "role": "gateway"}))
        .send()
        .await
        .unwrap();
    let python = client_python("UPDRAFT_TEST_PAHO_PYTHON", "venv-paho", &["paho-mqtt==2.1.0"]);
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.bin");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/seed000_mock.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .args([&s.broker.ip().to_string(), &s.broker.port().to_string(), "firmware-server-dev", "test123", mac])
        .arg(&image)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), output).await.expect("the mock finishes").unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(std::fs::read(&image).unwrap(), build, "the mock received the exact image");
    let mut state = Value::Null;
    for _ in 0..50 {
        let history: Value = s.app.admin(Method::GET, &format!("/api/v1/devices/{id}/updates")).send().await.unwrap().json().await.unwrap();
        state = history["items"][0]["state"].clone();
        if state == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, "succeeded");
    assert_eq!(s.device_view(&id).await["version"], "1.2.0");
    s.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_thingsboard_sdk_provisions_and_updates_its_firmware_over_mqtt() {
    let s = setup(Broker::Embedded).await;
    let response = s
        .app
        .admin(Method::PUT, "/api/v1/products/tbdev")
        .json(&json!({"provisioning": "key", "provision_key": "tb-key-2026", "provision_secret": "tb-secret-0123456789"}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.text().await.unwrap());
    let build = random_bytes(40_000, 71);
    s.app.create_artifact(build.clone(), "product=tbdev&version=2.0.0&hardware=esp32").await;
    let python = thingsboard_python();
    // The SDK's default (the whole image in one message), then 8 KiB chunks.
    for (mac, chunk_size) in [("02:00:00:00:71:01", "0"), ("02:00:00:00:71:02", "8192")] {
        let response = s
            .app
            .admin(Method::POST, "/api/v1/devices")
            .json(&json!({"mac": mac, "product": "tbdev", "hardware": "esp32", "version": "1.0.0"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
        let workdir = tempfile::tempdir().unwrap();
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/tb_device.py");
        let output = tokio::process::Command::new(&python)
            .arg(script)
            .args([&s.broker.ip().to_string(), &s.broker.port().to_string(), "tb-key-2026", "tb-secret-0123456789", mac])
            .arg(workdir.path())
            .env("TB_CHUNK_SIZE", chunk_size)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(120), output).await.expect("the SDK finishes").unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let last = stdout.lines().last().unwrap_or_default();
        let result: Value = serde_json::from_str(last)
            .unwrap_or_else(|_| panic!("no result from the SDK: {stdout}\n{}", String::from_utf8_lossy(&output.stderr)));
        assert_eq!(result["state"], "UPDATED", "{result}\n{}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(result["fw_version"], "2.0.0");
        assert_eq!(result["fw_title"], "tbdev");
        assert_eq!(result["size"], build.len());
        assert_eq!(std::fs::read(workdir.path().join("tbdev")).unwrap(), build, "the SDK wrote the exact image");
        let history: Value = s.app.admin(Method::GET, &format!("/api/v1/devices/{id}/updates")).send().await.unwrap().json().await.unwrap();
        assert_eq!(history["items"][0]["state"], "succeeded", "{history}");
        let device = s.device_view(&id).await;
        assert_eq!(device["version"], "2.0.0");
        assert_eq!(device["attributes"]["sdk"], "tb-mqtt-client");
    }
    s.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_gets_what_was_sent_while_it_was_away() {
    let s = setup(Broker::Embedded).await;
    let (id, token) = s.device("02:00:00:00:72:01", "lamp", "1.0.0").await;
    let options = || {
        let mut options = s.options(&format!("{id}-persistent"), &id, &token);
        options.set_clean_session(false);
        options
    };
    let mut device = Client::connect(options()).await.unwrap();
    device.client.subscribe(format!("updraft/{id}/cmd"), QoS::AtLeastOnce).await.unwrap();
    device.expect_suback().await;
    // Away, and a command at once: the broker may not have seen the connection end yet (it
    // then sends the command on the closed connection, keeps it unacknowledged, and sends it
    // again to the session resumed below).
    drop(device);
    let response =
        s.app.admin(Method::POST, &format!("/api/v1/devices/{id}/commands")).json(&json!({"name": "reboot"})).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let sent: Value = response.json().await.unwrap();
    // Back, with the same client id and clean session 0: the queued command is delivered.
    let mut device = Client::connect(options()).await.expect("the device reconnects");
    let command = device.message_on(&format!("updraft/{id}/cmd"), Duration::from_secs(10)).await.expect("the queued command");
    let command: Value = serde_json::from_slice(&command.payload).unwrap();
    assert_eq!(command["id"], sent["id"]);
    s.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_packet_size_and_connection_limits_are_enforced() {
    let app = spawn_app_with(|s| {
        s.mqtt.max_packet_bytes = 2048;
        s.mqtt.max_connections = 3;
    })
    .await;
    let broker = app.mqtt_addr.unwrap();
    let s = Setup { app, broker, mosquitto: None };
    let (id, token) = s.device("02:00:00:00:73:01", "lamp", "1.0.0").await;
    let connect = || {
        let mut options = MqttOptions::new(format!("{id}-{}", rand_suffix()), broker.ip().to_string(), broker.port());
        options.set_credentials(id.clone(), token.clone());
        options.set_max_packet_size(1 << 20, 1 << 20);
        Client::connect(options)
    };
    // A packet over the limit ends the connection, and the message is not taken.
    let mut device = connect().await.unwrap();
    let big = format!("{{\"blob\":\"{}\"}}", "x".repeat(4096));
    device.client.publish(format!("updraft/{id}/telemetry"), QoS::AtLeastOnce, false, big).await.unwrap();
    let broke = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if device.eventloop.poll().await.is_err() {
                return true;
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(broke, "the broker must close a connection that sends an oversized packet");
    let telemetry = s.app.admin(Method::GET, &format!("/api/v1/devices/{id}/telemetry")).send().await.unwrap();
    assert_eq!(telemetry.status(), 404);
    drop(device);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Three connections at most: Updraft's own client holds two, a device the third.
    let _first = connect().await.expect("room for one device");
    let third = tokio::time::timeout(Duration::from_secs(10), connect()).await;
    assert!(!matches!(third, Ok(Ok(_))), "a connection over UPDRAFT_MQTT_MAX_CONNECTIONS is refused");
    s.app.stop().await;
}

pub(crate) fn uuid() -> String {
    format!("c-{}", rand_suffix())
}

pub(crate) fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    hasher.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_tls_and_websocket_listen_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = (dir.path().join("cert.pem"), dir.path().join("key.pem"), dir.path().join("ca.pem"));
    // A CA and a server certificate it signed (webpki refuses a self-signed end entity).
    let openssl = |args: &[&str]| {
        let made = Command::new("openssl").current_dir(dir.path()).args(args).output().expect("run openssl");
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=Test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "key.pem", "-out", "server.csr"]);
    std::fs::write(dir.path().join("ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ]);
    let app = spawn_app_with(|s| {
        s.tls = Some(updraft::config::TlsSettings { cert: cert.clone(), key: key.clone() });
        s.mqtt.ws_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let (tls, ws) = (app.mqtt_tls_addr.expect("a TLS listener"), app.mqtt_ws_addr.expect("a WebSocket listener"));
    // The HTTP API speaks TLS too here: register the device through the services.
    let core = core_of(&app).await;
    let device = updraft::services::devices::register(
        &core,
        updraft::services::devices::NewDeviceRequest {
            mac: Some("02:00:00:00:74:01".into()),
            uid: None,
            name: None,
            product: Some("lamp".into()),
            hardware: Some("esp32".into()),
            channel: None,
            version: Some("1.0.0".into()),
            target_version: None,
            tags: Vec::new(),
            metadata: None,
            owner: None,
        },
        "key:test",
    )
    .await
    .unwrap();
    let (_, token) = updraft::services::devices::issue_token(&core, &device.id, "key:test").await.unwrap();
    let id = device.id.clone();

    let mut options = MqttOptions::new(id.clone(), "localhost", tls.port());
    options.set_credentials(id.clone(), token.clone());
    options.set_transport(rumqttc::Transport::tls(std::fs::read(&ca).unwrap(), None, None));
    let mut device = Client::connect(options).await.expect("a device connects over TLS");
    device.client.subscribe(format!("updraft/{id}/ota"), QoS::AtLeastOnce).await.unwrap();
    assert_eq!(device.expect_suback().await, vec![rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]);

    // WebSocket: the upgrade on /mqtt, then a CONNECT with a wrong token in a binary frame
    // gets CONNACK 4.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(ws).await.unwrap();
    let upgrade = format!(
        "GET /mqtt HTTP/1.1\r\nHost: {ws}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    );
    socket.write_all(upgrade.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut head)).await.unwrap().unwrap();
    let head = String::from_utf8_lossy(&head[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let connect = mqtt_connect_packet(&id, "wrong-token");
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x82, 0x80 | connect.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(connect.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    socket.write_all(&frame).await.unwrap();
    let mut reply = [0u8; 6];
    tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut reply)).await.unwrap().unwrap();
    assert_eq!(reply, [0x82, 4, 0x20, 2, 0, 4], "a binary frame holding CONNACK 'bad user name or password'");
    app.stop().await;
}

/// An MQTT 3.1.1 CONNECT with credentials (short enough for a one-byte WebSocket length).
fn mqtt_connect_packet(username: &str, password: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0b1100_0010, 0, 30];
    for field in ["ws-client", username, password] {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thingsboard_provisioning_with_a_wrong_key_fails_with_an_error_message() {
    let s = setup(Broker::Embedded).await;
    let mut options = MqttOptions::new("", s.broker.ip().to_string(), s.broker.port());
    options.set_credentials("provision", "");
    options.set_clean_session(true);
    let mut client = Client::connect(options).await.expect("the provision user connects");
    client.client.subscribe("/provision/response", QoS::AtMostOnce).await.unwrap();
    client.expect_suback().await;
    client.client.subscribe("updraft/+/telemetry", QoS::AtMostOnce).await.unwrap();
    assert_eq!(client.expect_suback().await, vec![rumqttc::SubscribeReasonCode::Failure], "provisioning sessions read nothing else");
    let request = json!({"provisionDeviceKey": "nope", "provisionDeviceSecret": "nope", "deviceName": "02:00:00:00:75:01"});
    client.client.publish("/provision/request", QoS::AtLeastOnce, false, request.to_string()).await.unwrap();
    let answer = client.message_on("/provision/response", Duration::from_secs(10)).await.expect("an answer");
    let answer: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(answer["status"], "FAILURE");
    assert!(answer["errorMsg"].as_str().is_some_and(|m| !m.is_empty()), "{answer}");
    s.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_log_in_repeatedly_without_being_rate_limited_and_wrong_passwords_are() {
    let s = setup(Broker::Embedded).await;
    let response = s
        .app
        .admin(Method::PUT, "/api/v1/mqtt/users/dashboard")
        .json(&json!({"password": "dashboard-password", "role": "fleet-read"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let login = |password: &str| {
        let mut options = MqttOptions::new(uuid(), s.broker.ip().to_string(), s.broker.port());
        options.set_credentials("dashboard", password);
        Client::connect(options)
    };
    // More logins than the failure limit (10 a minute): a right password is never a failure.
    for _ in 0..12 {
        assert!(login("dashboard-password").await.is_ok());
    }
    for _ in 0..10 {
        assert_eq!(login("wrong").await.err(), Some(ConnectReturnCode::BadUserNamePassword));
    }
    assert_eq!(login("dashboard-password").await.err(), Some(ConnectReturnCode::NotAuthorized), "after 10 failures the address waits");
    // (The address's HTTP requests wait too: one limiter counts every credential.)
    let users: Value = s.app.admin_from(9, Method::GET, "/api/v1/mqtt/users").send().await.unwrap().json().await.unwrap();
    assert_eq!(users["items"][0]["username"], "dashboard");
    assert!(users["items"][0].get("password").is_none() && users["items"][0].get("password_hash").is_none());
    let bad = s
        .app
        .admin_from(9, Method::PUT, "/api/v1/mqtt/users/$updraft-x")
        .json(&json!({"password": "long-enough", "role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400, "the $ prefix is Updraft's");
    let bad = s
        .app
        .admin_from(9, Method::PUT, "/api/v1/mqtt/users/x")
        .json(&json!({"password": "long-enough", "role": "root"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    s.app.stop().await;
}

// ---- client ids and sessions (embedded broker) ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_is_resumed_only_by_the_device_that_created_it() {
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as CodeV5;
    let s = setup(Broker::Embedded).await;
    let (a, a_token) = s.device("02:00:00:00:76:01", "lamp", "1.0.0").await;
    let (b, b_token) = s.device("02:00:00:00:76:02", "lamp", "1.0.0").await;
    s.user("nodered", "reader-password", "fleet-read").await;
    let persistent = |client_id: &str, username: &str, password: &str| {
        let mut options = s.options(client_id, username, password);
        options.set_clean_session(false);
        options
    };
    let persistent_v5 = |client_id: &str, username: &str, password: &str| {
        let mut options = s.options_v5(client_id, username, password);
        options.set_clean_start(false);
        options.set_session_expiry_interval(Some(3600));
        options
    };
    // A opens a persistent session under its id, subscribes to its commands, and goes away;
    // a command waits for it in the session.
    let mut device = Client::connect(persistent(&a, &a, &a_token)).await.unwrap();
    device.client.subscribe(format!("updraft/{a}/cmd"), QoS::AtLeastOnce).await.unwrap();
    device.expect_suback().await;
    drop(device);
    s.wait_until_no_device_is_connected().await;
    let command_id = s.send_command(&a, "reboot").await;

    // Another device, and a reader that may not read commands, try to resume it under MQTT
    // 3.1.1 and 5: "identifier rejected" / "client identifier not valid".
    assert_eq!(Client::connect(persistent(&a, &b, &b_token)).await.err(), Some(ConnectReturnCode::BadClientId));
    assert_eq!(Client::connect(persistent(&a, "nodered", "reader-password")).await.err(), Some(ConnectReturnCode::BadClientId));
    assert_eq!(connect_v5(persistent_v5(&a, &b, &b_token)).await.err(), Some(CodeV5::ClientIdentifierNotValid));
    assert_eq!(connect_v5(persistent_v5(&a, "nodered", "reader-password")).await.err(), Some(CodeV5::ClientIdentifierNotValid));
    // A's token with a username that is not A does not get in either.
    assert!(Client::connect(persistent(&a, &b, &a_token)).await.is_err());

    // A comes back and finds its session and the command.
    let mut device = Client::connect(persistent(&a, &a, &a_token)).await.unwrap();
    assert!(device.session_present, "A's session was kept");
    let command = device.message_on(&format!("updraft/{a}/cmd"), Duration::from_secs(10)).await.expect("the queued command");
    assert_eq!(serde_json::from_slice::<Value>(&command.payload).unwrap()["id"], command_id.as_str());

    // While A is connected, nobody else takes its connection over either, and A keeps
    // receiving its commands.
    assert_eq!(Client::connect(s.options(&a, &b, &b_token)).await.err(), Some(ConnectReturnCode::BadClientId));
    assert_eq!(connect_v5(s.options_v5(&a, "nodered", "reader-password")).await.err(), Some(CodeV5::ClientIdentifierNotValid));
    let command_id = s.send_command(&a, "ping").await;
    let command = device.message_on(&format!("updraft/{a}/cmd"), Duration::from_secs(10)).await.expect("A is still connected");
    assert_eq!(serde_json::from_slice::<Value>(&command.payload).unwrap()["id"], command_id.as_str());
    let metrics = s.app.client.get(s.app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("updraft_mqtt_client_id_refused_total"), "refused client ids are counted");
    s.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_s_client_id_is_its_id_or_mac_or_assigned_and_no_one_else_s_names_a_device() {
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as CodeV5;
    let s = setup(Broker::Embedded).await;
    let (a, a_token) = s.device("02:00:00:00:77:01", "lamp", "1.0.0").await;
    let (b, _) = s.device("02:00:00:00:77:02", "lamp", "1.0.0").await;
    s.user("nodered", "reader-password", "fleet-read").await;
    s.user("ops", "ops-password", "admin").await;
    let connect = |client_id: &str, username: &str, password: &str| Client::connect(s.options(client_id, username, password));
    // A device: its id or MAC (any common form), or a name that starts with one, or an empty
    // client id (the broker assigns one, as for the ThingsBoard SDK).
    for client_id in
        [a.clone(), format!("{a}-fw"), "02:00:00:00:77:01".into(), "020000007701".into(), "02-00-00-00-77-01_lamp".into(), "".into()]
    {
        assert!(connect(&client_id, &a, &a_token).await.is_ok(), "client id {client_id:?}");
    }
    assert!(connect_v5(s.options_v5("", &a, &a_token)).await.is_ok(), "MQTT 5 with an empty client id");
    // ...and nothing else: not a free name, not another device's id or MAC.
    for client_id in ["lamp-1".to_string(), b.clone(), "02:00:00:00:77:02".into(), format!("x{a}")] {
        assert_eq!(connect(&client_id, &a, &a_token).await.err(), Some(ConnectReturnCode::BadClientId), "client id {client_id:?}");
    }
    assert_eq!(connect_v5(s.options_v5("lamp-1", &a, &a_token)).await.err(), Some(CodeV5::ClientIdentifierNotValid));
    // Operators and services: any client id that does not name a device.
    assert!(connect("nodered-1", "nodered", "reader-password").await.is_ok());
    for client_id in [a.clone(), format!("{a}-spy"), "020000007701".into(), "02:00:00:00:77:01".into()] {
        assert_eq!(connect(&client_id, "nodered", "reader-password").await.err(), Some(ConnectReturnCode::BadClientId), "{client_id:?}");
        assert_eq!(connect(&client_id, "ops", "ops-password").await.err(), Some(ConnectReturnCode::BadClientId), "{client_id:?}");
    }
    assert_eq!(connect_v5(s.options_v5(&b, "ops", "ops-password")).await.err(), Some(CodeV5::ClientIdentifierNotValid));
    // A MAC-like name of no device is fine.
    assert!(connect("0200000077ff-dashboard", "ops", "ops-password").await.is_ok());
    // Bad credentials are still reported as such, whatever the client id.
    assert_eq!(connect(&b, &a, "wrong").await.err(), Some(ConnectReturnCode::BadUserNamePassword));
    s.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_s_persistent_session_is_not_resumed_by_another_credential() {
    let s = setup(Broker::Embedded).await;
    s.user("ops", "ops-password", "admin").await;
    s.user("nodered", "reader-password", "fleet-read").await;
    let persistent = |username: &str, password: &str| {
        let mut options = s.options("dashboard", username, password);
        options.set_clean_session(false);
        options
    };
    let mut ops = Client::connect(persistent("ops", "ops-password")).await.unwrap();
    ops.client.subscribe("updraft/+/telemetry", QoS::AtLeastOnce).await.unwrap();
    ops.expect_suback().await;
    drop(ops);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(Client::connect(persistent("nodered", "reader-password")).await.err(), Some(ConnectReturnCode::BadClientId));
    let ops = Client::connect(persistent("ops", "ops-password")).await.unwrap();
    assert!(ops.session_present, "its creator resumes it");
    s.app.stop().await;
}

// ---- credential changes end sessions (embedded broker) ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_a_token_ends_the_device_s_mqtt_session_at_once() {
    let s = setup(Broker::Embedded).await;
    let (id, token) = s.device("02:00:00:00:78:01", "lamp", "1.0.0").await;
    let mut device = s.connect_device(&id, &token).await;
    device.drain(Duration::from_millis(300)).await;
    let response = s.app.admin(Method::POST, &format!("/api/v1/devices/{id}/token")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let new_token = response.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string();
    assert!(device.closed_within(Duration::from_secs(10)).await, "the connection with the old token is closed");
    // The old token no longer connects; the new one does, and gets commands.
    assert_eq!(Client::connect(s.options(&id, &id, &token)).await.err(), Some(ConnectReturnCode::BadUserNamePassword));
    let mut device = s.connect_device(&id, &new_token).await;
    device.drain(Duration::from_millis(300)).await;
    let command_id = s.send_command(&id, "ping").await;
    let command = device.message_on(&format!("updraft/{id}/cmd"), Duration::from_secs(10)).await.expect("the new session gets commands");
    assert_eq!(serde_json::from_slice::<Value>(&command.payload).unwrap()["id"], command_id.as_str());
    s.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_token_ends_the_device_s_mqtt_sessions_at_once() {
    let s = setup(Broker::Embedded).await;
    let (id, token) = s.device("02:00:00:00:78:02", "lamp", "1.0.0").await;
    let mut device = s.connect_device(&id, &token).await;
    device.drain(Duration::from_millis(300)).await;
    let mut tb_style = Client::connect(s.options("", &token, "")).await.unwrap();
    let response = s.app.admin(Method::DELETE, &format!("/api/v1/devices/{id}/token")).send().await.unwrap();
    assert_eq!(response.status(), 204);
    assert!(device.closed_within(Duration::from_secs(10)).await, "the connection with the revoked token is closed");
    assert!(tb_style.closed_within(Duration::from_secs(10)).await, "so is the ThingsBoard-style one");
    assert_eq!(Client::connect(s.options(&id, &id, &token)).await.err(), Some(ConnectReturnCode::BadUserNamePassword));
    s.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_provisioning_and_deleting_a_device_end_its_mqtt_sessions() {
    let s = setup(Broker::Embedded).await;
    let (id, token) = s.device("02:00:00:00:79:01", "lamp", "1.0.0").await;
    // Re-provisioning (with the current token as proof) issues a new token.
    let mut device = s.connect_device(&id, &token).await;
    device.drain(Duration::from_millis(300)).await;
    let request = json!({"mac": "02:00:00:00:79:01", "product": "lamp"});
    let response = s.app.client.post(s.app.url("/api/v1/device/provision")).bearer_auth(&token).json(&request).send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.text().await.unwrap());
    let token = response.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string();
    assert!(device.closed_within(Duration::from_secs(10)).await, "re-provisioning closes the connection");
    // A ThingsBoard-style connection (the token as the username) and a persistent session
    // both end when the device is deleted.
    let mut tb_style = Client::connect(s.options("", &token, "")).await.unwrap();
    let mut persistent_options = s.options(&id, &id, &token);
    persistent_options.set_clean_session(false);
    let mut device = Client::connect(persistent_options).await.unwrap();
    device.client.subscribe(format!("updraft/{id}/cmd"), QoS::AtLeastOnce).await.unwrap();
    device.expect_suback().await;
    let response = s.app.admin(Method::DELETE, &format!("/api/v1/devices/{id}")).send().await.unwrap();
    assert!(response.status().is_success());
    assert!(device.closed_within(Duration::from_secs(10)).await, "deleting the device closes its connection");
    assert!(tb_style.closed_within(Duration::from_secs(10)).await, "and every other one");
    // Nothing of it is kept: only Updraft's own two connections hold sessions.
    let mut sessions = Value::Null;
    for _ in 0..100 {
        sessions = s.app.admin(Method::GET, "/api/v1/mqtt").send().await.unwrap().json::<Value>().await.unwrap()["sessions"].clone();
        if sessions == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sessions, 2, "the deleted device's persistent session is gone");
    s.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_rotated_or_a_device_deleted_on_another_replica_ends_the_session_here() {
    let s = setup(Broker::Embedded).await;
    let (a, a_token) = s.device("02:00:00:00:7a:01", "lamp", "1.0.0").await;
    let (b, b_token) = s.device("02:00:00:00:7a:02", "lamp", "1.0.0").await;
    let (c, c_token) = s.device("02:00:00:00:7a:03", "lamp", "1.0.0").await;
    let mut device_a = s.connect_device(&a, &a_token).await;
    let mut device_b = s.connect_device(&b, &b_token).await;
    let mut device_c = s.connect_device(&c, &c_token).await;
    for device in [&mut device_a, &mut device_b, &mut device_c] {
        device.drain(Duration::from_millis(200)).await;
    }
    // Another replica shares only the database: this one learns of the change from the
    // device change log.
    let replica = core_of(&s.app).await;
    updraft::services::devices::issue_token(&replica, &a, "key:test").await.unwrap();
    updraft::services::devices::delete(&replica, &b).await.unwrap();
    assert!(device_a.closed_within(Duration::from_secs(15)).await, "the rotated token's connection is closed");
    assert!(device_b.closed_within(Duration::from_secs(15)).await, "the deleted device's connection is closed");
    // A device whose token did not change keeps its connection.
    assert!(!device_c.closed_within(Duration::from_secs(2)).await, "an unchanged device stays connected");
    s.app.stop().await;
}

// ---- the handshake (embedded broker) ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_no_connect_is_closed_after_the_handshake_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(|s| s.mqtt.handshake_timeout = Duration::from_secs(1)).await;
    let broker = app.mqtt_addr.unwrap();
    // One sends nothing, one the first byte of a CONNECT, one a CONNECT's header only.
    let silent = tokio::net::TcpStream::connect(broker).await.unwrap();
    let mut one_byte = tokio::net::TcpStream::connect(broker).await.unwrap();
    one_byte.write_all(&[0x10]).await.unwrap();
    let mut header_only = tokio::net::TcpStream::connect(broker).await.unwrap();
    header_only.write_all(&[0x10, 40, 0, 4, b'M', b'Q', b'T', b'T', 4]).await.unwrap();
    for (name, mut socket) in [("silent", silent), ("one byte", one_byte), ("header only", header_only)] {
        // Well past the 1 s timeout the broker has closed the connection (after a refusing
        // CONNACK, once it knows the protocol version).
        let closed = tokio::time::timeout(Duration::from_secs(20), async {
            let mut buffer = [0u8; 64];
            while let Ok(n) = socket.read(&mut buffer).await
                && n > 0
            {}
        })
        .await;
        assert!(closed.is_ok(), "{name}: the connection must be closed");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_connects_and_gets_its_offer_while_hundreds_of_connections_stay_silent() {
    let s = setup(Broker::Embedded).await;
    let (id, token) = s.device("02:00:00:00:7b:01", "lamp", "1.0.0").await;
    s.app.create_artifact(random_bytes(10_000, 0x7b), "product=lamp&version=1.1.0&hardware=esp32").await;
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(tokio::net::TcpStream::connect(s.broker).await.unwrap());
    }
    let mut device = s.connect_device(&id, &token).await;
    let offer = device.offer(&id, Duration::from_secs(10)).await.expect("the retained offer arrives");
    assert_eq!(offer["update"]["version"], "1.1.0");
    drop(silent);
    s.app.stop().await;
}

// ---- reconnecting ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_with_the_same_client_id_right_after_a_disconnect_is_accepted_every_time() {
    let s = setup(Broker::Embedded).await;
    let (id, token) = s.device("02:00:00:00:7c:01", "lamp", "1.0.0").await;
    for round in 0..200 {
        match Client::connect(s.options(&id, &id, &token)).await {
            // Dropped: the connection closes, and the next one comes at once.
            Ok(client) => drop(client),
            Err(code) => panic!("reconnection {round} was refused: {code:?}"),
        }
    }
    s.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_accepted_for_an_away_persistent_session_is_delivered_when_it_comes_back() {
    // Twelve devices at once, five rounds each: away, a command (202), back at once. A 202
    // used to mean only "queued in Updraft's client": the broker could route the command
    // while the device was already taking its session over, and lose it (about one command
    // in sixty here). Now the 202 comes after the broker has routed it.
    let s = std::sync::Arc::new(setup(Broker::Embedded).await);
    let mut tasks = Vec::new();
    for n in 0..12u8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let (id, token) = s.device(&format!("02:00:00:00:7e:{n:02x}"), "lamp", "1.0.0").await;
            let options = || {
                let mut options = s.options(&id, &id, &token);
                options.set_clean_session(false);
                options
            };
            let mut lost = Vec::new();
            for round in 0..5 {
                let mut device = Client::connect(options()).await.unwrap();
                device.client.subscribe(format!("updraft/{id}/cmd"), QoS::AtLeastOnce).await.unwrap();
                device.expect_suback().await;
                drop(device);
                s.wait_for_status(&id, "offline").await;
                let sent = s.send_command(&id, "reboot").await;
                let mut device = Client::connect(options()).await.unwrap();
                let mut delivered = false;
                while let Some(message) = device.message_on(&format!("updraft/{id}/cmd"), Duration::from_secs(5)).await {
                    if serde_json::from_slice::<Value>(&message.payload).unwrap()["id"] == sent.as_str() {
                        delivered = true;
                        break;
                    }
                }
                if !delivered {
                    lost.push(format!("{id} round {round}"));
                }
                device.drain(Duration::from_millis(100)).await;
            }
            lost
        }));
    }
    let mut lost = Vec::new();
    for task in tasks {
        lost.extend(task.await.unwrap());
    }
    assert!(lost.is_empty(), "commands lost: {lost:?}");
    if let Ok(s) = std::sync::Arc::try_unwrap(s) {
        s.app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_sent_while_a_persistent_session_is_taken_over_are_all_delivered() {
    // A device with a persistent session (clean session 0) reconnects again and again, each
    // new connection taking the session over from the one before (still open in the broker,
    // or just closed), while commands are sent to it without pause. Every command the API
    // accepted (202) reaches the device. rmqtt used to lose the messages routed to a session
    // during its hand-over (docs/upstream/rmqtt-session-takeover.md).
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let s = Arc::new(setup(Broker::Embedded).await);
    let (id, token) = s.device("02:00:00:00:7f:01", "lamp", "1.0.0").await;
    let topic = format!("updraft/{id}/cmd");
    let options = || {
        let mut options = s.options(&id, &id, &token);
        options.set_clean_session(false);
        // Acknowledged only once recorded: what a dropped connection had not handed over is
        // the broker's to send again.
        options.set_manual_acks(true);
        options
    };
    let mut device = Client::connect(options()).await.unwrap();
    device.client.subscribe(topic.clone(), QoS::AtLeastOnce).await.unwrap();
    device.expect_suback().await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for _ in 0..3 {
        let (s, id, stop) = (s.clone(), id.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                sent.push(s.send_command(&id, "ping").await);
            }
            sent
        }));
    }
    let mut received = HashSet::new();
    // Services the connection until `until` (or until it breaks), acknowledging each command.
    async fn serve(device: &mut Client, topic: &str, received: &mut HashSet<String>, until: tokio::time::Instant) {
        loop {
            match tokio::time::timeout_at(until, device.eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    if p.topic == topic {
                        let command: Value = serde_json::from_slice(&p.payload).unwrap();
                        received.insert(command["id"].as_str().unwrap().to_string());
                    }
                    device.client.ack(&p).await.unwrap();
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => return,
            }
        }
    }
    let mut takeovers = 0;
    for round in 0..60u64 {
        let until = tokio::time::Instant::now() + Duration::from_millis(10 + (round % 5) * 10);
        serve(&mut device, &topic, &mut received, until).await;
        drop(device);
        device = Client::connect(options()).await.unwrap_or_else(|code| panic!("reconnection {round} was refused: {code:?}"));
        takeovers += usize::from(device.session_present);
    }
    stop.store(true, Ordering::Relaxed);
    let mut sent = Vec::new();
    for sender in senders {
        sent.extend(sender.await.unwrap());
    }
    assert!(takeovers >= 55, "the broker resumed the session {takeovers} times in 60");
    // The last connection stays until everything accepted has come (or 20 s have passed).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while sent.iter().any(|c| !received.contains(c)) && tokio::time::Instant::now() < deadline {
        serve(&mut device, &topic, &mut received, (tokio::time::Instant::now() + Duration::from_millis(200)).min(deadline)).await;
    }
    let lost: Vec<&String> = sent.iter().filter(|c| !received.contains(*c)).collect();
    assert!(lost.is_empty(), "{} of {} accepted commands never reached the device: {lost:?}", lost.len(), sent.len());
    if let Ok(s) = Arc::try_unwrap(s) {
        s.app.stop().await;
    }
}

// ---- QoS 1 under overload ----

/// A burst of `n` QoS 1 messages from one publisher on `topic`, with up to 20 unacknowledged;
/// returns how many the broker acknowledged (waiting at most `wait` for each next one).
async fn publish_burst(mut publisher: Client, topic: &'static str, n: usize, wait: Duration) -> usize {
    let client = publisher.client.clone();
    tokio::spawn(async move {
        for i in 0..n {
            if client.publish(topic, QoS::AtLeastOnce, false, i.to_string()).await.is_err() {
                return;
            }
        }
    });
    let mut acked = 0;
    while acked < n {
        match publisher.next_event(wait).await {
            Some(Event::Incoming(Packet::PubAck(_))) => acked += 1,
            Some(_) => {}
            None => break,
        }
    }
    acked
}

async fn dropped_total(s: &Setup) -> f64 {
    let text = s.app.client.get(s.app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("updraft_mqtt_messages_dropped_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The embedded broker with small per-client limits, a user `burst` (password
/// `burst-password-2026`) and a client of it subscribed to `topic` at QoS 1.
async fn queue_limited_broker(max_inflight: u16, max_queued: usize, queue_full_wait: Duration, topic: &str) -> (Setup, Client) {
    let app = spawn_app_with(|s| {
        s.mqtt.max_inflight = max_inflight;
        s.mqtt.max_queued = max_queued;
        s.mqtt.queue_full_wait = queue_full_wait;
    })
    .await;
    let broker = app.mqtt_addr.expect("the embedded broker runs");
    let s = Setup { app, broker, mosquitto: None };
    s.user("burst", "burst-password-2026", "admin").await;
    let mut subscriber =
        Client::connect(s.options(&format!("{}-sub", topic.replace('/', "-")), "burst", "burst-password-2026")).await.unwrap();
    subscriber.client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    subscriber.expect_suback().await;
    (s, subscriber)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_qos1_message_acknowledged_to_a_publisher_reaches_a_slow_subscriber() {
    // One publisher sends 300 QoS 1 messages at once to a subscriber that holds 4 in flight and
    // queues 10, and that reads nothing for the first second and a half. The broker used to
    // acknowledge all 300 at once and drop what did not fit the queue; now the publisher is
    // held back (no PUBACK, its socket not read) while the queue is full, and every message
    // it got a PUBACK for is delivered. Nothing is dropped.
    const N: usize = 300;
    let (s, mut subscriber) = queue_limited_broker(4, 10, Duration::from_secs(30), "bench/burst").await;
    let mut options = s.options("burst-pub", "burst", "burst-password-2026");
    options.set_inflight(20);
    let publisher = Client::connect(options).await.unwrap();
    let burst = tokio::spawn(publish_burst(publisher, "bench/burst", N, Duration::from_secs(60)));
    // Stalled: its event loop is not polled, so no PUBACK goes back to the broker.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut delivered = std::collections::HashSet::new();
    while delivered.len() < N {
        match subscriber.message_on("bench/burst", Duration::from_secs(10)).await {
            Some(p) => delivered.insert(String::from_utf8(p.payload.to_vec()).unwrap()),
            None => break,
        };
    }
    let acked = burst.await.unwrap();
    assert_eq!(acked, N, "the broker acknowledged {acked} of {N}");
    assert_eq!(delivered.len(), N, "acknowledged {acked}, delivered {}", delivered.len());
    assert_eq!(dropped_total(&s).await, 0.0, "nothing is dropped");
    s.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_stalled_longer_than_the_queue_wait_loses_its_oldest_messages_counted() {
    // The documented policy past UPDRAFT_MQTT_QUEUE_FULL_WAIT_MS: a subscriber that takes
    // nothing for longer does not hold its publishers for ever; each message then goes into
    // its full queue and pushes the oldest one out, counted as dropped.
    const N: usize = 20;
    let (s, subscriber) = queue_limited_broker(1, 2, Duration::from_millis(100), "bench/stalled").await;
    let publisher = Client::connect(s.options("stalled-pub", "burst", "burst-password-2026")).await.unwrap();
    // The subscriber never reads again.
    let acked = publish_burst(publisher, "bench/stalled", N, Duration::from_secs(30)).await;
    assert_eq!(acked, N, "the publisher is slowed, not stopped");
    // In flight 1, queued 2: the rest went out of the queue as newer ones came.
    let mut dropped = 0.0;
    for _ in 0..100 {
        dropped = dropped_total(&s).await;
        if dropped >= (N - 3) as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dropped >= (N - 3) as f64, "dropped {dropped}");
    drop(subscriber);
    s.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_still_go_both_ways_with_small_connection_buffers() {
    // The broker's connection buffers start small (UPDRAFT_MQTT_IO_BUFFER_BYTES), grow for a
    // large packet, go back to their small size after it, and the write buffer is freed between
    // packets (rmqtt-net patch 3): 256 KiB messages from a device and to a device, between small
    // ones, each arrive whole.
    let app = spawn_app_with(|s| s.mqtt.io_buffer_bytes = 256).await;
    let broker = app.mqtt_addr.expect("the embedded broker runs");
    let s = Setup { app, broker, mosquitto: None };
    let (id, token) = s.device("02:00:00:00:73:02", "lamp", "1.0.0").await;
    s.user("big", "big-password-2026", "admin").await;
    let mut options = s.options(&id, &id, &token);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let mut device = Client::connect(options).await.unwrap();
    let mut options = s.options("big-operator", "big", "big-password-2026");
    options.set_max_packet_size(1 << 20, 1 << 20);
    let mut operator = Client::connect(options).await.unwrap();
    let (command, telemetry) = (format!("updraft/{id}/cmd"), format!("updraft/{id}/telemetry"));
    device.client.subscribe(&command, QoS::AtLeastOnce).await.unwrap();
    device.expect_suback().await;
    operator.client.subscribe(&telemetry, QoS::AtLeastOnce).await.unwrap();
    operator.expect_suback().await;
    for (round, size) in [(0, 16), (1, 256 << 10), (2, 16), (3, 256 << 10), (4, 16)] {
        let payload = format!("{{\"round\":{round},\"blob\":\"{}\"}}", "x".repeat(size));
        let got = send_and_receive(&mut operator, &mut device, &command, &payload).await.expect("the command arrives");
        assert_eq!(got.payload.len(), payload.len(), "round {round}: to the device");
        assert_eq!(&got.payload[..], payload.as_bytes(), "round {round}: to the device");
        let got = send_and_receive(&mut device, &mut operator, &telemetry, &payload).await.expect("the telemetry arrives");
        assert_eq!(got.payload.len(), payload.len(), "round {round}: from the device");
        assert_eq!(&got.payload[..], payload.as_bytes(), "round {round}: from the device");
    }
    s.app.stop().await;
}

/// Publishes `payload` (QoS 1) from `from` and waits for it on `to`, driving both clients.
async fn send_and_receive(from: &mut Client, to: &mut Client, topic: &str, payload: &str) -> Option<rumqttc::Publish> {
    from.client.publish(topic, QoS::AtLeastOnce, false, payload.to_owned()).await.unwrap();
    let acked = async {
        loop {
            match from.eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return,
                Ok(_) => {}
                Err(e) => panic!("the publisher's connection failed: {e}"),
            }
        }
    };
    let (acked, got) = tokio::join!(tokio::time::timeout(Duration::from_secs(20), acked), to.message_on(topic, Duration::from_secs(20)));
    acked.expect("PUBACK in time");
    got
}

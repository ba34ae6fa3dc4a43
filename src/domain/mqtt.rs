//! MQTT: the topics of every protocol spoken over MQTT, and who may publish or subscribe
//! where. Pure: the embedded broker's hooks, the external brokers' HTTP auth hooks and the
//! server's message handler all ask this module, so the rules are the same in every mode.
//!
//! Topic trees (docs/CLIENT.md):
//! - native, per device: `updraft/{device_id}/{status|telemetry|attributes|ota|ota/status|config|cmd|cmd/result}`;
//! - seed 000 (Citon firmware server), per MAC: `{mac}/firmware`, `{mac}/flashing/status`, `{mac}/keepalive`;
//! - seed 003 (IoTSupport) notifications: `iotsupport/updates/{configs|assets}`.

use chrono::{DateTime, Utc};

use super::ids::DeviceId;
use super::mac::Mac;

pub const PREFIX: &str = "updraft";
/// The group of the server's shared subscriptions: replicas split the device traffic.
pub const SHARE_GROUP: &str = "updraft";
pub const SEED003_PREFIX: &str = "iotsupport/updates";
/// Seed 003's notice that a device's `<mac>.json` changed: `{"filename": "<mac>.json"}`.
pub const SEED003_CONFIG_TOPIC: &str = "iotsupport/updates/configs";
/// Seed 003's notice that an asset file was uploaded: `{"filename": "<name>"}`.
pub const SEED003_ASSET_TOPIC: &str = "iotsupport/updates/assets";

/// What a credential may do on the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A device, by its token: its own topic tree, its MAC's seed-000 topics and the seed-003
    /// notifications.
    /// `mac` is absent for a device known only by its unique name.
    Device { id: String, mac: Option<Mac> },
    /// An operator or service credential (`/api/v1/mqtt/users`).
    User { name: String, role: Role },
    /// Updraft itself (its own client connection).
    Server,
    /// A ThingsBoard provisioning session (username `provision`, embedded broker only): it
    /// may ask for a token and read the answer, nothing else.
    Provision,
}

/// Roles of operator and service credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Subscribe to every device's messages (status, telemetry, attributes, update status,
    /// command results) and the seed-003 notifications; publish nothing. For Node-RED,
    /// Home Assistant and the like.
    FleetRead,
    /// A seed-000 gateway or device that shares one credential (`firmware-server-dev` in that
    /// repository): `+/firmware` for any MAC, `+/flashing/status` and `+/keepalive`.
    Gateway,
    /// Everything, including publishing commands. Use sparingly.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::FleetRead, Role::Gateway, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::FleetRead => "fleet-read",
            Role::Gateway => "gateway",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Publish,
    Subscribe,
}

/// Topics a device publishes under its own tree.
const DEVICE_PUBLISHES: [&str; 5] = ["status", "telemetry", "attributes", "ota/status", "cmd/result"];
/// Topics the server publishes to a device.
const DEVICE_RECEIVES: [&str; 3] = ["ota", "config", "cmd"];

/// May `principal` publish to `topic` (no wildcards) or subscribe to `filter`?
pub fn allowed(principal: &Principal, access: Access, topic: &str) -> bool {
    let topic = match access {
        Access::Subscribe => strip_share(topic),
        Access::Publish => topic,
    };
    if !valid(topic, access) {
        return false;
    }
    let fits = |patterns: &[String]| patterns.iter().any(|pattern| covers(pattern, topic));
    match principal {
        Principal::Server => true,
        Principal::Provision => match access {
            Access::Publish => topic == "/provision/request",
            Access::Subscribe => topic == "/provision/response",
        },
        Principal::User { role: Role::Admin, .. } => true,
        Principal::User { role: Role::FleetRead, .. } => {
            access == Access::Subscribe
                && (fits(&DEVICE_PUBLISHES.iter().map(|t| format!("{PREFIX}/+/{t}")).collect::<Vec<_>>())
                    || fits(&[format!("{SEED003_PREFIX}/+")]))
        }
        Principal::User { role: Role::Gateway, .. } => match access {
            // The MAC level is checked by the message handler, which ignores unknown MACs.
            Access::Publish => fits(&["+/flashing/status".into(), "+/keepalive".into()]) && legacy_mac(topic).is_some(),
            Access::Subscribe => fits(&["+/firmware".into(), format!("{SEED003_PREFIX}/+")]),
        },
        Principal::Device { id, mac } => {
            let own = |suffixes: &[&str]| suffixes.iter().map(|t| format!("{PREFIX}/{id}/{t}")).collect::<Vec<_>>();
            let legacy_mine = legacy_mac(topic).is_some_and(|m| Some(m) == *mac);
            match access {
                Access::Publish => {
                    fits(&own(&DEVICE_PUBLISHES)) || (legacy_mine && fits(&["+/flashing/status".into(), "+/keepalive".into()]))
                }
                Access::Subscribe => {
                    let mut receives = own(&DEVICE_RECEIVES);
                    receives.push(format!("{SEED003_PREFIX}/+"));
                    // Its own tree as a whole (`updraft/{id}/#`) is fine too: it only holds its messages.
                    receives.push(format!("{PREFIX}/{id}/#"));
                    fits(&receives) || (legacy_mine && fits(&["+/firmware".into()]))
                }
            }
        }
    }
}

// ---- client identifiers and sessions ----

/// The client id of a connection, as the broker saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientId<'a> {
    /// The client sent an empty one and the broker assigned a random one.
    Assigned,
    /// The client chose this one.
    Chosen(&'a str),
    /// Chosen by the client or assigned by an external broker: nobody can tell (the auth hooks
    /// of external brokers).
    Unknown(&'a str),
}

/// Why a connection may not use its client id: CONNACK "identifier rejected" (3.1.1, return
/// code 2) / "client identifier not valid" (5.0, reason 0x85).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIdRefusal {
    /// A device's client id is empty (assigned by the broker), or its own id or MAC, or
    /// starts with one of them.
    NotTheDevice,
    /// The client id names another device (its id or MAC, or starts with one of them).
    AnotherDevice,
    /// The client id's session (connected, or kept for a persistent client) was created by
    /// another principal: sessions are resumed only by whoever created them.
    SessionOfAnother,
}

impl ClientIdRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientIdRefusal::NotTheDevice => "a device's client id must be empty or start with its id or MAC",
            ClientIdRefusal::AnotherDevice => "the client id names another device",
            ClientIdRefusal::SessionOfAnother => "the client id's session belongs to another principal",
        }
    }
}

/// The device identities a client id names: a device id (a UUID as its first 36 characters)
/// and MACs (its first 12, 14 or 17 characters, in a common MAC form).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClientIdClaims {
    /// Lower-case, as device ids are.
    pub device_id: Option<String>,
    pub macs: Vec<Mac>,
}

impl ClientIdClaims {
    pub fn of(client_id: &str) -> ClientIdClaims {
        let device_id = client_id.get(..36).and_then(|prefix| uuid::Uuid::try_parse(prefix).ok()).map(|id| id.to_string());
        ClientIdClaims { device_id, macs: mac_prefixes(client_id) }
    }

    pub fn is_empty(&self) -> bool {
        self.device_id.is_none() && self.macs.is_empty()
    }
}

/// The MACs a client id starts with: `aabbccddeeff`, `AA:BB:CC:DD:EE:FF`, `aa-bb-cc-dd-ee-ff`
/// or `aabb.ccdd.eeff` (any case) as its first characters.
fn mac_prefixes(client_id: &str) -> Vec<Mac> {
    let mut macs = Vec::new();
    for len in [17, 14, 12] {
        let Some(prefix) = client_id.get(..len) else { continue };
        let shaped = prefix.bytes().enumerate().all(|(i, b)| match len {
            17 if i % 3 == 2 => b == b':' || b == b'-',
            14 if i % 5 == 4 => b == b'.',
            _ => b.is_ascii_hexdigit(),
        });
        if let Some(mac) = Mac::parse(prefix).ok().filter(|mac| shaped && !macs.contains(mac)) {
            macs.push(mac);
        }
    }
    macs
}

/// Whether `client_id` names this device: it is, or starts with, the device's id or its MAC
/// in a common form.
pub fn names_device(client_id: &str, device_id: &str, mac: Option<&Mac>) -> bool {
    (!device_id.is_empty() && client_id.starts_with(device_id)) || mac.is_some_and(|mac| mac_prefixes(client_id).contains(mac))
}

/// The client id rule, besides session ownership ([`may_resume`]):
/// - a device's client id is assigned by the broker (it sent an empty one), or is its own
///   id or MAC, or starts with one of them;
/// - no one else's client id names a device (its id or MAC, or starts with one of them);
/// - Updraft's own connections are not restricted.
///
/// `names_another_device`: the client id names an existing device other than `principal`
/// (the caller looks [`ClientIdClaims`] up).
pub fn check_client_id(principal: &Principal, client_id: ClientId<'_>, names_another_device: bool) -> Result<(), ClientIdRefusal> {
    match principal {
        Principal::Server => Ok(()),
        _ if names_another_device => Err(ClientIdRefusal::AnotherDevice),
        Principal::Device { id, mac } => match client_id {
            ClientId::Assigned | ClientId::Unknown(_) => Ok(()),
            ClientId::Chosen(chosen) if names_device(chosen, id, mac.as_ref()) => Ok(()),
            ClientId::Chosen(_) => Err(ClientIdRefusal::NotTheDevice),
        },
        Principal::User { .. } | Principal::Provision => Ok(()),
    }
}

/// Who created a session: only they may resume it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    Device(String),
    User(String),
    Server,
    /// Provisioning sessions: their credential (`provision`, no password) is public, so no
    /// one may resume one.
    Nobody,
}

impl Principal {
    pub fn owner(&self) -> Owner {
        match self {
            Principal::Device { id, .. } => Owner::Device(id.clone()),
            Principal::User { name, .. } => Owner::User(name.clone()),
            Principal::Server => Owner::Server,
            Principal::Provision => Owner::Nobody,
        }
    }
}

/// Whether `principal` may take over (resume) a session that `owner` created.
pub fn may_resume(owner: &Owner, principal: &Principal) -> bool {
    *owner != Owner::Nobody && *owner == principal.owner()
}

/// `$share/{group}/{filter}` → `{filter}`.
pub fn strip_share(filter: &str) -> &str {
    match filter.strip_prefix("$share/").and_then(|rest| rest.split_once('/')) {
        Some((_, inner)) => inner,
        None => filter,
    }
}

/// A well-formed topic name (publish) or filter (subscribe).
fn valid(topic: &str, access: Access) -> bool {
    if topic.is_empty() || topic.len() > 1024 || topic.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = topic.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        let wild = level.contains('+') || level.contains('#');
        match access {
            Access::Publish if wild => return false,
            Access::Subscribe if wild && *level != "+" && *level != "#" => return false,
            Access::Subscribe if *level == "#" && i != levels.len() - 1 => return false,
            _ => {}
        }
    }
    true
}

/// True when every topic that `filter` can match is also matched by `pattern`. With a topic
/// name as `filter` this is plain MQTT matching. Topics starting with `$` never match a
/// wildcard at the first level (MQTT 3.1.1 §4.7.2).
pub fn covers(pattern: &str, filter: &str) -> bool {
    if filter.starts_with('$') && (pattern.starts_with('+') || pattern.starts_with('#')) {
        return false;
    }
    let mut p = pattern.split('/');
    let mut f = filter.split('/');
    loop {
        match (p.next(), f.next()) {
            (Some("#"), _) => return true,
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b && b != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The MAC of a seed-000 topic (`{mac}/...`): the first level, in any common MAC form.
pub fn legacy_mac(topic: &str) -> Option<Mac> {
    let first = topic.split('/').next()?;
    Mac::parse(first).ok()
}

/// A message a device (or gateway) sent to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Status {
        device_id: DeviceId,
    },
    Telemetry {
        device_id: DeviceId,
    },
    Attributes {
        device_id: DeviceId,
    },
    OtaStatus {
        device_id: DeviceId,
    },
    CommandResult {
        device_id: DeviceId,
    },
    /// Seed 000: `flashing`, `idle`, `done` or `failed`. `mac_text` is the MAC as the topic
    /// spells it, so that answers go to the topic the device subscribed to.
    LegacyFlashing {
        mac: Mac,
        mac_text: String,
    },
    LegacyKeepalive {
        mac: Mac,
        mac_text: String,
    },
}

impl Inbound {
    pub fn parse(topic: &str) -> Option<Inbound> {
        let levels: Vec<&str> = topic.split('/').collect();
        match levels.as_slice() {
            [PREFIX, id, rest @ ..] if !id.is_empty() => {
                let device_id = DeviceId::from(*id);
                match rest {
                    ["status"] => Some(Inbound::Status { device_id }),
                    ["telemetry"] => Some(Inbound::Telemetry { device_id }),
                    ["attributes"] => Some(Inbound::Attributes { device_id }),
                    ["ota", "status"] => Some(Inbound::OtaStatus { device_id }),
                    ["cmd", "result"] => Some(Inbound::CommandResult { device_id }),
                    _ => None,
                }
            }
            [mac_text, "flashing", "status"] => {
                Mac::parse(mac_text).ok().map(|mac| Inbound::LegacyFlashing { mac, mac_text: mac_text.to_string() })
            }
            [mac_text, "keepalive"] => {
                Mac::parse(mac_text).ok().map(|mac| Inbound::LegacyKeepalive { mac, mac_text: mac_text.to_string() })
            }
            _ => None,
        }
    }

    /// The filters under which the server receives these messages. With an external broker
    /// (`split`), `status` is followed by every replica (each needs to know who is connected)
    /// and the rest is split between replicas by shared subscriptions. The embedded broker
    /// serves one replica, which takes everything.
    pub fn subscriptions(split: bool) -> Vec<(String, bool)> {
        let shared = |filter: &str| if split { (format!("$share/{SHARE_GROUP}/{filter}"), true) } else { (filter.to_string(), false) };
        vec![
            (format!("{PREFIX}/+/status"), false),
            shared(&format!("{PREFIX}/+/telemetry")),
            shared(&format!("{PREFIX}/+/attributes")),
            shared(&format!("{PREFIX}/+/ota/status")),
            shared(&format!("{PREFIX}/+/cmd/result")),
            shared("+/flashing/status"),
            shared("+/keepalive"),
        ]
    }
}

pub fn status_topic(device_id: &str) -> String {
    format!("{PREFIX}/{device_id}/status")
}
pub fn ota_topic(device_id: &str) -> String {
    format!("{PREFIX}/{device_id}/ota")
}
pub fn config_topic(device_id: &str) -> String {
    format!("{PREFIX}/{device_id}/config")
}
pub fn command_topic(device_id: &str) -> String {
    format!("{PREFIX}/{device_id}/cmd")
}
pub fn legacy_firmware_topic(mac_text: &str) -> String {
    format!("{mac_text}/firmware")
}

/// A device's `status` message: `online`/`offline`, also as JSON (`"online"`,
/// `{"online":true}`, `{"state":"online"}`, `{"status":"offline"}`).
pub fn parse_status(payload: &[u8]) -> Option<bool> {
    let text = std::str::from_utf8(payload).ok()?.trim();
    let word = |w: &str| match w.to_ascii_lowercase().as_str() {
        "online" | "connected" | "up" | "1" | "true" => Some(true),
        "offline" | "disconnected" | "down" | "0" | "false" => Some(false),
        _ => None,
    };
    if let Some(answer) = word(text.trim_matches('"')) {
        return Some(answer);
    }
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    match value.get("online") {
        Some(serde_json::Value::Bool(b)) => Some(*b),
        _ => ["state", "status"].iter().find_map(|k| value.get(*k).and_then(|v| v.as_str()).and_then(word)),
    }
}

/// Seed 000's flashing states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyFlashState {
    Flashing,
    Idle,
    Done,
    Failed,
}

pub fn parse_legacy_flash_state(payload: &[u8]) -> Option<LegacyFlashState> {
    let text = std::str::from_utf8(payload).ok()?.trim().trim_matches('"').to_ascii_lowercase();
    match text.as_str() {
        "flashing" => Some(LegacyFlashState::Flashing),
        "idle" => Some(LegacyFlashState::Idle),
        "done" => Some(LegacyFlashState::Done),
        "failed" => Some(LegacyFlashState::Failed),
        _ => None,
    }
}

// ---- stored credentials ----

/// An operator or service credential of the broker (devices use their tokens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUser {
    pub username: String,
    pub password_hash: String,
    pub role: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> Principal {
        Principal::Device { id: "dev_1".into(), mac: Some(Mac::parse("AA:BB:CC:DD:EE:01").unwrap()) }
    }

    #[test]
    fn devices_stay_in_their_own_tree() {
        let d = device();
        assert!(allowed(&d, Access::Publish, "updraft/dev_1/telemetry"));
        assert!(allowed(&d, Access::Publish, "updraft/dev_1/ota/status"));
        assert!(!allowed(&d, Access::Publish, "updraft/dev_1/ota"), "a device cannot forge its own offer");
        assert!(!allowed(&d, Access::Publish, "updraft/dev_2/telemetry"));
        assert!(!allowed(&d, Access::Publish, "updraft/+/telemetry"));
        assert!(allowed(&d, Access::Subscribe, "updraft/dev_1/ota"));
        assert!(allowed(&d, Access::Subscribe, "updraft/dev_1/#"));
        assert!(allowed(&d, Access::Subscribe, "updraft/dev_1/+"));
        assert!(!allowed(&d, Access::Subscribe, "updraft/+/ota"));
        assert!(!allowed(&d, Access::Subscribe, "updraft/#"));
        assert!(!allowed(&d, Access::Subscribe, "#"));
        assert!(!allowed(&d, Access::Subscribe, "$share/x/updraft/+/telemetry"));
        assert!(allowed(&d, Access::Subscribe, "iotsupport/updates/configs"));
        assert!(allowed(&d, Access::Publish, "aa-bb-cc-dd-ee-01/flashing/status"));
        assert!(allowed(&d, Access::Subscribe, "AABBCCDDEE01/firmware"));
        assert!(!allowed(&d, Access::Subscribe, "aa-bb-cc-dd-ee-02/firmware"));
        assert!(!allowed(&d, Access::Subscribe, "+/firmware"));
    }

    #[test]
    fn roles() {
        let reader = Principal::User { name: "nodered".into(), role: Role::FleetRead };
        assert!(allowed(&reader, Access::Subscribe, "updraft/+/telemetry"));
        assert!(allowed(&reader, Access::Subscribe, "$share/g/updraft/+/status"));
        assert!(!allowed(&reader, Access::Subscribe, "updraft/#"), "# would include commands");
        assert!(!allowed(&reader, Access::Subscribe, "updraft/+/cmd"));
        assert!(!allowed(&reader, Access::Publish, "updraft/x/telemetry"));
        let gateway = Principal::User { name: "firmware-server-dev".into(), role: Role::Gateway };
        assert!(allowed(&gateway, Access::Subscribe, "aa:bb:cc:dd:ee:ff/firmware"));
        assert!(allowed(&gateway, Access::Subscribe, "+/firmware"));
        assert!(allowed(&gateway, Access::Publish, "aa:bb:cc:dd:ee:ff/keepalive"));
        assert!(!allowed(&gateway, Access::Publish, "notamac/keepalive"));
        assert!(!allowed(&gateway, Access::Publish, "updraft/x/telemetry"));
        let admin = Principal::User { name: "ops".into(), role: Role::Admin };
        assert!(allowed(&admin, Access::Publish, "updraft/x/cmd"));
    }

    #[test]
    fn a_device_s_client_id_is_its_id_or_mac_or_starts_with_one() {
        let id = "0190a3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d";
        let d = Principal::Device { id: id.into(), mac: Some(Mac::parse("AA:BB:CC:DD:EE:01").unwrap()) };
        let ok = |c: ClientId| check_client_id(&d, c, false);
        assert_eq!(ok(ClientId::Assigned), Ok(()));
        for chosen in [
            id,
            "0190a3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d-lamp",
            "AA:BB:CC:DD:EE:01",
            "aa-bb-cc-dd-ee-01",
            "aabbccddee01",
            "AABB.CCDD.EE01",
            "aabbccddee01_esp32",
        ] {
            assert_eq!(ok(ClientId::Chosen(chosen)), Ok(()), "{chosen}");
        }
        for chosen in
            ["lamp", "c-0190a3c4", "0190a3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6", "aabbccddee02", "aa:bb:cc:dd:ee", "efuse:1", " aabbccddee01"]
        {
            assert_eq!(ok(ClientId::Chosen(chosen)), Err(ClientIdRefusal::NotTheDevice), "{chosen}");
        }
        assert_eq!(check_client_id(&d, ClientId::Chosen(id), true), Err(ClientIdRefusal::AnotherDevice));
        // External brokers: whether the broker assigned it cannot be told.
        assert_eq!(ok(ClientId::Unknown("auto-1234")), Ok(()));
    }

    #[test]
    fn no_one_else_s_client_id_names_a_device() {
        let reader = Principal::User { name: "nodered".into(), role: Role::FleetRead };
        assert_eq!(check_client_id(&reader, ClientId::Chosen("nodered-1"), false), Ok(()));
        assert_eq!(check_client_id(&reader, ClientId::Chosen("aabbccddee01"), true), Err(ClientIdRefusal::AnotherDevice));
        assert_eq!(check_client_id(&Principal::Provision, ClientId::Chosen("aabbccddee01"), true), Err(ClientIdRefusal::AnotherDevice));
        assert_eq!(check_client_id(&Principal::Server, ClientId::Chosen("aabbccddee01"), true), Ok(()));
    }

    #[test]
    fn client_id_claims() {
        let claims = ClientIdClaims::of("0190A3C4-5E6F-7A8B-9C0D-1E2F3A4B5C6D/x");
        assert_eq!(claims.device_id.as_deref(), Some("0190a3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d"));
        assert_eq!(ClientIdClaims::of("aa:bb:cc:dd:ee:01-gw").macs, vec![Mac::parse("aabbccddee01").unwrap()]);
        // A long hex id starts with a 12-digit "MAC"; it names a device only if one has it.
        assert_eq!(ClientIdClaims::of("aabbccddee01ff00").macs, vec![Mac::parse("aabbccddee01").unwrap()]);
        assert!(ClientIdClaims::of("mosq-12345").is_empty());
        assert!(ClientIdClaims::of("").is_empty());
        assert!(ClientIdClaims::of("ééééééééééééééééééé").is_empty(), "never splits a character");
    }

    #[test]
    fn sessions_are_resumed_only_by_their_creator() {
        let a = Principal::Device { id: "a".into(), mac: Some(Mac::parse("aabbccddee01").unwrap()) };
        let b = Principal::Device { id: "b".into(), mac: Some(Mac::parse("aabbccddee02").unwrap()) };
        let reader = Principal::User { name: "a".into(), role: Role::FleetRead };
        assert!(may_resume(&a.owner(), &a));
        assert!(!may_resume(&a.owner(), &b));
        assert!(!may_resume(&a.owner(), &reader), "a user named like a device id is not that device");
        assert!(may_resume(&reader.owner(), &reader));
        assert!(!may_resume(&Principal::Provision.owner(), &Principal::Provision), "provisioning sessions are never resumed");
        assert!(may_resume(&Principal::Server.owner(), &Principal::Server));
    }

    #[test]
    fn covering() {
        assert!(covers("a/+/c", "a/b/c"));
        assert!(covers("a/#", "a"));
        assert!(covers("a/#", "a/+/x"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(covers("a/+", "a/+"));
        assert!(!covers("+/keepalive", "$SYS/keepalive"));
        assert!(!valid_sub("a/#/b"));
        assert!(!valid_sub("a/b+"));
    }

    fn valid_sub(f: &str) -> bool {
        valid(f, Access::Subscribe)
    }

    #[test]
    fn inbound_topics() {
        assert_eq!(Inbound::parse("updraft/d1/ota/status"), Some(Inbound::OtaStatus { device_id: "d1".into() }));
        assert_eq!(Inbound::parse("updraft/d1/ota"), None);
        let mac = Mac::parse("aabbccddeeff").unwrap();
        assert_eq!(Inbound::parse("aabbccddeeff/keepalive"), Some(Inbound::LegacyKeepalive { mac, mac_text: "aabbccddeeff".into() }));
        assert_eq!(Inbound::parse("x/keepalive"), None);
        assert_eq!(parse_status(b"offline"), Some(false));
        assert_eq!(parse_status(br#"{"state":"online"}"#), Some(true));
        assert_eq!(parse_status(b"garbage"), None);
    }
}

/// The properties of `crate::fuzzing` (shared with `fuzz/`), for a bounded number of cases.
#[cfg(test)]
mod properties {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use crate::fuzzing;

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            prop_oneof![
                Just("updraft"),
                Just("dev-1"),
                Just("dev-10"),
                Just("+"),
                Just("#"),
                Just("status"),
                Just("telemetry"),
                Just("attributes"),
                Just("ota"),
                Just("config"),
                Just("cmd"),
                Just("result"),
                Just("AA:BB:CC:DD:EE:01"),
                Just("aa-bb-cc-dd-ee-02"),
                Just("AABBCCDDEE01"),
                Just("flashing"),
                Just("keepalive"),
                Just("firmware"),
                Just("$share"),
                Just("iotsupport"),
                Just("updates"),
                Just("provision"),
                Just("request"),
                Just(""),
            ]
            .prop_map(str::to_string),
            "[a-z0-9$+#:-]{1,6}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn topics_parse_back_and_no_device_reaches_another(levels in vec(level(), 1..6)) {
            fuzzing::mqtt_topic(levels.join("/").as_bytes());
        }

        #[test]
        fn any_text_is_a_topic_or_refused(text in "\\PC{0,30}") {
            fuzzing::mqtt_topic(text.as_bytes());
        }
    }
}

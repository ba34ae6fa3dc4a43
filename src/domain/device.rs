//! Devices and products: names and tags, provisioning policy, setup progress (the seed-004
//! status codes) and update states.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::error::{Error, Result};
use super::firmware::{Channel, HardwareId, ProductName};
use super::ids::{ArtifactId, AttemptId, DeviceId, ReleaseId, RolloutId};
use super::mac::Mac;

/// How unknown devices of a product may obtain a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioning {
    /// Any device that asks is created and given a token (seed 004's behaviour).
    Open,
    /// The device must present the product's provisioning key and secret (ThingsBoard-style).
    Key,
    /// Only devices an operator created may get a token.
    Preregistered,
}

impl Provisioning {
    pub fn parse(text: &str) -> Result<Provisioning> {
        match text.trim().to_ascii_lowercase().as_str() {
            "open" => Ok(Provisioning::Open),
            "key" => Ok(Provisioning::Key),
            "preregistered" => Ok(Provisioning::Preregistered),
            other => Err(Error::invalid("invalid_provisioning", format!("provisioning `{other}` is not one of: open, key, preregistered"))),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Provisioning::Open => "open",
            Provisioning::Key => "key",
            Provisioning::Preregistered => "preregistered",
        }
    }
}

/// A product's device policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Product {
    pub name: ProductName,
    pub provisioning: Provisioning,
    pub provision_key: Option<String>,
    /// SHA-256 hex of the provisioning secret.
    pub provision_secret_hash: Option<String>,
    pub poll_interval_s: u32,
    /// The hardware ids the product admits; empty admits any. When set, a device's hardware
    /// is fixed by an operator or at provisioning, never changed by a check-in.
    pub hardware: Vec<HardwareId>,
    /// Anonymous reads of seed 003's configuration files include secret values (for devices
    /// that cannot send a token). Off by default.
    pub public_secrets: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Product {
    /// Whether the product lets devices of `hardware` in.
    pub fn admits_hardware(&self, hardware: &str) -> bool {
        self.hardware.is_empty() || self.hardware.iter().any(|h| *h == hardware)
    }

    /// The hardware of a device provisioned without naming one: the product's only admitted
    /// hardware, if it admits exactly one.
    pub fn sole_hardware(&self) -> Option<&HardwareId> {
        match self.hardware.as_slice() {
            [only] => Some(only),
            _ => None,
        }
    }
}

/// The shortest provisioning secret accepted.
pub const MIN_PROVISION_SECRET_LEN: usize = 16;
/// The most hardware ids a product admits by name.
pub const MAX_PRODUCT_HARDWARE: usize = 100;

/// A new provisioning secret (only its digest is stored): at least 16 characters.
pub fn check_provision_secret(secret: &str) -> Result<()> {
    if secret.chars().count() < MIN_PROVISION_SECRET_LEN {
        return Err(Error::invalid(
            "invalid_provision_secret",
            format!("provision_secret must be at least {MIN_PROVISION_SECRET_LEN} characters"),
        ));
    }
    Ok(())
}

/// The hardware a product admits, as an operator lists it: each a valid hardware id, sorted,
/// without repeats, at most `MAX_PRODUCT_HARDWARE`.
pub fn hardware_list(list: &[String]) -> Result<Vec<HardwareId>> {
    if list.len() > MAX_PRODUCT_HARDWARE {
        return Err(Error::invalid("invalid_hardware", format!("a product admits at most {MAX_PRODUCT_HARDWARE} hardware ids")));
    }
    let mut parsed = list.iter().map(|h| HardwareId::parse(h)).collect::<Result<Vec<_>>>()?;
    parsed.sort();
    parsed.dedup();
    Ok(parsed)
}

/// A product policy as it is about to be stored: `key` provisioning has a key and a secret; a
/// key has 8-128 characters; the poll interval is in range.
pub fn check_product(product: &Product) -> Result<()> {
    if product.provisioning == Provisioning::Key && (product.provision_key.is_none() || product.provision_secret_hash.is_none()) {
        return Err(Error::invalid("invalid_provisioning", "provisioning `key` needs provision_key and provision_secret"));
    }
    if let Some(key) = &product.provision_key
        && !(8..=128).contains(&key.len())
    {
        return Err(Error::invalid("invalid_provision_key", "provision_key must be 8-128 characters"));
    }
    check_poll_interval(product.poll_interval_s)?;
    Ok(())
}

/// What a check-in that reports the version the device runs means for its current update
/// attempt: the target version completes it (`succeeded`); after `installed`, another version
/// means the new build did not boot (the bootloader went back: `failed`, with why). `None`:
/// the attempt goes on (or is over already, or the report says nothing).
pub fn attempt_outcome(attempt: &UpdateAttempt, reported: Option<&str>) -> Option<(UpdateState, Option<String>)> {
    let running = reported.and_then(|v| super::version::Version::parse(v).ok())?;
    if attempt.state.is_final() {
        return None;
    }
    if super::version::Version::parse(&attempt.to_version).ok().as_ref() == Some(&running) {
        return Some((UpdateState::Succeeded, None));
    }
    if attempt.state == UpdateState::Installed {
        let message = format!("boot failure: the device runs {} after installing {}", reported.unwrap_or_default(), attempt.to_version);
        return Some((UpdateState::Failed, Some(message)));
    }
    None
}

/// Whether a decision to offer `attempt`'s build again came from an old view of the device:
/// the attempt succeeded, and the version the device last reported (`reported`, read after
/// the attempt) is the attempt's target. A check-in records the version before it completes
/// the attempt, so whoever reads the success can read that version too; a view read before
/// that report (an MQTT connection's sync, a batch of re-evaluations) still shows the old
/// version, and must not open a new attempt for a build the device already runs.
pub fn still_runs_succeeded_build(attempt: &UpdateAttempt, reported: Option<&str>) -> bool {
    let parse = |v: &str| super::version::Version::parse(v).ok();
    attempt.state == UpdateState::Succeeded && reported.and_then(parse).is_some_and(|running| parse(&attempt.to_version) == Some(running))
}

/// Whether a check-in may name `claimed` as the device's product. A device's product is set by
/// an operator, or at provisioning under that product's rules: a check-in may repeat it, and a
/// device without a product may take an `open` product (as provisioning it there would).
/// Returns true when the device takes the product on; refuses anything else with 409
/// `product_mismatch`.
pub fn check_product_claim(current: Option<&str>, claimed: &Product) -> Result<bool> {
    match current {
        Some(current) if claimed.name == current => Ok(false),
        Some(current) => Err(Error::conflict(
            "product_mismatch",
            format!("this device belongs to product `{current}`, not `{}`; only an operator can move it", claimed.name),
        )),
        None if claimed.provisioning == Provisioning::Open => Ok(true),
        None => Err(Error::conflict(
            "product_mismatch",
            format!(
                "this device has no product, and product `{}` ({} provisioning) admits devices only through provisioning or an operator",
                claimed.name,
                claimed.provisioning.as_str()
            ),
        )),
    }
}

/// Whether a check-in may name `claimed` as the device's hardware. A product that restricts
/// hardware fixes it: the check-in may repeat the device's hardware, or name an admitted one
/// when the device has none yet. Products that restrict nothing let devices report theirs.
pub fn check_hardware_claim(current: Option<&str>, claimed: &str, product: Option<&Product>) -> Result<()> {
    let Some(product) = product.filter(|p| !p.hardware.is_empty()) else {
        return Ok(());
    };
    let mismatch = |why: String| Err(Error::conflict("hardware_mismatch", why));
    if !product.admits_hardware(claimed) {
        return mismatch(format!("product `{}` admits hardware {}, not `{claimed}`", product.name, product.hardware.join(", ")));
    }
    match current {
        Some(current) if current != claimed => {
            mismatch(format!("this device's hardware is `{current}`, not `{claimed}`; only an operator can change it"))
        }
        _ => Ok(()),
    }
}

pub const MIN_POLL_INTERVAL_S: u32 = 10;
pub const MAX_POLL_INTERVAL_S: u32 = 7 * 24 * 3600;

pub fn check_poll_interval(seconds: u32) -> Result<u32> {
    if (MIN_POLL_INTERVAL_S..=MAX_POLL_INTERVAL_S).contains(&seconds) {
        Ok(seconds)
    } else {
        Err(Error::invalid(
            "invalid_poll_interval",
            format!("poll_interval_s must be between {MIN_POLL_INTERVAL_S} and {MAX_POLL_INTERVAL_S}"),
        ))
    }
}

/// The last setup report of a device.
#[derive(Debug, Clone, PartialEq)]
pub struct SetupStatus {
    pub code: u8,
    pub title: String,
    pub description: String,
    pub at: DateTime<Utc>,
}

/// Titles allowed with the error codes of seed 004 (5: Wi-Fi, 6: server).
pub const WIFI_ERROR_TITLES: &[&str] = &["WIFI_CONNECT_BAD_CREDENTIALS"];
pub const SERVER_ERROR_TITLES: &[&str] = &[
    "MQTT_CONNECTION_TIMEOUT",
    "MQTT_CONNECTION_LOST",
    "MQTT_CONNECT_FAILED",
    "MQTT_DISCONNECTED",
    "MQTT_CONNECT_BAD_PROTOCOL",
    "MQTT_CONNECT_BAD_CLIENT_ID",
    "MQTT_CONNECT_UNAVAILABLE",
    "MQTT_CONNECT_BAD_CREDENTIALS",
    "MQTT_CONNECT_UNAUTHORIZED",
    "SERVER_REQUEST_TIMEOUT",
    "SERVER_ERROR",
];

/// The default title of each seed-004 status code.
pub fn default_setup_title(code: u8) -> &'static str {
    match code {
        1 => "CONNECTING_TO_WIFI",
        2 => "CONNECTED_TO_WIFI",
        3 => "CONNECTING_TO_SERVER",
        4 => "CONFIG_FINISHED",
        5 => "WIFI_CONNECT_ERROR",
        _ => "SERVER_CONNECT_ERROR",
    }
}

/// Validates a setup report: codes 1-6; errors 5 and 6 carry one of their titles.
pub fn check_setup_report(code: i64, title: Option<&str>) -> Result<(u8, String)> {
    let code = u8::try_from(code).ok().filter(|c| (1..=6).contains(c)).ok_or_else(|| {
        Error::invalid(
            "invalid_setup_status",
            "status_code must be 1 (connecting to wifi), 2 (connected to wifi), 3 (connecting to server), 4 (config finished), 5 (wifi error) or 6 (server error)",
        )
    })?;
    let title = title.map(str::trim).filter(|t| !t.is_empty());
    let allowed: &[&str] = match code {
        5 => WIFI_ERROR_TITLES,
        6 => SERVER_ERROR_TITLES,
        _ => &[],
    };
    let title = match title {
        None => default_setup_title(code).to_string(),
        Some(t) if !allowed.is_empty() && !allowed.contains(&t) => {
            return Err(Error::invalid(
                "invalid_setup_status",
                format!("title `{t}` is not valid with status_code {code}; expected one of {}", allowed.join(", ")),
            ));
        }
        Some(t) if t.len() > 64 => return Err(Error::invalid("invalid_setup_status", "title must be at most 64 characters")),
        Some(t) => t.to_string(),
    };
    Ok((code, title))
}

/// The states of an update attempt. Devices report the first six; the server sets
/// `offered` and `succeeded` (a check-in with the new version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateState {
    Offered,
    Downloading,
    Downloaded,
    Installing,
    Installed,
    Failed,
    Rejected,
    Succeeded,
    /// Withdrawn by the server (the offer changed) and acknowledged by the device (hawkBit
    /// DDI's `cancelAction`): final, but not a failure.
    Cancelled,
}

impl UpdateState {
    pub const REPORTABLE: &'static str = "downloading, downloaded, installing, installed, failed, rejected";

    pub fn parse_reported(text: &str) -> Result<UpdateState> {
        match text.trim().to_ascii_lowercase().as_str() {
            "downloading" => Ok(UpdateState::Downloading),
            "downloaded" => Ok(UpdateState::Downloaded),
            "installing" => Ok(UpdateState::Installing),
            "installed" => Ok(UpdateState::Installed),
            "failed" => Ok(UpdateState::Failed),
            "rejected" => Ok(UpdateState::Rejected),
            other => Err(Error::invalid("invalid_state", format!("state `{other}` is not one of: {}", Self::REPORTABLE))),
        }
    }

    pub fn parse_stored(text: &str) -> UpdateState {
        match text {
            "downloading" => UpdateState::Downloading,
            "downloaded" => UpdateState::Downloaded,
            "installing" => UpdateState::Installing,
            "installed" => UpdateState::Installed,
            "failed" => UpdateState::Failed,
            "rejected" => UpdateState::Rejected,
            "succeeded" => UpdateState::Succeeded,
            "cancelled" => UpdateState::Cancelled,
            _ => UpdateState::Offered,
        }
    }

    /// Every state, in the order of an update.
    pub const ALL: [UpdateState; 8] = [
        UpdateState::Offered,
        UpdateState::Downloading,
        UpdateState::Downloaded,
        UpdateState::Installing,
        UpdateState::Installed,
        UpdateState::Succeeded,
        UpdateState::Failed,
        UpdateState::Rejected,
    ];

    /// The state of this exact name (`as_str`), if there is one.
    pub fn parse_name(text: &str) -> Option<UpdateState> {
        UpdateState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            UpdateState::Offered => "offered",
            UpdateState::Downloading => "downloading",
            UpdateState::Downloaded => "downloaded",
            UpdateState::Installing => "installing",
            UpdateState::Installed => "installed",
            UpdateState::Failed => "failed",
            UpdateState::Rejected => "rejected",
            UpdateState::Succeeded => "succeeded",
            UpdateState::Cancelled => "cancelled",
        }
    }

    /// An attempt in a final state takes no more reports.
    pub fn is_final(&self) -> bool {
        matches!(self, UpdateState::Failed | UpdateState::Rejected | UpdateState::Succeeded | UpdateState::Cancelled)
    }
}

/// A registered device.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub id: DeviceId,
    /// Absent for a device known only by its unique name (`uid`).
    pub mac: Option<Mac>,
    /// The unique name the device calls itself by, when it has one (see [`DeviceUid`]).
    pub uid: Option<DeviceUid>,
    pub name: String,
    pub product: Option<ProductName>,
    pub hardware: Option<HardwareId>,
    pub channel: Channel,
    pub version: Option<String>,
    pub target_version: Option<String>,
    pub tags: Vec<String>,
    pub attributes: Value,
    pub metadata: Value,
    pub owner: Option<String>,
    pub has_token: bool,
    pub last_seen: Option<DateTime<Utc>>,
    pub ip: Option<String>,
    pub setup_status: Option<SetupStatus>,
    /// Until then, the device may be provisioned again without presenting its token.
    pub reprovision_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Device {
    /// How the device names itself: its MAC, else its unique name (messages and logs).
    pub fn label(&self) -> String {
        match (&self.mac, &self.uid) {
            (Some(mac), _) => mac.canonical(),
            (None, Some(uid)) => uid.to_string(),
            (None, None) => self.id.to_string(),
        }
    }

    /// Online while the device has been heard from within `offline_after`.
    pub fn is_online(&self, now: DateTime<Utc>, offline_after: chrono::Duration) -> bool {
        self.last_seen.is_some_and(|seen| now - seen < offline_after)
    }
}

/// A device's unique name, for a device known by a name rather than (or beside) a MAC:
/// ThingsBoard's `deviceName`, a hawkBit DDI `controllerId`. 1-128 ASCII letters, digits
/// and `._-:@~` (safe in a URL path segment, an MQTT topic and a log line), and not a MAC
/// in any accepted form (a MAC is a device's MAC, see [`DeviceKey`]). Case-sensitive.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceUid(String);

impl DeviceUid {
    pub const MAX_LEN: usize = 128;

    pub fn parse(text: &str) -> Result<DeviceUid> {
        let text = text.trim();
        let valid = !text.is_empty()
            && text.len() <= Self::MAX_LEN
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'@' | b'~'));
        if !valid {
            return Err(Error::invalid(
                "invalid_uid",
                format!(
                    "`{}` is not a device name: 1-{} letters, digits or `._-:@~`",
                    text.chars().take(40).filter(|c| !c.is_control()).collect::<String>(),
                    Self::MAX_LEN
                ),
            ));
        }
        if Mac::parse(text).is_ok() {
            return Err(Error::invalid("invalid_uid", format!("`{text}` is a MAC address: send it as the device's MAC")));
        }
        Ok(DeviceUid(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DeviceUid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a device names itself to a protocol: a MAC (in any accepted form), else a unique
/// name. The one rule every adapter applies to a name it receives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeviceKey {
    Mac(Mac),
    Uid(DeviceUid),
}

impl DeviceKey {
    pub fn parse(text: &str) -> Result<DeviceKey> {
        match Mac::parse(text) {
            Ok(mac) => Ok(DeviceKey::Mac(mac)),
            Err(_) => DeviceUid::parse(text).map(DeviceKey::Uid),
        }
    }

    /// The MAC, or `None` for a name.
    pub fn mac(&self) -> Option<Mac> {
        match self {
            DeviceKey::Mac(mac) => Some(*mac),
            DeviceKey::Uid(_) => None,
        }
    }

    /// The unique name, or `None` for a MAC.
    pub fn uid(&self) -> Option<&DeviceUid> {
        match self {
            DeviceKey::Mac(_) => None,
            DeviceKey::Uid(uid) => Some(uid),
        }
    }

    /// Whether it names `device`.
    pub fn names(&self, device: &Device) -> bool {
        match self {
            DeviceKey::Mac(mac) => device.mac == Some(*mac),
            DeviceKey::Uid(uid) => device.uid.as_ref() == Some(uid),
        }
    }
}

impl std::fmt::Display for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceKey::Mac(mac) => f.write_str(&mac.canonical()),
            DeviceKey::Uid(uid) => f.write_str(uid.as_str()),
        }
    }
}

pub fn check_tag(tag: &str) -> Result<String> {
    let tag = tag.trim();
    if !tag.is_empty() && tag.len() <= 64 && tag.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'/'))
    {
        Ok(tag.to_string())
    } else {
        Err(Error::invalid(
            "invalid_tag",
            format!("tag `{}` must be 1-64 letters, digits or `._-:/`", tag.chars().take(70).collect::<String>()),
        ))
    }
}

pub fn check_tags(tags: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for tag in tags {
        let tag = check_tag(tag)?;
        if !out.contains(&tag) {
            out.push(tag);
        }
    }
    if out.len() > 64 {
        return Err(Error::invalid("invalid_tag", "at most 64 tags per device"));
    }
    out.sort();
    Ok(out)
}

pub fn check_text(field: &'static str, code: &'static str, value: &str, max: usize) -> Result<String> {
    let value = value.trim();
    if value.chars().count() > max || value.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(code, format!("{field} must be at most {max} characters without control characters")));
    }
    Ok(value.to_string())
}

/// JSON documents stored with a device (`attributes`, `metadata`) must be objects of
/// bounded size.
pub fn check_json_object(field: &'static str, value: &Value) -> Result<()> {
    if !value.is_object() {
        return Err(Error::invalid("invalid_json", format!("{field} must be a JSON object")));
    }
    if value.to_string().len() > 64 * 1024 {
        return Err(Error::invalid("invalid_json", format!("{field} must be at most 64 KiB")));
    }
    Ok(())
}

/// Merges device-reported attributes into the stored ones (top-level keys replace; `null`
/// removes a key).
pub fn merge_attributes(stored: &Value, reported: &Value) -> Value {
    let mut merged = stored.as_object().cloned().unwrap_or_default();
    if let Some(reported) = reported.as_object() {
        for (key, value) in reported {
            if value.is_null() {
                merged.remove(key);
            } else {
                merged.insert(key.clone(), value.clone());
            }
        }
    }
    Value::Object(merged)
}

// ---- registry queries and changes (what adapters and services hand to storage) ----

/// Operator changes to a device; `Some(None)` clears a field.
#[derive(Debug, Default, Clone)]
pub struct DevicePatch {
    pub name: Option<String>,
    pub product: Option<Option<ProductName>>,
    pub hardware: Option<Option<HardwareId>>,
    pub channel: Option<Channel>,
    pub target_version: Option<Option<String>>,
    pub tags: Option<Vec<String>>,
    pub metadata: Option<Value>,
    pub owner: Option<Option<String>>,
    /// Until then, the device may provision again without its token; `Some(None)` closes it.
    pub reprovision_until: Option<Option<DateTime<Utc>>>,
}

/// What the fleet-wide attempt list selects.
pub struct AttemptFilter {
    /// Any of these states (all when empty).
    pub states: Vec<UpdateState>,
    /// Attempts changed at or after this time (Unix ms).
    pub since: Option<i64>,
    pub product: Option<String>,
    pub limit: u32,
    pub offset: u64,
}

/// An attempt with the device it belongs to.
pub struct FleetAttempt {
    pub attempt: UpdateAttempt,
    pub device_name: String,
    pub mac: String,
    pub product: Option<String>,
}

/// The order of a device listing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceSort {
    #[default]
    NewestFirst,
    OldestFirst,
    LastSeen,
    Name,
    Mac,
}

/// Which devices a listing returns (every condition given must hold), in what order, which page.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    pub product: Option<String>,
    pub hardware: Option<HardwareId>,
    pub version: Option<String>,
    pub tag: Option<String>,
    /// `Some(true)`: seen since the cut-off; `Some(false)`: not. Set by the operator's listing
    /// (`services::devices::list_devices`) from the offline period, not by adapters.
    pub online_since: Option<(bool, i64)>,
    pub last_seen_before: Option<i64>,
    pub last_seen_after: Option<i64>,
    pub owner: Option<String>,
    pub search: Option<String>,
    pub sort: DeviceSort,
    pub limit: u32,
    pub offset: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_key_is_a_mac_in_any_form_else_a_checked_name() {
        assert_eq!(DeviceKey::parse("aabbccddeeff").unwrap().mac(), Some(Mac::parse("AA:BB:CC:DD:EE:FF").unwrap()));
        assert_eq!(DeviceKey::parse(" sensor-1.lab ").unwrap().uid().map(DeviceUid::as_str), Some("sensor-1.lab"));
        for bad in ["", "a b", "a/b", "a+b", "a#b", "x\u{7}", &"x".repeat(129), "caf\u{e9}"] {
            assert_eq!(DeviceKey::parse(bad).unwrap_err().code(), "invalid_uid", "{bad:?}");
        }
        assert_eq!(DeviceUid::parse("AA-BB-CC-DD-EE-FF").unwrap_err().code(), "invalid_uid", "a MAC is not a name");
        assert!(DeviceUid::parse(&"x".repeat(128)).is_ok());
    }

    #[test]
    fn setup_reports_follow_the_seed_codes_and_titles() {
        assert_eq!(check_setup_report(1, None).unwrap(), (1, "CONNECTING_TO_WIFI".into()));
        assert_eq!(check_setup_report(5, Some("WIFI_CONNECT_BAD_CREDENTIALS")).unwrap().1, "WIFI_CONNECT_BAD_CREDENTIALS");
        assert_eq!(check_setup_report(6, Some("MQTT_CONNECT_BAD_CREDENTIALS")).unwrap().1, "MQTT_CONNECT_BAD_CREDENTIALS");
        assert!(check_setup_report(6, Some("WIFI_CONNECT_BAD_CREDENTIALS")).is_err());
        assert!(check_setup_report(0, None).is_err());
        assert!(check_setup_report(7, None).is_err());
    }

    #[test]
    fn reported_attributes_merge_and_null_removes() {
        let stored = serde_json::json!({"a": 1, "b": 2});
        let merged = merge_attributes(&stored, &serde_json::json!({"b": null, "c": 3}));
        assert_eq!(merged, serde_json::json!({"a": 1, "c": 3}));
    }

    #[test]
    fn tags_are_validated_and_deduplicated() {
        assert_eq!(check_tags(&["b".into(), "a".into(), "b".into()]).unwrap(), ["a", "b"]);
        assert!(check_tags(&["has space".into()]).is_err());
    }

    #[test]
    fn only_device_states_can_be_reported() {
        assert_eq!(UpdateState::parse_reported("Installed").unwrap(), UpdateState::Installed);
        assert!(UpdateState::parse_reported("succeeded").is_err());
        assert!(UpdateState::parse_reported("offered").is_err());
    }

    fn product(name: &str, provisioning: Provisioning, hardware: &[&str]) -> Product {
        Product {
            name: ProductName::parse(name).unwrap(),
            provisioning,
            provision_key: None,
            provision_secret_hash: None,
            poll_interval_s: 60,
            hardware: hardware.iter().map(|h| HardwareId::parse(h).unwrap()).collect(),
            public_secrets: false,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn a_check_in_cannot_move_a_device_into_another_product() {
        let open = product("lamp", Provisioning::Open, &[]);
        let keyed = product("meter", Provisioning::Key, &[]);
        assert!(!check_product_claim(Some("lamp"), &open).unwrap(), "repeating its product changes nothing");
        assert!(check_product_claim(None, &open).unwrap(), "a device without a product may take an open one");
        for (current, claimed) in [(Some("lamp"), &keyed), (Some("meter"), &open), (None, &keyed)] {
            let error = check_product_claim(current, claimed).unwrap_err();
            assert_eq!(error.code(), "product_mismatch", "{current:?} -> {}", claimed.name);
        }
    }

    #[test]
    fn product_policies_are_checked_before_they_are_stored() {
        let mut keyed = product("meter", Provisioning::Key, &[]);
        assert_eq!(check_product(&keyed).unwrap_err().code(), "invalid_provisioning");
        keyed.provision_key = Some("short".into());
        keyed.provision_secret_hash = Some("digest".into());
        assert_eq!(check_product(&keyed).unwrap_err().code(), "invalid_provision_key");
        keyed.provision_key = Some("meter-key-1".into());
        assert!(check_product(&keyed).is_ok());
        keyed.poll_interval_s = 1;
        assert_eq!(check_product(&keyed).unwrap_err().code(), "invalid_poll_interval");
        assert_eq!(check_provision_secret("too-short").unwrap_err().code(), "invalid_provision_secret");
        assert!(check_provision_secret("sixteen-chars-ok").is_ok());
        let listed = hardware_list(&["ESP32-S3".into(), "esp32".into(), "esp32-s3".into()]).unwrap();
        assert_eq!(listed, ["esp32", "esp32-s3"], "lower case, sorted, once each");
        assert_eq!(hardware_list(&["bad;name".into()]).unwrap_err().code(), "invalid_hardware");
        assert_eq!(hardware_list(&vec!["x".to_string(); 101]).unwrap_err().code(), "invalid_hardware");
    }

    fn attempt(state: UpdateState, to: &str) -> UpdateAttempt {
        UpdateAttempt {
            id: "a".into(),
            device_id: "d".into(),
            artifact_id: "b".into(),
            release_id: "r".into(),
            rollout_id: None,
            action_id: None,
            from_version: Some("1.0.0".into()),
            to_version: to.into(),
            state,
            progress: None,
            message: None,
            current: true,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            events: Vec::new(),
        }
    }

    #[test]
    fn a_reported_version_completes_or_fails_the_current_attempt() {
        use UpdateState::*;
        assert_eq!(attempt_outcome(&attempt(Downloading, "1.1.0"), Some("1.1.0")), Some((Succeeded, None)));
        assert_eq!(attempt_outcome(&attempt(Offered, "v1.1"), Some("1.1.0")), Some((Succeeded, None)), "versions compare parsed");
        let (state, why) = attempt_outcome(&attempt(Installed, "1.1.0"), Some("1.0.0")).unwrap();
        assert_eq!(state, Failed);
        assert_eq!(why.unwrap(), "boot failure: the device runs 1.0.0 after installing 1.1.0");
        // Before `installed`, another version is the old one still running: nothing yet.
        assert_eq!(attempt_outcome(&attempt(Downloading, "1.1.0"), Some("1.0.0")), None);
        assert_eq!(attempt_outcome(&attempt(Failed, "1.1.0"), Some("1.1.0")), None, "a final attempt stays as it is");
        assert_eq!(attempt_outcome(&attempt(Installed, "1.1.0"), None), None);
        assert_eq!(attempt_outcome(&attempt(Installed, "1.1.0"), Some("garbage")), None);
    }

    #[test]
    fn only_a_success_whose_build_the_device_still_reports_is_kept_from_being_offered_again() {
        use UpdateState::*;
        assert!(still_runs_succeeded_build(&attempt(Succeeded, "1.1.0"), Some("1.1.0")));
        assert!(still_runs_succeeded_build(&attempt(Succeeded, "v1.1"), Some("1.1.0")), "versions compare parsed");
        assert!(!still_runs_succeeded_build(&attempt(Succeeded, "1.1.0"), Some("1.0.0")), "the device went back");
        assert!(!still_runs_succeeded_build(&attempt(Succeeded, "1.1.0"), None));
        assert!(!still_runs_succeeded_build(&attempt(Succeeded, "1.1.0"), Some("garbage")));
        for state in [Offered, Downloading, Installed, Failed, Rejected] {
            assert!(!still_runs_succeeded_build(&attempt(state, "1.1.0"), Some("1.1.0")), "{state:?}");
        }
    }

    #[test]
    fn a_product_that_restricts_hardware_fixes_each_devices_hardware() {
        let free = product("lamp", Provisioning::Open, &[]);
        assert!(check_hardware_claim(Some("esp32"), "esp32s3", Some(&free)).is_ok(), "no restriction: devices report theirs");
        assert!(check_hardware_claim(Some("esp32"), "esp32s3", None).is_ok());
        let strict = product("lamp", Provisioning::Open, &["esp32", "esp32s3"]);
        assert!(check_hardware_claim(Some("esp32"), "esp32", Some(&strict)).is_ok());
        assert!(check_hardware_claim(None, "esp32s3", Some(&strict)).is_ok());
        assert_eq!(check_hardware_claim(Some("esp32"), "esp32s3", Some(&strict)).unwrap_err().code(), "hardware_mismatch");
        assert_eq!(check_hardware_claim(None, "esp8266", Some(&strict)).unwrap_err().code(), "hardware_mismatch");
        assert_eq!(strict.sole_hardware(), None);
        assert_eq!(product("x", Provisioning::Open, &["esp32"]).sole_hardware().map(|h| h.as_str()), Some("esp32"));
    }
}

/// One attempt to bring a device to a build, with the states it went through.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateAttempt {
    pub id: AttemptId,
    pub device_id: DeviceId,
    pub artifact_id: ArtifactId,
    pub release_id: ReleaseId,
    /// The rollout that offered it, if any.
    pub rollout_id: Option<RolloutId>,
    /// The hawkBit DDI action id (a number; `None` for attempts opened before numbers existed,
    /// until a DDI device asks for one).
    pub action_id: Option<i64>,
    pub from_version: Option<String>,
    pub to_version: String,
    pub state: UpdateState,
    pub progress: Option<u8>,
    pub message: Option<String>,
    pub current: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub events: Vec<UpdateEvent>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpdateEvent {
    pub state: UpdateState,
    pub progress: Option<u8>,
    pub message: Option<String>,
    pub at: DateTime<Utc>,
}

/// One setup report, for the history.
#[derive(Debug, Clone, PartialEq)]
pub struct SetupEvent {
    pub code: u8,
    pub title: String,
    pub description: String,
    pub at: DateTime<Utc>,
}

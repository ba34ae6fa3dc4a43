//! The registry API's wire types: what operators send and receive.

use super::*;

/// A registered device.
/// Why a device gets no update, and what to do about it.
#[derive(Serialize, ToSchema)]
pub struct NoUpdateView {
    /// `unknown_product`, `unknown_hardware`, `no_builds`, `pinned_build_missing` or `held_by_rollout`.
    pub reason: &'static str,
    pub remedy: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct DeviceView {
    pub id: String,
    /// Canonical MAC, `AA:BB:CC:DD:EE:FF`; null for a device known only by its `uid`.
    pub mac: Option<String>,
    /// The unique name the device calls itself by (ThingsBoard `deviceName`, hawkBit
    /// `controllerId`), if it has one.
    pub uid: Option<String>,
    pub name: String,
    pub product: Option<String>,
    pub hardware: Option<String>,
    pub channel: String,
    /// The version the device reports.
    pub version: Option<String>,
    /// The version an operator pinned, if any.
    pub target_version: Option<String>,
    pub tags: Vec<String>,
    /// Device-reported attributes.
    #[schema(value_type = Object)]
    pub attributes: Value,
    /// Operator-owned metadata.
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub owner: Option<String>,
    /// `online` or `offline`.
    pub status: &'static str,
    pub last_seen: Option<String>,
    pub ip: Option<String>,
    pub setup_status: Option<SetupStatusView>,
    pub has_token: bool,
    /// Until then the device may provision again without its token (an operator allowed it).
    pub reprovision_until: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Why the last update decision offered this device nothing, when an operator can fix
    /// it (null when it is up to date, was offered a build, or was not decided on by this
    /// replica since it started).
    pub no_update: Option<NoUpdateView>,
}

#[derive(Serialize, ToSchema)]
pub struct SetupStatusView {
    pub status_code: u8,
    pub title: String,
    pub description: String,
    pub at: String,
}

#[derive(Serialize, ToSchema)]
pub struct DevicePage {
    pub items: Vec<DeviceView>,
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

/// A device just created, with its token when one was requested (shown only now).
#[derive(Serialize, ToSchema)]
pub struct DeviceCreated {
    #[serde(flatten)]
    pub device: DeviceView,
    pub token: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenIssued {
    pub device_id: String,
    /// The new token; shown only now. The previous token no longer works.
    pub token: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDeviceBody {
    /// A MAC in any common form (see the schema's description); a device needs a `mac`, a
    /// `uid`, or both.
    #[schema(schema_with = crate::http::schemas::new_device_mac)]
    pub mac: Option<String>,
    /// The unique name the device calls itself by, for a device without a MAC or whose
    /// protocol names it otherwise (ThingsBoard `deviceName`, hawkBit `controllerId`):
    /// 1-128 letters, digits or `._-:@~`, not a MAC.
    pub uid: Option<String>,
    /// Display name (default: the MAC, else the `uid`).
    pub name: Option<String>,
    pub product: Option<String>,
    pub hardware: Option<String>,
    /// `stable` (default), `beta`, or another channel name.
    pub channel: Option<String>,
    pub version: Option<String>,
    pub target_version: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    pub owner: Option<String>,
    /// Also issue a device token (returned once in the answer).
    #[serde(default)]
    pub issue_token: bool,
}

impl CreateDeviceBody {
    pub(super) fn into_request(self) -> NewDeviceRequest {
        NewDeviceRequest {
            mac: self.mac,
            uid: self.uid,
            name: self.name,
            product: self.product,
            hardware: self.hardware,
            channel: self.channel,
            version: self.version,
            target_version: self.target_version,
            tags: self.tags,
            metadata: self.metadata,
            owner: self.owner,
        }
    }
}

/// Fields to change; `null` clears a clearable field.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchDeviceBody {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "clearable")]
    #[schema(value_type = Option<String>)]
    pub product: Option<Option<String>>,
    #[serde(default, deserialize_with = "clearable")]
    #[schema(value_type = Option<String>)]
    pub hardware: Option<Option<String>>,
    pub channel: Option<String>,
    /// Pin a version (may be older than the running one: that is a rollback); `null` unpins.
    #[serde(default, deserialize_with = "clearable")]
    #[schema(value_type = Option<String>)]
    pub target_version: Option<Option<String>>,
    pub tags: Option<Vec<String>>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    #[serde(default, deserialize_with = "clearable")]
    #[schema(value_type = Option<String>)]
    pub owner: Option<Option<String>>,
    /// Let the device provision again without its current token until this time (RFC 3339, at
    /// most 30 days ahead), e.g. after a factory reset wiped its token; used up by the first
    /// provisioning. `null` closes the window.
    #[serde(default, deserialize_with = "clearable")]
    #[schema(value_type = Option<String>)]
    pub reprovision_until: Option<Option<String>>,
}

/// A re-provisioning window's end: in the future, at most 30 days ahead.
pub(super) fn reprovision_window(text: &str) -> Result<chrono::DateTime<Utc>, Error> {
    let until = chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|_| Error::invalid("invalid_reprovision_until", format!("reprovision_until `{text}` is not an RFC 3339 time")))?
        .with_timezone(&Utc);
    let now = Utc::now();
    if until <= now || until > now + chrono::Duration::days(30) {
        return Err(Error::invalid("invalid_reprovision_until", "reprovision_until must be in the future and at most 30 days ahead"));
    }
    Ok(until)
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
pub(super) fn clearable<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeviceListQuery {
    pub product: Option<String>,
    #[param(schema_with = crate::http::schemas::hardware)]
    pub hardware: Option<String>,
    /// Reported version, exactly as reported.
    pub version: Option<String>,
    pub tag: Option<String>,
    /// `online` or `offline`.
    #[param(pattern = r"^(?:online|offline)$")]
    pub status: Option<String>,
    /// RFC 3339 time: devices last seen before it.
    #[param(format = DateTime)]
    pub last_seen_before: Option<String>,
    /// RFC 3339 time: devices last seen after it.
    #[param(format = DateTime)]
    pub last_seen_after: Option<String>,
    pub owner: Option<String>,
    /// Case-insensitive text search in name, MAC, unique name (`uid`), owner and id.
    pub q: Option<String>,
    /// `-created_at` (default), `created_at`, `-last_seen`, `name`, `mac`.
    #[param(pattern = r"^(?:-created_at|created_at|-last_seen|name|mac)$")]
    pub sort: Option<String>,
    /// Page size, 1-500 [default: 50].
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    #[param(maximum = 1099511627776_u64)]
    pub offset: Option<u64>,
}

/// The device list's filters (`GET /api/v1/devices`), every one optional; all given must hold.
#[derive(Deserialize, ToSchema, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct DeviceFilterBody {
    pub product: Option<String>,
    #[schema(schema_with = crate::http::schemas::optional_hardware)]
    pub hardware: Option<String>,
    /// Reported version, exactly as reported.
    pub version: Option<String>,
    pub tag: Option<String>,
    /// `online` or `offline`.
    #[schema(pattern = r"^(?:online|offline)$")]
    pub status: Option<String>,
    /// RFC 3339 time: devices last seen before it.
    #[schema(format = DateTime)]
    pub last_seen_before: Option<String>,
    /// RFC 3339 time: devices last seen after it.
    #[schema(format = DateTime)]
    pub last_seen_after: Option<String>,
    pub owner: Option<String>,
    /// Case-insensitive text search in name, MAC, owner and id.
    pub q: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ImportResult {
    pub created: usize,
    pub device_ids: Vec<String>,
    pub errors: Vec<ImportError>,
}

#[derive(Serialize, ToSchema)]
pub struct ImportError {
    /// 0-based row (CSV: data row after the header).
    pub row: usize,
    pub code: String,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub struct AttemptView {
    pub id: String,
    pub release_id: String,
    pub artifact_id: String,
    pub from_version: Option<String>,
    pub to_version: String,
    /// offered, downloading, downloaded, installing, installed, succeeded, failed, rejected,
    /// cancelled (withdrawn by the server and acknowledged by the device: hawkBit DDI).
    pub state: &'static str,
    pub progress: Option<u8>,
    pub message: Option<String>,
    pub current: bool,
    /// The hawkBit DDI action id of this attempt (null for attempts opened before they
    /// existed, until a DDI device asks for one).
    pub action_id: Option<i64>,
    pub created_at: String,
    pub updated_at: String,
    pub events: Vec<AttemptEventView>,
}

#[derive(Serialize, ToSchema)]
pub struct AttemptEventView {
    pub state: &'static str,
    pub progress: Option<u8>,
    pub message: Option<String>,
    pub at: String,
}

#[derive(Serialize, ToSchema)]
pub struct AttemptList {
    pub items: Vec<AttemptView>,
}

#[derive(Serialize, ToSchema)]
pub struct SetupHistory {
    pub items: Vec<SetupStatusView>,
}

/// A product's device policy.
#[derive(Serialize, ToSchema)]
pub struct ProductView {
    pub name: String,
    /// `open`, `key` or `preregistered`.
    pub provisioning: &'static str,
    pub provision_key: Option<String>,
    pub has_provision_secret: bool,
    pub poll_interval_s: u32,
    /// The hardware ids the product admits; empty admits any. When set, a device's hardware is
    /// fixed by an operator or at provisioning, and a check-in naming another gets 409.
    pub hardware: Vec<String>,
    /// Anonymous reads of seed 003's `GET /api/configs/{mac}.json` include secret values.
    pub public_secrets: bool,
    /// The anti-rollback floor: rollbacks and pins below this version are refused.
    pub min_version: Option<String>,
    /// False when the product was never configured and the defaults apply.
    pub configured: bool,
    /// A hawkBit DDI gateway token is set (`ddi_gateway_token`).
    pub has_ddi_gateway_token: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutProductBody {
    /// `open`, `key` or `preregistered`.
    #[schema(schema_with = crate::http::schemas::provisioning)]
    pub provisioning: String,
    pub provision_key: Option<String>,
    /// At least 16 characters; stored only as a hash. Omit to keep the current one.
    #[schema(min_length = 16)]
    pub provision_secret: Option<String>,
    /// Seconds between a device's check-ins, 10-604800.
    #[schema(minimum = 10, maximum = 604800)]
    pub poll_interval_s: Option<u32>,
    /// The hardware ids the product admits (`[]`: any); omit to keep the current list.
    #[schema(schema_with = crate::http::schemas::optional_hardware_list)]
    pub hardware: Option<Vec<String>>,
    /// Let anonymous readers of seed 003's `GET /api/configs/{mac}.json` see secret values, for
    /// seed-003 devices that need Wi-Fi credentials and cannot send a token. Weak: anyone who
    /// knows a MAC reads them. Omit to keep the current value [default: false].
    pub public_secrets: Option<bool>,
    /// The anti-rollback floor (a version); `null` removes it; omit to keep the current one.
    #[serde(default, deserialize_with = "clearable")]
    #[schema(schema_with = crate::http::schemas::optional_version)]
    pub min_version: Option<Option<String>>,
    /// The product's hawkBit DDI gateway token (`Authorization: GatewayToken <token>`), at
    /// least 16 characters, stored only as a hash: it acts for any device of this product and
    /// registers unknown controller ids per `provisioning`. `null` removes it; omit to keep it.
    #[serde(default, deserialize_with = "clearable")]
    #[schema(schema_with = crate::http::schemas::optional_gateway_token)]
    pub ddi_gateway_token: Option<Option<String>>,
}

#[derive(Serialize, ToSchema)]
pub struct ProductList {
    pub items: Vec<ProductView>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePairingBody {
    /// The owner the device will be bound to.
    pub owner: String,
    /// Lifetime in seconds (30-86400) [default: UPDRAFT_PAIRING_TTL_SECS].
    pub ttl_s: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct PairKey {
    pub pair_key: String,
    pub expires_at: String,
}

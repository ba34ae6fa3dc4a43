//! Single sign-on: tokens of an OpenID provider (Keycloak first) as operator and device
//! credentials, and the dashboard's login through the authorization code flow with PKCE
//! (`login`).
//!
//! Verification reads memory only: the provider's keys are fetched at start, again in the
//! background once they are older than `jwks_max_age`, and when a token names a key id
//! that is not known, at most once per `jwks_min_refresh` (one fetch at a time; requests
//! that need it wait for that one fetch), so forged key ids cannot make Updraft flood the
//! provider. Each key verifies only the algorithms its type allows (and its `alg`, when the
//! provider names one): never `none`, never HMAC. A verified operator or device token is
//! remembered (by its SHA-256, bounded) until it expires or for `VERIFIED_TTL`, whichever
//! comes first, so the RSA/ECDSA check runs once per token rather than once per request; a
//! key the provider withdraws stops working for such tokens within `VERIFIED_TTL`.
//!
//! Operator and device tokens are kept apart by audience (docs/DEPLOYMENT.md, "Single
//! sign-on"): an operator token must name `audience`, a device token `device_audience`. With
//! two audiences, a token naming the other one is refused on each side; with one audience
//! for both (seed 003's set-up), a token with an Updraft role is never a device credential,
//! and one without is never an operator's (403).

pub mod claims;
pub mod keys;
pub mod login;

use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac as _};
use jsonwebtoken::{Validation, decode, decode_header};
use serde_json::{Map, Value};
use sha2::Sha256;

use self::keys::{KeySet, ProviderMetadata};
use super::Core;
use super::devices::{self, BoundedMap};
use super::fleet::ActiveDevice;
use crate::config::OidcSettings;
use crate::domain::auth::{Principal, PrincipalKind};
use crate::domain::mac::Mac;
use crate::domain::{Error, Result};

/// Longest token accepted (Keycloak's access tokens are 1-2 KB).
const MAX_TOKEN_BYTES: usize = 16 << 10;
/// Claim values (MACs) mapped to device ids, and for how long.
const DEVICE_NAMES: usize = 16_384;
const DEVICE_NAME_TTL: Duration = Duration::from_secs(60);
/// Verified tokens remembered, and for how long at most.
const VERIFIED: usize = 16_384;
const VERIFIED_TTL: Duration = Duration::from_secs(60);

/// Which audience a token is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// An operator's access token: UPDRAFT_OIDC_AUDIENCE.
    Operator,
    /// A device's client-credentials token: UPDRAFT_OIDC_DEVICE_AUDIENCE.
    Device,
    /// The dashboard login's ID token: UPDRAFT_OIDC_CLIENT_ID.
    Login,
}

/// A verified token's claims, and the instant it stops being valid.
type Verified = (Arc<Map<String, Value>>, Instant);

/// The provider's state in this process.
pub struct Oidc {
    pub settings: OidcSettings,
    http: reqwest::Client,
    metadata: RwLock<Option<Arc<ProviderMetadata>>>,
    keys: RwLock<Arc<KeySet>>,
    /// When the keys were last fetched (None: never).
    fetched: RwLock<Option<Instant>>,
    /// One fetch at a time; holds when the last one started.
    refreshing: tokio::sync::Mutex<Option<Instant>>,
    /// Device ids by the MAC a device token names.
    device_ids: Mutex<BoundedMap<String, String>>,
    /// Claims of tokens verified recently, by SHA-256 of (audience, token), with the instant
    /// each stops being valid (its `exp`, at most `VERIFIED_TTL` after it was verified).
    verified: Mutex<BoundedMap<[u8; 32], Verified>>,
    /// Keys the fleet index files token-less devices under: no token's digest can equal
    /// one (they are HMACs with this process's random key).
    index_key: [u8; 32],
    /// Signs the dashboard login's state cookie (derived from the key replicas share).
    state_key: [u8; 32],
}

impl Oidc {
    pub fn new(settings: OidcSettings, shared_key: &[u8; 32]) -> anyhow::Result<Oidc> {
        let http = reqwest::Client::builder()
            .timeout(keys::FETCH_TIMEOUT)
            .connect_timeout(keys::FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()?;
        let mut mac = <Hmac<Sha256>>::new_from_slice(shared_key).expect("any key length");
        mac.update(b"updraft oidc login state");
        Ok(Oidc {
            settings,
            http,
            metadata: RwLock::new(None),
            keys: RwLock::default(),
            fetched: RwLock::new(None),
            refreshing: tokio::sync::Mutex::new(None),
            device_ids: Mutex::new(BoundedMap::new(DEVICE_NAMES, DEVICE_NAMES * 128, DEVICE_NAME_TTL)),
            verified: Mutex::new(BoundedMap::new(VERIFIED, VERIFIED * 2048, VERIFIED_TTL)),
            index_key: rand::random(),
            state_key: mac.finalize().into_bytes().into(),
        })
    }

    /// Whether device tokens are accepted.
    pub fn accepts_devices(&self) -> bool {
        self.settings.device_audience.is_some()
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn state_key(&self) -> &[u8; 32] {
        &self.state_key
    }

    /// The provider's metadata, discovering it if it was not yet.
    pub async fn metadata(self: &Arc<Self>) -> Result<Arc<ProviderMetadata>> {
        let known = self.metadata.read().expect("oidc lock").clone();
        if let Some(metadata) = known {
            return Ok(metadata);
        }
        self.refresh().await;
        self.metadata
            .read()
            .expect("oidc lock")
            .clone()
            .ok_or_else(|| Error::Unavailable("the OpenID provider cannot be reached; try again shortly".into()))
    }

    /// Fetches the metadata (if missing) and the keys, unless a fetch started less than
    /// `jwks_min_refresh` ago (whatever its outcome: a provider that is down is not asked
    /// more often either). Returns whether new keys were stored.
    pub async fn refresh(self: &Arc<Self>) -> bool {
        let mut last = self.refreshing.lock().await;
        if last.is_some_and(|started| started.elapsed() < self.settings.jwks_min_refresh) {
            return false;
        }
        *last = Some(Instant::now());
        match self.fetch_keys().await {
            Ok(count) => {
                tracing::info!(keys = count, issuer = %self.settings.issuer, "OpenID provider keys loaded");
                true
            }
            Err(e) => {
                metrics::counter!("updraft_oidc_key_fetch_failures_total").increment(1);
                tracing::warn!(error = %e, "cannot load the OpenID provider's keys");
                false
            }
        }
    }

    async fn fetch_keys(&self) -> Result<usize> {
        let known = self.metadata.read().expect("oidc lock").clone();
        let metadata = match known {
            Some(metadata) => metadata,
            None => Arc::new(keys::discover(&self.http, &self.settings.issuer).await?),
        };
        *self.metadata.write().expect("oidc lock") = Some(metadata.clone());
        let (set, skipped) = KeySet::parse(&keys::fetch(&self.http, &metadata.jwks_uri).await?)?;
        if skipped > 0 {
            tracing::debug!(skipped, "JWKS keys that cannot verify tokens were skipped");
        }
        let count = set.by_kid.len();
        *self.keys.write().expect("oidc lock") = Arc::new(set);
        *self.fetched.write().expect("oidc lock") = Some(Instant::now());
        metrics::counter!("updraft_oidc_key_fetches_total").increment(1);
        Ok(count)
    }

    /// Verifies a token's signature, issuer, audience and times; returns its claims.
    pub async fn verify(self: &Arc<Self>, token: &str, audience: Audience, nonce: Option<&str>) -> Result<Map<String, Value>> {
        let invalid = |why: &str| Error::Unauthenticated(format!("the OpenID token is not valid: {why}"));
        if token.len() > MAX_TOKEN_BYTES {
            return Err(invalid("it is too long"));
        }
        // Login ID tokens (with a nonce) are checked once anyway; others may be remembered.
        let remembered = nonce.is_none().then(|| verified_key(audience, token));
        if let Some(key) = &remembered {
            let now = Instant::now();
            if let Some((claims, until)) = self.verified.lock().expect("oidc lock").get(key, now)
                && now < *until
            {
                return Ok(Map::clone(claims));
            }
        }
        // An unknown `alg` (including `none`) fails here.
        let header = decode_header(token).map_err(|_| invalid("its header is not a JWS header with a supported algorithm"))?;
        let kid = header.kid.as_deref().ok_or_else(|| invalid("its header names no key (`kid`)"))?;
        self.refresh_if_old();
        let keys = match self.key_set_with(kid) {
            Some(keys) => keys,
            None => {
                // An unknown key: the provider may have rotated its keys. At most one fetch
                // per `jwks_min_refresh`, whatever the number of such tokens.
                self.refresh().await;
                self.key_set_with(kid).ok_or_else(|| invalid("it is signed with a key the provider does not publish"))?
            }
        };
        let key = &keys.by_kid[kid];
        if !key.algorithms.contains(&header.alg) {
            return Err(invalid("its algorithm does not match its key"));
        }
        let audience_name = match audience {
            Audience::Operator => self.settings.audience.as_str(),
            Audience::Device => self.settings.device_audience.as_deref().ok_or_else(|| invalid("device tokens are not accepted"))?,
            Audience::Login => self.settings.client_id.as_deref().ok_or_else(|| invalid("no dashboard client is configured"))?,
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.settings.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[self.settings.issuer.as_str()]);
        validation.set_audience(&[audience_name]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = decode::<Map<String, Value>>(token, &key.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            invalid(match e.kind() {
                ErrorKind::ExpiredSignature => "it expired",
                ErrorKind::ImmatureSignature => "it is not valid yet",
                ErrorKind::InvalidIssuer => "it was issued by another issuer",
                ErrorKind::InvalidAudience => "it is meant for another audience",
                ErrorKind::InvalidSignature => "its signature does not verify",
                ErrorKind::MissingRequiredClaim(_) => "it lacks `exp`, `iss` or `aud`",
                _ => "it cannot be decoded",
            })
        })?;
        let claims = data.claims;
        if let Some(expected) = nonce {
            let matches = claims.get("nonce").and_then(Value::as_str).is_some_and(|n| crate::domain::secret::constant_time_eq(n, expected));
            if !matches {
                return Err(invalid("its nonce is not the one of this login"));
            }
        }
        // Two audiences: a token for the other one is not for this purpose.
        if let Some(device_audience) = &self.settings.device_audience
            && *device_audience != self.settings.audience
            && audience != Audience::Login
        {
            let other = match audience {
                Audience::Device => self.settings.audience.as_str(),
                _ => device_audience.as_str(),
            };
            if claims::audiences(&claims).contains(&other) {
                return Err(invalid("it is meant for devices and operators at once"));
            }
        }
        if let Some(key) = remembered {
            self.remember(key, &claims, token.len());
        }
        Ok(claims)
    }

    /// Remembers a verified token's claims until its `exp` (at most `VERIFIED_TTL`).
    fn remember(&self, key: [u8; 32], claims: &Map<String, Value>, weight: usize) {
        let Some(exp) = claims.get("exp").and_then(Value::as_i64) else { return };
        let left = exp.saturating_sub(chrono::Utc::now().timestamp());
        if left <= 0 {
            return;
        }
        let now = Instant::now();
        let until = now + VERIFIED_TTL.min(Duration::from_secs(left.unsigned_abs()));
        self.verified.lock().expect("oidc lock").insert(key, (Arc::new(claims.clone()), until), weight, now);
    }

    fn key_set_with(&self, kid: &str) -> Option<Arc<KeySet>> {
        let keys = self.keys.read().expect("oidc lock").clone();
        keys.by_kid.contains_key(kid).then_some(keys)
    }

    /// Starts a background fetch when the keys are older than `jwks_max_age`.
    fn refresh_if_old(self: &Arc<Self>) {
        let stale = self.fetched.read().expect("oidc lock").is_some_and(|at| at.elapsed() > self.settings.jwks_max_age);
        if stale && let Ok(last) = self.refreshing.try_lock() {
            let recent = last.is_some_and(|started| started.elapsed() < self.settings.jwks_min_refresh);
            drop(last);
            if !recent {
                let this = self.clone();
                tokio::spawn(async move {
                    this.refresh().await;
                });
            }
        }
    }

    /// The operator a verified token names, with its role; 403 when it carries none.
    pub fn operator_of(&self, claims: &Map<String, Value>) -> Result<Principal> {
        let name = claims::text(claims, &self.settings.name_claim)
            .or_else(|| claims::text(claims, "sub"))
            .ok_or_else(|| Error::Unauthenticated("the OpenID token names nobody (no name claim and no `sub`)".into()))?;
        let names = claims::names(claims::lookup(claims, &self.settings.role_claim));
        match claims::role_of(&names, &self.settings.roles) {
            Some(role) => Ok(Principal::new(PrincipalKind::Oidc, name, role)),
            None => Err(Error::Forbidden(format!(
                "`oidc:{name}` signed in, but the token gives no Updraft role: its claim `{}` holds none of {}; ask an \
                 administrator of the OpenID provider for one",
                self.settings.role_claim,
                claims::expected_names(&self.settings.roles)
            ))),
        }
    }

    /// Whether a verified token carries an Updraft role (see the module's doc).
    fn has_role(&self, claims: &Map<String, Value>) -> bool {
        claims::role_of(&claims::names(claims::lookup(claims, &self.settings.role_claim)), &self.settings.roles).is_some()
    }
}

/// The key a verified token is remembered by: SHA-256 of its audience and its text.
fn verified_key(audience: Audience, token: &str) -> [u8; 32] {
    use sha2::Digest as _;
    let tag: &[u8] = match audience {
        Audience::Operator => b"operator\0",
        Audience::Device => b"device\0",
        Audience::Login => b"login\0",
    };
    Sha256::new().chain_update(tag).chain_update(token.as_bytes()).finalize().into()
}

/// The operator of an OpenID bearer token. Failures count against `ip` in the admin
/// limiter, as wrong keys do.
pub async fn authenticate_operator(core: &Core, oidc: &Arc<Oidc>, token: &str, ip: IpAddr) -> Result<Principal> {
    let limiter = &core.devices.limiter;
    limiter.check(ip)?;
    match oidc.verify(token, Audience::Operator, None).await {
        Ok(claims) => oidc.operator_of(&claims),
        Err(e) => {
            if matches!(e, Error::Unauthenticated(_)) {
                limiter.record_failure(ip);
                metrics::counter!("updraft_oidc_refused_total", "kind" => "operator").increment(1);
                tracing::info!(%ip, reason = %e, "OpenID operator token refused");
            }
            Err(e)
        }
    }
}

/// The registered device a device token names (by `device_claim`: its id or its MAC).
/// Failures count against `ip` in the device limiter.
pub async fn authenticate_device(core: &Core, oidc: &Arc<Oidc>, token: &str, ip: IpAddr) -> Result<Arc<ActiveDevice>> {
    let limiter = &core.devices.limiter;
    limiter.check(ip)?;
    let result = device_of_token(core, oidc, token).await;
    if let Err(e) = &result
        && matches!(e, Error::Unauthenticated(_))
    {
        limiter.record_failure(ip);
        metrics::counter!("updraft_oidc_refused_total", "kind" => "device").increment(1);
        tracing::info!(%ip, reason = %e, "OpenID device token refused");
    }
    result
}

async fn device_of_token(core: &Core, oidc: &Arc<Oidc>, token: &str) -> Result<Arc<ActiveDevice>> {
    let claims = oidc.verify(token, Audience::Device, None).await?;
    if oidc.settings.device_audience.as_deref() == Some(oidc.settings.audience.as_str()) && oidc.has_role(&claims) {
        return Err(Error::Unauthenticated("the OpenID token carries an operator role: it is not a device credential".into()));
    }
    let claim = &oidc.settings.device_claim;
    let named = claims::text(&claims, claim)
        .ok_or_else(|| Error::Unauthenticated(format!("the OpenID device token has no claim `{claim}` naming a device")))?;
    let unknown = || Error::Unauthenticated(format!("the device `{named}` that the OpenID token names is not registered"));
    let mac_key = Mac::parse(named).ok().map(|mac| (mac, mac.canonical()));
    let device_id = match &mac_key {
        Some((mac, key)) => {
            let cached = oidc.device_ids.lock().expect("oidc lock").get(key.as_str(), Instant::now()).cloned();
            match cached {
                Some(id) => id,
                None => {
                    let id = devices::find_by_mac(core, mac).await?.map(|d| d.id.to_string()).ok_or_else(unknown)?;
                    oidc.device_ids.lock().expect("oidc lock").insert(key.clone(), id.clone(), 96, Instant::now());
                    id
                }
            }
        }
        None => named.to_string(),
    };
    match devices::active_for_external_credential(core, &device_id, index_key(oidc, &device_id)).await? {
        Some(device) => Ok(device),
        None => {
            // A MAC whose device was deleted (or replaced) since it was cached.
            if let Some((_, key)) = &mac_key {
                oidc.device_ids.lock().expect("oidc lock").remove(key.as_str());
            }
            Err(unknown())
        }
    }
}

/// The fleet index key of a device authenticated by a provider's token.
fn index_key(oidc: &Oidc, device_id: &str) -> [u8; 32] {
    let mut mac = <Hmac<Sha256>>::new_from_slice(&oidc.index_key).expect("any key length");
    mac.update(device_id.as_bytes());
    mac.finalize().into_bytes().into()
}

/// Loads the provider's metadata and keys at start (in the background: a provider that is
/// down does not keep Updraft from starting; tokens are refused until it answers).
pub fn spawn_background(core: &Core) {
    if let Some(oidc) = core.oidc.clone() {
        core.tasks.spawn("oidc-keys", async move {
            oidc.refresh().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OidcRoleMap;

    fn oidc() -> Arc<Oidc> {
        let settings = OidcSettings {
            issuer: "http://127.0.0.1:9/".into(),
            audience: "updraft".into(),
            client_id: None,
            client_secret: None,
            scopes: "openid".into(),
            role_claim: "roles".into(),
            roles: OidcRoleMap::Prefix("updraft-".into()),
            name_claim: "preferred_username".into(),
            leeway: Duration::from_secs(30),
            jwks_min_refresh: Duration::from_secs(30),
            jwks_max_age: Duration::from_secs(3600),
            device_audience: None,
            device_claim: "azp".into(),
        };
        Arc::new(Oidc::new(settings, &[7; 32]).unwrap())
    }

    fn claims(exp: i64) -> Map<String, Value> {
        serde_json::json!({"sub": "alice", "exp": exp}).as_object().unwrap().clone()
    }

    #[tokio::test]
    async fn a_verified_token_is_remembered_for_its_audience_until_it_expires() {
        let oidc = oidc();
        let token = "aaa.bbb.ccc";
        // Not verified yet: no key is known, so it is refused.
        assert!(oidc.verify(token, Audience::Operator, None).await.is_err());
        oidc.remember(verified_key(Audience::Operator, token), &claims(chrono::Utc::now().timestamp() + 600), token.len());
        assert_eq!(oidc.verify(token, Audience::Operator, None).await.unwrap()["sub"], "alice");
        // Not for another audience, nor for a login (its nonce must be checked).
        assert!(oidc.verify(token, Audience::Device, None).await.is_err());
        assert!(oidc.verify(token, Audience::Login, Some("n")).await.is_err());
        // An expired token is never remembered.
        let old = "ddd.eee.fff";
        oidc.remember(verified_key(Audience::Operator, old), &claims(chrono::Utc::now().timestamp() - 1), old.len());
        assert!(oidc.verify(old, Audience::Operator, None).await.is_err());
    }
}

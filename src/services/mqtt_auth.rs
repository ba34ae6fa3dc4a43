//! Who connects to the broker: device tokens, operator and service credentials, and
//! Updraft's own connection. The embedded broker's hooks and the HTTP auth hooks of
//! external brokers (mosquitto-go-auth, EMQX) both call `authenticate` and
//! `check_client_id`, then ask `domain::mqtt::allowed` for every subscription and publish.

use std::net::IpAddr;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use super::Core;
use super::devices;
use crate::domain::mac::Mac;
use crate::domain::mqtt::MqttUser;
use crate::domain::mqtt::{self, ClientId, ClientIdClaims, ClientIdRefusal, Principal, Role};
use crate::domain::{Error, Result, secret};

/// The username of Updraft's own broker connection (its password is random per process in
/// embedded mode, `UPDRAFT_MQTT_PASSWORD` with an external broker).
pub const SERVER_USERNAME_PREFIX: &str = "$updraft";

/// Why a connection was refused (mapped to the CONNACK codes by the broker adapter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// CONNACK 4 (3.1.1) / 0x86 (5.0).
    BadCredentials,
    /// Too many failures from this address: CONNACK 5 / 0x87 (5.0 has 0x9F, but clients
    /// treat "not authorized" as final, which is what we want for a while).
    RateLimited,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::BadCredentials => "bad user name or password",
            Refusal::RateLimited => "too many failed logins from this address",
        }
    }
}

/// A successful login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub principal: Principal,
    /// A device's login: the digest (hex) of the token it presented, so that its sessions
    /// can be ended once that token is no longer valid; `OIDC_LOGIN` for a device that
    /// presented an OpenID provider's token (its sessions end once it is no longer registered).
    pub token_digest: Option<String>,
}

/// The `token_digest` of a device login with an OpenID provider's token (never a hex digest).
pub const OIDC_LOGIN: &str = "oidc";

/// Resolves a CONNECT's credentials:
/// - username = device id or MAC, password = device token;
/// - username = device token, no password (as ThingsBoard devices connect);
/// - username and password of an operator/service credential;
/// - Updraft's own connection.
pub async fn authenticate(
    core: &Core,
    server: Option<&ServerIdentity>,
    username: Option<&str>,
    password: Option<&[u8]>,
    ip: Option<IpAddr>,
) -> std::result::Result<Login, Refusal> {
    let ip = ip.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    if core.devices.limiter.check(ip).is_err() {
        return Err(Refusal::RateLimited);
    }
    let password = password.and_then(|p| std::str::from_utf8(p).ok()).filter(|p| !p.is_empty());
    let Some(username) = username.filter(|u| !u.is_empty() && u.len() <= 256) else {
        core.devices.limiter.record_failure(ip);
        return Err(Refusal::BadCredentials);
    };
    let refuse = || {
        core.devices.limiter.record_failure(ip);
        metrics::counter!("updraft_mqtt_auth_failures_total").increment(1);
        Err(Refusal::BadCredentials)
    };
    if let Some(server) = server.filter(|s| s.username == username) {
        return match password {
            Some(p) if secret::verify(p, &server.digest) => Ok(Login { principal: Principal::Server, token_digest: None }),
            _ => refuse(),
        };
    }
    if username.starts_with(SERVER_USERNAME_PREFIX) {
        return refuse();
    }
    match password {
        // A device's client-credentials token from the OpenID provider as the password: the
        // username must name the device that the token names.
        Some(password)
            if core.oidc.as_ref().is_some_and(|o| o.accepts_devices()) && crate::services::oidc::claims::looks_like_jwt(password) =>
        {
            match devices::authenticate(core, Some(password), ip).await {
                Ok(device) if *device.id == *username || Mac::parse(username).is_ok_and(|m| Some(m) == device.mac) => {
                    let principal = Principal::Device { id: device.id.to_string(), mac: device.mac };
                    Ok(Login { principal, token_digest: Some(OIDC_LOGIN.to_string()) })
                }
                Ok(device) => {
                    tracing::info!(device_id = %device.id, "MQTT login refused: the username names another device than the OpenID token");
                    refuse()
                }
                Err(_) => {
                    metrics::counter!("updraft_mqtt_auth_failures_total").increment(1);
                    Err(Refusal::BadCredentials)
                }
            }
        }
        Some(password) => {
            // A device token presented as the password: the username must name that device.
            // (A miss is not a failure yet: the password may be an operator's.)
            let device = match devices::device_of_token(core, password).await {
                Ok(device) => device,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look a device token up");
                    return Err(Refusal::BadCredentials);
                }
            };
            if let Some(device) = device {
                let names_it = *device.id == *username || Mac::parse(username).is_ok_and(|m| Some(m) == device.mac);
                if names_it {
                    let principal = Principal::Device { id: device.id.to_string(), mac: device.mac };
                    return Ok(Login { principal, token_digest: Some(secret::digest_hex(password)) });
                }
                return refuse();
            }
            match core.store.find_mqtt_user(username).await {
                Ok(Some(user)) => {
                    let (presented, stored) = (password.to_string(), user.password_hash.clone());
                    // Argon2 is deliberately slow: keep it off the async threads.
                    let verified = tokio::task::spawn_blocking(move || verify_password(&presented, &stored)).await.unwrap_or(false);
                    match Role::parse(&user.role) {
                        Some(role) if verified => {
                            Ok(Login { principal: Principal::User { name: user.username, role }, token_digest: None })
                        }
                        _ => refuse(),
                    }
                }
                Ok(_) => refuse(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read MQTT credentials");
                    refuse()
                }
            }
        }
        None => match devices::authenticate(core, Some(username), ip).await {
            Ok(device) => Ok(Login {
                principal: Principal::Device { id: device.id.to_string(), mac: device.mac },
                token_digest: Some(secret::digest_hex(username)),
            }),
            Err(_) => refuse(),
        },
    }
}

/// Applies the client id rule of `domain::mqtt::check_client_id`: looks up whether the
/// client id names a device other than `principal` (by id or MAC). A lookup that fails
/// refuses the client id.
pub async fn check_client_id(core: &Core, principal: &Principal, client_id: ClientId<'_>) -> std::result::Result<(), ClientIdRefusal> {
    let names_another = match client_id {
        ClientId::Chosen(text) | ClientId::Unknown(text) if *principal != Principal::Server => {
            names_another_device(core, principal, text).await
        }
        _ => false,
    };
    mqtt::check_client_id(principal, client_id, names_another)
}

async fn names_another_device(core: &Core, principal: &Principal, client_id: &str) -> bool {
    let claims = ClientIdClaims::of(client_id);
    if claims.is_empty() {
        return false;
    }
    let (own_id, own_mac) = match principal {
        Principal::Device { id, mac } => (Some(id.as_str()), *mac),
        _ => (None, None),
    };
    let failed = |e: Error| {
        tracing::warn!(error = %e, "cannot look up the device a client id names; refusing it");
        true
    };
    if let Some(device_id) = claims.device_id.as_deref().filter(|id| Some(*id) != own_id) {
        match devices::active_by_id(core, device_id).await {
            Ok(Some(_)) => return true,
            Ok(None) => {}
            Err(e) => return failed(e),
        }
    }
    for mac in claims.macs.iter().filter(|mac| Some(**mac) != own_mac) {
        match devices::active_by_mac(core, mac).await {
            Ok(Some(_)) => return true,
            Ok(None) => {}
            Err(e) => return failed(e),
        }
    }
    false
}

/// Whether the token a device logged in with (its digest, see [`Login`]) is still the one
/// it holds: false once the token was rotated or revoked, or the device deleted.
pub async fn token_still_valid(core: &Core, device_id: &str, token_digest: &str) -> Result<bool> {
    if token_digest == OIDC_LOGIN {
        return Ok(core.store.find_device(device_id).await?.is_some());
    }
    Ok(core.store.find_active_device(token_digest).await?.is_some_and(|row| row.id == device_id))
}

/// Updraft's own broker credential.
#[derive(Clone)]
pub struct ServerIdentity {
    pub username: String,
    pub digest: [u8; 32],
}

/// Who a username stands for, without its password: for ACL checks of a connection that was
/// authenticated before (the external brokers' ACL hooks send only the username).
pub async fn principal_of(core: &Core, server: Option<&ServerIdentity>, username: &str) -> Result<Option<Principal>> {
    if server.is_some_and(|s| s.username == username) {
        return Ok(Some(Principal::Server));
    }
    if let Some(user) = core.store.find_mqtt_user(username).await? {
        return Ok(Role::parse(&user.role).map(|role| Principal::User { name: user.username, role }));
    }
    if let Some(device) = devices::active_by_id(core, username).await? {
        return Ok(Some(Principal::Device { id: device.id.to_string(), mac: device.mac }));
    }
    if let Ok(mac) = Mac::parse(username)
        && let Some(device) = devices::active_by_mac(core, &mac).await?
    {
        return Ok(Some(Principal::Device { id: device.id.to_string(), mac: device.mac }));
    }
    // A ThingsBoard-style connection: the username is the token.
    if let Some(device) = core.store.find_device_by_token_hash(&secret::digest_hex(username)).await? {
        return Ok(Some(Principal::Device { id: device.id.to_string(), mac: device.mac }));
    }
    Ok(None)
}

// ---- operator and service credentials ----

/// `[A-Za-z0-9._-]{1,64}`, not starting with `$` (reserved for Updraft).
pub fn check_username(username: &str) -> Result<()> {
    // It starts with a letter or digit, so that no name is `.`, `..` or looks like a path.
    let ok = username.len() <= 64
        && username.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && username.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_username",
            "an MQTT username is 1-64 characters of A-Z, a-z, 0-9, '.', '_', '-' or '@', starting with a letter or digit",
        ))
    }
}

/// Creates or replaces a credential; the password is stored only as an Argon2id hash.
/// Returns the stored credential and whether it was created.
pub async fn put_user(core: &Core, username: &str, password: &str, role: &str) -> Result<(MqttUser, bool)> {
    check_username(username)?;
    let role = Role::parse(role).ok_or_else(|| {
        Error::invalid(
            "invalid_role",
            format!("role must be one of {}", Role::ALL.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")),
        )
    })?;
    // Six characters is weak, but seed 000's device mock uses `test123`; Argon2id and the
    // per-address failure limit slow guessing down. Choose long passwords.
    if !(6..=256).contains(&password.chars().count()) {
        return Err(Error::invalid("invalid_password", "a password is 6-256 characters"));
    }
    let password = password.to_string();
    let hash = tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| Error::Internal(anyhow::anyhow!("password hashing failed: {e}")))??;
    let created = core.store.put_mqtt_user(username, &hash, role.as_str()).await?;
    let user = core.store.find_mqtt_user(username).await?.ok_or_else(|| Error::not_found("MQTT credential", username))?;
    tracing::info!(username, role = role.as_str(), created, "MQTT credential stored");
    Ok((user, created))
}

/// Every operator and service credential of the broker.
pub async fn list_users(core: &Core) -> Result<Vec<MqttUser>> {
    core.store.list_mqtt_users().await
}

pub async fn delete_user(core: &Core, username: &str) -> Result<()> {
    if !core.store.delete_mqtt_user(username).await? {
        return Err(Error::not_found("MQTT credential", username));
    }
    Ok(())
}

/// An Argon2id PHC string of `password` (slow: call it off the async threads).
pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| Error::Internal(anyhow::anyhow!("salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Internal(anyhow::anyhow!("password hashing failed: {e}")))
}

/// Whether `password` matches an Argon2 PHC string (slow: call it off the async threads).
pub fn verify_password(password: &str, stored: &str) -> bool {
    // Argon2's verification compares in constant time.
    PasswordHash::new(stored).is_ok_and(|hash| Argon2::default().verify_password(password.as_bytes(), &hash).is_ok())
}

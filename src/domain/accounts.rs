//! Operator accounts, API keys and browser sessions: names, the key format, and the rules
//! that decide whether a stored credential is still good at a given time. No IO: the time is
//! an argument.

use chrono::{DateTime, Utc};

use super::Error;
use super::auth::{Principal, PrincipalKind, Role};

/// Shortest password of a user account.
pub const MIN_PASSWORD_LEN: usize = 12;
/// Longest password (Argon2 takes any length; this bounds the work per login).
pub const MAX_PASSWORD_LEN: usize = 256;

/// The prefix of named API keys: `upd_<id>_<secret>`.
pub const KEY_PREFIX: &str = "upd_";
/// The lookup id of a named key: this many lowercase hex characters.
pub const KEY_ID_LEN: usize = 16;
/// The id of the original admin key (`UPDRAFT_ADMIN_API_KEY` or the generated one), which is
/// the first key, named `admin`.
pub const ADMIN_KEY_ID: &str = "admin";
pub const ADMIN_KEY_NAME: &str = "admin";

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub username: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A stored API key, without its secret (only the digest of the whole key is stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// SHA-256 of the whole key, hex.
    pub digest: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The user the key acts for: while that user is disabled, the key is refused.
    pub owner: Option<String>,
}

impl ApiKey {
    pub fn principal(&self) -> Principal {
        Principal::new(PrincipalKind::ApiKey, self.name.clone(), self.role)
    }

    /// Whether the key may be used at `now`.
    pub fn usable_at(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| now < at)
    }
}

/// A stored browser session, without its secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// A public id, to list and revoke it (never the cookie's value).
    pub id: String,
    /// SHA-256 of the cookie's value, hex.
    pub token_digest: String,
    /// SHA-256 of the CSRF token, hex.
    pub csrf_digest: String,
    pub principal: Principal,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    /// The absolute expiry: the session ends then, however active.
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
}

impl Session {
    /// When the session ends if nothing uses it again: at its absolute expiry, or `idle`
    /// after it was last seen, whichever comes first.
    pub fn ends_at(&self, last_seen: DateTime<Utc>, idle: chrono::Duration) -> DateTime<Utc> {
        (last_seen.max(self.last_seen_at) + idle).min(self.expires_at)
    }

    /// Whether the session is still good at `now`, given when it was last seen (this
    /// replica's memory may know a later use than the stored `last_seen_at`).
    pub fn alive_at(&self, now: DateTime<Utc>, last_seen: DateTime<Utc>, idle: chrono::Duration) -> bool {
        self.revoked_at.is_none() && now < self.ends_at(last_seen, idle)
    }
}

/// A user name: 1-64 characters of `a-z`, `0-9`, `.`, `_`, `-`, `@`, starting with a letter
/// or digit. Lower case only, so that `Alice` and `alice` cannot be two accounts.
pub fn check_username(username: &str) -> Result<(), Error> {
    let ok = (1..=64).contains(&username.len())
        && username.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && username.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_username",
            "a username is 1-64 characters of a-z, 0-9, '.', '_', '-' or '@', starting with a letter or digit",
        ))
    }
}

/// A key name: 1-64 characters of `A-Z`, `a-z`, `0-9`, `.`, `_`, `-`, starting with a
/// letter or digit.
pub fn check_key_name(name: &str) -> Result<(), Error> {
    let ok = (1..=64).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_key_name",
            "a key name is 1-64 characters of A-Z, a-z, 0-9, '.', '_' or '-', starting with a letter or digit",
        ))
    }
}

/// A password: `MIN_PASSWORD_LEN` to `MAX_PASSWORD_LEN` characters, no control characters.
pub fn check_password(password: &str) -> Result<(), Error> {
    let length = password.chars().count();
    if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&length) {
        return Err(Error::invalid(
            "invalid_password",
            format!("a password is {MIN_PASSWORD_LEN}-{MAX_PASSWORD_LEN} characters (a long passphrase is best)"),
        ));
    }
    if password.chars().any(char::is_control) {
        return Err(Error::invalid("invalid_password", "a password must not contain control characters"));
    }
    Ok(())
}

/// The lookup id of a named key `upd_<id>_<secret>`, or None for any other text (such as
/// the original admin key, which is looked up under `ADMIN_KEY_ID`).
pub fn key_id(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let well_formed = id.len() == KEY_ID_LEN
        && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && secret.len() == 43
        && secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    well_formed.then_some(id)
}

/// The full text of a named key from its id and 43-character secret.
pub fn format_key(id: &str, secret: &str) -> String {
    format!("{KEY_PREFIX}{id}_{secret}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn named_keys_have_a_lookup_id_and_other_texts_do_not() {
        let secret = "A".repeat(43);
        let key = format_key("0123456789abcdef", &secret);
        assert_eq!(key_id(&key), Some("0123456789abcdef"));
        // Secrets are base64url: they may hold `_` and `-`.
        assert_eq!(key_id(&format_key("0123456789abcdef", &format!("a_-{}", "b".repeat(40)))), Some("0123456789abcdef"));
        for other in [
            "upd_admin_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_string(),
            format_key("0123456789ABCDEF", &secret),
            format_key("0123456789abcde", &secret),
            format_key("0123456789abcdef", &"A".repeat(42)),
            format_key("0123456789abcdef", &format!("{}=", "A".repeat(42))),
            "test-admin-key-0123456789abcdef".into(),
            String::new(),
        ] {
            assert_eq!(key_id(&other), None, "{other}");
        }
    }

    #[test]
    fn a_session_ends_when_idle_or_at_its_absolute_expiry_whichever_is_first() {
        let idle = chrono::Duration::seconds(60);
        let session = Session {
            id: "s".into(),
            token_digest: String::new(),
            csrf_digest: String::new(),
            principal: Principal::new(PrincipalKind::User, "alice", Role::Viewer),
            created_at: at(0),
            last_seen_at: at(0),
            expires_at: at(300),
            revoked_at: None,
            client_ip: None,
            user_agent: None,
        };
        assert!(session.alive_at(at(59), at(0), idle));
        assert!(!session.alive_at(at(60), at(0), idle), "idle for the whole idle expiry");
        // Kept alive by use...
        assert!(session.alive_at(at(250), at(200), idle));
        // ...but never past the absolute expiry.
        assert!(!session.alive_at(at(300), at(299), idle));
        assert_eq!(session.ends_at(at(290), idle), at(300));
        // The stored last use counts when memory knows none later.
        let stored_later = Session { last_seen_at: at(100), ..session.clone() };
        assert!(stored_later.alive_at(at(150), at(0), idle));
        let revoked = Session { revoked_at: Some(at(1)), ..session };
        assert!(!revoked.alive_at(at(2), at(1), idle));
    }

    #[test]
    fn a_key_is_usable_until_it_expires_or_is_revoked() {
        let key = ApiKey {
            id: "0123456789abcdef".into(),
            name: "ci".into(),
            role: Role::Operator,
            digest: String::new(),
            expires_at: Some(at(10)),
            created_by: "key:admin".into(),
            created_at: at(0),
            last_used_at: None,
            revoked_at: None,
            owner: None,
        };
        assert!(key.usable_at(at(9)) && !key.usable_at(at(10)));
        assert!(ApiKey { expires_at: None, ..key.clone() }.usable_at(at(1_000_000)));
        assert!(!ApiKey { revoked_at: Some(at(1)), ..key.clone() }.usable_at(at(2)));
        assert_eq!(key.principal().actor(), "key:ci");
    }

    #[test]
    fn usernames_key_names_and_passwords_are_checked() {
        for good in ["alice", "bob.smith", "ops-1", "a@example.com", "0day"] {
            assert!(check_username(good).is_ok(), "{good}");
        }
        for bad in ["", "Alice", "-x", ".x", "a b", "a/b", "../x", "x\r\ny", &"a".repeat(65), "é"] {
            assert!(check_username(bad).is_err(), "{bad}");
        }
        for good in ["ci", "CI-deploy", "grafana.read", "k_1"] {
            assert!(check_key_name(good).is_ok(), "{good}");
        }
        for bad in ["", "_x", "a b", "a/b", "x@y", &"k".repeat(65)] {
            assert!(check_key_name(bad).is_err(), "{bad}");
        }
        assert!(check_password("correct horse battery").is_ok());
        assert!(check_password("short").is_err());
        assert!(check_password(&"p".repeat(257)).is_err());
        assert!(check_password("twelve chars\nplus").is_err());
    }
}

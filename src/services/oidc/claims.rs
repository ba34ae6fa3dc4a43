//! What a verified token's claims mean to Updraft: a dotted path into nested claims, the
//! operator's name and role, the device a device token names. Pure (no IO, no clock).

use serde_json::{Map, Value};

use crate::config::OidcRoleMap;
use crate::domain::auth::Role;

/// The value at `path` in `claims`: a claim name, or names joined by dots into nested
/// objects (`realm_access.roles`, `resource_access.my-client.roles`). A name may itself hold
/// dots (Keycloak client ids often do): at each level the longest key that matches is taken.
pub fn lookup<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    // Longest prefix first: `a.b.c` tries `a.b` then `a`.
    let mut end = path.len();
    while let Some(dot) = path[..end].rfind('.') {
        if let Some(Value::Object(inner)) = claims.get(&path[..dot])
            && let Some(found) = lookup(inner, &path[dot + 1..])
        {
            return Some(found);
        }
        end = dot;
    }
    None
}

/// The names a role claim holds: a list of strings, or one string of space- or
/// comma-separated names.
pub fn names(value: Option<&Value>) -> Vec<&str> {
    match value {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(text)) => text.split([' ', ',']).filter(|n| !n.is_empty()).collect(),
        _ => Vec::new(),
    }
}

/// The Updraft role of these role names: the strongest one that the map gives (admin, then
/// operator, provisioner, viewer), or None.
pub fn role_of(names: &[&str], map: &OidcRoleMap) -> Option<Role> {
    let roles: Vec<Role> = names
        .iter()
        .filter_map(|name| match map {
            OidcRoleMap::Prefix(prefix) => name.strip_prefix(prefix.as_str()).and_then(|rest| Role::parse(rest).ok()),
            OidcRoleMap::Table(table) => table.iter().find(|(n, _)| n == name).map(|(_, role)| *role),
        })
        .collect();
    [Role::Admin, Role::Operator, Role::Provisioner, Role::Viewer].into_iter().find(|role| roles.contains(role))
}

/// What the map expects, for messages: `updraft-admin, updraft-operator, ...`.
pub fn expected_names(map: &OidcRoleMap) -> String {
    match map {
        OidcRoleMap::Prefix(prefix) => Role::ALL.iter().map(|r| format!("{prefix}{r}")).collect::<Vec<_>>().join(", "),
        OidcRoleMap::Table(table) => table.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "),
    }
}

/// A claim's text, when it is a short printable string (names go into records and logs).
pub fn text<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a str> {
    lookup(claims, path).and_then(Value::as_str).filter(|t| !t.is_empty() && t.len() <= 200 && !t.chars().any(char::is_control))
}

/// The token's audiences (`aud` is a string or a list).
pub fn audiences(claims: &Map<String, Value>) -> Vec<&str> {
    match claims.get("aud") {
        Some(Value::String(aud)) => vec![aud.as_str()],
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Whether `token` is meant as a JWT: three base64url parts joined by dots, the first a JSON
/// header naming an `alg` (so an admin key or an MQTT password that happens to hold two dots
/// is still taken for what it is).
pub fn looks_like_jwt(token: &str) -> bool {
    use base64::Engine;
    if !has_jwt_shape(token) {
        return false;
    }
    let header = token.split('.').next().unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()
        .and_then(|json| serde_json::from_slice::<Map<String, Value>>(&json).ok())
        .is_some_and(|header| header.get("alg").is_some_and(Value::is_string))
}

/// Three base64url parts joined by dots (Updraft's own tokens and keys never hold a dot).
fn has_jwt_shape(token: &str) -> bool {
    let mut parts = 0;
    for part in token.split('.') {
        parts += 1;
        if part.is_empty() && parts < 3 || !part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return false;
        }
    }
    parts == 3
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn dotted_paths_reach_keycloak_roles_even_through_dotted_client_ids() {
        let c = claims(json!({
            "realm_access": {"roles": ["updraft-admin", "offline_access"]},
            "resource_access": {"fleet.app": {"roles": ["viewer"]}, "fleet": {"x": 1}},
            "flat.name": "x",
        }));
        assert_eq!(names(lookup(&c, "realm_access.roles")), vec!["updraft-admin", "offline_access"]);
        assert_eq!(names(lookup(&c, "resource_access.fleet.app.roles")), vec!["viewer"]);
        assert_eq!(lookup(&c, "flat.name"), Some(&json!("x")));
        assert_eq!(lookup(&c, "realm_access.missing"), None);
        assert_eq!(lookup(&c, "nothing"), None);
        assert_eq!(names(Some(&json!("a b,c"))), vec!["a", "b", "c"]);
        assert!(names(Some(&json!(42))).is_empty());
    }

    #[test]
    fn roles_map_by_prefix_or_table_and_the_strongest_wins() {
        let prefix = OidcRoleMap::Prefix("updraft-".into());
        assert_eq!(role_of(&["updraft-viewer", "updraft-operator"], &prefix), Some(Role::Operator));
        assert_eq!(role_of(&["updraft-admin", "updraft-viewer"], &prefix), Some(Role::Admin));
        assert_eq!(role_of(&["admin", "updraft-root"], &prefix), None);
        let plain = OidcRoleMap::Prefix(String::new());
        assert_eq!(role_of(&["provisioner", "viewer"], &plain), Some(Role::Provisioner));
        let table = OidcRoleMap::parse_table("fleet-admins=admin, support=viewer").unwrap();
        assert_eq!(role_of(&["support"], &table), Some(Role::Viewer));
        assert_eq!(role_of(&["admin"], &table), None);
        assert!(OidcRoleMap::parse_table("x=root").is_err() && OidcRoleMap::parse_table("").is_err());
        assert_eq!(expected_names(&prefix), "updraft-admin, updraft-operator, updraft-viewer, updraft-provisioner");
    }

    #[test]
    fn jwt_shapes() {
        // {"alg":"RS256","kid":"k"} and {"alg":"none"}
        assert!(looks_like_jwt("eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ.eyJz.c2ln"));
        assert!(looks_like_jwt("eyJhbGciOiJub25lIn0.eyJz."), "an unsigned token is a JWT (refused later)");
        assert!(!looks_like_jwt("upd_admin_abc-DEF_123"));
        assert!(!looks_like_jwt("my.admin.key-that-has-dots"), "a key with two dots is a key");
        assert!(!looks_like_jwt("eyJh.eyJz.c2ln"), "not a JSON header");
        assert!(!has_jwt_shape("a.b") && !has_jwt_shape("a.b.c.d") && !has_jwt_shape(".b.c") && !has_jwt_shape("a.b c.d"));
        assert!(has_jwt_shape("a.b.c") && has_jwt_shape("a.b."));
    }
}

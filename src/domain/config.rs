//! Device configuration: layered JSON documents, the merge rule, secret values, diffs and
//! the effective version a device is told.
//!
//! **Layers.** A device's effective configuration merges, in this order: its product's
//! document (`product:<name>`), the documents of its tags (`tag:<tag>`, in ascending tag
//! order), then its own document (`device:<MAC>`). Every layer is a JSON object.
//!
//! **Merge rule** (JSON Merge Patch, RFC 7386, with secrets as leaves). A later layer is
//! applied to the result so far, key by key:
//! - an object value merges recursively into an object already there;
//! - any other value (string, number, boolean, array, a secret, or an object where a
//!   non-object was) replaces what was there; arrays are never concatenated;
//! - `null` removes the key.
//!
//! The source of each leaf (the layer its value came from) is kept, for the effective view.
//!
//! **Secrets.** Written as `{"$secret": <value>}`; stored as `{"$encrypted": "<token>"}`
//! (the encryption itself is the caller's, passed in as a function, so that this module
//! does no cryptography or IO); shown to operators as `{"$secret": null}`; delivered to the
//! device as the plain value. Writing `{"$secret": null}` keeps the secret stored at that
//! place, so a document read back and written again loses nothing.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::device::check_tag;
use super::error::{Error, Result};
use super::firmware::ProductName;
use super::mac::Mac;

pub const SECRET_KEY: &str = "$secret";
pub const ENCRYPTED_KEY: &str = "$encrypted";

/// Largest stored document, in bytes of JSON.
pub const MAX_DOCUMENT_BYTES: usize = 256 << 10;
/// Deepest nesting of a document.
pub const MAX_DEPTH: usize = 32;

/// Whose document it is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    Product(ProductName),
    Tag(String),
    Device(Mac),
}

impl Scope {
    /// `product`, `tag` or `device` and the name (a product name, a tag, a MAC).
    pub fn parse(kind: &str, name: &str) -> Result<Scope> {
        match kind {
            "product" | "products" => Ok(Scope::Product(ProductName::parse(name)?)),
            "tag" | "tags" => Ok(Scope::Tag(check_tag(name)?)),
            "device" | "devices" => Ok(Scope::Device(Mac::parse(name)?)),
            other => Err(Error::invalid(
                "invalid_scope",
                format!("`{}` is not a configuration layer; use product, tag or device", other.chars().take(20).collect::<String>()),
            )),
        }
    }

    /// The stored key: `product:<name>`, `tag:<tag>`, `device:<AA:BB:CC:DD:EE:FF>`.
    pub fn key(&self) -> String {
        match self {
            Scope::Product(name) => format!("product:{name}"),
            Scope::Tag(tag) => format!("tag:{tag}"),
            Scope::Device(mac) => format!("device:{}", mac.canonical()),
        }
    }

    pub fn from_key(key: &str) -> Option<Scope> {
        let (kind, name) = key.split_once(':')?;
        Scope::parse(kind, name).ok()
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Product(_) => "product",
            Scope::Tag(_) => "tag",
            Scope::Device(_) => "device",
        }
    }
}

/// The layers that apply to a device, in merge order.
/// A device without a MAC has no document of its own (`device:` layers are keyed by MAC).
pub fn device_layers(product: Option<&ProductName>, tags: &[String], mac: Option<&Mac>) -> Vec<Scope> {
    let mut layers = Vec::with_capacity(tags.len() + 2);
    if let Some(product) = product {
        layers.push(Scope::Product(product.clone()));
    }
    let mut sorted: Vec<&String> = tags.iter().collect();
    sorted.sort();
    sorted.dedup();
    layers.extend(sorted.into_iter().map(|t| Scope::Tag(t.clone())));
    layers.extend(mac.map(|mac| Scope::Device(*mac)));
    layers
}

/// The version a device is told (its `ETag`): 16 hex digits derived from the layers that
/// apply and their versions, so it changes exactly when one of them does.
pub fn effective_version(layers: &[(String, i64)]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"updraft-config-v1\n");
    for (scope, version) in layers {
        hasher.update(format!("{scope}@{version}\n").as_bytes());
    }
    hex::encode(&hasher.finalize()[..8])
}

/// Checks a document written by an operator and turns it into its stored form: secrets
/// encrypted with `encrypt`, kept secrets (`{"$secret": null}`) copied from `previous`
/// (the stored document it replaces).
pub fn prepare(input: &Value, previous: Option<&Value>, encrypt: &mut dyn FnMut(&Value) -> Result<String>) -> Result<Value> {
    let Value::Object(map) = input else {
        return Err(Error::invalid("invalid_config", "a configuration document must be a JSON object"));
    };
    // A whole document stored as one secret would merge as an object holding `$encrypted`,
    // which no view recognises as a secret any more.
    if map.contains_key(SECRET_KEY) {
        return Err(Error::invalid("invalid_secret", format!("a document cannot be a secret itself; put `{SECRET_KEY}` under a key")));
    }
    let size = serde_json::to_vec(input).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > MAX_DOCUMENT_BYTES {
        return Err(Error::invalid("config_too_large", format!("a configuration document may have at most {MAX_DOCUMENT_BYTES} bytes")));
    }
    prepare_value(input, previous, "", 0, encrypt)
}

fn prepare_value(
    input: &Value,
    previous: Option<&Value>,
    pointer: &str,
    depth: usize,
    encrypt: &mut dyn FnMut(&Value) -> Result<String>,
) -> Result<Value> {
    if depth > MAX_DEPTH {
        return Err(Error::invalid("config_too_deep", format!("a configuration document may nest at most {MAX_DEPTH} levels")));
    }
    match input {
        Value::Object(map) => {
            if map.contains_key(ENCRYPTED_KEY) {
                return Err(Error::invalid("invalid_config", format!("`{ENCRYPTED_KEY}` is reserved (at `{}`)", display_pointer(pointer))));
            }
            if let Some(secret) = map.get(SECRET_KEY) {
                if map.len() != 1 {
                    return Err(Error::invalid(
                        "invalid_secret",
                        format!("a secret is an object with the single key `{SECRET_KEY}` (at `{}`)", display_pointer(pointer)),
                    ));
                }
                if secret.is_null() {
                    return match previous {
                        Some(stored) if is_encrypted(stored) => Ok(stored.clone()),
                        _ => Err(Error::invalid(
                            "secret_missing",
                            format!(
                                "`{{\"{SECRET_KEY}\": null}}` keeps the stored secret, but there is none at `{}`; give its value",
                                display_pointer(pointer)
                            ),
                        )),
                    };
                }
                let token = encrypt(secret)?;
                return Ok(encrypted(token));
            }
            let mut out = Map::with_capacity(map.len());
            for (key, value) in map {
                let child_pointer = format!("{pointer}/{}", escape(key));
                let child_previous = previous.and_then(|p| p.as_object()).and_then(|p| p.get(key));
                out.insert(key.clone(), prepare_value(value, child_previous, &child_pointer, depth + 1, encrypt)?);
            }
            Ok(Value::Object(out))
        }
        Value::Array(items) => {
            // Secrets inside arrays have no stable place to be kept at; they are refused.
            let mut out = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                if contains_marker(item) {
                    return Err(Error::invalid(
                        "invalid_secret",
                        format!("secrets cannot be inside arrays (at `{}/{index}`)", display_pointer(pointer)),
                    ));
                }
                out.push(prepare_value(item, None, &format!("{pointer}/{index}"), depth + 1, encrypt)?);
            }
            Ok(Value::Array(out))
        }
        other => Ok(other.clone()),
    }
}

fn contains_marker(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.contains_key(SECRET_KEY) || map.contains_key(ENCRYPTED_KEY) || map.values().any(contains_marker),
        Value::Array(items) => items.iter().any(contains_marker),
        _ => false,
    }
}

fn encrypted(token: String) -> Value {
    let mut map = Map::new();
    map.insert(ENCRYPTED_KEY.to_string(), Value::String(token));
    Value::Object(map)
}

/// True for a stored secret.
pub fn is_encrypted(value: &Value) -> bool {
    matches!(value, Value::Object(map) if map.len() == 1 && map.get(ENCRYPTED_KEY).is_some_and(Value::is_string))
}

/// The operator's view of a stored document: every secret shown as `{"$secret": null}`.
pub fn mask(stored: &Value) -> Value {
    match stored {
        _ if is_encrypted(stored) => {
            let mut map = Map::new();
            map.insert(SECRET_KEY.to_string(), Value::Null);
            Value::Object(map)
        }
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), mask(v))).collect()),
        Value::Array(items) => Value::Array(items.iter().map(mask).collect()),
        other => other.clone(),
    }
}

/// The anonymous reader's view of a stored document: every secret left out. (Secrets are never
/// inside arrays, `prepare` refuses that; should one be, it becomes `null`.)
pub fn without_secrets(stored: &Value) -> Value {
    match stored {
        _ if is_encrypted(stored) => Value::Null,
        Value::Object(map) => {
            Value::Object(map.iter().filter(|(_, v)| !is_encrypted(v)).map(|(k, v)| (k.clone(), without_secrets(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(without_secrets).collect()),
        other => other.clone(),
    }
}

/// The device's view: every secret replaced by its value (`decrypt` takes the token).
pub fn reveal(stored: &Value, decrypt: &mut dyn FnMut(&str) -> Result<Value>) -> Result<Value> {
    Ok(match stored {
        Value::Object(map) if is_encrypted(stored) => decrypt(map[ENCRYPTED_KEY].as_str().unwrap_or_default())?,
        Value::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            for (key, value) in map {
                out.insert(key.clone(), reveal(value, decrypt)?);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|item| reveal(item, decrypt)).collect::<Result<_>>()?),
        other => other.clone(),
    })
}

/// The merged document and the layer each leaf came from (by JSON pointer).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Merged {
    pub content: Value,
    pub sources: BTreeMap<String, String>,
}

/// Merges stored layers in order (see the module documentation for the rule).
pub fn merge(layers: &[(String, &Value)]) -> Merged {
    let mut merged = Merged { content: Value::Object(Map::new()), sources: BTreeMap::new() };
    for (label, layer) in layers {
        merge_into(&mut merged.content, layer, "", label, &mut merged.sources);
    }
    merged
}

fn merge_into(base: &mut Value, patch: &Value, pointer: &str, label: &str, sources: &mut BTreeMap<String, String>) {
    let (Value::Object(base_map), Value::Object(patch_map)) = (&mut *base, patch) else { return };
    for (key, value) in patch_map {
        let child = format!("{pointer}/{}", escape(key));
        if value.is_null() {
            base_map.remove(key);
            forget(sources, &child);
            continue;
        }
        let mergeable = value.is_object() && !is_encrypted(value);
        match base_map.get_mut(key) {
            Some(existing) if mergeable && existing.is_object() && !is_encrypted(existing) => {
                merge_into(existing, value, &child, label, sources);
                if existing.as_object().is_some_and(Map::is_empty) {
                    sources.insert(child, label.to_string());
                } else {
                    sources.remove(&child);
                }
            }
            _ => {
                forget(sources, &child);
                let mut fresh = if mergeable { Value::Object(Map::new()) } else { value.clone() };
                if mergeable {
                    merge_into(&mut fresh, value, &child, label, sources);
                }
                record_leaves(&fresh, &child, label, sources);
                base_map.insert(key.clone(), fresh);
            }
        }
    }
}

/// Records `label` as the source of every leaf of `value` not yet recorded.
fn record_leaves(value: &Value, pointer: &str, label: &str, sources: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) if !map.is_empty() && !is_encrypted(value) => {
            for (key, child) in map {
                record_leaves(child, &format!("{pointer}/{}", escape(key)), label, sources);
            }
        }
        _ => {
            sources.entry(pointer.to_string()).or_insert_with(|| label.to_string());
        }
    }
}

fn forget(sources: &mut BTreeMap<String, String>, pointer: &str) {
    let prefix = format!("{pointer}/");
    sources.retain(|key, _| key != pointer && !key.starts_with(&prefix));
}

/// One difference between two versions of a document.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// JSON pointer of the changed value.
    pub path: String,
    pub op: ChangeOp,
    /// The old value (masked), unless added.
    pub from: Option<Value>,
    /// The new value (masked), unless removed.
    pub to: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    Added,
    Removed,
    Changed,
}

impl ChangeOp {
    pub fn as_str(&self) -> &'static str {
        match self {
            ChangeOp::Added => "added",
            ChangeOp::Removed => "removed",
            ChangeOp::Changed => "changed",
        }
    }
}

/// The differences from `old` to `new` (stored forms; a deleted document is `None`),
/// object by object; arrays and secrets compare as wholes. Values are masked.
pub fn diff(old: Option<&Value>, new: Option<&Value>) -> Vec<Change> {
    let empty = Value::Object(Map::new());
    let mut changes = Vec::new();
    diff_values(old.unwrap_or(&empty), new.unwrap_or(&empty), "", &mut changes);
    changes
}

fn diff_values(old: &Value, new: &Value, pointer: &str, changes: &mut Vec<Change>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) if !is_encrypted(old) && !is_encrypted(new) => {
            for (key, old_value) in a {
                let child = format!("{pointer}/{}", escape(key));
                match b.get(key) {
                    Some(new_value) => diff_values(old_value, new_value, &child, changes),
                    None => changes.push(Change { path: child, op: ChangeOp::Removed, from: Some(mask(old_value)), to: None }),
                }
            }
            for (key, new_value) in b {
                if !a.contains_key(key) {
                    let child = format!("{pointer}/{}", escape(key));
                    changes.push(Change { path: child, op: ChangeOp::Added, from: None, to: Some(mask(new_value)) });
                }
            }
        }
        _ if old == new => {}
        _ => changes.push(Change { path: pointer.to_string(), op: ChangeOp::Changed, from: Some(mask(old)), to: Some(mask(new)) }),
    }
}

/// RFC 6901 escaping of one reference token.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn display_pointer(pointer: &str) -> &str {
    if pointer.is_empty() { "/" } else { pointer }
}

/// The top-level fields seed 003 shows in its summaries.
pub struct Summary {
    pub device_name: Option<String>,
    pub device_entity_id: Option<String>,
    pub enable_ota: Option<bool>,
}

pub fn summary(content: &Value) -> Summary {
    Summary {
        device_name: content.get("deviceName").and_then(Value::as_str).map(str::to_string),
        device_entity_id: content.get("deviceEntityId").and_then(Value::as_str).map(str::to_string),
        enable_ota: content.get("enableOTA").and_then(Value::as_bool),
    }
}

// ---- stored layers ----

/// The current state of one layer.
#[derive(Debug, Clone)]
pub struct StoredDocument {
    pub scope: String,
    pub version: i64,
    /// `None` while the document is deleted.
    pub content: Option<Value>,
    pub updated_at: DateTime<Utc>,
}

/// One version in a layer's history.
#[derive(Debug, Clone)]
pub struct StoredVersion {
    pub scope: String,
    pub version: i64,
    pub content: Option<Value>,
    pub author: String,
    pub comment: String,
    pub created_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn encrypt_plain(value: &Value) -> Result<String> {
        Ok(format!("enc:{value}"))
    }

    fn decrypt_plain(token: &str) -> Result<Value> {
        Ok(serde_json::from_str(token.trim_start_matches("enc:")).unwrap())
    }

    fn merged(layers: &[(&str, Value)]) -> Merged {
        let refs: Vec<(String, &Value)> = layers.iter().map(|(l, v)| (l.to_string(), v)).collect();
        merge(&refs)
    }

    #[test]
    fn later_layers_win_key_by_key_and_objects_merge_deeply() {
        let result = merged(&[
            ("product:p", json!({"wifi": {"ssid": "factory", "channel": 6}, "led": true, "servers": ["a", "b"]})),
            ("tag:eu", json!({"wifi": {"ssid": "eu-net"}, "servers": ["c"]})),
            ("device", json!({"led": false})),
        ]);
        assert_eq!(result.content, json!({"wifi": {"ssid": "eu-net", "channel": 6}, "led": false, "servers": ["c"]}));
        let sources: Vec<(&str, &str)> = result.sources.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(sources, vec![("/led", "device"), ("/servers", "tag:eu"), ("/wifi/channel", "product:p"), ("/wifi/ssid", "tag:eu")]);
    }

    #[test]
    fn a_document_that_is_itself_a_secret_is_refused() {
        // Found by the `config` property: `{"$secret": …}` as the whole document was stored as
        // `{"$encrypted": …}` and merged key by key into the layers below it, leaving an object
        // with `$encrypted` and other keys that every view showed as plain data (the token).
        let error = prepare(&json!({"$secret": {"ssid": "x"}}), None, &mut |v| Ok(format!("enc:{v}"))).unwrap_err();
        assert_eq!(error.code(), "invalid_secret");
        let stored = prepare(&json!({"wifi": {"$secret": {"ssid": "x"}}}), None, &mut |v| Ok(format!("enc:{v}"))).unwrap();
        assert!(is_encrypted(&stored["wifi"]));
    }

    #[test]
    fn null_removes_a_key_and_a_scalar_replaces_an_object() {
        let result = merged(&[
            ("product:p", json!({"debug": {"level": 3}, "mqtt": {"host": "h", "port": 1}})),
            ("device", json!({"debug": null, "mqtt": "off"})),
        ]);
        assert_eq!(result.content, json!({"mqtt": "off"}));
        assert_eq!(result.sources.len(), 1);
        assert_eq!(result.sources["/mqtt"], "device");
        // An object replaces a scalar.
        let result = merged(&[("product:p", json!({"mqtt": "off"})), ("device", json!({"mqtt": {"host": "x"}}))]);
        assert_eq!(result.content, json!({"mqtt": {"host": "x"}}));
        assert_eq!(result.sources["/mqtt/host"], "device");
    }

    #[test]
    fn secrets_are_leaves_encrypted_masked_and_revealed() {
        let input = json!({"wifi": {"ssid": "home", "password": {"$secret": "hunter2"}}});
        let stored = prepare(&input, None, &mut encrypt_plain).unwrap();
        assert_eq!(stored["wifi"]["password"], json!({"$encrypted": "enc:\"hunter2\""}));
        assert_eq!(mask(&stored), json!({"wifi": {"ssid": "home", "password": {"$secret": null}}}));
        assert_eq!(reveal(&stored, &mut decrypt_plain).unwrap(), json!({"wifi": {"ssid": "home", "password": "hunter2"}}));
        assert_eq!(without_secrets(&stored), json!({"wifi": {"ssid": "home"}}));
        // A later layer's secret replaces an earlier object wholesale.
        let result = merged(&[("product:p", json!({"password": {"a": 1}})), ("device", stored["wifi"].clone())]);
        assert!(is_encrypted(&result.content["password"]));
        assert_eq!(result.sources["/password"], "device");
    }

    #[test]
    fn writing_back_a_masked_secret_keeps_it() {
        let stored = prepare(&json!({"pw": {"$secret": "s1"}, "n": 1}), None, &mut encrypt_plain).unwrap();
        let edited = json!({"pw": {"$secret": null}, "n": 2});
        let again = prepare(&edited, Some(&stored), &mut |_| panic!("nothing to encrypt")).unwrap();
        assert_eq!(again["pw"], stored["pw"]);
        let error = prepare(&json!({"other": {"$secret": null}}), Some(&stored), &mut encrypt_plain).unwrap_err();
        assert_eq!(error.code(), "secret_missing");
    }

    #[test]
    fn malformed_documents_are_refused_with_a_code() {
        let cases = [
            (json!([1, 2]), "invalid_config"),
            (json!({"a": {"$secret": 1, "b": 2}}), "invalid_secret"),
            (json!({"a": {"$encrypted": "x"}}), "invalid_config"),
            (json!({"a": [{"$secret": "x"}]}), "invalid_secret"),
        ];
        for (input, code) in cases {
            assert_eq!(prepare(&input, None, &mut encrypt_plain).unwrap_err().code(), code, "{input}");
        }
        let mut deep = json!(1);
        for _ in 0..40 {
            deep = json!({ "a": deep });
        }
        assert_eq!(prepare(&deep, None, &mut encrypt_plain).unwrap_err().code(), "config_too_deep");
    }

    #[test]
    fn diffs_list_added_removed_and_changed_paths_with_secrets_masked() {
        let old = prepare(&json!({"a": 1, "b": {"c": 2, "d": 3}, "pw": {"$secret": "x"}, "k/ey": 1}), None, &mut encrypt_plain).unwrap();
        let new = prepare(&json!({"a": 1, "b": {"c": 5}, "e": [1], "pw": {"$secret": "y"}}), None, &mut encrypt_plain).unwrap();
        let changes: Vec<(String, &str)> = diff(Some(&old), Some(&new)).into_iter().map(|c| (c.path, c.op.as_str())).collect();
        assert_eq!(
            changes,
            vec![
                ("/b/c".to_string(), "changed"),
                ("/b/d".to_string(), "removed"),
                ("/k~1ey".to_string(), "removed"),
                ("/pw".to_string(), "changed"),
                ("/e".to_string(), "added")
            ]
        );
        let pw = diff(Some(&old), Some(&new)).into_iter().find(|c| c.path == "/pw").unwrap();
        assert_eq!(pw.to, Some(json!({"$secret": null})));
        assert_eq!(diff(None, Some(&json!({"a": 1})))[0].op, ChangeOp::Added);
    }

    #[test]
    fn layers_are_product_then_sorted_tags_then_device() {
        let mac = Mac::parse("aa:bb:cc:dd:ee:ff").unwrap();
        let keys: Vec<String> =
            device_layers(Some(&ProductName::parse("lamp").unwrap()), &["zz".into(), "aa".into(), "aa".into()], Some(&mac))
                .iter()
                .map(Scope::key)
                .collect();
        assert_eq!(keys, vec!["product:lamp", "tag:aa", "tag:zz", "device:AA:BB:CC:DD:EE:FF"]);
        assert_eq!(Scope::from_key("device:AA:BB:CC:DD:EE:FF"), Some(Scope::Device(mac)));
    }

    #[test]
    fn the_effective_version_changes_with_any_layer_version() {
        let a = effective_version(&[("product:p".into(), 1), ("device:X".into(), 3)]);
        let b = effective_version(&[("product:p".into(), 2), ("device:X".into(), 3)]);
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
        assert_eq!(a, effective_version(&[("product:p".into(), 1), ("device:X".into(), 3)]));
    }
}

/// The properties of `crate::fuzzing` (shared with `fuzz/`), for a bounded number of cases.
#[cfg(test)]
mod properties {
    use proptest::collection::{btree_map, vec};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use crate::fuzzing;

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![Just("a"), Just("b"), Just("wifi"), Just("password"), Just("~/x"), Just(""), Just("$secret")].prop_map(str::to_string)
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            "[a-z]{0,6}".prop_map(Value::from),
        ]
    }

    /// Documents with secrets (`{"$secret": v}`), nulls, arrays and nested objects.
    fn document() -> impl Strategy<Value = Value> {
        let value = leaf().prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..3).prop_map(Value::Array),
                btree_map(key(), inner.clone(), 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
                inner.prop_map(|v| json!({ "$secret": v })),
            ]
        });
        btree_map(key(), value, 0..5).prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn secrets_stay_marked_through_storage_views_and_the_merge(layers in vec(document(), 1..4)) {
            let data: Vec<Vec<u8>> = layers.iter().map(|l| serde_json::to_vec(l).unwrap()).collect();
            fuzzing::config_layers(&data.join(&0x1E));
        }
    }
}

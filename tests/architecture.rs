//! The architecture's rules, checked as tests (in the manner of rust-analyzer's `tidy.rs`): the
//! invariants docs/ARCHITECTURE.md states fail the build when code breaks them, instead of
//! waiting for a reviewer to notice.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir` (relative to the package), with its text.
fn sources(dir: &str) -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path, text));
            }
        }
    }
    let mut files = Vec::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join(dir), &mut files);
    assert!(!files.is_empty(), "no sources under {dir}");
    files
}

/// The code of a file: its lines without comments (`//`, `///`, `//!`), numbered from 1.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, line)| (i + 1, line)).filter(|(_, line)| !line.trim_start().starts_with("//"))
}

/// Whether `line` names `word` as a path segment (not as part of a longer identifier).
fn names(line: &str, word: &str) -> bool {
    line.match_indices(word).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + word.len()..].chars().next();
        let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        !ident(before) && !ident(after)
    })
}

fn violations(dir: &str, forbidden: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for (path, text) in sources(dir) {
        for (number, line) in code_lines(&text) {
            for word in forbidden {
                if names(line, word) {
                    found.push(format!("{}:{number}: `{word}` in `{}`", path.display(), line.trim()));
                }
            }
        }
    }
    found
}

#[test]
fn the_domain_does_no_io() {
    let found =
        violations("src/domain", &["tokio", "sqlx", "reqwest", "object_store", "std::fs", "std::net", "hyper", "axum", "rmqtt", "rumqttc"]);
    assert!(found.is_empty(), "src/domain must do no IO (docs/ARCHITECTURE.md):\n{}", found.join("\n"));
}

#[test]
fn only_storage_names_sqlx() {
    let mut found = Vec::new();
    for dir in ["src/domain", "src/services", "src/http", "src/mqtt", "src/blob", "src/config", "src/cli"] {
        found.extend(violations(dir, &["sqlx"]));
    }
    for file in ["src/startup.rs", "src/net.rs", "src/telemetry.rs", "src/main.rs", "src/lib.rs"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        for (number, line) in code_lines(&text) {
            if names(line, "sqlx") {
                found.push(format!("{file}:{number}: `{}`", line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "only src/storage may hold SQL (docs/ARCHITECTURE.md):\n{}", found.join("\n"));
}

/// Lines of `text` that compare something that looks like a credential with `==` or `!=`.
fn secret_comparisons(text: &str) -> Vec<(usize, String)> {
    let secretive = ["token", "secret", "password", "passwd", "api_key", "signature", "credential"];
    // Fine on either side: presence checks, lengths, digests (of random secrets: not secret),
    // times, counts, kinds and states.
    let harmless = [".is_some", ".is_none", ".len", "digest", "_at", "count", "kind", "type", "state"];
    let is_delimiter = |c: char| matches!(c, '(' | ')' | '{' | '}' | ',' | ';' | '|' | '&' | '!' | '=' | '<' | '>');
    let mut found = Vec::new();
    for (number, line) in code_lines(text) {
        for operator in ["==", "!="] {
            for (at, _) in line.match_indices(operator) {
                let left = line[..at].rsplit(is_delimiter).next().unwrap_or("").to_ascii_lowercase();
                let right = line[at + 2..].split(is_delimiter).next().unwrap_or("").to_ascii_lowercase();
                let suspicious = |side: &str| secretive.iter().any(|w| side.contains(w)) && !harmless.iter().any(|h| side.contains(h));
                if suspicious(&left) || suspicious(&right) {
                    found.push((number, line.trim().to_string()));
                }
            }
        }
    }
    found.dedup();
    found
}

#[test]
fn adapters_never_use_storage() {
    // HTTP and MQTT decode, call services, and encode; storage is the services' business.
    let mut found = Vec::new();
    for dir in ["src/http", "src/mqtt"] {
        for (path, text) in sources(dir) {
            for (number, line) in code_lines(&text) {
                if line.contains("crate::storage") || line.contains(".store.") || line.contains("store::") {
                    found.push(format!("{}:{number}: `{}`", path.display(), line.trim()));
                }
            }
        }
    }
    assert!(found.is_empty(), "src/http and src/mqtt never use storage (docs/ARCHITECTURE.md):\n{}", found.join("\n"));
}

#[test]
fn settings_do_not_depend_on_services() {
    // The services' policies are built from the settings, not the other way round.
    let mut found = Vec::new();
    for (path, text) in sources("src/config") {
        for (number, line) in code_lines(&text) {
            if line.contains("crate::services") || line.contains("services::") {
                found.push(format!("{}:{number}: `{}`", path.display(), line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "src/config imports no service (docs/ARCHITECTURE.md):\n{}", found.join("\n"));
}

#[test]
fn no_secret_is_compared_with_equals() {
    // A credential is compared in constant time (`secret::verify`, `secret::constant_time_eq`,
    // an HMAC's `verify_slice`), never with `==`, whose early exit tells an attacker how much of
    // a guess was right.
    let mut found = Vec::new();
    for (path, text) in sources("src") {
        for (number, line) in secret_comparisons(&text) {
            found.push(format!("{}:{number}: `{line}`", path.display()));
        }
    }
    assert!(found.is_empty(), "compare secrets in constant time (domain::secret):\n{}", found.join("\n"));
}

#[test]
fn the_rules_above_see_what_they_look_for() {
    // The checks must be able to fail: a line that breaks each rule is caught.
    assert!(names("use sqlx::Row;", "sqlx") && !names("let sqlx_like = 1;", "sqlx"));
    assert!(names("let f = std::fs::read(p);", "std::fs"));
    assert!(code_lines("// tokio is mentioned here\nlet x = 1;").all(|(_, l)| !names(l, "tokio")));
    let caught = secret_comparisons("if presented_token == stored.token {}\nif key != admin_api_key {}\nlet ok = signature == expected;");
    assert_eq!(caught.len(), 3, "{caught:?}");
    let fine = secret_comparisons("if a.is_some() != secret.is_some() {}\nif token_digest == other {}\nif secret::verify(t, &d) {}");
    assert!(fine.is_empty(), "{fine:?}");
}

/// The OpenAPI document names each schema by its type's name, and utoipa keeps only one of
/// two types with the same name: a route would then be documented with another route's shape
/// (this happened to `GET /api/v1/api-keys`). Every type deriving `ToSchema` has its own name.
#[test]
fn every_schema_type_has_its_own_name() {
    let mut seen: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut duplicates = Vec::new();
    for (path, text) in sources("src") {
        let mut derives_schema = false;
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with("#[derive(") && line.contains("ToSchema") {
                derives_schema = true;
                continue;
            }
            if derives_schema && !line.starts_with("#[") && !line.starts_with("///") && !line.starts_with("//") {
                derives_schema = false;
                let rest = line.trim_start_matches("pub(crate) ").trim_start_matches("pub(super) ").trim_start_matches("pub ");
                let Some(name) = rest.strip_prefix("struct ").or_else(|| rest.strip_prefix("enum ")) else { continue };
                let name: String = name.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                // `#[schema(as = Other)]` renames; none of ours does.
                if let Some(first) = seen.insert(name.clone(), path.display().to_string()) {
                    duplicates.push(format!("{name}: {first} and {}", path.display()));
                }
            }
        }
    }
    assert!(duplicates.is_empty(), "schema types sharing a name: {duplicates:#?}");
    assert!(seen.len() > 50 && seen.contains_key("DeviceView"), "the scan finds the schema types ({} found)", seen.len());
}

#[test]
fn the_operator_commands_are_clients_of_the_api_and_use_no_server_internals() {
    // `updraft firmware|device|release|rollout|events` talk HTTP to a running server: they
    // never open its database or call its services, and decode answers with their own types
    // (so a change of the API fails their tests instead of silently changing their output).
    // Pure domain types are allowed.
    let mut found = Vec::new();
    for (path, text) in sources("src/cli/remote") {
        for (number, line) in code_lines(&text) {
            let internal = line.match_indices("crate::").any(|(at, _)| !line[at..].starts_with("crate::domain"));
            if internal || names(line, "sqlx") || names(line, "axum") {
                found.push(format!("{}:{number}: `{}`", path.display(), line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "src/cli/remote uses server internals (docs/ARCHITECTURE.md):\n{}", found.join("\n"));
}

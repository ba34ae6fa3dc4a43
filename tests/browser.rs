//! The dashboard in a real browser: runs the end-to-end tests of `web/e2e/` (Node's test
//! runner, playwright-core driving Debian's Chromium, axe-core for accessibility) against this
//! build's `updraft` binary, which serves its embedded dashboard. Each test file starts its own
//! server on free loopback ports (web/e2e/harness.mjs). Screenshots go to docs/screenshots/.
//!
//! Needs `node` and `/usr/bin/chromium` (or `CHROMIUM`); scripts/test.sh installs both.
//! Also checks that the dashboard's TypeScript types are those of docs/openapi.json.

#![allow(clippy::print_stderr, reason = "the browser tests' output is shown when they fail")]

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn web() -> PathBuf {
    root().join("web")
}

fn node_modules_ready() {
    assert!(
        web().join("node_modules/playwright-core").exists(),
        "web/node_modules is missing: `cargo build` runs `npm ci` in web/ (npm must be installed), or run it yourself"
    );
}

fn run(command: &mut Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stdout));
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        panic!("{what} failed ({})", output.status);
    }
}

#[test]
fn the_dashboard_types_are_those_of_the_openapi_document() {
    node_modules_ready();
    let tool = web().join("node_modules/.bin/openapi-typescript");
    run(
        Command::new(&tool)
            .arg(root().join("docs/openapi.json"))
            .arg("-o")
            .arg(web().join("src/lib/openapi.d.ts"))
            .arg("--check")
            .current_dir(web()),
        "`openapi-typescript --check` (the dashboard's types are stale: run `npm run types` in web/ and commit \
         web/src/lib/openapi.d.ts)",
    );
}

#[test]
fn the_dashboard_works_in_a_real_browser() {
    node_modules_ready();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(Path::new(&chromium).exists(), "no Chromium at {chromium}: install Debian's `chromium` (scripts/test.sh does)");
    let files: Vec<PathBuf> = std::fs::read_dir(web().join("e2e"))
        .expect("web/e2e")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".test.mjs"))
        .collect();
    assert!(!files.is_empty(), "no browser tests in web/e2e");
    run(
        Command::new("node")
            .arg("--test")
            .arg("--test-concurrency=2")
            .arg("--test-reporter=spec")
            .args(&files)
            .env("UPDRAFT_BIN", env!("CARGO_BIN_EXE_updraft"))
            // The binary's embedded dashboard, not a web/dist a developer may have built.
            .env("UPDRAFT_WEB_DIR", "")
            .env("CHROMIUM", &chromium)
            .current_dir(web()),
        "the browser tests (node --test web/e2e/)",
    );
}

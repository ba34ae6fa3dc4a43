//! Builds the web dashboard (`web/`, Svelte + Vite) into `$OUT_DIR/web`, which
//! `src/http/web.rs` embeds into the binary.
//!
//! - It runs only when the dashboard's sources change (`rerun-if-changed`).
//! - `npm ci` runs first when `web/node_modules` is missing or older than the lock file.
//! - Without npm, or with `UPDRAFT_SKIP_WEB_BUILD=1`, the folder stays empty and the server's
//!   `/` is a short page saying how to build the dashboard: a `cargo build` always gives a
//!   working server.
//! - With npm, a failed web build fails the cargo build (a type error in the dashboard is a
//!   build error, like one in Rust), unless `UPDRAFT_WEB_BUILD_OPTIONAL=1`.
//! - `UPDRAFT_WEB_PREBUILT=DIR` embeds a dashboard built elsewhere (`npm run build`'s output,
//!   e.g. in a Node stage of the container build) instead of running npm.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

fn main() {
    packed_relocations();
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    startup_order(&root);
    let web = root.join("web");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("web");
    println!("cargo:rerun-if-env-changed=UPDRAFT_SKIP_WEB_BUILD");
    println!("cargo:rerun-if-env-changed=UPDRAFT_WEB_BUILD_OPTIONAL");
    println!("cargo:rerun-if-env-changed=UPDRAFT_WEB_PREBUILT");
    for input in ["src", "index.html", "package.json", "package-lock.json", "vite.config.ts", "tsconfig.json"] {
        println!("cargo:rerun-if-changed=web/{input}");
    }
    println!("cargo:rerun-if-changed=docs/openapi.json");

    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).expect("create OUT_DIR/web");

    if let Some(prebuilt) = env::var_os("UPDRAFT_WEB_PREBUILT").map(PathBuf::from) {
        assert!(prebuilt.join("index.html").exists(), "UPDRAFT_WEB_PREBUILT={} has no index.html", prebuilt.display());
        println!("cargo:rerun-if-changed={}", prebuilt.display());
        copy_dir(&prebuilt, &out).expect("copy UPDRAFT_WEB_PREBUILT");
        return;
    }
    if env::var("UPDRAFT_SKIP_WEB_BUILD").is_ok_and(|v| v == "1" || v == "true") {
        println!("cargo:warning=UPDRAFT_SKIP_WEB_BUILD is set: the dashboard is not built into this binary");
        return;
    }
    if !web.join("package.json").exists() {
        return;
    }
    let npm = if cfg!(windows) { "npm.cmd" } else { "npm" };
    if Command::new(npm).arg("--version").output().is_err() {
        println!(
            "cargo:warning=npm was not found: the dashboard is not built into this binary (install Node.js 20+ and npm, \
             then build again)"
        );
        return;
    }
    let optional = env::var("UPDRAFT_WEB_BUILD_OPTIONAL").is_ok_and(|v| v == "1" || v == "true");
    let fail = |what: &str| {
        if optional {
            println!("cargo:warning={what}: the dashboard is not built into this binary");
            let _ = fs::remove_dir_all(&out);
            let _ = fs::create_dir_all(&out);
        } else {
            panic!("{what} (set UPDRAFT_WEB_BUILD_OPTIONAL=1 to build the server without the dashboard)");
        }
    };

    if needs_install(&web) {
        let status = Command::new(npm).args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]).current_dir(&web).status();
        if !status.is_ok_and(|s| s.success()) {
            fail("`npm ci` in web/ failed");
            return;
        }
    }
    let status = Command::new(npm).args(["run", "--silent", "build"]).env("UPDRAFT_WEB_OUT", &out).current_dir(&web).status();
    if !status.is_ok_and(|s| s.success()) {
        fail("the dashboard's build (`npm run build` in web/) failed");
    }
}

/// `npm ci` is needed when node_modules is missing or older than the lock file.
fn needs_install(web: &Path) -> bool {
    let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    match (modified(&web.join("node_modules/.package-lock.json")), modified(&web.join("package-lock.json"))) {
        (Some(installed), Some(lock)) => installed < lock,
        _ => true,
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Whether a link option that `var` can turn off (`0` or `false`) is wanted; rebuilds when
/// `var` changes.
fn link_option_wanted(var: &str) -> bool {
    println!("cargo:rerun-if-env-changed={var}");
    env::var(var).map_or(true, |v| v != "0" && v != "false")
}

/// The target, when it is the machine the build runs on (not a cross build).
fn native_target() -> Option<String> {
    let target = env::var("TARGET").ok()?;
    (env::var("HOST").ok()? == target).then_some(target)
}

/// Places the functions a server runs in its first minute and at work (`link/startup.order`,
/// written by scripts/startup-order.sh) side by side at the start of the binary's code, so that
/// start-up maps a few MiB of it rather than 64 KiB windows scattered over all of it
/// (docs/PERFORMANCE.md, "idle"). Names the build no longer has are ignored, so a stale list
/// costs memory, never a build.
///
/// Only for release builds of x86_64-unknown-linux-gnu on such a host, whose default linker has
/// been rust-lld since Rust 1.90 (GNU ld has no `--symbol-ordering-file`), and not when another
/// linker is configured. `UPDRAFT_LINK_ORDER=0` opts out.
fn startup_order(root: &Path) {
    println!("cargo:rerun-if-changed=link/startup.order");
    let wanted = link_option_wanted("UPDRAFT_LINK_ORDER");
    let target = native_target().unwrap_or_default();
    let rustflags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let other_linker = env::var_os("RUSTC_LINKER").is_some() || rustflags.contains("linker") || rustflags.contains("fuse-ld");
    let order = root.join("link/startup.order");
    if !wanted || other_linker || env::var("PROFILE").as_deref() != Ok("release") || target != "x86_64-unknown-linux-gnu" || !order.exists()
    {
        return;
    }
    println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}", order.display());
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}

/// Links the `updraft` binary with packed relative relocations (DT_RELR) when it is built for
/// the machine it is built on and that machine's glibc loads them (2.36 and later: Debian 12,
/// Ubuntu 22.10, Raspberry Pi OS 12). The release binary's 2.2 MB of `R_X86_64_RELATIVE`
/// entries, which the loader reads at every start and which then stayed resident, become a
/// 33 KB table; the binary stays position-independent (docs/PERFORMANCE.md, "Idle"). Anywhere
/// else (an older glibc, a cross build, or `UPDRAFT_LINK_RELR=0` for a binary meant for older
/// systems) it links as before. Only the final link changes: no dependency is rebuilt.
fn packed_relocations() {
    let wanted = link_option_wanted("UPDRAFT_LINK_RELR");
    if !wanted || !native_target().is_some_and(|target| target.ends_with("-linux-gnu")) {
        return;
    }
    let glibc = Command::new("getconf").arg("GNU_LIBC_VERSION").output().ok().and_then(|out| String::from_utf8(out.stdout).ok());
    // `glibc 2.36`
    let version = glibc.as_deref().and_then(|text| {
        let mut parts = text.trim().strip_prefix("glibc ")?.split('.');
        Some((parts.next()?.parse::<u32>().ok()?, parts.next()?.parse::<u32>().ok()?))
    });
    if version.is_some_and(|version| version >= (2, 36)) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

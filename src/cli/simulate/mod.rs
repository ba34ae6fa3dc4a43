//! `updraft simulate`: a fleet of simulated devices against a running server, each speaking
//! one device protocol exactly as the real client does (docs/CLIENT.md).
//!
//! The simulator is a client of the server like any device: it never opens the database and
//! shares no code with the server but pure types (`domain::mac`). One tokio runtime drives
//! every device. HTTP devices are small state machines in one `Vec`, woken by one scheduler
//! (a min-heap of wake times, `fleet`): a device holds a task only while a request of it is
//! in flight, and at most `--concurrency` are. MQTT devices (native MQTT, ThingsBoard) hold
//! one session each, with small buffers. Downloads are streamed and hashed, never buffered.
//!
//! Files: `fleet` (devices, scheduler, shared state), `wire` (HTTP helpers, native
//! provisioning and reports), `download` (streamed, hashed, ranged downloads), `update`
//! (the update flow common to the protocols), one file per protocol, `report` (the JSON
//! report) and `summary` (the live terminal line).

#![allow(clippy::print_stdout, clippy::print_stderr, reason = "the simulator talks to its user on the terminal")]

mod arduino;
mod ddi;
mod download;
mod esp32fota;
mod fleet;
mod mqtt;
mod native_http;
mod native_mqtt;
mod report;
mod seed001;
mod summary;
mod thingsboard;
mod update;
mod wire;

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// Exit codes: 0 done, 1 the server refused (a wrong key, an unknown product), 2 bad input,
/// 3 the server cannot be reached.
pub(crate) const EXIT_REFUSED: i32 = 1;
pub(crate) const EXIT_USAGE: i32 = 2;
pub(crate) const EXIT_UNREACHABLE: i32 = 3;

#[derive(Args, Clone)]
pub struct SimulateArgs {
    /// The server's base URL, e.g. http://127.0.0.1:8080
    #[arg(long, env = "UPDRAFT_SERVER", value_name = "URL")]
    server: String,
    /// How many devices (1 to 1,000,000)
    #[arg(long, value_name = "N")]
    devices: u64,
    /// The devices' product
    #[arg(long, value_name = "PRODUCT")]
    product: String,
    /// The devices' hardware
    #[arg(long, value_name = "HARDWARE", default_value = "esp32")]
    hardware: String,
    /// The version the devices run at the start
    #[arg(long, value_name = "VERSION", default_value = "1.0.0")]
    version: String,
    /// The device protocol: native-http, native-mqtt, arduino, seed-001, esp32fota,
    /// thingsboard, ddi, or mix (each device one of them in turn; seed-001 only with
    /// --shared-secret, thingsboard only with --provision-key)
    #[arg(long, value_name = "PROTOCOL", default_value = "native-http")]
    protocol: String,
    /// The product's provisioning key (products in `key` mode; ThingsBoard provisioning needs it)
    #[arg(long, value_name = "KEY")]
    provision_key: Option<String>,
    /// The product's provisioning secret
    #[arg(long, value_name = "SECRET")]
    provision_secret: Option<String>,
    /// The fleet's shared secret of seed-001 devices (the server's UPDRAFT_COMPAT_SHARED_SECRET)
    #[arg(long, value_name = "SECRET")]
    shared_secret: Option<String>,
    /// The MQTT broker, host:port or mqtt://host:port [default: the server's host, port 1883]
    #[arg(long, value_name = "ADDRESS")]
    mqtt: Option<String>,
    /// The hawkBit DDI tenant (the server's UPDRAFT_DDI_TENANT)
    #[arg(long, value_name = "TENANT", default_value = "DEFAULT")]
    ddi_tenant: String,
    /// Share of devices whose downloads break off (each retry resumes with a range and breaks
    /// too; the device then reports `failed`), e.g. 2%
    #[arg(long, value_name = "PERCENT", value_parser = percent, default_value = "0%")]
    fail_download: f64,
    /// Share of devices that fail to write the image and report `failed`
    #[arg(long, value_name = "PERCENT", value_parser = percent, default_value = "0%")]
    fail_install: f64,
    /// Share of devices that report `installed` and then boot back into the old version
    #[arg(long, value_name = "PERCENT", value_parser = percent, default_value = "0%")]
    fail_boot: f64,
    /// Share of devices that stop talking as soon as they are offered an update
    #[arg(long, value_name = "PERCENT", value_parser = percent, default_value = "0%")]
    silent: f64,
    /// Time between check-ins, e.g. 30s [default: the server's poll_interval_s]
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    poll: Option<Duration>,
    /// Stop after this long, e.g. 10m [default: run until Ctrl-C or SIGTERM]
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    duration: Option<Duration>,
    /// Write the JSON report here at the end
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Seed of the MACs and of who fails: the same seed gives the same fleet
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
    /// HTTP requests in flight at most (the connection pool's size)
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: u32,
    /// Seconds between two summary lines when standard error is not a terminal
    #[arg(long, value_name = "DURATION", value_parser = duration, default_value = "10s")]
    summary_every: Duration,
}

/// Runs the simulation; returns the process exit code.
pub fn run(args: SimulateArgs) -> i32 {
    let plan = match fleet::Plan::from_args(&args) {
        Ok(plan) => plan,
        Err(message) => {
            eprintln!("updraft simulate: {message}");
            return EXIT_USAGE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("updraft simulate: cannot start the runtime: {e}");
            return EXIT_REFUSED;
        }
    };
    runtime.block_on(async move {
        match fleet::run(plan, args.report.clone()).await {
            Ok(()) => 0,
            Err(fatal) => {
                eprintln!("updraft simulate: {}", fatal.message);
                fatal.code
            }
        }
    })
}

/// A percentage: `2%`, `2` or `0.5%`, from 0 to 100.
fn percent(text: &str) -> Result<f64, String> {
    let number = text.trim().strip_suffix('%').unwrap_or(text.trim());
    match number.parse::<f64>() {
        Ok(value) if (0.0..=100.0).contains(&value) => Ok(value),
        _ => Err(format!("`{text}` is not a percentage from 0% to 100%")),
    }
}

/// A duration: `30s`, `10m`, `1h 30m`, `500ms`; a bare number is seconds.
fn duration(text: &str) -> Result<Duration, String> {
    let parsed = match text.trim().parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(text.trim()).map_err(|e| format!("`{text}` is not a duration like 30s or 10m: {e}"))?,
    };
    if parsed.is_zero() {
        return Err(format!("`{text}` is zero; give a duration like 30s"));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_take_a_sign_or_none_and_stay_within_0_to_100() {
        assert_eq!(percent("2%"), Ok(2.0));
        assert_eq!(percent("0.5"), Ok(0.5));
        assert_eq!(percent("100%"), Ok(100.0));
        assert!(percent("101%").is_err());
        assert!(percent("-1").is_err());
        assert!(percent("two").is_err());
    }

    #[test]
    fn durations_are_human_or_seconds_and_never_zero() {
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("45"), Ok(Duration::from_secs(45)));
        assert!(duration("0s").is_err());
        assert!(duration("soon").is_err());
    }
}

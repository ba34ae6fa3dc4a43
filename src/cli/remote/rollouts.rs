//! `updraft rollout create|list|start|pause|resume|advance|cancel|rollback|status [--watch]`.
//!
//! `status --watch` polls `GET /api/v1/rollouts/{id}` until the rollout ends: `completed`
//! exits 0; `halted`, `cancelled` and `rolled_back` exit 4, so a CI step fails when the
//! rollout does (docs/DEPLOYMENT.md).

use std::time::Duration;

use clap::Subcommand;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Failure;
use super::client::{Client, decode};
use super::output::{Output, or_dash};

#[derive(Subcommand)]
pub enum Command {
    /// Create a rollout of a release (a draft unless --start or --start-at).
    Create(Box<CreateArgs>),
    /// List rollouts.
    List {
        #[arg(long)]
        product: Option<String>,
        /// draft, running, paused, completed, cancelled, halted or rolled_back
        #[arg(long)]
        state: Option<String>,
    },
    /// Start a draft: its first stage opens.
    Start(Action),
    /// Pause: nobody new is offered the release.
    Pause(Action),
    /// Resume a paused or halted rollout (a halt's failures are excused).
    Resume(Action),
    /// Open the next stage now, whatever the thresholds (after the last: complete).
    Advance(Action),
    /// Cancel: nobody new is offered the release; nothing is rolled back.
    Cancel(Action),
    /// Pin every device the rollout offered the release back to the version it ran before.
    Rollback(Action),
    /// Show a rollout's state, stages and counts; --watch follows it until it ends and exits
    /// non-zero (4) when it halts, is cancelled or is rolled back.
    Status(StatusArgs),
}

#[derive(clap::Args)]
pub struct Action {
    /// The rollout's id
    id: String,
    /// Recorded in the rollout's history
    #[arg(long)]
    reason: Option<String>,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    /// The rollout's id
    id: String,
    /// Follow the rollout until it completes (exit 0) or halts, is cancelled or rolled back
    /// (exit 4), printing each change
    #[arg(long)]
    watch: bool,
    /// How often --watch asks the server
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    interval: Duration,
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// The release's id (from `release create`)
    release: String,
    #[arg(long)]
    name: Option<String>,
    /// Cumulative stages: percentages of the target ("1%") or device counts ("5"),
    /// comma-separated [default: the server's, 1%,10%,50%,100%]
    #[arg(long, value_delimiter = ',', value_parser = parse_stage)]
    stages: Vec<Value>,
    /// Percentage of a stage's devices that must succeed before it advances, for every stage
    #[arg(long, value_name = "PERCENT")]
    success_threshold: Option<f64>,
    /// Failures that halt the rollout, for every stage: a count ("3") or a percentage ("5%")
    #[arg(long, value_name = "COUNT|PERCENT%", value_parser = parse_error_threshold)]
    error_threshold: Option<Value>,
    /// Least time each stage runs before it advances by itself, e.g. 1h
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    soak: Option<Duration>,
    /// Target only devices with this tag (repeat: all of them)
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Target only this hardware (repeat or comma-separate) [default: the release's]
    #[arg(long, value_delimiter = ',')]
    hardware: Vec<String>,
    /// Target only devices on these channels [default: every channel that receives the release's]
    #[arg(long = "channel", value_delimiter = ',')]
    channels: Vec<String>,
    /// Target only devices running this version or newer
    #[arg(long)]
    version_min: Option<String>,
    /// Target only devices running a version older than this
    #[arg(long)]
    version_max: Option<String>,
    /// Target only these devices: ids or MACs (repeat or comma-separate)
    #[arg(long = "device", value_delimiter = ',')]
    devices: Vec<String>,
    /// Target only the devices of this group (its id)
    #[arg(long)]
    group: Option<String>,
    /// Start at once
    #[arg(long, conflicts_with = "start_at")]
    start: bool,
    /// Start at this time (RFC 3339)
    #[arg(long, value_name = "TIME")]
    start_at: Option<String>,
    /// Offer only on these days, e.g. mon,tue,wed,thu,fri (with --window-start/--window-end)
    #[arg(long, value_delimiter = ',', requires = "window_start")]
    window_days: Vec<String>,
    /// Offer only from this time of day, HH:MM
    #[arg(long, value_name = "HH:MM", requires = "window_end")]
    window_start: Option<String>,
    /// Offer only until this time of day, HH:MM (before the start: past midnight)
    #[arg(long, value_name = "HH:MM", requires = "window_start")]
    window_end: Option<String>,
    /// Time zone of the window, e.g. Europe/Berlin [default: UTC]
    #[arg(long, value_name = "ZONE", requires = "window_start")]
    window_time_zone: Option<String>,
    /// Devices downloading and installing at once, at most
    #[arg(long)]
    max_concurrent: Option<u32>,
    /// Mark offers mandatory (a hint to devices that support it)
    #[arg(long)]
    forced: bool,
    /// Only devices registered before the start take part (default: later ones join)
    #[arg(long = "static")]
    fixed: bool,
    /// Time a device has to succeed or fail before it counts as timed out, e.g. 1d
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    device_deadline: Option<Duration>,
    /// Print only the rollout's id
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Deserialize)]
struct Rollout {
    id: String,
    name: String,
    release_id: String,
    release_version: Option<String>,
    product: String,
    state: String,
    #[serde(default)]
    reason: String,
    current_stage: usize,
    stages: Vec<Stage>,
    target_size: u64,
    counts: Counts,
    failure_rate: f64,
}

#[derive(Deserialize)]
struct Stage {
    number: usize,
    percent: Option<f64>,
    count: Option<u64>,
    status: String,
    devices: Option<u64>,
    counts: Counts,
    failure_rate: f64,
}

#[derive(Deserialize, PartialEq, Clone)]
struct Counts {
    pending: u64,
    offered: u64,
    downloading: u64,
    installing: u64,
    installed: u64,
    succeeded: u64,
    failed: u64,
    timed_out: u64,
}

#[derive(Deserialize)]
struct List {
    items: Vec<Rollout>,
}

pub async fn run(client: &Client, output: &Output, command: Command) -> Result<(), Failure> {
    let (verb, action) = match command {
        Command::Create(args) => return create(client, output, *args).await,
        Command::List { product, state } => return list(client, output, product, state).await,
        Command::Status(args) if args.watch => return watch(client, output, &args).await,
        Command::Status(args) => {
            let rollout = client.get(&["api", "v1", "rollouts", &args.id], &[]).await?;
            output.json_line(&rollout);
            show(output, &decode(&rollout)?);
            return Ok(());
        }
        Command::Start(action) => ("start", action),
        Command::Pause(action) => ("pause", action),
        Command::Resume(action) => ("resume", action),
        Command::Advance(action) => ("advance", action),
        Command::Cancel(action) => ("cancel", action),
        Command::Rollback(action) => ("rollback", action),
    };
    let url = client.url(&["api", "v1", "rollouts", &action.id, verb], &[]);
    let body = action.reason.map(|reason| json!({"reason": reason}));
    let rollout = client.call_json(Method::POST, url, body.as_ref()).await?;
    output.json_line(&rollout);
    let view: Rollout = decode(&rollout)?;
    output.line(&format!("rollout {} is {}", view.id, view.state));
    show(output, &view);
    Ok(())
}

async fn create(client: &Client, output: &Output, args: CreateArgs) -> Result<(), Failure> {
    let quiet = args.quiet;
    let body = create_body(args);
    let created = client.call_json(Method::POST, client.url(&["api", "v1", "rollouts"], &[]), Some(&body)).await?;
    output.json_line(&created);
    let rollout: Rollout = decode(&created)?;
    if quiet {
        if !output.is_json() {
            println!("{}", rollout.id);
        }
        return Ok(());
    }
    output.line(&format!("created rollout {} ({})", rollout.id, rollout.state));
    show(output, &rollout);
    let overlaps = created.get("overlaps").and_then(Value::as_array).map(Vec::len).unwrap_or(0);
    if overlaps > 0 && !output.is_json() {
        eprintln!("updraft: {overlaps} other rollout(s) of the product share devices with this one; those devices get the newer release");
    }
    Ok(())
}

/// The body of `POST /api/v1/rollouts` (docs/API.md) from the flags; absent flags leave the
/// server's defaults.
fn create_body(args: CreateArgs) -> Value {
    let mut body = Map::new();
    body.insert("release_id".into(), json!(args.release));
    let mut target = Map::new();
    for (name, values) in [("tags", args.tags), ("hardware", args.hardware), ("channels", args.channels), ("devices", args.devices)] {
        if !values.is_empty() {
            target.insert(name.into(), json!(values));
        }
    }
    for (name, value) in [("version_min", args.version_min), ("version_max", args.version_max), ("group", args.group)] {
        if let Some(value) = value {
            target.insert(name.into(), json!(value));
        }
    }
    body.insert("target".into(), Value::Object(target));
    // Thresholds and soak are per stage: without --stages, the server's default stages get them.
    let per_stage = args.success_threshold.is_some() || args.error_threshold.is_some() || args.soak.is_some();
    let stages = if args.stages.is_empty() && per_stage {
        DEFAULT_STAGES.iter().map(|s| parse_stage(s).expect("the default stages parse")).collect()
    } else {
        args.stages
    };
    if !stages.is_empty() {
        let stages: Vec<Value> = stages
            .into_iter()
            .map(|mut stage| {
                if let Some(threshold) = args.success_threshold {
                    stage["success_threshold"] = json!(threshold);
                }
                if let Some(threshold) = &args.error_threshold {
                    stage["error_threshold"] = threshold.clone();
                }
                if let Some(soak) = args.soak {
                    stage["min_soak_s"] = json!(soak.as_secs());
                }
                stage
            })
            .collect();
        body.insert("stages".into(), Value::Array(stages));
    }
    if let Some(name) = args.name {
        body.insert("name".into(), json!(name));
    }
    if args.start {
        body.insert("start".into(), json!(true));
    }
    if let Some(start_at) = args.start_at {
        body.insert("start_at".into(), json!(start_at));
    }
    if let (Some(start), Some(end)) = (args.window_start, args.window_end) {
        let mut window = json!({"start": start, "end": end});
        if !args.window_days.is_empty() {
            window["days"] = json!(args.window_days);
        }
        if let Some(zone) = args.window_time_zone {
            window["time_zone"] = json!(zone);
        }
        body.insert("window".into(), window);
    }
    if let Some(max) = args.max_concurrent {
        body.insert("max_concurrent".into(), json!(max));
    }
    if args.forced {
        body.insert("forced".into(), json!(true));
    }
    if args.fixed {
        body.insert("dynamic".into(), json!(false));
    }
    if let Some(deadline) = args.device_deadline {
        body.insert("device_deadline_s".into(), json!(deadline.as_secs()));
    }
    Value::Object(body)
}

async fn list(client: &Client, output: &Output, product: Option<String>, state: Option<String>) -> Result<(), Failure> {
    let query: Vec<(&str, String)> =
        [("product", product), ("state", state)].into_iter().filter_map(|(name, value)| value.map(|v| (name, v))).collect();
    let list = client.get(&["api", "v1", "rollouts"], &query).await?;
    output.json_line(&list);
    let list: List = decode(&list)?;
    let rows = list
        .items
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.name.clone(),
                r.product.clone(),
                or_dash(r.release_version.as_deref()),
                r.state.clone(),
                format!("{}/{}", r.current_stage, r.stages.len()),
                r.target_size.to_string(),
                r.counts.succeeded.to_string(),
                (r.counts.failed + r.counts.timed_out).to_string(),
            ]
        })
        .collect();
    output.table(&["id", "name", "product", "version", "state", "stage", "target", "succeeded", "failed"], rows);
    Ok(())
}

/// Polls until the rollout ends; prints a line (or, with `--json`, the rollout) at each change.
async fn watch(client: &Client, output: &Output, args: &StatusArgs) -> Result<(), Failure> {
    let mut last: Option<(String, usize, Counts)> = None;
    let mut failures_in_a_row = 0u32;
    loop {
        let rollout = match client.get(&["api", "v1", "rollouts", &args.id], &[]).await {
            Ok(rollout) => {
                failures_in_a_row = 0;
                rollout
            }
            // A server restarting (or a proxy between deploys) is not the rollout failing:
            // retry for a while, then give up with the transport's own exit code.
            Err(Failure::Unreachable(message)) if failures_in_a_row < 12 => {
                failures_in_a_row += 1;
                eprintln!("updraft: {message}; retrying");
                tokio::time::sleep(args.interval).await;
                continue;
            }
            Err(Failure::Refused { status, .. }) if status >= 500 && failures_in_a_row < 12 => {
                failures_in_a_row += 1;
                eprintln!("updraft: the server answered {status}; retrying");
                tokio::time::sleep(args.interval).await;
                continue;
            }
            Err(failure) => return Err(failure),
        };
        let view: Rollout = decode(&rollout)?;
        let now = (view.state.clone(), view.current_stage, view.counts.clone());
        if last.as_ref() != Some(&now) {
            output.json_line(&rollout);
            output.line(&progress_line(&view));
            last = Some(now);
        }
        match view.state.as_str() {
            "completed" => return Ok(()),
            "halted" | "cancelled" | "rolled_back" => {
                return Err(Failure::RolloutEnded { id: view.id, state: view.state, reason: view.reason });
            }
            _ => tokio::time::sleep(args.interval).await,
        }
    }
}

/// `12:00:01 running, stage 2 of 3: 8 of 95 devices succeeded, 1 failed, 0 timed out (1.2 %)`.
fn progress_line(rollout: &Rollout) -> String {
    let time = chrono::Utc::now().format("%H:%M:%S");
    let counts = &rollout.counts;
    let reason = if rollout.reason.is_empty() { String::new() } else { format!(" ({})", rollout.reason) };
    format!(
        "{time} {}{reason}, stage {} of {}: {} of {} devices succeeded, {} failed, {} timed out, {} in progress",
        rollout.state,
        rollout.current_stage,
        rollout.stages.len(),
        counts.succeeded,
        rollout.target_size,
        counts.failed,
        counts.timed_out,
        counts.offered + counts.downloading + counts.installing + counts.installed,
    )
}

fn show(output: &Output, rollout: &Rollout) {
    let counts = &rollout.counts;
    output.fields(&[
        ("id", rollout.id.clone()),
        ("name", rollout.name.clone()),
        ("release", format!("{} {} ({})", rollout.product, or_dash(rollout.release_version.as_deref()), rollout.release_id)),
        ("state", rollout.state.clone()),
        ("reason", or_dash(Some(&rollout.reason))),
        ("stage", format!("{} of {}", rollout.current_stage, rollout.stages.len())),
        ("target", format!("{} devices", rollout.target_size)),
        (
            "devices",
            format!(
                "{} pending, {} offered, {} downloading, {} installing, {} installed, {} succeeded, {} failed, {} timed out",
                counts.pending,
                counts.offered,
                counts.downloading,
                counts.installing,
                counts.installed,
                counts.succeeded,
                counts.failed,
                counts.timed_out
            ),
        ),
        ("failure rate", format!("{:.1} %", rollout.failure_rate * 100.0)),
    ]);
    let rows = rollout
        .stages
        .iter()
        .map(|stage| {
            let size = match (stage.percent, stage.count) {
                (Some(percent), _) => format!("{percent}%"),
                (None, Some(count)) => format!("{count} devices"),
                (None, None) => "-".into(),
            };
            vec![
                stage.number.to_string(),
                size,
                stage.status.clone(),
                stage.devices.map(|d| d.to_string()).unwrap_or_else(|| "-".into()),
                stage.counts.succeeded.to_string(),
                stage.counts.failed.to_string(),
                stage.counts.timed_out.to_string(),
                format!("{:.1} %", stage.failure_rate * 100.0),
            ]
        })
        .collect();
    output.line("");
    output.table(&["stage", "size", "status", "devices", "succeeded", "failed", "timed out", "failure rate"], rows);
}

/// The server's default stages (docs/API.md).
const DEFAULT_STAGES: [&str; 4] = ["1%", "10%", "50%", "100%"];

/// `1%` → `{"percent": 1}`, `5` → `{"count": 5}`.
fn parse_stage(text: &str) -> Result<Value, String> {
    let text = text.trim();
    if let Some(percent) = text.strip_suffix('%') {
        let percent: f64 = percent.trim().parse().map_err(|_| format!("`{text}` is not a percentage like 10%"))?;
        return Ok(json!({"percent": percent}));
    }
    let count: u64 = text.parse().map_err(|_| format!("`{text}` is neither a percentage like 10% nor a device count like 5"))?;
    Ok(json!({"count": count}))
}

/// `5%` → `{"percent": 5}`, `3` → `{"count": 3}`: a stage's form.
fn parse_error_threshold(text: &str) -> Result<Value, String> {
    parse_stage(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_percentages_or_counts() {
        assert_eq!(parse_stage("1%").unwrap(), json!({"percent": 1.0}));
        assert_eq!(parse_stage(" 12.5 %").unwrap(), json!({"percent": 12.5}));
        assert_eq!(parse_stage("5").unwrap(), json!({"count": 5}));
        assert!(parse_stage("ten").is_err());
        assert!(parse_stage("-1").is_err());
        assert_eq!(parse_error_threshold("3").unwrap(), json!({"count": 3}));
    }

    fn body(flags: &[&str]) -> Value {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            args: CreateArgs,
        }
        let flags = <Flags as clap::Parser>::try_parse_from(["create", "rel-1"].iter().chain(flags)).unwrap();
        create_body(flags.args)
    }

    #[test]
    fn per_stage_flags_apply_to_every_stage_the_default_ones_included() {
        assert_eq!(body(&[]), json!({"release_id": "rel-1", "target": {}}), "absent flags leave the server's defaults");
        let given = body(&["--stages", "1%,5,100%", "--soak", "1h", "--start"]);
        assert_eq!(
            given["stages"],
            json!([{"percent": 1.0, "min_soak_s": 3600}, {"count": 5, "min_soak_s": 3600}, {"percent": 100.0, "min_soak_s": 3600}])
        );
        assert_eq!(given["start"], true);
        let defaults = body(&["--error-threshold", "5%", "--device", "a,b", "--tag", "eu"]);
        let stages = defaults["stages"].as_array().unwrap();
        assert_eq!(stages.len(), 4);
        assert!(stages.iter().all(|s| s["error_threshold"] == json!({"percent": 5.0})), "{defaults}");
        assert_eq!(defaults["target"], json!({"devices": ["a", "b"], "tags": ["eu"]}));
    }
}

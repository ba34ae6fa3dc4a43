//! The operator commands: `firmware`, `device`, `release`, `rollout` and `events`, each an
//! HTTP client of a running server's REST API (never of its database). docs/CLI.md is their
//! reference, including the `--json` output and the exit codes.
//!
//! One file per command group; `client.rs` is the only code that talks HTTP, `output.rs` the
//! only code that draws tables. The wire types decoded here are this module's own (serde
//! structs with only the fields shown), so a change of the API shows up as a failing test of
//! the command line, not as a silent change of its output.

use clap::{Args, Subcommand};

mod client;
mod devices;
mod events;
mod firmware;
mod output;
mod releases;
mod rollouts;

use client::Client;
use output::Output;

/// Exit codes (docs/CLI.md).
pub const EXIT_OK: i32 = 0;
pub const EXIT_REFUSED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_UNREACHABLE: i32 = 3;
pub const EXIT_ROLLOUT_ENDED: i32 = 4;

#[derive(Subcommand)]
pub enum Command {
    /// Firmware builds on a running server (over its API): upload, list, show, delete.
    Firmware(Group<firmware::Command>),
    /// Devices on a running server (over its API): list, show, pin, unpin, token.
    Device(Group<devices::Command>),
    /// Releases on a running server (over its API): create, list, show.
    Release(Group<releases::Command>),
    /// Rollouts on a running server (over its API): create, start, pause, resume, advance,
    /// cancel, rollback, status [--watch], list.
    Rollout(Group<rollouts::Command>),
    /// Tail a running server's live events (`GET /api/v1/events`), reconnecting when the
    /// stream ends.
    Events(EventsGroup),
}

/// A command group with the connection flags, which may come anywhere after its name.
#[derive(Args)]
pub struct Group<C: Subcommand> {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: C,
}

#[derive(Args)]
pub struct EventsGroup {
    #[command(flatten)]
    pub connection: Connection,
    #[command(flatten)]
    pub command: events::Args,
}

/// Where the server is, how to authenticate, how to print.
#[derive(Args, Clone)]
#[command(next_help_heading = "Connection")]
pub struct Connection {
    /// The server's base URL, e.g. https://updraft.example.com
    #[arg(long, env = "UPDRAFT_SERVER", value_name = "URL", global = true)]
    pub server: Option<String>,
    /// An API key (the admin key or a named key), sent as `Authorization: Bearer`
    #[arg(long, env = "UPDRAFT_API_KEY", value_name = "KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
    /// Print JSON for scripts instead of tables (docs/CLI.md describes it)
    #[arg(long, global = true)]
    pub json: bool,
}

/// Why a command did not succeed; each maps to one exit code.
#[derive(Debug)]
pub enum Failure {
    /// Bad flags or arguments, a missing setting, an unreadable file: exit 2.
    Usage(String),
    /// The server answered with an error: exit 1, with its `error.code` and `error.message`.
    Refused { status: u16, code: String, message: String },
    /// The server answered something this command does not understand: exit 1.
    Protocol(String),
    /// No connection, or no answer: exit 3.
    Unreachable(String),
    /// `rollout status --watch` saw the rollout end without completing: exit 4.
    RolloutEnded { id: String, state: String, reason: String },
}

impl Failure {
    fn exit_code(&self) -> i32 {
        match self {
            Failure::Usage(_) => EXIT_USAGE,
            Failure::Refused { .. } | Failure::Protocol(_) => EXIT_REFUSED,
            Failure::Unreachable(_) => EXIT_UNREACHABLE,
            Failure::RolloutEnded { .. } => EXIT_ROLLOUT_ENDED,
        }
    }

    /// One line on standard error; with `--json`, a refusal is also printed on standard
    /// output as `{"error": {"code", "message"}, "status"}`.
    fn report(&self, output: &Output) {
        match self {
            Failure::Usage(message) | Failure::Protocol(message) | Failure::Unreachable(message) => {
                eprintln!("updraft: {message}")
            }
            Failure::Refused { status, code, message } => {
                eprintln!("updraft: the server refused ({status} {code}): {message}");
                output.json_line(&serde_json::json!({"error": {"code": code, "message": message}, "status": status}));
            }
            Failure::RolloutEnded { id, state, reason } => {
                let reason = if reason.is_empty() { String::new() } else { format!(": {reason}") };
                eprintln!("updraft: rollout {id} is {state}{reason}")
            }
        }
    }
}

/// Runs an operator command; returns the process exit code.
pub fn run(command: Command) -> i32 {
    let connection = match &command {
        Command::Firmware(group) => &group.connection,
        Command::Device(group) => &group.connection,
        Command::Release(group) => &group.connection,
        Command::Rollout(group) => &group.connection,
        Command::Events(group) => &group.connection,
    };
    let output = Output::new(connection.json);
    let outcome = Client::new(connection).and_then(|client| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::Usage(format!("cannot start the async runtime: {e}")))?;
        runtime.block_on(async {
            match command {
                Command::Firmware(group) => firmware::run(&client, &output, group.command).await,
                Command::Device(group) => devices::run(&client, &output, group.command).await,
                Command::Release(group) => releases::run(&client, &output, group.command).await,
                Command::Rollout(group) => rollouts::run(&client, &output, group.command).await,
                Command::Events(group) => events::run(&client, &output, group.command).await,
            }
        })
    });
    match outcome {
        Ok(()) => EXIT_OK,
        Err(failure) => {
            failure.report(&output);
            failure.exit_code()
        }
    }
}

//! The `updraft` command line: `serve`, and maintenance subcommands.

use clap::{Parser, Subcommand};

use crate::config::{ServeArgs, Settings};
use crate::domain::secret;
use crate::startup::Application;
use crate::storage::Store;

#[derive(Parser)]
#[command(name = "updraft", version, about = "Fleet server for ESP32-class devices: OTA firmware, registry, rollouts, configuration, MQTT")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (HTTP API, device protocols, dashboard).
    Serve(ServeArgs),
    /// Print the OpenAPI document of the HTTP API.
    Openapi,
    /// Replace the stored admin API key with a new one and print it once.
    ResetAdminKey(ServeArgs),
}

/// Runs the command line; returns the process exit code.
pub fn run() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => with_settings(&args, serve),
        Command::Openapi => {
            let document = crate::http::openapi().to_pretty_json().expect("the OpenAPI document serializes");
            println!("{document}");
            0
        }
        Command::ResetAdminKey(args) => with_settings(&args, reset_admin_key),
    }
}

fn with_settings(args: &ServeArgs, run: fn(Settings) -> anyhow::Result<()>) -> i32 {
    let settings = match Settings::load(args) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("updraft: {error}");
            return 2;
        }
    };
    crate::telemetry::init_logging(&settings.log, settings.log_format);
    match run(settings) {
        Ok(()) => 0,
        Err(error) => {
            tracing::error!("{error:#}");
            1
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let app = Application::build(settings).await?;
        app.run_until_stopped(shutdown_signal()).await
    })
}

fn reset_admin_key(settings: Settings) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let store = Store::connect(&settings.database_url, 1).await?;
        let key = secret::generate("upd_admin_");
        store.replace_server_secret("admin_api_key_sha256", &secret::digest_hex(&key)).await?;
        println!("{key}");
        eprintln!("updraft: new admin API key stored (only its hash); restart running servers to use it");
        Ok(())
    })
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

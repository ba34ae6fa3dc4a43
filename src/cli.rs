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
    /// Import the registry and files of another OTA server.
    #[command(subcommand)]
    Import(ImportCommand),
}

#[derive(Subcommand)]
enum ImportCommand {
    /// Import a seed-001 "ESP32 OTA Update Server": devices.json and its firmware folder.
    /// Each file becomes a build under its file name; each device is registered (or updated)
    /// with its target_version as a pin. Run it again to apply changes; it is idempotent.
    OtaServer(OtaServerImportArgs),
}

#[derive(clap::Args)]
struct OtaServerImportArgs {
    /// The server's devices.json (a JSON object of devices by MAC)
    #[arg(long, value_name = "FILE")]
    devices: std::path::PathBuf,
    /// The server's firmware folder (OTA_SERVER_FIRMWARE_DIR)
    #[arg(long, value_name = "DIR")]
    firmware_dir: Option<std::path::PathBuf>,
    /// Product of the imported devices and builds [default: UPDRAFT_COMPAT_DEFAULT_PRODUCT, else ota-server]
    #[arg(long, value_name = "PRODUCT")]
    product: Option<String>,
    /// Hardware of files that are not ESP32 app images (which name their chip) and of devices
    /// whose firmware is unknown
    #[arg(long, value_name = "HARDWARE", default_value = "esp32")]
    hardware: String,
    #[command(flatten)]
    serve: ServeArgs,
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
        Command::Import(ImportCommand::OtaServer(args)) => import_ota_server(args),
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

fn import_ota_server(args: OtaServerImportArgs) -> i32 {
    let settings = match Settings::load(&args.serve) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("updraft: {error}");
            return 2;
        }
    };
    crate::telemetry::init_logging(&settings.log, settings.log_format);
    let devices_json = match std::fs::read_to_string(&args.devices) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("updraft: cannot read {}: {e}", args.devices.display());
            return 2;
        }
    };
    let product = args.product.or_else(|| settings.compat.default_product.clone()).unwrap_or_else(|| "ota-server".into());
    let outcome = runtime().and_then(|rt| {
        rt.block_on(async {
            let core = crate::services::Core::offline(&settings).await?;
            let report = crate::services::compat::import_ota_server(
                &core,
                &devices_json,
                args.firmware_dir.as_deref(),
                &product,
                &args.hardware,
                settings.max_upload_bytes,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
            core.store.close().await;
            Ok(report)
        })
    });
    match outcome {
        Ok(report) => {
            for (name, version) in &report.files {
                println!("file {name}: build {product} {version}");
            }
            println!("devices: {} created, {} updated", report.devices_created, report.devices_updated);
            for error in &report.errors {
                eprintln!("updraft: not imported: {error}");
            }
            if report.errors.is_empty() { 0 } else { 1 }
        }
        Err(error) => {
            eprintln!("updraft: {error:#}");
            1
        }
    }
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

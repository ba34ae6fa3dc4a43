//! The `updraft` command line: `serve`, and maintenance subcommands.

#![allow(clippy::print_stdout, clippy::print_stderr, reason = "the command line talks to its user on the terminal")]

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{BlobSettings, FlagSet, ServeArgs, SettingFlags, Settings};
use crate::domain::secret;
use crate::startup::Application;
use crate::storage::Store;

#[derive(Parser)]
#[command(name = "updraft", version, about = "Fleet server for ESP32-class devices: OTA firmware, registry, rollouts, configuration, MQTT")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of its variants does not matter.
#[allow(clippy::large_enum_variant, reason = "parsed once at start; boxing the serve arguments buys nothing")]
#[derive(Subcommand)]
enum Command {
    /// Run the server: the HTTP API, the device protocols and the MQTT broker.
    Serve(ServeArgs),
    /// Print the OpenAPI document of the HTTP API.
    Openapi,
    /// Replace the stored admin API key with a new one and print it once. Works on an existing
    /// installation only: it never creates a data folder or a database.
    ResetAdminKey(SettingFlags<DatabaseFlags>),
    /// Import the registry and files of another OTA server.
    #[command(subcommand)]
    Import(ImportCommand),
}

#[derive(Subcommand)]
enum ImportCommand {
    /// Import a seed-001 "ESP32 OTA Update Server": devices.json and its firmware folder.
    /// Each file becomes a build under its file name; each device is registered (or updated)
    /// with its target_version as a pin. Run it again to apply changes; it is idempotent.
    /// Works on an existing installation only (start `updraft serve` once first): it never
    /// creates a data folder or a database.
    OtaServer(OtaServerImportArgs),
}

/// Where an existing installation keeps its database: the same settings as `serve` (flags,
/// `UPDRAFT_*` variables, `.env`, the TOML file).
struct DatabaseFlags;

impl FlagSet for DatabaseFlags {
    const NAMES: &'static [&'static str] = &["config", "data_dir", "database_url"];
}

/// Where an existing installation keeps its files, and the largest it takes.
struct FileFlags;

impl FlagSet for FileFlags {
    const NAMES: &'static [&'static str] =
        &["blob_url", "s3_endpoint", "s3_region", "s3_access_key_id", "s3_secret_access_key", "s3_allow_http", "max_upload_bytes"];
}

#[derive(clap::Args)]
struct OtaServerImportArgs {
    /// The server's devices.json (a JSON object of devices by MAC)
    #[arg(long, value_name = "FILE")]
    devices: PathBuf,
    /// The server's firmware folder (OTA_SERVER_FIRMWARE_DIR)
    #[arg(long, value_name = "DIR")]
    firmware_dir: Option<PathBuf>,
    /// Product of the imported devices and builds [default: UPDRAFT_COMPAT_DEFAULT_PRODUCT, else ota-server]
    #[arg(long, value_name = "PRODUCT")]
    product: Option<String>,
    /// Hardware of files that are not ESP32 app images (which name their chip) and of devices
    /// whose firmware is unknown
    #[arg(long, value_name = "HARDWARE", default_value = "esp32")]
    hardware: String,
    #[command(flatten)]
    data: SettingFlags<DatabaseFlags>,
    #[command(flatten)]
    files: SettingFlags<FileFlags>,
}

/// Runs the command line; returns the process exit code.
pub fn run() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => with_settings(Ok(args), serve),
        Command::Openapi => {
            let document = crate::http::openapi().to_pretty_json().expect("the OpenAPI document serializes");
            println!("{document}");
            0
        }
        Command::ResetAdminKey(data) => {
            let args = maintenance_args(&[&data.args]);
            with_settings(args, |settings| {
                existing_installation(&settings, Uses::Database)?;
                reset_admin_key(settings)
            })
        }
        Command::Import(ImportCommand::OtaServer(args)) => import_ota_server(args),
    }
}

fn with_settings(args: anyhow::Result<ServeArgs>, run: impl FnOnce(Settings) -> anyhow::Result<()>) -> i32 {
    let settings = match args.map_err(|e| e.to_string()).and_then(|args| Settings::load(&args).map_err(|e| e.to_string())) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("updraft: {error}");
            return 2;
        }
    };
    crate::telemetry::init_logging(&settings.log, settings.log_format);
    if !settings.unknown_names.is_empty() {
        tracing::warn!("unknown settings are ignored: {}", settings.unknown_names.join(", "));
    }
    match run(settings) {
        Ok(()) => 0,
        Err(error) => {
            tracing::error!("{error:#}");
            1
        }
    }
}

/// The settings of a maintenance command: those of `serve` from the environment, `.env` and
/// the TOML file, with the command's own flags on top.
fn maintenance_args(flags: &[&ServeArgs]) -> anyhow::Result<ServeArgs> {
    let mut args = ServeArgs::from_env()?;
    for given in flags {
        args.overlay(given);
    }
    Ok(args)
}

/// What a maintenance command opens.
#[derive(Clone, Copy, PartialEq)]
enum Uses {
    Database,
    DatabaseAndFiles,
}

/// Maintenance commands work on an existing installation only: a mistyped `--data-dir` must
/// not get a new, empty database (which `reset-admin-key` would then happily give a key).
/// A PostgreSQL database cannot be created by connecting; SQLite files and folders can.
fn existing_installation(settings: &Settings, uses: Uses) -> anyhow::Result<()> {
    let hint = "nothing was changed. Point --data-dir (UPDRAFT_DATA_DIR) or --database-url (UPDRAFT_DATABASE_URL) at an \
                existing installation, or start `updraft serve` once to create one";
    if let Some(file) = sqlite_file(settings.database_url.expose())
        && !file.is_file()
    {
        anyhow::bail!("no database at {}: {hint}", file.display());
    }
    if uses == Uses::DatabaseAndFiles {
        if let BlobSettings::Local { root } = &settings.blob
            && !root.is_dir()
        {
            anyhow::bail!("no blob folder at {}: nothing was changed. Check --blob-url (UPDRAFT_BLOB_URL) and --data-dir", root.display());
        }
        if let Some(folder) = settings.content.config_key_file.parent().filter(|p| !p.as_os_str().is_empty())
            && !folder.is_dir()
        {
            anyhow::bail!(
                "no folder {} for the configuration key: nothing was changed. Check UPDRAFT_CONFIG_KEY_FILE and --data-dir",
                folder.display()
            );
        }
    }
    Ok(())
}

/// The file of a `sqlite:` database URL (None for an in-memory one).
fn sqlite_file(database_url: &str) -> Option<PathBuf> {
    let rest = database_url.strip_prefix("sqlite://").or_else(|| database_url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
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
        let store = Store::connect(settings.database_url.expose(), 1).await?;
        let key = secret::generate("upd_admin_");
        store.replace_server_secret("admin_api_key_sha256", &secret::digest_hex(&key)).await?;
        store.close().await;
        println!("{key}");
        eprintln!(
            "updraft: new admin API key stored in {} (only its hash); restart running servers to use it",
            settings.database_url.redacted()
        );
        Ok(())
    })
}

fn import_ota_server(args: OtaServerImportArgs) -> i32 {
    let serve_args = maintenance_args(&[&args.data.args, &args.files.args]);
    let mut outcome = None;
    let code = with_settings(serve_args, |settings| {
        existing_installation(&settings, Uses::DatabaseAndFiles)?;
        outcome = Some(import_ota_server_with(&args, &settings));
        Ok(())
    });
    outcome.unwrap_or(code)
}

fn import_ota_server_with(args: &OtaServerImportArgs, settings: &Settings) -> i32 {
    let devices_json = match std::fs::read_to_string(&args.devices) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("updraft: cannot read {}: {e}", args.devices.display());
            return 2;
        }
    };
    let product = args.product.clone().or_else(|| settings.compat.default_product.clone()).unwrap_or_else(|| "ota-server".into());
    let outcome = runtime().and_then(|rt| {
        rt.block_on(async {
            let core = crate::services::Core::offline(settings).await?;
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

//! The `updraft` command line: `serve`, and maintenance subcommands.

#![allow(clippy::print_stdout, clippy::print_stderr, reason = "the command line talks to its user on the terminal")]

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{BlobSettings, FlagSet, ServeArgs, SettingFlags, Settings};
use crate::domain::secret;
use crate::startup::Application;
use crate::storage::Store;

mod remote;
mod simulate;

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
    /// Operator accounts, on the database (works with the server stopped; passwords are read
    /// from standard input, never from the command line).
    #[command(subcommand)]
    User(UserCommand),
    /// Named API keys, on the database (works with the server stopped).
    #[command(subcommand)]
    Key(KeyCommand),
    #[command(flatten)]
    Remote(remote::Command),
    /// Simulate a fleet of devices against a running server, over the device protocols.
    Simulate(simulate::SimulateArgs),
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user; its password is read from standard input (a prompt on a terminal).
    Add {
        username: String,
        /// admin, operator, viewer or provisioner
        #[arg(long)]
        role: String,
        #[command(flatten)]
        data: SettingFlags<DatabaseFlags>,
    },
    /// Set a user's password (read from standard input) and end its sessions.
    Passwd {
        username: String,
        #[command(flatten)]
        data: SettingFlags<DatabaseFlags>,
    },
    /// List the users.
    List {
        #[command(flatten)]
        data: SettingFlags<DatabaseFlags>,
    },
    /// Disable a user (or enable it again with --enable); disabling ends its sessions.
    Disable {
        username: String,
        /// Enable the user instead.
        #[arg(long)]
        enable: bool,
        #[command(flatten)]
        data: SettingFlags<DatabaseFlags>,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create a named API key and print it once (only its digest is stored).
    Create {
        name: String,
        /// admin, operator, viewer or provisioner
        #[arg(long)]
        role: String,
        /// Days until the key stops working [default: never]
        #[arg(long, value_name = "DAYS")]
        expires_in_days: Option<u32>,
        #[command(flatten)]
        data: SettingFlags<DatabaseFlags>,
    },
    /// Revoke a key by name or id (running servers refuse it within UPDRAFT_CREDENTIAL_CACHE_SECS).
    Revoke {
        name: String,
        #[command(flatten)]
        data: SettingFlags<DatabaseFlags>,
    },
    /// List the keys (never their secrets).
    List {
        /// Include revoked keys.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        data: SettingFlags<DatabaseFlags>,
    },
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
        Command::User(command) => user_command(command),
        Command::Key(command) => key_command(command),
        Command::Remote(command) => remote::run(command),
        Command::Simulate(args) => simulate::run(args),
    }
}

/// Runs `work` on the database of an existing installation.
fn on_database<F>(data: &SettingFlags<DatabaseFlags>, work: impl FnOnce(Store) -> F) -> i32
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let args = maintenance_args(&[&data.args]);
    with_settings(args, |settings| {
        existing_installation(&settings, Uses::Database)?;
        runtime()?.block_on(async {
            let store = Store::connect(settings.database_url.expose(), 1).await?;
            let outcome = work(store.clone()).await;
            store.close().await;
            outcome
        })
    })
}

fn role(text: &str) -> anyhow::Result<crate::domain::auth::Role> {
    crate::domain::auth::Role::parse(text).map_err(|e| anyhow::anyhow!("{e}"))
}

/// A password from standard input: one line (a prompt first on a terminal).
fn read_password(prompt: &str) -> anyhow::Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        anyhow::bail!("no password on standard input");
    }
    Ok(password)
}

fn user_command(command: UserCommand) -> i32 {
    use crate::services::accounts::users;
    match command {
        UserCommand::Add { username, role: role_name, data } => on_database(&data, |store| async move {
            let role = role(&role_name)?;
            let password = read_password(&format!("Password for {username}: "))?;
            let user = users::create_in(&store, &username, &password, role).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("user {} created with the role {}", user.username, user.role);
            Ok(())
        }),
        UserCommand::Passwd { username, data } => on_database(&data, |store| async move {
            let password = read_password(&format!("New password for {username}: "))?;
            let patch = users::UserPatch { password: Some(password), ..Default::default() };
            users::change_in(&store, &username, patch).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("password of {username} changed; its sessions are ended");
            Ok(())
        }),
        UserCommand::List { data } => on_database(&data, |store| async move {
            for user in users::list_in(&store).await.map_err(|e| anyhow::anyhow!("{e}"))? {
                let state = if user.disabled { "disabled" } else { "enabled" };
                println!("{}\t{}\t{state}", user.username, user.role);
            }
            Ok(())
        }),
        UserCommand::Disable { username, enable, data } => on_database(&data, |store| async move {
            let patch = users::UserPatch { disabled: Some(!enable), ..Default::default() };
            users::change_in(&store, &username, patch).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            if enable {
                println!("user {username} enabled");
            } else {
                println!("user {username} disabled; its sessions are ended");
            }
            Ok(())
        }),
    }
}

fn key_command(command: KeyCommand) -> i32 {
    use crate::services::accounts::keys;
    match command {
        KeyCommand::Create { name, role: role_name, expires_in_days, data } => on_database(&data, |store| async move {
            let role = role(&role_name)?;
            let expires_at = expires_in_days.map(|days| chrono::Utc::now() + chrono::Duration::days(i64::from(days)));
            let spec = keys::KeySpec { name: &name, role, expires_at, created_by: "cli", owner: None };
            let new = keys::create_in(&store, spec).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}", new.secret);
            eprintln!("updraft: key {} ({}) created with the role {}; it is shown only now", new.key.name, new.key.id, new.key.role);
            Ok(())
        }),
        KeyCommand::Revoke { name, data } => on_database(&data, |store| async move {
            let key = keys::revoke_in(&store, &name).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("key {} ({}) revoked", key.name, key.id);
            Ok(())
        }),
        KeyCommand::List { all, data } => on_database(&data, |store| async move {
            for key in keys::list_in(&store, all).await.map_err(|e| anyhow::anyhow!("{e}"))? {
                let time = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into());
                let state = if key.revoked_at.is_some() { "revoked" } else { "active" };
                println!(
                    "{}\t{}\t{}\t{state}\texpires {}\tlast used {}",
                    key.name,
                    key.id,
                    key.role,
                    time(key.expires_at),
                    time(key.last_used_at)
                );
            }
            Ok(())
        }),
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
        crate::services::accounts::keys::sync_admin_key(&store, &secret::digest(&key)).await?;
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
pub(crate) async fn shutdown_signal() {
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

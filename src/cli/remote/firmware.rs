//! `updraft firmware upload|list|show|delete`.
//!
//! An upload streams the file as the raw request body (`application/octet-stream`, metadata
//! in the query string): 64 KiB chunks are read from the file as the connection takes them,
//! so memory does not grow with the file's size, and nothing is read ahead of the network.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Subcommand;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::Failure;
use super::client::{Client, LocalReadError, decode};
use super::output::{Output, or_dash, page_footer, size};

/// How much of the file is read at a time (and so held in memory per chunk in flight).
const CHUNK_BYTES: usize = 64 * 1024;

#[derive(Subcommand)]
pub enum Command {
    /// Upload a build: streams FILE ("-": standard input) to `POST /api/v1/firmware`, with a
    /// progress bar on a terminal. Missing metadata is read from an ESP32 app image.
    Upload(UploadArgs),
    /// List builds, newest first.
    List(ListArgs),
    /// Show one build: hashes, image facts, usage.
    Show {
        /// The build's id
        id: String,
    },
    /// Delete a build and its file (refused while a release or device uses it).
    Delete {
        /// The build's id
        id: String,
    },
}

#[derive(clap::Args)]
pub struct UploadArgs {
    /// The file to upload; "-" reads standard input
    file: PathBuf,
    /// Product [default: the ESP32 image's project name]
    #[arg(long)]
    product: Option<String>,
    /// Version [default: the ESP32 image's app version]
    #[arg(long)]
    version: Option<String>,
    /// Hardware ids, comma-separated or repeated [default: the ESP32 image's chip]
    #[arg(long, value_delimiter = ',')]
    hardware: Vec<String>,
    /// Release channel [default: stable]
    #[arg(long)]
    channel: Option<String>,
    /// Release notes
    #[arg(long)]
    notes: Option<String>,
    /// Print only the build's id
    #[arg(long, short)]
    quiet: bool,
}

#[derive(clap::Args)]
pub struct ListArgs {
    #[arg(long)]
    product: Option<String>,
    #[arg(long)]
    hardware: Option<String>,
    #[arg(long)]
    version: Option<String>,
    #[arg(long)]
    channel: Option<String>,
    /// Builds per page, 1-500 [default: 50]
    #[arg(long)]
    limit: Option<u32>,
    /// Builds to skip
    #[arg(long)]
    offset: Option<u64>,
}

/// The fields of an artifact that the tables show.
#[derive(Deserialize)]
struct Artifact {
    id: String,
    product: String,
    version: String,
    hardware: Vec<String>,
    channel: String,
    #[serde(default)]
    notes: String,
    size: u64,
    sha256: String,
    created_at: String,
    image: Option<Image>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Image {
    format: String,
    chip: Option<String>,
    project_name: String,
    version: String,
    idf_ver: String,
    compile_date: String,
    compile_time: String,
    secure_version: u32,
}

#[derive(Deserialize)]
struct Usage {
    releases: u64,
    devices_running: u64,
}

#[derive(Deserialize)]
struct Page<T> {
    items: Vec<T>,
    total: u64,
    offset: u64,
}

pub async fn run(client: &Client, output: &Output, command: Command) -> Result<(), Failure> {
    match command {
        Command::Upload(args) => upload(client, output, args).await,
        Command::List(args) => {
            let query = [
                ("product", args.product),
                ("hardware", args.hardware),
                ("version", args.version),
                ("channel", args.channel),
                ("limit", args.limit.map(|n| n.to_string())),
                ("offset", args.offset.map(|n| n.to_string())),
            ];
            let query: Vec<(&str, String)> = query.into_iter().filter_map(|(name, value)| value.map(|v| (name, v))).collect();
            let page = client.get(&["api", "v1", "firmware"], &query).await?;
            output.json_line(&page);
            let page: Page<Artifact> = decode(&page)?;
            let rows = page
                .items
                .iter()
                .map(|a| {
                    let usage = a.usage.as_ref();
                    vec![
                        a.id.clone(),
                        a.product.clone(),
                        a.version.clone(),
                        a.hardware.join(","),
                        a.channel.clone(),
                        a.size.to_string(),
                        usage.map(|u| u.releases.to_string()).unwrap_or_default(),
                        usage.map(|u| u.devices_running.to_string()).unwrap_or_default(),
                        a.created_at.clone(),
                    ]
                })
                .collect();
            output.table(&["id", "product", "version", "hardware", "channel", "bytes", "releases", "running", "created"], rows);
            output.line(&page_footer(page.items.len(), page.offset, page.total, "builds"));
            Ok(())
        }
        Command::Show { id } => {
            let artifact = client.get(&["api", "v1", "firmware", &id], &[]).await?;
            output.json_line(&artifact);
            show(output, &decode(&artifact)?);
            Ok(())
        }
        Command::Delete { id } => {
            client.call(Method::DELETE, client.url(&["api", "v1", "firmware", &id], &[]), None).await?;
            output.json_line(&json!({"deleted": id}));
            output.line(&format!("deleted build {id}"));
            Ok(())
        }
    }
}

async fn upload(client: &Client, output: &Output, args: UploadArgs) -> Result<(), Failure> {
    let from_stdin = args.file.as_os_str() == "-";
    let shown_path = if from_stdin { "standard input".to_string() } else { args.file.display().to_string() };
    let cannot_read = |e: std::io::Error| Failure::Usage(format!("cannot read {shown_path}: {e}"));
    let (reader, length): (Box<dyn tokio::io::AsyncRead + Send + Unpin>, Option<u64>) = if from_stdin {
        (Box::new(tokio::io::stdin()), None)
    } else {
        let file = tokio::fs::File::open(&args.file).await.map_err(cannot_read)?;
        let metadata = file.metadata().await.map_err(cannot_read)?;
        if metadata.is_dir() {
            return Err(Failure::Usage(format!("cannot read {shown_path}: it is a folder")));
        }
        // A regular file's length is announced, so the server refuses one over its limit at
        // once; pipes and devices are sent chunked.
        (Box::new(file), metadata.is_file().then_some(metadata.len()))
    };

    let bar = progress_bar(length, output);
    let counter = bar.clone();
    let chunks = tokio_util::io::ReaderStream::with_capacity(reader, CHUNK_BYTES).map(move |chunk| match chunk {
        Ok(bytes) => {
            counter.inc(bytes.len() as u64);
            Ok(bytes)
        }
        Err(source) => Err(LocalReadError { path: shown_path.clone(), source }),
    });

    let mut query = Vec::new();
    for (name, value) in [("product", args.product), ("version", args.version), ("channel", args.channel), ("notes", args.notes)] {
        if let Some(value) = value {
            query.push((name, value));
        }
    }
    if !args.hardware.is_empty() {
        query.push(("hardware", args.hardware.join(",")));
    }
    let mut request = client
        .request_untimed(Method::POST, client.url(&["api", "v1", "firmware"], &query))
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(reqwest::Body::wrap_stream(chunks));
    if let Some(length) = length {
        request = request.header(reqwest::header::CONTENT_LENGTH, length);
    }
    let outcome = client.send(request).await;
    bar.finish_and_clear();
    let response = outcome?;
    let created = response.status() == StatusCode::CREATED;
    let artifact = client.body(response).await?;
    output.json_line(&artifact);
    let view: Artifact = decode(&artifact)?;
    if args.quiet {
        if !output.is_json() {
            println!("{}", view.id);
        }
        return Ok(());
    }
    let what = if created { "uploaded" } else { "already stored (same bytes), nothing uploaded anew:" };
    output.line(&format!("{what} {} {}", view.product, view.version));
    show(output, &view);
    Ok(())
}

/// A bar on standard error when it is a terminal (and never with `--json`): bytes sent, rate,
/// time left; a spinner for a stream of unknown length.
fn progress_bar(length: Option<u64>, output: &Output) -> ProgressBar {
    if output.is_json() || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    match length {
        Some(length) => {
            let bar = ProgressBar::new(length);
            let style = ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta} left")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        }
        None => {
            let bar = ProgressBar::new_spinner();
            let style =
                ProgressStyle::with_template("{spinner} {bytes} sent {bytes_per_sec}").unwrap_or_else(|_| ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        }
    }
}

fn show(output: &Output, artifact: &Artifact) {
    let mut fields = vec![
        ("id", artifact.id.clone()),
        ("product", artifact.product.clone()),
        ("version", artifact.version.clone()),
        ("hardware", artifact.hardware.join(", ")),
        ("channel", artifact.channel.clone()),
        ("size", size(artifact.size)),
        ("sha256", artifact.sha256.clone()),
        ("created", artifact.created_at.clone()),
    ];
    if !artifact.notes.is_empty() {
        fields.push(("notes", artifact.notes.clone()));
    }
    match &artifact.image {
        Some(image) => {
            fields.push(("image", format!("{} for {}", image.format, or_dash(image.chip.as_deref()))));
            fields.push(("image project", image.project_name.clone()));
            fields.push(("image version", image.version.clone()));
            fields.push(("image idf", image.idf_ver.clone()));
            fields.push(("image built", format!("{} {}", image.compile_date, image.compile_time)));
            fields.push(("image secure version", image.secure_version.to_string()));
        }
        None => fields.push(("image", "not an ESP32 app image".into())),
    }
    if let Some(usage) = &artifact.usage {
        fields.push(("releases", usage.releases.to_string()));
        fields.push(("devices running it", usage.devices_running.to_string()));
    }
    output.fields(&fields);
}

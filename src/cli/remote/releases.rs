//! `updraft release create|list|show`.

use clap::Subcommand;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Failure;
use super::client::{Client, decode};
use super::output::{Output, or_dash};

#[derive(Subcommand)]
pub enum Command {
    /// Create a release from uploaded builds of one product and version (at most one per
    /// hardware). Creating it ships nothing: a rollout does.
    Create(CreateArgs),
    /// List releases, newest first.
    List {
        #[arg(long)]
        product: Option<String>,
    },
    /// Show one release.
    Show {
        /// The release's id
        id: String,
    },
}

#[derive(clap::Args)]
pub struct CreateArgs {
    #[arg(long)]
    product: String,
    #[arg(long)]
    version: String,
    /// Ids of the builds (from `firmware upload`), comma-separated or repeated
    #[arg(long = "artifact", value_name = "ID", value_delimiter = ',', required = true)]
    artifacts: Vec<String>,
    /// stable (default), beta, or any channel name
    #[arg(long)]
    channel: Option<String>,
    #[arg(long)]
    notes: Option<String>,
    /// Print only the release's id
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Deserialize)]
struct Release {
    id: String,
    product: String,
    version: String,
    channel: String,
    #[serde(default)]
    notes: String,
    artifact_ids: Vec<String>,
    created_at: String,
}

#[derive(Deserialize)]
struct List {
    items: Vec<Release>,
}

pub async fn run(client: &Client, output: &Output, command: Command) -> Result<(), Failure> {
    match command {
        Command::Create(args) => {
            let mut body = json!({"product": args.product, "version": args.version, "artifact_ids": args.artifacts});
            if let Some(channel) = args.channel {
                body["channel"] = Value::String(channel);
            }
            if let Some(notes) = args.notes {
                body["notes"] = Value::String(notes);
            }
            let url = client.url(&["api", "v1", "releases"], &[]);
            let created = client.call_json(Method::POST, url, Some(&body)).await?;
            output.json_line(&created);
            let release: Release = decode(&created)?;
            if args.quiet {
                if !output.is_json() {
                    println!("{}", release.id);
                }
                return Ok(());
            }
            output.line(&format!("created release {} {}", release.product, release.version));
            show(output, &release);
            Ok(())
        }
        Command::List { product } => {
            let query: Vec<(&str, String)> = product.map(|p| ("product", p)).into_iter().collect();
            let list = client.get(&["api", "v1", "releases"], &query).await?;
            output.json_line(&list);
            let list: List = decode(&list)?;
            let rows = list
                .items
                .iter()
                .map(|r| {
                    vec![
                        r.id.clone(),
                        r.product.clone(),
                        r.version.clone(),
                        r.channel.clone(),
                        r.artifact_ids.len().to_string(),
                        r.created_at.clone(),
                    ]
                })
                .collect();
            output.table(&["id", "product", "version", "channel", "builds", "created"], rows);
            Ok(())
        }
        Command::Show { id } => {
            let release = client.get(&["api", "v1", "releases", &id], &[]).await?;
            output.json_line(&release);
            show(output, &decode(&release)?);
            Ok(())
        }
    }
}

fn show(output: &Output, release: &Release) {
    output.fields(&[
        ("id", release.id.clone()),
        ("product", release.product.clone()),
        ("version", release.version.clone()),
        ("channel", release.channel.clone()),
        ("builds", release.artifact_ids.join(", ")),
        ("notes", or_dash(Some(&release.notes))),
        ("created", release.created_at.clone()),
    ]);
}

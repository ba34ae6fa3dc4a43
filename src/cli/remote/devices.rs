//! `updraft device list|show|pin|unpin|token`.

use clap::Subcommand;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Failure;
use super::client::{Client, decode};
use super::output::{Output, or_dash, page_footer};

#[derive(Subcommand)]
pub enum Command {
    /// List devices (newest first unless --sort says otherwise).
    List(ListArgs),
    /// Show one device.
    Show {
        /// The device's id, MAC (any form) or uid
        device: String,
    },
    /// Pin a device to a version (`target_version`): it is offered that build, even an older
    /// one, whatever rollouts say.
    Pin {
        /// The device's id, MAC (any form) or uid
        device: String,
        /// The version to pin it to
        version: String,
    },
    /// Remove a device's pin: rollouts and the newest-build rule apply again.
    Unpin {
        /// The device's id, MAC (any form) or uid
        device: String,
    },
    /// Issue a new device token and print it (shown once); the old token stops working at once.
    Token {
        /// The device's id, MAC (any form) or uid
        device: String,
    },
}

#[derive(clap::Args)]
pub struct ListArgs {
    #[arg(long)]
    product: Option<String>,
    #[arg(long)]
    hardware: Option<String>,
    /// The version devices report
    #[arg(long)]
    version: Option<String>,
    #[arg(long)]
    tag: Option<String>,
    /// online or offline
    #[arg(long)]
    status: Option<String>,
    #[arg(long)]
    owner: Option<String>,
    /// Text in the name, MAC, uid, owner or id
    #[arg(long)]
    search: Option<String>,
    /// -created_at (default), created_at, -last_seen, name or mac
    #[arg(long)]
    sort: Option<String>,
    /// Devices per page, 1-500 [default: 50]
    #[arg(long)]
    limit: Option<u32>,
    /// Devices to skip
    #[arg(long)]
    offset: Option<u64>,
}

#[derive(Deserialize)]
struct Device {
    id: String,
    mac: Option<String>,
    uid: Option<String>,
    name: String,
    product: Option<String>,
    hardware: Option<String>,
    channel: String,
    version: Option<String>,
    target_version: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    owner: Option<String>,
    status: String,
    last_seen: Option<String>,
    has_token: bool,
}

#[derive(Deserialize)]
struct Page {
    items: Vec<Device>,
    total: u64,
    offset: u64,
}

#[derive(Deserialize)]
struct Token {
    device_id: String,
    token: String,
}

pub async fn run(client: &Client, output: &Output, command: Command) -> Result<(), Failure> {
    match command {
        Command::List(args) => {
            let query = [
                ("product", args.product),
                ("hardware", args.hardware),
                ("version", args.version),
                ("tag", args.tag),
                ("status", args.status),
                ("owner", args.owner),
                ("q", args.search),
                ("sort", args.sort),
                ("limit", args.limit.map(|n| n.to_string())),
                ("offset", args.offset.map(|n| n.to_string())),
            ];
            let query: Vec<(&str, String)> = query.into_iter().filter_map(|(name, value)| value.map(|v| (name, v))).collect();
            let page = client.get(&["api", "v1", "devices"], &query).await?;
            output.json_line(&page);
            let page: Page = decode(&page)?;
            let rows = page
                .items
                .iter()
                .map(|d| {
                    vec![
                        d.id.clone(),
                        or_dash(d.mac.as_deref().or(d.uid.as_deref())),
                        d.name.clone(),
                        or_dash(d.product.as_deref()),
                        or_dash(d.hardware.as_deref()),
                        or_dash(d.version.as_deref()),
                        or_dash(d.target_version.as_deref()),
                        d.status.clone(),
                        or_dash(d.last_seen.as_deref()),
                    ]
                })
                .collect();
            output.table(&["id", "mac/uid", "name", "product", "hardware", "version", "pinned", "status", "last seen"], rows);
            output.line(&page_footer(page.items.len(), page.offset, page.total, "devices"));
            Ok(())
        }
        Command::Show { device } => {
            let body = client.get(&["api", "v1", "devices", &device], &[]).await?;
            output.json_line(&body);
            show(output, &decode(&body)?);
            Ok(())
        }
        Command::Pin { device, version } => {
            let body = patch(client, &device, json!({"target_version": version})).await?;
            output.json_line(&body);
            let view: Device = decode(&body)?;
            output.line(&format!("device {} pinned to {version}", view.name));
            show(output, &view);
            Ok(())
        }
        Command::Unpin { device } => {
            let body = patch(client, &device, json!({"target_version": null})).await?;
            output.json_line(&body);
            let view: Device = decode(&body)?;
            output.line(&format!("device {} unpinned", view.name));
            show(output, &view);
            Ok(())
        }
        Command::Token { device } => {
            let url = client.url(&["api", "v1", "devices", &device, "token"], &[]);
            let body = client.call_json(Method::POST, url, None).await?;
            output.json_line(&body);
            let token: Token = decode(&body)?;
            if !output.is_json() {
                println!("{}", token.token);
                eprintln!("updraft: new token of device {}; it is shown only now, and the old one no longer works", token.device_id);
            }
            Ok(())
        }
    }
}

async fn patch(client: &Client, device: &str, body: Value) -> Result<Value, Failure> {
    client.call_json(Method::PATCH, client.url(&["api", "v1", "devices", device], &[]), Some(&body)).await
}

fn show(output: &Output, device: &Device) {
    output.fields(&[
        ("id", device.id.clone()),
        ("mac", or_dash(device.mac.as_deref())),
        ("uid", or_dash(device.uid.as_deref())),
        ("name", device.name.clone()),
        ("product", or_dash(device.product.as_deref())),
        ("hardware", or_dash(device.hardware.as_deref())),
        ("channel", device.channel.clone()),
        ("version", or_dash(device.version.as_deref())),
        ("pinned to", or_dash(device.target_version.as_deref())),
        ("tags", or_dash(Some(&device.tags.join(", ")))),
        ("owner", or_dash(device.owner.as_deref())),
        ("status", device.status.clone()),
        ("last seen", or_dash(device.last_seen.as_deref())),
        ("has token", if device.has_token { "yes" } else { "no" }.into()),
    ]);
}

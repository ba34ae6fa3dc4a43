//! `updraft events`: tails `GET /api/v1/events` (Server-Sent Events).
//!
//! Each event is printed as one line: for people, time, type, device and data; with `--json`,
//! the event's JSON as the server sent it (`{"type", "device_id", "at", "data"}`). When the
//! stream ends (the server restarted, or dropped this consumer for being too slow), the
//! command reconnects, waiting 1 s, then twice as long each time up to 30 s, and with `--json`
//! prints `{"type": "reconnected", "at"}` first: events in between are not replayed, so a
//! consumer should reload what it shows. Only a first connection that fails ends it (exit 3),
//! or a refusal (exit 1).

use std::time::Duration;

use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

use super::Failure;
use super::client::Client;
use super::output::Output;

const FIRST_RETRY: Duration = Duration::from_secs(1);
const LONGEST_RETRY: Duration = Duration::from_secs(30);

#[derive(clap::Args)]
pub struct Args {
    /// Print only events whose type starts with this (repeat for several), e.g. rollout. or
    /// device.update_status
    #[arg(long = "type", value_name = "PREFIX")]
    types: Vec<String>,
}

pub async fn run(client: &Client, output: &Output, args: Args) -> Result<(), Failure> {
    let url = client.url(&["api", "v1", "events"], &[]);
    let mut connected_before = false;
    let mut wait = FIRST_RETRY;
    loop {
        let request = client.request_untimed(Method::GET, url.clone()).header(reqwest::header::ACCEPT, "text/event-stream");
        let ended = match client.send(request).await {
            Ok(response) => {
                if connected_before {
                    eprintln!("updraft: reconnected to {url}; events while disconnected are not replayed");
                    output.json_line(&json!({"type": "reconnected", "at": now()}));
                } else {
                    eprintln!("updraft: listening to {url}");
                }
                connected_before = true;
                wait = FIRST_RETRY;
                follow(response, output, &args.types).await
            }
            // The stream worked before: the server is probably restarting; keep trying.
            Err(Failure::Unreachable(message)) if connected_before => message,
            Err(Failure::Refused { status, code, .. }) if connected_before && status >= 500 => {
                format!("the server answered {status} {code}")
            }
            Err(failure) => return Err(failure),
        };
        eprintln!("updraft: the event stream ended ({ended}); reconnecting in {}s", wait.as_secs());
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(LONGEST_RETRY);
    }
}

/// Prints the events of one connection until it ends; returns why it ended.
async fn follow(response: reqwest::Response, output: &Output, types: &[String]) -> String {
    let mut body = response.bytes_stream();
    let mut parser = Parser::default();
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) => return format!("{error}"),
        };
        for event in parser.push(&chunk) {
            if event.name == "dropped" {
                print_event(output, &event);
                return format!("the server dropped this consumer as too slow: {}", event.data);
            }
            if types.is_empty() || types.iter().any(|prefix| event.name.starts_with(prefix.as_str())) {
                print_event(output, &event);
            }
        }
    }
    "the server closed it".into()
}

fn print_event(output: &Output, event: &SseEvent) {
    let mut data: Value = serde_json::from_str(&event.data).unwrap_or_else(|_| json!({"data": event.data}));
    if let Some(object) = data.as_object_mut() {
        object.entry("type").or_insert_with(|| json!(event.name));
    }
    if output.is_json() {
        output.json_line(&data);
        return;
    }
    let text = |name: &str| data.get(name).and_then(Value::as_str).unwrap_or("-").to_string();
    let details = data.get("data").map(Value::to_string).unwrap_or_else(|| {
        // Events without the usual envelope (`dropped`): everything but the type.
        let mut rest = data.clone();
        if let Some(object) = rest.as_object_mut() {
            object.remove("type");
        }
        rest.to_string()
    });
    output.line(&format!("{} {} {} {}", text("at"), text("type"), text("device_id"), details));
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// One Server-Sent Event: its name (`message` when the server gave none) and data.
#[derive(Debug, PartialEq)]
struct SseEvent {
    name: String,
    data: String,
}

/// An incremental `text/event-stream` parser (the WHATWG rules this server's stream needs:
/// `event:` and `data:` fields, comments, CRLF or LF line ends, a blank line ends an event).
#[derive(Default)]
struct Parser {
    line: Vec<u8>,
    name: Option<String>,
    data: Option<String>,
}

impl Parser {
    /// Feeds bytes; returns the events they complete.
    fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for &byte in bytes {
            if byte != b'\n' {
                self.line.push(byte);
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line);
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    events.push(SseEvent { name: self.name.take().unwrap_or_else(|| "message".into()), data });
                }
                self.name = None;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (line.as_ref(), ""),
            };
            match field {
                "event" => self.name = Some(value.to_string()),
                "data" => match &mut self.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => self.data = Some(value.to_string()),
                },
                _ => {}
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_parsed_across_chunks_with_comments_and_crlf() {
        let mut parser = Parser::default();
        assert!(parser.push(b":keep-alive\n\nevent: device.created\r\ndata: {\"a\":").is_empty());
        let events = parser.push(b"1}\r\n\r\ndata: x\ndata: y\n\n");
        assert_eq!(
            events,
            vec![
                SseEvent { name: "device.created".into(), data: "{\"a\":1}".into() },
                SseEvent { name: "message".into(), data: "x\ny".into() }
            ]
        );
    }

    #[test]
    fn a_blank_line_without_data_dispatches_nothing() {
        let mut parser = Parser::default();
        assert!(parser.push(b"event: ping\n\n\n").is_empty());
        assert_eq!(parser.push(b"data: z\n\n"), vec![SseEvent { name: "message".into(), data: "z".into() }]);
    }
}

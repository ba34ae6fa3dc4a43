//! Logging (human-readable or JSON) and the Prometheus metrics recorder.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{FmtSpan, Writer};

use crate::config::LogFormat;

/// Directives added to every log filter that does not name their target itself. rmqtt logs
/// each refused MQTT connection at INFO as a debug dump that holds the username, which may be
/// a device token; Updraft logs its own line instead (`mqtt::broker`). rmqtt's warnings and
/// errors still show.
const QUIET_TARGETS: &[(&str, &str)] = &[("rmqtt", "rmqtt=warn")];

/// The log filter of `UPDRAFT_LOG` (`info` if it does not parse), with [`QUIET_TARGETS`].
pub fn log_filter(filter: &str) -> EnvFilter {
    let mut env_filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    for (target, directive) in QUIET_TARGETS {
        if !filter.contains(target) {
            env_filter = env_filter.add_directive(directive.parse().expect("a static directive"));
        }
    }
    env_filter
}

/// Installs the global log subscriber. Call once, from `main`.
pub fn init_logging(filter: &str, format: LogFormat) {
    let filter = log_filter(filter);
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_span_events(FmtSpan::NONE)
        .with_writer(std::io::stderr);
    match format {
        // Field values come from requests (a MAC, a name, an error message quoting the input):
        // in text logs their control characters are escaped, so that no input can forge a line.
        LogFormat::Text => builder.fmt_fields(EscapedFields).init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
    }
}

/// The text log's field formatter: like tracing-subscriber's default (`name=value`, the
/// message bare), with every control character, line separator and bidirectional override in a
/// value escaped (`\n`, `\u{0}`, ...). JSON logs need nothing: JSON escapes them itself.
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> std::fmt::Result {
        let mut visitor = EscapingVisitor { writer, first: true, result: Ok(()) };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: std::fmt::Result,
}

impl EscapingVisitor<'_> {
    fn write(&mut self, field: &Field, value: &str) {
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        let separator = if std::mem::take(&mut self.first) { "" } else { " " };
        self.result = if field.name() == "message" {
            write!(self.writer, "{separator}{}", Escaped(value))
        } else {
            write!(self.writer, "{separator}{}={}", field.name(), Escaped(value))
        };
    }
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write(field, value);
        } else {
            self.write(field, &format!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.write(field, &format!("{value:?}"));
    }
}

/// Text with the characters that could forge or hide log lines escaped.
pub struct Escaped<'a>(pub &'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for c in self.0.chars() {
            let dangerous = c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
            if dangerous {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// The process-wide metrics recorder (installed on first use; tests run several servers in
/// one process and share it).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full("updraft_http_request_duration_seconds".into()), crate::http::LATENCY_BUCKETS)
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (e.g. by a test harness); ours still renders.
            let _ = metrics::set_global_recorder(recorder);
            describe_metrics();
            spawn_upkeep(handle.clone(), UPKEEP_EVERY);
            handle
        })
        .clone()
}

/// How often the recorder folds recorded histogram samples into its buckets. The recorder keeps
/// every sample until then (or until a scrape renders them): without this, a server nobody
/// scrapes grows by each request's latency sample, for ever.
/// Every second: under a flood of requests the samples of 5 s took several MiB (issue 18).
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// Runs the recorder's upkeep every `every`, on a thread of its own for the life of the process
/// (the recorder is process-wide, and outlives any one runtime).
fn spawn_upkeep(handle: PrometheusHandle, every: Duration) {
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            #[allow(clippy::disallowed_methods, reason = "a dedicated thread, not an async worker")]
            loop {
                std::thread::sleep(every);
                handle.run_upkeep();
            }
        })
        .expect("the metrics upkeep thread starts");
}

fn describe_metrics() {
    metrics::describe_counter!("updraft_http_requests_total", "HTTP requests by route template, method and status");
    metrics::describe_histogram!("updraft_http_request_duration_seconds", metrics::Unit::Seconds, "HTTP request latency by route template");
    metrics::describe_counter!("updraft_upload_bytes_total", metrics::Unit::Bytes, "Bytes of firmware uploads received and stored");
    metrics::describe_counter!("updraft_download_bytes_total", metrics::Unit::Bytes, "Bytes of firmware sent to clients");
    metrics::describe_gauge!("updraft_artifacts", "Stored firmware artifacts");
    metrics::describe_gauge!("updraft_artifact_bytes", metrics::Unit::Bytes, "Total size of stored firmware artifacts");
    metrics::describe_gauge!("updraft_http_connections", "Open HTTP connections");
    metrics::describe_counter!(
        "updraft_http_connections_closed_total",
        "HTTP connections closed by the server: idle ones shed to make room (shed), silent ones (no_request)"
    );
    metrics::describe_gauge!(
        "updraft_fleet_index_devices",
        "Devices in this replica's in-memory fleet index (check-ins served without a database read)"
    );
    metrics::describe_counter!("updraft_orphan_blobs_deleted_total", "Stored blobs deleted because no record pointed at them");
    metrics::describe_counter!("updraft_orphan_blob_scans_total", "Completed runs of the orphan-blob collector");
    metrics::describe_counter!("updraft_orphan_blob_scan_failures_total", "Runs of the orphan-blob collector that failed");
    metrics::describe_gauge!("updraft_uptime_seconds", metrics::Unit::Seconds, "Seconds since the server started");
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use metrics::{Key, Metadata, Recorder};
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Records "LEVEL target" of every event that passes the filter.
    struct Capture(Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            let meta = event.metadata();
            self.0.lock().unwrap().push(format!("{} {}", meta.level(), meta.target()));
        }
    }

    fn passing(filter: &str) -> Vec<String> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(log_filter(filter)).with(Capture(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "rmqtt::v3", "Connection Refused, handshake");
            tracing::info!(target: "rmqtt_net::stream", "details");
            tracing::warn!(target: "rmqtt::server", "a warning");
            tracing::info!(target: "updraft::mqtt::broker", "MQTT connection refused");
        });
        seen.lock().unwrap().clone()
    }

    #[test]
    fn rmqtt_s_info_lines_are_quiet_unless_the_filter_names_rmqtt() {
        assert_eq!(passing("info"), ["WARN rmqtt::server", "INFO updraft::mqtt::broker"]);
        assert_eq!(passing("debug"), ["WARN rmqtt::server", "INFO updraft::mqtt::broker"]);
        assert_eq!(passing("info,rmqtt=info").len(), 4, "a filter that names rmqtt is taken as it is");
    }

    /// Resident memory of this process, in bytes (Linux).
    fn rss_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
        let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("resident pages");
        pages * 4096
    }

    /// Everything logged in `log` with the text format, as written.
    fn text_log(log: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).fmt_fields(EscapedFields).finish();
        tracing::subscriber::with_default(subscriber, log);
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn input_in_log_fields_cannot_forge_a_line() {
        let forged = "aa:bb\n2026-12-06T00:00:00Z  INFO updraft: admin logged in\u{0}\u{1b}[31m\u{202e}";
        let output = text_log(|| {
            tracing::info!(mac = %forged, name = ?forged, other = forged, "device {forged} refused");
            let span = tracing::info_span!("http", path = %forged);
            span.in_scope(|| tracing::warn!("inside"));
        });
        assert_eq!(output.lines().count(), 2, "{output}");
        assert!(!output.contains('\0') && !output.contains('\u{1b}') && !output.contains('\u{202e}'), "{output:?}");
        assert!(output.contains("mac=aa:bb\\n2026-12-06T00:00:00Z  INFO updraft: admin logged in\\u{0}\\u{1b}[31m\\u{202e}"), "{output}");
        assert!(output.contains("device aa:bb\\n2026"), "the message is escaped too: {output}");
        assert!(output.contains("path=aa:bb\\n"), "span fields too: {output}");
    }

    #[test]
    #[allow(clippy::disallowed_methods, reason = "a plain test thread, not an async worker")]
    fn histogram_samples_do_not_pile_up_when_nobody_scrapes() {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full("latency".into()), crate::http::LATENCY_BUCKETS)
            .unwrap()
            .build_recorder();
        spawn_upkeep(recorder.handle(), Duration::from_millis(20));
        let metadata = Metadata::new(module_path!(), metrics::Level::INFO, None);
        let histogram = recorder.register_histogram(&Key::from_name("latency"), &metadata);
        let before = rss_bytes();
        // 4 million samples: 32 MiB if the recorder kept them all, as it did without upkeep.
        for _ in 0..40 {
            for i in 0..100_000 {
                histogram.record(f64::from(i % 1000) / 1e5);
            }
            std::thread::sleep(Duration::from_millis(40));
        }
        std::thread::sleep(Duration::from_millis(100));
        let grown = rss_bytes().saturating_sub(before);
        assert!(grown < 8 << 20, "the recorder grew by {} KiB for 4 million samples nobody scraped", grown >> 10);
        // The samples are counted, not dropped. (metrics-util's lock-free bucket can lose a few
        // samples pushed while it is being drained, about 1 % in this tight loop; real request
        // rates do not come close.)
        let rendered = recorder.handle().render();
        let count: f64 = rendered
            .lines()
            .find_map(|line| line.strip_prefix("latency_count").and_then(|rest| rest.split_whitespace().last()?.parse().ok()))
            .expect("a count line");
        assert!((3_900_000.0..=4_000_000.0).contains(&count), "counted {count} of 4000000 samples");
    }
}

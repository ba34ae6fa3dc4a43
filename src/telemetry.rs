//! Logging (human-readable or JSON) and the Prometheus metrics recorder.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

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
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
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
            handle
        })
        .clone()
}

fn describe_metrics() {
    metrics::describe_counter!("updraft_http_requests_total", "HTTP requests by route template, method and status");
    metrics::describe_histogram!("updraft_http_request_duration_seconds", metrics::Unit::Seconds, "HTTP request latency by route template");
    metrics::describe_counter!("updraft_upload_bytes_total", metrics::Unit::Bytes, "Bytes of firmware uploads received and stored");
    metrics::describe_counter!("updraft_download_bytes_total", metrics::Unit::Bytes, "Bytes of firmware sent to clients");
    metrics::describe_gauge!("updraft_artifacts", "Stored firmware artifacts");
    metrics::describe_gauge!("updraft_artifact_bytes", metrics::Unit::Bytes, "Total size of stored firmware artifacts");
    metrics::describe_gauge!("updraft_http_connections", "Open HTTP connections");
    metrics::describe_gauge!(
        "updraft_fleet_index_devices",
        "Devices in this replica's in-memory fleet index (check-ins served without a database read)"
    );
    metrics::describe_gauge!("updraft_uptime_seconds", metrics::Unit::Seconds, "Seconds since the server started");
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

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
}

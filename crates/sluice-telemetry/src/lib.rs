//! Telemetry every sluice service plugs into: logs, traces, metrics, health.
//!
//! - [`setup_telemetry`]: one call per process. `tracing` to stderr (JSON when asked; coloured
//!   only when stderr is a terminal and `NO_COLOR` is unset, plain in a file or pipe), a
//!   W3C trace-context propagator, and an OpenTelemetry tracer whose OTLP exporter is switched on
//!   by the standard `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//!   variables (and off by `OTEL_SDK_DISABLED=true`). With [`Spans::Always`] (the poller, the
//!   CLI) spans get real trace ids even without an exporter, so trace context still travels
//!   from the poller to the sinks; with [`Spans::WhenExported`] (a sink) they are made only
//!   when exported.
//! - [`propagation`]: trace context in and out of string headers (Kafka headers).
//! - [`ops`]: the `/healthz`, `/readyz` and Prometheus `/metrics` endpoints and the readiness
//!   state behind them.
//!
//! Log-message style for the whole project: lowercase, no trailing period, the error in an
//! `error` field; never secrets or raw personal data (values of rows), only keys' counts, names
//! of models, destinations, topics and offsets.

pub mod ops;
pub mod propagation;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Keeps the tracer provider alive; flushes pending spans when dropped.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("telemetry shutdown failed: {error}");
        }
    }
}

/// Whether a process makes OpenTelemetry spans when it exports none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spans {
    /// Always: the process writes its spans' trace context into the records it produces (the
    /// poller, the CLI), which needs real trace ids whether or not it exports them.
    Always,
    /// Only when an OTLP exporter is configured: the process passes no context of its own on
    /// (a sink: dead letters and side records keep the original record's), and its spans per
    /// record cost about 30% of its throughput at 100k records/s (`ops/bench-sink.sh`, logs
    /// at `info`) for nothing when no one receives them.
    WhenExported,
}

/// What the installed subscriber decided ([`Spans::made`]); `true` until [`setup_telemetry`]
/// installs one, so code running without it (unit tests) behaves as before.
static SPANS_MADE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Whether this process makes OpenTelemetry spans: when it does not, reading a record's trace
/// context to parent a span on it is wasted work (a sink skips it per record).
pub fn spans_made() -> bool {
    SPANS_MADE.load(std::sync::atomic::Ordering::Relaxed)
}

impl Spans {
    /// Whether OpenTelemetry spans are made, given whether they are exported.
    fn made(self, exporting: bool) -> bool {
        exporting || self == Spans::Always
    }
}

fn otlp_requested() -> bool {
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    let endpoint = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    endpoint && !disabled
}

/// Whether log lines carry ANSI colour: only when stderr, where they go, is a terminal and
/// `NO_COLOR` is not set. A file, a pipe or a log shipper gets plain text (escape codes there
/// are noise every grep and every log index has to strip).
fn colour_logs() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Install logging, tracing and the propagator for this process. `service` becomes the
/// OpenTelemetry `service.name` (unless `OTEL_SERVICE_NAME` overrides it). Log filter from
/// `RUST_LOG` (default `info`). Safe to call more than once (tests): later calls only return a
/// guard.
pub fn setup_telemetry(service: &str, json_logs: bool, spans: Spans) -> TelemetryGuard {
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let service_name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_string());
    let resource = Resource::builder()
        .with_service_name(service_name)
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    let mut exporter_error = None;
    let mut exporting = false;
    if otlp_requested() {
        match opentelemetry_otlp::SpanExporter::builder().with_http().build() {
            Ok(exporter) => {
                builder = builder.with_batch_exporter(exporter);
                exporting = true;
            }
            Err(error) => exporter_error = Some(error.to_string()),
        }
    }
    let provider = builder.build();
    let tracer = provider.tracer("sluice");
    opentelemetry::global::set_tracer_provider(provider.clone());

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let made = spans.made(exporting);
    let otel = made.then(|| tracing_opentelemetry::layer().with_tracer(tracer));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let ansi = colour_logs();
    let installed = if json_logs {
        registry.with(tracing_subscriber::fmt::layer().json().with_ansi(false).with_writer(std::io::stderr)).try_init()
    } else {
        registry.with(tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr)).try_init()
    };
    if installed.is_ok() {
        SPANS_MADE.store(made, std::sync::atomic::Ordering::Relaxed);
        if let Some(error) = exporter_error {
            tracing::warn!(%error, "otlp exporter not started; spans are not exported");
        }
    }
    TelemetryGuard { provider }
}

#[cfg(test)]
mod tests {
    use super::Spans;

    #[test]
    fn a_sink_makes_spans_only_to_export_them_and_the_poller_always() {
        assert!(!Spans::WhenExported.made(false), "a sink without an exporter makes no spans");
        assert!(Spans::WhenExported.made(true));
        assert!(Spans::Always.made(false), "the poller's records carry a trace context without an exporter");
        assert!(Spans::Always.made(true));
    }
}

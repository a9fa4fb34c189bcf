//! The operations endpoints every service serves, and the readiness state behind them.
//!
//! - `/healthz`: 200 while the process runs (liveness; a restart will not fix anything else).
//! - `/readyz`: 200 once the service is doing its job, 503 with the reason otherwise (not yet
//!   connected, or stopped on a fatal error such as a rejected credential). Orchestrators take
//!   a not-ready sink out of rotation and alert on it.
//! - `/metrics`: Prometheus text format of every `metrics` counter, gauge and histogram.
//!   Histograms are exported as Prometheus histograms (`_bucket`, `_sum`, `_count`), never as
//!   summaries, so replicas aggregate and `histogram_quantile` works ([`LATENCY_BUCKETS`],
//!   [`DURATION_BUCKETS`]). Every metric is listed in `docs/metrics.md`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// Readiness of a service, shared between its work loop and the `/readyz` endpoint.
///
/// Two conditions, kept apart so neither undoes the other: the service's own state (starting,
/// running, stopped on a fatal error: [`Health::set_ready`], [`Health::set_not_ready`]) and a
/// dependency gone away mid-run ([`Health::set_away`], [`Health::set_back`]), which comes and
/// goes by itself. Ready only when both are clear; a dependency coming back never hides a
/// fatal stop, and a fatal stop is named first.
#[derive(Debug)]
pub struct Health {
    /// `None` when ready, else why not.
    not_ready: Mutex<Option<String>>,
    /// `None` unless a dependency went away mid-run; why, then.
    away: Mutex<Option<String>>,
}

impl Health {
    /// A service starts not ready until it says otherwise.
    pub fn new() -> Arc<Health> {
        Arc::new(Health { not_ready: Mutex::new(Some("starting".into())), away: Mutex::new(None) })
    }

    /// The service itself is doing its job (ready unless a dependency is away).
    pub fn set_ready(&self) {
        *self.not_ready.lock().expect("health lock") = None;
    }

    /// The service itself is not doing its job, and why.
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self.not_ready.lock().expect("health lock") = Some(reason.into());
    }

    /// A dependency the service cannot work without went away mid-run (e.g. every Kafka
    /// broker), and why: not ready until [`Health::set_back`].
    pub fn set_away(&self, reason: impl Into<String>) {
        *self.away.lock().expect("health lock") = Some(reason.into());
    }

    /// The dependency of [`Health::set_away`] answers again.
    pub fn set_back(&self) {
        *self.away.lock().expect("health lock") = None;
    }

    /// `None` when ready, else the reason (the service's own first).
    pub fn not_ready_reason(&self) -> Option<String> {
        let own = self.not_ready.lock().expect("health lock").clone();
        own.or_else(|| self.away.lock().expect("health lock").clone())
    }
}

/// The histogram of end-to-end latency (warehouse change observed → destination
/// acknowledged, [`END_TO_END_METRIC`]). Fine between 50 ms and 5 s, where a near-real-time
/// suppression's target lies (p99 ≤ 2 s), coarse up to an hour for batch schedules.
pub const LATENCY_BUCKETS: [f64; 16] = [0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// Every other `*_seconds` histogram (requests, transactions, runs): 5 ms to an hour.
pub const DURATION_BUCKETS: [f64; 16] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// The sink's end-to-end latency histogram, which gets [`LATENCY_BUCKETS`].
pub const END_TO_END_METRIC: &str = "sluice_sink_end_to_end_seconds";

/// The process-wide Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // A full-name matcher wins over a suffix matcher (the exporter orders them that way).
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(END_TO_END_METRIC.into()), &LATENCY_BUCKETS)
            .and_then(|builder| builder.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &DURATION_BUCKETS))
            .expect("bucket lists are not empty")
            .install_recorder()
            .expect("no other metrics recorder is installed")
    })
}

async fn readyz(State(health): State<Arc<Health>>) -> (StatusCode, String) {
    match health.not_ready_reason() {
        None => (StatusCode::OK, "ready\n".into()),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
    }
}

/// Whether `at_ms` is later than every time given before for the timestamp gauge `gauge` of
/// `label_value`, remembering it if so. A timestamp gauge set only then never moves backwards:
/// an older time reported after a newer one (a retry's seed, a late record) must not make a
/// fresh model or destination look stale. (The caller sets the gauge, naming it literally, so
/// the metrics reference test finds every metric the code records.)
pub fn is_newest(gauge: &'static str, label_value: &str, at_ms: i64) -> bool {
    static NEWEST: OnceLock<Mutex<HashMap<(&'static str, String), i64>>> = OnceLock::new();
    let mut newest = NEWEST.get_or_init(Default::default).lock().expect("timestamp gauges lock");
    let entry = newest.entry((gauge, label_value.to_string())).or_insert(i64::MIN);
    let later = at_ms > *entry;
    if later {
        *entry = at_ms;
    }
    later
}

/// Serve the ops endpoints on `addr` until `shutdown`; returns the bound address (port 0 picks
/// a free one).
pub async fn serve(addr: SocketAddr, health: Arc<Health>, shutdown: CancellationToken) -> std::io::Result<SocketAddr> {
    let handle = prometheus();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(move || async move { handle.render() }))
        .with_state(health);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        if let Err(error) = served {
            tracing::error!(%error, "ops endpoint stopped");
        }
    });
    tracing::info!(addr = %bound, "serving /healthz, /readyz and /metrics");
    Ok(bound)
}

/// What every service starts with: a shutdown token cancelled on SIGTERM or SIGINT, the
/// service's health, and the ops endpoints served on `addr` until shutdown. `None`, logged,
/// when the endpoints cannot be served: a service that cannot be observed does not start.
pub async fn start(addr: SocketAddr) -> Option<(CancellationToken, Arc<Health>)> {
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    let health = Health::new();
    if let Err(error) = serve(addr, Arc::clone(&health), shutdown.clone()).await {
        tracing::error!(%error, %addr, "cannot serve ops endpoints");
        return None;
    }
    Some((shutdown, health))
}

/// Cancel `token` on SIGTERM or SIGINT, so services drain and commit before exiting.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = terminate.recv() => tracing::info!("sigterm received, shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("sigint received, shutting down"),
        }
        token.cancel();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dependency_away_and_back_neither_hides_nor_clears_the_services_own_state() {
        let health = Health::new();
        health.set_away("kafka away");
        assert_eq!(health.not_ready_reason().as_deref(), Some("starting"), "the service's own reason first");
        health.set_ready();
        assert_eq!(health.not_ready_reason().as_deref(), Some("kafka away"));
        health.set_back();
        assert_eq!(health.not_ready_reason(), None);
        health.set_not_ready("model m stopped");
        health.set_away("kafka away");
        health.set_back();
        assert_eq!(health.not_ready_reason().as_deref(), Some("model m stopped"), "a recovery never clears a fatal stop");
    }

    #[test]
    fn a_timestamp_gauge_moves_only_forwards_per_gauge_and_label() {
        assert!(is_newest("sluice_test_timestamp_seconds", "a", 5));
        assert!(!is_newest("sluice_test_timestamp_seconds", "a", 4), "older");
        assert!(!is_newest("sluice_test_timestamp_seconds", "a", 5), "the same time again");
        assert!(is_newest("sluice_test_timestamp_seconds", "b", 1), "each label value has its own");
        assert!(is_newest("sluice_other_timestamp_seconds", "a", 1), "each gauge has its own");
        assert!(is_newest("sluice_test_timestamp_seconds", "a", 6));
    }
}

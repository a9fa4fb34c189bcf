//! The poller's sync-health events: what an on-call engineer asks of a model — when did it last
//! succeed, how do its runs end, how often should it run, how much did its last run change.
//! One function per event, the only place that counts it; the modes call them in one line each.
//!
//! Guarantees of the metrics (every one is listed in `docs/metrics.md`):
//! - `sluice_poller_last_success_timestamp_seconds{model}` is a *timestamp*, not an age: the
//!   Unix time the last run finished without error, including runs that found nothing to emit,
//!   so `time() - x` is the model's staleness and stays right while the model is idle or the
//!   poller hangs. It is seeded when a model opens from the last committed transaction
//!   (`committed_at_ms`), so a restart neither hides nor resets staleness, and it never moves
//!   backwards.
//! - `sluice_poller_runs_total{model,outcome}` counts every run's end once: `success`, or the
//!   class of the error that ended its loop's incarnation (`retryable_error`, `fatal_error`).
//! - `sluice_poller_model_stopped{model}`: 1 once a fatal error stopped the model (it runs no
//!   more until the poller restarts), 0 from the time it opened: the poller's `sluice_sink_stopped`.
//! - `sluice_poller_schedule_interval_seconds{model}`: how often runs are due (the interval, or
//!   the gap between a cron expression's next two times), what the freshness alert's threshold is
//!   a multiple of.
//! - `sluice_poller_model_rows{model}` and `sluice_poller_run_volatility_ratio{model}`: the rows
//!   of the model and (inserts + deletes) / rows tracked before the run, for modes that read the
//!   whole model (`diff`, `warehouse_diff`); set once the run passed its gates. Not set for
//!   cursor models (a cursor never sees the whole model) nor by a first snapshot (nothing was
//!   tracked before it, so there is no size to swing from).
//!
//! Labels are model names from the config only: bounded, never row values.

use std::time::{Duration, Instant};

use crate::clock::now_ms;
use crate::gates::RunCounts;

/// How a run ended, the `outcome` label of `sluice_poller_runs_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Finished without error (whether or not it emitted anything).
    Success,
    /// Ended by an error the loop retries from the committed position.
    RetryableError,
    /// Ended by an error that stops the model.
    FatalError,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::RetryableError => "retryable_error",
            Outcome::FatalError => "fatal_error",
        }
    }
}

/// A run of `model` finished without error: its freshness clock moves to now.
pub fn run_succeeded(model: &str) {
    advance_last_success(model, now_ms());
    count_run(model, Outcome::Success);
    tracing::debug!(model = %model, "run succeeded");
}

/// A run of `model` ended with an error (the model loop logs it with its delay or stops).
pub fn run_failed(model: &str, outcome: Outcome) {
    count_run(model, outcome);
    if outcome == Outcome::FatalError {
        metrics::gauge!("sluice_poller_model_stopped", "model" => model.to_string()).set(1.0);
    }
}

/// `model` opened with `committed_at_ms` as its last committed transaction (0: never): the
/// freshness clock starts there rather than being absent until the first run succeeds.
pub fn model_opened(model: &str, committed_at_ms: i64) {
    metrics::gauge!("sluice_poller_model_stopped", "model" => model.to_string()).set(0.0);
    if committed_at_ms > 0 {
        advance_last_success(model, committed_at_ms);
    }
}

/// `model`'s runs are due every `interval`.
pub fn scheduled(model: &str, interval: Duration) {
    metrics::gauge!("sluice_poller_schedule_interval_seconds", "model" => model.to_string()).set(interval.as_secs_f64());
}

/// A whole-model run of `model` passed its gates with `counts`; `first_snapshot` when nothing
/// was tracked before it.
pub fn run_changes(model: &str, counts: RunCounts, first_snapshot: bool) {
    metrics::gauge!("sluice_poller_model_rows", "model" => model.to_string()).set(counts.rows as f64);
    if let Some(ratio) = volatility(counts, first_snapshot) {
        metrics::gauge!("sluice_poller_run_volatility_ratio", "model" => model.to_string()).set(ratio);
    }
}

/// A whole-model run of `model` in `mode` committed `events` with `counts`: its duration since
/// `started` into `sluice_poller_run_seconds{model,mode}`, and one info line, `what`, with the
/// counts (`"diff run committed"` is what the runbooks and the crash tests look for).
pub fn run_committed(model: &str, mode: &'static str, what: &str, run_id: &str, counts: RunCounts, events: u64, started: Instant) {
    metrics::histogram!("sluice_poller_run_seconds", "model" => model.to_string(), "mode" => mode).record(started.elapsed().as_secs_f64());
    tracing::info!(
        model = %model,
        run_id = %run_id,
        rows = counts.rows,
        inserts = counts.inserts,
        updates = counts.updates,
        deletes = counts.deletes,
        events,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "{what}"
    );
}

/// (inserts + deletes) / rows tracked before the run; `None` without a size to compare with.
fn volatility(counts: RunCounts, first_snapshot: bool) -> Option<f64> {
    (!first_snapshot && counts.tracked > 0).then(|| (counts.inserts + counts.deletes) as f64 / counts.tracked as f64)
}

fn count_run(model: &str, outcome: Outcome) {
    metrics::counter!("sluice_poller_runs_total", "model" => model.to_string(), "outcome" => outcome.label()).increment(1);
}

/// Move the freshness gauge of `model` to `at_ms`, never backwards: a seed from an older
/// committed transaction after a retry must not make a fresh model look stale.
fn advance_last_success(model: &str, at_ms: i64) {
    if sluice_telemetry::ops::is_newest("sluice_poller_last_success_timestamp_seconds", model, at_ms) {
        metrics::gauge!("sluice_poller_last_success_timestamp_seconds", "model" => model.to_string()).set(at_ms as f64 / 1000.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volatility_is_adds_and_removes_over_the_size_before_the_run() {
        let counts = RunCounts { rows: 110, tracked: 100, inserts: 20, updates: 50, deletes: 10 };
        assert_eq!(volatility(counts, false), Some(0.3), "updates change no membership");
        assert_eq!(volatility(counts, true), None, "a first snapshot has no size to swing from");
        assert_eq!(volatility(RunCounts { tracked: 0, ..counts }, false), None);
    }
}

//! The loop of one model: open it (contract check, fencing, committed state), read what its
//! stored position means, run its mode, and start over from the committed state after a
//! retryable error, with exponential backoff (full jitter, capped at 30 s).
//!
//! Guarantee: every incarnation starts from what Kafka committed (after fencing older
//! instances), so a retry repeats or skips nothing. Fatal errors (a gate refusal, a contract
//! drift, an unusable stored position, a fenced producer, a bad model) stop the model and are
//! returned; they are counted in `sluice_poller_errors_total{model,class}` like retries.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use sluice_core::config::{Config, ModelConfig};
use sluice_warehouse::{SnapshotStore, Warehouse};
use tokio_util::sync::CancellationToken;

use crate::audit::RunEnd;
use crate::context::{ModelContext, ModelOptions};
use crate::error::ModelError;
use crate::position::Position;
use crate::snapshot::{run_first_snapshot, MetricProgress};
use crate::telemetry::{self, Outcome};

/// Poll one model until shutdown or a fatal error.
pub async fn run_model<W: Warehouse + SnapshotStore>(
    config: &Config,
    warehouse: &W,
    name: &str,
    options: ModelOptions,
    shutdown: CancellationToken,
) -> Result<(), ModelError> {
    let model = config.model(name).expect("model names come from the config");
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        match poll_model(config, warehouse, model, &options, &shutdown).await {
            Ok(()) => return Ok(()),
            Err(error) if error.is_retryable() && !shutdown.is_cancelled() => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                metrics::counter!("sluice_poller_errors_total", "model" => name.to_string(), "class" => "retryable").increment(1);
                telemetry::run_failed(name, Outcome::RetryableError);
                run_ended(&options, &error);
                tracing::warn!(model = %name, error = %error, delay_ms = delay.as_millis() as u64, "poll failed, retrying from the committed position");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
            Err(error) => {
                if let ModelError::Gate(refused) = &error {
                    refused.record(name);
                }
                metrics::counter!("sluice_poller_errors_total", "model" => name.to_string(), "class" => "fatal").increment(1);
                telemetry::run_failed(name, Outcome::FatalError);
                run_ended(&options, &error);
                return Err(error);
            }
        }
    }
}

/// One incarnation of the loop: fence, recover state, then poll in the model's mode. Any error
/// returns; the caller decides whether to start over (which re-reads the committed state, so
/// nothing is repeated or skipped). The mode takes its `Confirmation` from `options` afresh, so
/// an operator's `--confirm-large-change` is spent at most once per incarnation.
async fn poll_model<W: Warehouse + SnapshotStore>(
    config: &Config,
    warehouse: &W,
    model: &ModelConfig,
    options: &ModelOptions,
    shutdown: &CancellationToken,
) -> Result<(), ModelError> {
    let name = model.name.get_ref().as_str();
    let mut ctx = ModelContext::open(config, warehouse, model).await?;
    if let Some(run) = &options.run {
        run.opened();
        ctx.committer.record_runs(std::sync::Arc::clone(run));
    }
    telemetry::model_opened(name, ctx.state().committed_at_ms);
    let state = ctx.state();
    tracing::info!(model = %name, mode = model.detection.mode(), position = state.position.as_deref().unwrap_or("start"), snapshot_done = state.snapshot_done, "model state recovered");
    // Position::parse answers in the model's mode, so the variant picks the mode.
    match ctx.position()? {
        Position::Cursor(start) => crate::cursor::poll(&mut ctx, start, options, shutdown).await,
        Position::SnapshotChunk(after) => {
            run_first_snapshot(&mut ctx, after, &MetricProgress, shutdown).await?;
            if !ctx.state().snapshot_done {
                return Ok(()); // shut down between chunks; the next start resumes
            }
            ctx.run_succeeded();
            // The snapshot was this run: the first comparison waits for the schedule like any run.
            if !options.schedule.wait(shutdown).await {
                return Ok(());
            }
            crate::diff::poll(&mut ctx, options, shutdown).await
        }
        Position::None => crate::diff::poll(&mut ctx, options, shutdown).await,
        Position::WarehouseDiff(committed) => crate::warehouse_diff::poll(&mut ctx, committed, options, shutdown).await,
    }
}

/// The run that `error` ended: its record says how.
fn run_ended(options: &ModelOptions, error: &ModelError) {
    if let Some(run) = &options.run {
        run.ended(if error.is_refusal() { RunEnd::Refused } else { RunEnd::Failed }, Some(error.summary()));
    }
}

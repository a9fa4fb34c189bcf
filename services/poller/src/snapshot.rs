//! The first snapshot of a `diff` model: every row as an `r` event, read in primary-key chunks
//! (in the service before the model's first `diff` run, or in the foreground with
//! `sluice snapshot <model>`).
//!
//! Why chunks by key: a large model (millions of rows) must not be read into memory at once,
//! and a crash halfway must not start it over. Each chunk is `batch_rows` rows after the last
//! committed key (keyset paging, [`Warehouse::fetch_by_key`]), emitted in one Kafka transaction
//! together with the state record whose `position` is the chunk's last key. After a crash the
//! poller fences, reads that position back and continues with the next key: every row is
//! emitted exactly once, and memory holds one chunk.
//!
//! Before the first chunk, the key gates run inside the warehouse
//! ([`Warehouse::check_keys`]: NULL or duplicate keys refuse the snapshot with samples, nothing
//! emitted), then the row-count bounds. A duplicate that appears *during* the snapshot is still
//! caught when two equal keys arrive in one chunk; one straddling two chunks is seen by the
//! next `diff` run's key gate.
//!
//! A model with `expire` skips the rows already expired when their chunk is read (they are
//! absent); a row that expires later is deleted by a `diff` run.
//!
//! Rows that change while the snapshot runs are not lost: a row changed in a chunk already
//! emitted is found by the first regular `diff` run (which compares with what was emitted), a
//! row changed in a chunk still ahead is read in its new state.
//!
//! Progress: `sluice_poller_snapshot_progress_ratio` (and a log line per chunk) in the service;
//! `sluice snapshot <model>` shows a progress bar ([`Progress`]).

use std::sync::Arc;

use sluice_avro::PollerState;
use sluice_core::config::Config;
use sluice_core::{Op, Value};
use sluice_warehouse::Warehouse;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::clock::now_ms;
use crate::context::ModelContext;
use crate::emit::{count_events, ChangeWriter};
use crate::error::ModelError;
use crate::expiry::is_expired;
use crate::gates::{check_keys, check_volume, GateError, RunCounts};
use crate::keys::key_json;
use crate::position::{tuple_text, Position};
use crate::state::ensure_model_topics;

/// Receives first-snapshot progress: rows emitted so far (across restarts) and the model's
/// row count when this incarnation started.
pub trait Progress: Send + Sync {
    /// The snapshot starts (or resumes) with `emitted` of `total` rows already committed.
    fn started(&self, model: &str, emitted: u64, total: u64);
    /// A chunk committed: `emitted` of `total` rows so far.
    fn advanced(&self, model: &str, emitted: u64, total: u64);
    /// The snapshot is complete, `emitted` rows in all.
    fn finished(&self, model: &str, emitted: u64);
}

/// The service's progress: a gauge and a log line per chunk.
pub struct MetricProgress;

impl Progress for MetricProgress {
    fn started(&self, model: &str, emitted: u64, total: u64) {
        tracing::info!(model = %model, emitted, total, "first snapshot started (in primary-key chunks)");
        self.advanced(model, emitted, total);
    }

    fn advanced(&self, model: &str, emitted: u64, total: u64) {
        let ratio = if total == 0 { 1.0 } else { (emitted as f64 / total as f64).min(1.0) };
        metrics::gauge!("sluice_poller_snapshot_progress_ratio", "model" => model.to_string()).set(ratio);
        metrics::gauge!("sluice_poller_snapshot_rows_emitted", "model" => model.to_string()).set(emitted as f64);
        tracing::debug!(model = %model, emitted, total, "first snapshot progress");
    }

    fn finished(&self, model: &str, emitted: u64) {
        metrics::gauge!("sluice_poller_snapshot_progress_ratio", "model" => model.to_string()).set(1.0);
        tracing::info!(model = %model, emitted, "first snapshot complete");
    }
}

/// Emit the first snapshot of `ctx`'s model, resuming after `after` (the key tuple of the last
/// committed chunk, `None` for the first), until it is complete (`snapshot_done` in the
/// committed state) or `shutdown` is cancelled between chunks.
pub async fn run_first_snapshot<W: Warehouse>(
    ctx: &mut ModelContext<'_, W>,
    mut after: Option<Vec<Value>>,
    progress: &dyn Progress,
    shutdown: &CancellationToken,
) -> Result<(), ModelError> {
    let (name, model) = (ctx.name(), ctx.model);
    let schema = Arc::clone(ctx.codec.row_schema());
    let check = ctx.warehouse.check_keys(model, &schema).await?;
    check_keys(name, &ctx.codec, &check)?;
    let counts = RunCounts { rows: check.rows, inserts: check.rows, ..RunCounts::default() };
    check_volume(name, &model.gates, counts, true, false)?;
    let total = check.rows;
    progress.started(name, emitted(ctx.state()), total);
    let batch = model.batch_rows.max(1);
    while !ctx.state().snapshot_done && !shutdown.is_cancelled() {
        let run_id = uuid::Uuid::new_v4().to_string();
        let span = tracing::info_span!("poller.snapshot_chunk", model = %name, run_id = %run_id);
        async {
            let rows = ctx.warehouse.fetch_by_key(model, &schema, after.as_deref(), batch).await?;
            // Equal neighbours in key order are duplicates that slipped past the up-front check
            // (compared in place: this runs for every row of the model).
            if let Some(pair) = rows.windows(2).find(|pair| schema.primary_key.iter().all(|&k| pair[0][k] == pair[1][k])) {
                return Err(ModelError::Gate(GateError::DuplicateKey {
                    model: name.to_string(),
                    count: 1,
                    samples: key_json(&schema, &pair[0]).to_string(),
                }));
            }
            // A short page is the end; otherwise the page is full and its last key is the position.
            let done = rows.len() < batch;
            let last_key = if done { None } else { rows.last().map(|row| schema.key_of(row)) };
            let mut writer = ChangeWriter::new(ctx.config, name, &ctx.codec, &run_id);
            let mut records = Vec::with_capacity(rows.len() + 3);
            let now = now_ms();
            let mut events = 0u64;
            for row in rows.into_iter().filter(|row| !is_expired(ctx.expiry.as_ref(), row, now)) {
                records.extend(writer.change(Op::Read, None, Some(row), None)?);
                events += 1;
            }
            // Once done, the position is the diff modes' (none): the next run compares.
            let position = last_key.as_deref().map(tuple_text);
            ctx.committer.commit_run(records, &run_id, position, done, events).await?;
            count_events(name, &[(Op::Read, events)]);
            after = last_key;
            progress.advanced(name, emitted(ctx.state()), total);
            Ok::<(), ModelError>(())
        }
        .instrument(span)
        .await?;
    }
    if ctx.state().snapshot_done {
        progress.finished(name, emitted(ctx.state()));
    }
    Ok(())
}

/// Events emitted so far, as progress counts them.
fn emitted(state: &PollerState) -> u64 {
    state.events_total.max(0) as u64
}

/// How a standalone first snapshot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The snapshot is complete, `emitted` rows in all; `already`: it was complete before this
    /// call.
    Complete { emitted: u64, already: bool },
    /// Interrupted between chunks; the next start resumes.
    Interrupted { emitted: u64 },
}

/// `sluice snapshot <model>`: take (or resume) the first snapshot of a `diff` model in the
/// foreground, reporting to `progress`, then return. It fences a running poller of the same
/// model (one transactional id per model), so run it before starting the service for a new
/// large model, or while the service's model is stopped.
pub async fn run_standalone(config: &Config, model: &str, progress: &dyn Progress, shutdown: &CancellationToken) -> anyhow::Result<Outcome> {
    use anyhow::Context as _;
    let model_config = config.model(model).with_context(|| format!("no model named {model:?} in the config"))?;
    anyhow::ensure!(
        matches!(model_config.detection, sluice_core::config::Detection::Diff {}),
        "sluice snapshot takes the primary-key-chunked first snapshot of diff models; {model:?} is in {} mode, whose first snapshot the service takes (progress: metric sluice_poller_snapshot_progress_ratio)",
        model_config.detection.mode()
    );
    ensure_model_topics(config, &[model.to_string()]).await?;
    let warehouse = sluice_warehouse::AnyWarehouse::connect(&config.warehouse).await.context("connecting to the warehouse")?;
    let mut ctx = ModelContext::open(config, &warehouse, model_config).await?;
    // A diff model's position is a chunk key until its first snapshot is done, none after.
    let Position::SnapshotChunk(after) = ctx.position()? else {
        return Ok(Outcome::Complete { emitted: emitted(ctx.state()), already: true });
    };
    run_first_snapshot(&mut ctx, after, progress, shutdown).await?;
    let emitted = emitted(ctx.state());
    Ok(if ctx.state().snapshot_done { Outcome::Complete { emitted, already: false } } else { Outcome::Interrupted { emitted } })
}

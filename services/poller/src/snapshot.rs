//! The first snapshot of a `diff` model: every row as an `r` event, read in primary-key chunks.
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
//! Rows that change while the snapshot runs are not lost: a row changed in a chunk already
//! emitted is found by the first regular `diff` run (which compares with what was emitted), a
//! row changed in a chunk still ahead is read in its new state.
//!
//! Progress: `sluice_poller_snapshot_progress_ratio` (and a log line per chunk) in the service;
//! `sluice snapshot <model>` shows a progress bar ([`Progress`]).

use sluice_avro::{ModelCodec, PollerState};
use sluice_core::config::{Config, ModelConfig};
use sluice_core::{Op, Value};
use sluice_kafka::producer::TransactionalProducer;
use sluice_warehouse::Warehouse;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::emit::{commit, count_events, ChangeWriter};
use crate::gates::{check_keys, check_volume, GateError, RunCounts};
use crate::clock::now_ms;
use crate::error::ModelError;
use crate::keys::key_json;

/// Receives first-snapshot progress: rows emitted so far (across restarts) and the model's
/// row count when this incarnation started.
pub trait Progress: Send + Sync {
    fn started(&self, model: &str, emitted: u64, total: u64);
    fn advanced(&self, model: &str, emitted: u64, total: u64);
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

/// The key tuple stored as the position while a snapshot is in progress.
fn decode_key(state: &PollerState) -> Result<Option<Vec<Value>>, ModelError> {
    state
        .position
        .as_deref()
        .map(|p| serde_json::from_str(p).map_err(|e| ModelError::State(format!("snapshot position {p:?}: {e}"))))
        .transpose()
}

/// Emit the first snapshot of `model`, resuming after the last committed chunk, until it is
/// complete (`state.snapshot_done`) or `shutdown` is cancelled between chunks.
#[allow(clippy::too_many_arguments)]
pub async fn run_first_snapshot<W: Warehouse>(
    config: &Config,
    warehouse: &W,
    model: &ModelConfig,
    codec: &ModelCodec,
    producer: &TransactionalProducer,
    state: &mut PollerState,
    schemas_published: &mut bool,
    progress: &dyn Progress,
    shutdown: &CancellationToken,
) -> Result<(), ModelError> {
    let name = model.name.get_ref().as_str();
    let schema = codec.row_schema();
    let check = warehouse.check_keys(model, schema).await?;
    check_keys(name, codec, &check)?;
    let counts = RunCounts { rows: check.rows, inserts: check.rows, ..RunCounts::default() };
    check_volume(name, &model.gates, counts, true, false)?;
    let mut after = decode_key(state)?;
    let total = check.rows;
    progress.started(name, state.events_total.max(0) as u64, total);
    let batch = model.batch_rows.max(1);
    while !state.snapshot_done && !shutdown.is_cancelled() {
        let run_id = uuid::Uuid::new_v4().to_string();
        let span = tracing::info_span!("poller.snapshot_chunk", model = %name, run_id = %run_id);
        async {
            let rows = warehouse.fetch_by_key(model, schema, after.as_deref(), batch).await?;
            // Equal neighbours in key order are duplicates that slipped past the up-front check
            // (compared in place: this runs for every row of the model).
            if let Some(pair) = rows.windows(2).find(|pair| schema.primary_key.iter().all(|&k| pair[0][k] == pair[1][k])) {
                return Err(ModelError::Gate(GateError::DuplicateKey {
                    model: name.to_string(),
                    count: 1,
                    samples: key_json(schema, &pair[0]).to_string(),
                }));
            }
            // A short page is the end; otherwise the page is full and its last key is the position.
            let done = rows.len() < batch;
            let last_key = if done { None } else { rows.last().map(|row| schema.key_of(row)) };
            let mut writer = ChangeWriter::new(config, name, codec, &run_id);
            let mut records = Vec::with_capacity(rows.len() + 3);
            let events = rows.len() as u64;
            for row in rows {
                records.extend(writer.change(Op::Read, None, Some(row), None)?);
            }
            let new_state = PollerState {
                model: name.to_string(),
                run_id: run_id.clone(),
                // Once done, the position is the diff modes' (none): the next run compares.
                position: last_key.as_ref().map(|key| serde_json::to_string(key).expect("values serialise")),
                snapshot_done: done,
                events_total: state.events_total + events as i64,
                committed_at_ms: now_ms(),
            };
            commit(config, codec, producer, schemas_published, records, &new_state).await?;
            count_events(name, &[(Op::Read, events)]);
            *state = new_state;
            after = last_key;
            progress.advanced(name, state.events_total.max(0) as u64, total);
            Ok::<(), ModelError>(())
        }
        .instrument(span)
        .await?;
    }
    if state.snapshot_done {
        progress.finished(name, state.events_total.max(0) as u64);
    }
    Ok(())
}

/// How a standalone first snapshot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The snapshot is complete (now or earlier); `emitted` rows in all.
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
    crate::ensure_model_topics(config, &[model.to_string()]).await?;
    let warehouse = sluice_warehouse::AnyWarehouse::connect(&config.warehouse).await.context("connecting to the warehouse")?;
    let (codec, producer, mut state) = crate::model_loop::open_model(config, &warehouse, model_config).await?;
    if state.snapshot_done {
        return Ok(Outcome::Complete { emitted: state.events_total.max(0) as u64, already: true });
    }
    let mut schemas_published = false;
    run_first_snapshot(config, &warehouse, model_config, &codec, &producer, &mut state, &mut schemas_published, progress, shutdown).await?;
    let emitted = state.events_total.max(0) as u64;
    Ok(if state.snapshot_done { Outcome::Complete { emitted, already: false } } else { Outcome::Interrupted { emitted } })
}

//! `diff` mode: each run reads the whole model and compares it, by primary key and xxh3 row
//! hash, with the last emitted state (see [`crate::tracked`]): new keys are inserts (`r` during
//! the first snapshot, `c` after), changed hashes updates (`u`, with the `before` image read back
//! from the change topic and the list of changed columns), vanished keys deletes (`d` with the
//! `before` image, then a tombstone so compaction can drop the key).
//!
//! Exactly once: a run's events and the model's state record are committed in Kafka
//! transactions of at most `batch_rows` events, and the state the next run compares with is
//! the committed change topic itself. A crash between two transactions of a run leaves a
//! committed prefix; the next run (after fencing and catching up) finds those rows already
//! emitted and emits only the rest. Nothing is emitted twice, nothing is skipped.
//!
//! The first snapshot is not a diff: it is read in primary-key chunks, resumable (see
//! [`crate::snapshot`]). Not guaranteed: a row that changes and changes back between two runs
//! is not seen (a snapshot diff observes states, not transactions). A run buffers the changed
//! rows in memory until the gates passed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_avro::{decoder_for, fingerprint_of, ModelCodec, PollerState};
use sluice_core::config::{Config, ModelConfig};
use sluice_core::{naming, Op, Row};
use sluice_kafka::producer::{OutRecord, TransactionalProducer};
use sluice_warehouse::{Warehouse, WarehouseError};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::emit::{commit, count_events, ChangeWriter};
use crate::gates::{check_volume, GateError, RunCounts, MAX_SAMPLES};
use crate::clock::now_ms;
use crate::error::ModelError;
use crate::keys::{key_hash, key_json, row_hash};
use crate::tracked::{fetch_records, KeyMap, Stored, Tracked};

/// How long reading the change topic may take before the run is retried.
const READ_DEADLINE: Duration = Duration::from_secs(300);

/// What the next run would emit, before the previous images are read back.
pub struct DiffPlan {
    /// Rows the model returned.
    pub rows: u64,
    /// Rows in the last emitted state.
    pub tracked: u64,
    pub inserts: Vec<Row>,
    /// New row image and location of the key's previous event.
    pub updates: Vec<(Row, u64)>,
    /// Locations of the previous events of vanished keys.
    pub deletes: Vec<u64>,
}

impl DiffPlan {
    pub fn counts(&self) -> RunCounts {
        RunCounts {
            rows: self.rows,
            tracked: self.tracked,
            inserts: self.inserts.len() as u64,
            updates: self.updates.len() as u64,
            deletes: self.deletes.len() as u64,
        }
    }
}

fn samples(keys: &[serde_json::Value]) -> String {
    keys.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", ")
}

/// Scan the model and compare it with `tracked`. Fails with a [`GateError`] (and leaves
/// `tracked` unchanged) when a key is NULL or duplicated.
pub async fn compute<W: Warehouse>(
    warehouse: &W,
    model: &ModelConfig,
    codec: &ModelCodec,
    tracked: &mut Tracked,
) -> Result<DiffPlan, ModelError> {
    let name = model.name.get_ref().as_str();
    let schema = Arc::clone(codec.row_schema());
    let tracked_before = tracked.len() as u64;
    let mut inserts = Vec::new();
    let mut updates = Vec::new();
    let mut new_keys: KeyMap<()> = KeyMap::default();
    let (mut null_keys, mut null_samples) = (0u64, Vec::new());
    let (mut duplicates, mut duplicate_samples) = (0u64, Vec::new());
    let mut key_buf = Vec::with_capacity(64);
    let mut hash_buf = Vec::with_capacity(256);
    tracked.clear_marks();
    let scanned = warehouse
        .scan(model, &schema, |row| {
            if schema.primary_key.iter().any(|&k| row[k].is_null()) {
                null_keys += 1;
                if null_samples.len() < MAX_SAMPLES {
                    null_samples.push(key_json(&schema, &row));
                }
                return Ok(());
            }
            key_buf.clear();
            codec
                .encode_key(&row, &mut key_buf)
                .map_err(|e| WarehouseError::Model { model: name.to_string(), message: format!("cannot encode a key: {e}") })?;
            let hash = key_hash(&key_buf);
            let duplicate = match tracked.see(hash) {
                Some((_, true)) => true,
                Some((entry, false)) => {
                    if entry.row_hash != row_hash(&row, &mut hash_buf) {
                        updates.push((row.clone(), entry.loc()));
                    }
                    false
                }
                None => {
                    let duplicate = new_keys.insert(hash, ()).is_some();
                    if !duplicate {
                        inserts.push(row.clone());
                    }
                    duplicate
                }
            };
            if duplicate {
                duplicates += 1;
                if duplicate_samples.len() < MAX_SAMPLES {
                    duplicate_samples.push(key_json(&schema, &row));
                }
            }
            Ok(())
        })
        .await;
    let rows = match scanned {
        Ok(rows) => rows,
        Err(error) => {
            tracked.clear_marks();
            return Err(error.into());
        }
    };
    let deletes = tracked.take_unseen();
    if null_keys > 0 {
        let columns = schema.key_columns().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ");
        return Err(GateError::NullKey { model: name.to_string(), count: null_keys, columns, samples: samples(&null_samples) }.into());
    }
    if duplicates > 0 {
        return Err(GateError::DuplicateKey { model: name.to_string(), count: duplicates, samples: samples(&duplicate_samples) }.into());
    }
    Ok(DiffPlan { rows, tracked: tracked_before, inserts, updates, deletes })
}

/// Catch the tracked state up with the committed change topic, off the async threads.
pub async fn catch_up(tracked: Tracked) -> Result<Tracked, ModelError> {
    tokio::task::spawn_blocking(move || {
        let mut tracked = tracked;
        tracked.catch_up(READ_DEADLINE).map(|_| tracked)
    })
    .await
    .expect("state reader does not panic")
    .map_err(ModelError::from)
}

/// Read back the previous events at `locs`.
pub async fn previous_records(config: &Config, topic: &str, locs: Vec<u64>) -> Result<KeyMap<Stored>, ModelError> {
    let (kafka, topic) = (config.kafka.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || fetch_records(&kafka, &topic, &locs, READ_DEADLINE))
        .await
        .expect("image reader does not panic")
        .map_err(ModelError::from)
}

/// The `after` image of a stored event, when it was written with the current schema (an image
/// in an older schema would be positionally wrong: then `before` is left out).
fn image_of(decoder: &sluice_avro::EventDecoder, codec: &ModelCodec, stored: Option<&Stored>) -> Option<Row> {
    let payload = stored?.payload.as_deref()?;
    if fingerprint_of(payload).ok()?.as_str() != codec.value_fingerprint() {
        return None;
    }
    decoder.decode(payload).ok()?.event.after
}


/// Per-model options of a poll loop.
#[derive(Clone, Default)]
pub struct ModelOptions {
    /// Let the next run through the change-volume guard once (`--confirm-large-change`).
    pub confirm_large_change: bool,
    /// When runs start (interval or cron, plus wake-ups).
    pub schedule: crate::triggers::Schedule,
}

/// Run the model in `diff` mode until shutdown or a fatal error.
#[allow(clippy::too_many_arguments)]
pub async fn poll_diff<W: Warehouse>(
    config: &Config,
    warehouse: &W,
    model: &ModelConfig,
    codec: &ModelCodec,
    producer: &TransactionalProducer,
    mut state: PollerState,
    mut options: ModelOptions,
    shutdown: &CancellationToken,
) -> Result<(), ModelError> {
    let name = model.name.get_ref().as_str();
    let mut schemas_published = false;
    if !state.snapshot_done {
        let progress = crate::snapshot::MetricProgress;
        crate::snapshot::run_first_snapshot(config, warehouse, model, codec, producer, &mut state, &mut schemas_published, &progress, shutdown).await?;
        if !state.snapshot_done {
            return Ok(()); // shut down between chunks; the next start resumes
        }
        // The snapshot was this run: the first comparison waits for the schedule like any run.
        if !options.schedule.wait(shutdown).await {
            return Ok(());
        }
    }
    let topic = naming::change_topic(&config.kafka.topic_prefix, name);
    let (kafka, t) = (config.kafka.clone(), topic.clone());
    let tracked = tokio::task::spawn_blocking(move || Tracked::new(&kafka, &t)).await.expect("does not panic")?;
    let started = Instant::now();
    // An Option because the state moves into a blocking task and back on every catch-up; an
    // error ends this incarnation anyway (the caller rebuilds everything from Kafka).
    let mut slot = Some(catch_up(tracked).await?);
    tracing::info!(model = %name, tracked_rows = slot.as_ref().map_or(0, Tracked::len), elapsed_ms = started.elapsed().as_millis() as u64, "diff state rebuilt from the change topic");
    loop {
        let run_id = uuid::Uuid::new_v4().to_string();
        let span = tracing::info_span!("poller.diff_run", model = %name, run_id = %run_id);
        async {
            let mut tracked = catch_up(slot.take().expect("state is back after each run")).await?;
            let run_started = Instant::now();
            let plan = compute(warehouse, model, codec, &mut tracked).await;
            let tracked_rows = tracked.len();
            slot = Some(tracked);
            let plan = plan?;
            let counts = plan.counts();
            let first_snapshot = !state.snapshot_done;
            if let Err(refused) = check_volume(name, &model.gates, counts, first_snapshot, options.confirm_large_change) {
                return Err(ModelError::from(refused));
            }
            if options.confirm_large_change {
                tracing::warn!(model = %name, "change-volume guard bypassed for this run by operator confirmation");
                options.confirm_large_change = false;
            }
            let events = emit(config, model, codec, producer, plan, &mut state, &run_id, &topic, &mut schemas_published).await?;
            metrics::gauge!("sluice_poller_diff_tracked_rows", "model" => name.to_string()).set(tracked_rows as f64);
            metrics::histogram!("sluice_poller_run_seconds", "model" => name.to_string(), "mode" => "diff")
                .record(run_started.elapsed().as_secs_f64());
            tracing::info!(
                model = %name,
                rows = counts.rows,
                inserts = counts.inserts,
                updates = counts.updates,
                deletes = counts.deletes,
                events,
                elapsed_ms = run_started.elapsed().as_millis() as u64,
                "diff run committed"
            );
            Ok::<(), ModelError>(())
        }
        .instrument(span)
        .await?;
        if !options.schedule.wait(shutdown).await {
            return Ok(());
        }
    }
}

/// Turn a plan into events and commit them with the state record, `batch_rows` changes per
/// transaction. Returns the number of events (tombstones not counted). Also emits the deletes
/// of cursor mode's reconciliation ([`crate::reconcile`]). Public for the benchmarks, which
/// time one run's phases separately.
#[allow(clippy::too_many_arguments)]
pub async fn emit(
    config: &Config,
    model: &ModelConfig,
    codec: &ModelCodec,
    producer: &TransactionalProducer,
    plan: DiffPlan,
    state: &mut PollerState,
    run_id: &str,
    topic: &str,
    schemas_published: &mut bool,
) -> Result<u64, ModelError> {
    let name = model.name.get_ref().as_str();
    let mut wanted: Vec<u64> = plan.updates.iter().map(|(_, loc)| *loc).collect();
    wanted.extend_from_slice(&plan.deletes);
    let previous = previous_records(config, topic, wanted).await?;
    let decoder = decoder_for(codec);
    let mut writer = ChangeWriter::new(config, name, codec, run_id);
    let insert_op = if state.snapshot_done { Op::Create } else { Op::Read };
    let counts = [(insert_op, plan.inserts.len() as u64), (Op::Update, plan.updates.len() as u64), (Op::Delete, plan.deletes.len() as u64)];

    // Each change is 1 record (2 for a delete and its tombstone), kept in one transaction.
    let mut changes: Vec<Vec<OutRecord>> = Vec::with_capacity(plan.inserts.len() + plan.updates.len() + plan.deletes.len());
    for row in plan.inserts {
        changes.push(writer.change(insert_op, None, Some(row), None)?);
    }
    for (row, loc) in plan.updates {
        let before = image_of(&decoder, codec, previous.get(&loc));
        changes.push(writer.change(Op::Update, before, Some(row), None)?);
    }
    for loc in plan.deletes {
        let Some(stored) = previous.get(&loc) else {
            // Compacted away: a newer record for the key exists, so the state we compared with
            // is stale. Retry the run; catching up first resolves it.
            return Err(ModelError::State(format!("previous event at {loc:#x} of {topic} vanished during the run")));
        };
        let before = image_of(&decoder, codec, Some(stored));
        changes.push(writer.change(Op::Delete, before, None, Some(stored.key.clone()))?);
    }

    let total = changes.len() as u64;
    if changes.is_empty() && state.snapshot_done {
        return Ok(0);
    }
    let batch = model.batch_rows.max(1);
    let mut pending = changes.into_iter().peekable();
    loop {
        let mut records = Vec::with_capacity(batch + 3);
        let mut events = 0u64;
        while events < batch as u64 {
            let Some(change) = pending.next() else { break };
            records.extend(change);
            events += 1;
        }
        let last = pending.peek().is_none();
        let new_state = PollerState {
            model: name.to_string(),
            run_id: run_id.to_string(),
            // `diff` keeps no position; a cursor model's reconciliation keeps its cursor.
            position: state.position.clone(),
            // The first snapshot is done once its last transaction commits.
            snapshot_done: state.snapshot_done || last,
            events_total: state.events_total + events as i64,
            committed_at_ms: now_ms(),
        };
        commit(config, codec, producer, schemas_published, records, &new_state).await?;
        *state = new_state;
        if last {
            break;
        }
    }
    count_events(name, &counts);
    Ok(total)
}

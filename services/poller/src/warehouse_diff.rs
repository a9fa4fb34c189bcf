//! `warehouse_diff` mode: the previous snapshot lives in the warehouse and the diff is computed
//! there (see `sluice_warehouse::SnapshotStore`), so only changed rows cross the network and
//! the poller holds no per-row state at all.
//!
//! Exactly once, across crashes at any point:
//! - a run first builds a *pending* snapshot tagged with a fresh run id, plus its numbered
//!   change list (nothing is emitted yet; the gates run here);
//! - changes are emitted in transactions of `batch_rows`, each carrying the state record
//!   `{run_id, position = {"emitted": n, "complete": bool}}`;
//! - only after the last transaction committed is the pending snapshot swapped in.
//!
//! On every run start the poller compares the pending snapshot's run id with the run id Kafka
//! committed: equal and complete → the swap was interrupted, finish it; equal and partial → resume
//! emitting after change `emitted` (the change list is fixed, so the position is exact);
//! different → that run never reached Kafka, discard it.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use sluice_avro::{ModelCodec, PollerState};
use sluice_core::config::{Config, ModelConfig};
use sluice_core::Op;
use sluice_kafka::producer::TransactionalProducer;
use sluice_warehouse::{PreparedSnapshot, SnapshotStore, Warehouse};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::diff::ModelOptions;
use crate::emit::{commit, count_events, ChangeWriter};
use crate::gates::{check_volume, key_samples, GateError, RunCounts};
use crate::clock::now_ms;
use crate::error::ModelError;

/// Progress of a `warehouse_diff` run, stored as the state record's `position`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Changes of the run committed so far (the change list is numbered in key order).
    pub emitted: u64,
    /// Whether the run's last transaction committed (the snapshot may be swapped).
    pub complete: bool,
}

fn progress_of(state: &PollerState) -> Option<Progress> {
    state.position.as_deref().and_then(|p| serde_json::from_str(p).ok())
}


/// Run the model in `warehouse_diff` mode until shutdown or a fatal error.
#[allow(clippy::too_many_arguments)]
pub async fn poll_warehouse_diff<W: Warehouse + SnapshotStore>(
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
    loop {
        let span = tracing::info_span!("poller.warehouse_diff_run", model = %name);
        async {
            let started = Instant::now();
            // Recovery: what did the last run leave behind?
            let mut resume = None;
            match warehouse.pending_snapshot(model).await? {
                Some(run) if run == state.run_id => match progress_of(&state) {
                    Some(Progress { complete: true, .. }) => {
                        warehouse.commit_snapshot(model).await?;
                        tracing::info!(model = %name, run_id = %run, "finished the snapshot swap of a run Kafka had committed");
                    }
                    Some(progress) => resume = Some((run, progress.emitted)),
                    None => warehouse.discard_snapshot(model).await?,
                },
                Some(run) => {
                    warehouse.discard_snapshot(model).await?;
                    tracing::info!(model = %name, run_id = %run, "discarded a pending snapshot whose run never reached Kafka");
                }
                None => {}
            }
            let (run_id, skip, counts) = match resume {
                Some((run, emitted)) => {
                    tracing::info!(model = %name, run_id = %run, emitted, "resuming a partially committed run");
                    (run, emitted, None)
                }
                None => {
                    let run_id = uuid::Uuid::new_v4().to_string();
                    let counts = match warehouse.prepare_snapshot(model, codec.row_schema(), &run_id).await? {
                        PreparedSnapshot::NullKeys { count, samples: keys } => {
                            let columns = model.primary_key.join(", ");
                            return Err(GateError::NullKey { model: name.to_string(), count, columns, samples: key_samples(codec, &keys) }.into());
                        }
                        PreparedSnapshot::DuplicateKeys { count, samples: keys } => {
                            return Err(GateError::DuplicateKey { model: name.to_string(), count, samples: key_samples(codec, &keys) }.into());
                        }
                        PreparedSnapshot::Ready { rows, tracked, inserts, updates, deletes } => RunCounts { rows, tracked, inserts, updates, deletes },
                    };
                    if let Err(refused) = check_volume(name, &model.gates, counts, !state.snapshot_done, options.confirm_large_change) {
                        warehouse.discard_snapshot(model).await?;
                        return Err(refused.into());
                    }
                    if options.confirm_large_change {
                        tracing::warn!(model = %name, "change-volume guard bypassed for this run by operator confirmation");
                        options.confirm_large_change = false;
                    }
                    if counts.inserts + counts.updates + counts.deletes == 0 && state.snapshot_done {
                        // Identical snapshot: nothing to emit, nothing to swap.
                        warehouse.discard_snapshot(model).await?;
                        return Ok(());
                    }
                    (run_id, 0, Some(counts))
                }
            };
            let events = emit(config, warehouse, model, codec, producer, &mut state, &run_id, skip, &mut schemas_published).await?;
            warehouse.commit_snapshot(model).await?;
            metrics::histogram!("sluice_poller_run_seconds", "model" => name.to_string(), "mode" => "warehouse_diff")
                .record(started.elapsed().as_secs_f64());
            let counts = counts.unwrap_or_default();
            tracing::info!(
                model = %name,
                run_id = %run_id,
                rows = counts.rows,
                inserts = counts.inserts,
                updates = counts.updates,
                deletes = counts.deletes,
                events,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "warehouse diff run committed and snapshot swapped"
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

/// Emit the run's changes after the first `skip`, a page per transaction; the last transaction
/// marks the run complete. Public for the benchmarks.
#[allow(clippy::too_many_arguments)]
pub async fn emit<W: SnapshotStore>(
    config: &Config,
    warehouse: &W,
    model: &ModelConfig,
    codec: &ModelCodec,
    producer: &TransactionalProducer,
    state: &mut PollerState,
    run_id: &str,
    mut skip: u64,
    schemas_published: &mut bool,
) -> Result<u64, ModelError> {
    let name = model.name.get_ref().as_str();
    let batch = model.batch_rows.max(1);
    let mut writer = ChangeWriter::new(config, name, codec, run_id);
    let insert_op = if state.snapshot_done { Op::Create } else { Op::Read };
    let mut counts = [(insert_op, 0u64), (Op::Update, 0), (Op::Delete, 0)];
    let mut total = 0u64;
    loop {
        let page = warehouse.snapshot_changes(model, codec.row_schema(), skip, batch).await?;
        let last = page.len() < batch;
        let mut records = Vec::with_capacity(page.len() + 3);
        let events = page.len() as u64;
        for change in page {
            let op = match (&change.before, &change.after) {
                (None, _) => insert_op,
                (Some(_), Some(_)) => Op::Update,
                (Some(_), None) => Op::Delete,
            };
            counts[match op { Op::Update => 1, Op::Delete => 2, _ => 0 }].1 += 1;
            records.extend(writer.change(op, change.before, change.after, None)?);
        }
        skip += events;
        total += events;
        let new_state = PollerState {
            model: name.to_string(),
            run_id: run_id.to_string(),
            position: Some(serde_json::to_string(&Progress { emitted: skip, complete: last }).expect("serialises")),
            snapshot_done: state.snapshot_done || last,
            events_total: state.events_total + events as i64,
            committed_at_ms: now_ms(),
        };
        commit(config, codec, producer, schemas_published, records, &new_state).await?;
        if !state.snapshot_done {
            metrics::gauge!("sluice_poller_snapshot_rows_committed", "model" => name.to_string()).set(skip as f64);
            tracing::info!(model = %name, committed = skip, "first snapshot progress");
        }
        *state = new_state;
        if last {
            break;
        }
    }
    count_events(name, &counts);
    Ok(total)
}

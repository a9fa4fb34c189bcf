//! `warehouse_diff` mode: the previous snapshot lives in the warehouse and the diff is computed
//! there (see `sluice_warehouse::SnapshotStore`), so only changed rows cross the network and
//! the poller holds no per-row state at all. Its first snapshot is its first run (every row an
//! insert, emitted as `r`).
//!
//! Exactly once, across crashes at any point:
//! - a run first builds a *pending* snapshot tagged with a fresh run id, plus its numbered
//!   change list (nothing is emitted yet; the gates run here);
//! - changes are emitted in transactions of `batch_rows`, each carrying the state record
//!   `{run_id, position = {"emitted": n, "complete": bool}}` ([`RunProgress`]);
//! - only after the last transaction committed is the pending snapshot swapped in.
//!
//! On every run start the poller compares the pending snapshot's run id with the run id Kafka
//! committed: equal and complete → the swap was interrupted, finish it; equal and partial → resume
//! emitting after change `emitted` (the change list is fixed, so the position is exact);
//! different → that run never reached Kafka, discard it. Equal, but with no progress stored (a
//! corrupt state record) → the model stops with a [`PositionError`]: the pending snapshot is
//! kept, never discarded on a guess.

use std::time::Instant;

use sluice_core::Op;
use sluice_warehouse::{PreparedSnapshot, SnapshotStore, Warehouse};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::context::{ModelContext, ModelOptions};
use crate::emit::{count_events, ChangeWriter};
use crate::error::ModelError;
use crate::gates::{key_samples, Confirmation, GateError, RunCounts};
pub use crate::position::RunProgress;
use crate::position::PositionError;

/// Run the model in `warehouse_diff` mode until shutdown or a fatal error. `committed` is the
/// progress of the last run Kafka committed (from the stored position).
pub async fn poll<W: Warehouse + SnapshotStore>(
    ctx: &mut ModelContext<'_, W>,
    mut committed: Option<RunProgress>,
    options: &ModelOptions,
    shutdown: &CancellationToken,
) -> Result<(), ModelError> {
    let name = ctx.name();
    let mut confirmation = Confirmation::new(options.confirm_large_change);
    loop {
        let span = tracing::info_span!("poller.warehouse_diff_run", model = %name);
        async {
            let started = Instant::now();
            let (run_id, skip, counts) = match recover(ctx, committed).await? {
                Some((run, emitted)) => {
                    tracing::info!(model = %name, run_id = %run, emitted, "resuming a partially committed run");
                    (run, emitted, None)
                }
                None => {
                    let run_id = uuid::Uuid::new_v4().to_string();
                    let Some(counts) = prepare(ctx, &run_id, &mut confirmation).await? else {
                        return Ok(()); // identical snapshot: nothing to emit, nothing to swap
                    };
                    (run_id, 0, Some(counts))
                }
            };
            let (events, progress) = emit_after(ctx, &run_id, skip).await?;
            committed = Some(progress);
            ctx.warehouse.commit_snapshot(ctx.model).await?;
            let counts = counts.unwrap_or_default();
            crate::telemetry::run_committed(name, "warehouse_diff", "warehouse diff run committed and snapshot swapped", &run_id, counts, events, started);
            Ok::<(), ModelError>(())
        }
        .instrument(span)
        .await?;
        ctx.run_succeeded();
        if !options.schedule.wait(shutdown).await {
            return Ok(());
        }
    }
}

/// What the last run left behind: finish its swap, or return the run to resume and how many of
/// its changes Kafka already has, or discard a pending snapshot whose run never reached Kafka.
async fn recover<W: SnapshotStore>(ctx: &ModelContext<'_, W>, committed: Option<RunProgress>) -> Result<Option<(String, u64)>, ModelError> {
    let name = ctx.name();
    let state = ctx.state();
    match ctx.warehouse.pending_snapshot(ctx.model).await? {
        Some(run) if run == state.run_id => match committed {
            Some(RunProgress { complete: true, .. }) => {
                ctx.warehouse.commit_snapshot(ctx.model).await?;
                tracing::info!(model = %name, run_id = %run, "finished the snapshot swap of a run Kafka had committed");
            }
            Some(progress) => return Ok(Some((run, progress.emitted))),
            None => {
                let problem = format!(
                    "the pending snapshot in the warehouse belongs to run {run}, the run Kafka committed last, but the position holds no warehouse_diff progress to finish or resume it from (the pending snapshot was kept)"
                );
                return Err(PositionError::new(name, state.position.as_deref(), problem).into());
            }
        },
        Some(run) => {
            ctx.warehouse.discard_snapshot(ctx.model).await?;
            tracing::info!(model = %name, run_id = %run, "discarded a pending snapshot whose run never reached Kafka");
        }
        None => {}
    }
    Ok(None)
}

/// Build the pending snapshot of run `run_id` and judge it by the gates. Returns its counts, or
/// `None` when it is identical to the kept snapshot (then it is discarded: nothing to emit).
async fn prepare<W: SnapshotStore>(
    ctx: &ModelContext<'_, W>,
    run_id: &str,
    confirmation: &mut Confirmation,
) -> Result<Option<RunCounts>, ModelError> {
    let (name, model, warehouse) = (ctx.name(), ctx.model, ctx.warehouse);
    let codec = &ctx.codec;
    let counts = match warehouse.prepare_snapshot(model, codec.row_schema(), run_id).await? {
        PreparedSnapshot::NullKeys { count, samples: keys } => {
            let columns = model.primary_key.join(", ");
            return Err(GateError::NullKey { model: name.to_string(), count, columns, samples: key_samples(codec, &keys) }.into());
        }
        PreparedSnapshot::DuplicateKeys { count, samples: keys } => {
            return Err(GateError::DuplicateKey { model: name.to_string(), count, samples: key_samples(codec, &keys) }.into());
        }
        PreparedSnapshot::Ready { rows, tracked, inserts, updates, deletes } => RunCounts { rows, tracked, inserts, updates, deletes },
    };
    let snapshot_done = ctx.state().snapshot_done;
    if let Err(refused) = confirmation.check_volume(name, &model.gates, counts, !snapshot_done, "run") {
        warehouse.discard_snapshot(model).await?;
        return Err(refused.into());
    }
    crate::telemetry::run_changes(name, counts, !snapshot_done);
    if counts.inserts + counts.updates + counts.deletes == 0 && snapshot_done {
        warehouse.discard_snapshot(model).await?;
        return Ok(None);
    }
    Ok(Some(counts))
}

/// Emit the run's changes after the first `skip`, a page per transaction; the last transaction
/// marks the run complete. Returns the number of events. Public for the benchmarks.
pub async fn emit<W: SnapshotStore>(ctx: &mut ModelContext<'_, W>, run_id: &str, skip: u64) -> Result<u64, ModelError> {
    emit_after(ctx, run_id, skip).await.map(|(events, _)| events)
}

/// [`emit`], also returning the progress its last transaction committed.
async fn emit_after<W: SnapshotStore>(ctx: &mut ModelContext<'_, W>, run_id: &str, mut skip: u64) -> Result<(u64, RunProgress), ModelError> {
    let name = ctx.name();
    let batch = ctx.model.batch_rows.max(1);
    let insert_op = if ctx.state().snapshot_done { Op::Create } else { Op::Read };
    let mut writer = ChangeWriter::new(ctx.config, name, &ctx.codec, run_id);
    let mut counts = [(insert_op, 0u64), (Op::Update, 0), (Op::Delete, 0)];
    let mut total = 0u64;
    loop {
        let page = ctx.warehouse.snapshot_changes(ctx.model, ctx.codec.row_schema(), skip, batch).await?;
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
        let progress = RunProgress { emitted: skip, complete: last };
        let was_done = ctx.state().snapshot_done;
        ctx.committer.commit_run(records, run_id, Some(progress.text()), was_done || last, events).await?;
        if !was_done {
            metrics::gauge!("sluice_poller_snapshot_rows_committed", "model" => name.to_string()).set(skip as f64);
            tracing::info!(model = %name, committed = skip, "first snapshot progress");
        }
        if last {
            count_events(name, &counts);
            return Ok((total, progress));
        }
    }
}

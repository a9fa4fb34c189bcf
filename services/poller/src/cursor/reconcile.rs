//! Reconciliation of hard deletes in cursor mode (`reconcile_interval_ms`).
//!
//! Why: a cursor only sees rows that exist. A row deleted from the warehouse (or one that leaves
//! a query model's `WHERE`) leaves no trace a cursor could read, so without this its key stays
//! live in the change topic — and in every destination — forever.
//!
//! How: at most every `reconcile_interval_ms` (checked after a poll that caught up, and once
//! after each start, since nothing is kept on local disk), the keys currently live in the
//! compacted change topic — the state cursor mode keeps for `before` images, or, with
//! `before_images = false`, rebuilt `read_committed` ([`Tracked`], ~24 bytes per key, built for
//! the reconciliation only and dropped after) — are compared with the model's keys, scanned
//! ([`Warehouse::scan`]), and every key live in the topic but absent from the model is emitted
//! as `d` (`before` = its last emitted image, read back from the topic) + tombstone, in Kafka
//! transactions of `batch_rows` together with the model's state record, the cursor position
//! unchanged — exactly as `diff` mode emits deletes (both use [`crate::changes::emit`]).
//!
//! It only emits deletes: new and changed rows belong to the cursor. A soft-deleted or expired
//! row still in the model counts as present (the cursor or the expiry sweep emits its delete),
//! so no two of them ever delete a key.
//! It runs in the model's own poll loop, between polls, so the change topic cannot move while it
//! compares. A crash between its transactions leaves a committed prefix; the next
//! reconciliation rebuilds the live keys from the topic and emits only the rest. The
//! data-quality gates (`max_change_pct`, `min_rows`, `max_rows`) apply to it as to a `diff` run:
//! an emptied upstream table halts the model instead of deleting everything downstream.

use std::time::{Duration, Instant};

use sluice_avro::ModelCodec;
use sluice_core::config::ModelConfig;
use sluice_warehouse::Warehouse;
use tracing::Instrument;

use crate::changes::{emit, scan_keys, DiffPlan};
use crate::context::ModelContext;
use crate::error::ModelError;
use crate::gates::{Confirmation, RunCounts};
use crate::tracked::{Keys, Tracked};

/// The hard deletes a reconciliation found.
pub struct Found {
    /// Rows the model returned.
    pub rows: u64,
    /// Keys live in the change topic.
    pub tracked: u64,
    /// Locations of the last events of the keys no longer in the model.
    pub deletes: Vec<u64>,
}

impl Found {
    /// What was found, as the gates see it.
    pub fn counts(&self) -> RunCounts {
        RunCounts { rows: self.rows, tracked: self.tracked, deletes: self.deletes.len() as u64, ..RunCounts::default() }
    }
}

/// Compare `keys` (the keys live in the change topic) with the model's keys. Emits nothing;
/// leaves no mark on `keys`.
pub async fn find_deletes<W: Warehouse>(warehouse: &W, model: &ModelConfig, codec: &ModelCodec, keys: &mut Keys) -> Result<Found, ModelError> {
    keys.clear_marks();
    let scanned = scan_keys(warehouse, model, codec, |_, hash| {
        // A NULL key was never emitted (its key cannot be encoded), so it matches nothing.
        if let Some(hash) = hash {
            keys.see(hash);
        }
    })
    .await;
    match scanned {
        Ok(rows) => Ok(Found { rows, tracked: keys.len() as u64, deletes: keys.take_unseen() }),
        Err(error) => {
            keys.clear_marks();
            Err(error.into())
        }
    }
}

/// When the reconciliation of one model is due.
pub struct Reconciler {
    interval: Option<Duration>,
    last: Option<Instant>,
    /// Lets the next reconciliation through the change-volume guard once.
    confirmation: Confirmation,
}

impl Reconciler {
    /// `interval_ms` = `reconcile_interval_ms` (`None`: never reconcile).
    pub fn new(interval_ms: Option<u64>, confirmation: Confirmation) -> Reconciler {
        Reconciler { interval: interval_ms.map(Duration::from_millis), last: None, confirmation }
    }

    /// Reconcile when configured, the first snapshot is complete and the interval has passed
    /// since the last reconciliation of this incarnation. Commits its deletes with the model's
    /// state record, position unchanged.
    pub async fn run_if_due<W: Warehouse>(&mut self, ctx: &mut ModelContext<'_, W>) -> Result<(), ModelError> {
        let Some(interval) = self.interval else { return Ok(()) };
        if !ctx.state().snapshot_done || self.last.is_some_and(|last| last.elapsed() < interval) {
            return Ok(());
        }
        let name = ctx.name();
        let run_id = uuid::Uuid::new_v4().to_string();
        let span = tracing::info_span!("poller.reconcile", model = %name, run_id = %run_id);
        async {
            let started = Instant::now();
            let topic = ctx.change_topic();
            let found = match ctx.committer.keys_mut() {
                Some(keys) => find_deletes(ctx.warehouse, ctx.model, &ctx.codec, keys).await?,
                None => {
                    let mut tracked = Tracked::load(&ctx.config.kafka, &topic, false).await?;
                    find_deletes(ctx.warehouse, ctx.model, &ctx.codec, tracked.keys_mut()).await?
                }
            };
            let counts = found.counts();
            self.confirmation.check_volume(name, &ctx.model.gates, counts, false, "reconciliation")?;
            let plan =
                DiffPlan { rows: found.rows, tracked: found.tracked, inserts: Vec::new(), updates: Vec::new(), unchanged: Vec::new(), deletes: found.deletes };
            emit(ctx, plan, &run_id).await?;
            metrics::counter!("sluice_poller_reconcile_deletes_total", "model" => name.to_string()).increment(counts.deletes);
            metrics::histogram!("sluice_poller_run_seconds", "model" => name.to_string(), "mode" => "reconcile")
                .record(started.elapsed().as_secs_f64());
            tracing::info!(
                model = %name,
                rows = counts.rows,
                tracked = counts.tracked,
                deletes = counts.deletes,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "reconciliation done: keys no longer in the model were deleted"
            );
            Ok::<(), ModelError>(())
        }
        .instrument(span)
        .await?;
        self.last = Some(Instant::now());
        Ok(())
    }
}

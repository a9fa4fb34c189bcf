//! Cursor mode: pages of rows whose cursor tuple (`cursor_column`, then the primary key) is past
//! the committed position, each page one Kafka transaction with the new position.
//!
//! Guarantees:
//! - **Exactly once for what a cursor can see.** A page's events and the position after its
//!   last row are committed together, so after a crash the poller continues strictly after the
//!   last committed page: nothing repeated, nothing skipped. The first snapshot is the same scan
//!   from the start (rows as `r`), complete when a poll finds no more rows.
//! - **Updates and deletes carry the previous image** (`before_images`, the default): the
//!   change topic's state (key hash → row hash and location of the latest event, ~24 bytes a
//!   key) is rebuilt from the topic at start, kept current by every commit (the committer), and
//!   each page's previous images are read back from the topic by location in one read (`page`),
//!   so a destination can move a changed identifier. The same state decides `c` against `u`
//!   exactly.
//! - **One rule per row** ([`CursorRules`], `rules`): snapshot read, insert, update, soft delete
//!   or expiry, shared by both loops and by `sluice plan`.
//! - **Late commits** are caught by the look-back window when `lookback_ms` is set (`window`):
//!   every poll re-reads the window and emits only the (key, cursor) pairs not emitted yet.
//! - **Hard deletes** are found by the reconciliation when `reconcile_interval_ms` is set
//!   (`reconcile`), **expired rows** by the sweep when the model has `expire` (`expire`): both
//!   between polls that caught up, in the model's own loop, so they never race the cursor.
//!
//! Not guaranteed (see `docs/poller.md`, "What cursor mode alone cannot see"): a change that
//! does not move the cursor, a commit later than the window, intermediate states between two
//! polls.

mod expire;
mod page;
mod plain;
mod reconcile;
mod rules;
mod window;

use sluice_core::config::Detection;
use sluice_kafka::producer::OutRecord;
use sluice_warehouse::Warehouse;
use tokio_util::sync::CancellationToken;

pub use reconcile::find_deletes;
use page::Images;
use reconcile::Reconciler;
pub use rules::{CursorRules, Known, OpCounts, PollContext};
pub use window::{micros, window_start};

use crate::context::{ModelContext, ModelOptions};
use crate::emit::count_events;
use crate::error::ModelError;
use crate::gates::Confirmation;
use crate::position::CursorPosition;

/// Poll `ctx`'s cursor model from `start` until shutdown or a fatal error: with a look-back
/// window when `lookback_ms` is set, reconciling hard deletes when `reconcile_interval_ms` is,
/// keeping the change topic's state for `before` images unless `before_images = false`.
pub async fn poll<W: Warehouse>(
    ctx: &mut ModelContext<'_, W>,
    start: CursorPosition,
    options: &ModelOptions,
    shutdown: &CancellationToken,
) -> Result<(), ModelError> {
    let (lookback_ms, reconcile_interval_ms, before_images) = match &ctx.model.detection {
        Detection::Cursor { lookback_ms, reconcile_interval_ms, before_images, .. } => (*lookback_ms, *reconcile_interval_ms, *before_images),
        Detection::Diff {} | Detection::WarehouseDiff {} => (None, None, false),
    };
    let images = if before_images { Some(Images::open(ctx).await?) } else { None };
    let reconciler = Reconciler::new(reconcile_interval_ms, Confirmation::new(options.confirm_large_change));
    let mut between = Between { reconciler, schedule: &options.schedule, shutdown };
    match lookback_ms {
        Some(lookback_ms) => window::poll(ctx, start, lookback_ms, images.as_ref(), &mut between).await,
        // A plain cursor never reads behind its position: pairs a window left are not needed.
        None => plain::poll(ctx, start.cursor, images.as_ref(), &mut between).await,
    }
}

/// What both loops do between polls: sweep expired rows and reconcile when due, then wait for
/// the next run.
struct Between<'s> {
    reconciler: Reconciler,
    schedule: &'s crate::triggers::Schedule,
    shutdown: &'s CancellationToken,
}

impl Between<'_> {
    /// After a poll that caught up: delete the rows that expired, reconcile if due, then wait
    /// until the next run is due or requested. False on shutdown.
    async fn caught_up<W: Warehouse>(&mut self, ctx: &mut ModelContext<'_, W>) -> Result<bool, ModelError> {
        // The sweep first: the reconciliation counts an expired row still in the model as
        // present, so an expiry is never the reconciliation's (gated) business.
        expire::sweep(ctx).await?;
        // The poll and its sweep are the run; the reconciliation is its own (gated) pass.
        ctx.run_succeeded();
        self.reconciler.run_if_due(ctx).await?;
        Ok(self.schedule.wait(self.shutdown).await)
    }
}

/// Commit one page's `records` with the new `position` text, and count its events.
async fn commit_page<W>(
    ctx: &mut ModelContext<'_, W>,
    run_id: &str,
    records: Vec<OutRecord>,
    counts: &OpCounts,
    position: String,
    snapshot_done: bool,
) -> Result<(), ModelError> {
    ctx.committer.commit_run(records, run_id, Some(position), snapshot_done, counts.total()).await?;
    count_events(ctx.name(), &counts.by_op());
    Ok(())
}

/// Mark the first snapshot complete when a poll finds no more rows and the last page was full
/// (a short page marks it complete by itself): without this, a model whose row count is a
/// multiple of `batch_rows` would keep emitting its changes as snapshot reads (`r`) and skip
/// its soft deletes. Commits the state record alone, position unchanged.
async fn complete_snapshot<W>(ctx: &mut ModelContext<'_, W>) -> Result<(), ModelError> {
    if ctx.state().snapshot_done {
        return Ok(());
    }
    let position = ctx.state().position.clone();
    ctx.committer.commit_run(Vec::new(), &uuid::Uuid::new_v4().to_string(), position, true, 0).await?;
    let state = ctx.state();
    tracing::info!(model = %state.model, events_total = state.events_total, "initial snapshot complete");
    Ok(())
}

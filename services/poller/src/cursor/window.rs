//! Cursor mode with a look-back window (`lookback_ms`): what plain cursor mode misses when a
//! transaction commits *after* rows with later cursor values were read (Kafka Connect JDBC's
//! #27 / #915). Every poll re-reads the window `cursor ≥ position − lookback` and emits only the
//! rows not emitted yet.
//!
//! "Emitted yet" is the set of (key hash, cursor value) pairs emitted inside the window. It is
//! kept in the state record (`position` = `{"cursor": [...], "recent": [[key_hash, micros], ...]}`,
//! see [`crate::position`]), committed in the same Kafka transaction as the events, and pruned
//! of pairs older than the window — so it is bounded by the number of changes per window, exact
//! across restarts, and needs no local disk. Limit: 20000 pairs (the state record must stay far below Kafka's 1 MB
//! message limit); a window holding more changes stops the model with a clear error.
//!
//! Soft deletes (`deleted_column`) follow the same rules as plain cursor mode (`rules`); hard
//! deletes are found by the reconciliation (`reconcile`) when `reconcile_interval_ms` is set.
//!
//! Not guaranteed: a transaction that stays open longer than the window; an update that leaves
//! the cursor value unchanged (as in plain cursor mode).

use std::collections::HashSet;

use sluice_core::{ColumnType, Row, Value};
use sluice_warehouse::{cursor_indexes, cursor_of, Warehouse, WarehouseError};
use tracing::Instrument;

use super::page::{Images, Page};
use super::rules::{CursorRules, PollContext};
use super::{commit_page, complete_snapshot, Between};
use crate::clock::now_ms;
use crate::context::ModelContext;
use crate::emit::ChangeWriter;
use crate::error::ModelError;
use crate::keys::key_hash;
use crate::position::{tuple_text, CursorPosition};

/// Most (key, cursor) pairs the state record may hold.
pub const MAX_RECENT: usize = 20_000;

/// The cursor micros of a timestamp value.
pub fn micros(value: &Value) -> Option<i64> {
    match value {
        Value::TimestampMicros(t) => Some(*t),
        _ => None,
    }
}

/// The lower bound of the window a poll re-reads: `lookback_ms` before the cursor position.
pub fn window_start(cursor: Option<&[Value]>, lookback_ms: u64) -> Option<Value> {
    let lookback_us = i64::try_from(lookback_ms).unwrap_or(i64::MAX / 1000) * 1000;
    cursor.and_then(|c| micros(&c[0])).map(|t| Value::TimestampMicros(t.saturating_sub(lookback_us)))
}

/// Poll `ctx`'s model in cursor mode with a look-back window, from `start`, until shutdown or
/// a fatal error; previous images read through `images` when kept.
pub(super) async fn poll<W: Warehouse>(
    ctx: &mut ModelContext<'_, W>,
    start: CursorPosition,
    lookback_ms: u64,
    images: Option<&Images>,
    between: &mut Between<'_>,
) -> Result<(), ModelError> {
    let name = ctx.name();
    let schema = ctx.codec.row_schema();
    let indexes = cursor_indexes(ctx.model, schema).expect("cursor mode has a cursor");
    if !matches!(schema.columns[indexes[0]].ty, ColumnType::TimestampMicros { .. }) {
        return Err(WarehouseError::Model {
            model: name.to_string(),
            message: format!("lookback_ms needs a timestamp cursor column; {:?} is not one", schema.columns[indexes[0]].name),
        }
        .into());
    }
    let mut window = Window {
        lookback_ms,
        rules: CursorRules::new(ctx.model, &ctx.codec, ctx.expiry),
        indexes,
        cursor: start.cursor,
        recent: start.recent.into_iter().collect(),
    };
    loop {
        let span = tracing::info_span!("poller.lookback_poll", model = %name);
        window.read(ctx, images).instrument(span).await?;
        if !between.caught_up(ctx).await? {
            return Ok(());
        }
    }
}

/// The window's state between polls: the committed cursor and the pairs emitted inside it.
struct Window {
    lookback_ms: u64,
    rules: CursorRules,
    /// Columns of the cursor tuple (cursor column, then primary key).
    indexes: Vec<usize>,
    cursor: Option<Vec<Value>>,
    recent: HashSet<(u64, i64)>,
}

impl Window {
    /// Read the whole window again, page by page, and emit the rows not emitted yet.
    async fn read<W: Warehouse>(&mut self, ctx: &mut ModelContext<'_, W>, images: Option<&Images>) -> Result<(), ModelError> {
        let name = ctx.name();
        let batch = ctx.model.batch_rows.max(1);
        let since = window_start(self.cursor.as_deref(), self.lookback_ms);
        let mut after: Option<Vec<Value>> = None;
        let mut late = 0u64;
        loop {
            let (model, schema) = (ctx.model, ctx.codec.row_schema());
            let rows = match &since {
                Some(since) => ctx.warehouse.fetch_since(model, schema, since, after.as_deref(), batch).await?,
                None => ctx.warehouse.fetch_after(model, schema, after.as_deref(), batch).await?,
            };
            let full = rows.len() == batch;
            let Some(last) = rows.last() else {
                complete_snapshot(ctx).await?;
                break;
            };
            after = Some(cursor_of(&self.indexes, last));
            late += self.emit_page(ctx, rows, full, images).await?;
            if !full {
                break;
            }
        }
        if late > 0 {
            metrics::counter!("sluice_poller_late_rows_total", "model" => name.to_string()).increment(late);
            tracing::info!(model = %name, late_rows = late, "rows that committed late were caught by the look-back window");
        }
        Ok(())
    }

    /// Emit the rows of one page of the window not emitted yet, and commit them with the new
    /// position when anything changed. `full`: the page was full (more may follow). Returns how
    /// many rows were behind the cursor (committed late).
    async fn emit_page<W>(&mut self, ctx: &mut ModelContext<'_, W>, rows: Vec<Row>, full: bool, images: Option<&Images>) -> Result<u64, ModelError> {
        let name = ctx.name();
        let run_id = uuid::Uuid::new_v4().to_string();
        let position_micros = self.cursor.as_ref().and_then(|c| micros(&c[0]));
        let snapshot_done = ctx.state().snapshot_done;
        let mut page = Page::new(PollContext { snapshot_done, run_start: self.cursor.as_ref().map(|c| c[0].clone()), now_ms: now_ms() });
        let mut late = 0u64;
        let mut new_cursor = self.cursor.clone();
        for row in rows {
            let mut key = Vec::with_capacity(32);
            ctx.codec.encode_key(&row, &mut key)?;
            let row_micros = micros(&row[self.indexes[0]]).unwrap_or(i64::MIN);
            if !self.recent.insert((key_hash(&key), row_micros)) {
                continue; // emitted by an earlier poll
            }
            if position_micros.is_some_and(|p| row_micros < p) {
                late += 1;
            }
            let row_cursor = cursor_of(&self.indexes, &row);
            if new_cursor.as_ref().and_then(|c| micros(&c[0])).is_none_or(|c| row_micros >= c) {
                new_cursor = Some(row_cursor.clone());
            }
            page.push(&self.rules, ctx.committer.keys(), row, key, tuple_text(&row_cursor));
        }
        // Pairs older than the next window will never be read again.
        if let Some(floor) = window_start(new_cursor.as_deref(), self.lookback_ms).as_ref().and_then(micros) {
            self.recent.retain(|&(_, t)| t >= floor);
        }
        if self.recent.len() > MAX_RECENT {
            return Err(WarehouseError::Model {
                model: name.to_string(),
                message: format!(
                    "more than {MAX_RECENT} rows changed within lookback_ms = {}; shorten lookback_ms or use mode = \"diff\"",
                    self.lookback_ms
                ),
            }
            .into());
        }
        let now_done = snapshot_done || !full;
        let counts = page.counts();
        let mut writer = ChangeWriter::new(ctx.config, name, &ctx.codec, &run_id);
        let records = page.records(&mut writer, images, &ctx.codec).await?;
        if !records.is_empty() || new_cursor != self.cursor || now_done != snapshot_done {
            let mut pairs: Vec<(u64, i64)> = self.recent.iter().copied().collect();
            pairs.sort_unstable();
            let position = CursorPosition { cursor: new_cursor.clone(), recent: pairs };
            commit_page(ctx, &run_id, records, &counts, position.window_text(), now_done).await?;
            self.cursor = new_cursor;
        }
        Ok(late)
    }
}

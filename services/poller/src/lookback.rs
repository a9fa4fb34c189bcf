//! Cursor mode with a look-back window (`lookback_ms`): what plain cursor mode misses when a
//! transaction commits *after* rows with later cursor values were read (Kafka Connect JDBC's
//! #27 / #915). Every poll re-reads the window `cursor ≥ position − lookback` and emits only the
//! rows not emitted yet.
//!
//! "Emitted yet" is the set of (key hash, cursor value) pairs emitted inside the window. It is
//! kept in the state record (`position` = `{"cursor": [...], "recent": [[key_hash, micros], ...]}`),
//! committed in the same Kafka transaction as the events, and pruned of pairs older than the
//! window — so it is bounded by the number of changes per window, exact across restarts, and
//! needs no local disk. Limit: 20000 pairs (the state record must stay far below Kafka's 1 MB
//! message limit); a window holding more changes stops the model with a clear error.
//!
//! Soft deletes (`deleted_column`) follow the same rules as plain cursor mode
//! ([`crate::cursor`]); hard deletes are found by the reconciliation ([`crate::reconcile`]) when
//! `reconcile_interval_ms` is set.
//!
//! Not guaranteed: a transaction that stays open longer than the window; an update that leaves
//! the cursor value unchanged (as in plain cursor mode).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use sluice_avro::{ModelCodec, PollerState};
use sluice_core::config::{Config, ModelConfig};
use sluice_core::{ColumnType, Value};
use sluice_kafka::producer::TransactionalProducer;
use sluice_warehouse::{cursor_indexes, cursor_of, Warehouse, WarehouseError};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cursor::{complete_snapshot, CursorRules, OpCounts};
use crate::emit::{commit, count_events, ChangeWriter};
use crate::clock::now_ms;
use crate::error::ModelError;
use crate::keys::key_hash;
use crate::reconcile::Reconciler;

/// Most (key, cursor) pairs the state record may hold.
pub const MAX_RECENT: usize = 20_000;

/// The stored position of a cursor model: the cursor tuple and, with a window, the (key hash,
/// cursor micros) pairs emitted inside it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Position {
    pub cursor: Option<Vec<Value>>,
    #[serde(default)]
    pub recent: Vec<(u64, i64)>,
}

/// Read a stored position (either shape).
pub(crate) fn parse(model: &str, position: Option<&str>) -> Result<Position, ModelError> {
    let Some(text) = position else { return Ok(Position::default()) };
    // A model switched from plain cursor mode stored the bare tuple.
    if let Ok(cursor) = serde_json::from_str::<Vec<Value>>(text) {
        return Ok(Position { cursor: Some(cursor), recent: Vec::new() });
    }
    serde_json::from_str(text).map_err(|e| ModelError::State(format!("model {model}: position {text:?}: {e}")))
}

pub(crate) fn micros(value: &Value) -> Option<i64> {
    match value {
        Value::TimestampMicros(t) => Some(*t),
        _ => None,
    }
}

/// The lower bound of the window a poll re-reads: `lookback_ms` before the cursor position.
pub(crate) fn window_start(cursor: Option<&[Value]>, lookback_ms: u64) -> Option<Value> {
    let lookback_us = i64::try_from(lookback_ms).unwrap_or(i64::MAX / 1000) * 1000;
    cursor.and_then(|c| micros(&c[0])).map(|t| Value::TimestampMicros(t.saturating_sub(lookback_us)))
}

/// Poll `model` in cursor mode with a look-back window until shutdown or a fatal error.
#[allow(clippy::too_many_arguments)]
pub async fn poll_cursor_lookback<W: Warehouse>(
    config: &Config,
    warehouse: &W,
    model: &ModelConfig,
    codec: &ModelCodec,
    producer: &TransactionalProducer,
    mut state: PollerState,
    lookback_ms: u64,
    reconciler: &mut Reconciler,
    schedule: &crate::triggers::Schedule,
    shutdown: &CancellationToken,
) -> Result<(), ModelError> {
    let name = model.name.get_ref().as_str();
    let schema = codec.row_schema();
    let indexes = cursor_indexes(model, schema).expect("cursor mode has a cursor");
    if !matches!(schema.columns[indexes[0]].ty, ColumnType::TimestampMicros { .. }) {
        return Err(WarehouseError::Model {
            model: name.to_string(),
            message: format!("lookback_ms needs a timestamp cursor column; {:?} is not one", schema.columns[indexes[0]].name),
        }
        .into());
    }
    let Position { mut cursor, recent } = parse(name, state.position.as_deref())?;
    let mut recent: HashSet<(u64, i64)> = recent.into_iter().collect();
    let rules = CursorRules::new(model, codec);
    let mut schemas_published = false;
    let batch = model.batch_rows.max(1);
    loop {
        let span = tracing::info_span!("poller.lookback_poll", model = %name);
        async {
            // The whole window is read again on every poll, page by page.
            let since = window_start(cursor.as_deref(), lookback_ms);
            let mut after: Option<Vec<Value>> = None;
            let mut late = 0u64;
            loop {
                let rows = match &since {
                    Some(since) => warehouse.fetch_since(model, schema, since, after.as_deref(), batch).await?,
                    None => warehouse.fetch_after(model, schema, after.as_deref(), batch).await?,
                };
                let full = rows.len() == batch;
                let Some(last) = rows.last() else {
                    complete_snapshot(config, codec, producer, &mut schemas_published, &mut state).await?;
                    break;
                };
                after = Some(cursor_of(&indexes, last));
                let run_id = uuid::Uuid::new_v4().to_string();
                let mut writer = ChangeWriter::new(config, name, codec, &run_id);
                let run_start = cursor.as_ref().map(|c| c[0].clone());
                let position_micros = cursor.as_ref().and_then(|c| micros(&c[0]));
                let mut records = Vec::new();
                let mut counts = OpCounts::default();
                let mut new_cursor = cursor.clone();
                for row in rows {
                    let mut key = Vec::with_capacity(32);
                    codec.encode_key(&row, &mut key)?;
                    let row_micros = micros(&row[indexes[0]]).unwrap_or(i64::MIN);
                    if !recent.insert((key_hash(&key), row_micros)) {
                        continue; // emitted by an earlier poll
                    }
                    if position_micros.is_some_and(|p| row_micros < p) {
                        late += 1;
                    }
                    let row_cursor = cursor_of(&indexes, &row);
                    if let Some(op) = rules.op(state.snapshot_done, run_start.as_ref(), &row) {
                        writer.set_position(Some(serde_json::to_string(&row_cursor).expect("values serialise")));
                        records.extend(crate::cursor::change(&mut writer, op, row, Some(key))?);
                        counts.add(op);
                    }
                    if new_cursor.as_ref().and_then(|c| micros(&c[0])).is_none_or(|c| row_micros >= c) {
                        new_cursor = Some(row_cursor);
                    }
                }
                // Pairs older than the next window will never be read again.
                if let Some(floor) = window_start(new_cursor.as_deref(), lookback_ms).as_ref().and_then(micros) {
                    recent.retain(|&(_, t)| t >= floor);
                }
                if recent.len() > MAX_RECENT {
                    return Err(WarehouseError::Model {
                        model: name.to_string(),
                        message: format!(
                            "more than {MAX_RECENT} rows changed within lookback_ms = {lookback_ms}; shorten lookback_ms or use mode = \"diff\""
                        ),
                    }
                    .into());
                }
                let snapshot_done = state.snapshot_done || !full;
                if !records.is_empty() || new_cursor != cursor || snapshot_done != state.snapshot_done {
                    let events = counts.total();
                    let mut pairs: Vec<(u64, i64)> = recent.iter().copied().collect();
                    pairs.sort_unstable();
                    let position = Position { cursor: new_cursor.clone(), recent: pairs };
                    let new_state = PollerState {
                        model: name.to_string(),
                        run_id: run_id.clone(),
                        position: Some(serde_json::to_string(&position).expect("serialises")),
                        snapshot_done,
                        events_total: state.events_total + events as i64,
                        committed_at_ms: now_ms(),
                    };
                    commit(config, codec, producer, &mut schemas_published, records, &new_state).await?;
                    state = new_state;
                    cursor = new_cursor;
                    count_events(name, &counts.by_op());
                }
                if !full {
                    break;
                }
            }
            if late > 0 {
                metrics::counter!("sluice_poller_late_rows_total", "model" => name.to_string()).increment(late);
                tracing::info!(model = %name, late_rows = late, "rows that committed late were caught by the look-back window");
            }
            Ok::<(), ModelError>(())
        }
        .instrument(span)
        .await?;
        reconciler.run_if_due(config, warehouse, model, codec, producer, &mut state, &mut schemas_published).await?;
        if !schedule.wait(shutdown).await {
            return Ok(());
        }
    }
}

//! What a row read by cursor mode becomes: one rule for the plain poll loop, the look-back
//! window and `sluice plan`, so the three can never disagree.
//!
//! - During the first snapshot a row is a snapshot read (`r`); a soft-deleted row is skipped
//!   (destinations never knew it, so there is nothing to delete).
//! - After it, a row is an insert (`c`) when its `created_column` is newer than the cursor the
//!   poll started from, otherwise an update (`u`).
//! - A row marked by `deleted_column` (`true`, or any non-NULL value) is a delete (`d`, the row
//!   as read as `before`, then a tombstone), except when `created_column` shows it was created
//!   since the last poll: then destinations never knew it and it is skipped.
//!
//! Why the soft-deleted row itself is the `before` image: cursor mode keeps no images (its
//! updates carry no `before` either); the row as read holds the key and every mapped column,
//! which is what a destination needs to find and remove the record. Hard deletes are not
//! visible to a cursor at all: see the reconciliation (`reconcile`).

use sluice_avro::ModelCodec;
use sluice_core::config::{Detection, ModelConfig};
use sluice_core::{Op, Row, Value};
use sluice_kafka::producer::OutRecord;

use crate::emit::ChangeWriter;
use crate::error::ModelError;

/// The columns that decide a row's op.
#[derive(Debug, Clone, Copy, Default)]
pub struct CursorRules {
    /// Index of `created_column`.
    created: Option<usize>,
    /// Index of `deleted_column`.
    deleted: Option<usize>,
}

impl CursorRules {
    /// The rules of a cursor model whose rows have the codec's schema.
    pub fn new(model: &ModelConfig, codec: &ModelCodec) -> CursorRules {
        let schema = codec.row_schema();
        match &model.detection {
            Detection::Cursor { created_column, deleted_column, .. } => CursorRules {
                created: created_column.as_deref().and_then(|c| schema.index_of(c)),
                deleted: deleted_column.as_deref().and_then(|c| schema.index_of(c)),
            },
            Detection::Diff {} | Detection::WarehouseDiff {} => CursorRules::default(),
        }
    }

    /// The op `row` is emitted with, or `None` when it is skipped. `run_start` is the cursor
    /// value the poll started from (`None` before anything was emitted).
    pub fn op(&self, snapshot_done: bool, run_start: Option<&Value>, row: &Row) -> Option<Op> {
        let deleted = self.deleted.is_some_and(|i| marks_deleted(&row[i]));
        if !snapshot_done {
            return (!deleted).then_some(Op::Read);
        }
        match classify_op(self.created, run_start, row) {
            Op::Create if deleted => None,
            _ if deleted => Some(Op::Delete),
            op => Some(op),
        }
    }
}

/// Whether a soft-delete column's value marks the row deleted: `true`, or any non-NULL value
/// of another type (`deleted_at`).
fn marks_deleted(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Boolean(deleted) => *deleted,
        _ => true,
    }
}

/// The records of `row` emitted as `op` (from [`CursorRules::op`]): a delete carries the row as
/// `before` and is followed by its tombstone, anything else carries it as `after`.
pub fn change(writer: &mut ChangeWriter<'_>, op: Op, row: Row, key: Option<Vec<u8>>) -> Result<Vec<OutRecord>, ModelError> {
    match op {
        Op::Delete => writer.change(op, Some(row), None, key),
        _ => writer.change(op, None, Some(row), key),
    }
}

/// Events of one poll (or plan) by op.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// Snapshot reads (`r`).
    pub reads: u64,
    /// Inserts (`c`).
    pub creates: u64,
    /// Updates (`u`).
    pub updates: u64,
    /// Deletes (`d`).
    pub deletes: u64,
}

impl OpCounts {
    /// Count one event of `op`.
    pub fn add(&mut self, op: Op) {
        match op {
            Op::Read => self.reads += 1,
            Op::Create => self.creates += 1,
            Op::Update => self.updates += 1,
            Op::Delete => self.deletes += 1,
        }
    }

    /// Events of every op.
    pub fn total(&self) -> u64 {
        self.reads + self.creates + self.updates + self.deletes
    }

    /// For [`crate::emit::count_events`].
    pub fn by_op(&self) -> [(Op, u64); 4] {
        [(Op::Read, self.reads), (Op::Create, self.creates), (Op::Update, self.updates), (Op::Delete, self.deletes)]
    }
}

/// Insert or update, in cursor mode after the snapshot: a row whose creation value is newer than
/// the cursor the run started from was created since the last run; without a creation column
/// every change is an update.
fn classify_op(created: Option<usize>, run_start_cursor: Option<&Value>, row: &Row) -> Op {
    match (created, run_start_cursor) {
        (Some(created), Some(start)) if value_after(&row[created], start) => Op::Create,
        (Some(_), None) => Op::Create,
        _ => Op::Update,
    }
}

fn value_after(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::TimestampMicros(a), Value::TimestampMicros(b)) | (Value::Long(a), Value::Long(b)) => a > b,
        (Value::Int(a), Value::Int(b)) | (Value::Date(a), Value::Date(b)) => a > b,
        (Value::String(a), Value::String(b)) => a > b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_after_run_start_is_an_insert() {
        let row = vec![Value::Long(1), Value::TimestampMicros(10), Value::TimestampMicros(10)];
        assert_eq!(classify_op(Some(2), Some(&Value::TimestampMicros(5)), &row), Op::Create);
        assert_eq!(classify_op(Some(2), Some(&Value::TimestampMicros(10)), &row), Op::Update);
        assert_eq!(classify_op(None, Some(&Value::TimestampMicros(5)), &row), Op::Update);
    }

    #[test]
    fn soft_deleted_rows_are_deletes_after_the_snapshot_and_skipped_during_it() {
        // (id, updated_at, created_at, deleted_at)
        let rules = CursorRules { created: Some(2), deleted: Some(3) };
        let start = Value::TimestampMicros(5);
        let row = |created: i64, deleted: Value| vec![Value::Long(1), Value::TimestampMicros(10), Value::TimestampMicros(created), deleted];
        let live = row(1, Value::Null);
        let gone = row(1, Value::TimestampMicros(9));
        assert_eq!(rules.op(false, None, &live), Some(Op::Read));
        assert_eq!(rules.op(false, None, &gone), None, "the first snapshot skips soft-deleted rows");
        assert_eq!(rules.op(true, Some(&start), &live), Some(Op::Update));
        assert_eq!(rules.op(true, Some(&start), &gone), Some(Op::Delete));
        assert_eq!(rules.op(true, Some(&start), &row(7, Value::Null)), Some(Op::Create));
        assert_eq!(rules.op(true, Some(&start), &row(7, Value::TimestampMicros(9))), None, "created and deleted since the last poll");
        let flags = CursorRules { created: None, deleted: Some(3) };
        assert_eq!(flags.op(true, Some(&start), &row(1, Value::Boolean(true))), Some(Op::Delete));
        assert_eq!(flags.op(true, Some(&start), &row(1, Value::Boolean(false))), Some(Op::Update), "false = not deleted");
        assert_eq!(flags.op(true, Some(&start), &row(7, Value::Boolean(true))), Some(Op::Delete), "no created_column: cannot tell");
    }
}

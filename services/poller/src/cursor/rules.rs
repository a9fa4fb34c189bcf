//! What a row read by cursor mode becomes: one rule for the plain poll loop, the look-back
//! window and `sluice plan`, so the three can never disagree.
//!
//! A row is *gone* when `deleted_column` marks it (`true`, or any non-NULL value) or when it is
//! expired (`expire`, at the poll's clock). With the tracked state of the change topic
//! (`before_images`, the default) the op follows from whether the row's key is live there:
//!
//! | key in the change topic | row present | row gone |
//! |---|---|---|
//! | live | `u` (the last emitted image as `before`) | `d` (the last emitted image as `before`) + tombstone |
//! | absent | `r` during the first snapshot, `c` after | skipped: destinations never knew it |
//!
//! So `c` against `u` is exact (a key created, deleted and created again is `c` again; a key
//! updated while the first snapshot runs is `u`), and `created_column` is not consulted.
//!
//! Without the state (`before_images = false`): during the first snapshot a row is `r` and a
//! gone row is skipped; after it, a row is `c` when its `created_column` is newer than the
//! cursor the poll started from, otherwise `u`; a marked row is `d` (the row as read as
//! `before`) unless `created_column` shows it was created since the last poll. Hard deletes are
//! not visible to a cursor at all: see the reconciliation (`reconcile`).

use sluice_core::config::{Detection, ModelConfig};
use sluice_core::{Op, Row, Value};

use crate::expiry::{is_expired, Expiry};

/// What the tracked state knows of a row's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// No state is kept (`before_images = false`).
    Untracked,
    /// The key is live in the change topic.
    Live,
    /// The key is not live in the change topic (never emitted, or deleted).
    Absent,
}

/// What the rules need to know about the poll a row was read by.
#[derive(Debug, Clone, PartialEq)]
pub struct PollContext {
    /// Whether the first snapshot is complete.
    pub snapshot_done: bool,
    /// The cursor value the poll started from (`None` before anything was emitted).
    pub run_start: Option<Value>,
    /// The poll's clock, for `expire`.
    pub now_ms: i64,
}

/// The columns that decide a row's op.
#[derive(Debug, Clone, Copy, Default)]
pub struct CursorRules {
    /// Index of `created_column`.
    created: Option<usize>,
    /// Index of `deleted_column`.
    deleted: Option<usize>,
    /// The model's expiry rule.
    expiry: Option<Expiry>,
}

impl CursorRules {
    /// The rules of a cursor model whose rows have the codec's schema, expiring by `expiry`.
    pub fn new(model: &ModelConfig, codec: &sluice_avro::ModelCodec, expiry: Option<Expiry>) -> CursorRules {
        let schema = codec.row_schema();
        match &model.detection {
            Detection::Cursor { created_column, deleted_column, .. } => CursorRules {
                created: created_column.as_deref().and_then(|c| schema.index_of(c)),
                deleted: deleted_column.as_deref().and_then(|c| schema.index_of(c)),
                expiry,
            },
            Detection::Diff {} | Detection::WarehouseDiff {} => CursorRules { expiry, ..CursorRules::default() },
        }
    }

    /// The op `row` is emitted with, or `None` when it is skipped; `known`: what the tracked
    /// state knows of its key.
    pub fn op(&self, poll: &PollContext, row: &Row, known: Known) -> Option<Op> {
        let gone = self.deleted.is_some_and(|i| marks_deleted(&row[i])) || is_expired(self.expiry.as_ref(), row, poll.now_ms);
        match known {
            Known::Live => Some(if gone { Op::Delete } else { Op::Update }),
            Known::Absent if gone => None,
            Known::Absent => Some(if poll.snapshot_done { Op::Create } else { Op::Read }),
            Known::Untracked if !poll.snapshot_done => (!gone).then_some(Op::Read),
            Known::Untracked => match classify_op(self.created, poll.run_start.as_ref(), row) {
                Op::Create if gone => None,
                _ if gone => Some(Op::Delete),
                op => Some(op),
            },
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

    fn poll(snapshot_done: bool, start: i64, now_ms: i64) -> PollContext {
        PollContext { snapshot_done, run_start: Some(Value::TimestampMicros(start)), now_ms }
    }

    #[test]
    fn without_state_soft_deleted_rows_are_deletes_after_the_snapshot_and_skipped_during_it() {
        // (id, updated_at, created_at, deleted_at)
        let rules = CursorRules { created: Some(2), deleted: Some(3), expiry: None };
        let start = poll(true, 5, 0);
        let row = |created: i64, deleted: Value| vec![Value::Long(1), Value::TimestampMicros(10), Value::TimestampMicros(created), deleted];
        let live = row(1, Value::Null);
        let gone = row(1, Value::TimestampMicros(9));
        let during = PollContext { snapshot_done: false, run_start: None, now_ms: 0 };
        assert_eq!(rules.op(&during, &live, Known::Untracked), Some(Op::Read));
        assert_eq!(rules.op(&during, &gone, Known::Untracked), None, "the first snapshot skips soft-deleted rows");
        assert_eq!(rules.op(&start, &live, Known::Untracked), Some(Op::Update));
        assert_eq!(rules.op(&start, &gone, Known::Untracked), Some(Op::Delete));
        assert_eq!(rules.op(&start, &row(7, Value::Null), Known::Untracked), Some(Op::Create));
        assert_eq!(rules.op(&start, &row(7, Value::TimestampMicros(9)), Known::Untracked), None, "created and deleted since the last poll");
        let flags = CursorRules { created: None, deleted: Some(3), expiry: None };
        assert_eq!(flags.op(&start, &row(1, Value::Boolean(true)), Known::Untracked), Some(Op::Delete));
        assert_eq!(flags.op(&start, &row(1, Value::Boolean(false)), Known::Untracked), Some(Op::Update), "false = not deleted");
        assert_eq!(flags.op(&start, &row(7, Value::Boolean(true)), Known::Untracked), Some(Op::Delete), "no created_column: cannot tell");
    }

    #[test]
    fn with_state_the_key_decides_create_update_delete_and_skip() {
        let rules = CursorRules { created: Some(2), deleted: Some(3), expiry: None };
        let row = |created: i64, deleted: Value| vec![Value::Long(1), Value::TimestampMicros(10), Value::TimestampMicros(created), deleted];
        let (old, new) = (row(1, Value::Null), row(7, Value::Null));
        let (old_gone, new_gone) = (row(1, Value::TimestampMicros(9)), row(7, Value::TimestampMicros(9)));
        for ctx in [poll(true, 5, 0), PollContext { snapshot_done: true, run_start: None, now_ms: 0 }] {
            // created_column is not consulted: the state knows.
            assert_eq!(rules.op(&ctx, &old, Known::Absent), Some(Op::Create), "a key the topic does not hold is new to destinations");
            assert_eq!(rules.op(&ctx, &new, Known::Live), Some(Op::Update), "a key the topic holds is an update");
            assert_eq!(rules.op(&ctx, &new_gone, Known::Live), Some(Op::Delete));
            assert_eq!(rules.op(&ctx, &old_gone, Known::Absent), None, "never known: nothing to delete");
        }
        let during = PollContext { snapshot_done: false, run_start: None, now_ms: 0 };
        assert_eq!(rules.op(&during, &old, Known::Absent), Some(Op::Read));
        assert_eq!(rules.op(&during, &old, Known::Live), Some(Op::Update), "read again during the snapshot: an update");
        assert_eq!(rules.op(&during, &old_gone, Known::Absent), None);
        assert_eq!(rules.op(&during, &old_gone, Known::Live), Some(Op::Delete));
    }

    #[test]
    fn an_expired_row_is_gone() {
        // (id, purchased_at): live for 1000 ms after purchased_at.
        let model = sluice_core::config::Config::parse(
            "t.toml",
            "[kafka]\nbootstrap_servers = \"k:9092\"\n[warehouse]\nkind = \"duckdb\"\npath = \"w.duckdb\"\n[[models]]\nname = \"p\"\ntable = \"p\"\nprimary_key = [\"id\"]\ncolumns = [\"id\", \"purchased_at\"]\ndetection = { mode = \"cursor\", cursor_column = \"purchased_at\" }\nexpire = { column = \"purchased_at\", after_ms = 1000 }\n",
        )
        .unwrap()
        .models[0]
            .clone();
        let schema = sluice_core::RowSchema {
            columns: vec![
                sluice_core::Column { name: "id".into(), ty: sluice_core::ColumnType::Long, nullable: false },
                sluice_core::Column { name: "purchased_at".into(), ty: sluice_core::ColumnType::TimestampMicros { utc: true }, nullable: false },
            ],
            primary_key: vec![0],
        };
        let rules = CursorRules { created: None, deleted: None, expiry: Expiry::of(&model, &schema).unwrap() };
        let row = vec![Value::Long(1), Value::TimestampMicros(5_000_000)]; // expires at 6000 ms
        let (before, at) = (poll(true, 0, 5_999), poll(true, 0, 6_000));
        assert_eq!(rules.op(&before, &row, Known::Absent), Some(Op::Create));
        assert_eq!(rules.op(&at, &row, Known::Absent), None, "inserted already expired: never emitted");
        assert_eq!(rules.op(&before, &row, Known::Live), Some(Op::Update));
        assert_eq!(rules.op(&at, &row, Known::Live), Some(Op::Delete), "a live key whose row expired is deleted");
        let snapshot = PollContext { snapshot_done: false, run_start: None, now_ms: 6_000 };
        assert_eq!(rules.op(&snapshot, &row, Known::Absent), None, "the first snapshot skips expired rows");
    }
}

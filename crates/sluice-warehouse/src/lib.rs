//! Warehouse access: describing a model's columns and reading its rows in cursor order.
//!
//! This crate knows nothing of Kafka or destinations. A warehouse implementation maps its native
//! types to sluice's [`ColumnType`]s deliberately — a type without a mapping is refused with the
//! column's name, never guessed — and reads pages of rows strictly after a cursor tuple.
//!
//! What `cursor` reading guarantees: rows come in (cursor column, primary key) order, and a page
//! starts strictly after the last row of the previous one, so rows sharing a cursor value are
//! neither skipped nor repeated across pages or restarts (Kafka Connect JDBC's #598). What it
//! cannot see: hard deletes, and a transaction that commits *after* later cursor values were
//! already read (out-of-order commits) — those need the look-back window and reconciliation of
//! the `diff` modes.

pub mod sql;
pub mod writeback;

mod backends;
mod notifications;
mod session;

use std::future::Future;

// The backends (`postgres`, `duckdb`) and `AnyWarehouse`, listed in one place.
pub use backends::*;
pub use notifications::{ChangeNotifications, Notifications};
pub use writeback::{SyncLog, SyncLogRow, SyncLogTable};

use sluice_core::config::ModelConfig;
use sluice_core::{ColumnType, Row, RowSchema, Value};

/// Warehouse failures, classified by what the caller must do.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    /// Connection lost, timeouts, serialization failures: run again later.
    #[error("warehouse unavailable: {0}")]
    Unavailable(String),
    /// The model does not fit (missing column, unmapped type, NULL in a key): the model stops
    /// with this message until an operator fixes the model or its config.
    #[error("model {model}: {message}")]
    Model { model: String, message: String },
    /// The configured warehouse cannot be served by this build or setup: stop and fix it.
    #[error("{0}")]
    Unsupported(String),
}

/// A warehouse that can serve models.
///
/// The engine (`sluice-poller`) only speaks through this trait (and [`SnapshotStore`],
/// [`ChangeNotifications`]), reached through [`AnyWarehouse`]. An SQL warehouse implements it
/// with the shared statements of [`sql`] and operations of `session`: it maps its types to
/// [`ColumnType`] in `describe`, states its [`sql::Dialect`], and runs statements on its
/// connection; `docs/warehouses.md` lists the files of a new one. Nothing here assumes a server,
/// a connection pool or Kafka.
pub trait Warehouse: Send + Sync {
    /// The model's columns and types, in config order, with its primary key.
    fn describe(&self, model: &ModelConfig) -> impl Future<Output = Result<RowSchema, WarehouseError>> + Send;

    /// One keyset page ([`Page`]): the read the three `fetch_*` methods are made of. A row with
    /// NULL in a key column refuses the whole page (nothing of it may be emitted).
    fn fetch_page(&self, model: &ModelConfig, schema: &RowSchema, page: Page) -> impl Future<Output = Result<Vec<Row>, WarehouseError>> + Send;

    /// Up to `limit` rows ordered by (cursor column, primary key), strictly after `after`
    /// (the cursor tuple of the last row already emitted; `None` = from the beginning).
    fn fetch_after(
        &self,
        model: &ModelConfig,
        schema: &RowSchema,
        after: Option<&[Value]>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Row>, WarehouseError>> + Send {
        self.fetch_page(model, schema, Page { order: PageOrder::Cursor, since: None, after: after.map(<[Value]>::to_vec), limit })
    }

    /// Like [`fetch_after`](Warehouse::fetch_after), restricted to rows whose cursor column is
    /// at least `since` (the look-back window's lower bound): the window is read again on every
    /// poll so a transaction that committed late is still seen.
    fn fetch_since(
        &self,
        model: &ModelConfig,
        schema: &RowSchema,
        since: &Value,
        after: Option<&[Value]>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Row>, WarehouseError>> + Send {
        self.fetch_page(model, schema, Page { order: PageOrder::Cursor, since: Some(since.clone()), after: after.map(<[Value]>::to_vec), limit })
    }

    /// Up to `limit` rows in primary-key order, strictly after the key tuple `after` (`None` =
    /// from the first key). The first snapshot reads a model in these chunks, one Kafka
    /// transaction each, so a crash resumes after the last committed key instead of starting
    /// over. Keyset paging: with an index on the key (any table's primary key) each chunk is a
    /// range scan; a `query` model is evaluated once per chunk.
    fn fetch_by_key(
        &self,
        model: &ModelConfig,
        schema: &RowSchema,
        after: Option<&[Value]>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Row>, WarehouseError>> + Send {
        self.fetch_page(model, schema, Page { order: PageOrder::Key, since: None, after: after.map(<[Value]>::to_vec), limit })
    }

    /// Row count and key health of the model, computed inside the warehouse in one statement:
    /// the first snapshot checks its key gates with this before it emits anything.
    fn check_keys(&self, model: &ModelConfig, schema: &RowSchema) -> impl Future<Output = Result<KeyCheck, WarehouseError>> + Send;

    /// Every row of the model, in no particular order, handed to `each` as it streams in (so
    /// a full read never holds the whole result set). Rows are returned as read: NULL keys and
    /// duplicates are the caller's to judge (its data-quality gates report them with samples).
    /// Returns the number of rows read. An error from `each` stops the read and is returned.
    fn scan<F>(&self, model: &ModelConfig, schema: &RowSchema, each: F) -> impl Future<Output = Result<u64, WarehouseError>> + Send
    where
        F: FnMut(Row) -> Result<(), WarehouseError> + Send;
}

/// The columns a keyset page is ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageOrder {
    /// The cursor tuple: cursor column, then the key (cursor mode). Refused for a model
    /// without a cursor.
    Cursor,
    /// The key (the first snapshot's chunks).
    Key,
}

/// One page of a keyset read: ordered by `order`, strictly after the tuple `after` (`None` =
/// from the beginning), with the first ordering column at least `since`, at most `limit` rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub order: PageOrder,
    pub since: Option<Value>,
    pub after: Option<Vec<Value>>,
    pub limit: usize,
}

/// One change found by an in-warehouse diff: `before` absent for inserts, `after` for deletes.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotChange {
    pub before: Option<Row>,
    pub after: Option<Row>,
}

/// What [`Warehouse::check_keys`] found: rows, and rows whose key is NULL or duplicated (each
/// duplicate beyond the first copy counts once), with up to five sample key tuples of each.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KeyCheck {
    pub rows: u64,
    pub null_keys: u64,
    pub null_samples: Vec<Row>,
    pub duplicate_keys: u64,
    pub duplicate_samples: Vec<Row>,
}

/// What the next `warehouse_diff` run would find ([`SnapshotStore::plan_snapshot`]): counts and
/// up to the requested number of sample key tuples per kind.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SnapshotPlan {
    pub rows: u64,
    pub tracked: u64,
    pub inserts: u64,
    pub updates: u64,
    pub deletes: u64,
    pub insert_samples: Vec<Row>,
    pub update_samples: Vec<Row>,
    pub delete_samples: Vec<Row>,
}

impl SnapshotPlan {
    /// Counts from the plan query's (`c` | `u` | `d`, count) rows; samples still empty.
    pub fn from_counts(rows: u64, tracked: u64, counts: &[(String, i64)]) -> SnapshotPlan {
        let count = |kind: &str| counts.iter().find(|(k, _)| k == kind).map_or(0, |(_, n)| *n as u64);
        SnapshotPlan { rows, tracked, inserts: count("c"), updates: count("u"), deletes: count("d"), ..SnapshotPlan::default() }
    }

    /// The kinds (`c`, `u`, `d`) that have changes, each with its empty sample list to fill.
    pub fn sample_slots(&mut self) -> impl Iterator<Item = (char, &mut Vec<Row>)> {
        [('c', self.inserts, &mut self.insert_samples), ('u', self.updates, &mut self.update_samples), ('d', self.deletes, &mut self.delete_samples)]
            .into_iter()
            .filter(|(_, count, _)| *count > 0)
            .map(|(kind, _, samples)| (kind, samples))
    }
}

/// The outcome of building a pending snapshot.
#[derive(Debug, Clone, PartialEq)]
pub enum PreparedSnapshot {
    /// The pending snapshot and its change list exist; the counts are what a run would emit.
    Ready { rows: u64, tracked: u64, inserts: u64, updates: u64, deletes: u64 },
    /// Rows with a NULL key column: nothing was kept. Samples are key tuples.
    NullKeys { count: u64, samples: Vec<Row> },
    /// Duplicate keys: nothing was kept. Samples are key tuples.
    DuplicateKeys { count: u64, samples: Vec<Row> },
}

/// A warehouse that can keep a model's previous snapshot itself and diff against it in SQL
/// (`warehouse_diff` mode). The protocol, which makes the mode exactly once together with the
/// poller's Kafka transactions:
///
/// 1. [`prepare_snapshot`](SnapshotStore::prepare_snapshot) stores the model's current rows as a
///    *pending* snapshot tagged with a run id, and the ordered list of changes against the
///    *current* snapshot — atomically (nothing is kept when a key gate fails).
/// 2. The poller emits [`snapshot_changes`](SnapshotStore::snapshot_changes) page by page, each
///    page in a Kafka transaction recording the run id and how many changes are emitted.
/// 3. Only after the last transaction committed, [`commit_snapshot`](SnapshotStore::commit_snapshot)
///    swaps the pending snapshot in.
///
/// After a crash, [`pending_snapshot`](SnapshotStore::pending_snapshot) returns the pending run
/// id: if Kafka holds state for that run, the poller resumes (or finishes the swap); otherwise
/// it calls [`discard_snapshot`](SnapshotStore::discard_snapshot). Default methods refuse, so a
/// warehouse without this capability still serves `cursor` and `diff`.
pub trait SnapshotStore: Send + Sync {
    /// The run id of the pending snapshot, if one exists.
    fn pending_snapshot(&self, model: &ModelConfig) -> impl Future<Output = Result<Option<String>, WarehouseError>> + Send {
        async move { Err(unsupported(model)) }
    }

    /// Build the pending snapshot and change list for `run_id` (replacing any older pending one).
    fn prepare_snapshot(
        &self,
        model: &ModelConfig,
        schema: &RowSchema,
        run_id: &str,
    ) -> impl Future<Output = Result<PreparedSnapshot, WarehouseError>> + Send {
        let _ = (schema, run_id);
        async move { Err(unsupported(model)) }
    }

    /// Up to `limit` changes of the pending run, in key order, after the first `skip`.
    fn snapshot_changes(
        &self,
        model: &ModelConfig,
        schema: &RowSchema,
        skip: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<SnapshotChange>, WarehouseError>> + Send {
        let _ = (schema, skip, limit);
        async move { Err(unsupported(model)) }
    }

    /// What the next run would find, computed read-only: no table is written, so a running
    /// poller's pending snapshot is untouched (`sluice plan`). Key gates are the caller's
    /// ([`Warehouse::check_keys`]).
    fn plan_snapshot(
        &self,
        model: &ModelConfig,
        schema: &RowSchema,
        samples: usize,
    ) -> impl Future<Output = Result<SnapshotPlan, WarehouseError>> + Send {
        let _ = (schema, samples);
        async move { Err(unsupported(model)) }
    }

    /// Make the pending snapshot the current one (after Kafka committed the whole run).
    fn commit_snapshot(&self, model: &ModelConfig) -> impl Future<Output = Result<(), WarehouseError>> + Send {
        async move { Err(unsupported(model)) }
    }

    /// Drop the pending snapshot (its run never reached Kafka, or a gate refused it).
    fn discard_snapshot(&self, model: &ModelConfig) -> impl Future<Output = Result<(), WarehouseError>> + Send {
        async move { Err(unsupported(model)) }
    }
}

fn unsupported(model: &ModelConfig) -> WarehouseError {
    WarehouseError::Model {
        model: model.name.get_ref().clone(),
        message: "this warehouse cannot keep snapshots (warehouse_diff mode); use mode = \"diff\"".into(),
    }
}

/// Column indexes of the cursor tuple: the cursor column, then the primary key. `None` for
/// modes without a cursor.
pub fn cursor_indexes(model: &ModelConfig, schema: &RowSchema) -> Option<Vec<usize>> {
    let sluice_core::config::Detection::Cursor { cursor_column, .. } = &model.detection else {
        return None;
    };
    let cursor = schema.index_of(cursor_column).expect("validated: cursor column is a model column");
    Some(std::iter::once(cursor).chain(schema.primary_key.iter().copied()).collect())
}

/// The cursor tuple of a row.
pub fn cursor_of(indexes: &[usize], row: &Row) -> Vec<Value> {
    indexes.iter().map(|&i| row[i].clone()).collect()
}

/// Text form of a cursor or key value, bound as a text parameter and cast back to its column's
/// type in SQL, so a stored position compares exactly as the column does (no float or time-zone
/// drift). Timestamps are rendered in UTC. `None` for NULL and bytes (never ordered).
pub fn value_text(value: &Value) -> Option<String> {
    use chrono::{DateTime, NaiveDate};
    Some(match value {
        Value::Null | Value::Bytes(_) => return None,
        Value::Boolean(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Long(i) => i.to_string(),
        Value::Double(d) => format!("{d:?}"),
        Value::String(s) | Value::Uuid(s) | Value::DecimalText(s) | Value::Json(s) => s.clone(),
        Value::TimestampMicros(us) => DateTime::from_timestamp_micros(*us)?.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
        Value::Date(days) => {
            let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
            epoch.checked_add_signed(chrono::Duration::days(i64::from(*days)))?.to_string()
        }
    })
}

/// The row schema of `model` from its columns' mapped types (in config order): key columns are
/// NOT NULL and must be orderable, and so must the cursor column. Every warehouse's `describe`
/// ends here once it has mapped its native types.
pub fn model_schema(model: &ModelConfig, types: Vec<ColumnType>) -> Result<RowSchema, WarehouseError> {
    let name = model.name.get_ref();
    let refuse = |message: String| WarehouseError::Model { model: name.clone(), message };
    let mut columns = Vec::with_capacity(types.len());
    for (column, ty) in model.columns.iter().zip(types) {
        let is_key = model.primary_key.contains(column);
        if is_key && !orderable(ty) {
            return Err(refuse(format!("key column {column:?} has a type that cannot be ordered")));
        }
        // Key columns must never be NULL (checked on every row); other columns may be.
        columns.push(sluice_core::Column { name: column.clone(), ty, nullable: !is_key });
    }
    let primary_key = model
        .primary_key
        .iter()
        .map(|k| model.columns.iter().position(|c| c == k).expect("validated: key columns are model columns"))
        .collect();
    let schema = RowSchema { columns, primary_key };
    if let Some(indexes) = cursor_indexes(model, &schema) {
        if !orderable(schema.columns[indexes[0]].ty) {
            return Err(refuse(format!("cursor column {:?} has a type that cannot be ordered", schema.columns[indexes[0]].name)));
        }
    }
    Ok(schema)
}

/// Refuse a page in which a row has NULL in a key column (nothing of it may be emitted): shared
/// by every warehouse's keyset pages.
pub fn refuse_null_keys(model: &str, schema: &RowSchema, rows: &[Row]) -> Result<(), WarehouseError> {
    for row in rows {
        if let Some(&k) = schema.primary_key.iter().find(|&&k| row[k].is_null()) {
            return Err(WarehouseError::Model {
                model: model.to_string(),
                message: format!("a row has NULL in key column {:?}; nothing of this page was emitted", schema.columns[k].name),
            });
        }
    }
    Ok(())
}

/// The cursor tuple's columns, or the model error that the model has no cursor.
pub fn cursor_order(model: &ModelConfig, schema: &RowSchema) -> Result<Vec<usize>, WarehouseError> {
    cursor_indexes(model, schema).ok_or_else(|| WarehouseError::Model {
        model: model.name.get_ref().clone(),
        message: format!("cursor reads need cursor mode, the model is in {} mode", model.detection.mode()),
    })
}

/// Whether a column type may serve in a cursor or key comparison.
pub fn orderable(ty: ColumnType) -> bool {
    !matches!(ty, ColumnType::Json | ColumnType::Bytes | ColumnType::Boolean)
}

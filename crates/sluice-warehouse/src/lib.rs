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

pub mod postgres;

use std::future::Future;

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
}

/// A warehouse that can serve models.
///
/// The engine (`sluice-poller`) only speaks through this trait, so another warehouse
/// (DuckDB, Snowflake, BigQuery, Redshift) is one more implementation: map its types to
/// [`ColumnType`] in `describe`, page by tuple comparison in `fetch_after`, stream a full read in
/// `scan`. Nothing here assumes a server, a connection pool or Kafka.
pub trait Warehouse: Send + Sync {
    /// The model's columns and types, in config order, with its primary key.
    fn describe(&self, model: &ModelConfig) -> impl Future<Output = Result<RowSchema, WarehouseError>> + Send;

    /// Up to `limit` rows ordered by (cursor column, primary key), strictly after `after`
    /// (the cursor tuple of the last row already emitted; `None` = from the beginning).
    fn fetch_after(
        &self,
        model: &ModelConfig,
        schema: &RowSchema,
        after: Option<&[Value]>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Row>, WarehouseError>> + Send;

    /// Every row of the model, in no particular order, handed to `each` as it streams in (so
    /// a full read never holds the whole result set). Rows are returned as read: NULL keys and
    /// duplicates are the caller's to judge (its data-quality gates report them with samples).
    /// Returns the number of rows read. An error from `each` stops the read and is returned.
    fn scan<F>(&self, model: &ModelConfig, schema: &RowSchema, each: F) -> impl Future<Output = Result<u64, WarehouseError>> + Send
    where
        F: FnMut(Row) -> Result<(), WarehouseError> + Send;
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

/// Whether a column type may serve in a cursor or key comparison.
pub fn orderable(ty: ColumnType) -> bool {
    !matches!(ty, ColumnType::Json | ColumnType::Bytes | ColumnType::Boolean)
}

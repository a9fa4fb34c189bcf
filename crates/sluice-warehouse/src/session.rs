//! The operations every SQL warehouse runs the same way, written once over a [`Session`]: keyset
//! pages, the key gates, and `warehouse_diff`'s build, change pages and read-only plan. The SQL
//! comes from [`crate::sql`]; a backend supplies only the session (run statements, read typed
//! rows on one connection) and what is truly its own (where a pending run id is recorded, its
//! transactions' connection).
//!
//! Guarantees, given a session whose statements run on one connection in order:
//! - A page never contains a row with a NULL key (the page is refused: nothing of it may be
//!   emitted), and its rows are read with the schema's types.
//! - [`prepare_snapshot`] builds the pending snapshot and its change list in one transaction and
//!   checks the key gates on the pending rows before any change is listed: either both tables
//!   exist, with the run recorded, or (gate refused, error, crash) nothing of the run is kept.
//! - [`plan_snapshot`] only reads.
//!
//! The operations are `async` because PostgreSQL's driver is; a session that never waits
//! (DuckDB's, on a blocking thread) runs them to completion with `futures::executor::block_on`.

use std::future::Future;

use sluice_core::config::ModelConfig;
use sluice_core::{Column, ColumnType, Row, RowSchema, Value};

use crate::sql::{self, Dialect, StateTables, STATE_SCHEMA};
use crate::{refuse_null_keys, KeyCheck, Page, PreparedSnapshot, SnapshotChange, SnapshotPlan, WarehouseError};

/// One connection to a warehouse, as the shared operations use it. Errors are classified by the
/// backend (retryable `Unavailable` vs the model's `Model`).
pub(crate) trait Session: Send {
    /// The model this session works for: errors name it.
    fn model(&self) -> &str;

    /// Run one or more statements that return no rows, in order.
    fn execute(&mut self, sql: &str) -> impl Future<Output = Result<(), WarehouseError>> + Send;

    /// The rows of a query, each read as `columns` (one per selected expression, in order);
    /// `params` are bound as text (`None` = NULL).
    fn query(&mut self, sql: &str, params: &[Option<String>], columns: &[Column]) -> impl Future<Output = Result<Vec<Row>, WarehouseError>> + Send;
}

/// A page of the model's rows ([`Page`]), refused if a row has a NULL key.
pub(crate) async fn page(session: &mut impl Session, dialect: &Dialect, model: &ModelConfig, schema: &RowSchema, page: &Page) -> Result<Vec<Row>, WarehouseError> {
    let statement = dialect.page(model, schema, page)?;
    let rows = session.query(&statement.sql, &statement.params, &schema.columns).await?;
    refuse_null_keys(model.name.get_ref(), schema, &rows)?;
    Ok(rows)
}

/// Rows, NULL keys and duplicate keys of `relation` (one statement), with up to five sample key
/// tuples of each kind of problem.
pub(crate) async fn check_keys(session: &mut impl Session, schema: &RowSchema, relation: &str) -> Result<KeyCheck, WarehouseError> {
    let keys = sql::key_list(schema);
    let key_columns: Vec<Column> = schema.key_columns().cloned().collect();
    let [rows, null_keys, duplicate_keys] = counts(session, &sql::key_check(relation, &keys)).await?;
    let mut check = KeyCheck { rows, null_keys, duplicate_keys, ..KeyCheck::default() };
    if check.null_keys > 0 {
        check.null_samples = session.query(&sql::null_key_samples(relation, &keys, 5), &[], &key_columns).await?;
    }
    if check.duplicate_keys > 0 {
        check.duplicate_samples = session.query(&sql::duplicate_key_samples(relation, &keys, 5), &[], &key_columns).await?;
    }
    Ok(check)
}

/// Build the pending snapshot and change list of `model` in one transaction (see the module
/// docs). `record_run` is the backend's statement that records the pending run's id; it runs in
/// the same transaction. The caller has created schema `sluice_state` if needed.
pub(crate) async fn prepare_snapshot(
    session: &mut impl Session,
    dialect: &Dialect,
    model: &ModelConfig,
    schema: &RowSchema,
    record_run: &str,
) -> Result<PreparedSnapshot, WarehouseError> {
    let tables = StateTables::of(model.name.get_ref());
    session.execute("BEGIN").await?;
    session.execute(&dialect.build_pending(model, schema, &tables)).await?;
    session.execute(record_run).await?;
    // Key gates first: a NULL or duplicated key would make the join lie.
    let check = check_keys(session, schema, &tables.pending).await?;
    if check.null_keys > 0 {
        session.execute("ROLLBACK").await?;
        return Ok(PreparedSnapshot::NullKeys { count: check.null_keys, samples: check.null_samples });
    }
    if check.duplicate_keys > 0 {
        session.execute("ROLLBACK").await?;
        return Ok(PreparedSnapshot::DuplicateKeys { count: check.duplicate_keys, samples: check.duplicate_samples });
    }
    session.execute(&dialect.build_changes(schema, &tables)).await?;
    session.execute("COMMIT").await?;
    let [rows, tracked, inserts, updates, deletes] = counts(session, &sql::change_counts(&tables)).await?;
    Ok(PreparedSnapshot::Ready { rows, tracked, inserts, updates, deletes })
}

/// Up to `limit` changes of the pending run after the first `skip`, in key order.
pub(crate) async fn snapshot_changes(
    session: &mut impl Session,
    dialect: &Dialect,
    model: &ModelConfig,
    schema: &RowSchema,
    skip: u64,
    limit: usize,
) -> Result<Vec<SnapshotChange>, WarehouseError> {
    let statement = dialect.changes_page(schema, &StateTables::of(model.name.get_ref()), skip, limit);
    // Two flags, then the kept image, then the new one, read with the model's columns.
    let flag = Column { name: "sluice_flag".into(), ty: ColumnType::Boolean, nullable: false };
    let width = schema.columns.len();
    let columns: Vec<Column> = [flag.clone(), flag].into_iter().chain(schema.columns.iter().cloned()).chain(schema.columns.iter().cloned()).collect();
    let rows = session.query(&statement.sql, &statement.params, &columns).await?;
    Ok(rows
        .into_iter()
        .map(|mut row| {
            let after = row.split_off(2 + width);
            let before = row.split_off(2);
            let set = |flag: &Value| matches!(flag, Value::Boolean(true));
            SnapshotChange { before: set(&row[0]).then_some(before), after: set(&row[1]).then_some(after) }
        })
        .collect())
}

/// What the next `warehouse_diff` run would find, read-only, with up to `samples` key tuples of
/// each kind.
pub(crate) async fn plan_snapshot(
    session: &mut impl Session,
    dialect: &Dialect,
    model: &ModelConfig,
    schema: &RowSchema,
    samples: usize,
) -> Result<SnapshotPlan, WarehouseError> {
    let name = model.name.get_ref().as_str();
    let [exists] = counts(session, &sql::table_exists(STATE_SCHEMA, &StateTables::name(name, "snapshot"))).await?;
    let plan = dialect.plan(model, schema, exists > 0);
    let [rows] = counts(session, &plan.rows()).await?;
    let [tracked] = counts(session, &plan.tracked()).await?;
    let kind = Column { name: "sluice_kind".into(), ty: ColumnType::String, nullable: false };
    let count = Column { name: "sluice_count".into(), ty: ColumnType::Long, nullable: false };
    let counted: Vec<(String, i64)> = session
        .query(&plan.counts(), &[], &[kind, count])
        .await?
        .into_iter()
        .map(|row| match &row[..] {
            [Value::String(kind), Value::Long(n)] => Ok((kind.clone(), *n)),
            other => Err(unexpected(name, other)),
        })
        .collect::<Result<_, _>>()?;
    let mut planned = SnapshotPlan::from_counts(rows, tracked, &counted);
    let key_columns: Vec<Column> = schema.key_columns().cloned().collect();
    for (kind, slot) in planned.sample_slots() {
        *slot = session.query(&plan.samples(kind, samples), &[], &key_columns).await?;
    }
    Ok(planned)
}

/// The one row of `N` BIGINT counts that `sql` selects.
async fn counts<const N: usize>(session: &mut impl Session, sql: &str) -> Result<[u64; N], WarehouseError> {
    let long = Column { name: "sluice_count".into(), ty: ColumnType::Long, nullable: false };
    let rows = session.query(sql, &[], &vec![long; N]).await?;
    let mut out = [0u64; N];
    let row = rows.first().ok_or_else(|| unexpected(session.model(), &[]))?;
    for (slot, value) in out.iter_mut().zip(row) {
        match value {
            Value::Long(n) => *slot = u64::try_from(*n).unwrap_or(0),
            _ => return Err(unexpected(session.model(), row)),
        }
    }
    Ok(out)
}

/// A count or plan query returned a shape its SQL cannot produce: a bug or an engine that does
/// not honour the dialect, so the model stops with what came back.
fn unexpected(model: &str, row: &[Value]) -> WarehouseError {
    WarehouseError::Model { model: model.to_string(), message: format!("the warehouse returned an unexpected row {row:?}") }
}

//! The sync log: row-level outcomes of the destinations, written back into the warehouse so
//! analysts can join what was activated with what happened to it (`docs/audit.md`).
//!
//! One table (`sluice_sync_log` unless configured otherwise), created if missing, with one row
//! per (destination, record id): the record's model, key (JSON text), op, action, status, error
//! class, vendor status, the poller run that emitted it, the sink batch that finished it, when
//! the sink finished it and when the row was written. Its SQL is built here from the backend's
//! [`Dialect`], once for every warehouse.
//!
//! Guarantees of [`SyncLog::write_sync_log`]:
//! - **Idempotent.** Rows are upserted by (destination, record id) in one statement, so writing
//!   a batch again (a redelivery after a crash) leaves exactly the rows it left the first time;
//!   a later outcome of the same record (a replay) replaces the earlier one.
//! - **All or nothing.** One statement: a failure leaves none of the batch's rows.
//! - Rows of one batch that share a (destination, record id) are written once, the last one
//!   winning (a statement may not touch a row twice).
//!
//! Not here: Kafka. The caller (the poller's writeback) decides when a batch is written and
//! commits its consumer offsets only after this returned `Ok`.

use std::collections::HashMap;
use std::future::Future;

use sluice_core::{Column, ColumnType, Value};

use crate::session::Session;
use crate::sql::{ident, Dialect, Statement};
use crate::{value_text, WarehouseError};

/// One row of the sync log: what a sink did with one record.
pub use sluice_core::SyncOutcome as SyncLogRow;

/// The sync-log table's name, `name` or `schema.name`, quoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncLogTable {
    name: String,
    quoted: String,
}

impl SyncLogTable {
    /// The table named by `parts` (`["name"]` or `["schema", "name"]`, as
    /// `WritebackConfig::table_parts` gives them).
    pub fn new(parts: &[&str]) -> SyncLogTable {
        SyncLogTable { name: parts.join("."), quoted: parts.iter().map(|p| ident(p)).collect::<Vec<_>>().join(".") }
    }

    /// The name as configured, for errors and logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The quoted, possibly schema-qualified name.
    pub fn sql(&self) -> &str {
        &self.quoted
    }
}

/// A warehouse that keeps the sync log.
pub trait SyncLog: Send + Sync {
    /// Create the table if missing, then upsert `rows` (see the module doc). Errors are
    /// classified like every warehouse error; the caller retries them all.
    fn write_sync_log(&self, table: &SyncLogTable, rows: &[SyncLogRow]) -> impl Future<Output = Result<(), WarehouseError>> + Send;
}

/// The columns, in order; the first two are the primary key, the last is set by the statement.
fn columns() -> [(&'static str, ColumnType, bool); 13] {
    use ColumnType::{Int, String as Text, TimestampMicros};
    let at = TimestampMicros { utc: true };
    [
        ("destination", Text, false),
        ("record_id", Text, false),
        ("model", Text, false),
        ("record_key", Text, true),
        ("op", Text, true),
        ("action", Text, true),
        ("status", Text, false),
        ("error_class", Text, true),
        ("vendor_status", Int, true),
        ("run_id", Text, true),
        ("batch_id", Text, false),
        ("outcome_at", at, false),
        ("written_at", at, false),
    ]
}

/// Parameters a row binds: every column but `written_at`.
const BOUND: usize = 12;

/// `CREATE TABLE IF NOT EXISTS` for the sync log, in the dialect's types.
pub fn create_table(dialect: &Dialect, table: &SyncLogTable) -> String {
    let columns: Vec<String> = columns()
        .iter()
        .map(|(name, ty, nullable)| format!("{name} {}{}", (dialect.cast_type)(*ty), if *nullable { "" } else { " NOT NULL" }))
        .collect();
    format!("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY (destination, record_id))", table.sql(), columns.join(", "))
}

/// The upsert of `rows` (at least one, each (destination, record id) once), every value bound
/// as text and cast back to its column's type.
pub fn upsert(dialect: &Dialect, table: &SyncLogTable, rows: &[&SyncLogRow]) -> Statement {
    let columns = columns();
    let mut params = Vec::with_capacity(rows.len() * BOUND);
    let mut tuples = Vec::with_capacity(rows.len());
    for row in rows {
        let values = [
            Some(row.destination.clone()),
            Some(row.record_id.clone()),
            Some(row.model.clone()),
            row.record_key.clone(),
            row.op.clone(),
            row.action.clone(),
            Some(row.status.clone()),
            row.error_class.clone(),
            row.vendor_status.map(|s| s.to_string()),
            row.run_id.clone(),
            Some(row.batch_id.clone()),
            value_text(&Value::TimestampMicros(row.at_ms.saturating_mul(1000))),
        ];
        let mut placeholders: Vec<String> = values
            .into_iter()
            .zip(&columns)
            .map(|(value, (_, ty, _))| {
                params.push(value);
                dialect.param(params.len(), *ty)
            })
            .collect();
        placeholders.push("CURRENT_TIMESTAMP".into());
        tuples.push(format!("({})", placeholders.join(", ")));
    }
    let names: Vec<&str> = columns.iter().map(|(name, _, _)| *name).collect();
    let updates: Vec<String> = names[2..].iter().map(|name| format!("{name} = excluded.{name}")).collect();
    let sql = format!(
        "INSERT INTO {} ({}) VALUES {} ON CONFLICT (destination, record_id) DO UPDATE SET {}",
        table.sql(),
        names.join(", "),
        tuples.join(", "),
        updates.join(", ")
    );
    Statement { sql, params }
}

/// The rows to write: each (destination, record id) once, its last row, in first-seen order.
fn last_per_record(rows: &[SyncLogRow]) -> Vec<&SyncLogRow> {
    let mut at: HashMap<(&str, &str), usize> = HashMap::with_capacity(rows.len());
    let mut kept: Vec<&SyncLogRow> = Vec::with_capacity(rows.len());
    for row in rows {
        match at.get(&(row.destination.as_str(), row.record_id.as_str())) {
            Some(&i) => kept[i] = row,
            None => {
                at.insert((&row.destination, &row.record_id), kept.len());
                kept.push(row);
            }
        }
    }
    kept
}

/// Create the table if missing and upsert `rows`, on one session (see the module doc).
pub(crate) async fn write_sync_log(session: &mut impl Session, dialect: &Dialect, table: &SyncLogTable, rows: &[SyncLogRow]) -> Result<(), WarehouseError> {
    session.execute(&create_table(dialect, table)).await?;
    let rows = last_per_record(rows);
    if rows.is_empty() {
        return Ok(());
    }
    let statement = upsert(dialect, table, &rows);
    let none: [Column; 0] = [];
    session.query(&statement.sql, &statement.params, &none).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::pg_like;


    fn row(record: &str, status: &str) -> SyncLogRow {
        SyncLogRow {
            destination: "crm".into(),
            record_id: record.into(),
            model: "customers".into(),
            record_key: Some("{\"id\":1}".into()),
            op: Some("c".into()),
            action: Some("upsert".into()),
            status: status.into(),
            error_class: None,
            vendor_status: Some(422),
            run_id: None,
            batch_id: "b".into(),
            at_ms: 1_000,
        }
    }

    #[test]
    fn the_table_is_keyed_by_destination_and_record_and_named_as_configured() {
        let table = SyncLogTable::new(&["analytics", "sync log"]);
        assert_eq!(table.sql(), "\"analytics\".\"sync log\"");
        let ddl = create_table(&pg_like(), &SyncLogTable::new(&["sluice_sync_log"]));
        assert_eq!(
            ddl,
            "CREATE TABLE IF NOT EXISTS \"sluice_sync_log\" (destination text NOT NULL, record_id text NOT NULL, model text NOT NULL, \
             record_key text, op text, action text, status text NOT NULL, error_class text, vendor_status integer, run_id text, \
             batch_id text NOT NULL, outcome_at timestamptz NOT NULL, written_at timestamptz NOT NULL, PRIMARY KEY (destination, record_id))"
        );
    }

    #[test]
    fn the_upsert_binds_every_value_as_text_and_replaces_all_but_the_key() {
        let (a, b) = (row("t/0/1", "applied"), SyncLogRow { run_id: Some("r".into()), ..row("t/0/2", "refused") });
        let statement = upsert(&pg_like(), &SyncLogTable::new(&["log"]), &[&a, &b]);
        assert!(statement.sql.starts_with("INSERT INTO \"log\" (destination, record_id, model, record_key, op, action, status, error_class, vendor_status, run_id, batch_id, outcome_at, written_at) VALUES (CAST($1::text AS text), "), "{}", statement.sql);
        assert!(statement.sql.contains("CAST($9::text AS integer), CAST($10::text AS text), CAST($11::text AS text), CAST($12::text || '+00' AS timestamptz), CURRENT_TIMESTAMP), (CAST($13::text AS text)"), "{}", statement.sql);
        assert!(statement.sql.ends_with("ON CONFLICT (destination, record_id) DO UPDATE SET model = excluded.model, record_key = excluded.record_key, op = excluded.op, action = excluded.action, status = excluded.status, error_class = excluded.error_class, vendor_status = excluded.vendor_status, run_id = excluded.run_id, batch_id = excluded.batch_id, outcome_at = excluded.outcome_at, written_at = excluded.written_at"), "{}", statement.sql);
        assert_eq!(statement.params.len(), 24);
        assert_eq!(statement.params[8].as_deref(), Some("422"));
        assert_eq!(statement.params[9], None, "no run id: NULL");
        assert_eq!(statement.params[11].as_deref(), Some("1970-01-01 00:00:01.000000"));
        assert_eq!(statement.params[21].as_deref(), Some("r"));
    }

    #[test]
    fn a_batch_writes_each_record_once_its_last_outcome_winning() {
        let rows = [row("t/0/1", "refused"), row("t/0/2", "applied"), row("t/0/1", "applied"), SyncLogRow { destination: "ads".into(), ..row("t/0/1", "skipped") }];
        let kept: Vec<(&str, &str, &str)> = last_per_record(&rows).iter().map(|r| (r.destination.as_str(), r.record_id.as_str(), r.status.as_str())).collect();
        assert_eq!(kept, [("crm", "t/0/1", "applied"), ("crm", "t/0/2", "applied"), ("ads", "t/0/1", "skipped")]);
    }
}

//! DuckDB as a warehouse: embedded and file-backed, so the quickstart (and a small team's
//! analytics file built by dbt-duckdb) needs nothing but Kafka.
//!
//! **One writer at a time.** A DuckDB file can be open read-write by one process only. sluice
//! therefore opens the file for each operation (a page, a scan, a snapshot step) and closes it
//! right after, so the job that builds the file can write between runs; a lock held by another
//! process is waited out (up to [`LOCK_WAIT`]) and then reported as `Unavailable`, which the
//! poller retries with backoff. Every operation is one statement or one transaction, so each
//! sees a consistent state of the file. DuckDB's lock is a POSIX record lock, which is per
//! *process*: two connections opened by one process (two models of one poller, a test and the
//! poller it runs) would both get it and corrupt each other. Operations on one file are
//! therefore also serialised inside the process ([`DuckDb::run`]).
//!
//! **A missing file is an error**, never a new empty warehouse: opening a path that does not
//! exist would otherwise create one, and a `diff` model would see every row deleted.
//!
//! Type mapping (read from `DESCRIBE`; anything else is refused by name with a cast to use):
//! BOOLEAN → Boolean; TINYINT, SMALLINT, INTEGER, UTINYINT, USMALLINT → Int; BIGINT, UINTEGER →
//! Long; FLOAT, DOUBLE → Double; VARCHAR → String; BLOB → Bytes; DATE → Date; TIMESTAMP,
//! TIMESTAMP_MS, TIMESTAMP_S → TimestampMicros(local); TIMESTAMP WITH TIME ZONE →
//! TimestampMicros(utc); DECIMAL(p,s) → Decimal (read as text, exact); UUID → Uuid; JSON →
//! Json. Lists, structs, maps, HUGEINT, UBIGINT and TIMESTAMP_NS are refused (they have no
//! lossless mapping; cast them in a `query` model).
//!
//! Keyset predicates are spelled out ([`crate::sql::tuple_after`]) and parameters are bound as
//! text and cast back to the column's type, as for PostgreSQL.
//!
//! `warehouse_diff` keeps, in schema `sluice_state`, `<model>_snapshot` (rows last emitted),
//! `<model>_pending` and `<model>_changes` (built in one transaction with the run id recorded in
//! `sluice_state.pending_runs`), and compares rows column by column (`IS DISTINCT FROM`), so
//! no hash function's stability across DuckDB versions matters.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ::duckdb::types::{TimeUnit, ValueRef};
use ::duckdb::{params_from_iter, Connection};
use sluice_core::config::ModelConfig;
use sluice_core::{Column, ColumnType, Row, RowSchema, Value};

use crate::sql::{self, ident};
use crate::{cursor_order, model_schema, refuse_null_keys, value_text, KeyCheck, PreparedSnapshot, SnapshotChange, SnapshotPlan, SnapshotStore, Warehouse, WarehouseError};

/// How long an operation waits for another process's lock on the file before giving up.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

const STATE_SCHEMA: &str = "sluice_state";

/// A DuckDB database file.
#[derive(Debug, Clone)]
pub struct DuckDb {
    path: PathBuf,
}

impl DuckDb {
    /// Check that the file exists and can be opened; nothing is kept open.
    pub async fn open(path: &Path) -> Result<DuckDb, WarehouseError> {
        let db = DuckDb { path: path.to_path_buf() };
        let probe = db.clone();
        tokio::task::spawn_blocking(move || probe.run(|_| Ok(()))).await.expect("duckdb open does not panic")?;
        Ok(db)
    }

    /// Create the file (and its folder) if missing, then [`open`](DuckDb::open) it.
    pub async fn create(path: &Path) -> Result<DuckDb, WarehouseError> {
        let path = path.to_path_buf();
        let created = path.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| WarehouseError::Unavailable(format!("creating {}: {e}", parent.display())))?;
            }
            let lock = process_lock(&created);
            let _turn = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            Connection::open(&created).map(drop).map_err(|e| WarehouseError::Unavailable(format!("creating DuckDB file {}: {e}", created.display())))
        })
        .await
        .expect("duckdb create does not panic")?;
        DuckDb::open(&path).await
    }

    /// Run a SQL script on the file (one connection, statements in order).
    pub async fn execute_script(&self, sql: &str) -> Result<(), WarehouseError> {
        let sql = sql.to_string();
        self.with(move |c| c.execute_batch(&sql).map_err(|e| WarehouseError::Unavailable(e.to_string()))).await
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` on a fresh connection, holding this process's lock on the file (see the module
    /// docs) and waiting out another process's. Blocking: call from a blocking thread.
    pub fn run<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T, WarehouseError>) -> Result<T, WarehouseError> {
        let lock = process_lock(&self.path);
        let _turn = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut connection = self.connect()?;
        f(&mut connection)
    }

    /// Open the file, waiting out another process's lock.
    fn connect(&self) -> Result<Connection, WarehouseError> {
        if !self.path.is_file() {
            return Err(WarehouseError::Unavailable(format!(
                "DuckDB file {} does not exist (sluice never creates an empty warehouse; run the job that builds it)",
                self.path.display()
            )));
        }
        let deadline = Instant::now() + LOCK_WAIT;
        let mut delay = Duration::from_millis(5);
        loop {
            match Connection::open(&self.path) {
                Ok(connection) => return Ok(connection),
                Err(e) if is_lock_conflict(&e) && Instant::now() < deadline => {
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_millis(250));
                }
                Err(e) => return Err(WarehouseError::Unavailable(format!("opening DuckDB file {}: {e}", self.path.display()))),
            }
        }
    }

    /// Run `f` with a fresh connection on a blocking thread.
    async fn with<T, F>(&self, f: F) -> Result<T, WarehouseError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, WarehouseError> + Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.run(f)).await.expect("duckdb work does not panic")
    }
}

/// This process's lock on a DuckDB file, shared by every [`DuckDb`] of the same path.
fn process_lock(path: &Path) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = OnceLock::new();
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut locks = LOCKS.get_or_init(Default::default).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    Arc::clone(locks.entry(key).or_default())
}

fn is_lock_conflict(e: &::duckdb::Error) -> bool {
    let text = e.to_string();
    text.contains("Could not set lock") || text.contains("Conflicting lock")
}

/// Lock conflicts and I/O trouble are worth retrying; anything else is the model's (bad SQL,
/// a missing table or column).
fn classify(model: &str, e: ::duckdb::Error) -> WarehouseError {
    let text = e.to_string();
    if is_lock_conflict(&e) || text.starts_with("IO Error") || text.contains("Interrupted") {
        WarehouseError::Unavailable(text)
    } else {
        WarehouseError::Model { model: model.to_string(), message: text }
    }
}

fn column_type(model: &str, column: &str, duck_type: &str) -> Result<ColumnType, WarehouseError> {
    Ok(match duck_type {
        "BOOLEAN" => ColumnType::Boolean,
        "TINYINT" | "SMALLINT" | "INTEGER" | "UTINYINT" | "USMALLINT" => ColumnType::Int,
        "BIGINT" | "UINTEGER" => ColumnType::Long,
        "FLOAT" | "DOUBLE" => ColumnType::Double,
        "VARCHAR" => ColumnType::String,
        "BLOB" => ColumnType::Bytes,
        "DATE" => ColumnType::Date,
        "TIMESTAMP" | "TIMESTAMP_MS" | "TIMESTAMP_S" => ColumnType::TimestampMicros { utc: false },
        "TIMESTAMP WITH TIME ZONE" => ColumnType::TimestampMicros { utc: true },
        "UUID" => ColumnType::Uuid,
        "JSON" => ColumnType::Json,
        other => match decimal_precision_scale(other) {
            Some((precision, scale)) => ColumnType::Decimal { precision, scale },
            None => {
                return Err(WarehouseError::Model {
                    model: model.to_string(),
                    message: format!(
                        "column {column:?} has DuckDB type {other}, which sluice does not map; cast it in a `query` model (e.g. CAST({column} AS VARCHAR))"
                    ),
                })
            }
        },
    })
}

/// `DECIMAL(p,s)` → (p, s).
fn decimal_precision_scale(duck_type: &str) -> Option<(u32, u32)> {
    let inner = duck_type.strip_prefix("DECIMAL(")?.strip_suffix(')')?;
    let (p, s) = inner.split_once(',')?;
    Some((p.trim().parse().ok()?, s.trim().parse().ok()?))
}

/// The SQL expression that reads a column: decimals, UUIDs and JSON are read as text (exact).
fn select_expr(reference: &str, column: &Column) -> String {
    match column.ty {
        ColumnType::Decimal { .. } | ColumnType::DecimalText | ColumnType::Uuid | ColumnType::Json => format!("CAST({reference} AS VARCHAR)"),
        _ => reference.to_string(),
    }
}

fn select_list(schema: &RowSchema) -> String {
    schema.columns.iter().map(|c| select_expr(&ident(&c.name), c)).collect::<Vec<_>>().join(", ")
}

/// DuckDB type to cast a text parameter to.
fn cast_name(ty: ColumnType) -> String {
    match ty {
        ColumnType::Boolean => "BOOLEAN".into(),
        ColumnType::Int => "INTEGER".into(),
        ColumnType::Long => "BIGINT".into(),
        ColumnType::Double => "DOUBLE".into(),
        ColumnType::String | ColumnType::Json | ColumnType::DecimalText => "VARCHAR".into(),
        ColumnType::Bytes => "BLOB".into(),
        ColumnType::TimestampMicros { utc: false } => "TIMESTAMP".into(),
        ColumnType::TimestampMicros { utc: true } => "TIMESTAMPTZ".into(),
        ColumnType::Date => "DATE".into(),
        ColumnType::Uuid => "UUID".into(),
        ColumnType::Decimal { precision, scale } => format!("DECIMAL({precision},{scale})"),
    }
}

/// Placeholder `$n` cast back to the column type; zoned timestamps are given in UTC.
fn param(position: usize, ty: ColumnType) -> String {
    match ty {
        ColumnType::TimestampMicros { utc: true } => format!("CAST(${position} || '+00' AS TIMESTAMPTZ)"),
        _ => format!("CAST(${position} AS {})", cast_name(ty)),
    }
}

fn micros(unit: TimeUnit, value: i64) -> i64 {
    match unit {
        TimeUnit::Second => value.saturating_mul(1_000_000),
        TimeUnit::Millisecond => value.saturating_mul(1_000),
        TimeUnit::Microsecond => value,
        TimeUnit::Nanosecond => value.div_euclid(1_000),
    }
}

fn read_value(value: ValueRef<'_>, column: &Column) -> Result<Value, String> {
    let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).map_err(|_| format!("column {:?} holds text that is not UTF-8", column.name));
    Ok(match (column.ty, value) {
        (_, ValueRef::Null) => Value::Null,
        (ColumnType::Boolean, ValueRef::Boolean(b)) => Value::Boolean(b),
        (ColumnType::Int, ValueRef::TinyInt(i)) => Value::Int(i32::from(i)),
        (ColumnType::Int, ValueRef::SmallInt(i)) => Value::Int(i32::from(i)),
        (ColumnType::Int, ValueRef::Int(i)) => Value::Int(i),
        (ColumnType::Int, ValueRef::UTinyInt(i)) => Value::Int(i32::from(i)),
        (ColumnType::Int, ValueRef::USmallInt(i)) => Value::Int(i32::from(i)),
        (ColumnType::Long, ValueRef::BigInt(i)) => Value::Long(i),
        (ColumnType::Long, ValueRef::UInt(i)) => Value::Long(i64::from(i)),
        (ColumnType::Double, ValueRef::Float(f)) => Value::Double(f64::from(f)),
        (ColumnType::Double, ValueRef::Double(f)) => Value::Double(f),
        (ColumnType::String, ValueRef::Text(t)) => Value::String(text(t)?),
        (ColumnType::Json, ValueRef::Text(t)) => Value::Json(text(t)?),
        (ColumnType::Uuid, ValueRef::Text(t)) => Value::Uuid(text(t)?),
        (ColumnType::Decimal { .. } | ColumnType::DecimalText, ValueRef::Text(t)) => Value::DecimalText(text(t)?),
        (ColumnType::Bytes, ValueRef::Blob(b)) => Value::Bytes(b.to_vec()),
        (ColumnType::Date, ValueRef::Date32(days)) => Value::Date(days),
        (ColumnType::TimestampMicros { .. }, ValueRef::Timestamp(unit, v)) => Value::TimestampMicros(micros(unit, v)),
        (ty, other) => return Err(format!("column {:?}: DuckDB returned {:?} for a {ty:?} column", column.name, other.data_type())),
    })
}

/// Read every row of a prepared query into `each` as [`Row`]s of `columns`.
fn query_rows(
    connection: &Connection,
    model: &str,
    sql: &str,
    params: &[Option<String>],
    columns: &[Column],
    mut each: impl FnMut(Row) -> Result<(), WarehouseError>,
) -> Result<u64, WarehouseError> {
    let mut statement = connection.prepare(sql).map_err(|e| classify(model, e))?;
    let mut rows = statement.query(params_from_iter(params.iter())).map_err(|e| classify(model, e))?;
    let mut count = 0;
    while let Some(row) = rows.next().map_err(|e| classify(model, e))? {
        let values = columns
            .iter()
            .enumerate()
            .map(|(i, column)| row.get_ref(i).map_err(|e| e.to_string()).and_then(|v| read_value(v, column)))
            .collect::<Result<Row, String>>()
            .map_err(|message| WarehouseError::Model { model: model.to_string(), message: format!("cannot read a row: {message}") })?;
        each(values)?;
        count += 1;
    }
    Ok(count)
}

fn collect_rows(connection: &Connection, model: &str, sql: &str, params: &[Option<String>], columns: &[Column]) -> Result<Vec<Row>, WarehouseError> {
    let mut out = Vec::new();
    query_rows(connection, model, sql, params, columns, |row| {
        out.push(row);
        Ok(())
    })?;
    Ok(out)
}

fn key_check_of(connection: &Connection, model: &str, schema: &RowSchema, relation: &str) -> Result<KeyCheck, WarehouseError> {
    let keys: Vec<String> = schema.key_columns().map(|c| ident(&c.name)).collect();
    let key_columns: Vec<Column> = schema.key_columns().cloned().collect();
    let (rows, null_keys, duplicate_keys) = connection
        .query_row(&sql::key_check(relation, &keys), [], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, i64>(2)?)))
        .map_err(|e| classify(model, e))?;
    let mut check = KeyCheck { rows: rows as u64, null_keys: null_keys as u64, duplicate_keys: duplicate_keys as u64, ..KeyCheck::default() };
    if check.null_keys > 0 {
        check.null_samples = collect_rows(connection, model, &sql::null_key_samples(relation, &keys, 5), &[], &key_columns)?;
    }
    if check.duplicate_keys > 0 {
        check.duplicate_samples = collect_rows(connection, model, &sql::duplicate_key_samples(relation, &keys, 5), &[], &key_columns)?;
    }
    Ok(check)
}

/// A page ordered by the columns `indexes`, strictly after `after`, first column ≥ `since`.
fn fetch_page(
    connection: &Connection,
    model: &ModelConfig,
    schema: &RowSchema,
    indexes: &[usize],
    since: Option<&Value>,
    after: Option<&[Value]>,
    limit: usize,
) -> Result<Vec<Row>, WarehouseError> {
    let name = model.name.get_ref();
    let order: Vec<String> = indexes.iter().map(|&i| ident(&schema.columns[i].name)).collect();
    let mut params: Vec<Option<String>> = Vec::new();
    let mut conditions = Vec::new();
    if let Some(tuple) = after {
        let placeholders: Vec<String> = indexes.iter().enumerate().map(|(p, &i)| param(p + 1, schema.columns[i].ty)).collect();
        params = tuple.iter().map(value_text).collect();
        conditions.push(sql::tuple_after(&order, &placeholders));
    }
    if let Some(since) = since {
        params.push(value_text(since));
        conditions.push(format!("{} >= {}", order[0], param(params.len(), schema.columns[indexes[0]].ty)));
    }
    let predicate = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
    let statement =
        format!("SELECT {} FROM {} {predicate} ORDER BY {} LIMIT {limit}", select_list(schema), model.relation_sql(), order.join(", "));
    let rows = collect_rows(connection, name, &statement, &params, &schema.columns)?;
    refuse_null_keys(name, schema, &rows)?;
    Ok(rows)
}


impl Warehouse for DuckDb {
    async fn describe(&self, model: &ModelConfig) -> Result<RowSchema, WarehouseError> {
        let model = model.clone();
        self.with(move |connection| {
            let name = model.name.get_ref();
            let list: Vec<String> = model.columns.iter().map(|c| ident(c)).collect();
            let statement = format!("DESCRIBE SELECT {} FROM {}", list.join(", "), model.relation_sql());
            let mut described = Vec::new();
            let mut prepared = connection
                .prepare(&statement)
                .map_err(|e| WarehouseError::Model { model: name.clone(), message: format!("cannot read the model: {e}") })?;
            let mut rows = prepared.query([]).map_err(|e| classify(name, e))?;
            while let Some(row) = rows.next().map_err(|e| classify(name, e))? {
                described.push(row.get::<_, String>(1).map_err(|e| classify(name, e))?);
            }
            let types = model.columns.iter().zip(&described).map(|(column, duck_type)| column_type(name, column, duck_type)).collect::<Result<Vec<_>, _>>()?;
            model_schema(&model, types)
        })
        .await
    }

    async fn fetch_after(&self, model: &ModelConfig, schema: &RowSchema, after: Option<&[Value]>, limit: usize) -> Result<Vec<Row>, WarehouseError> {
        let order = cursor_order(model, schema)?;
        let (model, schema, after) = (model.clone(), schema.clone(), after.map(<[Value]>::to_vec));
        self.with(move |c| fetch_page(c, &model, &schema, &order, None, after.as_deref(), limit)).await
    }

    async fn fetch_since(
        &self,
        model: &ModelConfig,
        schema: &RowSchema,
        since: &Value,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<Vec<Row>, WarehouseError> {
        let order = cursor_order(model, schema)?;
        let (model, schema, since, after) = (model.clone(), schema.clone(), since.clone(), after.map(<[Value]>::to_vec));
        self.with(move |c| fetch_page(c, &model, &schema, &order, Some(&since), after.as_deref(), limit)).await
    }

    async fn fetch_by_key(&self, model: &ModelConfig, schema: &RowSchema, after: Option<&[Value]>, limit: usize) -> Result<Vec<Row>, WarehouseError> {
        let (model, schema, after) = (model.clone(), schema.clone(), after.map(<[Value]>::to_vec));
        self.with(move |c| fetch_page(c, &model, &schema, &schema.primary_key, None, after.as_deref(), limit)).await
    }

    async fn check_keys(&self, model: &ModelConfig, schema: &RowSchema) -> Result<KeyCheck, WarehouseError> {
        let (name, schema, relation) = (model.name.get_ref().clone(), schema.clone(), model.relation_sql());
        self.with(move |c| key_check_of(c, &name, &schema, &relation)).await
    }

    async fn scan<F>(&self, model: &ModelConfig, schema: &RowSchema, mut each: F) -> Result<u64, WarehouseError>
    where
        F: FnMut(Row) -> Result<(), WarehouseError> + Send,
    {
        // The read runs on a blocking thread and hands rows over a bounded channel, so memory
        // stays flat and `each` (which borrows the caller's state) runs on the caller's task.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Row, WarehouseError>>(1024);
        let (name, schema_owned) = (model.name.get_ref().clone(), schema.clone());
        let statement = format!("SELECT {} FROM {}", select_list(schema), model.relation_sql());
        let reader = self.with(move |connection| {
            let sent = query_rows(connection, &name, &statement, &[], &schema_owned.columns, |row| {
                // The receiver is gone only when `each` failed; stop reading.
                tx.blocking_send(Ok(row)).map_err(|_| WarehouseError::Unavailable("scan stopped by its consumer".into()))
            });
            if let Err(error) = &sent {
                let _ = tx.blocking_send(Err(WarehouseError::Unavailable(error.to_string())));
            }
            sent
        });
        let consume = async {
            let mut count = 0u64;
            while let Some(row) = rx.recv().await {
                match row {
                    Ok(row) => {
                        each(row)?;
                        count += 1;
                    }
                    // The reader's own error is returned by the reader below.
                    Err(_) => break,
                }
            }
            Ok::<u64, WarehouseError>(count)
        };
        let (read, consumed) = tokio::join!(reader, consume);
        // `each`'s error wins: it is why the reader stopped.
        let consumed = consumed?;
        read?;
        Ok(consumed)
    }
}

fn state_table(model: &ModelConfig, suffix: &str) -> String {
    format!("{STATE_SCHEMA}.{}", ident(&format!("{}_{suffix}", model.name.get_ref())))
}

fn ensure_state_schema(connection: &Connection, model: &str) -> Result<(), WarehouseError> {
    connection
        .execute_batch(&format!(
            "CREATE SCHEMA IF NOT EXISTS {STATE_SCHEMA}; \
             CREATE TABLE IF NOT EXISTS {STATE_SCHEMA}.pending_runs (model VARCHAR PRIMARY KEY, run_id VARCHAR NOT NULL)"
        ))
        .map_err(|e| classify(model, e))
}

impl SnapshotStore for DuckDb {
    async fn pending_snapshot(&self, model: &ModelConfig) -> Result<Option<String>, WarehouseError> {
        let name = model.name.get_ref().clone();
        self.with(move |c| {
            ensure_state_schema(c, &name)?;
            let mut statement = c.prepare(&format!("SELECT run_id FROM {STATE_SCHEMA}.pending_runs WHERE model = $1")).map_err(|e| classify(&name, e))?;
            let mut rows = statement.query([name.as_str()]).map_err(|e| classify(&name, e))?;
            match rows.next().map_err(|e| classify(&name, e))? {
                Some(row) => Ok(Some(row.get::<_, String>(0).map_err(|e| classify(&name, e))?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn prepare_snapshot(&self, model: &ModelConfig, schema: &RowSchema, run_id: &str) -> Result<PreparedSnapshot, WarehouseError> {
        let (model, schema, run_id) = (model.clone(), schema.clone(), run_id.to_string());
        self.with(move |c| {
            let name = model.name.get_ref().as_str();
            ensure_state_schema(c, name)?;
            let (snapshot, pending, changes) = (state_table(&model, "snapshot"), state_table(&model, "pending"), state_table(&model, "changes"));
            let columns: Vec<String> = schema.columns.iter().map(|c| ident(&c.name)).collect();
            let list = columns.join(", ");
            let keys: Vec<String> = schema.key_columns().map(|c| ident(&c.name)).collect();
            let transaction = c.transaction().map_err(|e| classify(name, e))?;
            transaction
                .execute_batch(&format!(
                    "CREATE TABLE IF NOT EXISTS {snapshot} AS SELECT {list} FROM {relation} LIMIT 0; \
                     DROP TABLE IF EXISTS {pending}; DROP TABLE IF EXISTS {changes}; \
                     CREATE TABLE {pending} AS SELECT {list} FROM {relation}",
                    relation = model.relation_sql()
                ))
                .map_err(|e| classify(name, e))?;
            // Key gates first: a NULL or duplicated key would make the join lie. Dropping the
            // transaction rolls everything back.
            let check = key_check_of(&transaction, name, &schema, &pending)?;
            if check.null_keys > 0 {
                return Ok(PreparedSnapshot::NullKeys { count: check.null_keys, samples: check.null_samples });
            }
            if check.duplicate_keys > 0 {
                return Ok(PreparedSnapshot::DuplicateKeys { count: check.duplicate_keys, samples: check.duplicate_samples });
            }
            let join = keys.iter().map(|k| format!("n.{k} = o.{k}")).collect::<Vec<_>>().join(" AND ");
            let order = keys.iter().map(|k| format!("coalesce(n.{k}, o.{k})")).collect::<Vec<_>>().join(", ");
            let differs = columns.iter().map(|c| format!("n.{c} IS DISTINCT FROM o.{c}")).collect::<Vec<_>>().join(" OR ");
            let first_key = &keys[0];
            let images: Vec<String> = (0..columns.len())
                .map(|i| format!("o.{c} AS o_{i}", c = columns[i]))
                .chain((0..columns.len()).map(|i| format!("n.{c} AS n_{i}", c = columns[i])))
                .collect();
            transaction
                .execute_batch(&format!(
                    "CREATE TABLE {changes} AS SELECT row_number() OVER (ORDER BY {order}) AS sluice_seq, \
                     (o.{first_key} IS NOT NULL) AS sluice_has_before, (n.{first_key} IS NOT NULL) AS sluice_has_after, {} \
                     FROM {pending} n FULL OUTER JOIN {snapshot} o ON {join} \
                     WHERE n.{first_key} IS NULL OR o.{first_key} IS NULL OR ({differs})",
                    images.join(", ")
                ))
                .map_err(|e| classify(name, e))?;
            transaction
                .execute(&format!("INSERT OR REPLACE INTO {STATE_SCHEMA}.pending_runs VALUES ($1, $2)"), [name, run_id.as_str()])
                .map_err(|e| classify(name, e))?;
            let counts = transaction
                .query_row(
                    &format!(
                        "SELECT (SELECT count(*) FROM {pending}), (SELECT count(*) FROM {snapshot}), \
                         count(*) FILTER (WHERE NOT sluice_has_before), count(*) FILTER (WHERE sluice_has_before AND sluice_has_after), \
                         count(*) FILTER (WHERE NOT sluice_has_after) FROM {changes}"
                    ),
                    [],
                    |row| Ok([row.get::<_, i64>(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?]),
                )
                .map_err(|e| classify(name, e))?;
            transaction.commit().map_err(|e| classify(name, e))?;
            let n = |i: usize| counts[i] as u64;
            Ok(PreparedSnapshot::Ready { rows: n(0), tracked: n(1), inserts: n(2), updates: n(3), deletes: n(4) })
        })
        .await
    }

    async fn snapshot_changes(&self, model: &ModelConfig, schema: &RowSchema, skip: u64, limit: usize) -> Result<Vec<SnapshotChange>, WarehouseError> {
        let (model, schema) = (model.clone(), schema.clone());
        self.with(move |c| {
            let name = model.name.get_ref().as_str();
            let width = schema.columns.len();
            let images: Vec<String> = schema
                .columns
                .iter()
                .enumerate()
                .map(|(i, column)| select_expr(&format!("o_{i}"), column))
                .chain(schema.columns.iter().enumerate().map(|(i, column)| select_expr(&format!("n_{i}"), column)))
                .collect();
            let statement = format!(
                "SELECT CAST(sluice_has_before AS INTEGER), CAST(sluice_has_after AS INTEGER), {} FROM {} WHERE sluice_seq > $1 ORDER BY sluice_seq LIMIT {limit}",
                images.join(", "),
                state_table(&model, "changes")
            );
            // Two flags, then the old image, then the new one, read with the model's columns.
            let flag = Column { name: "sluice_flag".into(), ty: ColumnType::Int, nullable: false };
            let columns: Vec<Column> = [flag.clone(), flag].into_iter().chain(schema.columns.iter().cloned()).chain(schema.columns.iter().cloned()).collect();
            let rows = collect_rows(c, name, &statement, &[Some(skip.to_string())], &columns)?;
            Ok(rows
                .into_iter()
                .map(|mut row| {
                    let after: Row = row.split_off(2 + width);
                    let before: Row = row.split_off(2);
                    let flag = |v: &Value| matches!(v, Value::Int(1));
                    SnapshotChange { before: flag(&row[0]).then_some(before), after: flag(&row[1]).then_some(after) }
                })
                .collect())
        })
        .await
    }

    async fn plan_snapshot(&self, model: &ModelConfig, schema: &RowSchema, samples: usize) -> Result<SnapshotPlan, WarehouseError> {
        let (model, schema) = (model.clone(), schema.clone());
        self.with(move |c| {
            let name = model.name.get_ref().as_str();
            let columns: Vec<String> = schema.columns.iter().map(|c| ident(&c.name)).collect();
            let keys: Vec<String> = schema.key_columns().map(|c| ident(&c.name)).collect();
            let key_columns: Vec<Column> = schema.key_columns().cloned().collect();
            let current = format!("SELECT {} FROM {}", columns.join(", "), model.relation_sql());
            let exists: i64 = c
                .query_row(
                    "SELECT count(*) FROM duckdb_tables() WHERE schema_name = $1 AND table_name = $2",
                    [STATE_SCHEMA, &format!("{name}_snapshot")],
                    |row| row.get(0),
                )
                .map_err(|e| classify(name, e))?;
            // No snapshot yet: compare with an empty one (every row is a snapshot read).
            let snapshot = if exists > 0 { state_table(&model, "snapshot") } else { format!("({current} LIMIT 0)") };
            let differs = columns.iter().map(|c| format!("n.{c} IS DISTINCT FROM o.{c}")).collect::<Vec<_>>().join(" OR ");
            let count = |sql: String| c.query_row(&sql, [], |row| row.get::<_, i64>(0)).map_err(|e| classify(name, e));
            let rows = count(format!("SELECT count(*) FROM ({current}) AS sluice_current"))?;
            let tracked = count(format!("SELECT count(*) FROM {snapshot} AS sluice_snapshot"))?;
            let mut statement = c.prepare(&sql::planned_counts(&current, &snapshot, &keys, &differs)).map_err(|e| classify(name, e))?;
            let counts = statement
                .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))
                .map_err(|e| classify(name, e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| classify(name, e))?;
            let mut plan = SnapshotPlan::from_counts(rows as u64, tracked as u64, &counts);
            for (kind, slot) in plan.sample_slots() {
                *slot = collect_rows(c, name, &sql::planned_samples(&current, &snapshot, &keys, &differs, kind, samples), &[], &key_columns)?;
            }
            Ok(plan)
        })
        .await
    }

    async fn commit_snapshot(&self, model: &ModelConfig) -> Result<(), WarehouseError> {
        let model = model.clone();
        self.with(move |c| {
            let name = model.name.get_ref().as_str();
            let (snapshot, pending, changes) = (state_table(&model, "snapshot"), state_table(&model, "pending"), state_table(&model, "changes"));
            let transaction = c.transaction().map_err(|e| classify(name, e))?;
            transaction
                .execute_batch(&format!(
                    "CREATE OR REPLACE TABLE {snapshot} AS SELECT * FROM {pending}; DROP TABLE IF EXISTS {pending}; DROP TABLE IF EXISTS {changes}"
                ))
                .map_err(|e| classify(name, e))?;
            transaction.execute(&format!("DELETE FROM {STATE_SCHEMA}.pending_runs WHERE model = $1"), [name]).map_err(|e| classify(name, e))?;
            transaction.commit().map_err(|e| classify(name, e))
        })
        .await
    }

    async fn discard_snapshot(&self, model: &ModelConfig) -> Result<(), WarehouseError> {
        let model = model.clone();
        self.with(move |c| {
            let name = model.name.get_ref().as_str();
            ensure_state_schema(c, name)?;
            let transaction = c.transaction().map_err(|e| classify(name, e))?;
            transaction
                .execute_batch(&format!("DROP TABLE IF EXISTS {}; DROP TABLE IF EXISTS {}", state_table(&model, "pending"), state_table(&model, "changes")))
                .map_err(|e| classify(name, e))?;
            transaction.execute(&format!("DELETE FROM {STATE_SCHEMA}.pending_runs WHERE model = $1"), [name]).map_err(|e| classify(name, e))?;
            transaction.commit().map_err(|e| classify(name, e))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_types_parse() {
        assert_eq!(decimal_precision_scale("DECIMAL(12,2)"), Some((12, 2)));
        assert_eq!(decimal_precision_scale("DECIMAL(38, 10)"), Some((38, 10)));
        assert_eq!(decimal_precision_scale("DOUBLE"), None);
    }

    #[test]
    fn unmapped_types_are_refused_by_name_with_a_cast() {
        let e = column_type("m", "tags", "VARCHAR[]").unwrap_err().to_string();
        assert!(e.contains("column \"tags\" has DuckDB type VARCHAR[]") && e.contains("CAST(tags AS VARCHAR)"), "{e}");
    }
}

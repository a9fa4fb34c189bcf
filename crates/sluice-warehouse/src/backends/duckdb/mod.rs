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
//! Guarantees of the SQL (exact reads, parameters cast back to the column's type, strict keyset
//! pages) are the shared ones ([`crate::sql`]); DuckDB's choices are in [`types`].
//!
//! Layout, the same for every warehouse: `mod.rs` (connection, session, [`Warehouse`]),
//! `types.rs` (type mapping, value reading, dialect), `snapshot.rs` ([`crate::SnapshotStore`]),
//! `sync_log.rs` ([`crate::SyncLog`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ::duckdb::{params_from_iter, Connection};
use futures::executor::block_on;
use sluice_core::config::ModelConfig;
use sluice_core::{Column, Row, RowSchema};

mod snapshot;
mod sync_log;
mod types;

use crate::notifications::ChangeNotifications;
use crate::session::{self, Session};
use crate::sql;
use crate::{model_schema, KeyCheck, Page, Warehouse, WarehouseError};
use types::DIALECT;

/// How long an operation waits for another process's lock on the file before giving up.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

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
            .map(|(i, column)| row.get_ref(i).map_err(|e| e.to_string()).and_then(|v| types::read_value(v, column)))
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


/// A [`Session`] on one connection, its errors attributed to `model`. Its statements run
/// synchronously (the connection lives on a blocking thread), so the shared operations over it
/// never wait and `block_on` runs them to the end.
struct DuckSession<'c> {
    connection: &'c mut Connection,
    model: &'c str,
}

impl<'c> DuckSession<'c> {
    fn new(connection: &'c mut Connection, model: &'c ModelConfig) -> DuckSession<'c> {
        DuckSession { connection, model: model.name.get_ref() }
    }
}

impl Session for DuckSession<'_> {
    fn model(&self) -> &str {
        self.model
    }

    async fn execute(&mut self, sql: &str) -> Result<(), WarehouseError> {
        self.connection.execute_batch(sql).map_err(|e| classify(self.model, e))
    }

    async fn query(&mut self, sql: &str, params: &[Option<String>], columns: &[Column]) -> Result<Vec<Row>, WarehouseError> {
        collect_rows(self.connection, self.model, sql, params, columns)
    }
}

impl Warehouse for DuckDb {
    async fn describe(&self, model: &ModelConfig) -> Result<RowSchema, WarehouseError> {
        let model = model.clone();
        self.with(move |connection| {
            let name = model.name.get_ref();
            let mut described = Vec::new();
            let mut prepared = connection
                .prepare(&format!("DESCRIBE {}", sql::columns_query(&model)))
                .map_err(|e| WarehouseError::Model { model: name.clone(), message: format!("cannot read the model: {e}") })?;
            let mut rows = prepared.query([]).map_err(|e| classify(name, e))?;
            while let Some(row) = rows.next().map_err(|e| classify(name, e))? {
                described.push(row.get::<_, String>(1).map_err(|e| classify(name, e))?);
            }
            let types =
                model.columns.iter().zip(&described).map(|(column, duck_type)| types::column_type(name, column, duck_type)).collect::<Result<Vec<_>, _>>()?;
            model_schema(&model, types)
        })
        .await
    }

    async fn fetch_page(&self, model: &ModelConfig, schema: &RowSchema, page: Page) -> Result<Vec<Row>, WarehouseError> {
        let (model, schema) = (model.clone(), schema.clone());
        self.with(move |c| block_on(session::page(&mut DuckSession::new(c, &model), &DIALECT, &model, &schema, &page))).await
    }

    async fn check_keys(&self, model: &ModelConfig, schema: &RowSchema) -> Result<KeyCheck, WarehouseError> {
        let (model, schema) = (model.clone(), schema.clone());
        self.with(move |c| block_on(session::check_keys(&mut DuckSession::new(c, &model), &schema, &model.relation_sql()))).await
    }

    async fn scan<F>(&self, model: &ModelConfig, schema: &RowSchema, mut each: F) -> Result<u64, WarehouseError>
    where
        F: FnMut(Row) -> Result<(), WarehouseError> + Send,
    {
        // The read runs on a blocking thread and hands rows over a bounded channel, so memory
        // stays flat and `each` (which borrows the caller's state) runs on the caller's task.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Row, WarehouseError>>(1024);
        let (name, columns, statement) = (model.name.get_ref().clone(), schema.columns.clone(), DIALECT.scan(model, schema));
        let reader = self.with(move |connection| {
            let sent = query_rows(connection, &name, &statement, &[], &columns, |row| {
                // The receiver is gone only when `each` failed; stop reading.
                tx.blocking_send(Ok(row)).map_err(|_| WarehouseError::Unavailable("scan stopped by its consumer".into()))
            });
            if let Err(error) = &sent {
                // Tell the consumer why the rows stop. A consumer that is gone stopped on its own
                // error (`each`), which is the one returned.
                if tx.blocking_send(Err(WarehouseError::Unavailable(error.to_string()))).is_err() {
                    tracing::debug!("scan consumer already stopped");
                }
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

/// A file has no server to hold a connection open and announce changes: `notify_channel` is
/// refused for DuckDB at config load.
impl ChangeNotifications for DuckDb {}

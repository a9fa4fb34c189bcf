//! The warehouses this build supports, listed in one place: a module per backend, each with the
//! same split (`mod.rs`: connection, session, `Warehouse`; `types.rs`: type mapping, value
//! reading, the SQL dialect; `snapshot.rs`: `SnapshotStore`; `sync_log.rs`: `SyncLog`), and [`AnyWarehouse`], the
//! configured one as a concrete type, so services and tools never name a backend.
//!
//! Guarantee: every `AnyWarehouse` method is its backend's own, passed through unchanged.
//! Besides its own folder, a new warehouse touches this file only (a `mod` line, a variant and
//! its arms in `connect`, `execute_script`, `kind` and `on_backend!`): see `docs/warehouses.md`.

use sluice_core::config::{ModelConfig, WarehouseConfig, WarehouseLocation};
use sluice_core::{Row, RowSchema};

#[cfg(feature = "duckdb")]
pub mod duckdb;
pub mod postgres;

use postgres::Postgres;
use crate::writeback::{SyncLog, SyncLogRow, SyncLogTable};
use crate::{ChangeNotifications, KeyCheck, Notifications, Page, PreparedSnapshot, SnapshotChange, SnapshotPlan, SnapshotStore, Warehouse, WarehouseError};

/// One of the warehouses this build supports.
pub enum AnyWarehouse {
    Postgres(Postgres),
    #[cfg(feature = "duckdb")]
    DuckDb(self::duckdb::DuckDb),
}

impl AnyWarehouse {
    /// Connect to (PostgreSQL) or open (DuckDB) the configured warehouse.
    pub async fn connect(config: &WarehouseConfig) -> Result<AnyWarehouse, WarehouseError> {
        // The connection string is resolved here, by the process that connects, and only then.
        match config.location().map_err(|e| WarehouseError::Unsupported(e.to_string()))? {
            WarehouseLocation::Postgres { url } => Ok(AnyWarehouse::Postgres(Postgres::connect(url.expose()).await?)),
            #[cfg(feature = "duckdb")]
            WarehouseLocation::Duckdb { path } => Ok(AnyWarehouse::DuckDb(self::duckdb::DuckDb::open(path).await?)),
            #[cfg(not(feature = "duckdb"))]
            WarehouseLocation::Duckdb { .. } => Err(WarehouseError::Unsupported(
                "this build of sluice has no DuckDB support; build it with `--features duckdb` (ops/quickstart.sh, ops/test.sh and the Docker image do)".into(),
            )),
        }
    }

    /// Open the configured warehouse for [`execute_script`](AnyWarehouse::execute_script),
    /// creating a missing DuckDB file when `create` is set (the quickstart's demo warehouse;
    /// the poller itself never creates one).
    pub async fn connect_for_script(config: &WarehouseConfig, create: bool) -> Result<AnyWarehouse, WarehouseError> {
        #[cfg(feature = "duckdb")]
        if let (true, Ok(WarehouseLocation::Duckdb { path })) = (create, config.location()) {
            return Ok(AnyWarehouse::DuckDb(self::duckdb::DuckDb::create(path).await?));
        }
        let _ = create;
        AnyWarehouse::connect(config).await
    }

    /// Run a SQL script (one or more statements) against the warehouse: demo data, an
    /// operator's fix. DuckDB has no server to point `psql` at, hence this.
    pub async fn execute_script(&self, sql: &str) -> Result<(), WarehouseError> {
        match self {
            AnyWarehouse::Postgres(w) => w.client().batch_execute(sql).await.map_err(|e| WarehouseError::Unavailable(e.to_string())),
            #[cfg(feature = "duckdb")]
            AnyWarehouse::DuckDb(w) => w.execute_script(sql).await,
        }
    }

    /// The backend's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            AnyWarehouse::Postgres(_) => "postgres",
            #[cfg(feature = "duckdb")]
            AnyWarehouse::DuckDb(_) => "duckdb",
        }
    }
}

/// Run the same expression on whichever backend this is.
macro_rules! on_backend {
    ($self:ident, $w:ident => $e:expr) => {
        match $self {
            AnyWarehouse::Postgres($w) => $e,
            #[cfg(feature = "duckdb")]
            AnyWarehouse::DuckDb($w) => $e,
        }
    };
}

impl Warehouse for AnyWarehouse {
    async fn describe(&self, model: &ModelConfig) -> Result<RowSchema, WarehouseError> {
        on_backend!(self, w => w.describe(model).await)
    }

    async fn fetch_page(&self, model: &ModelConfig, schema: &RowSchema, page: Page) -> Result<Vec<Row>, WarehouseError> {
        on_backend!(self, w => w.fetch_page(model, schema, page).await)
    }

    async fn check_keys(&self, model: &ModelConfig, schema: &RowSchema) -> Result<KeyCheck, WarehouseError> {
        on_backend!(self, w => w.check_keys(model, schema).await)
    }

    async fn scan<F>(&self, model: &ModelConfig, schema: &RowSchema, each: F) -> Result<u64, WarehouseError>
    where
        F: FnMut(Row) -> Result<(), WarehouseError> + Send,
    {
        on_backend!(self, w => w.scan(model, schema, each).await)
    }
}

impl SnapshotStore for AnyWarehouse {
    async fn pending_snapshot(&self, model: &ModelConfig) -> Result<Option<String>, WarehouseError> {
        on_backend!(self, w => w.pending_snapshot(model).await)
    }

    async fn prepare_snapshot(&self, model: &ModelConfig, schema: &RowSchema, run_id: &str) -> Result<PreparedSnapshot, WarehouseError> {
        on_backend!(self, w => w.prepare_snapshot(model, schema, run_id).await)
    }

    async fn snapshot_changes(&self, model: &ModelConfig, schema: &RowSchema, skip: u64, limit: usize) -> Result<Vec<SnapshotChange>, WarehouseError> {
        on_backend!(self, w => w.snapshot_changes(model, schema, skip, limit).await)
    }

    async fn plan_snapshot(&self, model: &ModelConfig, schema: &RowSchema, samples: usize) -> Result<SnapshotPlan, WarehouseError> {
        on_backend!(self, w => w.plan_snapshot(model, schema, samples).await)
    }

    async fn commit_snapshot(&self, model: &ModelConfig) -> Result<(), WarehouseError> {
        on_backend!(self, w => w.commit_snapshot(model).await)
    }

    async fn discard_snapshot(&self, model: &ModelConfig) -> Result<(), WarehouseError> {
        on_backend!(self, w => w.discard_snapshot(model).await)
    }
}

impl SyncLog for AnyWarehouse {
    async fn write_sync_log(&self, table: &SyncLogTable, rows: &[SyncLogRow]) -> Result<(), WarehouseError> {
        on_backend!(self, w => w.write_sync_log(table, rows).await)
    }
}

impl ChangeNotifications for AnyWarehouse {
    fn notifications(&self, channels: &[String]) -> Option<Notifications> {
        on_backend!(self, w => w.notifications(channels))
    }
}

//! The sync log on PostgreSQL ([`crate::writeback`]): each batch on a connection of its own,
//! so a write that waits (a lock held by an analyst's transaction, a slow disk) never holds up
//! the models' reads pipelined on the shared connection. The wait is bounded: `lock_timeout`
//! 10 s (as DuckDB's lock wait) and `statement_timeout` 60 s, then the batch fails and the
//! writeback retries it.

use super::types::DIALECT;
use super::{classify, connect, unavailable, PgSession, Postgres, CONNECT_TIMEOUT};
use crate::writeback::{self, SyncLog, SyncLogRow, SyncLogTable};
use crate::WarehouseError;

impl SyncLog for Postgres {
    async fn write_sync_log(&self, table: &SyncLogTable, rows: &[SyncLogRow]) -> Result<(), WarehouseError> {
        let client = tokio::time::timeout(CONNECT_TIMEOUT, connect(&self.url, "warehouse sync-log connection closed"))
            .await
            .map_err(|_| WarehouseError::Unavailable(format!("connecting to PostgreSQL timed out after {} s", CONNECT_TIMEOUT.as_secs())))?
            .map_err(unavailable)?;
        client.batch_execute("SET lock_timeout = '10s'; SET statement_timeout = '60s'").await.map_err(|e| classify(table.name(), e))?;
        writeback::write_sync_log(&mut PgSession { client: &client, model: table.name() }, &DIALECT, table, rows).await
    }
}

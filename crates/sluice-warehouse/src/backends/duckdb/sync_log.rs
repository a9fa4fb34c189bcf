//! The sync log on DuckDB ([`crate::writeback`]): each batch is one operation on the file,
//! taking its turn with the poller's own operations (the process lock) and waiting out another
//! process's lock like every operation ([`DuckDb::run`]), so the one-writer rule holds.

use futures::executor::block_on;

use super::types::DIALECT;
use super::{DuckDb, DuckSession};
use crate::writeback::{self, SyncLog, SyncLogRow, SyncLogTable};
use crate::WarehouseError;

impl SyncLog for DuckDb {
    async fn write_sync_log(&self, table: &SyncLogTable, rows: &[SyncLogRow]) -> Result<(), WarehouseError> {
        let (table, rows) = (table.clone(), rows.to_vec());
        self.with(move |connection| {
            let name = table.name().to_string();
            block_on(writeback::write_sync_log(&mut DuckSession { connection, model: &name }, &DIALECT, &table, &rows))
        })
        .await
    }
}

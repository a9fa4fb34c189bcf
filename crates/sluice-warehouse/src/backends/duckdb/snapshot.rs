//! `warehouse_diff` on DuckDB: snapshots as tables in the file's schema `sluice_state`.
//!
//! Per model: `<model>_snapshot` (the rows last emitted), `<model>_pending` and
//! `<model>_changes` (the run in progress and its numbered change list; their SQL is
//! [`crate::sql`]'s), with the pending run's id in `sluice_state.pending_runs`. Pending, changes
//! and the run id are written in one transaction ([`session::prepare_snapshot`]); an error or a
//! crash before its commit leaves none of them (DuckDB rolls back an open transaction when the
//! connection closes). The swap copies pending over the snapshot and clears the run id in one
//! transaction.
//!
//! Rows are compared column by column, so the kept tables hold the model's columns only.

use ::duckdb::Connection;
use futures::executor::block_on;
use sluice_core::config::ModelConfig;
use sluice_core::RowSchema;

use super::types::DIALECT;
use super::{classify, DuckDb, DuckSession};
use crate::session;
use crate::sql::{literal, StateTables, STATE_SCHEMA};
use crate::{PreparedSnapshot, SnapshotChange, SnapshotPlan, SnapshotStore, WarehouseError};

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
        let (model, schema) = (model.clone(), schema.clone());
        let record_run = format!("INSERT OR REPLACE INTO {STATE_SCHEMA}.pending_runs VALUES ({}, {})", literal(model.name.get_ref()), literal(run_id));
        self.with(move |c| {
            ensure_state_schema(c, model.name.get_ref())?;
            block_on(session::prepare_snapshot(&mut DuckSession::new(c, &model), &DIALECT, &model, &schema, &record_run))
        })
        .await
    }

    async fn snapshot_changes(&self, model: &ModelConfig, schema: &RowSchema, skip: u64, limit: usize) -> Result<Vec<SnapshotChange>, WarehouseError> {
        let (model, schema) = (model.clone(), schema.clone());
        self.with(move |c| block_on(session::snapshot_changes(&mut DuckSession::new(c, &model), &DIALECT, &model, &schema, skip, limit))).await
    }

    async fn plan_snapshot(&self, model: &ModelConfig, schema: &RowSchema, samples: usize) -> Result<SnapshotPlan, WarehouseError> {
        let (model, schema) = (model.clone(), schema.clone());
        self.with(move |c| block_on(session::plan_snapshot(&mut DuckSession::new(c, &model), &DIALECT, &model, &schema, samples))).await
    }

    async fn commit_snapshot(&self, model: &ModelConfig) -> Result<(), WarehouseError> {
        let name = model.name.get_ref().clone();
        self.with(move |c| {
            let StateTables { snapshot, pending, changes } = StateTables::of(&name);
            let transaction = c.transaction().map_err(|e| classify(&name, e))?;
            transaction
                .execute_batch(&format!(
                    "CREATE OR REPLACE TABLE {snapshot} AS SELECT * FROM {pending}; DROP TABLE IF EXISTS {pending}; DROP TABLE IF EXISTS {changes}"
                ))
                .map_err(|e| classify(&name, e))?;
            transaction.execute(&format!("DELETE FROM {STATE_SCHEMA}.pending_runs WHERE model = $1"), [&name]).map_err(|e| classify(&name, e))?;
            transaction.commit().map_err(|e| classify(&name, e))
        })
        .await
    }

    async fn discard_snapshot(&self, model: &ModelConfig) -> Result<(), WarehouseError> {
        let name = model.name.get_ref().clone();
        self.with(move |c| {
            ensure_state_schema(c, &name)?;
            let StateTables { pending, changes, .. } = StateTables::of(&name);
            let transaction = c.transaction().map_err(|e| classify(&name, e))?;
            transaction
                .execute_batch(&format!("DROP TABLE IF EXISTS {pending}; DROP TABLE IF EXISTS {changes}"))
                .map_err(|e| classify(&name, e))?;
            transaction.execute(&format!("DELETE FROM {STATE_SCHEMA}.pending_runs WHERE model = $1"), [&name]).map_err(|e| classify(&name, e))?;
            transaction.commit().map_err(|e| classify(&name, e))
        })
        .await
    }
}

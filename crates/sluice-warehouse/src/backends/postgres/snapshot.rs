//! `warehouse_diff` on PostgreSQL: snapshots as tables in schema `sluice_state`.
//!
//! Per model: `<model>_snapshot` (the rows last emitted, with `sluice_hash` = md5 of the row's
//! text), `<model>_pending` (the rows of the run in progress, its run id as the table comment)
//! and `<model>_changes` (the numbered change list, with a primary key on `sluice_seq`); their SQL
//! is [`crate::sql`]'s. Pending and changes are built in one transaction on a private connection
//! ([`session::prepare_snapshot`]), so they exist together or not at all; the swap is one
//! transaction too (PostgreSQL DDL is transactional), and renames the pending table in place.
//!
//! Full rows are kept (not only key + hash) so updates and deletes carry their `before` image
//! without reading Kafka: the price is one copy of the model in the warehouse.

use sluice_core::config::ModelConfig;
use sluice_core::RowSchema;

use super::types::DIALECT;
use super::{classify, connect, unavailable, PgSession, Postgres};
use crate::session;
use crate::sql::{ident, literal, StateTables, STATE_SCHEMA};
use crate::{PreparedSnapshot, SnapshotChange, SnapshotPlan, SnapshotStore, WarehouseError};

impl Postgres {
    /// A connection of its own, for one multi-statement transaction.
    async fn private_client(&self) -> Result<tokio_postgres::Client, WarehouseError> {
        connect(&self.url, "warehouse snapshot connection closed").await.map_err(unavailable)
    }
}

impl SnapshotStore for Postgres {
    async fn pending_snapshot(&self, model: &ModelConfig) -> Result<Option<String>, WarehouseError> {
        let row = self
            .client
            .query_one("SELECT obj_description(to_regclass($1), 'pg_class')", &[&StateTables::of(model.name.get_ref()).pending])
            .await
            .map_err(|e| classify(model.name.get_ref(), e))?;
        Ok(row.get::<_, Option<String>>(0))
    }

    async fn prepare_snapshot(&self, model: &ModelConfig, schema: &RowSchema, run_id: &str) -> Result<PreparedSnapshot, WarehouseError> {
        let name = model.name.get_ref();
        let client = self.private_client().await?;
        // Concurrent `CREATE SCHEMA IF NOT EXISTS` can still collide (PostgreSQL checks the
        // catalog before inserting): a collision means the schema now exists, which is the goal.
        if let Err(e) = client.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {STATE_SCHEMA}")).await {
            let code = e.as_db_error().map(|db| db.code().code().to_string());
            if !matches!(code.as_deref(), Some("23505" | "42P06")) {
                return Err(classify(name, e));
            }
        }
        let record_run = format!("COMMENT ON TABLE {} IS {}", StateTables::of(name).pending, literal(run_id));
        session::prepare_snapshot(&mut PgSession { client: &client, model: name }, &DIALECT, model, schema, &record_run).await
    }

    async fn snapshot_changes(&self, model: &ModelConfig, schema: &RowSchema, skip: u64, limit: usize) -> Result<Vec<SnapshotChange>, WarehouseError> {
        session::snapshot_changes(&mut self.session(model), &DIALECT, model, schema, skip, limit).await
    }

    async fn plan_snapshot(&self, model: &ModelConfig, schema: &RowSchema, samples: usize) -> Result<SnapshotPlan, WarehouseError> {
        session::plan_snapshot(&mut self.session(model), &DIALECT, model, schema, samples).await
    }

    async fn commit_snapshot(&self, model: &ModelConfig) -> Result<(), WarehouseError> {
        let name = model.name.get_ref();
        let client = self.private_client().await?;
        let StateTables { snapshot, pending, changes } = StateTables::of(name);
        let renamed = ident(&StateTables::name(name, "snapshot"));
        client
            .batch_execute(&format!(
                "BEGIN; DROP TABLE IF EXISTS {snapshot}; ALTER TABLE {pending} RENAME TO {renamed}; \
                 COMMENT ON TABLE {snapshot} IS NULL; DROP TABLE IF EXISTS {changes}; COMMIT"
            ))
            .await
            .map_err(|e| classify(name, e))
    }

    async fn discard_snapshot(&self, model: &ModelConfig) -> Result<(), WarehouseError> {
        let StateTables { pending, changes, .. } = StateTables::of(model.name.get_ref());
        self.client
            .batch_execute(&format!("DROP TABLE IF EXISTS {pending}; DROP TABLE IF EXISTS {changes}"))
            .await
            .map_err(|e| classify(model.name.get_ref(), e))
    }
}

//! `warehouse_diff` on PostgreSQL: snapshots as tables in schema `sluice_state`.
//!
//! Per model: `<model>_snapshot` (the rows last emitted, with `sluice_hash` = md5 of the row's
//! text), `<model>_pending` (the rows of the run in progress, its run id as the table comment)
//! and `<model>_changes` (the FULL OUTER JOIN of the two restricted to differing rows, numbered
//! in key order so a crashed run resumes at an exact position). Pending and changes are built in
//! one transaction on a private connection, so they exist together or not at all; the swap is
//! one transaction too (PostgreSQL DDL is transactional).
//!
//! Full rows are kept (not only key + hash) so updates and deletes carry their `before` image
//! without reading Kafka: the price is one copy of the model in the warehouse.

use sluice_core::config::ModelConfig;
use sluice_core::{Column, ColumnType, Row, RowSchema};
use tokio_postgres::NoTls;

use super::{classify, read_value, Postgres};
use crate::sql::ident;
use crate::{sql, PreparedSnapshot, SnapshotChange, SnapshotPlan, SnapshotStore, WarehouseError};

const STATE_SCHEMA: &str = "sluice_state";

fn table(model: &ModelConfig, suffix: &str) -> String {
    format!("{STATE_SCHEMA}.{}", ident(&format!("{}_{suffix}", model.name.get_ref())))
}

/// A column reference with an alias, read as `select_expr` would (numeric as exact text).
fn aliased(prefix: &str, column: &Column, alias: &str) -> String {
    let reference = format!("{prefix}.{}", ident(&column.name));
    match column.ty {
        ColumnType::DecimalText | ColumnType::Decimal { .. } => format!("{reference}::text AS {alias}"),
        _ => format!("{reference} AS {alias}"),
    }
}

/// The model's rows with `sluice_hash` = md5 of the row's text: what a snapshot stores.
fn hashed_rows(model: &ModelConfig, list: &str) -> String {
    format!("SELECT {list}, md5(ROW({list})::text) AS sluice_hash FROM {}", model.relation_sql())
}

impl Postgres {
    async fn private_client(&self) -> Result<tokio_postgres::Client, WarehouseError> {
        let (client, connection) =
            tokio_postgres::connect(&self.url, NoTls).await.map_err(|e| WarehouseError::Unavailable(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "warehouse snapshot connection closed");
            }
        });
        Ok(client)
    }
}

impl SnapshotStore for Postgres {
    async fn pending_snapshot(&self, model: &ModelConfig) -> Result<Option<String>, WarehouseError> {
        let name = model.name.get_ref();
        let row = self
            .client
            .query_one("SELECT obj_description(to_regclass($1), 'pg_class')", &[&table(model, "pending")])
            .await
            .map_err(|e| classify(name, e))?;
        Ok(row.get::<_, Option<String>>(0))
    }

    async fn prepare_snapshot(&self, model: &ModelConfig, schema: &RowSchema, run_id: &str) -> Result<PreparedSnapshot, WarehouseError> {
        let name = model.name.get_ref();
        let (snapshot, pending, changes) = (table(model, "snapshot"), table(model, "pending"), table(model, "changes"));
        let columns: Vec<String> = schema.columns.iter().map(|c| ident(&c.name)).collect();
        let list = columns.join(", ");
        let keys: Vec<String> = schema.key_columns().map(|c| ident(&c.name)).collect();
        let hashed = hashed_rows(model, &list);
        let client = self.private_client().await?;
        let run = |sql: String| {
            let client = &client;
            async move { client.batch_execute(&sql).await.map_err(|e| classify(name, e)) }
        };
        // Concurrent `CREATE SCHEMA IF NOT EXISTS` can still collide (PostgreSQL checks the
        // catalog before inserting): a collision means the schema now exists, which is the goal.
        if let Err(e) = client.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {STATE_SCHEMA}")).await {
            let code = e.as_db_error().map(|db| db.code().code().to_string());
            if !matches!(code.as_deref(), Some("23505" | "42P06")) {
                return Err(classify(name, e));
            }
        }
        run(format!(
            "BEGIN; \
             CREATE TABLE IF NOT EXISTS {snapshot} AS {hashed} WITH NO DATA; \
             DROP TABLE IF EXISTS {pending}; DROP TABLE IF EXISTS {changes}; \
             CREATE TABLE {pending} AS {hashed}; \
             COMMENT ON TABLE {pending} IS '{}'",
            run_id.replace('\'', "''")
        ))
        .await?;
        // Key gates first: a NULL or duplicated key would make the join lie.
        let check = Self::key_check_of(&client, name, schema, &pending, &keys).await?;
        if check.null_keys > 0 {
            run("ROLLBACK".into()).await?;
            return Ok(PreparedSnapshot::NullKeys { count: check.null_keys, samples: check.null_samples });
        }
        if check.duplicate_keys > 0 {
            run("ROLLBACK".into()).await?;
            return Ok(PreparedSnapshot::DuplicateKeys { count: check.duplicate_keys, samples: check.duplicate_samples });
        }
        let join = keys.iter().map(|k| format!("n.{k} = o.{k}")).collect::<Vec<_>>().join(" AND ");
        let order = keys.iter().map(|k| format!("coalesce(n.{k}, o.{k})")).collect::<Vec<_>>().join(", ");
        let first_key = &keys[0];
        let images: Vec<String> = (0..columns.len())
            .map(|i| format!("o.{c} AS o_{i}", c = columns[i]))
            .chain((0..columns.len()).map(|i| format!("n.{c} AS n_{i}", c = columns[i])))
            .collect();
        run(format!(
            "CREATE TABLE {changes} AS SELECT row_number() OVER (ORDER BY {order}) AS sluice_seq, \
             (o.{first_key} IS NOT NULL) AS sluice_has_before, (n.{first_key} IS NOT NULL) AS sluice_has_after, {} \
             FROM {pending} n FULL OUTER JOIN {snapshot} o ON {join} \
             WHERE n.{first_key} IS NULL OR o.{first_key} IS NULL OR n.sluice_hash <> o.sluice_hash; \
             ALTER TABLE {changes} ADD PRIMARY KEY (sluice_seq); COMMIT",
            images.join(", ")
        ))
        .await?;
        let counts = client
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM {pending}), (SELECT count(*) FROM {snapshot}), \
                     count(*) FILTER (WHERE NOT sluice_has_before), count(*) FILTER (WHERE sluice_has_before AND sluice_has_after), \
                     count(*) FILTER (WHERE NOT sluice_has_after) FROM {changes}"
                ),
                &[],
            )
            .await
            .map_err(|e| classify(name, e))?;
        let n = |i: usize| counts.get::<_, i64>(i) as u64;
        Ok(PreparedSnapshot::Ready { rows: n(0), tracked: n(1), inserts: n(2), updates: n(3), deletes: n(4) })
    }

    async fn snapshot_changes(&self, model: &ModelConfig, schema: &RowSchema, skip: u64, limit: usize) -> Result<Vec<SnapshotChange>, WarehouseError> {
        let name = model.name.get_ref();
        let width = schema.columns.len();
        let select: Vec<String> = schema
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| aliased("c", &Column { name: format!("o_{i}"), ..c.clone() }, &format!("o_{i}")))
            .chain(schema.columns.iter().enumerate().map(|(i, c)| aliased("c", &Column { name: format!("n_{i}"), ..c.clone() }, &format!("n_{i}"))))
            .collect();
        let sql = format!(
            "SELECT c.sluice_has_before, c.sluice_has_after, {} FROM {} c WHERE c.sluice_seq > $1 ORDER BY c.sluice_seq LIMIT {limit}",
            select.join(", "),
            table(model, "changes")
        );
        let rows = self.client.query(&sql, &[&(skip as i64)]).await.map_err(|e| classify(name, e))?;
        rows.iter()
            .map(|row| {
                let image = |offset: usize| -> Result<Row, WarehouseError> {
                    schema
                        .columns
                        .iter()
                        .enumerate()
                        .map(|(i, c)| read_value(row, offset + i, c))
                        .collect::<Result<Row, _>>()
                        .map_err(|e| WarehouseError::Model { model: name.clone(), message: format!("cannot read a change: {e}") })
                };
                let before = if row.get::<_, bool>(0) { Some(image(2)?) } else { None };
                let after = if row.get::<_, bool>(1) { Some(image(2 + width)?) } else { None };
                Ok(SnapshotChange { before, after })
            })
            .collect()
    }

    async fn plan_snapshot(&self, model: &ModelConfig, schema: &RowSchema, samples: usize) -> Result<SnapshotPlan, WarehouseError> {
        let name = model.name.get_ref();
        let list = schema.columns.iter().map(|c| ident(&c.name)).collect::<Vec<_>>().join(", ");
        let keys: Vec<String> = schema.key_columns().map(|c| ident(&c.name)).collect();
        let current = hashed_rows(model, &list);
        let snapshot_table = table(model, "snapshot");
        let exists: bool = self
            .client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&snapshot_table])
            .await
            .map_err(|e| classify(name, e))?
            .get(0);
        // No snapshot yet: compare with an empty one (every row is a snapshot read).
        let snapshot = if exists { snapshot_table } else { format!("({current} LIMIT 0)") };
        let differs = "n.sluice_hash <> o.sluice_hash";
        let rows: i64 = self.client.query_one(&format!("SELECT count(*) FROM ({current}) c"), &[]).await.map_err(|e| classify(name, e))?.get(0);
        let tracked: i64 = self.client.query_one(&format!("SELECT count(*) FROM {snapshot} s"), &[]).await.map_err(|e| classify(name, e))?.get(0);
        let counts: Vec<(String, i64)> = self
            .client
            .query(&sql::planned_counts(&current, &snapshot, &keys, differs), &[])
            .await
            .map_err(|e| classify(name, e))?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        let mut plan = SnapshotPlan::from_counts(rows as u64, tracked as u64, &counts);
        for (kind, slot) in plan.sample_slots() {
            *slot = super::key_rows(&self.client, name, schema, &sql::planned_samples(&current, &snapshot, &keys, differs, kind, samples)).await?;
        }
        Ok(plan)
    }

    async fn commit_snapshot(&self, model: &ModelConfig) -> Result<(), WarehouseError> {
        let name = model.name.get_ref();
        let client = self.private_client().await?;
        let (snapshot, pending, changes) = (table(model, "snapshot"), table(model, "pending"), table(model, "changes"));
        let renamed = ident(&format!("{name}_snapshot"));
        client
            .batch_execute(&format!(
                "BEGIN; DROP TABLE IF EXISTS {snapshot}; ALTER TABLE {pending} RENAME TO {renamed}; \
                 COMMENT ON TABLE {snapshot} IS NULL; DROP TABLE IF EXISTS {changes}; COMMIT"
            ))
            .await
            .map_err(|e| classify(name, e))
    }

    async fn discard_snapshot(&self, model: &ModelConfig) -> Result<(), WarehouseError> {
        let name = model.name.get_ref();
        self.client
            .batch_execute(&format!("DROP TABLE IF EXISTS {}; DROP TABLE IF EXISTS {}", table(model, "pending"), table(model, "changes")))
            .await
            .map_err(|e| classify(name, e))
    }
}

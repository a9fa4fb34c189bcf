//! PostgreSQL as a warehouse.
//!
//! Type mapping (anything else is refused by name): bool → Boolean; int2, int4 → Int; int8 →
//! Long; float4, float8 → Double; text, varchar, bpchar, name → String; bytea → Bytes;
//! timestamptz → TimestampMicros(utc); timestamp → TimestampMicros(local); date → Date;
//! json, jsonb → Json; uuid → Uuid; numeric → DecimalText (read as `::text`, so exact).
//!
//! Cursor parameters are bound as text and cast back to the column's own type in SQL, so a
//! stored cursor compares exactly as the column does (no float or time-zone drift).

use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use sluice_core::config::ModelConfig;
use sluice_core::{Column, ColumnType, Row, RowSchema, Value};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls};

mod snapshot;

use crate::sql::ident;
use crate::{cursor_order, model_schema, refuse_null_keys, value_text, KeyCheck, Warehouse, WarehouseError};

/// A connected PostgreSQL warehouse.
pub struct Postgres {
    client: Client,
    /// Kept to open a private connection for multi-statement transactions (`warehouse_diff`):
    /// `client` is shared by every model, so a BEGIN on it would swallow their queries.
    url: String,
}

fn unavailable(e: tokio_postgres::Error) -> WarehouseError {
    WarehouseError::Unavailable(e.to_string())
}

/// Connection (08xxx) and transaction-rollback (40xxx, e.g. serialization) failures are worth
/// retrying; any other database error is the model's (bad SQL, missing column).
fn classify(model: &str, e: tokio_postgres::Error) -> WarehouseError {
    match e.as_db_error() {
        Some(db) if !db.code().code().starts_with("08") && !db.code().code().starts_with("40") => {
            WarehouseError::Model { model: model.to_string(), message: db.message().to_string() }
        }
        _ => unavailable(e),
    }
}


impl Postgres {
    /// Connect; the connection task runs until the client is dropped.
    pub async fn connect(url: &str) -> Result<Postgres, WarehouseError> {
        let (client, connection) = tokio::time::timeout(Duration::from_secs(15), tokio_postgres::connect(url, NoTls))
            .await
            .map_err(|_| WarehouseError::Unavailable("connecting to PostgreSQL timed out after 15 s".into()))?
            .map_err(unavailable)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "warehouse connection closed");
            }
        });
        Ok(Postgres { client, url: url.to_string() })
    }

    /// The underlying client, for tools that need plain SQL (CLI, tests).
    pub fn client(&self) -> &Client {
        &self.client
    }
}

fn column_type(model: &str, column: &str, ty: &Type, typmod: i32) -> Result<ColumnType, WarehouseError> {
    Ok(match *ty {
        Type::BOOL => ColumnType::Boolean,
        Type::INT2 | Type::INT4 => ColumnType::Int,
        Type::INT8 => ColumnType::Long,
        Type::FLOAT4 | Type::FLOAT8 => ColumnType::Double,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => ColumnType::String,
        Type::BYTEA => ColumnType::Bytes,
        Type::TIMESTAMPTZ => ColumnType::TimestampMicros { utc: true },
        Type::TIMESTAMP => ColumnType::TimestampMicros { utc: false },
        Type::DATE => ColumnType::Date,
        Type::JSON | Type::JSONB => ColumnType::Json,
        Type::UUID => ColumnType::Uuid,
        // numeric(p, s) stores (p << 16 | s) + 4 in its type modifier; -1 = unconstrained,
        // which has no fixed scale and stays exact decimal text.
        Type::NUMERIC if typmod >= 4 => {
            ColumnType::Decimal { precision: ((typmod - 4) >> 16) as u32 & 0xffff, scale: (typmod - 4) as u32 & 0xffff }
        }
        Type::NUMERIC => ColumnType::DecimalText,
        ref other => {
            return Err(WarehouseError::Model {
                model: model.to_string(),
                message: format!(
                    "column {column:?} has PostgreSQL type {other}, which sluice does not map; cast it in a `query` model (e.g. {column}::text)"
                ),
            })
        }
    })
}

/// The SQL expression that reads a column: numeric is read as text to stay exact.
fn select_expr(column: &Column) -> String {
    match column.ty {
        ColumnType::DecimalText | ColumnType::Decimal { .. } => format!("{}::text", ident(&column.name)),
        _ => ident(&column.name),
    }
}

fn micros_since_epoch(t: NaiveDateTime) -> i64 {
    t.and_utc().timestamp_micros()
}

fn read_value(row: &tokio_postgres::Row, i: usize, column: &Column) -> Result<Value, tokio_postgres::Error> {
    let pg_type = row.columns()[i].type_().clone();
    macro_rules! get {
        ($t:ty) => {
            row.try_get::<_, Option<$t>>(i)?
        };
    }
    Ok(match column.ty {
        ColumnType::Boolean => get!(bool).map(Value::Boolean),
        ColumnType::Int if pg_type == Type::INT2 => get!(i16).map(|v| Value::Int(i32::from(v))),
        ColumnType::Int => get!(i32).map(Value::Int),
        ColumnType::Long => get!(i64).map(Value::Long),
        ColumnType::Double if pg_type == Type::FLOAT4 => get!(f32).map(|v| Value::Double(f64::from(v))),
        ColumnType::Double => get!(f64).map(Value::Double),
        ColumnType::String => get!(String).map(Value::String),
        ColumnType::Bytes => get!(Vec<u8>).map(Value::Bytes),
        ColumnType::TimestampMicros { utc: true } => get!(DateTime<Utc>).map(|t| Value::TimestampMicros(t.timestamp_micros())),
        ColumnType::TimestampMicros { utc: false } => get!(NaiveDateTime).map(|t| Value::TimestampMicros(micros_since_epoch(t))),
        ColumnType::Date => get!(NaiveDate).map(|d| {
            let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
            Value::Date(i32::try_from((d - epoch).num_days()).unwrap_or(i32::MAX))
        }),
        ColumnType::Json => get!(serde_json::Value).map(|j| Value::Json(j.to_string())),
        ColumnType::Uuid => get!(uuid::Uuid).map(|u| Value::Uuid(u.to_string())),
        ColumnType::DecimalText | ColumnType::Decimal { .. } => get!(String).map(Value::DecimalText),
    }
    .unwrap_or(Value::Null))
}

/// PostgreSQL type name to cast a text cursor parameter to.
fn cast_name(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::Boolean => "boolean",
        ColumnType::Int => "integer",
        ColumnType::Long => "bigint",
        ColumnType::Double => "double precision",
        ColumnType::String | ColumnType::Json => "text",
        ColumnType::Bytes => "bytea",
        // Zoned values are rendered in UTC; say so explicitly so the session time zone cannot
        // shift them.
        ColumnType::TimestampMicros { utc: true } => "timestamp) AT TIME ZONE 'UTC'",
        ColumnType::TimestampMicros { utc: false } => "timestamp",
        ColumnType::Date => "date",
        ColumnType::Uuid => "uuid",
        ColumnType::DecimalText | ColumnType::Decimal { .. } => "numeric",
    }
}

fn cursor_param(position: usize, ty: ColumnType) -> String {
    match ty {
        ColumnType::TimestampMicros { utc: true } => {
            format!("(${position}::text::{}", cast_name(ty))
        }
        _ => format!("${position}::text::{}", cast_name(ty)),
    }
}

impl Warehouse for Postgres {
    async fn describe(&self, model: &ModelConfig) -> Result<RowSchema, WarehouseError> {
        let name = model.name.get_ref();
        let list: Vec<String> = model.columns.iter().map(|c| ident(c)).collect();
        let sql = format!("SELECT {} FROM {} LIMIT 0", list.join(", "), model.relation_sql());
        let statement = self.client.prepare(&sql).await.map_err(|e| match e.as_db_error() {
            Some(db) => WarehouseError::Model { model: name.clone(), message: format!("cannot read the model: {}", db.message()) },
            None => unavailable(e),
        })?;
        let types = model
            .columns
            .iter()
            .zip(statement.columns())
            .map(|(column, described)| column_type(name, column, described.type_(), described.type_modifier()))
            .collect::<Result<Vec<_>, _>>()?;
        model_schema(model, types)
    }

    async fn fetch_after(
        &self,
        model: &ModelConfig,
        schema: &RowSchema,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<Vec<Row>, WarehouseError> {
        let order = cursor_order(model, schema)?;
        self.fetch_page(model, schema, &order, None, after, limit).await
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
        self.fetch_page(model, schema, &order, Some(since), after, limit).await
    }

    async fn fetch_by_key(&self, model: &ModelConfig, schema: &RowSchema, after: Option<&[Value]>, limit: usize) -> Result<Vec<Row>, WarehouseError> {
        self.fetch_page(model, schema, &schema.primary_key, None, after, limit).await
    }

    async fn check_keys(&self, model: &ModelConfig, schema: &RowSchema) -> Result<KeyCheck, WarehouseError> {
        let keys: Vec<String> = schema.key_columns().map(|c| ident(&c.name)).collect();
        Self::key_check_of(&self.client, model.name.get_ref(), schema, &model.relation_sql(), &keys).await
    }

    async fn scan<F>(&self, model: &ModelConfig, schema: &RowSchema, mut each: F) -> Result<u64, WarehouseError>
    where
        F: FnMut(Row) -> Result<(), WarehouseError> + Send,
    {
        use futures::TryStreamExt as _;
        let name = model.name.get_ref();
        let select: Vec<String> = schema.columns.iter().map(select_expr).collect();
        let sql = format!("SELECT {} FROM {}", select.join(", "), model.relation_sql());
        // query_raw streams rows as the server sends them: memory stays flat however large the
        // model is. One statement = one consistent snapshot of the model.
        let stream = self.client.query_raw(&sql, std::iter::empty::<Option<String>>()).await.map_err(|e| classify(name, e))?;
        futures::pin_mut!(stream);
        let mut count = 0u64;
        while let Some(row) = stream.try_next().await.map_err(|e| classify(name, e))? {
            let values: Row = schema
                .columns
                .iter()
                .enumerate()
                .map(|(i, column)| read_value(&row, i, column))
                .collect::<Result<_, _>>()
                .map_err(|e| WarehouseError::Model { model: name.clone(), message: format!("cannot read a row: {e}") })?;
            each(values)?;
            count += 1;
        }
        Ok(count)
    }
}


impl Postgres {
    /// [`KeyCheck`] of `relation` (the model, or a pending snapshot table not committed yet,
    /// hence the explicit client), samples included only when something is wrong.
    pub(crate) async fn key_check_of(client: &Client, name: &str, schema: &RowSchema, relation: &str, keys: &[String]) -> Result<KeyCheck, WarehouseError> {
        let counts = client.query_one(&crate::sql::key_check(relation, keys), &[]).await.map_err(|e| classify(name, e))?;
        let mut check = KeyCheck { rows: counts.get::<_, i64>(0) as u64, null_keys: counts.get::<_, i64>(1) as u64, duplicate_keys: counts.get::<_, i64>(2) as u64, ..KeyCheck::default() };
        if check.null_keys > 0 {
            check.null_samples = key_rows(client, name, schema, &crate::sql::null_key_samples(relation, keys, 5)).await?;
        }
        if check.duplicate_keys > 0 {
            check.duplicate_samples = key_rows(client, name, schema, &crate::sql::duplicate_key_samples(relation, keys, 5)).await?;
        }
        Ok(check)
    }

    /// A page ordered by the columns `indexes` (the cursor tuple, or the key): strictly after
    /// `after` (a row-value comparison, which PostgreSQL's btree indexes serve), and with the
    /// first column ≥ `since`.
    async fn fetch_page(
        &self,
        model: &ModelConfig,
        schema: &RowSchema,
        indexes: &[usize],
        since: Option<&Value>,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<Vec<Row>, WarehouseError> {
        let name = model.name.get_ref();
        let select: Vec<String> = schema.columns.iter().map(select_expr).collect();
        let order: Vec<String> = indexes.iter().map(|&i| ident(&schema.columns[i].name)).collect();
        let mut params: Vec<Option<String>> = Vec::new();
        let mut conditions = Vec::new();
        if let Some(tuple) = after {
            let placeholders: Vec<String> =
                indexes.iter().enumerate().map(|(p, &i)| cursor_param(p + 1, schema.columns[i].ty)).collect();
            params = tuple.iter().map(value_text).collect();
            conditions.push(format!("({}) > ({})", order.join(", "), placeholders.join(", ")));
        }
        if let Some(since) = since {
            params.push(value_text(since));
            conditions.push(format!("{} >= {}", order[0], cursor_param(params.len(), schema.columns[indexes[0]].ty)));
        }
        let predicate = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
        let sql = format!(
            "SELECT {} FROM {} {} ORDER BY {} LIMIT {}",
            select.join(", "),
            model.relation_sql(),
            predicate,
            order.join(", "),
            limit
        );
        let param_refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
        let rows = self.client.query(&sql, &param_refs).await.map_err(|e| classify(name, e))?;
        let rows = rows
            .iter()
            .map(|row| {
                schema
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, column)| read_value(row, i, column))
                    .collect::<Result<Row, _>>()
                    .map_err(|e| WarehouseError::Model { model: name.clone(), message: format!("cannot read a row: {e}") })
            })
            .collect::<Result<Vec<Row>, _>>()?;
        refuse_null_keys(name, schema, &rows)?;
        Ok(rows)
    }
}

/// Rows of key tuples (`SELECT <key columns> …`), read with the key columns' types.
pub(crate) async fn key_rows(client: &Client, name: &str, schema: &RowSchema, sql: &str) -> Result<Vec<Row>, WarehouseError> {
    let rows = client.query(sql, &[]).await.map_err(|e| classify(name, e))?;
    let keys: Vec<&Column> = schema.key_columns().collect();
    rows.iter()
        .map(|row| {
            keys.iter()
                .enumerate()
                .map(|(i, c)| read_value(row, i, c))
                .collect::<Result<Row, _>>()
                .map_err(|e| WarehouseError::Model { model: name.to_string(), message: format!("cannot read a key: {e}") })
        })
        .collect()
}

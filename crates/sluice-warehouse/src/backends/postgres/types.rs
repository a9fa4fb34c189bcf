//! PostgreSQL's types: how a column's type maps to sluice's [`ColumnType`], how a value is read,
//! and the [`Dialect`] choices the shared SQL is built from.
//!
//! Mapping (anything else is refused by name, with the cast to use): bool → Boolean; int2, int4
//! → Int; int8 → Long; float4, float8 → Double; text, varchar, bpchar, name → String; bytea →
//! Bytes; timestamptz → TimestampMicros(utc); timestamp → TimestampMicros(local); date → Date;
//! json, jsonb → Json (re-serialised compactly); uuid → Uuid; numeric(p, s) → Decimal and
//! unconstrained numeric → DecimalText, both read as `text` so they stay exact.
//!
//! Dialect: parameters are `$n::text` (PostgreSQL must be told a parameter is text before it is
//! cast), cast back to the column's PostgreSQL type; row values compare (`(a, b) > ($1, $2)`,
//! served by btree indexes); `warehouse_diff` keeps an md5 of each row's text and compares that.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use sluice_core::{Column, ColumnType, Row, Value};
use tokio_postgres::types::Type;

use crate::sql::{Dialect, RowComparison};
use crate::WarehouseError;

/// PostgreSQL's choices for the shared SQL ([`crate::sql`]).
pub(crate) const DIALECT: Dialect = Dialect {
    text_type: "text",
    text_param,
    cast_type,
    reads_text,
    row_values: true,
    row_comparison: RowComparison::Md5RowText,
    changes_primary_key: true,
};

fn text_param(position: usize) -> String {
    format!("${position}::text")
}

/// Numeric is read as text to stay exact; every other mapped type has a native binary reader.
fn reads_text(ty: ColumnType) -> bool {
    matches!(ty, ColumnType::DecimalText | ColumnType::Decimal { .. })
}

/// The PostgreSQL type a text parameter is cast to.
fn cast_type(ty: ColumnType) -> String {
    match ty {
        ColumnType::Boolean => "boolean",
        ColumnType::Int => "integer",
        ColumnType::Long => "bigint",
        ColumnType::Double => "double precision",
        ColumnType::String | ColumnType::Json => "text",
        ColumnType::Bytes => "bytea",
        ColumnType::TimestampMicros { utc: true } => "timestamptz",
        ColumnType::TimestampMicros { utc: false } => "timestamp",
        ColumnType::Date => "date",
        ColumnType::Uuid => "uuid",
        ColumnType::DecimalText | ColumnType::Decimal { .. } => "numeric",
    }
    .to_string()
}

/// The sluice type of a column PostgreSQL describes as `ty` with type modifier `typmod`.
pub(super) fn column_type(model: &str, column: &str, ty: &Type, typmod: i32) -> Result<ColumnType, WarehouseError> {
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

/// A result row read as `columns` (one per selected expression, in order).
pub(super) fn read_row(row: &tokio_postgres::Row, columns: &[Column], model: &str) -> Result<Row, WarehouseError> {
    columns
        .iter()
        .enumerate()
        .map(|(i, column)| read_value(row, i, column))
        .collect::<Result<Row, _>>()
        .map_err(|e| WarehouseError::Model { model: model.to_string(), message: format!("cannot read a row: {e}") })
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
        ColumnType::TimestampMicros { utc: false } => get!(NaiveDateTime).map(|t| Value::TimestampMicros(t.and_utc().timestamp_micros())),
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

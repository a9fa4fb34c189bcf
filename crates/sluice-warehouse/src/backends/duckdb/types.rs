//! DuckDB's types: how a column's type maps to sluice's [`ColumnType`], how a value is read, and
//! the [`Dialect`] choices the shared SQL is built from.
//!
//! Mapping (read from `DESCRIBE`; anything else is refused by name with a cast to use):
//! BOOLEAN → Boolean; TINYINT, SMALLINT, INTEGER, UTINYINT, USMALLINT → Int; BIGINT, UINTEGER →
//! Long; FLOAT, DOUBLE → Double; VARCHAR → String; BLOB → Bytes; DATE → Date; TIMESTAMP,
//! TIMESTAMP_MS, TIMESTAMP_S → TimestampMicros(local); TIMESTAMP WITH TIME ZONE →
//! TimestampMicros(utc); DECIMAL(p,s) → Decimal (read as text, exact); UUID → Uuid; JSON →
//! Json (both read as text). Lists, structs, maps, HUGEINT, UBIGINT and TIMESTAMP_NS are refused
//! (they have no lossless mapping; cast them in a `query` model).
//!
//! Dialect: parameters are plain `$n` (DuckDB types a parameter from its cast); row values are
//! spelled out; `warehouse_diff` compares rows column by column (`IS DISTINCT FROM`), so no hash
//! function's stability across DuckDB versions matters.

use ::duckdb::types::{TimeUnit, ValueRef};
use sluice_core::{Column, ColumnType, Value};

use crate::sql::{Dialect, RowComparison};
use crate::WarehouseError;

/// DuckDB's choices for the shared SQL ([`crate::sql`]).
pub(crate) const DIALECT: Dialect = Dialect {
    text_type: "VARCHAR",
    text_param,
    cast_type,
    reads_text,
    row_values: false,
    row_comparison: RowComparison::Columns,
    changes_primary_key: false,
};

fn text_param(position: usize) -> String {
    format!("${position}")
}

/// Decimals are read as text to stay exact; UUID and JSON because the driver has no reader for
/// them.
fn reads_text(ty: ColumnType) -> bool {
    matches!(ty, ColumnType::Decimal { .. } | ColumnType::DecimalText | ColumnType::Uuid | ColumnType::Json)
}

/// The DuckDB type a text parameter is cast to.
fn cast_type(ty: ColumnType) -> String {
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

/// The sluice type of a column `DESCRIBE` reports as `duck_type`.
pub(super) fn column_type(model: &str, column: &str, duck_type: &str) -> Result<ColumnType, WarehouseError> {
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

fn micros(unit: TimeUnit, value: i64) -> i64 {
    match unit {
        TimeUnit::Second => value.saturating_mul(1_000_000),
        TimeUnit::Millisecond => value.saturating_mul(1_000),
        TimeUnit::Microsecond => value,
        TimeUnit::Nanosecond => value.div_euclid(1_000),
    }
}

/// A value of `column` as DuckDB returned it; a value of another type than the column's is an
/// error naming both (never a guess).
pub(super) fn read_value(value: ValueRef<'_>, column: &Column) -> Result<Value, String> {
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

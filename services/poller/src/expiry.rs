//! When a row of a model with `expire = { column, after_ms }` stops being live: at
//! `column + after_ms` (ms since the epoch), never when the column is NULL. One rule, used by
//! every place that decides whether a row exists (cursor pages, the first snapshots, `diff`
//! runs, the cursor sweep, `sluice plan`) and by the header every event of such a model carries.
//!
//! Guarantees:
//! - A row is expired from the instant `column + after_ms` on (`expires_at <= now`), the same
//!   instant everywhere; a NULL column means live for good ([`NEVER`]).
//! - The [`EXPIRES_AT_HEADER`] text written by [`header_text`] reads back with [`parse_header`]
//!   to the same instant, so the poller rebuilds which keys to expire from headers alone.
//! - The column must be a timestamp of the model ([`Expiry::of`] refuses anything else by name);
//!   a local (zone-less) timestamp is read as UTC.

use sluice_core::config::ModelConfig;
use sluice_core::{ColumnType, Row, RowSchema, Value};
use sluice_warehouse::WarehouseError;

/// Header carrying when an event's row stops being live (see `sluice_kafka::headers`).
pub use sluice_kafka::headers::EXPIRES_AT_MS as EXPIRES_AT_HEADER;

/// The expiry instant of a row that never expires (its column is NULL).
pub const NEVER: i64 = i64::MAX;

/// A model's expiry rule, resolved against its row schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    /// Index of the expiry column in the row.
    column: usize,
    after_ms: i64,
}

impl Expiry {
    /// The rule of `model` for rows of `schema`: `None` without `expire`; an error naming the
    /// column when it is missing from the schema or not a timestamp.
    pub fn of(model: &ModelConfig, schema: &RowSchema) -> Result<Option<Expiry>, WarehouseError> {
        let Some(expire) = &model.expire else { return Ok(None) };
        let refuse = |message: String| WarehouseError::Model { model: model.name.get_ref().clone(), message };
        let column = schema.index_of(&expire.column).ok_or_else(|| refuse(format!("expire.column {:?} is not a column of the model", expire.column)))?;
        if !matches!(schema.columns[column].ty, ColumnType::TimestampMicros { .. }) {
            return Err(refuse(format!(
                "expire.column {:?} has type {:?}; expire needs a timestamp column (e.g. timestamptz). Fix: name a timestamp column, or cast it in a query model",
                expire.column, schema.columns[column].ty
            )));
        }
        Ok(Some(Expiry { column, after_ms: i64::try_from(expire.after_ms).unwrap_or(i64::MAX) }))
    }

    /// When `row` stops being live, ms since the epoch ([`NEVER`] when its column is NULL).
    pub fn expires_at(&self, row: &Row) -> i64 {
        match &row[self.column] {
            Value::TimestampMicros(micros) => micros.div_euclid(1000).saturating_add(self.after_ms),
            _ => NEVER,
        }
    }

    /// Whether `row` is expired at `now_ms`.
    pub fn expired(&self, row: &Row, now_ms: i64) -> bool {
        self.expires_at(row) <= now_ms
    }
}

/// Whether `row` is expired at `now_ms` under `expiry` (never without one).
pub fn is_expired(expiry: Option<&Expiry>, row: &Row, now_ms: i64) -> bool {
    expiry.is_some_and(|e| e.expired(row, now_ms))
}

/// The header text of an expiry instant: decimal ms, or `never`.
pub fn header_text(expires_at: i64) -> String {
    if expires_at == NEVER {
        "never".to_string()
    } else {
        expires_at.to_string()
    }
}

/// The instant a header text names; `None` for text [`header_text`] does not write.
pub fn parse_header(text: &[u8]) -> Option<i64> {
    match text {
        b"never" => Some(NEVER),
        digits => std::str::from_utf8(digits).ok()?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::Column;

    fn schema(ty: ColumnType) -> RowSchema {
        RowSchema {
            columns: vec![Column { name: "id".into(), ty: ColumnType::Long, nullable: false }, Column { name: "purchased_at".into(), ty, nullable: true }],
            primary_key: vec![0],
        }
    }

    fn model(after_ms: u64) -> ModelConfig {
        let text = format!(
            "[kafka]\nbootstrap_servers = \"k:9092\"\n[warehouse]\nkind = \"duckdb\"\npath = \"w.duckdb\"\n[[models]]\nname = \"purchases\"\ntable = \"p\"\nprimary_key = [\"id\"]\ncolumns = [\"id\", \"purchased_at\"]\ndetection = {{ mode = \"diff\" }}\nexpire = {{ column = \"purchased_at\", after_ms = {after_ms} }}\n"
        );
        sluice_core::config::Config::parse("t.toml", &text).expect("valid").models[0].clone()
    }

    #[test]
    fn a_row_is_live_until_its_column_plus_after_ms() {
        let expiry = Expiry::of(&model(1000), &schema(ColumnType::TimestampMicros { utc: true })).unwrap().expect("configured");
        let row = vec![Value::Long(1), Value::TimestampMicros(5_000_000)]; // 5 s after the epoch
        assert_eq!(expiry.expires_at(&row), 6_000);
        assert!(!expiry.expired(&row, 5_999));
        assert!(expiry.expired(&row, 6_000), "expired from the instant on");
        let never = vec![Value::Long(2), Value::Null];
        assert_eq!(expiry.expires_at(&never), NEVER);
        assert!(!expiry.expired(&never, i64::MAX - 1), "a NULL column never expires");
        // Before the epoch, micros round down, as instants do.
        assert_eq!(expiry.expires_at(&vec![Value::Long(3), Value::TimestampMicros(-1)]), 999);
        assert!(!is_expired(None, &row, i64::MAX), "no rule: never expired");
        let local = Expiry::of(&model(1000), &schema(ColumnType::TimestampMicros { utc: false })).unwrap();
        assert!(local.is_some(), "a local timestamp is accepted (read as UTC)");
    }

    #[test]
    fn a_column_that_is_not_a_timestamp_is_refused_by_name() {
        let error = Expiry::of(&model(1000), &schema(ColumnType::Date)).unwrap_err().to_string();
        assert!(error.contains("purchases") && error.contains("expire.column \"purchased_at\" has type Date; expire needs a timestamp column"), "{error}");
    }

    #[test]
    fn header_text_reads_back() {
        for at in [0, 6_000, -5, NEVER] {
            assert_eq!(parse_header(header_text(at).as_bytes()), Some(at));
        }
        assert_eq!(header_text(NEVER), "never");
        assert_eq!(parse_header(b"soon"), None);
    }
}

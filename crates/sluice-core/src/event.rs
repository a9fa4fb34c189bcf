//! The change event: what the poller emits for one row and a sink applies.
//!
//! Debezium-style: `before` and `after` images, an operation, where it came from, when, and which
//! columns changed. A row is a positional vector of [`Value`]s described by a [`RowSchema`]; the
//! positional form keeps per-row cost to one allocation and lets the Avro codec write fields in
//! schema order without looking names up.

use std::fmt;

/// Operation of a change event, with Debezium's one-letter codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `c`: the row appeared.
    Create,
    /// `u`: the row changed.
    Update,
    /// `d`: the row disappeared. Followed on the topic by a tombstone for the same key.
    Delete,
    /// `r`: the row was read by a snapshot (the first run of a model, or a resnapshot).
    Read,
}

impl Op {
    /// Debezium's code: `c`, `u`, `d` or `r`.
    pub fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
        }
    }

    /// Parse Debezium's code.
    pub fn from_code(code: &str) -> Option<Op> {
        match code {
            "c" => Some(Op::Create),
            "u" => Some(Op::Update),
            "d" => Some(Op::Delete),
            "r" => Some(Op::Read),
            _ => None,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A column's logical type, as sluice maps it. Each maps to exactly one Avro type (see
/// `sluice-avro`); warehouse types without a deliberate mapping are refused, never guessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnType {
    Boolean,
    /// 32-bit signed integer.
    Int,
    /// 64-bit signed integer.
    Long,
    /// 64-bit IEEE float.
    Double,
    /// UTF-8 text.
    String,
    Bytes,
    /// Microseconds since the Unix epoch. `utc` is true for zoned timestamps (stored as UTC
    /// instants) and false for local (wall-clock) timestamps.
    TimestampMicros { utc: bool },
    /// Days since the Unix epoch.
    Date,
    /// JSON document, carried as its text.
    Json,
    /// UUID, carried as its canonical text.
    Uuid,
    /// Exact numeric carried as its decimal text, so no float rounding can occur: used for
    /// numerics without a declared scale (Avro's decimal needs one).
    DecimalText,
    /// Exact numeric with a declared precision and scale (`numeric(p, s)`): Avro `decimal`
    /// (bytes). In memory the value is still [`Value::DecimalText`], exactly as the warehouse
    /// prints it.
    Decimal { precision: u32, scale: u32 },
}

/// A value in a row. Variants mirror [`ColumnType`] plus `Null`.
///
/// The serde form (`{"t": "Long", "v": 42}`) is what positions (cursor tuples) are stored as:
/// tagged, so a value binds back to a query parameter with its exact type after a restart.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "t", content = "v")]
pub enum Value {
    Null,
    Boolean(bool),
    Int(i32),
    Long(i64),
    Double(f64),
    String(String),
    Bytes(Vec<u8>),
    TimestampMicros(i64),
    Date(i32),
    Json(String),
    Uuid(String),
    DecimalText(String),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// A JSON rendering for destinations that speak JSON. Timestamps become RFC 3339 strings
    /// and dates ISO dates, which is what HTTP APIs expect; JSON columns are embedded as
    /// documents, not as strings.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Boolean(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Long(i) => J::from(*i),
            Value::Double(d) => serde_json::Number::from_f64(*d).map_or(J::Null, J::Number),
            Value::String(s) | Value::Uuid(s) | Value::DecimalText(s) => J::String(s.clone()),
            Value::Bytes(b) => J::Array(b.iter().map(|x| J::from(*x)).collect()),
            Value::TimestampMicros(us) => match chrono::DateTime::from_timestamp_micros(*us) {
                Some(t) => J::String(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
                None => J::from(*us),
            },
            Value::Date(days) => {
                let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
                match epoch.checked_add_signed(chrono::Duration::days(i64::from(*days))) {
                    Some(d) => J::String(d.to_string()),
                    None => J::from(*days),
                }
            }
            Value::Json(text) => serde_json::from_str(text).unwrap_or(J::String(text.clone())),
        }
    }
}

/// One column of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    pub nullable: bool,
}

/// The shape of a model's rows: its columns in order, and which of them form the primary key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowSchema {
    pub columns: Vec<Column>,
    /// Indexes into `columns`, in key order.
    pub primary_key: Vec<usize>,
}

impl RowSchema {
    /// Index of a column by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The key columns, in key order.
    pub fn key_columns(&self) -> impl Iterator<Item = &Column> + '_ {
        self.primary_key.iter().map(move |&i| &self.columns[i])
    }

    /// The key values of a row, in key order.
    pub fn key_of(&self, row: &Row) -> Row {
        self.primary_key.iter().map(|&i| row[i].clone()).collect()
    }
}

/// A row's values, positional by [`RowSchema::columns`].
pub type Row = Vec<Value>;

/// Where an event came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    /// Model name from the config.
    pub model: String,
    /// Warehouse name from the config.
    pub warehouse: String,
    /// Id of the poller run that produced the event; all events of one run share it.
    pub run_id: String,
    /// The detection mode's position after this row (for `cursor` mode, the cursor tuple),
    /// opaque to consumers, useful when tracing an event back to the warehouse.
    pub position: Option<String>,
}

/// One row-level change.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    pub op: Op,
    /// The row before the change: absent for inserts, snapshot reads, and in `cursor` mode
    /// (which cannot see the previous version of a row).
    pub before: Option<Row>,
    /// The row after the change: absent for deletes.
    pub after: Option<Row>,
    pub source: SourceInfo,
    /// When the poller observed the change, in milliseconds since the epoch.
    pub ts_ms: i64,
    /// Names of the columns whose value changed, when the mode can know (`None` = unknown).
    pub changed: Option<Vec<String>>,
}

impl ChangeEvent {
    /// The row image that identifies the record: `after`, or `before` for deletes.
    pub fn current_image(&self) -> Option<&Row> {
        self.after.as_ref().or(self.before.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_codes_round_trip() {
        for op in [Op::Create, Op::Update, Op::Delete, Op::Read] {
            assert_eq!(Op::from_code(op.code()), Some(op));
        }
        assert_eq!(Op::from_code("x"), None);
    }

    #[test]
    fn json_rendering_of_temporal_values() {
        assert_eq!(Value::TimestampMicros(1_500_000).to_json(), serde_json::json!("1970-01-01T00:00:01.500Z"));
        assert_eq!(Value::Date(1).to_json(), serde_json::json!("1970-01-02"));
        assert_eq!(Value::Json("{\"a\":1}".into()).to_json(), serde_json::json!({"a": 1}));
    }
}

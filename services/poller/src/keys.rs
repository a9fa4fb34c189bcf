//! Row and key identities: the hashes every mode compares by, and keys as JSON for samples.
//!
//! Guarantees:
//! - [`row_hash`] is the same for equal rows in every process and on every warehouse (xxh3 of a
//!   canonical byte form, not of a Rust `Hash`), and rows of different values or types never
//!   share a byte form. It is written on every event (`sluice.row.hash`) and read back by `diff`
//!   mode after a restart, so changing it would make every `diff` model re-emit every row once.
//! - [`key_hash`] is xxh3 of a record key's encoded bytes: the identity of a row in the tracked
//!   state and in the look-back window's emitted pairs (stored in state records, so it must not
//!   change either).
//! - [`key_json`] and [`key_tuple_json`] show key columns only, never other column values: they
//!   are what errors, logs and `sluice plan` may print.

use sluice_core::{Row, RowSchema, Value};

/// xxh3 of a row's values in a canonical byte form (type tag, length-prefixed payload), so
/// equal rows hash equal whatever the warehouse and different types never collide by layout.
/// `buf` is reused between rows to avoid an allocation per row.
pub fn row_hash(row: &Row, buf: &mut Vec<u8>) -> u64 {
    buf.clear();
    for value in row {
        match value {
            Value::Null => buf.push(0),
            Value::Boolean(b) => buf.extend_from_slice(&[1, u8::from(*b)]),
            Value::Int(i) => {
                buf.push(2);
                buf.extend_from_slice(&i.to_le_bytes());
            }
            Value::Long(i) => {
                buf.push(3);
                buf.extend_from_slice(&i.to_le_bytes());
            }
            Value::Double(d) => {
                buf.push(4);
                buf.extend_from_slice(&d.to_bits().to_le_bytes());
            }
            Value::TimestampMicros(t) => {
                buf.push(5);
                buf.extend_from_slice(&t.to_le_bytes());
            }
            Value::Date(d) => {
                buf.push(6);
                buf.extend_from_slice(&d.to_le_bytes());
            }
            Value::String(s) | Value::Json(s) | Value::Uuid(s) | Value::DecimalText(s) => {
                buf.push(7);
                buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
                buf.extend_from_slice(s.as_bytes());
            }
            Value::Bytes(b) => {
                buf.push(8);
                buf.extend_from_slice(&(b.len() as u64).to_le_bytes());
                buf.extend_from_slice(b);
            }
        }
    }
    xxhash_rust::xxh3::xxh3_64(buf)
}

/// Hash of a record key's bytes: the identity of a row in the tracked state.
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// The key of a row as JSON (`{"id": 7}`), for samples in errors and `sluice plan`.
pub fn key_json(schema: &RowSchema, row: &Row) -> serde_json::Value {
    let mut object = serde_json::Map::new();
    for &i in &schema.primary_key {
        object.insert(schema.columns[i].name.clone(), row[i].to_json());
    }
    serde_json::Value::Object(object)
}

/// A key tuple (key columns in key order, as the warehouse's key checks return them) as a JSON
/// object, like [`key_json`] of a row.
pub fn key_tuple_json(schema: &RowSchema, key: &Row) -> serde_json::Value {
    // Place the key values into a row-shaped vector for key_json.
    let mut row = vec![Value::Null; schema.columns.len()];
    for (value, &i) in key.iter().zip(&schema.primary_key) {
        row[i] = value.clone();
    }
    key_json(schema, &row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_hash_separates_types_and_boundaries() {
        let mut buf = Vec::new();
        let a = row_hash(&vec![Value::String("ab".into()), Value::String("c".into())], &mut buf);
        let b = row_hash(&vec![Value::String("a".into()), Value::String("bc".into())], &mut buf);
        assert_ne!(a, b, "length prefixes keep field boundaries");
        let int = row_hash(&vec![Value::Int(1)], &mut buf);
        let date = row_hash(&vec![Value::Date(1)], &mut buf);
        assert_ne!(int, date, "type tags keep types apart");
        assert_ne!(row_hash(&vec![Value::Null], &mut buf), row_hash(&vec![Value::String(String::new())], &mut buf));
        assert_eq!(a, row_hash(&vec![Value::String("ab".into()), Value::String("c".into())], &mut buf));
    }
}

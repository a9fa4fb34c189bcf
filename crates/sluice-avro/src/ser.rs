//! Serde views of rows and events for apache-avro's schema-aware serializer, and the way back
//! from decoded Avro values.
//!
//! Rows are serialized as structs whose fields are written in schema order. serde wants
//! `'static` field names; column names are only known at run time, so [`ColumnNames`] leaks them
//! once per codec (bounded: one set per model and schema version for the life of the process).

use std::sync::Arc;

use apache_avro::types::Value as Avro;
use serde::ser::{SerializeStruct, Serializer};
use serde::Serialize;
use sluice_core::{ChangeEvent, ColumnType, Op, Row, RowSchema, SourceInfo, Value};

use crate::DecodedEvent;

struct ValueSer<'a> {
    value: &'a Value,
    nullable: bool,
    ty: ColumnType,
}

impl Serialize for ValueSer<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.nullable {
            match self.value {
                Value::Null => s.serialize_none(),
                value => s.serialize_some(&ValueSer { value, nullable: false, ty: self.ty }),
            }
        } else {
            match self.value {
                // A NULL in a NOT NULL column fails encoding with the schema's own error.
                Value::Null => s.serialize_unit(),
                Value::Boolean(b) => s.serialize_bool(*b),
                Value::Int(i) | Value::Date(i) => s.serialize_i32(*i),
                Value::Long(i) | Value::TimestampMicros(i) => s.serialize_i64(*i),
                Value::Double(d) => s.serialize_f64(*d),
                Value::DecimalText(t) => match self.ty {
                    ColumnType::Decimal { scale, .. } => {
                        let bytes = decimal_to_unscaled(t, scale).map_err(serde::ser::Error::custom)?;
                        s.serialize_bytes(&bytes)
                    }
                    _ => s.serialize_str(t),
                },
                Value::String(t) | Value::Json(t) | Value::Uuid(t) => s.serialize_str(t),
                Value::Bytes(b) => s.serialize_bytes(b),
            }
        }
    }
}

/// A model's column names with the `'static` lifetime serde's struct serializer requires.
pub(crate) struct ColumnNames(Vec<&'static str>);

impl ColumnNames {
    pub(crate) fn leak(schema: &RowSchema) -> ColumnNames {
        ColumnNames(schema.columns.iter().map(|c| &*Box::leak(c.name.clone().into_boxed_str())).collect())
    }
}

/// A full row, as the model's `Row` record.
pub(crate) struct RowSer<'a> {
    pub schema: &'a RowSchema,
    pub names: &'a ColumnNames,
    pub row: &'a Row,
}

impl Serialize for RowSer<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut record = s.serialize_struct("Row", self.schema.columns.len())?;
        for ((column, name), value) in self.schema.columns.iter().zip(&self.names.0).zip(self.row) {
            record.serialize_field(name, &ValueSer { value, nullable: column.nullable, ty: column.ty })?;
        }
        record.end()
    }
}

/// The primary key of a full row, as the model's `Key` record.
pub(crate) struct KeySer<'a> {
    pub schema: &'a RowSchema,
    pub names: &'a ColumnNames,
    pub row: &'a Row,
}

impl Serialize for KeySer<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut record = s.serialize_struct("Key", self.schema.primary_key.len())?;
        for &i in &self.schema.primary_key {
            let value = ValueSer { value: &self.row[i], nullable: self.schema.columns[i].nullable, ty: self.schema.columns[i].ty };
            record.serialize_field(self.names.0[i], &value)?;
        }
        record.end()
    }
}

struct SourceSer<'a>(&'a SourceInfo);

impl Serialize for SourceSer<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut record = s.serialize_struct("Source", 4)?;
        record.serialize_field("model", &self.0.model)?;
        record.serialize_field("warehouse", &self.0.warehouse)?;
        record.serialize_field("run_id", &self.0.run_id)?;
        record.serialize_field("position", &self.0.position)?;
        record.end()
    }
}

/// A change event, as the model's `Envelope` record.
pub(crate) struct EnvelopeSer<'a> {
    pub schema: &'a RowSchema,
    pub names: &'a ColumnNames,
    pub event: &'a ChangeEvent,
}

impl Serialize for EnvelopeSer<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (schema, names) = (self.schema, self.names);
        let before = self.event.before.as_ref().map(|row| RowSer { schema, names, row });
        let after = self.event.after.as_ref().map(|row| RowSer { schema, names, row });
        let mut record = s.serialize_struct("Envelope", 6)?;
        record.serialize_field("before", &before)?;
        record.serialize_field("after", &after)?;
        record.serialize_field("op", self.event.op.code())?;
        record.serialize_field("source", &SourceSer(&self.event.source))?;
        record.serialize_field("ts_ms", &self.event.ts_ms)?;
        record.serialize_field("changed", &self.event.changed)?;
        record.end()
    }
}

fn field<'a>(fields: &'a [(String, Avro)], name: &str) -> Result<&'a Avro, String> {
    fields.iter().find(|(n, _)| n == name).map(|(_, v)| v).ok_or_else(|| format!("field {name:?} missing"))
}

fn unwrap_union(value: &Avro) -> &Avro {
    match value {
        Avro::Union(_, inner) => inner,
        other => other,
    }
}

fn string(value: &Avro, what: &str) -> Result<String, String> {
    match unwrap_union(value) {
        Avro::String(s) => Ok(s.clone()),
        other => Err(format!("{what} is not a string: {other:?}")),
    }
}

pub(crate) fn core_value(value: &Avro) -> Result<Value, String> {
    Ok(match unwrap_union(value) {
        Avro::Null => Value::Null,
        Avro::Boolean(b) => Value::Boolean(*b),
        Avro::Int(i) => Value::Int(*i),
        Avro::Date(d) => Value::Date(*d),
        Avro::Long(l) => Value::Long(*l),
        Avro::TimestampMicros(t) | Avro::LocalTimestampMicros(t) => Value::TimestampMicros(*t),
        Avro::Double(d) => Value::Double(*d),
        Avro::String(s) => Value::String(s.clone()),
        Avro::Uuid(u) => Value::Uuid(u.to_string()),
        Avro::Bytes(b) => Value::Bytes(b.clone()),
        // Unscaled two's-complement bytes; the row image turns them into text with the scale.
        Avro::Decimal(d) => Value::Bytes(Vec::<u8>::try_from(d).map_err(|e| e.to_string())?),
        other => return Err(format!("unexpected Avro value {other:?}")),
    })
}

fn row_image(value: &Avro, text_kinds: &[Option<String>]) -> Result<Option<Row>, String> {
    match unwrap_union(value) {
        Avro::Null => Ok(None),
        Avro::Record(fields) => fields
            .iter()
            .zip(text_kinds)
            .map(|((_, v), kind)| {
                core_value(v).map(|value| match (value, kind.as_deref()) {
                    (Value::String(s), Some("json")) => Value::Json(s),
                    (Value::String(s), Some("uuid")) => Value::Uuid(s),
                    (Value::String(s), Some("decimal")) => Value::DecimalText(s),
                    (Value::Bytes(b), Some(kind)) if kind.starts_with("decimal:") => {
                        Value::DecimalText(unscaled_to_decimal(&b, kind["decimal:".len()..].parse().unwrap_or(0)))
                    }
                    (value, _) => value,
                })
            })
            .collect::<Result<Row, _>>()
            .map(Some),
        other => Err(format!("row image is not a record: {other:?}")),
    }
}

/// Turn a decoded `Envelope` record back into a change event.
pub(crate) fn envelope_from_avro(
    value: Avro,
    columns: &Arc<Vec<String>>,
    text_kinds: &[Option<String>],
) -> Result<DecodedEvent, String> {
    let Avro::Record(fields) = value else {
        return Err("event is not a record".into());
    };
    let before = row_image(field(&fields, "before")?, text_kinds)?;
    let after = row_image(field(&fields, "after")?, text_kinds)?;
    let code = string(field(&fields, "op")?, "op")?;
    let op = Op::from_code(&code).ok_or_else(|| format!("unknown op {code:?}"))?;
    let Avro::Record(source) = field(&fields, "source")? else {
        return Err("source is not a record".into());
    };
    let position = match unwrap_union(field(source, "position")?) {
        Avro::Null => None,
        other => Some(string(other, "source.position")?),
    };
    let source = SourceInfo {
        model: string(field(source, "model")?, "source.model")?,
        warehouse: string(field(source, "warehouse")?, "source.warehouse")?,
        run_id: string(field(source, "run_id")?, "source.run_id")?,
        position,
    };
    let ts_ms = match field(&fields, "ts_ms")? {
        Avro::Long(t) => *t,
        other => return Err(format!("ts_ms is not a long: {other:?}")),
    };
    let changed = match unwrap_union(field(&fields, "changed")?) {
        Avro::Null => None,
        Avro::Array(items) => Some(items.iter().map(|v| string(v, "changed[]")).collect::<Result<_, _>>()?),
        other => return Err(format!("changed is not an array: {other:?}")),
    };
    Ok(DecodedEvent {
        event: ChangeEvent { op, before, after, source, ts_ms, changed },
        columns: Arc::clone(columns),
    })
}

/// The exact decimal text `text` (as PostgreSQL prints `numeric(p, s)`: optional `-`, digits,
/// optional `.` and at most `scale` digits) as Avro decimal bytes: the unscaled integer in
/// big-endian two's complement, minimal length. NaN and infinities cannot be Avro decimals.
pub(crate) fn decimal_to_unscaled(text: &str, scale: u32) -> Result<Vec<u8>, String> {
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int_part, frac_part) = body.split_once('.').unwrap_or((body, ""));
    let scale = scale as usize;
    if frac_part.len() > scale || !int_part.chars().chain(frac_part.chars()).all(|c| c.is_ascii_digit()) || body.is_empty() {
        return Err(format!("numeric value {text:?} cannot be an Avro decimal with scale {scale}"));
    }
    // Base-256 magnitude, built digit by digit (no width limit: numeric allows 1000 digits).
    let mut magnitude: Vec<u8> = vec![0];
    let digits = int_part.bytes().chain(frac_part.bytes()).chain(std::iter::repeat_n(b'0', scale - frac_part.len()));
    for digit in digits {
        let mut carry = u32::from(digit - b'0');
        for byte in magnitude.iter_mut().rev() {
            let v = u32::from(*byte) * 10 + carry;
            *byte = (v & 0xff) as u8;
            carry = v >> 8;
        }
        while carry > 0 {
            magnitude.insert(0, (carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    let is_zero = magnitude.iter().all(|&b| b == 0);
    let mut bytes = magnitude;
    if negative && !is_zero {
        // Two's complement: invert and add one.
        for byte in bytes.iter_mut() {
            *byte = !*byte;
        }
        for byte in bytes.iter_mut().rev() {
            let (v, overflow) = byte.overflowing_add(1);
            *byte = v;
            if !overflow {
                break;
            }
        }
        if bytes[0] & 0x80 == 0 {
            bytes.insert(0, 0xff);
        }
        while bytes.len() > 1 && bytes[0] == 0xff && bytes[1] & 0x80 != 0 {
            bytes.remove(0);
        }
    } else {
        if bytes[0] & 0x80 != 0 {
            bytes.insert(0, 0);
        }
        while bytes.len() > 1 && bytes[0] == 0 && bytes[1] & 0x80 == 0 {
            bytes.remove(0);
        }
    }
    Ok(bytes)
}

/// Avro decimal bytes (unscaled, big-endian two's complement) back to the exact text PostgreSQL
/// prints for `numeric(p, scale)`.
pub(crate) fn unscaled_to_decimal(bytes: &[u8], scale: usize) -> String {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut magnitude: Vec<u8> = bytes.to_vec();
    if negative {
        for byte in magnitude.iter_mut() {
            *byte = !*byte;
        }
        for byte in magnitude.iter_mut().rev() {
            let (v, overflow) = byte.overflowing_add(1);
            *byte = v;
            if !overflow {
                break;
            }
        }
    }
    // Repeated division by 10 gives the decimal digits, least significant first.
    let mut digits = Vec::new();
    while magnitude.iter().any(|&b| b != 0) {
        let mut remainder = 0u32;
        for byte in magnitude.iter_mut() {
            let v = (remainder << 8) | u32::from(*byte);
            *byte = (v / 10) as u8;
            remainder = v % 10;
        }
        digits.push(b'0' + remainder as u8);
    }
    while digits.len() <= scale {
        digits.push(b'0');
    }
    digits.reverse();
    let (int_part, frac_part) = digits.split_at(digits.len() - scale);
    let mut text = String::with_capacity(digits.len() + 2);
    if negative {
        text.push('-');
    }
    text.push_str(std::str::from_utf8(int_part).expect("ascii digits"));
    if scale > 0 {
        text.push('.');
        text.push_str(std::str::from_utf8(frac_part).expect("ascii digits"));
    }
    text
}

#[cfg(test)]
mod decimal_tests {
    use super::*;

    #[test]
    fn decimal_text_round_trips_through_avro_bytes() {
        for (text, scale, bytes) in [
            ("0.00", 2, vec![0]),
            ("1.00", 2, vec![100]),
            ("-1.00", 2, vec![0x9c]),
            ("1.28", 2, vec![0, 128]),
            ("-1.28", 2, vec![0x80]),
            ("-1.29", 2, vec![0xff, 0x7f]),
            ("123", 0, vec![123]),
            ("0.05", 2, vec![5]),
            ("-0.50", 2, vec![0xce]),
        ] {
            assert_eq!(decimal_to_unscaled(text, scale).unwrap(), bytes, "{text}");
            assert_eq!(unscaled_to_decimal(&bytes, scale as usize), text, "{text}");
        }
        let big = "-123456789012345678901234567890123456789012.345";
        assert_eq!(unscaled_to_decimal(&decimal_to_unscaled(big, 3).unwrap(), 3), big);
        assert!(decimal_to_unscaled("NaN", 2).unwrap_err().contains("cannot be an Avro decimal"));
        assert!(decimal_to_unscaled("1.234", 2).is_err(), "more digits than the scale");
    }
}

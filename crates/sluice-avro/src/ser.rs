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
use sluice_core::{ChangeEvent, Op, Row, RowSchema, SourceInfo, Value};

use crate::DecodedEvent;

struct ValueSer<'a> {
    value: &'a Value,
    nullable: bool,
}

impl Serialize for ValueSer<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.nullable {
            match self.value {
                Value::Null => s.serialize_none(),
                value => s.serialize_some(&ValueSer { value, nullable: false }),
            }
        } else {
            match self.value {
                // A NULL in a NOT NULL column fails encoding with the schema's own error.
                Value::Null => s.serialize_unit(),
                Value::Boolean(b) => s.serialize_bool(*b),
                Value::Int(i) | Value::Date(i) => s.serialize_i32(*i),
                Value::Long(i) | Value::TimestampMicros(i) => s.serialize_i64(*i),
                Value::Double(d) => s.serialize_f64(*d),
                Value::String(t) | Value::Json(t) | Value::Uuid(t) | Value::DecimalText(t) => s.serialize_str(t),
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
            record.serialize_field(name, &ValueSer { value, nullable: column.nullable })?;
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
            let value = ValueSer { value: &self.row[i], nullable: self.schema.columns[i].nullable };
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

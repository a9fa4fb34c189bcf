//! Per-model Avro schemas, built from the envelope template `schemas/envelope/envelope.avsc`
//! (a schema that parses on its own, with an empty `Row`) and the model's columns.
//!
//! Each model gets its own namespace, `sluice.models.<model>`, so the `Row`, `Key` and
//! `Envelope` records of different models never clash in a registry. Type mapping, one Avro
//! type per [`ColumnType`], chosen so no value changes on the way:
//!
//! | column type              | Avro                                        |
//! |--------------------------|---------------------------------------------|
//! | Boolean                  | boolean                                     |
//! | Int / Long               | int / long                                  |
//! | Double                   | double                                      |
//! | String, Json, Uuid, DecimalText | string (the exact text)              |
//! | Decimal(p, s)            | bytes, logicalType decimal, precision p, scale s |
//! | Bytes                    | bytes                                       |
//! | TimestampMicros utc      | long, logicalType timestamp-micros          |
//! | TimestampMicros local    | long, logicalType local-timestamp-micros    |
//! | Date                     | int, logicalType date                       |
//!
//! Nullable columns are `["null", T]` with a null default. Json, Uuid and DecimalText fields
//! carry a `"sluice.type"` attribute (`json`, `uuid`, `decimal`) naming what the text holds.

use serde_json::{json, Value as Json};
use sluice_core::{ColumnType, RowSchema};

use crate::CodecError;

const ENVELOPE: &str = include_str!("../../../schemas/envelope/envelope.avsc");

/// A valid Avro name for a model or column: `[A-Za-z_][A-Za-z0-9_]*`, with `-` turned into `_`.
/// Returns `None` when the name cannot be made valid that way.
pub fn avro_name(name: &str) -> Option<String> {
    let candidate = name.replace('-', "_");
    let mut chars = candidate.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    (first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')).then_some(candidate)
}

fn namespace(model: &str) -> Result<String, CodecError> {
    avro_name(model)
        .map(|m| format!("sluice.models.{m}"))
        .ok_or_else(|| CodecError::ColumnName { model: model.to_string(), column: model.to_string() })
}

/// Field attribute naming what a `string` field really carries.
pub(crate) const TEXT_KIND_ATTRIBUTE: &str = "sluice.type";

fn text_kind(ty: ColumnType) -> Option<&'static str> {
    match ty {
        ColumnType::Json => Some("json"),
        ColumnType::Uuid => Some("uuid"),
        ColumnType::DecimalText | ColumnType::Decimal { .. } => Some("decimal"),
        _ => None,
    }
}

fn column_type(ty: ColumnType) -> Json {
    match ty {
        ColumnType::Boolean => json!("boolean"),
        ColumnType::Int => json!("int"),
        ColumnType::Long => json!("long"),
        ColumnType::Double => json!("double"),
        ColumnType::String | ColumnType::Json | ColumnType::Uuid | ColumnType::DecimalText => json!("string"),
        ColumnType::Bytes => json!("bytes"),
        ColumnType::TimestampMicros { utc: true } => json!({"type": "long", "logicalType": "timestamp-micros"}),
        ColumnType::TimestampMicros { utc: false } => json!({"type": "long", "logicalType": "local-timestamp-micros"}),
        ColumnType::Date => json!({"type": "int", "logicalType": "date"}),
        ColumnType::Decimal { precision, scale } => json!({"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale}),
    }
}

fn fields<'a>(model: &str, columns: impl Iterator<Item = &'a sluice_core::Column>) -> Result<Vec<Json>, CodecError> {
    columns
        .map(|c| {
            if avro_name(&c.name).as_deref() != Some(c.name.as_str()) {
                return Err(CodecError::ColumnName { model: model.to_string(), column: c.name.clone() });
            }
            let ty = column_type(c.ty);
            let mut field = if c.nullable {
                json!({"name": c.name, "type": ["null", ty], "default": null})
            } else {
                json!({"name": c.name, "type": ty})
            };
            // Text-carried types keep their meaning through a field attribute, so a decoder
            // can hand a JSON column back as JSON rather than as a string.
            if let Some(kind) = text_kind(c.ty) {
                field[TEXT_KIND_ATTRIBUTE] = json!(kind);
            }
            Ok(field)
        })
        .collect()
}

/// The row schema of a model: what `sluice schema export` writes to `schemas/models/<model>.avsc`
/// and what the poller compares a model with before reading it (its data contract).
pub fn row_schema_json(model: &str, row: &RowSchema) -> Result<Json, CodecError> {
    Ok(json!({
        "type": "record",
        "name": "Row",
        "namespace": namespace(model)?,
        "doc": format!("A row of model {model}: the model's data contract (sluice schema export)."),
        "fields": fields(model, row.columns.iter())?,
    }))
}

/// The key schema of a model: a record of its primary-key columns, in key order.
pub fn key_schema_json(model: &str, row: &RowSchema) -> Result<Json, CodecError> {
    Ok(json!({
        "type": "record",
        "name": "Key",
        "namespace": namespace(model)?,
        "doc": format!("Primary key of model {model}."),
        "fields": fields(model, row.key_columns())?,
    }))
}

/// The value schema of a model: the envelope template in the model's namespace, with the
/// model's `Row` record in place of the template's empty one, so the schema stands alone.
pub fn envelope_schema_json(model: &str, row: &RowSchema) -> Result<Json, CodecError> {
    let mut envelope: Json = serde_json::from_str(ENVELOPE).expect("schemas/envelope/envelope.avsc is JSON");
    let row_record = json!({
        "type": "record",
        "name": "Row",
        "doc": format!("A row of model {model}."),
        "fields": fields(model, row.columns.iter())?,
    });
    envelope["namespace"] = json!(namespace(model)?);
    // `before` is the first use, so it defines Row; `after` refers to it by name, as Avro requires.
    let before = envelope["fields"]
        .as_array_mut()
        .and_then(|fields| fields.iter_mut().find(|f| f["name"] == "before"))
        .expect("the envelope template has a `before` field");
    before["type"] = json!(["null", row_record]);
    Ok(envelope)
}

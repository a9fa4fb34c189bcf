//! Avro encoding of change events, poller state and the audit records ([`audit`]).
//!
//! Wire format: every key and value is an Avro *single-object encoding* (the Avro spec's own
//! framing: `C3 01`, the 8-byte CRC-64-AVRO fingerprint of the writer schema, then the datum).
//! A message therefore names its writer schema in-band; the full schema text is published once to
//! the `<prefix>.schemas` compacted topic, keyed by that fingerprint, so any consumer can decode
//! any event ever written — including during a replay long after the model changed.
//!
//! Fingerprints are the specification's ([`canonical`]): a consumer in any language computes
//! the same value from the published schema text. Events written before that carry
//! apache-avro's (AVRO-4004) fingerprint of the same schema; the decoders here accept both, and
//! [`ModelCodec::is_own_value_fingerprint`] recognises both.
//!
//! Performance: schemas are parsed once per model ([`ModelCodec::new`]); encoding goes through
//! apache-avro's schema-aware serde serializer (`write_avro_datum_ref`) straight into the output
//! buffer, never through an intermediate `Value` or a per-record `ResolvedSchema` (which costs
//! 80–90% of encode time, see apache/avro-rs issues 310 and 371). Decoding uses
//! `GenericSingleObjectReader`, which resolves its schema once.

pub mod audit;
pub mod canonical;
mod model_schema;
mod poller_state;
mod ser;

use std::sync::Arc;

use apache_avro::headers::HeaderBuilder;
use apache_avro::{GenericSingleObjectReader, Schema};
use sluice_core::{ChangeEvent, Row, RowSchema, Value};

pub use model_schema::{avro_name, envelope_schema_json, key_schema_json, row_schema_json};
pub use poller_state::{decode_state, encode_state, PollerState};

/// Codec failures. Encoding failures are bugs or schema mismatches (stop); decoding failures
/// mean a message is not what it claims to be (dead-letter it).
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("invalid schema for model {model}: {source}")]
    Schema { model: String, source: apache_avro::Error },
    #[error("no canonical form for a schema of model {model}: {source}")]
    CanonicalForm { model: String, source: canonical::CanonicalFormError },
    #[error("column {column:?} of model {model} cannot be an Avro field name")]
    ColumnName { model: String, column: String },
    #[error("encoding failed: {0}")]
    Encode(apache_avro::Error),
    #[error("decoding failed: {0}")]
    Decode(String),
    #[error("message is not Avro single-object encoded (too short or wrong marker)")]
    NotSingleObject,
}

/// Length of the single-object header: 2 marker bytes + 8 fingerprint bytes.
const HEADER_LEN: usize = 10;

/// The writer-schema fingerprint named by a single-object encoded message, as 16 hex digits.
pub fn fingerprint_of(message: &[u8]) -> Result<String, CodecError> {
    fingerprint_bytes(message).map(|f| hex(&f))
}

/// The writer-schema fingerprint of a single-object encoded message as its 8 raw bytes, for
/// lookups on hot paths without formatting ([`fingerprint_of`] gives the hex form).
pub fn fingerprint_bytes(message: &[u8]) -> Result<[u8; 8], CodecError> {
    if message.len() < HEADER_LEN || message[0] != 0xC3 || message[1] != 0x01 {
        return Err(CodecError::NotSingleObject);
    }
    Ok(message[2..HEADER_LEN].try_into().expect("8 bytes"))
}

/// Hex form of a fingerprint (the key of the schema topic).
pub fn fingerprint_hex(fingerprint: &[u8; 8]) -> String {
    hex(fingerprint)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A schema ready for writing: parsed once, with its single-object header and a copy in which
/// every named reference is replaced by its definition.
///
/// Why the copy: apache-avro's public serde writer (`write_avro_datum_ref`) resolves no names,
/// and the envelope refers to its `Row` record twice (`before`, `after`). Inlining the reference
/// changes nothing on the wire (Avro binary never carries names) and lets every record be
/// written with no per-record schema resolution at all.
struct WriterSchema {
    write_schema: Schema,
    header: [u8; HEADER_LEN],
    /// The specification's fingerprint of `json`, as 16 hex digits (the schema topic's key).
    fingerprint: String,
    /// The specification's fingerprint of `json` (see [`canonical`]).
    standard_fingerprint: [u8; 8],
    /// apache-avro's fingerprint of the same schema: what events written before carry.
    legacy_fingerprint: [u8; 8],
    /// The schema text published on the schema topic; `fingerprint` is computed from it.
    json: String,
}

impl WriterSchema {
    fn new(model: &str, schema: Schema) -> Result<WriterSchema, CodecError> {
        let json = serde_json::to_string(&schema).expect("a parsed schema serialises");
        // Fingerprint the very text consumers get, so what they compute from it is what we wrote.
        let published: serde_json::Value = serde_json::from_str(&json).expect("serialised schema is JSON");
        let fingerprint = canonical::fingerprint(&published)
            .map_err(|source| CodecError::CanonicalForm { model: model.to_string(), source })?;
        let mut header = [0u8; HEADER_LEN];
        header[0] = 0xC3;
        header[1] = 0x01;
        header[2..].copy_from_slice(&fingerprint);
        let legacy_fingerprint = canonical::legacy_fingerprint(&schema);
        let write_schema = inline_refs(&schema, &mut std::collections::HashMap::new());
        Ok(WriterSchema { write_schema, header, fingerprint: hex(&fingerprint), standard_fingerprint: fingerprint, legacy_fingerprint, json })
    }

    fn encode(&self, value: &impl serde::Serialize, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(&self.header);
        apache_avro::write_avro_datum_ref(&self.write_schema, value, out).map_err(CodecError::Encode)?;
        Ok(())
    }

    fn is_own_fingerprint(&self, fingerprint: &[u8; 8]) -> bool {
        self.standard_fingerprint == *fingerprint || self.legacy_fingerprint == *fingerprint
    }

    /// Write (and publish under) the legacy fingerprint from now on.
    fn use_legacy_fingerprint(&mut self) {
        self.header[2..].copy_from_slice(&self.legacy_fingerprint);
        self.fingerprint = hex(&self.legacy_fingerprint);
    }
}

/// A copy of `schema` with every `Ref` replaced by the named schema it refers to.
fn inline_refs(schema: &Schema, defined: &mut std::collections::HashMap<apache_avro::schema::Name, Schema>) -> Schema {
    use apache_avro::schema::{ArraySchema, MapSchema, UnionSchema};
    match schema {
        Schema::Ref { name } => defined.get(name).cloned().unwrap_or_else(|| schema.clone()),
        Schema::Record(record) => {
            let mut record = record.clone();
            for field in &mut record.fields {
                field.schema = inline_refs(&field.schema, defined);
            }
            let inlined = Schema::Record(record.clone());
            defined.insert(record.name.clone(), inlined.clone());
            inlined
        }
        Schema::Union(union) => {
            let variants = union.variants().iter().map(|v| inline_refs(v, defined)).collect();
            Schema::Union(UnionSchema::new(variants).expect("variants of a valid union stay valid"))
        }
        Schema::Array(array) => Schema::Array(ArraySchema {
            items: Box::new(inline_refs(&array.items, defined)),
            attributes: array.attributes.clone(),
        }),
        Schema::Map(map) => Schema::Map(MapSchema {
            types: Box::new(inline_refs(&map.types, defined)),
            attributes: map.attributes.clone(),
        }),
        other => other.clone(),
    }
}

/// A schema to publish to the schema topic: fingerprint (key) and full JSON (value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedSchema {
    pub fingerprint: String,
    pub json: String,
}

/// Encoder for one model's keys and change events.
pub struct ModelCodec {
    model: String,
    row: Arc<RowSchema>,
    names: ser::ColumnNames,
    key: WriterSchema,
    value: WriterSchema,
}

impl ModelCodec {
    /// Build the model's key and envelope schemas and resolve them, once.
    pub fn new(model: &str, row: RowSchema) -> Result<ModelCodec, CodecError> {
        let parse = |json: serde_json::Value| {
            Schema::parse(&json).map_err(|source| CodecError::Schema { model: model.to_string(), source })
        };
        let key = WriterSchema::new(model, parse(key_schema_json(model, &row)?)?)?;
        let value = WriterSchema::new(model, parse(envelope_schema_json(model, &row)?)?)?;
        let names = ser::ColumnNames::leak(&row);
        Ok(ModelCodec { model: model.to_string(), row: Arc::new(row), names, key, value })
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn row_schema(&self) -> &Arc<RowSchema> {
        &self.row
    }

    /// Fingerprint of the value (envelope) schema, as 16 hex digits; carried in a header too.
    pub fn value_fingerprint(&self) -> &str {
        &self.value.fingerprint
    }

    /// Whether `fingerprint` names this codec's value schema: its specification fingerprint, or
    /// the legacy (apache-avro) one that events of the same schema written before carry.
    pub fn is_own_value_fingerprint(&self, fingerprint: &[u8; 8]) -> bool {
        self.value.is_own_fingerprint(fingerprint)
    }

    /// Whether `fingerprint` names this codec's key schema (specification or legacy fingerprint).
    pub fn is_own_key_fingerprint(&self, fingerprint: &[u8; 8]) -> bool {
        self.key.is_own_fingerprint(fingerprint)
    }

    /// The legacy (apache-avro, AVRO-4004) fingerprints of the key and value schemas, as 16 hex
    /// digits each: the schema-topic keys a model had before sluice fingerprinted by the
    /// specification. For tests and migration checks; sluice writes only the new ones.
    pub fn legacy_fingerprints(&self) -> [String; 2] {
        [hex(&self.key.legacy_fingerprint), hex(&self.value.legacy_fingerprint)]
    }

    /// Whether the key schema's specification and legacy fingerprints differ: only for keys with
    /// a logical type (a date, timestamp or decimal key column), whose AVRO-4004 canonical form
    /// kept the logical-type attributes.
    pub fn key_fingerprints_differ(&self) -> bool {
        self.key.standard_fingerprint != self.key.legacy_fingerprint
    }

    /// Keep writing keys with the legacy fingerprint, for a model whose change topic already
    /// holds keys written with it. Why: the fingerprint is part of the key bytes, and a row's key
    /// bytes must never change — compaction, partitioning and every per-key state (the poller's
    /// tracked rows, the sinks' lanes) identify a row by them. Values are unaffected: a value
    /// carries no identity, so events switch to the standard fingerprint at once.
    pub fn with_legacy_key_fingerprint(mut self) -> ModelCodec {
        self.key.use_legacy_fingerprint();
        self
    }

    /// The key and value schemas to publish before the first event that uses them.
    pub fn schemas(&self) -> [PublishedSchema; 2] {
        [
            PublishedSchema { fingerprint: self.key.fingerprint.clone(), json: self.key.json.clone() },
            PublishedSchema { fingerprint: self.value.fingerprint.clone(), json: self.value.json.clone() },
        ]
    }

    /// Encode the primary key of `row` (a full row image) into `out`.
    pub fn encode_key(&self, row: &Row, out: &mut Vec<u8>) -> Result<(), CodecError> {
        self.key.encode(&ser::KeySer { schema: &self.row, names: &self.names, row }, out)
    }

    /// Encode a change event into `out`.
    pub fn encode_event(&self, event: &ChangeEvent, out: &mut Vec<u8>) -> Result<(), CodecError> {
        self.value.encode(&ser::EnvelopeSer { schema: &self.row, names: &self.names, event }, out)
    }
}

/// Reads the single-object encoded datums of one writer schema, whichever of the schema's two
/// fingerprints (specification or legacy, see [`canonical`]) their header carries.
///
/// Why not apache-avro's reader alone: it accepts only the header with its own (legacy)
/// fingerprint. So the header is checked here and its reader, built to expect no header, gets
/// the bare datum; names are still resolved once, when the reader is built.
struct DatumReader {
    reader: GenericSingleObjectReader,
    /// Specification fingerprint first, then the legacy one.
    fingerprints: [[u8; 8]; 2],
}

/// The empty header: apache-avro's reader then reads the datum straight away.
struct NoHeader;

impl HeaderBuilder for NoHeader {
    fn build_header(&self) -> Vec<u8> {
        Vec::new()
    }
}

impl DatumReader {
    /// Parse a schema published on the schema topic; `what` names it in errors.
    fn new(what: &str, schema_json: &str) -> Result<(Schema, DatumReader), CodecError> {
        let bad = |e: &dyn std::fmt::Display| CodecError::Decode(format!("bad {what} schema: {e}"));
        let schema = Schema::parse_str(schema_json).map_err(|e| bad(&e))?;
        let json: serde_json::Value = serde_json::from_str(schema_json).map_err(|e| bad(&e))?;
        let fingerprints = [canonical::fingerprint(&json).map_err(|e| bad(&e))?, canonical::legacy_fingerprint(&schema)];
        let reader = GenericSingleObjectReader::new_with_header_builder(schema.clone(), NoHeader).map_err(|e| bad(&e))?;
        Ok((schema, DatumReader { reader, fingerprints }))
    }

    fn read(&self, message: &[u8]) -> Result<apache_avro::types::Value, CodecError> {
        let fingerprint = fingerprint_bytes(message)?;
        if !self.fingerprints.contains(&fingerprint) {
            return Err(CodecError::Decode(format!(
                "message names writer schema {}, this decoder reads {} (legacy {})",
                hex(&fingerprint),
                hex(&self.fingerprints[0]),
                hex(&self.fingerprints[1]),
            )));
        }
        let mut datum = &message[HEADER_LEN..];
        self.reader.read_value(&mut datum).map_err(|e| CodecError::Decode(e.to_string()))
    }
}

/// Decoder for events written with one writer schema (a value schema from the schema topic).
pub struct EventDecoder {
    reader: DatumReader,
    model: String,
    columns: Arc<Vec<String>>,
    text_kinds: Arc<Vec<Option<String>>>,
}

/// A decoded change event with the column names of its rows.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedEvent {
    pub event: ChangeEvent,
    /// Column names, positional with the rows of `event`.
    pub columns: Arc<Vec<String>>,
}

impl DecodedEvent {
    /// Value of a named column in the `after` image (or `before` for deletes).
    pub fn current(&self, column: &str) -> Option<&Value> {
        let index = self.columns.iter().position(|c| c == column)?;
        self.event.current_image().map(|row| &row[index])
    }
}

impl EventDecoder {
    /// Parse a writer schema published on the schema topic.
    pub fn new(schema_json: &str) -> Result<EventDecoder, CodecError> {
        let (schema, reader) = DatumReader::new("writer", schema_json)?;
        let Schema::Record(envelope) = &schema else {
            return Err(CodecError::Decode("writer schema is not a record".into()));
        };
        let model = envelope.name.namespace.clone().unwrap_or_default();
        let row = envelope
            .fields
            .iter()
            .find(|f| f.name == "before")
            .and_then(|f| match &f.schema {
                Schema::Union(u) => u.variants().iter().find_map(|v| match v {
                    Schema::Record(r) => Some(r.clone()),
                    _ => None,
                }),
                _ => None,
            })
            .ok_or_else(|| CodecError::Decode("writer schema has no `before` row record".into()))?;
        let columns = Arc::new(row.fields.iter().map(|f| f.name.clone()).collect());
        // What each field's value means beyond its Avro type: the `sluice.type` attribute, and
        // for decimal bytes the scale (`decimal:<scale>`), so values come back as exact text.
        let text_kinds = Arc::new(
            row.fields
                .iter()
                .map(|f| {
                    let kind = f.custom_attributes.get(model_schema::TEXT_KIND_ATTRIBUTE).and_then(|v| v.as_str()).map(String::from);
                    let decimal_scale = match &f.schema {
                        Schema::Decimal(d) => Some(d.scale),
                        Schema::Union(u) => u.variants().iter().find_map(|v| match v {
                            Schema::Decimal(d) => Some(d.scale),
                            _ => None,
                        }),
                        _ => None,
                    };
                    match decimal_scale {
                        Some(scale) => Some(format!("decimal:{scale}")),
                        None => kind,
                    }
                })
                .collect(),
        );
        Ok(EventDecoder { reader, model, columns, text_kinds })
    }

    /// Decode one single-object encoded change event.
    pub fn decode(&self, message: &[u8]) -> Result<DecodedEvent, CodecError> {
        let value = self.reader.read(message)?;
        ser::envelope_from_avro(value, &self.columns, &self.text_kinds)
            .map_err(|e| CodecError::Decode(format!("{} (schema {})", e, self.model)))
    }
}

/// Decode with the writer schema derived locally (tests, `sluice` CLI peeking at a topic).
pub fn decoder_for(codec: &ModelCodec) -> EventDecoder {
    EventDecoder::new(&codec.value.json).expect("our own schema parses")
}


#[cfg(test)]
mod tests;

/// Decoder for keys written with one key schema: yields the key's fields by name.
pub struct KeyDecoder {
    reader: DatumReader,
    field_names: Vec<String>,
}

impl KeyDecoder {
    pub fn new(schema_json: &str) -> Result<KeyDecoder, CodecError> {
        let (schema, reader) = DatumReader::new("key", schema_json)?;
        let field_names = match &schema {
            Schema::Record(record) => record.fields.iter().map(|f| f.name.clone()).collect(),
            _ => return Err(CodecError::Decode("key schema is not a record".into())),
        };
        Ok(KeyDecoder { reader, field_names })
    }

    /// The key's field names (the primary-key columns), in key order. A consumer that decodes
    /// the value anyway can read the key from the row image by these names instead of decoding
    /// the key bytes too.
    pub fn field_names(&self) -> &[String] {
        &self.field_names
    }

    /// The key's fields, in key order.
    pub fn decode(&self, message: &[u8]) -> Result<Vec<(String, Value)>, CodecError> {
        match self.reader.read(message)? {
            apache_avro::types::Value::Record(fields) => fields
                .into_iter()
                .map(|(name, value)| ser::core_value(&value).map(|v| (name, v)).map_err(CodecError::Decode))
                .collect(),
            other => Err(CodecError::Decode(format!("key is not a record: {other:?}"))),
        }
    }
}

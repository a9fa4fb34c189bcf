//! Schema fingerprints as the Avro specification defines them: the CRC-64-AVRO (Rabin) hash of
//! the schema's *Parsing Canonical Form*, 8 bytes little-endian (the order the single-object
//! header and every other implementation use).
//!
//! Guarantee: [`fingerprint`] gives, for any valid schema, the value an independent
//! implementation computes from the same JSON — tested against fastavro
//! (`fastavro.schema.to_parsing_canonical_form` + `fastavro.schema.fingerprint(…, "CRC-64-AVRO")`)
//! in this crate's unit tests (fixed vectors) and end to end in
//! `integration-tests/tests/it/outside_decoder.rs` (fastavro computes every fingerprint of a
//! live run itself). That is what lets a consumer in another language resolve sluice's events.
//!
//! Why not apache-avro's `Schema::fingerprint`: apache-avro 0.21's canonical form keeps
//! `precision` and `scale` and writes a primitive with a logical type as `{"type":"long"}` where
//! the specification strips them and writes `"long"` (AVRO-4004). Its fingerprints of any schema
//! with a decimal, timestamp or date column therefore match no other implementation. Events
//! written before sluice computed fingerprints here carry those values; [`legacy_fingerprint`]
//! reproduces them so such events keep resolving, and is used for nothing else.
//!
//! The canonical form is computed from the schema's JSON (the exact text sluice publishes on the
//! schema topic), by the specification's rules:
//! - PRIMITIVES: a primitive is its bare name (`"long"`, never `{"type":"long"}`);
//! - FULLNAMES: named types (record, enum, fixed) and references to them carry their fullname,
//!   resolved through the enclosing namespace; `namespace` itself is dropped;
//! - STRIP: only `type`, `name`, `fields`, `symbols`, `items`, `values` and `size` stay (so
//!   `doc`, `aliases`, `default`, `order`, `logicalType`, `precision`, `scale` and custom
//!   attributes such as `sluice.type` go);
//! - ORDER: attributes in the order name, type, fields, symbols, items, values, size;
//! - STRINGS, INTEGERS, WHITESPACE: minimal JSON escapes, plain integers, no whitespace.
//!
//! Not guaranteed: the form of an *invalid* schema. Structural faults (a missing `type`, a name
//! that is not a string, a reference to a name defined nowhere) are errors naming where they are;
//! name syntax is apache-avro's parser's job, which every schema here has passed first.

use std::collections::HashSet;

use serde_json::{Map, Value as Json};

/// The specification's primitive type names: written bare, never namespace-qualified.
const PRIMITIVES: [&str; 8] = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"];

/// A schema whose canonical form cannot be computed, with where in the schema JSON it fails
/// (a JSON-pointer-like path, e.g. `/fields/2/type`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schema is not valid Avro at {path}: {reason}")]
pub struct CanonicalFormError {
    pub path: String,
    pub reason: String,
}

/// The Parsing Canonical Form of `schema` (its JSON), per the Avro specification.
pub fn parsing_canonical_form(schema: &Json) -> Result<String, CanonicalFormError> {
    let mut writer = Writer { out: String::new(), defined: HashSet::new(), path: Vec::new() };
    writer.schema(schema, None)?;
    Ok(writer.out)
}

/// The specification's fingerprint of `schema` (its JSON): CRC-64-AVRO of its Parsing Canonical
/// Form, little-endian. Every fingerprint sluice writes comes from here.
pub fn fingerprint(schema: &Json) -> Result<[u8; 8], CanonicalFormError> {
    parsing_canonical_form(schema).map(|form| crc64_avro(form.as_bytes()))
}

/// The fingerprint apache-avro 0.21 computed for `schema` (AVRO-4004, see the module doc): what
/// events written by sluice before it fingerprinted by the specification carry. Only for
/// recognising those events; pinned by a test so a crate upgrade cannot silently change it.
pub fn legacy_fingerprint(schema: &apache_avro::Schema) -> [u8; 8] {
    let bytes = schema.fingerprint::<apache_avro::rabin::Rabin>().bytes;
    bytes.as_slice().try_into().expect("a Rabin fingerprint is 8 bytes")
}

/// The CRC-64-AVRO polynomial's "empty" value, as the specification's reference code names it.
const EMPTY: u64 = 0xc15d_213a_a4d7_a795;

/// The specification's 256-entry table, built at compile time.
const TABLE: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut fp = i as u64;
        let mut j = 0;
        while j < 8 {
            fp = (fp >> 1) ^ (EMPTY & (fp & 1).wrapping_neg());
            j += 1;
        }
        table[i] = fp;
        i += 1;
    }
    table
};

/// CRC-64-AVRO (the specification's Rabin fingerprint) of `bytes`, as 8 little-endian bytes.
pub fn crc64_avro(bytes: &[u8]) -> [u8; 8] {
    let fp = bytes.iter().fold(EMPTY, |fp, &b| (fp >> 8) ^ TABLE[((fp ^ u64::from(b)) & 0xff) as usize]);
    fp.to_le_bytes()
}

/// Writes the canonical form depth first, remembering the fullnames defined so far (references
/// resolve against them) and the path to the current node (for errors).
struct Writer {
    out: String,
    defined: HashSet<String>,
    path: Vec<String>,
}

impl Writer {
    fn error<T>(&self, reason: impl Into<String>) -> Result<T, CanonicalFormError> {
        let path = if self.path.is_empty() { "/".to_string() } else { format!("/{}", self.path.join("/")) };
        Err(CanonicalFormError { path, reason: reason.into() })
    }

    /// Run `f` with `segment` appended to the error path.
    fn at<T>(&mut self, segment: impl ToString, f: impl FnOnce(&mut Self) -> Result<T, CanonicalFormError>) -> Result<T, CanonicalFormError> {
        self.path.push(segment.to_string());
        let result = f(self);
        self.path.pop();
        result
    }

    fn string(&mut self, s: &str) {
        // serde_json escapes only what JSON requires (quote, backslash, control characters) and
        // writes every other character as UTF-8: the STRINGS rule.
        self.out.push_str(&serde_json::to_string(s).expect("a string serialises"));
    }

    /// One schema: a name, a union or a schema object. `namespace` is the enclosing one.
    fn schema(&mut self, schema: &Json, namespace: Option<&str>) -> Result<(), CanonicalFormError> {
        match schema {
            Json::String(name) => self.type_name(name, namespace),
            Json::Array(branches) => {
                self.out.push('[');
                for (i, branch) in branches.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.at(i, |w| w.schema(branch, namespace))?;
                }
                self.out.push(']');
                Ok(())
            }
            Json::Object(object) => match object.get("type") {
                Some(Json::String(kind)) => match kind.as_str() {
                    "record" => self.record(object, namespace),
                    "enum" => self.named(object, namespace, "enum", |w, _| w.symbols(object)),
                    "fixed" => self.named(object, namespace, "fixed", |w, _| w.size(object)),
                    "array" => self.container("array", "items", object, namespace),
                    "map" => self.container("map", "values", object, namespace),
                    // A primitive (its logicalType and every other attribute stripped) or a
                    // reference in object form.
                    other => self.type_name(other, namespace),
                },
                Some(_) => self.at("type", |w| w.error("`type` of a schema object must be a string")),
                None => self.error("schema object has no `type`"),
            },
            other => self.error(format!("a schema is a string, an array or an object, not {other}")),
        }
    }

    /// A primitive name, or a reference to a named type already defined.
    fn type_name(&mut self, name: &str, namespace: Option<&str>) -> Result<(), CanonicalFormError> {
        if PRIMITIVES.contains(&name) {
            self.string(name);
            return Ok(());
        }
        // A short name resolves in the enclosing namespace (as fastavro does; the specification
        // names no fallback to the null namespace).
        let resolved = full_name(name, None, namespace);
        if !self.defined.contains(&resolved) {
            return self.error(format!("type {resolved:?} is neither a primitive nor a type defined before this point"));
        }
        self.string(&resolved);
        Ok(())
    }

    /// A named type: `{"name":<fullname>,"type":<kind>` then what `rest` writes, then `}`.
    /// `rest` gets the namespace the type's own children resolve in.
    fn named(
        &mut self,
        object: &Map<String, Json>,
        namespace: Option<&str>,
        kind: &str,
        rest: impl FnOnce(&mut Self, Option<&str>) -> Result<(), CanonicalFormError>,
    ) -> Result<(), CanonicalFormError> {
        let Some(Json::String(name)) = object.get("name") else {
            return self.error(format!("{kind} has no string `name`"));
        };
        let own_namespace = match object.get("namespace") {
            None | Some(Json::Null) => None,
            Some(Json::String(ns)) => Some(ns.as_str()),
            Some(_) => return self.at("namespace", |w| w.error("`namespace` must be a string")),
        };
        let fullname = full_name(name, own_namespace, namespace);
        if !self.defined.insert(fullname.clone()) {
            return self.error(format!("{fullname:?} is defined twice"));
        }
        // Children of a named type resolve in the namespace of its fullname.
        let child_namespace = fullname.rsplit_once('.').map(|(ns, _)| ns.to_string());
        self.out.push_str("{\"name\":");
        self.string(&fullname);
        self.out.push_str(",\"type\":");
        self.string(kind);
        rest(self, child_namespace.as_deref())?;
        self.out.push('}');
        Ok(())
    }

    fn record(&mut self, object: &Map<String, Json>, namespace: Option<&str>) -> Result<(), CanonicalFormError> {
        self.named(object, namespace, "record", |w, inner| {
            let Some(Json::Array(fields)) = object.get("fields") else {
                return w.error("record has no `fields` array");
            };
            w.out.push_str(",\"fields\":[");
            for (i, field) in fields.iter().enumerate() {
                if i > 0 {
                    w.out.push(',');
                }
                w.at(format!("fields/{i}"), |w| w.field(field, inner))?;
            }
            w.out.push(']');
            Ok(())
        })
    }

    /// A record field keeps only its name (never qualified: fields are not named types) and type.
    fn field(&mut self, field: &Json, namespace: Option<&str>) -> Result<(), CanonicalFormError> {
        let (Some(Json::String(name)), Some(ty)) = (field.get("name"), field.get("type")) else {
            return self.error("a field needs a string `name` and a `type`");
        };
        self.out.push_str("{\"name\":");
        self.string(name);
        self.out.push_str(",\"type\":");
        self.at("type", |w| w.schema(ty, namespace))?;
        self.out.push('}');
        Ok(())
    }

    fn symbols(&mut self, object: &Map<String, Json>) -> Result<(), CanonicalFormError> {
        let Some(Json::Array(symbols)) = object.get("symbols") else {
            return self.error("enum has no `symbols` array");
        };
        self.out.push_str(",\"symbols\":[");
        for (i, symbol) in symbols.iter().enumerate() {
            let Json::String(symbol) = symbol else {
                return self.at(format!("symbols/{i}"), |w| w.error("an enum symbol must be a string"));
            };
            if i > 0 {
                self.out.push(',');
            }
            self.string(symbol);
        }
        self.out.push(']');
        Ok(())
    }

    fn size(&mut self, object: &Map<String, Json>) -> Result<(), CanonicalFormError> {
        // INTEGERS: the size as a plain integer (no quotes, no leading zeros).
        let Some(size) = object.get("size").and_then(Json::as_u64) else {
            return self.error("fixed has no non-negative integer `size`");
        };
        self.out.push_str(&format!(",\"size\":{size}"));
        Ok(())
    }

    /// An array (`items`) or a map (`values`): not named, so children keep the enclosing namespace.
    fn container(&mut self, kind: &str, child: &str, object: &Map<String, Json>, namespace: Option<&str>) -> Result<(), CanonicalFormError> {
        let Some(inner) = object.get(child) else {
            return self.error(format!("{kind} has no `{child}`"));
        };
        self.out.push_str("{\"type\":");
        self.string(kind);
        self.out.push(',');
        self.string(child);
        self.out.push(':');
        self.at(child, |w| w.schema(inner, namespace))?;
        self.out.push('}');
        Ok(())
    }
}

/// The fullname of `name`: as is when it contains a dot, else qualified by its own namespace
/// attribute, else by the enclosing namespace (an empty namespace is the null namespace).
fn full_name(name: &str, own: Option<&str>, enclosing: Option<&str>) -> String {
    if name.contains('.') {
        return name.to_string();
    }
    match own.or(enclosing).filter(|ns| !ns.is_empty()) {
        Some(ns) => format!("{ns}.{name}"),
        None => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The canonical forms and fingerprints fastavro computes for the schemas of
    /// `testdata/fingerprints/` (`to_parsing_canonical_form`, then `fingerprint(…, "CRC-64-AVRO")`;
    /// regenerate with `~/.cache/sluice/py/bin/python testdata/fingerprints/regenerate.py`).
    /// They cover every rule: logical types with precision and scale, fixed decimals, doc,
    /// aliases, defaults, order and custom attributes to strip, inherited, own, dotted and null
    /// namespaces, references by short and full name, enum, fixed, array, map, unions, a
    /// primitive in object form, the key and value schemas ModelCodec publishes, and the example
    /// model schemas of `schemas/examples/`.
    #[test]
    fn fingerprints_match_fastavro() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let expected: Json = serde_json::from_str(include_str!("../testdata/fingerprints/expected.json")).unwrap();
        let vectors = expected["schemas"].as_object().unwrap();
        assert!(vectors.len() >= 8, "the vectors are all there");
        for (file, want) in vectors {
            let path = dir.join("testdata/fingerprints").join(file);
            let schema: Json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let form = parsing_canonical_form(&schema).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(form, want["canonical_form"].as_str().unwrap(), "canonical form of {file}");
            let fingerprint = fingerprint(&schema).unwrap();
            assert_eq!(crate::fingerprint_hex(&fingerprint), want["fingerprint"].as_str().unwrap(), "fingerprint of {file}");
        }
    }

    #[test]
    fn crc64_avro_of_known_inputs() {
        // The Rabin fingerprint examples of apache-avro's and fastavro's documentation.
        assert_eq!(crate::fingerprint_hex(&crc64_avro(b"hello world")), "60335ba6d0415528");
        assert_eq!(crate::fingerprint_hex(&crc64_avro(b"\"string\"")), "c70345637248018f");
    }

    #[test]
    fn undefined_references_are_errors_naming_where() {
        let fragment = json!({"type": "record", "name": "E", "fields": [{"name": "before", "type": ["null", "Row"]}]});
        let error = parsing_canonical_form(&fragment).unwrap_err();
        assert_eq!(error.path, "/fields/0/type/1");
        assert!(error.reason.contains("\"Row\""), "{error}");
        let error = parsing_canonical_form(&json!({"type": "fixed", "name": "F", "size": "16"})).unwrap_err();
        assert!(error.reason.contains("size"), "{error}");
        let error = parsing_canonical_form(&json!({"name": "x"})).unwrap_err();
        assert_eq!((error.path.as_str(), error.reason.as_str()), ("/", "schema object has no `type`"));
    }

    #[test]
    fn a_name_defined_twice_is_an_error() {
        let twice = json!({"type": "record", "name": "R", "fields": [
            {"name": "a", "type": {"type": "enum", "name": "E", "symbols": ["X"]}},
            {"name": "b", "type": {"type": "enum", "name": "E", "symbols": ["Y"]}}
        ]});
        assert!(parsing_canonical_form(&twice).unwrap_err().reason.contains("defined twice"));
    }
}

use sluice_core::{ChangeEvent, Column, ColumnType, Op, RowSchema, Value};

use super::*;

fn source_for_tests(model: &str) -> sluice_core::SourceInfo {
    sluice_core::SourceInfo { model: model.into(), warehouse: "wh".into(), run_id: "run-1".into(), position: None }
}

fn schema() -> RowSchema {
    let col = |name: &str, ty, nullable| Column { name: name.into(), ty, nullable };
    RowSchema {
        columns: vec![
            col("id", ColumnType::Long, false),
            col("email", ColumnType::String, true),
            col("updated_at", ColumnType::TimestampMicros { utc: true }, false),
            col("born", ColumnType::Date, true),
            col("score", ColumnType::Double, true),
            col("active", ColumnType::Boolean, false),
            col("attrs", ColumnType::Json, true),
        ],
        primary_key: vec![0],
    }
}

fn row(id: i64, email: Option<&str>) -> Vec<Value> {
    vec![
        Value::Long(id),
        email.map_or(Value::Null, |e| Value::String(e.into())),
        Value::TimestampMicros(1_700_000_000_000_000 + id),
        Value::Date(19_000),
        Value::Null,
        Value::Boolean(true),
        Value::Json("{\"tier\":\"gold\",\"name\":\"Zoë\"}".into()),
    ]
}

#[test]
fn event_round_trips_through_single_object_encoding() {
    let codec = ModelCodec::new("customers", schema()).unwrap();
    let event = ChangeEvent {
        op: Op::Update,
        before: Some(row(7, Some("old@example.com"))),
        after: Some(row(7, None)),
        source: source_for_tests("customers"),
        ts_ms: 1234,
        changed: Some(vec!["email".into()]),
    };
    let mut bytes = Vec::new();
    codec.encode_event(&event, &mut bytes).unwrap();
    assert_eq!(fingerprint_of(&bytes).unwrap(), codec.value_fingerprint());
    let decoded = decoder_for(&codec).decode(&bytes).unwrap();
    assert_eq!(decoded.event, event);
    assert_eq!(decoded.columns[1], "email");
    assert_eq!(decoded.current("email"), Some(&Value::Null));
}

#[test]
fn delete_has_only_a_before_image() {
    let codec = ModelCodec::new("customers", schema()).unwrap();
    let event = ChangeEvent {
        op: Op::Delete,
        before: Some(row(1, Some("a@b.c"))),
        after: None,
        source: source_for_tests("customers"),
        ts_ms: 1,
        changed: None,
    };
    let mut bytes = Vec::new();
    codec.encode_event(&event, &mut bytes).unwrap();
    let decoded = decoder_for(&codec).decode(&bytes).unwrap();
    assert_eq!(decoded.event, event);
    assert_eq!(decoded.current("email"), Some(&Value::String("a@b.c".into())));
}

#[test]
fn keys_are_deterministic_and_differ_per_key() {
    let codec = ModelCodec::new("customers", schema()).unwrap();
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    codec.encode_key(&row(1, Some("x")), &mut a).unwrap();
    codec.encode_key(&row(1, Some("y")), &mut b).unwrap();
    codec.encode_key(&row(2, Some("x")), &mut c).unwrap();
    assert_eq!(a, b, "the key depends on the primary key only");
    assert_ne!(a, c);
}

#[test]
fn null_in_a_not_null_column_is_an_error_not_a_wrong_value() {
    let codec = ModelCodec::new("customers", schema()).unwrap();
    let mut bad = row(1, None);
    bad[0] = Value::Null;
    let mut bytes = Vec::new();
    assert!(codec.encode_key(&bad, &mut bytes).is_err());
}

#[test]
fn invalid_column_names_are_refused_by_name() {
    let mut s = schema();
    s.columns[1].name = "e mail".into();
    let err = ModelCodec::new("customers", s).err().expect("refused");
    assert!(err.to_string().contains("\"e mail\""), "{err}");
}

#[test]
fn garbage_is_not_decoded() {
    let codec = ModelCodec::new("customers", schema()).unwrap();
    assert!(matches!(fingerprint_of(b"{\"json\":1}"), Err(CodecError::NotSingleObject)));
    let mut bytes = Vec::new();
    codec.encode_event(
        &ChangeEvent { op: Op::Read, before: None, after: Some(row(1, None)), source: source_for_tests("customers"), ts_ms: 0, changed: None },
        &mut bytes,
    ).unwrap();
    bytes.truncate(bytes.len() - 3);
    assert!(decoder_for(&codec).decode(&bytes).is_err());
}

#[test]
fn state_round_trips() {
    let state = PollerState {
        model: "m".into(),
        run_id: "r".into(),
        position: Some("[1]".into()),
        snapshot_done: true,
        events_total: 3,
        committed_at_ms: 9,
    };
    assert_eq!(decode_state(&encode_state(&state).unwrap()).unwrap(), state);
}

#[test]
fn keys_decode_by_name() {
    let codec = ModelCodec::new("customers", schema()).unwrap();
    let mut key = Vec::new();
    codec.encode_key(&row(42, None), &mut key).unwrap();
    let [key_schema, _] = codec.schemas();
    assert_eq!(fingerprint_of(&key).unwrap(), key_schema.fingerprint);
    let fields = KeyDecoder::new(&key_schema.json).unwrap().decode(&key).unwrap();
    assert_eq!(fields, vec![("id".to_string(), Value::Long(42))]);
}


/// A model with every column type, nullable and not, keyed by columns with logical types (so its
/// key's legacy and specification fingerprints differ too).
fn all_types() -> RowSchema {
    let col = |name: &str, ty, nullable| Column { name: name.into(), ty, nullable };
    RowSchema {
        columns: vec![
            col("id", ColumnType::Long, false),
            col("day", ColumnType::Date, false),
            col("flag", ColumnType::Boolean, true),
            col("small", ColumnType::Int, true),
            col("ratio", ColumnType::Double, true),
            col("name", ColumnType::String, true),
            col("attrs", ColumnType::Json, true),
            col("ref", ColumnType::Uuid, true),
            col("big", ColumnType::DecimalText, true),
            col("blob", ColumnType::Bytes, true),
            col("seen_at", ColumnType::TimestampMicros { utc: true }, false),
            col("local_at", ColumnType::TimestampMicros { utc: false }, true),
            col("born", ColumnType::Date, true),
            col("amount", ColumnType::Decimal { precision: 12, scale: 2 }, false),
            col("rate", ColumnType::Decimal { precision: 38, scale: 9 }, true),
        ],
        primary_key: vec![0, 1],
    }
}

/// The published schemas of `all_types` are the fastavro vectors of `canonical`'s test
/// (`testdata/fingerprints/model_all_types.*.avsc`), so what a consumer computes from the schema
/// topic is what the single-object headers carry: 4f8cb110be82e51d (key) and aacc8878e538d067
/// (value), from `testdata/fingerprints/expected.json`, computed by fastavro.
#[test]
fn published_schemas_carry_the_fingerprints_fastavro_computes() {
    let codec = ModelCodec::new("all_types", all_types()).unwrap();
    let [key, value] = codec.schemas();
    let file = |name: &str| -> serde_json::Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/fingerprints").join(name);
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    assert_eq!(serde_json::from_str::<serde_json::Value>(&key.json).unwrap(), file("model_all_types.key.avsc"));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&value.json).unwrap(), file("model_all_types.value.avsc"));
    assert_eq!((key.fingerprint.as_str(), value.fingerprint.as_str()), ("4f8cb110be82e51d", "aacc8878e538d067"));
    assert_eq!(codec.value_fingerprint(), "aacc8878e538d067");

    let mut bytes = Vec::new();
    codec.encode_key(&all_types_row(), &mut bytes).unwrap();
    assert_eq!(fingerprint_of(&bytes).unwrap(), "4f8cb110be82e51d", "the key's single-object header");
    bytes.clear();
    codec.encode_event(&insert(all_types_row()), &mut bytes).unwrap();
    assert_eq!(fingerprint_of(&bytes).unwrap(), "aacc8878e538d067", "the value's single-object header");
}

/// What sluice wrote before it fingerprinted by the specification: apache-avro 0.21's
/// fingerprints of the same schemas (values taken from that crate). Pinned, because events on
/// existing topics carry them: a dependency upgrade that changed them would orphan those events.
#[test]
fn legacy_fingerprints_are_pinned() {
    let codec = ModelCodec::new("all_types", all_types()).unwrap();
    assert_eq!(codec.legacy_fingerprints(), ["79313044b0034bd1".to_string(), "1f70c835d7ecc48d".to_string()]);
}

/// Replace the fingerprint of a single-object encoded message (as if an older sluice wrote it).
fn with_fingerprint(mut message: Vec<u8>, hex: &str) -> Vec<u8> {
    for (i, byte) in message[2..10].iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    message
}

#[test]
fn events_and_keys_with_legacy_fingerprints_still_decode() {
    let codec = ModelCodec::new("all_types", all_types()).unwrap();
    let [key_schema, value_schema] = codec.schemas();
    let [legacy_key, legacy_value] = codec.legacy_fingerprints();
    let event = insert(all_types_row());
    let mut value = Vec::new();
    codec.encode_event(&event, &mut value).unwrap();
    let old_value = with_fingerprint(value.clone(), &legacy_value);
    // The old schema-topic entry holds the same schema text under the legacy key.
    let decoder = EventDecoder::new(&value_schema.json).unwrap();
    assert_eq!(decoder.decode(&old_value).unwrap().event, event);
    assert_eq!(decoder.decode(&value).unwrap().event, event);
    assert!(codec.is_own_value_fingerprint(&fingerprint_bytes(&old_value).unwrap()));
    assert!(codec.is_own_value_fingerprint(&fingerprint_bytes(&value).unwrap()));

    let mut key = Vec::new();
    codec.encode_key(&all_types_row(), &mut key).unwrap();
    let old_key = with_fingerprint(key.clone(), &legacy_key);
    let keys = KeyDecoder::new(&key_schema.json).unwrap();
    let expected = vec![("id".to_string(), Value::Long(7)), ("day".to_string(), Value::Date(19_000))];
    assert_eq!(keys.decode(&old_key).unwrap(), expected);
    assert_eq!(keys.decode(&key).unwrap(), expected);
    assert!(codec.is_own_key_fingerprint(&fingerprint_bytes(&old_key).unwrap()));
}

#[test]
fn a_foreign_fingerprint_is_refused_by_name() {
    let codec = ModelCodec::new("all_types", all_types()).unwrap();
    let mut value = Vec::new();
    codec.encode_event(&insert(all_types_row()), &mut value).unwrap();
    let foreign = with_fingerprint(value, "0123456789abcdef");
    assert!(!codec.is_own_value_fingerprint(&fingerprint_bytes(&foreign).unwrap()));
    let error = decoder_for(&codec).decode(&foreign).unwrap_err().to_string();
    assert!(error.contains("0123456789abcdef") && error.contains("aacc8878e538d067"), "{error}");
}

fn all_types_row() -> Vec<Value> {
    vec![
        Value::Long(7),
        Value::Date(19_000),
        Value::Boolean(true),
        Value::Null,
        Value::Double(0.5),
        Value::String("Zoë".into()),
        Value::Json("{\"tier\":\"gold\"}".into()),
        Value::Uuid("0b0e7c4e-3a57-4d0c-9b7e-0a2c5d1f9e11".into()),
        Value::DecimalText("12345678901234567890.5".into()),
        Value::Bytes(vec![0, 1, 255]),
        Value::TimestampMicros(1_700_000_000_000_001),
        Value::TimestampMicros(1_700_000_000_000_002),
        Value::Null,
        Value::DecimalText("-1234.50".into()),
        Value::DecimalText("0.000000001".into()),
    ]
}

fn insert(row: Vec<Value>) -> ChangeEvent {
    ChangeEvent { op: Op::Create, before: None, after: Some(row), source: source_for_tests("all_types"), ts_ms: 1, changed: None }
}

/// The example model of `schemas/examples/` (and of docs/consumers.md).
fn customers_example() -> RowSchema {
    let col = |name: &str, ty, nullable| Column { name: name.into(), ty, nullable };
    RowSchema {
        columns: vec![
            col("id", ColumnType::Long, false),
            col("email", ColumnType::String, false),
            col("plan", ColumnType::String, true),
            col("mrr", ColumnType::Decimal { precision: 12, scale: 2 }, true),
            col("signed_up", ColumnType::Date, true),
            col("updated_at", ColumnType::TimestampMicros { utc: true }, false),
            col("attrs", ColumnType::Json, true),
        ],
        primary_key: vec![0],
    }
}

/// `schemas/examples/customers.*.avsc` are exactly what sluice publishes for that model (and
/// what `sluice schema export customers --writer DIR` writes), so the examples cannot drift.
#[test]
fn schema_examples_are_what_sluice_publishes() {
    let codec = ModelCodec::new("customers", customers_example()).unwrap();
    let [key, value] = codec.schemas();
    assert_eq!(include_str!("../../../schemas/examples/customers.key.avsc"), format!("{}\n", key.json));
    assert_eq!(include_str!("../../../schemas/examples/customers.value.avsc"), format!("{}\n", value.json));
}


/// A model whose keys were written with the legacy fingerprint keeps writing them so: the key
/// bytes of a row never change, and the key schema is published under the fingerprint it uses.
#[test]
fn legacy_key_fingerprint_keeps_key_bytes_stable() {
    let codec = ModelCodec::new("all_types", all_types()).unwrap();
    assert!(codec.key_fingerprints_differ(), "a date in the key: AVRO-4004 kept its logicalType");
    let [legacy_key, _] = codec.legacy_fingerprints();
    let mut standard = Vec::new();
    codec.encode_key(&all_types_row(), &mut standard).unwrap();
    let value_fingerprint = codec.value_fingerprint().to_string();

    let codec = codec.with_legacy_key_fingerprint();
    let mut key = Vec::new();
    codec.encode_key(&all_types_row(), &mut key).unwrap();
    assert_eq!(key, with_fingerprint(standard.clone(), &legacy_key), "the old key bytes exactly");
    assert_eq!(codec.schemas()[0].fingerprint, legacy_key, "published under the fingerprint the keys carry");
    assert_eq!(codec.value_fingerprint(), value_fingerprint, "values switch to the standard fingerprint");
    assert!(codec.is_own_key_fingerprint(&fingerprint_bytes(&key).unwrap()));
    assert!(codec.is_own_key_fingerprint(&fingerprint_bytes(&standard).unwrap()));

    let plain = ModelCodec::new("all_types", RowSchema { primary_key: vec![0], ..all_types() }).unwrap();
    assert!(!plain.key_fingerprints_differ(), "a bigint key has one canonical form either way");
}

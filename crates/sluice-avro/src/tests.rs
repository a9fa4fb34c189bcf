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

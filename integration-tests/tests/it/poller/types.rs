//! Type mapping, round trip through real PostgreSQL, the poller, Kafka and the Avro decoder:
//! every common type comes back exactly (numeric(p, s) as an Avro decimal, unconstrained numeric
//! as exact text, non-ASCII text, timestamps to the microsecond, JSON as documents, NULLs), and
//! an unmapped type (an array) is refused by name with the fix.


use super::common::*;
use sluice_core::{naming, Value};
use sluice_integration_tests::{eventually, read_topic};

const COLUMNS: &str = r#""id", "small", "regular", "amount", "free", "name", "flag", "day", "at_local", "at_utc", "doc", "docb", "uid", "raw""#;

async fn types_fixture(extra_columns: &str) -> Fixture {
    let create = "CREATE TABLE {table} (id bigint PRIMARY KEY, small int2, regular int4, amount numeric(12,3), free numeric, name text, \
                  flag boolean, day date, at_local timestamp, at_utc timestamptz, doc json, docb jsonb, uid uuid, raw bytea, tags text[])";
    let body = format!(
        "table = \"{{table}}\"\nprimary_key = [\"id\"]\ncolumns = [{COLUMNS}{extra_columns}]\ndetection = {{ mode = \"diff\" }}\npoll_interval_ms = 200"
    );
    fixture_with("it_types", create, &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_mapped_type_round_trips_exactly() {
    let f = types_fixture("").await;
    f.db.batch_execute(&format!(
        r#"INSERT INTO {t} VALUES
           (1, 7, 70000, 1234.5, 3.14159265358979323846264338327950288419716939937510, 'Zoë ✓ 日本 — "quoted"', true, '2024-02-29',
            '2024-02-29 12:34:56.789012', '2024-02-29 12:34:56.789012+00', '{{"a": [1, "x"]}}', '{{"b": null}}',
            'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\x00ff10', '{{x}}'),
           (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
           (3, -32768, -2147483648, -98765.432, -0.5, '', false, '1969-12-31', '1969-12-31 23:59:59.999999', '1970-01-01 00:00:00+00',
            '[]', '{{}}', '00000000-0000-0000-0000-000000000000', '', '{{}}'),
           (4, 32767, 2147483647, -0.001, 0, 'plain', true, '2000-01-01', '2000-01-01 00:00:00', '2000-01-01 00:00:00+00', 'null', '1', 'ffffffff-ffff-ffff-ffff-ffffffffffff', '\xff', NULL)"#,
        t = f.table
    ))
    .await
    .unwrap();
    let (stop, poller) = start_poller(&f.config, &[]);
    eventually("4 rows", WAIT, || count(&decode_all(&f), "r") == 4).await;
    stop.cancel();
    poller.await.unwrap().unwrap();

    let rows = replay(&decode_all(&f));
    use Value::*;
    assert_eq!(
        rows[&1],
        vec![
            Long(1),
            Int(7),
            Int(70000),
            DecimalText("1234.500".into()),
            DecimalText("3.14159265358979323846264338327950288419716939937510".into()),
            String("Zoë ✓ 日本 — \"quoted\"".into()),
            Boolean(true),
            Date(19782),
            TimestampMicros(1_709_210_096_789_012),
            TimestampMicros(1_709_210_096_789_012),
            Json(r#"{"a":[1,"x"]}"#.into()),
            Json(r#"{"b":null}"#.into()),
            Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
            Bytes(vec![0x00, 0xff, 0x10]),
        ]
    );
    assert_eq!(rows[&2][1..], vec![Null; 13][..], "NULLs stay NULL");
    assert_eq!(
        rows[&3],
        vec![
            Long(3),
            Int(-32768),
            Int(-2147483648),
            DecimalText("-98765.432".into()),
            DecimalText("-0.5".into()),
            String(std::string::String::new()),
            Boolean(false),
            Date(-1),
            TimestampMicros(-1),
            TimestampMicros(0),
            Json("[]".into()),
            Json("{}".into()),
            Uuid("00000000-0000-0000-0000-000000000000".into()),
            Bytes(Vec::new()),
        ]
    );
    assert_eq!(rows[&4][3], DecimalText("-0.001".into()));
    assert_eq!(rows[&4][4], DecimalText("0".into()));

    // numeric(12,3) travels as an Avro decimal with the column's precision and scale.
    let schemas: Vec<serde_json::Value> =
        read_topic(&naming::schema_topic(&f.prefix)).iter().map(|r| serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap()).collect();
    let text = serde_json::to_string(&schemas).unwrap();
    assert!(text.contains(r#"{"logicalType":"decimal","precision":12,"scale":3,"type":"bytes"}"#), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unmapped_type_is_refused_by_name() {
    let f = types_fixture(r#", "tags""#).await;
    let (_stop, poller) = start_poller(&f.config, &[]);
    let error = tokio::time::timeout(WAIT, poller).await.expect("the model stops").unwrap().unwrap_err();
    let text = format!("{error:#}");
    assert!(
        text.contains(&format!(
            "model {}: column \"tags\" has PostgreSQL type _text, which sluice does not map; cast it in a `query` model (e.g. tags::text)",
            f.model
        )),
        "{text}"
    );
}

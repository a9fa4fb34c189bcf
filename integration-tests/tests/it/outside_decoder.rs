//! sluice's topics read by a decoder that is not sluice's: fastavro (Python), in the venv
//! `ops/deps.sh` makes, through the example consumer of `docs/examples/consume_changes.py`.
//!
//! What is proven: given only the schema texts of the schema topic, fastavro computes every
//! writer-schema fingerprint itself (the specification's CRC-64-AVRO of the Parsing Canonical
//! Form), resolves every key and value of a live run (snapshot, update, insert, delete and
//! tombstone, on a model with decimal, timestamp, date, uuid and JSON columns and a key with a
//! date column) by its single-object header, and decodes the exact values; the example consumer
//! does the same against the live broker; every `.avsc` under `schemas/` parses on its own; and
//! `sluice schema export --writer` writes exactly the schemas the poller published. Also: events
//! written by an older sluice, whose headers carry apache-avro's (AVRO-4004) fingerprints, still
//! reach a destination through the sink's schema lookup.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value as Json};
use sluice_core::naming;
use sluice_integration_tests::{eventually, ReadRecord};

use crate::poller::common::{fixture_with, read_settled, start_poller, Fixture, WAIT};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf()
}

/// The venv's interpreter (`SLUICE_PYTHON` overrides); fails with the fix when it is missing.
fn python() -> PathBuf {
    if let Ok(path) = std::env::var("SLUICE_PYTHON") {
        return PathBuf::from(path);
    }
    let cache = std::env::var("SLUICE_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/sluice"));
    let python = cache.join("py/bin/python");
    assert!(python.exists(), "{} is missing: run ops/deps.sh (it installs fastavro into that venv)", python.display());
    python
}

/// Run a Python script with the venv's interpreter; its stdout.
fn run_python(args: &[&str]) -> String {
    let output = std::process::Command::new(python()).args(args).output().expect("run python");
    assert!(output.status.success(), "python {args:?} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8 output")
}

fn outside_decoder(args: &[&str]) -> Json {
    let script = repo().join("integration-tests/python/outside_decoder.py");
    let mut all = vec![script.to_str().unwrap()];
    all.extend_from_slice(args);
    serde_json::from_str(&run_python(&all)).expect("the script prints JSON")
}

const CREATE: &str = "CREATE TABLE {table} (id bigint, day date, amount numeric(12,2), free numeric, seen_at timestamptz NOT NULL, \
                      local_at timestamp, uid uuid, doc jsonb, note text, PRIMARY KEY (id, day))";
const MODEL: &str = "table = \"{table}\"\nprimary_key = [\"id\", \"day\"]\n\
                     columns = [\"id\", \"day\", \"amount\", \"free\", \"seen_at\", \"local_at\", \"uid\", \"doc\", \"note\"]\n\
                     detection = { mode = \"diff\" }\npoll_interval_ms = 200";

fn ops(records: &[ReadRecord]) -> Vec<Option<String>> {
    records.iter().map(|r| r.header("sluice.op").map(String::from).filter(|_| r.payload.is_some())).collect()
}

/// The change topic in (partition, offset) order: per key, the order it was written in.
fn change_records(f: &Fixture) -> Vec<ReadRecord> {
    let mut records = read_settled(&naming::change_topic(&f.prefix, &f.model));
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}

/// The schema topic as (key, schema text).
fn schema_records(f: &Fixture) -> Vec<(String, String)> {
    read_settled(&naming::schema_topic(&f.prefix))
        .into_iter()
        .map(|r| (String::from_utf8(r.key.unwrap()).unwrap(), String::from_utf8(r.payload.unwrap()).unwrap()))
        .collect()
}

/// Write what the outside decoder gets: schema texts only (no fingerprints) and raw records.
fn dump(dir: &Path, schemas: &[(String, String)], changes: &[ReadRecord]) {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    std::fs::create_dir_all(dir).unwrap();
    let schema_lines: Vec<String> = schemas.iter().map(|(_, text)| Json::String(text.clone()).to_string()).collect();
    std::fs::write(dir.join("schemas.jsonl"), schema_lines.join("\n") + "\n").unwrap();
    let change_lines: Vec<String> = changes
        .iter()
        .map(|r| {
            let headers: serde_json::Map<String, Json> = r.headers.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            json!({"key": b64(r.key.as_deref().unwrap()), "value": r.payload.as_deref().map(b64), "headers": headers}).to_string()
        })
        .collect();
    std::fs::write(dir.join("changes.jsonl"), change_lines.join("\n") + "\n").unwrap();
}

/// The rows of the test, as fastavro decodes them (decimals and timestamps as exact text).
fn row(id: i64) -> Json {
    match id {
        1 => json!({"id": 1, "day": "2024-02-29", "amount": "1234.50", "free": "3.14159265358979323846", "seen_at": "2024-02-29T12:34:56.789012+00:00",
                    "local_at": "2024-02-29T12:34:56.789012", "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "doc": "{\"a\":[1,\"x\"]}", "note": "Zoë ✓"}),
        2 => json!({"id": 2, "day": "1969-12-31", "amount": "-0.01", "free": "-5", "seen_at": "1970-01-01T00:00:00+00:00",
                    "local_at": "1969-12-31T23:59:59.999999", "uid": "00000000-0000-0000-0000-000000000000", "doc": "[]", "note": ""}),
        3 => json!({"id": 3, "day": "2000-01-01", "amount": null, "free": null, "seen_at": "2000-01-01T00:00:00.000001+00:00",
                    "local_at": null, "uid": null, "doc": null, "note": null}),
        4 => json!({"id": 4, "day": "2024-03-01", "amount": "99999.99", "free": "0", "seen_at": "2024-03-01T00:00:00+00:00",
                    "local_at": "2024-03-01T00:00:00", "uid": "ffffffff-ffff-ffff-ffff-ffffffffffff", "doc": "{\"b\":null}", "note": "new"}),
        _ => unreachable!(),
    }
}

fn row_1_updated() -> Json {
    let mut updated = row(1);
    updated["amount"] = json!("1234.51");
    updated["doc"] = json!("{\"a\":[2]}");
    updated["note"] = json!("changed");
    updated
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fastavro_resolves_and_decodes_every_event_by_fingerprints_it_computes() {
    let f = fixture_with("it_outside", CREATE, MODEL).await;
    f.db.batch_execute(&format!(
        r#"INSERT INTO {t} VALUES
           (1, '2024-02-29', 1234.5, 3.14159265358979323846, '2024-02-29 12:34:56.789012+00', '2024-02-29 12:34:56.789012',
            'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{{"a": [1, "x"]}}', 'Zoë ✓'),
           (2, '1969-12-31', -0.01, -5, '1970-01-01 00:00:00+00', '1969-12-31 23:59:59.999999', '00000000-0000-0000-0000-000000000000', '[]', ''),
           (3, '2000-01-01', NULL, NULL, '2000-01-01 00:00:00.000001+00', NULL, NULL, NULL, NULL)"#,
        t = f.table
    ))
    .await
    .unwrap();
    let (stop, poller) = start_poller(&f.config, &[]);
    eventually("the snapshot (3 r)", WAIT, || ops(&change_records(&f)).iter().filter(|o| o.as_deref() == Some("r")).count() == 3).await;
    f.db.batch_execute(&format!(
        r#"UPDATE {t} SET amount = 1234.51, doc = '{{"a": [2]}}', note = 'changed' WHERE id = 1;
           INSERT INTO {t} VALUES (4, '2024-03-01', 99999.99, 0, '2024-03-01 00:00:00+00', '2024-03-01 00:00:00', 'ffffffff-ffff-ffff-ffff-ffffffffffff', '{{"b": null}}', 'new');
           DELETE FROM {t} WHERE id = 2;"#,
        t = f.table
    ))
    .await
    .unwrap();
    // 3 r, then u, c, d and the delete's tombstone.
    eventually("u, c, d and a tombstone", WAIT, || change_records(&f).len() == 7).await;
    stop.cancel();
    poller.await.unwrap().unwrap();

    let changes = change_records(&f);
    let schemas = schema_records(&f);
    let dir = std::env::temp_dir().join(format!("sluice-outside-{}", f.model));
    dump(&dir, &schemas, &changes);
    let decoded = tokio::task::block_in_place(|| outside_decoder(&["decode", dir.to_str().unwrap()]));

    // fastavro's fingerprints of the schema texts are exactly the schema topic's keys.
    let mut topic_keys: Vec<&str> = schemas.iter().map(|(key, _)| key.as_str()).collect();
    topic_keys.sort_unstable();
    assert_eq!(decoded["schemas"], json!(topic_keys), "fingerprints computed by fastavro vs the schema topic's keys");
    assert_eq!(topic_keys.len(), 2, "one key and one value schema");

    // Every record resolved (the script fails on an unknown fingerprint) and decoded exactly.
    let records = decoded["records"].as_array().unwrap();
    assert_eq!(records.len(), changes.len());
    let mut per_key: std::collections::BTreeMap<i64, Vec<Json>> = Default::default();
    for record in records {
        assert!(topic_keys.contains(&record["key_fingerprint"].as_str().unwrap()), "{record}");
        let value = &record["value"];
        if !value.is_null() {
            assert_eq!(record["header_fingerprint"], record["value_fingerprint"], "the fingerprint header names the value's schema");
            assert_eq!(record["op_header"], value["op"]);
            assert_eq!(value["source"]["model"], json!(f.model));
        }
        let key = &record["key"];
        assert_eq!(key.as_object().unwrap().len(), 2, "the key record holds the primary key: {key}");
        let event = if value.is_null() { Json::Null } else { json!([value["op"], value["before"], value["after"], value["changed"]]) };
        per_key.entry(key["id"].as_i64().unwrap()).or_default().push(json!([key["day"], event]));
    }
    let day = |id| row(id)["day"].clone();
    let expected: std::collections::BTreeMap<i64, Vec<Json>> = [
        (1, vec![json!([day(1), ["r", null, row(1), null]]), json!([day(1), ["u", row(1), row_1_updated(), ["amount", "doc", "note"]]])]),
        (2, vec![json!([day(2), ["r", null, row(2), null]]), json!([day(2), ["d", row(2), null, null]]), json!([day(2), null])]),
        (3, vec![json!([day(3), ["r", null, row(3), null]])]),
        (4, vec![json!([day(4), ["c", null, row(4), null]])]),
    ]
    .into_iter()
    .collect();
    assert_eq!(per_key, expected);

    // The example consumer, against the live broker, reads the same records the same way.
    let example = repo().join("docs/examples/consume_changes.py");
    let bootstrap = sluice_integration_tests::kafka_bootstrap();
    let live = tokio::task::block_in_place(|| {
        run_python(&[example.to_str().unwrap(), "--bootstrap", &bootstrap, "--prefix", &f.prefix, "--model", &f.model, "--to-end"])
    });
    let mut live: Vec<Json> = live.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    live.sort_by_key(|r| (r["partition"].as_i64().unwrap(), r["offset"].as_i64().unwrap()));
    assert_eq!(live.len(), records.len());
    for ((line, record), original) in live.iter().zip(records).zip(&changes) {
        assert_eq!((line["partition"].as_i64(), line["offset"].as_i64()), (Some(original.partition.into()), Some(original.offset)));
        assert_eq!((&line["key"], &line["value"]), (&record["key"], &record["value"]));
        assert_eq!(line["op"].as_str(), original.header("sluice.op"));
    }

    // `sluice schema export --writer` writes exactly what the poller published.
    let config = std::env::temp_dir().join(format!("{}.toml", f.model));
    std::fs::write(&config, &f.config_text).unwrap();
    let out = dir.join("writer");
    let export = tokio::task::block_in_place(|| {
        std::process::Command::new(sluice_integration_tests::binary("sluice"))
            .args(["schema", "export", &f.model, "--config", config.to_str().unwrap(), "--writer", out.to_str().unwrap()])
            .env("SLUICE_IT_WAREHOUSE_URL", sluice_integration_tests::postgres_url())
            .output()
            .expect("run sluice schema export")
    });
    let stdout = String::from_utf8_lossy(&export.stdout);
    assert!(export.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&export.stderr));
    for kind in ["key", "value"] {
        let path = out.join(format!("{}.{kind}.avsc", f.model));
        let text = std::fs::read_to_string(&path).unwrap();
        let (fingerprint, _) = schemas.iter().find(|(_, json)| format!("{json}\n") == text).unwrap_or_else(|| panic!("{kind} schema is on the topic: {text}"));
        assert!(stdout.contains(&format!("wrote {} (fingerprint {fingerprint})", path.display())), "{stdout}");
    }
}

/// Every `.avsc` under `schemas/` parses on its own in fastavro, and for each, fastavro's
/// fingerprint is sluice's.
#[test]
fn every_schema_file_stands_alone_in_fastavro() {
    let root = repo().join("schemas");
    let parsed = outside_decoder(&["parse-schemas", root.to_str().unwrap()]);
    let parsed = parsed.as_object().unwrap();
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "avsc") {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 4, "envelope, poller state and the example's key and value: {files:?}");
    assert_eq!(parsed.len(), files.len(), "{parsed:?} vs {files:?}");
    for path in files {
        let relative = path.strip_prefix(&root).unwrap().to_str().unwrap();
        let schema: Json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let ours = sluice_avro::fingerprint_hex(&sluice_avro::canonical::fingerprint(&schema).unwrap());
        assert_eq!(parsed[relative].as_str(), Some(ours.as_str()), "{relative}");
    }
}

/// A model that ran before this release: its change topic holds events whose headers carry the
/// legacy (apache-avro) fingerprints, its schema topic those schemas under the legacy keys. A
/// sink of this release delivers them, and the events the upgraded poller writes after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_with_legacy_fingerprints_still_reach_the_destination() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use sluice_core::{ChangeEvent, Column, ColumnType, Op, RowSchema, SourceInfo, Value};
    use sluice_integration_tests::receiver;

    let (hook, received) = receiver::start().await;
    let columns_sql = "id bigint PRIMARY KEY, email text, v int NOT NULL, updated_at timestamptz NOT NULL, created_at timestamptz NOT NULL";
    let p = sluice_integration_tests::pipeline(
        &hook,
        sluice_integration_tests::Spec {
            columns_sql,
            columns: &["id", "email", "v", "updated_at", "created_at"],
            sync: "fields = { email = \"email\", v = \"v\" }",
            ..Default::default()
        },
    )
    .await;
    let col = |name: &str, ty, nullable| Column { name: name.into(), ty, nullable };
    let row_schema = RowSchema {
        columns: vec![
            col("id", ColumnType::Long, false),
            col("email", ColumnType::String, true),
            col("v", ColumnType::Int, false),
            col("updated_at", ColumnType::TimestampMicros { utc: true }, false),
            col("created_at", ColumnType::TimestampMicros { utc: true }, false),
        ],
        primary_key: vec![0],
    };
    let codec = sluice_avro::ModelCodec::new("customers", row_schema).unwrap();
    let [key_schema, value_schema] = codec.schemas();
    let [legacy_key, legacy_value] = codec.legacy_fingerprints();
    assert_ne!(legacy_value, value_schema.fingerprint, "timestamps: apache-avro's fingerprint differs (AVRO-4004)");

    let topic = naming::change_topic(&p.prefix, "customers");
    let schema_topic = naming::schema_topic(&p.prefix);
    sluice_kafka::admin::ensure_topics(
        &p.config.kafka,
        &[(topic.clone(), sluice_kafka::admin::TopicRole::Compacted), (schema_topic.clone(), sluice_kafka::admin::TopicRole::Compacted)],
    )
    .await
    .unwrap();
    let producer: FutureProducer = sluice_kafka::client_config(&p.config.kafka).create().unwrap();
    let send = |topic: String, key: Vec<u8>, payload: Vec<u8>, headers: rdkafka::message::OwnedHeaders| {
        let producer = producer.clone();
        async move {
            producer
                .send(FutureRecord::to(&topic).key(&key).payload(&payload).headers(headers), Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    };
    // What the previous release published: the same schema texts, under the legacy keys.
    let none = rdkafka::message::OwnedHeaders::new;
    send(schema_topic.clone(), legacy_key.clone().into_bytes(), key_schema.json.clone().into_bytes(), none()).await;
    send(schema_topic.clone(), legacy_value.clone().into_bytes(), value_schema.json.clone().into_bytes(), none()).await;

    let event = |id: i64, v: i32| ChangeEvent {
        op: Op::Read,
        before: None,
        after: Some(vec![Value::Long(id), Value::String(format!("m{id}@example.com")), Value::Int(v), Value::TimestampMicros(1), Value::TimestampMicros(1)]),
        source: SourceInfo { model: "customers".into(), warehouse: "wh".into(), run_id: "old-run".into(), position: None },
        ts_ms: 1,
        changed: None,
    };
    let encode = |event: &ChangeEvent, key_fingerprint: &str, value_fingerprint: &str| {
        let (mut key, mut value) = (Vec::new(), Vec::new());
        codec.encode_key(event.after.as_ref().unwrap(), &mut key).unwrap();
        codec.encode_event(event, &mut value).unwrap();
        let patch = |bytes: &mut Vec<u8>, hex: &str| {
            for (i, byte) in bytes[2..10].iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
            }
        };
        patch(&mut key, key_fingerprint);
        patch(&mut value, value_fingerprint);
        (key, value)
    };
    let headers = |fingerprint: &str| {
        sluice_kafka::headers::owned([(sluice_kafka::headers::SCHEMA_FINGERPRINT, fingerprint), (sluice_kafka::headers::OP, "r")])
    };
    for id in 1..=3 {
        let (key, value) = encode(&event(id, 1), &legacy_key, &legacy_value);
        send(topic.clone(), key, value, headers(&legacy_value)).await;
    }
    // The upgraded poller: schemas under the new keys, then events that name them.
    send(schema_topic.clone(), key_schema.fingerprint.clone().into_bytes(), key_schema.json.clone().into_bytes(), none()).await;
    send(schema_topic.clone(), value_schema.fingerprint.clone().into_bytes(), value_schema.json.clone().into_bytes(), none()).await;
    let (key, value) = encode(&event(4, 2), &key_schema.fingerprint, &value_schema.fingerprint);
    send(topic.clone(), key, value, headers(&value_schema.fingerprint)).await;

    let (stop, sink) = sluice_integration_tests::start_sink(&p.config, sluice_telemetry::ops::Health::new());
    eventually("4 records delivered", WAIT, || received.records().len() == 4).await;
    stop.cancel();
    sink.await.unwrap().unwrap();
    let mut delivered: Vec<(i64, String, i64)> = received
        .records()
        .iter()
        .map(|r| (r["key"]["id"].as_i64().unwrap(), r["fields"]["email"].as_str().unwrap().to_string(), r["fields"]["v"].as_i64().unwrap()))
        .collect();
    delivered.sort();
    let expected: Vec<(i64, String, i64)> = (1..=4).map(|id| (id, format!("m{id}@example.com"), if id == 4 { 2 } else { 1 })).collect();
    assert_eq!(delivered, expected);
    let dead_letters = sluice_integration_tests::read_topic(&naming::dead_letter_topic(&p.prefix, "crm"));
    assert!(dead_letters.is_empty(), "nothing dead-lettered: {dead_letters:?}");
}

/// The key schema's fingerprint is part of every key, so a model whose topic holds keys written
/// by a sluice from before standard fingerprints (here: what that release published, its key
/// schema under the legacy fingerprint) keeps writing them with that fingerprint: a row's key
/// bytes never change (compaction, partitioning, per-key state). A new model with the same key
/// shape gets the standard fingerprint; values switch to it in both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_written_before_standard_fingerprints_keep_their_bytes() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use sluice_warehouse::Warehouse as _;

    let old = fixture_with("it_legacy_keys", CREATE, MODEL).await;
    let new = fixture_with("it_standard_keys", CREATE, MODEL).await;
    let warehouse = sluice_warehouse::AnyWarehouse::connect(&old.config.warehouse).await.unwrap();
    let codec = |f: &Fixture| {
        let model = f.config.model(&f.model).unwrap();
        let schema = tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(warehouse.describe(model))).unwrap();
        sluice_avro::ModelCodec::new(&f.model, schema).unwrap()
    };
    let (old_codec, new_codec) = (codec(&old), codec(&new));
    assert!(old_codec.key_fingerprints_differ(), "a date in the key: the two fingerprints differ");
    let legacy_key = old_codec.legacy_fingerprints()[0].clone();
    let standard_key = new_codec.schemas()[0].fingerprint.clone();
    assert_ne!(legacy_key, standard_key);

    // What the previous release left on the old model's schema topic.
    let schema_topic = naming::schema_topic(&old.prefix);
    sluice_kafka::admin::ensure_topics(&old.config.kafka, &[(schema_topic.clone(), sluice_kafka::admin::TopicRole::Compacted)]).await.unwrap();
    let producer: FutureProducer = sluice_kafka::client_config(&old.config.kafka).create().unwrap();
    producer
        .send(FutureRecord::to(&schema_topic).key(legacy_key.as_bytes()).payload(old_codec.schemas()[0].json.as_bytes()), Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .unwrap();

    for f in [&old, &new] {
        f.db.batch_execute(&format!(
            "INSERT INTO {t} (id, day, seen_at) VALUES (1, '2024-02-29', now()), (2, '2024-03-01', now())",
            t = f.table
        ))
        .await
        .unwrap();
        let (stop, poller) = start_poller(&f.config, &[]);
        eventually("the snapshot (2 r)", WAIT, || change_records(f).len() == 2).await;
        stop.cancel();
        poller.await.unwrap().unwrap();
    }
    let fingerprint = |bytes: &[u8]| sluice_avro::fingerprint_of(bytes).unwrap();
    for (f, codec, expected_key) in [(&old, &old_codec, &legacy_key), (&new, &new_codec, &standard_key)] {
        for record in change_records(f) {
            assert_eq!(&fingerprint(record.key.as_deref().unwrap()), expected_key, "model {}: key fingerprint", f.model);
            assert_eq!(fingerprint(record.payload.as_deref().unwrap()), codec.value_fingerprint(), "values use the standard fingerprint");
        }
        assert!(schema_records(f).iter().any(|(key, _)| key == expected_key), "the key schema is on the topic under the fingerprint keys carry");
    }
}

//! `diff` mode against the real broker and PostgreSQL: inserts, updates with `before` images and
//! changed columns, deletes followed by tombstones, state rebuilt from the change topic after a
//! restart, crashes at random points, and the data-quality gates.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_avro::EventDecoder;
use sluice_core::config::Config;
use sluice_core::{naming, Op, Value};
use sluice_integration_tests::{eventually, read_topic, require_kafka, require_postgres, unique, ReadRecord};
use sluice_telemetry::ops::Health;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(90);

struct Fixture {
    config: Arc<Config>,
    table: String,
    db: tokio_postgres::Client,
    prefix: String,
}

/// A table `(id bigint primary key, email text, tier text, ltv numeric(10,2))` and a `diff`
/// model over `source` (default: the table), `batch_rows = 3` so runs span several transactions.
async fn fixture(source: Option<&str>, gates: &str) -> Fixture {
    sluice_integration_tests::telemetry();
    require_kafka();
    let db = require_postgres().await;
    let table = unique("it_diff");
    let prefix = unique("itd");
    db.batch_execute(&format!("CREATE TABLE {table} (id bigint PRIMARY KEY, email text, tier text, ltv numeric(10,2))")).await.unwrap();
    std::env::set_var("SLUICE_IT_WAREHOUSE_URL", sluice_integration_tests::postgres_url());
    let relation = match source {
        Some(query) => format!("query = \"{}\"", query.replace("{table}", &table)),
        None => format!("table = \"{table}\""),
    };
    let text = format!(
        r#"
[kafka]
bootstrap_servers = "{kafka}"
topic_prefix = "{prefix}"

[warehouse]
kind = "postgres"
url = {{ env = "SLUICE_IT_WAREHOUSE_URL" }}

[[models]]
name = "members"
{relation}
primary_key = ["id"]
columns = ["id", "email", "tier", "ltv"]
detection = {{ mode = "diff" }}
poll_interval_ms = 200
batch_rows = 3
{gates}
"#,
        kafka = sluice_integration_tests::kafka_bootstrap(),
    );
    let config = Arc::new(Config::parse("integration-test.toml", &text).expect("test config is valid"));
    Fixture { config, table, db, prefix }
}

fn start_poller(config: &Arc<Config>, confirm: &[&str]) -> (CancellationToken, JoinHandle<anyhow::Result<()>>) {
    let token = CancellationToken::new();
    let confirm = confirm.iter().map(|s| s.to_string()).collect();
    let handle = tokio::spawn(sluice_poller::run_with(Arc::clone(config), None, confirm, Health::new(), token.clone()));
    (token, handle)
}

async fn upsert(f: &Fixture, id: i64, tier: &str, ltv: &str) {
    f.db.execute(
        &format!(
            "INSERT INTO {} VALUES ($1, $2, $3, $4::text::numeric) ON CONFLICT (id) DO UPDATE SET tier = EXCLUDED.tier, ltv = EXCLUDED.ltv",
            f.table
        ),
        &[&id, &format!("m{id}@example.com"), &tier, &ltv],
    )
    .await
    .unwrap();
}

/// A change-topic record decoded: (op, before, after, changed), or `None` for a tombstone.
type Decoded = Option<(Op, Option<Vec<Value>>, Option<Vec<Value>>, Option<Vec<String>>)>;

/// `read_topic`, retried while a just-created topic has no leader yet.
fn read_settled(topic: &str) -> Vec<ReadRecord> {
    for _ in 0..50 {
        if let Ok(records) = std::panic::catch_unwind(|| read_topic(topic)) {
            return records;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    read_topic(topic)
}

fn decode_all(f: &Fixture) -> Vec<(ReadRecord, Decoded)> {
    // Change topic first: its schemas were committed with (or before) its events.
    let changes = read_settled(&naming::change_topic(&f.prefix, "members"));
    let schemas: HashMap<String, String> = read_settled(&naming::schema_topic(&f.prefix))
        .into_iter()
        .map(|r| (String::from_utf8(r.key.unwrap()).unwrap(), String::from_utf8(r.payload.unwrap()).unwrap()))
        .collect();
    changes
        .into_iter()
        .map(|record| {
            let decoded = record.payload.as_deref().map(|payload| {
                let fingerprint = sluice_avro::fingerprint_of(payload).unwrap();
                let decoder = EventDecoder::new(&schemas[&fingerprint]).unwrap();
                let event = decoder.decode(payload).unwrap().event;
                (event.op, event.before, event.after, event.changed)
            });
            (record, decoded)
        })
        .collect()
}

fn id_of(row: &[Value]) -> i64 {
    match row[0] {
        Value::Long(id) => id,
        ref other => panic!("id is a long, got {other:?}"),
    }
}

/// Replay the change log and check it is a valid history: `r`/`c` only for an absent key, `u`
/// only for a present key with a different row and a `before` equal to the previous image, `d`
/// only for a present key and followed by its tombstone. Returns the final state per id.
fn replay(events: &[(ReadRecord, Decoded)]) -> HashMap<i64, Vec<Value>> {
    let mut state: HashMap<Vec<u8>, Vec<Value>> = HashMap::new();
    let mut deleted_awaiting_tombstone: HashMap<Vec<u8>, ()> = HashMap::new();
    for (record, decoded) in events {
        let key = record.key.clone().expect("every record is keyed");
        match decoded {
            None => {
                assert!(deleted_awaiting_tombstone.remove(&key).is_some(), "a tombstone follows a delete, at offset {}", record.offset);
            }
            Some((op, before, after, _)) => match op {
                Op::Read | Op::Create => {
                    assert!(!state.contains_key(&key), "duplicate insert of id {}", id_of(after.as_ref().unwrap()));
                    state.insert(key, after.clone().unwrap());
                }
                Op::Update => {
                    let previous = state.get(&key).expect("update of a present key");
                    let after = after.clone().unwrap();
                    assert_ne!(previous, &after, "duplicate update of id {} (same image twice)", id_of(&after));
                    assert_eq!(before.as_ref(), Some(previous), "before image is the previous after image");
                    state.insert(key, after);
                }
                Op::Delete => {
                    let previous = state.remove(&key).expect("delete of a present key");
                    assert_eq!(before.as_ref(), Some(&previous), "delete carries the last image");
                    deleted_awaiting_tombstone.insert(key, ());
                }
            },
        }
    }
    assert!(deleted_awaiting_tombstone.is_empty(), "every delete has its tombstone");
    state.into_values().map(|row| (id_of(&row), row)).collect()
}

async fn table_state(f: &Fixture) -> HashMap<i64, Vec<Value>> {
    let rows = f.db.query(&format!("SELECT id, email, tier, ltv::text FROM {}", f.table), &[]).await.unwrap();
    rows.iter()
        .map(|r| {
            let opt = |v: Option<String>| v.map_or(Value::Null, Value::String);
            let ltv: Option<String> = r.get(3);
            (
                r.get::<_, i64>(0),
                vec![Value::Long(r.get(0)), opt(r.get(1)), opt(r.get(2)), ltv.map_or(Value::Null, Value::DecimalText)],
            )
        })
        .collect()
}

fn ops(events: &[(ReadRecord, Decoded)]) -> Vec<&'static str> {
    events.iter().map(|(_, d)| d.as_ref().map_or("tombstone", |(op, ..)| op.code())).collect()
}

fn count(events: &[(ReadRecord, Decoded)], code: &str) -> usize {
    ops(events).into_iter().filter(|op| *op == code).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn diff_emits_inserts_updates_and_deletes_then_continues_from_the_topic_after_restart() {
    let f = fixture(None, "").await;
    for id in 1..=10 {
        upsert(&f, id, "free", "10.00").await;
    }
    let (stop, poller) = start_poller(&f.config, &[]);
    eventually("snapshot of 10 rows", WAIT, || count(&decode_all(&f), "r") == 10).await;

    upsert(&f, 3, "pro", "10.00").await; // one column changes
    upsert(&f, 4, "pro", "99.95").await; // two columns change
    f.db.execute(&format!("DELETE FROM {} WHERE id IN (5, 6)", f.table), &[]).await.unwrap();
    upsert(&f, 11, "free", "0.00").await;
    eventually("1 insert, 2 updates, 2 deletes", WAIT, || {
        let events = decode_all(&f);
        count(&events, "c") == 1 && count(&events, "u") == 2 && count(&events, "d") == 2 && count(&events, "tombstone") == 2
    })
    .await;
    let events = decode_all(&f);
    let updates: HashMap<i64, Vec<String>> = events
        .iter()
        .filter_map(|(_, d)| d.as_ref())
        .filter(|(op, ..)| *op == Op::Update)
        .map(|(_, _, after, changed)| (id_of(after.as_ref().unwrap()), changed.clone().unwrap()))
        .collect();
    assert_eq!(updates[&3], vec!["tier".to_string()]);
    assert_eq!(updates[&4], vec!["tier".to_string(), "ltv".to_string()]);
    // The tombstone is the record right after its delete, in the same partition.
    for (i, (record, decoded)) in events.iter().enumerate() {
        if matches!(decoded, Some((Op::Delete, ..))) {
            let next = events.iter().skip(i + 1).find(|(r, _)| r.partition == record.partition).expect("a record after the delete");
            assert!(next.1.is_none() && next.0.key == record.key, "delete then tombstone for the same key");
        }
        if decoded.is_some() {
            assert_eq!(record.header("sluice.run.id").map(str::len), Some(36), "run id header");
        }
    }
    assert_eq!(replay(&events), table_state(&f).await, "the compacted topic's state equals the table");

    // Stop, change while stopped, restart: the state comes back from the topic; only the new
    // change is emitted, nothing again.
    stop.cancel();
    poller.await.unwrap().unwrap();
    let before_restart = events.len();
    upsert(&f, 7, "gold", "10.00").await;
    let (stop, poller) = start_poller(&f.config, &[]);
    eventually("the change made while stopped", WAIT, || count(&decode_all(&f), "u") == 3).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // several more runs: nothing new
    stop.cancel();
    poller.await.unwrap().unwrap();
    let events = decode_all(&f);
    assert_eq!(events.len(), before_restart + 1, "exactly one new event after the restart: {:?}", ops(&events));
    assert_eq!(replay(&events), table_state(&f).await);
}

/// The poller task is aborted at random points (mid-scan, mid-transaction, between the
/// transactions of one run) while rows are inserted, updated and deleted; afterwards the log is
/// a valid history with no duplicate event, and its state equals the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn diff_killed_at_random_points_loses_and_duplicates_nothing() {
    use rand::Rng;
    let f = fixture(None, "").await;
    for id in 1..=60 {
        upsert(&f, id, "free", "1.00").await;
    }
    let mut next_id = 61;
    for round in 0..12 {
        let (_stop, poller) = start_poller(&f.config, &[]);
        let kill_after = Duration::from_millis(rand::rng().random_range(100..2500));
        // Changes while the poller runs: inserts, updates, deletes.
        for _ in 0..5 {
            upsert(&f, next_id, "free", "1.00").await;
            next_id += 1;
        }
        let updated = rand::rng().random_range(1..next_id);
        upsert(&f, updated, &format!("t{round}"), "2.00").await;
        let deleted = rand::rng().random_range(1..next_id);
        f.db.execute(&format!("DELETE FROM {} WHERE id = $1", f.table), &[&deleted]).await.unwrap();
        tokio::time::sleep(kill_after).await;
        poller.abort();
        let _ = poller.await;
    }
    let (stop, poller) = start_poller(&f.config, &[]);
    let expected = table_state(&f).await;
    eventually("the topic's state equals the table", WAIT, || replay(&decode_all(&f)) == expected).await;
    stop.cancel();
    poller.await.unwrap().unwrap();
    let events = decode_all(&f);
    assert_eq!(replay(&events), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_and_null_keys_refuse_the_run_and_emit_nothing() {
    // A query model whose key is duplicated for id 2 and NULL in one row.
    let f = fixture(
        Some("SELECT id, email, tier, ltv FROM {table} UNION ALL SELECT id, email, tier, ltv FROM {table} WHERE id = 2"),
        "",
    )
    .await;
    for id in 1..=3 {
        upsert(&f, id, "free", "1.00").await;
    }
    let (_stop, poller) = start_poller(&f.config, &[]);
    let error = tokio::time::timeout(WAIT, poller).await.expect("the model stops").unwrap().unwrap_err();
    let text = format!("{error:#}");
    assert!(
        text.contains(r#"model members: 1 duplicate primary key(s); nothing was emitted. Sample keys: {"id":2}. Fix: make the model's primary_key unique"#),
        "{text}"
    );
    assert!(read_settled(&naming::change_topic(&f.prefix, "members")).is_empty(), "nothing emitted");

    let f = fixture(Some("SELECT CASE WHEN id = 3 THEN NULL ELSE id END AS id, email, tier, ltv FROM {table}"), "").await;
    for id in 1..=3 {
        upsert(&f, id, "free", "1.00").await;
    }
    let (_stop, poller) = start_poller(&f.config, &[]);
    let error = tokio::time::timeout(WAIT, poller).await.expect("the model stops").unwrap().unwrap_err();
    let text = format!("{error:#}");
    assert!(
        text.contains(r#"model members: 1 row(s) have NULL in a primary-key column (id); nothing was emitted. Sample keys: {"id":null}."#),
        "{text}"
    );
    assert!(read_settled(&naming::change_topic(&f.prefix, "members")).is_empty(), "nothing emitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn change_volume_guard_halts_the_model_until_an_operator_confirms() {
    let f = fixture(None, "gates = { max_change_pct = 20.0 }").await;
    for id in 1..=10 {
        upsert(&f, id, "free", "1.00").await;
    }
    let (stop, poller) = start_poller(&f.config, &[]);
    eventually("snapshot (exempt from the guard)", WAIT, || count(&decode_all(&f), "r") == 10).await;
    stop.cancel();
    poller.await.unwrap().unwrap();

    // Someone truncates half the table upstream.
    f.db.execute(&format!("DELETE FROM {} WHERE id > 5", f.table), &[]).await.unwrap();
    let (_stop, poller) = start_poller(&f.config, &[]);
    let error = tokio::time::timeout(WAIT, poller).await.expect("the model halts").unwrap().unwrap_err();
    let text = format!("{error:#}");
    assert!(
        text.contains("model members: 5 changes (0 inserts, 0 updates, 5 deletes) would touch 50.0% of 10 tracked rows, above max_change_pct = 20; the model is halted and nothing was emitted. Fix: inspect with `sluice plan members`, then let this run through with `sluice-poller --confirm-large-change members`"),
        "{text}"
    );
    assert_eq!(decode_all(&f).len(), 10, "nothing emitted");

    let (stop, poller) = start_poller(&f.config, &["members"]);
    eventually("confirmed deletes emitted", WAIT, || count(&decode_all(&f), "d") == 5).await;
    stop.cancel();
    poller.await.unwrap().unwrap();
    assert_eq!(replay(&decode_all(&f)), table_state(&f).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn row_count_bounds_refuse_the_run() {
    let f = fixture(None, "gates = { min_rows = 5, max_rows = 100 }").await;
    for id in 1..=3 {
        upsert(&f, id, "free", "1.00").await;
    }
    let (_stop, poller) = start_poller(&f.config, &[]);
    let error = tokio::time::timeout(WAIT, poller).await.expect("the model stops").unwrap().unwrap_err();
    let text = format!("{error:#}");
    assert!(text.contains("model members: the run read 3 rows, fewer than min_rows = 5; nothing was emitted."), "{text}");
    assert!(read_settled(&naming::change_topic(&f.prefix, "members")).is_empty(), "nothing emitted");
}

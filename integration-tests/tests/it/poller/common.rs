//! Shared fixtures of the poller's snapshot-mode tests: a PostgreSQL table and a model over
//! it, decoding the change topic, and replaying it as a history that must be valid.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_avro::EventDecoder;
use sluice_core::config::Config;
use sluice_core::{naming, Op, Value};
use sluice_integration_tests::{eventually, read_topic, require_kafka, require_postgres, toml_text, unique, ReadRecord};
use sluice_telemetry::ops::Health;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(90);

pub struct Fixture {
    pub config: Arc<Config>,
    pub table: String,
    pub db: tokio_postgres::Client,
    pub prefix: String,
    /// The model's name: unique per test, because `warehouse_diff` keeps per-model tables in
    /// the shared warehouse.
    pub model: String,
    /// The config file's text (for tests that run the binary).
    pub config_text: String,
}

/// A table created by `create` (`{table}` = its unique name) and one model over it: `body` is the
/// model's `[[models]]` lines after `name` (`{table}` again stands for the table).
pub async fn fixture_with(table_base: &str, create: &str, body: &str) -> Fixture {
    sluice_integration_tests::telemetry();
    require_kafka();
    let db = require_postgres().await;
    let table = unique(table_base);
    let prefix = unique("itd");
    let model = unique("members");
    db.batch_execute(&create.replace("{table}", &table)).await.unwrap();
    std::env::set_var("SLUICE_IT_WAREHOUSE_URL", sluice_integration_tests::postgres_url());
    let text = format!(
        "\n{}\n[[models]]\nname = \"{model}\"\n{}\n",
        toml_text::services(&prefix, "SLUICE_IT_WAREHOUSE_URL"),
        body.replace("{table}", &table),
    );
    let config = Arc::new(Config::parse("integration-test.toml", &text).expect("test config is valid"));
    Fixture { config, table, db, prefix, model, config_text: text }
}

/// A table `(id bigint primary key, email text, tier text, ltv numeric(10,2))` and a model in
/// `mode` over `source` (default: the table), `batch_rows = 3` so runs span several transactions.
pub async fn fixture(mode: &str, source: Option<&str>, gates: &str) -> Fixture {
    let relation = match source {
        Some(query) => format!("query = \"{query}\""),
        None => "table = \"{table}\"".to_string(),
    };
    let body = format!(
        "{relation}\nprimary_key = [\"id\"]\ncolumns = [\"id\", \"email\", \"tier\", \"ltv\"]\ndetection = {{ mode = \"{mode}\" }}\npoll_interval_ms = 200\nbatch_rows = 3\n{gates}"
    );
    fixture_with("it_diff", "CREATE TABLE {table} (id bigint PRIMARY KEY, email text, tier text, ltv numeric(10,2))", &body).await
}

/// A table `(id bigint primary key, note text, updated_at timestamptz, deleted_at timestamptz,
/// created_at timestamptz default now)` and a cursor model over it on `updated_at`; `detection`
/// is added to the model's detection table (e.g. `, lookback_ms = 60000`).
pub async fn cursor_fixture(detection: &str, batch_rows: usize) -> Fixture {
    let create = "CREATE TABLE {table} (id bigint PRIMARY KEY, note text, updated_at timestamptz NOT NULL, deleted_at timestamptz, \
                  created_at timestamptz NOT NULL DEFAULT clock_timestamp())";
    let body = format!(
        "table = \"{{table}}\"\nprimary_key = [\"id\"]\ncolumns = [\"id\", \"note\", \"updated_at\", \"deleted_at\", \"created_at\"]\n\
         detection = {{ mode = \"cursor\", cursor_column = \"updated_at\"{detection} }}\npoll_interval_ms = 100\nbatch_rows = {batch_rows}"
    );
    fixture_with("it_cursor", create, &body).await
}

/// The live rows of a [`cursor_fixture`] table (not soft-deleted), as the poller reads them.
pub async fn cursor_table_state(f: &Fixture) -> HashMap<i64, Vec<Value>> {
    let micros = |column: &str| format!("(extract(epoch FROM {column}) * 1000000)::bigint");
    let sql = format!("SELECT id, note, {}, {} FROM {} WHERE deleted_at IS NULL", micros("updated_at"), micros("created_at"), f.table);
    let rows = f.db.query(&sql, &[]).await.unwrap();
    rows.iter()
        .map(|r| {
            let note: Option<String> = r.get(1);
            let row = vec![
                Value::Long(r.get(0)),
                note.map_or(Value::Null, Value::String),
                Value::TimestampMicros(r.get(2)),
                Value::Null,
                Value::TimestampMicros(r.get(3)),
            ];
            (r.get::<_, i64>(0), row)
        })
        .collect()
}

pub fn start_poller(config: &Arc<Config>, confirm: &[&str]) -> (CancellationToken, JoinHandle<anyhow::Result<()>>) {
    let token = CancellationToken::new();
    let options = sluice_poller::RunOptions { confirm_large_change: confirm.iter().map(|s| s.to_string()).collect(), trigger_listen: None };
    let handle = tokio::spawn(sluice_poller::run_with(Arc::clone(config), None, options, Health::new(), token.clone()));
    (token, handle)
}

/// Cancel a poller started by [`start_poller`] and wait for it: it must stop cleanly.
pub async fn stop_poller(stop: CancellationToken, poller: JoinHandle<anyhow::Result<()>>) {
    stop.cancel();
    poller.await.unwrap().unwrap();
}

/// Run the poller until the change topic holds `rows` snapshot (`r`) events, then stop it.
pub async fn snapshot(f: &Fixture, rows: usize) {
    let (stop, poller) = start_poller(&f.config, &[]);
    eventually(&format!("snapshot of {rows} rows"), WAIT, || count(&decode_all(f), "r") == rows).await;
    stop_poller(stop, poller).await;
}

/// Run the poller on `config` until it stops by itself: it must, with an error, given in full.
pub async fn run_error(config: &Arc<Config>) -> String {
    let (_stop, poller) = start_poller(config, &[]);
    let error = tokio::time::timeout(WAIT, poller).await.expect("the model stops").unwrap().unwrap_err();
    format!("{error:#}")
}

/// A model in `mode` (`diff` or `warehouse_diff`) whose poller task is aborted at random points
/// (mid-scan, mid-transaction, between the transactions of one run) in 12 rounds while rows are
/// inserted, updated and deleted: afterwards the log is a valid history with no duplicate event
/// ([`replay`] checks each image against the one before), and its state equals the table.
pub async fn killed_at_random_points_loses_and_duplicates_nothing(mode: &str) {
    use rand::Rng;
    let f = fixture(mode, None, "").await;
    seed(&f, 1..=60).await;
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
        let _aborted = poller.await; // aborted mid-run on purpose
    }
    let (stop, poller) = start_poller(&f.config, &[]);
    let expected = table_state(&f).await;
    eventually("the topic's state equals the table", WAIT, || replay(&decode_all(&f)) == expected).await;
    stop_poller(stop, poller).await;
    assert_eq!(replay(&decode_all(&f)), expected);
}

/// (op code, id) of every event of the fixture's topic in (partition, offset) order, a tombstone
/// as ("tombstone", id of the preceding event of its key). Sorted explicitly: partitions are
/// read concurrently, so two reads of one topic return them in different orders.
pub fn events_of(f: &Fixture) -> Vec<(String, i64)> {
    let mut events = decode_all(f);
    events.sort_by_key(|(record, _)| (record.partition, record.offset));
    let mut last_id = HashMap::new();
    events
        .iter()
        .map(|(record, decoded)| match decoded {
            Some((op, before, after, _)) => {
                let id = id_of(after.as_ref().or(before.as_ref()).expect("an event has an image"));
                last_id.insert(record.key.clone(), id);
                (op.code().to_string(), id)
            }
            None => ("tombstone".to_string(), last_id[&record.key]),
        })
        .collect()
}

/// `events` (as [`events_of`] gives them) sorted, for comparisons where the order between keys
/// is not the subject.
pub fn sorted(mut events: Vec<(String, i64)>) -> Vec<(String, i64)> {
    events.sort();
    events
}

/// `sluice plan` of `model` with up to `samples` sample keys per kind, checked to count
/// (inserts, updates, deletes) = `expected`: the report, and its text.
pub async fn plan(config: &Config, model: &str, samples: usize, expected: (u64, u64, u64)) -> (sluice_poller::plan::PlanReport, String) {
    let report = sluice_poller::plan::plan(config, model, samples).await.unwrap();
    let text = report.to_string();
    assert_eq!((report.counts.inserts, report.counts.updates, report.counts.deletes), expected, "{text}");
    (report, text)
}

/// Rows `ids` with tier `free` and ltv `1.00` (see [`upsert`]).
pub async fn seed(f: &Fixture, ids: std::ops::RangeInclusive<i64>) {
    for id in ids {
        upsert(f, id, "free", "1.00").await;
    }
}

pub async fn upsert(f: &Fixture, id: i64, tier: &str, ltv: &str) {
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
pub type Decoded = Option<(Op, Option<Vec<Value>>, Option<Vec<Value>>, Option<Vec<String>>)>;

/// `read_topic`, retried while a just-created topic has no leader yet.
pub fn read_settled(topic: &str) -> Vec<ReadRecord> {
    for _ in 0..50 {
        if let Ok(records) = std::panic::catch_unwind(|| read_topic(topic)) {
            return records;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    read_topic(topic)
}

pub fn decode_all(f: &Fixture) -> Vec<(ReadRecord, Decoded)> {
    decode_topic(&f.prefix, &f.model)
}

/// Every record of a model's change topic, decoded with the writer schemas of the schema topic.
pub fn decode_topic(prefix: &str, model: &str) -> Vec<(ReadRecord, Decoded)> {
    // Change topic first: its schemas were committed with (or before) its events.
    let changes = read_settled(&naming::change_topic(prefix, model));
    let schemas: HashMap<String, String> = read_settled(&naming::schema_topic(prefix))
        .into_iter()
        .map(|r| (String::from_utf8(r.key.unwrap()).unwrap(), String::from_utf8(r.payload.unwrap()).unwrap()))
        .collect();
    let mut decoders: HashMap<String, EventDecoder> = HashMap::new();
    changes
        .into_iter()
        .map(|record| {
            let decoded = record.payload.as_deref().map(|payload| {
                let fingerprint = sluice_avro::fingerprint_of(payload).unwrap();
                let decoder = decoders.entry(fingerprint.clone()).or_insert_with(|| EventDecoder::new(&schemas[&fingerprint]).unwrap());
                let event = decoder.decode(payload).unwrap().event;
                (event.op, event.before, event.after, event.changed)
            });
            (record, decoded)
        })
        .collect()
}

pub fn id_of(row: &[Value]) -> i64 {
    match row[0] {
        Value::Long(id) => id,
        ref other => panic!("id is a long, got {other:?}"),
    }
}

/// What the `before` images of a mode carry.
#[derive(Debug, Clone, Copy)]
pub enum Images {
    /// Every `u` and `d` carries exactly the key's previous image: the snapshot modes, and
    /// cursor mode with its before images (the default), soft deletes and expiries included.
    Previous,
    /// Cursor mode with `before_images = false`: `u` carries none; a `d` carries the previous
    /// image (reconciliation of a hard delete) or, for a soft delete, the row as read with
    /// column `deleted` set.
    RowAsRead { deleted: Option<usize> },
}

/// Replay the change log and check it is a valid history: `r`/`c` only for an absent key, `u`
/// only for a present key with a different row and a `before` equal to the previous image, `d`
/// only for a present key, with a `before` equal to the previous image, and followed by its
/// tombstone. Returns the final state per id.
pub fn replay(events: &[(ReadRecord, Decoded)]) -> HashMap<i64, Vec<Value>> {
    replay_with(events, Images::Previous)
}

/// [`replay`] with the `before` rules of `images`.
pub fn replay_with(events: &[(ReadRecord, Decoded)], images: Images) -> HashMap<i64, Vec<Value>> {
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
                    match images {
                        Images::Previous => {
                            assert_eq!(before.as_ref(), Some(previous), "the update of id {} carries the previous image as before", id_of(&after))
                        }
                        Images::RowAsRead { .. } => assert_eq!(before, &None, "updates without before images carry none"),
                    }
                    state.insert(key, after);
                }
                Op::Delete => {
                    let previous = state.remove(&key).expect("delete of a present key");
                    let before = before.as_ref().expect("a delete carries a before image");
                    let soft = match images {
                        Images::RowAsRead { deleted: Some(column) } => !before[column].is_null(),
                        _ => false,
                    };
                    if soft {
                        assert_eq!(id_of(before), id_of(&previous), "a soft delete carries the deleted row");
                    } else {
                        assert_eq!(before, &previous, "delete carries the last image");
                    }
                    deleted_awaiting_tombstone.insert(key, ());
                }
            },
        }
    }
    // A read that stopped at a high watermark taken mid-transaction may end between a delete
    // and its tombstone (the next offset): allowed only for the last record of a partition.
    for key in deleted_awaiting_tombstone.keys() {
        let (last_delete, _) = events.iter().rev().find(|(r, _)| r.key.as_ref() == Some(key)).expect("the delete was read");
        let last_of_partition = events.iter().rev().find(|(r, _)| r.partition == last_delete.partition).expect("a record");
        assert_eq!(last_of_partition.0.offset, last_delete.offset, "every delete is followed by its tombstone");
    }
    state.into_values().map(|row| (id_of(&row), row)).collect()
}

pub async fn table_state(f: &Fixture) -> HashMap<i64, Vec<Value>> {
    let rows = f.db.query(&format!("SELECT id, email, tier, ltv::text FROM {}", f.table), &[]).await.unwrap();
    rows.iter()
        .map(|r| {
            let opt = |v: Option<String>| v.map_or(Value::Null, Value::String);
            let ltv: Option<String> = r.get(3);
            (r.get::<_, i64>(0), vec![Value::Long(r.get(0)), opt(r.get(1)), opt(r.get(2)), ltv.map_or(Value::Null, Value::DecimalText)])
        })
        .collect()
}

pub fn ops(events: &[(ReadRecord, Decoded)]) -> Vec<&'static str> {
    events.iter().map(|(_, d)| d.as_ref().map_or("tombstone", |(op, ..)| op.code())).collect()
}

pub fn count(events: &[(ReadRecord, Decoded)], code: &str) -> usize {
    ops(events).into_iter().filter(|op| *op == code).count()
}


pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The poller binary the crash tests SIGKILL: the one `ops/test.sh` builds before the tests
/// (`cargo build --workspace --bins`), found like every other service binary
/// ([`sluice_integration_tests::binary`], which honours `SLUICE_TEST_BIN_DIR`).
pub fn poller_binary() -> std::path::PathBuf {
    sluice_integration_tests::binary("sluice-poller")
}

/// Start the poller binary on `config`, logging to `log`.
pub fn start_binary(binary: &std::path::Path, config: &std::path::Path, log: &std::fs::File) -> std::process::Child {
    use std::process::{Command, Stdio};
    Command::new(binary)
        .args(["--config", config.to_str().unwrap(), "--ops-listen", "127.0.0.1:0", "--trigger-listen", "127.0.0.1:0"])
        .env("SLUICE_IT_WAREHOUSE_URL", sluice_integration_tests::postgres_url())
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log.try_clone().unwrap()))
        .spawn()
        .expect("start sluice-poller")
}

/// The crash tests' kill loop: start the poller binary `kills` times and SIGKILL it at a random
/// point each time. A quarter of the kills land in the first snapshot (resumed after the last
/// committed chunk); then the snapshot is let finish (until the log shows the first diff run)
/// and the rest land in incremental runs (state rebuild, scan, before images, commit).
pub async fn kill_at_random_points(binary: &std::path::Path, config: &std::path::Path, log_path: &std::path::Path, kills: u64, snapshot_deadline: Duration) {
    use rand::Rng as _;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path).unwrap();
    let snapshot_kills = kills / 4;
    for round in 0..kills {
        if round == snapshot_kills {
            let mut child = start_binary(binary, config, &log);
            let deadline = std::time::Instant::now() + snapshot_deadline;
            while !std::fs::read_to_string(log_path).unwrap_or_default().contains("diff run committed") {
                assert!(std::time::Instant::now() < deadline, "first snapshot did not complete (log: {})", log_path.display());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            child.kill().expect("SIGKILL");
            child.wait().unwrap();
        }
        let mut child = start_binary(binary, config, &log);
        // A restart takes ~1 s to fence and recover and ~2-3 s (debug build) to rebuild 100k
        // rows of state before its first run: the windows cover every phase.
        let window = if round < snapshot_kills { 300..3500 } else { 1500..7000 };
        let kill_after = Duration::from_millis(rand::rng().random_range(window));
        tokio::time::sleep(kill_after).await;
        child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
        child.wait().unwrap();
    }
}

/// Start the poller once more and wait until the replayed change topic equals `expected`;
/// returns the topic's records (each checked by [`replay`] as a valid history).
pub async fn converge(
    binary: &std::path::Path,
    config: &std::path::Path,
    log_path: &std::path::Path,
    prefix: &str,
    model: &str,
    expected: &HashMap<i64, Vec<Value>>,
) -> Vec<(ReadRecord, Decoded)> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path).unwrap();
    let mut child = start_binary(binary, config, &log);
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let state = tokio::task::block_in_place(|| replay(&decode_topic(prefix, model)));
        if &state == expected {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the topic's state did not converge to the table (log: {})", log_path.display());
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    tokio::task::block_in_place(|| decode_topic(prefix, model))
}

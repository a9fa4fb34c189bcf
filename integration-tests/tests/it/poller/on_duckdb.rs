//! The poller on DuckDB, the embedded warehouse: every detection mode end to end against the real
//! Kafka, the type mapping, the missing-file refusal, and the crash test — the poller binary
//! killed with SIGKILL at 20+ random points on a 100k-row model while another process inserts,
//! updates and deletes in the same file (DuckDB's one-writer lock is taken turn by turn).
//!
//! Built only with the `duckdb` feature (ops/test.sh turns it on).


use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::common::*;
use rand::Rng;
use sluice_core::config::Config;
use sluice_core::{ColumnType, Value};
use sluice_integration_tests::{require_kafka, unique};
use sluice_warehouse::duckdb::DuckDb;
use sluice_warehouse::{Warehouse, WarehouseError};

struct DuckFixture {
    config: Arc<Config>,
    config_text: String,
    path: PathBuf,
    prefix: String,
    model: String,
}

/// A DuckDB file with `members (id BIGINT PRIMARY KEY, email VARCHAR, tier VARCHAR, ltv
/// DECIMAL(10,2), updated_at TIMESTAMPTZ, created_at TIMESTAMPTZ)` and a model over it.
fn duck_fixture(detection: &str, columns: &str, batch_rows: usize) -> DuckFixture {
    sluice_integration_tests::telemetry();
    require_kafka();
    let dir = std::env::temp_dir().join(unique("sluice-duckdb"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("warehouse.duckdb");
    let connection = duckdb::Connection::open(&path).unwrap();
    connection
        .execute_batch(
            "CREATE TABLE members (id BIGINT PRIMARY KEY, email VARCHAR, tier VARCHAR, ltv DECIMAL(10,2), \
             updated_at TIMESTAMPTZ DEFAULT now(), created_at TIMESTAMPTZ DEFAULT now())",
        )
        .unwrap();
    drop(connection);
    let (prefix, model) = (unique("itduck"), unique("members"));
    let text = format!(
        r#"
[kafka]
bootstrap_servers = "{kafka}"
topic_prefix = "{prefix}"

[warehouse]
kind = "duckdb"
path = "{path}"

[[models]]
name = "{model}"
table = "members"
primary_key = ["id"]
columns = {columns}
detection = {detection}
poll_interval_ms = 200
batch_rows = {batch_rows}
"#,
        kafka = sluice_integration_tests::kafka_bootstrap(),
        path = path.display(),
    );
    let config = Arc::new(Config::parse("duckdb-test.toml", &text).expect("test config is valid"));
    DuckFixture { config, config_text: text, path, prefix, model }
}

const SNAPSHOT_COLUMNS: &str = r#"["id", "email", "tier", "ltv"]"#;

/// Run SQL on the fixture's file, waiting out the poller's turn with the lock.
async fn exec(path: &Path, sql: &str) {
    let (path, sql) = (path.to_path_buf(), sql.to_string());
    tokio::task::spawn_blocking(move || {
        let db = tokio::runtime::Handle::current().block_on(DuckDb::open(&path)).unwrap();
        db.run(|c| Ok(c.execute_batch(&sql))).unwrap().unwrap_or_else(|e| panic!("{sql}: {e}"));
    })
    .await
    .unwrap();
}

/// The table as the events carry it: id, email, tier, ltv (exact decimal text).
async fn duck_state(path: &Path) -> HashMap<i64, Vec<Value>> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let db = tokio::runtime::Handle::current().block_on(DuckDb::open(&path)).unwrap();
        db.run(|connection| {
            let mut statement = connection.prepare("SELECT id, email, tier, CAST(ltv AS VARCHAR) FROM members").unwrap();
            let rows = statement
                .query_map([], |r| {
                    let text = |v: Option<String>| v.map_or(Value::Null, Value::String);
                    let id: i64 = r.get(0)?;
                    let ltv: Option<String> = r.get(3)?;
                    Ok((id, vec![Value::Long(id), text(r.get(1)?), text(r.get(2)?), ltv.map_or(Value::Null, Value::DecimalText)]))
                })
                .unwrap();
            Ok(rows.map(Result::unwrap).collect())
        })
        .unwrap()
    })
    .await
    .unwrap()
}

async fn wait_for_events(f: &DuckFixture, n: usize) -> Vec<(sluice_integration_tests::ReadRecord, Decoded)> {
    let deadline = Instant::now() + WAIT;
    loop {
        let events = tokio::task::block_in_place(|| decode_topic(&f.prefix, &f.model));
        if events.len() >= n {
            return events;
        }
        assert!(Instant::now() < deadline, "expected {n} records, have {}: {:?}", events.len(), ops(&events));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Insert 10 rows, let the first snapshot through, then update two, delete one, insert one, and
/// check the exact sequence of events and that the replayed topic equals the table.
async fn snapshot_mode_round_trip(mode: &str) {
    let f = duck_fixture(&format!("{{ mode = \"{mode}\" }}"), SNAPSHOT_COLUMNS, 3);
    exec(&f.path, "INSERT INTO members (id, email, tier, ltv) SELECT i, 'm' || i || '@example.com', 'free', i * 1.25 FROM range(1, 11) t(i)").await;
    let (stop, poller) = start_poller(&f.config, &[]);
    let events = wait_for_events(&f, 10).await;
    assert_eq!(count(&events, "r"), 10, "first snapshot: {:?}", ops(&events));

    exec(&f.path, "UPDATE members SET tier = 'gold', ltv = 99999999.99 WHERE id IN (2, 3); DELETE FROM members WHERE id = 5; INSERT INTO members (id, email, tier, ltv) VALUES (11, 'Zoë@example.com', 'free', 0.01)").await;
    // 10 r + 2 u + d + tombstone + c
    let events = wait_for_events(&f, 15).await;
    tokio::time::sleep(Duration::from_millis(800)).await; // nothing more may arrive
    let events_after = tokio::task::block_in_place(|| decode_topic(&f.prefix, &f.model));
    assert_eq!(events_after.len(), events.len(), "no further events: {:?}", ops(&events_after));
    assert_eq!((count(&events, "u"), count(&events, "d"), count(&events, "c"), count(&events, "tombstone")), (2, 1, 1, 1), "{:?}", ops(&events));
    assert_eq!(replay(&events), duck_state(&f.path).await, "replayed topic equals the DuckDB table");
    let update = events.iter().find_map(|(_, d)| d.as_ref().filter(|(op, ..)| op.code() == "u")).unwrap();
    assert_eq!(update.2.as_ref().unwrap()[3], Value::DecimalText("99999999.99".into()), "decimals are exact");
    assert_eq!(update.3.as_deref(), Some(&["tier".to_string(), "ltv".to_string()][..]), "changed columns");
    stop.cancel();
    poller.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_diff_mode_emits_inserts_updates_and_deletes() {
    snapshot_mode_round_trip("diff").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_warehouse_diff_mode_keeps_its_snapshot_in_the_file() {
    snapshot_mode_round_trip("warehouse_diff").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_plan_of_a_warehouse_diff_model_is_read_only() {
    let f = duck_fixture(r#"{ mode = "warehouse_diff" }"#, SNAPSHOT_COLUMNS, 3);
    exec(&f.path, "INSERT INTO members (id, email, tier, ltv) SELECT i, 'm' || i || '@example.com', 'free', 1 FROM range(1, 5) t(i)").await;
    let report = sluice_poller::plan::plan(&f.config, &f.model, 5).await.unwrap();
    assert_eq!((report.counts.rows, report.counts.tracked, report.counts.inserts), (4, 0, 4), "{report}");
    let (stop, poller) = start_poller(&f.config, &[]);
    wait_for_events(&f, 4).await;
    stop.cancel();
    poller.await.unwrap().unwrap();
    exec(&f.path, "UPDATE members SET tier = 'gold' WHERE id = 2; DELETE FROM members WHERE id = 3; INSERT INTO members (id, email, tier, ltv) VALUES (9, 'nine', 'free', 1)").await;
    let report = sluice_poller::plan::plan(&f.config, &f.model, 5).await.unwrap();
    let text = report.to_string();
    assert_eq!((report.counts.inserts, report.counts.updates, report.counts.deletes), (1, 1, 1), "{text}");
    assert!(text.contains("  inserts (c): 1\n    {\"id\":9}\n  updates (u): 1\n    {\"id\":2}\n  deletes (d): 1\n    {\"id\":3}\n"), "{text}");
    assert_eq!(tokio::task::block_in_place(|| decode_topic(&f.prefix, &f.model)).len(), 4, "plan emitted nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_cursor_mode_sees_inserts_and_updates() {
    let f = duck_fixture(
        r#"{ mode = "cursor", cursor_column = "updated_at", created_column = "created_at" }"#,
        r#"["id", "email", "tier", "ltv", "updated_at", "created_at"]"#,
        3,
    );
    exec(&f.path, "INSERT INTO members (id, email, tier, ltv) SELECT i, 'm' || i || '@example.com', 'free', 1 FROM range(1, 6) t(i)").await;
    let (stop, poller) = start_poller(&f.config, &[]);
    let events = wait_for_events(&f, 5).await;
    assert_eq!(count(&events, "r"), 5, "{:?}", ops(&events));
    exec(&f.path, "UPDATE members SET tier = 'gold', updated_at = now() WHERE id = 2").await;
    exec(&f.path, "INSERT INTO members (id, email, tier, ltv) VALUES (6, 'six@example.com', 'free', 2)").await;
    let events = wait_for_events(&f, 7).await;
    assert_eq!((count(&events, "u"), count(&events, "c")), (1, 1), "{:?}", ops(&events));
    stop.cancel();
    poller.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_types_are_mapped_deliberately_and_unmapped_ones_refused_by_name() {
    let f = duck_fixture(r#"{ mode = "diff" }"#, SNAPSHOT_COLUMNS, 3);
    exec(
        &f.path,
        "CREATE TABLE typed (id INTEGER PRIMARY KEY, amount DECIMAL(18,4), born DATE, seen TIMESTAMPTZ, local_ts TIMESTAMP, \
         uid UUID, raw BLOB, flag BOOLEAN, name VARCHAR, small SMALLINT, ratio DOUBLE, tags VARCHAR[]); \
         INSERT INTO typed VALUES (1, -12345678901234.5678, DATE '1969-12-31', TIMESTAMPTZ '2026-11-25 10:00:00.123456+00', \
         TIMESTAMP '2026-11-25 10:00:00', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00\\xFF'::BLOB, true, 'Grüße, 東京', 7, 0.5, ['a']); \
         INSERT INTO typed (id) VALUES (2)",
    )
    .await;
    let mut model = f.config.models[0].clone();
    model.table = Some("typed".into());
    model.columns = ["id", "amount", "born", "seen", "local_ts", "uid", "raw", "flag", "name", "small", "ratio"].map(String::from).to_vec();
    let db = DuckDb::open(&f.path).await.unwrap();
    let schema = db.describe(&model).await.unwrap();
    let types: Vec<ColumnType> = schema.columns.iter().map(|c| c.ty).collect();
    assert_eq!(
        types,
        vec![
            ColumnType::Int,
            ColumnType::Decimal { precision: 18, scale: 4 },
            ColumnType::Date,
            ColumnType::TimestampMicros { utc: true },
            ColumnType::TimestampMicros { utc: false },
            ColumnType::Uuid,
            ColumnType::Bytes,
            ColumnType::Boolean,
            ColumnType::String,
            ColumnType::Int,
            ColumnType::Double,
        ]
    );
    let rows = db.fetch_by_key(&model, &schema, None, 10).await.unwrap();
    assert_eq!(
        rows[0],
        vec![
            Value::Int(1),
            Value::DecimalText("-12345678901234.5678".into()),
            Value::Date(-1),
            Value::TimestampMicros(1_795_600_800_123_456),
            Value::TimestampMicros(1_795_600_800_000_000),
            Value::Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
            Value::Bytes(vec![0, 255]),
            Value::Boolean(true),
            Value::String("Grüße, 東京".into()),
            Value::Int(7),
            Value::Double(0.5),
        ]
    );
    assert!(rows[1][1..].iter().all(|v| *v == Value::Null), "NULLs stay NULL: {:?}", rows[1]);
    // Keyset paging after a key and the key check see the same rows.
    assert_eq!(db.fetch_by_key(&model, &schema, Some(&[Value::Int(1)]), 10).await.unwrap().len(), 1);
    assert_eq!(db.check_keys(&model, &schema).await.unwrap().rows, 2);

    model.columns.push("tags".into());
    let refused = db.describe(&model).await.unwrap_err().to_string();
    assert!(refused.contains("column \"tags\" has DuckDB type VARCHAR[], which sluice does not map"), "{refused}");
}

#[tokio::test]
async fn a_missing_duckdb_file_is_refused_never_created() {
    let path = std::env::temp_dir().join(unique("no-such-warehouse")).join("absent.duckdb");
    let error = DuckDb::open(&path).await.unwrap_err();
    assert!(matches!(error, WarehouseError::Unavailable(_)), "{error:?}");
    assert!(error.to_string().contains("does not exist"), "{error}");
    assert!(!path.exists(), "no empty warehouse was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duckdb_poller_binary_killed_with_sigkill_at_random_points_loses_and_duplicates_nothing() {
    let kills = env_or("SLUICE_CRASH_KILLS", 20);
    let rows = env_or("SLUICE_CRASH_ROWS", 100_000) as i64;
    let binary = tokio::task::spawn_blocking(poller_binary).await.unwrap();
    let f = duck_fixture(r#"{ mode = "diff" }"#, SNAPSHOT_COLUMNS, 5000);
    exec(&f.path, &format!("INSERT INTO members (id, email, tier, ltv) SELECT i, 'm' || i || '@example.com', 'free', (i % 1000) / 100 FROM range(1, {}) t(i)", rows + 1)).await;
    let config = f.path.with_extension("toml");
    std::fs::write(&config, f.config_text.replace("poll_interval_ms = 200", "poll_interval_ms = 300")).unwrap();
    let log_path = f.path.with_extension("log");

    // Concurrent writer (another connection, taking turns with the poller for the file lock):
    // inserts, updates and deletes in small transactions until told to stop.
    let writer_stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let (path, stop) = (f.path.clone(), writer_stop.clone());
        tokio::spawn(async move {
            let mut next = rows + 1;
            let mut changes = 0u64;
            while !stop.is_cancelled() {
                let mut statements = Vec::new();
                {
                    let mut rng = rand::rng();
                    for _ in 0..5 {
                        let id = rng.random_range(1..next);
                        statements.push(match rng.random_range(0..3) {
                            0 => {
                                next += 1;
                                format!("INSERT INTO members (id, email, tier, ltv) VALUES ({}, 'new', 'free', 1)", next - 1)
                            }
                            1 => format!("UPDATE members SET tier = md5(random()::VARCHAR) WHERE id = {id}"),
                            _ => format!("DELETE FROM members WHERE id = {id}"),
                        });
                    }
                }
                exec(&path, &format!("BEGIN; {}; COMMIT", statements.join("; "))).await;
                changes += statements.len() as u64;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            changes
        })
    };

    kill_at_random_points(&binary, &config, &log_path, kills, Duration::from_secs(300)).await;
    writer_stop.cancel();
    let changes = writer.await.unwrap();

    let expected = duck_state(&f.path).await;
    let events = converge(&binary, &config, &log_path, &f.prefix, &f.model, &expected).await;
    assert_eq!(replay(&events), expected, "compacted state equals the table after {kills} SIGKILLs and {changes} concurrent changes");
    eprintln!("duckdb: {} events, {} rows, {kills} kills, {changes} concurrent changes", events.len(), expected.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_warehouse_exec_creates_only_when_asked_and_runs_sql_on_the_file() {
    let f = duck_fixture(r#"{ mode = "diff" }"#, SNAPSHOT_COLUMNS, 3);
    let fresh = f.path.with_file_name("fresh.duckdb");
    let config = f.path.with_extension("exec.toml");
    std::fs::write(&config, f.config_text.replace(&f.path.display().to_string(), &fresh.display().to_string())).unwrap();
    let exec_cli = |args: &[&str]| {
        let mut all = vec!["warehouse", "exec", "--config", config.to_str().unwrap()];
        all.extend_from_slice(args);
        std::process::Command::new(sluice_integration_tests::binary("sluice")).args(&all).output().expect("run sluice warehouse exec")
    };
    let refused = exec_cli(&["--sql", "SELECT 1"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("does not exist"), "{stderr}");
    assert!(!fresh.exists(), "without --create nothing is created");

    let created = exec_cli(&["--create", "--sql", "CREATE TABLE members (id BIGINT PRIMARY KEY, email VARCHAR, tier VARCHAR, ltv DECIMAL(10,2))"]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let inserted = exec_cli(&["--sql", "INSERT INTO members VALUES (1, 'a@example.com', 'free', 2.50), (2, 'b@example.com', 'pro', 0)"]);
    assert!(inserted.status.success(), "{}", String::from_utf8_lossy(&inserted.stderr));
    let state = duck_state(&fresh).await;
    assert_eq!(state.len(), 2);
    assert_eq!(state[&1][3], Value::DecimalText("2.50".into()));

    let bad = exec_cli(&["--sql", "INSERT INTO no_such_table VALUES (1)"]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && stderr.contains("no_such_table"), "a SQL error is reported with its text: {stderr}");
}

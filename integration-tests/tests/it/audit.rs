//! The audit log and the warehouse writeback (docs/audit.md), end to end through the real broker
//! and PostgreSQL: run records on `<prefix>.runs` whose counts match what happened, one
//! `sluice_sync_log` row per record with its status, and a writeback that falls behind while its
//! table is locked — delivery completing anyway — and catches up afterwards, exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sluice_avro::audit::{decode_run_record, decode_sync_outcome, RunRecord};
use sluice_core::naming;
use sluice_integration_tests::receiver::{self, Received};
use sluice_integration_tests::{eventually, pipeline, postgres_url, read_topic, start_poller, start_sink, stop_pipeline, unique, Pipeline, Spec};
use sluice_telemetry::ops::Health;

const WAIT: Duration = Duration::from_secs(90);

/// The walking skeleton's pipeline with `writeback = true` on `crm` and a sync-log table of its own.
async fn fixture(hook_url: &str, table: &str) -> Pipeline {
    // `kafka_extra` ends `[kafka]`: a `[writeback]` table may follow it.
    let writeback = format!("\n[writeback]\ntable = \"{table}\"\nbatch_linger_ms = 100\n");
    pipeline(
        hook_url,
        Spec {
            kafka_extra: &writeback,
            columns_sql: "id bigint PRIMARY KEY, email text, name text, updated_at timestamptz NOT NULL, created_at timestamptz NOT NULL",
            columns: &["id", "email", "name", "updated_at", "created_at"],
            destination_extra: "writeback = true\nbatch_max_records = 5\nbatch_linger_ms = 50",
            webhook_extra: "timeout_ms = 5000",
            sync: "mode = \"upsert\"\nfields = { email = \"email\", name = \"name\" }",
            ..Spec::default()
        },
    )
    .await
}

async fn insert(f: &Pipeline, ids: impl IntoIterator<Item = i64>) {
    for id in ids {
        let email = if id == 3 { "reject-me@invalid".to_string() } else { format!("c{id}@example.com") };
        f.db.execute(&format!("INSERT INTO {} VALUES ($1, $2, $3, clock_timestamp(), clock_timestamp())", f.table), &[&id, &email, &format!("Customer {id}")])
            .await
            .unwrap();
    }
}

/// (record id, status, error class, vendor status, key) of every sync-log row, by record id.
type LogRows = BTreeMap<String, (String, Option<String>, Option<i32>, Option<String>)>;

async fn sync_log(table: &str) -> LogRows {
    let db = sluice_integration_tests::require_postgres().await;
    let rows = match db.query(&format!("SELECT record_id, status, error_class, vendor_status, record_key, destination, model FROM {table}"), &[]).await {
        Ok(rows) => rows,
        // Not created yet: the writeback creates it with its first batch.
        Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Vec::new(),
        Err(error) => panic!("reading the sync log: {error}"),
    };
    let mut out = BTreeMap::new();
    for row in rows {
        assert_eq!((row.get::<_, String>(5), row.get::<_, String>(6)), ("crm".to_string(), "customers".to_string()));
        out.insert(row.get(0), (row.get(1), row.get(2), row.get(3), row.get(4)));
    }
    out
}

/// Wait until the sync log holds `n` rows.
async fn sync_log_reaches(table: &str, n: usize) -> LogRows {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let rows = sync_log(table).await;
        if rows.len() >= n {
            return rows;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {n} sync-log rows; {} so far", rows.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The ids of the change records, `topic/partition/offset` by key id (the latest change of each).
fn record_ids(prefix: &str) -> BTreeMap<i64, String> {
    let topic = naming::change_topic(prefix, "customers");
    // One read for both: two reads may order the partitions differently.
    let records = read_topic(&topic);
    let events = sluice_integration_tests::decode_events(prefix, &records);
    records
        .iter()
        .filter(|r| r.payload.is_some())
        .zip(events)
        .map(|(r, e)| {
            let Some(sluice_core::Value::Long(id)) = e.current("id") else { panic!("an id: {:?}", e.current("id")) };
            (*id, format!("{topic}/{}/{}", r.partition, r.offset))
        })
        .collect()
}

fn delivered(received: &Received) -> BTreeSet<i64> {
    received.records().iter().map(|r| r["key"]["id"].as_i64().expect("key.id")).collect()
}

/// The expected sync log of rows `ids` (row 3 refused with 422).
fn expected_log(prefix: &str, ids: impl IntoIterator<Item = i64>) -> LogRows {
    let by_id = record_ids(prefix);
    ids.into_iter()
        .map(|id| {
            let row = if id == 3 { ("refused".to_string(), Some("permanent".to_string()), Some(422)) } else { ("applied".to_string(), None, None) };
            (by_id[&id].clone(), (row.0, row.1, row.2, Some(format!("{{\"id\":{id}}}"))))
        })
        .collect()
}

fn run_records(prefix: &str) -> Vec<(String, RunRecord)> {
    read_topic(&naming::runs_topic(prefix))
        .into_iter()
        .map(|r| (String::from_utf8(r.key.expect("keyed")).unwrap(), decode_run_record(&r.payload.expect("a value")).expect("a run record")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_and_batches_leave_exact_records_and_each_record_one_sync_log_row() {
    let (url, received) = receiver::start().await;
    let table = unique("it_sync_log");
    let f = fixture(&url, &table).await;
    insert(&f, 1..=5).await;
    let (poller_stop, poller) = start_poller(&f.config);
    let (sink_stop, sink) = start_sink(&f.config, Health::new());
    eventually("rows 1, 2, 4, 5 delivered", WAIT, || delivered(&received).len() == 4).await;
    let log = sync_log_reaches(&table, 5).await;
    stop_pipeline(sink_stop, sink, poller_stop, poller).await;

    assert_eq!(log, expected_log(&f.prefix, 1..=5), "one row per record, statuses as delivered");
    let records = run_records(&f.prefix);
    let poller_runs: Vec<&RunRecord> = records.iter().filter(|(k, _)| k == "poller/customers").map(|(_, r)| r).collect();
    let batches: Vec<&RunRecord> = records.iter().filter(|(k, _)| k == "sink/crm").map(|(_, r)| r).collect();
    assert_eq!(poller_runs.len() + batches.len(), records.len(), "only poller/customers and sink/crm keys: {records:?}");
    // The poller: five snapshot reads, in transactions each naming its run id; every run `ok`.
    let sum = |f: fn(&sluice_avro::audit::PollerRun) -> i64| poller_runs.iter().map(|r| f(r.poller.as_ref().unwrap())).sum::<i64>();
    assert_eq!((sum(|p| p.reads), sum(|p| p.creates), sum(|p| p.updates), sum(|p| p.deletes)), (5, 0, 0, 0));
    let poller_run_ids: BTreeSet<&String> = poller_runs.iter().flat_map(|r| &r.poller.as_ref().unwrap().run_ids).collect();
    assert_eq!(sum(|p| p.transactions), poller_run_ids.len() as i64, "one run id per committed transaction here");
    assert!(poller_runs.iter().all(|r| r.outcome == "ok" && r.error.is_none() && r.started_ms <= r.finished_ms), "{poller_runs:?}");
    // The sink: five records sent, four applied, one refused; the runs they carried are the poller's.
    let batch_sum = |f: fn(&sluice_avro::audit::SinkBatch) -> i64| batches.iter().map(|r| f(r.sink.as_ref().unwrap())).sum::<i64>();
    assert_eq!((batch_sum(|b| b.records), batch_sum(|b| b.applied), batch_sum(|b| b.refused)), (5, 4, 1));
    assert!(batches.iter().all(|r| r.outcome == "ok"), "{batches:?}");
    let refusals: Vec<&str> = batches.iter().filter_map(|r| r.error.as_deref()).collect();
    assert_eq!(refusals, ["refused: permanent/422 x1"]);
    for batch in &batches {
        assert!(batch.sink.as_ref().unwrap().run_ids.iter().all(|id| poller_run_ids.contains(id)), "{batch:?}");
    }
    // Every outcome names a batch of the run records and a run of the poller.
    let batch_ids: BTreeSet<&String> = batches.iter().map(|r| &r.id).collect();
    let outcomes = read_topic(&naming::outcomes_topic(&f.prefix, "crm"));
    assert_eq!(outcomes.len(), 5, "one outcome per record");
    for outcome in outcomes {
        let outcome = decode_sync_outcome(&outcome.payload.unwrap()).unwrap();
        assert!(batch_ids.contains(&outcome.batch_id) && poller_run_ids.contains(outcome.run_id.as_ref().unwrap()), "{outcome:?}");
    }
}

/// Holds `ACCESS EXCLUSIVE` on the sync-log table until dropped (rolled back with the session).
async fn lock_table(table: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    client.batch_execute(&format!("BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")).await.expect("lock the sync log");
    client
}

/// Wait until the writeback's upsert into `table` is waiting for the table's lock.
async fn writer_waits_on_the_lock(db: &tokio_postgres::Client, table: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let statement = format!("INSERT INTO \"{table}\"%");
    loop {
        let waiting: i64 = db
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1", &[&statement])
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the writeback never tried to write into the locked sync log");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_locked_sync_log_holds_up_no_delivery_and_the_writeback_catches_up_exactly() {
    let (url, received) = receiver::start().await;
    let table = unique("it_sync_log");
    let f = fixture(&url, &table).await;
    // The table as docs/audit.md gives it, created by an analyst beforehand, then locked.
    f.db.batch_execute(&include_str!("../../../docs/audit.md").split("```sql\n").nth(1).unwrap().split("```").next().unwrap().replace("sluice_sync_log", &table))
        .await
        .expect("the documented DDL");
    let lock = lock_table(&table).await;
    insert(&f, 1..=5).await;
    let (poller_stop, poller) = start_poller(&f.config);
    let (sink_stop, sink) = start_sink(&f.config, Health::new());
    eventually("rows 1, 2, 4, 5 delivered while the sync log is locked", WAIT, || delivered(&received).len() == 4).await;
    eventually("the five outcomes published while the sync log is locked", WAIT, || read_topic(&naming::outcomes_topic(&f.prefix, "crm")).len() == 5).await;
    writer_waits_on_the_lock(&f.db, &table).await;
    drop(lock);
    let log = sync_log_reaches(&table, 5).await;
    assert_eq!(log, expected_log(&f.prefix, 1..=5), "caught up: one row per record");
    // More rows after the catch-up: their rows join the others, none twice.
    insert(&f, 6..=7).await;
    eventually("rows 6 and 7 delivered", WAIT, || delivered(&received).len() == 6).await;
    let log = sync_log_reaches(&table, 7).await;
    stop_pipeline(sink_stop, sink, poller_stop, poller).await;
    assert_eq!(log, expected_log(&f.prefix, 1..=7), "exactly one row per record");
    let db = sluice_integration_tests::require_postgres().await;
    let count: i64 = db.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0);
    assert_eq!(count, 7, "no duplicates");
}

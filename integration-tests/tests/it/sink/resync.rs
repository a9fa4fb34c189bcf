//! `sluice resync` against the real broker and PostgreSQL: after rows were hard-deleted from a
//! cursor model (which its polls cannot see), the plan names exactly those keys and writes
//! nothing; the execution leaves the change topic's compacted state (latest record per key,
//! tombstones removing keys) equal to the table; and the poller of a second model, in the same
//! process, keeps delivering meanwhile; the resynced model's own poller, fenced, either starts
//! over from the committed state or stops that model, and the topic stays equal to the table.

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_core::naming;
use sluice_integration_tests::{decode_events, eventually, pipeline, read_topic, unique, ReadRecord};
use sluice_kafka::headers;
use sluice_telemetry::ops::Health;

use super::common::{insert, insert_into, sluice, spec, COLUMNS, COLUMNS_SQL, WAIT};

/// The second model's table and its TOML (a model and a sync to `crm`).
fn orders_model(table: &str) -> String {
    let columns = COLUMNS.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", ");
    format!(
        r#"
[[models]]
name = "orders"
table = "{table}"
primary_key = ["id"]
columns = [{columns}]
detection = {{ mode = "cursor", cursor_column = "updated_at", created_column = "created_at" }}
poll_interval_ms = 200

[[syncs]]
model = "orders"
destination = "crm"
fields = {{ v = "v" }}
"#
    )
}

/// The compacted state of `records`: per key (`id`), the `(email, v)` of its latest event; a
/// tombstone removes the key.
fn compacted(prefix: &str, records: &[ReadRecord]) -> BTreeMap<i64, (String, i64)> {
    let mut by_key: BTreeMap<Vec<u8>, &ReadRecord> = BTreeMap::new();
    for record in records {
        by_key.insert(record.key.clone().expect("keyed"), record);
    }
    let mut state = BTreeMap::new();
    for record in by_key.into_values().filter(|r| r.payload.is_some()) {
        let event = decode_events(prefix, std::slice::from_ref(record)).remove(0);
        let after = event.event.after.as_ref().expect("the latest event of a live key has an image");
        let json = |c: usize| after[c].to_json();
        state.insert(json(0).as_i64().unwrap(), (json(1).as_str().unwrap().to_string(), json(2).as_i64().unwrap()));
    }
    state
}

/// The table's rows, as `compacted` shows them.
async fn table_state(db: &tokio_postgres::Client, table: &str) -> BTreeMap<i64, (String, i64)> {
    let rows = db.query(&format!("SELECT id, email, v::bigint FROM {table}"), &[]).await.unwrap();
    rows.iter().map(|r| (r.get(0), (r.get(1), r.get(2)))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resync_makes_the_compacted_topic_equal_to_the_table_while_another_model_keeps_flowing() {
    let orders = unique("it_orders");
    let extra = orders_model(&orders);
    // No destination runs here: the change topics are what is checked.
    let p = pipeline("http://127.0.0.1:9/hook", spec(&format!("fields = {{ v = \"v\" }}\n{extra}"))).await;
    p.db.batch_execute(&format!("CREATE TABLE {orders} ({COLUMNS_SQL})")).await.unwrap();
    let customers_topic = naming::change_topic(&p.prefix, "customers");
    let orders_topic = naming::change_topic(&p.prefix, "orders");

    insert(&p, 1, 10).await;
    insert_into(&p.db, &orders, 1, 5).await;
    // The poller of both models, in one process, with its readiness in hand.
    let health = Health::new();
    let poller_stop = tokio_util::sync::CancellationToken::new();
    let poller = tokio::spawn(sluice_poller::run(Arc::clone(&p.config), None, Arc::clone(&health), poller_stop.clone()));
    eventually("10 customers and 5 orders on their topics", WAIT, || read_topic(&customers_topic).len() == 10 && read_topic(&orders_topic).len() == 5).await;

    // Hard deletes: a cursor model never sees them. Key 5 changes, which the poller does see.
    p.db.execute(&format!("DELETE FROM {} WHERE id IN (3, 7)", p.table), &[]).await.unwrap();
    p.db.execute(&format!("UPDATE {} SET v = 2, updated_at = clock_timestamp() WHERE id = 5", p.table), &[]).await.unwrap();
    eventually("key 5's update on the topic", WAIT, || read_topic(&customers_topic).len() == 11).await;
    let drifted = compacted(&p.prefix, &read_topic(&customers_topic));
    assert_eq!(drifted.len(), 10, "the topic still holds the deleted keys: {drifted:?}");

    // The plan: what would be emitted, and nothing written.
    let plan = sluice(&p, &["resync", "customers", "--json"]).await;
    eprintln!("resync plan: {}", plan.json);
    assert_eq!(plan.code, 0, "{plan:?}");
    let j = &plan.json;
    assert_eq!((j["executed"].as_bool(), j["rows"].as_u64(), j["topic_keys"].as_u64(), j["deletes"].as_u64()), (Some(false), Some(8), Some(10), Some(2)), "{j}");
    let mut samples: Vec<i64> = j["delete_samples"].as_array().unwrap().iter().map(|k| k["id"].as_i64().unwrap()).collect();
    samples.sort();
    assert_eq!(samples, vec![3, 7], "{j}");
    assert_eq!(read_topic(&customers_topic).len(), 11, "the plan wrote nothing");

    // Orders keep flowing before, during and after the resync.
    insert_into(&p.db, &orders, 6, 7).await;
    let done = sluice(&p, &["resync", "customers", "--execute", "--json"]).await;
    eprintln!("resync execute: {}", done.json);
    assert_eq!(done.code, 0, "{done:?}");
    let j = &done.json;
    assert_eq!((j["executed"].as_bool(), j["rows"].as_u64(), j["deletes"].as_u64(), j["events"].as_u64()), (Some(true), Some(8), Some(2), Some(10)), "{j}");
    let run_id = j["run_id"].as_str().expect("a run id").to_string();
    insert_into(&p.db, &orders, 8, 9).await;
    eventually("orders 6..=9 on their topic", WAIT, || read_topic(&orders_topic).len() == 9).await;
    assert!(!poller.is_finished(), "the poller keeps running the other model");

    // Exact accounting of what the resync wrote: 8 snapshot reads, 2 deletes and their tombstones.
    let records = read_topic(&customers_topic);
    let resync: Vec<&ReadRecord> = records.iter().filter(|r| r.header(headers::RUN_ID) == Some(run_id.as_str())).collect();
    let ops = |op: &str, payload: bool| resync.iter().filter(|r| r.header(headers::OP) == Some(op) && r.payload.is_some() == payload).count();
    assert_eq!((resync.len(), ops("r", true), ops("d", true), ops("d", false)), (12, 8, 2, 2), "{resync:?}");
    assert_eq!(records.len(), 11 + 12, "nothing else was written to the customers topic");
    assert_eq!(compacted(&p.prefix, &records), table_state(&p.db, &p.table).await, "the compacted topic equals the table");

    // The other model: each of its 9 rows exactly once, equal to its table.
    let orders_records = read_topic(&orders_topic);
    assert_eq!(orders_records.len(), 9);
    assert_eq!(compacted(&p.prefix, &orders_records), table_state(&p.db, &orders).await);

    // The customers model's poller was fenced by the resync: its next transaction fails. The
    // model loop then starts over from the committed state (the fence reaches it as a purged,
    // retryable transaction) and emits the change on top of the resynced state, or, when the
    // fence is reported as fatal, stops the model (readiness names it) without writing. Both
    // keep the compacted topic equal to the table; the orders model runs on either way.
    p.db.execute(&format!("UPDATE {} SET v = 3, updated_at = clock_timestamp() WHERE id = 1", p.table), &[]).await.unwrap();
    let stopped = || health.not_ready_reason().is_some_and(|r| r.contains("customers"));
    eventually("the fenced customers model restarted or stopped", WAIT, || stopped() || read_topic(&customers_topic).len() == 24).await;
    let records = read_topic(&customers_topic);
    match stopped() {
        true => assert_eq!(records.len(), 23, "a stopped model wrote nothing"),
        false => assert_eq!(compacted(&p.prefix, &records), table_state(&p.db, &p.table).await, "the restarted poller continued from the resync"),
    }
    insert_into(&p.db, &orders, 10, 10).await;
    eventually("order 10 on its topic", WAIT, || read_topic(&orders_topic).len() == 10).await;
    poller_stop.cancel();
    let outcome = poller.await.expect("poller task does not panic");
    assert_eq!(outcome.is_err(), stopped(), "only a stopped model is reported at shutdown: {outcome:?}");
}

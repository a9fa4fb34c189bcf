//! End to end through the real broker and PostgreSQL: warehouse rows → poller → Kafka → sink →
//! webhook receiver, with exact accounting of what arrived and what was dead-lettered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::naming;
use sluice_integration_tests::receiver::{self, Behaviour, Received};
use sluice_integration_tests::{eventually, pipeline, read_topic, start_poller, start_sink, Pipeline, Spec};
use sluice_telemetry::ops::Health;

const WAIT: Duration = Duration::from_secs(90);

type Fixture = Pipeline;

async fn fixture(hook_url: &str) -> Fixture {
    fixture_with(hook_url, None, "").await
}

/// The walking skeleton's pipeline on another broker (`bootstrap_servers`) and with `[kafka]`
/// lines of its own (security settings): `secure_kafka` runs it over TLS and SASL_SSL.
pub(crate) async fn fixture_with(hook_url: &str, bootstrap_servers: Option<&str>, kafka_extra: &str) -> Fixture {
    pipeline(
        hook_url,
        Spec {
            bootstrap_servers,
            kafka_extra,
            columns_sql: "id bigint PRIMARY KEY, email text, name text, updated_at timestamptz NOT NULL, created_at timestamptz NOT NULL",
            columns: &["id", "email", "name", "updated_at", "created_at"],
            model_extra: "batch_rows = 7",
            destination_extra: "batch_max_records = 5\nbatch_linger_ms = 50\nretry = { initial_backoff_ms = 20, max_backoff_ms = 200, max_attempts = 5 }",
            webhook_extra: "timeout_ms = 5000",
            sync: "mode = \"upsert\"\nfields = { email = \"email\", name = \"name\" }",
            kind: None,
            detection: None,
        },
    )
    .await
}

/// Insert rows `ids` (each in its own statement, so each gets its own timestamp order).
pub(crate) async fn insert(f: &Fixture, ids: impl IntoIterator<Item = i64>, email: impl Fn(i64) -> String) {
    for id in ids {
        f.db.execute(
            &format!("INSERT INTO {} VALUES ($1, $2, $3, clock_timestamp(), clock_timestamp())", f.table),
            &[&id, &email(id), &format!("Customer {id}")],
        )
        .await
        .unwrap();
    }
}

/// After the first ten rows (row 4 refused): updates to three rows, then new rows 11-13 after
/// them; waits until all of it is delivered (the refused row does not hold them up).
pub(crate) async fn update_and_add(f: &Fixture, received: &Received) {
    for id in [2i64, 5, 9] {
        f.db.execute(&format!("UPDATE {} SET name = $2, updated_at = clock_timestamp() WHERE id = $1", f.table), &[&id, &format!("Renamed {id}")])
            .await
            .unwrap();
    }
    insert(f, 11..=13, |id| format!("c{id}@example.com")).await;
    eventually("updates and new rows delivered", WAIT, || {
        let by_id = names_by_id(received);
        by_id.len() == 12 && [2, 5, 9].iter().all(|id| by_id[id].len() == 2)
    })
    .await;
}

/// Per id, the names received, in arrival order.
pub(crate) fn names_by_id(received: &Received) -> HashMap<i64, Vec<String>> {
    let mut out: HashMap<i64, Vec<String>> = HashMap::new();
    for record in received.records() {
        let id = record["key"]["id"].as_i64().expect("key.id");
        out.entry(id).or_default().push(record["fields"]["name"].as_str().unwrap_or_default().to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_arrive_exactly_once_in_key_order_and_rejects_are_dead_lettered() {
    let (url, received) = receiver::start().await;
    let f = fixture(&url).await;
    // Ten rows; row 4 is one the destination refuses (422).
    insert(&f, 1..=10, |id| if id == 4 { "reject-me@invalid".into() } else { format!("c{id}@example.com") }).await;

    let (poller_stop, poller) = start_poller(&f.config);
    let sink_health = Health::new();
    let (sink_stop, sink) = start_sink(&f.config, Arc::clone(&sink_health));

    eventually("9 snapshot rows delivered", WAIT, || names_by_id(&received).len() == 9).await;
    assert!(sink_health.not_ready_reason().is_none(), "sink is ready while delivering");

    update_and_add(&f, &received).await;

    // Restart the poller: it must continue after its committed position, re-emitting nothing.
    poller_stop.cancel();
    poller.await.unwrap().expect("poller stops cleanly");
    let (poller_stop, poller) = start_poller(&f.config);
    insert(&f, 14..=15, |id| format!("c{id}@example.com")).await;
    eventually("rows inserted after the poller restart delivered", WAIT, || names_by_id(&received).len() == 14).await;
    // Give a duplicate, if any, time to show up before the exact accounting.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Exact accounting: every row once, updated rows twice, in order; the rejected row never.
    let by_id = names_by_id(&received);
    for id in (1..=15).filter(|&id| id != 4) {
        let expected: Vec<String> = if [2, 5, 9].contains(&id) {
            vec![format!("Customer {id}"), format!("Renamed {id}")]
        } else {
            vec![format!("Customer {id}")]
        };
        assert_eq!(by_id.get(&id), Some(&expected), "row {id}: exactly once per change, in order");
    }
    assert!(!by_id.contains_key(&4), "the rejected row never reached the destination");
    assert_eq!(received.records().len(), 17, "14 rows + 3 updates, no duplicates");
    let ops: Vec<String> = received.records().iter().map(|r| r["op"].as_str().unwrap().to_string()).collect();
    assert_eq!(ops.iter().filter(|op| *op == "r").count(), 9, "the first ten rows are snapshot reads, less the rejected one");
    assert_eq!(ops.iter().filter(|op| *op == "c").count(), 5, "rows 11-15 are inserts");
    assert_eq!(ops.iter().filter(|op| *op == "u").count(), 3, "three updates");
    // Only mapped fields leave.
    for record in received.records() {
        let fields: Vec<&String> = record["fields"].as_object().unwrap().keys().collect();
        assert_eq!(fields, ["email", "name"], "only mapped fields");
    }

    // The dead-letter topic holds exactly the rejected record, untouched, with its context.
    let change_topic = naming::change_topic(&f.prefix, "customers");
    let dlq = read_topic(&naming::dead_letter_topic(&f.prefix, "crm"));
    assert_eq!(dlq.len(), 1, "one dead letter: {dlq:?}");
    let letter = &dlq[0];
    assert_eq!(letter.header("sluice.error.class"), Some("permanent"));
    assert_eq!(letter.header("sluice.error.response.status"), Some("422"));
    assert!(letter.header("sluice.error.response.excerpt").unwrap().contains("invalid email address"));
    assert_eq!(letter.header("sluice.error.attempts"), Some("1"));
    assert_eq!(letter.header("sluice.error.destination"), Some("crm"));
    assert_eq!(letter.header("sluice.original.topic"), Some(change_topic.as_str()));
    assert!(letter.header("sluice.error.first_failure_ms").is_some() && letter.header("sluice.error.last_failure_ms").is_some());
    let partition: i32 = letter.header("sluice.original.partition").unwrap().parse().unwrap();
    let offset: i64 = letter.header("sluice.original.offset").unwrap().parse().unwrap();
    let changes = read_topic(&change_topic);
    let original = changes.iter().find(|r| r.partition == partition && r.offset == offset).expect("original record exists");
    assert_eq!(original.key, letter.key, "key bytes untouched");
    assert_eq!(original.payload, letter.payload, "value bytes untouched");
    assert!(letter.header("traceparent").is_some(), "original headers are kept");

    // Every change event carries trace context, its schema fingerprint and run id.
    assert_eq!(changes.len(), 18, "15 rows + 3 updates on the change topic, nothing invented");
    for record in &changes {
        let traceparent = record.header("traceparent").expect("traceparent header");
        assert_eq!(traceparent.len(), 55, "W3C traceparent: {traceparent}");
        assert_eq!(record.header("sluice.schema.fingerprint").map(str::len), Some(16));
        assert!(record.header("sluice.run.id").is_some());
    }

    poller_stop.cancel();
    sink_stop.cancel();
    poller.await.unwrap().expect("poller stops cleanly");
    sink.await.unwrap().expect("sink stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retryable_failures_are_retried_until_delivered() {
    let (url, received) = receiver::start().await;
    received.set_behaviour(Behaviour::FailNext(3));
    let f = fixture(&url).await;
    insert(&f, 1..=6, |id| format!("c{id}@example.com")).await;
    let (poller_stop, poller) = start_poller(&f.config);
    let (sink_stop, sink) = start_sink(&f.config, Health::new());
    eventually("all rows delivered despite three 503s", WAIT, || names_by_id(&received).len() == 6).await;
    assert!(received.requests.load(std::sync::atomic::Ordering::SeqCst) >= 4, "the 503s were answered and retried");
    poller_stop.cancel();
    sink_stop.cancel();
    poller.await.unwrap().unwrap();
    sink.await.unwrap().unwrap();
    assert_eq!(received.records().len(), 6, "each row exactly once");
    assert!(read_topic(&naming::dead_letter_topic(&f.prefix, "crm")).is_empty(), "retried, not dead-lettered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_credentials_stop_the_sink_without_dead_lettering() {
    let (url, received) = receiver::start().await;
    received.set_behaviour(Behaviour::Unauthorized);
    let f = fixture(&url).await;
    insert(&f, 1..=8, |id| format!("c{id}@example.com")).await;
    let (poller_stop, poller) = start_poller(&f.config);
    let health = Health::new();
    let (_sink_stop, sink) = start_sink(&f.config, Arc::clone(&health));
    let result = tokio::time::timeout(WAIT, sink).await.expect("sink stops by itself on 401").unwrap();
    assert!(matches!(result, Err(sluice_sink::SinkError::Fatal { status: Some(401), .. })), "{result:?}");
    assert!(health.not_ready_reason().unwrap().contains("stopped"), "not ready after a fatal error");
    assert!(received.records().is_empty());
    assert!(read_topic(&naming::dead_letter_topic(&f.prefix, "crm")).is_empty(), "nothing dead-lettered on auth failure");
    poller_stop.cancel();
    poller.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_message_is_dead_lettered_and_the_stream_goes_on() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let (url, received) = receiver::start().await;
    let f = fixture(&url).await;
    insert(&f, 1..=3, |id| format!("c{id}@example.com")).await;
    let (poller_stop, poller) = start_poller(&f.config);
    let (sink_stop, sink) = start_sink(&f.config, Health::new());
    eventually("first rows delivered", WAIT, || names_by_id(&received).len() == 3).await;

    // Someone writes garbage to the change topic; later rows must still arrive.
    let change_topic = naming::change_topic(&f.prefix, "customers");
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", sluice_integration_tests::kafka_bootstrap())
        .create()
        .unwrap();
    producer
        .send(FutureRecord::to(&change_topic).key("poison").payload("{\"not\": \"avro\"}"), Duration::from_secs(10))
        .await
        .expect("poison produced");
    insert(&f, 4..=6, |id| format!("c{id}@example.com")).await;
    eventually("rows after the poison message delivered", WAIT, || names_by_id(&received).len() == 6).await;
    eventually("poison message dead-lettered", WAIT, || !read_topic(&naming::dead_letter_topic(&f.prefix, "crm")).is_empty()).await;

    let dlq = read_topic(&naming::dead_letter_topic(&f.prefix, "crm"));
    assert_eq!(dlq.len(), 1, "exactly the poison message");
    assert_eq!(dlq[0].header("sluice.error.class"), Some("decode"));
    assert!(dlq[0].header("sluice.error.message").unwrap().contains("not Avro single-object encoded"), "{:?}", dlq[0].headers);
    assert_eq!(dlq[0].payload.as_deref(), Some(&b"{\"not\": \"avro\"}"[..]), "bytes untouched");
    assert_eq!(dlq[0].key.as_deref(), Some(&b"poison"[..]));
    assert_eq!(received.records().len(), 6, "each row exactly once");
    poller_stop.cancel();
    sink_stop.cancel();
    poller.await.unwrap().unwrap();
    sink.await.unwrap().unwrap();
}

/// The poller is killed (its task aborted, mid-page or mid-transaction) at random points while
/// rows keep arriving; afterwards the change topic holds exactly one event per row: no change
/// lost, none invented. A commit still in flight in an aborted instance is fenced by the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poller_killed_at_random_points_loses_and_duplicates_nothing() {
    use rand::Rng;
    let (url, _received) = receiver::start().await;
    let f = fixture(&url).await;
    let mut next_id = 1i64;
    for _ in 0..12 {
        insert(&f, next_id..next_id + 15, |id| format!("c{id}@example.com")).await;
        next_id += 15;
        let (_stop, poller) = start_poller(&f.config);
        let kill_after = Duration::from_millis(rand::rng().random_range(50..1500));
        tokio::time::sleep(kill_after).await;
        poller.abort();
        assert!(poller.await.unwrap_err().is_cancelled());
    }
    let (stop, poller) = start_poller(&f.config);
    let change_topic = naming::change_topic(&f.prefix, "customers");
    let total = (next_id - 1) as usize;
    eventually("every row on the change topic", WAIT, || read_topic(&change_topic).len() >= total).await;
    stop.cancel();
    poller.await.unwrap().unwrap();

    let events = read_topic(&change_topic);
    let mut keys: Vec<Vec<u8>> = events.iter().map(|e| e.key.clone().unwrap()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), total, "every row emitted");
    assert_eq!(events.len(), total, "no row emitted twice across {} kills", 12);
}

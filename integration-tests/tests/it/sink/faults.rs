//! Faults of the components around the sink (issue 12 item 7), each made real against the real
//! broker: the dead-letter topic refusing the dead letter, a destination down longer than the
//! retry budget, the schema topic missing when the sink needs a writer schema. Each test keeps
//! exact accounting: every record of the change topic is applied, dead-lettered or — when the
//! sink stops — left uncommitted, exactly as docs/sink.md says.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use sluice_core::naming;
use sluice_integration_tests::process::{free_address, Service};
use sluice_integration_tests::receiver::{self, Behaviour, Reply};
use sluice_integration_tests::{decode_events, eventually, kafka_bootstrap, pipeline, read_topic, start_poller, start_sink, Pipeline, ReadRecord};
use sluice_telemetry::ops::Health;

use super::common::{committed, insert, latest_versions, spec, WAIT};

/// The sink's gauge of a stopped destination, as `/metrics` renders it.
const STOPPED: &str = "sluice_sink_stopped{destination=\"crm\"}";

fn admin() -> AdminClient<DefaultClientContext> {
    ClientConfig::new().set("bootstrap.servers", kafka_bootstrap()).create().expect("admin client")
}

/// Create `topic` with `settings`; retried while the broker still finishes deleting a topic of
/// that name.
async fn create_topic(topic: &str, partitions: i32, settings: &[(&str, &str)]) {
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (key, value) in settings {
        new = new.set(key, value);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let results = admin().create_topics([&new], &AdminOptions::new()).await.expect("create topics request");
        match &results[0] {
            Ok(_) => return,
            Err((_, code)) => assert!(tokio::time::Instant::now() < deadline, "creating {topic}: {code}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Delete `topic` of the run with `prefix`, and wait until the cluster's metadata no longer names it.
async fn delete_topic(prefix: &str, topic: &str) {
    let results = admin().delete_topics(&[topic], &AdminOptions::new()).await.expect("delete topics request");
    assert!(results[0].is_ok(), "deleting {topic}: {results:?}");
    eventually("the topic gone from the metadata", WAIT, || !sluice_integration_tests::topic_names(prefix).iter().any(|t| t == topic)).await;
}

/// Insert rows `1..=rows`, run the poller until their changes are on the change topic, stop it;
/// returns the change topic's records.
async fn publish(p: &Pipeline, rows: i64) -> Vec<ReadRecord> {
    insert(p, 1, rows).await;
    let (poller_stop, poller) = start_poller(&p.config);
    let topic = naming::change_topic(&p.prefix, "customers");
    eventually("the rows on the change topic", WAIT, || read_topic(&topic).len() >= rows as usize).await;
    poller_stop.cancel();
    poller.await.unwrap().unwrap();
    read_topic(&topic)
}

/// (partition, offset) of every record of `records`.
fn coordinates(records: &[ReadRecord]) -> HashSet<(i32, i64)> {
    records.iter().map(|r| (r.partition, r.offset)).collect()
}

/// The dead-letter topic refuses the dead letter (it was created beforehand with a
/// `max.message.bytes` smaller than any dead letter: the broker answers MESSAGE_TOO_LARGE, real
/// Kafka behaviour). The record the destination refused cannot finish: the sink stops —
/// `/readyz` 503 naming the cause, `sluice_sink_stopped` 1 — and commits nothing past it in its
/// partition, while every record before it there is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unwritable_dead_letter_topic_stops_the_sink_and_commits_nothing_past_the_record() {
    let (url, received) = receiver::start().await;
    let refuse = |r: &serde_json::Value| r["key"]["id"].as_i64() == Some(7);
    received.set_behaviour(Behaviour::Script(Arc::new(move |_, records| {
        if records.iter().any(refuse) {
            Reply { body: "{\"error\":\"unknown property\"}".into(), ..Reply::error(422, None) }
        } else {
            Reply::ok(records.len())
        }
    })));
    let mut spec = spec("fields = { v = \"v\" }");
    spec.destination_extra = "batch_max_records = 1\nbatch_linger_ms = 0\nmax_concurrency = 1";
    let p = pipeline(&url, spec).await;
    create_topic(&naming::dead_letter_topic(&p.prefix, "crm"), p.config.kafka.partitions, &[("max.message.bytes", "64")]).await;
    let records = publish(&p, 20).await;
    let events = decode_events(&p.prefix, &records);
    let at = records.iter().zip(&events).find(|(_, e)| e.current("id") == Some(&sluice_core::Value::Long(7))).map(|(r, _)| (r.partition, r.offset)).unwrap();

    let mut sink = Service::sink(&p.text, "crm", &[]);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ready = sink.readyz().await;
        if ready.as_ref().is_some_and(|(status, _)| *status == 503) && sink.metric(STOPPED).await == Some(1.0) {
            let body = ready.unwrap().1;
            assert!(body.contains("destination crm stopped") && body.contains("dead letter"), "names the cause: {body}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the sink did not stop: {ready:?}\n{}", sink.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sink.child.try_wait().unwrap().is_none(), "stays up, not ready, until stopped\n{}", sink.output());
    assert!(read_topic(&naming::dead_letter_topic(&p.prefix, "crm")).is_empty(), "no dead letter was written");
    assert!(!latest_versions(&received).contains_key(&7), "the refused row was not applied");

    // What was committed: never past the record in its partition, and — the stop commits the
    // finished prefix — everything before it, which was applied.
    let offsets = committed(&p, "crm");
    let (partition, offset) = at;
    let in_partition = offsets.iter().find(|((_, n), _)| *n == partition).map(|(_, c)| c.offset.unwrap_or(0)).unwrap();
    assert!(in_partition <= offset, "committed {in_partition} past the undeliverable record at {partition}/{offset}");
    let applied: HashSet<i64> = latest_versions(&received).into_keys().collect();
    for (record, event) in records.iter().zip(&events) {
        let committed_here = offsets.iter().find(|((_, n), _)| *n == record.partition).and_then(|(_, c)| c.offset).unwrap_or(0);
        let Some(sluice_core::Value::Long(id)) = event.current("id") else { panic!("row id") };
        if record.offset < committed_here {
            assert!(applied.contains(id), "row {id} committed at {}/{} but never applied", record.partition, record.offset);
        }
    }
    sink.terminate();
    assert!(sink.exited_within(Duration::from_secs(15)).await.is_some(), "exits on SIGTERM\n{}", sink.output());
}

/// A destination down (nothing listens on its address: every request is refused at connect)
/// for longer than the retry budget. The budget is the documented default `max_attempts = 10`;
/// only the backoff is shrunk (`initial_backoff_ms = 10`, `max_backoff_ms = 50`: with the default
/// 200 ms … 30 s it lasts up to 81 s per record). Every record is dead-lettered once, as
/// `retryable` after 10 attempts, and the offsets advance to the end: nothing lost, nothing
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_destination_down_past_the_retry_budget_dead_letters_every_record_once_and_moves_on() {
    let url = format!("http://{}/hook", free_address());
    let mut spec = spec("fields = { v = \"v\" }");
    spec.destination_extra = "batch_max_records = 1\nbatch_linger_ms = 0\nmax_concurrency = 2\nretry = { initial_backoff_ms = 10, max_backoff_ms = 50 }";
    let p = pipeline(&url, spec).await;
    let records = publish(&p, 12).await;
    assert_eq!(records.len(), 12);

    let (sink_stop, sink) = start_sink(&p.config, Health::new());
    let dlq = naming::dead_letter_topic(&p.prefix, "crm");
    eventually("every record dead-lettered", WAIT, || read_topic(&dlq).len() >= 12).await;
    let ends: HashMap<i32, i64> = records.iter().fold(HashMap::new(), |mut ends, r| {
        let end = ends.entry(r.partition).or_insert(0);
        *end = (*end).max(r.offset + 1);
        ends
    });
    let at_the_end = || committed(&p, "crm").iter().all(|((_, n), c)| c.offset.unwrap_or(0) == ends.get(n).copied().unwrap_or(0));
    eventually("the offsets at the end of every partition", WAIT, at_the_end).await;
    sink_stop.cancel();
    sink.await.unwrap().expect("the sink drains");

    let letters = read_topic(&dlq);
    assert_eq!(letters.len(), 12, "one dead letter per record");
    let original: HashSet<(i32, i64)> = letters
        .iter()
        .map(|l| (l.header("sluice.original.partition").unwrap().parse().unwrap(), l.header("sluice.original.offset").unwrap().parse().unwrap()))
        .collect();
    assert_eq!(original, coordinates(&records), "each record of the change topic dead-lettered exactly once");
    for letter in &letters {
        assert_eq!(letter.header("sluice.error.class"), Some("retryable"), "{:?}", letter.headers);
        assert_eq!(letter.header("sluice.error.attempts"), Some("10"), "the default budget, spent");
        assert!(letter.header("sluice.error.message").unwrap().starts_with("retries exhausted"), "{:?}", letter.headers);
        assert_eq!(letter.payload, records.iter().find(|r| r.key == letter.key).unwrap().payload, "the original bytes");
    }
}

/// The schema topic is missing when the sink first needs a writer schema (deleted after the
/// sink created it; the broker does not auto-create topics), then comes back with its
/// schemas. The read is retried: the sink neither stops nor dead-letters the records as
/// unreadable (it did: a missing topic read as empty, so each schema was "not on the schema
/// topic"), and once the schemas are readable every record is applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_schema_topic_missing_for_a_while_is_waited_for_not_fatal() {
    // The changes and their schemas, written by a real poller into a pipeline of their own.
    let (unused, _) = receiver::start().await;
    let source = pipeline(&unused, spec("fields = { v = \"v\" }")).await;
    let changes = publish(&source, 10).await;
    let schemas = read_topic(&naming::schema_topic(&source.prefix));
    assert!(!schemas.is_empty());

    let (url, received) = receiver::start().await;
    let mut spec = spec("fields = { v = \"v\" }");
    spec.destination_extra = "batch_max_records = 5\nbatch_linger_ms = 0";
    let p = pipeline(&url, spec).await;
    let health = Health::new();
    let (sink_stop, sink) = start_sink(&p.config, Arc::clone(&health));
    eventually("the sink ready", WAIT, || health.not_ready_reason().is_none()).await;
    let schema_topic = naming::schema_topic(&p.prefix);
    delete_topic(&p.prefix, &schema_topic).await;

    let producer: FutureProducer = sluice_kafka::client_config(&p.config.kafka).create().unwrap();
    let produce = |topic: String, record: ReadRecord| {
        let producer = producer.clone();
        async move {
            let headers = record.headers.iter().fold(rdkafka::message::OwnedHeaders::new(), |h, (key, value)| {
                h.insert(rdkafka::message::Header { key, value: Some(value.as_bytes()) })
            });
            let mut out = FutureRecord::to(&topic).partition(record.partition).headers(headers);
            if let Some(key) = &record.key {
                out = out.key(key);
            }
            if let Some(payload) = &record.payload {
                out = out.payload(payload);
            }
            producer.send(out, Duration::from_secs(30)).await.map(|_| ()).map_err(|(e, _)| e).unwrap();
        }
    };
    let change_topic = naming::change_topic(&p.prefix, "customers");
    for record in changes.clone() {
        produce(change_topic.clone(), record).await;
    }
    // Long enough for the sink to consume the changes and fail its first reads.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!sink.is_finished(), "the sink did not stop");
    assert!(received.records().is_empty(), "nothing applied without its schema");
    assert!(read_topic(&naming::dead_letter_topic(&p.prefix, "crm")).is_empty(), "nothing dead-lettered as unreadable");

    create_topic(&schema_topic, 1, &[("cleanup.policy", "compact")]).await;
    for record in schemas {
        produce(schema_topic.clone(), ReadRecord { partition: 0, ..record }).await;
    }
    eventually("every row applied", WAIT, || latest_versions(&received).len() == 10).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    sink_stop.cancel();
    sink.await.unwrap().expect("the sink drains");
    let ids: Vec<String> = received.records().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len(), "each record applied once: {ids:?}");
    assert_eq!(ids.len(), 10);
    assert!(read_topic(&naming::dead_letter_topic(&p.prefix, "crm")).is_empty(), "nothing dead-lettered");
}

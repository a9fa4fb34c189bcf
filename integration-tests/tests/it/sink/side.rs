//! Side records produced by hand (what `sluice backfill` and `sluice dlq redrive` produce) into a
//! running sink: applied when they carry the current state of their key, superseded when a newer
//! change of the key exists, ordered with live records of the same key, and dead-lettered with
//! their original coordinates and their attempts carried on when they fail again.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_core::naming;
use sluice_integration_tests::{decode_events, eventually, pipeline, read_topic, receiver, start_poller, start_sink, Pipeline, ReadRecord};
use sluice_kafka::groups;
use sluice_kafka::side::{Original, SideProducer, SideRecord};
use sluice_telemetry::ops::Health;

use super::common::{assert_never_backwards, bump, history, insert, latest_versions, spec, warehouse_versions, WAIT};

/// The records of the change topic that carry a row image, with the row's id, in (partition,
/// offset) order.
fn changes(p: &Pipeline) -> Vec<(i64, ReadRecord)> {
    let records: Vec<ReadRecord> = read_topic(&naming::change_topic(&p.prefix, "customers")).into_iter().filter(|r| r.payload.is_some()).collect();
    let events = decode_events(&p.prefix, &records);
    let mut out: Vec<(i64, ReadRecord)> = events
        .iter()
        .zip(records)
        .map(|(event, record)| match event.current("id") {
            Some(sluice_core::Value::Long(id)) => (*id, record),
            other => panic!("id column: {other:?}"),
        })
        .collect();
    out.sort_by_key(|(_, r)| (r.partition, r.offset));
    out
}

/// The side record carrying `record`, with the original's own headers kept.
fn side_of(p: &Pipeline, record: &ReadRecord) -> SideRecord {
    let original = Original { topic: naming::change_topic(&p.prefix, "customers"), partition: record.partition, offset: record.offset, timestamp_ms: None };
    let mut side = SideRecord::new(original, record.key.clone().unwrap(), record.payload.clone(), "test");
    side.kept = record.headers.iter().map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect();
    side
}

/// Wait until the sink has finished (and committed) every record of its side topic.
async fn side_drained(p: &Pipeline) {
    let topic = naming::side_topic(&p.prefix, "crm");
    let group = naming::sink_group(&p.prefix, "crm");
    eventually("the side topic finished and committed", WAIT, || {
        let marks = groups::watermarks(&p.config.kafka, &topic).unwrap();
        let partitions: Vec<_> = marks.iter().map(|&(n, _, _)| (topic.clone(), n)).collect();
        let committed = groups::committed(&p.config.kafka, &group, &partitions).unwrap();
        marks.iter().all(|&(n, _, high)| high == 0 || committed[&(topic.clone(), n)].offset == Some(high))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn side_records_apply_when_current_are_superseded_when_older_and_keep_order_with_live_records() {
    let (url, received) = receiver::start().await;
    let p = pipeline(&url, spec("fields = { email = \"email\", v = \"v\" }")).await;
    insert(&p, 1, 40).await;
    let (poller_stop, poller) = start_poller(&p.config);
    let (sink_stop, sink) = start_sink(&p.config, Health::new());
    // Applied before key 2 changes, so its first state and its update are two records.
    eventually("the rows applied", WAIT, || latest_versions(&received).len() == 40).await;
    bump(&p, &[2]).await;
    let want = warehouse_versions(&p).await;
    eventually("key 2's update applied", WAIT, || latest_versions(&received) == want).await;
    let side = SideProducer::new(&p.config.kafka, naming::side_topic(&p.prefix, "crm")).unwrap();
    let all = changes(&p);
    let of = |id: i64| all.iter().filter(|(k, _)| *k == id).map(|(_, r)| r.clone()).collect::<Vec<_>>();

    // Key 1's current state: applied again, under the id of its change. Key 2's first state,
    // older than its update: superseded.
    let before = received.records().len();
    let current = of(1).pop().unwrap();
    let older = of(2).remove(0);
    assert_eq!(of(2).len(), 2, "key 2 has an older state and its update");
    side.send(&side_of(&p, &current)).await.unwrap();
    side.send(&side_of(&p, &older)).await.unwrap();
    side_drained(&p).await;
    let after = history(&received, before);
    assert_eq!(after.len(), 1, "only key 1: {after:?}");
    assert_eq!(after[&1].len(), 1);
    assert_eq!(after[&1][0].id, format!("{}/{}/{}", naming::change_topic(&p.prefix, "customers"), current.partition, current.offset), "the id of the change it carries");
    assert_eq!(after[&1][0].v, Some(1));

    // Side records of the current state of keys 10..=40 race live changes of the same keys.
    let keys: Vec<i64> = (10..=40).collect();
    let racing: Vec<SideRecord> = keys.iter().map(|&id| side_of(&p, &of(id).pop().unwrap())).collect();
    let sender = tokio::spawn({
        let side = SideProducer::new(&p.config.kafka, naming::side_topic(&p.prefix, "crm")).unwrap();
        async move {
            for record in racing {
                side.send(&record).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    bump(&p, &keys).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    bump(&p, &keys).await;
    sender.await.unwrap();
    let want = warehouse_versions(&p).await;
    eventually("every key at its latest version", WAIT, || latest_versions(&received) == want).await;
    side_drained(&p).await;
    sluice_integration_tests::stop_pipeline(sink_stop, sink, poller_stop, poller).await;
    assert_never_backwards(&received);
    assert!(read_topic(&naming::dead_letter_topic(&p.prefix, "crm")).is_empty(), "nothing dead-lettered");
}

/// A dead letter redriven through the side topic that fails again comes back with its original
/// coordinates and its attempts raised; a side record without them is dead-lettered as
/// unreadable, saying which header is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redriven_record_that_fails_again_returns_with_its_attempts_raised() {
    let (url, received) = receiver::start().await;
    let p = pipeline(&url, spec("fields = { email = \"email\", v = \"v\" }")).await;
    insert(&p, 1, 3).await;
    // The receiver refuses emails starting with `reject` (422).
    p.db.execute(&format!("UPDATE {} SET email = 'reject-2@invalid', updated_at = clock_timestamp() WHERE id = 2", p.table), &[]).await.unwrap();
    let (poller_stop, poller) = start_poller(&p.config);
    let (sink_stop, sink) = start_sink(&p.config, Health::new());
    let dlq = naming::dead_letter_topic(&p.prefix, "crm");
    eventually("two rows applied, one dead-lettered", WAIT, || latest_versions(&received).len() == 2 && read_topic(&dlq).len() == 1).await;
    let first = read_topic(&dlq).remove(0);
    assert_eq!(first.header("sluice.error.attempts"), Some("1"));

    let side = SideProducer::new(&p.config.kafka, naming::side_topic(&p.prefix, "crm")).unwrap();
    let headers = first.headers.iter().map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect();
    let redrive = SideRecord::redrive(first.key.clone().unwrap(), first.payload.clone(), headers).unwrap();
    side.send(&redrive).await.unwrap();
    eventually("the redrive dead-lettered again", WAIT, || read_topic(&dlq).len() == 2).await;
    // Both letters have the row's key, so they are in one partition, in order.
    let second = read_topic(&dlq).into_iter().find(|l| l.partition == first.partition && l.offset > first.offset).unwrap();
    for header in ["sluice.original.topic", "sluice.original.partition", "sluice.original.offset", "sluice.error.first_failure_ms", "sluice.error.class"] {
        assert_eq!(second.header(header), first.header(header), "{header}");
    }
    assert_eq!(second.header("sluice.original.topic"), Some(naming::change_topic(&p.prefix, "customers").as_str()), "its original coordinates, not the side topic's");
    assert_eq!(second.header("sluice.error.attempts"), Some("2"), "attempts carry on");
    assert_eq!(second.headers.iter().filter(|(k, _)| k == "sluice.error.attempts").count(), 1, "written once");
    assert_eq!(second.key, first.key);
    assert_eq!(second.payload, first.payload, "the bytes, untouched");

    // A side record without its original coordinates.
    let producer: FutureProducer = sluice_kafka::client_config(&p.config.kafka).create().unwrap();
    let side_topic = naming::side_topic(&p.prefix, "crm");
    let bare = FutureRecord::to(&side_topic).partition(0).key("k").payload("v");
    producer.send(bare, Duration::from_secs(10)).await.unwrap();
    eventually("the bare side record dead-lettered", WAIT, || read_topic(&dlq).len() == 3).await;
    let third = read_topic(&dlq).into_iter().find(|l| l.key.as_deref() == Some(b"k".as_slice())).unwrap();
    assert_eq!(third.header("sluice.error.class"), Some("decode"));
    assert!(third.header("sluice.error.message").unwrap().contains("no UTF-8 `sluice.original.topic` header"), "{third:?}");
    assert_eq!(third.header("sluice.original.topic"), Some(naming::side_topic(&p.prefix, "crm").as_str()), "where it can be found");
    sluice_integration_tests::stop_pipeline(sink_stop, sink, poller_stop, poller).await;
}

//! Deletes survive compaction: a row deleted while its sinks were stopped, whose `d` event the
//! broker's log cleaner then removed (tiny segments, a dirty ratio of 0.01 and no compaction lag
//! on this test's topic only), still reaches the destinations when the sinks come back: a
//! destination keyed by the primary key deletes by key; one that matches on an identifier the
//! key does not hold dead-letters it as `compacted_delete`.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use sluice_core::naming;
use sluice_integration_tests::receiver::{self, Behaviour, Reply};
use sluice_integration_tests::{decode_events, eventually, pipeline, read_topic, start_poller, start_sink, start_sink_of, stop_sinks_then_poller, Spec};
use sluice_telemetry::ops::Health;

use super::common::{bump, history, insert, spec, WAIT};

/// A receiver that matches records on `email`: it refuses a record without one (207), as a
/// vendor keyed by an identifier refuses a record that lacks it.
fn keyed_by_email() -> Behaviour {
    Behaviour::Script(Arc::new(|_, records| {
        let refused: Vec<usize> = (0..records.len()).filter(|&i| records[i]["fields"]["email"].as_str().is_none()).collect();
        if refused.is_empty() {
            return Reply::ok(records.len());
        }
        let errors: Vec<serde_json::Value> = refused.iter().map(|i| serde_json::json!({"index": i, "message": "no email to match on", "retryable": false})).collect();
        Reply {
            status: 207,
            retry_after: None,
            body: serde_json::json!({ "errors": errors }).to_string(),
            apply: (0..records.len()).filter(|i| !refused.contains(i)).collect(),
            delay: Duration::ZERO,
        }
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delete_whose_event_was_compacted_away_while_the_sinks_were_stopped_still_reaches_them() {
    let (url, received) = receiver::start().await;
    let (ids_url, ids) = receiver::start().await;
    ids.set_behaviour(keyed_by_email());
    let sync = format!(
        "mode = \"mirror\"\nfields = {{ id = \"id\", email = \"email\", v = \"v\" }}\n\n[[destinations]]\nname = \"ids\"\nbatch_linger_ms = 5\n\
         [destinations.webhook]\nurl = \"{ids_url}\"\n\n[[syncs]]\nmodel = \"customers\"\ndestination = \"ids\"\nmode = \"mirror\"\nfields = {{ email = \"email\", v = \"v\" }}"
    );
    let p = pipeline(
        &url,
        Spec {
            // The config key: applied to the test's change topic by the poller and the sinks.
            kafka_extra: "min_compaction_lag_ms = 0",
            detection: Some(r#"{ mode = "cursor", cursor_column = "updated_at", created_column = "created_at", deleted_column = "deleted_at" }"#),
            ..spec(&sync)
        },
    )
    .await;
    // This test's topic only: one partition, a segment per 100 ms, cleaned at 1 % dirty.
    let topic = naming::change_topic(&p.prefix, "customers");
    let admin: AdminClient<DefaultClientContext> = sluice_kafka::client_config(&p.config.kafka).create().unwrap();
    let new = NewTopic::new(&topic, 1, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("segment.ms", "100")
        .set("min.cleanable.dirty.ratio", "0.01");
    admin.create_topics([&new], &AdminOptions::new()).await.unwrap().into_iter().for_each(|r| { r.unwrap(); });

    insert(&p, 1, 5).await;
    let (poller_stop, poller) = start_poller(&p.config);
    let (crm_stop, crm) = start_sink(&p.config, Health::new());
    let (ids_stop, ids_sink) = start_sink_of(&p.config, "ids", Health::new());
    eventually("the rows applied at both", WAIT, || history(&received, 0).len() == 5 && history(&ids, 0).len() == 5).await;
    crm_stop.cancel();
    ids_stop.cancel();
    crm.await.unwrap().expect("drains");
    ids_sink.await.unwrap().expect("drains");

    p.db.execute(&format!("UPDATE {} SET deleted_at = now(), updated_at = clock_timestamp() WHERE id = 3", p.table), &[]).await.unwrap();
    // Kept from the read that found it: with this topic's settings the cleaner may drop the
    // `d` event a moment later, which is what the test is about.
    let deleted_event = {
        let mut found = None;
        eventually("the delete emitted", WAIT, || {
            found = read_topic(&topic).into_iter().find(|r| r.header("sluice.op") == Some("d") && r.payload.is_some());
            found.is_some()
        })
        .await;
        found.unwrap()
    };
    let key3 = deleted_event.key.clone().expect("a keyed event");
    assert_eq!(decode_events(&p.prefix, std::slice::from_ref(&deleted_event))[0].current("id"), Some(&sluice_core::Value::Long(3)));

    // Other rows keep changing, which rolls segments; the cleaner then drops row 3's events,
    // its `d` event included, and keeps the tombstone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        bump(&p, &[1, 2]).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        let of_3: Vec<_> = read_topic(&topic).into_iter().filter(|r| r.key.as_ref() == Some(&key3)).collect();
        if of_3.iter().all(|r| r.payload.is_none()) && !of_3.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the log cleaner did not compact {topic} in 180 s (ops/kafka.sh sets log.cleaner.backoff.ms=1000)");
    }
    assert!(history(&received, 0)[&3].iter().all(|s| s.action == "upsert"), "nothing was deleted while the sink was stopped");

    let before = received.records().len();
    let (crm_stop, crm) = start_sink(&p.config, Health::new());
    let (ids_stop, ids_sink) = start_sink_of(&p.config, "ids", Health::new());
    eventually("row 3 deleted at the destination keyed by id", WAIT, || history(&received, before).get(&3).is_some_and(|s| s.iter().any(|s| s.action == "delete"))).await;
    let dlq = naming::dead_letter_topic(&p.prefix, "ids");
    eventually("the delete dead-lettered at the destination keyed by email", WAIT, || !read_topic(&dlq).is_empty()).await;
    stop_sinks_then_poller(vec![(crm_stop, crm), (ids_stop, ids_sink)], poller_stop, poller).await;

    let delete = received.records().into_iter().skip(before).find(|r| r["key"]["id"] == 3).unwrap();
    assert_eq!((delete["action"].as_str(), delete["op"].as_str()), (Some("delete"), Some("d")), "{delete}");
    assert_eq!(delete["fields"], serde_json::json!({ "id": 3 }), "only the fields the key gives");
    let letters = read_topic(&dlq);
    assert_eq!(letters.len(), 1, "only the delete");
    assert_eq!(letters[0].header("sluice.error.class"), Some("compacted_delete"));
    assert_eq!(letters[0].key.as_ref(), Some(&key3));
    assert!(letters[0].payload.is_none(), "the tombstone, untouched");
    assert_eq!(letters[0].header("sluice.original.topic"), Some(topic.as_str()));
    assert!(read_topic(&naming::dead_letter_topic(&p.prefix, "crm")).is_empty());

    // The topic kept its own settings while the poller and the sinks set the configured ones.
    let described = admin.describe_configs([&ResourceSpecifier::Topic(&topic)], &AdminOptions::new()).await.unwrap().remove(0).unwrap();
    let setting = |name: &str| described.get(name).and_then(|e| e.value.clone());
    assert_eq!(setting("min.compaction.lag.ms").as_deref(), Some("0"));
    assert_eq!(setting("delete.retention.ms").as_deref(), Some("604800000"));
    assert_eq!(setting("segment.ms").as_deref(), Some("100"), "another override kept");
    assert_eq!(setting("min.cleanable.dirty.ratio").as_deref(), Some("0.01"));
}

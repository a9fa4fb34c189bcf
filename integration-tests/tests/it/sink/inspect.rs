//! `sluice inspect` against the real broker and PostgreSQL: a key inserted, updated,
//! dead-lettered (the destination refuses its update) and redriven after the fix prints that
//! history — its ops in order with their changed columns and run ids, the dead letter with its
//! class and status `redriven`, the destination group's position past both records — with
//! values masked unless `--show-values`; and the documented exit codes for a key with no
//! record, a key that does not parse and an unknown model.

use std::sync::atomic::Ordering;

use sluice_core::naming;
use sluice_integration_tests::receiver;
use sluice_integration_tests::{eventually, pipeline, read_topic, start_poller, start_sink};
use sluice_telemetry::ops::Health;

use super::common::{bump, committed, insert, latest_versions, refusing, sluice, spec, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inspect_prints_a_keys_history_its_dead_letter_and_each_groups_position() {
    let (url, received) = receiver::start().await;
    // While `broken`, the destination refuses key 4 (a mapping it does not accept).
    let (broken, behaviour) = refusing(false, "unknown field", |on, r| on && r["key"]["id"].as_i64() == Some(4));
    received.set_behaviour(behaviour);
    let p = pipeline(&url, spec("fields = { email = \"email\", v = \"v\" }")).await;
    let topic = naming::change_topic(&p.prefix, "customers");
    let dead_letter_topic = naming::dead_letter_topic(&p.prefix, "crm");
    let (poller_stop, poller) = start_poller(&p.config);
    let (sink_stop, sink) = start_sink(&p.config, Health::new());

    // Inserted after the empty first snapshot (so as `c`), and applied.
    let state_topic = naming::poller_state_topic(&p.prefix);
    eventually("the empty first snapshot committed", WAIT, || !read_topic(&state_topic).is_empty()).await;
    insert(&p, 3, 5).await;
    eventually("keys 3..=5 applied", WAIT, || latest_versions(&received).len() == 3).await;
    // Updated while the destination refuses it: dead-lettered.
    broken.store(true, Ordering::SeqCst);
    bump(&p, &[4]).await;
    eventually("key 4's update dead-lettered", WAIT, || read_topic(&dead_letter_topic).len() == 1).await;
    // The fix, then the redrive. The sink is restarted first: one that subscribed while its
    // side topic was being created can miss that topic until librdkafka's next metadata refresh
    // (minutes), which this test is not about.
    broken.store(false, Ordering::SeqCst);
    sink_stop.cancel();
    sink.await.unwrap().unwrap();
    let (sink_stop, sink) = start_sink(&p.config, Health::new());
    let redrive = sluice(&p, &["dlq", "redrive", "--destination", "crm", "--json"]).await;
    assert_eq!((redrive.code, redrive.json["redriven"].as_u64()), (0, Some(1)), "{redrive:?}");
    eventually("key 4 at version 2", WAIT, || latest_versions(&received).get(&4) == Some(&2)).await;
    let records: Vec<_> = read_topic(&topic).into_iter().filter(|r| r.header("sluice.op").is_some()).collect();
    assert_eq!(records.len(), 4, "three inserts and one update");
    let update = records.iter().find(|r| r.header("sluice.op") == Some("u")).expect("the update");
    let (partition, update_offset) = (update.partition, update.offset);
    eventually("crm's group committed past the update", WAIT, || {
        committed(&p, "crm").get(&(topic.clone(), partition)).and_then(|c| c.offset).is_some_and(|o| o > update_offset)
    })
    .await;

    let shown = sluice(&p, &["inspect", "--model", "customers", "--key", r#"{"id":4}"#, "--json"]).await;
    eprintln!("inspect: {}", shown.json);
    assert_eq!(shown.code, 0, "{shown:?}");
    let j = &shown.json;
    let history = j["history"].as_array().expect("history");
    let ops: Vec<&str> = history.iter().map(|h| h["op"].as_str().unwrap()).collect();
    assert_eq!(ops, vec!["c", "u"], "{j}");
    assert_eq!(history[1]["offset"].as_i64(), Some(update_offset), "{j}");
    let mut changed: Vec<&str> = history[1]["changed"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    changed.sort();
    assert_eq!(changed, vec!["updated_at", "v"], "{j}");
    assert!(history.iter().all(|h| h["run_id"].as_str().is_some_and(|r| !r.is_empty())), "{j}");
    assert_eq!(history[1]["after"]["email"], "***", "values masked without --show-values: {j}");
    let destinations = j["destinations"].as_array().unwrap();
    assert_eq!(destinations.len(), 1, "{j}");
    let crm = &destinations[0];
    assert_eq!(crm["destination"], "crm");
    let offsets: Vec<i64> = history.iter().map(|h| h["offset"].as_i64().unwrap()).collect();
    assert_eq!(crm["applied"].as_array().unwrap().iter().map(|o| o.as_i64().unwrap()).collect::<Vec<_>>(), offsets, "{j}");
    assert_eq!(crm["pending"].as_array().unwrap().len(), 0, "{j}");
    assert!(crm["positions"][0]["committed_offset"].as_i64().is_some_and(|o| o > update_offset), "{j}");
    let letters = crm["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{j}");
    assert_eq!((letters[0]["class"].as_str(), letters[0]["status"].as_str(), letters[0]["original_offset"].as_i64()), (Some("permanent"), Some("redriven"), Some(update_offset)), "{j}");

    let values = sluice(&p, &["inspect", "--model", "customers", "--key", r#"{"id":4}"#, "--show-values", "--json"]).await;
    assert_eq!((values.code, values.json["history"][1]["after"]["email"].as_str(), values.json["history"][1]["after"]["v"].as_i64()), (0, Some("c4@example.com"), Some(2)), "{values:?}");
    let text = sluice(&p, &["inspect", "--model", "customers", "--key", r#"{"id":4}"#]).await;
    assert_eq!(text.code, 0, "{text:?}");

    // The documented exit codes.
    assert_eq!(sluice(&p, &["inspect", "--model", "customers", "--key", r#"{"id":99}"#, "--json"]).await.code, 3, "no record of the key");
    for bad in [r#"{"id":"#, r#"{"email":"x"}"#] {
        let run = sluice(&p, &["inspect", "--model", "customers", "--key", bad, "--json"]).await;
        assert_eq!(run.code, 2, "{bad}: {run:?}");
        assert!(run.json["error"].as_str().unwrap().contains("key columns"), "{run:?}");
    }
    let unknown = sluice(&p, &["inspect", "--model", "nope", "--key", r#"{"id":4}"#, "--json"]).await;
    assert_eq!(unknown.code, 2, "{unknown:?}");
    assert!(unknown.json["error"].as_str().unwrap().contains("its models: customers"), "{unknown:?}");

    sink_stop.cancel();
    poller_stop.cancel();
    sink.await.unwrap().unwrap();
    poller.await.unwrap().unwrap();
}

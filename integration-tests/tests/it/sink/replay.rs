//! `sluice replay` against the real broker and PostgreSQL: the plan is what happens, only the
//! named destination's group moves, live members are refused (or waited for with `--force`),
//! and no key ever goes backwards at the destination while a replay meets live updates.

use std::collections::HashMap;
use std::time::Duration;

use sluice_integration_tests::receiver;
use sluice_integration_tests::{eventually, pipeline, start_poller, start_sink, start_sink_of, stop_sinks_then_poller};
use sluice_telemetry::ops::Health;

use super::common::{assert_never_backwards, bump, committed, history, insert, latest_versions, sluice, spec, warehouse_versions, WAIT};

/// Changes before a time and after it; `replay --to <time>` re-applies exactly the keys changed
/// after it, each once at its latest state, as the plan said, and the other destination's group
/// stays where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_to_a_time_reapplies_exactly_the_changes_after_it_and_moves_no_other_group() {
    let (url, received) = receiver::start().await;
    let (other_url, other) = receiver::start().await;
    let sync = format!(
        "fields = {{ v = \"v\" }}\n\n[[destinations]]\nname = \"other\"\n[destinations.webhook]\nurl = \"{other_url}\"\n\n\
         [[syncs]]\nmodel = \"customers\"\ndestination = \"other\"\nfields = {{ v = \"v\" }}"
    );
    let p = pipeline(&url, spec(&sync)).await;
    insert(&p, 1, 20).await;
    let (poller_stop, poller) = start_poller(&p.config);
    let (sink_stop, sink) = start_sink(&p.config, Health::new());
    let (other_stop, other_sink) = start_sink_of(&p.config, "other", Health::new());
    bump(&p, &(1..=10).collect::<Vec<_>>()).await;
    applied_at_both(&p, &received, &other).await;

    // The time, with a margin on both sides of it: every change before it was produced before it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Each change applied before the next, so each is its own event.
    bump(&p, &(5..=15).collect::<Vec<_>>()).await;
    applied_at_both(&p, &received, &other).await;
    bump(&p, &[5, 6, 7]).await;
    applied_at_both(&p, &received, &other).await;
    stop_sinks_then_poller(vec![(sink_stop, sink), (other_stop, other_sink)], poller_stop, poller).await;
    let other_before = committed(&p, "other");
    let crm_before = committed(&p, "crm");

    // The plan: 11 rows changed after the time, 3 of them twice.
    let plan = sluice(&p, &["replay", "--destination", "crm", "--to", &at, "--json"]).await;
    assert_eq!(plan.code, 0, "{plan:?}");
    assert_eq!((plan.json["records"].as_u64(), plan.json["superseded"].as_u64(), plan.json["reapplied"].as_u64()), (Some(14), Some(3), Some(11)), "{}", plan.json);
    assert_eq!(plan.json["skipped"], 0);
    assert_eq!(plan.json["executed"], false);
    assert_eq!(committed(&p, "crm"), crm_before, "a plan changes nothing");

    let done = sluice(&p, &["replay", "--destination", "crm", "--to", &at, "--execute", "--json"]).await;
    assert_eq!(done.code, 0, "{done:?}");
    assert_eq!(done.json["executed"], true);
    assert_eq!(done.json["partitions"], plan.json["partitions"], "done as planned");
    for partition in done.json["partitions"].as_array().unwrap() {
        let key = (partition["topic"].as_str().unwrap().to_string(), partition["partition"].as_i64().unwrap() as i32);
        assert_eq!(committed(&p, "crm")[&key].offset, partition["new"].as_i64(), "{key:?} moved as planned");
    }
    assert_eq!(committed(&p, "other"), other_before, "no other destination's group moves");

    // The replay: each key changed after the time, once, at the state the destination has.
    let before = received.records().len();
    let (sink_stop, sink) = start_sink(&p.config, Health::new());
    eventually("the replay applied", WAIT, || received.records().len() >= before + 11).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    sink_stop.cancel();
    sink.await.unwrap().expect("the sink drains");
    let replayed = history(&received, before);
    let final_versions = warehouse_versions(&p).await;
    let mut keys: Vec<i64> = replayed.keys().copied().collect();
    keys.sort();
    assert_eq!(keys, (5..=15).collect::<Vec<_>>(), "exactly the keys changed after the time");
    let before_replay = history(&received, 0);
    for (key, seen) in &replayed {
        assert_eq!(seen.len(), 1, "key {key} re-applied once: {seen:?}");
        assert_eq!(seen[0].v, Some(final_versions[key]), "key {key} at its latest state");
        let last_before = &before_replay[key][before_replay[key].len() - 2];
        assert_eq!(seen[0].id, last_before.id, "key {key}: the very change the destination had");
    }
    assert_eq!(received.records().len(), before + 11, "nothing else");
    assert_never_backwards(&received);
}

async fn applied_at_both(p: &sluice_integration_tests::Pipeline, one: &receiver::Received, two: &receiver::Received) {
    let want = warehouse_versions(p).await;
    eventually("the changes applied at both destinations", WAIT, || latest_versions(one) == want && latest_versions(two) == want).await;
}

/// The operator's errors and the live-member refusal: exit 2 for an unknown destination or
/// model, 4 while the sink runs, and `--force` waits for the group to empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_refuses_unknown_names_and_live_members_and_force_waits_for_them() {
    let (url, received) = receiver::start().await;
    let p = pipeline(&url, spec("fields = { v = \"v\" }")).await;
    insert(&p, 1, 5).await;
    let (poller_stop, poller) = start_poller(&p.config);
    let (sink_stop, sink) = start_sink(&p.config, Health::new());
    eventually("the rows applied", WAIT, || received.records().len() >= 5).await;

    let unknown = sluice(&p, &["replay", "--destination", "nope", "--to", "earliest", "--json"]).await;
    assert_eq!(unknown.code, 2, "{unknown:?}");
    assert!(unknown.stderr.contains("destination \"nope\" is not in the config (its destinations: crm)"), "{}", unknown.stderr);
    assert_eq!(unknown.json["exit_code"], 2);
    let model = sluice(&p, &["replay", "--destination", "crm", "--model", "orders", "--to", "earliest"]).await;
    assert_eq!(model.code, 2, "{model:?}");
    assert!(model.stderr.contains("model \"orders\" is not in the config"), "{}", model.stderr);
    let bad = sluice(&p, &["replay", "--destination", "crm", "--to", "yesterday"]).await;
    assert_eq!(bad.code, 2, "clap's usage error: {bad:?}");

    let plan = sluice(&p, &["replay", "--destination", "crm", "--to", "earliest"]).await;
    assert_eq!(plan.code, 0, "a plan needs no empty group: {plan:?}");
    let refused = sluice(&p, &["replay", "--destination", "crm", "--to", "earliest", "--execute"]).await;
    assert_eq!(refused.code, 4, "{refused:?}");
    assert!(refused.stderr.contains("live member") && refused.stderr.contains("stop every sink of destination \"crm\""), "{}", refused.stderr);
    let before = committed(&p, "crm");

    // --force waits while the sink drains and leaves.
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        sink_stop.cancel();
        sink.await.unwrap().expect("the sink drains");
    });
    let forced = sluice(&p, &["replay", "--destination", "crm", "--to", "earliest", "--execute", "--force", "--wait-secs", "60", "--json"]).await;
    stopper.await.unwrap();
    assert_eq!(forced.code, 0, "{forced:?}");
    assert_eq!(forced.json["executed"], true);
    let after = committed(&p, "crm");
    assert_ne!(after, before, "moved");
    assert!(after.values().all(|c| c.offset == Some(0)), "to the beginning: {after:?}");
    poller_stop.cancel();
    poller.await.unwrap().unwrap();
}

/// A replay from the beginning while the same keys keep changing: the receiver's log never
/// shows a key going backwards (source offsets and versions per key never decrease), each key
/// is re-applied once at the state the destination had, and every key ends at its latest.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_meeting_live_updates_never_moves_a_key_backwards() {
    let (url, received) = receiver::start().await;
    let p = pipeline(&url, spec("fields = { v = \"v\" }")).await;
    let keys: Vec<i64> = (1..=30).collect();
    insert(&p, 1, 30).await;
    let (poller_stop, poller) = start_poller(&p.config);
    let (sink_stop, sink) = start_sink(&p.config, Health::new());
    for version in 1..=6 {
        if version > 1 {
            bump(&p, &keys).await;
        }
        // Applied before the next change, so each version is its own event.
        let at: HashMap<i64, i64> = keys.iter().map(|&k| (k, version)).collect();
        eventually("a version of every key applied", WAIT, || latest_versions(&received) == at).await;
    }
    sink_stop.cancel();
    sink.await.unwrap().expect("the sink drains");

    let done = sluice(&p, &["replay", "--destination", "crm", "--to", "earliest", "--execute", "--json"]).await;
    assert_eq!(done.code, 0, "{done:?}");
    assert_eq!((done.json["records"].as_u64(), done.json["superseded"].as_u64()), (Some(180), Some(150)), "{}", done.json);

    let before = received.records().len();
    let (sink_stop, sink) = start_sink(&p.config, Health::new());
    // Live updates to the same keys while the sink re-reads the topic.
    for _ in 0..10 {
        bump(&p, &keys).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let latest = warehouse_versions(&p).await;
    eventually("every key at its latest version", WAIT, || latest_versions(&received) == latest).await;
    sluice_integration_tests::stop_pipeline(sink_stop, sink, poller_stop, poller).await;

    assert_never_backwards(&received);
    for (key, seen) in history(&received, before) {
        let old: Vec<i64> = seen.iter().filter_map(|s| s.v).filter(|&v| v <= 6).collect();
        assert_eq!(old, [6], "key {key}: re-applied once, at the state the destination had, never older: {seen:?}");
    }
}

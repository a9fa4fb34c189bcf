//! `sluice dlq` against the real broker and PostgreSQL: after a fix at the destination, a
//! redrive applies exactly the dead letters that no newer change of their key supersedes,
//! reports the superseded ones, and a second redrive applies nothing; a redriven record that
//! fails again comes back with its attempts raised; purge with a filter keeps every dead letter
//! that does not match, and list, show and redrive honour it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use sluice_core::naming;
use sluice_integration_tests::receiver;
use sluice_integration_tests::{eventually, pipeline, read_topic, start_poller, start_sink};
use sluice_telemetry::ops::Health;

use super::common::{assert_never_backwards, bump, history, insert, latest_versions, refusing, sluice, spec, warehouse_versions, WAIT};

/// Wait until the dead-letter topic of `crm` holds `n` records.
async fn dead_letters(p: &sluice_integration_tests::Pipeline, n: usize) {
    let topic = naming::dead_letter_topic(&p.prefix, "crm");
    eventually(&format!("{n} dead letters"), WAIT, || read_topic(&topic).len() == n).await;
}

fn count(json: &serde_json::Value, field: &str) -> u64 {
    json[field].as_u64().unwrap_or_else(|| panic!("{field} in {json}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redrive_after_a_fix_applies_exactly_the_not_superseded_dead_letters_once() {
    let (url, received) = receiver::start().await;
    // The destination refuses keys 1..=6 until it is fixed (a mapping it did not accept), and
    // always refuses emails starting with `reject`.
    let (broken, behaviour) = refusing(true, "unknown field", |on, r| {
        (on && r["key"]["id"].as_i64().unwrap_or(0) <= 6) || r["fields"]["email"].as_str().is_some_and(|e| e.starts_with("reject"))
    });
    received.set_behaviour(behaviour);
    let p = pipeline(&url, spec("fields = { email = \"email\", v = \"v\" }")).await;
    insert(&p, 1, 10).await;
    p.db.execute(&format!("UPDATE {} SET email = 'reject-7@invalid', updated_at = clock_timestamp() WHERE id = 7", p.table), &[]).await.unwrap();
    let (poller_stop, poller) = start_poller(&p.config);
    let (sink_stop, sink) = start_sink(&p.config, Health::new());
    dead_letters(&p, 7).await;
    eventually("keys 8..=10 applied", WAIT, || latest_versions(&received).len() == 3).await;
    // Keys 4, 5 and 6 change while the destination still refuses them: two dead letters each.
    bump(&p, &[4, 5, 6]).await;
    dead_letters(&p, 10).await;
    // The fix; then key 4 changes again and is applied live.
    broken.store(false, Ordering::SeqCst);
    bump(&p, &[4]).await;
    eventually("key 4 applied live", WAIT, || latest_versions(&received).get(&4) == Some(&3)).await;

    let listed = sluice(&p, &["dlq", "list", "--destination", "crm", "--json"]).await;
    assert_eq!(listed.code, 0, "{listed:?}");
    assert_eq!(count(&listed.json, "total"), 10, "{}", listed.json);
    let groups = listed.json["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "one class, status and message: {}", listed.json);
    assert_eq!((groups[0]["class"].as_str(), groups[0]["status"].as_str(), groups[0]["count"].as_u64()), (Some("permanent"), Some("pending"), Some(10)));

    // Keys 1, 2, 3 (their only state), 5 and 6 (their second) are re-sent, and 7, which fails
    // again; key 4's two letters and the first of 5 and 6 are superseded.
    let before = received.records().len();
    let first = sluice(&p, &["dlq", "redrive", "--destination", "crm", "--json"]).await;
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!((count(&first.json, "selected"), count(&first.json, "redriven"), count(&first.json, "superseded"), count(&first.json, "unredrivable")), (10, 6, 4, 0), "{}", first.json);
    dead_letters(&p, 11).await;
    let want = warehouse_versions(&p).await;
    eventually("every key but 7 at its latest version", WAIT, || {
        let mut got = latest_versions(&received);
        got.insert(7, want[&7]);
        got == want
    })
    .await;
    let applied = history(&received, before);
    let mut keys: Vec<i64> = applied.keys().copied().collect();
    keys.sort();
    assert_eq!(keys, [1, 2, 3, 5, 6], "exactly the dead letters not superseded: {applied:?}");
    for (key, seen) in &applied {
        assert_eq!(seen.len(), 1, "key {key} applied once: {seen:?}");
        assert_eq!(seen[0].v, Some(want[key]), "key {key} at its latest state");
    }

    // Key 7 failed again: a new dead letter with its original coordinates and attempts raised.
    let letters = read_topic(&naming::dead_letter_topic(&p.prefix, "crm"));
    let of_seven: Vec<_> = letters.iter().filter(|l| l.payload == letters.iter().rev().find(|x| x.header("sluice.error.attempts") == Some("2")).unwrap().payload).collect();
    assert_eq!(of_seven.len(), 2, "the first dead letter of key 7 and its return");
    assert_eq!(of_seven[0].header("sluice.original.offset"), of_seven[1].header("sluice.original.offset"));
    assert_eq!((of_seven[0].header("sluice.error.attempts"), of_seven[1].header("sluice.error.attempts")), (Some("1"), Some("2")));

    // A second redrive: only key 7's new dead letter is pending; nothing is applied again.
    let settled = received.records().len();
    let second = sluice(&p, &["dlq", "redrive", "--destination", "crm", "--json"]).await;
    assert_eq!(second.code, 0, "{second:?}");
    assert_eq!((count(&second.json, "selected"), count(&second.json, "redriven"), count(&second.json, "superseded")), (1, 1, 0), "{}", second.json);
    dead_letters(&p, 12).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(received.records().len(), settled, "the second redrive applied nothing");

    let listed = sluice(&p, &["dlq", "list", "--destination", "crm", "--json"]).await;
    let by_status = |status: &str| listed.json["groups"].as_array().unwrap().iter().filter(|g| g["status"] == status).map(|g| g["count"].as_u64().unwrap()).sum::<u64>();
    assert_eq!((by_status("redriven"), by_status("superseded"), by_status("pending")), (7, 4, 1), "{}", listed.json);
    sluice_integration_tests::stop_pipeline(sink_stop, sink, poller_stop, poller).await;
    assert_never_backwards(&received);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purge_with_a_filter_keeps_every_dead_letter_that_does_not_match() {
    let (url, _received) = receiver::start().await;
    let p = pipeline(&url, spec("fields = { email = \"email\", v = \"v\" }")).await;
    let reject = |first: i64, last: i64| {
        format!("UPDATE {} SET email = 'reject-' || id || '@invalid', updated_at = clock_timestamp() WHERE id BETWEEN {first} AND {last}", p.table)
    };
    insert(&p, 1, 6).await;
    p.db.execute(&reject(1, 3), &[]).await.unwrap();
    let (poller_stop, poller) = start_poller(&p.config);
    let (sink_stop, sink) = start_sink(&p.config, Health::new());
    dead_letters(&p, 3).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    p.db.execute(&reject(4, 6), &[]).await.unwrap();
    dead_letters(&p, 6).await;

    // Arguments: a clear error, exit 2.
    let unknown = sluice(&p, &["dlq", "list", "--destination", "nope", "--json"]).await;
    assert_eq!(unknown.code, 2, "{unknown:?}");
    assert!(unknown.stderr.contains("destination \"nope\" is not in the config (its destinations: crm)"), "{}", unknown.stderr);
    let class = sluice(&p, &["dlq", "purge", "--destination", "crm", "--error-class", "fatal"]).await;
    assert_eq!(class.code, 2, "{class:?}");
    assert!(class.stderr.contains("--error-class \"fatal\" is not a dead-letter class"), "{}", class.stderr);

    // Without --execute nothing is recorded.
    let plan = sluice(&p, &["dlq", "purge", "--destination", "crm", "--until", &at, "--json"]).await;
    assert_eq!(plan.code, 0, "{plan:?}");
    assert_eq!((count(&plan.json, "purged"), plan.json["executed"].as_bool()), (3, Some(false)), "{}", plan.json);
    let listed = sluice(&p, &["dlq", "list", "--destination", "crm", "--json"]).await;
    assert_eq!(count(&listed.json, "total"), 6, "{}", listed.json);

    let early = sluice(&p, &["dlq", "purge", "--destination", "crm", "--until", &at, "--execute", "--json"]).await;
    assert_eq!(early.code, 0, "{early:?}");
    assert_eq!((count(&early.json, "purged"), count(&early.json, "kept")), (3, 3), "{}", early.json);
    let five = sluice(&p, &["dlq", "purge", "--destination", "crm", "--key", r#"{"id":5}"#, "--execute", "--json"]).await;
    assert_eq!((count(&five.json, "purged"), count(&five.json, "kept")), (1, 2), "{}", five.json);

    // Exactly keys 4 and 6 are left, for list, show and redrive.
    let listed = sluice(&p, &["dlq", "list", "--destination", "crm", "--json"]).await;
    assert_eq!((count(&listed.json, "total"), count(&listed.json, "purged")), (2, 4), "{}", listed.json);
    let shown = sluice(&p, &["dlq", "show", "--destination", "crm", "--json"]).await;
    assert_eq!(shown.code, 0, "{shown:?}");
    let mut ids: Vec<i64> = shown.json["letters"].as_array().unwrap().iter().map(|l| l["key"]["id"].as_i64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, [4, 6], "{}", shown.json);
    let letter = &shown.json["letters"][0];
    assert_eq!(letter["record"]["after"]["email"], "***", "masked: {letter}");
    assert_eq!(letter["class"], "permanent");
    assert!(!shown.json.to_string().contains("@invalid"), "no values without --show-values");
    let values = sluice(&p, &["dlq", "show", "--destination", "crm", "--key", r#"{"id":4}"#, "--show-values", "--json"]).await;
    assert_eq!(values.json["letters"][0]["record"]["after"]["email"], "reject-4@invalid", "{}", values.json);
    let gone = sluice(&p, &["dlq", "show", "--destination", "crm", "--key", r#"{"id":1}"#, "--json"]).await;
    assert_eq!(gone.code, 3, "a purged dead letter is not shown: {gone:?}");
    let text = sluice(&p, &["dlq", "list", "--destination", "crm"]).await;
    assert_eq!(text.code, 0, "{text:?}");

    let redrive = sluice(&p, &["dlq", "redrive", "--destination", "crm", "--json"]).await;
    assert_eq!(redrive.code, 0, "{redrive:?}");
    assert_eq!(count(&redrive.json, "selected"), 2, "purged dead letters are not redriven: {}", redrive.json);
    dead_letters(&p, 8).await;
    sluice_integration_tests::stop_pipeline(sink_stop, sink, poller_stop, poller).await;
}

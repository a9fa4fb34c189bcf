//! `sluice backfill` against the real broker and PostgreSQL: a destination that has nothing
//! (its group moved to the end of the topics, as for a destination added after the fact) ends
//! equal to the warehouse while live updates to the same keys keep flowing, and the receiver's
//! log never shows a key going backwards.

use std::time::Duration;

use sluice_core::naming;
use sluice_integration_tests::{eventually, pipeline, read_topic, receiver, start_poller, start_sink};
use sluice_telemetry::ops::Health;

use super::common::{assert_never_backwards, bump, history, insert, latest_versions, sluice, spec, warehouse_versions, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backfill_of_an_empty_destination_ends_equal_to_the_warehouse_while_live_updates_flow() {
    let (url, received) = receiver::start().await;
    let p = pipeline(&url, spec("fields = { v = \"v\" }")).await;
    let topic = naming::change_topic(&p.prefix, "customers");
    let all: Vec<i64> = (1..=60).collect();
    insert(&p, 1, 60).await;
    // History before the destination has anything: three versions of every key.
    let (poller_stop, poller) = start_poller(&p.config);
    for (version, events) in [(1, 60), (2, 120), (3, 180)] {
        if version > 1 {
            bump(&p, &all).await;
        }
        eventually(&format!("version {version} on the change topic"), WAIT, || read_topic(&topic).len() >= events).await;
    }
    let moved = sluice(&p, &["replay", "--destination", "crm", "--to", "latest", "--execute", "--json"]).await;
    assert_eq!(moved.code, 0, "{moved:?}");
    let (sink_stop, sink) = start_sink(&p.config, Health::new());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(received.records().is_empty(), "the destination starts empty");

    // The backfill (60 keys at 15/s: about four seconds) races live updates of keys 1..=30;
    // keys 31..=60 reach the destination only through the backfill.
    let backfill = tokio::spawn({
        let text = p.text.clone();
        async move {
            let dir = std::env::temp_dir().join(sluice_integration_tests::unique("backfill"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("sluice.toml"), text).unwrap();
            let output = tokio::process::Command::new(sluice_integration_tests::binary("sluice"))
                .args(["backfill", "--destination", "crm", "--rate", "15", "--json", "--config"])
                .arg(dir.join("sluice.toml"))
                .env("RUST_LOG", "warn")
                .output()
                .await
                .unwrap();
            (output.status.code(), serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap_or_default(), String::from_utf8_lossy(&output.stderr).to_string())
        }
    });
    let live: Vec<i64> = (1..=30).collect();
    for _ in 0..12 {
        bump(&p, &live).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (code, summary, stderr) = backfill.await.unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!((summary["sent"].as_u64(), summary["topics"][0]["keys"].as_u64()), (Some(60), Some(60)), "{summary}");
    assert!(summary["elapsed_ms"].as_u64().unwrap() >= 3000, "bounded by --rate: {summary}");

    let want = warehouse_versions(&p).await;
    eventually("the destination equal to the warehouse", WAIT, || latest_versions(&received) == want).await;
    sluice_integration_tests::stop_pipeline(sink_stop, sink, poller_stop, poller).await;
    assert_never_backwards(&received);
    let seen = history(&received, 0);
    for key in 31..=60 {
        assert_eq!(seen[&key].iter().map(|s| s.v).collect::<Vec<_>>(), [Some(3)], "key {key}: its current state, once, from the backfill");
    }
}

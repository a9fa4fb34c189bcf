//! The dead-letter circuit breaker against the real broker: a sink whose every record is refused
//! halts after the dead letters it allows — not ready, with the reason — with no offset committed
//! past them; after the fix, a restart delivers every record the breaker held back.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::naming;
use sluice_integration_tests::receiver;
use sluice_integration_tests::{eventually, pipeline, read_topic, start_poller, start_sink, Spec};
use sluice_telemetry::ops::Health;

use super::common::{committed, insert, latest_versions, refusing, spec, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_breaker_halts_a_sink_that_refuses_everything_with_nothing_committed_past_the_dead_letters_it_allowed() {
    let (url, received) = receiver::start().await;
    let (refuse, behaviour) = refusing(true, "unknown property", |on, _| on);
    received.set_behaviour(behaviour);
    let p = pipeline(&url, Spec { destination_extra: "batch_max_records = 1\nbatch_linger_ms = 0\ndead_letter_breaker = { max_consecutive = 5 }", ..spec("fields = { v = \"v\" }") }).await;
    insert(&p, 1, 40).await;
    let (poller_stop, poller) = start_poller(&p.config);
    let topic = naming::change_topic(&p.prefix, "customers");
    eventually("the rows on the change topic", WAIT, || read_topic(&topic).len() >= 40).await;

    let health = Health::new();
    let (_sink_stop, sink) = start_sink(&p.config, Arc::clone(&health));
    let stopped = tokio::time::timeout(WAIT, sink).await.expect("the sink halts by itself").unwrap();
    let error = stopped.expect_err("halted by the breaker").to_string();
    assert!(error.contains("dead-letter circuit breaker tripped: 6 dead letters in a row would exceed dead_letter_breaker.max_consecutive = 5"), "{error}");
    let reason = health.not_ready_reason().expect("not ready");
    assert!(reason.contains("dead-letter circuit breaker tripped"), "{reason}");

    let letters = read_topic(&naming::dead_letter_topic(&p.prefix, "crm"));
    assert_eq!(letters.len(), 5, "exactly the dead letters it allowed");
    let dead: HashSet<(i32, i64)> = letters
        .iter()
        .map(|l| (l.header("sluice.original.partition").unwrap().parse().unwrap(), l.header("sluice.original.offset").unwrap().parse().unwrap()))
        .collect();
    let marks = sluice_kafka::groups::watermarks(&p.config.kafka, &topic).unwrap();
    let mut committed_dead = 0;
    for ((_, partition), at) in committed(&p, "crm") {
        let low = marks.iter().find(|m| m.0 == partition).unwrap().1;
        for offset in low..at.offset.unwrap_or(low) {
            assert!(dead.contains(&(partition, offset)), "partition {partition}: offset {offset} committed but never dead-lettered nor applied");
            committed_dead += 1;
        }
    }
    assert!(received.records().is_empty());

    // The fix, and a restart: every record not committed is delivered (the dead letters whose
    // offsets the halted sink had not committed yet too: at least once).
    refuse.store(false, Ordering::SeqCst);
    let (sink_stop, sink) = start_sink(&p.config, Health::new());
    let want = 40 - committed_dead;
    eventually(&format!("the {want} rows not committed applied"), WAIT, || latest_versions(&received).len() == want).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    sluice_integration_tests::stop_pipeline(sink_stop, sink, poller_stop, poller).await;
    let applied: HashSet<i64> = latest_versions(&received).into_keys().collect();
    assert_eq!(applied.len(), want, "each row applied or dead-lettered and committed");
    assert_eq!(read_topic(&naming::dead_letter_topic(&p.prefix, "crm")).len(), 5, "no dead letter after the trip");
}

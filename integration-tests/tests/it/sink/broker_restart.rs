//! Issue 12 item 7, first fault: the broker stopped and restarted mid-run, with a `sluice-poller`
//! and a `sluice-sink` process working (the poller inside its transactions, rows still being
//! written; the sink mid-batch against a slow destination). On a broker of the test's own
//! ([`PrivateBroker`]): the shared one is never stopped.
//!
//! Checked: both stay up and turn `/readyz` 503 naming the brokers while they are away, 200
//! again after, without a restart; the change topic holds exactly one event per row (no event
//! lost, none duplicated: the poller's transactions); the destination receives every row
//! (delivery is at least once, so a row may arrive twice, and the count is printed).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use sluice_core::naming;
use sluice_integration_tests::private_broker::PrivateBroker;
use sluice_integration_tests::process::Service;
use sluice_integration_tests::receiver::{self, Behaviour, Reply};
use sluice_integration_tests::{eventually, pipeline, read_topic_with, require_postgres, Spec};

use super::common::{insert_into, spec, WAIT};

/// Rows written before the broker goes, and in all.
const BEFORE: i64 = 100;
const ROWS: i64 = 400;

/// Wait until `service` answers `/readyz` with `status` and a body holding `words`.
async fn wait_readyz(service: &mut Service, name: &str, status: u16, words: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answer = service.readyz().await;
        if answer.as_ref().is_some_and(|(s, body)| *s == status && body.contains(words)) {
            return;
        }
        assert!(service.child.try_wait().unwrap().is_none(), "{name} exited instead of waiting for the broker\n{}", service.output());
        assert!(tokio::time::Instant::now() < deadline, "{name}: no /readyz {status} with {words:?}: {answer:?}\n{}", service.output());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_stopped_and_restarted_mid_run_loses_and_duplicates_no_event_and_readyz_follows_it() {
    let broker = PrivateBroker::launch();
    let (url, received) = receiver::start().await;
    // A slow destination, so batches are in flight when the broker goes.
    received.set_behaviour(Behaviour::Script(Arc::new(|_, records| Reply { delay: Duration::from_millis(100), ..Reply::ok(records.len()) })));
    let p = pipeline(
        &url,
        Spec {
            bootstrap_servers: Some(&broker.bootstrap),
            model_extra: "batch_rows = 20",
            destination_extra: "batch_max_records = 10\nbatch_linger_ms = 20",
            ..spec("fields = { v = \"v\" }")
        },
    )
    .await;
    insert_into(&p.db, &p.table, 1, BEFORE).await;
    let mut poller = Service::start("sluice-poller", &p.text, &["--trigger-listen", "127.0.0.1:0"], &[]);
    let mut sink = Service::sink(&p.text, "crm", &[]);
    wait_readyz(&mut poller, "poller", 200, "").await;
    wait_readyz(&mut sink, "sink", 200, "").await;

    // Rows keep coming through the outage: the poller is inside a page's transaction when
    // the broker goes, and has pages to write while it is away.
    let writer = tokio::spawn({
        let table = p.table.clone();
        async move {
            let db = require_postgres().await;
            for first in (BEFORE + 1..=ROWS).step_by(10) {
                insert_into(&db, &table, first, first + 9).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    eventually("the sink delivering", WAIT, || received.records().len() >= 30).await;
    let stop = tokio::task::spawn_blocking(move || {
        broker.stop();
        broker
    });
    wait_readyz(&mut poller, "poller", 503, "every broker is down").await;
    wait_readyz(&mut sink, "sink", 503, "every broker is down").await;
    let broker = stop.await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let broker = tokio::task::spawn_blocking(move || {
        broker.start();
        broker
    })
    .await
    .unwrap();
    wait_readyz(&mut poller, "poller", 200, "").await;
    wait_readyz(&mut sink, "sink", 200, "").await;
    writer.await.unwrap();

    let ids = || received.records().iter().map(|r| r["key"]["id"].as_i64().unwrap()).collect::<Vec<i64>>();
    eventually("every row at the destination", WAIT, || ids().into_iter().collect::<HashSet<_>>().len() == ROWS as usize).await;
    let arrived = ids();
    let unknown: Vec<&i64> = arrived.iter().filter(|id| !(1..=ROWS).contains(*id)).collect();
    assert!(unknown.is_empty(), "rows that were never written arrived: {unknown:?}");
    println!("{} deliveries for {ROWS} rows ({} again after the restart, as at-least-once allows)", arrived.len(), arrived.len() - ROWS as usize);
    for (name, service) in [("poller", &mut poller), ("sink", &mut sink)] {
        assert!(service.child.try_wait().unwrap().is_none(), "{name} restarted or exited\n{}", service.output());
    }

    // Exactly one event per row: every row was written once, so two events of one key are a
    // duplicate, and fewer keys than rows a loss.
    let topic = naming::change_topic(&p.prefix, "customers");
    let records = read_topic_with(ClientConfig::new().set("bootstrap.servers", &broker.bootstrap), &topic);
    let mut per_key: HashMap<Vec<u8>, usize> = HashMap::new();
    for record in &records {
        *per_key.entry(record.key.clone().expect("keyed")).or_default() += 1;
    }
    let duplicated = per_key.values().filter(|n| **n > 1).count();
    assert_eq!(duplicated, 0, "keys with more than one event on {topic}");
    assert_eq!((records.len(), per_key.len()), (ROWS as usize, ROWS as usize), "one event per row on {topic}");
}

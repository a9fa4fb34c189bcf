//! `warehouse_diff` mode against the real broker and PostgreSQL: the diff is computed in the
//! warehouse, the snapshot table is swapped only after Kafka committed, a pending snapshot whose
//! run never reached Kafka is discarded, and crashes at random points lose and duplicate nothing.


use std::time::Duration;

use super::common::*;
use sluice_integration_tests::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pending_snapshot_whose_run_never_reached_kafka_is_discarded() {
    let f = fixture("warehouse_diff", None, "").await;
    seed(&f, 1..=5).await;
    snapshot(&f, 5).await;
    // A run crashed after building its pending snapshot (claiming id 1 was deleted), before
    // any Kafka commit: it must leave no trace.
    let model = &f.model;
    f.db.batch_execute(&format!(
        r#"CREATE TABLE sluice_state."{model}_pending" AS SELECT * FROM sluice_state."{model}_snapshot" WHERE id <> 1;
           COMMENT ON TABLE sluice_state."{model}_pending" IS 'crashed-run';
           CREATE TABLE sluice_state."{model}_changes" AS SELECT 1 AS sluice_seq"#
    ))
    .await
    .unwrap();
    upsert(&f, 2, "pro", "1.00").await;
    let (stop, poller) = start_poller(&f.config, &[]);
    eventually("the real change", WAIT, || count(&decode_all(&f), "u") == 1).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop_poller(stop, poller).await;
    let events = decode_all(&f);
    assert_eq!(count(&events, "d"), 0, "the crashed run's phantom delete was never emitted: {:?}", ops(&events));
    assert_eq!(replay(&events), table_state(&f).await);
}

/// As `diff_killed_at_random_points_loses_and_duplicates_nothing`, with the diff computed in
/// the warehouse.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warehouse_diff_killed_at_random_points_loses_and_duplicates_nothing() {
    killed_at_random_points_loses_and_duplicates_nothing("warehouse_diff").await;
}

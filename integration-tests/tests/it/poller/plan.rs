//! `sluice plan`: the next diff run's changes, with samples, and nothing emitted.


use super::common::*;
use sluice_integration_tests::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plan_counts_and_samples_the_next_run_and_emits_nothing() {
    let f = fixture("diff", None, "gates = { max_change_pct = 40.0 }").await;
    for id in 1..=10 {
        upsert(&f, id, "free", "1.00").await;
    }
    let (stop, poller) = start_poller(&f.config, &[]);
    eventually("snapshot of 10 rows", WAIT, || count(&decode_all(&f), "r") == 10).await;
    stop.cancel();
    poller.await.unwrap().unwrap();

    upsert(&f, 11, "free", "1.00").await;
    upsert(&f, 4, "pro", "1.00").await;
    f.db.execute(&format!("DELETE FROM {} WHERE id = 7", f.table), &[]).await.unwrap();
    let report = sluice_poller::plan::plan(&f.config, &f.model, 5).await.unwrap();
    let text = report.to_string();
    assert_eq!((report.counts.inserts, report.counts.updates, report.counts.deletes), (1, 1, 1), "{text}");
    assert!(text.contains(&format!("model {}: 10 rows read, 10 rows emitted so far", f.model)), "{text}");
    assert!(text.contains("  inserts (c): 1\n    {\"id\":11}"), "{text}");
    assert!(text.contains("  updates (u): 1\n    {\"id\":4} changed: tier"), "{text}");
    assert!(text.contains("  deletes (d): 1\n    {\"id\":7}"), "{text}");
    assert!(text.ends_with("the run would emit 3 events; nothing was emitted by this plan"), "{text}");
    assert_eq!(decode_all(&f).len(), 10, "plan emitted nothing");

    // A run the change-volume guard would refuse says so.
    f.db.execute(&format!("DELETE FROM {} WHERE id <= 5", f.table), &[]).await.unwrap();
    let report = sluice_poller::plan::plan(&f.config, &f.model, 2).await.unwrap();
    assert!(report.refused.as_deref().is_some_and(|r| r.contains("above max_change_pct = 40")), "{report}");
    assert_eq!(decode_all(&f).len(), 10, "plan emitted nothing");
}


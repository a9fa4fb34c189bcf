//! `sluice plan`: the next diff run's changes, with samples, and nothing emitted.


use super::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plan_counts_and_samples_the_next_run_and_emits_nothing() {
    let f = fixture("diff", None, "gates = { max_change_pct = 40.0 }").await;
    seed(&f, 1..=10).await;
    snapshot(&f, 10).await;

    upsert(&f, 11, "free", "1.00").await;
    upsert(&f, 4, "pro", "1.00").await;
    f.db.execute(&format!("DELETE FROM {} WHERE id = 7", f.table), &[]).await.unwrap();
    let (_, text) = plan(&f.config, &f.model, 5, (1, 1, 1)).await;
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


//! `diff` mode against the real broker and PostgreSQL: inserts, updates with `before` images and
//! changed columns, deletes followed by tombstones, state rebuilt from the change topic after a
//! restart, crashes at random points, and the data-quality gates.



use super::common::*;
use sluice_integration_tests::eventually;

/// The poller task is aborted at random points (mid-scan, mid-transaction, between the
/// transactions of one run) while rows are inserted, updated and deleted; afterwards the log is
/// a valid history with no duplicate event, and its state equals the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn diff_killed_at_random_points_loses_and_duplicates_nothing() {
    killed_at_random_points_loses_and_duplicates_nothing("diff").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_and_null_keys_refuse_the_run_and_emit_nothing() {
    // A query model whose key is duplicated for id 2, then one whose key is NULL in one row.
    refused_first_run(
        "SELECT id, email, tier, ltv FROM {table} UNION ALL SELECT id, email, tier, ltv FROM {table} WHERE id = 2",
        |model| format!(r#"model {model}: 1 duplicate primary key(s); nothing was emitted. Sample keys: {{"id":2}}. Fix: make the model's primary_key unique"#),
    )
    .await;
    refused_first_run("SELECT CASE WHEN id = 3 THEN NULL ELSE id END AS id, email, tier, ltv FROM {table}", |model| {
        format!(r#"model {model}: 1 row(s) have NULL in a primary-key column (id); nothing was emitted. Sample keys: {{"id":null}}."#)
    })
    .await;
}

/// A diff model over `query` (rows 1-3 in the table) stops in its first run with the error
/// `expected(model name)` and emits nothing.
async fn refused_first_run(query: &str, expected: impl Fn(&str) -> String) {
    let f = fixture("diff", Some(query), "").await;
    seed(&f, 1..=3).await;
    let text = run_error(&f.config).await;
    assert!(text.contains(&expected(&f.model)), "{text}");
    assert!(read_settled(&sluice_core::naming::change_topic(&f.prefix, &f.model)).is_empty(), "nothing emitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn change_volume_guard_halts_the_model_until_an_operator_confirms() {
    let f = fixture("diff", None, "gates = { max_change_pct = 20.0 }").await;
    seed(&f, 1..=10).await;
    snapshot(&f, 10).await; // a snapshot is exempt from the guard

    // Someone truncates half the table upstream.
    f.db.execute(&format!("DELETE FROM {} WHERE id > 5", f.table), &[]).await.unwrap();
    let (_stop, poller) = start_poller(&f.config, &[]);
    let error = tokio::time::timeout(WAIT, poller).await.expect("the model halts").unwrap().unwrap_err();
    let text = format!("{error:#}");
    assert!(
        text.contains(&format!("model {m}: 5 changes (0 inserts, 0 updates, 5 deletes) would touch 50.0% of 10 tracked rows, above max_change_pct = 20; the model is halted and nothing was emitted. Fix: inspect with `sluice plan {m}`, then let this run through with `sluice-poller --confirm-large-change {m}`", m = f.model)),
        "{text}"
    );
    assert_eq!(decode_all(&f).len(), 10, "nothing emitted");

    let (stop, poller) = start_poller(&f.config, &[f.model.as_str()]);
    eventually("confirmed deletes emitted", WAIT, || count(&decode_all(&f), "d") == 5).await;
    stop_poller(stop, poller).await;
    assert_eq!(replay(&decode_all(&f)), table_state(&f).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn row_count_bounds_refuse_the_run() {
    let f = fixture("diff", None, "gates = { min_rows = 5, max_rows = 100 }").await;
    seed(&f, 1..=3).await;
    let text = run_error(&f.config).await;
    assert!(text.contains(&format!("model {}: the run read 3 rows, fewer than min_rows = 5; nothing was emitted.", f.model)), "{text}");
    assert!(read_settled(&sluice_core::naming::change_topic(&f.prefix, &f.model)).is_empty(), "nothing emitted");
}

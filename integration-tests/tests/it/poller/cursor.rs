//! Cursor mode against real PostgreSQL and Kafka: updates and deletes carrying the key's
//! previous image (rebuilt from the change topic after a restart, exact under random kills, and
//! the `before_images = false` opt-out), soft deletes (`deleted_column`) in the plain loop and
//! with the look-back window, hard deletes that plain cursor mode cannot see (the control) and
//! that the periodic reconciliation (`reconcile_interval_ms`) finds exactly once, a
//! reconciliation that finds nothing committing nothing, and `sluice plan` for a cursor model.
//! Every test ends with an exact accounting of the change topic.


use std::sync::Arc;
use std::time::Duration;

use super::common::*;
use sluice_core::config::Config;
use sluice_core::{naming, Op, Value};
use sluice_integration_tests::eventually;

/// Column index of `deleted_at` in the cursor fixture's rows.
const DELETED_AT: usize = 3;

async fn insert(f: &Fixture, id: i64, note: &str) {
    f.db.execute(&format!("INSERT INTO {} (id, note, updated_at) VALUES ($1, $2, clock_timestamp())", f.table), &[&id, &note])
        .await
        .unwrap();
}

async fn touch(f: &Fixture, id: i64, note: &str) {
    f.db.execute(&format!("UPDATE {} SET note = $2, updated_at = clock_timestamp() WHERE id = $1", f.table), &[&id, &note]).await.unwrap();
}

async fn soft_delete(f: &Fixture, id: i64) {
    f.db.execute(&format!("UPDATE {} SET deleted_at = clock_timestamp(), updated_at = clock_timestamp() WHERE id = $1", f.table), &[&id])
        .await
        .unwrap();
}

async fn hard_delete(f: &Fixture, id: i64) {
    f.db.execute(&format!("DELETE FROM {} WHERE id = $1", f.table), &[&id]).await.unwrap();
}

fn expected(list: &[(&str, i64)]) -> Vec<(String, i64)> {
    sorted(list.iter().map(|(op, id)| (op.to_string(), *id)).collect())
}

/// Records of the model on the state topic (one per committed transaction).
fn state_records(f: &Fixture) -> usize {
    read_settled(&naming::poller_state_topic(&f.prefix)).iter().filter(|r| r.key.as_deref() == Some(f.model.as_bytes())).count()
}

/// The same model and table with another detection setting (`detection` replaces
/// `extra` in the fixture's config).
fn reconfigured(f: &Fixture, extra: &str, detection: &str) -> Arc<Config> {
    let text = f
        .config_text
        .replace(&format!("cursor_column = \"updated_at\"{extra} }}"), &format!("cursor_column = \"updated_at\"{detection} }}"));
    assert_ne!(text, f.config_text, "the detection was replaced");
    Arc::new(Config::parse("integration-test.toml", &text).expect("valid"))
}

async fn run_for(config: &Arc<Config>, duration: Duration) {
    let (stop, poller) = start_poller(config, &[]);
    tokio::time::sleep(duration).await;
    stop_poller(stop, poller).await;
}

/// Soft deletes, with the default before images (`images`) or without them.
async fn soft_delete_case(lookback: &str, images: bool) {
    let opt_out = if images { "" } else { ", before_images = false" };
    let f = cursor_fixture(&format!(", deleted_column = \"deleted_at\"{lookback}{opt_out}"), 2).await;
    for id in 1..=4 {
        insert(&f, id, "new").await;
    }
    soft_delete(&f, 4).await; // deleted before the first snapshot: destinations never knew it
    let (stop, poller) = start_poller(&f.config, &[]);
    eventually("snapshot of the 3 live rows", WAIT, || count(&decode_all(&f), "r") == 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sorted(events_of(&f)), expected(&[("r", 1), ("r", 2), ("r", 3)]), "the soft-deleted row 4 is skipped by the snapshot");

    soft_delete(&f, 2).await;
    touch(&f, 3, "changed").await;
    eventually("the soft delete and the update", WAIT, || events_of(&f).len() == 6).await;
    tokio::time::sleep(Duration::from_millis(600)).await; // several more polls
    stop_poller(stop, poller).await;
    run_for(&f.config, Duration::from_millis(1500)).await; // a restart repeats nothing

    assert_eq!(
        sorted(events_of(&f)),
        expected(&[("r", 1), ("r", 2), ("r", 3), ("d", 2), ("tombstone", 2), ("u", 3)]),
        "exactly one delete and its tombstone for the soft-deleted row"
    );
    let events = decode_all(&f);
    let (_, delete) = events.iter().find(|(_, d)| matches!(d, Some((Op::Delete, ..)))).expect("a delete");
    let (_, before, after, _) = delete.as_ref().unwrap();
    let before = before.as_ref().expect("the delete carries the row");
    assert_eq!((id_of(before), &before[1]), (2, &Value::String("new".into())));
    assert_eq!(after, &None);
    let (_, update) = events.iter().find(|(_, d)| matches!(d, Some((Op::Update, ..)))).expect("an update");
    let (_, update_before, _, changed) = update.as_ref().unwrap();
    let state = if images {
        // The delete names the row as destinations know it: its last emitted image.
        assert_eq!(before[DELETED_AT], Value::Null, "before is the last emitted image, not the row as read: {before:?}");
        assert_eq!(update_before.as_ref().map(|b| b[1].clone()), Some(Value::String("new".into())), "the update carries the previous image");
        assert_eq!(changed.as_deref(), Some(&["note".to_string(), "updated_at".to_string()][..]), "and the changed columns");
        replay(&events) // every u and d carries exactly the previous image
    } else {
        assert!(matches!(before[DELETED_AT], Value::TimestampMicros(_)), "before is the row as read, deletion mark included: {before:?}");
        assert_eq!((update_before, changed), (&None, &None), "without before images an update carries none");
        replay_with(&events, Images::RowAsRead { deleted: Some(DELETED_AT) })
    };
    assert_eq!(state, cursor_table_state(&f).await, "the compacted topic equals the live rows of the table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_soft_deleted_row_is_one_delete_and_a_tombstone() {
    soft_delete_case("", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_soft_deleted_row_is_one_delete_and_a_tombstone_with_the_lookback_window() {
    soft_delete_case(", lookback_ms = 60000", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_before_images_a_soft_delete_carries_the_row_as_read_and_updates_carry_none() {
    soft_delete_case("", false).await;
}

/// Every update carries the key's previous image and its changed columns, in the plain loop
/// and with the look-back window: across pages (`batch_rows = 2`), across a restart (the state
/// is rebuilt from the change topic, not from the warehouse) and for a row changed several
/// times. `c` against `u` follows the topic: an un-deleted row is `c` again.
async fn before_images_case(lookback: &str) {
    let f = cursor_fixture(&format!(", deleted_column = \"deleted_at\"{lookback}"), 2).await;
    for id in 1..=5 {
        insert(&f, id, "v0").await;
    }
    let (stop, poller) = start_poller(&f.config, &[]);
    eventually("snapshot of 5 rows", WAIT, || count(&decode_all(&f), "r") == 5).await;
    for id in [2, 4, 5] {
        touch(&f, id, "v1").await;
    }
    eventually("three updates", WAIT, || count(&decode_all(&f), "u") == 3).await;
    stop_poller(stop, poller).await;

    // While stopped: the state the restart needs is in the topic only.
    touch(&f, 2, "v2").await;
    touch(&f, 1, "v1").await;
    soft_delete(&f, 3).await;
    let (stop, poller) = start_poller(&f.config, &[]);
    eventually("the changes made while stopped", WAIT, || count(&decode_all(&f), "u") == 5 && count(&decode_all(&f), "d") == 1).await;
    // Un-deleted: destinations no longer have it, so it is created again.
    f.db.execute(&format!("UPDATE {} SET deleted_at = NULL, note = 'back', updated_at = clock_timestamp() WHERE id = 3", f.table), &[]).await.unwrap();
    touch(&f, 2, "v3").await;
    eventually("the re-created row and one more update", WAIT, || count(&decode_all(&f), "c") == 1 && count(&decode_all(&f), "u") == 6).await;
    tokio::time::sleep(Duration::from_millis(600)).await; // more polls: nothing new
    stop_poller(stop, poller).await;

    let events = decode_all(&f);
    assert_eq!(
        sorted(events_of(&f)),
        expected(&[
            ("r", 1), ("r", 2), ("r", 3), ("r", 4), ("r", 5),
            ("u", 2), ("u", 4), ("u", 5), ("u", 2), ("u", 1), ("d", 3), ("tombstone", 3), ("c", 3), ("u", 2),
        ]),
        "each change once"
    );
    const COLUMNS: [&str; 5] = ["id", "note", "updated_at", "deleted_at", "created_at"];
    for (_, decoded) in &events {
        if let Some((Op::Update, Some(before), Some(after), changed)) = decoded {
            let differ: Vec<String> = COLUMNS.iter().enumerate().filter(|(i, _)| before[*i] != after[*i]).map(|(_, c)| c.to_string()).collect();
            assert_eq!(changed.as_ref(), Some(&differ), "changed columns of id {}", id_of(after));
            assert!(differ.contains(&"updated_at".to_string()));
        }
    }
    // Row 2's updates chain: each before is the after of the previous event.
    let notes: Vec<(Option<Value>, Value)> = events
        .iter()
        .filter_map(|(_, d)| match d {
            Some((Op::Update, before, Some(after), _)) if id_of(after) == 2 => Some((before.as_ref().map(|b| b[1].clone()), after[1].clone())),
            _ => None,
        })
        .collect();
    let note = |s: &str| Value::String(s.into());
    assert_eq!(notes, vec![(Some(note("v0")), note("v1")), (Some(note("v1")), note("v2")), (Some(note("v2")), note("v3"))]);
    assert_eq!(replay(&events), cursor_table_state(&f).await, "exact before images; the compacted topic equals the table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cursor_updates_carry_the_previous_image_across_pages_and_restarts() {
    before_images_case("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cursor_updates_carry_the_previous_image_with_the_lookback_window() {
    before_images_case(", lookback_ms = 60000").await;
}

/// The poller task is aborted at random points (mid-page, mid-read-back, mid-transaction)
/// while rows are inserted, updated and soft-deleted; afterwards every update and delete of the
/// log carries exactly the previous image ([`replay`]), nothing is duplicated, and the
/// compacted topic equals the table: the state kept from commits and the state rebuilt from
/// the topic never disagree.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cursor_killed_at_random_points_keeps_before_images_exact() {
    use rand::Rng;
    let f = cursor_fixture(", deleted_column = \"deleted_at\"", 3).await;
    for id in 1..=30 {
        insert(&f, id, "v0").await;
    }
    // Snapshotted before the kills start, so the rounds' touches of rows 1-30 are updates
    // whatever the machine's load: a poller that never got past its start within a round's
    // kill window (seen under load) would otherwise emit them all as snapshot rows at the end.
    snapshot(&f, 30).await;
    let mut next_id = 31;
    for round in 0..12 {
        let (_stop, poller) = start_poller(&f.config, &[]);
        let kill_after = Duration::from_millis(rand::rng().random_range(100..2500));
        for _ in 0..3 {
            insert(&f, next_id, "v0").await;
            next_id += 1;
        }
        for _ in 0..4 {
            let id = rand::rng().random_range(1..next_id);
            touch(&f, id, &format!("r{round}")).await;
        }
        soft_delete(&f, rand::rng().random_range(1..next_id)).await;
        tokio::time::sleep(kill_after).await;
        poller.abort();
        let _aborted = poller.await; // aborted mid-run on purpose
    }
    let (stop, poller) = start_poller(&f.config, &[]);
    let expected = cursor_table_state(&f).await;
    eventually("the topic's state equals the table", WAIT, || replay(&decode_all(&f)) == expected).await;
    stop_poller(stop, poller).await;
    let events = decode_all(&f);
    assert!(count(&events, "u") > 0, "updates were emitted");
    assert_eq!(replay(&events), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hard_delete_is_missed_by_plain_cursor_mode_and_found_once_by_reconciliation() {
    let f = cursor_fixture("", 2).await;
    for id in 1..=5 {
        insert(&f, id, "new").await;
    }
    // The control: plain cursor mode polls past the delete and emits nothing for it.
    let (stop, poller) = start_poller(&f.config, &[]);
    eventually("snapshot of 5 rows", WAIT, || count(&decode_all(&f), "r") == 5).await;
    hard_delete(&f, 3).await;
    touch(&f, 1, "changed").await;
    eventually("the update polled after the delete", WAIT, || count(&decode_all(&f), "u") == 1).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop_poller(stop, poller).await;
    assert_eq!(count(&decode_all(&f), "d"), 0, "plain cursor mode cannot see a hard delete");

    // With reconciliation: found once after the start, and a later delete by a later round.
    let reconciling = reconfigured(&f, "", ", reconcile_interval_ms = 300");
    let (stop, poller) = start_poller(&reconciling, &[]);
    eventually("row 3 deleted by the reconciliation", WAIT, || events_of(&f).contains(&("tombstone".into(), 3))).await;
    hard_delete(&f, 5).await;
    eventually("row 5 deleted by a later reconciliation", WAIT, || events_of(&f).contains(&("tombstone".into(), 5))).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // ~5 more rounds, finding nothing
    stop_poller(stop, poller).await;
    run_for(&reconciling, Duration::from_millis(1500)).await; // a restart reconciles again: nothing new

    let events = decode_all(&f);
    assert_eq!(
        sorted(events_of(&f)),
        expected(&[("r", 1), ("r", 2), ("r", 3), ("r", 4), ("r", 5), ("u", 1), ("d", 3), ("tombstone", 3), ("d", 5), ("tombstone", 5)]),
        "each hard delete exactly once, nothing else"
    );
    // replay checks each update's and delete's before = the last emitted image (read back
    // from the topic).
    let state = replay(&events);
    assert_eq!(state, cursor_table_state(&f).await, "the compacted topic equals the table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reconciliation_that_finds_nothing_emits_nothing() {
    let f = cursor_fixture(", reconcile_interval_ms = 200", 2).await;
    for id in 1..=3 {
        insert(&f, id, "new").await;
    }
    let (stop, poller) = start_poller(&f.config, &[]);
    eventually("snapshot of 3 rows", WAIT, || count(&decode_all(&f), "r") == 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (changes, states) = (decode_all(&f).len(), state_records(&f));
    tokio::time::sleep(Duration::from_millis(1500)).await; // ~7 rounds over unchanged data
    assert_eq!(decode_all(&f).len(), changes, "no event");
    assert_eq!(state_records(&f), states, "no transaction either");
    // The rounds are running: a delete is found by the next one.
    hard_delete(&f, 2).await;
    eventually("row 2 deleted", WAIT, || events_of(&f).contains(&("tombstone".into(), 2))).await;
    let states = state_records(&f);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_poller(stop, poller).await;
    assert_eq!(state_records(&f), states, "no transaction after the delete");
    assert_eq!(sorted(events_of(&f)), expected(&[("r", 1), ("r", 2), ("r", 3), ("d", 2), ("tombstone", 2)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plan_counts_and_samples_a_cursor_models_next_run_and_emits_nothing() {
    let f = cursor_fixture(", created_column = \"created_at\", deleted_column = \"deleted_at\", reconcile_interval_ms = 3600000", 2).await;
    for id in 1..=6 {
        insert(&f, id, "new").await;
    }
    soft_delete(&f, 6).await;
    // Before the first run: snapshot reads, soft-deleted rows skipped, nothing to reconcile yet.
    let (_, text) = plan(&f.config, &f.model, 2, (5, 0, 0)).await;
    assert!(text.starts_with(&format!("model {}: 6 rows read after the committed position, 0 events emitted so far\n", f.model)), "{text}");
    assert!(text.contains("  snapshot reads (r): 5\n    {\"id\":1}\n    {\"id\":2}\n  updates (u): 0\n"), "{text}");
    assert!(text.contains("  deletes (d): 0 (0 soft-deleted; no reconciliation of hard deletes)\n"), "{text}");
    assert!(text.ends_with("the run would emit 5 events; nothing was emitted by this plan"), "{text}");

    let (stop, poller) = start_poller(&f.config, &[]);
    eventually("snapshot of 5 rows", WAIT, || count(&decode_all(&f), "r") == 5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_poller(stop, poller).await;

    insert(&f, 7, "new").await; // c
    touch(&f, 2, "changed").await; // u
    soft_delete(&f, 3).await; // d (soft)
    hard_delete(&f, 4).await; // d (hard, found by reconciliation)
    let (so_far, states) = (events_of(&f), state_records(&f));
    let (report, text) = plan(&f.config, &f.model, 5, (1, 1, 2)).await;
    assert_eq!(report.refused, None, "{text}");
    assert!(text.starts_with(&format!("model {}: 3 rows read after the committed position, 5 events emitted so far\n", f.model)), "{text}");
    assert!(text.contains("  inserts (c): 1\n    {\"id\":7}\n"), "{text}");
    assert!(text.contains("  updates (u): 1\n    {\"id\":2} changed: note, updated_at\n"), "{text}");
    assert!(text.contains("  deletes (d): 2 (1 soft-deleted, 1 found by reconciliation)\n    {\"id\":3}\n    {\"id\":4}\n"), "{text}");
    assert!(text.ends_with("the run would emit 4 events; nothing was emitted by this plan"), "{text}");
    assert_eq!((events_of(&f), state_records(&f)), (so_far.clone(), states), "plan emitted and committed nothing");

    // The run does what the plan said (waited for, not timed: shared machines are slow).
    let mut planned = so_far;
    planned.extend(expected(&[("c", 7), ("u", 2), ("d", 3), ("tombstone", 3), ("d", 4), ("tombstone", 4)]));
    let planned = sorted(planned);
    let (stop, poller) = start_poller(&f.config, &[]);
    eventually("the run the plan described", WAIT, || sorted(events_of(&f)).len() >= planned.len()).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // and nothing more
    stop_poller(stop, poller).await;
    let events = decode_all(&f);
    assert_eq!(sorted(events_of(&f)), planned, "the run emitted what the plan said");
    let state = replay(&events);
    assert_eq!(state, cursor_table_state(&f).await);
}

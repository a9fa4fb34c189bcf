//! `expire = { column, after_ms }` against real PostgreSQL and Kafka: a row is live until
//! `column + after_ms`, and the change topic holds exactly the live rows. In cursor mode the
//! sweep deletes each expired key once (`d` with the last emitted image + tombstone), also
//! when the poller restarts between the expiry and the sweep, and when the binary is SIGKILLed
//! during sweeps; a row inserted already expired is never emitted; a renewed row carries its new
//! expiry; `diff` mode counts expired rows as absent; `expire` added to a model with history
//! learns its keys' expiries from their images; `sluice plan` counts the sweep's deletes. Every
//! event carries its row's expiry in `sluice.expires_at_ms`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::common::*;
use sluice_core::{Op, Value};
use sluice_integration_tests::{eventually, ReadRecord};

/// Columns of the purchases fixture's rows.
const PURCHASED_AT: usize = 2;

/// A purchases table `(id, email, purchased_at, updated_at)` and a model over it in `detection`
/// expiring `after_ms` after `purchased_at`.
async fn purchases(detection: &str, after_ms: u64, batch_rows: usize) -> Fixture {
    let create = "CREATE TABLE {table} (id bigint PRIMARY KEY, email text NOT NULL, purchased_at timestamptz NOT NULL, \
                  updated_at timestamptz NOT NULL DEFAULT clock_timestamp())";
    let body = format!(
        "table = \"{{table}}\"\nprimary_key = [\"id\"]\ncolumns = [\"id\", \"email\", \"purchased_at\", \"updated_at\"]\n\
         detection = {detection}\nexpire = {{ column = \"purchased_at\", after_ms = {after_ms} }}\npoll_interval_ms = 100\nbatch_rows = {batch_rows}"
    );
    fixture_with("it_expire", create, &body).await
}

/// Insert purchase `id` made `age` ago (a negative age: in the future).
async fn purchase(f: &Fixture, id: i64, age: &str) {
    f.db.execute(
        &format!("INSERT INTO {} (id, email, purchased_at) VALUES ($1, $2, clock_timestamp() - $3::text::interval)", f.table),
        &[&id, &format!("buyer{id}@example.com"), &age],
    )
    .await
    .unwrap();
}

fn expected(list: &[(&str, i64)]) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = list.iter().map(|(op, id)| (op.to_string(), *id)).collect();
    out.sort();
    out
}

/// Every event carries `sluice.expires_at_ms` = its row's `purchased_at` (ms) + `after_ms`; a
/// tombstone carries none.
fn assert_expiry_headers(events: &[(ReadRecord, Decoded)], after_ms: i64) {
    for (record, decoded) in events {
        let header = record.header("sluice.expires_at_ms");
        match decoded {
            None => assert_eq!(header, None, "a tombstone carries no expiry"),
            Some((_, before, after, _)) => {
                let row = after.as_ref().or(before.as_ref()).unwrap();
                let Value::TimestampMicros(micros) = row[PURCHASED_AT] else { panic!("purchased_at is a timestamp: {row:?}") };
                assert_eq!(header, Some((micros.div_euclid(1000) + after_ms).to_string().as_str()), "expiry header of id {}", id_of(row));
            }
        }
    }
}

/// The rows of the table still live now, as the poller reads them.
async fn live_rows(f: &Fixture, after_ms: i64) -> HashMap<i64, Vec<Value>> {
    let micros = |column: &str| format!("(extract(epoch FROM {column}) * 1000000)::bigint");
    let sql = format!(
        "SELECT id, email, {}, {} FROM {} WHERE purchased_at + $1::bigint * interval '1 millisecond' > clock_timestamp()",
        micros("purchased_at"),
        micros("updated_at"),
        f.table
    );
    let rows = f.db.query(&sql, &[&after_ms]).await.unwrap();
    rows.iter()
        .map(|r| {
            let row = vec![Value::Long(r.get(0)), Value::String(r.get(1)), Value::TimestampMicros(r.get(2)), Value::TimestampMicros(r.get(3))];
            (r.get::<_, i64>(0), row)
        })
        .collect()
}

async fn run_for(f: &Fixture, duration: Duration) {
    let (stop, poller) = start_poller(&f.config, &[]);
    tokio::time::sleep(duration).await;
    stop_poller(stop, poller).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_rows_are_deleted_once_by_the_cursor_sweep_also_across_a_restart() {
    const AFTER_MS: i64 = 10_000;
    let f = purchases("{ mode = \"cursor\", cursor_column = \"updated_at\" }", AFTER_MS as u64, 2).await;
    let inserted = Instant::now();
    for id in 1..=3 {
        purchase(&f, id, "0 seconds").await;
    }
    purchase(&f, 4, "1 hour").await; // already expired: never emitted
    let (stop, poller) = start_poller(&f.config, &[]);
    eventually("snapshot of the 3 live purchases", WAIT, || count(&decode_all(&f), "r") == 3).await;
    // Row 2 is renewed (a new purchase moves its instant): an update carrying its new expiry.
    f.db.execute(&format!("UPDATE {} SET purchased_at = clock_timestamp() + interval '1 hour', updated_at = clock_timestamp() WHERE id = 2", f.table), &[])
        .await
        .unwrap();
    eventually("the renewal", WAIT, || count(&decode_all(&f), "u") == 1).await;
    stop_poller(stop, poller).await;
    assert!(inserted.elapsed() < Duration::from_millis(AFTER_MS as u64), "the poller stopped before rows 1 and 3 expired (machine too slow for this test)");
    assert_eq!(sorted(events_of(&f)), expected(&[("r", 1), ("r", 2), ("r", 3), ("u", 2)]), "nothing expired yet; row 4 never emitted");

    // Rows 1 and 3 expire while no poller runs; the next start sweeps them, once.
    tokio::time::sleep(Duration::from_millis(AFTER_MS as u64).saturating_sub(inserted.elapsed()) + Duration::from_millis(300)).await;
    // The plan sees what the sweep will do, and emits nothing.
    let report = sluice_poller::plan::plan(&f.config, &f.model, 5).await.unwrap();
    let text = report.to_string();
    assert_eq!(report.counts.deletes, 2, "{text}");
    assert!(text.contains("  deletes (d): 2 (0 soft-deleted, 2 expired by the sweep; no reconciliation of hard deletes)\n    {\"id\":"), "{text}");
    assert_eq!(count(&decode_all(&f), "d"), 0, "plan emitted nothing");
    let (stop, poller) = start_poller(&f.config, &[]);
    eventually("rows 1 and 3 deleted by the sweep", WAIT, || count(&decode_all(&f), "d") == 2).await;
    // A purchase that expires a second after it is first emitted: created, then swept by the
    // running poller.
    purchase(&f, 5, &format!("{} milliseconds", AFTER_MS - 1500)).await;
    eventually("row 5 created then swept", WAIT, || count(&decode_all(&f), "d") == 3).await;
    tokio::time::sleep(Duration::from_millis(800)).await; // more polls and sweeps: nothing new
    stop_poller(stop, poller).await;
    run_for(&f, Duration::from_millis(1500)).await; // a restart sweeps nothing again

    let events = decode_all(&f);
    assert_eq!(
        sorted(events_of(&f)),
        expected(&[("r", 1), ("r", 2), ("r", 3), ("u", 2), ("d", 1), ("tombstone", 1), ("d", 3), ("tombstone", 3), ("c", 5), ("d", 5), ("tombstone", 5)]),
        "each expired key deleted exactly once, the renewed one kept, the expired insert never emitted"
    );
    assert_expiry_headers(&events, AFTER_MS);
    // replay checks every d carries the key's last emitted image and is followed by its tombstone.
    assert_eq!(replay(&events), live_rows(&f, AFTER_MS).await, "the compacted topic holds exactly the live rows");
    let renewal = events.iter().find_map(|(_, d)| match d {
        Some((Op::Update, _, _, changed)) => changed.clone(),
        _ => None,
    });
    assert_eq!(renewal, Some(vec!["purchased_at".to_string(), "updated_at".to_string()]));
}

/// `expire` added to a cursor model whose topic was written without it: the keys' latest events
/// carry no expiry, so the poller learns each one once, from the image read back, and sweeps the
/// keys whose rows already expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expire_added_to_a_model_with_history_learns_expiries_from_the_images() {
    const AFTER_MS: i64 = 60_000;
    let f = purchases("{ mode = \"cursor\", cursor_column = \"updated_at\" }", AFTER_MS as u64, 2).await;
    let expire_line = format!("expire = {{ column = \"purchased_at\", after_ms = {AFTER_MS} }}\n");
    let without = f.config_text.replace(&expire_line, "");
    assert_ne!(without, f.config_text, "the expire line was removed");
    let without = std::sync::Arc::new(sluice_core::config::Config::parse("integration-test.toml", &without).unwrap());
    purchase(&f, 1, "2 hours").await; // expired as soon as the model expires anything
    purchase(&f, 2, "0 seconds").await;
    let (stop, poller) = start_poller(&without, &[]);
    eventually("the snapshot, without expire", WAIT, || count(&decode_all(&f), "r") == 2).await;
    stop_poller(stop, poller).await;
    assert!(decode_all(&f).iter().all(|(r, _)| r.header("sluice.expires_at_ms").is_none()), "written before the model had expire");

    let (stop, poller) = start_poller(&f.config, &[]);
    eventually("row 1 swept", WAIT, || count(&decode_all(&f), "tombstone") == 1).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop_poller(stop, poller).await;
    let events = decode_all(&f);
    assert_eq!(sorted(events_of(&f)), expected(&[("r", 1), ("r", 2), ("d", 1), ("tombstone", 1)]));
    let (delete, _) = events.iter().find(|(_, d)| matches!(d, Some((Op::Delete, ..)))).unwrap();
    assert!(delete.header("sluice.expires_at_ms").is_some(), "the delete carries its expiry");
    assert_eq!(replay(&events), live_rows(&f, AFTER_MS).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expiring_diff_model_deletes_expired_rows_once_and_never_emits_an_expired_one() {
    const AFTER_MS: i64 = 4_000;
    let f = purchases("{ mode = \"diff\" }", AFTER_MS as u64, 2).await;
    purchase(&f, 1, "0 seconds").await;
    purchase(&f, 2, "1 hour").await; // already expired
    purchase(&f, 3, "-1 hour").await; // in the future: live for an hour and more
    let (stop, poller) = start_poller(&f.config, &[]);
    eventually("the first snapshot", WAIT, || count(&decode_all(&f), "r") == 2).await;
    eventually("row 1 deleted once it expired", WAIT, || count(&decode_all(&f), "d") == 1).await;
    tokio::time::sleep(Duration::from_millis(800)).await; // more runs: nothing new
    stop_poller(stop, poller).await;
    run_for(&f, Duration::from_millis(1500)).await;
    let events = decode_all(&f);
    assert_eq!(sorted(events_of(&f)), expected(&[("r", 1), ("r", 3), ("d", 1), ("tombstone", 1)]));
    assert_expiry_headers(&events, AFTER_MS);
    assert_eq!(replay(&events), live_rows(&f, AFTER_MS).await);
}

/// The `sluice-poller` binary is SIGKILLed during the sweep of 6000 purchases that expired at
/// once (after the state is rebuilt, at a random point of the image read-back and the sweep's
/// 120 transactions) and restarted, until the sweep completes; at least one kill lands between
/// two of its transactions (a committed prefix). Afterwards every key was deleted exactly once
/// (no second `d`, each with its last image and its tombstone) and the topic holds no live key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sweep_killed_with_sigkill_deletes_every_expired_key_exactly_once() {
    use rand::Rng as _;
    const ROWS: usize = 6000;
    // Long enough for the first snapshot of every row to finish before any expires, also on a
    // loaded machine (6 s was not: rows read after their expiry are rightly never emitted).
    const AFTER_MS: u64 = 20000;
    let kills = env_or("SLUICE_CRASH_KILLS", 8);
    let binary = tokio::task::spawn_blocking(poller_binary).await.unwrap();
    let f = purchases("{ mode = \"cursor\", cursor_column = \"updated_at\" }", AFTER_MS, 50).await;
    f.db.execute(
        &format!("INSERT INTO {} (id, email, purchased_at) SELECT i, 'buyer' || i || '@example.com', clock_timestamp() FROM generate_series(1, {ROWS}) AS t(i)", f.table),
        &[],
    )
    .await
    .unwrap();
    let inserted = Instant::now();
    let config = std::env::temp_dir().join(format!("{}.toml", f.model));
    std::fs::write(&config, &f.config_text).unwrap();
    let log_path = std::env::temp_dir().join(format!("{}.log", f.model));
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let mut child = start_binary(&binary, &config, &log);
    eventually("the snapshot of every purchase", WAIT, || count(&decode_all(&f), "r") == ROWS).await;
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(AFTER_MS).saturating_sub(inserted.elapsed())).await;
    let (mut rounds, mut mid_sweep) = (0, 0);
    while rounds < kills {
        let rebuilt = log_text().matches("cursor state rebuilt").count();
        let mut child = start_binary(&binary, &config, &log);
        eventually("the state rebuilt", WAIT, || log_text().matches("cursor state rebuilt").count() > rebuilt).await;
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(100..2500))).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        rounds += 1;
        let deleted = count(&decode_all(&f), "d");
        if deleted == ROWS {
            break;
        }
        if deleted > 0 {
            mid_sweep += 1; // a committed prefix of the sweep, the rest left to the next start
        }
    }
    assert!(mid_sweep > 0, "no kill landed between two transactions of the sweep in {rounds} rounds (log: {})", log_path.display());
    let mut child = start_binary(&binary, &config, &log);
    eventually("every purchase deleted", Duration::from_secs(180), || count(&decode_all(&f), "tombstone") == ROWS).await;
    tokio::time::sleep(Duration::from_millis(1000)).await; // and nothing more
    child.kill().unwrap();
    child.wait().unwrap();

    let events = decode_all(&f);
    assert_eq!((count(&events, "r"), count(&events, "d"), count(&events, "tombstone")), (ROWS, ROWS, ROWS), "log: {}", log_path.display());
    assert!(replay(&events).is_empty(), "no key left live; every delete once, with its last image");
    eprintln!("{} events, {rounds} kills, {mid_sweep} of them between two transactions of the sweep", events.len());
}

//! The `sluice-poller` binary, in `diff` mode on a 100k-row model, is killed with SIGKILL at
//! random points while rows are inserted, updated and deleted, and restarted each time.
//! Afterwards the change topic, read `read_committed`, is a valid history with no duplicate
//! event (see `poller_common::replay`), and its compacted state equals the table exactly.
//!
//! The binary is built by this test with the same cargo and target directory as the test
//! itself (`$CARGO build --workspace --bins`, as ops/test.sh builds them), so it is always
//! the code under test. Kills: `SLUICE_CRASH_KILLS` (default 20); rows: `SLUICE_CRASH_ROWS`
//! (default 100000). A longer soak: `SLUICE_CRASH_KILLS=100 cargo test -p
//! sluice-integration-tests --test poller_crash`.


use std::time::Duration;

use super::common::*;
use rand::Rng;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poller_binary_killed_with_sigkill_at_random_points_loses_and_duplicates_nothing() {
    let kills = env_or("SLUICE_CRASH_KILLS", 20);
    let rows = env_or("SLUICE_CRASH_ROWS", 100_000) as i64;
    let binary = tokio::task::spawn_blocking(poller_binary).await.unwrap();
    let f = fixture("diff", None, "").await;
    f.db.execute(
        &format!("INSERT INTO {} SELECT i, 'm' || i || '@example.com', 'free', (i % 1000)::numeric / 100 FROM generate_series(1, $1::bigint) i", f.table),
        &[&rows],
    )
    .await
    .unwrap();
    // The same model, as a file for the binary, with pages large enough for 100k rows.
    let text = f.config_text.clone();
    let config = std::env::temp_dir().join(format!("{}.toml", f.model));
    std::fs::write(&config, text.replace("batch_rows = 3", "batch_rows = 5000").replace("poll_interval_ms = 200", "poll_interval_ms = 300")).unwrap();
    let log_path = std::env::temp_dir().join(format!("{}.log", f.model));

    // Concurrent writer: inserts, updates and deletes until told to stop.
    let writer_stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let (table, stop) = (f.table.clone(), writer_stop.clone());
        tokio::spawn(async move {
            let db = sluice_integration_tests::require_postgres().await;
            let mut next = rows + 1;
            let mut changes = 0u64;
            while !stop.is_cancelled() {
                // ThreadRng is not Send: draw before any await.
                let (id, kind) = {
                    let mut rng = rand::rng();
                    (rng.random_range(1..next), rng.random_range(0..3))
                };
                match kind {
                    0 => {
                        db.execute(&format!("INSERT INTO {table} VALUES ($1, 'new', 'free', 1)"), &[&next]).await.unwrap();
                        next += 1;
                    }
                    1 => {
                        db.execute(&format!("UPDATE {table} SET tier = md5(random()::text) WHERE id = $1"), &[&id]).await.unwrap();
                    }
                    _ => {
                        db.execute(&format!("DELETE FROM {table} WHERE id = $1"), &[&id]).await.unwrap();
                    }
                }
                changes += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            changes
        })
    };

    kill_at_random_points(&binary, &config, &log_path, kills, Duration::from_secs(120)).await;
    writer_stop.cancel();
    let changes = writer.await.unwrap();

    let expected = table_state(&f).await;
    let events = converge(&binary, &config, &log_path, &f.prefix, &f.model, &expected).await;
    assert_eq!(replay(&events), expected, "compacted state equals the table after {kills} SIGKILLs and {changes} concurrent changes");
    eprintln!("{} events, {} rows, {kills} kills, {changes} concurrent changes", events.len(), expected.len());
}

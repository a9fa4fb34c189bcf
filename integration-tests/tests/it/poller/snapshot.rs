//! The first snapshot of a `diff` model: read in primary-key chunks of `batch_rows`, one Kafka
//! transaction each, resumed after the last committed key — by the service or by
//! `sluice snapshot <model>`, the CLI that shows a progress bar.


use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::common::*;
use sluice_core::naming;
use sluice_poller::snapshot::{Outcome, Progress};
use tokio_util::sync::CancellationToken;

/// Records every progress report and stops the snapshot after `stop_after` chunks.
struct StopAfter {
    chunks: AtomicU64,
    stop_after: u64,
    shutdown: CancellationToken,
    reports: Mutex<Vec<(u64, u64)>>,
}

impl Progress for StopAfter {
    fn started(&self, _model: &str, emitted: u64, total: u64) {
        self.reports.lock().unwrap().push((emitted, total));
    }

    fn advanced(&self, _model: &str, emitted: u64, total: u64) {
        self.reports.lock().unwrap().push((emitted, total));
        if self.chunks.fetch_add(1, Ordering::SeqCst) + 1 == self.stop_after {
            self.shutdown.cancel();
        }
    }

    fn finished(&self, _model: &str, _emitted: u64) {}
}

/// Ids of the `r` events, sorted (the topic has several partitions, so its read order is not
/// the emit order; the chunk order is checked through the state records).
fn snapshot_ids(f: &Fixture) -> Vec<i64> {
    let mut ids: Vec<i64> = decode_all(f)
        .into_iter()
        .filter_map(|(_, decoded)| decoded.filter(|(op, ..)| op.code() == "r").map(|(_, _, after, _)| id_of(&after.unwrap())))
        .collect();
    ids.sort_unstable();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_snapshot_is_read_in_key_chunks_and_resumes_after_the_last_committed_key() {
    let f = fixture("diff", None, "").await;
    // Inserted out of key order: chunks follow the key, not the physical order.
    for id in [7, 3, 10, 1, 9, 2, 8, 4, 6, 5] {
        upsert(&f, id, "free", "1.00").await;
    }
    // Interrupted after two chunks of batch_rows = 3.
    let progress = StopAfter { chunks: AtomicU64::new(0), stop_after: 2, shutdown: CancellationToken::new(), reports: Mutex::new(Vec::new()) };
    let outcome = sluice_poller::snapshot::run_standalone(&f.config, &f.model, &progress, &progress.shutdown).await.unwrap();
    assert_eq!(outcome, Outcome::Interrupted { emitted: 6 });
    assert_eq!(*progress.reports.lock().unwrap(), vec![(0, 10), (3, 10), (6, 10)], "progress: emitted of total, per chunk");
    let ids = tokio::task::block_in_place(|| snapshot_ids(&f));
    assert_eq!(ids, vec![1, 2, 3, 4, 5, 6], "exactly the first two key chunks");
    // One transaction per chunk: the state topic holds one record per chunk, positions = last keys.
    let states: Vec<sluice_avro::PollerState> = tokio::task::block_in_place(|| read_settled(&naming::poller_state_topic(&f.prefix)))
        .into_iter()
        .filter(|r| r.key.as_deref() == Some(f.model.as_bytes()))
        .map(|r| sluice_avro::decode_state(&r.payload.unwrap()).unwrap())
        .collect();
    let positions: Vec<Option<String>> = states.iter().map(|s| s.position.clone()).collect();
    assert_eq!(positions, vec![Some(r#"[{"t":"Long","v":3}]"#.to_string()), Some(r#"[{"t":"Long","v":6}]"#.to_string())], "{states:?}");
    assert!(states.iter().all(|s| !s.snapshot_done));

    // A change to a row of an emitted chunk and one ahead of the position, while stopped.
    upsert(&f, 2, "gold", "2.00").await;
    upsert(&f, 9, "gold", "2.00").await;
    // The service resumes after key 6: 7..10 once (9 in its new state), then its first diff
    // run finds the change to 2.
    let (stop, poller) = start_poller(&f.config, &[]);
    let deadline = Instant::now() + WAIT;
    let events = loop {
        let events = tokio::task::block_in_place(|| decode_all(&f));
        if count(&events, "u") >= 1 {
            break events;
        }
        assert!(Instant::now() < deadline, "no update after the resumed snapshot: {:?}", ops(&events));
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop_poller(stop, poller).await;
    assert_eq!(tokio::task::block_in_place(|| decode_all(&f)).len(), events.len(), "nothing after the update");
    assert_eq!(tokio::task::block_in_place(|| snapshot_ids(&f)), (1..=10).collect::<Vec<_>>(), "every row read exactly once");
    assert_eq!(ops(&events).len(), 11, "10 reads and 1 update: {:?}", ops(&events));
    assert_eq!(replay(&events), table_state(&f).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_snapshot_cli_takes_the_first_snapshot_then_says_it_is_done() {
    let f = fixture("diff", None, "").await;
    seed(&f, 1..=10).await;
    let config = std::env::temp_dir().join(format!("{}.toml", f.model));
    std::fs::write(&config, &f.config_text).unwrap();
    let run = || {
        std::process::Command::new(sluice_integration_tests::binary("sluice"))
            .args(["snapshot", &f.model, "--config", config.to_str().unwrap()])
            .env("SLUICE_IT_WAREHOUSE_URL", sluice_integration_tests::postgres_url())
            .output()
            .expect("run sluice snapshot")
    };
    let first = tokio::task::block_in_place(run);
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&first.stderr));
    assert!(stdout.contains(&format!("model {}: first snapshot complete, 10 rows emitted", f.model)), "{stdout}");
    assert_eq!(tokio::task::block_in_place(|| snapshot_ids(&f)), (1..=10).collect::<Vec<_>>());

    let again = tokio::task::block_in_place(run);
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success() && stdout.contains("the first snapshot was already complete"), "{stdout}");
    assert_eq!(tokio::task::block_in_place(|| decode_all(&f)).len(), 10, "a second run emits nothing");

    // A cursor model is refused with the reason.
    let cursor_config = std::env::temp_dir().join(format!("{}-cursor.toml", f.model));
    std::fs::write(&cursor_config, f.config_text.replace("detection = { mode = \"diff\" }", "detection = { mode = \"cursor\", cursor_column = \"id\" }")).unwrap();
    let refused = tokio::task::block_in_place(|| {
        std::process::Command::new(sluice_integration_tests::binary("sluice"))
            .args(["snapshot", &f.model, "--config", cursor_config.to_str().unwrap()])
            .env("SLUICE_IT_WAREHOUSE_URL", sluice_integration_tests::postgres_url())
            .output()
            .unwrap()
    });
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("is in cursor mode"), "{stderr}");
}

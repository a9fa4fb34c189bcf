//! `sluice backfill --replace` against the real broker and PostgreSQL and the Meta contract
//! server: members who left while the sink was stopped are removed by one `usersreplace`
//! session, and a kind without a full replace is refused with the reason.

use std::collections::BTreeSet;

use sluice_core::naming;
use sluice_destinations::identifiers::sha256_hex;
use sluice_integration_tests::{contract, eventually, pipeline, read_topic, receiver, start_poller, start_sink, toml_text, Spec};
use sluice_telemetry::ops::Health;

use super::common::{insert, sluice, spec, COLUMNS, COLUMNS_SQL, WAIT};

const TOKEN_ENV: &str = "SLUICE_REPLACE_IT_TOKEN";
const TOKEN: &str = "replace-token";
const AUDIENCE: &str = "23850000000001";

/// The audience's members' hashed emails.
fn audience(server: &contract::meta::MetaState) -> BTreeSet<String> {
    server.members.lock().unwrap().iter().map(|m| m["EMAIL"].clone()).collect()
}

fn hashes(ids: impl IntoIterator<Item = i64>) -> BTreeSet<String> {
    ids.into_iter().map(|id| sha256_hex(&format!("c{id}@example.com"))).collect()
}

/// A soft-delete `customers` model synced to a Meta audience (3 rows per request) on its
/// contract server.
async fn meta_pipeline() -> (sluice_integration_tests::Pipeline, std::sync::Arc<contract::meta::MetaState>) {
    std::env::set_var(TOKEN_ENV, TOKEN);
    let (meta_url, server) = contract::meta::start(TOKEN, AUDIENCE).await;
    let kind = toml_text::meta_audience(&meta_url, TOKEN_ENV, AUDIENCE, "max_rows_per_request = 3");
    let p = pipeline(
        "http://127.0.0.1:1",
        Spec {
            columns_sql: COLUMNS_SQL,
            columns: COLUMNS,
            model_extra: "batch_rows = 100",
            kind: Some(&kind),
            sync: "mode = \"audience\"\nfields = { email = \"email\" }",
            detection: Some(r#"{ mode = "cursor", cursor_column = "updated_at", created_column = "created_at", deleted_column = "deleted_at" }"#),
            ..Spec::default()
        },
    )
    .await;
    (p, server)
}

/// Members 1..=10 reach the audience; the sink stops; 2, 5 and 8 leave the warehouse. The
/// replace alone (the sink still stopped) leaves exactly the seven current members, through one
/// session whose batches carry `batch_seq`, `last_batch_flag` and `estimated_num_total`; the
/// sink, started again, keeps it so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backfill_replace_removes_the_members_who_left_while_the_sink_was_stopped() {
    let (p, server) = meta_pipeline().await;
    let topic = naming::change_topic(&p.prefix, "customers");
    insert(&p, 1, 10).await;
    let (poller_stop, poller) = start_poller(&p.config);
    let (sink_stop, sink) = start_sink(&p.config, Health::new());
    eventually("members 1..=10 in the audience", WAIT, || audience(&server) == hashes(1..=10)).await;
    sink_stop.cancel();
    sink.await.unwrap().unwrap();

    let left = [2, 5, 8];
    p.db.execute(&format!("UPDATE {} SET deleted_at = now(), updated_at = clock_timestamp() WHERE id = ANY($1)", p.table), &[&left.to_vec()]).await.unwrap();
    eventually("the three deletes on the change topic", WAIT, || read_topic(&topic).len() >= 13).await;
    assert_eq!(audience(&server), hashes(1..=10), "the sink is stopped: nobody was removed yet");

    let run = sluice(&p, &["backfill", "--destination", "crm", "--replace", "--json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let current: Vec<i64> = (1..=10).filter(|id| !left.contains(id)).collect();
    assert_eq!(audience(&server), hashes(current.iter().copied()), "the replace leaves exactly the current members: {run:?}");
    let sessions: Vec<serde_json::Value> = server.requests().iter().filter(|r| r.path.ends_with("/usersreplace")).map(|r| r.body["session"].clone()).collect();
    assert_eq!(sessions.len(), 3, "7 members at 3 rows per request: {sessions:?}");
    let id = sessions[0]["session_id"].clone();
    for (n, session) in sessions.iter().enumerate() {
        assert_eq!(session["session_id"], id, "one session");
        assert_eq!(session["batch_seq"], n + 1);
        assert_eq!(session["last_batch_flag"], n == 2);
        assert_eq!(session["estimated_num_total"], 7);
    }

    let (sink_stop, sink) = start_sink(&p.config, Health::new());
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(audience(&server), hashes(current), "the live sync after the replace keeps the current members");
    sluice_integration_tests::stop_pipeline(sink_stop, sink, poller_stop, poller).await;
}

/// A webhook has no full replace: `--replace` is refused (exit 2) with the reason and the fix,
/// and nothing is sent.
#[tokio::test]
async fn backfill_replace_is_refused_for_a_kind_without_a_full_replace() {
    let (url, received) = receiver::start().await;
    let p = pipeline(&url, spec("fields = { v = \"v\" }")).await;
    let run = sluice(&p, &["backfill", "--destination", "crm", "--replace"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    let text = format!("{run:?}");
    assert!(text.contains("cannot be replaced") && text.contains("webhook") && text.contains("without --replace"), "{text}");
    assert!(received.records().is_empty());
}

/// The replace races the live sync: its first sessions fail (retryable), and meanwhile row 9
/// is deleted and row 11 inserted, which the running sink applies. The session that closes
/// carries the snapshot from before those edits and undoes them; the catch-up re-sends both
/// keys through the side topic and the sink applies them after the replace, so the audience
/// ends with exactly the current members.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backfill_replace_racing_live_edits_ends_with_the_current_members() {
    let (p, server) = meta_pipeline().await;
    insert(&p, 1, 10).await;
    let (poller_stop, poller) = start_poller(&p.config);
    let (sink_stop, sink) = start_sink(&p.config, Health::new());
    eventually("members 1..=10 in the audience", WAIT, || audience(&server) == hashes(1..=10)).await;
    // Three failed sessions: the command waits 2 + 4 + 8 s before the fourth.
    for _ in 0..3 {
        server.replace_faults.push(contract::meta::Fault::Error { status: 400, code: 2, subcode: None, regain_minutes: 0 });
    }
    let replace = tokio::spawn({
        let p_text = p.text.clone();
        async move { run_cli(&p_text, &["backfill", "--destination", "crm", "--replace", "--json"]).await }
    });
    eventually("the first replace session tried", WAIT, || server.requests().iter().any(|r| r.path.ends_with("/usersreplace"))).await;
    p.db.execute(&format!("UPDATE {} SET deleted_at = now(), updated_at = clock_timestamp() WHERE id = 9", p.table), &[]).await.unwrap();
    insert(&p, 11, 11).await;
    let live: BTreeSet<String> = hashes([1, 2, 3, 4, 5, 6, 7, 8, 10, 11]);
    eventually("the live edits applied while the replace waits", WAIT, || audience(&server) == live).await;
    let (code, summary, stderr) = replace.await.unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!((summary["sessions"].as_u64(), summary["members"].as_u64(), summary["caught_up"].as_u64()), (Some(4), Some(10), Some(2)), "{summary}");
    eventually("the audience equal to the current members", WAIT, || audience(&server) == live).await;
    // The replace undid the live edits; the catch-up applied them again, after it.
    let applied = server.applied();
    let replaced_at = applied.iter().rposition(|a| a.method == "REPLACE").expect("a session closed");
    let (nine, eleven) = (sha256_hex("c9@example.com"), sha256_hex("c11@example.com"));
    assert!(applied[..=replaced_at].iter().filter(|a| a.method == "REPLACE").any(|a| a.row["EMAIL"] == nine), "the snapshot still had 9");
    assert!(applied[replaced_at + 1..].iter().any(|a| a.method == "DELETE" && a.row["EMAIL"] == nine), "9 removed again after the replace");
    assert!(applied[replaced_at + 1..].iter().any(|a| a.method == "POST" && a.row["EMAIL"] == eleven), "11 added again after the replace");
    sluice_integration_tests::stop_pipeline(sink_stop, sink, poller_stop, poller).await;
}

/// Run the `sluice` binary with `args` on the config `text`: (exit code, stdout JSON, stderr).
async fn run_cli(text: &str, args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let dir = std::env::temp_dir().join(sluice_integration_tests::unique("replace"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("sluice.toml"), text).unwrap();
    let output = tokio::process::Command::new(sluice_integration_tests::binary("sluice")).args(args).arg("--config").arg(dir.join("sluice.toml")).env("RUST_LOG", "warn").output().await.unwrap();
    std::fs::remove_dir_all(&dir).ok();
    (output.status.code(), serde_json::from_slice(&output.stdout).unwrap_or_default(), String::from_utf8_lossy(&output.stderr).to_string())
}

//! Helpers of the order-guard tests (replay, side records, compaction): rows that change, what a
//! receiver saw per key, the group's offsets, and the `sluice` command line.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_core::naming;
use sluice_integration_tests::receiver::{Behaviour, Received, Reply};
use sluice_integration_tests::{binary, Pipeline, Spec};
use sluice_kafka::groups::{self, Committed, Partition};

pub const WAIT: Duration = Duration::from_secs(120);
pub const COLUMNS_SQL: &str = "id bigint PRIMARY KEY, email text, v int NOT NULL, deleted_at timestamptz, \
                               updated_at timestamptz NOT NULL, created_at timestamptz NOT NULL";
pub const COLUMNS: &[&str] = &["id", "email", "v", "deleted_at", "updated_at", "created_at"];

/// A pipeline spec over [`COLUMNS`] with `sync` (and anything after it: more destinations and
/// syncs). Destination `crm` sends one record per request: a lane coalesces the changes of a key
/// inside a batch into the latest, which would hide from the receiver what the order guard let
/// through.
pub fn spec(sync: &str) -> Spec<'_> {
    Spec {
        columns_sql: COLUMNS_SQL,
        columns: COLUMNS,
        model_extra: "batch_rows = 100",
        destination_extra: "batch_max_records = 1\nbatch_linger_ms = 0",
        sync,
        ..Spec::default()
    }
}

/// Insert rows `first..=last` at version 1, emails `c<id>@example.com`.
pub async fn insert(p: &Pipeline, first: i64, last: i64) {
    insert_into(&p.db, &p.table, first, last).await;
}

/// [`insert`] into `table` (of [`COLUMNS`]), another model's.
pub async fn insert_into(db: &tokio_postgres::Client, table: &str, first: i64, last: i64) {
    db.execute(
        &format!(
            "INSERT INTO {table} (id, email, v, updated_at, created_at) \
             SELECT g, 'c' || g || '@example.com', 1, clock_timestamp(), clock_timestamp() FROM generate_series($1::bigint, $2::bigint) g"
        ),
        &[&first, &last],
    )
    .await
    .unwrap();
}

/// Raise the version of the rows `ids` by one.
pub async fn bump(p: &Pipeline, ids: &[i64]) {
    p.db.execute(&format!("UPDATE {} SET v = v + 1, updated_at = clock_timestamp() WHERE id = ANY($1)", p.table), &[&ids]).await.unwrap();
}

/// The version of every row in the warehouse.
pub async fn warehouse_versions(p: &Pipeline) -> HashMap<i64, i64> {
    let rows = p.db.query(&format!("SELECT id, v::bigint FROM {}", p.table), &[]).await.unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// One record as a receiver applied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Source offset, from the record id (`topic/partition/offset`).
    pub offset: i64,
    pub id: String,
    pub v: Option<i64>,
    pub action: String,
}

/// What a receiver applied, per key, in arrival order; from record `from` on.
pub fn history(received: &Received, from: usize) -> HashMap<i64, Vec<Seen>> {
    let mut out: HashMap<i64, Vec<Seen>> = HashMap::new();
    for r in received.records().into_iter().skip(from) {
        let id = r["id"].as_str().unwrap().to_string();
        let offset = id.rsplit('/').next().unwrap().parse().unwrap();
        let seen = Seen { offset, id, v: r["fields"]["v"].as_i64(), action: r["action"].as_str().unwrap().to_string() };
        out.entry(r["key"]["id"].as_i64().unwrap()).or_default().push(seen);
    }
    out
}

/// The latest version a receiver holds per key (upserts only).
pub fn latest_versions(received: &Received) -> HashMap<i64, i64> {
    history(received, 0).into_iter().filter_map(|(id, seen)| Some((id, seen.last()?.v?))).collect()
}

/// Fail unless no key ever went backwards: per key, source offsets and versions never decrease.
pub fn assert_never_backwards(received: &Received) {
    for (key, seen) in history(received, 0) {
        assert!(seen.windows(2).all(|w| w[0].offset <= w[1].offset), "key {key}: source offsets went backwards: {seen:?}");
        let versions: Vec<i64> = seen.iter().filter_map(|s| s.v).collect();
        assert!(versions.windows(2).all(|w| w[0] <= w[1]), "key {key}: versions went backwards: {versions:?}");
    }
}

/// The committed positions of `destination`'s group on the pipeline's change topic.
pub fn committed(p: &Pipeline, destination: &str) -> HashMap<Partition, Committed> {
    let topic = naming::change_topic(&p.prefix, "customers");
    let partitions: Vec<Partition> = groups::watermarks(&p.config.kafka, &topic).unwrap().into_iter().map(|(n, _, _)| (topic.clone(), n)).collect();
    groups::committed(&p.config.kafka, &naming::sink_group(&p.prefix, destination), &partitions).unwrap()
}

/// What one run of the `sluice` command line did.
#[derive(Debug)]
pub struct CliRun {
    pub code: i32,
    /// Stdout as JSON (`Null` when it is not JSON).
    pub json: serde_json::Value,
    pub stderr: String,
}

/// Run `sluice <args> --config <the pipeline's config>` and wait for it.
pub async fn sluice(p: &Pipeline, args: &[&str]) -> CliRun {
    let dir = std::env::temp_dir().join(sluice_integration_tests::unique("sluice-cli"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("sluice.toml");
    std::fs::write(&config, &p.text).unwrap();
    let output = tokio::process::Command::new(binary("sluice"))
        .args(args)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("the sluice binary runs");
    std::fs::remove_dir_all(&dir).ok();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    CliRun {
        code: output.status.code().expect("exited, not killed"),
        json: serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null),
        stderr: String::from_utf8_lossy(&output.stderr).to_string(),
    }
}

/// A destination that answers 422 with `{"error":"<error>"}` to every batch holding a record
/// `refuses` picks (given whether the returned switch, starting at `on`, is on), and accepts
/// every other batch: a mapping the vendor does not accept, fixed by turning the switch off.
pub fn refusing(on: bool, error: &'static str, refuses: impl Fn(bool, &serde_json::Value) -> bool + Send + Sync + 'static) -> (Arc<AtomicBool>, Behaviour) {
    let switch = Arc::new(AtomicBool::new(on));
    let flag = Arc::clone(&switch);
    let script = move |_: usize, records: &[serde_json::Value]| {
        let on = flag.load(Ordering::SeqCst);
        if records.iter().any(|r| refuses(on, r)) {
            Reply { body: format!("{{\"error\":\"{error}\"}}"), ..Reply::error(422, None) }
        } else {
            Reply::ok(records.len())
        }
    };
    (switch, Behaviour::Script(Arc::new(script)))
}

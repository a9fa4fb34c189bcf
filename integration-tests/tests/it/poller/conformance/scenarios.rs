//! The conformance scenarios, each written once and run on every [`Backend`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng as _;
use sluice_core::config::Config;
use sluice_core::{naming, Op, Value};
use sluice_integration_tests::{read_topic, require_kafka, unique, ReadRecord};
use sluice_warehouse::{AnyWarehouse, Warehouse as _, WarehouseError};

use super::super::common::*;
use super::Backend;

/// The suite's table: the columns every mode reads, and the cursor mode's timestamps.
const MEMBERS: &str = "CREATE TABLE {table} (id bigint PRIMARY KEY, email text, tier text, ltv numeric(10,2), \
                       updated_at timestamptz DEFAULT now(), created_at timestamptz DEFAULT now())";

/// The columns of the snapshot modes' model.
const SNAPSHOT_COLUMNS: &str = r#"["id", "email", "tier", "ltv"]"#;

/// A fresh warehouse of backend `B` with one table and one model over it.
pub(crate) struct Fixture<B> {
    pub backend: Arc<B>,
    pub table: String,
    pub prefix: String,
    pub model: String,
    pub config: Arc<Config>,
    pub config_text: String,
}

/// A config for one model (`body` = its lines after `name`) in the warehouse `section`.
fn config_text(section: &str, prefix: &str, model: &str, body: &str) -> String {
    format!(
        "[kafka]\nbootstrap_servers = \"{kafka}\"\ntopic_prefix = \"{prefix}\"\n\n{section}\n\n[[models]]\nname = \"{model}\"\n{body}\n",
        kafka = sluice_integration_tests::kafka_bootstrap()
    )
}

/// A model's lines over the fixture's table.
fn model_body(columns: &str, detection: &str, batch_rows: usize) -> String {
    format!(
        "table = \"{{table}}\"\nprimary_key = [\"id\"]\ncolumns = {columns}\ndetection = {detection}\npoll_interval_ms = 200\nbatch_rows = {batch_rows}"
    )
}

impl<B: Backend> Fixture<B> {
    /// A fresh warehouse with the table `create` makes (`{table}` = its unique name) and a model
    /// over it (`body`, `{table}` again).
    async fn new(create: &str, body: &str) -> Fixture<B> {
        sluice_integration_tests::telemetry();
        require_kafka();
        let backend = Arc::new(B::create().await);
        let table = unique("it_conformance");
        backend.exec(&create.replace("{table}", &table)).await;
        let (prefix, model) = (unique("itc"), unique("members"));
        let text = config_text(&backend.warehouse_section(), &prefix, &model, &body.replace("{table}", &table));
        let config = Arc::new(Config::parse("conformance.toml", &text).expect("test config is valid"));
        Fixture { backend, table, prefix, model, config, config_text: text }
    }

    /// The members table and a model over `columns` in `detection` mode.
    async fn members(columns: &str, detection: &str, batch_rows: usize) -> Fixture<B> {
        Fixture::new(MEMBERS, &model_body(columns, detection, batch_rows)).await
    }

    /// Run SQL in the warehouse (`{table}` = the fixture's table).
    async fn exec(&self, sql: &str) {
        self.backend.exec(&sql.replace("{table}", &self.table)).await;
    }

    /// A count, read as text.
    async fn count_of(&self, sql: &str) -> i64 {
        let rows = self.backend.text_rows(&sql.replace("{table}", &self.table)).await;
        rows[0][0].as_deref().expect("a count").parse().expect("a count is a number")
    }

    /// Whether `sluice_state.<model>_<suffix>` exists.
    async fn state_table_exists(&self, suffix: &str) -> bool {
        self.count_of(&format!(
            "SELECT CAST(count(*) AS VARCHAR) FROM information_schema.tables WHERE table_schema = 'sluice_state' AND table_name = '{}_{suffix}'",
            self.model
        ))
        .await
            > 0
    }

    /// The members table as the events carry it: id, email, tier, ltv (exact decimal text).
    async fn members_state(&self) -> HashMap<i64, Vec<Value>> {
        let rows = self.backend.text_rows(&format!("SELECT CAST(id AS VARCHAR), email, tier, CAST(ltv AS VARCHAR) FROM {}", self.table)).await;
        rows.into_iter()
            .map(|row| {
                let id: i64 = row[0].as_deref().expect("id is the key").parse().expect("id is a number");
                let text = |v: &Option<String>| v.clone().map_or(Value::Null, Value::String);
                (id, vec![Value::Long(id), text(&row[1]), text(&row[2]), row[3].clone().map_or(Value::Null, Value::DecimalText)])
            })
            .collect()
    }

    /// The model's change topic, decoded.
    fn events(&self) -> Vec<(ReadRecord, Decoded)> {
        tokio::task::block_in_place(|| decode_topic(&self.prefix, &self.model))
    }

    /// Wait until `done` holds for the change topic; returns it.
    async fn wait_for(&self, what: &str, done: impl Fn(&[(ReadRecord, Decoded)]) -> bool) -> Vec<(ReadRecord, Decoded)> {
        let deadline = Instant::now() + WAIT;
        loop {
            let events = self.events();
            if done(&events) {
                return events;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {:?}", ops(&events));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Run the poller until `done` holds for the change topic, then stop it; returns the topic
    /// as it is after the stop.
    async fn run_until(&self, what: &str, done: impl Fn(&[(ReadRecord, Decoded)]) -> bool) -> Vec<(ReadRecord, Decoded)> {
        let (stop, poller) = start_poller(&self.config, &[]);
        self.wait_for(what, done).await;
        stop_poller(stop, poller).await;
        self.events()
    }

    /// Open the warehouse as the poller does.
    async fn warehouse(&self) -> AnyWarehouse {
        match AnyWarehouse::connect(&self.config.warehouse).await {
            Ok(warehouse) => warehouse,
            Err(error) => panic!("the test warehouse opens: {error}"),
        }
    }
}

/// Events of one operation (`r`, `c`, `u`, `d`, `tombstone`).
fn of(code: &'static str, n: usize) -> impl Fn(&[(ReadRecord, Decoded)]) -> bool {
    move |events| count(events, code) == n
}

/// The `after` image of the update of key `id`, and its changed columns.
fn update_of(events: &[(ReadRecord, Decoded)], id: i64) -> (Vec<Value>, Vec<String>) {
    events
        .iter()
        .filter_map(|(_, d)| d.as_ref())
        .filter(|(op, ..)| *op == Op::Update)
        .map(|(_, _, after, changed)| (after.clone().expect("an update has an after image"), changed.clone().expect("an update lists its changed columns")))
        .find(|(after, _)| id_of(after) == id)
        .unwrap_or_else(|| panic!("no update of id {id}: {:?}", ops(events)))
}

/// A snapshot mode (`diff`, `warehouse_diff`) end to end: the first snapshot, then two updates
/// (one and two columns, a large exact decimal), two deletes and a non-ASCII insert, exactly
/// once each with `before` images, changed columns and a tombstone right after each delete; the
/// replayed topic equals the table. A change made while stopped is, after the restart, the only
/// new event. `warehouse_diff` keeps its swapped-in snapshot and no pending one.
pub(crate) async fn snapshot_mode_round_trip<B: Backend>(mode: &str) {
    let f = Fixture::<B>::members(SNAPSHOT_COLUMNS, &format!("{{ mode = \"{mode}\" }}"), 3).await;
    f.exec("INSERT INTO {table} (id, email, tier, ltv) SELECT i, 'm' || i || '@example.com', 'free', i * 1.25 FROM generate_series(1, 10) AS t(i)").await;
    let (stop, poller) = start_poller(&f.config, &[]);
    f.wait_for("snapshot of 10 rows", of("r", 10)).await;

    f.exec("UPDATE {table} SET tier = 'pro' WHERE id = 3").await; // one column changes
    f.exec("UPDATE {table} SET tier = 'pro', ltv = 99999999.99 WHERE id = 4").await; // two columns change
    f.exec("DELETE FROM {table} WHERE id IN (5, 6)").await;
    f.exec("INSERT INTO {table} (id, email, tier, ltv) VALUES (11, 'Zoë@example.com', 'free', 0.01)").await;
    // 10 r + 1 c + 2 u + 2 d + 2 tombstones
    f.wait_for("1 insert, 2 updates, 2 deletes", |events| events.len() >= 17).await;
    tokio::time::sleep(Duration::from_millis(800)).await; // nothing more may arrive
    let events = f.events();
    assert_eq!(
        (events.len(), count(&events, "c"), count(&events, "u"), count(&events, "d"), count(&events, "tombstone")),
        (17, 1, 2, 2, 2),
        "{:?}",
        ops(&events)
    );
    assert_eq!(update_of(&events, 3).1, vec!["tier".to_string()]);
    let (after, changed) = update_of(&events, 4);
    assert_eq!(changed, vec!["tier".to_string(), "ltv".to_string()]);
    assert_eq!(after[3], Value::DecimalText("99999999.99".into()), "decimals are exact");
    let insert = events.iter().filter_map(|(_, d)| d.as_ref()).find(|(op, ..)| *op == Op::Create).expect("the insert");
    assert_eq!(insert.2.as_ref().unwrap()[1], Value::String("Zoë@example.com".into()), "non-ASCII text is exact");
    for (i, (record, decoded)) in events.iter().enumerate() {
        // The tombstone is the record right after its delete, in the same partition.
        if matches!(decoded, Some((Op::Delete, ..))) {
            let next = events.iter().skip(i + 1).find(|(r, _)| r.partition == record.partition).expect("a record after the delete");
            assert!(next.1.is_none() && next.0.key == record.key, "delete then tombstone for the same key");
        }
        if decoded.is_some() {
            assert_eq!(record.header("sluice.run.id").map(str::len), Some(36), "run id header");
        }
    }
    assert_eq!(replay(&events), f.members_state().await, "the compacted topic's state equals the table");
    stop_poller(stop, poller).await;
    if mode == "warehouse_diff" {
        let snapshot = f.count_of(&format!("SELECT CAST(count(*) AS VARCHAR) FROM sluice_state.\"{}_snapshot\"", f.model)).await;
        assert_eq!(snapshot, 9, "the swapped-in snapshot holds the table's rows");
        assert!(!f.state_table_exists("pending").await, "no pending snapshot after a completed run");
    }

    // Change while stopped, restart: the state comes back (from the topic or the kept
    // snapshot); only the new change is emitted, nothing again.
    f.exec("UPDATE {table} SET tier = 'gold' WHERE id = 7").await;
    let (stop, poller) = start_poller(&f.config, &[]);
    f.wait_for("the change made while stopped", of("u", 3)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // several more runs: nothing new
    stop_poller(stop, poller).await;
    let after_restart = f.events();
    assert_eq!(after_restart.len(), events.len() + 1, "exactly one new event after the restart: {:?}", ops(&after_restart));
    assert_eq!(replay(&after_restart), f.members_state().await);
}

/// Cursor mode: a snapshot in cursor order, then an update (`u`) and an insert after the
/// position (`c`, by `created_column`).
pub(crate) async fn cursor_mode_sees_inserts_and_updates<B: Backend>() {
    let f = Fixture::<B>::members(
        r#"["id", "email", "tier", "ltv", "updated_at", "created_at"]"#,
        r#"{ mode = "cursor", cursor_column = "updated_at", created_column = "created_at" }"#,
        3,
    )
    .await;
    f.exec("INSERT INTO {table} (id, email, tier, ltv) SELECT i, 'm' || i || '@example.com', 'free', 1 FROM generate_series(1, 5) AS t(i)").await;
    let (stop, poller) = start_poller(&f.config, &[]);
    let events = f.wait_for("snapshot of 5 rows", |events| events.len() >= 5).await;
    assert_eq!(count(&events, "r"), 5, "{:?}", ops(&events));
    f.exec("UPDATE {table} SET tier = 'gold', updated_at = now() WHERE id = 2").await;
    f.exec("INSERT INTO {table} (id, email, tier, ltv) VALUES (6, 'six@example.com', 'free', 2)").await;
    let events = f.wait_for("an update and an insert", |events| events.len() >= 7).await;
    assert_eq!((count(&events, "u"), count(&events, "c")), (1, 1), "{:?}", ops(&events));
    stop_poller(stop, poller).await;
}

/// `sluice plan` of a `warehouse_diff` model: before the first run every row is a snapshot read;
/// after changes, exact `c`/`u`/`d` counts and samples against the kept snapshot. Nothing is
/// emitted and no table is written; the run then does what the plan said.
pub(crate) async fn plan_of_a_warehouse_diff_model_is_read_only<B: Backend>() {
    let f = Fixture::<B>::members(SNAPSHOT_COLUMNS, r#"{ mode = "warehouse_diff" }"#, 3).await;
    f.exec("INSERT INTO {table} (id, email, tier, ltv) SELECT i, 'm' || i || '@example.com', 'free', 1 FROM generate_series(1, 6) AS t(i)").await;
    // Before the first run: no snapshot table yet, every row is a snapshot read.
    let report = sluice_poller::plan::plan(&f.config, &f.model, 2).await.unwrap();
    let text = report.to_string();
    assert_eq!((report.counts.rows, report.counts.tracked, report.counts.inserts), (6, 0, 6), "{text}");
    assert!(text.contains("  snapshot reads (r): 6\n    {\"id\":1}\n    {\"id\":2}\n  updates (u): 0\n"), "{text}");

    f.run_until("snapshot of 6 rows", of("r", 6)).await;
    f.exec("INSERT INTO {table} (id, email, tier, ltv) VALUES (7, 'seven@example.com', 'free', 1)").await;
    f.exec("UPDATE {table} SET tier = 'pro' WHERE id = 2").await;
    f.exec("DELETE FROM {table} WHERE id = 5").await;
    let (_, text) = plan(&f.config, &f.model, 5, (1, 1, 1)).await;
    assert!(text.contains(&format!("model {}: 6 rows read, 6 rows emitted so far", f.model)), "{text}");
    assert!(text.contains("  inserts (c): 1\n    {\"id\":7}\n  updates (u): 1\n    {\"id\":2}\n  deletes (d): 1\n    {\"id\":5}\n"), "{text}");
    assert!(text.ends_with("the run would emit 3 events; nothing was emitted by this plan"), "{text}");
    assert_eq!(f.events().len(), 6, "plan emitted nothing");
    assert!(!f.state_table_exists("pending").await, "plan wrote no table in the warehouse");

    // The run does what the plan said.
    let events = f.run_until("the planned run", |events| events.len() >= 10).await;
    assert_eq!((count(&events, "c"), count(&events, "u"), count(&events, "d"), count(&events, "tombstone")), (1, 1, 1, 1), "{:?}", ops(&events));
}

/// Every mapped type: the warehouse's `describe` maps it as listed, a page reads every value
/// exactly (NULLs stay NULL), keyset paging and the key check see the same rows, and the same
/// values come back through the poller, Kafka and the Avro decoder (decimals as Avro decimals
/// with their precision and scale).
pub(crate) async fn every_mapped_type_reads_exactly<B: Backend>() {
    let types = B::types();
    let columns = format!("[{}]", types.columns.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", "));
    let f = Fixture::<B>::new(types.setup, &model_body(&columns, r#"{ mode = "diff" }"#, 10)).await;
    let model = f.config.models[0].clone();
    let warehouse = f.warehouse().await;
    let schema = warehouse.describe(&model).await.unwrap();
    assert_eq!(schema.columns.iter().map(|c| c.ty).collect::<Vec<_>>(), types.types);
    let rows = warehouse.fetch_by_key(&model, &schema, None, 10).await.unwrap();
    assert_eq!(rows, types.rows);
    let null_row = rows.iter().find(|row| id_of(row) == 2).expect("a row with id 2");
    assert!(null_row[1..].iter().all(|v| *v == Value::Null), "NULLs stay NULL: {null_row:?}");
    // Keyset paging after a key and the key check see the same rows.
    assert_eq!(warehouse.fetch_by_key(&model, &schema, Some(&[Value::Long(1)]), 10).await.unwrap().len(), rows.len() - 1);
    assert_eq!(warehouse.check_keys(&model, &schema).await.unwrap().rows, rows.len() as u64);
    drop(warehouse);

    let events = f.run_until("every row", of("r", rows.len())).await;
    let replayed = replay(&events);
    assert_eq!(replayed.len(), rows.len());
    for row in &rows {
        assert_eq!(&replayed[&id_of(row)], row, "the value read is the value decoded");
    }
    // Decimals with a declared scale travel as Avro decimals with the column's precision and scale.
    let schemas: Vec<serde_json::Value> =
        read_topic(&naming::schema_topic(&f.prefix)).iter().map(|r| serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap()).collect();
    let text = serde_json::to_string(&schemas).unwrap();
    for ty in &types.types {
        if let sluice_core::ColumnType::Decimal { precision, scale } = ty {
            let decimal = format!(r#"{{"logicalType":"decimal","precision":{precision},"scale":{scale},"type":"bytes"}}"#);
            assert!(text.contains(&decimal), "{decimal} in {text}");
        }
    }
}

/// A column of a type sluice does not map is refused by name with the cast to use, by
/// `describe` and by the poller, which stops the model.
pub(crate) async fn an_unmapped_type_is_refused_by_name<B: Backend>() {
    let types = B::types();
    let columns = format!("[{}, \"tags\"]", types.columns.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", "));
    let f = Fixture::<B>::new(types.setup, &model_body(&columns, r#"{ mode = "diff" }"#, 10)).await;
    let expected = format!("model {}: column \"tags\" has {}", f.model, types.refusal);
    let refused = f.warehouse().await.describe(&f.config.models[0]).await.unwrap_err().to_string();
    assert!(refused.contains(&expected), "{refused}");
    let text = run_error(&f.config).await;
    assert!(text.contains(&expected), "{text}");
}

/// A warehouse that is not there (a missing file, a server that does not answer) is refused as
/// `Unavailable` (the poller retries) and nothing is created in its place.
pub(crate) async fn a_warehouse_that_is_not_there_is_refused<B: Backend>() {
    let absent = B::absent();
    let text = config_text(&absent.section, "itc", "members", &model_body(SNAPSHOT_COLUMNS, r#"{ mode = "diff" }"#, 3).replace("{table}", "members"));
    let config = Config::parse("absent.toml", &text).expect("test config is valid");
    let error = match AnyWarehouse::connect(&config.warehouse).await {
        Ok(_) => panic!("a warehouse that is not there was opened"),
        Err(error) => error,
    };
    assert!(matches!(error, WarehouseError::Unavailable(_)), "{error:?}");
    assert!(error.to_string().contains(absent.says), "{error}");
    if let Some(path) = absent.must_not_exist {
        assert!(!path.exists(), "no empty warehouse was created at {}", path.display());
    }
}

/// The `sluice-poller` binary, in `diff` mode on a 100k-row model, is killed with SIGKILL at
/// random points (first snapshot and incremental runs) while another connection inserts, updates
/// and deletes, and restarted each time. Afterwards the change topic, read `read_committed`, is
/// a valid history with no duplicate event ([`replay`]) and its compacted state equals the table.
///
/// The binary is built by the test (`poller_binary`, as ops/test.sh builds it), so it is the
/// code under test. Kills: `SLUICE_CRASH_KILLS` (default 20); rows: `SLUICE_CRASH_ROWS` (default
/// 100000); `SLUICE_CRASH_KILLS=100` for a soak.
pub(crate) async fn poller_binary_killed_at_random_points<B: Backend>() {
    let kills = env_or("SLUICE_CRASH_KILLS", 20);
    let rows = env_or("SLUICE_CRASH_ROWS", 100_000) as i64;
    let binary = tokio::task::spawn_blocking(poller_binary).await.unwrap();
    let f = Fixture::<B>::members(SNAPSHOT_COLUMNS, r#"{ mode = "diff" }"#, 5000).await;
    f.exec(&format!(
        "INSERT INTO {{table}} (id, email, tier, ltv) SELECT i, 'm' || i || '@example.com', 'free', (i % 1000) * 0.01 FROM generate_series(1, {rows}) AS t(i)"
    ))
    .await;
    let config = std::env::temp_dir().join(format!("{}.toml", f.model));
    std::fs::write(&config, f.config_text.replace("poll_interval_ms = 200", "poll_interval_ms = 300")).unwrap();
    let log_path = std::env::temp_dir().join(format!("{}.log", f.model));

    // Concurrent writer: inserts, updates and deletes in small transactions until told to stop.
    let writer_stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let (backend, table, stop) = (Arc::clone(&f.backend), f.table.clone(), writer_stop.clone());
        tokio::spawn(async move {
            let mut next = rows + 1;
            let mut changes = 0u64;
            while !stop.is_cancelled() {
                // ThreadRng is not Send: draw before any await.
                let statements: Vec<String> = {
                    let mut rng = rand::rng();
                    (0..B::WRITES_PER_TRANSACTION)
                        .map(|_| match rng.random_range(0..3) {
                            0 => {
                                next += 1;
                                format!("INSERT INTO {table} (id, email, tier, ltv) VALUES ({}, 'new', 'free', 1)", next - 1)
                            }
                            1 => format!("UPDATE {table} SET tier = md5(CAST(random() AS VARCHAR)) WHERE id = {}", rng.random_range(1..next)),
                            _ => format!("DELETE FROM {table} WHERE id = {}", rng.random_range(1..next)),
                        })
                        .collect()
                };
                backend.exec(&format!("BEGIN; {}; COMMIT", statements.join("; "))).await;
                changes += statements.len() as u64;
                tokio::time::sleep(B::WRITER_PAUSE).await;
            }
            changes
        })
    };

    kill_at_random_points(&binary, &config, &log_path, kills, B::SNAPSHOT_DEADLINE).await;
    writer_stop.cancel();
    let changes = writer.await.unwrap();

    let expected = f.members_state().await;
    let events = converge(&binary, &config, &log_path, &f.prefix, &f.model, &expected).await;
    assert_eq!(replay(&events), expected, "compacted state equals the table after {kills} SIGKILLs and {changes} concurrent changes");
    eprintln!("{} events, {} rows, {kills} kills, {changes} concurrent changes", events.len(), expected.len());
}

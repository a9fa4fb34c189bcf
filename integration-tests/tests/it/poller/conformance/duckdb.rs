//! The conformance suite on DuckDB: a new file per test, opened through sluice's own
//! [`DuckDb`](sluice_warehouse::duckdb::DuckDb) so the test takes turns with the poller for the
//! file's lock. Also DuckDB's own test: `sluice warehouse exec` creates a file only when asked.

use std::path::PathBuf;
use std::time::Duration;

use sluice_core::{ColumnType, Value};
use sluice_integration_tests::unique;
use sluice_warehouse::duckdb::DuckDb;

use super::{Absent, Backend, Types};

/// A DuckDB file of its own.
pub(crate) struct Duck {
    path: PathBuf,
}

impl Duck {
    /// Run `f` on the file, waiting out the poller's turn with the lock.
    async fn on_file<T: Send + 'static>(&self, f: impl FnOnce(&mut ::duckdb::Connection) -> T + Send + 'static) -> T {
        let db = DuckDb::open(&self.path).await.unwrap_or_else(|e| panic!("opening {}: {e}", self.path.display()));
        tokio::task::spawn_blocking(move || db.run(|c| Ok(f(c))).unwrap()).await.unwrap()
    }
}

impl Backend for Duck {
    async fn create() -> Self {
        let path = std::env::temp_dir().join(unique("sluice-duckdb")).join("warehouse.duckdb");
        DuckDb::create(&path).await.unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Duck { path }
    }

    fn warehouse_section(&self) -> String {
        format!("[warehouse]\nkind = \"duckdb\"\npath = \"{}\"", self.path.display())
    }

    async fn exec(&self, sql: &str) {
        let sql = sql.to_string();
        self.on_file(move |c| c.execute_batch(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"))).await;
    }

    async fn text_rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let sql = sql.to_string();
        self.on_file(move |c| {
            let mut statement = c.prepare(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            let mut rows = statement.query([]).unwrap_or_else(|e| panic!("{sql}: {e}"));
            let mut out = Vec::new();
            while let Some(row) = rows.next().unwrap() {
                let width = row.as_ref().column_count();
                out.push((0..width).map(|i| row.get::<_, Option<String>>(i).unwrap()).collect());
            }
            out
        })
        .await
    }

    fn types() -> Types {
        use Value::*;
        Types {
            setup: r#"CREATE TABLE {table} (id BIGINT PRIMARY KEY, regular INTEGER, amount DECIMAL(18,4), born DATE, seen TIMESTAMPTZ,
                      local_ts TIMESTAMP, uid UUID, raw BLOB, flag BOOLEAN, name VARCHAR, small SMALLINT, ratio DOUBLE, tags VARCHAR[]);
                      INSERT INTO {table} VALUES (1, 70000, -12345678901234.5678, DATE '1969-12-31', TIMESTAMPTZ '2026-11-25 10:00:00.123456+00',
                      TIMESTAMP '2026-11-25 10:00:00', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\x00\xFF'::BLOB, true, 'Grüße, 東京', 7, 0.5, ['a']);
                      INSERT INTO {table} (id) VALUES (2)"#,
            columns: &["id", "regular", "amount", "born", "seen", "local_ts", "uid", "raw", "flag", "name", "small", "ratio"],
            types: vec![
                ColumnType::Long,
                ColumnType::Int,
                ColumnType::Decimal { precision: 18, scale: 4 },
                ColumnType::Date,
                ColumnType::TimestampMicros { utc: true },
                ColumnType::TimestampMicros { utc: false },
                ColumnType::Uuid,
                ColumnType::Bytes,
                ColumnType::Boolean,
                ColumnType::String,
                ColumnType::Int,
                ColumnType::Double,
            ],
            rows: vec![
                vec![
                    Long(1),
                    Int(70000),
                    DecimalText("-12345678901234.5678".into()),
                    Date(-1),
                    TimestampMicros(1_795_600_800_123_456),
                    TimestampMicros(1_795_600_800_000_000),
                    Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
                    Bytes(vec![0, 255]),
                    Boolean(true),
                    String("Grüße, 東京".into()),
                    Int(7),
                    Double(0.5),
                ],
                std::iter::once(Long(2)).chain(std::iter::repeat_n(Null, 11)).collect(),
            ],
            refusal: "DuckDB type VARCHAR[], which sluice does not map; cast it in a `query` model (e.g. CAST(tags AS VARCHAR))",
        }
    }

    fn absent() -> Absent {
        let path = std::env::temp_dir().join(unique("no-such-warehouse")).join("absent.duckdb");
        Absent { section: format!("[warehouse]\nkind = \"duckdb\"\npath = \"{}\"", path.display()), says: "does not exist", must_not_exist: Some(path) }
    }

    // DuckDB's one-writer lock is taken turn by turn: fewer, larger transactions.
    const WRITES_PER_TRANSACTION: usize = 5;
    const WRITER_PAUSE: Duration = Duration::from_millis(50);
    const SNAPSHOT_DEADLINE: Duration = Duration::from_secs(300);
}

conformance_tests!(Duck);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_warehouse_exec_creates_only_when_asked_and_runs_sql_on_the_file() {
    let dir = std::env::temp_dir().join(unique("sluice-exec"));
    std::fs::create_dir_all(&dir).unwrap();
    let fresh = Duck { path: dir.join("fresh.duckdb") };
    let config = dir.join("exec.toml");
    let text = format!(
        "[kafka]\nbootstrap_servers = \"{}\"\ntopic_prefix = \"itexec\"\n\n{}\n\n[[models]]\nname = \"members\"\ntable = \"members\"\n\
         primary_key = [\"id\"]\ncolumns = [\"id\"]\ndetection = {{ mode = \"diff\" }}\n",
        sluice_integration_tests::kafka_bootstrap(),
        fresh.warehouse_section()
    );
    std::fs::write(&config, text).unwrap();
    let exec_cli = |args: &[&str]| {
        let mut all = vec!["warehouse", "exec", "--config", config.to_str().unwrap()];
        all.extend_from_slice(args);
        std::process::Command::new(sluice_integration_tests::binary("sluice")).args(&all).output().expect("run sluice warehouse exec")
    };
    let refused = exec_cli(&["--sql", "SELECT 1"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("does not exist"), "{stderr}");
    assert!(!fresh.path.exists(), "without --create nothing is created");

    let created = exec_cli(&["--create", "--sql", "CREATE TABLE members (id BIGINT PRIMARY KEY, email VARCHAR, tier VARCHAR, ltv DECIMAL(10,2))"]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let inserted = exec_cli(&["--sql", "INSERT INTO members VALUES (1, 'a@example.com', 'free', 2.50), (2, 'b@example.com', 'pro', 0)"]);
    assert!(inserted.status.success(), "{}", String::from_utf8_lossy(&inserted.stderr));
    let state = fresh.text_rows("SELECT CAST(id AS VARCHAR), email, tier, CAST(ltv AS VARCHAR) FROM members ORDER BY id").await;
    assert_eq!(state.len(), 2);
    assert_eq!(state[0][3].as_deref(), Some("2.50"), "the decimal is exact");

    let bad = exec_cli(&["--sql", "INSERT INTO no_such_table VALUES (1)"]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && stderr.contains("no_such_table"), "a SQL error is reported with its text: {stderr}");
}

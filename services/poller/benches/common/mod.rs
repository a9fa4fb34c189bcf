//! What the poller's benches share: the environment they read, the 12-column customers table
//! they load into PostgreSQL, the config text of their models, and the process's memory.

use std::time::{Duration, Instant};

use sluice_core::config::Config;
use sluice_core::naming;
use sluice_poller::tracked::Tracked;
use sluice_warehouse::postgres::Postgres;

/// The columns of the bench table, in table order.
pub const COLUMNS: [&str; 12] = ["id", "email", "name", "tier", "country", "ltv", "orders", "score", "active", "signup_date", "updated_at", "attrs"];

/// One bench run's settings: `SLUICE_BENCH_ROWS` (default 1000000), the test services'
/// addresses, and a suffix unique to the run for table, model and topic names.
pub struct Bench {
    pub rows: i64,
    pub url: String,
    pub kafka: String,
    pub suffix: String,
}

impl Bench {
    /// The settings from the environment; the warehouse url is also set as
    /// `SLUICE_BENCH_WAREHOUSE_URL`, which [`Bench::config_text`] reads.
    pub fn from_env() -> Self {
        let rows = std::env::var("SLUICE_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
        let url = std::env::var("SLUICE_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://sluice:sluice@127.0.0.1:5432/sluice".into());
        let kafka = std::env::var("SLUICE_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into());
        let suffix = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        std::env::set_var("SLUICE_BENCH_WAREHOUSE_URL", &url);
        Bench { rows, url, kafka, suffix }
    }

    /// Create `table` with [`COLUMNS`] and load the run's rows into it, then run `after_load`
    /// (indexes) and `ANALYZE` it.
    pub async fn load(&self, warehouse: &Postgres, table: &str, after_load: &str) -> anyhow::Result<()> {
        let rows = self.rows;
        println!("loading {rows} rows x {} columns into {table} ...", COLUMNS.len());
        warehouse
            .client()
            .batch_execute(&format!(
                "CREATE TABLE {table} (id bigint PRIMARY KEY, email text, name text, tier text, country text, ltv numeric(12,2), \
                 orders int, score double precision, active boolean, signup_date date, updated_at timestamptz, attrs jsonb); \
                 INSERT INTO {table} SELECT i, 'user' || i || '@example.com', 'Customer ' || i, (ARRAY['free','pro','team'])[1 + i % 3], \
                 (ARRAY['FR','DE','US','JP'])[1 + i % 4], (i % 100000)::numeric / 100, (i % 50)::int, i * 0.001, i % 2 = 0, \
                 date '2020-01-01' + (i % 1500)::int, timestamptz '2024-01-01' + i * interval '1 second', \
                 jsonb_build_object('segment', i % 7, 'tags', jsonb_build_array('a', 'b')) FROM generate_series(1, {rows}) i; \
                 {after_load} ANALYZE {table}"
            ))
            .await?;
        Ok(())
    }

    /// The config: Kafka with `prefix`, the warehouse, then `models` (from [`model`]).
    pub fn config_text(&self, prefix: &str, models: &[String]) -> String {
        format!(
            "[kafka]\nbootstrap_servers = \"{}\"\ntopic_prefix = \"{prefix}\"\n\n[warehouse]\nkind = \"postgres\"\nurl = {{ env = \"SLUICE_BENCH_WAREHOUSE_URL\" }}\n\n{}",
            self.kafka,
            models.join("\n")
        )
    }
}

/// A `[[models]]` table `name` over `table` reading [`COLUMNS`] with `detection`, in pages of
/// 10000 rows, then `extra` lines.
pub fn model(name: &str, table: &str, detection: &str, extra: &str) -> String {
    format!(
        "[[models]]\nname = \"{name}\"\ntable = \"{table}\"\nprimary_key = [\"id\"]\ncolumns = [{}]\ndetection = {detection}\nbatch_rows = 10000\n{extra}\n",
        COLUMNS.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ")
    )
}

/// Rebuild a model's state from its change topic in this process, as a model does at start,
/// within `timeout`: (state, seconds, RSS growth in bytes).
pub async fn rebuild(config: &Config, model: &str, expiry: bool, timeout: Duration) -> anyhow::Result<(Tracked, f64, u64)> {
    let (kafka, topic) = (config.kafka.clone(), naming::change_topic(&config.kafka.topic_prefix, model));
    let rss_before = rss_bytes();
    let started = Instant::now();
    let tracked = tokio::task::spawn_blocking(move || {
        let mut tracked = Tracked::new(&kafka, &topic, expiry)?;
        tracked.catch_up(timeout).map(|_| tracked)
    })
    .await??;
    let seconds = started.elapsed().as_secs_f64();
    Ok((tracked, seconds, rss_bytes().saturating_sub(rss_before)))
}

/// The process's resident memory in bytes (0 where `/proc` does not tell).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

//! What cursor mode's `before` images cost (`cargo bench -p sluice-poller --bench cursor_images`;
//! needs the services of `ops/services.sh up`). A 12-column table of `SLUICE_BENCH_ROWS` rows
//! (default 1000000) is taken as a first snapshot by the real poller into two cursor models (one
//! plain, one with `expire`); then it prints:
//!
//! - the state a cursor model keeps, rebuilt from its change topic as at every start: time,
//!   memory per tracked row (the tables' bytes, and the process's RSS growth while rebuilding),
//!   without and with `expire`;
//! - the read-back of previous images per page: k locations scattered uniformly over the topic
//!   (k = 1 … 10000, a page's updates), read by the coalescing reader at several gaps against a
//!   reader that reads each partition's whole span between its lowest and highest wanted offset
//!   (what the poller did before), median of five reads each.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom as _;
use sluice_avro::ModelCodec;
use sluice_core::config::Config;
use sluice_core::{naming, Value};
use sluice_poller::tracked::{ImageReader, Keys, Tracked, DEFAULT_GAP};
use sluice_telemetry::ops::Health;
use sluice_warehouse::postgres::Postgres;
use sluice_warehouse::Warehouse;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Events a model committed so far, from its last state record.
fn events_committed(config: &Config, model: &str) -> i64 {
    let topic = naming::poller_state_topic(&config.kafka.topic_prefix);
    let records = sluice_kafka::compacted::read_to_end(&config.kafka, &topic, Duration::from_secs(60)).unwrap_or_default();
    records
        .iter()
        .rev()
        .find(|r| r.key.as_deref() == Some(model.as_bytes()))
        .and_then(|r| r.payload.as_deref())
        .and_then(|p| sluice_avro::decode_state(p).ok())
        .map_or(0, |s| s.events_total)
}

/// Rebuild a model's state from its change topic in this process, as a cursor model does at
/// start: (keys, seconds, RSS growth in bytes).
async fn rebuild(config: &Config, model: &str, expiry: bool) -> anyhow::Result<(Keys, f64, u64)> {
    let (kafka, topic) = (config.kafka.clone(), naming::change_topic(&config.kafka.topic_prefix, model));
    let rss_before = rss_bytes();
    let started = Instant::now();
    let tracked = tokio::task::spawn_blocking(move || {
        let mut tracked = Tracked::new(&kafka, &topic, expiry)?;
        tracked.catch_up(Duration::from_secs(900)).map(|_| tracked)
    })
    .await??;
    let seconds = started.elapsed().as_secs_f64();
    let rss = rss_bytes().saturating_sub(rss_before);
    Ok((tracked.into_keys(), seconds, rss))
}

/// Median seconds of five reads of `locs` by `reader`.
fn median_read(reader: &ImageReader, locs: &[u64]) -> anyhow::Result<f64> {
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let read = reader.fetch(locs, Duration::from_secs(600))?;
        times.push(started.elapsed().as_secs_f64());
        anyhow::ensure!(read.len() == locs.len(), "read {} of {} records", read.len(), locs.len());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[2])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let rows: i64 = std::env::var("SLUICE_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let url = std::env::var("SLUICE_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://sluice:sluice@127.0.0.1:5432/sluice".into());
    let kafka = std::env::var("SLUICE_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let table = format!("bench_cursor_{suffix}");
    let prefix = format!("benchc{suffix}");
    std::env::set_var("SLUICE_BENCH_WAREHOUSE_URL", &url);
    let warehouse = Postgres::connect(&url).await?;
    let columns = ["id", "email", "name", "tier", "country", "ltv", "orders", "score", "active", "signup_date", "updated_at", "attrs"];
    println!("loading {rows} rows x {} columns into {table} ...", columns.len());
    warehouse
        .client()
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, email text, name text, tier text, country text, ltv numeric(12,2), \
             orders int, score double precision, active boolean, signup_date date, updated_at timestamptz, attrs jsonb); \
             INSERT INTO {table} SELECT i, 'user' || i || '@example.com', 'Customer ' || i, (ARRAY['free','pro','team'])[1 + i % 3], \
             (ARRAY['FR','DE','US','JP'])[1 + i % 4], (i % 100000)::numeric / 100, (i % 50)::int, i * 0.001, i % 2 = 0, \
             date '2020-01-01' + (i % 1500)::int, timestamptz '2024-01-01' + i * interval '1 second', \
             jsonb_build_object('segment', i % 7, 'tags', jsonb_build_array('a', 'b')) FROM generate_series(1, {rows}) i; \
             CREATE INDEX ON {table} (updated_at, id); ANALYZE {table}"
        ))
        .await?;
    let (plain, expiring) = (format!("bench_cursor_{suffix}"), format!("bench_expire_{suffix}"));
    let model = |name: &str, extra: &str| {
        format!(
            "[[models]]\nname = \"{name}\"\ntable = \"{table}\"\nprimary_key = [\"id\"]\ncolumns = [{}]\n\
             detection = {{ mode = \"cursor\", cursor_column = \"updated_at\" }}\nbatch_rows = 10000\npoll_interval_ms = 1000\n{extra}\n",
            columns.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ")
        )
    };
    let text = format!(
        "[kafka]\nbootstrap_servers = \"{kafka}\"\ntopic_prefix = \"{prefix}\"\n\n[warehouse]\nkind = \"postgres\"\nurl = {{ env = \"SLUICE_BENCH_WAREHOUSE_URL\" }}\n\n{}\n{}",
        model(&plain, ""),
        // Ten years: nothing expires during the bench, every event carries its expiry.
        model(&expiring, "expire = { column = \"updated_at\", after_ms = 315360000000 }")
    );
    let config = Arc::new(Config::parse("bench.toml", &text)?);

    // The first snapshots, by the real poller (cursor mode, pages of 10000, one transaction each).
    let started = Instant::now();
    let stop = tokio_util::sync::CancellationToken::new();
    let poller = tokio::spawn(sluice_poller::run(Arc::clone(&config), None, Health::new(), stop.clone()));
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (c1, c2) = (config.clone(), config.clone());
        let (p, e) = (plain.clone(), expiring.clone());
        let done = tokio::task::spawn_blocking(move || events_committed(&c1, &p) >= rows && events_committed(&c2, &e) >= rows).await?;
        if done {
            break;
        }
        anyhow::ensure!(!poller.is_finished(), "the poller stopped");
    }
    stop.cancel();
    poller.await??;
    let snapshots = started.elapsed().as_secs_f64();

    // The state a cursor model keeps, rebuilt as at every start.
    let (keys, plain_rebuild, plain_rss) = rebuild(&config, &plain, false).await?;
    let (expiring_keys, expire_rebuild, expire_rss) = rebuild(&config, &expiring, true).await?;
    anyhow::ensure!(keys.len() as i64 == rows && expiring_keys.len() as i64 == rows, "every row tracked");
    let per_row = |bytes: f64| bytes / rows as f64;
    let expire_table = expiring_keys.table_bytes();
    drop(expiring_keys);

    // Locations of random keys, as a page of updates would look them up.
    let model_config = config.model(&plain).expect("defined");
    let codec = ModelCodec::new(&plain, warehouse.describe(model_config).await?)?;
    let width = codec.row_schema().columns.len();
    let mut ids: Vec<i64> = (1..=rows).collect();
    ids.shuffle(&mut rand::rng());
    let location = |id: i64| -> anyhow::Result<u64> {
        let mut row = vec![Value::Null; width];
        row[0] = Value::Long(id);
        let mut key = Vec::new();
        codec.encode_key(&row, &mut key)?;
        keys.get(xxhash_rust::xxh3::xxh3_64(&key)).map(|e| e.loc()).ok_or_else(|| anyhow::anyhow!("id {id} not tracked"))
    };
    let topic = naming::change_topic(&config.kafka.topic_prefix, &plain);
    let gaps: [(&str, i64); 5] = [("0", 0), ("512", 512), ("4096*", DEFAULT_GAP), ("65536", 65_536), ("span", i64::MAX)];
    let mut timings = Vec::new();
    for k in [1usize, 10, 100, 1000, 10_000] {
        let locs: Vec<u64> = ids[..k].iter().map(|&id| location(id)).collect::<anyhow::Result<_>>()?;
        let mut line = Vec::new();
        for (_, gap) in gaps {
            // A seek per record is only worth timing for small pages.
            if gap == 0 && k > 100 {
                line.push(None);
                continue;
            }
            let (kafka, topic, locs) = (config.kafka.clone(), topic.clone(), locs.clone());
            let seconds = tokio::task::spawn_blocking(move || median_read(&ImageReader::new(&kafka, &topic)?.with_gap(gap), &locs)).await??;
            line.push(Some(seconds));
        }
        timings.push((k, line));
    }

    println!();
    println!("rows: {rows}; first snapshots of both cursor models by the poller: {snapshots:.1} s");
    println!("cursor state rebuild from topic:   {plain_rebuild:6.2} s (plain)   {expire_rebuild:6.2} s (with expire)");
    println!(
        "cursor memory per tracked row:     {:6.1} B (tables)  {:6.1} B (RSS growth while rebuilding, incl. client buffers)",
        per_row(keys.table_bytes() as f64),
        per_row(plain_rss as f64)
    );
    println!(
        "  with expire:                     {:6.1} B (tables)  {:6.1} B (RSS growth while rebuilding, incl. client buffers)",
        per_row(expire_table as f64),
        per_row(expire_rss as f64)
    );
    println!("read-back of k scattered previous images (ms, median of 5), by gap (* = the reader's default; span = read each partition's whole span):");
    println!("{:>8} {}", "k", gaps.iter().map(|(name, _)| format!("{name:>10}")).collect::<String>());
    for (k, line) in timings {
        let cells: String = line.iter().map(|t| t.map_or(format!("{:>10}", "-"), |s| format!("{:>10.1}", s * 1000.0))).collect();
        println!("{k:>8} {cells}");
    }
    warehouse.client().batch_execute(&format!("DROP TABLE {table}")).await?;
    Ok(())
}

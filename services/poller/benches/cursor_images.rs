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

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom as _;
use sluice_avro::ModelCodec;
use sluice_core::config::Config;
use sluice_core::{naming, Value};
use sluice_poller::tracked::{ImageReader, DEFAULT_GAP};
use sluice_telemetry::ops::Health;
use sluice_warehouse::postgres::Postgres;
use sluice_warehouse::Warehouse;

use common::{model, rebuild, Bench};

/// Events a model committed so far, from its last state record.
fn events_committed(config: &Config, model: &str) -> i64 {
    let topic = naming::poller_state_topic(&config.kafka.topic_prefix);
    let records = sluice_kafka::compacted::read_to_end(&config.kafka, &topic, Duration::from_secs(60), sluice_kafka::compacted::IfMissing::Empty).unwrap_or_default();
    records
        .iter()
        .rev()
        .find(|r| r.key.as_deref() == Some(model.as_bytes()))
        .and_then(|r| r.payload.as_deref())
        .and_then(|p| sluice_avro::decode_state(p).ok())
        .map_or(0, |s| s.events_total)
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
    let bench = Bench::from_env();
    let (rows, suffix) = (bench.rows, &bench.suffix);
    let table = format!("bench_cursor_{suffix}");
    let prefix = format!("benchc{suffix}");
    let warehouse = Postgres::connect(&bench.url).await?;
    bench.load(&warehouse, &table, &format!("CREATE INDEX ON {table} (updated_at, id);")).await?;
    let (plain, expiring) = (format!("bench_cursor_{suffix}"), format!("bench_expire_{suffix}"));
    let cursor = "{ mode = \"cursor\", cursor_column = \"updated_at\" }";
    let text = bench.config_text(
        &prefix,
        &[
            model(&plain, &table, cursor, "poll_interval_ms = 1000\n"),
            // Ten years: nothing expires during the bench, every event carries its expiry.
            model(&expiring, &table, cursor, "poll_interval_ms = 1000\nexpire = { column = \"updated_at\", after_ms = 315360000000 }"),
        ],
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
    let (keys, plain_rebuild, plain_rss) = rebuild(&config, &plain, false, Duration::from_secs(900)).await.map(|(t, s, r)| (t.into_keys(), s, r))?;
    let (expiring_keys, expire_rebuild, expire_rss) = rebuild(&config, &expiring, true, Duration::from_secs(900)).await.map(|(t, s, r)| (t.into_keys(), s, r))?;
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

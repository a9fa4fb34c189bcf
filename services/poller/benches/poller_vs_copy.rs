//! The poller against PostgreSQL's own `COPY (query) TO STDOUT` of the same query, measured in
//! the same run on the same data (`cargo bench -p sluice-poller --bench poller_vs_copy`; needs
//! the services of `ops/services.sh up`). Prints:
//!
//! - first snapshot of a 1M-row, 12-column model into Kafka (`diff` mode: key check, then
//!   primary-key chunks of 10000 rows, one transaction each) ÷ COPY (target ≤ 2.0);
//! - a `diff` run with 1% of rows changed ÷ COPY (target ≤ 1.5);
//! - the same for `warehouse_diff` (first snapshot and 1% run);
//! - memory per tracked row in `diff` mode: the state table's size and the process's RSS growth
//!   while rebuilding the state of 1M rows from the change topic (target ≤ 64 bytes).
//!
//! `SLUICE_BENCH_ROWS` changes the row count (default 1000000).

mod common;

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use sluice_avro::{ModelCodec, PollerState};
use sluice_core::config::Config;
use sluice_core::naming;
use sluice_kafka::admin::{ensure_topics, TopicRole};
use sluice_kafka::producer::TransactionalProducer;
use sluice_poller::tracked::Tracked;
use sluice_poller::{Committer, ModelContext};
use sluice_warehouse::postgres::Postgres;
use sluice_warehouse::{PreparedSnapshot, SnapshotStore, Warehouse};

use common::{model, rebuild, Bench, COLUMNS};

fn fresh_state(model: &str) -> PollerState {
    PollerState { model: model.into(), run_id: String::new(), position: None, snapshot_done: false, events_total: 0, committed_at_ms: 0 }
}

async fn copy_seconds(warehouse: &Postgres, sql: &str) -> f64 {
    let started = Instant::now();
    let stream = warehouse.client().copy_out(&format!("COPY ({sql}) TO STDOUT")).await.expect("COPY");
    futures::pin_mut!(stream);
    let mut bytes = 0usize;
    while let Some(chunk) = stream.next().await {
        bytes += chunk.expect("COPY chunk").len();
    }
    std::hint::black_box(bytes);
    started.elapsed().as_secs_f64()
}

/// One `warehouse_diff` run: build the pending snapshot and change list in SQL, emit, swap.
async fn wd_run(ctx: &mut ModelContext<'_, Postgres>, run_id: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let prepared = ctx.warehouse.prepare_snapshot(ctx.model, ctx.codec.row_schema(), run_id).await?;
    anyhow::ensure!(matches!(prepared, PreparedSnapshot::Ready { .. }), "unexpected {prepared:?}");
    sluice_poller::warehouse_diff::emit(ctx, run_id, 0).await?;
    ctx.warehouse.commit_snapshot(ctx.model).await?;
    Ok(started.elapsed().as_secs_f64())
}

/// A model's context as the service opens it (codec, producer that fences, committer), with no
/// committed state: the bench's topics are new.
async fn context<'a>(config: &'a Config, warehouse: &'a Postgres, name: &str) -> anyhow::Result<ModelContext<'a, Postgres>> {
    let model = config.model(name).expect("defined");
    let codec = ModelCodec::new(name, warehouse.describe(model).await?)?;
    let producer = TransactionalProducer::new(&config.kafka, &naming::poller_transactional_id(&config.kafka.topic_prefix, name)).await?;
    let committer = Committer::new(config, producer, &codec, fresh_state(name));
    Ok(ModelContext { config, warehouse, model, codec, committer, expiry: None })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let bench = Bench::from_env();
    let (rows, suffix) = (bench.rows, &bench.suffix);
    let table = format!("bench_{suffix}");
    let prefix = format!("bench{suffix}");
    let warehouse = Postgres::connect(&bench.url).await?;
    bench.load(&warehouse, &table, "").await?;
    let (diff_model, wd_model) = (format!("bench_diff_{suffix}"), format!("bench_wd_{suffix}"));
    let text = bench.config_text(
        &prefix,
        &[model(&diff_model, &table, "{ mode = \"diff\" }", ""), model(&wd_model, &table, "{ mode = \"warehouse_diff\" }", "")],
    );
    let config = Config::parse("bench.toml", &text)?;
    let topics = vec![
        (naming::change_topic(&prefix, &diff_model), TopicRole::Compacted),
        (naming::change_topic(&prefix, &wd_model), TopicRole::Compacted),
        (naming::schema_topic(&prefix), TopicRole::Compacted),
        (naming::poller_state_topic(&prefix), TopicRole::Compacted),
    ];
    ensure_topics(&config.kafka, &topics).await?;
    let select = format!("SELECT {} FROM {table}", COLUMNS.join(", "));

    // --- diff mode ---
    let mut dctx = context(&config, &warehouse, &diff_model).await?;
    let topic = naming::change_topic(&prefix, &diff_model);
    let (k, t) = (config.kafka.clone(), topic.clone());
    let tracked = tokio::task::spawn_blocking(move || Tracked::new(&k, &t, false)).await??;

    let copy_1 = copy_seconds(&warehouse, &select).await;
    let started = Instant::now();
    // What the service runs for a new model: the key check, then primary-key chunks of
    // batch_rows, one transaction each.
    let progress = sluice_poller::snapshot::MetricProgress;
    let never = tokio_util::sync::CancellationToken::new();
    sluice_poller::snapshot::run_first_snapshot(&mut dctx, None, &progress, &never).await?;
    anyhow::ensure!(dctx.state().snapshot_done, "the snapshot completed");
    let snapshot = started.elapsed().as_secs_f64();

    // State rebuild (what a restart costs) in a fresh process-level structure, with memory.
    drop(tracked);
    let (tracked, rebuild, rss_growth) = rebuild(&config, &diff_model, false, Duration::from_secs(600)).await?;
    let tracked_rows = tracked.len() as f64;
    let table_bytes = tracked.keys().table_bytes() as f64; // 24-byte bucket + 1 control byte per slot

    warehouse.client().batch_execute(&format!("UPDATE {table} SET tier = tier || '+' WHERE id % 100 = 0")).await?;
    let copy_2 = copy_seconds(&warehouse, &select).await;
    let started = Instant::now();
    // A steady-state run starts by catching up with what the previous run committed.
    let mut tracked = tokio::task::spawn_blocking(move || {
        let mut tracked = tracked;
        tracked.catch_up(Duration::from_secs(600)).map(|_| tracked)
    })
    .await??;
    let caught_up = started.elapsed().as_secs_f64();
    let plan = sluice_poller::diff::compute(&warehouse, dctx.model, &dctx.codec, &mut tracked).await?;
    let computed = started.elapsed().as_secs_f64();
    let changes = plan.counts();
    sluice_poller::diff::emit(&mut dctx, plan, "bench-diff").await?;
    let diff_run = started.elapsed().as_secs_f64();

    // --- warehouse_diff mode ---
    let mut wctx = context(&config, &warehouse, &wd_model).await?;
    let wd_snapshot = wd_run(&mut wctx, "bench-wd-snapshot").await?;
    warehouse.client().batch_execute(&format!("UPDATE {table} SET tier = tier || '+' WHERE id % 100 = 1")).await?;
    let copy_3 = copy_seconds(&warehouse, &select).await;
    let wd_diff = wd_run(&mut wctx, "bench-wd-diff").await?;

    println!();
    println!("rows: {rows}, 1% run: {} updates", changes.updates);
    println!("COPY (query) TO STDOUT:        {copy_1:7.2} s / {copy_2:7.2} s / {copy_3:7.2} s (before each measured run)");
    println!("diff first snapshot:           {snapshot:7.2} s   ratio {:5.2}  (target <= 2.0)", snapshot / copy_1);
    println!("diff run, 1% changed:          {diff_run:7.2} s   ratio {:5.2}  (target <= 1.5)", diff_run / copy_2);
    println!("  of which catch-up {caught_up:.2} s, scan+compare {:.2} s, before images+encode+commit {:.2} s", computed - caught_up, diff_run - computed);
    println!("warehouse_diff first snapshot: {wd_snapshot:7.2} s   ratio {:5.2}", wd_snapshot / copy_1);
    println!("warehouse_diff run, 1% changed:{wd_diff:7.2} s   ratio {:5.2}", wd_diff / copy_3);
    println!("diff state rebuild from topic: {rebuild:7.2} s   ({tracked_rows} rows)");
    println!(
        "diff memory per tracked row:   {:7.1} B (hash table)  {:7.1} B (RSS growth while rebuilding, incl. client buffers)  (target <= 64)",
        table_bytes / tracked_rows,
        rss_growth as f64 / tracked_rows
    );
    warehouse
        .client()
        .batch_execute(&format!(
            "DROP TABLE {table}; DROP TABLE IF EXISTS sluice_state.\"{wd_model}_snapshot\", sluice_state.\"{wd_model}_pending\", sluice_state.\"{wd_model}_changes\""
        ))
        .await?;
    Ok(())
}

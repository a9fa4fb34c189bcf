//! `bench-sink`: the sink's speed and its rate limiter's accuracy, each as a ratio against a
//! reference measured in the same run on the same data (`ops/bench-sink.sh`).
//!
//! 1. **Throughput.** N change events are produced to a fresh change topic. Reference: Kafka's
//!    own `kafka-consumer-perf-test` reading that topic (msgs/s while fetching). Then
//!    `sluice-sink` delivers the same topic to a fast local webhook receiver in batches of 500:
//!    records/s from the first record received to the last. Printed: the ratio (target ≥ 0.5).
//! 2. **Rate limit.** The same sink under `records_per_second = R`: achieved ÷ configured rate
//!    (records per whole second of the run, first and last second excluded), and the number of
//!    one-second windows (by the receiver's clock, one starting at every request) holding more
//!    than R records (target: ratio ≥ 0.95, zero violations).
//!
//! Environment: `SLUICE_BENCH_RECORDS` (default 200000), `SLUICE_BENCH_RATE` (default 20000
//! records/s), `SLUICE_BENCH_RATE_RECORDS` (default 200000).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::Router;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sluice_avro::ModelCodec;
use sluice_core::config::Config;
use sluice_core::{naming, ChangeEvent, Column, ColumnType, Op, RowSchema, SourceInfo, Value};
use sluice_integration_tests::{kafka_bootstrap, require_kafka, toml_text, unique};
use sluice_kafka::admin::{ensure_topics, TopicRole};
use sluice_telemetry::ops::Health;
use tokio_util::sync::CancellationToken;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What the receiver saw: arrival time and size of every request.
#[derive(Default)]
struct Arrivals {
    records: AtomicUsize,
    requests: Mutex<Vec<(Instant, usize)>>,
}

#[derive(serde::Deserialize)]
struct Body {
    records: Vec<serde::de::IgnoredAny>,
}

async fn hook(State(state): State<Arc<Arrivals>>, body: axum::body::Bytes) -> &'static str {
    let n = serde_json::from_slice::<Body>(&body).map(|b| b.records.len()).unwrap_or(0);
    state.requests.lock().unwrap().push((Instant::now(), n));
    state.records.fetch_add(n, Ordering::SeqCst);
    "ok"
}

async fn receiver() -> (String, Arc<Arrivals>) {
    let state = Arc::new(Arrivals::default());
    let app = Router::new().route("/hook", post(hook)).with_state(Arc::clone(&state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), state)
}

fn bench_config(prefix: &str, url: &str, destination_extra: &str) -> Arc<Config> {
    std::env::set_var("SLUICE_BENCH_WAREHOUSE_URL", "postgres://unused@127.0.0.1/unused");
    let text = format!(
        r#"
{services}
{model}
[[destinations]]
name = "fast"
batch_max_records = 500
batch_linger_ms = 5
max_concurrency = 8
{destination_extra}
[destinations.webhook]
url = "{url}"
[[syncs]]
model = "events"
destination = "fast"
fields = {{ id = "id", email = "email", v = "v" }}
"#,
        services = toml_text::services(prefix, "SLUICE_BENCH_WAREHOUSE_URL"),
        model = toml_text::Model::table("events", "unused", &["id", "email", "v", "updated_at"], r#"{ mode = "cursor", cursor_column = "updated_at" }"#),
    );
    Arc::new(Config::parse("bench.toml", &text).expect("bench config"))
}

/// Produce `n` change events (distinct keys) and their schemas.
async fn produce(config: &Config, n: usize) -> anyhow::Result<String> {
    let prefix = &config.kafka.topic_prefix;
    let topic = naming::change_topic(prefix, "events");
    ensure_topics(&config.kafka, &[(topic.clone(), TopicRole::Compacted), (naming::schema_topic(prefix), TopicRole::Compacted)]).await?;
    let col = |name: &str, ty| Column { name: name.into(), ty, nullable: false };
    let schema = RowSchema {
        columns: vec![col("id", ColumnType::Long), col("email", ColumnType::String), col("v", ColumnType::Int), col("updated_at", ColumnType::TimestampMicros { utc: true })],
        primary_key: vec![0],
    };
    let codec = ModelCodec::new("events", schema)?;
    let producer: FutureProducer = sluice_kafka::client_config(&config.kafka)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .create()?;
    for s in codec.schemas() {
        producer.send(FutureRecord::to(&naming::schema_topic(prefix)).key(&s.fingerprint).payload(&s.json), Duration::from_secs(10)).await.map_err(|(e, _)| e)?;
    }
    let mut deliveries = Vec::with_capacity(n);
    for i in 0..n as i64 {
        let row = vec![Value::Long(i), Value::String(format!("customer{i}@example.com")), Value::Int(1), Value::TimestampMicros(1_700_000_000_000_000 + i)];
        let (mut key, mut value) = (Vec::new(), Vec::new());
        codec.encode_key(&row, &mut key)?;
        let event = ChangeEvent {
            op: Op::Read,
            before: None,
            after: Some(row),
            source: SourceInfo { model: "events".into(), warehouse: "bench".into(), run_id: "bench".into(), position: None },
            ts_ms: 0,
            changed: None,
        };
        codec.encode_event(&event, &mut value)?;
        loop {
            match producer.send_result(FutureRecord::to(&topic).key(&key).payload(&value)) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((_, _)) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }
    for d in deliveries {
        d.await?.map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(topic)
}

/// Kafka's reference consumer on the same topic; returns (msgs/s overall, msgs/s while fetching).
fn consumer_perf_test(topic: &str, n: usize) -> anyhow::Result<(f64, f64)> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/bin/kafka-consumer-perf-test.sh");
    let output = std::process::Command::new(script)
        .args(["--bootstrap-server", &kafka_bootstrap(), "--topic", topic, "--messages", &n.to_string(), "--group", &unique("bench-perf"), "--timeout", "60000"])
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().ok_or_else(|| anyhow::anyhow!("no output from kafka-consumer-perf-test: {}", String::from_utf8_lossy(&output.stderr)))?;
    // start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec,
    // rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    anyhow::ensure!(fields.len() >= 10, "unexpected perf-test output: {line}");
    Ok((fields[5].parse()?, fields[9].parse()?))
}

/// Run the sink until `n` records arrived; returns the receiver's log.
async fn run_sink(config: Arc<Config>, arrivals: &Arc<Arrivals>, n: usize) -> anyhow::Result<Vec<(Instant, usize)>> {
    let stop = CancellationToken::new();
    let sink = tokio::spawn({
        let (config, stop) = (Arc::clone(&config), stop.clone());
        async move { sluice_sink::run(config, "fast", Health::new(), stop).await }
    });
    let deadline = Instant::now() + Duration::from_secs(600);
    while arrivals.records.load(Ordering::SeqCst) < n {
        anyhow::ensure!(Instant::now() < deadline, "only {} of {n} records arrived", arrivals.records.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    sink.await??;
    Ok(arrivals.requests.lock().unwrap().clone())
}

fn span_rate(log: &[(Instant, usize)]) -> f64 {
    let (first, last) = (log.first().unwrap().0, log.last().unwrap().0);
    // Records after the first request, over the time they took to arrive.
    let records: usize = log.iter().skip(1).map(|(_, n)| n).sum();
    records as f64 / last.duration_since(first).as_secs_f64()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logging and tracing as `sluice-sink` installs them, so the spans it opens per record and
    // per batch cost here what they cost in the service (`RUST_LOG`, `OTEL_*` apply).
    let _telemetry = sluice_telemetry::setup_telemetry("sluice-sink", false, sluice_telemetry::Spans::WhenExported);
    require_kafka();
    let n = env_usize("SLUICE_BENCH_RECORDS", 200_000);
    let rate = env_usize("SLUICE_BENCH_RATE", 20_000);
    let rate_n = env_usize("SLUICE_BENCH_RATE_RECORDS", 200_000);

    println!("== throughput: {n} change events, batches of 500, local webhook");
    let (url, arrivals) = receiver().await;
    let config = bench_config(&unique("bench"), &url, "");
    let started = Instant::now();
    let topic = produce(&config, n).await?;
    println!("produced in {:.1} s", started.elapsed().as_secs_f64());
    let (perf_overall, perf_fetch) = consumer_perf_test(&topic, n)?;
    let log = run_sink(Arc::clone(&config), &arrivals, n).await?;
    let sink_rate = span_rate(&log);
    println!("kafka-consumer-perf-test   {perf_fetch:>12.0} msgs/s while fetching ({perf_overall:.0} overall)");
    println!("sluice-sink -> webhook     {sink_rate:>12.0} records/s ({} requests)", log.len());
    println!("ratio sink / perf-test     {:>12.2}   (target >= 0.5)", sink_rate / perf_fetch);

    println!("\n== rate limit: {rate_n} records at records_per_second = {rate}");
    let (url, arrivals) = receiver().await;
    let config = bench_config(&unique("bench"), &url, &format!("rate_limit = {{ records_per_second = {rate} }}"));
    produce(&config, rate_n).await?;
    let log = run_sink(Arc::clone(&config), &arrivals, rate_n).await?;
    // Steady state: records per whole second after the first (start-up: the consumer is still
    // filling) and before the last (the tail of the data).
    let t0 = log[0].0;
    let seconds = log.last().unwrap().0.duration_since(t0).as_secs() as usize;
    let mut per_second = vec![0usize; seconds + 1];
    for (t, n) in &log {
        per_second[t.duration_since(t0).as_secs() as usize] += n;
    }
    anyhow::ensure!(seconds >= 3, "run too short to measure a steady rate; raise SLUICE_BENCH_RATE_RECORDS");
    let middle = &per_second[1..seconds];
    let achieved = middle.iter().sum::<usize>() as f64 / middle.len() as f64;
    let mut violations = 0;
    let mut worst = 0;
    for (i, (start, _)) in log.iter().enumerate() {
        let in_window: usize = log[i..].iter().take_while(|(t, _)| t.duration_since(*start) < Duration::from_secs(1)).map(|(_, n)| n).sum();
        worst = worst.max(in_window);
        if in_window > rate {
            violations += 1;
        }
    }
    if std::env::var_os("SLUICE_BENCH_TRACE").is_some() {
        let t0 = log[0].0;
        for (t, n) in &log {
            println!("  +{:>6} ms  {n}", t.duration_since(t0).as_millis());
        }
    }
    println!("achieved                   {achieved:>12.0} records/s");
    println!("ratio achieved / configured{:>12.3}   (target >= 0.95)", achieved / rate as f64);
    println!("busiest one-second window  {worst:>12} records");
    println!("windows over the limit     {violations:>12}   (target 0)");
    Ok(())
}

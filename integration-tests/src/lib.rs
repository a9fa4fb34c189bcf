//! Shared fixtures for sluice's integration tests, which run against the real Kafka broker,
//! PostgreSQL and Redis that `ops/services.sh up` starts (never mocks). A missing service fails
//! the test with the command that starts it; nothing is skipped.
//!
//! Every test uses its own topic prefix and table names, so tests never see each other's data
//! and can run in parallel against one broker.

pub mod contract;
pub mod membership;
pub mod private_broker;
pub mod process;
pub mod receiver;
pub mod suppression;
pub mod toml_text;

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Install the services' telemetry once per test process, as `main` does, so trace context
/// propagates exactly as in production.
pub fn telemetry() {
    static GUARD: std::sync::OnceLock<sluice_telemetry::TelemetryGuard> = std::sync::OnceLock::new();
    GUARD.get_or_init(|| sluice_telemetry::setup_telemetry("sluice-integration-tests", false, sluice_telemetry::Spans::Always));
}

/// Kafka address for tests (`SLUICE_TEST_KAFKA`, default the local broker of `ops/kafka.sh`).
pub fn kafka_bootstrap() -> String {
    std::env::var("SLUICE_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// PostgreSQL URL for tests (`SLUICE_TEST_POSTGRES_URL`, default the cluster of `ops/postgres.sh`).
pub fn postgres_url() -> String {
    std::env::var("SLUICE_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://sluice:sluice@127.0.0.1:5432/sluice".into())
}

/// Fail unless the broker answers.
pub fn require_kafka() {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .create()
        .expect("kafka client");
    if let Err(error) = consumer.fetch_metadata(None, Duration::from_secs(10)) {
        panic!(
            "Kafka is not reachable at {} ({error}). Start it with `ops/kafka.sh start` (or `ops/services.sh up`), \
             or point SLUICE_TEST_KAFKA at a broker.",
            kafka_bootstrap()
        );
    }
}

/// Connect to PostgreSQL or fail with how to start it.
pub async fn require_postgres() -> tokio_postgres::Client {
    match tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            client
        }
        Err(error) => panic!(
            "PostgreSQL is not reachable at {} ({error}). Start it with `ops/postgres.sh start` (or `ops/services.sh up`), \
             or point SLUICE_TEST_POSTGRES_URL at a server.",
            postgres_url()
        ),
    }
}

/// A name unique to this test run: `<base>_<8 hex>`.
pub fn unique(base: &str) -> String {
    format!("{base}_{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// A record read back from a topic, with its headers.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
}

impl ReadRecord {
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// A partition's high watermark, retried for up to 30 s: a topic the services are still creating
/// (or one this read auto-created) has no leader for a moment, which is no test failure.
fn watermarks(consumer: &BaseConsumer, topic: &str, partition: i32) -> (i64, i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
            Ok(marks) => return marks,
            Err(error) if std::time::Instant::now() < deadline => {
                eprintln!("watermarks of {topic}/{partition}: {error}; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(error) => panic!("watermarks of {topic}/{partition}: {error}"),
        }
    }
}

/// Every committed record of `topic` (read_committed), up to its current end.
pub fn read_topic(topic: &str) -> Vec<ReadRecord> {
    read_topic_with(ClientConfig::new().set("bootstrap.servers", kafka_bootstrap()), topic)
}

/// [`read_topic`] with a client configuration of its own (another broker, security settings).
pub fn read_topic_with(client: &mut ClientConfig, topic: &str) -> Vec<ReadRecord> {
    let consumer: BaseConsumer = client
        .set("group.id", unique("it-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("kafka consumer");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let mut assignment = TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (_, high) = watermarks(&consumer, topic, p.id());
        assignment.add_partition_offset(topic, p.id(), Offset::Beginning).expect("partition");
        ends.push((p.id(), high));
    }
    consumer.assign(&assignment).expect("assign");
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let m = message.expect("message");
            out.push(ReadRecord {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
                headers: sluice_kafka::headers::pairs(m.headers()),
            });
        }
        let positions = consumer.position().expect("position");
        let done = ends.iter().all(|&(p, end)| {
            end == 0 || matches!(positions.find_partition(topic, p).map(|x| x.offset()), Some(Offset::Offset(o)) if o >= end)
        });
        if done {
            return out;
        }
        assert!(std::time::Instant::now() < deadline, "reading {topic} to its end took over 30 s");
    }
}

/// The topics whose names start with `<prefix>.`, sorted (listed from the cluster's metadata,
/// which never creates one).
pub fn topic_names(prefix: &str) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", kafka_bootstrap()).create().expect("kafka client");
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10)).expect("metadata");
    let mut names: Vec<String> = metadata.topics().iter().map(|t| t.name().to_string()).filter(|t| t.starts_with(&format!("{prefix}."))).collect();
    names.sort();
    names
}

/// Wait until `condition` holds, polling every 100 ms; fail with `what` after `timeout`.
pub async fn eventually(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A warehouse table and a config wiring it to one webhook destination `crm`, with a topic
/// prefix of its own.
pub struct Pipeline {
    pub config: std::sync::Arc<sluice_core::config::Config>,
    /// The config's TOML text (for services started as processes).
    pub text: String,
    pub table: String,
    pub prefix: String,
    pub db: tokio_postgres::Client,
}

/// What a test pipeline looks like; the `*_extra` fields are TOML lines added to the model, the
/// destination and its `[destinations.webhook]` table.
#[derive(Default)]
pub struct Spec<'a> {
    /// `[kafka] bootstrap_servers`; default [`kafka_bootstrap`].
    pub bootstrap_servers: Option<&'a str>,
    /// TOML lines added to `[kafka]`.
    pub kafka_extra: &'a str,
    pub columns_sql: &'a str,
    pub columns: &'a [&'a str],
    pub model_extra: &'a str,
    pub destination_extra: &'a str,
    pub webhook_extra: &'a str,
    /// The destination's kind table instead of the webhook's (e.g. [`toml_text::meta_audience`]).
    pub kind: Option<&'a str>,
    /// The `[[syncs]]` body after `model` and `destination`.
    pub sync: &'a str,
    /// The model's `detection` table; default: cursor on `updated_at` with `created_at`.
    pub detection: Option<&'a str>,
}

/// Create a table and a config for it; see [`Pipeline`].
pub async fn pipeline(hook_url: &str, spec: Spec<'_>) -> Pipeline {
    let Spec { bootstrap_servers, kafka_extra, columns_sql, columns, model_extra, destination_extra, webhook_extra, kind, sync, detection } = spec;
    let kind = kind.map_or_else(|| format!("[destinations.webhook]\nurl = \"{hook_url}\"\n{webhook_extra}"), str::to_string);
    let detection = detection.unwrap_or(toml_text::CURSOR);
    telemetry();
    require_kafka();
    let kafka = bootstrap_servers.map_or_else(kafka_bootstrap, str::to_string);
    let db = require_postgres().await;
    let table = unique("it_customers");
    let prefix = unique("it");
    db.batch_execute(&format!("CREATE TABLE {table} ({columns_sql})")).await.expect("create test table");
    std::env::set_var("SLUICE_IT_WAREHOUSE_URL", postgres_url());
    let model = toml_text::Model::table("customers", &table, columns, detection).poll_interval_ms(200).extra(model_extra);
    let text = format!(
        r#"
{services}
{model}
[[destinations]]
name = "crm"
{destination_extra}
{kind}

{sync}"#,
        services = toml_text::services_on(&kafka, &prefix, kafka_extra, "SLUICE_IT_WAREHOUSE_URL"),
        sync = toml_text::sync("customers", "crm", sync),
    );
    let config = std::sync::Arc::new(sluice_core::config::Config::parse("integration-test.toml", &text).expect("test config is valid"));
    Pipeline { config, text, table, prefix, db }
}

/// Path of a workspace binary built next to the test executables (`cargo build --bins`, which
/// `ops/test.sh` runs before the tests), or in `SLUICE_TEST_BIN_DIR` when set (binaries copied
/// aside, when other builds share the target dir and replace them).
pub fn binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = match std::env::var_os("SLUICE_TEST_BIN_DIR") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => exe.parent().and_then(|deps| deps.parent()).expect("target profile directory").to_path_buf(),
    };
    let path = dir.join(name);
    assert!(path.exists(), "{} is not built; run `cargo build --workspace --bins` first (ops/test.sh does)", path.display());
    path
}

/// Run the poller in-process until the returned token is cancelled.
pub fn start_poller(config: &std::sync::Arc<sluice_core::config::Config>) -> (tokio_util::sync::CancellationToken, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let token = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(sluice_poller::run(std::sync::Arc::clone(config), None, sluice_telemetry::ops::Health::new(), token.clone()));
    (token, handle)
}

/// Stop what [`start_sink`] and [`start_poller`] started: the sink first (it drains and
/// commits what it holds), then the poller; each must end without error.
pub async fn stop_pipeline(
    sink_stop: tokio_util::sync::CancellationToken,
    sink: tokio::task::JoinHandle<Result<(), sluice_sink::SinkError>>,
    poller_stop: tokio_util::sync::CancellationToken,
    poller: tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    stop_sinks_then_poller(vec![(sink_stop, sink)], poller_stop, poller).await;
}

/// Assert that no destination dead-lettered anything, given `(destination, dead letters)` as a
/// run's `finish` returns them.
pub fn assert_nothing_dead_lettered(dead: Vec<(&str, usize)>) {
    for (destination, count) in dead {
        assert_eq!(count, 0, "nothing dead-lettered at {destination}");
    }
}

/// [`stop_pipeline`] with several sinks: every sink is told to stop first (they drain
/// together), each must drain cleanly, then the poller stops.
pub async fn stop_sinks_then_poller(
    sinks: Vec<(tokio_util::sync::CancellationToken, tokio::task::JoinHandle<Result<(), sluice_sink::SinkError>>)>,
    poller_stop: tokio_util::sync::CancellationToken,
    poller: tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    sinks.iter().for_each(|(stop, _)| stop.cancel());
    for (_, sink) in sinks {
        sink.await.unwrap().expect("the sink drains");
    }
    poller_stop.cancel();
    poller.await.unwrap().unwrap();
}

/// Run the sink of destination `crm` in-process until the returned token is cancelled.
pub fn start_sink(
    config: &std::sync::Arc<sluice_core::config::Config>,
    health: std::sync::Arc<sluice_telemetry::ops::Health>,
) -> (tokio_util::sync::CancellationToken, tokio::task::JoinHandle<Result<(), sluice_sink::SinkError>>) {
    start_sink_of(config, "crm", health)
}

/// Run the sink of `destination` in-process until the returned token is cancelled.
pub fn start_sink_of(
    config: &std::sync::Arc<sluice_core::config::Config>,
    destination: &str,
    health: std::sync::Arc<sluice_telemetry::ops::Health>,
) -> (tokio_util::sync::CancellationToken, tokio::task::JoinHandle<Result<(), sluice_sink::SinkError>>) {
    let token = tokio_util::sync::CancellationToken::new();
    let config = std::sync::Arc::clone(config);
    let destination = destination.to_string();
    let handle = tokio::spawn({
        let token = token.clone();
        async move { sluice_sink::run(config, &destination, health, token).await }
    });
    (token, handle)
}

/// Decode the change events in `records` (from [`read_topic`]) with the writer schemas of the
/// pipeline's schema topic.
pub fn decode_events(prefix: &str, records: &[ReadRecord]) -> Vec<sluice_avro::DecodedEvent> {
    let schemas = read_topic(&sluice_core::naming::schema_topic(prefix));
    records
        .iter()
        .filter_map(|r| r.payload.as_ref())
        .map(|payload| {
            let fingerprint = sluice_avro::fingerprint_of(payload).expect("single-object encoded");
            let json = schemas
                .iter()
                .rev()
                .find(|s| s.key.as_deref() == Some(fingerprint.as_bytes()))
                .and_then(|s| s.payload.clone())
                .expect("writer schema on the schema topic");
            sluice_avro::EventDecoder::new(std::str::from_utf8(&json).unwrap()).unwrap().decode(payload).expect("decodes")
        })
        .collect()
}

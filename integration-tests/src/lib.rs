//! Shared fixtures for sluice's integration tests, which run against the real Kafka broker,
//! PostgreSQL and Redis that `ops/services.sh up` starts (never mocks). A missing service fails
//! the test with the command that starts it; nothing is skipped.
//!
//! Every test uses its own topic prefix and table names, so tests never see each other's data
//! and can run in parallel against one broker.

pub mod contract;
pub mod receiver;

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Install the services' telemetry once per test process, as `main` does, so trace context
/// propagates exactly as in production.
pub fn telemetry() {
    static GUARD: std::sync::OnceLock<sluice_telemetry::TelemetryGuard> = std::sync::OnceLock::new();
    GUARD.get_or_init(|| sluice_telemetry::setup_telemetry("sluice-integration-tests", false));
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

/// Every committed record of `topic` (read_committed), up to its current end.
pub fn read_topic(topic: &str) -> Vec<ReadRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("group.id", unique("it-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("kafka consumer");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let mut assignment = TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (_, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10)).expect("watermarks");
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

/// Wait until `condition` holds, polling every 100 ms; fail with `what` after `timeout`.
pub async fn eventually(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

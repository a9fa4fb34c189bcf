//! A producer for records that must never hold up the work they describe: the sinks' audit
//! records (batch run records, row-level outcomes, `docs/audit.md`).
//!
//! Guarantees and limits:
//! - **Never waits.** [`BackgroundProducer::send`] hands the record to librdkafka's queue and
//!   returns; delivery (idempotent, `acks=all`, retried by librdkafka for up to
//!   `message.timeout.ms` = 5 minutes, so a broker restart is ridden out) happens on librdkafka's
//!   threads. A full queue (100 000 records) drops the record rather than wait.
//! - **A loss is seen.** Every record that is dropped or whose delivery finally fails is counted
//!   in `sluice_poller_audit_records_lost_total{stage}` or `sluice_sink_audit_records_lost_total{stage}`
//!   (by the [`Service`] producing) and logged (at most once every ten seconds per producer, with
//!   how many were lost meanwhile): never silently.
//! - **Order per key**: one partition per key, and idempotence keeps retries in order.
//! - [`BackgroundProducer::flush`] waits (bounded) for what is queued, for a graceful stop.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseRecord, DeliveryResult, NoCustomPartitioner, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use sluice_core::config::KafkaConfig;

use crate::connection::ConnectionContext;
use crate::{client_config, KafkaError};

/// How often a producer logs its losses at most.
const LOG_EVERY_MS: i64 = 10_000;

/// Which service produces, so its losses are counted in its own metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// `sluice-poller` (run records).
    Poller,
    /// `sluice-sink` (batch run records, outcomes).
    Sink,
}

impl Service {
    fn label(self) -> &'static str {
        match self {
            Service::Poller => "poller",
            Service::Sink => "sink",
        }
    }
}

/// Counts and logs what a background producer loses; forwards connection problems.
struct LossContext {
    connection: ConnectionContext,
    service: Service,
    /// Losses since the last log line, and when that was (ms since the epoch).
    unlogged: AtomicU64,
    logged_at_ms: AtomicI64,
}

impl LossContext {
    /// One lost record: counted, and logged unless a line went out in the last ten seconds.
    fn lost(&self, stage: &'static str, topic: &str, error: &rdkafka::error::KafkaError) {
        match self.service {
            Service::Poller => metrics::counter!("sluice_poller_audit_records_lost_total", "stage" => stage).increment(1),
            Service::Sink => metrics::counter!("sluice_sink_audit_records_lost_total", "stage" => stage).increment(1),
        }
        let unlogged = self.unlogged.fetch_add(1, Ordering::Relaxed) + 1;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let last = self.logged_at_ms.load(Ordering::Relaxed);
        if now - last >= LOG_EVERY_MS && self.logged_at_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            self.unlogged.store(0, Ordering::Relaxed);
            tracing::warn!(producer = self.service.label(), stage, %topic, %error, lost = unlogged, "audit records lost; the work they describe is not affected");
        }
    }
}

impl ClientContext for LossContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.connection.record(&error, reason);
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.connection.log(level, facility, message);
    }
}

impl ProducerContext<NoCustomPartitioner> for LossContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, message)) = result {
            use rdkafka::message::Message as _;
            self.lost("delivery", message.topic(), error);
        }
    }
}

/// A fire-and-forget, idempotent producer; see the module doc.
pub struct BackgroundProducer {
    producer: Arc<ThreadedProducer<LossContext>>,
}

impl BackgroundProducer {
    /// A producer of `service`, whose losses its loss counter counts.
    pub fn new(kafka: &KafkaConfig, service: Service) -> Result<BackgroundProducer, KafkaError> {
        let context = LossContext { connection: ConnectionContext::default(), service, unlogged: AtomicU64::new(0), logged_at_ms: AtomicI64::new(0) };
        let producer = client_config(kafka)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "300000")
            .set("queue.buffering.max.messages", "100000")
            .set("linger.ms", "20")
            .set("compression.type", "lz4")
            .create_with_context(context)
            .map_err(|e| KafkaError::classify("create background producer", e))?;
        Ok(BackgroundProducer { producer: Arc::new(producer) })
    }

    /// Queue one record and return at once; a record that cannot be queued is counted lost.
    pub fn send(&self, topic: &str, key: &[u8], payload: &[u8], headers: OwnedHeaders) {
        let record = BaseRecord::to(topic).key(key).payload(payload).headers(headers);
        if let Err((error, _)) = self.producer.send(record) {
            self.producer.context().lost("enqueue", topic, &error);
        }
    }

    /// Records queued and not yet acknowledged (or failed).
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// Wait up to `timeout` for every queued record to be delivered (or to fail, counted).
    pub async fn flush(&self, timeout: Duration) {
        let producer = Arc::clone(&self.producer);
        let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout)).await.expect("flush does not panic");
        if let Err(error) = flushed {
            tracing::warn!(producer = self.producer.context().service.label(), %error, in_flight = self.in_flight(), "audit records still queued at shutdown are lost");
        }
    }
}

//! `sluice-sink`: delivers the change topics of one destination's syncs to that destination.
//!
//! One process (and one consumer group) per destination, so a slow or broken vendor never holds
//! up another. Guarantees:
//! - **At-least-once.** An offset is committed only after every record before it was confirmed
//!   by the destination, deliberately skipped by its sync mode, or written to the dead-letter
//!   topic *and acknowledged by the broker*. A crash replays the uncommitted tail; receivers
//!   deduplicate by the stable record `id`.
//! - **Per-key order.** Records are applied in partition order, one batch at a time; a key lives
//!   in one partition.
//! - **Failure classes stay apart** ([`sluice_core::ErrorClass`]): a rejected record is
//!   dead-lettered and the stream goes on; a retryable failure is retried with jittered
//!   exponential backoff honouring `Retry-After`, then dead-lettered when the retry budget is
//!   spent; a fatal failure (credentials, endpoint) stops consumption, turns `/readyz` false and
//!   dead-letters nothing.
//! - A record the destination rejects inside a multi-record request is isolated by resending
//!   the request's records one by one, so only the bad ones are dead-lettered.

mod deliver;
mod mapping;
mod schemas;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use sluice_core::config::{Config, SyncConfig};
use sluice_core::naming;
use sluice_kafka::admin::{ensure_topics, TopicRole};
use sluice_kafka::dead_letter::DeadLetterWriter;
use sluice_telemetry::ops::Health;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use deliver::SinkError;

/// Run the sink of `destination` until `shutdown`, or until a fatal error (returned).
pub async fn run(config: Arc<Config>, destination: &str, health: Arc<Health>, shutdown: CancellationToken) -> Result<(), SinkError> {
    let result = run_inner(config, destination, &health, shutdown).await;
    if let Err(error) = &result {
        health.set_not_ready(format!("destination {destination} stopped: {error}"));
        metrics::gauge!("sluice_sink_stopped", "destination" => destination.to_string()).set(1.0);
        tracing::error!(%destination, error = %error, "sink stopped; fix the cause and restart the service");
    }
    result
}

async fn run_inner(config: Arc<Config>, destination: &str, health: &Health, shutdown: CancellationToken) -> Result<(), SinkError> {
    let dest = config
        .destination(destination)
        .ok_or_else(|| SinkError::Config(format!("destination {destination:?} is not in the config")))?;
    let prefix = &config.kafka.topic_prefix;
    let syncs: HashMap<String, &SyncConfig> =
        config.syncs_to(destination).map(|s| (naming::change_topic(prefix, s.model.get_ref()), s)).collect();
    if syncs.is_empty() {
        return Err(SinkError::Config(format!("no [[syncs]] deliver to destination {destination:?}")));
    }
    let dlq_topic = naming::dead_letter_topic(prefix, destination);
    let mut topics: Vec<(String, TopicRole)> = syncs.keys().map(|t| (t.clone(), TopicRole::Compacted)).collect();
    topics.push((dlq_topic.clone(), TopicRole::DeadLetter));
    topics.push((naming::schema_topic(prefix), TopicRole::Compacted));
    ensure_topics(&config.kafka, &topics).await.map_err(SinkError::Kafka)?;

    let target = sluice_destinations::build(dest).map_err(SinkError::Config)?;
    let dead_letters = DeadLetterWriter::new(&config.kafka, dlq_topic).map_err(SinkError::Kafka)?;
    let consumer: StreamConsumer = sluice_kafka::client_config(&config.kafka)
        .set("group.id", naming::sink_group(prefix, destination))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false")
        // Retries hold the loop; allow them their whole budget before the group evicts us.
        .set("max.poll.interval.ms", "900000")
        .create()
        .map_err(|e| SinkError::Kafka(sluice_kafka::KafkaError::Fatal { operation: "create consumer", source: e }))?;
    let topic_names: Vec<&str> = syncs.keys().map(String::as_str).collect();
    consumer
        .subscribe(&topic_names)
        .map_err(|e| SinkError::Kafka(sluice_kafka::KafkaError::Fatal { operation: "subscribe", source: e }))?;
    health.set_ready();
    tracing::info!(%destination, topics = ?topic_names, "sink started");

    let mut schemas = schemas::SchemaCache::new(config.kafka.clone(), naming::schema_topic(prefix));
    let deliverer =
        deliver::Deliverer { destination, retry: &dest.retry, target: &target, dead_letters: &dead_letters, shutdown: &shutdown };
    let linger = Duration::from_millis(dest.batch_linger_ms);
    loop {
        let mut batch: Vec<BorrowedMessage<'_>> = Vec::with_capacity(dest.batch_max_records);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            message = consumer.recv() => batch.push(message.map_err(|e| SinkError::Kafka(sluice_kafka::KafkaError::Retryable { operation: "consume", source: e }))?),
        }
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < dest.batch_max_records {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(message)) => batch.push(message),
                Ok(Err(error)) => tracing::warn!(%error, "consume error"),
                Err(_) => break,
            }
        }
        let span = tracing::info_span!("sink.batch", destination = %destination, records = batch.len());
        if let Some(first) = batch.first() {
            let pairs = sluice_kafka::headers::pairs(first.headers());
            if let Err(error) = span.set_parent(sluice_telemetry::propagation::context_from(&pairs)) {
                tracing::debug!(?error, "trace context not attached");
            }
        }
        let prepared = mapping::prepare(&batch, &syncs, &mut schemas).instrument(span.clone()).await?;
        if deliverer.deliver(&batch, prepared).instrument(span).await?.is_err() {
            tracing::info!(%destination, "shutdown during retries; the batch is left uncommitted and will be delivered after restart");
            break;
        }
        commit(&consumer, &batch)?;
    }
    tracing::info!(%destination, "sink drained and stopped");
    Ok(())
}

/// Commit the offsets after a fully handled batch: for each partition, one past its last record.
fn commit(consumer: &StreamConsumer, batch: &[BorrowedMessage<'_>]) -> Result<(), SinkError> {
    let mut next: HashMap<(&str, i32), i64> = HashMap::new();
    for message in batch {
        let slot = next.entry((message.topic(), message.partition())).or_insert(0);
        *slot = (*slot).max(message.offset() + 1);
    }
    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        offsets.add_partition_offset(topic, partition, Offset::Offset(offset)).expect("valid offset");
    }
    consumer
        .commit(&offsets, CommitMode::Sync)
        .map_err(|e| SinkError::Kafka(sluice_kafka::KafkaError::Retryable { operation: "commit offsets", source: e }))
}

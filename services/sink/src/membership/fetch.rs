//! Reading one record back by its location: what a recompute sends is the latest record of its
//! row, read again from the change topic rather than kept in memory.
//!
//! Guarantee: [`Reader::read`] returns the committed record at exactly that partition and
//! offset, if it is still there and still has that key; otherwise `None`, which means a later
//! record of the same key exists (compaction removes a record only once its key has a later
//! one) and is on its way to the lane, where it is decided like any record: the recompute has
//! nothing left to do.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use sluice_core::config::KafkaConfig;
use sluice_kafka::{client_config, KafkaError};

use crate::hashes::KeyHash;

/// How long one read may take before it counts as a Kafka failure.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A consumer outside any group, assigned to one record at a time. Reads are rare (one per row
/// a list change affects), so one consumer, used by one lane at a time, is enough.
pub(crate) struct Reader {
    consumer: Mutex<BaseConsumer>,
}

impl Reader {
    pub(crate) fn new(kafka: &KafkaConfig) -> Result<Arc<Reader>, KafkaError> {
        let consumer: BaseConsumer = client_config(kafka)
            .set("group.id", format!("sluice-read-back-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("isolation.level", "read_committed")
            // An offset compacted away or past retention: start at the first record after it,
            // which then reads as "not there".
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "10")
            .create()
            .map_err(|source| KafkaError::Fatal { operation: "create read-back consumer", source })?;
        Ok(Arc::new(Reader { consumer: Mutex::new(consumer) }))
    }

    /// The record of `topic` at `partition`/`offset` if it is there with key `key`. Blocking:
    /// call from `spawn_blocking`.
    pub(crate) fn read(&self, topic: &str, partition: i32, offset: i64, key: KeyHash) -> Result<Option<OwnedMessage>, KafkaError> {
        let consumer = self.consumer.lock().expect("read-back consumer lock");
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, partition, Offset::Offset(offset)).expect("new partition");
        consumer.assign(&assignment).map_err(|source| KafkaError::Retryable { operation: "assign read-back", source })?;
        let started = Instant::now();
        loop {
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                let message = message.map_err(|source| KafkaError::Retryable { operation: "read a record back", source })?;
                // The first committed record at or after the offset: the one asked for, or proof
                // that it is gone.
                let found = message.offset() == offset && message.key().map(KeyHash::of) == Some(key);
                return Ok(found.then(|| message.detach()));
            }
            if started.elapsed() > READ_TIMEOUT {
                return Err(KafkaError::Retryable {
                    operation: "read a record back",
                    source: rdkafka::error::KafkaError::MessageConsumption(rdkafka::types::RDKafkaErrorCode::OperationTimedOut),
                });
            }
        }
    }
}

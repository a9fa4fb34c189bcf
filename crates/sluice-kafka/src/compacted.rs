//! Reading a (compacted) topic from the beginning to its end, without a consumer group: how the
//! poller recovers its state and how sinks find writer schemas; and scanning ranges of its
//! partitions record by record ([`scan`]), how a sink builds its order guard.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use sluice_core::config::KafkaConfig;

use crate::{client_config, KafkaError};

/// One record read back: key and payload bytes (`None` payload = tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// What [`read_to_end`] makes of a topic the broker does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfMissing {
    /// Nothing was written yet: no records. For readers that may come first (`sluice plan`
    /// before a model's first run, a tool before the services created their topics).
    Empty,
    /// A retryable error: the reader needs records that must be there (the sink's schemas, whose
    /// topic a poller created), and must not conclude that they do not exist.
    Fail,
}

/// Every committed record of `topic`, in offset order per partition, up to the end offsets seen
/// at the start. `read_committed`, so aborted transactions are never seen. Blocking: call from
/// `spawn_blocking`. Gives up (retryable) after `deadline`, e.g. while another producer holds a
/// transaction open on the topic. A topic the broker does not know is as `missing` says; one it
/// knows but cannot serve (no leader) fails (retryable) rather than reading as empty.
pub fn read_to_end(kafka: &KafkaConfig, topic: &str, deadline: Duration, missing: IfMissing) -> Result<Vec<StoredRecord>, KafkaError> {
    let consumer: BaseConsumer = client_config(kafka)
        .set("group.id", format!("sluice-reader-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(|e| KafkaError::classify("create reader", e))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| KafkaError::classify("fetch metadata", e))?;
    if let Some(code) = metadata.topics().iter().find_map(|t| t.error()) {
        let code: rdkafka::types::RDKafkaErrorCode = code.into();
        if missing == IfMissing::Empty && code == rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition {
            return Ok(Vec::new());
        }
        let source = rdkafka::error::KafkaError::MetadataFetch(code);
        return Err(KafkaError::Retryable { operation: "read topic metadata", source });
    }
    let mut assignment = TopicPartitionList::new();
    let mut ends = Vec::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition.id(), Duration::from_secs(10))
            .map_err(|e| KafkaError::classify("fetch watermarks", e))?;
        if high > low {
            assignment.add_partition_offset(topic, partition.id(), Offset::Beginning).expect("new partition");
            ends.push((partition.id(), high));
        }
    }
    let mut records = Vec::new();
    if ends.is_empty() {
        return Ok(records);
    }
    consumer.assign(&assignment).map_err(|e| KafkaError::classify("assign", e))?;
    let started = Instant::now();
    loop {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.map_err(|e| KafkaError::classify("read", e))?;
            records.push(StoredRecord {
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec),
            });
        }
        // Positions, not message offsets: they also move past transaction markers, which
        // occupy offsets but are never delivered.
        let positions = consumer.position().map_err(|e| KafkaError::classify("position", e))?;
        let done = ends.iter().all(|&(partition, end)| {
            matches!(positions.find_partition(topic, partition).map(|p| p.offset()), Some(Offset::Offset(o)) if o >= end)
        });
        if done {
            return Ok(records);
        }
        if started.elapsed() > deadline {
            return Err(KafkaError::Retryable {
                operation: "read topic to end",
                source: rdkafka::error::KafkaError::MessageConsumption(rdkafka::types::RDKafkaErrorCode::OperationTimedOut),
            });
        }
    }
}

/// A range of one partition: the offsets `from..to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub partition: i32,
    pub from: i64,
    pub to: i64,
}

/// Every committed record of `topic` inside `ranges`, in offset order per partition, handed to
/// `visit` without copying (key, headers and payload are read in place). `read_committed`, so
/// aborted records are never seen. Returns how many records were visited. Blocking: call from
/// `spawn_blocking`. Gives up (retryable) after `deadline`.
pub fn scan(kafka: &KafkaConfig, topic: &str, ranges: &[Range], deadline: Duration, mut visit: impl FnMut(&BorrowedMessage<'_>)) -> Result<u64, KafkaError> {
    let ranges: Vec<Range> = ranges.iter().copied().filter(|r| r.to > r.from).collect();
    if ranges.is_empty() {
        return Ok(0);
    }
    let consumer: BaseConsumer = client_config(kafka)
        .set("group.id", format!("sluice-scan-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(|e| KafkaError::classify("create reader", e))?;
    let mut assignment = TopicPartitionList::new();
    for range in &ranges {
        assignment.add_partition_offset(topic, range.partition, Offset::Offset(range.from)).expect("new partition");
    }
    consumer.assign(&assignment).map_err(|e| KafkaError::classify("assign", e))?;
    let ends: HashMap<i32, i64> = ranges.iter().map(|r| (r.partition, r.to)).collect();
    let mut open: HashMap<i32, i64> = ends.clone();
    let started = Instant::now();
    let mut visited = 0u64;
    while !open.is_empty() {
        match consumer.poll(Duration::from_millis(50)) {
            Some(message) => {
                let message = message.map_err(|e| KafkaError::classify("read", e))?;
                let end = ends[&message.partition()];
                if message.offset() < end {
                    visit(&message);
                    visited += 1;
                }
                if message.offset() + 1 >= end {
                    open.remove(&message.partition());
                }
            }
            // Idle: a range may end in a transaction marker or a compacted gap, which no message
            // reports; the position does.
            None => {
                let positions = consumer.position().map_err(|e| KafkaError::classify("position", e))?;
                open.retain(|&partition, &mut end| {
                    !matches!(positions.find_partition(topic, partition).map(|p| p.offset()), Some(Offset::Offset(o)) if o >= end)
                });
            }
        }
        if started.elapsed() > deadline {
            return Err(KafkaError::Retryable {
                operation: "scan topic",
                source: rdkafka::error::KafkaError::MessageConsumption(rdkafka::types::RDKafkaErrorCode::OperationTimedOut),
            });
        }
    }
    Ok(visited)
}

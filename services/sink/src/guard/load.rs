//! Building the order guard from the change topics: before the sink consumes ([`build`]) and for
//! the partitions each assignment gives it ([`on_assign`]). Reads keys and headers only, from
//! each partition's coverage up to the group's frontier (`sluice_kafka::groups`), so a partition
//! already indexed costs nothing.
//!
//! Guarantee: once [`build`] or [`on_assign`] returned `Ok` for a partition, its index holds the
//! latest state below the group's frontier of every key (`crate::guard`'s premise (1)). On an
//! error the caller must not consume: [`build`]'s error stops the start, and the rebalance
//! callback turns an [`on_assign`] error into a fatal stop.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::message::Message;
use rdkafka::TopicPartitionList;
use sluice_core::config::{Config, KafkaConfig, SyncConfig};
use sluice_core::naming;
use sluice_kafka::compacted::{scan, Range};
use sluice_kafka::groups::{self, Committed, Partition};
use sluice_kafka::KafkaError;

use super::index::key_hash;
use super::{kind_of, OrderGuard};
use crate::SinkError;

/// How long one read of the topics may take (a large topic is read at several hundred thousand
/// records a second: an hour covers far more than any table sluice syncs).
const READ_DEADLINE: Duration = Duration::from_secs(3600);

/// Build the guard of `syncs`' change topics (of `partitions` partitions each) before consuming:
/// every partition, up to the frontier of `destination`'s group.
pub(crate) async fn build(config: &Config, destination: &str, syncs: &HashMap<String, SyncConfig>, partitions: i32) -> Result<OrderGuard, SinkError> {
    let kafka = config.kafka.clone();
    let group = naming::sink_group(&config.kafka.topic_prefix, destination);
    let syncs = syncs.clone();
    let destination = destination.to_string();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut guard = OrderGuard::new(&syncs);
        let all: Vec<Partition> = syncs.keys().flat_map(|topic| (0..partitions).map(move |p| (topic.clone(), p))).collect();
        let committed = groups::committed(&kafka, &group, &all)?;
        let read = catch_up(&kafka, &mut guard, &committed)?;
        let (keys, bytes) = guard.size();
        metrics::gauge!("sluice_sink_guard_keys", "destination" => destination.clone()).set(keys as f64);
        tracing::info!(%destination, keys, bytes, records_read = read, elapsed_ms = started.elapsed().as_millis() as u64, "order guard built");
        Ok(guard)
    })
    .await
    .expect("building the guard does not panic")
    .map_err(SinkError::Kafka)
}

/// Bring the partitions of `assigned` that belong to change topics up to their frontier. Called
/// from the rebalance callback, before any record of them is consumed; `consumer` is the sink's
/// own (it reads the group's committed offsets).
pub(crate) fn on_assign<C: ConsumerContext>(
    kafka: &KafkaConfig,
    guard: &Mutex<OrderGuard>,
    consumer: &BaseConsumer<C>,
    assigned: &TopicPartitionList,
) -> Result<(), KafkaError> {
    let started = Instant::now();
    let partitions: Vec<Partition> = {
        let guard = guard.lock().expect("guard lock");
        assigned.elements().iter().filter(|e| guard.is_change_topic(e.topic())).map(|e| (e.topic().to_string(), e.partition())).collect()
    };
    if partitions.is_empty() {
        return Ok(());
    }
    let committed = groups::committed_with(consumer, &partitions)?;
    let mut guard = guard.lock().expect("guard lock");
    let read = catch_up(kafka, &mut guard, &committed)?;
    if read > 0 {
        tracing::info!(partitions = partitions.len(), records_read = read, elapsed_ms = started.elapsed().as_millis() as u64, "order guard brought up to the assigned partitions' frontier");
    }
    Ok(())
}

/// Read what each partition's index misses below its frontier; note the frontier to carry.
/// Returns the records read.
fn catch_up(kafka: &KafkaConfig, guard: &mut OrderGuard, committed: &HashMap<Partition, Committed>) -> Result<u64, KafkaError> {
    let mut by_topic: HashMap<&str, Vec<Range>> = HashMap::new();
    for ((topic, partition), position) in committed {
        let Some(index) = guard.partition(topic, *partition) else { continue };
        let frontier = position.frontier();
        index.frontier = frontier;
        let to = frontier.unwrap_or(0);
        if to > index.covered() {
            by_topic.entry(topic).or_default().push(Range { partition: *partition, from: index.covered(), to });
        }
    }
    let mut read = 0;
    for (topic, ranges) in by_topic {
        read += scan(kafka, topic, &ranges, READ_DEADLINE, |message| {
            let (Some(key), Some(index)) = (message.key(), guard.partition(topic, message.partition())) else { return };
            index.learn(key_hash(key), message.offset(), kind_of(message));
        })?;
        for range in ranges {
            if let Some(index) = guard.partition(topic, range.partition) {
                index.cover(range.to);
            }
        }
    }
    Ok(read)
}

//! `sluice-sink`: delivers the change topics of one destination's syncs to that destination.
//!
//! One process (and one consumer group) per destination, so a slow or broken vendor never holds
//! up another. Guarantees:
//! - **At-least-once.** An offset is committed only when every record before it in its partition
//!   was confirmed by the destination, skipped by its sync mode, or written to the dead-letter
//!   topic *and acknowledged by the broker* ([`offsets`]: the contiguous finished prefix). A crash
//!   replays the uncommitted tail; receivers deduplicate by the stable record `id`.
//! - **Per-key order.** All changes of a key go through one lane, one batch at a time
//!   ([`lanes`]); different keys are delivered concurrently.
//! - **Bounded memory.** Past `max_buffered_records` unfinished records the sink stops taking
//!   messages; if that lasts over five seconds (a throttled or stalled destination) it pauses its
//!   partitions and keeps polling, so it stays in its group, until lanes catch up.
//! - **Rebalance-safe.** On revocation the sink waits (bounded, well under the session timeout)
//!   for in-flight work of the revoked partitions, commits what finished, and forgets them: no
//!   commit for a partition it no longer owns, and unsent records of it are dropped, not sent.
//! - **Failure classes stay apart** ([`sluice_core::ErrorClass`]): a rejected record is
//!   dead-lettered and the stream goes on; a retryable failure is retried with jittered
//!   exponential backoff honouring `Retry-After`, then dead-lettered once the retry budget is
//!   spent; a fatal failure (credentials, endpoint) stops consumption, turns `/readyz` false and
//!   dead-letters nothing.
//! - **SIGTERM drains**: reading stops, lanes finish what they hold (bounded by
//!   `DRAIN_TIMEOUT`), the finished prefix is committed synchronously.

mod deliver;
mod lanes;
mod limits;
mod mapping;
mod offsets;
mod schemas;
mod transform;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sluice_core::config::{Config, SyncConfig};
use sluice_core::naming;
use sluice_destinations::Destination;
use sluice_kafka::admin::{ensure_topics, TopicRole};
use sluice_kafka::dead_letter::DeadLetterWriter;
use sluice_telemetry::ops::Health;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use deliver::SinkError;

use crate::deliver::Deliverer;
use crate::lanes::{BatchLimits, Shared};
use crate::offsets::Partition;

/// How long a revocation waits for in-flight records of the revoked partitions. Below the
/// default session timeout (45 s) so the group never evicts us while we wait.
const REVOKE_DRAIN: Duration = Duration::from_secs(15);
/// How long SIGTERM waits for lanes to finish what they hold.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
const COMMIT_EVERY: Duration = Duration::from_millis(500);
/// How long the buffer may stay full before the partitions are paused (see the loop).
const PAUSE_AFTER: Duration = Duration::from_secs(5);

/// Commits finished offsets of partitions being revoked, inside librdkafka's rebalance callback.
struct SinkContext {
    shared: Arc<Shared>,
}

impl ClientContext for SinkContext {}

impl ConsumerContext for SinkContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else { return };
        let partitions: Vec<Partition> = revoked.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        // Runs on the thread polling the consumer; lanes run on other runtime threads and keep
        // finishing records meanwhile.
        let deadline = Instant::now() + REVOKE_DRAIN;
        while self.shared.tracker.lock().expect("tracker lock").pending_in(&partitions) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut tracker = self.shared.tracker.lock().expect("tracker lock");
        let offsets: Vec<(Partition, i64)> = tracker.committable().into_iter().filter(|(p, _)| partitions.contains(p)).collect();
        if !offsets.is_empty() {
            match consumer.commit(&offset_list(&offsets), CommitMode::Sync) {
                Ok(()) => tracker.committed(&offsets),
                Err(error) => tracing::warn!(%error, "commit on revocation failed; the new owner re-delivers those records"),
            }
        }
        let unfinished = tracker.pending_in(&partitions);
        tracker.revoke(&partitions);
        tracing::info!(partitions = partitions.len(), unfinished, "partitions revoked");
    }
}

fn offset_list(offsets: &[(Partition, i64)]) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in offsets {
        list.add_partition_offset(topic, *partition, Offset::Offset(*offset)).expect("valid offset");
    }
    list
}

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
    let syncs: HashMap<String, SyncConfig> =
        config.syncs_to(destination).map(|s| (naming::change_topic(prefix, s.model.get_ref()), s.clone())).collect();
    if syncs.is_empty() {
        return Err(SinkError::Config(format!("no [[syncs]] deliver to destination {destination:?}")));
    }
    let dlq_topic = naming::dead_letter_topic(prefix, destination);
    let mut topics: Vec<(String, TopicRole)> = syncs.keys().map(|t| (t.clone(), TopicRole::Compacted)).collect();
    topics.push((dlq_topic.clone(), TopicRole::DeadLetter));
    topics.push((naming::schema_topic(prefix), TopicRole::Compacted));
    ensure_topics(&config.kafka, &topics).await.map_err(SinkError::Kafka)?;

    let target = sluice_destinations::build(&config, dest).map_err(|e| SinkError::Config(e.to_string()))?;
    let batch_limits = BatchLimits {
        max_records: dest.batch_max_records.min(target.max_batch_records()),
        max_bytes: dest.batch_max_bytes,
        linger: Duration::from_millis(dest.batch_linger_ms),
    };
    let lane_stop = CancellationToken::new();
    let deliverer = Deliverer {
        destination: destination.to_string(),
        retry: dest.retry.clone(),
        target,
        dead_letters: DeadLetterWriter::new(&config.kafka, dlq_topic).map_err(SinkError::Kafka)?,
        limits: limits::RateLimits::new(&dest.rate_limit),
        concurrency: limits::AdaptiveConcurrency::new(dest.max_concurrency),
        shutdown: lane_stop.clone(),
    };
    let shared = Arc::new(Shared::new());
    let consumer: StreamConsumer<SinkContext> = sluice_kafka::client_config(&config.kafka)
        .set("group.id", naming::sink_group(prefix, destination))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false")
        .create_with_context(SinkContext { shared: Arc::clone(&shared) })
        .map_err(|e| SinkError::Kafka(sluice_kafka::KafkaError::Fatal { operation: "create consumer", source: e }))?;
    let topic_names: Vec<String> = syncs.keys().cloned().collect();
    let topic_refs: Vec<&str> = topic_names.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topic_refs)
        .map_err(|e| SinkError::Kafka(sluice_kafka::KafkaError::Fatal { operation: "subscribe", source: e }))?;

    tracing::info!(%destination, kind = deliverer.target.kind(), topics = ?topic_names, lanes = dest.max_concurrency, rate_limited = deliverer.limits.is_limited(), "sink started");
    let lane_context = Arc::new(lanes::LaneContext {
        destination: destination.to_string(),
        syncs,
        schemas: schemas::SchemaCache::new(config.kafka.clone(), naming::schema_topic(prefix)),
        deliverer,
        shared: Arc::clone(&shared),
        limits: batch_limits,
    });
    let mut lanes = Vec::with_capacity(dest.max_concurrency);
    let mut lane_tasks = tokio::task::JoinSet::new();
    for _ in 0..dest.max_concurrency {
        let (tx, rx) = mpsc::unbounded_channel();
        lanes.push(tx);
        lane_tasks.spawn(lanes::run_lane(rx, Arc::clone(&lane_context)));
    }
    health.set_ready();

    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut last_commit = Instant::now();
    let mut paused = false;
    // Back-pressure in two steps. A full buffer first just stops taking messages (cheap, and
    // short: lanes are working). If it stays full past `PAUSE_AFTER` (a throttled or stalled
    // destination), the partitions are paused so the consumer can keep polling — staying in
    // its group, serving rebalances — without receiving. Pausing at once would make every
    // momentary peak cost librdkafka's whole prefetch.
    let mut full_since: Option<Instant> = None;
    let result = loop {
        let buffered = shared.buffered.load(Ordering::SeqCst);
        let full = buffered >= dest.max_buffered_records;
        if full && full_since.is_none() {
            full_since = Some(Instant::now());
        } else if !full {
            full_since = None;
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            _ = shared.failed.cancelled() => break Err(shared.fatal.lock().expect("fatal lock").take().unwrap_or(SinkError::Config("lane failed".into()))),
            _ = shared.progress.notified(), if paused || full => {
                if paused && shared.buffered.load(Ordering::SeqCst) <= dest.max_buffered_records / 2 {
                    set_paused(&consumer, false);
                    paused = false;
                }
            }
            _ = tick.tick() => {
                metrics::gauge!("sluice_sink_buffered_records", "destination" => destination.to_string()).set(buffered as f64);
                if !paused && full_since.is_some_and(|since| since.elapsed() >= PAUSE_AFTER) {
                    set_paused(&consumer, true);
                    paused = true;
                    metrics::counter!("sluice_sink_pauses_total", "destination" => destination.to_string()).increment(1);
                }
                if last_commit.elapsed() >= COMMIT_EVERY {
                    commit(&consumer, &shared, CommitMode::Async);
                    last_commit = Instant::now();
                }
            }
            message = consumer.recv(), if !full || paused => {
                let message = match message {
                    Ok(m) => m,
                    Err(error) => {
                        tracing::warn!(%error, "consume error");
                        continue;
                    }
                };
                shared.tracker.lock().expect("tracker lock").register(message.topic(), message.partition(), message.offset());
                shared.buffered.fetch_add(1, Ordering::SeqCst);
                // Decoding and mapping happen in the lane, so they use every core; the key
                // picks the lane, so per-key order holds.
                let lane = lane_of(message.topic(), message.key().unwrap_or_default(), lanes.len());
                if lanes[lane].send(Arc::new(message.detach())).is_err() {
                    break Err(SinkError::Config("a delivery lane stopped".into()));
                }
            }
        }
    };

    // Drain: no more input; lanes finish what they hold (or stop at once after a failure).
    drop(lanes);
    if result.is_err() {
        lane_stop.cancel();
    }
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while lane_tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(%destination, "lanes did not drain in time; unfinished records will be delivered after restart");
        lane_stop.cancel();
        while lane_tasks.join_next().await.is_some() {}
    }
    commit(&consumer, &shared, CommitMode::Sync);
    let result = match (result, shared.fatal.lock().expect("fatal lock").take()) {
        (Ok(()), Some(error)) => Err(error),
        (result, _) => result,
    };
    if result.is_ok() {
        tracing::info!(%destination, "sink drained and stopped");
    }
    result
}

/// Route a record to a lane: one lane per key, so per-key order holds.
fn lane_of(topic: &str, key: &[u8], lanes: usize) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    topic.hash(&mut hasher);
    key.hash(&mut hasher);
    (hasher.finish() % lanes as u64) as usize
}

fn set_paused(consumer: &StreamConsumer<SinkContext>, pause: bool) {
    let Ok(assignment) = consumer.assignment() else { return };
    let result = if pause { consumer.pause(&assignment) } else { consumer.resume(&assignment) };
    match result {
        Ok(()) => tracing::debug!(partitions = assignment.count(), pause, "consumption paused or resumed for back-pressure"),
        Err(error) => tracing::warn!(%error, pause, "pause/resume failed"),
    }
}

/// Commit the finished prefix of every owned partition.
fn commit(consumer: &StreamConsumer<SinkContext>, shared: &Shared, mode: CommitMode) {
    let mut tracker = shared.tracker.lock().expect("tracker lock");
    let offsets = tracker.committable();
    if offsets.is_empty() {
        return;
    }
    match consumer.commit(&offset_list(&offsets), mode) {
        Ok(()) => tracker.committed(&offsets),
        Err(error) => tracing::warn!(%error, "offset commit failed; retried at the next commit"),
    }
}

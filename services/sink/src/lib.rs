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
//!
//! ## Where each guarantee is kept
//!
//! [`run`] is three steps: `Sink::start` (setup: topics, destination, dead-letter writer,
//! consumer, lanes; then `/readyz` turns true), `Sink::consume` (the loop) and `Sink::drain`
//! (shutdown). Then:
//! - at-least-once: `OffsetTracker` ([`offsets`]) computes the finished prefix; a lane finishes
//!   a batch only when `Deliverer::deliver` returned `Ok` (`LaneContext::flush`), which it does
//!   only once every dead letter is acknowledged ([`deliver`]); the prefix is committed by
//!   `Sink::consume` (every `COMMIT_EVERY`), `SinkContext::pre_rebalance` and `Sink::drain`;
//! - per-key order: `Sink::dispatch` routes by `lane_of`, `lanes::run_lane` sends one batch at a
//!   time;
//! - bounded memory: `BackPressure` decides, `Sink::consume` stops receiving, pauses and resumes;
//! - rebalance-safe: `SinkContext::pre_rebalance` waits, commits and forgets the partitions;
//!   `LaneContext::flush` drops unsent records of partitions no longer owned;
//! - failure classes: the decisions are `Deliverer::attempt`'s ([`deliver`]); a lane's fatal
//!   error reaches `Sink::consume` through `Shared::failed`, and [`run`] turns `/readyz` false;
//! - SIGTERM drains: `Sink::drain`.

#[cfg(test)]
mod config_fuzz;
mod dead_letters;
mod deliver;
mod lag;
mod lanes;
mod limits;
mod mapping;
mod offsets;
mod schemas;
mod telemetry;
#[cfg(test)]
mod testing;
mod transform;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message, OwnedMessage};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sluice_core::config::{Config, DestinationConfig, SyncConfig};
use sluice_core::naming;
use sluice_destinations::{AnyDestination, Destination};
use sluice_kafka::admin::{ensure_topics, TopicRole};
use sluice_kafka::dead_letter::DeadLetterWriter;
use sluice_telemetry::ops::Health;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use deliver::SinkError;

use crate::deliver::Deliverer;
use crate::lanes::{BatchLimits, Shared};
use crate::offsets::Partition;

/// How long a revocation waits for in-flight records of the revoked partitions. Below the
/// default session timeout (45 s) so the group never evicts us while we wait.
const REVOKE_DRAIN: Duration = Duration::from_secs(15);
/// How long SIGTERM waits for lanes to finish what they hold. Public so deployment manifests
/// can be checked against it: an orchestrator's grace period must be longer.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
const COMMIT_EVERY: Duration = Duration::from_millis(500);
/// How long the buffer may stay full before the partitions are paused ([`BackPressure`]).
const PAUSE_AFTER: Duration = Duration::from_secs(5);

/// Commits finished offsets of partitions being revoked, inside librdkafka's rebalance callback,
/// and turns librdkafka's statistics into the consumer-lag gauges ([`lag`]).
struct SinkContext {
    shared: Arc<Shared>,
    destination: String,
}

impl ClientContext for SinkContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        lag::observe(&self.destination, &statistics, &self.shared.tracker.lock().expect("tracker lock"), deliver::system_clock());
    }
}

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
    let sink = Sink::start(&config, destination).await?;
    // Ready once subscribed with lanes running; a fatal error turns it false again (`run`).
    health.set_ready();
    let stopped = sink.consume(&shutdown).await;
    sink.drain(stopped).await
}

/// A lane's input: consumed messages, routed by key.
type LaneSender = mpsc::UnboundedSender<Arc<OwnedMessage>>;

/// A started sink: its consumer, the lanes it feeds, and the state they share.
struct Sink {
    destination: String,
    consumer: StreamConsumer<SinkContext>,
    shared: Arc<Shared>,
    /// One sender per lane; dropping them is what tells the lanes to finish and stop.
    lanes: Vec<LaneSender>,
    lane_tasks: JoinSet<()>,
    /// Cuts the lanes' retry waits short: after a failure, or when the drain runs out of time.
    lane_stop: CancellationToken,
    max_buffered_records: usize,
}

impl Sink {
    /// Setup: check the config (the destination's kind table, and every sync in a mode its kind
    /// honours), build the destination and the dead-letter writer, create the topics,
    /// subscribe, start the lanes. Nothing is consumed yet, and a config refused touches
    /// nothing.
    async fn start(config: &Config, destination: &str) -> Result<Sink, SinkError> {
        let dest = config
            .destination(destination)
            .ok_or_else(|| SinkError::Config(format!("destination {destination:?} is not in the config")))?;
        let syncs = syncs_by_topic(config, destination)?;
        let lane_stop = CancellationToken::new();
        let (deliverer, batch_limits) = build_deliverer(config, dest, lane_stop.clone())?;
        ensure_sink_topics(config, destination, &syncs).await?;
        let shared = Arc::new(Shared::new());
        let consumer = subscribe(config, destination, &syncs, &shared)?;
        tracing::info!(
            %destination, kind = deliverer.target.kind(), topics = ?syncs.keys().collect::<Vec<_>>(), lanes = dest.max_concurrency,
            rate_limited = deliverer.limits.is_limited(), "sink started"
        );
        let schemas = schemas::SchemaCache::new(config.kafka.clone(), naming::schema_topic(&config.kafka.topic_prefix))
            .with_consent_checks(syncs.values().filter_map(|sync| sluice_destinations::validate::ConsentCheck::new(config, sync)));
        let lane_context = Arc::new(lanes::LaneContext {
            destination: destination.to_string(),
            syncs,
            schemas,
            deliverer,
            shared: Arc::clone(&shared),
            limits: batch_limits,
        });
        let mut lanes = Vec::with_capacity(dest.max_concurrency);
        let mut lane_tasks = JoinSet::new();
        for _ in 0..dest.max_concurrency {
            let (tx, rx) = mpsc::unbounded_channel();
            lanes.push(tx);
            lane_tasks.spawn(lanes::run_lane(rx, Arc::clone(&lane_context)));
        }
        Ok(Sink {
            destination: destination.to_string(),
            consumer,
            shared,
            lanes,
            lane_tasks,
            lane_stop,
            max_buffered_records: dest.max_buffered_records,
        })
    }

    /// The consume loop, until shutdown (`Ok`) or a failure: hands messages to lanes, applies
    /// back-pressure ([`BackPressure`]) and commits the finished prefix every `COMMIT_EVERY`.
    async fn consume(&self, shutdown: &CancellationToken) -> Result<(), SinkError> {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut last_commit = Instant::now();
        let mut pressure = BackPressure::new(self.max_buffered_records);
        loop {
            let buffered = self.shared.buffered.load(Ordering::SeqCst);
            let full = pressure.observe(buffered, Instant::now());
            let paused = pressure.paused;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                _ = self.shared.failed.cancelled() => {
                    return Err(self.shared.fatal.lock().expect("fatal lock").take().unwrap_or(SinkError::Config("lane failed".into())));
                }
                _ = self.shared.progress.notified(), if paused || full => {
                    if pressure.resume_due(self.shared.buffered.load(Ordering::SeqCst)) {
                        set_paused(&self.consumer, false);
                    }
                }
                _ = tick.tick() => {
                    metrics::gauge!("sluice_sink_buffered_records", "destination" => self.destination.clone()).set(buffered as f64);
                    if pressure.pause_due(Instant::now()) {
                        set_paused(&self.consumer, true);
                        metrics::counter!("sluice_sink_pauses_total", "destination" => self.destination.clone()).increment(1);
                    }
                    if last_commit.elapsed() >= COMMIT_EVERY {
                        commit(&self.consumer, &self.shared, CommitMode::Async);
                        last_commit = Instant::now();
                    }
                }
                message = self.consumer.recv(), if !full || paused => match message {
                    Ok(message) => self.dispatch(&message)?,
                    Err(error) => tracing::warn!(%error, "consume error"),
                },
            }
        }
    }

    /// Register a consumed message as in flight and hand it to its key's lane.
    fn dispatch(&self, message: &BorrowedMessage<'_>) -> Result<(), SinkError> {
        let timestamp_ms = message.timestamp().to_millis().unwrap_or_else(deliver::system_clock);
        self.shared.tracker.lock().expect("tracker lock").register(message.topic(), message.partition(), message.offset(), timestamp_ms);
        self.shared.buffered.fetch_add(1, Ordering::SeqCst);
        // Decoding and mapping happen in the lane, so they use every core; the key picks the
        // lane, so per-key order holds.
        let lane = lane_of(message.topic(), message.key().unwrap_or_default(), self.lanes.len());
        self.lanes[lane].send(Arc::new(message.detach())).map_err(|_| SinkError::Config("a delivery lane stopped".into()))
    }

    /// Drain and stop: no more input; lanes finish what they hold (or stop at once after a
    /// failure), bounded by `DRAIN_TIMEOUT`; then the finished prefix is committed
    /// synchronously. A lane's fatal error wins over a clean stop.
    async fn drain(self, stopped: Result<(), SinkError>) -> Result<(), SinkError> {
        let Sink { destination, consumer, shared, lanes, mut lane_tasks, lane_stop, .. } = self;
        drop(lanes);
        if stopped.is_err() {
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
        let result = match (stopped, shared.fatal.lock().expect("fatal lock").take()) {
            (Ok(()), Some(error)) => Err(error),
            (result, _) => result,
        };
        if result.is_ok() {
            tracing::info!(%destination, "sink drained and stopped");
        }
        result
    }
}

/// The syncs delivering to `destination`, by change topic; at least one.
fn syncs_by_topic(config: &Config, destination: &str) -> Result<HashMap<String, SyncConfig>, SinkError> {
    let prefix = &config.kafka.topic_prefix;
    let syncs: HashMap<String, SyncConfig> =
        config.syncs_to(destination).map(|s| (naming::change_topic(prefix, s.model.get_ref()), s.clone())).collect();
    if syncs.is_empty() {
        return Err(SinkError::Config(format!("no [[syncs]] deliver to destination {destination:?}")));
    }
    Ok(syncs)
}

/// Create (or check) the change topics, the destination's dead-letter topic and the schema topic.
async fn ensure_sink_topics(config: &Config, destination: &str, syncs: &HashMap<String, SyncConfig>) -> Result<(), SinkError> {
    let prefix = &config.kafka.topic_prefix;
    let mut topics: Vec<(String, TopicRole)> = syncs.keys().map(|t| (t.clone(), TopicRole::Compacted)).collect();
    topics.push((naming::dead_letter_topic(prefix, destination), TopicRole::DeadLetter));
    topics.push((naming::schema_topic(prefix), TopicRole::Compacted));
    ensure_topics(&config.kafka, &topics).await.map_err(SinkError::Kafka)
}

/// The destination with its dead-letter writer, limits and retry policy, and the batch limits
/// (the configured ones, capped by the vendor's records per request).
fn build_deliverer(
    config: &Config,
    dest: &DestinationConfig,
    lane_stop: CancellationToken,
) -> Result<(Deliverer<AnyDestination, DeadLetterWriter>, BatchLimits), SinkError> {
    let destination = dest.name.get_ref();
    let target = sluice_destinations::build(config, dest).map_err(|e| SinkError::Config(e.to_string()))?;
    let batch_limits = BatchLimits {
        max_records: dest.batch_max_records.min(target.max_batch_records()),
        max_bytes: dest.batch_max_bytes,
        // Validated to be at most BATCH_LINGER_MS; capped here too, since a lane adds it to an
        // `Instant` (which panics on overflow).
        linger: Duration::from_millis(dest.batch_linger_ms.min(sluice_core::config::bounds::BATCH_LINGER_MS.max as u64)),
    };
    let dlq_topic = naming::dead_letter_topic(&config.kafka.topic_prefix, destination);
    let deliverer = Deliverer {
        destination: destination.to_string(),
        retry: dest.retry.clone(),
        target,
        dead_letters: DeadLetterWriter::new(&config.kafka, dlq_topic).map_err(SinkError::Kafka)?,
        limits: limits::RateLimits::new(&dest.rate_limit).map_err(|e| SinkError::Config(format!("destination {destination:?}: {e}")))?,
        concurrency: limits::AdaptiveConcurrency::new(dest.max_concurrency),
        shutdown: lane_stop,
        clock: deliver::system_clock,
    };
    Ok((deliverer, batch_limits))
}

/// The destination's consumer (manual commits, `read_committed`), subscribed to its change topics.
fn subscribe(
    config: &Config,
    destination: &str,
    syncs: &HashMap<String, SyncConfig>,
    shared: &Arc<Shared>,
) -> Result<StreamConsumer<SinkContext>, SinkError> {
    let consumer: StreamConsumer<SinkContext> = sluice_kafka::client_config(&config.kafka)
        .set("group.id", naming::sink_group(&config.kafka.topic_prefix, destination))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", lag::STATS_INTERVAL_MS.to_string())
        .create_with_context(SinkContext { shared: Arc::clone(shared), destination: destination.to_string() })
        .map_err(|e| SinkError::Kafka(sluice_kafka::KafkaError::Fatal { operation: "create consumer", source: e }))?;
    let topics: Vec<&str> = syncs.keys().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| SinkError::Kafka(sluice_kafka::KafkaError::Fatal { operation: "subscribe", source: e }))?;
    Ok(consumer)
}

/// Back-pressure in two steps. A full buffer (`max_buffered_records` unfinished records) first
/// just stops taking messages (cheap, and short: lanes are working). If it stays full past
/// `PAUSE_AFTER` (a throttled or stalled destination), the partitions are paused so the consumer
/// can keep polling — staying in its group, serving rebalances — without receiving; they resume
/// once lanes have worked the buffer down to half. Pausing at once would make every momentary
/// peak cost librdkafka's whole prefetch.
struct BackPressure {
    max_buffered: usize,
    /// Since when the buffer has been full, while it is.
    full_since: Option<Instant>,
    /// Whether the partitions are paused.
    paused: bool,
}

impl BackPressure {
    fn new(max_buffered: usize) -> BackPressure {
        BackPressure { max_buffered, full_since: None, paused: false }
    }

    /// Note how many records are buffered; returns whether the buffer is full.
    fn observe(&mut self, buffered: usize, now: Instant) -> bool {
        let full = buffered >= self.max_buffered;
        if full && self.full_since.is_none() {
            self.full_since = Some(now);
        } else if !full {
            self.full_since = None;
        }
        full
    }

    /// Whether to pause the partitions now (full for `PAUSE_AFTER`, not paused yet); if so,
    /// they count as paused from here.
    fn pause_due(&mut self, now: Instant) -> bool {
        let due = !self.paused && self.full_since.is_some_and(|since| now.duration_since(since) >= PAUSE_AFTER);
        self.paused |= due;
        due
    }

    /// Whether to resume the partitions now (paused, and `buffered` down to half); if so, they
    /// count as resumed from here.
    fn resume_due(&mut self, buffered: usize) -> bool {
        let due = self.paused && buffered <= self.max_buffered / 2;
        self.paused &= !due;
        due
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_pressure_pauses_only_after_the_buffer_stayed_full_and_resumes_at_half() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut pressure = BackPressure::new(100);
        assert!(!pressure.observe(99, at(0)), "below the bound");
        assert!(pressure.observe(100, at(0)), "full at the bound");
        assert!(!pressure.pause_due(at(4_999)), "a momentary peak does not pause");
        // A dip below the bound restarts the clock.
        assert!(!pressure.observe(80, at(4_000)));
        assert!(pressure.observe(120, at(4_500)));
        assert!(!pressure.pause_due(at(9_499)));
        assert!(pressure.pause_due(at(9_500)), "full for PAUSE_AFTER");
        assert!(pressure.paused);
        assert!(!pressure.pause_due(at(20_000)), "paused once");
        assert!(!pressure.resume_due(51), "not before half");
        assert!(pressure.resume_due(50), "at half");
        assert!(!pressure.paused);
        assert!(!pressure.resume_due(10), "resumed once");
    }
}

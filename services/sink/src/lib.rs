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
//! - **Kafka refusing or away at start is waited out**: not ready, `/readyz` naming the listener,
//!   the cause and the fix (a rejected SCRAM password, an untrusted broker certificate), retried
//!   with backoff until it works (`sluice_kafka::connection::retry_until_connected`).
//! - **SIGTERM drains**: reading stops, lanes finish what they hold (bounded by
//!   `DRAIN_TIMEOUT`), the finished prefix is committed synchronously.
//! - **No key moves backwards** ([`guard`]): a replay, a side record (backfill, redrive) or the
//!   live stream never hands the destination a state of a key older than one it has or is about
//!   to have; a delete whose `d` event compaction removed still reaches it ([`deletes`]).
//!
//! ## Where each guarantee is kept
//!
//! [`run`] is three steps: `Sink::start` (setup: topics — retried while Kafka refuses —,
//! destination, dead-letter writer, consumer, lanes; then `/readyz` turns true),
//! `Sink::consume` (the loop) and `Sink::drain` (shutdown). Then:
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
//! - SIGTERM drains: `Sink::drain`;
//! - no key backwards: `Sink::dispatch` asks `OrderGuard::admit` about every record, live or
//!   from the side topic, in dispatch order; `guard::load` builds the guard before consuming and
//!   on every assignment (`SinkContext::post_rebalance`); `offset_list` carries a replay's
//!   frontier on every commit below it.

#[cfg(test)]
mod config_fuzz;
mod dead_letters;
mod deletes;
mod deliver;
mod guard;
mod lag;
mod lanes;
mod limits;
mod mapping;
mod offsets;
mod schemas;
mod side;
mod telemetry;
#[cfg(test)]
mod testing;
mod transform;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message, OwnedMessage};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sluice_core::config::{Config, DestinationConfig, KafkaConfig, SyncConfig};
use sluice_core::naming;
use sluice_destinations::{AnyDestination, Destination};
use sluice_kafka::admin::{Admin, TopicRole};
use sluice_kafka::connection::{retry_until_connected, ConnectionContext};
use sluice_kafka::dead_letter::DeadLetterWriter;
use sluice_telemetry::ops::Health;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use deliver::SinkError;
pub use guard::predict::{predict_replay, ReplayCounts};

use crate::deliver::Deliverer;
use crate::guard::{Admission, OrderGuard};
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

/// Commits finished offsets of partitions being revoked and brings the order guard up to the
/// partitions assigned, inside librdkafka's rebalance callback; reports rejected credentials or
/// certificates with the listener and the fix; turns librdkafka's statistics into the
/// consumer-lag gauges ([`lag`]).
struct SinkContext {
    shared: Arc<Shared>,
    guard: Arc<Mutex<OrderGuard>>,
    kafka: KafkaConfig,
    connection: ConnectionContext,
    /// The destination's name, the lag gauges' label.
    destination: String,
}

impl ClientContext for SinkContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.connection.record(&error, reason);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.connection.log(level, facility, message);
    }

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
            match consumer.commit(&offset_list(&offsets, &self.guard), CommitMode::Sync) {
                Ok(()) => tracker.committed(&offsets),
                Err(error) => tracing::warn!(%error, "commit on revocation failed; the new owner re-delivers those records"),
            }
        }
        let unfinished = tracker.pending_in(&partitions);
        tracker.revoke(&partitions);
        tracing::info!(partitions = partitions.len(), unfinished, "partitions revoked");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(assigned) = rebalance else { return };
        // Before any record of these partitions is consumed: the guard must know what the
        // group already delivered there (another instance may have moved them on).
        if let Err(error) = guard::load::on_assign(&self.kafka, &self.guard, consumer, assigned) {
            tracing::error!(%error, "cannot bring the order guard up to the assigned partitions; stopping");
            self.shared.fatal.lock().expect("fatal lock").get_or_insert(SinkError::Kafka(error));
            self.shared.failed.cancel();
        }
    }
}

/// The offsets to commit, each carrying the replay frontier while it is below it (the order
/// guard rebuilds from it after a restart, `sluice_kafka::groups`).
fn offset_list(offsets: &[(Partition, i64)], guard: &Mutex<OrderGuard>) -> TopicPartitionList {
    let guard = guard.lock().expect("guard lock");
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in offsets {
        let mut element = list.add_partition(topic, *partition);
        element.set_offset(Offset::Offset(*offset)).expect("valid offset");
        if let Some(frontier) = guard.carried_frontier(topic, *partition, *offset) {
            element.set_metadata(sluice_kafka::groups::frontier_metadata(frontier));
        }
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
    let Some(sink) = Sink::start(&config, destination, health, &shutdown).await? else {
        return Ok(());
    };
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
    /// Decides, in dispatch order, which records reach the destination ([`guard`]).
    guard: Arc<Mutex<OrderGuard>>,
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
    /// nothing. While Kafka is away or refuses us, not ready with the reason and retried
    /// ([`retry_until_connected`]); `None` if shut down meanwhile.
    async fn start(config: &Config, destination: &str, health: &Health, shutdown: &CancellationToken) -> Result<Option<Sink>, SinkError> {
        let dest = config
            .destination(destination)
            .ok_or_else(|| SinkError::Config(format!("destination {destination:?} is not in the config")))?;
        let syncs = syncs_by_topic(config, destination)?;
        let lane_stop = CancellationToken::new();
        let (deliverer, batch_limits) = build_deliverer(config, dest, lane_stop.clone())?;
        let Some(prepared) = retry_until_connected("create topics", health, shutdown, || prepare_topics(config, destination, &syncs)).await else {
            return Ok(None);
        };
        let (side_topic, guard) = prepared?;
        let guard = Arc::new(Mutex::new(guard));
        let shared = Arc::new(Shared::new());
        let context = SinkContext {
            shared: Arc::clone(&shared),
            guard: Arc::clone(&guard),
            kafka: config.kafka.clone(),
            connection: ConnectionContext::default(),
            destination: destination.to_string(),
        };
        let consumer = subscribe(config, destination, &syncs, &side_topic, context)?;
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
        Ok(Some(Sink {
            destination: destination.to_string(),
            consumer,
            shared,
            guard,
            lanes,
            lane_tasks,
            lane_stop,
            max_buffered_records: dest.max_buffered_records,
        }))
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
                        commit(&self.consumer, &self.shared, &self.guard, CommitMode::Async);
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

    /// Register a consumed message as in flight, let the order guard decide it, and hand it to
    /// the lane of its key, or finish it here.
    fn dispatch(&self, message: &BorrowedMessage<'_>) -> Result<(), SinkError> {
        let timestamp_ms = message.timestamp().to_millis().unwrap_or_else(deliver::system_clock);
        self.shared.tracker.lock().expect("tracker lock").register(message.topic(), message.partition(), message.offset(), timestamp_ms);
        // Decided here, one record at a time in dispatch order, which is what makes the
        // guard's decisions the order the destination sees (`guard` module doc).
        let admission = self.guard.lock().expect("guard lock").admit(message);
        let lane_topic = match admission {
            Admission::Deliver { lane_topic } => lane_topic,
            Admission::Finish(outcome) => {
                tracing::debug!(destination = %self.destination, topic = message.topic(), partition = message.partition(), offset = message.offset(), outcome = outcome.label(), "finished without a request");
                metrics::counter!("sluice_sink_records_total", "destination" => self.destination.clone(), "outcome" => outcome.label()).increment(1);
                self.shared.tracker.lock().expect("tracker lock").finish(message.topic(), message.partition(), message.offset());
                return Ok(());
            }
        };
        self.shared.buffered.fetch_add(1, Ordering::SeqCst);
        // Decoding and mapping happen in the lane, so they use every core; the change topic and
        // key pick the lane, so per-key order holds, side records included.
        let lane = lane_of(&lane_topic, message.key().unwrap_or_default(), self.lanes.len());
        self.lanes[lane].send(Arc::new(message.detach())).map_err(|_| SinkError::Config("a delivery lane stopped".into()))
    }

    /// Drain and stop: no more input; lanes finish what they hold (or stop at once after a
    /// failure), bounded by `DRAIN_TIMEOUT`; then the finished prefix is committed
    /// synchronously. A lane's fatal error wins over a clean stop.
    async fn drain(self, stopped: Result<(), SinkError>) -> Result<(), SinkError> {
        let Sink { destination, consumer, shared, guard, lanes, mut lane_tasks, lane_stop, .. } = self;
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
        commit(&consumer, &shared, &guard, CommitMode::Sync);
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

/// The topics and the order guard a sink needs before it consumes: the side topic (its partition
/// count checked against the change topics'), every topic created or checked, the guard built.
/// A Kafka failure is the outer `Err` (the caller retries it while not ready); a config that
/// cannot work (partition counts) the inner one.
async fn prepare_topics(config: &Config, destination: &str, syncs: &HashMap<String, SyncConfig>) -> Result<Result<(String, OrderGuard), SinkError>, sluice_kafka::KafkaError> {
    let split = |error: SinkError| match error {
        SinkError::Kafka(kafka) => Err(kafka),
        other => Ok(Err(other)),
    };
    let admin = Admin::new(&config.kafka)?;
    let (side_topic, partitions) = match side::side_topic(&admin, config, destination, syncs).await {
        Ok(side) => side,
        Err(error) => return split(error),
    };
    // Independent round trips, and a start is what a restarted sink waits for: together.
    let (ensured, guard) =
        tokio::join!(ensure_sink_topics(&admin, config, destination, syncs, (&side_topic, partitions)), guard::load::build(config, destination, syncs, partitions));
    match ensured.and(guard) {
        Ok(guard) => Ok(Ok((side_topic, guard))),
        Err(error) => split(error),
    }
}

/// Create (or check) the change topics, the destination's dead-letter topic, the schema topic
/// and the destination's side topic (with `side`'s partition count, that of its change topics,
/// [`side::side_topic`]), in one round.
async fn ensure_sink_topics(admin: &Admin, config: &Config, destination: &str, syncs: &HashMap<String, SyncConfig>, side: (&str, i32)) -> Result<(), SinkError> {
    let prefix = &config.kafka.topic_prefix;
    let created = config.kafka.partitions;
    let mut topics: Vec<(String, TopicRole, i32)> = syncs.keys().map(|t| (t.clone(), TopicRole::Changes, created)).collect();
    topics.push((naming::dead_letter_topic(prefix, destination), TopicRole::DeadLetter, created));
    topics.push((naming::schema_topic(prefix), TopicRole::Compacted, created));
    topics.push((side.0.to_string(), TopicRole::Side, side.1));
    admin.ensure(&topics).await.map_err(SinkError::Kafka)
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

/// The destination's consumer (manual commits, `read_committed`), subscribed to its change topics
/// and its side topic.
fn subscribe(
    config: &Config,
    destination: &str,
    syncs: &HashMap<String, SyncConfig>,
    side_topic: &str,
    context: SinkContext,
) -> Result<StreamConsumer<SinkContext>, SinkError> {
    let consumer: StreamConsumer<SinkContext> = sluice_kafka::client_config(&config.kafka)
        .set("group.id", naming::sink_group(&config.kafka.topic_prefix, destination))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", lag::STATS_INTERVAL_MS.to_string())
        // Range gives partition p of every subscribed topic (they have equal counts) to one
        // instance: the side records of partition p meet the live records of their keys there
        // (`sluice_kafka::side`). Set after the user's properties, so it always holds.
        .set("partition.assignment.strategy", "range")
        .create_with_context(context)
        .map_err(|e| SinkError::Kafka(sluice_kafka::KafkaError::Fatal { operation: "create consumer", source: e }))?;
    let topics: Vec<&str> = syncs.keys().map(String::as_str).chain([side_topic]).collect();
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
fn commit(consumer: &StreamConsumer<SinkContext>, shared: &Shared, guard: &Mutex<OrderGuard>, mode: CommitMode) {
    let mut tracker = shared.tracker.lock().expect("tracker lock");
    let offsets = tracker.committable();
    if offsets.is_empty() {
        return;
    }
    match consumer.commit(&offset_list(&offsets, guard), mode) {
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

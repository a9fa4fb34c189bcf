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
//! - **Rebalance-safe.** On revocation the sink waits (bounded, under the session timeout; not at
//!   all once it is stopping, when nothing more will finish) for in-flight work of the revoked
//!   partitions, commits what finished, and forgets them: no commit for a partition it no longer
//!   owns, and unsent records of it are dropped, not sent.
//! - **Failure classes stay apart** ([`sluice_core::ErrorClass`]): a rejected record is
//!   dead-lettered and the stream goes on; a retryable failure is retried with jittered
//!   exponential backoff honouring `Retry-After`, then dead-lettered once the retry budget is
//!   spent ([`retries`]: every backoff inside `max_backoff_ms`, a named wait honoured as named,
//!   a throttle spending no budget unless `retry.throttle = "budget"`); a fatal failure
//!   (credentials, endpoint) stops every lane at once, turns `/readyz` false and
//!   `sluice_sink_stopped` to 1 at once (before the drain), and dead-letters nothing.
//! - **Kafka refusing or away at start is waited out**: not ready, `/readyz` naming the listener,
//!   the cause and the fix (a rejected SCRAM password, an untrusted broker certificate), retried
//!   with backoff until it works (`sluice_kafka::connection::retry_until_connected`). **Kafka
//!   away mid-run** (every broker down) turns `/readyz` false with the reason until a request
//!   to the brokers succeeds, then true again without a restart
//!   (`sluice_kafka::connection::follow_brokers`); consuming and committing resume by themselves.
//! - **SIGTERM stops within a bound**: reading stops, no request starts, every retry and
//!   rate-limit wait ends, what lanes hold is not sent; a request in flight gets up to
//!   `DRAIN_TIMEOUT`; the finished prefix — only it — is committed synchronously.
//! - **Restarts recover fast**: under an instance id (static membership) a restarted replica
//!   gets its partitions back at once; the session timeout is `SESSION_TIMEOUT_MS` unless the
//!   user's `kafka.properties` set one.
//! - **No key moves backwards** ([`guard`]): a replay, a side record (backfill, redrive) or the
//!   live stream never hands the destination a state of a key older than one it has or is about
//!   to have; a delete whose `d` event compaction removed still reaches it ([`deletes`]).
//! - **Membership holds** ([`membership`]): for syncs naming suppression lists, a row is sent
//!   as a member only when present, consented and on none of its lists, decided at send time in
//!   its lane; a list change re-decides the rows it affects, in their lanes, and its offset is
//!   committed only once they are.
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
//! - failure classes: the decisions are `Deliverer::attempt`'s ([`deliver`]), the waits
//!   `Retries`' ([`retries`]); a lane's fatal error cancels `Shared::stop` and reaches
//!   `Sink::consume` through `Shared::failed`, and `run_inner` marks the sink stopped (`Stopped`)
//!   before `Sink::drain`;
//! - SIGTERM stops: `Sink::drain` cancels `Shared::stop`, which `Deliverer::request` and
//!   `Deliverer::wait` obey and `lanes::run_lane` reads as "send nothing more";
//! - restarts: `subscribe` sets `group.instance.id` and the session timeout;
//! - no key backwards: `Sink::dispatch` asks `OrderGuard::admit` about every record, live or
//!   from the side topic, in dispatch order; `guard::load` builds the guard before consuming and
//!   on every assignment (`SinkContext::post_rebalance`); `offset_list` carries a replay's
//!   frontier on every commit below it. Suppression lists' topics are not the guard's: their
//!   records are state of a list, applied by the stage in offset order (docs/sink.md);
//! - membership holds: `membership::Stage` (rebuilt in `Sink::start`), decided in
//!   `LaneContext::flush`, list records and recomputes in [`recompute`], side records by the
//!   change they carry; a process that does not receive every list partition stops
//!   (`SinkContext::post_rebalance`).

mod audit;
mod breaker;
#[cfg(test)]
mod config_fuzz;
mod dead_letters;
mod deletes;
mod deliver;
mod guard;
mod hashes;
mod lag;
mod lanes;
mod limits;
mod mapping;
mod membership;
mod offsets;
mod recompute;
mod retries;
mod schemas;
mod side;
pub mod snapshot;
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
use rdkafka::message::{BorrowedMessage, Message};
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
use crate::lanes::{BatchLimits, LaneInput, Shared};
use crate::membership::Stage;
use crate::offsets::Partition;

/// How long a revocation waits for in-flight records of the revoked partitions. Below
/// `SESSION_TIMEOUT_MS`, so the group never evicts us while we wait.
const REVOKE_DRAIN: Duration = Duration::from_secs(8);
/// The sink's consumer session timeout unless `kafka.properties` sets `session.timeout.ms`:
/// how long the group waits for a member that stopped heartbeating (killed, host gone) before
/// moving its partitions. librdkafka heartbeats from a thread of its own, so a busy or
/// throttled sink does not miss them; Kafka's default (45 s) only delayed recovery (issue 12:
/// a restarted sink waited 42 s). At least the brokers' `group.min.session.timeout.ms` (6 s by
/// default).
const SESSION_TIMEOUT_MS: &str = "10000";
/// A third of the session timeout, as Kafka advises.
const HEARTBEAT_INTERVAL_MS: &str = "3000";
/// How long a stop waits for requests already in flight (none starts after the stop). The
/// default request timeout (`timeout_ms`), so a request that would time out is waited out.
/// Public so deployment manifests can be checked against it: an orchestrator's grace period
/// must be longer.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
const COMMIT_EVERY: Duration = Duration::from_millis(500);
/// How long the buffer may stay full before the partitions are paused ([`BackPressure`]).
const PAUSE_AFTER: Duration = Duration::from_secs(5);

/// Commits finished offsets of partitions being revoked and brings the order guard up to the
/// partitions assigned, inside librdkafka's rebalance callback, and checks that an assignment
/// gives the membership stage every list partition; reports rejected credentials or
/// certificates with the listener and the fix; turns librdkafka's statistics into the
/// consumer-lag gauges ([`lag`]).
struct SinkContext {
    shared: Arc<Shared>,
    guard: Arc<Mutex<OrderGuard>>,
    stage: Option<Arc<Stage>>,
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
        // Unless the sink is stopping: its lanes start nothing more, so what is pending now
        // never finishes, and waiting would only delay the exit (and the new owner).
        let deadline = Instant::now() + REVOKE_DRAIN;
        while !self.shared.stop.is_cancelled() && self.shared.tracker.lock().expect("tracker lock").pending_in(&partitions) > 0 && Instant::now() < deadline {
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
            return;
        }
        let Some(stage) = &self.stage else { return };
        // The whole assignment (a cooperative rebalance reports only what it adds).
        let Ok(assignment) = consumer.assignment() else { return };
        let missing = stage.missing_partitions(&assignment);
        if missing.is_empty() {
            return;
        }
        let error = SinkError::Config(format!(
            "{} partition(s) of suppression list topics are assigned to another process (e.g. {}/{}); the membership stage needs every list entry, so run one instance of this destination's sink",
            missing.len(),
            missing[0].0,
            missing[0].1
        ));
        self.shared.fatal.lock().expect("fatal lock").get_or_insert(error);
        self.shared.failed.cancel();
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

/// Run the sink of `destination` until `shutdown`, or until a fatal error (returned), as a
/// dynamic member of its consumer group.
pub async fn run(config: Arc<Config>, destination: &str, health: Arc<Health>, shutdown: CancellationToken) -> Result<(), SinkError> {
    run_as(config, destination, None, health, shutdown).await
}

/// [`run`], as the static member `instance_id` of the group when given (Kafka's static
/// membership, `group.instance.id`): a replica restarted under the same id gets its partitions
/// back at once, without a rebalance, instead of after the session timeout. Unique per replica
/// (two replicas under one id fence each other: the older one stops).
pub async fn run_as(
    config: Arc<Config>,
    destination: &str,
    instance_id: Option<&str>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), SinkError> {
    let stopped = Stopped { health: &health, destination, marked: std::sync::Once::new() };
    let result = run_inner(config, instance_id, &stopped, shutdown).await;
    if let Err(error) = &result {
        stopped.mark(error);
    }
    result
}

async fn run_inner(config: Arc<Config>, instance_id: Option<&str>, stopped: &Stopped<'_>, shutdown: CancellationToken) -> Result<(), SinkError> {
    let Some(sink) = Sink::start(&config, stopped.destination, instance_id, stopped.health, &shutdown).await? else {
        return Ok(());
    };
    // Ready once subscribed with lanes running; a fatal error turns it false again, and so
    // does every broker going away until one answers (`follow_brokers`).
    stopped.health.set_ready();
    let brokers = tokio::spawn({
        let (kafka, connection, health, shutdown) = (config.kafka.clone(), sink.consumer.context().connection.clone(), Arc::clone(stopped.health), shutdown.clone());
        async move { sluice_kafka::connection::follow_brokers(&kafka, connection, health, shutdown).await }
    });
    let outcome = sink.consume(&shutdown).await;
    brokers.abort();
    // At once, not after the drain: an operator (and an orchestrator's probe) must see a
    // fatal answer the moment it arrives, and the drain of a failed sink can take seconds.
    if let Err(error) = &outcome {
        stopped.mark(error);
    }
    sink.drain(outcome).await
}

/// Marks the sink stopped by a failure, once: `/readyz` false with the reason, the
/// `sluice_sink_stopped` gauge at 1, one error log.
struct Stopped<'a> {
    health: &'a Arc<Health>,
    destination: &'a str,
    marked: std::sync::Once,
}

impl Stopped<'_> {
    fn mark(&self, error: &SinkError) {
        self.marked.call_once(|| {
            let destination = self.destination;
            self.health.set_not_ready(format!("destination {destination} stopped: {error}"));
            metrics::gauge!("sluice_sink_stopped", "destination" => destination.to_string()).set(1.0);
            tracing::error!(%destination, error = %error, "sink stopped; fix the cause and restart the service");
        });
    }
}

/// A lane's input: consumed messages, routed by key (and recomputes, which lanes send).
type LaneSender = mpsc::UnboundedSender<LaneInput>;

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
    max_buffered_records: usize,
    /// The batches' audit records, flushed (bounded) at the end of the drain.
    audit: Arc<audit::Audit>,
}

impl Sink {
    /// Setup: check the config (the destination's kind table, and every sync in a mode its kind
    /// honours), build the destination and the dead-letter writer, create the topics,
    /// subscribe, start the lanes. Nothing is consumed yet, and a config refused touches
    /// nothing. While Kafka is away or refuses us, not ready with the reason and retried
    /// ([`retry_until_connected`]); `None` if shut down meanwhile.
    async fn start(config: &Config, destination: &str, instance_id: Option<&str>, health: &Health, shutdown: &CancellationToken) -> Result<Option<Sink>, SinkError> {
        let dest = config
            .destination(destination)
            .ok_or_else(|| SinkError::Config(format!("destination {destination:?} is not in the config")))?;
        let syncs = syncs_by_topic(config, destination)?;
        let shared = Arc::new(Shared::new());
        let (deliverer, batch_limits) = build_deliverer(config, dest, shared.stop.clone())?;
        let lane_count = deliverer.limits.useful_lanes(dest.max_concurrency);
        let list_topics = membership::list_topics(config, destination);
        let Some(prepared) = retry_until_connected("create topics", health, shutdown, || prepare_topics(config, destination, &syncs, &list_topics)).await else {
            return Ok(None);
        };
        let (side_topic, guard) = prepared?;
        let guard = Arc::new(Mutex::new(guard));
        let schemas = schemas::SchemaCache::new(config.kafka.clone(), naming::schema_topic(&config.kafka.topic_prefix))
            .stopping_with(shared.stop.clone())
            .with_consent_checks(syncs.values().filter_map(|sync| sluice_destinations::validate::ConsentCheck::new(config, sync)));
        // Reads the topics just prepared; Kafka away meanwhile is waited out the same way.
        let rebuild = || async { kafka_apart(Stage::start(config, destination, &syncs, lane_count, lane_of, &schemas).await) };
        let Some(stage) = retry_until_connected("rebuild the membership stage", health, shutdown, rebuild).await else {
            return Ok(None);
        };
        let stage = stage?;
        let context = SinkContext {
            shared: Arc::clone(&shared),
            guard: Arc::clone(&guard),
            stage: stage.clone(),
            kafka: config.kafka.clone(),
            connection: ConnectionContext::default(),
            destination: destination.to_string(),
        };
        let consumer = subscribe(config, destination, instance_id, &syncs, &side_topic, &list_topics, context)?;
        tracing::info!(
            %destination, kind = deliverer.target.kind(), topics = ?syncs.keys().collect::<Vec<_>>(), lanes = lane_count,
            rate_limited = deliverer.limits.is_limited(), "sink started"
        );
        let audit = Arc::clone(&deliverer.audit);
        let lane_context = Arc::new(lanes::LaneContext {
            destination: destination.to_string(),
            syncs,
            schemas,
            deliverer,
            shared: Arc::clone(&shared),
            limits: batch_limits,
            stage,
            lanes: std::sync::OnceLock::new(),
        });
        let mut lanes = Vec::with_capacity(lane_count);
        let mut lane_tasks = JoinSet::new();
        for _ in 0..lane_count {
            let (tx, rx) = mpsc::unbounded_channel();
            lanes.push(tx);
            lane_tasks.spawn(lanes::run_lane(rx, Arc::clone(&lane_context)));
        }
        let weak = lanes.iter().map(LaneSender::downgrade).collect();
        assert!(lane_context.lanes.set(weak).is_ok(), "lanes are set once");
        Ok(Some(Sink {
            destination: destination.to_string(),
            consumer,
            shared,
            guard,
            lanes,
            lane_tasks,
            max_buffered_records: dest.max_buffered_records,
            audit,
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
                    Err(error) => consume_error(error)?,
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
        self.lanes[lane].send(LaneInput::Message(Arc::new(message.detach()))).map_err(|_| SinkError::Config("a delivery lane stopped".into()))
    }

    /// Stop (SIGTERM or a failure): no request starts from here and every retry wait ends
    /// (`Shared::stop`); a request already in flight may finish within `DRAIN_TIMEOUT`, after
    /// which its lane is aborted; then the finished prefix — and only it — is committed
    /// synchronously. Whatever was not finished is delivered again after the restart. A lane's
    /// fatal error wins over a clean stop.
    async fn drain(self, stopped: Result<(), SinkError>) -> Result<(), SinkError> {
        let Sink { destination, consumer, shared, guard, lanes, mut lane_tasks, audit, .. } = self;
        // Before the lanes see their input close, so none starts a request on the way out.
        shared.stop.cancel();
        drop(lanes);
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while lane_tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(%destination, "a request was still in flight at the drain timeout; abandoned, its records are delivered again after restart");
            lane_tasks.abort_all();
            while lane_tasks.join_next().await.is_some() {}
        }
        commit(&consumer, &shared, &guard, CommitMode::Sync);
        audit.flush().await;
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
async fn prepare_topics(config: &Config, destination: &str, syncs: &HashMap<String, SyncConfig>, lists: &[String]) -> Result<Result<(String, OrderGuard), SinkError>, sluice_kafka::KafkaError> {
    // First, so that rejected credentials or an untrusted certificate are named as such (listener,
    // cause, fix) instead of surfacing as the metadata timeout of whichever request came first.
    sluice_kafka::connection::check_connection(&config.kafka).await?;
    let admin = Admin::new(&config.kafka)?;
    let (side_topic, partitions) = match side::side_topic(&admin, config, destination, syncs).await {
        Ok(side) => side,
        Err(error) => return kafka_apart(Err(error)),
    };
    // Independent round trips, and a start is what a restarted sink waits for: together.
    let (ensured, guard) =
        tokio::join!(ensure_sink_topics(&admin, config, destination, syncs, lists, (&side_topic, partitions)), guard::load::build(config, destination, syncs, partitions));
    kafka_apart(ensured.and(guard).map(|guard| (side_topic, guard)))
}

/// A start step's result with Kafka's failures apart, as [`retry_until_connected`] takes them:
/// the outer `Err` is retried while not ready; anything else (a config that cannot work) is the
/// inner result.
fn kafka_apart<T>(result: Result<T, SinkError>) -> Result<Result<T, SinkError>, sluice_kafka::KafkaError> {
    match result {
        Err(SinkError::Kafka(kafka)) => Err(kafka),
        other => Ok(other),
    }
}

/// Create (or check) the change topics (the syncs' and the suppression lists'), the
/// destination's dead-letter topic, the schema topic and the destination's side topic (with
/// `side`'s partition count, that of its change topics, [`side::side_topic`]), in one round.
async fn ensure_sink_topics(
    admin: &Admin,
    config: &Config,
    destination: &str,
    syncs: &HashMap<String, SyncConfig>,
    lists: &[String],
    side: (&str, i32),
) -> Result<(), SinkError> {
    let prefix = &config.kafka.topic_prefix;
    let created = config.kafka.partitions;
    let mut topics: Vec<(String, TopicRole, i32)> = syncs.keys().map(|t| (t.clone(), TopicRole::Changes, created)).collect();
    topics.extend(lists.iter().filter(|t| !syncs.contains_key(*t)).map(|t| (t.clone(), TopicRole::Changes, created)));
    topics.push((naming::dead_letter_topic(prefix, destination), TopicRole::DeadLetter, created));
    topics.push((naming::schema_topic(prefix), TopicRole::Compacted, created));
    topics.push((side.0.to_string(), TopicRole::Side, side.1));
    topics.push((naming::runs_topic(prefix), TopicRole::RUNS, created));
    if config.destination(destination).is_some_and(|d| d.writeback) {
        topics.push((naming::outcomes_topic(prefix, destination), TopicRole::OUTCOMES, created));
    }
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
        breaker: Arc::new(breaker::Breaker::new(&dest.dead_letter_breaker)),
        audit: Arc::new(audit::Audit::new(config, dest).map_err(SinkError::Kafka)?),
    };
    Ok((deliverer, batch_limits))
}

/// The destination's consumer (manual commits, `read_committed`), subscribed to its change topics,
/// its side topic and the change topics of the suppression lists its syncs name; a static member
/// of its group under `instance_id` when given.
fn subscribe(
    config: &Config,
    destination: &str,
    instance_id: Option<&str>,
    syncs: &HashMap<String, SyncConfig>,
    side_topic: &str,
    list_topics: &[String],
    context: SinkContext,
) -> Result<StreamConsumer<SinkContext>, SinkError> {
    let mut client = sluice_kafka::client_config(&config.kafka);
    let properties = config.kafka.properties.get_ref();
    if !properties.contains_key("session.timeout.ms") {
        client.set("session.timeout.ms", SESSION_TIMEOUT_MS);
        if !properties.contains_key("heartbeat.interval.ms") {
            client.set("heartbeat.interval.ms", HEARTBEAT_INTERVAL_MS);
        }
    }
    if let Some(id) = instance_id {
        client.set("group.instance.id", id);
    }
    let consumer: StreamConsumer<SinkContext> = client
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
    let mut topics: Vec<&str> = syncs.keys().map(String::as_str).chain([side_topic]).collect();
    // A list's model may also be synced to this destination: subscribe to its topic once.
    topics.extend(list_topics.iter().map(String::as_str).filter(|t| !syncs.contains_key(*t)));
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

/// A consume error: logged, unless the consumer cannot go on (librdkafka's fatal errors, such
/// as another replica taking over this one's `group.instance.id`), which stops the sink.
fn consume_error(error: rdkafka::error::KafkaError) -> Result<(), SinkError> {
    match error {
        rdkafka::error::KafkaError::MessageConsumptionFatal(code) => {
            let fix = if code == rdkafka::types::RDKafkaErrorCode::FencedInstanceId {
                ": another replica joined the group under this --instance-id; give each replica its own"
            } else {
                ""
            };
            Err(SinkError::Config(format!("the consumer failed fatally ({code}){fix}")))
        }
        error => {
            tracing::warn!(%error, "consume error");
            Ok(())
        }
    }
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

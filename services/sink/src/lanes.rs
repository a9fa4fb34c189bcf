//! Lanes: parallel, per-key-ordered delivery.
//!
//! Records are routed to a lane by a hash of (topic, key), so every change of one key goes
//! through the same lane, and a lane sends one batch at a time: per-key order holds while
//! different keys are delivered concurrently (up to one request per lane, further bounded by
//! adaptive concurrency).
//!
//! A lane builds batches by count, bytes and linger, and coalesces several changes of one key
//! inside a batch into the latest (the superseded records finish when the batch does). Under a
//! requests-per-second limit a batch that is not full leaves only when its linger is over *and*
//! a request would find room in the limit's window ([`departure`]); until then it keeps filling.
//! With at most as many lanes as requests can be in flight
//! ([`crate::limits::RateLimits::useful_lanes`]), requests are as full as the records waiting
//! allow when requests are the scarce resource.
//!
//! With suppression lists, a lane also takes *recomputes* of its keys ([`LaneInput`]) and lets
//! the membership stage decide each batch's memberships just before sending it
//! ([`crate::membership`], whose ordering argument rests on exactly that: one batch at a time
//! per lane, decided at send time). The steps a lane takes for the stage are in
//! [`crate::recompute`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rdkafka::message::{Message, OwnedMessage};
use sluice_core::config::SyncConfig;
use sluice_destinations::{Destination, OutboundRecord};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::dead_letters::DeadLetterSink;
use crate::deliver::{Deliverer, Done, Item, SinkError, Stop};
use crate::limits::RateLimits;
use crate::mapping::{self, Prepared};
use crate::membership::{Pending, Presence, Recompute, Stage};
use crate::recompute::{self, ListStep};
use crate::offsets::OffsetTracker;
use crate::schemas::SchemaCache;
use crate::side::{self, Origin};

/// State shared by the consume loop, the lanes and the rebalance callback.
pub(crate) struct Shared {
    pub tracker: Mutex<OffsetTracker>,
    /// Records handed to lanes and not finished yet (drives pause/resume).
    pub buffered: AtomicUsize,
    /// Signalled whenever lanes finish records, so a paused consumer resumes at once rather
    /// than at its next tick (a pause costs a fetch round trip; waiting longer costs throughput).
    pub progress: tokio::sync::Notify,
    /// Cancelled when a lane hits a fatal error; the error is in `fatal`.
    pub failed: CancellationToken,
    pub fatal: Mutex<Option<SinkError>>,
    /// Cancelled when the sink stops (SIGTERM or a failure): lanes start no request, retry and
    /// rate-limit waits end at once ([`Deliverer::shutdown`] is this token), and nothing waits
    /// for the records they held any more: they stay unfinished, uncommitted, and are
    /// delivered again after the restart.
    pub stop: CancellationToken,
}

impl Shared {
    pub(crate) fn new() -> Shared {
        Shared {
            tracker: Mutex::new(OffsetTracker::default()),
            buffered: AtomicUsize::new(0),
            progress: tokio::sync::Notify::new(),
            failed: CancellationToken::new(),
            fatal: Mutex::new(None),
            stop: CancellationToken::new(),
        }
    }

    pub(crate) fn finish<'m>(&self, finished: impl IntoIterator<Item = &'m OwnedMessage>) {
        let mut tracker = self.tracker.lock().expect("tracker lock");
        for message in finished {
            tracker.finish(message.topic(), message.partition(), message.offset());
        }
    }

    /// One part of a list record's work finished; the record itself when it was the last.
    pub(crate) fn finish_part(&self, pending: &Pending) {
        if pending.finish_one() {
            self.finish([pending.message()]);
            self.buffered.fetch_sub(1, Ordering::SeqCst);
            self.progress.notify_one();
        }
    }
}

/// What a lane is given.
pub(crate) enum LaneInput {
    /// A consumed record.
    Message(Arc<OwnedMessage>),
    /// A row of this lane to decide again, because a suppression list changed.
    Recompute(Recompute),
}

/// Limits of one batch.
#[derive(Clone, Copy)]
pub(crate) struct BatchLimits {
    pub max_records: usize,
    pub max_bytes: usize,
    pub linger: Duration,
}

/// A batch being built: one record per key (the latest), plus the messages it replaced. Records
/// and their messages are parallel vectors so the records go to the destination as one slice,
/// without a copy.
pub(crate) struct Batch {
    pub messages: Vec<Arc<OwnedMessage>>,
    pub records: Vec<OutboundRecord>,
    sizes: Vec<usize>,
    presences: Vec<Presence>,
    dones: Vec<Done>,
    by_key: HashMap<(String, Vec<u8>), usize>,
    bytes: usize,
    /// Messages of coalesced (superseded) records, finished with the batch.
    superseded: Vec<(Arc<OwnedMessage>, Done)>,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            messages: Vec::new(),
            records: Vec::new(),
            sizes: Vec::new(),
            presences: Vec::new(),
            dones: Vec::new(),
            by_key: HashMap::new(),
            bytes: 0,
            superseded: Vec::new(),
        }
    }

    fn push(&mut self, item: Item) {
        // By the change a record carries: a side record coalesces with live records of its key.
        let key = (side::lane_topic(item.message.as_ref()).into_owned(), item.message.key().unwrap_or_default().to_vec());
        match self.by_key.get(&key) {
            Some(&at) => {
                // A later change of the same key replaces the earlier one in place.
                self.bytes = self.bytes - self.sizes[at] + item.bytes;
                self.sizes[at] = item.bytes;
                self.records[at] = item.record;
                self.presences[at] = item.presence;
                let message = std::mem::replace(&mut self.messages[at], item.message);
                self.superseded.push((message, std::mem::replace(&mut self.dones[at], item.done)));
            }
            None => {
                self.by_key.insert(key, self.records.len());
                self.bytes += item.bytes;
                self.sizes.push(item.bytes);
                self.records.push(item.record);
                self.presences.push(item.presence);
                self.dones.push(item.done);
                self.messages.push(item.message);
            }
        }
    }

    fn full(&self, limits: &BatchLimits) -> bool {
        self.records.len() >= limits.max_records || self.bytes >= limits.max_bytes
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Consumed records the batch holds (counted in `Shared::buffered` until it finishes);
    /// recomputes are not, their list record is.
    fn consumed(&self) -> usize {
        self.dones.iter().chain(self.superseded.iter().map(|(_, done)| done)).filter(|done| matches!(done, Done::Offset)).count()
    }

    /// Drop the records of partitions this instance no longer owns; returns how many.
    fn retain_owned(&mut self, tracker: &OffsetTracker) -> usize {
        let before = self.records.len();
        if self.messages.iter().all(|m| tracker.owns(m.topic(), m.partition())) {
            return 0;
        }
        let keep: Vec<bool> = self.messages.iter().map(|m| tracker.owns(m.topic(), m.partition())).collect();
        retain(&mut self.records, &keep);
        retain(&mut self.messages, &keep);
        retain(&mut self.sizes, &keep);
        retain(&mut self.presences, &keep);
        retain(&mut self.dones, &keep);
        before - self.records.len()
    }
}

/// Keep the elements whose flag is set (flags parallel to the elements).
fn retain<T>(items: &mut Vec<T>, keep: &[bool]) {
    let mut i = 0;
    items.retain(|_| (keep[i], i += 1).0);
}

/// What every lane shares. Generic over the destination and the dead-letter sink only so
/// tests can use fakes of both.
pub(crate) struct LaneContext<D, L> {
    pub destination: String,
    pub syncs: HashMap<String, SyncConfig>,
    pub schemas: SchemaCache,
    pub deliverer: Deliverer<D, L>,
    pub shared: Arc<Shared>,
    pub limits: BatchLimits,
    /// The membership stage, when a sync of this destination names suppression lists.
    pub stage: Option<Arc<Stage>>,
    /// Every lane's input, to enqueue recomputes; weak, so that dropping the sink's senders
    /// still stops the lanes.
    pub lanes: OnceLock<Vec<mpsc::WeakUnboundedSender<LaneInput>>>,
}

impl<D: Destination, L: DeadLetterSink> LaneContext<D, L> {
    /// Decode and map a message; a record to deliver comes back as an item, anything else is
    /// finished here (skipped, or dead-lettered and acknowledged).
    async fn admit(&self, message: Arc<OwnedMessage>) -> Result<Option<Item>, SinkError> {
        let (prepared, presence, done) = match side::origin(message.as_ref(), |topic| self.syncs.contains_key(topic)) {
            Err(reason) => (Prepared::Reject(reason), Presence::Untracked, Done::Offset),
            // A side record is the change it carries: mapped with the sync of that change's
            // topic, and that change for the membership stage.
            Ok(origin) => {
                // A suppression list's record is the stage's; it goes on to delivery only when
                // its topic is also a sync's.
                let done = match &self.stage {
                    Some(stage) if stage.is_list_topic(&origin.topic) => match self.admit_list(stage, &message, &origin).await? {
                        Some(done) => done,
                        None => return Ok(None),
                    },
                    _ => Done::Offset,
                };
                let (prepared, presence) = match self.syncs.get(origin.topic.as_ref()) {
                    Some(sync) => mapping::prepare(&message, &origin, sync, &self.schemas).await?,
                    None => (Prepared::Reject(format!("topic {} is not a change topic of this destination", origin.topic)), Presence::Untracked),
                };
                if let Some(stage) = &self.stage {
                    stage.observe(&origin, message.key().unwrap_or_default(), &presence);
                }
                (prepared, presence, done)
            }
        };
        match prepared {
            Prepared::Deliver { record, bytes, missing } => {
                if !missing.is_empty() {
                    let metrics = sluice_destinations::Metrics::new(self.destination.as_str(), self.deliverer.target.kind());
                    missing.iter().for_each(|field| metrics.identifier_missing(field));
                }
                return Ok(Some(Item { message, record, bytes, presence, done }));
            }
            Prepared::Skip => {
                metrics::counter!("sluice_sink_records_total", "destination" => self.destination.clone(), "outcome" => "skipped").increment(1);
            }
            Prepared::Reject(reason) => self.deliverer.dead_letter_unreadable(&message, &reason).await?,
        }
        self.finish_admitted(&message, done);
        Ok(None)
    }

    /// A suppression list's record: the stage applies it, its recomputes go to their lanes.
    /// Returns what its delivery finishes when its topic is also a sync's; `None` when it is
    /// dealt with here.
    async fn admit_list(&self, stage: &Stage, message: &Arc<OwnedMessage>, origin: &Origin<'_>) -> Result<Option<Done>, SinkError> {
        match recompute::admit_list(stage, &self.schemas, message, origin, self.syncs.contains_key(origin.topic.as_ref())).await? {
            ListStep::DeadLetter(reason) => self.deliverer.dead_letter_unreadable(message, &reason).await?,
            ListStep::Finish => {}
            ListStep::Recompute { recomputes, done } => {
                for recompute in recomputes {
                    self.enqueue(recompute);
                }
                // Without `done`, the record finishes with its recomputes.
                return Ok(done);
            }
        }
        self.finish_admitted(message, Done::Offset);
        Ok(None)
    }

    /// Into the lane of its row. A recompute that cannot be enqueued (the sink is stopping)
    /// leaves its list record unfinished: the group delivers it again after the restart.
    fn enqueue(&self, recompute: Recompute) {
        let lane = self.lanes.get().and_then(|lanes| lanes.get(usize::from(recompute.target.lane))).and_then(|weak| weak.upgrade());
        if lane.is_none_or(|lane| lane.send(LaneInput::Recompute(recompute)).is_err()) {
            tracing::debug!(destination = %self.destination, "stopping: a recompute was not enqueued; its list record is delivered again after the restart");
        }
    }

    /// A recompute: its row's latest record, read back, to be decided at flush; finished here
    /// when there is nothing to send.
    async fn recompute(&self, recompute: Recompute) -> Result<Option<Item>, SinkError> {
        let stage = self.stage.as_ref().expect("recomputes come from the stage");
        match recompute::read_back(stage, &self.syncs, &self.schemas, &recompute).await? {
            Ok(item) => Ok(Some(item)),
            Err(_nothing_to_send) => {
                self.shared.finish_part(&recompute.pending);
                Ok(None)
            }
        }
    }

    /// A record finished at admission (skipped, dead-lettered, or a list record with nothing
    /// left to do).
    pub(crate) fn finish_admitted(&self, message: &OwnedMessage, done: Done) {
        match done {
            Done::Offset => {
                self.shared.finish([message]);
                self.shared.buffered.fetch_sub(1, Ordering::SeqCst);
            }
            Done::Part(pending) => self.shared.finish_part(&pending),
        }
    }

    /// Deliver a batch and finish its records.
    async fn flush(&self, mut batch: Batch) -> Result<(), Stop> {
        let count = batch.consumed();
        // Records of partitions revoked meanwhile belong to another instance now: drop them
        // unsent (they were not committed, so their new owner delivers them).
        let foreign = batch.retain_owned(&self.shared.tracker.lock().expect("tracker lock"));
        if foreign > 0 {
            tracing::info!(records = foreign, "dropping records of revoked partitions");
        }
        let span = tracing::info_span!("sink.batch", destination = %self.destination, records = batch.records.len());
        sluice_telemetry::propagation::join(&span, batch.messages.iter().map(|m| record_context(m)));
        if let Some(stage) = &self.stage {
            // Membership is decided here, at send time, in the key's lane (`membership`); a
            // side record by the change topic it carries.
            let topics: Vec<_> = batch.messages.iter().map(|m| side::lane_topic(m.as_ref())).collect();
            let topics = topics.iter().map(|topic| topic.as_ref());
            stage.decide(topics.zip(&batch.presences).zip(batch.records.iter_mut()).map(|((topic, presence), record)| (topic, presence, record)));
        }
        let outcome = if batch.is_empty() { Ok(()) } else { self.deliverer.deliver(&batch.messages, &batch.records).instrument(span).await };
        if outcome.is_ok() {
            crate::telemetry::coalesced(&self.destination, batch.superseded.len());
            let finished = batch.messages.iter().zip(&batch.dones).chain(batch.superseded.iter().map(|(m, d)| (m, d)));
            let (offsets, parts): (Vec<_>, Vec<_>) = finished.partition(|(_, done)| matches!(done, Done::Offset));
            self.shared.finish(offsets.into_iter().map(|(m, _)| m.as_ref()));
            for (_, done) in parts {
                if let Done::Part(pending) = done {
                    self.shared.finish_part(pending);
                }
            }
        }
        self.shared.buffered.fetch_sub(count, Ordering::SeqCst);
        self.shared.progress.notify_one();
        outcome
    }

    /// Admit a consumed record, or read a recompute's row back.
    async fn take(&self, input: LaneInput) -> Result<Option<Item>, SinkError> {
        match input {
            LaneInput::Message(message) => {
                // The record's own span, in the trace of the run that produced it.
                let span = tracing::info_span!("sink.consume", otel.kind = "consumer", topic = message.topic(), partition = message.partition(), offset = message.offset());
                if let Err(error) = span.set_parent(record_context(&message)) {
                    tracing::trace!(?error, "trace context not attached");
                }
                self.admit(message).instrument(span).await
            }
            LaneInput::Recompute(recompute) => self.recompute(recompute).await,
        }
    }

    fn fail(&self, stop: Stop) {
        if let Stop::Failed(error) = stop {
            self.shared.fatal.lock().expect("fatal lock").get_or_insert(error);
            // Every lane stops starting requests now, not once the consume loop noticed.
            self.shared.stop.cancel();
            self.shared.failed.cancel();
        }
    }
}

/// The trace context a record carries in its headers (empty when it carries none, or when this
/// process makes no spans to parent on it: the headers are then not read at all).
fn record_context(message: &OwnedMessage) -> opentelemetry::Context {
    if !sluice_telemetry::spans_made() {
        return opentelemetry::Context::new();
    }
    sluice_telemetry::propagation::context_from(&sluice_kafka::headers::pairs(message.headers()))
}

/// When a batch that is not full leaves: once its linger is over and a request would find room
/// under the requests-per-second limit. Until then the lane keeps filling it, so a lane waiting
/// for the rate limit sends one fuller request instead of a small one now and the rest later.
async fn departure(limits: &RateLimits, deadline: tokio::time::Instant) {
    tokio::time::sleep_until(deadline).await;
    limits.until_request_room().await;
}

/// Run one lane until its channel closes (shutdown) or a stop.
pub(crate) async fn run_lane<D: Destination, L: DeadLetterSink>(mut rx: mpsc::UnboundedReceiver<LaneInput>, cx: Arc<LaneContext<D, L>>) {
    let mut batch = Batch::new();
    let mut deadline = tokio::time::Instant::now();
    loop {
        let next = if batch.is_empty() {
            rx.recv().await.map(Some)
        } else {
            // Records already waiting come first (`biased`): a batch takes them before it leaves.
            tokio::select! {
                biased;
                input = rx.recv() => input.map(Some),
                () = departure(&cx.deliverer.limits, deadline) => Some(None),
            }
        };
        match next {
            Some(Some(input)) => match cx.take(input).await {
                Ok(Some(item)) => {
                    if batch.is_empty() {
                        deadline = tokio::time::Instant::now() + cx.limits.linger;
                    }
                    batch.push(item);
                    if !batch.full(&cx.limits) {
                        continue;
                    }
                }
                Ok(None) => continue,
                // Stopping meanwhile (a retried schema read gave up): the record stays unfinished.
                Err(_) if cx.shared.stop.is_cancelled() => return,
                Err(error) => return cx.fail(Stop::Failed(error)),
            },
            // Linger elapsed and a request would find room: send what we have.
            Some(None) => {}
            // The sink stops: what this lane holds stays unfinished (`Shared::stop`).
            None => return,
        }
        if let Err(stop) = cx.flush(std::mem::replace(&mut batch, Batch::new())).await {
            return cx.fail(stop);
        }
        if cx.shared.failed.is_cancelled() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::config::{KafkaConfig, RetryConfig};
    use sluice_core::ErrorClass;

    use crate::testing::{self, message, record, refused, Answer, RecordingDeadLetters, ScriptedDestination};

    fn item(key: &str, offset: i64) -> Item {
        Item { message: message(key, offset), record: record(offset), bytes: 10, presence: Presence::Untracked, done: Done::Offset }
    }

    fn lane_context(answers: impl IntoIterator<Item = Answer>) -> LaneContext<ScriptedDestination, RecordingDeadLetters> {
        // Nothing connects: the schema cache only reads its topic on a lookup.
        let kafka = KafkaConfig::plaintext("127.0.0.1:1", "test");
        LaneContext {
            destination: "crm".into(),
            syncs: HashMap::new(),
            schemas: SchemaCache::new(kafka, "test.schemas".into()),
            deliverer: testing::deliverer(RetryConfig::default(), answers),
            shared: Arc::new(Shared::new()),
            limits: BatchLimits { max_records: 10, max_bytes: 1000, linger: Duration::ZERO },
            stage: None,
            lanes: OnceLock::new(),
        }
    }

    /// A batch's records finish (and may be committed) only once every one of them is applied
    /// or dead-lettered: a dead letter that cannot be written leaves the whole batch unfinished.
    #[tokio::test(start_paused = true)]
    async fn a_batch_finishes_only_once_delivered_and_dead_lettered() {
        for (dead_letters_fail, committable) in [(false, 2), (true, 0)] {
            let cx = lane_context([Ok(vec![refused(0, ErrorClass::Permanent, Some(207), "bad email")])]);
            if dead_letters_fail {
                cx.deliverer.dead_letters.fail_writes();
            }
            let mut batch = Batch::new();
            for offset in 0..2 {
                cx.shared.tracker.lock().unwrap().register("t", 0, offset, 0);
                cx.shared.buffered.fetch_add(1, Ordering::SeqCst);
                batch.push(item(&format!("k{offset}"), offset));
            }
            let outcome = cx.flush(batch).await;
            assert_eq!(outcome.is_ok(), !dead_letters_fail, "{outcome:?}");
            assert_eq!(cx.shared.tracker.lock().unwrap().committable(), [(("t".to_string(), 0), committable)], "dead letters fail: {dead_letters_fail}");
            assert_eq!(cx.shared.buffered.load(Ordering::SeqCst), 0, "out of the buffer either way");
            assert_eq!(cx.deliverer.dead_letters.written().len(), usize::from(!dead_letters_fail));
        }
    }

    /// Issue 12: a batch that is not full leaves at the end of its linger only when a request
    /// would find room under the requests-per-second limit; while a request holds the window it
    /// waits (and the lane keeps filling it), and leaves a second after that request's answer.
    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_leaves_only_when_a_request_would_find_room() {
        let limits = RateLimits::new(&sluice_core::config::RateLimitConfig { requests_per_second: Some(1.0), records_per_second: None }).unwrap();
        let linger = Duration::from_millis(100);
        let start = tokio::time::Instant::now();
        departure(&limits, start + linger).await;
        assert_eq!(start.elapsed(), linger, "room: at the end of the linger");

        let sent = tokio::time::Instant::now();
        let in_flight = limits.acquire(200).await;
        let answered = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(in_flight);
        };
        let left = async {
            departure(&limits, sent + linger).await;
            sent.elapsed()
        };
        let (left, ()) = tokio::join!(left, answered);
        assert_eq!(left, Duration::from_secs(3), "not at the linger's end but a second after the answer");

        let unlimited = RateLimits::new(&sluice_core::config::RateLimitConfig::default()).unwrap();
        let before = tokio::time::Instant::now();
        departure(&unlimited, before + linger).await;
        assert_eq!(before.elapsed(), linger, "without a requests limit: the linger alone");
    }

    #[test]
    fn coalesces_changes_of_one_key_into_the_latest() {
        let mut batch = Batch::new();
        batch.push(item("a", 1));
        batch.push(item("b", 2));
        batch.push(item("a", 3));
        assert_eq!(batch.records.len(), 2);
        assert_eq!(batch.messages[0].offset(), 3, "latest change of `a`, in `a`'s place");
        assert_eq!(batch.records[0].id, "t/0/3");
        assert_eq!(batch.superseded.iter().map(|(m, _)| m.offset()).collect::<Vec<_>>(), [1]);
        assert_eq!(batch.consumed(), 3, "the superseded record still counts until the batch finishes");
        assert_eq!(batch.bytes, 20);
    }

    #[test]
    fn full_by_count_or_bytes() {
        let limits = BatchLimits { max_records: 2, max_bytes: 25, linger: Duration::ZERO };
        let mut batch = Batch::new();
        batch.push(item("a", 1));
        assert!(!batch.full(&limits));
        batch.push(item("b", 2));
        assert!(batch.full(&limits), "count");
        let limits = BatchLimits { max_records: 10, max_bytes: 15, linger: Duration::ZERO };
        let mut batch = Batch::new();
        batch.push(item("a", 1));
        batch.push(item("b", 2));
        assert!(batch.full(&limits), "bytes");
    }
}

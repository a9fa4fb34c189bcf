//! Lanes: parallel, per-key-ordered delivery.
//!
//! Records are routed to a lane by a hash of (topic, key), so every change of one key goes
//! through the same lane, and a lane sends one batch at a time: per-key order holds while
//! different keys are delivered concurrently (up to one request per lane, further bounded by
//! adaptive concurrency).
//!
//! A lane builds batches by count, bytes and linger, and coalesces several changes of one key
//! inside a batch into the latest (the superseded records finish when the batch does).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::message::{Message, OwnedMessage};
use sluice_core::config::SyncConfig;
use sluice_destinations::{Destination, OutboundRecord};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::dead_letters::DeadLetterSink;
use crate::deliver::{Deliverer, Item, SinkError, Stop};
use crate::mapping::{self, Prepared};
use crate::offsets::OffsetTracker;
use crate::schemas::SchemaCache;
use crate::side;

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
}

impl Shared {
    pub(crate) fn new() -> Shared {
        Shared {
            tracker: Mutex::new(OffsetTracker::default()),
            buffered: AtomicUsize::new(0),
            progress: tokio::sync::Notify::new(),
            failed: CancellationToken::new(),
            fatal: Mutex::new(None),
        }
    }

    pub(crate) fn finish<'m>(&self, finished: impl IntoIterator<Item = &'m OwnedMessage>) {
        let mut tracker = self.tracker.lock().expect("tracker lock");
        for message in finished {
            tracker.finish(message.topic(), message.partition(), message.offset());
        }
    }
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
    by_key: HashMap<(String, Vec<u8>), usize>,
    bytes: usize,
    /// Messages of coalesced (superseded) records, finished with the batch.
    superseded: Vec<Arc<OwnedMessage>>,
}

impl Batch {
    fn new() -> Batch {
        Batch { messages: Vec::new(), records: Vec::new(), sizes: Vec::new(), by_key: HashMap::new(), bytes: 0, superseded: Vec::new() }
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
                self.superseded.push(std::mem::replace(&mut self.messages[at], item.message));
            }
            None => {
                self.by_key.insert(key, self.records.len());
                self.bytes += item.bytes;
                self.sizes.push(item.bytes);
                self.records.push(item.record);
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

    /// Messages the batch accounts for, superseded ones included.
    fn len(&self) -> usize {
        self.messages.len() + self.superseded.len()
    }

    /// Drop the records of partitions this instance no longer owns; returns how many.
    fn retain_owned(&mut self, tracker: &OffsetTracker) -> usize {
        let before = self.records.len();
        if self.messages.iter().all(|m| tracker.owns(m.topic(), m.partition())) {
            return 0;
        }
        let keep: Vec<bool> = self.messages.iter().map(|m| tracker.owns(m.topic(), m.partition())).collect();
        let mut i = 0;
        self.records.retain(|_| (keep[i], i += 1).0);
        let mut i = 0;
        self.messages.retain(|_| (keep[i], i += 1).0);
        before - self.records.len()
    }
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
}

impl<D: Destination, L: DeadLetterSink> LaneContext<D, L> {
    /// Decode and map a message; a record to deliver comes back as an item, anything else is
    /// finished here (skipped, or dead-lettered and acknowledged).
    async fn admit(&self, message: Arc<OwnedMessage>) -> Result<Option<Item>, SinkError> {
        // A side record is mapped with the sync of the change topic it carries.
        let prepared = match side::origin(message.as_ref(), |topic| self.syncs.contains_key(topic)) {
            Ok(origin) => match self.syncs.get(origin.topic.as_ref()) {
                Some(sync) => mapping::prepare(&message, &origin, sync, &self.schemas).await?,
                None => Prepared::Reject(format!("topic {} is not a change topic of this destination", origin.topic)),
            },
            Err(reason) => Prepared::Reject(reason),
        };
        match prepared {
            Prepared::Deliver { record, bytes, missing } => {
                if !missing.is_empty() {
                    let metrics = sluice_destinations::Metrics::new(self.destination.as_str(), self.deliverer.target.kind());
                    missing.iter().for_each(|field| metrics.identifier_missing(field));
                }
                return Ok(Some(Item { message, record, bytes }));
            }
            Prepared::Skip => {
                metrics::counter!("sluice_sink_records_total", "destination" => self.destination.clone(), "outcome" => "skipped").increment(1);
            }
            Prepared::Reject(reason) => self.deliverer.dead_letter_unreadable(&message, &reason).await?,
        }
        self.shared.finish([message.as_ref()]);
        self.shared.buffered.fetch_sub(1, Ordering::SeqCst);
        Ok(None)
    }

    /// Deliver a batch and finish its records.
    async fn flush(&self, mut batch: Batch) -> Result<(), Stop> {
        let count = batch.len();
        // Records of partitions revoked meanwhile belong to another instance now: drop them
        // unsent (they were not committed, so their new owner delivers them).
        let foreign = batch.retain_owned(&self.shared.tracker.lock().expect("tracker lock"));
        if foreign > 0 {
            tracing::info!(records = foreign, "dropping records of revoked partitions");
        }
        let span = tracing::info_span!("sink.batch", destination = %self.destination, records = batch.records.len());
        if let Some(first) = batch.messages.first() {
            let pairs = sluice_kafka::headers::pairs(first.headers());
            if let Err(error) = span.set_parent(sluice_telemetry::propagation::context_from(&pairs)) {
                tracing::trace!(?error, "trace context not attached");
            }
        }
        let outcome = if batch.is_empty() { Ok(()) } else { self.deliverer.deliver(&batch.messages, &batch.records).instrument(span).await };
        if outcome.is_ok() {
            crate::telemetry::coalesced(&self.destination, batch.superseded.len());
            self.shared.finish(batch.messages.iter().chain(&batch.superseded).map(Arc::as_ref));
        }
        self.shared.buffered.fetch_sub(count, Ordering::SeqCst);
        self.shared.progress.notify_one();
        outcome
    }

    fn fail(&self, stop: Stop) {
        if let Stop::Failed(error) = stop {
            self.shared.fatal.lock().expect("fatal lock").get_or_insert(error);
            self.shared.failed.cancel();
        }
    }
}

/// Run one lane until its channel closes (shutdown) or a stop.
pub(crate) async fn run_lane<D: Destination, L: DeadLetterSink>(mut rx: mpsc::UnboundedReceiver<Arc<OwnedMessage>>, cx: Arc<LaneContext<D, L>>) {
    let mut batch = Batch::new();
    let mut deadline = tokio::time::Instant::now();
    loop {
        let next = if batch.is_empty() {
            rx.recv().await.map(Some)
        } else {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(message) => message.map(Some),
                Err(_) => Some(None),
            }
        };
        match next {
            Some(Some(message)) => match cx.admit(message).await {
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
                Err(error) => return cx.fail(Stop::Failed(error)),
            },
            // Linger elapsed: send what we have.
            Some(None) => {}
            // Shutdown: send what we hold, then stop.
            None => {
                if !batch.is_empty() {
                    if let Err(stop) = cx.flush(batch).await {
                        cx.fail(stop);
                    }
                }
                return;
            }
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
        Item { message: message(key, offset), record: record(offset), bytes: 10 }
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

    #[test]
    fn coalesces_changes_of_one_key_into_the_latest() {
        let mut batch = Batch::new();
        batch.push(item("a", 1));
        batch.push(item("b", 2));
        batch.push(item("a", 3));
        assert_eq!(batch.records.len(), 2);
        assert_eq!(batch.messages[0].offset(), 3, "latest change of `a`, in `a`'s place");
        assert_eq!(batch.records[0].id, "t/0/3");
        assert_eq!(batch.superseded.iter().map(|m| m.offset()).collect::<Vec<_>>(), [1]);
        assert_eq!(batch.len(), 3, "the superseded record still counts until the batch finishes");
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

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
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::deliver::{Deliverer, Item, SinkError, Stop};
use crate::mapping::{self, Prepared};
use crate::offsets::{OffsetTracker, Partition};
use crate::schemas::SchemaCache;

/// State shared by the consume loop, the lanes and the rebalance callback.
pub(crate) struct Shared {
    pub tracker: Mutex<OffsetTracker>,
    /// Records handed to lanes and not finished yet (drives pause/resume).
    pub buffered: AtomicUsize,
    /// Cancelled when a lane hits a fatal error; the error is in `fatal`.
    pub failed: CancellationToken,
    pub fatal: Mutex<Option<SinkError>>,
}

impl Shared {
    pub(crate) fn new() -> Shared {
        Shared { tracker: Mutex::new(OffsetTracker::default()), buffered: AtomicUsize::new(0), failed: CancellationToken::new(), fatal: Mutex::new(None) }
    }

    pub(crate) fn finish(&self, finished: &[(Partition, i64)]) {
        let mut tracker = self.tracker.lock().expect("tracker lock");
        for (partition, offset) in finished {
            tracker.finish(partition, *offset);
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

/// A batch being built: one item per key, plus the offsets it replaced.
struct Batch {
    items: Vec<Item>,
    by_key: HashMap<(String, Vec<u8>), usize>,
    bytes: usize,
    /// Offsets of coalesced (superseded) records, finished with the batch.
    superseded: Vec<(Partition, i64)>,
}

impl Batch {
    fn new() -> Batch {
        Batch { items: Vec::new(), by_key: HashMap::new(), bytes: 0, superseded: Vec::new() }
    }

    fn push(&mut self, item: Item) {
        let key = (item.message.topic().to_string(), item.message.key().unwrap_or_default().to_vec());
        match self.by_key.get(&key) {
            Some(&at) => {
                // A later change of the same key replaces the earlier one in place.
                let old = std::mem::replace(&mut self.items[at], item);
                self.bytes = self.bytes - old.bytes + self.items[at].bytes;
                self.superseded.push(((old.message.topic().to_string(), old.message.partition()), old.message.offset()));
            }
            None => {
                self.by_key.insert(key, self.items.len());
                self.bytes += item.bytes;
                self.items.push(item);
            }
        }
    }

    fn full(&self, limits: &BatchLimits) -> bool {
        self.items.len() >= limits.max_records || self.bytes >= limits.max_bytes
    }

    fn len(&self) -> usize {
        self.items.len() + self.superseded.len()
    }
}

/// What every lane shares.
pub(crate) struct LaneContext {
    pub destination: String,
    pub syncs: HashMap<String, SyncConfig>,
    pub schemas: SchemaCache,
    pub deliverer: Deliverer,
    pub shared: Arc<Shared>,
    pub limits: BatchLimits,
}

impl LaneContext {
    /// Decode and map a message; a record to deliver comes back as an item, anything else is
    /// finished here (skipped, or dead-lettered and acknowledged).
    async fn admit(&self, message: Arc<OwnedMessage>) -> Result<Option<Item>, SinkError> {
        let sync = self.syncs.get(message.topic()).expect("subscribed topics come from the syncs");
        let partition = (message.topic().to_string(), message.partition());
        match mapping::prepare(&message, sync, &self.schemas).await? {
            Prepared::Deliver { record, bytes } => return Ok(Some(Item { message, record, bytes })),
            Prepared::Skip => {
                metrics::counter!("sluice_sink_records_total", "destination" => self.destination.clone(), "outcome" => "skipped").increment(1);
            }
            Prepared::Reject(reason) => self.deliverer.dead_letter_unreadable(&message, &reason).await?,
        }
        self.shared.finish(&[(partition, message.offset())]);
        self.shared.buffered.fetch_sub(1, Ordering::SeqCst);
        Ok(None)
    }

    /// Deliver a batch and finish its records.
    async fn flush(&self, batch: Batch) -> Result<(), Stop> {
        let count = batch.len();
        // Records of partitions revoked meanwhile belong to another instance now: drop them
        // unsent (they were not committed, so their new owner delivers them).
        let (owned, foreign): (Vec<Item>, Vec<Item>) = {
            let tracker = self.shared.tracker.lock().expect("tracker lock");
            batch.items.into_iter().partition(|item| tracker.owns(&(item.message.topic().to_string(), item.message.partition())))
        };
        if !foreign.is_empty() {
            tracing::info!(records = foreign.len(), "dropping records of revoked partitions");
        }
        let finished: Vec<(Partition, i64)> = owned
            .iter()
            .map(|i| ((i.message.topic().to_string(), i.message.partition()), i.message.offset()))
            .chain(batch.superseded)
            .collect();
        let span = tracing::info_span!("sink.batch", destination = %self.destination, records = owned.len());
        if let Some(first) = owned.first() {
            let pairs = sluice_kafka::headers::pairs(first.message.headers());
            if let Err(error) = span.set_parent(sluice_telemetry::propagation::context_from(&pairs)) {
                tracing::trace!(?error, "trace context not attached");
            }
        }
        let outcome = if owned.is_empty() { Ok(()) } else { self.deliverer.deliver(&owned).instrument(span).await };
        if outcome.is_ok() {
            self.shared.finish(&finished);
        }
        self.shared.buffered.fetch_sub(count, Ordering::SeqCst);
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
pub(crate) async fn run_lane(mut rx: mpsc::UnboundedReceiver<Arc<OwnedMessage>>, cx: Arc<LaneContext>) {
    let mut batch = Batch::new();
    let mut deadline = tokio::time::Instant::now();
    loop {
        let next = if batch.items.is_empty() && batch.superseded.is_empty() {
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
                    if batch.items.is_empty() {
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
                if !batch.items.is_empty() {
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
    use rdkafka::message::OwnedMessage;
    use rdkafka::Timestamp;
    use sluice_destinations::{Action, OutboundRecord};

    fn item(key: &str, offset: i64) -> Item {
        let message = OwnedMessage::new(Some(b"v".to_vec()), Some(key.as_bytes().to_vec()), "t".into(), Timestamp::NotAvailable, 0, offset, None);
        let record = OutboundRecord {
            id: format!("t/0/{offset}"),
            model: "m".into(),
            action: Action::Upsert,
            op: "u".into(),
            key: Default::default(),
            fields: Default::default(),
            previous: None,
            ts_ms: 0,
        };
        Item { message: Arc::new(message), record, bytes: 10 }
    }

    #[test]
    fn coalesces_changes_of_one_key_into_the_latest() {
        let mut batch = Batch::new();
        batch.push(item("a", 1));
        batch.push(item("b", 2));
        batch.push(item("a", 3));
        assert_eq!(batch.items.len(), 2);
        assert_eq!(batch.items[0].message.offset(), 3, "latest change of `a`, in `a`'s place");
        assert_eq!(batch.superseded, vec![(("t".to_string(), 0), 1)]);
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

//! The last emitted state of a model, rebuilt from its own compacted change topic: what `diff`
//! mode compares each run with, and the keys a cursor model's reconciliation checks.
//!
//! Why the change topic and not a separate state topic: the change topic *is* the last emitted
//! state (the latest event per key is the row as destinations know it), and it is written in
//! the same Kafka transaction as everything else, so the two can never disagree. Reading it
//! `read_committed` after the producer fenced older instances gives exactly the committed
//! state; nothing lives on local disk.
//!
//! Memory: per tracked row we keep the xxh3 hash of its key bytes (the map key), the xxh3 hash
//! of its row values (carried on each event in the [`ROW_HASH_HEADER`] header, so rebuilding
//! decodes no Avro) and where its latest event sits (partition and offset packed in 64 bits),
//! so the previous image can be read back for `before` and `changed`. 24 bytes per entry plus
//! the hash table's control byte and spare capacity: 27–55 bytes per row (measured by
//! `benches/poller_vs_copy.rs`). A 64-bit key hash collides with probability ~n²/2⁶⁵ (3·10⁻⁸ at
//! one million rows); a collision would merge two keys, which we accept and document.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use sluice_core::config::KafkaConfig;
use sluice_kafka::{client_config, KafkaError};

use crate::error::ModelError;
use crate::keys::key_hash;

/// Header carrying the xxh3 hash (16 hex digits) of an event's `after` row, so the tracked
/// state is rebuilt from headers alone. Absent on deletes and tombstones.
pub use sluice_kafka::headers::ROW_HASH as ROW_HASH_HEADER;

/// How long reading the change topic may take before the run is retried.
pub const READ_DEADLINE: Duration = Duration::from_secs(300);

/// Marks an entry whose key was seen by the scan in progress (top bit of `loc`).
const SEEN: u64 = 1 << 63;
const OFFSET_BITS: u32 = 48;
const OFFSET_MASK: u64 = (1 << OFFSET_BITS) - 1;

/// Partition (15 bits) and offset (48 bits) of a record, packed.
pub fn pack_loc(partition: i32, offset: i64) -> u64 {
    ((partition as u64) << OFFSET_BITS) | (offset as u64 & OFFSET_MASK)
}

/// Inverse of [`pack_loc`] (ignores the seen bit).
pub fn unpack_loc(loc: u64) -> (i32, i64) {
    (((loc & !SEEN) >> OFFSET_BITS) as i32, (loc & OFFSET_MASK) as i64)
}

/// The map key is already an xxh3 hash: hashing it again would only cost time.
#[derive(Default)]
pub struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A hash map keyed by key hashes.
pub type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<PreHashed>>;

/// One tracked row: its row hash and the location of its latest event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// xxh3 of the row as last emitted (0 when its event carried no hash).
    pub row_hash: u64,
    loc: u64,
}

impl Entry {
    /// Where the key's latest event sits (packed partition and offset, see [`unpack_loc`]).
    pub fn loc(&self) -> u64 {
        self.loc & !SEEN
    }
}

/// The committed state of one change topic, kept current by tailing it.
pub struct Tracked {
    consumer: BaseConsumer,
    topic: String,
    partitions: Vec<i32>,
    entries: KeyMap<Entry>,
}

fn consumer(kafka: &KafkaConfig, purpose: &str) -> Result<BaseConsumer, KafkaError> {
    client_config(kafka)
        .set("group.id", format!("sluice-{purpose}-{}", uuid::Uuid::new_v4().simple()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(|e| retryable("create state reader", e))
}

/// Reading is always worth retrying: a failed read changed nothing, and the run starts over
/// from the committed state. (Fencing and authorization errors surface on the producer.)
fn retryable(operation: &'static str, source: rdkafka::error::KafkaError) -> KafkaError {
    KafkaError::Retryable { operation, source }
}

fn timed_out(operation: &'static str) -> KafkaError {
    KafkaError::Retryable {
        operation,
        source: rdkafka::error::KafkaError::MessageConsumption(rdkafka::types::RDKafkaErrorCode::OperationTimedOut),
    }
}

impl Tracked {
    /// Assign every partition of `topic` from its beginning; nothing is read until
    /// [`Tracked::catch_up`]. Blocking.
    pub fn new(kafka: &KafkaConfig, topic: &str) -> Result<Tracked, KafkaError> {
        let consumer = consumer(kafka, "diff-state")?;
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).map_err(|e| retryable("fetch metadata", e))?;
        let partitions: Vec<i32> = metadata.topics().iter().flat_map(|t| t.partitions()).map(|p| p.id()).collect();
        let mut assignment = TopicPartitionList::new();
        for &p in &partitions {
            assignment.add_partition_offset(topic, p, Offset::Beginning).expect("new partition");
        }
        consumer.assign(&assignment).map_err(|e| retryable("assign", e))?;
        Ok(Tracked { consumer, topic: topic.to_string(), partitions, entries: KeyMap::default() })
    }

    /// Read every record committed since the last call (on the first call: the whole topic),
    /// up to the end offsets seen now. Blocking; gives up (retryable) after `deadline`.
    pub fn catch_up(&mut self, deadline: Duration) -> Result<u64, KafkaError> {
        let mut ends = Vec::new();
        for &p in &self.partitions {
            let (low, high) =
                self.consumer.fetch_watermarks(&self.topic, p, Duration::from_secs(10)).map_err(|e| retryable("fetch watermarks", e))?;
            if high > low {
                ends.push((p, high));
            }
        }
        let started = Instant::now();
        let mut applied = 0u64;
        let mut check = true;
        loop {
            // Positions, not message offsets: they also move past transaction markers. Asking
            // for them costs a round through librdkafka, so only when idle, near a partition's
            // end, or every 10000 records.
            if check {
                let positions = self.consumer.position().map_err(|e| retryable("position", e))?;
                let done = ends.iter().all(|&(p, end)| {
                    matches!(positions.find_partition(&self.topic, p).map(|x| x.offset()), Some(Offset::Offset(o)) if o >= end)
                });
                if done {
                    return Ok(applied);
                }
            }
            match self.consumer.poll(Duration::from_millis(20)) {
                Some(message) => {
                    let message = message.map_err(|e| retryable("read state", e))?;
                    apply(&mut self.entries, &message);
                    applied += 1;
                    let near_end = ends.iter().any(|&(p, end)| p == message.partition() && message.offset() + 2 >= end);
                    check = near_end || applied.is_multiple_of(10_000);
                }
                None => check = true,
            }
            if started.elapsed() > deadline {
                return Err(timed_out("read change topic to its end"));
            }
        }
    }
}

impl Tracked {
    /// The committed state of the change topic `topic`, read to its end: [`Tracked::new`] and
    /// [`Tracked::catch_up`], off the async threads. What `diff` mode starts from, and what a
    /// reconciliation and `sluice plan` compare with.
    pub async fn load(kafka: &KafkaConfig, topic: &str) -> Result<Tracked, ModelError> {
        let (kafka, topic) = (kafka.clone(), topic.to_string());
        let tracked = tokio::task::spawn_blocking(move || Tracked::new(&kafka, &topic)).await.expect("does not panic")?;
        tracked.caught_up().await
    }

    /// This state caught up with what was committed since (within [`READ_DEADLINE`]), off the
    /// async threads. Takes the state by value because it moves into a blocking task and back.
    pub async fn caught_up(self) -> Result<Tracked, ModelError> {
        tokio::task::spawn_blocking(move || {
            let mut tracked = self;
            tracked.catch_up(READ_DEADLINE).map(|_| tracked)
        })
        .await
        .expect("state reader does not panic")
        .map_err(ModelError::from)
    }
}

/// Apply one committed record of the change topic to the state.
fn apply(entries: &mut KeyMap<Entry>, message: &impl Message) {
    let Some(key) = message.key() else { return };
    let hash = key_hash(key);
    let mut deleted = message.payload().is_none();
    let mut row_hash = 0;
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            match header.key {
                sluice_kafka::headers::OP => deleted |= header.value == Some(b"d".as_slice()),
                ROW_HASH_HEADER => {
                    row_hash =
                        header.value.and_then(|v| std::str::from_utf8(v).ok()).and_then(|v| u64::from_str_radix(v, 16).ok()).unwrap_or(0)
                }
                _ => {}
            }
        }
    }
    if deleted {
        entries.remove(&hash);
    } else {
        // An event without a row hash (written by another mode) hashes to 0: the next diff
        // sees it as changed and re-emits it with a hash, which is the safe direction.
        entries.insert(hash, Entry { row_hash, loc: pack_loc(message.partition(), message.offset()) });
    }
}

impl Tracked {
    /// Number of rows in the last emitted state.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no row has been emitted (or all were deleted).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Mark `hash` as seen by the current scan; returns its entry and whether it was already
    /// seen (a duplicate key), or `None` for a key not in the state.
    pub fn see(&mut self, hash: u64) -> Option<(Entry, bool)> {
        let entry = self.entries.get_mut(&hash)?;
        let already = entry.loc & SEEN != 0;
        entry.loc |= SEEN;
        Some((*entry, already))
    }

    /// Locations of the rows the current scan did not see (the deletes), clearing every mark.
    pub fn take_unseen(&mut self) -> Vec<u64> {
        let mut unseen = Vec::new();
        for entry in self.entries.values_mut() {
            if entry.loc & SEEN == 0 {
                unseen.push(entry.loc);
            }
            entry.loc &= !SEEN;
        }
        unseen
    }

    /// Clear every seen mark (after a scan that failed half way).
    pub fn clear_marks(&mut self) {
        for entry in self.entries.values_mut() {
            entry.loc &= !SEEN;
        }
    }

    /// Capacity of the table, for memory accounting.
    pub fn capacity(&self) -> usize {
        self.entries.capacity()
    }
}

/// A record read back by location: its key and payload bytes.
pub struct Stored {
    /// The record key, exactly as written.
    pub key: Vec<u8>,
    /// The event (`None` for a tombstone).
    pub payload: Option<Vec<u8>>,
}

/// Read the records at `locs` of `topic`. Per partition, reads from the lowest to the highest
/// wanted offset and keeps the wanted ones: one sequential read instead of a seek per record,
/// which is what a local broker serves fastest. Blocking.
pub fn fetch_records(kafka: &KafkaConfig, topic: &str, locs: &[u64], deadline: Duration) -> Result<KeyMap<Stored>, KafkaError> {
    let mut out = KeyMap::default();
    if locs.is_empty() {
        return Ok(out);
    }
    let mut wanted: KeyMap<()> = KeyMap::default();
    let mut ranges: HashMap<i32, (i64, i64)> = HashMap::new();
    for &loc in locs {
        let (p, o) = unpack_loc(loc);
        wanted.insert(pack_loc(p, o), ());
        let range = ranges.entry(p).or_insert((o, o));
        range.0 = range.0.min(o);
        range.1 = range.1.max(o);
    }
    let consumer = consumer(kafka, "diff-images")?;
    let mut assignment = TopicPartitionList::new();
    for (&p, &(low, _)) in &ranges {
        assignment.add_partition_offset(topic, p, Offset::Offset(low)).expect("new partition");
    }
    consumer.assign(&assignment).map_err(|e| retryable("assign", e))?;
    let started = Instant::now();
    // A partition is done once read past its highest wanted offset: a wanted record that did
    // not come (compacted away by a newer one) is not waited for.
    let mut done: HashMap<i32, ()> = HashMap::new();
    while out.len() < wanted.len() && done.len() < ranges.len() {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.map_err(|e| retryable("read previous images", e))?;
            let loc = pack_loc(message.partition(), message.offset());
            if wanted.contains_key(&loc) {
                out.insert(loc, Stored { key: message.key().unwrap_or_default().to_vec(), payload: message.payload().map(<[u8]>::to_vec) });
            }
            if ranges.get(&message.partition()).is_some_and(|&(_, high)| message.offset() >= high) {
                done.insert(message.partition(), ());
            }
        }
        if started.elapsed() > deadline {
            return Err(timed_out("read previous row images"));
        }
    }
    Ok(out)
}

/// Read back the records at `locs` of `topic` ([`fetch_records`] off the async threads, within
/// [`READ_DEADLINE`]): the previous images of changed and deleted keys.
pub async fn previous_records(kafka: &KafkaConfig, topic: &str, locs: Vec<u64>) -> Result<KeyMap<Stored>, ModelError> {
    let (kafka, topic) = (kafka.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || fetch_records(&kafka, &topic, &locs, READ_DEADLINE))
        .await
        .expect("image reader does not panic")
        .map_err(ModelError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_pack_and_unpack() {
        for (p, o) in [(0, 0), (2, 12345), (31, (1 << 47) + 3)] {
            assert_eq!(unpack_loc(pack_loc(p, o)), (p, o));
            assert_eq!(unpack_loc(pack_loc(p, o) | SEEN), (p, o));
        }
    }

    #[test]
    fn entry_is_small() {
        assert_eq!(std::mem::size_of::<(u64, Entry)>(), 24);
    }
}

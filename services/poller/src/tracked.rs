//! The last emitted state of a model, rebuilt from its own compacted change topic: what `diff`
//! mode compares each run with, what a cursor model decides `c`/`u` and reads `before` images
//! by, the keys a reconciliation checks and the expiries a cursor sweep emits.
//!
//! Why the change topic and not a separate state topic: the change topic *is* the last emitted
//! state (the latest event per key is the row as destinations know it), and it is written in
//! the same Kafka transaction as everything else, so the two can never disagree. Reading it
//! `read_committed` after the producer fenced older instances gives exactly the committed
//! state; nothing lives on local disk. After that, [`Keys::apply`] keeps it current from the
//! records a transaction committed and where they landed (the committer does it), so the state
//! is always the committed topic without reading it again.
//!
//! Memory: per tracked row we keep the xxh3 hash of its key bytes (the map key), the xxh3 hash
//! of its row values (carried on each event in the [`ROW_HASH_HEADER`] header, so rebuilding
//! decodes no Avro) and where its latest event sits (partition and offset packed in 64 bits),
//! so the previous image can be read back for `before` and `changed`. 24 bytes per entry plus
//! the hash table's control byte and spare capacity: 27–55 bytes per row (measured by
//! `benches/poller_vs_copy.rs` and `benches/cursor_images.rs`); a model with `expire` keeps a
//! second table of expiry instants (16 bytes per entry, 19–37 per row). A 64-bit key hash
//! collides with probability ~n²/2⁶⁵ (3·10⁻⁸ at one million rows); a collision would merge two
//! keys, which we accept and document.
//!
//! Reading images back ([`ImageReader`]): the wanted offsets of each partition are sorted and
//! coalesced into runs (offsets closer than the reader's gap are read through, farther ones are
//! sought to), so a page whose previous images are scattered over a large topic reads a few
//! short ranges instead of the whole span between its lowest and highest offset.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use sluice_core::config::KafkaConfig;
use sluice_kafka::{client_config, KafkaError};

use crate::error::ModelError;
use crate::expiry::{parse_header, EXPIRES_AT_HEADER};
use crate::keys::key_hash;

/// Header carrying the xxh3 hash (16 hex digits) of an event's `after` row, so the tracked
/// state is rebuilt from headers alone. Absent on deletes and tombstones.
pub use sluice_kafka::headers::ROW_HASH as ROW_HASH_HEADER;

/// How long reading the change topic may take before the run is retried.
pub const READ_DEADLINE: Duration = Duration::from_secs(300);

/// Wanted offsets of one partition closer than this are read through rather than sought to
/// ([`ImageReader`]): below it, one sequential fetch serves both; above it, a seek costs less
/// than reading the records in between (measured by `benches/cursor_images.rs`).
pub const DEFAULT_GAP: i64 = 4096;

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

/// What one committed record of a change topic says about its key, read from its key bytes
/// and headers (no Avro decoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// [`key_hash`] of the record key.
    pub key_hash: u64,
    /// A `d` event or a tombstone: the key leaves the state.
    pub deleted: bool,
    /// The [`ROW_HASH_HEADER`] (0 when absent).
    pub row_hash: u64,
    /// The [`EXPIRES_AT_HEADER`], when present.
    pub expires_at: Option<i64>,
}

impl Committed {
    /// Read a record's key, whether it has a payload and its headers.
    pub fn read(key: &[u8], has_payload: bool, headers: Option<&impl Headers>) -> Committed {
        let mut committed = Committed { key_hash: key_hash(key), deleted: !has_payload, row_hash: 0, expires_at: None };
        for header in headers.into_iter().flat_map(|h| h.iter()) {
            let Some(value) = header.value else { continue };
            match header.key {
                sluice_kafka::headers::OP => committed.deleted |= value == b"d",
                ROW_HASH_HEADER => {
                    committed.row_hash = std::str::from_utf8(value).ok().and_then(|v| u64::from_str_radix(v, 16).ok()).unwrap_or(0)
                }
                EXPIRES_AT_HEADER => committed.expires_at = parse_header(value),
                _ => {}
            }
        }
        committed
    }
}

/// The keys live in a change topic: per key, its [`Entry`] and (models with `expire`) when it
/// stops being live. See the module doc for memory.
pub struct Keys {
    entries: KeyMap<Entry>,
    /// Expiry instants (ms), kept for models with `expire`. A live key missing here had no
    /// [`EXPIRES_AT_HEADER`] (written before the model had `expire`): see
    /// [`Keys::without_expiry`].
    expiries: Option<KeyMap<i64>>,
    /// No instant in `expiries` is earlier (a lower bound: a removal can leave it early, and
    /// the next [`Keys::due`] recomputes it).
    next_due: i64,
}

impl Keys {
    /// No keys; `expiry`: keep expiry instants too.
    pub fn new(expiry: bool) -> Keys {
        Keys { entries: KeyMap::default(), expiries: expiry.then(KeyMap::default), next_due: i64::MAX }
    }

    /// Apply one committed record, which sits at `loc` ([`pack_loc`]).
    pub fn apply(&mut self, record: Committed, loc: u64) {
        let hash = record.key_hash;
        if record.deleted {
            self.entries.remove(&hash);
            if let Some(expiries) = &mut self.expiries {
                expiries.remove(&hash);
            }
            return;
        }
        // An event without a row hash (written by a mode that wrote none) hashes to 0: a diff
        // sees it as changed and re-emits it with a hash, which is the safe direction.
        self.entries.insert(hash, Entry { row_hash: record.row_hash, loc });
        if let Some(expiries) = &mut self.expiries {
            match record.expires_at {
                Some(at) => {
                    expiries.insert(hash, at);
                    self.next_due = self.next_due.min(at);
                }
                None => {
                    expiries.remove(&hash);
                }
            }
        }
    }

    /// Apply a record read from the topic.
    fn apply_message(&mut self, message: &impl Message) {
        let Some(key) = message.key() else { return };
        self.apply(Committed::read(key, message.payload().is_some(), message.headers()), pack_loc(message.partition(), message.offset()));
    }

    /// Number of live keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is live.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry of a live key.
    pub fn get(&self, hash: u64) -> Option<Entry> {
        self.entries.get(&hash).copied()
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

    /// Locations of the live keys whose expiry is at or before `now_ms`, in no particular order.
    /// Costs one look at a number while nothing is due, a pass over the expiries when something
    /// is.
    pub fn due(&mut self, now_ms: i64) -> Vec<u64> {
        let Some(expiries) = &self.expiries else { return Vec::new() };
        if self.next_due > now_ms {
            return Vec::new();
        }
        let mut due = Vec::new();
        let mut next = i64::MAX;
        for (hash, &at) in expiries {
            if at <= now_ms {
                if let Some(entry) = self.entries.get(hash) {
                    due.push(entry.loc());
                }
            } else {
                next = next.min(at);
            }
        }
        // What is due now leaves with its delete; until then it is due again.
        self.next_due = if due.is_empty() { next } else { now_ms.min(next) };
        due
    }

    /// Live keys with no known expiry (hash, location) when expiries are kept: their latest
    /// event was written before the model had `expire`. Their images are read back once to
    /// learn it ([`Keys::set_expiry`]).
    pub fn without_expiry(&self) -> Vec<(u64, u64)> {
        let Some(expiries) = &self.expiries else { return Vec::new() };
        self.entries.iter().filter(|(hash, _)| !expiries.contains_key(hash)).map(|(&hash, entry)| (hash, entry.loc())).collect()
    }

    /// Set the expiry of a live key (learnt from its image).
    pub fn set_expiry(&mut self, hash: u64, expires_at: i64) {
        if let (Some(expiries), true) = (&mut self.expiries, self.entries.contains_key(&hash)) {
            expiries.insert(hash, expires_at);
            self.next_due = self.next_due.min(expires_at);
        }
    }

    /// Bytes held by the tables (bucket and control byte per slot of capacity), for memory
    /// accounting.
    pub fn table_bytes(&self) -> usize {
        let slot = |value: usize| std::mem::size_of::<u64>() + value + 1;
        self.entries.capacity() * slot(std::mem::size_of::<Entry>())
            + self.expiries.as_ref().map_or(0, |e| e.capacity() * slot(std::mem::size_of::<i64>()))
    }
}

/// The committed state of one change topic, kept current by tailing it.
pub struct Tracked {
    consumer: BaseConsumer,
    topic: String,
    partitions: Vec<i32>,
    keys: Keys,
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

/// The partitions of `topic`.
fn partitions(consumer: &BaseConsumer, topic: &str) -> Result<Vec<i32>, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).map_err(|e| retryable("fetch metadata", e))?;
    Ok(metadata.topics().iter().flat_map(|t| t.partitions()).map(|p| p.id()).collect())
}

impl Tracked {
    /// Assign every partition of `topic` from its beginning; nothing is read until
    /// [`Tracked::catch_up`]. `expiry`: keep expiry instants too. Blocking.
    pub fn new(kafka: &KafkaConfig, topic: &str, expiry: bool) -> Result<Tracked, KafkaError> {
        let consumer = consumer(kafka, "diff-state")?;
        let partitions = partitions(&consumer, topic)?;
        let mut assignment = TopicPartitionList::new();
        for &p in &partitions {
            assignment.add_partition_offset(topic, p, Offset::Beginning).expect("new partition");
        }
        consumer.assign(&assignment).map_err(|e| retryable("assign", e))?;
        Ok(Tracked { consumer, topic: topic.to_string(), partitions, keys: Keys::new(expiry) })
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
                    self.keys.apply_message(&message);
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
    /// reconciliation, a cursor model and `sluice plan` compare with. `expiry`: keep expiry
    /// instants too.
    pub async fn load(kafka: &KafkaConfig, topic: &str, expiry: bool) -> Result<Tracked, ModelError> {
        let (kafka, topic) = (kafka.clone(), topic.to_string());
        let tracked = tokio::task::spawn_blocking(move || Tracked::new(&kafka, &topic, expiry)).await.expect("does not panic")?;
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

    /// The keys, without the reader (which stops fetching): for a state kept current from
    /// committed records ([`Keys::apply`]) rather than by tailing the topic.
    pub fn into_keys(self) -> Keys {
        self.keys
    }

    /// The keys read so far.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The keys read so far, to mark or change.
    pub fn keys_mut(&mut self) -> &mut Keys {
        &mut self.keys
    }

    /// Number of rows in the last emitted state.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no row has been emitted (or all were deleted).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A record read back by location: its key and payload bytes.
pub struct Stored {
    /// The record key, exactly as written.
    pub key: Vec<u8>,
    /// The event (`None` for a tombstone).
    pub payload: Option<Vec<u8>>,
}

/// The ranges of offsets to read for `locs`, per partition: the wanted offsets sorted and
/// merged into `(first, last)` runs wherever two are at most `gap` apart.
pub fn runs(locs: &[u64], gap: i64) -> BTreeMap<i32, Vec<(i64, i64)>> {
    let mut offsets: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for &loc in locs {
        let (p, o) = unpack_loc(loc);
        offsets.entry(p).or_default().push(o);
    }
    offsets
        .into_iter()
        .map(|(p, mut wanted)| {
            wanted.sort_unstable();
            wanted.dedup();
            let mut runs: Vec<(i64, i64)> = Vec::new();
            for o in wanted {
                match runs.last_mut() {
                    Some(run) if o - run.1 <= gap => run.1 = o,
                    _ => runs.push((o, o)),
                }
            }
            (p, runs)
        })
        .collect()
}

/// Reads records of one topic back by location, with one consumer kept for its life (a new
/// consumer per read costs a group id, metadata and connections). See the module doc for how
/// scattered offsets are read.
pub struct ImageReader {
    consumer: BaseConsumer,
    topic: String,
    gap: i64,
}

impl ImageReader {
    /// A reader of `topic`, reading through gaps up to [`DEFAULT_GAP`]. Blocking.
    pub fn new(kafka: &KafkaConfig, topic: &str) -> Result<ImageReader, KafkaError> {
        let consumer = client_config(kafka)
            .set("group.id", format!("sluice-images-{}", uuid::Uuid::new_v4().simple()))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("isolation.level", "read_committed")
            // A fetch that reached a partition's end is held by the broker up to this long
            // (500 ms by default), and a seek's fetch waits behind it: keep it short, a read
            // back wants records that exist.
            .set("fetch.wait.max.ms", "10")
            .create()
            .map_err(|e| retryable("create image reader", e))?;
        Ok(ImageReader { consumer, topic: topic.to_string(), gap: DEFAULT_GAP })
    }

    /// This reader with another gap (the benchmark compares gaps; `i64::MAX` reads each
    /// partition's whole span, as a reader without seeks would).
    pub fn with_gap(self, gap: i64) -> ImageReader {
        ImageReader { gap, ..self }
    }

    /// Read the records at `locs`. Each partition starts at its first run; past the end of a
    /// run it seeks to the next, and it is done past its last. A wanted record that does not
    /// come (compacted away by a newer one) is not waited for. Blocking; gives up (retryable)
    /// after `deadline`.
    pub fn fetch(&self, locs: &[u64], deadline: Duration) -> Result<KeyMap<Stored>, KafkaError> {
        let mut out = KeyMap::default();
        if locs.is_empty() {
            return Ok(out);
        }
        let wanted: KeyMap<()> = locs.iter().map(|&loc| (loc & !SEEN, ())).collect();
        let runs = runs(locs, self.gap);
        let mut assignment = TopicPartitionList::new();
        for (&p, runs) in &runs {
            assignment.add_partition_offset(&self.topic, p, Offset::Offset(runs[0].0)).expect("new partition");
        }
        self.consumer.assign(&assignment).map_err(|e| retryable("assign", e))?;
        let read = self.read_runs(&runs, &wanted, &mut out, deadline);
        // Unassigned, the consumer stops fetching (and buffering) until the next read.
        self.consumer.unassign().map_err(|e| retryable("unassign", e))?;
        read.map(|()| out)
    }

    fn read_runs(&self, runs: &BTreeMap<i32, Vec<(i64, i64)>>, wanted: &KeyMap<()>, out: &mut KeyMap<Stored>, deadline: Duration) -> Result<(), KafkaError> {
        let started = Instant::now();
        // The run each partition is in; a partition past its last run is removed.
        let mut current: HashMap<i32, usize> = runs.keys().map(|&p| (p, 0)).collect();
        while !current.is_empty() && out.len() < wanted.len() {
            if started.elapsed() > deadline {
                return Err(timed_out("read previous row images"));
            }
            let Some(message) = self.consumer.poll(Duration::from_millis(100)) else { continue };
            let message = message.map_err(|e| retryable("read previous images", e))?;
            let (p, o) = (message.partition(), message.offset());
            let Some(&index) = current.get(&p) else { continue };
            let (low, high) = runs[&p][index];
            if o < low {
                continue; // fetched before the last seek
            }
            let loc = pack_loc(p, o);
            if wanted.contains_key(&loc) {
                out.insert(loc, Stored { key: message.key().unwrap_or_default().to_vec(), payload: message.payload().map(<[u8]>::to_vec) });
            }
            if o >= high {
                match runs[&p].get(index + 1) {
                    Some(&(next, _)) => {
                        self.consumer.seek(&self.topic, p, Offset::Offset(next), Duration::from_secs(10)).map_err(|e| retryable("seek", e))?;
                        current.insert(p, index + 1);
                    }
                    None => {
                        current.remove(&p);
                    }
                }
            }
        }
        Ok(())
    }

    /// [`ImageReader::fetch`] off the async threads, within [`READ_DEADLINE`].
    pub async fn fetch_async(self: &Arc<Self>, locs: Vec<u64>) -> Result<KeyMap<Stored>, ModelError> {
        let reader = Arc::clone(self);
        tokio::task::spawn_blocking(move || reader.fetch(&locs, READ_DEADLINE)).await.expect("image reader does not panic").map_err(ModelError::from)
    }
}

/// Read back the records at `locs` of `topic` with a reader of its own ([`ImageReader::fetch`]
/// off the async threads, within [`READ_DEADLINE`]): the previous images of changed and
/// deleted keys.
pub async fn previous_records(kafka: &KafkaConfig, topic: &str, locs: Vec<u64>) -> Result<KeyMap<Stored>, ModelError> {
    if locs.is_empty() {
        return Ok(KeyMap::default());
    }
    let (kafka, topic) = (kafka.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || ImageReader::new(&kafka, &topic)?.fetch(&locs, READ_DEADLINE))
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

    #[test]
    fn scattered_offsets_coalesce_into_runs_per_partition() {
        let locs = [pack_loc(0, 50), pack_loc(0, 10), pack_loc(1, 7), pack_loc(0, 12), pack_loc(0, 10), pack_loc(0, 5000), pack_loc(0, 5100) | SEEN];
        let runs = runs(&locs, 100);
        assert_eq!(runs[&0], vec![(10, 50), (5000, 5100)], "sorted, deduplicated, merged within the gap, sought across it");
        assert_eq!(runs[&1], vec![(7, 7)]);
        assert_eq!(super::runs(&locs, i64::MAX)[&0], vec![(10, 5100)], "an unbounded gap reads the whole span");
        assert_eq!(super::runs(&locs, 0)[&0].len(), 5, "no gap: one run per offset");
    }

    fn committed(hash: u64, deleted: bool, expires_at: Option<i64>) -> Committed {
        Committed { key_hash: hash, deleted, row_hash: hash * 10, expires_at }
    }

    #[test]
    fn keys_follow_committed_records_and_their_expiries() {
        let mut keys = Keys::new(true);
        keys.apply(committed(1, false, Some(100)), pack_loc(0, 1));
        keys.apply(committed(2, false, Some(crate::expiry::NEVER)), pack_loc(0, 2));
        keys.apply(committed(3, false, None), pack_loc(1, 1)); // written before the model had expire
        keys.apply(committed(4, false, Some(50)), pack_loc(1, 2));
        keys.apply(committed(4, true, Some(50)), pack_loc(1, 3)); // its delete
        assert_eq!(keys.len(), 3);
        assert_eq!(keys.get(1), Some(Entry { row_hash: 10, loc: pack_loc(0, 1) }));
        assert_eq!(keys.get(4), None, "a delete removes the key");
        assert_eq!(keys.due(99), Vec::<u64>::new(), "nothing due yet");
        assert_eq!(keys.due(100), vec![pack_loc(0, 1)], "due from its instant on");
        assert_eq!(keys.due(100), vec![pack_loc(0, 1)], "due until its delete is committed");
        keys.apply(committed(1, true, None), pack_loc(0, 3));
        assert!(keys.due(i64::MAX - 1).is_empty(), "never is never due");
        assert_eq!(keys.without_expiry(), vec![(3, pack_loc(1, 1))]);
        keys.set_expiry(3, 200);
        assert!(keys.without_expiry().is_empty());
        assert_eq!(keys.due(200), vec![pack_loc(1, 1)]);
        // A newer event of a key moves its location and its expiry.
        keys.apply(committed(3, false, Some(500)), pack_loc(1, 9));
        assert!(keys.due(499).is_empty());
        assert_eq!(keys.due(500), vec![pack_loc(1, 9)]);
        let mut plain = Keys::new(false);
        plain.apply(committed(1, false, Some(1)), pack_loc(0, 1));
        assert!(plain.due(i64::MAX).is_empty() && plain.without_expiry().is_empty(), "no expiries kept without expire");
    }

    #[test]
    fn a_record_is_read_from_its_headers() {
        let headers = sluice_kafka::headers::owned([
            (sluice_kafka::headers::OP, "u"),
            (ROW_HASH_HEADER, "00000000000000ff"),
            (EXPIRES_AT_HEADER, "1234"),
        ]);
        let read = Committed::read(b"k", true, Some(&headers));
        assert_eq!(read, Committed { key_hash: key_hash(b"k"), deleted: false, row_hash: 255, expires_at: Some(1234) });
        let delete = sluice_kafka::headers::owned([(sluice_kafka::headers::OP, "d")]);
        assert!(Committed::read(b"k", true, Some(&delete)).deleted);
        assert!(Committed::read(b"k", false, None::<&rdkafka::message::OwnedHeaders>).deleted, "a tombstone");
    }
}

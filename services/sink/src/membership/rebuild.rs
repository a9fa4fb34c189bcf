//! The stage's state at start, rebuilt from the topics: nothing of it lives on disk.
//!
//! Every partition of the lists' change topics (the entries) is read from its low to its high
//! watermark, and every partition of the syncs' change topics (the members) from its low
//! watermark to the group's *frontier* there (the highest offset it ever committed, as the order
//! guard reads it: `crate::guard::load`), as `read_committed`, and applied in offset order,
//! exactly as the live path would ([`super::Stage::observe`], [`super::Stage::admit_list`]).
//!
//! Why members stop at the frontier: a recompute reads back its row's record at the location the
//! index holds, and sends it. Below the frontier every record reached the destination; above it,
//! the records are still to come through the row's lane, in order, and are indexed when they are
//! admitted there. So the location is always a record the lane has been handed (or the
//! destination has), never one ahead of records of the same row still queued for the lane: a
//! recompute never sends a newer state that an older one, delivered after it, would undo — the
//! order guard's promise (no key goes backwards) holds for recomputes too. The entries, in
//! contrast, are the list's latest state: that is what every decision must see.
//!
//! What the group has not committed yet will be delivered again after this:
//! - an audience record below the frontier delivered again (a replay) leaves the index alone (it
//!   holds that row's latest state below the frontier) and is decided at send time like any
//!   record; one above it is indexed when admitted;
//! - a list record delivered again is not applied again, but owes the recomputes it caused when
//!   it was first applied (they may not have finished before the last stop: that is what its
//!   uncommitted offset says). The rebuild applies the same records in the same order, so it
//!   sees the same people get on or off the list, and records the rows to recompute by the list
//!   record's position ([`Rebuilt::replay`]). Rows whose own latest record is still to be
//!   delivered are left out: that record is decided at send time with the state as it is then.

use std::collections::HashMap as StdHashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use sluice_core::config::KafkaConfig;
use sluice_kafka::compacted::{scan, Range};
use sluice_kafka::groups::{self, Committed};
use sluice_kafka::{client_config, KafkaError};
use tokio::sync::mpsc;

use super::state::{Member, State, Target};
use super::{entry_of, presence, ListSpec, Presence, SyncSpec};
use crate::hashes::KeyHash;
use crate::schemas::SchemaCache;
use crate::transform::{consents, current};
use crate::SinkError;

/// How long reading one topic to its end may take.
const SCAN_DEADLINE: Duration = Duration::from_secs(600);

/// (topic, partition)
pub(super) type Partition = (String, i32);

/// What the rebuild leaves the stage.
pub(super) struct Rebuilt {
    pub state: State,
    /// Per partition of the syncs' topics: the offset the members are complete up to (the
    /// group's frontier).
    pub members_to: StdHashMap<Partition, i64>,
    /// Per partition of the lists' topics: the offset the entries are complete up to (the high
    /// watermark then).
    pub entries_to: StdHashMap<Partition, i64>,
    /// Recomputes owed by list records the group will deliver again, by (topic, partition,
    /// offset); only records that owe some are here.
    pub replay: StdHashMap<(String, i32, i64), Vec<Target>>,
    /// Every partition of the lists' topics.
    pub list_partitions: Vec<Partition>,
    pub records: u64,
    /// Records that could not be decoded (they are dead-lettered when the group delivers them).
    pub unreadable: u64,
}

/// One partition's extent and the group's committed position in it.
struct Extent {
    topic: String,
    partition: i32,
    low: i64,
    high: i64,
    committed: Committed,
}

impl Extent {
    /// Where the members read of this partition ends: the group's frontier (nothing when the
    /// group never committed here: every record is then delivered, and indexed, again).
    fn members_end(&self) -> i64 {
        self.committed.frontier().unwrap_or(self.low).clamp(self.low, self.high)
    }
}

/// A record as read, owned so it can cross from the blocking reader to the decoder.
struct Raw {
    partition: i32,
    offset: i64,
    key: Vec<u8>,
    payload: Option<Vec<u8>>,
}

/// Read the syncs' and the lists' topics to their ends; see the module docs.
pub(super) async fn rebuild(
    kafka: &KafkaConfig,
    group: &str,
    syncs: &[SyncSpec],
    lists: &[ListSpec],
    route: impl Fn(&str, &[u8]) -> u16,
    schemas: &SchemaCache,
) -> Result<Rebuilt, SinkError> {
    let mut topics: Vec<String> = Vec::new();
    for topic in syncs.iter().map(|s| &s.topic).chain(lists.iter().map(|l| &l.topic)) {
        if !topics.contains(topic) {
            topics.push(topic.clone());
        }
    }
    let extents = {
        let (kafka, group) = (kafka.clone(), group.to_string());
        tokio::task::spawn_blocking(move || extents(&kafka, &group, &topics)).await.expect("extents reader does not panic").map_err(SinkError::Kafka)?
    };
    let committed: StdHashMap<Partition, Option<i64>> = extents.iter().map(|e| ((e.topic.clone(), e.partition), e.committed.offset)).collect();
    let is_list = |topic: &str| lists.iter().any(|l| l.topic == topic);
    let is_sync = |topic: &str| syncs.iter().any(|s| s.topic == topic);
    let mut rebuilt = Rebuilt {
        state: State::new(syncs.iter().map(|s| s.lists.clone()).collect(), lists.len()),
        members_to: extents.iter().filter(|e| is_sync(&e.topic)).map(|e| ((e.topic.clone(), e.partition), e.members_end())).collect(),
        entries_to: extents.iter().filter(|e| is_list(&e.topic)).map(|e| ((e.topic.clone(), e.partition), e.high)).collect(),
        replay: StdHashMap::new(),
        list_partitions: extents.iter().filter(|e| is_list(&e.topic)).map(|e| (e.topic.clone(), e.partition)).collect(),
        records: 0,
        unreadable: 0,
    };
    // Members first: a list record's replay needs the rows it would recompute.
    for (index, sync) in syncs.iter().enumerate() {
        let mut records = read(kafka, &sync.topic, &extents, Extent::members_end);
        while let Some(chunk) = records.recv().await {
            for raw in chunk? {
                let Some(decoded) = rebuilt.decode(&raw, schemas).await? else { continue };
                let Some(image) = current(&decoded) else { continue };
                let member = match presence(&sync.config, decoded.event.op, consents(sync.config.consent.as_ref(), &image), &image) {
                    Presence::Present { identity, .. } => Some(Member { identity, offset: raw.offset, partition: raw.partition, lane: route(&sync.topic, &raw.key) }),
                    Presence::Gone => None,
                    Presence::Untracked => continue,
                };
                rebuilt.state.set_member(index, KeyHash::of(&raw.key), member);
            }
        }
    }
    let topic_of_sync: Vec<&str> = syncs.iter().map(|s| s.topic.as_str()).collect();
    let mut list_topics: Vec<&str> = Vec::new();
    for list in lists {
        if !list_topics.contains(&list.topic.as_str()) {
            list_topics.push(&list.topic);
        }
    }
    for topic in list_topics {
        let mut records = read(kafka, topic, &extents, |e| e.high);
        while let Some(chunk) = records.recv().await {
            for raw in chunk? {
                let Some(decoded) = rebuilt.decode(&raw, schemas).await? else { continue };
                let row = KeyHash::of(&raw.key);
                let replayed = delivered_again(committed.get(&(topic.to_string(), raw.partition)).copied().flatten(), raw.offset);
                for (list, spec) in lists.iter().enumerate().filter(|(_, l)| l.topic == topic) {
                    let changed = rebuilt.state.set_entry(list, row, entry_of(spec, &decoded));
                    if !replayed || changed.is_empty() {
                        continue;
                    }
                    // Rows whose latest record the group delivers again are decided then.
                    let targets = rebuilt.state.targets(list, &changed, |sync, member| {
                        !delivered_again(committed.get(&(topic_of_sync[sync].to_string(), member.partition)).copied().flatten(), member.offset)
                    });
                    if !targets.is_empty() {
                        rebuilt.replay.entry((topic.to_string(), raw.partition, raw.offset)).or_default().extend(targets);
                    }
                }
            }
        }
    }
    Ok(rebuilt)
}

/// Whether the group delivers the record at `offset` again, given the partition's committed
/// offset: at or after it, or anywhere when nothing was committed (the group then starts at the
/// beginning, `auto.offset.reset = earliest`; e.g. a list added to a sync that has been running
/// for months: every existing list record is delivered, and owes the removals of the members it
/// names).
fn delivered_again(committed: Option<i64>, offset: i64) -> bool {
    committed.is_none_or(|committed| offset >= committed)
}

impl Rebuilt {
    /// The event of a record, or `None` for a tombstone or a record that cannot be decoded
    /// (counted).
    async fn decode(&mut self, raw: &Raw, schemas: &SchemaCache) -> Result<Option<sluice_avro::DecodedEvent>, SinkError> {
        self.records += 1;
        let Some(payload) = &raw.payload else { return Ok(None) };
        match schemas.decode_event(payload).await.map_err(SinkError::Kafka)? {
            Ok(decoded) => Ok(Some(decoded)),
            Err(_) => {
                self.unreadable += 1;
                Ok(None)
            }
        }
    }
}

/// Every record of `topic` from its low watermark to `end`, in chunks, read on a blocking
/// thread while the caller decodes.
fn read(kafka: &KafkaConfig, topic: &str, extents: &[Extent], end: impl Fn(&Extent) -> i64) -> mpsc::Receiver<Result<Vec<Raw>, SinkError>> {
    const CHUNK: usize = 1024;
    let ranges: Vec<Range> = extents.iter().filter(|e| e.topic == topic).map(|e| Range { partition: e.partition, from: e.low, to: end(e) }).collect();
    let (tx, rx) = mpsc::channel(4);
    let (kafka, topic) = (kafka.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let mut chunk = Vec::with_capacity(CHUNK);
        let scanned = scan(&kafka, &topic, &ranges, SCAN_DEADLINE, |message| {
            chunk.push(Raw {
                partition: message.partition(),
                offset: message.offset(),
                key: message.key().map(<[u8]>::to_vec).unwrap_or_default(),
                payload: message.payload().map(<[u8]>::to_vec),
            });
            if chunk.len() == CHUNK {
                // The receiver only goes away when the rebuild failed; the scan then ends anyway.
                let _sent = tx.blocking_send(Ok(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK))));
            }
        });
        let last = match scanned {
            Ok(_) => Ok(chunk),
            Err(error) => Err(SinkError::Kafka(error)),
        };
        let _sent = tx.blocking_send(last);
    });
    rx
}

/// Partitions, watermarks and the group's committed positions of `topics`. Blocking.
fn extents(kafka: &KafkaConfig, group: &str, topics: &[String]) -> Result<Vec<Extent>, KafkaError> {
    let consumer: BaseConsumer = client_config(kafka)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|source| KafkaError::Fatal { operation: "create stage reader", source })?;
    let timeout = Duration::from_secs(10);
    let mut extents = Vec::new();
    for topic in topics {
        for partition in partitions(&consumer, topic)? {
            let (low, high) = consumer.fetch_watermarks(topic, partition, timeout).map_err(|source| KafkaError::Retryable { operation: "fetch watermarks", source })?;
            extents.push(Extent { topic: topic.clone(), partition, low, high, committed: Committed::default() });
        }
    }
    let all: Vec<Partition> = extents.iter().map(|e| (e.topic.clone(), e.partition)).collect();
    let committed = groups::committed_with(&consumer, &all)?;
    for extent in &mut extents {
        extent.committed = committed.get(&(extent.topic.clone(), extent.partition)).copied().unwrap_or_default();
    }
    Ok(extents)
}

/// A topic's partition ids; a topic created a moment ago may take a few metadata rounds to show
/// them.
fn partitions(consumer: &BaseConsumer, topic: &str) -> Result<Vec<i32>, KafkaError> {
    let started = Instant::now();
    loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(|source| KafkaError::Retryable { operation: "fetch metadata", source })?;
        let ids: Vec<i32> = metadata.topics().iter().flat_map(|t| t.partitions()).map(|p| p.id()).collect();
        if !ids.is_empty() || started.elapsed() > Duration::from_secs(10) {
            return Ok(ids);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_group_delivers_again() {
        assert!(delivered_again(Some(10), 10), "the committed offset is the next to deliver");
        assert!(delivered_again(Some(10), 11));
        assert!(!delivered_again(Some(10), 9), "finished before the stop");
        assert!(delivered_again(None, 0), "nothing committed: from the beginning");
        assert!(delivered_again(None, 1_000_000));
    }
}

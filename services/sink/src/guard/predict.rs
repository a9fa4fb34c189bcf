//! What a replay will do to one partition, decided exactly as the order guard will decide it
//! when the sink re-reads the partition: the plan of `sluice replay`.

use std::time::Duration;

use rdkafka::message::Message;
use sluice_core::config::KafkaConfig;
use sluice_kafka::compacted::{scan, Range};
use sluice_kafka::KafkaError;

use super::index::{key_hash, PartitionIndex, Verdict};
use super::kind_of;

/// How a replay of `from..frontier` of one partition will go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplayCounts {
    /// Records the sink will consider again: change events and deletes known only by their key
    /// (tombstones that follow their `d` event change nothing and are not counted).
    pub records: u64,
    /// Of those, the records the guard will finish without a request: a later state of their
    /// key is below the frontier, so the destination has it already.
    pub superseded: u64,
}

impl ReplayCounts {
    /// Records that will reach the destination again: each key of the range once, at the state
    /// the destination already has.
    pub fn reapplied(&self) -> u64 {
        self.records - self.superseded
    }
}

/// Predict a replay of `from..frontier` of `topic`'s `partition` (everything below `frontier`
/// reached the destination). `supersede` is false for `append` syncs. Reads the range twice:
/// once to learn what the guard will know, once to decide each record. Blocking.
pub fn predict_replay(
    kafka: &KafkaConfig,
    topic: &str,
    partition: i32,
    from: i64,
    frontier: i64,
    supersede: bool,
    deadline: Duration,
) -> Result<ReplayCounts, KafkaError> {
    let mut counts = ReplayCounts::default();
    if frontier <= from {
        return Ok(counts);
    }
    // The guard knows every state below the frontier; for the records of the range only the
    // states inside it matter (a superseding state is later, so inside), and the record just
    // before it (a tombstone at `from` follows its `d` event there).
    let mut index = PartitionIndex::default();
    let learn = Range { partition, from: (from - 1).max(0), to: frontier };
    scan(kafka, topic, &[learn], deadline, |message| {
        if let Some(key) = message.key() {
            index.learn(key_hash(key), message.offset(), kind_of(message));
        }
    })?;
    scan(kafka, topic, &[Range { partition, from, to: frontier }], deadline, |message| {
        let Some(key) = message.key() else { return };
        match index.decide(key_hash(key), message.offset(), kind_of(message), supersede, false) {
            Verdict::Tombstone => {}
            Verdict::Superseded => {
                counts.records += 1;
                counts.superseded += 1;
            }
            Verdict::Deliver | Verdict::KeyOnlyDelete => counts.records += 1,
        }
    })?;
    Ok(counts)
}

//! Which offsets may be committed.
//!
//! Records of one partition finish out of order (different keys go to different lanes, and a
//! lane may be retrying while another succeeds). The committable offset of a partition is the
//! end of its *contiguous prefix* of finished records: one past the last record before the first
//! unfinished one. Committing further would skip the unfinished record on restart.
//!
//! A partition that is revoked is forgotten: a late completion for it is ignored, so nothing is
//! ever committed for a partition this instance no longer owns.
//!
//! Each record in flight keeps its Kafka timestamp, so the age of the oldest unfinished record
//! (consumer lag in seconds, the `lag` module) is read here rather than tracked twice.

use std::collections::{BTreeMap, HashMap};

/// (topic, partition)
pub(crate) type Partition = (String, i32);

#[derive(Debug, Default)]
struct PartitionState {
    /// Offsets handed out and not finished yet, with their record's timestamp (ms).
    pending: BTreeMap<i64, i64>,
    /// One past the highest offset registered so far.
    next: Option<i64>,
    /// Last offset committed (or `None` before the first commit by this instance).
    committed: Option<i64>,
}

/// Offsets in flight per partition. Keyed by topic, then partition, so the per-record calls
/// (`register`, `finish`, `owns`) look up by `&str` without allocating.
#[derive(Debug, Default)]
pub(crate) struct OffsetTracker {
    topics: HashMap<String, HashMap<i32, PartitionState>>,
}

impl OffsetTracker {
    /// A record was consumed and is now in flight; `timestamp_ms` is its Kafka timestamp.
    pub(crate) fn register(&mut self, topic: &str, partition: i32, offset: i64, timestamp_ms: i64) {
        if !self.topics.contains_key(topic) {
            self.topics.insert(topic.to_string(), HashMap::new());
        }
        let state = self.topics.get_mut(topic).expect("just inserted").entry(partition).or_default();
        state.pending.insert(offset, timestamp_ms);
        state.next = Some(state.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    /// A record finished (applied, skipped, or dead-lettered and acknowledged). Ignored when
    /// the partition was revoked meanwhile.
    pub(crate) fn finish(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(state) = self.topics.get_mut(topic).and_then(|t| t.get_mut(&partition)) {
            state.pending.remove(&offset);
        }
    }

    /// Whether a record of this partition may still be worked on (not revoked).
    pub(crate) fn owns(&self, topic: &str, partition: i32) -> bool {
        self.topics.get(topic).is_some_and(|t| t.contains_key(&partition))
    }

    fn get(&self, (topic, partition): &Partition) -> Option<&PartitionState> {
        self.topics.get(topic).and_then(|t| t.get(partition))
    }

    /// The timestamp of the oldest record in flight (the first unfinished one of each partition:
    /// offsets of a partition are in time order), or `None` when nothing is.
    pub(crate) fn oldest_pending_ms(&self) -> Option<i64> {
        self.topics.values().flat_map(HashMap::values).filter_map(|s| s.pending.first_key_value().map(|(_, &ts)| ts)).min()
    }

    /// Records in flight for these partitions.
    pub(crate) fn pending_in(&self, partitions: &[Partition]) -> usize {
        partitions.iter().filter_map(|p| self.get(p)).map(|s| s.pending.len()).sum()
    }

    /// Offsets to commit now: per partition, the end of the finished prefix, when it moved
    /// since the last commit. Call [`Self::committed`] once the commit succeeded.
    pub(crate) fn committable(&self) -> Vec<(Partition, i64)> {
        self.topics
            .iter()
            .flat_map(|(topic, partitions)| partitions.iter().map(move |(p, state)| (topic, *p, state)))
            .filter_map(|(topic, partition, state)| {
                let end = match state.pending.first_key_value() {
                    Some((&first_unfinished, _)) => first_unfinished,
                    None => state.next?,
                };
                (state.committed != Some(end)).then(|| ((topic.clone(), partition), end))
            })
            .collect()
    }

    /// The broker accepted these offsets.
    pub(crate) fn committed(&mut self, offsets: &[(Partition, i64)]) {
        for ((topic, partition), offset) in offsets {
            if let Some(state) = self.topics.get_mut(topic).and_then(|t| t.get_mut(partition)) {
                state.committed = Some(*offset);
            }
        }
    }

    /// Forget revoked partitions: late completions and commits for them are ignored.
    pub(crate) fn revoke(&mut self, partitions: &[Partition]) {
        for (topic, partition) in partitions {
            if let Some(t) = self.topics.get_mut(topic) {
                t.remove(partition);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> Partition {
        ("t".to_string(), n)
    }

    impl OffsetTracker {
        fn reg(&mut self, (t, n): &Partition, offset: i64) {
            self.register(t, *n, offset, offset * 10)
        }
        fn fin(&mut self, (t, n): &Partition, offset: i64) {
            self.finish(t, *n, offset)
        }
    }

    #[test]
    fn commits_only_the_contiguous_finished_prefix() {
        let mut tracker = OffsetTracker::default();
        for offset in 10..15 {
            tracker.reg(&p(0), offset);
        }
        tracker.fin(&p(0), 10);
        tracker.fin(&p(0), 12);
        tracker.fin(&p(0), 13);
        assert_eq!(tracker.committable(), vec![(p(0), 11)], "11 is unfinished, so 12 and 13 wait");
        tracker.committed(&[(p(0), 11)]);
        assert!(tracker.committable().is_empty(), "nothing new to commit");
        tracker.fin(&p(0), 11);
        assert_eq!(tracker.committable(), vec![(p(0), 14)]);
        tracker.fin(&p(0), 14);
        assert_eq!(tracker.committable(), vec![(p(0), 15)], "everything finished: one past the last");
    }

    #[test]
    fn the_oldest_record_in_flight_is_the_first_unfinished_of_any_partition() {
        let mut tracker = OffsetTracker::default();
        assert_eq!(tracker.oldest_pending_ms(), None);
        tracker.reg(&p(0), 5);
        tracker.reg(&p(0), 6);
        tracker.reg(&p(1), 7);
        assert_eq!(tracker.oldest_pending_ms(), Some(50));
        tracker.fin(&p(0), 5);
        assert_eq!(tracker.oldest_pending_ms(), Some(60));
        tracker.fin(&p(0), 6);
        assert_eq!(tracker.oldest_pending_ms(), Some(70), "the other partition's");
        tracker.revoke(&[p(1)]);
        assert_eq!(tracker.oldest_pending_ms(), None, "a revoked partition is not ours to wait for");
    }

    #[test]
    fn revoked_partitions_are_never_committed() {
        let mut tracker = OffsetTracker::default();
        tracker.reg(&p(0), 1);
        tracker.reg(&p(1), 1);
        tracker.revoke(&[p(1)]);
        tracker.fin(&p(1), 1);
        tracker.fin(&p(0), 1);
        assert_eq!(tracker.committable(), vec![(p(0), 2)]);
        assert!(!tracker.owns("t", 1));
        assert_eq!(tracker.pending_in(&[p(0), p(1)]), 0);
    }
}

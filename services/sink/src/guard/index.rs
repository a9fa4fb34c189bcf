//! The latest-offset index of one partition of a change topic, and the decision it makes for
//! each record: the pure heart of the order guard (the module doc of [`crate::guard`] states the
//! guarantee and argues it).
//!
//! Per key (a 128-bit hash of its bytes) the index holds the offset of the latest *state* of
//! the key — a change event, `d` events included — that reached the destination or is on its
//! way there, and whether that state was a delete. A record of the key at a lower offset is
//! older than something the destination has (or is about to have): it is superseded.
//!
//! Memory: 24 bytes per key (16 of hash, 8 of offset and delete flag) plus the hash table's
//! control byte and spare room: 29–57 bytes per key depending on how full the table is (7/16
//! to 7/8 of its buckets), measured by `memory_per_key_is_what_the_docs_say`. A 128-bit hash
//! makes a collision, which would let one key's newer state supersede another key's record,
//! negligible (about n²/2¹²⁹: 10⁻²⁵ at ten million keys).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The hash of a record key's bytes (xxh3-128): a key's identity in the index.
pub(crate) type KeyHash = [u64; 2];

/// Hash a record key's bytes.
pub(crate) fn key_hash(key: &[u8]) -> KeyHash {
    let hash = xxhash_rust::xxh3::xxh3_128(key);
    [hash as u64, (hash >> 64) as u64]
}

/// The map key is already a hash: use its first word as is.
#[derive(Default)]
pub(crate) struct FirstWord(u64);

impl Hasher for FirstWord {
    fn finish(&self) -> u64 {
        self.0
    }
    // `[u64; 2]` hashes as its length (`write_usize`, ignored) and then its 16 bytes at once.
    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_ne_bytes(word);
    }
    fn write_usize(&mut self, _len: usize) {}
}

/// What a record is, for the guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A change event; `delete` for a `d` event.
    State { delete: bool },
    /// A tombstone (no value): the poller writes one right after each `d` event.
    Tombstone,
}

/// What to do with a consumed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Hand it to the destination.
    Deliver,
    /// A newer state of its key reached the destination or is on its way: finish it without a
    /// request (`outcome="superseded"`).
    Superseded,
    /// A tombstone whose `d` event was handled: nothing to apply (`outcome="skipped"`).
    Tombstone,
    /// A tombstone whose `d` event is gone (compacted away before the sink read it): deliver it
    /// as a delete known only by its key.
    KeyOnlyDelete,
}

/// The latest state of a key: its offset and whether it was a delete, packed in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Latest(u64);

impl Latest {
    fn new(offset: i64, delete: bool) -> Latest {
        Latest(((offset as u64) << 1) | u64::from(delete))
    }
    fn offset(self) -> i64 {
        (self.0 >> 1) as i64
    }
    fn delete(self) -> bool {
        self.0 & 1 == 1
    }
}

/// The index of one partition.
#[derive(Debug, Default)]
pub(crate) struct PartitionIndex {
    keys: HashMap<KeyHash, Latest, BuildHasherDefault<FirstWord>>,
    /// Every record below this offset has been through [`Self::learn`] or [`Self::decide`] as a
    /// live record: the index is complete below it.
    covered: i64,
    /// The group's frontier here, when a replay put it above the committed offset: carried on
    /// every commit below it (`groups::frontier_metadata`).
    pub(crate) frontier: Option<i64>,
}

impl PartitionIndex {
    /// Where the index is complete up to (exclusive).
    pub(crate) fn covered(&self) -> i64 {
        self.covered
    }

    /// Mark the index complete below `offset` (a scan that ended there, or found nothing).
    pub(crate) fn cover(&mut self, offset: i64) {
        self.covered = self.covered.max(offset);
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Bytes the table holds, from its capacity: what [`PartitionIndex`]'s doc states.
    pub(crate) fn bytes(&self) -> usize {
        let capacity = self.keys.capacity();
        if capacity == 0 {
            return 0;
        }
        // hashbrown keeps at most 7/8 of a power-of-two number of buckets full (3/4 below 8).
        let buckets = if capacity < 8 { (capacity + 1).next_power_of_two() } else { (capacity * 8 / 7).next_power_of_two() };
        buckets * (std::mem::size_of::<(KeyHash, Latest)>() + 1) + 16
    }

    /// A record read from the topic below the group's frontier: it reached the destination. Call
    /// in offset order.
    pub(crate) fn learn(&mut self, key: KeyHash, offset: i64, kind: Kind) {
        match kind {
            Kind::State { delete } => self.raise(key, offset, delete),
            // Handled as the sink handled it when it read it: a tombstone after its `d` event
            // changes nothing; one whose `d` event was gone was delivered as a delete.
            Kind::Tombstone => {
                if !self.follows_its_delete(key, offset) {
                    self.raise(key, offset, true);
                }
            }
        }
        self.cover(offset + 1);
    }

    /// The verdict on a record consumed now; `supersede` is false for `append` syncs, whose
    /// records are events rather than states and are never skipped. A delivered record becomes
    /// the latest state of its key. `live` records (from the change topic itself, consumed in
    /// offset order) also extend the coverage; side records do not.
    pub(crate) fn decide(&mut self, key: KeyHash, offset: i64, kind: Kind, supersede: bool, live: bool) -> Verdict {
        if live {
            self.cover(offset + 1);
        }
        let newer = self.keys.get(&key).is_some_and(|latest| latest.offset() > offset);
        match kind {
            Kind::State { .. } if newer && supersede => Verdict::Superseded,
            Kind::State { delete } => {
                self.raise(key, offset, delete);
                Verdict::Deliver
            }
            Kind::Tombstone if self.follows_its_delete(key, offset) => Verdict::Tombstone,
            Kind::Tombstone if newer && supersede => Verdict::Superseded,
            Kind::Tombstone => {
                self.raise(key, offset, true);
                Verdict::KeyOnlyDelete
            }
        }
    }

    /// Whether the latest state of `key` is a `d` event below `tombstone`: the delete the
    /// tombstone follows was handled.
    fn follows_its_delete(&self, key: KeyHash, tombstone: i64) -> bool {
        self.keys.get(&key).is_some_and(|latest| latest.delete() && latest.offset() < tombstone)
    }

    /// Make `offset` the latest state of `key` unless a later one is known.
    fn raise(&mut self, key: KeyHash, offset: i64, delete: bool) {
        let latest = self.keys.entry(key).or_insert(Latest::new(offset, delete));
        if latest.offset() <= offset {
            *latest = Latest::new(offset, delete);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPSERT: Kind = Kind::State { delete: false };
    const DELETE: Kind = Kind::State { delete: true };

    fn k(name: &str) -> KeyHash {
        key_hash(name.as_bytes())
    }

    /// `a` changed at 1, 3 and 5, `b` at 2; all below the frontier (6).
    fn learned() -> PartitionIndex {
        let mut index = PartitionIndex::default();
        for (key, offset) in [("a", 1), ("b", 2), ("a", 3), ("a", 5)] {
            index.learn(k(key), offset, UPSERT);
        }
        index.cover(6);
        index
    }

    #[test]
    fn a_replay_re_applies_each_key_once_at_its_latest_state() {
        let mut index = learned();
        let verdicts: Vec<(i64, Verdict)> =
            [("a", 1), ("b", 2), ("a", 3), ("a", 5)].iter().map(|&(key, offset)| (offset, index.decide(k(key), offset, UPSERT, true, true))).collect();
        assert_eq!(
            verdicts,
            [(1, Verdict::Superseded), (2, Verdict::Deliver), (3, Verdict::Superseded), (5, Verdict::Deliver)],
            "a@1 and a@3 are older than a@5, which the destination has"
        );
        // Past the frontier: new changes, in order.
        assert_eq!(index.decide(k("a"), 7, UPSERT, true, true), Verdict::Deliver);
        assert_eq!(index.decide(k("a"), 8, UPSERT, true, true), Verdict::Deliver, "catching up skips nothing");
        assert_eq!(index.covered(), 9);
    }

    #[test]
    fn append_syncs_are_never_superseded() {
        let mut index = learned();
        assert_eq!(index.decide(k("a"), 1, UPSERT, false, true), Verdict::Deliver);
        assert_eq!(index.decide(k("a"), 3, UPSERT, false, true), Verdict::Deliver);
    }

    #[test]
    fn side_records_apply_when_current_and_are_superseded_by_anything_newer_either_way() {
        let mut index = learned();
        assert_eq!(index.decide(k("a"), 5, UPSERT, true, false), Verdict::Deliver, "the current state is applied again");
        assert_eq!(index.decide(k("a"), 3, UPSERT, true, false), Verdict::Superseded, "an older one is not");
        assert_eq!(index.decide(k("c"), 40, UPSERT, true, false), Verdict::Deliver, "a side record ahead of the live consumer");
        assert_eq!(index.covered(), 6, "side records do not extend the coverage");
        assert_eq!(index.decide(k("c"), 20, UPSERT, true, true), Verdict::Superseded, "the live consumer's older record of it comes later");
        assert_eq!(index.decide(k("c"), 40, UPSERT, true, true), Verdict::Deliver, "the same state again is not older");
        assert_eq!(index.decide(k("c"), 41, UPSERT, true, true), Verdict::Deliver);
    }

    #[test]
    fn the_offsets_delivered_for_a_key_never_decrease_whatever_the_interleaving() {
        // Live records of one key in order, side records of it at arbitrary offsets, interleaved
        // pseudo-randomly: the delivered offsets must never go down.
        let mut seed = 7u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200 {
            let mut index = PartitionIndex::default();
            let frontier = (next() % 20) as i64;
            for offset in 0..frontier {
                index.learn(k("x"), offset, UPSERT);
            }
            let mut live = (next() % (frontier as u64 + 1)) as i64;
            let mut delivered = Vec::new();
            for _ in 0..60 {
                let (offset, is_live) = if next() % 3 == 0 { ((next() % 60) as i64, false) } else { (live, true) };
                if is_live {
                    live += 1;
                }
                if index.decide(k("x"), offset, UPSERT, true, is_live) == Verdict::Deliver {
                    delivered.push(offset);
                }
            }
            assert!(delivered.windows(2).all(|w| w[0] <= w[1]), "{delivered:?}");
            assert!(delivered.first().is_none_or(|&first| first >= frontier - 1), "nothing older than what the destination had: {delivered:?}");
        }
    }

    #[test]
    fn a_tombstone_after_its_delete_is_skipped_and_one_without_it_deletes_by_key() {
        let mut index = PartitionIndex::default();
        assert_eq!(index.decide(k("a"), 10, DELETE, true, true), Verdict::Deliver, "the `d` event");
        assert_eq!(index.decide(k("a"), 11, Kind::Tombstone, true, true), Verdict::Tombstone, "its tombstone");
        // `b`'s `d` event was compacted away before the sink read it.
        assert_eq!(index.decide(k("b"), 13, Kind::Tombstone, true, true), Verdict::KeyOnlyDelete);
        // `c` was upserted, then its `d` event compacted away: the tombstone is all there is.
        assert_eq!(index.decide(k("c"), 14, UPSERT, true, true), Verdict::Deliver);
        assert_eq!(index.decide(k("c"), 16, Kind::Tombstone, true, true), Verdict::KeyOnlyDelete);
        assert_eq!(index.decide(k("c"), 12, UPSERT, true, false), Verdict::Superseded, "a side record does not bring a deleted key back");
        // Append syncs too: the delete is an event they must see.
        assert_eq!(index.decide(k("d"), 17, Kind::Tombstone, false, true), Verdict::KeyOnlyDelete);
    }

    #[test]
    fn a_tombstone_followed_by_a_newer_state_is_superseded() {
        let mut index = PartitionIndex::default();
        index.learn(k("a"), 30, UPSERT);
        assert_eq!(index.decide(k("a"), 20, Kind::Tombstone, true, false), Verdict::Superseded, "the key came back after it was deleted");
    }

    #[test]
    fn learning_a_replayed_range_classifies_tombstones_as_the_sink_did() {
        let mut index = PartitionIndex::default();
        index.learn(k("a"), 0, UPSERT);
        index.learn(k("a"), 1, DELETE);
        index.learn(k("a"), 2, Kind::Tombstone);
        index.learn(k("b"), 4, Kind::Tombstone);
        index.cover(5);
        // A replay from 0: `a`'s delete is its latest state, `b`'s key-only delete too.
        assert_eq!(index.decide(k("a"), 0, UPSERT, true, true), Verdict::Superseded);
        assert_eq!(index.decide(k("a"), 1, DELETE, true, true), Verdict::Deliver);
        assert_eq!(index.decide(k("a"), 2, Kind::Tombstone, true, true), Verdict::Tombstone);
        assert_eq!(index.decide(k("b"), 4, Kind::Tombstone, true, true), Verdict::KeyOnlyDelete, "re-applied, as the `d` event would be");
        // And a redriven key-only delete of `b` (a side record) is applied again.
        assert_eq!(index.decide(k("b"), 4, Kind::Tombstone, true, false), Verdict::KeyOnlyDelete);
    }

    #[test]
    fn memory_per_key_is_what_the_docs_say() {
        assert_eq!(std::mem::size_of::<(KeyHash, Latest)>(), 24);
        let mut index = PartitionIndex::default();
        let mut per_key = Vec::new();
        for n in 1..=1_000_000u64 {
            index.learn(key_hash(&n.to_le_bytes()), n as i64, UPSERT);
            if n.is_power_of_two() || n % 100_000 == 0 {
                per_key.push(index.bytes() as f64 / n as f64);
            }
        }
        let tail = &per_key[per_key.len() - 10..];
        println!("bytes per key, 100k..1M keys: {tail:.1?}");
        assert!(tail.iter().all(|&b| (28.0..=58.0).contains(&b)), "{tail:?}");
        assert_eq!(index.len(), 1_000_000);
    }
}

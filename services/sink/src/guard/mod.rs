//! The order guard: replays, side records (backfill, redrive) and the live stream never move a
//! key backwards at the destination, and every delete reaches it whatever compaction did.
//!
//! ## The rule
//!
//! Per partition of every change topic of the destination, an index ([`index`]) holds for each
//! key the offset of the latest *state* of the key (a change event, `d` events included, never
//! a tombstone) that reached the destination or is on its way there. Every consumed record —
//! live or side — is decided in the consume loop, one at a time, in the order it is dispatched
//! ([`OrderGuard::admit`]):
//! - a state at offset `o` is **superseded** when the index holds a later offset for its key
//!   (finished without a request, `outcome="superseded"`); otherwise it is delivered and `o`
//!   becomes the key's latest;
//! - a tombstone right after its key's `d` event (the index's latest is that `d` event) is
//!   skipped; a tombstone whose `d` event is gone — compacted away before the sink read it — is
//!   delivered as a **delete known only by its key** (`crate::deletes`);
//! - `append` syncs (events, not states) are never superseded.
//!
//! The index is built before consuming ([`load`]) by reading each partition up to the group's
//! *frontier*: the highest offset the group ever committed there, which is the committed offset
//! itself except during a replay (`sluice replay` records the old one in the commit's metadata,
//! `sluice_kafka::groups`). Every record below the frontier reached the destination. On every
//! assignment the partitions gained are brought up to their frontier again (another instance may
//! have moved them on).
//!
//! ## Why no key goes backwards
//!
//! Claim: for each key, the offsets of the states handed to the destination never decrease, and
//! none is below a state the destination already had from before this run. Because (1) when the
//! index of a partition is built, it holds for every key its latest state below the frontier,
//! which bounds every state the destination received (all of them were committed, so they lie
//! below the frontier); (2) a state is handed over only if its offset is at least the index's,
//! and then becomes the index's — so the sequence handed over per key is non-decreasing; (3)
//! every record, live or side, goes through this one decision in the consume loop, in dispatch
//! order, and then through the lane of (change topic, key), which sends one batch at a time in
//! dispatch order (`crate::lanes`): the destination receives each key's states in the order
//! decided. (4) Side records are consumed by the instance that consumes their original
//! partition (`sluice_kafka::side`), whose index is the one that decides.
//!
//! Consequences: a replay re-reads old records; every one with a later state below the frontier
//! is superseded, so each key is re-applied once, at the state the destination already had, and
//! the changes after the frontier follow in order. A side record of a state older than what the
//! destination has is superseded; one newer than the live consumer's position is applied, and
//! the live records of its key below it are then superseded.
//!
//! What it does not cover: records applied but not committed before a crash are delivered again
//! after the restart (at-least-once, as before the guard: the frontier is what was committed),
//! so a key can briefly show an older state again, followed at once by the newer one. A lagging
//! sink catching up skips nothing: every state after the frontier is applied in order, so a
//! destination keyed by a mutable identifier sees every identifier change (skipping the
//! intermediate states of a catch-up would leave its old identifiers behind; docs/operations.md).

pub(crate) mod index;
pub(crate) mod load;
pub(crate) mod predict;

use std::borrow::Cow;
use std::collections::HashMap;

use rdkafka::message::{Headers, Message};
use sluice_core::config::{SyncConfig, SyncMode};

use crate::side;
use index::{key_hash, Kind, PartitionIndex, Verdict};

/// What the consume loop does with a consumed record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission<'m> {
    /// Hand it to the lane of (`lane_topic`, key): the change topic it carries.
    Deliver { lane_topic: Cow<'m, str> },
    /// Finish it now, without a request.
    Finish(Outcome),
}

/// Why a record was finished without a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A newer state of its key reached the destination or is on its way.
    Superseded,
    /// A tombstone after its `d` event: nothing to apply.
    Skipped,
}

impl Outcome {
    /// The `outcome` label of `sluice_sink_records_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::Superseded => "superseded",
            Outcome::Skipped => "skipped",
        }
    }
}

/// The change topics of one destination and the index of each of their partitions.
#[derive(Debug, Default)]
pub(crate) struct OrderGuard {
    topics: HashMap<String, TopicIndex>,
}

#[derive(Debug, Default)]
struct TopicIndex {
    /// False for `append` syncs.
    supersede: bool,
    partitions: HashMap<i32, PartitionIndex>,
}

impl OrderGuard {
    /// A guard over the change topics of `syncs` (by topic), with empty indexes.
    pub(crate) fn new(syncs: &HashMap<String, SyncConfig>) -> OrderGuard {
        let topics = syncs.iter().map(|(topic, sync)| (topic.clone(), TopicIndex { supersede: sync.mode() != SyncMode::Append, partitions: HashMap::new() })).collect();
        OrderGuard { topics }
    }

    /// Whether `topic` is one of the destination's change topics.
    pub(crate) fn is_change_topic(&self, topic: &str) -> bool {
        self.topics.contains_key(topic)
    }

    /// The index of a partition of a change topic (created empty on first use).
    pub(crate) fn partition(&mut self, topic: &str, partition: i32) -> Option<&mut PartitionIndex> {
        Some(self.topics.get_mut(topic)?.partitions.entry(partition).or_default())
    }

    /// Decide a consumed record (see the module doc). A record the guard cannot place (a side
    /// record with bad headers, a record without a key) is delivered to the lane of its own
    /// topic, which dead-letters it with the reason.
    pub(crate) fn admit<'m>(&mut self, message: &'m impl Message) -> Admission<'m> {
        let unplaced = Admission::Deliver { lane_topic: Cow::Borrowed(message.topic()) };
        let Ok(origin) = side::origin(message, |topic| self.is_change_topic(topic)) else { return unplaced };
        let Some(key) = message.key() else { return unplaced };
        let Some(topic) = self.topics.get_mut(origin.topic.as_ref()) else { return unplaced };
        let index = topic.partitions.entry(origin.partition).or_default();
        match index.decide(key_hash(key), origin.offset, kind_of(message), topic.supersede, !origin.side) {
            Verdict::Deliver | Verdict::KeyOnlyDelete => Admission::Deliver { lane_topic: origin.topic },
            Verdict::Superseded => Admission::Finish(Outcome::Superseded),
            Verdict::Tombstone => Admission::Finish(Outcome::Skipped),
        }
    }

    /// The frontier a commit of `offset` on this partition must carry, when it is above it.
    pub(crate) fn carried_frontier(&self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        self.topics.get(topic)?.partitions.get(&partition)?.frontier.filter(|&frontier| frontier > offset)
    }

    /// Keys indexed and bytes held, over every partition.
    pub(crate) fn size(&self) -> (usize, usize) {
        self.topics.values().flat_map(|t| t.partitions.values()).fold((0, 0), |(keys, bytes), p| (keys + p.len(), bytes + p.bytes()))
    }
}

/// What a record is: a tombstone (no value), a `d` event (its `sluice.op` header), or another
/// change event. Read from headers only, so building the index decodes nothing.
pub(crate) fn kind_of(message: &impl Message) -> Kind {
    if message.payload().is_none() {
        return Kind::Tombstone;
    }
    let delete = message
        .headers()
        .is_some_and(|headers| headers.iter().any(|h| h.key == sluice_kafka::headers::OP && h.value == Some(b"d".as_slice())));
    Kind::State { delete }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{OwnedHeaders, OwnedMessage};
    use rdkafka::Timestamp;
    use sluice_kafka::side::{Original, SideRecord};

    use super::*;

    const TOPIC: &str = "p.changes.customers";

    fn guard(mode: &str) -> OrderGuard {
        let sync: SyncConfig = toml::from_str(&format!("model = \"customers\"\ndestination = \"crm\"\nmode = \"{mode}\"\nfields = {{ v = \"v\" }}")).unwrap();
        OrderGuard::new(&HashMap::from([(TOPIC.to_string(), sync)]))
    }

    fn live(key: &str, offset: i64, op: &str, payload: bool) -> OwnedMessage {
        let headers = sluice_kafka::headers::owned([(sluice_kafka::headers::OP, op)]);
        OwnedMessage::new(payload.then(|| b"v".to_vec()), Some(key.as_bytes().to_vec()), TOPIC.into(), Timestamp::NotAvailable, 0, offset, Some(headers))
    }

    fn side(key: &str, offset: i64) -> OwnedMessage {
        let record = SideRecord::new(Original { topic: TOPIC.into(), partition: 0, offset, timestamp_ms: None }, key.as_bytes().to_vec(), Some(b"v".to_vec()), "test");
        let headers = record.headers().iter().fold(OwnedHeaders::new(), |h, (k, v)| h.insert(rdkafka::message::Header { key: k, value: Some(v.as_slice()) }));
        OwnedMessage::new(Some(b"v".to_vec()), Some(key.as_bytes().to_vec()), "p.side.crm".into(), Timestamp::NotAvailable, 0, 3, Some(headers))
    }

    fn deliver(topic: &str) -> Admission<'_> {
        Admission::Deliver { lane_topic: Cow::Borrowed(topic) }
    }

    #[test]
    fn live_and_side_records_of_a_key_are_decided_together() {
        let mut g = guard("upsert");
        let m = live("a", 10, "u", true);
        assert_eq!(g.admit(&m), deliver(TOPIC));
        let s = side("a", 20);
        assert_eq!(g.admit(&s), deliver(TOPIC), "a side record goes to the lane of its change topic");
        let m = live("a", 15, "u", true);
        assert_eq!(g.admit(&m), Admission::Finish(Outcome::Superseded), "older than the side record just delivered");
        let s = side("a", 12);
        assert_eq!(g.admit(&s), Admission::Finish(Outcome::Superseded));
        assert_eq!(g.size().0, 1);
    }

    #[test]
    fn tombstones_and_append_syncs() {
        let mut g = guard("mirror");
        let (d, t) = (live("a", 1, "d", true), live("a", 2, "d", false));
        assert_eq!(g.admit(&d), deliver(TOPIC));
        assert_eq!(g.admit(&t), Admission::Finish(Outcome::Skipped), "the tombstone after its `d` event");
        let orphan = live("b", 4, "d", false);
        assert_eq!(g.admit(&orphan), deliver(TOPIC), "a tombstone alone deletes by key");

        let mut g = guard("append");
        let (first, second) = (live("a", 5, "u", true), live("a", 3, "u", true));
        g.admit(&first);
        assert_eq!(g.admit(&second), deliver(TOPIC), "events are never superseded");
    }

    #[test]
    fn records_the_guard_cannot_place_go_to_their_own_lane_to_be_dead_lettered() {
        let mut g = guard("upsert");
        let no_key = OwnedMessage::new(Some(b"v".to_vec()), None, TOPIC.into(), Timestamp::NotAvailable, 0, 1, None);
        assert_eq!(g.admit(&no_key), deliver(TOPIC));
        let bare = OwnedMessage::new(Some(b"v".to_vec()), Some(b"k".to_vec()), "p.side.crm".into(), Timestamp::NotAvailable, 0, 1, None);
        assert_eq!(g.admit(&bare), deliver("p.side.crm"), "no original headers");
    }

    #[test]
    fn a_commit_below_the_frontier_carries_it() {
        let mut g = guard("upsert");
        g.partition(TOPIC, 0).unwrap().frontier = Some(50);
        assert_eq!(g.carried_frontier(TOPIC, 0, 20), Some(50));
        assert_eq!(g.carried_frontier(TOPIC, 0, 50), None, "at the frontier the commit says it all");
        assert_eq!(g.carried_frontier(TOPIC, 1, 20), None);
        assert!(g.partition("other", 0).is_none());
    }
}

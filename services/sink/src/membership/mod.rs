//! The membership stage: consent and suppression lists, decided in one place for every sync of
//! this destination.
//!
//! A row K of a sync that names suppression lists (`suppressed_by`) is a member of its
//! destination when it is **present** (not deleted), **consented** (passes the sync's consent
//! rule) and **not suppressed** (no live row of those lists names the same person). Membership
//! turns into an action by [`rule`]: a member is added (upserted), anything else is treated as
//! leaving (removed, unsubscribed), exactly as a failed consent always was. Syncs without lists
//! only have the consent part, decided when their records are mapped.
//!
//! # State (rebuilt from the topics at start, [`rebuild`]; nothing on disk)
//! - per list, its **entries**: list row → identity, identity → live rows ([`state`]);
//! - per sync with lists, its **members**: audience row → (identity, location of its latest
//!   record, lane), identity → rows.
//!
//! Identities are 128-bit hashes of normalised identifiers ([`identity`]): no identifier, email
//! or key is kept in memory, logged or put in a label.
//!
//! # Where each decision is made, and why that keeps order
//! Every decision about row K is made **in K's lane, when K's batch is flushed**
//! ([`Stage::decide`]), reading the entries as they are at that moment. A list record updates
//! the entries and then, in the same step under the stage's lock, enqueues a *recompute* of
//! every row of the affected people into each row's own lane ([`Stage::admit_list`]); a
//! recompute reads the row's latest record back by its location ([`fetch`]) and goes through
//! the same flush-time decision. A lane sends one batch at a time, so for K:
//! - a decision made after the list change sees it;
//! - a decision made before it (an add already in flight) is followed, in the same lane, by the
//!   recompute, which lands after it: an add decided before a purchase never lands after the
//!   removal (`state::tests::an_add_decided_before_a_purchase_never_lands_after_the_removal`);
//! - K's row indexed after the change (admission and the change are ordered by the lock) is
//!   decided after it too.
//!
//! A release (the list row deleted, or expired by the poller, which emits it as a delete) is
//! the same path: the recompute re-adds the row with its current fields, if it is present and
//! consented.
//!
//! # Nothing lost across a crash
//! A list record finishes (its offset may be committed) only when every recompute it enqueued
//! finished ([`Pending`]). Until then the group delivers it again after a restart; the rebuild
//! has already applied it, and owes exactly the recomputes it caused ([`rebuild`] module doc).
//!
//! # One process per destination
//! Every decision needs every list entry, so the process must receive every partition of the
//! lists' topics: [`Stage::missing_partitions`] names those assigned elsewhere, and the sink
//! stops with that error rather than decide on part of a list.

mod fetch;
mod identity;
mod rebuild;
mod state;

use std::collections::HashMap as StdHashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rdkafka::message::{Message, OwnedMessage};
use rdkafka::TopicPartitionList;
use sluice_avro::DecodedEvent;
use sluice_core::config::{Config, IdentifierConfig, SyncConfig, SyncMode};
use sluice_core::{naming, Op};
use sluice_destinations::{Action, OutboundRecord};

pub(crate) use identity::Identity;
pub(crate) use state::Target;

use crate::hashes::KeyHash;
use crate::schemas::SchemaCache;
use crate::side::Origin;
use crate::transform::{current, Image};
use crate::SinkError;
use fetch::Reader;
use state::{Member, State};

/// The one membership rule: a row is a member when present, consented and not suppressed;
/// the action is what the sync mode does with a member or with a row that leaves.
pub(crate) fn rule(mode: SyncMode, op: Op, consented: bool, suppressed: bool) -> Option<Action> {
    Action::for_change(mode, op, consented && !suppressed)
}

/// What a record of a sync says about its row, for the stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Presence {
    /// The sync names no lists (consent alone was decided when mapping), or the record says
    /// nothing about the row (a tombstone, an unreadable record).
    Untracked,
    /// The row is in the model: whom it names, and whether it passed consent.
    Present { identity: Option<Identity>, consented: bool },
    /// The row left the model.
    Gone,
}

/// The presence a record of `sync` gives its row.
pub(crate) fn presence(sync: &SyncConfig, op: Op, consented: bool, image: &Image<'_>) -> Presence {
    match tracked(sync) {
        None => Presence::Untracked,
        Some(_) if op == Op::Delete => Presence::Gone,
        Some(spec) => Presence::Present { identity: identity::identity_of(spec, image), consented },
    }
}

/// The presence a delete known only by its key gives its row (`crate::deletes`): gone, like
/// after any delete.
pub(crate) fn presence_of_delete(sync: &SyncConfig) -> Presence {
    match tracked(sync) {
        None => Presence::Untracked,
        Some(_) => Presence::Gone,
    }
}

/// The identifier of a sync whose rows the stage tracks: one that names lists.
fn tracked(sync: &SyncConfig) -> Option<&IdentifierConfig> {
    sync.identifier.as_ref().filter(|_| sync.is_suppressed())
}

/// Whom a list record's row names now: `None` when it is deleted or names nobody.
fn entry_of(list: &ListSpec, decoded: &DecodedEvent) -> Option<Identity> {
    if decoded.event.op == Op::Delete {
        return None;
    }
    current(decoded).and_then(|image| identity::identity_of(&list.identifier, &image))
}

/// A sync of this destination that names lists.
pub(crate) struct SyncSpec {
    topic: String,
    /// The `sync` label: its model's name.
    model: String,
    config: SyncConfig,
    /// Indexes into the stage's lists.
    lists: Vec<usize>,
}

/// A list one of those syncs names.
pub(crate) struct ListSpec {
    name: String,
    topic: String,
    identifier: IdentifierConfig,
}

/// A list record waiting for its recomputes (and, when its topic is also a sync's, its own
/// delivery): it finishes when the last one does.
pub(crate) struct Pending {
    message: Arc<OwnedMessage>,
    /// The id of the change the record carries (a side record's original one).
    id: String,
    remaining: AtomicUsize,
}

impl Pending {
    pub(crate) fn new(message: Arc<OwnedMessage>, origin: &Origin<'_>, parts: usize) -> Arc<Pending> {
        Arc::new(Pending { message, id: origin.id(), remaining: AtomicUsize::new(parts) })
    }

    /// The list record.
    pub(crate) fn message(&self) -> &OwnedMessage {
        &self.message
    }

    /// The list record's id, which a recompute's record carries after its own
    /// (`<row's id>+<list record's id>`): a new decision about an old record is a new event for
    /// receivers that deduplicate by id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// One part finished; true when it was the last.
    pub(crate) fn finish_one(&self) -> bool {
        self.remaining.fetch_sub(1, Ordering::AcqRel) == 1
    }
}

/// A row to decide again, in its lane.
pub(crate) struct Recompute {
    pub target: Target,
    pub pending: Arc<Pending>,
}

/// What a list record asks for.
pub(crate) enum ListAdmission {
    /// These rows must be decided again (possibly none).
    Recompute(Vec<Target>),
    /// The record cannot be read: dead-letter it with this reason.
    Reject(String),
}

/// The stage of one destination; see the module docs.
pub(crate) struct Stage {
    destination: String,
    syncs: Vec<SyncSpec>,
    lists: Vec<ListSpec>,
    state: Mutex<State>,
    /// Per partition of the syncs' topics, the offset the rebuild read to (the group's frontier):
    /// records before it are in the members.
    members_to: StdHashMap<(String, i32), i64>,
    /// Per partition of the lists' topics, the offset the rebuild read to: records before it
    /// are in the entries.
    entries_to: StdHashMap<(String, i32), i64>,
    /// Recomputes owed by list records the group delivers again ([`rebuild`]).
    replay: Mutex<StdHashMap<(String, i32, i64), Vec<Target>>>,
    list_partitions: Vec<(String, i32)>,
    reader: Arc<Reader>,
    lanes: usize,
    route: fn(&str, &[u8], usize) -> usize,
}

/// The change topics of the lists that `destination`'s syncs name (to create and subscribe to).
pub(crate) fn list_topics(config: &Config, destination: &str) -> Vec<String> {
    let mut topics = Vec::new();
    for name in config.syncs_to(destination).flat_map(|s| &s.suppressed_by) {
        let list = config.suppression_list(name.get_ref()).expect("validated: suppressed_by names defined lists");
        let topic = naming::change_topic(&config.kafka.topic_prefix, list.model.get_ref());
        if !topics.contains(&topic) {
            topics.push(topic);
        }
    }
    topics
}

impl Stage {
    /// The stage of `destination`, its state rebuilt from the topics; `None` when no sync of it
    /// names a list. `route` is the sink's lane of a (topic, key).
    pub(crate) async fn start(
        config: &Config,
        destination: &str,
        syncs: &StdHashMap<String, SyncConfig>,
        lanes: usize,
        route: fn(&str, &[u8], usize) -> usize,
        schemas: &SchemaCache,
    ) -> Result<Option<Arc<Stage>>, SinkError> {
        let (syncs, lists) = specs(config, syncs);
        if syncs.is_empty() {
            return Ok(None);
        }
        let started = Instant::now();
        let span = tracing::info_span!("sink.stage_rebuild", %destination, lists = lists.len(), syncs = syncs.len());
        let group = naming::sink_group(&config.kafka.topic_prefix, destination);
        let lane_of = |topic: &str, key: &[u8]| route(topic, key, lanes) as u16;
        let rebuilt = tracing::Instrument::instrument(rebuild::rebuild(&config.kafka, &group, &syncs, &lists, lane_of, schemas), span).await?;
        let stage = Stage {
            destination: destination.to_string(),
            reader: Reader::new(&config.kafka).map_err(SinkError::Kafka)?,
            syncs,
            lists,
            state: Mutex::new(rebuilt.state),
            members_to: rebuilt.members_to,
            entries_to: rebuilt.entries_to,
            replay: Mutex::new(rebuilt.replay),
            list_partitions: rebuilt.list_partitions,
            lanes,
            route,
        };
        let owed: usize = stage.replay.lock().expect("replay lock").values().map(Vec::len).sum();
        let sizes = stage.publish_sizes();
        metrics::gauge!("sluice_sink_stage_rebuild_seconds", "destination" => destination.to_string()).set(started.elapsed().as_secs_f64());
        tracing::info!(
            %destination, records = rebuilt.records, unreadable = rebuilt.unreadable, entries = sizes.0, members = sizes.1,
            recomputes_owed = owed, seconds = started.elapsed().as_secs_f64(), "suppression stage rebuilt from the topics"
        );
        if rebuilt.unreadable > 0 {
            tracing::warn!(%destination, records = rebuilt.unreadable, "records the stage could not read; they are dead-lettered when delivered");
        }
        Ok(Some(Arc::new(stage)))
    }

    /// Whether `topic` is a list's change topic.
    pub(crate) fn is_list_topic(&self, topic: &str) -> bool {
        self.lists.iter().any(|l| l.topic == topic)
    }

    /// The change topic of a sync, by its index in [`Target::sync`].
    pub(crate) fn sync_topic(&self, sync: usize) -> &str {
        &self.syncs[sync].topic
    }

    fn sync_of(&self, topic: &str) -> Option<usize> {
        self.syncs.iter().position(|s| s.topic == topic)
    }

    /// Partitions of the lists' topics that `assignment` lacks: if any, another process
    /// receives part of a list, and this one must not decide.
    pub(crate) fn missing_partitions(&self, assignment: &TopicPartitionList) -> Vec<(String, i32)> {
        self.list_partitions.iter().filter(|(topic, partition)| assignment.find_partition(topic, *partition).is_none()).cloned().collect()
    }

    /// A record of a sync with lists was admitted to its lane: index its row, at the change it
    /// carries (`origin`: a side record's original one, so a recompute reads it back from the
    /// change topic). Records the rebuild already read past change nothing (the index holds a
    /// later state).
    pub(crate) fn observe(&self, origin: &Origin<'_>, key: &[u8], presence: &Presence) {
        let Some(sync) = self.sync_of(&origin.topic) else { return };
        if rebuilt(&self.members_to, origin) {
            return;
        }
        let member = match *presence {
            Presence::Untracked => return,
            Presence::Gone => None,
            Presence::Present { identity, .. } => Some(Member {
                identity,
                offset: origin.offset,
                partition: origin.partition,
                lane: (self.route)(&origin.topic, key, self.lanes) as u16,
            }),
        };
        self.state.lock().expect("stage lock").set_member(sync, KeyHash::of(key), member);
    }


    /// A list record reached its lane: apply it to the entries and name the rows to decide
    /// again; one step under the stage's lock (the ordering argument). A record the rebuild
    /// already applied is not applied again; it owes the recomputes the rebuild recorded for it.
    /// `origin` is the change the record carries (its own coordinates, or a side record's
    /// original ones when the list's topic is also a synced one).
    pub(crate) async fn admit_list(&self, message: &OwnedMessage, origin: &Origin<'_>, schemas: &SchemaCache) -> Result<ListAdmission, SinkError> {
        let topic = origin.topic.as_ref();
        if rebuilt(&self.entries_to, origin) {
            let owed = self.replay.lock().expect("replay lock").remove(&(topic.to_string(), origin.partition, origin.offset));
            return Ok(ListAdmission::Recompute(owed.unwrap_or_default()));
        }
        // A tombstone follows the delete that already took the row off.
        let Some(payload) = message.payload() else { return Ok(ListAdmission::Recompute(Vec::new())) };
        let decoded = match schemas.decode_event(payload).await.map_err(SinkError::Kafka)? {
            Ok(decoded) => decoded,
            Err(reason) => return Ok(ListAdmission::Reject(reason)),
        };
        let row = KeyHash::of(message.key().unwrap_or_default());
        let mut targets: Vec<Target> = Vec::new();
        let mut state = self.state.lock().expect("stage lock");
        for (list, spec) in self.lists.iter().enumerate().filter(|(_, l)| l.topic == topic) {
            let named = entry_of(spec, &decoded);
            if named.is_none() && decoded.event.op != Op::Delete {
                metrics::counter!("sluice_sink_suppression_unidentified_total", "destination" => self.destination.clone(), "list" => spec.name.clone()).increment(1);
                tracing::warn!(
                    destination = %self.destination, list = %spec.name, topic, partition = origin.partition, offset = origin.offset,
                    column = %spec.identifier.column.get_ref(), "suppression list row has no identifier, so it suppresses nobody; fill the column in the model"
                );
            }
            let changed = state.set_entry(list, row, named);
            for identity in &changed {
                let on = state.entry(list, row) == Some(*identity);
                metrics::counter!("sluice_sink_suppression_changes_total", "destination" => self.destination.clone(), "list" => spec.name.clone(), "change" => if on { "on" } else { "off" }).increment(1);
            }
            for target in state.targets(list, &changed, |_, _| true) {
                if !targets.contains(&target) {
                    targets.push(target);
                }
            }
            tracing::debug!(destination = %self.destination, list = %spec.name, people = changed.len(), recomputes = targets.len(), "suppression list changed");
        }
        drop(state);
        if !targets.is_empty() {
            self.publish_sizes();
        }
        Ok(ListAdmission::Recompute(targets))
    }

    /// Decide membership at send time for every record of a sync with lists, in place: a
    /// member whose person is on one of the sync's lists leaves instead (and is counted).
    pub(crate) fn decide<'a>(&self, records: impl Iterator<Item = (&'a str, &'a Presence, &'a mut OutboundRecord)>) {
        let state = self.state.lock().expect("stage lock");
        let mut suppressed_by_sync = vec![0u64; self.syncs.len()];
        for (topic, presence, record) in records {
            let (Some(sync), Presence::Present { identity, consented }) = (self.sync_of(topic), presence) else { continue };
            let suppressed = state.suppressed(sync, *identity);
            // Never `None` for the modes lists apply to (validated); keep the action if it were.
            let Some(action) = rule(self.syncs[sync].config.mode(), record.op, *consented, suppressed) else { continue };
            if action != record.action {
                record.action = action;
                if action == Action::Delete {
                    // As mapping does for a row that leaves.
                    record.previous = None;
                }
            }
            if suppressed && *consented {
                suppressed_by_sync[sync] += 1;
            }
        }
        drop(state);
        for (sync, count) in suppressed_by_sync.into_iter().enumerate().filter(|(_, c)| *c > 0) {
            metrics::counter!("sluice_sink_suppressed_total", "destination" => self.destination.clone(), "sync" => self.syncs[sync].model.clone()).increment(count);
        }
    }

    /// Where a recompute's row is now: its latest record's partition and offset; `None` when the
    /// row left the model meanwhile (its delete was decided in the lane already).
    pub(crate) fn locate(&self, target: &Target) -> Option<(i32, i64)> {
        self.state.lock().expect("stage lock").member(target.sync, target.key).map(|m| (m.partition, m.offset))
    }

    /// The record at a row's location, read back from its topic ([`fetch`]).
    pub(crate) async fn read_back(&self, target: &Target, partition: i32, offset: i64) -> Result<Option<OwnedMessage>, SinkError> {
        let (reader, topic, key) = (Arc::clone(&self.reader), self.sync_topic(target.sync).to_string(), target.key);
        tokio::task::spawn_blocking(move || reader.read(&topic, partition, offset, key)).await.expect("read-back does not panic").map_err(SinkError::Kafka)
    }

    /// Count a recompute's outcome.
    pub(crate) fn recomputed(&self, target: &Target, outcome: &'static str) {
        metrics::counter!("sluice_sink_recomputes_total", "destination" => self.destination.clone(), "sync" => self.syncs[target.sync].model.clone(), "outcome" => outcome).increment(1);
    }

    /// Set the size gauges; returns (entries, members) in total.
    fn publish_sizes(&self) -> (usize, usize) {
        let (sizes, bytes) = {
            let state = self.state.lock().expect("stage lock");
            (state.sizes(), state.heap_bytes())
        };
        for (list, (rows, _)) in self.lists.iter().zip(&sizes.lists) {
            metrics::gauge!("sluice_sink_suppression_entries", "destination" => self.destination.clone(), "list" => list.name.clone()).set(*rows as f64);
        }
        for (sync, members) in self.syncs.iter().zip(&sizes.members) {
            metrics::gauge!("sluice_sink_stage_members", "destination" => self.destination.clone(), "sync" => sync.model.clone()).set(*members as f64);
        }
        metrics::gauge!("sluice_sink_stage_bytes", "destination" => self.destination.clone()).set(bytes as f64);
        (sizes.lists.iter().map(|(rows, _)| rows).sum(), sizes.members.iter().sum())
    }
}

/// Whether the rebuild read past the change at `origin` (`read_to`: per partition, where it
/// stopped).
fn rebuilt(read_to: &StdHashMap<(String, i32), i64>, origin: &Origin<'_>) -> bool {
    read_to.get(&(origin.topic.to_string(), origin.partition)).is_some_and(|&end| origin.offset < end)
}

/// The syncs of this destination that name lists, and those lists.
fn specs(config: &Config, syncs: &StdHashMap<String, SyncConfig>) -> (Vec<SyncSpec>, Vec<ListSpec>) {
    let mut lists: Vec<ListSpec> = Vec::new();
    let mut specs = Vec::new();
    let mut topics: Vec<&String> = syncs.keys().collect();
    topics.sort();
    for topic in topics {
        let sync = &syncs[topic];
        if !sync.is_suppressed() {
            continue;
        }
        let mut indexes = Vec::new();
        for name in &sync.suppressed_by {
            let index = match lists.iter().position(|l| l.name == *name.get_ref()) {
                Some(index) => index,
                None => {
                    let list = config.suppression_list(name.get_ref()).expect("validated: suppressed_by names defined lists");
                    lists.push(ListSpec {
                        name: name.get_ref().clone(),
                        topic: naming::change_topic(&config.kafka.topic_prefix, list.model.get_ref()),
                        identifier: list.identifier.clone(),
                    });
                    lists.len() - 1
                }
            };
            indexes.push(index);
        }
        specs.push(SyncSpec { topic: topic.clone(), model: sync.model.get_ref().clone(), config: sync.clone(), lists: indexes });
    }
    (specs, lists)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::config::KafkaConfig;

    /// The rule, for every mode a list applies to: present ∧ consented ∧ ¬suppressed adds;
    /// anything else leaves, except a delete in upsert mode (which never propagates).
    #[test]
    fn the_membership_rule() {
        use Action::{Delete, Upsert};
        for mode in sluice_core::config::SUPPRESSIBLE_MODES {
            let deleted = if mode == SyncMode::Upsert { None } else { Some(Delete) };
            for (op, consented, suppressed, expected) in [
                (Op::Update, true, false, Some(Upsert)),
                (Op::Read, true, false, Some(Upsert)),
                (Op::Update, true, true, Some(Delete)),
                (Op::Update, false, false, Some(Delete)),
                (Op::Create, false, true, Some(Delete)),
                (Op::Delete, true, false, deleted),
            ] {
                assert_eq!(rule(mode, op, consented, suppressed), expected, "{mode:?} {op:?} consented={consented} suppressed={suppressed}");
            }
        }
    }

    fn sync(extra: &str) -> SyncConfig {
        toml::from_str(&format!("model = \"customers\"\ndestination = \"d\"\nmode = \"audience\"\nfields = {{ email = \"email\" }}\n{extra}")).expect("a sync")
    }

    fn record(action: Action, op: Op, previous: bool) -> OutboundRecord {
        let email = serde_json::json!({"email": "ada@example.com"});
        OutboundRecord {
            id: "t/0/1".into(),
            model: "customers".into(),
            action,
            op,
            key: Default::default(),
            fields: email.as_object().unwrap().clone(),
            previous: previous.then(|| serde_json::json!({"email": "old@example.com"}).as_object().unwrap().clone()),
            ts_ms: 0,
        }
    }

    /// A stage over one sync (`topic`) honouring one list, with nothing read from Kafka.
    fn stage() -> Stage {
        let kafka = KafkaConfig::plaintext("127.0.0.1:1", "t");
        let identifier = IdentifierConfig { column: toml::Spanned::new(0..0, "email".into()), transforms: vec![] };
        Stage {
            destination: "meta".into(),
            syncs: vec![SyncSpec {
                topic: "topic".into(),
                model: "customers".into(),
                config: sync("suppressed_by = [\"buyers\"]\nidentifier = { column = \"email\" }"),
                lists: vec![0],
            }],
            lists: vec![ListSpec { name: "buyers".into(), topic: "purchases".into(), identifier }],
            state: Mutex::new(State::new(vec![vec![0]], 1)),
            members_to: StdHashMap::new(),
            entries_to: StdHashMap::new(),
            replay: Mutex::new(StdHashMap::new()),
            list_partitions: Vec::new(),
            reader: Reader::new(&kafka).expect("a consumer is built without connecting"),
            lanes: 1,
            route: |_, _, _| 0,
        }
    }

    #[test]
    fn send_time_decisions_follow_the_list() {
        let stage = stage();
        let ada = Some(Identity::of_text("ada@example.com"));
        let member = Presence::Present { identity: ada, consented: true };
        let decide = |presence: Presence, mut record: OutboundRecord, topic: &str| {
            stage.decide(std::iter::once((topic, &presence, &mut record)));
            record
        };
        let kept = decide(member, record(Action::Upsert, Op::Update, true), "topic");
        assert_eq!((kept.action, kept.previous.is_some()), (Action::Upsert, true), "not on the list: as mapped");

        stage.state.lock().unwrap().set_entry(0, KeyHash::of(b"purchase-1"), ada);
        let removed = decide(member, record(Action::Upsert, Op::Update, true), "topic");
        assert_eq!((removed.action, removed.previous), (Action::Delete, None), "on the list: leaves, as a revoked consent does");
        let other = decide(Presence::Present { identity: Some(Identity::of_text("bob@example.com")), consented: true }, record(Action::Upsert, Op::Update, false), "topic");
        assert_eq!(other.action, Action::Upsert, "someone else stays");
        let nobody = decide(Presence::Present { identity: None, consented: true }, record(Action::Upsert, Op::Update, false), "topic");
        assert_eq!(nobody.action, Action::Upsert, "a row without identifier is on no list");
        let elsewhere = decide(member, record(Action::Upsert, Op::Update, false), "another-topic");
        assert_eq!(elsewhere.action, Action::Upsert, "a sync without lists is not the stage's");
        let untracked = decide(Presence::Untracked, record(Action::Upsert, Op::Update, false), "topic");
        assert_eq!(untracked.action, Action::Upsert);

        stage.state.lock().unwrap().set_entry(0, KeyHash::of(b"purchase-1"), None);
        let back = decide(member, record(Action::Upsert, Op::Update, false), "topic");
        assert_eq!(back.action, Action::Upsert, "released: a member again");
        let revoked = decide(Presence::Present { identity: ada, consented: false }, record(Action::Delete, Op::Update, false), "topic");
        assert_eq!(revoked.action, Action::Delete, "consent is the same stage");
    }

    /// A side record (backfill, redrive) is the change it carries: indexed at its original
    /// coordinates, so a recompute reads it back from the change topic; what the rebuild read
    /// past (the group's frontier) is not indexed again.
    #[test]
    fn a_side_record_is_indexed_at_the_change_it_carries() {
        let mut stage = stage();
        stage.members_to.insert(("topic".into(), 0), 10);
        let ada = Presence::Present { identity: Some(Identity::of_text("ada@example.com")), consented: true };
        let target = Target { sync: 0, key: KeyHash::of(b"k"), lane: 0 };
        let side = Origin { topic: "topic".into(), partition: 0, offset: 41, side: true };
        stage.observe(&side, b"k", &ada);
        assert_eq!(stage.locate(&target), Some((0, 41)), "the original partition and offset, not the side topic's");
        let replayed = Origin { topic: "topic".into(), partition: 0, offset: 9, side: false };
        stage.observe(&replayed, b"k", &Presence::Gone);
        assert_eq!(stage.locate(&target), Some((0, 41)), "below the frontier: already in the rebuild");
        let deleted = Origin { topic: "topic".into(), partition: 0, offset: 42, side: true };
        stage.observe(&deleted, b"k", &Presence::Gone);
        assert_eq!(stage.locate(&target), None, "a delete (a key-only one too) takes the row out");
    }

    #[test]
    fn presence_is_tracked_only_for_syncs_with_lists() {
        let columns = vec!["email".to_string()];
        let row = vec![sluice_core::Value::String("ada@example.com".into())];
        let image = Image { columns: &columns, row: &row };
        let with = sync("suppressed_by = [\"buyers\"]\nidentifier = { column = \"email\" }");
        assert_eq!(presence(&with, Op::Update, true, &image), Presence::Present { identity: Some(Identity::of_text("ada@example.com")), consented: true });
        assert_eq!(presence(&with, Op::Delete, true, &image), Presence::Gone);
        assert_eq!(presence(&sync(""), Op::Update, true, &image), Presence::Untracked);
        assert_eq!(presence_of_delete(&with), Presence::Gone, "a delete known only by its key");
        assert_eq!(presence_of_delete(&sync("")), Presence::Untracked);
    }
}

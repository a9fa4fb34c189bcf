//! `sluice dlq redrive`: which selected dead letters are re-sent and which are superseded
//! ([`decide`]), the newest change of their keys ([`newest`]), and the transactions that write
//! them ([`write`]).
//!
//! Why no key goes backwards: a dead letter carries the change at `topic:partition:offset`. It
//! is **superseded** — not re-sent, marked so in the ledger and reported — when its change topic
//! holds a newer change of its key (a later state; or a later tombstone, unless the letter is the
//! `d` event that tombstone follows): that newer change was applied, is on its way, or is itself
//! a dead letter to redrive instead. The others are written to the destination's side topic,
//! where the sink decides each one again in its consume loop with its order guard (a change that
//! arrived after this check supersedes it there, counted as `outcome="superseded"` in
//! `sluice_sink_records_total`), in the lane of its key, so it is ordered with the live stream.
//!
//! Why running it twice applies nothing twice: each side record is written in one Kafka
//! transaction with the ledger record marking its dead letter `redriven` (superseded ones are
//! marked in the same transactions), by a producer whose transactional id is the destination's
//! (`naming::dead_letter_ledger_transactional_id`) and which is created *before* the ledger is
//! read: a second redrive running at the same time fences the first (whose commit then fails,
//! writing nothing), and one running after it reads its ledger records. A redriven record that
//! fails again comes back as a new dead letter (new offset, attempts raised), `pending`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rdkafka::message::{Header, Message, OwnedHeaders};
use sluice_core::config::KafkaConfig;
use sluice_kafka::compacted::{scan, Range};
use sluice_kafka::groups;
use sluice_kafka::producer::{OutRecord, TransactionalProducer};
use sluice_kafka::side::SideRecord;
use sluice_kafka::KafkaError;

use super::ledger::{Entry, Status};
use super::letters::{Letter, LetterId};
use crate::scope::Topic;

/// Dead letters per transaction: bounds a transaction's size (and its time, well inside
/// `transaction.timeout.ms`), while each one still holds a side record with its ledger record.
const CHUNK: usize = 2000;
/// How long reading a change topic partition may take.
const READ_DEADLINE: Duration = Duration::from_secs(3600);

/// What happens to one selected dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Re-send it through the side topic.
    Redrive(SideRecord),
    /// A newer change of its key exists (at this offset of its change topic).
    Superseded { newer: i64 },
    /// It carries no change of this destination that can be re-sent; why.
    Unredrivable(String),
}

/// The newest change of a key in one partition of a change topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Newest {
    /// Offset of its latest state (a change event, `d` events included).
    pub state: Option<i64>,
    /// Offset of its latest tombstone.
    pub tombstone: Option<i64>,
}

/// Where a key's changes are: change topic, partition, key bytes.
type KeyAt = (String, i32, Vec<u8>);

/// Per change topic partition: the oldest original offset of the letters in it, and their keys.
type Wanted = HashMap<(String, i32), (i64, HashSet<Vec<u8>>)>;

/// Decide one dead letter (see the module doc). `topics` are the destination's change topics;
/// `newest` the newest change of each key of the selected letters ([`newest`]).
pub(crate) fn decide(letter: &Letter, topics: &[Topic], newest: &HashMap<KeyAt, Newest>) -> Decision {
    let original = match letter.original() {
        Ok(original) => original,
        Err(error) => return Decision::Unredrivable(error),
    };
    let Some(topic) = topics.iter().find(|t| t.name == original.topic) else {
        return Decision::Unredrivable(format!("it carries a record of {}, which is not a change topic of this destination (an unreadable side record: fix and re-send it by hand)", original.topic));
    };
    let Some(key) = letter.key.clone() else { return Decision::Unredrivable("it has no key".into()) };
    if topic.supersede {
        let at = newest.get(&(original.topic.clone(), original.partition, key.clone())).copied().unwrap_or_default();
        let newer_state = at.state.filter(|&o| o > original.offset);
        let newer_tombstone = at.tombstone.filter(|&o| o > original.offset && !letter.is_delete());
        if let Some(newer) = newer_state.max(newer_tombstone) {
            return Decision::Superseded { newer };
        }
    }
    let headers = letter.headers.clone();
    match SideRecord::redrive(key, letter.payload.clone(), headers) {
        Ok(record) => Decision::Redrive(record),
        Err(error) => Decision::Unredrivable(error),
    }
}

/// The newest change of the key of every letter, read from each change topic partition from
/// the oldest letter's original offset to the end. Blocking.
pub(crate) fn newest(kafka: &KafkaConfig, letters: &[&Letter]) -> Result<HashMap<KeyAt, Newest>, KafkaError> {
    let mut wanted: Wanted = HashMap::new();
    for letter in letters {
        let (Ok(original), Some(key)) = (letter.original(), &letter.key) else { continue };
        let entry = wanted.entry((original.topic, original.partition)).or_insert((i64::MAX, HashSet::new()));
        entry.0 = entry.0.min(original.offset);
        entry.1.insert(key.clone());
    }
    let mut newest: HashMap<KeyAt, Newest> = HashMap::new();
    for ((topic, partition), (from, keys)) in wanted {
        let Some((_, _, high)) = groups::watermarks(kafka, &topic)?.into_iter().find(|&(p, _, _)| p == partition) else { continue };
        scan(kafka, &topic, &[Range { partition, from, to: high }], READ_DEADLINE, |message| {
            let Some(key) = message.key().filter(|k| keys.contains(*k)) else { return };
            let at = newest.entry((topic.clone(), partition, key.to_vec())).or_default();
            let slot = if message.payload().is_none() { &mut at.tombstone } else { &mut at.state };
            *slot = Some(message.offset());
        })?;
    }
    Ok(newest)
}

/// Write the side records of `redrive` to `side_topic` and the ledger records of `entries` to
/// `ledger_topic`, in transactions of [`CHUNK`] dead letters, each side record with its own
/// ledger record. Side records go to the partition of their original change, in original-offset
/// order.
pub(crate) async fn write(
    producer: &TransactionalProducer,
    side_topic: &str,
    ledger_topic: &str,
    mut redrive: Vec<(LetterId, SideRecord)>,
    entries: Vec<Entry>,
) -> Result<(), KafkaError> {
    redrive.sort_by(|(_, a), (_, b)| (&a.original.topic, a.original.partition, a.original.offset).cmp(&(&b.original.topic, b.original.partition, b.original.offset)));
    let mut entries: HashMap<LetterId, Entry> = entries.into_iter().map(|e| (e.letter, e)).collect();
    let mut units: Vec<(Option<SideRecord>, Entry)> = Vec::with_capacity(entries.len());
    for (letter, record) in redrive {
        let entry = entries.remove(&letter).expect("every redriven letter has its ledger entry");
        units.push((Some(record), entry));
    }
    let mut rest: Vec<Entry> = entries.into_values().collect();
    rest.sort_by_key(|e| e.letter);
    units.extend(rest.into_iter().map(|e| (None, e)));
    for chunk in units.chunks(CHUNK) {
        let mut records = Vec::with_capacity(chunk.len() * 2);
        for (side, entry) in chunk {
            if let Some(side) = side {
                records.push(OutRecord {
                    topic: side_topic.to_string(),
                    partition: Some(side.original.partition),
                    key: Some(side.key.clone()),
                    payload: side.payload.clone(),
                    headers: owned(&side.headers()),
                });
            }
            records.push(OutRecord { topic: ledger_topic.to_string(), partition: Some(0), key: Some(entry.key()), payload: Some(entry.value()), headers: OwnedHeaders::new() });
        }
        producer.send_transaction(records).await?;
    }
    Ok(())
}

fn owned(headers: &[(String, Vec<u8>)]) -> OwnedHeaders {
    headers.iter().fold(OwnedHeaders::new(), |h, (key, value)| h.insert(Header { key, value: Some(value.as_slice()) }))
}

/// The ledger entry of a decision, if it writes one (an unredrivable letter stays pending).
pub(crate) fn entry_of(letter: LetterId, decision: &Decision, at_ms: i64, operation: &str) -> Option<Entry> {
    let status = match decision {
        Decision::Redrive(_) => Status::Redriven,
        Decision::Superseded { .. } => Status::Superseded,
        Decision::Unredrivable(_) => return None,
    };
    Some(Entry { letter, status, at_ms, operation: operation.to_string() })
}

#[cfg(test)]
mod tests {
    use sluice_kafka::headers::{dlq, OP};

    use super::super::letters::tests::letter;
    use super::*;

    const T: &str = "p.changes.customers";

    fn topics(supersede: bool) -> Vec<Topic> {
        vec![Topic { name: T.into(), model: "customers".into(), supersede }]
    }

    fn at(offset: &str, op: &str) -> Letter {
        letter(0, 9, &[(dlq::ORIGINAL_TOPIC, T), (dlq::ORIGINAL_PARTITION, "1"), (dlq::ORIGINAL_OFFSET, offset), (OP, op), (dlq::ATTEMPTS, "2")])
    }

    fn newest(state: Option<i64>, tombstone: Option<i64>) -> HashMap<KeyAt, Newest> {
        HashMap::from([((T.to_string(), 1, b"k".to_vec()), Newest { state, tombstone })])
    }

    #[test]
    fn a_letter_is_redriven_unless_a_newer_change_of_its_key_exists() {
        match decide(&at("10", "u"), &topics(true), &newest(Some(10), None)) {
            Decision::Redrive(record) => {
                assert_eq!((record.original.partition, record.original.offset), (1, 10));
                assert!(record.headers().contains(&(dlq::ATTEMPTS.to_string(), b"2".to_vec())), "attempts carry on");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(decide(&at("10", "u"), &topics(true), &newest(Some(12), None)), Decision::Superseded { newer: 12 });
        assert_eq!(decide(&at("10", "u"), &topics(true), &newest(Some(10), Some(11))), Decision::Superseded { newer: 11 }, "deleted since");
        assert!(matches!(decide(&at("10", "d"), &topics(true), &newest(Some(10), Some(11))), Decision::Redrive(_)), "the tombstone after its own `d` event");
        assert!(matches!(decide(&at("10", "u"), &topics(false), &newest(Some(12), None)), Decision::Redrive(_)), "append syncs: events are never superseded");
        assert!(matches!(decide(&at("10", "u"), &topics(true), &HashMap::new()), Decision::Redrive(_)), "compacted away: nothing newer known");
    }

    #[test]
    fn letters_without_a_change_of_this_destination_are_unredrivable() {
        let foreign = letter(0, 1, &[(dlq::ORIGINAL_TOPIC, "p.side.crm"), (dlq::ORIGINAL_PARTITION, "0"), (dlq::ORIGINAL_OFFSET, "3")]);
        assert!(matches!(decide(&foreign, &topics(true), &HashMap::new()), Decision::Unredrivable(reason) if reason.contains("not a change topic of this destination")));
        assert!(matches!(decide(&letter(0, 1, &[]), &topics(true), &HashMap::new()), Decision::Unredrivable(reason) if reason.contains("sluice.original.topic")));
        let id = LetterId { partition: 0, offset: 1 };
        assert_eq!(entry_of(id, &Decision::Unredrivable("x".into()), 0, "op"), None, "stays pending");
        assert_eq!(entry_of(id, &Decision::Superseded { newer: 3 }, 0, "op").unwrap().status, Status::Superseded);
    }
}

//! The dead-letter ledger: what was done to each dead letter of a destination.
//!
//! A dead-letter topic is append-only (`retention.ms = -1`, never compacted): a record cannot be
//! removed or marked. So every action of `sluice dlq redrive` and `purge` writes one record per
//! dead letter to the destination's ledger topic (`<prefix>.dlq_ledger.<destination>`,
//! compacted), keyed by the dead letter's `partition:offset`, valued with the [`Status`] it has
//! now, when, and by which operation. A dead letter without a ledger record is `pending`.
//!
//! Guarantees:
//! - Ledger records are written in the same Kafka transaction as the side records of a redrive
//!   (`super::redrive`), so a dead letter is marked `redriven` exactly when its record reached
//!   the side topic; `read_committed` readers never see one without the other.
//! - The latest record of a dead letter wins (compaction keeps it; a reader takes the last).
//! - An unreadable ledger record is reported, never guessed at: the command stops (exit 1)
//!   rather than redrive a dead letter twice.

use std::collections::HashMap;

use serde_json::json;

use super::letters::{Letter, LetterId};

/// What has been done to a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Status {
    /// Nothing yet: `redrive` selects it.
    Pending,
    /// Its record was written to the side topic: the sink applies it (or dead-letters it again,
    /// as a new dead letter with its attempts raised).
    Redriven,
    /// Not re-sent: a newer change of its key exists, and re-sending it would move the key
    /// backwards at the destination.
    Superseded,
    /// Removed by `purge`: `list`, `show` and `redrive` leave it out.
    Purged,
}

impl Status {
    /// Every status, in the order lists show them.
    pub(crate) const ALL: [Status; 4] = [Status::Pending, Status::Redriven, Status::Superseded, Status::Purged];

    /// The label in the ledger, in output and in `--json`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Redriven => "redriven",
            Status::Superseded => "superseded",
            Status::Purged => "purged",
        }
    }

    fn parse(label: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.label() == label)
    }
}

/// One ledger record: the status a dead letter has from now on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub letter: LetterId,
    pub status: Status,
    /// When (ms since the epoch).
    pub at_ms: i64,
    /// Which run of `sluice dlq` wrote it (`redrive-<uuid>`, `purge-<uuid>`).
    pub operation: String,
}

impl Entry {
    /// The record key: the dead letter's `partition:offset`.
    pub(crate) fn key(&self) -> Vec<u8> {
        self.letter.to_string().into_bytes()
    }

    /// The record value: JSON `{"status", "at_ms", "operation"}`.
    pub(crate) fn value(&self) -> Vec<u8> {
        json!({ "status": self.status.label(), "at_ms": self.at_ms, "operation": self.operation }).to_string().into_bytes()
    }

    fn parse(record: &Letter) -> Result<Entry, String> {
        let at = format!("ledger record at {}", record.id);
        let key = record.key.as_deref().ok_or_else(|| format!("{at} has no key"))?;
        let letter: LetterId = std::str::from_utf8(key).map_err(|_| format!("{at}: key is not UTF-8"))?.parse().map_err(|e| format!("{at}: {e}"))?;
        let value: serde_json::Value = serde_json::from_slice(record.payload.as_deref().unwrap_or_default()).map_err(|e| format!("{at}: value is not JSON: {e}"))?;
        let status = value["status"].as_str().and_then(Status::parse).ok_or_else(|| format!("{at}: `status` is not one of pending, redriven, superseded, purged"))?;
        Ok(Entry { letter, status, at_ms: value["at_ms"].as_i64().unwrap_or(0), operation: value["operation"].as_str().unwrap_or("").to_string() })
    }
}

/// The status of every dead letter of a destination, as its ledger says.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    statuses: HashMap<LetterId, Status>,
}

impl Ledger {
    /// The ledger from its records, in offset order (the last record of a dead letter wins).
    pub(crate) fn from_records(records: &[Letter]) -> Result<Ledger, String> {
        let mut statuses = HashMap::new();
        for record in records {
            let entry = Entry::parse(record)?;
            statuses.insert(entry.letter, entry.status);
        }
        Ok(Ledger { statuses })
    }

    /// A dead letter's status.
    pub(crate) fn status(&self, letter: LetterId) -> Status {
        self.statuses.get(&letter).copied().unwrap_or(Status::Pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64, entry: &Entry) -> Letter {
        Letter { id: LetterId { partition: 0, offset }, timestamp_ms: None, key: Some(entry.key()), payload: Some(entry.value()), headers: Vec::new() }
    }

    #[test]
    fn the_last_entry_of_a_letter_wins_and_unrecorded_letters_are_pending() {
        let letter = LetterId { partition: 1, offset: 7 };
        let entry = |status| Entry { letter, status, at_ms: 5, operation: "redrive-x".into() };
        let ledger = Ledger::from_records(&[record(0, &entry(Status::Redriven)), record(1, &entry(Status::Purged))]).unwrap();
        assert_eq!(ledger.status(letter), Status::Purged);
        assert_eq!(ledger.status(LetterId { partition: 1, offset: 8 }), Status::Pending);
        assert_eq!(Entry::parse(&record(0, &entry(Status::Superseded))).unwrap(), entry(Status::Superseded), "round trip");
    }

    #[test]
    fn an_unreadable_ledger_record_is_named() {
        let bad = Letter { id: LetterId { partition: 0, offset: 3 }, timestamp_ms: None, key: Some(b"1:7".to_vec()), payload: Some(b"{\"status\":\"gone\"}".to_vec()), headers: Vec::new() };
        let error = Ledger::from_records(&[bad]).unwrap_err();
        assert!(error.contains("ledger record at 0:3: `status` is not one of"), "{error}");
    }
}

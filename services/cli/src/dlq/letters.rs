//! Dead letters as read back from a destination's dead-letter topic ([`Letter`]), and reading a
//! whole topic with each record's coordinates ([`read_all`]), which the ledger uses too.

use std::time::Duration;

use rdkafka::message::{Headers, Message};
use sluice_core::config::KafkaConfig;
use sluice_kafka::compacted::{scan, Range};
use sluice_kafka::groups;
use sluice_kafka::headers::dlq;
use sluice_kafka::side::Original;
use sluice_kafka::KafkaError;

/// How long reading one topic to its end may take.
const READ_DEADLINE: Duration = Duration::from_secs(3600);

/// Where a dead letter is on its dead-letter topic: `partition:offset`, its identity in the
/// ledger and on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct LetterId {
    pub partition: i32,
    pub offset: i64,
}

impl std::fmt::Display for LetterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.partition, self.offset)
    }
}

impl std::str::FromStr for LetterId {
    type Err = String;

    fn from_str(text: &str) -> Result<LetterId, String> {
        let parsed = text.split_once(':').and_then(|(p, o)| Some(LetterId { partition: p.parse().ok()?, offset: o.parse().ok()? }));
        parsed.filter(|id| id.partition >= 0 && id.offset >= 0).ok_or_else(|| format!("{text:?} is not a dead letter's `<partition>:<offset>`"))
    }
}

/// One record of a topic, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Letter {
    pub id: LetterId,
    /// The record's timestamp (ms since the epoch): when it was dead-lettered.
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    /// `None`: a tombstone (a delete known only by its key, class `compacted_delete`).
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Letter {
    /// One header's value, when present and UTF-8 (the last one, should it repeat).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().rev().find(|(k, _)| k == name).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The `sluice.error.class` label (`unknown` when the header is missing).
    pub(crate) fn class(&self) -> &str {
        self.header(dlq::ERROR_CLASS).unwrap_or("unknown")
    }

    /// The reason the sink gave (never personal data: `schemas/README.md`).
    pub(crate) fn message(&self) -> &str {
        self.header(dlq::ERROR_MESSAGE).unwrap_or("")
    }

    /// Delivery attempts so far.
    pub(crate) fn attempts(&self) -> u64 {
        self.header(dlq::ATTEMPTS).and_then(|a| a.parse().ok()).unwrap_or(0)
    }

    /// When it last failed (ms since the epoch): its `sluice.error.last_failure_ms`, else the
    /// record's timestamp. What `--since` and `--until` compare.
    pub(crate) fn failed_at_ms(&self) -> Option<i64> {
        self.header(dlq::LAST_FAILURE_MS).and_then(|t| t.parse().ok()).or(self.timestamp_ms)
    }

    /// The change it carries, from its `sluice.original.*` headers.
    pub(crate) fn original(&self) -> Result<Original, String> {
        let owned = self.headers.iter().fold(rdkafka::message::OwnedHeaders::new(), |h, (k, v)| h.insert(rdkafka::message::Header { key: k, value: Some(v.as_slice()) }));
        Original::from_headers(Some(&owned))
    }

    /// Whether it is a `d` event (its `sluice.op` header).
    pub(crate) fn is_delete(&self) -> bool {
        self.header(sluice_kafka::headers::OP) == Some("d")
    }
}

/// Every committed record of `topic` with its coordinates, in offset order per partition, up to
/// the end offsets seen at the start. An absent topic has none. Blocking.
pub(crate) fn read_all(kafka: &KafkaConfig, topic: &str) -> Result<Vec<Letter>, KafkaError> {
    let ranges: Vec<Range> = groups::watermarks(kafka, topic)?.into_iter().map(|(partition, from, to)| Range { partition, from, to }).collect();
    let mut records = Vec::new();
    scan(kafka, topic, &ranges, READ_DEADLINE, |message| {
        let headers = message.headers().map(|h| h.iter().map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect()).unwrap_or_default();
        records.push(Letter {
            id: LetterId { partition: message.partition(), offset: message.offset() },
            timestamp_ms: message.timestamp().to_millis(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
        });
    })?;
    records.sort_by_key(|r| r.id);
    Ok(records)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A dead letter with these headers.
    pub(crate) fn letter(partition: i32, offset: i64, headers: &[(&str, &str)]) -> Letter {
        Letter {
            id: LetterId { partition, offset },
            timestamp_ms: Some(1_000),
            key: Some(b"k".to_vec()),
            payload: Some(b"v".to_vec()),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect(),
        }
    }

    #[test]
    fn letter_ids_round_trip_and_bad_ones_are_named() {
        assert_eq!("2:41".parse(), Ok(LetterId { partition: 2, offset: 41 }));
        assert_eq!(LetterId { partition: 2, offset: 41 }.to_string(), "2:41");
        for bad in ["2", "a:1", "1:-1", ""] {
            assert!(bad.parse::<LetterId>().unwrap_err().contains("is not a dead letter's `<partition>:<offset>`"), "{bad}");
        }
    }

    #[test]
    fn a_letter_reads_its_headers() {
        let l = letter(0, 1, &[(dlq::ERROR_CLASS, "permanent"), (dlq::ATTEMPTS, "3"), (dlq::LAST_FAILURE_MS, "5000"), (sluice_kafka::headers::OP, "d")]);
        assert_eq!((l.class(), l.attempts(), l.failed_at_ms(), l.is_delete()), ("permanent", 3, Some(5000), true));
        let bare = letter(0, 2, &[]);
        assert_eq!((bare.class(), bare.attempts(), bare.failed_at_ms(), bare.is_delete()), ("unknown", 0, Some(1_000), false));
        assert!(bare.original().unwrap_err().contains("sluice.original.topic"));
    }
}

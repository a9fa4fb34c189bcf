//! Side records: changes that reach one destination outside its live change stream — a
//! backfill, a dead-letter redrive — produced to its side topic (`<prefix>.side.<destination>`,
//! [`sluice_core::naming::side_topic`]) and applied by its sink in order with the live stream.
//!
//! A side record is the original change record, untouched (key and value bytes), plus headers
//! naming where it came from, with the dead-letter header names (`schemas/README.md`):
//! `sluice.original.topic`, `sluice.original.partition`, `sluice.original.offset` (required),
//! `sluice.original.timestamp_ms` (optional), and `sluice.side.source` saying who produced it
//! (`backfill`, `redrive`, ...). A record redriven from a dead-letter topic keeps that dead
//! letter's headers, so `sluice.error.attempts` and `sluice.error.first_failure_ms` carry on:
//! if it fails again, its new dead letter counts the attempts of both.
//!
//! Guarantees the sink gives a side record (docs/sink.md, "The order guard"):
//! - it is mapped with the sync of its original topic and applied only if no newer state of its
//!   key reached (or is on its way to) the destination; else it is finished as `superseded`;
//! - it goes through the lane of (original topic, key), so it is ordered with live records of
//!   the same key;
//! - its own offset on the side topic is committed like any other record's, and a failure
//!   dead-letters it with its *original* coordinates.
//!
//! What the producer must do, and [`SideProducer`] does: write it to the side topic's partition
//! equal to its original partition. The side topic has as many partitions as the change topics
//! of its destination and the sink's group uses the range assignor, so side partition `p` is
//! owned by the sink instance that owns partition `p` of every change topic — the one that can
//! order the side record with the live records of its key. The sink dead-letters a side record
//! found in another partition.

use std::time::Duration;

use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_core::config::KafkaConfig;

use crate::headers::dlq;
use crate::{client_config, KafkaError};

/// Who produced a side record (`backfill`, `redrive`, or a tool's own word): logs and metrics.
pub const SOURCE: &str = "sluice.side.source";

/// Where a change record was first written: its change topic, partition and offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The original record's timestamp (ms since the epoch), when known.
    pub timestamp_ms: Option<i64>,
}

impl Original {
    /// Read the original coordinates from a side record's headers; the error names the header
    /// that is missing or malformed.
    pub fn from_headers(headers: Option<&impl Headers>) -> Result<Original, String> {
        let get = |name: &str| -> Option<&str> {
            headers?.iter().find(|h| h.key == name).and_then(|h| std::str::from_utf8(h.value?).ok())
        };
        let required = |name: &str| get(name).ok_or_else(|| format!("side record has no UTF-8 `{name}` header"));
        let topic = required(dlq::ORIGINAL_TOPIC)?;
        if topic.is_empty() {
            return Err(format!("side record's `{}` header is empty", dlq::ORIGINAL_TOPIC));
        }
        let number = |name: &str| -> Result<i64, String> {
            let text = required(name)?;
            text.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| format!("side record's `{name}` header is not a non-negative integer: {text:?}"))
        };
        let partition = i32::try_from(number(dlq::ORIGINAL_PARTITION)?).map_err(|_| format!("side record's `{}` header is out of range", dlq::ORIGINAL_PARTITION))?;
        let offset = number(dlq::ORIGINAL_OFFSET)?;
        let timestamp_ms = get(dlq::ORIGINAL_TIMESTAMP_MS).and_then(|t| t.parse().ok());
        Ok(Original { topic: topic.to_string(), partition, offset, timestamp_ms })
    }
}

/// One side record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideRecord {
    pub original: Original,
    /// The original key bytes, untouched.
    pub key: Vec<u8>,
    /// The original value bytes, untouched (`None`: a tombstone).
    pub payload: Option<Vec<u8>>,
    /// Who produces it ([`SOURCE`]).
    pub source: String,
    /// Headers to keep ahead of the side headers: the original record's own (trace context,
    /// schema fingerprint), and for a redrive the dead letter's (so attempts carry on). Any
    /// `sluice.original.*` or `sluice.side.source` among them is replaced.
    pub kept: Vec<(String, Vec<u8>)>,
}

impl SideRecord {
    /// A side record carrying the change at `original`, with no headers kept.
    pub fn new(original: Original, key: Vec<u8>, payload: Option<Vec<u8>>, source: &str) -> SideRecord {
        SideRecord { original, key, payload, source: source.to_string(), kept: Vec::new() }
    }

    /// A redrive of a dead letter: its bytes and headers as they are on the dead-letter topic;
    /// the original coordinates come from its `sluice.original.*` headers.
    pub fn redrive(key: Vec<u8>, payload: Option<Vec<u8>>, headers: Vec<(String, Vec<u8>)>) -> Result<SideRecord, String> {
        let owned = headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| h.insert(Header { key: k, value: Some(v.as_slice()) }));
        let original = Original::from_headers(Some(&owned))?;
        Ok(SideRecord { original, key, payload, source: "redrive".into(), kept: headers })
    }

    /// The headers to write: the kept ones (without stale side headers), then the side headers.
    pub fn headers(&self) -> Vec<(String, Vec<u8>)> {
        let replaced = [dlq::ORIGINAL_TOPIC, dlq::ORIGINAL_PARTITION, dlq::ORIGINAL_OFFSET, dlq::ORIGINAL_TIMESTAMP_MS, SOURCE];
        let mut headers: Vec<(String, Vec<u8>)> = self.kept.iter().filter(|(k, _)| !replaced.contains(&k.as_str())).cloned().collect();
        let mut add = |key: &str, value: String| headers.push((key.to_string(), value.into_bytes()));
        add(dlq::ORIGINAL_TOPIC, self.original.topic.clone());
        add(dlq::ORIGINAL_PARTITION, self.original.partition.to_string());
        add(dlq::ORIGINAL_OFFSET, self.original.offset.to_string());
        if let Some(ts) = self.original.timestamp_ms {
            add(dlq::ORIGINAL_TIMESTAMP_MS, ts.to_string());
        }
        add(SOURCE, self.source.clone());
        headers
    }
}

/// Idempotent, `acks=all` producer of one destination's side topic, writing each record to the
/// partition of its original ([`SideRecord::original`]).
pub struct SideProducer {
    producer: FutureProducer,
    topic: String,
}

impl SideProducer {
    /// A producer for `topic` (`naming::side_topic(prefix, destination)`).
    pub fn new(kafka: &KafkaConfig, topic: String) -> Result<SideProducer, KafkaError> {
        let producer = client_config(kafka)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "60000")
            .create()
            .map_err(|e| KafkaError::classify("create side producer", e))?;
        Ok(SideProducer { producer, topic })
    }

    /// Write one side record and wait for the broker's acknowledgement. Keep many in flight by
    /// joining several of these futures.
    pub async fn send(&self, record: &SideRecord) -> Result<(), KafkaError> {
        let headers = record.headers();
        let owned = headers.iter().fold(OwnedHeaders::new(), |h, (key, value)| h.insert(Header { key, value: Some(value.as_slice()) }));
        let mut out = FutureRecord::to(&self.topic).partition(record.original.partition).key(&record.key).headers(owned);
        if let Some(payload) = &record.payload {
            out = out.payload(payload);
        }
        self.producer.send(out, Duration::from_secs(30)).await.map(|_| ()).map_err(|(error, _)| KafkaError::classify("write side record", error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(pairs: &[(String, Vec<u8>)]) -> OwnedHeaders {
        pairs.iter().fold(OwnedHeaders::new(), |h, (k, v)| h.insert(Header { key: k, value: Some(v.as_slice()) }))
    }

    #[test]
    fn the_original_coordinates_round_trip_through_the_headers() {
        let original = Original { topic: "sluice.changes.customers".into(), partition: 2, offset: 41, timestamp_ms: Some(1_700_000_000_000) };
        let record = SideRecord::new(original.clone(), b"k".to_vec(), Some(b"v".to_vec()), "backfill");
        let headers = record.headers();
        assert_eq!(Original::from_headers(Some(&owned(&headers))), Ok(original));
        assert!(headers.contains(&(SOURCE.to_string(), b"backfill".to_vec())));
    }

    #[test]
    fn a_redrive_keeps_the_dead_letter_headers_and_replaces_stale_side_headers_once() {
        let letter: Vec<(String, Vec<u8>)> = [
            ("traceparent", "00-x"),
            (dlq::ERROR_CLASS, "permanent"),
            (dlq::ATTEMPTS, "3"),
            (dlq::ORIGINAL_TOPIC, "sluice.changes.customers"),
            (dlq::ORIGINAL_PARTITION, "0"),
            (dlq::ORIGINAL_OFFSET, "7"),
            (SOURCE, "redrive"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
        let record = SideRecord::redrive(b"k".to_vec(), None, letter).expect("a dead letter names its original");
        assert_eq!(record.original.offset, 7);
        let headers = record.headers();
        assert_eq!(headers.iter().filter(|(k, _)| k == dlq::ORIGINAL_OFFSET).count(), 1, "written once");
        assert_eq!(headers.iter().filter(|(k, _)| k == SOURCE).count(), 1);
        assert!(headers.contains(&(dlq::ATTEMPTS.to_string(), b"3".to_vec())), "attempts carry on");
        assert_eq!(headers[0].0, "traceparent", "the original's headers first");
    }

    #[test]
    fn malformed_side_headers_are_named() {
        let cases: [(&[(&str, &str)], &str); 4] = [
            (&[], "no UTF-8 `sluice.original.topic` header"),
            (&[(dlq::ORIGINAL_TOPIC, "t"), (dlq::ORIGINAL_PARTITION, "0")], "no UTF-8 `sluice.original.offset` header"),
            (&[(dlq::ORIGINAL_TOPIC, "t"), (dlq::ORIGINAL_PARTITION, "x"), (dlq::ORIGINAL_OFFSET, "1")], "`sluice.original.partition` header is not a non-negative integer"),
            (&[(dlq::ORIGINAL_TOPIC, ""), (dlq::ORIGINAL_PARTITION, "0"), (dlq::ORIGINAL_OFFSET, "1")], "`sluice.original.topic` header is empty"),
        ];
        for (pairs, expected) in cases {
            let headers: Vec<(String, Vec<u8>)> = pairs.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
            let error = Original::from_headers(Some(&owned(&headers))).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
    }
}

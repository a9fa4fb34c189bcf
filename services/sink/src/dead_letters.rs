//! Dead letters: why a record will not be applied ([`Failure`]), the headers that say so, and
//! the sink they are written to ([`DeadLetterSink`]).
//!
//! Guarantees:
//! - A dead letter carries the original key, value and headers untouched, followed by the
//!   context headers of `schemas/README.md` ([`context_headers`]): class, reason, status,
//!   excerpt, attempts, first and last failure, destination, and where the record came from.
//!   A side record's dead letter names its original change, and its attempts continue from the
//!   ones its headers carried (a redrive that fails again comes back with its attempts raised);
//!   the context a record carried from an earlier dead letter is replaced, never duplicated.
//! - The class is a [`DeadLetterClass`], never free text, so its header holds only the labels
//!   the contract lists.
//! - [`DeadLetterSink::write`] returns `Ok` only once the dead letter is durable (for Kafka:
//!   acknowledged by the broker with `acks=all`); only then may the record count as finished.

use std::future::Future;

use rdkafka::message::{Headers, Message, OwnedMessage};
use sluice_core::DeadLetterClass;
use sluice_kafka::dead_letter::{DeadLetter, DeadLetterWriter};
use sluice_kafka::headers::dlq;
use sluice_kafka::KafkaError;

use crate::side::{self, Origin};

/// Where dead letters go. A trait so the delivery logic can be tested without a broker.
pub(crate) trait DeadLetterSink: Send + Sync {
    /// Write one dead letter; `Ok` only once it is durable.
    fn write(&self, letter: DeadLetter<'_>) -> impl Future<Output = Result<(), KafkaError>> + Send;
}

impl DeadLetterSink for DeadLetterWriter {
    fn write(&self, letter: DeadLetter<'_>) -> impl Future<Output = Result<(), KafkaError>> + Send {
        DeadLetterWriter::write(self, letter)
    }
}

/// What a failure said: the reason, and the destination's status and words when it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cause {
    /// Human-readable reason, without personal data.
    pub message: String,
    /// The destination's HTTP status, when there was one.
    pub status: Option<u16>,
    /// Start of the destination's response body (bounded by the destination).
    pub excerpt: String,
}

/// How many attempts a record had, and when they failed (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attempts {
    pub made: usize,
    pub first_failure_ms: i64,
    pub last_failure_ms: i64,
}

/// A record that will not be applied, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub class: DeadLetterClass,
    pub cause: Cause,
    pub attempts: Attempts,
}

/// The headers of a dead letter: the original record's own, kept, followed by the context. For a
/// side record ([`crate::side`]) the context names its original change, and counts the attempts
/// and first failure its headers carried from earlier dead letters; the context it carried is
/// not copied (written afresh, once).
pub(crate) fn context_headers(destination: &str, message: &OwnedMessage, failure: &Failure) -> Vec<(String, Vec<u8>)> {
    let mut headers: Vec<(String, Vec<u8>)> = message
        .headers()
        .map(|h| h.iter().filter(|h| !side::is_context_header(h.key)).map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect())
        .unwrap_or_default();
    // An unreadable side record keeps its own coordinates: they are where it can be found.
    let own = Origin { topic: message.topic().into(), partition: message.partition(), offset: message.offset(), side: false };
    let origin = side::origin(message, |_| true).unwrap_or(own);
    let (prior_attempts, prior_first) = side::prior_failures(message);
    let first_failure_ms = prior_first.map_or(failure.attempts.first_failure_ms, |prior| prior.min(failure.attempts.first_failure_ms));
    let mut add = |key: &str, value: String| headers.push((key.to_string(), value.into_bytes()));
    add(dlq::ERROR_CLASS, failure.class.label().to_string());
    add(dlq::ERROR_MESSAGE, failure.cause.message.clone());
    if let Some(status) = failure.cause.status {
        add(dlq::RESPONSE_STATUS, status.to_string());
    }
    add(dlq::RESPONSE_EXCERPT, failure.cause.excerpt.clone());
    add(dlq::ATTEMPTS, (prior_attempts + failure.attempts.made).to_string());
    add(dlq::FIRST_FAILURE_MS, first_failure_ms.to_string());
    add(dlq::LAST_FAILURE_MS, failure.attempts.last_failure_ms.to_string());
    add(dlq::DESTINATION, destination.to_string());
    add(dlq::ORIGINAL_TOPIC, origin.topic.to_string());
    add(dlq::ORIGINAL_PARTITION, origin.partition.to_string());
    add(dlq::ORIGINAL_OFFSET, origin.offset.to_string());
    let original_timestamp = if origin.side {
        message.headers().and_then(|h| h.iter().find(|h| h.key == dlq::ORIGINAL_TIMESTAMP_MS)).and_then(|h| std::str::from_utf8(h.value?).ok()?.parse::<i64>().ok())
    } else {
        message.timestamp().to_millis()
    };
    if let Some(ts) = original_timestamp {
        add(dlq::ORIGINAL_TIMESTAMP_MS, ts.to_string());
    }
    headers
}

/// The dead-letter class of a record the destination refused for good: a delete known only by
/// its key (a tombstone whose `d` event was compacted away) is [`DeadLetterClass::CompactedDelete`], whatever the
/// destination said about it.
pub(crate) fn refused_class(message: &OwnedMessage, class: DeadLetterClass) -> DeadLetterClass {
    if class == DeadLetterClass::Permanent && message.payload().is_none() {
        DeadLetterClass::CompactedDelete
    } else {
        class
    }
}

/// The dead letter of `message`: its bytes, untouched, with `headers`.
pub(crate) fn letter(message: &OwnedMessage, headers: Vec<(String, Vec<u8>)>) -> DeadLetter<'_> {
    DeadLetter { key: message.key(), payload: message.payload(), headers }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_tombstone_is_a_compacted_delete_and_nothing_else_changes_class() {
        let tombstone = OwnedMessage::new(None, Some(b"k".to_vec()), "t".into(), rdkafka::Timestamp::NotAvailable, 0, 1, None);
        let event = crate::testing::message("k", 1);
        assert_eq!(refused_class(&tombstone, DeadLetterClass::Permanent), DeadLetterClass::CompactedDelete);
        assert_eq!(refused_class(&tombstone, DeadLetterClass::RetriesExhausted), DeadLetterClass::RetriesExhausted, "a failing destination is not the tombstone's fault");
        assert_eq!(refused_class(&event, DeadLetterClass::Permanent), DeadLetterClass::Permanent);
    }
}

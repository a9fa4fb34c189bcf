//! Record headers sluice writes and reads. The full list, with meanings, is in
//! `schemas/README.md`; change both together.

use rdkafka::message::{Header, Headers, OwnedHeaders};

/// W3C trace context of the span that produced the record.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
/// 16 hex digits: CRC-64-AVRO fingerprint of the value's writer schema (also in-band).
pub const SCHEMA_FINGERPRINT: &str = "sluice.schema.fingerprint";
/// The poller run that produced the record.
pub const RUN_ID: &str = "sluice.run.id";
/// Change-event operation (`c`, `u`, `d`, `r`), so consumers can filter without decoding.
pub const OP: &str = "sluice.op";
/// xxh3 hash (16 hex digits) of the event's `after` row, from the snapshot modes; lets the
/// poller rebuild its state from headers alone. Absent on deletes and tombstones.
pub const ROW_HASH: &str = "sluice.row.hash";
/// When the event's row stops being live, ms since the epoch (decimal), or `never` (its expiry
/// column is NULL): on every event of a model with `expire` (a delete: its `before` row), so
/// the poller rebuilds which keys to expire from headers alone. Absent on tombstones.
pub const EXPIRES_AT_MS: &str = "sluice.expires_at_ms";

/// Dead-letter context headers (Kafka Connect's `__connect.errors.*` in spirit).
pub mod dlq {
    /// A [`sluice_core::DeadLetterClass`] label: `permanent`, `retryable` (retries exhausted),
    /// `decode` (not a readable event) or `compacted_delete` (a delete known only by its key
    /// that the destination could not apply).
    pub const ERROR_CLASS: &str = "sluice.error.class";
    /// Human-readable reason.
    pub const ERROR_MESSAGE: &str = "sluice.error.message";
    /// Destination HTTP status, when there was one.
    pub const RESPONSE_STATUS: &str = "sluice.error.response.status";
    /// First 1 KiB of the destination's response body.
    pub const RESPONSE_EXCERPT: &str = "sluice.error.response.excerpt";
    /// Delivery attempts made.
    pub const ATTEMPTS: &str = "sluice.error.attempts";
    /// First and last failure, ms since the epoch.
    pub const FIRST_FAILURE_MS: &str = "sluice.error.first_failure_ms";
    pub const LAST_FAILURE_MS: &str = "sluice.error.last_failure_ms";
    /// Destination that rejected the record.
    pub const DESTINATION: &str = "sluice.error.destination";
    /// Where the record came from (also the required headers of a side record, `side.rs`).
    pub const ORIGINAL_TOPIC: &str = "sluice.original.topic";
    pub const ORIGINAL_PARTITION: &str = "sluice.original.partition";
    pub const ORIGINAL_OFFSET: &str = "sluice.original.offset";
    pub const ORIGINAL_TIMESTAMP_MS: &str = "sluice.original.timestamp_ms";
}

/// Builds an [`OwnedHeaders`] from string pairs.
pub fn owned<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> OwnedHeaders {
    pairs.into_iter().fold(OwnedHeaders::new(), |headers, (key, value)| {
        headers.insert(Header { key, value: Some(value.as_bytes()) })
    })
}

/// All headers with UTF-8 values, as string pairs (others are skipped).
pub fn pairs(headers: Option<&impl Headers>) -> Vec<(String, String)> {
    let Some(headers) = headers else { return Vec::new() };
    headers
        .iter()
        .filter_map(|h| Some((h.key.to_string(), std::str::from_utf8(h.value?).ok()?.to_string())))
        .collect()
}

/// Value of one header, if present and UTF-8.
pub fn get<'a>(headers: &'a [(String, String)], key: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

//! What the sink sees of a destination: a kind name, a batch limit, and `send`, which answers
//! with the records refused inside a request that went through, or the request's failure.

use std::future::Future;

use sluice_core::ErrorClass;

use crate::record::OutboundRecord;

/// A destination that applies batches of records.
pub trait Destination: Send + Sync {
    /// Stable name of the destination kind, for metrics (`webhook`, `hubspot`, ...).
    fn kind(&self) -> &'static str;

    /// Most records one request may carry (the vendor's limit); the sink never sends more.
    fn max_batch_records(&self) -> usize;

    /// Apply a batch. `Ok(vec![])`: the vendor confirmed every record. `Ok(failures)`: the
    /// records at those indexes were not applied (sorted by index, one entry per record), the
    /// others were. `Err`: the request failed as a whole, with what the caller must do.
    fn send(&self, batch: &[OutboundRecord]) -> impl Future<Output = Result<Vec<RecordFailure>, DeliveryError>> + Send;
}

/// A failed request: nothing of the batch was applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    /// What the caller must do.
    pub class: ErrorClass,
    /// HTTP status, when the destination answered.
    pub status: Option<u16>,
    /// Start of the destination's response body (bounded, for dead-letter headers).
    pub excerpt: String,
    /// What happened, in words (no personal data).
    pub message: String,
    /// The vendor's throttle signal (`http_429`, `request_limit_exceeded`, ...) when the answer
    /// was the vendor saying "later" rather than failing: the sink retries a throttle without
    /// spending the retry budget (`retry.throttle`).
    pub throttle: Option<&'static str>,
}

impl DeliveryError {
    /// A failure without an answer to quote (no HTTP status, no body).
    pub fn unanswered(class: ErrorClass, message: impl Into<String>) -> DeliveryError {
        DeliveryError { class, status: None, excerpt: String::new(), message: message.into(), throttle: None }
    }
}

/// One record the destination refused inside an otherwise successful request.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordFailure {
    /// Index into the batch that was sent.
    pub index: usize,
    /// What the caller must do with this record.
    pub class: ErrorClass,
    /// Why, in words (no personal data).
    pub message: String,
    /// HTTP status of the request that carried it, when there was one.
    pub status: Option<u16>,
    /// The vendor's words about this record (bounded).
    pub excerpt: String,
}

impl RecordFailure {
    /// A record refused before or by the vendor: dead-letter it.
    pub fn permanent(index: usize, message: impl Into<String>, status: Option<u16>, excerpt: impl Into<String>) -> RecordFailure {
        RecordFailure { index, class: ErrorClass::Permanent, message: message.into(), status, excerpt: excerpt.into() }
    }
}

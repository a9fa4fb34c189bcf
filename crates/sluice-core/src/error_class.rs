//! Failure classes, named by what the caller must do.
//!
//! Every error that crosses a crate boundary on the delivery path can say which of these it is.
//! The classes are deliberately few: a service needs to know whether to try again, to set the
//! record aside and go on, or to stop — not the details of every vendor's error codes.

use std::time::Duration;

/// What the caller must do with a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient (throttling, 5xx, timeouts, connection resets): try the same work again after
    /// `retry_after` when the other side said how long to wait, else after backoff.
    Retryable { retry_after: Option<Duration> },
    /// The record itself is unacceptable (validation errors, malformed data): dead-letter it and
    /// go on with the stream. Retrying cannot help.
    Permanent,
    /// The destination or its configuration is unusable (bad credentials, unknown endpoint):
    /// stop consuming and turn not-ready. Dead-lettering would pour the whole stream into the
    /// dead-letter topic, so it must never be done for this class.
    Fatal,
}

impl ErrorClass {
    /// Stable label for metrics and dead-letter headers.
    pub fn label(&self) -> &'static str {
        match self {
            ErrorClass::Retryable { .. } => "retryable",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Fatal => "fatal",
        }
    }
}

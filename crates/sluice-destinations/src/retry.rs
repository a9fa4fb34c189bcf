//! One classifier shape for every destination: the vendor's answer to one request becomes a
//! [`Verdict`].
//!
//! Like Vector's `RetryLogic`, classification is two hooks of one shape, each kind's
//! `classify.rs` implementing both over its own request and answer types:
//! 1. [`RetryLogic::request_failure`], the whole-request policy: a status code, an error
//!    envelope, a refused connection. `Some` means nothing of the request was applied.
//! 2. [`RetryLogic::record_failures`], for an answer that passed the first hook: the records
//!    refused inside it (a 2xx with errors in the body, per-command error replies). An error
//!    the hook cannot attribute to a record fails the request (`Err`), so the sink isolates the
//!    bad record by sending one at a time.
//!
//! [`RetryLogic::classify`] runs them in that order; nothing else decides a class. Both hooks
//! are pure (the answer carries the time it arrived), so each kind's table test pins its whole
//! policy.

use crate::destination::{DeliveryError, RecordFailure};

/// What one answer means.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Every record the request carried was applied.
    Applied,
    /// The request went through, but these records (indexes into the batch) were not applied.
    Partial(Vec<RecordFailure>),
    /// Nothing of the request was applied.
    Failed(RequestFailure),
}

/// A whole request's failure, and whether the vendor was asking us to slow down.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestFailure {
    /// What the caller must do, and the vendor's answer.
    pub error: DeliveryError,
    /// The vendor's throttle signal (a bounded label: `http_429`, `daily`, ...), when the answer
    /// was a throttle; counted in `sluice_destination_throttled_total`.
    pub throttle: Option<&'static str>,
}

impl From<DeliveryError> for RequestFailure {
    fn from(error: DeliveryError) -> RequestFailure {
        RequestFailure { error, throttle: None }
    }
}

impl RequestFailure {
    /// A throttle answer: the vendor said to come back later.
    pub fn throttled(signal: &'static str, error: DeliveryError) -> RequestFailure {
        RequestFailure { error, throttle: Some(signal) }
    }

    /// A throttle when `signal` is `Some`, else a plain failure.
    pub fn throttled_if(signal: Option<&'static str>, error: DeliveryError) -> RequestFailure {
        RequestFailure { error, throttle: signal }
    }
}

/// A destination's retry logic: its two hooks, and the verdict they make together.
pub trait RetryLogic {
    /// One request as sent: the wire form and which records each of its items carries.
    type Request: Send + Sync;
    /// The vendor's answer to one request (an HTTP answer, Redis's replies, ...).
    type Answer: Send;

    /// Hook 1, the whole-request policy: `Some` when the answer failed the request.
    fn request_failure(&self, request: &Self::Request, answer: &Self::Answer) -> Option<RequestFailure>;

    /// Hook 2, for an answer that passed hook 1: the records refused inside it; `Err` when it
    /// reports an error naming no record of the request.
    fn record_failures(&self, request: &Self::Request, answer: &Self::Answer) -> Result<Vec<RecordFailure>, DeliveryError>;

    /// The verdict on one answer: hook 1, then hook 2.
    fn classify(&self, request: &Self::Request, answer: &Self::Answer) -> Verdict {
        if let Some(failure) = self.request_failure(request, answer) {
            return Verdict::Failed(failure);
        }
        match self.record_failures(request, answer) {
            Ok(failures) if failures.is_empty() => Verdict::Applied,
            Ok(failures) => Verdict::Partial(failures),
            Err(error) => Verdict::Failed(error.into()),
        }
    }
}

#[cfg(test)]
impl Verdict {
    /// The class of a failed request, `None` otherwise: what table tests compare.
    pub(crate) fn request_class(&self) -> Option<sluice_core::ErrorClass> {
        match self {
            Verdict::Failed(failure) => Some(failure.error.class.clone()),
            Verdict::Applied | Verdict::Partial(_) => None,
        }
    }

    /// (index, class) of every refused record; empty unless `Partial`.
    pub(crate) fn refused(&self) -> Vec<(usize, sluice_core::ErrorClass)> {
        match self {
            Verdict::Partial(failures) => failures.iter().map(|f| (f.index, f.class.clone())).collect(),
            Verdict::Applied | Verdict::Failed(_) => Vec::new(),
        }
    }
}

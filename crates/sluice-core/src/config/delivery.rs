//! How a sink delivers to its destination: retries and rate limits. Shared by every kind.

use serde::Deserialize;

/// Retry policy for retryable failures: exponential backoff with full jitter, never above
/// `max_backoff_ms`, and the destination's own `Retry-After` (or reset time) preferred whenever
/// it gives one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub initial_backoff_ms: u64,
    /// The largest backoff: every wait the sink chooses itself is at most this. A wait the
    /// destination asks for (`Retry-After`, a reset time) is honoured as asked, even above it.
    pub max_backoff_ms: u64,
    /// Attempts in all (the first one included) before a retryable failure is dead-lettered as
    /// exhausted. Throttles do not count under [`ThrottleRetry::Wait`], nor do waits the
    /// destination asked for.
    pub max_attempts: usize,
    /// Extra HTTP statuses to treat as retryable (e.g. 409 for a vendor that uses it for
    /// "locked, try again"), on top of each destination's own policy.
    pub retry_on_statuses: Vec<u16>,
    /// What a throttle that names no wait costs.
    pub throttle: ThrottleRetry,
}

/// What a throttle (the vendor saying "later": a 429, Salesforce `REQUEST_LIMIT_EXCEEDED`, a
/// Meta rate-limit code, ...) costs when it does not say how long to wait. One that does is
/// always waited out as asked and costs nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThrottleRetry {
    /// Back off (jittered, at most `max_backoff_ms`) and try again for as long as it lasts,
    /// without spending `max_attempts`: a throttle never dead-letters a record. The default.
    #[default]
    Wait,
    /// Back off the same way, spending `max_attempts` like any retryable failure: a throttle
    /// that outlasts the budget dead-letters the record as `retryable`.
    Budget,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig { initial_backoff_ms: 200, max_backoff_ms: 30_000, max_attempts: 10, retry_on_statuses: Vec::new(), throttle: ThrottleRetry::Wait }
    }
}

/// Rate limits of a destination. Every request attempt (retries included) spends permits,
/// because vendors count every call.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests per second, at most, in any one-second window.
    pub requests_per_second: Option<f64>,
    /// Records per second, at most, in any one-second window.
    pub records_per_second: Option<f64>,
}

/// The dead-letter circuit breaker of a destination: the sink halts (not ready, nothing more
/// dead-lettered or committed) instead of pouring a stream into the dead-letter topic, e.g.
/// after a mapping change the destination refuses for every record.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterBreakerConfig {
    /// Dead letters in a row (no record applied between them) the sink writes at most; the next
    /// one halts it instead. 0: no limit.
    pub max_consecutive: u64,
    /// Share of dead letters among the last `window_records` finished records (applied or
    /// dead-lettered) above which the sink halts, judged once the window is full. 1.0: no limit.
    pub max_ratio: f64,
    /// The window of `max_ratio`, in finished records.
    pub window_records: u64,
}

impl Default for DeadLetterBreakerConfig {
    fn default() -> Self {
        DeadLetterBreakerConfig { max_consecutive: 1_000, max_ratio: 0.5, window_records: 1_000 }
    }
}

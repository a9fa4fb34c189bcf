//! How a sink delivers to its destination: retries and rate limits. Shared by every kind.

use serde::Deserialize;

/// Retry policy for retryable failures: exponential backoff with full jitter, bounded, and the
/// destination's own `Retry-After` (or reset time) preferred whenever it gives one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Attempts in all (the first one included) before a retryable failure is dead-lettered as
    /// exhausted.
    pub max_attempts: usize,
    /// Extra HTTP statuses to treat as retryable (e.g. 409 for a vendor that uses it for
    /// "locked, try again"), on top of each destination's own policy.
    pub retry_on_statuses: Vec<u16>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig { initial_backoff_ms: 200, max_backoff_ms: 30_000, max_attempts: 10, retry_on_statuses: Vec::new() }
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

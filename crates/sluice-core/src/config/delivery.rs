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

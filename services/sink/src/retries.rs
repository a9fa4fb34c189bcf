//! When a failed request is sent again, and when the sink stops trying.
//!
//! Guaranteed:
//! - **Every wait the sink chooses is at most `retry.max_backoff_ms`.** Full jitter: the n-th
//!   backoff is drawn uniformly from `[0, min(max_backoff_ms, initial_backoff_ms · 2ⁿ)]`, inside
//!   the cap by construction. (backon's jitter added up to a whole step *on top of* the capped
//!   step — gaps of up to twice the cap, 39.5 s and 56.9 s were seen with a 30 s cap.)
//! - **Jitter is random per process and per batch**: drawn from `rand::rng()`, a generator
//!   seeded from the operating system in every thread, so lanes and replicas that failed
//!   together spread their retries out. (backon without its `std` feature, as sluice builds it,
//!   seeds every backoff with one fixed constant: every batch retried in lockstep.)
//! - **A wait the destination names is honoured as named** (`Retry-After`, a reset time, a
//!   daily quota), also above `max_backoff_ms`: coming back earlier only earns another throttle
//!   and spends a call of the vendor's allowance. Such a wait spends no retry budget. (A
//!   `Retry-After` header is bounded to one hour where it is parsed; a stop cuts any wait short.)
//! - **A throttle never spends the retry budget by default.** A throttle that names no wait
//!   (Salesforce `REQUEST_LIMIT_EXCEEDED` without `Sforce-Limit-Info`, Meta 80003 without
//!   `X-Business-Use-Case-Usage`, a bare 429) is backed off like a failure — jittered, capped —
//!   and tried again for as long as it lasts under `retry.throttle = "wait"`; under `"budget"`
//!   it spends the budget like a failure.
//! - **The budget**: `max_attempts - 1` backoffs after failures (5xx, timeouts, a refused
//!   connection, records refused as retryable); then the records are dead-lettered as
//!   `retries_exhausted` (`retryable`).

use std::time::Duration;

use rand::Rng as _;
use sluice_core::config::{RetryConfig, ThrottleRetry};

use crate::dead_letters::Attempts;

/// Why records are to be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Again {
    /// The destination named the wait (the longest, when several records named one).
    After(Duration),
    /// The destination throttled us without naming a wait.
    Throttled,
    /// A failure without instructions.
    Failed,
}

impl Again {
    /// From a retryable answer: the wait it named, whether it was a throttle.
    pub(crate) fn of(retry_after: Option<Duration>, throttled: bool) -> Again {
        match (retry_after, throttled) {
            (Some(wait), _) => Again::After(wait),
            (None, true) => Again::Throttled,
            (None, false) => Again::Failed,
        }
    }
}

/// A wait before the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delay {
    /// The destination asked us to slow down (a named wait, or a backoff after a throttle):
    /// counted as throttled time, spends no budget under `retry.throttle = "wait"`.
    Throttled(Duration),
    /// A failure's backoff, which spent one step of the budget.
    Backoff(Duration),
}

/// Exponential backoff with full jitter, never above its cap ([module doc](self)).
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    /// Backoffs drawn so far: the exponent of the next step.
    step: u32,
}

impl Backoff {
    pub(crate) fn new(retry: &RetryConfig) -> Backoff {
        let max = Duration::from_millis(retry.max_backoff_ms);
        Backoff { initial: Duration::from_millis(retry.initial_backoff_ms).min(max), max, step: 0 }
    }

    /// The ceiling of the next draw: `min(max, initial · 2^step)`.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 2u32.checked_pow(self.step).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next wait: uniform in `[0, ceiling]`, in whole milliseconds.
    pub(crate) fn next(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.step = self.step.saturating_add(1);
        let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=ceiling_ms))
    }
}

/// The retry state of one request's records: attempts made, the backoff, the budget left.
pub(crate) struct Retries {
    pub(crate) backoff: Backoff,
    throttle: ThrottleRetry,
    /// Backoffs after failures still allowed.
    budget: usize,
    made: usize,
    first_answer_ms: Option<i64>,
}

impl Retries {
    pub(crate) fn new(retry: &RetryConfig) -> Retries {
        Retries { backoff: Backoff::new(retry), throttle: retry.throttle, budget: retry.max_attempts.saturating_sub(1), made: 0, first_answer_ms: None }
    }

    /// Count an answered attempt; what a failure of it would carry. Once a record fails, the
    /// first answer was a failure too (a success would have finished it), so the first answer
    /// is its first failure.
    pub(crate) fn answered(&mut self, now_ms: i64) -> Attempts {
        self.made += 1;
        let first = *self.first_answer_ms.get_or_insert(now_ms);
        Attempts { made: self.made, first_failure_ms: first, last_failure_ms: now_ms }
    }

    /// The wait before sending again, or `None` once the budget is spent ([module doc](self)).
    pub(crate) fn next_delay(&mut self, again: Again) -> Option<Delay> {
        match (again, self.throttle) {
            (Again::After(wait), _) => Some(Delay::Throttled(wait)),
            (Again::Throttled, ThrottleRetry::Wait) => Some(Delay::Throttled(self.backoff.next())),
            (Again::Throttled, ThrottleRetry::Budget) | (Again::Failed, _) => {
                self.budget = self.budget.checked_sub(1)?;
                Some(Delay::Backoff(self.backoff.next()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(initial_backoff_ms: u64, max_backoff_ms: u64, max_attempts: usize, throttle: ThrottleRetry) -> RetryConfig {
        RetryConfig { initial_backoff_ms, max_backoff_ms, max_attempts, retry_on_statuses: Vec::new(), throttle }
    }

    /// Issue 12: gaps of 39.5 s and 56.9 s with a 30 s cap. Every draw, however many, is inside
    /// `[0, min(cap, initial · 2ⁿ)]`, the ceilings double up to the cap, and the draws spread
    /// over their range rather than sitting at its top.
    #[test]
    fn every_backoff_is_inside_its_step_and_the_cap() {
        let config = retry(200, 30_000, 10, ThrottleRetry::Wait);
        let mut backoff = Backoff::new(&config);
        let cap = Duration::from_secs(30);
        let mut ceilings = Vec::new();
        let mut at_cap = Vec::new();
        for _ in 0..2_000 {
            let ceiling = backoff.ceiling();
            let wait = backoff.next();
            assert!(wait <= ceiling && ceiling <= cap, "wait {wait:?}, ceiling {ceiling:?}");
            ceilings.push(ceiling);
            if ceiling == cap {
                at_cap.push(wait);
            }
        }
        let first: Vec<u64> = ceilings[..9].iter().map(|c| c.as_millis() as u64).collect();
        assert_eq!(first, [200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000]);
        // Full jitter: uniform over [0, cap]; both halves are drawn.
        assert!(at_cap.iter().any(|w| *w < cap / 4) && at_cap.iter().any(|w| *w > cap * 3 / 4), "spread over the range");
        // Extreme settings do not overflow.
        let mut extreme = Backoff::new(&retry(3_600_000, 86_400_000, 1000, ThrottleRetry::Wait));
        for _ in 0..200 {
            assert!(extreme.next() <= Duration::from_secs(86_400));
        }
    }

    /// backon without `std` seeded every backoff with one constant: two batches failing together
    /// retried in lockstep. Two backoffs built from one config draw different sequences.
    #[test]
    fn jitter_is_not_a_fixed_sequence() {
        let config = retry(1000, 30_000, 10, ThrottleRetry::Wait);
        let draw = || {
            let mut backoff = Backoff::new(&config);
            (0..16).map(|_| backoff.next()).collect::<Vec<_>>()
        };
        assert_ne!(draw(), draw(), "one seed for every backoff");
    }

    #[test]
    fn throttles_spend_the_budget_only_when_configured_and_named_waits_never() {
        let throttle = retry(100, 1000, 3, ThrottleRetry::Wait);
        let mut retries = Retries::new(&throttle);
        for _ in 0..1000 {
            assert!(matches!(retries.next_delay(Again::Throttled), Some(Delay::Throttled(w)) if w <= Duration::from_secs(1)));
            assert_eq!(retries.next_delay(Again::After(Duration::from_secs(3600))), Some(Delay::Throttled(Duration::from_secs(3600))), "honoured above the cap");
        }
        assert!(matches!(retries.next_delay(Again::Failed), Some(Delay::Backoff(_))));
        assert!(matches!(retries.next_delay(Again::Failed), Some(Delay::Backoff(_))));
        assert_eq!(retries.next_delay(Again::Failed), None, "max_attempts = 3: two backoffs");

        let mut retries = Retries::new(&retry(100, 1000, 3, ThrottleRetry::Budget));
        assert!(matches!(retries.next_delay(Again::Throttled), Some(Delay::Backoff(_))));
        assert!(matches!(retries.next_delay(Again::After(Duration::from_secs(5))), Some(Delay::Throttled(_))), "a named wait is free either way");
        assert!(matches!(retries.next_delay(Again::Failed), Some(Delay::Backoff(_))));
        assert_eq!(retries.next_delay(Again::Throttled), None, "\"budget\": throttles spend it like failures");
    }
}

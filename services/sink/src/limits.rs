//! Rate limits and adaptive concurrency for one destination.
//!
//! - **Requests per second** go through `governor` (GCRA), one cell per request with no burst,
//!   so requests are evenly spaced and no one-second window holds more than the rate.
//! - **Records per second** use a sliding-window log: a request of `n` records waits until the
//!   records sent in the last second plus `n` fit the limit. (A GCRA bucket would admit a burst
//!   on top of the rate when batch sizes vary; a log never does.)
//! - Both run at 98% of the configured rate: the margin absorbs scheduling and network jitter
//!   between our clock and the vendor's, which is what "never exceeded in any window" is judged
//!   by. Measured utilisation stays well above 95% of the configured rate (README benchmark).
//! - **Adaptive concurrency** (AIMD, after Vector's adaptive request concurrency): the number of
//!   requests in flight grows by one after a window of successes at the current limit and halves
//!   on throttling or failure, between 1 and `max_concurrency`.
//!
//! Every attempt, retries included, spends permits: vendors count every call.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Fraction of the configured rate actually used; see the module docs.
const SAFETY: f64 = 0.98;
const WINDOW: Duration = Duration::from_secs(1);

pub(crate) struct RateLimits {
    requests: Option<DefaultDirectRateLimiter>,
    records: Option<RecordWindow>,
}

struct RecordWindow {
    limit: f64,
    /// (sent at, records) of the last second.
    sent: Mutex<VecDeque<(Instant, usize)>>,
}

impl RateLimits {
    pub(crate) fn new(config: &sluice_core::config::RateLimitConfig) -> RateLimits {
        let requests = config.requests_per_second.map(|rate| {
            let period = Duration::from_secs_f64(1.0 / (rate * SAFETY));
            DefaultDirectRateLimiter::direct(
                Quota::with_period(period).expect("positive rate, validated").allow_burst(NonZeroU32::MIN),
            )
        });
        let records =
            config.records_per_second.map(|rate| RecordWindow { limit: (rate * SAFETY).floor().max(1.0), sent: Mutex::new(VecDeque::new()) });
        RateLimits { requests, records }
    }

    /// Wait until a request of `records` records may be sent, and account for it.
    pub(crate) async fn acquire(&self, records: usize) {
        if let Some(window) = &self.records {
            window.acquire(records).await;
        }
        if let Some(limiter) = &self.requests {
            limiter.until_ready().await;
        }
    }

    /// Whether any limit is configured (for metrics).
    pub(crate) fn is_limited(&self) -> bool {
        self.requests.is_some() || self.records.is_some()
    }
}

impl RecordWindow {
    async fn acquire(&self, records: usize) {
        // A request larger than the whole limit can only ever go alone in its window.
        let records_f = (records as f64).min(self.limit);
        loop {
            let wait = {
                let mut sent = self.sent.lock().expect("rate window lock");
                let now = Instant::now();
                while sent.front().is_some_and(|(at, _)| now.duration_since(*at) >= WINDOW) {
                    sent.pop_front();
                }
                let in_window: usize = sent.iter().map(|(_, n)| n).sum();
                if in_window as f64 + records_f <= self.limit {
                    sent.push_back((now, records));
                    return;
                }
                // Wait until enough of the oldest entries have left the window.
                let mut freed = 0.0;
                let mut until = now;
                for (at, n) in sent.iter() {
                    freed += *n as f64;
                    until = *at + WINDOW;
                    if in_window as f64 - freed + records_f <= self.limit {
                        break;
                    }
                }
                until.saturating_duration_since(now)
            };
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }
}

/// AIMD limit on requests in flight.
pub(crate) struct AdaptiveConcurrency {
    state: Mutex<Aimd>,
    changed: Notify,
    max: usize,
}

struct Aimd {
    limit: f64,
    in_flight: usize,
}

/// A request slot; released when dropped.
pub(crate) struct Slot<'a> {
    owner: &'a AdaptiveConcurrency,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.owner.state.lock().expect("aimd lock").in_flight -= 1;
        self.owner.changed.notify_waiters();
    }
}

impl AdaptiveConcurrency {
    pub(crate) fn new(max: usize) -> AdaptiveConcurrency {
        AdaptiveConcurrency { state: Mutex::new(Aimd { limit: 1.0, in_flight: 0 }), changed: Notify::new(), max }
    }

    /// Wait for a slot under the current limit.
    pub(crate) async fn acquire(&self) -> Slot<'_> {
        loop {
            let notified = self.changed.notified();
            {
                let mut state = self.state.lock().expect("aimd lock");
                if (state.in_flight as f64) < state.limit.floor() {
                    state.in_flight += 1;
                    return Slot { owner: self };
                }
            }
            notified.await;
        }
    }

    /// A request succeeded: additive increase (one more slot per limit's worth of successes).
    pub(crate) fn success(&self) {
        let mut state = self.state.lock().expect("aimd lock");
        state.limit = (state.limit + 1.0 / state.limit).min(self.max as f64);
        drop(state);
        self.changed.notify_waiters();
    }

    /// The destination throttled or failed: multiplicative decrease.
    pub(crate) fn backoff(&self) {
        let mut state = self.state.lock().expect("aimd lock");
        state.limit = (state.limit / 2.0).max(1.0);
    }

    pub(crate) fn limit(&self) -> usize {
        self.state.lock().expect("aimd lock").limit.floor() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn record_window_never_exceeds_the_limit_in_any_second() {
        let limits = RateLimits::new(&sluice_core::config::RateLimitConfig { requests_per_second: None, records_per_second: Some(1000.0) });
        let start = Instant::now();
        let mut sends = Vec::new();
        for n in [100usize, 500, 500, 300, 700, 50, 500, 500, 500] {
            limits.acquire(n).await;
            sends.push((Instant::now().duration_since(start), n));
        }
        for (i, (t, _)) in sends.iter().enumerate() {
            let in_window: usize = sends[i..].iter().take_while(|(u, _)| *u < *t + WINDOW).map(|(_, n)| n).sum();
            assert!(in_window <= 980, "window from {t:?} holds {in_window} records");
        }
        // Fully used: a request that waited could not have gone 1 ms earlier.
        for (i, (t, n)) in sends.iter().enumerate().skip(1) {
            if *t == sends[i - 1].0 {
                continue;
            }
            let earlier = *t - Duration::from_millis(1);
            let in_window: usize = sends[..i].iter().filter(|(u, _)| *u + WINDOW > earlier).map(|(_, n)| n).sum();
            assert!(in_window + n > 980, "send {i} at {t:?} waited although {in_window} + {n} fit");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn aimd_grows_on_success_and_halves_on_throttling() {
        let aimd = AdaptiveConcurrency::new(8);
        assert_eq!(aimd.limit(), 1);
        for _ in 0..20 {
            aimd.success();
        }
        assert!(aimd.limit() >= 5, "grew to {}", aimd.limit());
        let before = aimd.limit();
        aimd.backoff();
        assert_eq!(aimd.limit(), (before as f64 / 2.0).floor().max(1.0) as usize);
        for _ in 0..1000 {
            aimd.success();
        }
        assert_eq!(aimd.limit(), 8, "capped at max_concurrency");
        let a = aimd.acquire().await;
        let b = aimd.acquire().await;
        drop((a, b));
    }
}

//! Rate limits and adaptive concurrency for one destination.
//!
//! **Never exceeded, judged by the vendor's clock.** A vendor counts a request when it
//! *arrives*, which is somewhere between our send and our receipt of its answer. So each
//! request occupies the limiter's window from its send until one second after its answer
//! ([`Window`]): then any one-second window of arrivals at the vendor holds at most the limit,
//! whatever the network delay (proof sketch: take the last-sent request `j` of a vendor window
//! starting at arrival `a_k`; every other request `i` in it was answered at `r_i >= a_i >= a_k >
//! a_j - 1s >= s_j - 1s`, so it was still counted when `j` was sent). The cost is that a slow
//! vendor's latency is added to each window, which the benchmark in the README measures.
//!
//! **Used fully.** A request waits only while the window is full, and `governor` (GCRA, burst
//! 1) spaces requests evenly at the configured rate instead of releasing them in bursts.
//!
//! Requests per second and records per second are two windows; a request of `n` records takes
//! one cell of the first and `n` of the second. Every attempt, retries included, spends
//! permits: vendors count every call.
//!
//! **Fuller requests when requests are scarce.** Under a requests-per-second limit at most the
//! window's limit of requests is ever in flight, so the sink runs no more lanes than that
//! ([`RateLimits::useful_lanes`]), and a lane whose batch is not full waits for room in the
//! window while it keeps filling the batch ([`RateLimits::until_request_room`]).
//!
//! **Adaptive concurrency** (AIMD, after Vector's adaptive request concurrency): the number of
//! requests in flight grows by one after a window of successes at the current limit and halves
//! on throttling or failure, between 1 and `max_concurrency`.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota};
use tokio::sync::Notify;
use tokio::time::Instant;

pub(crate) struct RateLimits {
    pacing: Option<DefaultDirectRateLimiter>,
    requests: Option<Window>,
    records: Option<Window>,
}

/// A held rate-limit reservation; dropping it records that the answer arrived.
pub(crate) struct Permit<'a> {
    held: Vec<(&'a Window, u64)>,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        for (window, id) in &self.held {
            window.complete(*id);
        }
    }
}

/// A rate no limiter can hold: not finite, not positive, or so small or large that its period
/// is not a `Duration` of at least a nanosecond. The config's validation refuses these first
/// (`sluice_core::config::bounds`); this keeps the conversion total anyway.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("rate_limit.{setting} = {rate} cannot be enforced (see docs/configuration.md#rate-limits)")]
pub(crate) struct InvalidRate {
    setting: &'static str,
    rate: f64,
}

/// The pacing period of `rate` per second: `1/rate` as a non-zero `Duration`.
fn period(setting: &'static str, rate: f64) -> Result<Duration, InvalidRate> {
    let invalid = || InvalidRate { setting, rate };
    if !(rate.is_finite() && rate > 0.0) {
        return Err(invalid());
    }
    Duration::try_from_secs_f64(1.0 / rate).ok().filter(|p| !p.is_zero()).ok_or_else(invalid)
}

impl RateLimits {
    pub(crate) fn new(config: &sluice_core::config::RateLimitConfig) -> Result<RateLimits, InvalidRate> {
        let (mut pacing, mut requests, mut records) = (None, None, None);
        if let Some(rate) = config.requests_per_second {
            let period = period("requests_per_second", rate)?;
            let quota = Quota::with_period(period).ok_or(InvalidRate { setting: "requests_per_second", rate })?;
            pacing = Some(DefaultDirectRateLimiter::direct(quota.allow_burst(NonZeroU32::MIN)));
            // Below one request per second the window stretches: one request per 1/rate seconds.
            requests = Some(if rate >= 1.0 { Window::new(rate.floor() as usize, Duration::from_secs(1)) } else { Window::new(1, period) });
        }
        if let Some(rate) = config.records_per_second {
            if !(rate.is_finite() && rate >= 1.0) {
                return Err(InvalidRate { setting: "records_per_second", rate });
            }
            records = Some(Window::new(rate.floor() as usize, Duration::from_secs(1)));
        }
        Ok(RateLimits { pacing, requests, records })
    }

    /// Wait until a request of `records` records may be sent; hold the permit until its answer.
    pub(crate) async fn acquire(&self, records: usize) -> Permit<'_> {
        let mut held = Vec::new();
        if let Some(window) = &self.records {
            held.push((window, window.acquire(records).await));
        }
        if let Some(limiter) = &self.pacing {
            limiter.until_ready().await;
        }
        if let Some(window) = &self.requests {
            held.push((window, window.acquire(1).await));
        }
        Permit { held }
    }

    /// Wait until a request would find room in the requests-per-second window now, without
    /// taking it (at once without that limit). A lane asks this before sending a batch that is
    /// not full, and keeps filling the batch meanwhile (the `lanes` module). The even pacing
    /// may still hold the request a fraction of a period in [`RateLimits::acquire`].
    pub(crate) async fn until_request_room(&self) {
        if let Some(window) = &self.requests {
            window.until_room(1).await;
        }
    }

    /// How many lanes can be useful: at most `max_concurrency`, and under a requests-per-second
    /// limit no more than the requests that can ever be in flight at once — the window's limit,
    /// since each request holds a cell of it from its send until a second after its answer.
    /// More lanes would only cut the same requests per second into smaller batches (issue 12:
    /// 300 records at 1 request/s went out as 8 requests of 37 instead of 2 of 200).
    pub(crate) fn useful_lanes(&self, max_concurrency: usize) -> usize {
        let in_flight = self.requests.as_ref().map_or(usize::MAX, |window| window.limit);
        max_concurrency.min(in_flight).max(1)
    }

    /// Whether any limit is configured (for logs).
    pub(crate) fn is_limited(&self) -> bool {
        self.requests.is_some() || self.records.is_some()
    }
}

/// A sliding window in which each reservation counts from its start until `length` after its
/// completion (or for as long as it is in flight).
pub(crate) struct Window {
    limit: usize,
    length: Duration,
    state: Mutex<WindowState>,
    completed: Notify,
}

#[derive(Default)]
struct WindowState {
    next_id: u64,
    /// (id, units, completed at) of every reservation still counting.
    entries: VecDeque<(u64, usize, Option<Instant>)>,
}

impl Window {
    fn new(limit: usize, length: Duration) -> Window {
        Window { limit: limit.max(1), length, state: Mutex::new(WindowState::default()), completed: Notify::new() }
    }

    async fn acquire(&self, units: usize) -> u64 {
        loop {
            let notified = self.completed.notified();
            match self.room(units, true) {
                Ok(id) => return id,
                Err(wait) => Self::wait(wait, notified).await,
            }
        }
    }

    /// Wait until `units` would fit now, without reserving them.
    async fn until_room(&self, units: usize) {
        loop {
            let notified = self.completed.notified();
            match self.room(units, false) {
                Ok(_) => return,
                Err(wait) => Self::wait(wait, notified).await,
            }
        }
    }

    /// Whether `units` fit now; reserves them (returning the reservation's id) when `reserve`.
    /// `Err`: how long until a completed reservation leaves the window (`None`: only an
    /// in-flight one completing can make room, which `completed` signals).
    fn room(&self, units: usize, reserve: bool) -> Result<u64, Option<Duration>> {
        // A request larger than the whole limit can only ever go alone in its window.
        let units_counted = units.min(self.limit);
        let mut state = self.state.lock().expect("rate window lock");
        let now = Instant::now();
        state.entries.retain(|(_, _, done)| done.is_none_or(|at| now.duration_since(at) < self.length));
        let used: usize = state.entries.iter().map(|(_, n, _)| (*n).min(self.limit)).sum();
        if used + units_counted <= self.limit {
            let id = state.next_id;
            if reserve {
                state.next_id += 1;
                state.entries.push_back((id, units, None));
            }
            return Ok(id);
        }
        Err(state.entries.iter().filter_map(|(_, _, done)| done.map(|at| at + self.length)).min().map(|t| t.saturating_duration_since(now)))
    }

    async fn wait(wait: Option<Duration>, notified: tokio::sync::futures::Notified<'_>) {
        match wait {
            Some(wait) => {
                tokio::select! {
                    _ = tokio::time::sleep(wait.max(Duration::from_millis(1))) => {}
                    _ = notified => {}
                }
            }
            None => notified.await,
        }
    }

    fn complete(&self, id: u64) {
        let mut state = self.state.lock().expect("rate window lock");
        if let Some(entry) = state.entries.iter_mut().find(|(e, _, _)| *e == id) {
            entry.2 = Some(Instant::now());
        }
        drop(state);
        self.completed.notify_waiters();
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
    async fn window_counts_each_request_until_a_second_after_its_answer() {
        let window = Window::new(100, Duration::from_secs(1));
        let start = Instant::now();
        // 60 records in flight for 300 ms, then answered.
        let a = window.acquire(60).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        window.complete(a);
        // 50 more do not fit until the first is a full second past its answer (t = 1.3 s).
        let b = window.acquire(50).await;
        assert_eq!(Instant::now().duration_since(start), Duration::from_millis(1300));
        window.complete(b);
        // 40 fit next to the 50 at once: the window is used fully.
        let before = Instant::now();
        window.acquire(40).await;
        assert_eq!(Instant::now(), before);
    }

    #[tokio::test(start_paused = true)]
    async fn records_per_second_hold_in_every_window_of_sends() {
        let limits = RateLimits::new(&sluice_core::config::RateLimitConfig { requests_per_second: None, records_per_second: Some(1000.0) }).unwrap();
        let start = Instant::now();
        let mut sends = Vec::new();
        for n in [100usize, 500, 500, 300, 700, 50, 500, 500, 500] {
            let permit = limits.acquire(n).await;
            sends.push((Instant::now().duration_since(start), n));
            drop(permit);
        }
        for (i, (t, _)) in sends.iter().enumerate() {
            let in_window: usize = sends[i..].iter().take_while(|(u, _)| *u < *t + Duration::from_secs(1)).map(|(_, n)| n).sum();
            assert!(in_window <= 1000, "window from {t:?} holds {in_window} records");
        }
    }

    /// Issue 12: `inf` panicked in `Quota::with_period`, `1e-20` in `Duration::from_secs_f64`.
    #[test]
    fn rates_no_limiter_can_hold_are_errors_not_panics() {
        use sluice_core::config::RateLimitConfig;
        for rate in [f64::INFINITY, f64::NAN, 1e-20, 0.0, -0.0, -1.0, 1e300, f64::MIN_POSITIVE] {
            let config = RateLimitConfig { requests_per_second: Some(rate), records_per_second: None };
            assert!(RateLimits::new(&config).is_err(), "requests_per_second = {rate}");
        }
        for rate in [f64::INFINITY, f64::NAN, 0.5, -1.0] {
            let config = RateLimitConfig { requests_per_second: None, records_per_second: Some(rate) };
            assert!(RateLimits::new(&config).is_err(), "records_per_second = {rate}");
        }
        let config = RateLimitConfig { requests_per_second: Some(1.0 / 86_400.0), records_per_second: Some(1e9) };
        assert!(RateLimits::new(&config).unwrap().is_limited());
    }

    /// Issue 12: at 1 request/s, 8 lanes sent 300 records as 8 requests of 37. No more lanes
    /// than requests can be in flight under the limit.
    #[test]
    fn no_more_lanes_than_requests_can_be_in_flight() {
        use sluice_core::config::RateLimitConfig;
        let lanes = |requests_per_second, records_per_second, max| {
            RateLimits::new(&RateLimitConfig { requests_per_second, records_per_second }).unwrap().useful_lanes(max)
        };
        assert_eq!(lanes(None, None, 8), 8);
        assert_eq!(lanes(None, Some(1000.0), 8), 8, "records are not requests");
        assert_eq!(lanes(Some(1.0), None, 8), 1);
        assert_eq!(lanes(Some(0.2), None, 8), 1, "one request per 5 s: one in flight");
        assert_eq!(lanes(Some(3.5), None, 8), 3);
        assert_eq!(lanes(Some(100.0), None, 8), 8);
        assert_eq!(lanes(Some(100.0), None, 0), 1, "never no lane");
    }

    /// Waiting for room takes nothing: the request that then acquires gets it at once.
    #[tokio::test(start_paused = true)]
    async fn room_for_a_request_is_waited_for_without_taking_it() {
        let limits = RateLimits::new(&sluice_core::config::RateLimitConfig { requests_per_second: Some(1.0), records_per_second: None }).unwrap();
        let start = Instant::now();
        limits.until_request_room().await;
        assert_eq!(Instant::now(), start, "room at once");
        let permit = limits.acquire(10).await;
        let answered = async {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            drop(permit);
        };
        tokio::join!(limits.until_request_room(), answered);
        assert_eq!(Instant::now().duration_since(start), Duration::from_millis(3500), "a second after the answer");
        let before = Instant::now();
        drop(limits.acquire(10).await);
        assert_eq!(Instant::now(), before, "the room was not taken by waiting for it");
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

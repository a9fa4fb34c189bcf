//! The dead-letter circuit breaker: a sink halts instead of dead-lettering a whole stream.
//!
//! Guarantees (config `dead_letter_breaker`, docs/configuration.md):
//! - [`Breaker::admit`] is asked before every dead letter is written. It refuses — and the
//!   dead letter is not written — when writing it would make more than `max_consecutive` dead
//!   letters in a row, or when, counted in, the dead letters among the last `window_records`
//!   finished records (a full window) would be a share above `max_ratio`. The refusal stops the
//!   sink like a fatal error: the batch holding the record stays unfinished, so no offset is
//!   committed past it, and it is delivered again after the restart.
//! - Once tripped it stays tripped (every lane shares one breaker): no dead letter is written
//!   after the trip.
//! - Applied records ([`Breaker::applied`]) end a run of dead letters and fill the window.
//!
//! A restart starts afresh (the counts are not stored): the operator fixes the cause first.

use std::collections::VecDeque;
use std::sync::Mutex;

use sluice_core::config::DeadLetterBreakerConfig;

/// Why the breaker tripped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tripped(pub String);

/// One destination's breaker, shared by its lanes.
#[derive(Debug)]
pub(crate) struct Breaker {
    config: DeadLetterBreakerConfig,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Dead letters since the last applied record.
    consecutive: u64,
    /// The last `window_records` finished records: `true` for a dead letter.
    window: VecDeque<bool>,
    /// Dead letters in `window`.
    dead_in_window: u64,
    tripped: Option<Tripped>,
}

impl State {
    fn push(&mut self, dead: bool, capacity: usize) {
        self.window.push_back(dead);
        self.dead_in_window += u64::from(dead);
        while self.window.len() > capacity {
            if self.window.pop_front() == Some(true) {
                self.dead_in_window -= 1;
            }
        }
    }
}

impl Breaker {
    pub(crate) fn new(config: &DeadLetterBreakerConfig) -> Breaker {
        Breaker { config: config.clone(), state: Mutex::new(State::default()) }
    }

    fn capacity(&self) -> usize {
        usize::try_from(self.config.window_records.max(1)).unwrap_or(usize::MAX)
    }

    /// `n` records were applied.
    pub(crate) fn applied(&self, n: u64) {
        if n == 0 {
            return;
        }
        let capacity = self.capacity();
        let mut state = self.state.lock().expect("breaker lock");
        state.consecutive = 0;
        // More than a window's worth only refills the window.
        for _ in 0..n.min(capacity as u64) {
            state.push(false, capacity);
        }
    }

    /// May one more dead letter be written? Counts it when it may; trips (for good) when not.
    pub(crate) fn admit(&self) -> Result<(), Tripped> {
        let capacity = self.capacity();
        let mut state = self.state.lock().expect("breaker lock");
        if let Some(tripped) = &state.tripped {
            return Err(tripped.clone());
        }
        let consecutive = state.consecutive + 1;
        let max = self.config.max_consecutive;
        let reason = if max > 0 && consecutive > max {
            Some(format!("{consecutive} dead letters in a row would exceed dead_letter_breaker.max_consecutive = {max}"))
        } else {
            let (dead, len) = if state.window.len() == capacity {
                // The oldest leaves as this one enters.
                (state.dead_in_window + 1 - u64::from(state.window.front() == Some(&true)), capacity)
            } else {
                (state.dead_in_window + 1, state.window.len() + 1)
            };
            let ratio = dead as f64 / len as f64;
            (len == capacity && ratio > self.config.max_ratio).then(|| {
                format!("{dead} dead letters among the last {len} records ({:.0}%) would exceed dead_letter_breaker.max_ratio = {}", ratio * 100.0, self.config.max_ratio)
            })
        };
        if let Some(reason) = reason {
            let tripped = Tripped(reason);
            state.tripped = Some(tripped.clone());
            return Err(tripped);
        }
        state.consecutive = consecutive;
        state.push(true, capacity);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(max_consecutive: u64, max_ratio: f64, window_records: u64) -> Breaker {
        Breaker::new(&DeadLetterBreakerConfig { max_consecutive, max_ratio, window_records })
    }

    #[test]
    fn it_allows_max_consecutive_dead_letters_in_a_row_and_trips_on_the_next_for_good() {
        let b = breaker(3, 1.0, 100);
        for _ in 0..3 {
            b.admit().unwrap();
        }
        let tripped = b.admit().unwrap_err();
        assert!(tripped.0.contains("4 dead letters in a row would exceed dead_letter_breaker.max_consecutive = 3"), "{tripped:?}");
        b.applied(10);
        assert_eq!(b.admit(), Err(tripped), "stays tripped");
    }

    #[test]
    fn applied_records_end_a_run() {
        let b = breaker(2, 1.0, 100);
        for _ in 0..10 {
            b.admit().unwrap();
            b.admit().unwrap();
            b.applied(1);
        }
    }

    #[test]
    fn the_ratio_is_judged_over_a_full_window() {
        let b = breaker(0, 0.5, 4);
        b.admit().unwrap();
        b.admit().unwrap();
        b.admit().unwrap();
        // Three of three, but the window is not full yet.
        b.applied(1);
        // Full: 3 of 4. The next dead letter makes 3 of the last 4 again (the oldest leaves).
        let tripped = b.admit().unwrap_err();
        assert!(tripped.0.contains("3 dead letters among the last 4 records (75%)"), "{tripped:?}");

        let b = breaker(0, 0.5, 4);
        b.applied(3);
        b.admit().expect("1 of 4");
        b.admit().expect("2 of 4 is not above one half");
        assert!(b.admit().is_err(), "3 of the last 4");
        let b = breaker(0, 0.5, 4);
        b.applied(2);
        b.admit().unwrap();
        b.admit().expect("2 of 4 is not above one half");
        assert!(b.admit().is_err(), "3 of the last 4");
    }

    #[test]
    fn zero_and_one_switch_the_limits_off() {
        let b = breaker(0, 1.0, 2);
        for _ in 0..100 {
            b.admit().unwrap();
        }
    }
}

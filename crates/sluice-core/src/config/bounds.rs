//! The range of every numeric setting, in one place: the validation refuses what lies outside,
//! and `docs/configuration.md` states the same ranges.
//!
//! Why bounds at all: each number becomes something that panics or overflows when it is too
//! large, too small or not finite. A rate becomes a `Duration` of `1/rate` seconds and a
//! `governor` quota (0 or infinity panics, `1e-20` overflows `Duration`); a linger or a backoff
//! is added to an `Instant` (overflow panics) or jittered by a float factor; a batch size is a
//! `Vec` capacity; partitions and replication are `i32`/`i16` in Kafka's protocol. The ranges
//! below are wide enough for any real deployment and narrow enough that every such conversion
//! is exact.

/// An inclusive range of a numeric setting, with an example for the fix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounded {
    /// Smallest accepted value.
    pub min: f64,
    /// Largest accepted value.
    pub max: f64,
    /// A sensible setting, as written in the file (`batch_rows = 10000`).
    pub example: &'static str,
}

impl Bounded {
    /// `Err` says why `value` is refused: not finite, or outside the range (both ends named).
    pub fn check(&self, value: f64) -> Result<(), String> {
        if !value.is_finite() {
            return Err(format!("is not a finite number; it must be between {} and {}", show(self.min), show(self.max)));
        }
        if value < self.min || value > self.max {
            return Err(format!("is out of range; it must be between {} and {}", show(self.min), show(self.max)));
        }
        Ok(())
    }

    /// The same range with another example (a kind's own default).
    pub const fn with_example(self, example: &'static str) -> Bounded {
        Bounded { example, ..self }
    }
}

const fn range(min: f64, max: f64, example: &'static str) -> Bounded {
    Bounded { min, max, example }
}

/// A number as a user writes it: integers without a fraction.
pub fn show(value: f64) -> String {
    if value.is_finite() && value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else if value.is_finite() && value != 0.0 && value.abs() < 1e-3 {
        format!("{value:.3e}")
    } else {
        format!("{value}")
    }
}

const DAY_MS: f64 = 86_400_000.0;

/// `kafka.partitions`: a positive `i32`; more than this is a typo.
pub const PARTITIONS: Bounded = range(1.0, 10_000.0, "partitions = 3");
/// `kafka.replication_factor`: an `i16` in Kafka's protocol.
pub const REPLICATION_FACTOR: Bounded = range(1.0, 32_767.0, "replication_factor = 3");
/// `kafka.min_compaction_lag_ms`: 0 (compact at once: tests) to a year; a Kafka `long`.
pub const MIN_COMPACTION_LAG_MS: Bounded = range(0.0, 365.0 * DAY_MS, "min_compaction_lag_ms = 604800000");
/// `kafka.delete_retention_ms`: 0 to a year; a Kafka `long`.
pub const DELETE_RETENTION_MS: Bounded = range(0.0, 365.0 * DAY_MS, "delete_retention_ms = 604800000");
/// `batch_rows`: rows per page and per Kafka transaction (a buffer of this many is reserved).
pub const BATCH_ROWS: Bounded = range(1.0, 1_000_000.0, "batch_rows = 10000");
/// `poll_interval_ms`: up to a week.
pub const POLL_INTERVAL_MS: Bounded = range(1.0, 7.0 * DAY_MS, "poll_interval_ms = 1000");
/// `detection.reconcile_interval_ms`: up to 30 days.
pub const RECONCILE_INTERVAL_MS: Bounded = range(1.0, 30.0 * DAY_MS, "reconcile_interval_ms = 3600000");
/// `detection.lookback_ms`: up to a week (the window is re-read on every poll).
pub const LOOKBACK_MS: Bounded = range(1.0, 7.0 * DAY_MS, "lookback_ms = 60000");
/// `gates.max_change_pct`: a percentage of the tracked rows (above 100 is possible: inserts).
pub const MAX_CHANGE_PCT: Bounded = range(0.0, 1_000_000.0, "max_change_pct = 20");
/// `batch_max_records`: records per request, before the vendor's own limit.
pub const BATCH_MAX_RECORDS: Bounded = range(1.0, 100_000.0, "batch_max_records = 500");
/// `batch_max_bytes`: up to 256 MiB per request.
pub const BATCH_MAX_BYTES: Bounded = range(1.0, 268_435_456.0, "batch_max_bytes = 4194304");
/// `batch_linger_ms`: 0 sends at once; up to 10 minutes (added to an `Instant`).
pub const BATCH_LINGER_MS: Bounded = range(0.0, 600_000.0, "batch_linger_ms = 100");
/// `max_concurrency`: requests in flight, one lane each.
pub const MAX_CONCURRENCY: Bounded = range(1.0, 1_024.0, "max_concurrency = 8");
/// `max_buffered_records`: records held in memory at most.
pub const MAX_BUFFERED_RECORDS: Bounded = range(1.0, 10_000_000.0, "max_buffered_records = 10000");
/// `retry.initial_backoff_ms`: up to an hour.
pub const INITIAL_BACKOFF_MS: Bounded = range(1.0, 3_600_000.0, "initial_backoff_ms = 200");
/// `retry.max_backoff_ms`: up to a day (jittered by a float factor, so bounded).
pub const MAX_BACKOFF_MS: Bounded = range(1.0, DAY_MS, "max_backoff_ms = 30000");
/// `retry.max_attempts`: attempts in all.
pub const MAX_ATTEMPTS: Bounded = range(1.0, 1_000.0, "max_attempts = 10");
/// `retry.retry_on_statuses`: HTTP error statuses.
pub const RETRY_STATUS: Bounded = range(400.0, 599.0, "retry_on_statuses = [409]");
/// `rate_limit.requests_per_second`: from one request a day to a million a second (the pacing
/// period `1/rate` is then between 1 µs and a day: a valid `Duration` and `governor` quota).
pub const REQUESTS_PER_SECOND: Bounded = range(1.0 / 86_400.0, 1_000_000.0, "rate_limit = { requests_per_second = 10 }");
/// `rate_limit.records_per_second`: at least one (a window holds whole records).
pub const RECORDS_PER_SECOND: Bounded = range(1.0, 1_000_000_000.0, "rate_limit = { records_per_second = 1000 }");
/// `dead_letter_breaker.max_consecutive`: 0 (no limit) up to a billion.
pub const BREAKER_MAX_CONSECUTIVE: Bounded = range(0.0, 1_000_000_000.0, "dead_letter_breaker = { max_consecutive = 1000 }");
/// `dead_letter_breaker.max_ratio`: a share; 1 is no limit.
pub const BREAKER_MAX_RATIO: Bounded = range(0.0, 1.0, "dead_letter_breaker = { max_ratio = 0.5 }");
/// `dead_letter_breaker.window_records`: the window is held in memory, one bit-sized entry each.
pub const BREAKER_WINDOW_RECORDS: Bounded = range(1.0, 10_000_000.0, "dead_letter_breaker = { window_records = 1000 }");
/// `writeback.batch_max_records`: outcomes per warehouse transaction. Each is one row of
/// twelve bound parameters, and PostgreSQL takes at most 65535 parameters per statement.
pub const WRITEBACK_BATCH_MAX_RECORDS: Bounded = range(1.0, 5_000.0, "batch_max_records = 1000");
/// `writeback.batch_linger_ms`: 0 writes at once; up to 10 minutes (added to an `Instant`).
pub const WRITEBACK_BATCH_LINGER_MS: Bounded = range(0.0, 600_000.0, "batch_linger_ms = 1000");
/// A destination kind's `timeout_ms`: up to 10 minutes per request.
pub const TIMEOUT_MS: Bounded = range(1.0, 600_000.0, "timeout_ms = 10000");
/// A destination kind's waits named by the vendor's behaviour (`ten_secondly_backoff_ms`):
/// up to a day.
pub const VENDOR_WAIT_MS: Bounded = range(1.0, DAY_MS, "ten_secondly_backoff_ms = 10000");
/// Redis `ttl_secs`: up to 100 years (Redis keeps expiries in milliseconds as `i64`).
pub const TTL_SECS: Bounded = range(1.0, 3_153_600_000.0, "ttl_secs = 86400");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_refuse_non_finite_and_outside_values() {
        assert!(BATCH_ROWS.check(10_000.0).is_ok());
        assert_eq!(BATCH_ROWS.check(0.0).unwrap_err(), "is out of range; it must be between 1 and 1000000");
        assert_eq!(REQUESTS_PER_SECOND.check(f64::INFINITY).unwrap_err(), "is not a finite number; it must be between 1.157e-5 and 1000000");
        assert!(REQUESTS_PER_SECOND.check(f64::NAN).is_err() && REQUESTS_PER_SECOND.check(1e-20).is_err() && REQUESTS_PER_SECOND.check(-0.0).is_err());
        assert_eq!((show(3.0), show(0.5), show(f64::NAN)), ("3".to_string(), "0.5".to_string(), "NaN".to_string()));
    }

    /// Every bound's extremes convert to what the services build from them without panicking.
    #[test]
    fn the_extremes_of_every_bound_convert() {
        for rate in [REQUESTS_PER_SECOND.min, REQUESTS_PER_SECOND.max] {
            let period = std::time::Duration::try_from_secs_f64(1.0 / rate).expect("a valid Duration");
            assert!(period >= std::time::Duration::from_micros(1), "{period:?}");
        }
        let far = std::time::Instant::now();
        const { assert!(WRITEBACK_BATCH_MAX_RECORDS.max * 12.0 <= 65_535.0, "one statement's parameters") };
        for ms in [BATCH_LINGER_MS.max, WRITEBACK_BATCH_LINGER_MS.max, MAX_BACKOFF_MS.max, POLL_INTERVAL_MS.max, RECONCILE_INTERVAL_MS.max, TIMEOUT_MS.max, VENDOR_WAIT_MS.max] {
            let _ = far + std::time::Duration::from_millis(ms as u64);
        }
        assert!(REPLICATION_FACTOR.max <= f64::from(i16::MAX) && PARTITIONS.max <= f64::from(i32::MAX));
        assert!(TTL_SECS.max * 1000.0 < i64::MAX as f64);
    }
}

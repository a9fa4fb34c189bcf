//! The sink's sync-health events: what reached the destination, how late, how fresh the
//! destination is, what was coalesced and dead-lettered. One function per event, the only place
//! that counts it; delivery and the lanes call them in one line each. Consumer lag is
//! [`crate::lag`]'s.
//!
//! Guarantees of the metrics (every one is listed in `docs/metrics.md`):
//! - Only records the destination *acknowledged* count as applied: a record refused inside a
//!   successful request is dead-lettered and counted there, never here.
//! - `sluice_sink_end_to_end_seconds{destination}` (histogram, `LATENCY_BUCKETS`): per applied
//!   record, from the event's `ts_ms` to the destination's acknowledgement. `ts_ms` is when the
//!   poller *observed* the change, not when the warehouse committed it: sluice does not know
//!   commit times in general (`diff` and `warehouse_diff` compare states, and a cursor column is
//!   whatever the model says it is). The part before observation is bounded by the model's
//!   schedule and shows in the poller's freshness. A record applied again (a replay, a side
//!   record) keeps its original `ts_ms`, so its latency is its age: a replay shows as a spike.
//! - `sluice_sink_last_applied_change_timestamp_seconds{destination}`: the `ts_ms` of the newest
//!   change the destination acknowledged, in seconds; it never moves backwards (lanes finish out
//!   of order), so `time() - x` is the age of the newest applied change.
//! - `sluice_sink_records_applied_total{destination,action}`: applied records by action, the
//!   adds (`upsert`, `create`) and removes (`delete`) of audience volatility.
//! - `sluice_sink_records_coalesced_total{destination}`: changes superseded by a later change of
//!   the same key in one batch (the sink's duplicate-key rate): finished without being sent.
//! - `sluice_sink_dead_letters_total{destination,class}`: dead letters by their class header.
//!
//! Labels are destination names from the config and fixed enums: bounded, never record values.

use std::collections::HashMap;

use sluice_core::DeadLetterClass;
use sluice_destinations::OutboundRecord;

/// `records` were sent to `destination` and acknowledged, except those at `refused` (indexes
/// into `records`), which are dead-lettered. `now_ms` is the acknowledgement time.
pub(crate) fn applied(destination: &str, records: &[OutboundRecord], refused: impl IntoIterator<Item = usize>, now_ms: i64) {
    let mut acknowledged = vec![true; records.len()];
    for i in refused {
        acknowledged[i] = false;
    }
    let latency = metrics::histogram!(sluice_telemetry::ops::END_TO_END_METRIC, "destination" => destination.to_string());
    let mut by_action: HashMap<&'static str, u64> = HashMap::new();
    let mut newest = None;
    for record in records.iter().zip(&acknowledged).filter(|(_, &ok)| ok).map(|(record, _)| record) {
        latency.record(latency_seconds(record.ts_ms, now_ms));
        *by_action.entry(record.action.label()).or_default() += 1;
        newest = newest.max(Some(record.ts_ms));
    }
    for (action, n) in by_action {
        metrics::counter!("sluice_sink_records_applied_total", "destination" => destination.to_string(), "action" => action).increment(n);
    }
    // Never backwards: a batch of older changes applied late leaves the gauge where it is.
    if let Some(newest) = newest.filter(|&at| sluice_telemetry::ops::is_newest("sluice_sink_last_applied_change_timestamp_seconds", destination, at)) {
        metrics::gauge!("sluice_sink_last_applied_change_timestamp_seconds", "destination" => destination.to_string()).set(newest as f64 / 1000.0);
    }
}

/// `n` changes of `destination` were superseded by later changes of their keys in one batch.
pub(crate) fn coalesced(destination: &str, n: usize) {
    if n > 0 {
        metrics::counter!("sluice_sink_records_coalesced_total", "destination" => destination.to_string()).increment(n as u64);
    }
}

/// A record of `destination` was dead-lettered as `class` (and the broker acknowledged it).
pub(crate) fn dead_lettered(destination: &str, class: DeadLetterClass) {
    metrics::counter!("sluice_sink_dead_letters_total", "destination" => destination.to_string(), "class" => class.label()).increment(1);
}

/// Seconds from `ts_ms` to `now_ms`; a clock skewed backwards between the poller's host and
/// ours reads as 0, not as a negative latency.
fn latency_seconds(ts_ms: i64, now_ms: i64) -> f64 {
    now_ms.saturating_sub(ts_ms).max(0) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_never_goes_negative() {
        assert_eq!(latency_seconds(1_000, 3_500), 2.5);
        assert_eq!(latency_seconds(5_000, 3_500), 0.0, "the poller's clock ahead of ours");
    }
}

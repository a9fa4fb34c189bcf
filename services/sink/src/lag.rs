//! Consumer lag of a sink, read from its own consumer: how far the destination is behind its
//! change topics and its side topic (every partition assigned to it), in records and in seconds.
//!
//! librdkafka reports every `STATS_INTERVAL_MS` the offsets of each partition it is assigned
//! (`statistics.interval.ms`); [`observe`] turns them into two gauges:
//! - `sluice_sink_consumer_lag_records{destination}`: per assigned partition, the end of the
//!   partition (the last stable offset: the sink reads `read_committed`) minus the group's
//!   committed offset (the log start when nothing was committed yet, as the sink then starts
//!   there), summed. A replica reports its own partitions, so the sum over replicas is the
//!   destination's lag. A partition the replica has caught up on — nothing in flight and its
//!   position at the end — counts 0 whatever offsets remain: records finished but not committed
//!   yet (commits run every 500 ms), or the transaction marker past the last record (markers take
//!   offsets too, and the sink commits one past the last record it finished).
//! - `sluice_sink_consumer_lag_seconds{destination}`: the age of the oldest record this replica
//!   holds unfinished (its Kafka timestamp, from [`OffsetTracker::oldest_pending_ms`]); 0 when
//!   it holds none.
//!
//! Not guaranteed: while partitions are paused for back-pressure librdkafka does not fetch them,
//! so their end offset (and the records gauge) is not refreshed; the seconds gauge keeps
//! growing then, which is why alerts watch both. A sink that stopped on a fatal error reports
//! nothing more (`sluice_sink_stopped` says so).

use rdkafka::statistics::{Partition, Statistics};

use crate::offsets::OffsetTracker;

/// How often librdkafka reports statistics (`statistics.interval.ms`), so how fresh the lag is.
pub(crate) const STATS_INTERVAL_MS: u64 = 5_000;

/// Set the lag gauges of `destination` from one statistics report.
pub(crate) fn observe(destination: &str, stats: &Statistics, tracker: &OffsetTracker, now_ms: i64) {
    let records: i64 = stats
        .topics
        .iter()
        .flat_map(|(topic, t)| t.partitions.values().map(move |p| (topic, p)))
        .filter_map(|(topic, p)| partition_lag(p, tracker.pending_in(&[(topic.clone(), p.partition)])))
        .sum();
    let seconds = tracker.oldest_pending_ms().map_or(0.0, |oldest| now_ms.saturating_sub(oldest).max(0) as f64 / 1000.0);
    metrics::gauge!("sluice_sink_consumer_lag_records", "destination" => destination.to_string()).set(records as f64);
    metrics::gauge!("sluice_sink_consumer_lag_seconds", "destination" => destination.to_string()).set(seconds);
}

/// The lag of one partition with `in_flight` records unfinished, or `None` for a partition that
/// is not ours (librdkafka's internal unassigned partition, one not desired) or whose offsets are
/// not known yet.
fn partition_lag(p: &Partition, in_flight: usize) -> Option<i64> {
    if p.partition < 0 || !p.desired {
        return None;
    }
    let end = if p.ls_offset >= 0 { p.ls_offset } else { p.hi_offset };
    let committed = if p.committed_offset >= 0 { p.committed_offset } else { p.lo_offset };
    if end < 0 || committed < 0 {
        return None;
    }
    if in_flight == 0 && p.app_offset >= end {
        return Some(0);
    }
    Some((end - committed).max(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(committed: i64, end: i64, position: i64) -> Partition {
        Partition { partition: 0, desired: true, committed_offset: committed, ls_offset: end, hi_offset: end, lo_offset: 0, app_offset: position, ..Default::default() }
    }

    #[test]
    fn lag_is_the_end_minus_the_committed_offset() {
        assert_eq!(partition_lag(&partition(40, 100, 60), 20), Some(60), "in flight and not yet read both count");
        assert_eq!(partition_lag(&partition(40, 100, 99), 0), Some(60), "not read to the end yet");
        assert_eq!(partition_lag(&partition(40, 100, 100), 0), Some(0), "read and finished: applied, only its commit is due");
        assert_eq!(partition_lag(&partition(99, 100, 100), 0), Some(0), "caught up: the offset left is a transaction marker");
        assert_eq!(partition_lag(&partition(99, 100, 100), 1), Some(1), "the last record still in flight");
    }

    #[test]
    fn nothing_committed_yet_counts_from_the_log_start() {
        let p = Partition { lo_offset: 10, ..partition(-1001, 100, -1001) };
        assert_eq!(partition_lag(&p, 0), Some(90));
    }

    #[test]
    fn partitions_that_are_not_ours_or_not_known_are_left_out() {
        assert_eq!(partition_lag(&Partition { partition: -1, ..partition(0, 10, 0) }, 0), None, "the unassigned partition");
        assert_eq!(partition_lag(&Partition { desired: false, ..partition(0, 10, 0) }, 0), None);
        assert_eq!(partition_lag(&Partition { ls_offset: -1001, hi_offset: -1001, ..partition(0, 10, 0) }, 0), None);
    }
}

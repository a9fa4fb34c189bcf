//! Side records in the sink: which change a consumed record carries ([`origin`]), the side topic
//! and its partition count ([`side_topic`]), and the dead-letter context of a record that failed again
//! ([`prior_failures`]). The producer's half, and what a side record is, is
//! [`sluice_kafka::side`].
//!
//! Guarantees:
//! - A record of a change topic carries itself. A record of the side topic carries the change
//!   its `sluice.original.*` headers name, and only if that change is on one of this
//!   destination's change topics and in the side partition equal to its original partition
//!   (the one owned with it, see [`sluice_kafka::side`]); otherwise [`origin`] says why, and the
//!   record is dead-lettered as unreadable, never applied out of order.
//! - A side record that fails is dead-lettered with its original coordinates and with the
//!   attempts and first failure time its headers carried added to the new ones.

use std::borrow::Cow;
use std::collections::HashMap;

use rdkafka::message::{Headers, Message};
use sluice_core::config::{Config, SyncConfig};
use sluice_core::naming;
use sluice_kafka::admin::Admin;
use sluice_kafka::headers::dlq;
use sluice_kafka::side::Original;

use crate::SinkError;

/// The change a consumed record carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin<'m> {
    /// The change topic.
    pub topic: Cow<'m, str>,
    pub partition: i32,
    pub offset: i64,
    /// Whether it came through the side topic.
    pub side: bool,
}

impl Origin<'_> {
    /// The stable id of the change at the destination: `topic/partition/offset`, the same
    /// whether it arrives live, replayed or through the side topic.
    pub(crate) fn id(&self) -> String {
        format!("{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

/// The change `message` carries. `is_change_topic` says which topics are this destination's
/// change topics; a side record naming another topic, or sitting in a side partition other than
/// its original partition, is refused with the reason.
pub(crate) fn origin<'m>(message: &'m impl Message, is_change_topic: impl Fn(&str) -> bool) -> Result<Origin<'m>, String> {
    if !naming::is_side_topic(message.topic()) {
        return Ok(Origin { topic: Cow::Borrowed(message.topic()), partition: message.partition(), offset: message.offset(), side: false });
    }
    let original = Original::from_headers(message.headers())?;
    if !is_change_topic(&original.topic) {
        return Err(format!("side record names topic {:?}, which no sync of this destination reads", original.topic));
    }
    if original.partition != message.partition() {
        return Err(format!(
            "side record of {}:{} was written to side partition {}; write it to partition {} (sluice_kafka::side::SideProducer does)",
            original.topic,
            original.partition,
            message.partition(),
            original.partition
        ));
    }
    Ok(Origin { topic: Cow::Owned(original.topic), partition: original.partition, offset: original.offset, side: true })
}

/// The change topic whose lane a consumed record belongs to: the one it carries, or its own
/// when it carries none that can be read (it is then dead-lettered).
pub(crate) fn lane_topic(message: &impl Message) -> Cow<'_, str> {
    origin(message, |_| true).map_or(Cow::Borrowed(message.topic()), |origin| origin.topic)
}

/// The context a record's headers carry from earlier failures (a redriven dead letter):
/// attempts made and the first failure time.
pub(crate) fn prior_failures(message: &impl Message) -> (usize, Option<i64>) {
    let Some(headers) = message.headers() else { return (0, None) };
    let get = |name: &str| headers.iter().find(|h| h.key == name).and_then(|h| std::str::from_utf8(h.value?).ok()?.parse::<i64>().ok());
    (get(dlq::ATTEMPTS).map_or(0, |n| n.max(0) as usize), get(dlq::FIRST_FAILURE_MS))
}

/// Whether a header is dead-letter or side context, written afresh on every dead letter rather
/// than copied from the record (a redriven record carries its last dead letter's).
pub(crate) fn is_context_header(name: &str) -> bool {
    name.starts_with("sluice.error.") || name.starts_with("sluice.original.") || name == sluice_kafka::side::SOURCE
}

/// The destination's side topic and its partition count: that of its change topics (those that
/// exist, and `kafka.partitions` for those about to be created), which must all be the same — a
/// side record of partition `p` is applied by the instance owning partition `p` of every change
/// topic, which the range assignor guarantees only then. An existing side topic must have it too.
pub(crate) async fn side_topic(admin: &Admin, config: &Config, destination: &str, syncs: &HashMap<String, SyncConfig>) -> Result<(String, i32), SinkError> {
    let side = naming::side_topic(&config.kafka.topic_prefix, destination);
    let mut topics: Vec<String> = syncs.keys().cloned().collect();
    topics.sort();
    let counts = admin.partition_counts(&[topics.clone(), vec![side.clone()]].concat()).await.map_err(SinkError::Kafka)?;
    let expected: Vec<(i32, &String)> = topics.iter().map(|t| (counts.get(t).copied().unwrap_or(config.kafka.partitions), t)).collect();
    let partitions = expected[0].0;
    if expected.iter().any(|&(n, _)| n != partitions) {
        let listed: Vec<String> = expected.iter().map(|(n, t)| format!("{t}: {n}")).collect();
        return Err(SinkError::Config(format!(
            "the change topics of destination {destination:?} have different partition counts ({}), so side records (backfill, redrive) could not be kept in order with live records across sink instances; give every change topic the same count (recreate the odd one out, or replay it into a new model)",
            listed.join(", ")
        )));
    }
    if let Some(&existing) = counts.get(&side) {
        if existing != partitions {
            return Err(SinkError::Config(format!(
                "side topic {side} has {existing} partitions, the change topics of destination {destination:?} have {partitions}; delete the side topic once it is drained (kafka-topics.sh --delete --topic {side}) and the sink recreates it"
            )));
        }
    }
    Ok((side, partitions))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rdkafka::message::OwnedMessage;
    use rdkafka::Timestamp;
    use sluice_kafka::side::SideRecord;

    use super::*;

    fn side_message(original: Original, partition: i32, extra: &[(&str, &str)]) -> Arc<OwnedMessage> {
        let mut record = SideRecord::new(original, b"k".to_vec(), Some(b"v".to_vec()), "test");
        record.kept = extra.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
        let headers = record.headers().iter().fold(rdkafka::message::OwnedHeaders::new(), |h, (k, v)| {
            h.insert(rdkafka::message::Header { key: k, value: Some(v.as_slice()) })
        });
        Arc::new(OwnedMessage::new(Some(b"v".to_vec()), Some(b"k".to_vec()), "p.side.crm".into(), Timestamp::NotAvailable, partition, 9, Some(headers)))
    }

    fn original(topic: &str, partition: i32) -> Original {
        Original { topic: topic.into(), partition, offset: 41, timestamp_ms: None }
    }

    #[test]
    fn a_live_record_carries_itself_and_a_side_record_its_original() {
        let live = crate::testing::message("k", 5);
        assert_eq!(origin(live.as_ref(), |_| false).unwrap(), Origin { topic: "t".into(), partition: 0, offset: 5, side: false });
        let side = side_message(original("p.changes.customers", 2), 2, &[]);
        let carried = origin(side.as_ref(), |t| t == "p.changes.customers").unwrap();
        assert_eq!(carried, Origin { topic: "p.changes.customers".into(), partition: 2, offset: 41, side: true });
        assert_eq!(carried.id(), "p.changes.customers/2/41");
    }

    #[test]
    fn a_side_record_for_another_topic_or_partition_is_refused_by_name() {
        let foreign = side_message(original("p.changes.orders", 0), 0, &[]);
        assert!(origin(foreign.as_ref(), |t| t == "p.changes.customers").unwrap_err().contains("no sync of this destination reads"));
        let misplaced = side_message(original("p.changes.customers", 1), 0, &[]);
        let error = origin(misplaced.as_ref(), |_| true).unwrap_err();
        assert!(error.contains("written to side partition 0; write it to partition 1"), "{error}");
    }

    #[test]
    fn a_side_record_that_fails_again_is_dead_lettered_as_its_original_with_its_attempts_carried_on() {
        use crate::dead_letters::{context_headers, Attempts, Cause, Failure};
        let original = Original { topic: "p.changes.customers".into(), partition: 2, offset: 41, timestamp_ms: Some(1_000) };
        let stale = [(dlq::ATTEMPTS, "3"), (dlq::FIRST_FAILURE_MS, "500"), (dlq::ERROR_CLASS, "retryable"), ("traceparent", "00-x")];
        let message = side_message(original, 2, &stale);
        let failure = Failure {
            class: sluice_core::DeadLetterClass::Permanent,
            cause: Cause { message: "refused".into(), status: Some(422), excerpt: String::new() },
            attempts: Attempts { made: 1, first_failure_ms: 2_000, last_failure_ms: 2_000 },
        };
        let headers: Vec<(String, String)> = context_headers("crm", &message, &failure).into_iter().map(|(k, v)| (k, String::from_utf8(v).unwrap())).collect();
        let get = |name: &str| sluice_kafka::headers::get(&headers, name);
        assert_eq!(get(dlq::ORIGINAL_TOPIC), Some("p.changes.customers"));
        assert_eq!((get(dlq::ORIGINAL_PARTITION), get(dlq::ORIGINAL_OFFSET), get(dlq::ORIGINAL_TIMESTAMP_MS)), (Some("2"), Some("41"), Some("1000")));
        assert_eq!(get(dlq::ATTEMPTS), Some("4"), "three before, one now");
        assert_eq!(get(dlq::FIRST_FAILURE_MS), Some("500"), "the first failure ever");
        assert_eq!(get(dlq::ERROR_CLASS), Some("permanent"), "this failure's class, not the stale one");
        for name in [dlq::ATTEMPTS, dlq::ERROR_CLASS, dlq::ORIGINAL_OFFSET, sluice_kafka::side::SOURCE] {
            assert!(headers.iter().filter(|(k, _)| k == name).count() <= 1, "{name} once");
        }
        assert_eq!(get("traceparent"), Some("00-x"), "the record's own headers are kept");
    }

    #[test]
    fn prior_failures_come_from_a_redriven_record() {
        let redriven = side_message(original("t", 0), 0, &[(dlq::ATTEMPTS, "3"), (dlq::FIRST_FAILURE_MS, "1000")]);
        assert_eq!(prior_failures(redriven.as_ref()), (3, Some(1000)));
        assert_eq!(prior_failures(crate::testing::message("k", 1).as_ref()), (0, None));
        assert!(is_context_header(dlq::ATTEMPTS) && is_context_header(dlq::ORIGINAL_OFFSET) && is_context_header(sluice_kafka::side::SOURCE));
        assert!(!is_context_header("traceparent") && !is_context_header("sluice.op"));
    }
}

//! A sink's consumer group from the outside: its members, its committed offsets (with the
//! replay frontier they carry), offsets by time, and moving the offsets of an empty group. What
//! `sluice replay` and the sink's order guard need; every call is blocking (call from
//! `spawn_blocking` in async code).
//!
//! Guarantees:
//! - [`commit_empty`] moves the offsets of a group only while it has no members: Kafka itself
//!   refuses an offset commit from outside the group while the group has members, and the call
//!   checks the membership first to say so clearly ([`CommitError::LiveMembers`]).
//! - The *frontier* of a partition is the highest offset the group ever committed there: every
//!   record below it has reached the destination. It rides along with the committed offset as
//!   the offset's metadata ([`frontier_metadata`]) while the committed offset is below it (during
//!   a replay), so it survives restarts of the sink; [`Committed::frontier`] reads it back.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use sluice_core::config::KafkaConfig;

use crate::{client_config, KafkaError};

const TIMEOUT: Duration = Duration::from_secs(15);

/// Offset-metadata prefix carrying a partition's frontier: `sluice.frontier=<offset>`.
const FRONTIER_PREFIX: &str = "sluice.frontier=";

/// (topic, partition)
pub type Partition = (String, i32);

/// The metadata of a committed offset that carries `frontier`.
pub fn frontier_metadata(frontier: i64) -> String {
    format!("{FRONTIER_PREFIX}{frontier}")
}

/// The frontier carried by offset metadata, if it carries one.
pub fn parse_frontier(metadata: &str) -> Option<i64> {
    metadata.strip_prefix(FRONTIER_PREFIX)?.parse().ok()
}

/// A partition's committed position in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Committed {
    /// The committed offset (the next record to read), `None` when the group never committed.
    pub offset: Option<i64>,
    /// The frontier the commit carries, when it carries one (during a replay).
    pub carried: Option<i64>,
}

impl Committed {
    /// Every record below this offset has reached the destination: the larger of the committed
    /// offset and the frontier it carries. `None` when the group never committed.
    pub fn frontier(&self) -> Option<i64> {
        match (self.offset, self.carried) {
            (Some(offset), Some(carried)) => Some(offset.max(carried)),
            (offset, carried) => offset.or(carried),
        }
    }
}

/// One member of a group, as the broker lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub client_id: String,
    pub host: String,
}

/// A client that reads a group's offsets without joining it.
fn client(kafka: &KafkaConfig, group: &str) -> Result<BaseConsumer, KafkaError> {
    client_config(kafka)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| KafkaError::classify("create group client", e))
}

/// The members of `group` (none when it is empty or unknown).
pub fn members(kafka: &KafkaConfig, group: &str) -> Result<Vec<Member>, KafkaError> {
    let consumer: BaseConsumer = client_config(kafka).create().map_err(|e| KafkaError::classify("create group client", e))?;
    let list = consumer.fetch_group_list(Some(group), TIMEOUT).map_err(|e| KafkaError::classify("describe group", e))?;
    Ok(list
        .groups()
        .iter()
        .filter(|g| g.name() == group)
        .flat_map(|g| g.members())
        .map(|m| Member { client_id: m.client_id().to_string(), host: m.client_host().to_string() })
        .collect())
}

/// The partitions of `topic`, with their low and high watermarks.
pub fn watermarks(kafka: &KafkaConfig, topic: &str) -> Result<Vec<(i32, i64, i64)>, KafkaError> {
    let consumer: BaseConsumer = client_config(kafka).create().map_err(|e| KafkaError::classify("create metadata client", e))?;
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT).map_err(|e| KafkaError::classify("fetch metadata", e))?;
    let mut out = Vec::new();
    for partition in metadata.topics().iter().filter(|t| t.error().is_none()).flat_map(|t| t.partitions()) {
        let (low, high) = consumer.fetch_watermarks(topic, partition.id(), TIMEOUT).map_err(|e| KafkaError::classify("fetch watermarks", e))?;
        out.push((partition.id(), low, high));
    }
    out.sort_unstable();
    Ok(out)
}

/// The committed positions of `group` on `partitions`.
pub fn committed(kafka: &KafkaConfig, group: &str, partitions: &[Partition]) -> Result<HashMap<Partition, Committed>, KafkaError> {
    committed_with(&client(kafka, group)?, partitions)
}

/// [`committed`] through an existing client of the group (the sink's own consumer).
pub fn committed_with<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    partitions: &[Partition],
) -> Result<HashMap<Partition, Committed>, KafkaError> {
    let mut list = TopicPartitionList::new();
    for (topic, partition) in partitions {
        list.add_partition(topic, *partition);
    }
    let answer = consumer.committed_offsets(list, TIMEOUT).map_err(|e| KafkaError::classify("read committed offsets", e))?;
    Ok(answer
        .elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            ((e.topic().to_string(), e.partition()), Committed { offset, carried: parse_frontier(e.metadata()) })
        })
        .collect())
}

/// Per partition of `topic`, the first offset whose timestamp is at or after `ms` (the high
/// watermark when there is none).
pub fn offsets_for_time(kafka: &KafkaConfig, topic: &str, ms: i64) -> Result<HashMap<i32, i64>, KafkaError> {
    let consumer: BaseConsumer = client_config(kafka).create().map_err(|e| KafkaError::classify("create metadata client", e))?;
    let marks = watermarks(kafka, topic)?;
    let mut list = TopicPartitionList::new();
    for &(partition, _, _) in &marks {
        list.add_partition_offset(topic, partition, Offset::Offset(ms)).expect("valid timestamp");
    }
    let answer = consumer.offsets_for_times(list, TIMEOUT).map_err(|e| KafkaError::classify("offsets for time", e))?;
    Ok(marks
        .iter()
        .map(|&(partition, _, high)| {
            let offset = match answer.find_partition(topic, partition).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => high,
            };
            (partition, offset)
        })
        .collect())
}

/// Why offsets were not moved.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The group has members: only they may commit.
    #[error("group {group} has {} live member(s)", .members.len())]
    LiveMembers { group: String, members: Vec<Member> },
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}

/// One partition's new committed offset, and the frontier its commit carries (or none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOffset {
    pub partition: Partition,
    pub offset: i64,
    pub frontier: Option<i64>,
}

/// Commit `offsets` for `group`, which must have no members. Kafka checks it too: a member
/// that joins between the check and the commit makes the commit fail, and that is reported as
/// [`CommitError::LiveMembers`].
pub fn commit_empty(kafka: &KafkaConfig, group: &str, offsets: &[NewOffset]) -> Result<(), CommitError> {
    let live = members(kafka, group)?;
    if !live.is_empty() {
        return Err(CommitError::LiveMembers { group: group.to_string(), members: live });
    }
    let consumer = client(kafka, group)?;
    let mut list = TopicPartitionList::new();
    for new in offsets {
        let mut element = list.add_partition(&new.partition.0, new.partition.1);
        element.set_offset(Offset::Offset(new.offset)).expect("valid offset");
        if let Some(frontier) = new.frontier {
            element.set_metadata(frontier_metadata(frontier));
        }
    }
    match consumer.commit(&list, CommitMode::Sync) {
        Ok(()) => Ok(()),
        Err(error) => match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::UnknownMemberId | RDKafkaErrorCode::IllegalGeneration | RDKafkaErrorCode::RebalanceInProgress) => {
                Err(CommitError::LiveMembers { group: group.to_string(), members: members(kafka, group)? })
            }
            _ => Err(CommitError::Kafka(KafkaError::classify("commit offsets", error))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frontier_rides_in_the_metadata_and_is_never_below_the_committed_offset() {
        assert_eq!(parse_frontier(&frontier_metadata(1234)), Some(1234));
        assert_eq!(parse_frontier(""), None);
        assert_eq!(parse_frontier("something else"), None);
        assert_eq!(Committed { offset: Some(10), carried: Some(40) }.frontier(), Some(40), "during a replay");
        assert_eq!(Committed { offset: Some(50), carried: Some(40) }.frontier(), Some(50), "past it");
        assert_eq!(Committed { offset: Some(50), carried: None }.frontier(), Some(50));
        assert_eq!(Committed::default().frontier(), None, "never committed");
    }
}

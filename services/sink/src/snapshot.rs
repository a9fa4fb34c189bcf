//! The records the sink would deliver for change messages read outside its consume loop: for
//! tools that act on a destination's current members as a whole (`sluice backfill --replace`).
//!
//! Guarantee: a message maps exactly as in the sink's lanes ([`crate::mapping`]: decode, consent,
//! sync mode, field mapping), so a member here is a member the live sync would add. Suppression
//! lists are not applied (they need the membership stage): callers refuse syncs that name them.

use std::collections::HashMap;

use rdkafka::message::OwnedMessage;
use sluice_core::config::{Config, SyncConfig};
use sluice_core::naming;
use sluice_destinations::OutboundRecord;

use crate::mapping::{self, Prepared};
use crate::schemas::SchemaCache;
use crate::side::Origin;
use crate::SinkError;

/// Maps change messages of one destination's syncs to its records.
pub struct Mapper {
    syncs: HashMap<String, SyncConfig>,
    schemas: SchemaCache,
}

/// What one message maps to.
#[derive(Debug)]
pub enum Mapped {
    /// The record the destination would receive.
    Record(OutboundRecord),
    /// Nothing for the destination (a change its sync mode ignores).
    Skip,
    /// Unreadable, with the reason (the sink would dead-letter it).
    Unreadable(String),
}

impl Mapper {
    /// The mapper of `destination`'s syncs, reading schemas from the config's schema topic.
    pub fn new(config: &Config, destination: &str) -> Result<Mapper, SinkError> {
        let syncs = crate::syncs_by_topic(config, destination)?;
        let schemas = SchemaCache::new(config.kafka.clone(), naming::schema_topic(&config.kafka.topic_prefix))
            .with_consent_checks(syncs.values().filter_map(|sync| sluice_destinations::validate::ConsentCheck::new(config, sync)));
        Ok(Mapper { syncs, schemas })
    }

    /// Map `message`, read from change topic `topic` (its id is its own coordinates). `Err`
    /// for a topic of no sync of the destination, or when the schemas cannot be read.
    pub async fn map(&self, topic: &str, message: &OwnedMessage) -> Result<Mapped, SinkError> {
        use rdkafka::Message;
        let sync = self.syncs.get(topic).ok_or_else(|| SinkError::Config(format!("topic {topic:?} is not a change topic of the destination's syncs")))?;
        let origin = Origin { topic: topic.into(), partition: message.partition(), offset: message.offset(), side: false };
        Ok(match mapping::prepare(message, &origin, sync, &self.schemas).await?.0 {
            Prepared::Deliver { record, .. } => Mapped::Record(record),
            Prepared::Skip => Mapped::Skip,
            Prepared::Reject(reason) => Mapped::Unreadable(reason),
        })
    }
}

//! Where a model's state lives, and reading it back: its change topic, the schema topic and the
//! poller's state topic (all compacted), and the last state record committed for it.
//!
//! Guarantee: [`load_state`] reads the state topic `read_committed` to its end, so it returns
//! exactly the last state a transaction committed (a tombstone for the model resets it to
//! none). Read after the model's producer fenced older instances, nothing can commit after it.
//! Nothing is kept on local disk.

use std::time::Duration;

use anyhow::Context as _;
use sluice_avro::PollerState;
use sluice_core::config::Config;
use sluice_core::naming;
use sluice_kafka::admin::{ensure_topics, TopicRole};
use sluice_kafka::compacted::{read_to_end, IfMissing};

use crate::error::ModelError;

/// Create (if missing) the change topics of `models` and the poller's schema and state topics.
pub async fn ensure_model_topics(config: &Config, models: &[String]) -> anyhow::Result<()> {
    ensure_topics(&config.kafka, &model_topics(config, models)).await.context("creating topics")
}

/// The topics [`ensure_model_topics`] creates.
pub(crate) fn model_topics(config: &Config, models: &[String]) -> Vec<(String, TopicRole)> {
    let prefix = &config.kafka.topic_prefix;
    let mut topics: Vec<(String, TopicRole)> = models.iter().map(|m| (naming::change_topic(prefix, m), TopicRole::Changes)).collect();
    topics.push((naming::schema_topic(prefix), TopicRole::Compacted));
    topics.push((naming::poller_state_topic(prefix), TopicRole::Compacted));
    // The run records it writes and the outcomes its writeback reads.
    topics.push((naming::runs_topic(prefix), TopicRole::RUNS));
    topics.extend(config.writeback_destinations().map(|d| (naming::outcomes_topic(prefix, d.name.get_ref()), TopicRole::OUTCOMES)));
    topics
}

/// Last committed state of `model`, read back from the state topic.
pub async fn load_state(config: &Config, model: &str) -> Result<Option<PollerState>, ModelError> {
    let kafka = config.kafka.clone();
    let topic = naming::poller_state_topic(&config.kafka.topic_prefix);
    let records =
        tokio::task::spawn_blocking(move || read_to_end(&kafka, &topic, Duration::from_secs(90), IfMissing::Empty)).await.expect("reader does not panic")?;
    let mut last = None;
    for record in records {
        if record.key.as_deref() == Some(model.as_bytes()) {
            last = match record.payload {
                Some(payload) => Some(sluice_avro::decode_state(&payload).map_err(|e| ModelError::State(e.to_string()))?),
                None => None,
            };
        }
    }
    Ok(last)
}

/// Whether the model's keys were written with the legacy fingerprint of its key schema (by a
/// sluice from before standard fingerprints): the schema topic holds the key schema under its
/// legacy fingerprint and not under its standard one. Only asked for keys whose two
/// fingerprints differ ([`sluice_avro::ModelCodec::key_fingerprints_differ`]).
pub async fn keys_written_with_legacy_fingerprint(config: &Config, codec: &sluice_avro::ModelCodec) -> Result<bool, ModelError> {
    let kafka = config.kafka.clone();
    let topic = naming::schema_topic(&config.kafka.topic_prefix);
    let records =
        tokio::task::spawn_blocking(move || read_to_end(&kafka, &topic, Duration::from_secs(90), IfMissing::Empty)).await.expect("reader does not panic")?;
    let standard = codec.schemas()[0].fingerprint.clone();
    let legacy = codec.legacy_fingerprints()[0].clone();
    let published = |fingerprint: &str| records.iter().any(|r| r.key.as_deref() == Some(fingerprint.as_bytes()) && r.payload.is_some());
    Ok(published(&legacy) && !published(&standard))
}

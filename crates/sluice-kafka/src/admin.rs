//! Topic creation. Every topic sluice uses is created up front with the settings its role needs,
//! rather than relying on broker auto-creation (off in production clusters, and wrong for
//! compaction).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use sluice_core::config::KafkaConfig;

use crate::connection::check_connection;
use crate::{client_config, KafkaError};

/// What a topic is for, which decides its cleanup policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicRole {
    /// Change topics, the schema topic and the poller-state topic: compacted, so they keep the
    /// latest record per key forever (the current state of every row → backfill by replay).
    Compacted,
    /// Dead-letter topics: never compacted (two rejects of one key are two records) and kept
    /// until an operator redrives or deletes them (`retention.ms = -1`).
    DeadLetter,
}

/// Create the topics that do not exist yet; existing topics are left as they are. Checks the
/// connection first ([`check_connection`]), so rejected credentials or certificates fail at
/// once with the listener and the cause rather than as a request timeout.
pub async fn ensure_topics(kafka: &KafkaConfig, topics: &[(String, TopicRole)]) -> Result<(), KafkaError> {
    check_connection(kafka).await?;
    let admin: AdminClient<DefaultClientContext> =
        client_config(kafka).create().map_err(|e| KafkaError::classify("create admin client", e))?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, role)| {
            let topic = NewTopic::new(name, kafka.partitions, TopicReplication::Fixed(kafka.replication_factor));
            match role {
                TopicRole::Compacted => topic
                    .set("cleanup.policy", "compact")
                    // Tombstones must outlive the slowest sink's lag so a delete is never missed.
                    .set("delete.retention.ms", "604800000"),
                TopicRole::DeadLetter => topic.set("cleanup.policy", "delete").set("retention.ms", "-1"),
            }
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(new_topics.iter(), &options).await.map_err(|e| KafkaError::classify("create topics", e))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                tracing::error!(%topic, error = %code, "cannot create topic");
                return Err(KafkaError::classify("create topics", rdkafka::error::KafkaError::AdminOp(code)));
            }
        }
    }
    Ok(())
}

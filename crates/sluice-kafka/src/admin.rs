//! Topic creation and topic settings. Every topic sluice uses is created up front with the
//! settings its role needs, rather than relying on broker auto-creation (off in production
//! clusters, and wrong for compaction).
//!
//! Guarantees:
//! - [`ensure_topics`] (or [`Admin::ensure`]) creates the topics that do not exist, each with its role's settings, and
//!   brings the *reconciled* settings of a role ([`TopicRole::reconciled`]: the compaction lag
//!   and tombstone retention of change topics) to the configured values on topics that already
//!   exist. It changes nothing when they already hold (idempotent) and logs every value it
//!   changes, with the old one. When the broker refuses the change (no permission), it logs an
//!   error with the command that sets them by hand and goes on: the topics work, and a service
//!   must not stop for it.
//! - When [`Admin::ensure`] returns, every topic it created is in the brokers' metadata with a
//!   leader for each partition, so a consumer subscribing next is assigned it at once (see
//!   [`Admin::ensure`]'s wait); otherwise it returns a retryable error.
//! - A topic's other settings are kept: Kafka's `AlterConfigs` replaces a topic's whole set of
//!   overrides, so the current overrides are read first and sent back with ours (a settings
//!   change by someone else in the milliseconds between the two calls would be lost; an override
//!   whose value the broker hides, a sensitive one, makes us leave the topic alone and say so).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ConfigSource, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use sluice_core::config::KafkaConfig;

use crate::connection::check_connection;
use crate::{client_config, KafkaError};

/// How long side records are kept: longer than a sink is expected to be down, bounded so a
/// large backfill does not stay on disk forever. Raise it per topic with `kafka-configs.sh`.
pub const SIDE_RETENTION_MS: u64 = 7 * 24 * 3600 * 1000;

/// One day in milliseconds, for the audit logs' retentions.
const DAY_MS: i64 = 86_400_000;

/// What a topic is for, which decides its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicRole {
    /// Change topics: compacted, so they keep the latest record per key forever (the current
    /// state of every row → backfill by replay), with `min.compaction.lag.ms` and
    /// `delete.retention.ms` from the `[kafka]` config so that a lagging sink or a replay still
    /// sees every delete ([`TopicRole::reconciled`]).
    Changes,
    /// The schema topic and the poller-state topic: compacted, the latest record per key.
    Compacted,
    /// Dead-letter topics: never compacted (two rejects of one key are two records) and kept
    /// until an operator redrives or deletes them (`retention.ms = -1`).
    DeadLetter,
    /// A destination's side topic (backfill, redrive): not compacted (two side records of one
    /// key are two requests), kept [`SIDE_RETENTION_MS`].
    Side,
    /// Audit logs (`<prefix>.runs`, `<prefix>.outcomes.<destination>`): append-only (two records
    /// of one key are two events), kept `retention_ms`.
    Log { retention_ms: i64 },
}

impl TopicRole {
    /// `<prefix>.runs`: run records, kept 30 days.
    pub const RUNS: TopicRole = TopicRole::Log { retention_ms: 30 * DAY_MS };
    /// `<prefix>.outcomes.<destination>`: row-level outcomes, kept 7 days (the writeback must
    /// catch up within that; its lag alert fires long before).
    pub const OUTCOMES: TopicRole = TopicRole::Log { retention_ms: 7 * DAY_MS };

    /// The settings a topic of this role is created with.
    pub fn settings(self, kafka: &KafkaConfig) -> Vec<(&'static str, String)> {
        match self {
            TopicRole::Changes => {
                let mut settings = vec![("cleanup.policy", "compact".to_string())];
                settings.extend(self.reconciled(kafka));
                settings
            }
            TopicRole::Compacted => vec![
                ("cleanup.policy", "compact".to_string()),
                // Tombstones outlive a slow reader's lag.
                ("delete.retention.ms", "604800000".to_string()),
            ],
            TopicRole::DeadLetter => vec![("cleanup.policy", "delete".to_string()), ("retention.ms", "-1".to_string())],
            TopicRole::Side => vec![("cleanup.policy", "delete".to_string()), ("retention.ms", SIDE_RETENTION_MS.to_string())],
            TopicRole::Log { retention_ms } => vec![("cleanup.policy", "delete".to_string()), ("retention.ms", retention_ms.to_string())],
        }
    }

    /// The settings brought to the configured values on existing topics too (an operator who
    /// raises the compaction lag in the config expects it to hold for the topics already there).
    pub fn reconciled(self, kafka: &KafkaConfig) -> Vec<(&'static str, String)> {
        match self {
            TopicRole::Changes => vec![
                ("min.compaction.lag.ms", kafka.min_compaction_lag_ms.to_string()),
                ("delete.retention.ms", kafka.delete_retention_ms.to_string()),
            ],
            TopicRole::Compacted | TopicRole::DeadLetter | TopicRole::Side | TopicRole::Log { .. } => Vec::new(),
        }
    }
}

/// Create the topics that do not exist yet, with `kafka.partitions` partitions; reconcile the
/// settings of those that do ([`TopicRole::reconciled`]).
pub async fn ensure_topics(kafka: &KafkaConfig, topics: &[(String, TopicRole)]) -> Result<(), KafkaError> {
    let with_partitions: Vec<(String, TopicRole, i32)> = topics.iter().map(|(name, role)| (name.clone(), *role, kafka.partitions)).collect();
    Admin::new(kafka)?.ensure(&with_partitions).await
}

/// One admin connection for a series of topic operations (each new client costs a bootstrap).
pub struct Admin {
    client: Arc<AdminClient<DefaultClientContext>>,
    kafka: KafkaConfig,
}

impl Admin {
    pub fn new(kafka: &KafkaConfig) -> Result<Admin, KafkaError> {
        let client = client_config(kafka).create().map_err(|e| KafkaError::classify("create admin client", e))?;
        Ok(Admin { client: Arc::new(client), kafka: kafka.clone() })
    }

    /// [`ensure_topics`], with each topic's partition count for when it is created. Checks the
    /// connection first ([`check_connection`]), so rejected credentials or certificates fail at
    /// once with the listener and the cause rather than as a request timeout; returns once
    /// every one of the topics has leaders ([`Admin::await_visible`]).
    pub async fn ensure(&self, topics: &[(String, TopicRole, i32)]) -> Result<(), KafkaError> {
        let kafka = &self.kafka;
        check_connection(kafka).await?;
        let settings: Vec<Vec<(&'static str, String)>> = topics.iter().map(|(_, role, _)| role.settings(kafka)).collect();
        let new_topics: Vec<NewTopic<'_>> = topics
            .iter()
            .zip(&settings)
            .map(|((name, _, partitions), settings)| {
                settings.iter().fold(NewTopic::new(name, *partitions, TopicReplication::Fixed(kafka.replication_factor)), |topic, (key, value)| {
                    topic.set(key, value)
                })
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = self.client.create_topics(new_topics.iter(), &options).await.map_err(|e| KafkaError::classify("create topics", e))?;
        let mut existing = Vec::new();
        let mut created = Vec::new();
        for result in results {
            match result {
                Ok(topic) => created.push(topic),
                Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => existing.push(topic),
                Err((topic, code)) => {
                    tracing::error!(%topic, error = %code, "cannot create topic");
                    return Err(KafkaError::classify("create topics", rdkafka::error::KafkaError::AdminOp(code)));
                }
            }
        }
        // Existing topics too: another service may have created one a moment ago (the poller
        // and a sink starting together), and it is not in every broker's metadata yet either.
        self.await_visible(created.iter().chain(&existing).cloned().collect()).await?;
        let reconciled: Vec<(&str, Vec<(&'static str, String)>)> = topics
            .iter()
            .filter(|(name, _, _)| existing.contains(name))
            .map(|(name, role, _)| (name.as_str(), role.reconciled(kafka)))
            .filter(|(_, wanted)| !wanted.is_empty())
            .collect();
        if reconciled.is_empty() {
            return Ok(());
        }
        // Not being allowed to change a topic's settings (no AlterConfigs ACL) must not stop a
        // service whose topics work: say loudly what to set by hand instead.
        if let Err(error) = reconcile(&self.client, &reconciled).await {
            for (name, wanted) in &reconciled {
                tracing::error!(
                    topic = %name, %error,
                    "cannot bring the topic's compaction settings to the configured values; a sink lagging behind the log cleaner could miss deletes. Set them by hand: kafka-configs.sh --alter --entity-type topics --entity-name {name} --add-config {}",
                    wanted.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
                );
            }
        }
        Ok(())
    }

    /// Wait until each of `topics` (just created, here or by another service) is in the brokers'
    /// metadata with a leader for every partition. The controller knows a new topic before the brokers' metadata caches do,
    /// and a consumer that subscribes in between is told "unknown topic or partition" and does
    /// not ask again until its next metadata refresh (`topic.metadata.refresh.interval.ms`, five
    /// minutes by default): a sink would then not read its side topic for minutes. Bounded by
    /// [`VISIBLE_WITHIN`]; past it the error is retryable (the services retry their start).
    async fn await_visible(&self, topics: Vec<String>) -> Result<(), KafkaError> {
        self.await_visible_within(topics, VISIBLE_WITHIN).await
    }

    /// [`Admin::await_visible`] with a bound of the caller's: `Ok` once every one of `topics`
    /// has a leader for each partition, a [`KafkaError::Retryable`] once `within` has passed
    /// without.
    pub async fn await_visible_within(&self, topics: Vec<String>, within: Duration) -> Result<(), KafkaError> {
        if topics.is_empty() {
            return Ok(());
        }
        let client = Arc::clone(&self.client);
        tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + within;
            let mut pending = topics;
            loop {
                pending.retain(|topic| !has_leaders(client.inner(), topic));
                if pending.is_empty() {
                    return Ok(());
                }
                if std::time::Instant::now() >= deadline {
                    tracing::warn!(topics = ?pending, within_s = within.as_secs_f64(), "created topics are not in the brokers' metadata yet");
                    return Err(KafkaError::Retryable {
                        operation: "wait for created topics to have leaders",
                        source: rdkafka::error::KafkaError::AdminOp(RDKafkaErrorCode::LeaderNotAvailable),
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .await
        .expect("reading metadata does not panic")
    }

    /// The partition count of each of `topics` that exists.
    pub async fn partition_counts(&self, topics: &[String]) -> Result<HashMap<String, i32>, KafkaError> {
        let client = Arc::clone(&self.client);
        let topics = topics.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut counts = HashMap::new();
            for topic in &topics {
                let metadata = client.inner().fetch_metadata(Some(topic), Duration::from_secs(10)).map_err(|e| KafkaError::classify("fetch metadata", e))?;
                for t in metadata.topics() {
                    if t.error().is_none() && !t.partitions().is_empty() {
                        counts.insert(t.name().to_string(), t.partitions().len() as i32);
                    }
                }
            }
            Ok(counts)
        })
        .await
        .expect("reading metadata does not panic")
    }
}

/// How long [`Admin::ensure`] waits for the topics it created to show in the metadata.
const VISIBLE_WITHIN: Duration = Duration::from_secs(30);

/// Whether `topic` is in the metadata `client` gets with a leader for each of its partitions.
fn has_leaders(client: &rdkafka::client::Client<DefaultClientContext>, topic: &str) -> bool {
    let Ok(metadata) = client.fetch_metadata(Some(topic), Duration::from_secs(5)) else { return false };
    metadata.topics().iter().any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty() && t.partitions().iter().all(|p| p.error().is_none() && p.leader() >= 0))
}

/// One setting that changes: (setting, old value, new value).
type Change = (&'static str, Option<String>, String);

/// What must change on a topic to hold `wanted`, given its current overrides and its effective
/// settings: `None` when nothing does, else the full set of overrides to send (the current ones
/// with ours applied) and the changes.
fn plan_settings(
    current: &HashMap<String, Option<String>>,
    effective: &HashMap<String, Option<String>>,
    wanted: &[(&'static str, String)],
) -> Option<(HashMap<String, String>, Vec<Change>)> {
    let changes: Vec<Change> = wanted
        .iter()
        .filter(|(key, value)| effective.get(*key).cloned().flatten().as_deref() != Some(value.as_str()))
        .map(|(key, value)| (*key, effective.get(*key).cloned().flatten(), value.clone()))
        .collect();
    if changes.is_empty() {
        return None;
    }
    let mut full: HashMap<String, String> = current.iter().filter_map(|(k, v)| Some((k.clone(), v.clone()?))).collect();
    for (key, value) in wanted {
        full.insert(key.to_string(), value.clone());
    }
    Some((full, changes))
}

/// Bring each topic's `wanted` settings to hold, keeping its other overrides: one read of every
/// topic's settings, one write of those that differ.
async fn reconcile(admin: &AdminClient<DefaultClientContext>, topics: &[(&str, Vec<(&'static str, String)>)]) -> Result<(), KafkaError> {
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let specifiers: Vec<ResourceSpecifier<'_>> = topics.iter().map(|(name, _)| ResourceSpecifier::Topic(name)).collect();
    let described = admin.describe_configs(specifiers.iter(), &options).await.map_err(|e| KafkaError::classify("describe topics", e))?;
    let mut writes: Vec<(&str, HashMap<String, String>, Vec<Change>)> = Vec::new();
    for ((name, wanted), resource) in topics.iter().zip(described) {
        let Ok(resource) = resource else {
            tracing::warn!(topic = %name, "cannot read the topic's settings; its compaction settings are left as they are");
            continue;
        };
        let effective: HashMap<String, Option<String>> = resource.entries.iter().map(|e| (e.name.clone(), e.value.clone())).collect();
        let overrides: Vec<_> = resource.entries.iter().filter(|e| e.source == ConfigSource::DynamicTopic).collect();
        let current: HashMap<String, Option<String>> = overrides.iter().map(|e| (e.name.clone(), e.value.clone())).collect();
        let Some((full, changes)) = plan_settings(&current, &effective, wanted) else { continue };
        if overrides.iter().any(|e| e.value.is_none()) {
            tracing::warn!(
                topic = %name,
                "the topic has a setting whose value the broker hides, which changing its settings would drop; set them by hand: kafka-configs.sh --alter --entity-type topics --entity-name {name} --add-config {}",
                wanted.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
            );
            continue;
        }
        writes.push((name, full, changes));
    }
    if writes.is_empty() {
        return Ok(());
    }
    let alters: Vec<AlterConfig<'_>> = writes
        .iter()
        .map(|(name, full, _)| full.iter().fold(AlterConfig::new(ResourceSpecifier::Topic(name)), |alter, (k, v)| alter.set(k, v)))
        .collect();
    let results = admin.alter_configs(alters.iter(), &options).await.map_err(|e| KafkaError::classify("alter topic settings", e))?;
    for result in results {
        if let Err((topic, code)) = result {
            tracing::error!(?topic, error = %code, "cannot change the topic's settings");
            return Err(KafkaError::classify("alter topic settings", rdkafka::error::KafkaError::AdminOp(code)));
        }
    }
    for (name, _, changes) in writes {
        for (setting, old, new) in changes {
            tracing::info!(topic = %name, setting, old = old.as_deref().unwrap_or("unset"), new = %new, "topic setting changed to the configured value");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, Option<String>> {
        pairs.iter().map(|(k, v)| (k.to_string(), Some(v.to_string()))).collect()
    }

    #[test]
    fn settings_change_only_when_they_differ_and_keep_the_other_overrides() {
        let wanted = vec![("min.compaction.lag.ms", "604800000".to_string()), ("delete.retention.ms", "86400000".to_string())];
        let current = map(&[("cleanup.policy", "compact"), ("segment.ms", "100"), ("delete.retention.ms", "86400000")]);
        let mut effective = current.clone();
        effective.insert("min.compaction.lag.ms".into(), Some("0".into()));
        let (full, changes) = plan_settings(&current, &effective, &wanted).expect("the lag differs");
        assert_eq!(changes, [("min.compaction.lag.ms", Some("0".to_string()), "604800000".to_string())], "only what differs is reported");
        assert_eq!(full.get("segment.ms").map(String::as_str), Some("100"), "another override is kept");
        assert_eq!(full.get("cleanup.policy").map(String::as_str), Some("compact"));
        assert_eq!(full.get("min.compaction.lag.ms").map(String::as_str), Some("604800000"));
        assert_eq!(full.len(), 4);

        effective.insert("min.compaction.lag.ms".into(), Some("604800000".into()));
        assert!(plan_settings(&current, &effective, &wanted).is_none(), "nothing to do when every value holds");
    }

    #[test]
    fn change_topics_carry_the_configured_lag_and_retention() {
        let kafka: KafkaConfig = toml::from_str("bootstrap_servers = \"x\"\nmin_compaction_lag_ms = 5\ndelete_retention_ms = 6").unwrap();
        let settings = TopicRole::Changes.settings(&kafka);
        assert!(settings.contains(&("cleanup.policy", "compact".to_string())));
        assert!(settings.contains(&("min.compaction.lag.ms", "5".to_string())));
        assert!(settings.contains(&("delete.retention.ms", "6".to_string())));
        assert!(TopicRole::Compacted.reconciled(&kafka).is_empty(), "only change topics are reconciled");
        assert_eq!(TopicRole::Side.settings(&kafka)[0], ("cleanup.policy", "delete".to_string()), "side records of one key are distinct requests");
    }
}

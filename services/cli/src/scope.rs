//! What a destination command acts on: the destination's change topics (of one model's sync,
//! with `--model`), checked against the config with a clear error naming what exists.

use sluice_core::config::{Config, SyncMode};
use sluice_core::naming;
use sluice_kafka::admin::{Admin, TopicRole};

use crate::failure::Failure;

/// One change topic of a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Topic {
    /// `<prefix>.changes.<model>`.
    pub name: String,
    /// The model it carries.
    pub model: String,
    /// Whether its sync supersedes older states of a key (every mode but `append`).
    pub supersede: bool,
}

/// The change topics of `destination`'s syncs (of `model`'s only, when given). Errors (exit 2)
/// name the destinations or models that do exist.
pub(crate) fn destination_topics(config: &Config, destination: &str, model: Option<&str>) -> Result<Vec<Topic>, Failure> {
    if config.destination(destination).is_none() {
        let known: Vec<&str> = config.destinations.iter().map(|d| d.name.get_ref().as_str()).collect();
        return Err(Failure::Config(format!("destination {destination:?} is not in the config (its destinations: {})", known.join(", "))));
    }
    let syncs: Vec<_> = config.syncs_to(destination).collect();
    let models: Vec<&str> = syncs.iter().map(|s| s.model.get_ref().as_str()).collect();
    if let Some(model) = model {
        if config.model(model).is_none() {
            let known: Vec<&str> = config.models.iter().map(|m| m.name.get_ref().as_str()).collect();
            return Err(Failure::Config(format!("model {model:?} is not in the config (its models: {})", known.join(", "))));
        }
        if !models.contains(&model) {
            return Err(Failure::Config(format!("model {model:?} has no sync to destination {destination:?} (its models: {})", models.join(", "))));
        }
    }
    let topics: Vec<Topic> = syncs
        .iter()
        .filter(|s| model.is_none_or(|m| m == s.model.get_ref()))
        .map(|s| Topic {
            name: naming::change_topic(&config.kafka.topic_prefix, s.model.get_ref()),
            model: s.model.get_ref().clone(),
            supersede: s.mode() != SyncMode::Append,
        })
        .collect();
    if topics.is_empty() {
        return Err(Failure::Config(format!("no [[syncs]] deliver to destination {destination:?}")));
    }
    Ok(topics)
}

/// Load the config at `path` (exit 2 with the file and line when it is invalid).
pub(crate) fn load(path: &std::path::Path) -> Result<Config, Failure> {
    Config::load(path).map_err(|error| Failure::Config(error.to_string()))
}

/// Create the destination's side topic if it is missing, with its change topics' partition count
/// (what the sink requires, `sluice_sink::side`), together with `more` topics; returns its name.
pub(crate) async fn ensure_side_topic(config: &Config, destination: &str, topics: &[Topic], more: &[(String, TopicRole, i32)]) -> Result<String, Failure> {
    let kafka = &config.kafka;
    let side = naming::side_topic(&kafka.topic_prefix, destination);
    let admin = Admin::new(kafka)?;
    let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
    let counts = admin.partition_counts(&names).await?;
    let partitions = names.iter().find_map(|n| counts.get(n).copied()).unwrap_or(kafka.partitions);
    let mut wanted = vec![(side.clone(), TopicRole::Side, partitions)];
    wanted.extend_from_slice(more);
    admin.ensure(&wanted).await?;
    Ok(side)
}

//! Topic names, in one place, so the poller, the sinks and the CLI can never disagree.

/// Topic holding the change events of one model: `<prefix>.changes.<model>`.
pub fn change_topic(prefix: &str, model: &str) -> String {
    format!("{prefix}.changes.{model}")
}

/// Dead-letter topic of one destination: `<prefix>.dlq.<destination>`.
pub fn dead_letter_topic(prefix: &str, destination: &str) -> String {
    format!("{prefix}.dlq.{destination}")
}

/// Compacted topic holding every writer schema, keyed by its fingerprint, so any consumer can
/// decode any event ever written, including during a replay years later.
pub fn schema_topic(prefix: &str) -> String {
    format!("{prefix}.schemas")
}

/// Compacted topic holding each model's committed poller progress, keyed by model name. It is
/// written in the same Kafka transaction as the events it covers.
pub fn poller_state_topic(prefix: &str) -> String {
    format!("{prefix}.poller.state")
}

/// Consumer group of one destination's sink service.
pub fn sink_group(prefix: &str, destination: &str) -> String {
    format!("{prefix}.sink.{destination}")
}

/// Transactional id of the poller for one model. One per model means a second poller started
/// for the same model fences the first instead of interleaving with it.
pub fn poller_transactional_id(prefix: &str, model: &str) -> String {
    format!("{prefix}.poller.{model}")
}

//! Topic names, in one place, so the poller, the sinks and the CLI can never disagree.

/// Topic holding the change events of one model: `<prefix>.changes.<model>`.
pub fn change_topic(prefix: &str, model: &str) -> String {
    format!("{prefix}.changes.{model}")
}

/// The model whose change topic `topic` is under `prefix` ([`change_topic`] read backwards), or
/// `None` for any other topic. Takes the prefix, since a prefix may itself contain dots.
pub fn change_topic_model<'t>(prefix: &str, topic: &'t str) -> Option<&'t str> {
    topic.strip_prefix(prefix)?.strip_prefix(".changes.").filter(|model| !model.is_empty())
}

/// Dead-letter topic of one destination: `<prefix>.dlq.<destination>`.
pub fn dead_letter_topic(prefix: &str, destination: &str) -> String {
    format!("{prefix}.dlq.{destination}")
}

/// Dead-letter ledger of one destination: `<prefix>.dlq_ledger.<destination>`. Compacted, one
/// record per dead letter that an operator acted on (redriven, superseded, purged), keyed by the
/// dead letter's `partition:offset`: the dead-letter topic itself is append-only, so what was
/// done to its records is recorded here (`sluice dlq`, docs/operations.md).
pub fn dead_letter_ledger_topic(prefix: &str, destination: &str) -> String {
    format!("{prefix}.dlq_ledger.{destination}")
}

/// Transactional id of `sluice dlq redrive|purge` for one destination. One per destination, so
/// two operators acting on the same dead letters at once fence each other instead of both
/// redriving them.
pub fn dead_letter_ledger_transactional_id(prefix: &str, destination: &str) -> String {
    format!("{prefix}.dlq_ledger.{destination}")
}

/// Side topic of one destination: `<prefix>.side.<destination>`. Records that are not part of
/// the live change stream but must reach the destination in order with it (a backfill, a
/// dead-letter redrive) are produced here, each naming the change it carries in its headers; the
/// destination's sink consumes it with its change topics.
pub fn side_topic(prefix: &str, destination: &str) -> String {
    format!("{prefix}.side.{destination}")
}

/// Whether `topic` is a side topic ([`side_topic`]). Exact, because prefixes, models and
/// destinations are validated identifiers without dots: every topic name sluice makes has its
/// kind as the segment after the first dot.
pub fn is_side_topic(topic: &str) -> bool {
    let mut segments = topic.split('.');
    matches!((segments.next(), segments.next(), segments.next(), segments.next()), (Some(_), Some("side"), Some(_), None))
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

/// Append-only topic of run records (`schemas/audit/run_record.avsc`): one per poller run and
/// one per sink batch, for operators and auditors (`docs/audit.md`).
pub fn runs_topic(prefix: &str) -> String {
    format!("{prefix}.runs")
}

/// Append-only topic of one destination's row-level outcomes (`schemas/audit/sync_outcome.avsc`),
/// written by its sink when the destination has `writeback = true` and read by the writeback,
/// which copies them into the warehouse: `<prefix>.outcomes.<destination>`.
pub fn outcomes_topic(prefix: &str, destination: &str) -> String {
    format!("{prefix}.outcomes.{destination}")
}

/// Consumer group of the warehouse writeback (one for every destination's outcomes).
pub fn writeback_group(prefix: &str) -> String {
    format!("{prefix}.writeback")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_topic_gives_back_its_model_whatever_dots_the_prefix_has() {
        for prefix in ["sluice", "acme.prod"] {
            assert_eq!(change_topic_model(prefix, &change_topic(prefix, "customers")), Some("customers"));
            assert_eq!(change_topic_model(prefix, &dead_letter_topic(prefix, "crm")), None);
            assert_eq!(change_topic_model(prefix, &side_topic(prefix, "crm")), None);
        }
        assert_eq!(change_topic_model("other", &change_topic("sluice", "customers")), None);
    }

    #[test]
    fn side_topics_are_told_apart_from_every_other_topic() {
        assert_eq!(side_topic("sluice", "crm"), "sluice.side.crm");
        assert!(is_side_topic(&side_topic("it_1", "crm-2")));
        for other in [change_topic("sluice", "side"), dead_letter_topic("sluice", "side"), schema_topic("side"), poller_state_topic("sluice"), "side.x".into(), "a.side".into()] {
            assert!(!is_side_topic(&other), "{other}");
        }
    }
}

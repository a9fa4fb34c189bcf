//! The sink's audit records (`docs/audit.md`): one run record per batch on `<prefix>.runs`
//! (key `sink/<destination>`), and, for a destination with `writeback = true`, one outcome per
//! record on `<prefix>.outcomes.<destination>` (key: the record id), which the poller's
//! writeback copies into the warehouse.
//!
//! Guarantees:
//! - **Never holds up delivery.** Records go through a [`BackgroundProducer`]: queued and
//!   delivered by librdkafka; one that cannot be is counted in
//!   `sluice_sink_audit_records_lost_total` and logged, never waited for.
//! - **Written once the batch is finished**: after every record of it was applied or its dead
//!   letter acknowledged (`Deliverer::deliver`). A batch delivered again after a crash (at-least-
//!   once) is recorded again: outcomes carry the record id, so the sync log's upsert keeps one
//!   row per record; run records are an append-only log, one per delivery of a batch.
//! - A batch that stops the sink (fatal destination error, breaker, Kafka) gets a run record
//!   `failed` with zero counts and no outcomes: its records are delivered again after the
//!   restart, and their outcomes come then. A batch cut short by shutdown gets none.
//! - **No personal data in run records**: counts, ids, the refusals' classes and statuses.
//!   Outcomes carry the record's primary key, which the warehouse table exists to join on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{Headers, Message, OwnedMessage};
use sluice_avro::audit::{encode_run_record, encode_sync_outcome, RunRecord, SinkBatch, SyncOutcome};
use sluice_core::config::{Config, DestinationConfig};
use sluice_core::{naming, DeadLetterClass};
use sluice_destinations::OutboundRecord;
use sluice_kafka::background::{BackgroundProducer, Service};
use sluice_kafka::{headers, KafkaError};

/// A record the destination refused for good, as its outcome tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub class: DeadLetterClass,
    pub status: Option<u16>,
}

/// One finished (or failed) batch: what was sent, and when.
pub(crate) struct Batch<'a> {
    pub messages: &'a [Arc<OwnedMessage>],
    pub records: &'a [OutboundRecord],
    pub started_ms: i64,
    pub finished_ms: i64,
}

/// Where a sink's audit records go; [`Audit::off`] writes nothing (unit tests).
pub(crate) struct Audit {
    producer: Option<BackgroundProducer>,
    runs_topic: String,
    /// Set when the destination has `writeback = true`.
    outcomes_topic: Option<String>,
    destination: String,
    /// The topic prefix, to read a model back from its change topic.
    prefix: String,
}

impl Audit {
    /// The audit of `destination`.
    pub(crate) fn new(config: &Config, destination: &DestinationConfig) -> Result<Audit, KafkaError> {
        let prefix = &config.kafka.topic_prefix;
        let name = destination.name.get_ref();
        Ok(Audit {
            producer: Some(BackgroundProducer::new(&config.kafka, Service::Sink)?),
            runs_topic: naming::runs_topic(prefix),
            outcomes_topic: destination.writeback.then(|| naming::outcomes_topic(prefix, name)),
            destination: name.clone(),
            prefix: prefix.clone(),
        })
    }

    /// No audit records at all.
    #[cfg(test)]
    pub(crate) fn off() -> Audit {
        Audit { producer: None, runs_topic: String::new(), outcomes_topic: None, destination: String::new(), prefix: String::new() }
    }

    /// `batch` finished: records at `refused` (indexes) were dead-lettered, the others applied.
    pub(crate) fn finished(&self, kind: &str, batch: &Batch<'_>, refused: &[(usize, Refusal)]) {
        let Some(producer) = &self.producer else { return };
        let id = uuid::Uuid::new_v4().to_string();
        let record = self.run_record(kind, &id, batch, refused, None);
        self.send(producer, &self.runs_topic, &format!("sink/{}", self.destination), encode_run_record(&record));
        let Some(topic) = &self.outcomes_topic else { return };
        let refusals: BTreeMap<usize, Refusal> = refused.iter().copied().collect();
        for (i, (message, out)) in batch.messages.iter().zip(batch.records).enumerate() {
            let outcome = self.outcome(&id, message, out, refusals.get(&i).copied(), batch.finished_ms);
            self.send(producer, topic, &outcome.record_id.clone(), encode_sync_outcome(&outcome));
        }
    }

    /// `batch` stopped the sink with `error` (a summary without personal data).
    pub(crate) fn failed(&self, kind: &str, batch: &Batch<'_>, error: String) {
        let Some(producer) = &self.producer else { return };
        let record = self.run_record(kind, &uuid::Uuid::new_v4().to_string(), batch, &[], Some(error));
        self.send(producer, &self.runs_topic, &format!("sink/{}", self.destination), encode_run_record(&record));
    }

    /// An unreadable `message` was dead-lettered at `at_ms`: its outcome, when written back.
    pub(crate) fn unreadable(&self, message: &OwnedMessage, at_ms: i64) {
        let (Some(producer), Some(topic)) = (&self.producer, &self.outcomes_topic) else { return };
        let record_id = format!("{}/{}/{}", message.topic(), message.partition(), message.offset());
        let outcome = SyncOutcome {
            destination: self.destination.clone(),
            model: naming::change_topic_model(&self.prefix, message.topic()).unwrap_or_default().to_string(),
            record_key: None,
            op: None,
            action: None,
            status: "dead_lettered".into(),
            error_class: Some(DeadLetterClass::Undecodable.label().into()),
            vendor_status: None,
            run_id: run_id(message),
            batch_id: uuid::Uuid::new_v4().to_string(),
            at_ms,
            record_id,
        };
        self.send(producer, topic, &outcome.record_id.clone(), encode_sync_outcome(&outcome));
    }

    /// Wait (bounded) for queued records, at shutdown.
    pub(crate) async fn flush(&self) {
        if let Some(producer) = &self.producer {
            producer.flush(Duration::from_secs(5)).await;
        }
    }

    fn run_record(&self, kind: &str, id: &str, batch: &Batch<'_>, refused: &[(usize, Refusal)], error: Option<String>) -> RunRecord {
        let mut run_ids: Vec<String> = batch.messages.iter().filter_map(|m| run_id(m)).collect();
        run_ids.sort();
        run_ids.dedup();
        let sent = batch.records.len() as i64;
        let failed = error.is_some();
        let (applied, refused_n) = if failed { (0, 0) } else { (sent - refused.len() as i64, refused.len() as i64) };
        let error = error.or_else(|| refusal_summary(refused));
        let oldest_record_ms = batch.messages.iter().filter_map(|m| m.timestamp().to_millis()).min().unwrap_or(batch.started_ms);
        RunRecord {
            service: "sink".into(),
            id: id.into(),
            started_ms: batch.started_ms,
            finished_ms: batch.finished_ms,
            outcome: if failed { "failed" } else { "ok" }.into(),
            error,
            poller: None,
            sink: Some(SinkBatch { destination: self.destination.clone(), kind: kind.into(), run_ids, records: sent, applied, refused: refused_n, oldest_record_ms }),
        }
    }

    fn outcome(&self, batch_id: &str, message: &OwnedMessage, record: &OutboundRecord, refusal: Option<Refusal>, at_ms: i64) -> SyncOutcome {
        SyncOutcome {
            destination: self.destination.clone(),
            record_id: record.id.clone(),
            model: record.model.clone(),
            record_key: Some(serde_json::Value::Object(record.key.clone()).to_string()),
            op: Some(record.op.code().into()),
            action: Some(record.action.label().into()),
            status: if refusal.is_some() { "refused" } else { "applied" }.into(),
            error_class: refusal.map(|r| r.class.label().to_string()),
            vendor_status: refusal.and_then(|r| r.status).map(i32::from),
            run_id: run_id(message),
            batch_id: batch_id.into(),
            at_ms,
        }
    }

    fn send(&self, producer: &BackgroundProducer, topic: &str, key: &str, encoded: Result<Vec<u8>, sluice_avro::CodecError>) {
        match encoded {
            Ok(bytes) => producer.send(topic, key.as_bytes(), &bytes, headers::owned([])),
            Err(error) => tracing::error!(destination = %self.destination, %error, "audit record not encodable; not written"),
        }
    }
}

/// The poller run that emitted `message` (its `sluice.run.id` header).
fn run_id(message: &OwnedMessage) -> Option<String> {
    let headers = message.headers()?;
    headers.iter().find(|h| h.key == headers::RUN_ID).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// "refused: permanent/422 x2, retries_exhausted/503 x1", or `None` when nothing was.
fn refusal_summary(refused: &[(usize, Refusal)]) -> Option<String> {
    let mut by: BTreeMap<(&'static str, Option<u16>), usize> = BTreeMap::new();
    for (_, r) in refused {
        *by.entry((r.class.label(), r.status)).or_default() += 1;
    }
    let parts: Vec<String> = by.into_iter().map(|((class, status), n)| format!("{class}/{} x{n}", status.map_or("-".to_string(), |s| s.to_string()))).collect();
    (!parts.is_empty()).then(|| format!("refused: {}", parts.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{batch, message};

    fn audit() -> Audit {
        Audit { producer: None, runs_topic: "p.runs".into(), outcomes_topic: Some("p.outcomes.crm".into()), destination: "crm".into(), prefix: "p".into() }
    }

    #[test]
    fn a_batch_record_counts_what_was_sent_applied_and_refused_by_class() {
        let (messages, records) = batch(3);
        let batch = Batch { messages: &messages, records: &records, started_ms: 5, finished_ms: 9 };
        let refused = [(1, Refusal { class: DeadLetterClass::Permanent, status: Some(422) })];
        let record = audit().run_record("webhook", "b1", &batch, &refused, None);
        assert_eq!((record.outcome.as_str(), record.error.as_deref(), record.started_ms, record.finished_ms), ("ok", Some("refused: permanent/422 x1"), 5, 9));
        let sink = record.sink.expect("a sink batch");
        assert_eq!((sink.records, sink.applied, sink.refused, sink.oldest_record_ms), (3, 2, 1, 1000));
        let failed = audit().run_record("webhook", "b2", &batch, &[], Some("destination failed fatally (status 401)".into()));
        assert_eq!((failed.outcome.as_str(), failed.sink.unwrap().applied), ("failed", 0));
    }

    #[test]
    fn an_outcome_names_the_record_its_key_action_and_refusal() {
        let (messages, records) = batch(1);
        let outcome = audit().outcome("b", &messages[0], &records[0], Some(Refusal { class: DeadLetterClass::RetriesExhausted, status: Some(503) }), 7);
        assert_eq!((outcome.record_id.as_str(), outcome.status.as_str(), outcome.action.as_deref()), ("t/0/0", "refused", Some("upsert")));
        assert_eq!((outcome.error_class.as_deref(), outcome.vendor_status, outcome.record_key.as_deref()), (Some(DeadLetterClass::RetriesExhausted.label()), Some(503), Some("{}")));
        assert_eq!(audit().outcome("b", &message("k", 1), &records[0], None, 7).status, "applied");
        assert_eq!((naming::change_topic_model("p", "p.changes.customers"), naming::change_topic_model("p", "p.side.crm")), (Some("customers"), None));
    }
}

//! The poller's run records on `<prefix>.runs` (`schemas/audit/run_record.avsc`,
//! `docs/audit.md`): one per run of a model, keyed `poller/<model>`.
//!
//! A run is what happens between two catch-ups of a model: its committed transactions (pages,
//! chunks, sweeps) and how it ended — `ok` when it caught up, `refused` when a gate or the schema
//! contract refused it, `failed` when an error ended its loop's incarnation.
//!
//! Guarantees:
//! - **Never holds up a run.** Records go through a [`BackgroundProducer`]: queued, delivered by
//!   librdkafka; a record that cannot be delivered is counted in
//!   `sluice_poller_audit_records_lost_total` and logged, never waited for.
//! - **Counts are what Kafka committed**: a transaction and its events (by the `sluice.op` header
//!   of its change records, tombstones not counted) once its commit returned.
//! - **No personal data**: counts, ids, the model's name and, for a failure, the kind of error
//!   (a gate refusal with its counts, a contract drift with its columns), never a row value.
//!
//! Each poller has its own [`RunLog`] (no process-wide state: several pollers of different
//! configs may share a process, as the integration tests do); a model's loop holds its
//! [`ModelRun`], and its committer reports each committed transaction to it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_avro::audit::{encode_run_record, PollerRun, RunRecord};
use sluice_core::config::{Config, ModelConfig};
use sluice_core::{naming, Op};
use sluice_kafka::background::{BackgroundProducer, Service};
use sluice_kafka::headers;

use crate::clock::now_ms;

/// How a run ended, the record's `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Caught up.
    Ok,
    /// A data-quality gate or the schema contract refused it.
    Refused,
    /// An error ended it.
    Failed,
}

impl RunEnd {
    fn label(self) -> &'static str {
        match self {
            RunEnd::Ok => "ok",
            RunEnd::Refused => "refused",
            RunEnd::Failed => "failed",
        }
    }
}

/// One model's run so far.
#[derive(Debug, Clone, Default, PartialEq)]
struct OpenRun {
    started_ms: i64,
    run_ids: Vec<String>,
    /// Events by op: `r`, `c`, `u`, `d`.
    events: [i64; 4],
    transactions: i64,
}

impl OpenRun {
    fn starting(at_ms: i64) -> OpenRun {
        OpenRun { started_ms: at_ms, ..OpenRun::default() }
    }

    fn committed(&mut self, run_id: &str) {
        self.transactions += 1;
        if self.run_ids.last().map(String::as_str) != Some(run_id) {
            self.run_ids.push(run_id.to_string());
        }
    }

    fn counted(&mut self, counts: &[(Op, u64)]) {
        for &(op, n) in counts {
            let slot = match op {
                Op::Read => 0,
                Op::Create => 1,
                Op::Update => 2,
                Op::Delete => 3,
            };
            self.events[slot] += n as i64;
        }
    }

    /// The run's record, ended at `finished_ms`.
    fn record(self, model: &str, mode: &str, warehouse: &str, end: RunEnd, error: Option<String>, finished_ms: i64) -> RunRecord {
        let [reads, creates, updates, deletes] = self.events;
        let poller = PollerRun { model: model.into(), mode: mode.into(), warehouse: warehouse.into(), run_ids: self.run_ids, reads, creates, updates, deletes, transactions: self.transactions };
        RunRecord {
            service: "poller".into(),
            id: uuid::Uuid::new_v4().to_string(),
            started_ms: self.started_ms,
            finished_ms,
            outcome: end.label().into(),
            error,
            poller: Some(poller),
            sink: None,
        }
    }
}

/// Where a poller's run records go: one producer for every model.
pub struct RunLog {
    producer: BackgroundProducer,
    topic: String,
    warehouse: String,
}

impl RunLog {
    /// The run log of a poller of `config`.
    pub fn new(config: &Config) -> Result<RunLog, sluice_kafka::KafkaError> {
        let producer = BackgroundProducer::new(&config.kafka, Service::Poller)?;
        Ok(RunLog { producer, topic: naming::runs_topic(&config.kafka.topic_prefix), warehouse: config.warehouse.name.clone() })
    }

    /// Wait (bounded) for queued records, at shutdown.
    pub async fn flush(&self) {
        self.producer.flush(Duration::from_secs(5)).await;
    }
}

/// One model's runs: the open run, and where its record goes when it ends.
pub struct ModelRun {
    log: Arc<RunLog>,
    model: String,
    mode: &'static str,
    open: Mutex<OpenRun>,
}

impl ModelRun {
    /// The runs of `model`, recorded in `log`.
    pub fn new(log: Arc<RunLog>, model: &ModelConfig) -> ModelRun {
        ModelRun { log, model: model.name.get_ref().clone(), mode: model.detection.mode(), open: Mutex::new(OpenRun::starting(now_ms())) }
    }

    /// The model (re)opened: its run starts now.
    pub fn opened(&self) {
        *self.open.lock().expect("run lock") = OpenRun::starting(now_ms());
    }

    /// A transaction of run `run_id` committed `events` (by op).
    pub fn committed(&self, run_id: &str, events: &[(Op, u64)]) {
        let mut open = self.open.lock().expect("run lock");
        open.committed(run_id);
        open.counted(events);
    }

    /// The run ended as `end`: its record is queued and the next run starts now.
    pub fn ended(&self, end: RunEnd, error: Option<String>) {
        let now = now_ms();
        let run = std::mem::replace(&mut *self.open.lock().expect("run lock"), OpenRun::starting(now));
        let record = run.record(&self.model, self.mode, &self.log.warehouse, end, error, now);
        match encode_run_record(&record) {
            Ok(bytes) => self.log.producer.send(&self.log.topic, format!("poller/{}", self.model).as_bytes(), &bytes, headers::owned([])),
            Err(error) => tracing::error!(model = %self.model, %error, "run record not encodable; not written"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_counts_its_transactions_run_ids_and_events_by_op() {
        let mut run = OpenRun::starting(10);
        run.committed("a");
        run.counted(&[(Op::Read, 2), (Op::Create, 1)]);
        run.committed("a");
        run.committed("b");
        run.counted(&[(Op::Update, 3), (Op::Delete, 4), (Op::Create, 1)]);
        let record = run.record("customers", "cursor", "wh", RunEnd::Refused, Some("gate".into()), 20);
        assert_eq!((record.service.as_str(), record.started_ms, record.finished_ms, record.outcome.as_str(), record.error.as_deref()), ("poller", 10, 20, "refused", Some("gate")));
        let poller = record.poller.expect("a poller run");
        assert_eq!(poller.run_ids, ["a", "b"]);
        assert_eq!((poller.reads, poller.creates, poller.updates, poller.deletes, poller.transactions), (2, 2, 3, 4, 3));
        assert_eq!((poller.model.as_str(), poller.mode.as_str(), poller.warehouse.as_str()), ("customers", "cursor", "wh"));
    }
}

//! The one way a model's progress reaches Kafka.
//!
//! Guarantees:
//! - **Events and progress never disagree.** [`Committer::commit`] sends a run's change records
//!   and the model's next state record (`<prefix>.poller.state`, keyed by model) in one Kafka
//!   transaction: both become visible, or neither.
//! - **A consumer can always decode what it reads.** The writer schemas are published to
//!   `<prefix>.schemas` in the same transaction as the first events of this incarnation (after
//!   a restart too: publishing is idempotent on the compacted topic).
//! - **The state it holds is what Kafka committed.** [`Committer::state`] starts as the state
//!   read back after fencing and changes only when a transaction committed, so a mode that
//!   builds its next state from it can never skip or repeat a committed step.
//!
//! - **The tracked keys it holds are the committed change topic.** When a mode gives it the
//!   change topic's state ([`Committer::track`], rebuilt from the topic), every committed
//!   transaction applies its change records to it, at the offsets Kafka gave them, before
//!   `commit` returns: whatever commits (a cursor page, a reconciliation, an expiry sweep), the
//!   state never lags the topic and is never ahead of it.
//!
//! The committer owns the model's transactional producer (one per model: fencing older
//! instances is what makes the state read back final), the "schemas already published" flag
//! and the tracked keys, so no caller threads any of them through its calls.

use std::sync::Arc;
use std::time::Instant;

use sluice_avro::{encode_state, ModelCodec, PollerState, PublishedSchema};
use sluice_core::config::Config;
use sluice_core::{naming, Op};
use rdkafka::message::Headers as _;
use sluice_kafka::headers;
use sluice_kafka::producer::{OutRecord, TransactionalProducer};

use crate::audit::ModelRun;
use crate::clock::now_ms;
use crate::error::ModelError;
use crate::tracked::{pack_loc, Committed, Keys};

/// Commits one model's transactions; see the module doc.
pub struct Committer {
    model: String,
    producer: TransactionalProducer,
    schema_topic: String,
    state_topic: String,
    /// The model's key and value writer schemas.
    schemas: [PublishedSchema; 2],
    /// Whether a transaction of this incarnation already carried the writer schemas.
    schemas_published: bool,
    /// The last committed state record.
    state: PollerState,
    /// The model's change topic.
    change_topic: String,
    /// The change topic's keys, when a mode keeps them ([`Committer::track`]).
    keys: Option<Keys>,
    /// The model's run record, told of every committed transaction ([`crate::audit`]).
    run: Option<Arc<ModelRun>>,
}

impl Committer {
    /// A committer for the model of `codec`, producing with `producer` (which fenced older
    /// instances), starting from `state` (the state committed before it).
    pub fn new(config: &Config, producer: TransactionalProducer, codec: &ModelCodec, state: PollerState) -> Committer {
        let prefix = &config.kafka.topic_prefix;
        Committer {
            model: codec.model().to_string(),
            producer,
            schema_topic: naming::schema_topic(prefix),
            state_topic: naming::poller_state_topic(prefix),
            schemas: codec.schemas(),
            schemas_published: false,
            state,
            change_topic: naming::change_topic(prefix, codec.model()),
            keys: None,
            run: None,
        }
    }

    /// Tell `run` of every transaction committed from now on.
    pub fn record_runs(&mut self, run: Arc<ModelRun>) {
        self.run = Some(run);
    }

    /// The model's run record, when kept.
    pub fn run(&self) -> Option<&ModelRun> {
        self.run.as_deref()
    }

    /// Keep `keys` (the change topic's committed state, just rebuilt from it) current from now
    /// on: each committed transaction applies its change records to them.
    pub fn track(&mut self, keys: Keys) {
        self.keys = Some(keys);
    }

    /// The change topic's keys, when tracked.
    pub fn keys(&self) -> Option<&Keys> {
        self.keys.as_ref()
    }

    /// The change topic's keys, when tracked, to mark during a scan.
    pub fn keys_mut(&mut self) -> Option<&mut Keys> {
        self.keys.as_mut()
    }

    /// The last committed state record.
    pub fn state(&self) -> &PollerState {
        &self.state
    }

    /// Commit `records` with `new_state` (and the writer schemas, the first time) in one Kafka
    /// transaction; `new_state` is the committed state afterwards.
    pub async fn commit(&mut self, mut records: Vec<OutRecord>, new_state: PollerState) -> Result<(), ModelError> {
        if !self.schemas_published {
            for published in &self.schemas {
                records.push(OutRecord {
                    topic: self.schema_topic.clone(),
                    partition: None,
                    key: Some(published.fingerprint.clone().into_bytes()),
                    payload: Some(published.json.clone().into_bytes()),
                    headers: headers::owned([]),
                });
            }
        }
        records.push(OutRecord {
            topic: self.state_topic.clone(),
            partition: None,
            key: Some(new_state.model.as_bytes().to_vec()),
            payload: Some(encode_state(&new_state)?),
            headers: headers::owned([(headers::RUN_ID, new_state.run_id.as_str())]),
        });
        // What the change records say about their keys, read before the records are moved.
        let changes: Vec<(usize, Committed)> = match self.keys {
            None => Vec::new(),
            Some(_) => records
                .iter()
                .enumerate()
                .filter(|(_, record)| record.topic == self.change_topic)
                .filter_map(|(i, record)| Some((i, Committed::read(record.key.as_deref()?, record.payload.is_some(), Some(&record.headers)))))
                .collect(),
        };
        let events = self.run.as_ref().map(|_| events_by_op(&records, &self.change_topic));
        let started = Instant::now();
        let locations = self.producer.send_transaction(records).await?;
        self.schemas_published = true;
        if let Some(keys) = &mut self.keys {
            for (i, change) in changes {
                let (partition, offset) = locations[i];
                keys.apply(change, pack_loc(partition, offset));
            }
            metrics::gauge!("sluice_poller_tracked_rows", "model" => self.model.clone()).set(keys.len() as f64);
        }
        let name = new_state.model.as_str();
        if let (Some(run), Some(events)) = (&self.run, events) {
            run.committed(&new_state.run_id, &events);
        }
        metrics::histogram!("sluice_poller_transaction_seconds", "model" => name.to_string()).record(started.elapsed().as_secs_f64());
        metrics::gauge!("sluice_poller_last_commit_timestamp_seconds", "model" => name.to_string())
            .set(new_state.committed_at_ms as f64 / 1000.0);
        self.state = new_state;
        Ok(())
    }

    /// [`Committer::commit`] the records of run `run_id` with the next state record: `events`
    /// more events than the committed state, at `position`, `snapshot_done` as given.
    pub async fn commit_run(
        &mut self,
        records: Vec<OutRecord>,
        run_id: &str,
        position: Option<String>,
        snapshot_done: bool,
        events: u64,
    ) -> Result<(), ModelError> {
        let next = PollerState {
            model: self.model.clone(),
            run_id: run_id.to_string(),
            position,
            snapshot_done,
            events_total: self.state.events_total + events as i64,
            committed_at_ms: now_ms(),
        };
        self.commit(records, next).await
    }
}

/// The change events among `records` (values, not tombstones) by their `sluice.op` header.
fn events_by_op(records: &[OutRecord], change_topic: &str) -> Vec<(Op, u64)> {
    let mut counts = [(Op::Read, 0), (Op::Create, 0), (Op::Update, 0), (Op::Delete, 0)];
    for record in records.iter().filter(|r| r.topic == change_topic && r.payload.is_some()) {
        let op = record.headers.iter().find(|h| h.key == headers::OP).and_then(|h| h.value);
        if let Some((_, n)) = counts.iter_mut().find(|(op_, _)| Some(op_.code().as_bytes()) == op) {
            *n += 1;
        }
    }
    counts.to_vec()
}

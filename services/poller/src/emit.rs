//! Building and committing change records, shared by every mode (`cursor`, `diff`,
//! `warehouse_diff`): one change = one event (two for a delete: the `d` event and its
//! tombstone), and one transaction = changes + the model's state record (+ the writer schemas
//! the first time), so events and progress never disagree.

use std::time::Instant;

use sluice_avro::{encode_state, ModelCodec, PollerState};
use sluice_core::config::Config;
use sluice_core::{naming, ChangeEvent, Op, Row, RowSchema, SourceInfo};
use sluice_kafka::headers;
use sluice_kafka::producer::{OutRecord, TransactionalProducer};

use crate::clock::now_ms;
use crate::error::ModelError;
use crate::keys::row_hash;
use crate::tracked::ROW_HASH_HEADER;

/// Names of the columns whose value differs between two images.
pub fn changed_columns(schema: &RowSchema, before: &Row, after: &Row) -> Vec<String> {
    schema.columns.iter().zip(before.iter().zip(after)).filter(|(_, (b, a))| b != a).map(|(c, _)| c.name.clone()).collect()
}

/// Encodes the changes of one run.
pub struct ChangeWriter<'a> {
    codec: &'a ModelCodec,
    topic: String,
    run_id: String,
    source: SourceInfo,
    trace: Vec<(String, String)>,
    hash_buf: Vec<u8>,
}

impl<'a> ChangeWriter<'a> {
    pub fn new(config: &Config, model: &str, codec: &'a ModelCodec, run_id: &str) -> ChangeWriter<'a> {
        ChangeWriter {
            codec,
            topic: naming::change_topic(&config.kafka.topic_prefix, model),
            run_id: run_id.to_string(),
            source: SourceInfo { model: model.to_string(), warehouse: config.warehouse.name.clone(), run_id: run_id.to_string(), position: None },
            trace: sluice_telemetry::propagation::current_headers().into_iter().collect(),
            hash_buf: Vec::with_capacity(256),
        }
    }

    /// The `source.position` of the next changes (cursor mode: the row's cursor tuple).
    pub fn set_position(&mut self, position: Option<String>) {
        self.source.position = position;
    }

    /// The records of one change. `key` is the record key to use (for a delete read back from
    /// the topic: exactly the bytes the key was written with); `None` encodes it from the row.
    /// `changed` is computed for updates whose `before` image is known.
    pub fn change(&mut self, op: Op, before: Option<Row>, after: Option<Row>, key: Option<Vec<u8>>) -> Result<Vec<OutRecord>, ModelError> {
        let key = match key {
            Some(key) => key,
            None => {
                let mut key = Vec::with_capacity(32);
                let image = after.as_ref().or(before.as_ref()).expect("a change has an image or a key");
                self.codec.encode_key(image, &mut key)?;
                key
            }
        };
        let hash = after.as_ref().map(|row| format!("{:016x}", row_hash(row, &mut self.hash_buf)));
        let changed = match (op, &before, &after) {
            (Op::Update, Some(b), Some(a)) => Some(changed_columns(self.codec.row_schema(), b, a)),
            _ => None,
        };
        let event = ChangeEvent { op, before, after, source: self.source.clone(), ts_ms: now_ms(), changed };
        let mut value = Vec::with_capacity(256);
        self.codec.encode_event(&event, &mut value)?;
        let mut pairs: Vec<(&str, &str)> = self.trace.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        pairs.push((headers::SCHEMA_FINGERPRINT, self.codec.value_fingerprint()));
        pairs.push((headers::RUN_ID, &self.run_id));
        pairs.push((headers::OP, op.code()));
        if let Some(hash) = &hash {
            pairs.push((ROW_HASH_HEADER, hash));
        }
        let mut records =
            vec![OutRecord { topic: self.topic.clone(), key: Some(key.clone()), payload: Some(value), headers: headers::owned(pairs) }];
        if op == Op::Delete {
            records.push(OutRecord {
                topic: self.topic.clone(),
                key: Some(key),
                payload: None,
                headers: headers::owned([(headers::RUN_ID, self.run_id.as_str()), (headers::OP, "d")]),
            });
        }
        Ok(records)
    }
}

/// Commit `records` with `new_state` (and the writer schemas, the first time) in one Kafka
/// transaction.
pub async fn commit(
    config: &Config,
    codec: &ModelCodec,
    producer: &TransactionalProducer,
    schemas_published: &mut bool,
    mut records: Vec<OutRecord>,
    new_state: &PollerState,
) -> Result<(), ModelError> {
    let prefix = &config.kafka.topic_prefix;
    let name = new_state.model.as_str();
    if !*schemas_published {
        for published in codec.schemas() {
            records.push(OutRecord {
                topic: naming::schema_topic(prefix),
                key: Some(published.fingerprint.into_bytes()),
                payload: Some(published.json.into_bytes()),
                headers: headers::owned([]),
            });
        }
    }
    records.push(OutRecord {
        topic: naming::poller_state_topic(prefix),
        key: Some(name.as_bytes().to_vec()),
        payload: Some(encode_state(new_state)?),
        headers: headers::owned([(headers::RUN_ID, new_state.run_id.as_str())]),
    });
    let started = Instant::now();
    producer.send_transaction(records).await?;
    *schemas_published = true;
    metrics::histogram!("sluice_poller_transaction_seconds", "model" => name.to_string()).record(started.elapsed().as_secs_f64());
    metrics::gauge!("sluice_poller_last_commit_timestamp_seconds", "model" => name.to_string()).set(new_state.committed_at_ms as f64 / 1000.0);
    Ok(())
}

/// Count emitted events by op.
pub fn count_events(model: &str, counts: &[(Op, u64)]) {
    for &(op, n) in counts {
        if n > 0 {
            metrics::counter!("sluice_poller_events_total", "model" => model.to_string(), "op" => op.code()).increment(n);
        }
    }
}

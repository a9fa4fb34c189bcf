//! Change records, built the same way by every mode (`cursor`, `diff`, `warehouse_diff`, the
//! first snapshot): one change = one event (two for a delete: the `d` event and its tombstone,
//! so compaction can drop the key), keyed by the primary key, with the headers every consumer
//! relies on (trace context, schema fingerprint, run id, op, on events with an `after` image
//! the row hash the tracked state is rebuilt from, and for a model with `expire` when the row
//! stops being live). Committing them is the [`crate::committer`]'s job.

use sluice_avro::ModelCodec;
use sluice_core::config::Config;
use sluice_core::{naming, ChangeEvent, Op, Row, RowSchema, SourceInfo};
use sluice_kafka::headers;
use sluice_kafka::producer::OutRecord;

use crate::clock::now_ms;
use crate::error::ModelError;
use crate::expiry::{header_text, Expiry, EXPIRES_AT_HEADER};
use crate::keys::row_hash;

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
    /// The model's expiry rule: every event then carries its row's expiry.
    expiry: Option<Expiry>,
}

impl<'a> ChangeWriter<'a> {
    /// A writer for the changes of run `run_id` of `model`, to its change topic.
    pub fn new(config: &Config, model: &str, codec: &'a ModelCodec, run_id: &str) -> ChangeWriter<'a> {
        ChangeWriter {
            codec,
            topic: naming::change_topic(&config.kafka.topic_prefix, model),
            run_id: run_id.to_string(),
            source: SourceInfo { model: model.to_string(), warehouse: config.warehouse.name.clone(), run_id: run_id.to_string(), position: None },
            trace: sluice_telemetry::propagation::current_headers().into_iter().collect(),
            hash_buf: Vec::with_capacity(256),
            // The model was opened (`ModelContext::open`), which refuses an unusable rule.
            expiry: config.model(model).and_then(|m| Expiry::of(m, codec.row_schema()).ok().flatten()),
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
        let expires_at = self.expiry.and_then(|expiry| after.as_ref().or(before.as_ref()).map(|row| header_text(expiry.expires_at(row))));
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
            pairs.push((headers::ROW_HASH, hash));
        }
        if let Some(expires_at) = &expires_at {
            pairs.push((EXPIRES_AT_HEADER, expires_at));
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

/// Count emitted events by op.
pub fn count_events(model: &str, counts: &[(Op, u64)]) {
    for &(op, n) in counts {
        if n > 0 {
            metrics::counter!("sluice_poller_events_total", "model" => model.to_string(), "op" => op.code()).increment(n);
        }
    }
}

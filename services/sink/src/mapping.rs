//! From Kafka messages to destination records: decode, apply the sync's mode and field mapping.
//! Only mapped fields ever leave; a message that cannot be decoded is marked for the dead-letter
//! topic, never dropped.

use std::collections::HashMap;

use rdkafka::message::{BorrowedMessage, Message};
use sluice_avro::fingerprint_of;
use sluice_core::config::SyncConfig;
use sluice_destinations::{Action, OutboundRecord};

use crate::schemas::SchemaCache;
use crate::SinkError;

/// What to do with one consumed message.
pub(crate) enum Prepared {
    /// Apply at the destination.
    Deliver(OutboundRecord),
    /// Nothing to apply: a tombstone, or a change the sync mode ignores (a delete in upsert mode).
    Skip,
    /// Unreadable (poison): straight to the dead-letter topic with this reason.
    Reject(String),
}

pub(crate) async fn prepare(
    batch: &[BorrowedMessage<'_>],
    syncs: &HashMap<String, &SyncConfig>,
    schemas: &mut SchemaCache,
) -> Result<Vec<Prepared>, SinkError> {
    let mut out = Vec::with_capacity(batch.len());
    for message in batch {
        let sync = syncs.get(message.topic()).expect("subscribed topics come from the syncs");
        out.push(match prepare_one(message, sync, schemas).await? {
            Ok(prepared) => prepared,
            Err(reason) => Prepared::Reject(reason),
        });
    }
    Ok(out)
}

async fn prepare_one(message: &BorrowedMessage<'_>, sync: &SyncConfig, schemas: &mut SchemaCache) -> Result<Result<Prepared, String>, SinkError> {
    let Some(payload) = message.payload() else { return Ok(Ok(Prepared::Skip)) };
    let fingerprint = match fingerprint_of(payload) {
        Ok(f) => f,
        Err(error) => return Ok(Err(format!("value: {error}"))),
    };
    let decoder = match schemas.event_decoder(&fingerprint).await.map_err(SinkError::Kafka)? {
        Some(Ok(decoder)) => decoder,
        Some(Err(error)) => return Ok(Err(format!("value schema {fingerprint}: {error}"))),
        None => return Ok(Err(format!("value schema {fingerprint} is not on the schema topic"))),
    };
    let decoded = match decoder.decode(payload) {
        Ok(d) => d,
        Err(error) => return Ok(Err(format!("value: {error}"))),
    };
    let Some(action) = Action::for_change(sync.mode, decoded.event.op, true) else { return Ok(Ok(Prepared::Skip)) };
    let Some(key_bytes) = message.key() else { return Ok(Err("message has no key".into())) };
    let key_fingerprint = match fingerprint_of(key_bytes) {
        Ok(f) => f,
        Err(error) => return Ok(Err(format!("key: {error}"))),
    };
    let key_decoder = match schemas.key_decoder(&key_fingerprint).await.map_err(SinkError::Kafka)? {
        Some(Ok(decoder)) => decoder,
        Some(Err(error)) => return Ok(Err(format!("key schema {key_fingerprint}: {error}"))),
        None => return Ok(Err(format!("key schema {key_fingerprint} is not on the schema topic"))),
    };
    let key = match key_decoder.decode(key_bytes) {
        Ok(fields) => fields.into_iter().map(|(name, value)| (name, value.to_json())).collect(),
        Err(error) => return Ok(Err(format!("key: {error}"))),
    };
    let fields = if action == Action::Delete {
        serde_json::Map::new()
    } else {
        sync.fields
            .get_ref()
            .iter()
            .map(|(field, column)| (field.clone(), decoded.current(column).map_or(serde_json::Value::Null, |v| v.to_json())))
            .collect()
    };
    Ok(Ok(Prepared::Deliver(OutboundRecord {
        id: format!("{}/{}/{}", message.topic(), message.partition(), message.offset()),
        model: decoded.event.source.model.clone(),
        action,
        op: decoded.event.op.code().to_string(),
        key,
        fields,
        previous: None,
        ts_ms: decoded.event.ts_ms,
    })))
}

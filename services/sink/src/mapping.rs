//! From Kafka messages to destination records: decode, consent, sync mode, field mapping.
//! A message that cannot be decoded is marked for the dead-letter topic, never dropped.

use rdkafka::message::{BorrowedMessage, Message};
use sluice_avro::fingerprint_of;
use sluice_core::config::SyncConfig;
use sluice_destinations::{Action, OutboundRecord};

use crate::schemas::SchemaCache;
use crate::transform::{before, consents, current, map_fields};
use crate::SinkError;

/// What to do with one consumed message.
pub(crate) enum Prepared {
    /// Apply at the destination. `bytes` is the record's JSON size, for byte-bounded batches.
    Deliver { record: OutboundRecord, bytes: usize },
    /// Nothing to apply: a tombstone, or a change the sync mode ignores (a delete in upsert mode).
    Skip,
    /// Unreadable (poison): straight to the dead-letter topic with this reason.
    Reject(String),
}

/// Decode and map one message. `Err` only for infrastructure failures (schema topic unreadable).
pub(crate) async fn prepare(message: &BorrowedMessage<'_>, sync: &SyncConfig, schemas: &mut SchemaCache) -> Result<Prepared, SinkError> {
    Ok(match prepare_inner(message, sync, schemas).await? {
        Ok(prepared) => prepared,
        Err(reason) => Prepared::Reject(reason),
    })
}

async fn prepare_inner(message: &BorrowedMessage<'_>, sync: &SyncConfig, schemas: &mut SchemaCache) -> Result<Result<Prepared, String>, SinkError> {
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
    let Some(image) = current(&decoded) else { return Ok(Err("event has neither a before nor an after image".into())) };
    let consented = consents(sync.consent.as_ref(), &image);
    let Some(action) = Action::for_change(sync.mode, decoded.event.op, consented) else { return Ok(Ok(Prepared::Skip)) };
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
    // Deletes carry the mapped fields of the row that leaves: audience and suppression
    // destinations need its identifiers to remove it.
    let fields = map_fields(sync.fields.get_ref(), &image);
    let previous = match (action, before(&decoded)) {
        (Action::Delete, _) | (_, None) => None,
        (_, Some(old)) => Some(map_fields(sync.fields.get_ref(), &old)).filter(|old| *old != fields),
    };
    let record = OutboundRecord {
        id: format!("{}/{}/{}", message.topic(), message.partition(), message.offset()),
        model: decoded.event.source.model.clone(),
        action,
        op: decoded.event.op.code().to_string(),
        key,
        fields,
        previous,
        ts_ms: decoded.event.ts_ms,
    };
    let bytes = serde_json::to_vec(&record).map_or(0, |v| v.len());
    Ok(Ok(Prepared::Deliver { record, bytes }))
}

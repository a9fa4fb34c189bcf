//! From Kafka messages to destination records: decode, consent, sync mode, field mapping.
//! A message that cannot be decoded is marked for the dead-letter topic, never dropped. Runs in
//! the lanes, so decoding uses every core. A tombstone reaching a lane is a delete known only by
//! its key (the order guard finishes every other one): [`crate::deletes`] maps it.

use std::sync::Arc;

use rdkafka::message::{Message, OwnedMessage};
use sluice_avro::{fingerprint_bytes, KeyDecoder};
use sluice_core::config::SyncConfig;
use sluice_destinations::{Action, OutboundRecord};

use crate::deletes;
use crate::schemas::{Lookup, SchemaCache};
use crate::side::Origin;
use crate::transform::{before, consents, current, map_fields};
use crate::SinkError;

/// What to do with one consumed message.
pub(crate) enum Prepared {
    /// Apply at the destination. `bytes` is the record's JSON size, for byte-bounded batches;
    /// `missing` the mapped fields whose value normalised to nothing (to be counted).
    Deliver { record: OutboundRecord, bytes: usize, missing: Vec<String> },
    /// Nothing to apply: a change the sync mode ignores (a delete in upsert mode).
    Skip,
    /// Unreadable (poison): straight to the dead-letter topic with this reason.
    Reject(String),
}

/// Decode and map one message, carrying the change at `origin` (its own coordinates, or a side
/// record's original ones: the record's id). `Err` only for infrastructure failures (schema
/// topic unreadable).
pub(crate) async fn prepare(message: &OwnedMessage, origin: &Origin<'_>, sync: &SyncConfig, schemas: &SchemaCache) -> Result<Prepared, SinkError> {
    Ok(match prepare_inner(message, origin, sync, schemas).await? {
        Ok(prepared) => prepared,
        Err(reason) => Prepared::Reject(reason),
    })
}

async fn prepare_inner(message: &OwnedMessage, origin: &Origin<'_>, sync: &SyncConfig, schemas: &SchemaCache) -> Result<Result<Prepared, String>, SinkError> {
    let Some(payload) = message.payload() else { return key_only(message, origin, sync, schemas).await };
    let fingerprint = match fingerprint_bytes(payload) {
        Ok(f) => f,
        Err(error) => return Ok(Err(format!("value: {error}"))),
    };
    let decoder = match schemas.event_decoder(&fingerprint).await.map_err(SinkError::Kafka)? {
        Lookup::Found(decoder) => decoder,
        Lookup::Unusable(error) => return Ok(Err(format!("value schema: {error}"))),
        Lookup::Missing => return Ok(Err(format!("value schema {} is not on the schema topic", sluice_avro::fingerprint_hex(&fingerprint)))),
    };
    // A consent rule that can never match this schema's column would remove every row: stop.
    schemas.check_consent(sync.model.get_ref(), &fingerprint).await.map_err(|e| SinkError::Config(e.to_string()))?;
    let decoded = match decoder.decode(payload) {
        Ok(d) => d,
        Err(error) => return Ok(Err(format!("value: {error}"))),
    };
    let Some(image) = current(&decoded) else { return Ok(Err("event has neither a before nor an after image".into())) };
    let consented = consents(sync.consent.as_ref(), &image);
    let Some(action) = Action::for_change(sync.mode(), decoded.event.op, consented) else { return Ok(Ok(Prepared::Skip)) };
    // The key's columns are in the row image too: read them there by the key schema's field
    // names, rather than decoding the key bytes a second time.
    let Some(key_bytes) = message.key() else { return Ok(Err("message has no key".into())) };
    let key_decoder = match key_decoder(key_bytes, schemas).await? {
        Ok(decoder) => decoder,
        Err(reason) => return Ok(Err(reason)),
    };
    let key = match image.pick(key_decoder.field_names()) {
        Some(key) => key,
        None => match key_decoder.decode(key_bytes) {
            Ok(fields) => fields.into_iter().map(|(name, value)| (name, value.to_json())).collect(),
            Err(error) => return Ok(Err(format!("key: {error}"))),
        },
    };
    // Deletes carry the mapped fields of the row that leaves: audience and suppression
    // destinations need its identifiers to remove it.
    let mapped = map_fields(sync.fields.get_ref(), &image);
    let fields = mapped.fields;
    let previous = match (action, before(&decoded)) {
        (Action::Delete, _) | (_, None) => None,
        (_, Some(old)) => Some(map_fields(sync.fields.get_ref(), &old).fields).filter(|old| *old != fields),
    };
    let record = OutboundRecord {
        id: origin.id(),
        model: decoded.event.source.model.clone(),
        action,
        op: decoded.event.op,
        key,
        fields,
        previous,
        ts_ms: decoded.event.ts_ms,
    };
    Ok(Ok(Prepared::Deliver { bytes: json_len(&record), record, missing: mapped.missing }))
}

/// A tombstone that reached a lane: a delete known only by its key ([`crate::deletes`]).
async fn key_only(message: &OwnedMessage, origin: &Origin<'_>, sync: &SyncConfig, schemas: &SchemaCache) -> Result<Result<Prepared, String>, SinkError> {
    let Some(key_bytes) = message.key() else { return Ok(Err("tombstone has no key".into())) };
    let decoder = match key_decoder(key_bytes, schemas).await? {
        Ok(decoder) => decoder,
        Err(reason) => return Ok(Err(reason)),
    };
    let key = match decoder.decode(key_bytes) {
        Ok(key) => key,
        Err(error) => return Ok(Err(format!("key: {error}"))),
    };
    Ok(Ok(match deletes::key_only_record(message, origin, sync, key) {
        Some((record, missing)) => Prepared::Deliver { bytes: json_len(&record), record, missing },
        None => Prepared::Skip,
    }))
}

/// The decoder of a key's writer schema (by the fingerprint in its bytes); the inner `Err` says
/// why there is none.
async fn key_decoder(key_bytes: &[u8], schemas: &SchemaCache) -> Result<Result<Arc<KeyDecoder>, String>, SinkError> {
    let key_fingerprint = match fingerprint_bytes(key_bytes) {
        Ok(f) => f,
        Err(error) => return Ok(Err(format!("key: {error}"))),
    };
    Ok(match schemas.key_decoder(&key_fingerprint).await.map_err(SinkError::Kafka)? {
        Lookup::Found(decoder) => Ok(decoder),
        Lookup::Unusable(error) => Err(format!("key schema: {error}")),
        Lookup::Missing => Err(format!("key schema {} is not on the schema topic", sluice_avro::fingerprint_hex(&key_fingerprint))),
    })
}

/// Length of a record's JSON, counted without building it (it is serialised again, once, into
/// the request body).
fn json_len(record: &OutboundRecord) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, record) {
        Ok(()) => count.0,
        Err(_) => 0,
    }
}

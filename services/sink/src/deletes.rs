//! Deletes known only by their key: a tombstone whose `d` event compaction removed before the
//! sink read it. The order guard ([`crate::guard`]) sends exactly these tombstones to the lanes
//! (it finishes a tombstone that follows its `d` event, or that a newer state of its key
//! supersedes).
//!
//! Defined behaviour:
//! - The tombstone becomes a record with the action the sync mode gives a delete (`mirror`,
//!   `audience`: delete; `append`: a `d` event; `upsert`, `update`, `create`: nothing, as for a
//!   `d` event), its key decoded from the key bytes, and as fields only the mapped fields that
//!   can be computed from the key alone (a mapping of a key column, a constant). Destinations
//!   keyed by the primary key (the webhook, Redis hashes) delete by it.
//! - A destination that matches records on a field the key does not hold (an email, a hashed
//!   identifier) refuses it for lack of an identifier; the record is then dead-lettered with the
//!   class [`DeadLetterClass::CompactedDelete`] ([`refused_class`]), so an operator sees which
//!   rows a lag beyond `min_compaction_lag_ms` left behind.

use rdkafka::message::{Message, OwnedMessage};
use sluice_core::config::SyncConfig;
use sluice_core::{DeadLetterClass, Op, Row};
use sluice_destinations::{Action, OutboundRecord};

use crate::mapping::{json_len, key_decoder, Prepared};
use crate::schemas::SchemaCache;
use crate::side::Origin;
use crate::transform::{map_fields, Image};
use crate::SinkError;

/// Map a tombstone that reached a lane into a delete known only by its key (module doc).
pub(crate) async fn prepare_key_only(
    message: &OwnedMessage,
    origin: &Origin<'_>,
    sync: &SyncConfig,
    schemas: &SchemaCache,
) -> Result<Result<Prepared, String>, SinkError> {
    let Some(action) = Action::for_change(sync.mode, Op::Delete, true) else { return Ok(Ok(Prepared::Skip)) };
    let Some(key_bytes) = message.key() else { return Ok(Err("tombstone has no key".into())) };
    let decoder = match key_decoder(key_bytes, schemas).await? {
        Ok(decoder) => decoder,
        Err(reason) => return Ok(Err(reason)),
    };
    let key = match decoder.decode(key_bytes) {
        Ok(key) => key,
        Err(error) => return Ok(Err(format!("key: {error}"))),
    };
    let columns: Vec<String> = key.iter().map(|(name, _)| name.clone()).collect();
    let row: Row = key.iter().map(|(_, value)| value.clone()).collect();
    let image = Image { columns: &columns, row: &row };
    let from_key = sync.fields.get_ref().iter().filter(|(_, source)| source.columns().iter().all(|c| columns.contains(c)));
    let record = OutboundRecord {
        id: origin.id(),
        model: sync.model.get_ref().clone(),
        action,
        op: Op::Delete,
        key: key.iter().map(|(name, value)| (name.clone(), value.to_json())).collect(),
        fields: map_fields(from_key, &image),
        previous: None,
        ts_ms: message.timestamp().to_millis().unwrap_or_else(crate::deliver::system_clock),
    };
    tracing::info!(topic = %origin.topic, partition = origin.partition, offset = origin.offset, "a tombstone whose delete event was compacted away: deleting by key");
    Ok(Ok(Prepared::Deliver { bytes: json_len(&record), record }))
}

/// The dead-letter class of a record the destination refused for good: a delete known only by
/// its key is [`DeadLetterClass::CompactedDelete`], whatever the destination said about it.
pub(crate) fn refused_class(message: &OwnedMessage, class: DeadLetterClass) -> DeadLetterClass {
    if class == DeadLetterClass::Permanent && message.payload().is_none() {
        DeadLetterClass::CompactedDelete
    } else {
        class
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_tombstone_is_a_compacted_delete_and_nothing_else_changes_class() {
        let tombstone = OwnedMessage::new(None, Some(b"k".to_vec()), "t".into(), rdkafka::Timestamp::NotAvailable, 0, 1, None);
        let event = crate::testing::message("k", 1);
        assert_eq!(refused_class(&tombstone, DeadLetterClass::Permanent), DeadLetterClass::CompactedDelete);
        assert_eq!(refused_class(&tombstone, DeadLetterClass::RetriesExhausted), DeadLetterClass::RetriesExhausted, "a failing destination is not the tombstone's fault");
        assert_eq!(refused_class(&event, DeadLetterClass::Permanent), DeadLetterClass::Permanent);
    }

    /// Through the delivery path: a key-only delete the destination refuses for lack of an
    /// identifier lands on the dead-letter topic as `compacted_delete`, its (empty) value
    /// untouched.
    #[tokio::test(start_paused = true)]
    async fn a_key_only_delete_refused_by_the_destination_is_dead_lettered_as_compacted_delete() {
        use std::sync::Arc;

        use sluice_core::ErrorClass;

        use crate::testing::{deliverer, record, refused};
        let d = deliverer(Default::default(), [Ok(vec![refused(0, ErrorClass::Permanent, None, "no identifier")])]);
        let tombstone = Arc::new(OwnedMessage::new(None, Some(b"k".to_vec()), "t".into(), rdkafka::Timestamp::CreateTime(5), 0, 7, None));
        d.deliver(&[tombstone], &[record(7)]).await.expect("dead-lettered");
        let dead = d.dead_letters.written();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].header("sluice.error.class"), Some("compacted_delete"));
        assert_eq!(dead[0].header("sluice.original.offset"), Some("7"));
        assert_eq!((dead[0].key.as_deref(), dead[0].payload.as_deref()), (Some(b"k".as_slice()), None));
    }
}

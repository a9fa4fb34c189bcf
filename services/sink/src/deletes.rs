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
//!   class [`sluice_core::DeadLetterClass::CompactedDelete`]
//!   (`dead_letters::refused_class`), so an operator sees which rows a lag beyond
//!   `min_compaction_lag_ms` left behind.

use rdkafka::message::{Message, OwnedMessage};
use sluice_core::config::SyncConfig;
use sluice_core::{Op, Row, Value};
use sluice_destinations::{Action, OutboundRecord};

use crate::side::Origin;
use crate::transform::{map_fields, Image};

/// The record of a tombstone that reached a lane, from its decoded key (module doc), with the
/// mapped fields whose value normalised to nothing; `None` when the sync mode ignores deletes.
pub(crate) fn key_only_record(message: &OwnedMessage, origin: &Origin<'_>, sync: &SyncConfig, key: Vec<(String, Value)>) -> Option<(OutboundRecord, Vec<String>)> {
    let action = Action::for_change(sync.mode(), Op::Delete, true)?;
    let columns: Vec<String> = key.iter().map(|(name, _)| name.clone()).collect();
    let row: Row = key.iter().map(|(_, value)| value.clone()).collect();
    let image = Image { columns: &columns, row: &row };
    let from_key = sync.fields.get_ref().iter().filter(|(_, source)| source.columns().iter().all(|c| columns.contains(c)));
    let mapped = map_fields(from_key, &image);
    tracing::info!(topic = %origin.topic, partition = origin.partition, offset = origin.offset, "a tombstone whose delete event was compacted away: deleting by key");
    let record = OutboundRecord {
        id: origin.id(),
        model: sync.model.get_ref().clone(),
        action,
        op: Op::Delete,
        key: key.iter().map(|(name, value)| (name.clone(), value.to_json())).collect(),
        fields: mapped.fields,
        previous: None,
        ts_ms: message.timestamp().to_millis().unwrap_or_else(crate::deliver::system_clock),
    };
    Some((record, mapped.missing))
}

#[cfg(test)]
mod tests {
    use super::*;

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

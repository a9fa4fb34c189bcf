//! The lanes' side of the membership stage ([`crate::membership`]), as steps a lane takes:
//! what a suppression list's record asks of it ([`admit_list`]), and the record a recompute
//! sends ([`read_back`]). The lane does the rest (dead letters, enqueueing, finishing).
//!
//! Guarantees, with the lane: a list record finishes (its offset may be committed) only once
//! each of its recomputes finished — applied, dead-lettered, or found to have nothing to do —
//! and, when its topic is also a sync's, once its own delivery did
//! ([`crate::membership::Pending`]). A recompute's record keeps the id of the record it was read
//! from, with the list record's appended (`<id>+<list id>`): a new decision about an old
//! record is a new event for receivers that deduplicate by id.

use std::collections::HashMap;
use std::sync::Arc;

use rdkafka::message::{Message, OwnedMessage};
use sluice_core::config::SyncConfig;
use tracing::Instrument;

use crate::deliver::{Done, Item, SinkError};
use crate::mapping::{self, Prepared};
use crate::membership::{ListAdmission, Pending, Recompute, Stage};
use crate::schemas::SchemaCache;
use crate::side::Origin;

/// What a lane does with a list record.
pub(crate) enum ListStep {
    /// Unreadable: dead-letter it with this reason, and it is finished.
    DeadLetter(String),
    /// Nothing to recompute, nothing to deliver: it is finished.
    Finish,
    /// Enqueue these recomputes; the record finishes when they (and its delivery, when `done`
    /// is given: its topic is also a sync's) have.
    Recompute { recomputes: Vec<Recompute>, done: Option<Done> },
}

/// Apply a list record, carrying the change at `origin`, to the stage; see [`ListStep`].
pub(crate) async fn admit_list(stage: &Stage, schemas: &SchemaCache, message: &Arc<OwnedMessage>, origin: &Origin<'_>, also_synced: bool) -> Result<ListStep, SinkError> {
    let targets = match stage.admit_list(message, origin, schemas).await? {
        // A sync of the same topic fails to read it too, and dead-letters it there.
        ListAdmission::Reject(_) if also_synced => return Ok(ListStep::Recompute { recomputes: Vec::new(), done: Some(Done::Offset) }),
        ListAdmission::Reject(reason) => return Ok(ListStep::DeadLetter(format!("suppression list record: {reason}"))),
        ListAdmission::Recompute(targets) => targets,
    };
    let parts = targets.len() + usize::from(also_synced);
    if parts == 0 {
        return Ok(ListStep::Finish);
    }
    let pending = Pending::new(Arc::clone(message), origin, parts);
    let recomputes = targets.into_iter().map(|target| Recompute { target, pending: Arc::clone(&pending) }).collect();
    Ok(ListStep::Recompute { recomputes, done: also_synced.then_some(Done::Part(pending)) })
}

/// A recompute's record: its row's latest record, read back and mapped, to be decided when its
/// batch is flushed. `Err` with the outcome when there is nothing to send: the row left the
/// model (`gone`), the record was superseded in the topic by a later one that is on its way to
/// the lane (`superseded`), or the sync skips it or cannot read it (`skipped`; an unreadable
/// record was dead-lettered when consumed).
pub(crate) async fn read_back(
    stage: &Stage,
    syncs: &HashMap<String, SyncConfig>,
    schemas: &SchemaCache,
    recompute: &Recompute,
) -> Result<Result<Item, &'static str>, SinkError> {
    let Recompute { target, pending } = recompute;
    let span = tracing::debug_span!("sink.recompute", sync = stage.sync_topic(target.sync));
    let item = async {
        let Some((partition, offset)) = stage.locate(target) else { return Ok(Err("gone")) };
        let Some(message) = stage.read_back(target, partition, offset).await? else { return Ok(Err("superseded")) };
        let sync = syncs.get(message.topic()).expect("a sync's topic");
        let message = Arc::new(message);
        // Read from the change topic itself: the record carries its own coordinates.
        let origin = Origin { topic: message.topic().into(), partition: message.partition(), offset: message.offset(), side: false };
        // Its empty identifiers were counted when it was consumed.
        Ok(match mapping::prepare(&message, &origin, sync, schemas).await? {
            (Prepared::Deliver { mut record, bytes, missing: _ }, presence) => {
                let list_id = pending.id();
                record.id = format!("{}+{list_id}", record.id);
                let bytes = bytes + list_id.len() + 1;
                Ok(Item { message, record, bytes, presence, done: Done::Part(Arc::clone(pending)) })
            }
            _ => Err("skipped"),
        })
    }
    .instrument(span)
    .await;
    let outcome = match &item {
        Ok(Ok(_)) => "sent",
        Ok(Err(outcome)) => outcome,
        Err(_) => "failed",
    };
    stage.recomputed(target, outcome);
    item
}

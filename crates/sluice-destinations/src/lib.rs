//! Destinations: where mapped change records are applied.
//!
//! A destination knows its vendor's API and nothing of Kafka or warehouses. It takes a batch of
//! [`OutboundRecord`]s (already mapped: only configured fields, consent applied) and answers
//! with one of:
//! - `Ok(vec![])`: the vendor confirmed every record;
//! - `Ok(failures)`: the request succeeded but the vendor refused some records (HubSpot 207
//!   `errors`, Braze 2xx `errors`, Salesforce per-record results, Meta invalid entries): only
//!   those are retried or dead-lettered, by their [`RecordFailure::class`];
//! - `Err(DeliveryError)`: the whole request failed, with an [`ErrorClass`] saying what the
//!   caller must do (retry, reject the records, or stop).
//!
//! Every destination lives in its own module with the same parts, in the same order: the
//! client built from its config (config structs live in `sluice_core::config::destinations`),
//! the request it builds from a batch, `send`, and a response classifier with table tests.
//! Read `webhook.rs` first; the others follow it.

pub mod http;
pub mod webhook;

use std::future::Future;

use sluice_core::config::DestinationConfig;
use sluice_core::{ErrorClass, Op};

/// One record to apply, after mapping.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OutboundRecord {
    /// Stable id of the source record (`topic/partition/offset`): the same on every retry and
    /// replay, so receivers can deduplicate.
    pub id: String,
    pub model: String,
    /// What to do at the destination.
    pub action: Action,
    /// The source operation, `c`, `u`, `d` or `r`.
    pub op: String,
    /// Primary-key fields of the source row.
    pub key: serde_json::Map<String, serde_json::Value>,
    /// Mapped destination fields of the current image (empty for deletes).
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// Mapped destination fields of the `before` image, when the event has one and a mapped
    /// field changed. Destinations keyed by a mutable identifier (email, phone) use it to move
    /// the record: update through a stable id, or remove-old + add-new.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<serde_json::Map<String, serde_json::Value>>,
    /// When the change was observed, ms since the epoch.
    pub ts_ms: i64,
}

/// What the destination must do with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Update or create (audience syncs: add the member).
    Upsert,
    /// Update only; a missing record is not created.
    Update,
    /// Create only; an existing record is left alone.
    Create,
    /// Remove (mirror: delete the record; audience: remove the member; suppression: unsubscribe).
    Delete,
    /// Append-mode event, carrying the op.
    Event,
}

impl Action {
    /// The action of a change under a sync mode, or `None` when the mode ignores the change.
    /// `consented` is false when the row fails its sync's consent condition: the row is then
    /// treated as leaving the destination, so a revocation propagates.
    pub fn for_change(mode: sluice_core::config::SyncMode, op: Op, consented: bool) -> Option<Action> {
        use sluice_core::config::SyncMode;
        let leaving = op == Op::Delete || !consented;
        match mode {
            SyncMode::Append => Some(Action::Event),
            SyncMode::Mirror | SyncMode::Audience if leaving => Some(Action::Delete),
            SyncMode::Mirror | SyncMode::Audience => Some(Action::Upsert),
            SyncMode::Upsert if leaving => consent_removal(consented),
            SyncMode::Update if leaving => consent_removal(consented),
            SyncMode::Create if leaving => None,
            SyncMode::Upsert => Some(Action::Upsert),
            SyncMode::Update => Some(Action::Update),
            SyncMode::Create => Some(Action::Create),
        }
    }
}

/// A consent revocation removes (unsubscribes) even in modes that do not propagate deletes; a
/// plain delete in those modes is ignored.
fn consent_removal(consented: bool) -> Option<Action> {
    (!consented).then_some(Action::Delete)
}

/// A failed request: nothing of the batch was applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    pub class: ErrorClass,
    /// HTTP status, when the destination answered.
    pub status: Option<u16>,
    /// Start of the destination's response body (bounded, for dead-letter headers).
    pub excerpt: String,
    pub message: String,
}

/// One record the destination refused inside an otherwise successful request.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordFailure {
    /// Index into the batch that was sent.
    pub index: usize,
    pub class: ErrorClass,
    pub message: String,
    pub status: Option<u16>,
    pub excerpt: String,
}

/// A destination that applies batches of records.
pub trait Destination: Send + Sync {
    /// Stable name of the destination kind, for metrics (`webhook`, `hubspot`, ...).
    fn kind(&self) -> &'static str;

    /// Most records one request may carry (the vendor's limit); the sink never sends more.
    fn max_batch_records(&self) -> usize;

    /// Apply a batch; see the module docs for what each answer means.
    fn send(&self, batch: &[OutboundRecord]) -> impl Future<Output = Result<Vec<RecordFailure>, DeliveryError>> + Send;
}

/// Every destination kind, for services that pick one from config (enum dispatch: the trait's
/// async methods make it unusable as a trait object, and the set of kinds is closed).
pub enum AnyDestination {
    Webhook(webhook::Webhook),
}

/// Build the destination a config describes.
pub fn build(config: &DestinationConfig) -> Result<AnyDestination, String> {
    if let Some(webhook) = &config.webhook {
        return Ok(AnyDestination::Webhook(webhook::Webhook::new(webhook)?));
    }
    Err(format!("destination {:?} has no kind", config.name.get_ref()))
}

impl Destination for AnyDestination {
    fn kind(&self) -> &'static str {
        match self {
            AnyDestination::Webhook(d) => d.kind(),
        }
    }

    fn max_batch_records(&self) -> usize {
        match self {
            AnyDestination::Webhook(d) => d.max_batch_records(),
        }
    }

    async fn send(&self, batch: &[OutboundRecord]) -> Result<Vec<RecordFailure>, DeliveryError> {
        match self {
            AnyDestination::Webhook(d) => d.send(batch).await,
        }
    }
}

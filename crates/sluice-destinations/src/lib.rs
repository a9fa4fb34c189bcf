//! Destinations: where mapped change records are applied.
//!
//! A destination knows its vendor's API and nothing of Kafka or warehouses. It takes a batch of
//! [`OutboundRecord`]s (already mapped: only configured fields) and either applies all of them
//! or says, with an [`ErrorClass`], what the caller must do: retry, dead-letter (some or all
//! records), or stop.
//!
//! Every destination lives in its own module with the same parts: its config (in
//! `sluice-core::config`), a constructor from that config, `send`, and a response classifier
//! with table tests.

pub mod http;
pub mod webhook;

use std::future::Future;

use sluice_core::{ErrorClass, Op};

/// One record to apply, after mapping.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OutboundRecord {
    /// Stable id of the source record (`topic/partition/offset`): the same on every retry and
    /// replay, so receivers can deduplicate.
    pub id: String,
    pub model: String,
    /// `upsert` or `delete` for state syncs; the change operation for append syncs.
    pub action: Action,
    /// The source operation, `c`, `u`, `d` or `r`.
    pub op: String,
    /// Primary-key fields of the source row.
    pub key: serde_json::Map<String, serde_json::Value>,
    /// Mapped destination fields (absent for deletes).
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// When the change was observed, ms since the epoch.
    pub ts_ms: i64,
}

/// What the destination must do with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Upsert,
    Delete,
    /// Append-mode event, carrying the op.
    Event,
}

impl Action {
    /// The action of a change under a sync mode, or `None` when the mode ignores the change.
    pub fn for_change(mode: sluice_core::config::SyncMode, op: Op) -> Option<Action> {
        use sluice_core::config::SyncMode;
        match (mode, op) {
            (SyncMode::Append, _) => Some(Action::Event),
            (SyncMode::Upsert, Op::Delete) => None,
            (SyncMode::Mirror, Op::Delete) => Some(Action::Delete),
            (SyncMode::Upsert | SyncMode::Mirror, _) => Some(Action::Upsert),
        }
    }
}

/// A failed delivery attempt.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    pub class: ErrorClass,
    /// HTTP status, when the destination answered.
    pub status: Option<u16>,
    /// Start of the destination's response body (bounded, for dead-letter headers).
    pub excerpt: String,
    pub message: String,
    /// Records of the batch the failure concerns (indexes); `None` = the whole batch.
    pub records: Option<Vec<usize>>,
}

/// A destination that applies batches of records.
pub trait Destination: Send + Sync {
    /// Stable name of the destination kind, for metrics (`webhook`, `hubspot`, ...).
    fn kind(&self) -> &'static str;

    /// Apply a batch. `Ok` means the destination confirmed every record.
    fn send(&self, batch: &[OutboundRecord]) -> impl Future<Output = Result<(), DeliveryError>> + Send;
}

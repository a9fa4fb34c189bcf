//! What a sink did with one record: the row-level outcome its sink publishes for the warehouse
//! writeback (`schemas/audit/sync_outcome.avsc`, `docs/audit.md`), one type for the Avro record
//! (`sluice-avro`) and the sync-log row (`sluice-warehouse`).

use serde::{Deserialize, Serialize};

/// What a sink did with one record (one row of the sync log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncOutcome {
    pub destination: String,
    /// `topic/partition/offset` of the change record: the id destinations receive.
    pub record_id: String,
    pub model: String,
    /// The primary key as a JSON object.
    pub record_key: Option<String>,
    /// `c`, `u`, `d` or `r`.
    pub op: Option<String>,
    /// What the destination was asked to do (`upsert`, `delete`, ...).
    pub action: Option<String>,
    /// `applied`, `refused` or `dead_lettered`.
    pub status: String,
    /// The dead-letter class of a refused or dead-lettered record.
    pub error_class: Option<String>,
    /// The destination's HTTP status for a refused record.
    pub vendor_status: Option<i32>,
    /// The poller run that emitted the record.
    pub run_id: Option<String>,
    /// The sink batch that finished it.
    pub batch_id: String,
    /// When the sink finished it, ms since the epoch.
    pub at_ms: i64,
}

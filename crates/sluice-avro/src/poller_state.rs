//! The poller's committed progress per model (the run record, `schemas/envelope/poller_state.avsc`).
//! Written rarely (once per transaction), so it uses apache-avro's plain value path.

use std::sync::OnceLock;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use crate::CodecError;

/// A model's progress, committed atomically with the events it covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollerState {
    pub model: String,
    pub run_id: String,
    /// Detection position after the last committed row (cursor mode: JSON array of tagged values).
    pub position: Option<String>,
    pub snapshot_done: bool,
    pub events_total: i64,
    pub committed_at_ms: i64,
}

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        Schema::parse_str(include_str!("../../../schemas/envelope/poller_state.avsc"))
            .expect("schemas/envelope/poller_state.avsc is a valid schema")
    })
}

/// Encode a state record (plain Avro datum).
pub fn encode_state(state: &PollerState) -> Result<Vec<u8>, CodecError> {
    let value = apache_avro::to_value(state).map_err(CodecError::Encode)?;
    apache_avro::to_avro_datum(schema(), value).map_err(CodecError::Encode)
}

/// Decode a state record.
pub fn decode_state(bytes: &[u8]) -> Result<PollerState, CodecError> {
    let mut input = bytes;
    let value = apache_avro::from_avro_datum(schema(), &mut input, None).map_err(|e| CodecError::Decode(e.to_string()))?;
    apache_avro::from_value(&value).map_err(|e| CodecError::Decode(e.to_string()))
}

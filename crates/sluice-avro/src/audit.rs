//! The audit records: run records on `<prefix>.runs` (`schemas/audit/run_record.avsc`) and
//! row-level outcomes on `<prefix>.outcomes.<destination>` (`schemas/audit/sync_outcome.avsc`).
//!
//! Both are Avro single-object encoded with the specification's fingerprint of their checked-in
//! schema, like change events, so an outside consumer resolves them from `schemas/` alone; a
//! reader of this crate refuses bytes written with any other schema ([`CodecError::Decode`]).
//! Written a few times a second at most per service, so they take apache-avro's plain value
//! path (as [`crate::PollerState`] does).

use std::sync::OnceLock;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use crate::{canonical, fingerprint_bytes, CodecError, HEADER_LEN};

/// One poller run or one sink batch. Exactly one of `poller` and `sink` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// `poller` or `sink`.
    pub service: String,
    /// A fresh id of the run or batch (the sink's is its outcomes' `batch_id`).
    pub id: String,
    pub started_ms: i64,
    pub finished_ms: i64,
    /// `ok`, `failed`, or (poller) `refused`.
    pub outcome: String,
    /// What went wrong, without personal data.
    pub error: Option<String>,
    pub poller: Option<PollerRun>,
    pub sink: Option<SinkBatch>,
}

/// What one poller run read and committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollerRun {
    pub model: String,
    pub mode: String,
    pub warehouse: String,
    /// The `sluice.run.id` of each transaction the run committed, in order.
    pub run_ids: Vec<String>,
    pub reads: i64,
    pub creates: i64,
    pub updates: i64,
    pub deletes: i64,
    pub transactions: i64,
}

/// What one sink batch did with its records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkBatch {
    pub destination: String,
    pub kind: String,
    pub run_ids: Vec<String>,
    /// Records sent to the destination.
    pub records: i64,
    pub applied: i64,
    pub refused: i64,
    pub oldest_record_ms: i64,
}

/// What a sink did with one record (for the warehouse writeback): the core type, encoded here.
pub use sluice_core::SyncOutcome;

/// A fixed schema: parsed once, with its single-object header.
struct Fixed {
    schema: Schema,
    header: [u8; HEADER_LEN],
}

impl Fixed {
    fn new(text: &str, file: &str) -> Fixed {
        let schema = Schema::parse_str(text).unwrap_or_else(|e| panic!("{file} is a valid schema: {e}"));
        let json: serde_json::Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{file} is JSON: {e}"));
        let fingerprint = canonical::fingerprint(&json).unwrap_or_else(|e| panic!("{file} has a canonical form: {e}"));
        let mut header = [0u8; HEADER_LEN];
        header[..2].copy_from_slice(&[0xC3, 0x01]);
        header[2..].copy_from_slice(&fingerprint);
        Fixed { schema, header }
    }

    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        let value = apache_avro::to_value(value).map_err(CodecError::Encode)?.resolve(&self.schema).map_err(CodecError::Encode)?;
        let mut out = self.header.to_vec();
        out.extend(apache_avro::to_avro_datum(&self.schema, value).map_err(CodecError::Encode)?);
        Ok(out)
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        if fingerprint_bytes(bytes)? != self.header[2..] {
            return Err(CodecError::Decode(format!("written with schema {}, not this record's", crate::fingerprint_of(bytes)?)));
        }
        let mut datum = &bytes[HEADER_LEN..];
        let value = apache_avro::from_avro_datum(&self.schema, &mut datum, None).map_err(|e| CodecError::Decode(e.to_string()))?;
        apache_avro::from_value(&value).map_err(|e| CodecError::Decode(e.to_string()))
    }
}

fn run_record_schema() -> &'static Fixed {
    static SCHEMA: OnceLock<Fixed> = OnceLock::new();
    SCHEMA.get_or_init(|| Fixed::new(RUN_RECORD_SCHEMA, "schemas/audit/run_record.avsc"))
}

fn sync_outcome_schema() -> &'static Fixed {
    static SCHEMA: OnceLock<Fixed> = OnceLock::new();
    SCHEMA.get_or_init(|| Fixed::new(SYNC_OUTCOME_SCHEMA, "schemas/audit/sync_outcome.avsc"))
}

/// The text of `schemas/audit/run_record.avsc`.
pub const RUN_RECORD_SCHEMA: &str = include_str!("../../../schemas/audit/run_record.avsc");

/// The text of `schemas/audit/sync_outcome.avsc`.
pub const SYNC_OUTCOME_SCHEMA: &str = include_str!("../../../schemas/audit/sync_outcome.avsc");

/// Encode a run record (single-object encoding).
pub fn encode_run_record(record: &RunRecord) -> Result<Vec<u8>, CodecError> {
    run_record_schema().encode(record)
}

/// Decode a run record; bytes of another schema are refused.
pub fn decode_run_record(bytes: &[u8]) -> Result<RunRecord, CodecError> {
    run_record_schema().decode(bytes)
}

/// Encode a record's outcome (single-object encoding).
pub fn encode_sync_outcome(outcome: &SyncOutcome) -> Result<Vec<u8>, CodecError> {
    sync_outcome_schema().encode(outcome)
}

/// Decode a record's outcome; bytes of another schema are refused.
pub fn decode_sync_outcome(bytes: &[u8]) -> Result<SyncOutcome, CodecError> {
    sync_outcome_schema().decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poller_run() -> RunRecord {
        RunRecord {
            service: "poller".into(),
            id: "run-1".into(),
            started_ms: 1,
            finished_ms: 2,
            outcome: "ok".into(),
            error: None,
            poller: Some(PollerRun {
                model: "customers".into(),
                mode: "cursor".into(),
                warehouse: "warehouse".into(),
                run_ids: vec!["r1".into(), "r2".into()],
                reads: 7,
                creates: 1,
                updates: 1,
                deletes: 1,
                transactions: 1,
            }),
            sink: None,
        }
    }

    #[test]
    fn run_records_round_trip_for_both_services() {
        let poller = poller_run();
        assert_eq!(decode_run_record(&encode_run_record(&poller).unwrap()).unwrap(), poller);
        let sink = RunRecord {
            service: "sink".into(),
            id: "batch-1".into(),
            outcome: "ok".into(),
            error: Some("refused: permanent/422 x2".into()),
            poller: None,
            sink: Some(SinkBatch {
                destination: "crm".into(),
                kind: "webhook".into(),
                run_ids: vec!["a".into(), "b".into()],
                records: 5,
                applied: 3,
                refused: 2,
                oldest_record_ms: 5,
            }),
            ..poller
        };
        assert_eq!(decode_run_record(&encode_run_record(&sink).unwrap()).unwrap(), sink);
    }

    #[test]
    fn outcomes_round_trip_with_and_without_optional_fields() {
        let full = SyncOutcome {
            destination: "crm".into(),
            record_id: "p.changes.customers/0/7".into(),
            model: "customers".into(),
            record_key: Some("{\"id\":7}".into()),
            op: Some("u".into()),
            action: Some("upsert".into()),
            status: "refused".into(),
            error_class: Some("permanent".into()),
            vendor_status: Some(422),
            run_id: Some("run-1".into()),
            batch_id: "batch-1".into(),
            at_ms: 9,
        };
        assert_eq!(decode_sync_outcome(&encode_sync_outcome(&full).unwrap()).unwrap(), full);
        let bare = SyncOutcome { record_key: None, op: None, action: None, status: "skipped".into(), error_class: None, vendor_status: None, run_id: None, ..full };
        assert_eq!(decode_sync_outcome(&encode_sync_outcome(&bare).unwrap()).unwrap(), bare);
    }

    #[test]
    fn bytes_of_another_schema_are_refused_with_the_fingerprint() {
        let run = encode_run_record(&poller_run()).unwrap();
        let error = decode_sync_outcome(&run).unwrap_err();
        assert!(error.to_string().contains("not this record's"), "{error}");
        assert!(decode_run_record(b"not avro").is_err());
        // The header is the specification's fingerprint of the checked-in text.
        let json: serde_json::Value = serde_json::from_str(RUN_RECORD_SCHEMA).unwrap();
        assert_eq!(run[2..10], canonical::fingerprint(&json).unwrap());
    }
}

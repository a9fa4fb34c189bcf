//! Destination kinds against their vendors' contract servers (and Redis against the real
//! server from `ops/services.sh up`), one file per kind. Per kind: the success path, the
//! throttle signal, the partial-failure shape and the auth failure, each asserting what the
//! server holds and the `ErrorClass` the destination returned. Each file also holds its kind's
//! cases of the end-to-end sync-mode test (`sync_mode_cases`, run by `sync_modes`).

/// The kinds tested here, one file each: declares their modules and collects their sync-mode
/// cases, so a new kind is one line in this list.
macro_rules! kinds {
    ($($kind:ident),+ $(,)?) => {
        $(mod $kind;)+

        /// Every kind's cases of the end-to-end sync-mode test, their vendors started (keys in
        /// shared stores under `prefix`).
        pub(crate) async fn sync_mode_cases(prefix: &str) -> Vec<crate::sync_modes::fixture::Case> {
            let mut cases = Vec::new();
            $(cases.extend($kind::sync_mode_cases(prefix).await);)+
            cases
        }
    };
}

kinds! {
    braze,
    hubspot,
    meta,
    redis,
    salesforce,
    webhook,
}

use std::time::Duration;

use sluice_core::{ErrorClass, Op};
use sluice_destinations::{Action, DeliveryError, Kind, Metrics, OutboundRecord, RecordFailure};

// ---- fixtures -----------------------------------------------------------------------------

pub(crate) fn record(n: u32, action: Action, fields: serde_json::Value) -> OutboundRecord {
    OutboundRecord {
        id: format!("sluice.changes.customers/0/{n}"),
        model: "customers".into(),
        action,
        op: if action == Action::Delete { Op::Delete } else { Op::Update },
        key: serde_json::json!({ "id": n }).as_object().unwrap().clone(),
        fields: fields.as_object().unwrap().clone(),
        previous: None,
        ts_ms: 1_700_000_000_000,
    }
}

pub(crate) fn with_previous(mut record: OutboundRecord, previous: serde_json::Value) -> OutboundRecord {
    record.previous = Some(previous.as_object().unwrap().clone());
    record
}

pub(crate) fn indices(failures: &[RecordFailure]) -> Vec<usize> {
    failures.iter().map(|f| f.index).collect()
}

pub(crate) fn retry_after(error: &DeliveryError) -> Option<Duration> {
    match error.class {
        ErrorClass::Retryable { retry_after } => retry_after,
        ref other => panic!("expected retryable, got {other:?}: {}", error.message),
    }
}

/// The metrics of a destination under test, labelled with its kind.
pub(crate) fn metrics<K: Kind>() -> Metrics {
    Metrics::new("it", K::NAME)
}

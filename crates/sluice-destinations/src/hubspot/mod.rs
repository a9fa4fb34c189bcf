//! HubSpot CRM v3: batch upsert, update, create and archive of one object type, matched on a
//! unique property.
//!
//! Requests, under `<base_url>/crm/v3/objects/<object_type>/batch/`, `Authorization: Bearer`, at
//! most 100 inputs each:
//! - `upsert`: `{"inputs":[{"idProperty":"email","id":"jane@example.com","properties":{...},
//!   "objectWriteTraceId":"<record id>"}]}`;
//! - `read`: `{"idProperty":"email","properties":["email"],"inputs":[{"id":"jane@example.com"}]}`,
//!   answered with the records found (`results[].id`, HubSpot's record id, and the property);
//!   ids not found are missing from `results` (a 207 lists them as `OBJECT_NOT_FOUND`);
//! - `update`: `{"inputs":[{"id":"<record id>","properties":{...},"objectWriteTraceId":...}]}`;
//! - `create`: `{"inputs":[{"properties":{"email":...,...},"objectWriteTraceId":...}]}`;
//! - `archive`: `{"inputs":[{"id":"<record id>"}]}`, answered 204.
//!
//! Property values are strings; a null field is sent as `""`, which clears the property. When
//! `id_property` is `email`, the id is trimmed and lowercased (HubSpot's case handling is not
//! documented). An id that is nothing once normalised is missing: the record is refused and the
//! field counted, never matched on.
//!
//! Actions (the sync modes each kind honours are in [`HubSpot::check_mode`]):
//! - Upsert (and Event): `upsert`. An identifier change (the `before` image holds another id)
//!   upserts *by the old id* with the new value in the properties: renamed, not duplicated.
//! - Update: `read`, then `update` of the records found (by the old id when it changed); a
//!   record HubSpot does not hold is left alone, never created
//!   (`sluice_destination_records_unchanged_total{reason="not_found"}`).
//! - Create: `read`, then `create` of the records not found; a record HubSpot holds is left
//!   alone, never changed (`reason="exists"`). A create refused as `CONFLICT` (someone created
//!   it between the read and the write) is left alone too.
//! - Delete, by `on_delete`: `archive` (the default) reads the record ids and archives them; an
//!   id HubSpot does not hold is already gone (`reason="already_deleted"`). `skip` confirms
//!   without a request (counted), `reject` dead-letters.
//!
//! A batch becomes one request per operation, in an order that keeps each id's records in
//! batch order ([`crate::plan::Phases`]); two records for the same id in one operation are
//! merged into one input (later fields win), since HubSpot rejects duplicate ids in a batch.
//! A read-then-write request is one attempt for the sink: a failure of either fails both, and
//! the retry reads again, so every operation converges when repeated.
//!
//! Answers (`classify.rs`), for the read and the write alike:
//! - 200/201/207 (and 204 for `archive`): applied. In a 207, `errors[]` name their inputs by
//!   `context.objectWriteTraceId`; those records are refused (permanent), the others applied,
//!   except `CONFLICT` on a create and `OBJECT_NOT_FOUND` on an update, which leave the record
//!   alone. An error naming no input fails the request as permanent, so the sink isolates the
//!   bad record by sending one at a time. A lone create answered 409 `CONFLICT` is left alone;
//!   a 409 for several is isolated the same way.
//! - 429: by `policyName` (the throttle signal: `daily`, `ten_secondly`, `other`).
//!   `TEN_SECONDLY_ROLLING`/`SECONDLY` retry after `Retry-After`, else the
//!   `X-HubSpot-RateLimit-Interval-Milliseconds` window, else `ten_secondly_backoff_ms`.
//!   `DAILY` retries at the next midnight in `portal_time_zone`: a spent daily allowance is a
//!   pause, never a dead letter.
//! - 423 (record locked, ≥ 2 s), 477 (migration, `Retry-After`), 5xx: retryable.
//! - 401, 403 (missing scopes), 404, 405, 410: fatal. Other 4xx (400 validation, 409
//!   conflict), and another 2xx: permanent for the request.

mod classify;
mod config;
mod request;

pub use classify::{until_next_midnight, Exchange};
pub use config::HubSpotConfig;

use std::time::Duration;

use sluice_core::config::SyncMode;

use crate::http::{bearer, Auth, Endpoint};
use crate::modes::{one_of, ModeRefusal};
use crate::{DeliveryError, Invalid, Kind, Metrics, OnDelete, OutboundRecord, Plan};

/// The HubSpot destination.
pub struct HubSpot {
    /// `<base_url>/crm/v3/objects/<object_type>/batch/`; each call names its operation.
    endpoint: Endpoint,
    id_property: String,
    id_field: String,
    max_inputs: usize,
    portal_time_zone: chrono_tz::Tz,
    ten_secondly_backoff: Duration,
    multi_status: bool,
    on_delete: OnDelete,
    metrics: Metrics,
}

impl Kind for HubSpot {
    const NAME: &'static str = "hubspot";
    type Config = HubSpotConfig;

    /// `upsert`, `update`, `create`, and `mirror` when deletes archive. Not `append` (HubSpot has
    /// no endpoint for change events) nor `audience` (list membership is not implemented).
    fn check_mode(config: &HubSpotConfig, mode: SyncMode) -> Result<(), ModeRefusal> {
        if mode == SyncMode::Mirror && config.on_delete != OnDelete::Delete {
            let setting = if config.on_delete == OnDelete::Skip { "skip" } else { "reject" };
            return Err(ModeRefusal::new(
                format!("a mirror archives deleted rows, but on_delete = \"{setting}\" does not archive"),
                "remove on_delete (it defaults to \"archive\"), or use mode = \"upsert\" to keep records whose rows are deleted",
            ));
        }
        let supported: &[SyncMode] = match config.on_delete {
            OnDelete::Delete => &[SyncMode::Upsert, SyncMode::Update, SyncMode::Create, SyncMode::Mirror],
            OnDelete::Skip | OnDelete::Reject => &[SyncMode::Upsert, SyncMode::Update, SyncMode::Create],
        };
        one_of(mode, supported, || match mode {
            SyncMode::Append => "HubSpot has no endpoint for change events: every change would become an upsert".into(),
            _ => "HubSpot list membership is not implemented: use mirror to archive records whose rows leave".into(),
        })
    }

    fn new(config: &HubSpotConfig, metrics: Metrics) -> Result<HubSpot, Invalid> {
        Ok(HubSpot {
            endpoint: Endpoint::new(
                config.timeout_ms,
                format!("{}/crm/v3/objects/{}/batch/", config.base_url.trim_end_matches('/'), config.object_type),
                Auth::Bearer(bearer(config.access_token.expose(), "access_token")?),
            )?,
            id_property: config.id_property.clone(),
            id_field: config.id_field.clone().unwrap_or_else(|| config.id_property.clone()),
            max_inputs: config.max_inputs_per_request,
            portal_time_zone: config.time_zone()?,
            ten_secondly_backoff: Duration::from_millis(config.ten_secondly_backoff_ms),
            multi_status: config.multi_status,
            on_delete: config.on_delete,
            metrics,
        })
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn request_limit(&self) -> usize {
        self.max_inputs
    }

    fn plan(&self, batch: &[OutboundRecord]) -> Plan<request::Request> {
        self.plan_requests(batch)
    }

    /// The write, after the read it depends on; the read's failure is the answer when it failed.
    async fn call(&self, request: &request::Request) -> Result<Exchange, DeliveryError> {
        let operation = request.operation;
        if !operation.looks_up() {
            let write = self.post(operation.path(), &self.upsert_body(request)).await?;
            return Ok(Exchange { lookup: None, write: Some(write), sent: (0..request.inputs.items.len()).collect() });
        }
        let lookup = self.post("read", &self.lookup_body(request)).await?;
        if !classify::read_succeeded(&lookup) {
            return Ok(Exchange { lookup: Some(lookup), write: None, sent: Vec::new() });
        }
        let found = self.found_ids(request, &lookup);
        let sent: Vec<usize> = (0..found.len()).filter(|&i| operation.writes(found[i].as_deref())).collect();
        let write = match sent.is_empty() {
            true => None,
            false => Some(self.post(operation.path(), &self.write_body(request, &found, &sent)).await?),
        };
        Ok(Exchange { lookup: Some(lookup), write, sent })
    }

    /// Records left alone (not found, existing, already gone), once the exchange is accepted.
    fn observe(&self, request: &request::Request, exchange: &Exchange) {
        if crate::RetryLogic::request_failure(self, request, exchange).is_none() {
            for (reason, records) in self.unchanged(request, exchange) {
                self.metrics.records_unchanged(reason, records);
            }
        }
    }
}

impl HubSpot {
    async fn post(&self, path: &str, body: &serde_json::Value) -> Result<crate::http::Answer, DeliveryError> {
        self.endpoint.send_json_at(Self::NAME, reqwest::Method::POST, path, body).await
    }
}

/// The settings variants of this kind and the sync modes each honours: its rows of the
/// registry's matrix test, which checks every other mode is refused with the reason.
#[cfg(test)]
pub(crate) fn mode_cases() -> Vec<crate::kind::ModeCase> {
    use crate::kind::{ModeCase, TEST_SECRET};
    use sluice_core::config::SyncMode::*;
    let hubspot = format!("[destinations.hubspot]\naccess_token = {TEST_SECRET}");
    vec![
        ModeCase::new(hubspot.clone(), &[Upsert, Update, Create, Mirror]),
        ModeCase::new(format!("{hubspot}\non_delete = \"skip\""), &[Upsert, Update, Create]),
        ModeCase::new(format!("{hubspot}\non_delete = \"reject\""), &[Upsert, Update, Create]),
    ]
}

//! Salesforce: sObject Collections upsert by external ID, and delete by the Ids a SOQL query
//! finds for external IDs.
//!
//! Requests, under `<instance_url>/services/data/<api_version>`, `Authorization: Bearer`:
//! - upsert: `PATCH /composite/sobjects/<sobject>/<external_id_field>`, body
//!   `{"allOrNone":false,"records":[{"attributes":{"type":"Contact"},"Warehouse_Id__c":"W-1",...}]}`,
//!   at most 200 records of one type. Mapped field names are Salesforce field names; a null
//!   clears the field; a mapped `Id` is dropped (Salesforce refuses it on upsert; the external
//!   ID decides).
//! - delete: `GET /query?q=SELECT Id, <ext> FROM <sobject> WHERE <ext> IN ('W-1',...)` (values
//!   quoted as SOQL literals; further pages followed by `nextRecordsUrl`), then
//!   `DELETE /composite/sobjects?ids=<Id>,...&allOrNone=false` (at most 200 ids), answered with
//!   one result per id, in order. A batch whose external IDs hold more than 200 records (a
//!   non-unique external ID) is refused by Salesforce as a whole, and the sink's isolation then
//!   deletes record by record.
//!
//! Actions (the sync modes this kind honours are in [`Salesforce::check_mode`]): Upsert (and
//! Event) upsert. Delete follows `on_delete`: `delete` (the default) queries the Ids of the
//! records with that external ID and deletes them all; an external ID Salesforce does not hold,
//! or a result `ENTITY_IS_DELETED`, is already deleted
//! (`sluice_destination_records_unchanged_total{reason="already_deleted"}`); `skip` confirms
//! without a request (counted), `reject` dead-letters. A batch becomes one request per
//! operation, in an order that keeps each external ID's records in batch order. The external
//! ID should be a stable warehouse key: the body's value is what Salesforce matches on, so
//! when it changes the new value is upserted, the old record stays, and
//! `sluice_destination_identifier_changes_kept_total` counts it. An external ID that is blank
//! is missing: the record is refused and the field counted. Two records with one external ID
//! in a batch are merged (later fields win): Salesforce's behaviour for duplicates in one
//! request is undocumented.
//!
//! Answers (`classify.rs`), for the query, the upsert and the delete alike:
//! - 200 with one result per record (per id for a delete), in order: `success:false` refuses
//!   that record (permanent), unless its `statusCode` is in `retryable_error_codes`
//!   (`UNABLE_TO_LOCK_ROW` by default) or is `ALL_OR_NONE_OPERATION_ROLLED_BACK` (collateral):
//!   those are retried. A 200 without one result per record is retried as a whole.
//! - 403 `REQUEST_LIMIT_EXCEEDED` (throttle signal `request_limit_exceeded`): throttling,
//!   retryable, never fatal. When `Sforce-Limit-Info` shows the 24-hour allocation spent, the
//!   wait is `allocation_exhausted_wait_secs`; otherwise (concurrency) backoff decides.
//! - 401 (`INVALID_SESSION_ID`), other 403, 404, 405, 415: fatal. 400/409/300: permanent.
//!   500/503: retryable.
//!
//! Every answer's `Sforce-Limit-Info` is the `sluice_destination_api_usage_ratio` gauge.

mod classify;
mod config;
mod request;

pub use classify::Exchange;
pub use config::SalesforceConfig;

use std::time::Duration;

use sluice_core::config::SyncMode;

use crate::http::{bearer, Answer, Auth, Endpoint};
use crate::modes::{one_of, ModeRefusal};
use crate::{DeliveryError, Invalid, Kind, Metrics, OnDelete, OutboundRecord, Plan};

/// The Salesforce destination.
pub struct Salesforce {
    /// The instance URL; each call names its resource.
    endpoint: Endpoint,
    /// `/services/data/v<version>`.
    api_root: String,
    /// `<api_root>/composite/sobjects/<sobject>/<external_id_field>`.
    upsert_path: String,
    sobject: String,
    external_id_field: String,
    max_records: usize,
    retryable_error_codes: Vec<String>,
    allocation_exhausted_wait: Duration,
    on_delete: OnDelete,
    metrics: Metrics,
}

impl Kind for Salesforce {
    const NAME: &'static str = "salesforce";
    type Config = SalesforceConfig;

    /// `upsert`, and `mirror` when deletes delete. Not `update` nor `create` (Collections upsert
    /// has no conditional form, and a query-then-write form is not implemented), `append` (no
    /// event endpoint) or `audience` (no membership).
    fn check_mode(config: &SalesforceConfig, mode: SyncMode) -> Result<(), ModeRefusal> {
        if mode == SyncMode::Mirror && config.on_delete != OnDelete::Delete {
            let setting = if config.on_delete == OnDelete::Skip { "skip" } else { "reject" };
            return Err(ModeRefusal::new(
                format!("a mirror deletes records whose rows are deleted, but on_delete = \"{setting}\" does not delete"),
                "remove on_delete (it defaults to \"delete\"), or use mode = \"upsert\" to keep records whose rows are deleted",
            ));
        }
        let supported: &[SyncMode] = match config.on_delete {
            OnDelete::Delete => &[SyncMode::Upsert, SyncMode::Mirror],
            OnDelete::Skip | OnDelete::Reject => &[SyncMode::Upsert],
        };
        one_of(mode, supported, || match mode {
            SyncMode::Update | SyncMode::Create => {
                format!("sObject Collections upsert creates missing records and changes existing ones; a {mode}-only write is not implemented")
            }
            SyncMode::Append => "Salesforce has no endpoint for change events: every change would become an upsert".into(),
            _ => "Salesforce has no audience membership: use mirror to delete records whose rows leave".into(),
        })
    }

    fn new(config: &SalesforceConfig, metrics: Metrics) -> Result<Salesforce, Invalid> {
        let version = config.api_version.trim().trim_start_matches('v');
        let api_root = format!("/services/data/v{version}");
        Ok(Salesforce {
            endpoint: Endpoint::new(
                config.timeout_ms,
                config.instance_url.trim_end_matches('/').to_string(),
                Auth::Bearer(bearer(config.access_token.expose(), "access_token")?),
            )?,
            upsert_path: format!("{api_root}/composite/sobjects/{}/{}", config.sobject, config.external_id_field),
            api_root,
            sobject: config.sobject.clone(),
            external_id_field: config.external_id_field.clone(),
            max_records: config.max_records_per_request,
            retryable_error_codes: config.retryable_error_codes.clone(),
            allocation_exhausted_wait: Duration::from_secs(config.allocation_exhausted_wait_secs),
            on_delete: config.on_delete,
            metrics,
        })
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn request_limit(&self) -> usize {
        self.max_records
    }

    fn plan(&self, batch: &[OutboundRecord]) -> Plan<request::Request> {
        self.plan_requests(batch)
    }

    /// The upsert; or the query, then the delete of the Ids it found.
    async fn call(&self, request: &request::Request) -> Result<Exchange, DeliveryError> {
        if request.operation == request::Operation::Upsert {
            let write = self.endpoint.send_json_at(Self::NAME, reqwest::Method::PATCH, &self.upsert_path, &self.upsert_body(request)).await?;
            return Ok(Exchange { lookup: None, found: Vec::new(), write: Some(write), deleted: Vec::new() });
        }
        let (lookup, found) = self.query_ids(request).await?;
        let Some(found) = found else { return Ok(Exchange { lookup: Some(lookup), found: Vec::new(), write: None, deleted: Vec::new() }) };
        let deleted: Vec<(usize, String)> = found.iter().enumerate().flat_map(|(position, ids)| ids.iter().map(move |id| (position, id.clone()))).collect();
        if deleted.is_empty() {
            return Ok(Exchange { lookup: Some(lookup), found, write: None, deleted });
        }
        let ids: Vec<&str> = deleted.iter().map(|(_, id)| id.as_str()).collect();
        let http = self
            .endpoint
            .request_at(reqwest::Method::DELETE, &format!("{}/composite/sobjects", self.api_root))
            .query(&[("ids", ids.join(",").as_str()), ("allOrNone", "false")]);
        let write = crate::http::send_json(Self::NAME, http).await?;
        Ok(Exchange { lookup: Some(lookup), found, write: Some(write), deleted })
    }

    /// The allocation gauge from the last answer; records already deleted, once accepted.
    fn observe(&self, request: &request::Request, exchange: &Exchange) {
        if let Some((used, limit)) = exchange.write.as_ref().or(exchange.lookup.as_ref()).and_then(classify::api_usage) {
            self.metrics.api_usage_ratio(used as f64 / limit.max(1) as f64);
        }
        if crate::RetryLogic::request_failure(self, request, exchange).is_none() {
            self.metrics.records_unchanged(crate::plan::Unchanged::AlreadyDeleted, classify::already_deleted(request, exchange));
        }
    }
}

impl Salesforce {
    /// The Ids of a delete's external IDs (per sObject position), following `nextRecordsUrl`;
    /// `None` with the answer that failed, else the last page's answer.
    async fn query_ids(&self, request: &request::Request) -> Result<(Answer, Option<Vec<Vec<String>>>), DeliveryError> {
        let mut found = vec![Vec::new(); request.records.items.len()];
        let soql = self.lookup_soql(request);
        let mut http = self.endpoint.request_at(reqwest::Method::GET, &format!("{}/query", self.api_root)).query(&[("q", soql.as_str())]);
        loop {
            let answer = crate::http::send_json(Self::NAME, http).await?;
            if answer.status != 200 {
                return Ok((answer, None));
            }
            for row in answer.body["records"].as_array().into_iter().flatten() {
                let external = row.get(&self.external_id_field).and_then(crate::value_text);
                let position = external.and_then(|e| request.records.position(&e));
                if let (Some(position), Some(id)) = (position, row["Id"].as_str()) {
                    found[position].push(id.to_string());
                }
            }
            match answer.body["nextRecordsUrl"].as_str().filter(|_| answer.body["done"] == false) {
                Some(next) => http = self.endpoint.request_at(reqwest::Method::GET, next),
                None => return Ok((answer, Some(found))),
            }
        }
    }
}

/// The settings variants of this kind and the sync modes each honours: its rows of the
/// registry's matrix test, which checks every other mode is refused with the reason.
#[cfg(test)]
pub(crate) fn mode_cases() -> Vec<crate::kind::ModeCase> {
    use crate::kind::{ModeCase, TEST_SECRET};
    use sluice_core::config::SyncMode::*;
    let salesforce = format!("[destinations.salesforce]\ninstance_url = \"http://127.0.0.1:1\"\naccess_token = {TEST_SECRET}\nsobject = \"Contact\"\nexternal_id_field = \"W__c\"");
    vec![
        ModeCase::new(salesforce.clone(), &[Upsert, Mirror]),
        ModeCase::new(format!("{salesforce}\non_delete = \"skip\""), &[Upsert]),
    ]
}

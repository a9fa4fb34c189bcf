//! Salesforce: sObject Collections upsert by external ID.
//!
//! Request: `PATCH <instance_url>/services/data/<api_version>/composite/sobjects/<sobject>/
//! <external_id_field>`, `Authorization: Bearer`, body `{"allOrNone":false,"records":[{"attributes":
//! {"type":"Contact"},"Warehouse_Id__c":"W-1",...}]}`, at most 200 records of one type. Mapped
//! field names are Salesforce field names; a null clears the field; a mapped `Id` is dropped
//! (Salesforce refuses it on upsert; the external ID decides).
//!
//! Actions: Upsert/Update/Create/Event upsert; Delete follows `on_delete` (Collections delete
//! takes record ids, not external ids). The external ID should be a stable warehouse key: the
//! body's value is what Salesforce matches on, so when it changes the new value is upserted,
//! the old record stays, and `sluice_destination_identifier_changes_kept_total` counts it. Two
//! records with one external ID in a batch are merged (later fields win): Salesforce's
//! behaviour for duplicates in one request is undocumented.
//!
//! Answers (`classify.rs`):
//! - 200 with one result per record, in order: `success:false` refuses that record (permanent),
//!   unless its `statusCode` is in `retryable_error_codes` (`UNABLE_TO_LOCK_ROW` by default) or
//!   is `ALL_OR_NONE_OPERATION_ROLLED_BACK` (collateral): those are retried. A 200 without one
//!   result per record is retried as a whole.
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

pub use config::SalesforceConfig;

use std::time::Duration;

use crate::http::{bearer, Answer, Auth, Endpoint};
use crate::{DeliveryError, Invalid, Kind, Metrics, OutboundRecord, Plan, UnsupportedDelete};

/// The Salesforce destination.
pub struct Salesforce {
    endpoint: Endpoint,
    sobject: String,
    external_id_field: String,
    max_records: usize,
    retryable_error_codes: Vec<String>,
    allocation_exhausted_wait: Duration,
    on_delete: UnsupportedDelete,
    metrics: Metrics,
}

impl Kind for Salesforce {
    const NAME: &'static str = "salesforce";
    type Config = SalesforceConfig;

    fn new(config: &SalesforceConfig, metrics: Metrics) -> Result<Salesforce, Invalid> {
        let version = config.api_version.trim().trim_start_matches('v');
        Ok(Salesforce {
            endpoint: Endpoint::new(
                config.timeout_ms,
                format!(
                    "{}/services/data/v{version}/composite/sobjects/{}/{}",
                    config.instance_url.trim_end_matches('/'),
                    config.sobject,
                    config.external_id_field
                ),
                Auth::Bearer(bearer(config.access_token.expose(), "access_token")?),
            )?,
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
        self.plan_records(batch)
    }

    async fn call(&self, request: &request::Request) -> Result<Answer, DeliveryError> {
        self.endpoint.send_json(Self::NAME, reqwest::Method::PATCH, &serde_json::json!({"allOrNone": false, "records": request.records.items})).await
    }

    fn observe(&self, _request: &request::Request, answer: &Answer) {
        if let Some((used, limit)) = classify::api_usage(answer) {
            self.metrics.api_usage_ratio(used as f64 / limit.max(1) as f64);
        }
    }
}

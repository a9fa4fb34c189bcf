//! HubSpot CRM v3: batch upsert by a unique property.
//!
//! Request: `POST <base_url>/crm/v3/objects/<object_type>/batch/upsert`, `Authorization: Bearer`,
//! body `{"inputs":[{"idProperty":"email","id":"jane@example.com","properties":{...},
//! "objectWriteTraceId":"<record id>"}]}`, at most 100 inputs. Property values are strings; a
//! null field is sent as `""`, which clears the property in HubSpot. When `id_property` is
//! `email`, the id is trimmed and lowercased (HubSpot's case handling is not documented).
//!
//! Actions: Upsert/Update/Create/Event all upsert (the endpoint has no conditional form);
//! Delete follows `on_delete` (HubSpot's batch archive takes HubSpot record ids, which sluice
//! does not know). An identifier change (the `before` image holds another id) upserts *by the
//! old id* with the new value in the properties, so the record is renamed, not duplicated.
//! Two records for the same id in one batch are merged into one input (later fields win), since
//! HubSpot rejects duplicate ids in a batch.
//!
//! Answers (`classify.rs`):
//! - 200/201: every input applied.
//! - 207: `errors[]` name their inputs by `context.objectWriteTraceId`; those records are
//!   refused (permanent), the others applied. An error naming no input fails the request as
//!   permanent, so the sink isolates the bad record by sending one at a time.
//! - 429: by `policyName` (the throttle signal: `daily`, `ten_secondly`, `other`).
//!   `TEN_SECONDLY_ROLLING`/`SECONDLY` retry after `Retry-After`, else the
//!   `X-HubSpot-RateLimit-Interval-Milliseconds` window, else `ten_secondly_backoff_ms`.
//!   `DAILY` retries at the next midnight in `portal_time_zone`: a spent daily allowance is a
//!   pause, never a dead letter.
//! - 423 (record locked, ≥ 2 s), 477 (migration, `Retry-After`), 5xx: retryable.
//! - 401, 403 (missing scopes), 404, 405, 410: fatal. Other 4xx (400 validation, 409
//!   conflict), and a 2xx other than 200/201/207: permanent for the request.

mod classify;
mod config;
mod request;

pub use classify::until_next_midnight;
pub use config::HubSpotConfig;

use std::time::Duration;

use crate::http::{bearer, Answer, Auth, Endpoint};
use crate::{DeliveryError, Invalid, Kind, Metrics, OutboundRecord, Plan, UnsupportedDelete};

/// The HubSpot destination.
pub struct HubSpot {
    endpoint: Endpoint,
    id_property: String,
    id_field: String,
    max_inputs: usize,
    portal_time_zone: chrono_tz::Tz,
    ten_secondly_backoff: Duration,
    multi_status: bool,
    on_delete: UnsupportedDelete,
    metrics: Metrics,
}

impl Kind for HubSpot {
    const NAME: &'static str = "hubspot";
    type Config = HubSpotConfig;

    fn new(config: &HubSpotConfig, metrics: Metrics) -> Result<HubSpot, Invalid> {
        Ok(HubSpot {
            endpoint: Endpoint::new(
                config.timeout_ms,
                format!("{}/crm/v3/objects/{}/batch/upsert", config.base_url.trim_end_matches('/'), config.object_type),
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
        self.plan_inputs(batch)
    }

    async fn call(&self, request: &request::Request) -> Result<Answer, DeliveryError> {
        self.endpoint.send_json(Self::NAME, reqwest::Method::POST, &serde_json::json!({ "inputs": request.inputs.items })).await
    }
}

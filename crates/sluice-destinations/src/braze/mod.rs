//! Braze: user attributes and email/subscription-group suppression through `/users/track`.
//!
//! Request: `POST <base_url>/users/track`, `Authorization: Bearer <REST key>`, body
//! `{"attributes":[{"external_id":"u1", <mapped fields>...}, ...]}`, at most 75 objects (50 on
//! the 2024-25 MAU plans: `max_objects_per_request`). Only attributes are sent, never events or
//! purchases: those are not deduplicated by Braze, so a retried batch would double-count them.
//! Email identifiers are trimmed and lowercased; an identifier that is nothing once normalised
//! (a blank email or external id) is missing: the record is refused and the field counted.
//!
//! Actions, by `mode` (the sync modes each honours are in [`Braze::check_mode`]):
//! - `attributes`: Upsert/Create/Event write the mapped fields (`_update_existing_only: false`,
//!   so a new user is created); Update writes them only to existing users
//!   (`_update_existing_only: true`); Delete (a row leaving, consent revoked) unsubscribes:
//!   `email_subscribe: "unsubscribed"` when `unsubscribe_email`, and every configured
//!   subscription group set to `unsubscribed`. A Delete with neither configured is skipped and
//!   counted. Braze user deletion is irreversible and never done.
//! - `suppression`: a row's presence suppresses: Upsert/Update/Create/Event unsubscribe (with
//!   the mapped fields); Delete is skipped (a suppression ending never re-subscribes anyone).
//!
//! Answers (`classify.rs`):
//! - 2xx (201 and 200 seen; 202 `queued` during maintenance): success, except objects named in
//!   `errors[]` (`input_array: "attributes"`, `index`), which are refused (permanent). An error
//!   naming no object fails the request as permanent, so the sink isolates the record.
//! - 429 (throttle signal `http_429`): retryable after `Retry-After`, else until
//!   `X-RateLimit-Reset` (epoch seconds).
//! - 5xx: retryable. 401/403/404 (bad, inactive or unknown key): fatal. 400: permanent.
//!
//! Every answer's `X-RateLimit-Remaining` is the `sluice_destination_rate_limit_remaining` gauge.

mod classify;
mod config;
mod request;

pub use config::{BrazeConfig, BrazeIdentifier, BrazeMode};

use sluice_core::config::SyncMode;

use crate::http::{bearer, Answer, Auth, Endpoint};
use crate::modes::{one_of, ModeRefusal};
use crate::{DeliveryError, Invalid, Kind, Metrics, OutboundRecord, Plan};

/// The Braze destination.
pub struct Braze {
    endpoint: Endpoint,
    identifier: BrazeIdentifier,
    identifier_field: String,
    mode: BrazeMode,
    max_objects: usize,
    unsubscribe_email: bool,
    subscription_group_ids: Vec<String>,
    metrics: Metrics,
}

impl Kind for Braze {
    const NAME: &'static str = "braze";
    type Config = BrazeConfig;

    /// `attributes`: `upsert`, `update` (`_update_existing_only`), `mirror` (a delete
    /// unsubscribes). `suppression`: `upsert` and `update` (a row's presence unsubscribes an
    /// existing user). Never `create` (Braze has no create-only write), `append` (events are not
    /// deduplicated: a retry would double-count them) or `audience` (leaving unsubscribes, but
    /// entering again cannot re-subscribe someone who chose to leave).
    fn check_mode(config: &BrazeConfig, mode: SyncMode) -> Result<(), ModeRefusal> {
        let supported: &[SyncMode] = match config.mode {
            BrazeMode::Attributes => &[SyncMode::Upsert, SyncMode::Update, SyncMode::Mirror],
            BrazeMode::Suppression => &[SyncMode::Upsert, SyncMode::Update],
        };
        one_of(mode, supported, || match (config.mode, mode) {
            (_, SyncMode::Create) => "Braze's /users/track has no create-only write: an existing user would be changed".into(),
            (_, SyncMode::Append) => "Braze does not deduplicate events, so a retried batch would count them twice; sluice sends attributes only".into(),
            (BrazeMode::Attributes, _) => {
                "leaving an audience unsubscribes, but entering it again cannot re-subscribe someone who chose to leave: use mirror".into()
            }
            (BrazeMode::Suppression, _) => {
                "in suppression mode a row's presence unsubscribes and a suppression ending never re-subscribes, so deletes cannot propagate".into()
            }
        })
    }

    fn new(config: &BrazeConfig, metrics: Metrics) -> Result<Braze, Invalid> {
        Ok(Braze {
            endpoint: Endpoint::new(
                config.timeout_ms,
                format!("{}/users/track", config.base_url.trim_end_matches('/')),
                Auth::Bearer(bearer(config.api_key.expose(), "api_key")?),
            )?,
            identifier: config.identifier,
            identifier_field: config.identifier_field.clone().unwrap_or_else(|| config.identifier.name().to_string()),
            mode: config.mode,
            max_objects: config.max_objects_per_request,
            unsubscribe_email: config.unsubscribe_email,
            subscription_group_ids: config.subscription_group_ids.clone(),
            metrics,
        })
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn request_limit(&self) -> usize {
        self.max_objects
    }

    fn plan(&self, batch: &[OutboundRecord]) -> Plan<request::Request> {
        self.plan_attributes(batch)
    }

    async fn call(&self, request: &request::Request) -> Result<Answer, DeliveryError> {
        self.endpoint.send_json(Self::NAME, reqwest::Method::POST, &serde_json::json!({ "attributes": request.attributes })).await
    }

    fn observe(&self, _request: &request::Request, answer: &Answer) {
        if let Some(remaining) = answer.header("x-ratelimit-remaining").and_then(|v| v.trim().parse::<f64>().ok()) {
            self.metrics.rate_limit_remaining(remaining);
        }
    }
}

/// The settings variants of this kind and the sync modes each honours: its rows of the
/// registry's matrix test, which checks every other mode is refused with the reason.
#[cfg(test)]
pub(crate) fn mode_cases() -> Vec<crate::kind::ModeCase> {
    use crate::kind::{ModeCase, TEST_SECRET};
    use sluice_core::config::SyncMode::*;
    let braze = format!("[destinations.braze]\nbase_url = \"http://127.0.0.1:1\"\napi_key = {TEST_SECRET}");
    vec![
        ModeCase::new(braze.clone(), &[Upsert, Update, Mirror]),
        ModeCase::new(format!("{braze}\nmode = \"suppression\""), &[Upsert, Update]),
    ]
}

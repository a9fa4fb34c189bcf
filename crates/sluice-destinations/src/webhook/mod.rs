//! Generic webhook: JSON batches over HTTP POST, signed per Standard Webhooks.
//!
//! Request: `POST <url>` with `content-type: application/json` and the configured headers; body
//! `{"records": [OutboundRecord, ...]}`. Every record carries a stable `id`, so a receiver can
//! make retries and replays idempotent.
//!
//! Actions: every sync mode is honoured; each record carries its `action` (`upsert`, `update`,
//! `create`, `delete`, `event`) and `op`, and the receiver applies it: `append` sends every
//! change as an event, deletes included.
//!
//! Signing (when `signing_secret` is set), Standard Webhooks v1:
//! - `webhook-id`: `msg_` + hex of [`crate::batch_digest`], so the same batch carries the same
//!   id on every retry and a receiver can deduplicate on it;
//! - `webhook-timestamp`: Unix seconds of this attempt;
//! - `webhook-signature`: `v1,` + base64 HMAC-SHA256 of `"{id}.{timestamp}.{body}"` over the
//!   exact bytes sent, keyed by the secret's base64 part after `whsec_`.
//!
//! Answers (`classify.rs`): the default HTTP policy ([`crate::http::classify_status`]), which
//! already says what Standard Webhooks asks. 410 Gone is fatal: the receiver has disabled the
//! endpoint and the sink stops instead of pouring the stream into the dead-letter topic.
//! 429/502/504 are throttles (retryable, `Retry-After` honoured). A 4xx other than auth/endpoint
//! errors rejects the whole request; the sink then isolates the offending records by sending
//! them one by one, so only they are dead-lettered. Redirects are not followed (3xx is a
//! failure, per the spec). A `207 Multi-Status` answer may list per-record results,
//! `{"errors": [{"index": 3, "message": "...", "retryable": false}]}` (indexes into the
//! request's `records`); unlisted records were applied.

mod classify;
mod config;
mod request;

pub use config::{HeaderValue, WebhookConfig};
pub use request::{webhook_id, Signer};

use sluice_core::config::SyncMode;

use crate::http::{send_json, Answer, Auth, Endpoint};
use crate::{DeliveryError, Invalid, Kind, Metrics, ModeRefusal, OutboundRecord, Plan};

/// The webhook destination.
pub struct Webhook {
    /// The URL, with the configured headers.
    endpoint: Endpoint,
    signer: Option<Signer>,
    metrics: Metrics,
}

impl Kind for Webhook {
    const NAME: &'static str = "webhook";
    type Config = WebhookConfig;

    /// Every mode: the receiver gets each record's action and decides what it means.
    fn check_mode(_config: &WebhookConfig, _mode: SyncMode) -> Result<(), ModeRefusal> {
        Ok(())
    }

    /// Headers parsed, signing key decoded; nothing connects.
    fn new(config: &WebhookConfig, metrics: Metrics) -> Result<Webhook, Invalid> {
        Ok(Webhook {
            endpoint: Endpoint::new(config.timeout_ms, config.url.clone(), Auth::Headers(config.header_map()?))?,
            signer: config.signer()?,
            metrics,
        })
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A generic receiver states no limit; the destination's `batch_max_records` decides.
    fn request_limit(&self) -> usize {
        usize::MAX
    }

    fn plan(&self, batch: &[OutboundRecord]) -> Plan<request::Request> {
        request::plan(batch)
    }

    async fn call(&self, request: &request::Request) -> Result<Answer, DeliveryError> {
        send_json(Self::NAME, self.http(request)).await
    }
}

/// The settings variants of this kind and the sync modes each honours: its rows of the
/// registry's matrix test, which checks every other mode is refused with the reason.
#[cfg(test)]
pub(crate) fn mode_cases() -> Vec<crate::kind::ModeCase> {
    use crate::kind::ModeCase;
    use sluice_core::config::SyncMode::*;
    vec![
        ModeCase::new("[destinations.webhook]\nurl = \"http://127.0.0.1:1\"", &[Upsert, Update, Create, Mirror, Append, Audience]),
    ]
}

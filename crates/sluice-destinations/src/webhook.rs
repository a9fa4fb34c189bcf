//! Generic webhook: JSON batches over HTTP POST.
//!
//! Request: `POST <url>` with `content-type: application/json` and the configured headers; body
//! `{"records": [OutboundRecord, ...]}`. Every record carries a stable `id`, so a receiver can
//! make retries and replays idempotent.
//!
//! Response: classified by [`crate::http::classify_status`]. A 4xx other than auth/endpoint
//! errors rejects the whole request; the sink then isolates the offending records by sending
//! them one by one, so only they are dead-lettered.

use std::time::Duration;

use sluice_core::config::WebhookConfig;
use sluice_core::ErrorClass;

use crate::http::{classify_status, excerpt, parse_retry_after};
use crate::{DeliveryError, Destination, OutboundRecord, RecordFailure};

/// Bytes of a response body kept for dead-letter headers and logs.
const EXCERPT_BYTES: usize = 1024;

pub struct Webhook {
    client: reqwest::Client,
    url: String,
    headers: reqwest::header::HeaderMap,
}

impl Webhook {
    pub fn new(config: &WebhookConfig) -> Result<Webhook, String> {
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &config.headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("header {name:?}: {e}"))?;
            let mut value = reqwest::header::HeaderValue::from_str(value.expose()).map_err(|e| format!("header {name}: {e}"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        Ok(Webhook { client, url: config.url.clone(), headers })
    }
}

#[derive(serde::Serialize)]
struct Body<'a> {
    records: &'a [OutboundRecord],
}

impl Destination for Webhook {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    /// A generic receiver states no limit; the destination's `batch_max_records` decides.
    fn max_batch_records(&self) -> usize {
        usize::MAX
    }

    async fn send(&self, batch: &[OutboundRecord]) -> Result<Vec<RecordFailure>, DeliveryError> {
        let response = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .json(&Body { records: batch })
            .send()
            .await
            .map_err(|e| DeliveryError {
                // Timeouts, refused and reset connections: the destination may be back soon.
                class: ErrorClass::Retryable { retry_after: None },
                status: None,
                excerpt: String::new(),
                message: format!("request failed: {}", without_url(&e)),
            })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
        let Some(class) = classify_status(status, retry_after) else {
            return Ok(Vec::new());
        };
        let body = response.text().await.unwrap_or_default();
        Err(DeliveryError {
            class,
            status: Some(status),
            excerpt: excerpt(&body, EXCERPT_BYTES),
            message: format!("webhook answered {status}"),
        })
    }
}

/// A reqwest error's text without its URL, which may carry credentials in query strings.
fn without_url(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else {
        "transport"
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(error);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    format!("{kind} error: {detail}")
}

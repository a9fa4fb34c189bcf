//! Generic webhook: JSON batches over HTTP POST.
//!
//! Request: `POST <url>` with `content-type: application/json` and the configured headers; body
//! `{"records": [OutboundRecord, ...]}`. Every record carries a stable `id`, so a receiver can
//! make retries and replays idempotent.
//!
//! Response: classified by [`crate::http::classify_status`]. A 4xx other than auth/endpoint
//! errors rejects the whole request; the sink then isolates the offending records by sending
//! them one by one, so only they are dead-lettered. A `207 Multi-Status` answer may list
//! per-record results, `{"errors": [{"index": 3, "message": "...", "retryable": false}]}`
//! (indexes into the request's `records`); unlisted records were applied.

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
struct RequestBody<'a> {
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
            .json(&RequestBody { records: batch })
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
            // Only a 207 may carry per-record results; any other 2xx confirms the whole batch.
            if status != 207 {
                return Ok(Vec::new());
            }
            let body = response.text().await.unwrap_or_default();
            return Ok(partial_failures(&body, batch.len()));
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

/// Per-record results of a `207 Multi-Status` answer: `{"errors": [{"index": 3, "message":
/// "...", "retryable": false}]}`. Records not listed were applied. `retryable` defaults to false
/// (a refusal); a body that does not parse refuses nothing, since the status said success.
fn partial_failures(body: &str, batch_len: usize) -> Vec<RecordFailure> {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        errors: Vec<ItemError>,
    }
    #[derive(serde::Deserialize)]
    struct ItemError {
        index: usize,
        #[serde(default)]
        message: String,
        #[serde(default)]
        retryable: bool,
    }
    let Ok(parsed) = serde_json::from_str::<Body>(body) else {
        tracing::warn!("207 answer without a readable `errors` list; treating the batch as applied");
        return Vec::new();
    };
    parsed
        .errors
        .into_iter()
        .filter(|e| e.index < batch_len)
        .map(|e| RecordFailure {
            index: e.index,
            class: if e.retryable { ErrorClass::Retryable { retry_after: None } } else { ErrorClass::Permanent },
            excerpt: excerpt(&e.message, EXCERPT_BYTES),
            message: format!("webhook refused the record: {}", excerpt(&e.message, 200)),
            status: Some(207),
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_status_lists_refused_records() {
        let failures = partial_failures(r#"{"errors":[{"index":1,"message":"bad email"},{"index":2,"retryable":true},{"index":9}]}"#, 3);
        assert_eq!(failures.len(), 2, "out-of-range indexes are ignored");
        assert_eq!((failures[0].index, failures[0].class.clone()), (1, ErrorClass::Permanent));
        assert_eq!((failures[1].index, failures[1].class.clone()), (2, ErrorClass::Retryable { retry_after: None }));
        assert!(partial_failures("not json", 3).is_empty());
    }
}

//! Generic webhook: JSON batches over HTTP POST, signed per Standard Webhooks.
//!
//! Request: `POST <url>` with `content-type: application/json` and the configured headers; body
//! `{"records": [OutboundRecord, ...]}`. Every record carries a stable `id`, so a receiver can
//! make retries and replays idempotent.
//!
//! Signing (when `signing_secret` is set), Standard Webhooks v1:
//! - `webhook-id`: `msg_` + hex of [`crate::batch_digest`], so the same batch carries the same
//!   id on every retry and a receiver can deduplicate on it;
//! - `webhook-timestamp`: Unix seconds of this attempt;
//! - `webhook-signature`: `v1,` + base64 HMAC-SHA256 of `"{id}.{timestamp}.{body}"` over the
//!   exact bytes sent, keyed by the secret's base64 part after `whsec_`.
//!
//! Response: classified by [`crate::http::classify_status`]. 410 Gone is fatal: the receiver
//! has disabled the endpoint and the sink stops instead of pouring the stream into the
//! dead-letter topic. A 4xx other than auth/endpoint errors rejects the whole request; the sink
//! then isolates the offending records by sending them one by one, so only they are
//! dead-lettered. Redirects are not followed (3xx is a failure, per the spec). A `207
//! Multi-Status` answer may list per-record results, `{"errors": [{"index": 3, "message":
//! "...", "retryable": false}]}` (indexes into the request's `records`); unlisted records were
//! applied.

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use sluice_core::config::WebhookConfig;

use crate::http::{answered, classify_status, retry_after_of, transport_error};
use crate::{batch_digest, DeliveryError, Destination, OutboundRecord, RecordFailure};

// ---- client -------------------------------------------------------------------------------

/// The webhook destination.
pub struct Webhook {
    client: reqwest::Client,
    url: String,
    headers: reqwest::header::HeaderMap,
    signer: Option<Signer>,
}

impl Webhook {
    /// Build from config: headers parsed, signing key decoded; nothing connects.
    pub fn new(config: &WebhookConfig) -> Result<Webhook, String> {
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &config.headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("header {name:?}: {e}"))?;
            let mut value = reqwest::header::HeaderValue::from_str(value.expose()).map_err(|e| format!("header {name}: {e}"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let signer = config.signing_secret.as_ref().map(|s| Signer::from_secret(s.expose())).transpose()?;
        Ok(Webhook { client: crate::http::client(config.timeout_ms)?, url: config.url.clone(), headers, signer })
    }
}

/// Standard Webhooks symmetric signer.
pub struct Signer {
    key: Vec<u8>,
}

impl Signer {
    /// From `whsec_<base64>`; the spec's secrets are 24 to 64 random bytes.
    pub fn from_secret(secret: &str) -> Result<Signer, String> {
        let encoded = secret.trim().strip_prefix("whsec_").unwrap_or(secret.trim());
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| "webhook.signing_secret is not `whsec_` followed by base64".to_string())?;
        if !(24..=64).contains(&key.len()) {
            return Err(format!("webhook.signing_secret decodes to {} bytes; Standard Webhooks secrets are 24 to 64", key.len()));
        }
        Ok(Signer { key })
    }

    /// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
    }
}

// ---- request ------------------------------------------------------------------------------

#[derive(serde::Serialize)]
struct Body<'a> {
    records: &'a [OutboundRecord],
}

/// The `webhook-id` of a batch: stable across retries of the same batch.
pub fn webhook_id(batch: &[OutboundRecord]) -> String {
    let digest = batch_digest(batch);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("msg_{hex}")
}

// ---- send ---------------------------------------------------------------------------------

impl Destination for Webhook {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    /// A generic receiver states no limit; the destination's `batch_max_records` decides.
    fn max_batch_records(&self) -> usize {
        usize::MAX
    }

    async fn send(&self, batch: &[OutboundRecord]) -> Result<Vec<RecordFailure>, DeliveryError> {
        // Serialised once: the signature covers exactly these bytes.
        let body = serde_json::to_vec(&Body { records: batch }).expect("records serialise");
        let mut request = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(signer) = &self.signer {
            let id = webhook_id(batch);
            let timestamp = chrono::Utc::now().timestamp();
            let signature = signer.sign(&id, timestamp, &body);
            request = request.header("webhook-id", id).header("webhook-timestamp", timestamp).header("webhook-signature", signature);
        }
        let response = request.body(body).send().await.map_err(|e| transport_error("webhook", &e))?;
        let status = response.status().as_u16();
        let retry_after = retry_after_of(response.headers());
        match classify(status, retry_after) {
            // Only a 207 may carry per-record results; any other 2xx confirms the whole batch.
            None if status == 207 => Ok(partial_failures(&response.text().await.unwrap_or_default(), batch.len())),
            None => Ok(Vec::new()),
            Some(class) => {
                let text = response.text().await.unwrap_or_default();
                Err(answered(class, status, &text, format!("webhook answered {status}")))
            }
        }
    }
}

// ---- classify -----------------------------------------------------------------------------

/// Per-record results of a `207 Multi-Status` answer: `{"errors": [{"index": 3, "message":
/// "...", "retryable": false}]}`. Records not listed were applied. `retryable` defaults to false
/// (a refusal); a body that does not parse refuses nothing, since the status said success.
fn partial_failures(body: &str, batch_len: usize) -> Vec<crate::RecordFailure> {
    #[derive(serde::Deserialize)]
    struct Answer {
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
    let Ok(parsed) = serde_json::from_str::<Answer>(body) else {
        tracing::warn!("207 answer without a readable `errors` list; treating the batch as applied");
        return Vec::new();
    };
    parsed
        .errors
        .into_iter()
        .filter(|e| e.index < batch_len)
        .map(|e| crate::RecordFailure {
            index: e.index,
            class: if e.retryable {
                sluice_core::ErrorClass::Retryable { retry_after: None }
            } else {
                sluice_core::ErrorClass::Permanent
            },
            excerpt: crate::http::excerpt(&e.message, 1024),
            message: format!("webhook refused the record: {}", crate::http::excerpt(&e.message, 200)),
            status: Some(207),
        })
        .collect()
}

/// The default HTTP policy, which already says what Standard Webhooks asks: 2xx success, 3xx
/// failure, 410 disables the endpoint (fatal), 429/502/504 throttle (retryable, `Retry-After`
/// honoured).
fn classify(status: u16, retry_after: Option<std::time::Duration>) -> Option<sluice_core::ErrorClass> {
    match status {
        300..=399 => Some(sluice_core::ErrorClass::Permanent),
        _ => classify_status(status, retry_after),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::ErrorClass;
    use std::time::Duration;

    /// The Standard Webhooks reference libraries' test vector.
    #[test]
    fn signature_matches_the_spec_vector() {
        let signer = Signer::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            signer.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn bad_secrets_are_config_errors() {
        assert!(Signer::from_secret("whsec_not base64!").is_err());
        assert!(Signer::from_secret("whsec_c2hvcnQ=").is_err(), "5 bytes is too short");
    }

    #[test]
    fn webhook_id_is_stable_per_batch() {
        let record = |id: &str| OutboundRecord {
            id: id.into(),
            model: "m".into(),
            action: crate::Action::Upsert,
            op: "c".into(),
            key: Default::default(),
            fields: Default::default(),
            previous: None,
            ts_ms: 0,
        };
        let a = vec![record("t/0/1"), record("t/0/2")];
        assert_eq!(webhook_id(&a), webhook_id(&a.clone()));
        assert_ne!(webhook_id(&a), webhook_id(&a[..1]));
        assert!(!webhook_id(&a).contains('.'), "the spec forbids '.' in ids");
    }

    #[test]
    fn multi_status_lists_refused_records() {
        let failures =
            partial_failures(r#"{"errors":[{"index":1,"message":"bad email"},{"index":2,"retryable":true},{"index":9}]}"#, 3);
        assert_eq!(failures.len(), 2, "out-of-range indexes are ignored");
        assert_eq!((failures[0].index, failures[0].class.clone()), (1, ErrorClass::Permanent));
        assert_eq!((failures[1].index, failures[1].class.clone()), (2, ErrorClass::Retryable { retry_after: None }));
        assert!(partial_failures("not json", 3).is_empty());
    }

    #[test]
    fn classification_table() {
        let ra = Some(Duration::from_secs(2));
        let cases = [
            (200, None),
            (204, None),
            (301, Some(ErrorClass::Permanent)),
            (410, Some(ErrorClass::Fatal)),
            (401, Some(ErrorClass::Fatal)),
            (429, Some(ErrorClass::Retryable { retry_after: ra })),
            (502, Some(ErrorClass::Retryable { retry_after: ra })),
            (504, Some(ErrorClass::Retryable { retry_after: ra })),
            (422, Some(ErrorClass::Permanent)),
        ];
        for (status, expected) in cases {
            assert_eq!(classify(status, ra), expected, "status {status}");
        }
    }
}

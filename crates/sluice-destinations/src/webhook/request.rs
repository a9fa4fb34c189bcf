//! Batch → one signed POST carrying every record.

use base64::Engine as _;
use hmac::{KeyInit, Mac};

use super::Webhook;
use crate::{batch_digest, OutboundRecord, Plan};

/// One POST: the body, serialised once (the signature covers exactly these bytes), and the id
/// of its batch. It carries every record of the batch, in order.
pub struct Request {
    body: Vec<u8>,
    id: String,
    /// Records in `body.records`, for the indexes of a 207 answer.
    pub(super) records: usize,
}

#[derive(serde::Serialize)]
struct Body<'a> {
    records: &'a [OutboundRecord],
}

/// The whole batch as one request (a webhook refuses nothing before sending).
pub(super) fn plan(batch: &[OutboundRecord]) -> Plan<Request> {
    let body = serde_json::to_vec(&Body { records: batch }).expect("records serialise");
    Plan { requests: vec![Request { body, id: webhook_id(batch), records: batch.len() }], ..Plan::default() }
}

impl Webhook {
    /// The request on the wire; the timestamp and signature are this attempt's.
    pub(super) fn http(&self, request: &Request) -> reqwest::RequestBuilder {
        let mut http = self.endpoint.request(reqwest::Method::POST).header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(signer) = &self.signer {
            let timestamp = chrono::Utc::now().timestamp();
            let signature = signer.sign(&request.id, timestamp, &request.body);
            http = http.header("webhook-id", request.id.as_str()).header("webhook-timestamp", timestamp).header("webhook-signature", signature);
        }
        http.body(request.body.clone())
    }
}

/// The `webhook-id` of a batch: stable across retries of the same batch.
pub fn webhook_id(batch: &[OutboundRecord]) -> String {
    let digest = batch_digest(batch);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("msg_{hex}")
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

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::Op;

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

    fn record(id: &str) -> OutboundRecord {
        OutboundRecord { op: Op::Create, ..crate::record::test_record(id, crate::Action::Upsert, serde_json::json!({}), None) }
    }

    #[test]
    fn webhook_id_is_stable_per_batch() {
        let a = vec![record("t/0/1"), record("t/0/2")];
        assert_eq!(webhook_id(&a), webhook_id(&a.clone()));
        assert_ne!(webhook_id(&a), webhook_id(&a[..1]));
        assert!(!webhook_id(&a).contains('.'), "the spec forbids '.' in ids");
    }

    #[test]
    fn the_batch_is_one_request_with_every_record() {
        let plan = plan(&[record("t/0/1"), record("t/0/2")]);
        assert_eq!(plan.requests.len(), 1);
        assert!(plan.refused.is_empty() && plan.skipped.is_empty());
        let body: serde_json::Value = serde_json::from_slice(&plan.requests[0].body).unwrap();
        assert_eq!(body["records"][1]["id"], "t/0/2");
        assert_eq!(body["records"][0]["op"], "c");
        assert_eq!(plan.requests[0].records, 2);
    }
}

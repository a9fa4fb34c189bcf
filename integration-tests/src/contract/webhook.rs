//! A Standard Webhooks receiver: verifies signatures the way the spec's reference libraries do,
//! independently of sluice's signer.
//!
//! Reproduces: `webhook-id`, `webhook-timestamp` and `webhook-signature` required; the
//! signature list (space-separated `v1,<base64>`) checked in constant time against HMAC-SHA256
//! of `"{id}.{timestamp}.{raw body}"` keyed by the base64 part of `whsec_...`; timestamps
//! outside ±5 minutes refused; a bad signature answered 401. Faults reproduce the spec's
//! delivery outcomes: 410 (endpoint disabled), 429/502/504 (throttle, with `Retry-After`).

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use base64::Engine as _;
use hmac::{KeyInit, Mac};

use super::{json, Faults};

/// A fault to answer the next request with.
#[derive(Debug, Clone)]
pub enum Fault {
    /// This status, with `Retry-After` when given.
    Status { status: u16, retry_after_secs: Option<u64> },
}

/// One verified delivery.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub timestamp: i64,
    pub body: serde_json::Value,
}

/// The receiver's state.
pub struct WebhookState {
    key: Vec<u8>,
    /// Accepted deliveries, in arrival order (retries included).
    pub deliveries: Mutex<Vec<Delivery>>,
    /// `webhook-id`s of every request, accepted or not.
    pub seen_ids: Mutex<Vec<String>>,
    pub faults: Faults<Fault>,
}

impl WebhookState {
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().unwrap().clone()
    }

    pub fn seen_ids(&self) -> Vec<String> {
        self.seen_ids.lock().unwrap().clone()
    }
}

/// Start a receiver verifying with `secret` (`whsec_<base64>`); returns its `/hook` URL.
pub async fn start(secret: &str) -> (String, Arc<WebhookState>) {
    let key = base64::engine::general_purpose::STANDARD.decode(secret.trim_start_matches("whsec_")).expect("test secret is base64");
    let state = Arc::new(WebhookState { key, deliveries: Mutex::default(), seen_ids: Mutex::default(), faults: Faults::default() });
    let router = Router::new().route("/hook", post(hook)).with_state(Arc::clone(&state));
    (format!("{}/hook", super::serve(router).await), state)
}

async fn hook(State(state): State<Arc<WebhookState>>, headers: HeaderMap, body: axum::body::Bytes) -> axum::response::Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (Some(id), Some(timestamp), Some(signatures)) = (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature")) else {
        return json(400, vec![], serde_json::json!({"error": "missing webhook headers"}));
    };
    state.seen_ids.lock().unwrap().push(id.clone());
    let Ok(timestamp) = timestamp.parse::<i64>() else {
        return json(400, vec![], serde_json::json!({"error": "bad timestamp"}));
    };
    if (chrono::Utc::now().timestamp() - timestamp).abs() > 300 {
        return json(400, vec![], serde_json::json!({"error": "timestamp outside tolerance"}));
    }
    let valid = signatures.split(' ').filter_map(|s| s.strip_prefix("v1,")).any(|candidate| {
        let Ok(candidate) = base64::engine::general_purpose::STANDARD.decode(candidate) else { return false };
        let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&state.key).expect("any key length");
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(&body);
        mac.verify_slice(&candidate).is_ok()
    });
    if !valid {
        return json(401, vec![], serde_json::json!({"error": "invalid signature"}));
    }
    if let Some(Fault::Status { status, retry_after_secs }) = state.faults.next() {
        let headers = retry_after_secs.map(|s| vec![("retry-after", s.to_string())]).unwrap_or_default();
        return json(status, headers, serde_json::json!({"error": "injected"}));
    }
    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    state.deliveries.lock().unwrap().push(Delivery { id, timestamp, body });
    json(200, vec![], serde_json::json!({"ok": true}))
}

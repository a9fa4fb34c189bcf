//! Braze `/users/track`, as documented.
//!
//! Reproduces: `POST /users/track` with `Authorization: Bearer <REST key>` (401
//! `{"message":"Invalid API key: ..."}` otherwise); at most 75 objects across `attributes`,
//! `events` and `purchases` (400 `Max Input Length Exceeded`); `X-RateLimit-Limit`,
//! `X-RateLimit-Remaining` and `X-RateLimit-Reset` (epoch seconds) on every answer and 429 when
//! the window's allowance is spent; per-object errors in a 2xx
//! (`{"message":"success","errors":[{"type","input_array","index"}]}`) for objects with no
//! identifier or an invalid email, the other objects still processed; success answered with 201
//! (UNCONFIRMED for `/users/track`; the documented example of `/subscription/status/set`);
//! `_update_existing_only: true` never creates a user.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;

use super::{authorization, json, Faults, Recorded};

/// A fault to answer the next request with.
#[derive(Debug, Clone)]
pub enum Fault {
    /// 429 with the rate-limit headers, resetting this many seconds from now.
    RateLimited { reset_in_secs: i64 },
    /// This status with Braze's fatal-error body.
    Status(u16),
}

/// An attributes object the server applied to a user, and when: what latency measurements read
/// as Braze's acknowledgement of that object.
#[derive(Debug, Clone)]
pub struct Applied {
    pub at: std::time::Instant,
    /// The user's identifier (`external_id`, else `email`).
    pub id: String,
    /// The object as sent, without `_update_existing_only`.
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

/// The server's state.
pub struct BrazeState {
    key: String,
    /// Users by identifier (`external_id`, else `email`): their attributes.
    pub users: Mutex<HashMap<String, serde_json::Map<String, serde_json::Value>>>,
    pub requests: Mutex<Vec<Recorded>>,
    /// Every object applied to a user, in order, with its receipt time (objects for unknown
    /// users under `_update_existing_only` are not applied, so not listed).
    pub applied: Mutex<Vec<Applied>>,
    pub faults: Faults<Fault>,
    /// Requests allowed per window before 429.
    pub window_limit: Mutex<u64>,
    used: Mutex<u64>,
}

impl BrazeState {
    /// A user's attributes.
    pub fn user(&self, id: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
        self.users.lock().unwrap().get(id).cloned()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// Every object applied so far, with its receipt time.
    pub fn applied(&self) -> Vec<Applied> {
        self.applied.lock().unwrap().clone()
    }
}

/// Start a server accepting `key`.
pub async fn start(key: &str) -> (String, Arc<BrazeState>) {
    let state = Arc::new(BrazeState {
        key: key.into(),
        users: Mutex::default(),
        requests: Mutex::default(),
        applied: Mutex::default(),
        faults: Faults::default(),
        window_limit: Mutex::new(3_000),
        used: Mutex::new(0),
    });
    let router = Router::new().route("/users/track", post(track)).with_state(Arc::clone(&state));
    (super::serve(router).await, state)
}

const IDENTIFIERS: &[&str] = &["external_id", "user_alias", "braze_id", "email", "phone"];

async fn track(State(state): State<Arc<BrazeState>>, headers: HeaderMap, body: String) -> axum::response::Response {
    let body: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    state.requests.lock().unwrap().push(Recorded {
        method: "POST".into(),
        path: "/users/track".into(),
        query: None,
        authorization: authorization(&headers),
        body: body.clone(),
    });
    let limit = *state.window_limit.lock().unwrap();
    let used = *state.used.lock().unwrap();
    let now = chrono::Utc::now().timestamp();
    let rate_headers = |reset: i64, remaining: u64| {
        vec![
            ("x-ratelimit-limit", limit.to_string()),
            ("x-ratelimit-remaining", remaining.to_string()),
            ("x-ratelimit-reset", (now + reset).to_string()),
        ]
    };
    if authorization(&headers).as_deref() != Some(&format!("Bearer {}", state.key)) {
        return json(401, vec![], serde_json::json!({"message": "Invalid API key: [REDACTED]"}));
    }
    match state.faults.next() {
        Some(Fault::RateLimited { reset_in_secs }) => return json(429, rate_headers(reset_in_secs, 0), serde_json::json!({"message": "Rate Limited"})),
        Some(Fault::Status(status)) => return json(status, rate_headers(3, limit - used), serde_json::json!({"message": "injected failure"})),
        None => {}
    }
    if used >= limit {
        return json(429, rate_headers(3, 0), serde_json::json!({"message": "Rate Limited"}));
    }
    *state.used.lock().unwrap() += 1;
    let headers_out = rate_headers(3, limit - used - 1);
    let arrays = ["attributes", "events", "purchases"];
    let count: usize = arrays.iter().map(|a| body[*a].as_array().map_or(0, Vec::len)).sum();
    if count > 75 {
        return json(400, headers_out, serde_json::json!({"message": "Max Input Length Exceeded"}));
    }
    let mut errors = Vec::new();
    let mut processed = 0;
    for (index, object) in body["attributes"].as_array().cloned().unwrap_or_default().into_iter().enumerate() {
        let Some(object) = object.as_object().cloned() else { continue };
        let Some(id) = object.get("external_id").or(object.get("email")).and_then(|v| v.as_str()).map(str::to_string) else {
            if !IDENTIFIERS.iter().any(|k| object.contains_key(*k)) {
                errors.push(serde_json::json!({"type": "'external_id', 'braze_id', 'user_alias', 'email' or 'phone' is required",
                    "input_array": "attributes", "index": index}));
            }
            continue;
        };
        if object.get("email").and_then(|v| v.as_str()).is_some_and(|e| !e.contains('@')) {
            errors.push(serde_json::json!({"type": "'email' is invalid", "input_array": "attributes", "index": index}));
            continue;
        }
        let update_only = object.get("_update_existing_only").and_then(|v| v.as_bool()).unwrap_or(true);
        let mut users = state.users.lock().unwrap();
        if update_only && !users.contains_key(&id) {
            continue;
        }
        let user = users.entry(id.clone()).or_default();
        let mut attributes = object;
        attributes.remove("_update_existing_only");
        for (name, value) in &attributes {
            user.insert(name.clone(), value.clone());
        }
        drop(users);
        state.applied.lock().unwrap().push(Applied { at: std::time::Instant::now(), id, attributes });
        processed += 1;
    }
    let mut answer = serde_json::json!({"message": "success", "attributes_processed": processed});
    if !errors.is_empty() {
        answer["errors"] = errors.into();
    }
    json(201, headers_out, answer)
}

//! HubSpot CRM v3 contacts batch upsert, as documented.
//!
//! Reproduces: `POST /crm/v3/objects/<type>/batch/upsert` and the date-versioned
//! `/crm/objects/2026-03/<type>/batch/upsert`; `Authorization: Bearer` (401
//! `INVALID_AUTHENTICATION` otherwise); at most 100 inputs (400 `VALIDATION_ERROR`); duplicate ids
//! in one batch refused (400); `X-HubSpot-RateLimit-*` headers on every answer; a rolling
//! ten-second window and a daily allowance, each answered with 429 and its `policyName`
//! (`TEN_SECONDLY_ROLLING`, `DAILY`) when spent; an input with an invalid email refuses the
//! whole batch (400) unless every input has an `objectWriteTraceId`, in which case the answer
//! is 207 with `errors[].context.objectWriteTraceId` and the valid inputs are applied (207 for
//! upsert is UNCONFIRMED; the documented batch-create behaviour is reproduced); `new` is true
//! only when a record was created.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;

use super::{authorization, json, Faults, Recorded};

/// A fault to answer the next request with.
#[derive(Debug, Clone)]
pub enum Fault {
    /// 429 `TEN_SECONDLY_ROLLING`.
    TenSecondly,
    /// 429 `DAILY`.
    Daily,
    /// This status with HubSpot's generic error body.
    Status(u16),
}

/// The server's state: what it holds and what it saw.
pub struct HubSpotState {
    token: String,
    /// Contacts by their `email` (the unique property used in tests): properties.
    pub contacts: Mutex<HashMap<String, serde_json::Map<String, serde_json::Value>>>,
    pub requests: Mutex<Vec<Recorded>>,
    pub faults: Faults<Fault>,
    /// Requests allowed per rolling ten seconds.
    pub ten_secondly_max: Mutex<usize>,
    /// Requests allowed per day.
    pub daily_max: Mutex<usize>,
    window: Mutex<VecDeque<Instant>>,
    daily_used: Mutex<usize>,
    next_id: Mutex<u64>,
}

impl HubSpotState {
    /// A contact's properties.
    pub fn contact(&self, email: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
        self.contacts.lock().unwrap().get(email).cloned()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

/// Start a server accepting `token`; returns its base URL and state.
pub async fn start(token: &str) -> (String, Arc<HubSpotState>) {
    let state = Arc::new(HubSpotState {
        token: token.into(),
        contacts: Mutex::default(),
        requests: Mutex::default(),
        faults: Faults::default(),
        ten_secondly_max: Mutex::new(190),
        daily_max: Mutex::new(1_000_000),
        window: Mutex::default(),
        daily_used: Mutex::new(0),
        next_id: Mutex::new(500),
    });
    let router = Router::new()
        .route("/crm/v3/objects/{object}/batch/upsert", post(upsert))
        .route("/crm/objects/2026-03/{object}/batch/upsert", post(upsert))
        .with_state(Arc::clone(&state));
    (super::serve(router).await, state)
}

fn error(status: u16, headers: Vec<(&'static str, String)>, category: &str, message: &str) -> axum::response::Response {
    json(
        status,
        headers,
        serde_json::json!({"status": "error", "message": message, "category": category, "correlationId": "c93e06a4-7d61-4c3e-b63f-edf486fc6e90"}),
    )
}

fn rate_limited(policy: &str, headers: Vec<(&'static str, String)>) -> axum::response::Response {
    let (message, group) = match policy {
        "DAILY" => ("You have reached your daily limit.", "publicapi:private-app-api-calls-daily:6748263"),
        _ => ("You have reached your ten_secondly_rolling limit.", "publicapi:private-app-api-calls-ten-secondly:6748263"),
    };
    json(
        429,
        headers,
        serde_json::json!({"status": "error", "message": message, "errorType": "RATE_LIMIT",
            "correlationId": "c93e06a4-7d61-4c3e-b63f-edf486fc6e90", "policyName": policy, "groupName": group}),
    )
}

async fn upsert(State(state): State<Arc<HubSpotState>>, Path(_object): Path<String>, headers: HeaderMap, body: String) -> axum::response::Response {
    let body: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    state.requests.lock().unwrap().push(Recorded {
        method: "POST".into(),
        path: "batch/upsert".into(),
        query: None,
        authorization: authorization(&headers),
        body: body.clone(),
    });
    if authorization(&headers).as_deref() != Some(&format!("Bearer {}", state.token)) {
        return error(
            401,
            vec![],
            "INVALID_AUTHENTICATION",
            "Authentication credentials not found. This API supports OAuth 2.0 authentication.",
        );
    }
    // The rolling window and daily count, with the headers HubSpot sends.
    let ten_max = *state.ten_secondly_max.lock().unwrap();
    let daily_max = *state.daily_max.lock().unwrap();
    let now = Instant::now();
    let in_window = {
        let mut window = state.window.lock().unwrap();
        while window.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(10)) {
            window.pop_front();
        }
        window.len()
    };
    let daily_used = *state.daily_used.lock().unwrap();
    let limit_headers = vec![
        ("x-hubspot-ratelimit-interval-milliseconds", "10000".to_string()),
        ("x-hubspot-ratelimit-max", ten_max.to_string()),
        ("x-hubspot-ratelimit-remaining", ten_max.saturating_sub(in_window + 1).to_string()),
        ("x-hubspot-ratelimit-daily", daily_max.to_string()),
        ("x-hubspot-ratelimit-daily-remaining", daily_max.saturating_sub(daily_used + 1).to_string()),
    ];
    match state.faults.next() {
        Some(Fault::TenSecondly) => return rate_limited("TEN_SECONDLY_ROLLING", limit_headers),
        Some(Fault::Daily) => return rate_limited("DAILY", limit_headers),
        Some(Fault::Status(status)) => return error(status, limit_headers, "INTERNAL_ERROR", "injected failure"),
        None => {}
    }
    if daily_used >= daily_max {
        return rate_limited("DAILY", limit_headers);
    }
    if in_window >= ten_max {
        return rate_limited("TEN_SECONDLY_ROLLING", limit_headers);
    }
    state.window.lock().unwrap().push_back(now);
    *state.daily_used.lock().unwrap() += 1;

    let inputs = body["inputs"].as_array().cloned().unwrap_or_default();
    if inputs.is_empty() || inputs.len() > 100 {
        return error(400, limit_headers, "VALIDATION_ERROR", "inputs must hold between 1 and 100 items");
    }
    let mut seen = std::collections::HashSet::new();
    for input in &inputs {
        if !seen.insert((input["idProperty"].to_string(), input["id"].to_string())) {
            return error(400, limit_headers, "VALIDATION_ERROR", "Duplicate IDs found in batch input");
        }
    }
    let invalid = |input: &serde_json::Value| {
        let bad = |v: &serde_json::Value| v.as_str().is_some_and(|s| !s.contains('@'));
        (input["idProperty"] == "email" && bad(&input["id"])) || bad(&input["properties"]["email"])
    };
    let multi_status = inputs.iter().all(|i| i["objectWriteTraceId"].is_string());
    if inputs.iter().any(invalid) && !multi_status {
        return json(
            400,
            limit_headers,
            serde_json::json!({"status": "error", "message": "Property values were not valid", "category": "VALIDATION_ERROR",
                "errors": [{"message": "invalid email", "in": "email"}], "correlationId": "c93e06a4"}),
        );
    }
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for input in &inputs {
        if invalid(input) {
            errors.push(serde_json::json!({"status": "error", "category": "VALIDATION_ERROR", "message": "Property values were not valid",
                "context": {"objectWriteTraceId": [input["objectWriteTraceId"]]},
                "errors": [{"message": "is not a valid email", "code": "INVALID_EMAIL", "in": "email"}]}));
            continue;
        }
        let id = input["id"].as_str().unwrap_or_default().to_string();
        let properties = input["properties"].as_object().cloned().unwrap_or_default();
        let mut contacts = state.contacts.lock().unwrap();
        let (mut current, new) = match contacts.remove(&id) {
            Some(existing) => (existing, false),
            None => {
                let mut fresh = serde_json::Map::new();
                let mut next = state.next_id.lock().unwrap();
                *next += 1;
                fresh.insert("hs_object_id".into(), next.to_string().into());
                fresh.insert("email".into(), id.clone().into());
                (fresh, true)
            }
        };
        current.extend(properties);
        let email = current["email"].as_str().unwrap_or(&id).to_string();
        results.push(serde_json::json!({"id": current["hs_object_id"], "new": new, "archived": false, "properties": current,
            "objectWriteTraceId": input["objectWriteTraceId"], "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z"}));
        contacts.insert(email, current);
    }
    let mut answer = serde_json::json!({"status": "COMPLETE", "results": results, "startedAt": "2026-01-01T00:00:00Z", "completedAt": "2026-01-01T00:00:01Z"});
    if errors.is_empty() {
        return json(200, limit_headers, answer);
    }
    answer["numErrors"] = errors.len().into();
    answer["errors"] = errors.into();
    json(207, limit_headers, answer)
}

//! HubSpot CRM v3 contacts batch endpoints, as documented.
//!
//! Reproduces, under `/crm/v3/objects/<type>/batch/` (upsert also under the date-versioned
//! `/crm/objects/2026-03/<type>/batch/upsert`), with `Authorization: Bearer` (401
//! `INVALID_AUTHENTICATION` otherwise), at most 100 inputs per request (400 `VALIDATION_ERROR`),
//! duplicate ids in one batch refused (400), `X-HubSpot-RateLimit-*` headers on every answer, a
//! rolling ten-second window and a daily allowance shared by every endpoint, each answered with
//! 429 and its `policyName` (`TEN_SECONDLY_ROLLING`, `DAILY`) when spent:
//! - `upsert` by `idProperty`: an input with an invalid email refuses the whole batch (400)
//!   unless every input has an `objectWriteTraceId`, in which case the answer is 207 with
//!   `errors[].context.objectWriteTraceId` and the valid inputs are applied (207 for upsert is
//!   UNCONFIRMED; the documented batch-create behaviour is reproduced); `new` is true only when
//!   a record was created.
//! - `read` by `idProperty` (`email` or `hs_object_id`): the records found in `results` (id and
//!   the requested properties); ids not found make it a 207 with one `OBJECT_NOT_FOUND` error
//!   listing them in `context.ids` (HubSpot's batch-read shape).
//! - `update` by record id: a record that does not exist is an `OBJECT_NOT_FOUND` error of a
//!   207 (UNCONFIRMED: the status for a missing id is not documented; never created).
//! - `create`: an input whose email exists conflicts: with trace ids on every input a 207 with
//!   a `CONFLICT` error per such input (the others created), else 409 `CONFLICT` "Contact already
//!   exists. Existing ID: n" for the whole batch, nothing created (only the first conflict is
//!   reported, as documented).
//! - `archive` by record id: 204 without a body; an id that does not exist is ignored
//!   (UNCONFIRMED).

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
    /// Contacts by their `email` (the unique property used in tests): properties, including
    /// `hs_object_id`, the record id.
    pub contacts: Mutex<HashMap<String, serde_json::Map<String, serde_json::Value>>>,
    /// Emails of the contacts archived, in order.
    pub archived: Mutex<Vec<String>>,
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

    /// Add a contact with these properties (its `email` among them), as if created earlier;
    /// returns its record id.
    pub fn seed(&self, properties: serde_json::Value) -> String {
        let mut properties = properties.as_object().cloned().expect("properties are an object");
        let email = properties["email"].as_str().expect("a seeded contact has an email").to_string();
        let id = self.new_id();
        properties.insert("hs_object_id".into(), id.clone().into());
        self.contacts.lock().unwrap().insert(email, properties);
        id
    }

    /// The email of every contact, sorted.
    pub fn emails(&self) -> Vec<String> {
        let mut emails: Vec<String> = self.contacts.lock().unwrap().keys().cloned().collect();
        emails.sort();
        emails
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// The paths (`batch/upsert`, `batch/read`, ...) of every request, in order.
    pub fn paths(&self) -> Vec<String> {
        self.requests.lock().unwrap().iter().map(|r| r.path.clone()).collect()
    }

    fn new_id(&self) -> String {
        let mut next = self.next_id.lock().unwrap();
        *next += 1;
        next.to_string()
    }

    /// The email of the contact with record id `id`.
    fn email_of(&self, id: &str) -> Option<String> {
        self.contacts.lock().unwrap().iter().find(|(_, c)| c["hs_object_id"] == id).map(|(email, _)| email.clone())
    }
}

/// Start a server accepting `token`; returns its base URL and state.
pub async fn start(token: &str) -> (String, Arc<HubSpotState>) {
    let state = Arc::new(HubSpotState {
        token: token.into(),
        contacts: Mutex::default(),
        archived: Mutex::default(),
        requests: Mutex::default(),
        faults: Faults::default(),
        ten_secondly_max: Mutex::new(190),
        daily_max: Mutex::new(1_000_000),
        window: Mutex::default(),
        daily_used: Mutex::new(0),
        next_id: Mutex::new(500),
    });
    let router = Router::new()
        .route("/crm/v3/objects/{object}/batch/{operation}", post(batch))
        .route("/crm/objects/2026-03/{object}/batch/upsert", post(upsert_dated))
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

type Headers = Vec<(&'static str, String)>;

async fn upsert_dated(state: State<Arc<HubSpotState>>, Path(object): Path<String>, headers: HeaderMap, body: String) -> axum::response::Response {
    batch(state, Path((object, "upsert".to_string())), headers, body).await
}

async fn batch(
    State(state): State<Arc<HubSpotState>>,
    Path((_object, operation)): Path<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    let body: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    let limit_headers = match admit(&state, &format!("batch/{operation}"), &headers, &body) {
        Ok(limit_headers) => limit_headers,
        Err(refused) => return *refused,
    };
    let inputs = body["inputs"].as_array().cloned().unwrap_or_default();
    if inputs.is_empty() || inputs.len() > 100 {
        return error(400, limit_headers, "VALIDATION_ERROR", "inputs must hold between 1 and 100 items");
    }
    let mut seen = std::collections::HashSet::new();
    for input in &inputs {
        if input.get("id").is_some() && !seen.insert((input["idProperty"].to_string(), input["id"].to_string())) {
            return error(400, limit_headers, "VALIDATION_ERROR", "Duplicate IDs found in batch input");
        }
    }
    match operation.as_str() {
        "upsert" => write(&state, limit_headers, &inputs, Write::Upsert),
        "update" => write(&state, limit_headers, &inputs, Write::Update),
        "create" => write(&state, limit_headers, &inputs, Write::Create),
        "read" => read(&state, limit_headers, &body, &inputs),
        "archive" => archive(&state, limit_headers, &inputs),
        _ => error(404, limit_headers, "OBJECT_NOT_FOUND", "unknown batch operation"),
    }
}

/// Record the request, then check the token, the injected faults and the rate limits; the
/// rate-limit headers of the answer, or the answer refusing it.
fn admit(state: &HubSpotState, path: &str, headers: &HeaderMap, body: &serde_json::Value) -> Result<Headers, Box<axum::response::Response>> {
    state.requests.lock().unwrap().push(Recorded {
        method: "POST".into(),
        path: path.into(),
        query: None,
        authorization: authorization(headers),
        body: body.clone(),
    });
    if authorization(headers).as_deref() != Some(&format!("Bearer {}", state.token)) {
        return Err(Box::new(error(401, vec![], "INVALID_AUTHENTICATION", "Authentication credentials not found. This API supports OAuth 2.0 authentication.")));
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
        Some(Fault::TenSecondly) => return Err(Box::new(rate_limited("TEN_SECONDLY_ROLLING", limit_headers))),
        Some(Fault::Daily) => return Err(Box::new(rate_limited("DAILY", limit_headers))),
        Some(Fault::Status(status)) => return Err(Box::new(error(status, limit_headers, "INTERNAL_ERROR", "injected failure"))),
        None => {}
    }
    if daily_used >= daily_max {
        return Err(Box::new(rate_limited("DAILY", limit_headers)));
    }
    if in_window >= ten_max {
        return Err(Box::new(rate_limited("TEN_SECONDLY_ROLLING", limit_headers)));
    }
    state.window.lock().unwrap().push_back(now);
    *state.daily_used.lock().unwrap() += 1;
    Ok(limit_headers)
}

/// The writing endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    Upsert,
    Update,
    Create,
}

/// A contact as HubSpot answers it in `results`.
fn result(contact: &serde_json::Map<String, serde_json::Value>, new: Option<bool>, trace: &serde_json::Value) -> serde_json::Value {
    let mut result = serde_json::json!({"id": contact["hs_object_id"], "archived": false, "properties": contact,
        "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z"});
    if let Some(new) = new {
        result["new"] = new.into();
    }
    if !trace.is_null() {
        result["objectWriteTraceId"] = trace.clone();
    }
    result
}

/// What one input of a write did.
enum Outcome {
    /// Applied: its entry of `results`.
    Applied(serde_json::Value),
    /// Refused: its entry of `errors`.
    Refused(serde_json::Value),
    /// An update of a record id that does not exist.
    NotFound(serde_json::Value),
}

/// Whether an input carries an invalid email (as its upsert id, or as a property).
fn invalid_email(kind: Write, input: &serde_json::Value) -> bool {
    let bad = |v: &serde_json::Value| v.as_str().is_some_and(|s| !s.contains('@'));
    (kind == Write::Upsert && input["idProperty"] == "email" && bad(&input["id"])) || bad(&input["properties"]["email"])
}

/// The record id of the contact a create's input would duplicate.
fn conflict(state: &HubSpotState, input: &serde_json::Value) -> Option<serde_json::Value> {
    let email = input["properties"]["email"].as_str().unwrap_or_default();
    state.contacts.lock().unwrap().get(email).map(|c| c["hs_object_id"].clone())
}

/// Upsert (by `idProperty`), update (by record id) or create.
fn write(state: &HubSpotState, limit_headers: Headers, inputs: &[serde_json::Value], kind: Write) -> axum::response::Response {
    // Without a trace id on every input, one bad input (or a conflict) refuses the batch.
    if !inputs.iter().all(|i| i["objectWriteTraceId"].is_string()) {
        if inputs.iter().any(|i| invalid_email(kind, i)) {
            return json(
                400,
                limit_headers,
                serde_json::json!({"status": "error", "message": "Property values were not valid", "category": "VALIDATION_ERROR",
                    "errors": [{"message": "invalid email", "in": "email"}], "correlationId": "c93e06a4"}),
            );
        }
        if let Some(existing) = inputs.iter().filter(|_| kind == Write::Create).find_map(|i| conflict(state, i)) {
            return error(409, limit_headers, "CONFLICT", &format!("Contact already exists. Existing ID: {}", existing.as_str().unwrap_or_default()));
        }
    }
    let (mut results, mut errors, mut not_found) = (Vec::new(), Vec::new(), Vec::new());
    for input in inputs {
        match write_one(state, input, kind) {
            Outcome::Applied(result) => results.push(result),
            Outcome::Refused(error) => errors.push(error),
            Outcome::NotFound(id) => not_found.push(id),
        }
    }
    if !not_found.is_empty() {
        errors.push(serde_json::json!({"status": "error", "category": "OBJECT_NOT_FOUND",
            "message": "Could not get some CONTACT objects, they may be deleted or not exist. Check that ids are valid.",
            "context": {"ids": not_found}}));
    }
    let mut answer = serde_json::json!({"status": "COMPLETE", "results": results, "startedAt": "2026-01-01T00:00:00Z", "completedAt": "2026-01-01T00:00:01Z"});
    if errors.is_empty() {
        return json(if kind == Write::Create { 201 } else { 200 }, limit_headers, answer);
    }
    answer["numErrors"] = errors.len().into();
    answer["errors"] = errors.into();
    json(207, limit_headers, answer)
}

/// Apply one input of a write.
fn write_one(state: &HubSpotState, input: &serde_json::Value, kind: Write) -> Outcome {
    let trace = &input["objectWriteTraceId"];
    if invalid_email(kind, input) {
        return Outcome::Refused(serde_json::json!({"status": "error", "category": "VALIDATION_ERROR", "message": "Property values were not valid",
            "context": {"objectWriteTraceId": [trace]},
            "errors": [{"message": "is not a valid email", "code": "INVALID_EMAIL", "in": "email"}]}));
    }
    let existing = match kind {
        Write::Upsert => input["id"].as_str().map(str::to_string).filter(|email| state.contacts.lock().unwrap().contains_key(email)),
        Write::Update => match state.email_of(input["id"].as_str().unwrap_or_default()) {
            Some(email) => Some(email),
            None => return Outcome::NotFound(input["id"].clone()),
        },
        Write::Create => {
            if let Some(existing) = conflict(state, input) {
                return Outcome::Refused(serde_json::json!({"status": "error", "category": "CONFLICT",
                    "message": format!("Contact already exists. Existing ID: {}", existing.as_str().unwrap_or_default()),
                    "context": {"objectWriteTraceId": [trace]}}));
            }
            None
        }
    };
    let mut contacts = state.contacts.lock().unwrap();
    let (mut current, new) = match existing.and_then(|email| contacts.remove(&email)) {
        Some(current) => (current, false),
        None => {
            let mut fresh = serde_json::Map::new();
            fresh.insert("hs_object_id".into(), state.new_id().into());
            if let Some(email) = input["id"].as_str().filter(|_| kind == Write::Upsert) {
                fresh.insert("email".into(), email.into());
            }
            (fresh, true)
        }
    };
    current.extend(input["properties"].as_object().cloned().unwrap_or_default());
    let email = current["email"].as_str().unwrap_or_default().to_string();
    let result = result(&current, (kind == Write::Upsert).then_some(new), trace);
    contacts.insert(email, current);
    Outcome::Applied(result)
}

/// Read by `idProperty`: the records found, and a 207 naming the ids not found.
fn read(state: &HubSpotState, limit_headers: Headers, body: &serde_json::Value, inputs: &[serde_json::Value]) -> axum::response::Response {
    let id_property = body["idProperty"].as_str().unwrap_or("hs_object_id");
    if !matches!(id_property, "email" | "hs_object_id") {
        return error(400, limit_headers, "VALIDATION_ERROR", &format!("{id_property} is not a unique property"));
    }
    let wanted: Vec<&str> = body["properties"].as_array().into_iter().flatten().filter_map(|p| p.as_str()).collect();
    let contacts = state.contacts.lock().unwrap();
    let mut results = Vec::new();
    let mut missing = Vec::new();
    for input in inputs {
        let id = input["id"].as_str().unwrap_or_default();
        match contacts.values().find(|c| c.get(id_property).and_then(|v| v.as_str()) == Some(id)) {
            Some(contact) => {
                let mut properties: serde_json::Map<String, serde_json::Value> =
                    contact.iter().filter(|(name, _)| wanted.contains(&name.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
                properties.insert("hs_object_id".into(), contact["hs_object_id"].clone());
                results.push(serde_json::json!({"id": contact["hs_object_id"], "properties": properties, "archived": false,
                    "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z"}));
            }
            None => missing.push(id.to_string()),
        }
    }
    let mut answer = serde_json::json!({"status": "COMPLETE", "results": results, "startedAt": "2026-01-01T00:00:00Z", "completedAt": "2026-01-01T00:00:01Z"});
    if missing.is_empty() {
        return json(200, limit_headers, answer);
    }
    answer["numErrors"] = 1.into();
    answer["errors"] = serde_json::json!([{"status": "error", "category": "OBJECT_NOT_FOUND",
        "message": "Could not get some CONTACT objects, they may be deleted or not exist. Check that ids are valid.",
        "context": {"ids": missing}}]);
    json(207, limit_headers, answer)
}

/// Archive by record id: 204; ids that do not exist are ignored.
fn archive(state: &HubSpotState, limit_headers: Headers, inputs: &[serde_json::Value]) -> axum::response::Response {
    for input in inputs {
        if let Some(email) = state.email_of(input["id"].as_str().unwrap_or_default()) {
            state.contacts.lock().unwrap().remove(&email);
            state.archived.lock().unwrap().push(email);
        }
    }
    let mut response = axum::response::Response::new(axum::body::Body::empty());
    *response.status_mut() = axum::http::StatusCode::NO_CONTENT;
    for (name, value) in limit_headers {
        response.headers_mut().insert(name, value.parse().expect("header value"));
    }
    response
}

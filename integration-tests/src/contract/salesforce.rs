//! Salesforce REST sObject Collections upsert by external ID, as documented.
//!
//! Reproduces: `PATCH /services/data/<version>/composite/sobjects/<SObject>/<ExternalIdField>`
//! with `Authorization: Bearer` (401 `[{"errorCode":"INVALID_SESSION_ID"}]` otherwise); at most
//! 200 records (400); `Sforce-Limit-Info: api-usage=n/m` on every answer and 403
//! `REQUEST_LIMIT_EXCEEDED` when the rolling allocation is spent (no 429, no `Retry-After`);
//! a 200 array of results in request order, `success:false` with `errors[{statusCode,message,
//! fields}]` per refused record (`INVALID_TYPE`, `INVALID_FIELD` for a set `Id`,
//! `REQUIRED_FIELD_MISSING` on create, `UNABLE_TO_LOCK_ROW` for locked external ids);
//! `allOrNone: true` rolls the valid records back (`ALL_OR_NONE_OPERATION_ROLLED_BACK`);
//! `created` true only on insert.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::patch;
use axum::Router;

use super::{authorization, json, Faults, Recorded};

/// A fault to answer the next request with.
#[derive(Debug, Clone)]
pub enum Fault {
    /// 403 `REQUEST_LIMIT_EXCEEDED` while the allocation is not spent (the concurrency cause).
    ConcurrentLimit,
    /// This status with a Salesforce error array.
    Status(u16, &'static str),
}

/// The server's state.
pub struct SalesforceState {
    token: String,
    /// Records by external-ID value: (record id, fields).
    pub records: Mutex<HashMap<String, (String, serde_json::Map<String, serde_json::Value>)>>,
    pub requests: Mutex<Vec<Recorded>>,
    pub faults: Faults<Fault>,
    /// Fields a new record must have.
    pub required_on_create: Mutex<Vec<String>>,
    /// External ids whose rows are locked (answered `UNABLE_TO_LOCK_ROW`).
    pub locked: Mutex<HashSet<String>>,
    /// The rolling 24-hour allocation and what is used of it.
    pub allocation: Mutex<(u64, u64)>,
    next_id: Mutex<u64>,
}

impl SalesforceState {
    /// A record's fields by external-ID value.
    pub fn record(&self, external_id: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
        self.records.lock().unwrap().get(external_id).map(|(_, fields)| fields.clone())
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

/// Start a server accepting `token`.
pub async fn start(token: &str) -> (String, Arc<SalesforceState>) {
    let state = Arc::new(SalesforceState {
        token: token.into(),
        records: Mutex::default(),
        requests: Mutex::default(),
        faults: Faults::default(),
        required_on_create: Mutex::new(vec!["LastName".into()]),
        locked: Mutex::default(),
        allocation: Mutex::new((0, 5_000)),
        next_id: Mutex::new(0),
    });
    let router = Router::new()
        .route("/services/data/{version}/composite/sobjects/{sobject}/{field}", patch(upsert))
        .with_state(Arc::clone(&state));
    (super::serve(router).await, state)
}

fn errors(status: u16, headers: Vec<(&'static str, String)>, code: &str, message: &str) -> axum::response::Response {
    json(status, headers, serde_json::json!([{"message": message, "errorCode": code}]))
}

fn failed(code: &str, message: &str, fields: &[&str]) -> serde_json::Value {
    serde_json::json!({"success": false, "errors": [{"statusCode": code, "message": message, "fields": fields}]})
}

async fn upsert(
    State(state): State<Arc<SalesforceState>>,
    Path((_version, sobject, field)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    let body: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    state.requests.lock().unwrap().push(Recorded {
        method: "PATCH".into(),
        path: format!("/composite/sobjects/{sobject}/{field}"),
        query: None,
        authorization: authorization(&headers),
        body: body.clone(),
    });
    if authorization(&headers).as_deref() != Some(&format!("Bearer {}", state.token)) {
        return errors(401, vec![], "INVALID_SESSION_ID", "Session expired or invalid");
    }
    let (used, limit) = *state.allocation.lock().unwrap();
    let usage = vec![("sforce-limit-info", format!("api-usage={used}/{limit}"))];
    match state.faults.next() {
        Some(Fault::ConcurrentLimit) => return errors(403, usage, "REQUEST_LIMIT_EXCEEDED", "ConcurrentPerOrgLongTxn Limit exceeded."),
        Some(Fault::Status(status, code)) => return errors(status, usage, code, "injected failure"),
        None => {}
    }
    if used >= limit {
        return errors(403, usage, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.");
    }
    state.allocation.lock().unwrap().0 += 1;
    let usage = vec![("sforce-limit-info", format!("api-usage={}/{limit}", used + 1))];
    let Some(records) = body["records"].as_array().cloned() else {
        return errors(400, usage, "JSON_PARSER_ERROR", "records is required");
    };
    if records.len() > 200 {
        return errors(400, usage, "EXCEEDED_ID_LIMIT", "record limit exceeded: at most 200 records");
    }
    let all_or_none = body["allOrNone"].as_bool().unwrap_or(false);
    let required = state.required_on_create.lock().unwrap().clone();
    let locked = state.locked.lock().unwrap().clone();
    let mut staged = state.records.lock().unwrap().clone();
    let mut results = Vec::new();
    for record in &records {
        let fields = record.as_object().cloned().unwrap_or_default();
        if fields.get("attributes").and_then(|a| a["type"].as_str()) != Some(sobject.as_str()) {
            results.push(failed("INVALID_TYPE", "attributes.type must name the sObject in the URI", &[]));
            continue;
        }
        if fields.contains_key("Id") {
            results.push(failed("INVALID_FIELD", "Id cannot be set on upsert by external ID", &["Id"]));
            continue;
        }
        let Some(external_id) = fields.get(&field).and_then(|v| v.as_str()).map(str::to_string) else {
            results.push(failed("MISSING_ARGUMENT", &format!("{field} not specified"), &[&field]));
            continue;
        };
        if locked.contains(&external_id) {
            results.push(failed("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record", &[]));
            continue;
        }
        let existing = staged.get(&external_id).cloned();
        if existing.is_none() {
            let missing: Vec<&str> = required.iter().filter(|f| fields.get(*f).is_none_or(|v| v.is_null())).map(String::as_str).collect();
            if !missing.is_empty() {
                results.push(failed("REQUIRED_FIELD_MISSING", &format!("Required fields are missing: [{}]", missing.join(", ")), &missing));
                continue;
            }
        }
        let created = existing.is_none();
        let (id, mut current) = existing.unwrap_or_else(|| {
            let mut next = state.next_id.lock().unwrap();
            *next += 1;
            (format!("003000000000{:06}", *next), serde_json::Map::new())
        });
        for (name, value) in fields {
            if name != "attributes" {
                current.insert(name, value);
            }
        }
        staged.insert(external_id, (id.clone(), current));
        results.push(serde_json::json!({"id": id, "success": true, "errors": [], "created": created}));
    }
    let any_failed = results.iter().any(|r| r["success"] == false);
    if all_or_none && any_failed {
        for result in results.iter_mut().filter(|r| r["success"] == true) {
            *result = failed(
                "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                "Record rolled back because not all records were valid and the request was using AllOrNone header",
                &[],
            );
        }
    } else {
        *state.records.lock().unwrap() = staged;
    }
    json(200, usage, serde_json::Value::Array(results))
}

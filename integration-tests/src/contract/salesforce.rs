//! Salesforce REST sObject Collections upsert by external ID, SOQL query and sObject
//! Collections delete, as documented.
//!
//! Reproduces, under `/services/data/<version>`, with `Authorization: Bearer` (401
//! `[{"errorCode":"INVALID_SESSION_ID"}]` otherwise), `Sforce-Limit-Info: api-usage=n/m` on every
//! answer and 403 `REQUEST_LIMIT_EXCEEDED` when the rolling allocation is spent (no 429, no
//! `Retry-After`; every call counts):
//! - `PATCH /composite/sobjects/<SObject>/<ExternalIdField>`: at most 200 records (400); a 200
//!   array of results in request order, `success:false` with `errors[{statusCode,message,
//!   fields}]` per refused record (`INVALID_TYPE`, `INVALID_FIELD` for a set `Id`,
//!   `REQUIRED_FIELD_MISSING` on create, `UNABLE_TO_LOCK_ROW` for locked external ids);
//!   `allOrNone: true` rolls the valid records back (`ALL_OR_NONE_OPERATION_ROLLED_BACK`);
//!   `created` true only on insert.
//! - `GET /query?q=SELECT Id, <f> FROM <SObject> WHERE <f> IN ('...', ...)`: the query form
//!   sluice sends (string literals with `\'` and `\\` escapes); anything else is 400
//!   `MALFORMED_QUERY`. Answered `{"totalSize","done":true,"records":[{"attributes":{"type",
//!   "url"},"Id",<f>}]}`.
//! - `DELETE /composite/sobjects?ids=<Id>,...&allOrNone=<bool>`: at most 200 ids (400
//!   `EXCEEDED_ID_LIMIT`); one result per id, in order: `{"id","success":true,"errors":[]}`, or
//!   `success:false` with `ENTITY_IS_DELETED` (deleted before: in the recycle bin),
//!   `DELETE_FAILED` (an undeletable record, e.g. one with related cases), `MALFORMED_ID` (an id
//!   it never issued); `allOrNone: true` rolls the others back.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::routing::{delete, get, patch};
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

/// A record: its id and fields.
pub type Record = (String, serde_json::Map<String, serde_json::Value>);

/// The server's state.
pub struct SalesforceState {
    token: String,
    /// Records by external-ID value.
    pub records: Mutex<HashMap<String, Record>>,
    pub requests: Mutex<Vec<Recorded>>,
    pub faults: Faults<Fault>,
    /// Fields a new record must have.
    pub required_on_create: Mutex<Vec<String>>,
    /// External ids whose rows are locked (answered `UNABLE_TO_LOCK_ROW`).
    pub locked: Mutex<HashSet<String>>,
    /// External ids whose records cannot be deleted (answered `DELETE_FAILED`).
    pub undeletable: Mutex<HashSet<String>>,
    /// Ids of deleted records (in the recycle bin), by external id, in deletion order.
    pub deleted: Mutex<Vec<(String, String)>>,
    /// The rolling 24-hour allocation and what is used of it.
    pub allocation: Mutex<(u64, u64)>,
    next_id: Mutex<u64>,
}

impl SalesforceState {
    /// A record's fields by external-ID value.
    pub fn record(&self, external_id: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
        self.records.lock().unwrap().get(external_id).map(|(_, fields)| fields.clone())
    }

    /// Add a record with these fields (the external-ID field among them, for queries) under an
    /// external id, as if created earlier; returns its record id.
    pub fn seed(&self, external_id: &str, fields: serde_json::Value) -> String {
        let id = self.new_id();
        self.records.lock().unwrap().insert(external_id.into(), (id.clone(), fields.as_object().cloned().expect("fields are an object")));
        id
    }

    /// The external id of every record, sorted.
    pub fn external_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.records.lock().unwrap().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The external ids of the deleted records, in deletion order.
    pub fn deleted(&self) -> Vec<String> {
        self.deleted.lock().unwrap().iter().map(|(external, _)| external.clone()).collect()
    }

    fn new_id(&self) -> String {
        let mut next = self.next_id.lock().unwrap();
        *next += 1;
        format!("003000000000{:06}", *next)
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
        undeletable: Mutex::default(),
        deleted: Mutex::default(),
        allocation: Mutex::new((0, 5_000)),
        next_id: Mutex::new(0),
    });
    let router = Router::new()
        .route("/services/data/{version}/composite/sobjects/{sobject}/{field}", patch(upsert))
        .route("/services/data/{version}/query", get(query))
        .route("/services/data/{version}/composite/sobjects", delete(delete_records))
        .with_state(Arc::clone(&state));
    (super::serve(router).await, state)
}

fn errors(status: u16, headers: Vec<(&'static str, String)>, code: &str, message: &str) -> axum::response::Response {
    json(status, headers, serde_json::json!([{"message": message, "errorCode": code}]))
}

fn failed(code: &str, message: &str, fields: &[&str]) -> serde_json::Value {
    serde_json::json!({"success": false, "errors": [{"statusCode": code, "message": message, "fields": fields}]})
}

type Headers = Vec<(&'static str, String)>;

/// Record the request, then check the token, the injected faults and the allocation (every
/// call counts); the `Sforce-Limit-Info` header of the answer, or the answer refusing it.
fn admit(state: &SalesforceState, recorded: Recorded, headers: &HeaderMap) -> Result<Headers, Box<axum::response::Response>> {
    state.requests.lock().unwrap().push(recorded);
    if authorization(headers).as_deref() != Some(&format!("Bearer {}", state.token)) {
        return Err(Box::new(errors(401, vec![], "INVALID_SESSION_ID", "Session expired or invalid")));
    }
    let (used, limit) = *state.allocation.lock().unwrap();
    let usage = vec![("sforce-limit-info", format!("api-usage={used}/{limit}"))];
    match state.faults.next() {
        Some(Fault::ConcurrentLimit) => return Err(Box::new(errors(403, usage, "REQUEST_LIMIT_EXCEEDED", "ConcurrentPerOrgLongTxn Limit exceeded."))),
        Some(Fault::Status(status, code)) => return Err(Box::new(errors(status, usage, code, "injected failure"))),
        None => {}
    }
    if used >= limit {
        return Err(Box::new(errors(403, usage, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")));
    }
    state.allocation.lock().unwrap().0 += 1;
    Ok(vec![("sforce-limit-info", format!("api-usage={}/{limit}", used + 1))])
}

async fn upsert(
    State(state): State<Arc<SalesforceState>>,
    Path((_version, sobject, field)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    let body: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    let recorded = Recorded {
        method: "PATCH".into(),
        path: format!("/composite/sobjects/{sobject}/{field}"),
        query: None,
        authorization: authorization(&headers),
        body: body.clone(),
    };
    let usage = match admit(&state, recorded, &headers) {
        Ok(usage) => usage,
        Err(refused) => return *refused,
    };
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
        let (id, mut current) = existing.unwrap_or_else(|| (state.new_id(), serde_json::Map::new()));
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

/// `SELECT Id, <f> FROM <sobject> WHERE <f> IN (<literals>)` → (sobject, f, values); `None` for
/// any other query.
fn parse_soql(soql: &str) -> Option<(String, String, Vec<String>)> {
    let rest = soql.trim().strip_prefix("SELECT Id, ")?;
    let (field, rest) = rest.split_once(" FROM ")?;
    let (sobject, rest) = rest.split_once(" WHERE ")?;
    let rest = rest.strip_prefix(field)?.trim_start().strip_prefix("IN (")?.strip_suffix(')')?;
    let mut values = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ' ' || *c == ',') {
            chars.next();
        }
        match chars.next() {
            None => break,
            Some('\'') => {}
            Some(_) => return None,
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => value.push(chars.next()?),
                '\'' => break,
                c => value.push(c),
            }
        }
        values.push(value);
    }
    Some((sobject.to_string(), field.to_string(), values))
}

async fn query(State(state): State<Arc<SalesforceState>>, Path(version): Path<String>, RawQuery(raw): RawQuery, headers: HeaderMap) -> axum::response::Response {
    let params = url_params(raw.as_deref().unwrap_or(""));
    let soql = params.get("q").cloned().unwrap_or_default();
    let recorded = Recorded { method: "GET".into(), path: "/query".into(), query: Some(soql.clone()), authorization: authorization(&headers), body: serde_json::Value::Null };
    let usage = match admit(&state, recorded, &headers) {
        Ok(usage) => usage,
        Err(refused) => return *refused,
    };
    let Some((sobject, field, values)) = parse_soql(&soql) else {
        return errors(400, usage, "MALFORMED_QUERY", "unexpected token in the query");
    };
    let records: Vec<serde_json::Value> = state
        .records
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, (_, fields))| fields.get(&field).and_then(|v| v.as_str()).is_some_and(|v| values.iter().any(|w| w == v)))
        .map(|(_, (id, fields))| {
            serde_json::json!({"attributes": {"type": sobject, "url": format!("/services/data/{version}/sobjects/{sobject}/{id}")}, "Id": id, field.clone(): fields[&field]})
        })
        .collect();
    json(200, usage, serde_json::json!({"totalSize": records.len(), "done": true, "records": records}))
}

async fn delete_records(State(state): State<Arc<SalesforceState>>, RawQuery(raw): RawQuery, headers: HeaderMap) -> axum::response::Response {
    let recorded = Recorded { method: "DELETE".into(), path: "/composite/sobjects".into(), query: raw.clone(), authorization: authorization(&headers), body: serde_json::Value::Null };
    let usage = match admit(&state, recorded, &headers) {
        Ok(usage) => usage,
        Err(refused) => return *refused,
    };
    let params = url_params(raw.as_deref().unwrap_or(""));
    let ids: Vec<String> = params.get("ids").map(|ids| ids.split(',').map(str::to_string).collect()).unwrap_or_default();
    if ids.is_empty() || ids.len() > 200 {
        return errors(400, usage, "EXCEEDED_ID_LIMIT", "between 1 and 200 ids are allowed");
    }
    let all_or_none = params.get("allOrNone").is_some_and(|v| v == "true");
    let undeletable = state.undeletable.lock().unwrap().clone();
    let mut records = state.records.lock().unwrap().clone();
    let mut deleted = state.deleted.lock().unwrap().clone();
    let mut results = Vec::new();
    for id in &ids {
        let external = records.iter().find(|(_, (rid, _))| rid == id).map(|(external, _)| external.clone());
        let result = match external {
            Some(external) if undeletable.contains(&external) => failed("DELETE_FAILED", "Your attempt to delete this record could not be completed because it is associated with cases.", &[]),
            Some(external) => {
                records.remove(&external);
                deleted.push((external, id.clone()));
                serde_json::json!({"id": id, "success": true, "errors": []})
            }
            None if deleted.iter().any(|(_, d)| d == id) => failed("ENTITY_IS_DELETED", "entity is deleted", &[]),
            None => failed("MALFORMED_ID", &format!("malformed id {id}"), &[]),
        };
        results.push(result);
    }
    let any_failed = results.iter().any(|r| r["success"] == false);
    if all_or_none && any_failed {
        for result in results.iter_mut().filter(|r| r["success"] == true) {
            *result = failed("ALL_OR_NONE_OPERATION_ROLLED_BACK", "Record rolled back because not all records were valid and the request was using AllOrNone header", &[]);
        }
    } else {
        *state.records.lock().unwrap() = records;
        *state.deleted.lock().unwrap() = deleted;
    }
    json(200, usage, serde_json::Value::Array(results))
}

/// The parameters of a query string, percent-decoded.
fn url_params(raw: &str) -> HashMap<String, String> {
    let uri: axum::http::Uri = format!("/?{raw}").parse().unwrap_or_default();
    axum::extract::Query::<HashMap<String, String>>::try_from_uri(&uri).map(|q| q.0).unwrap_or_default()
}

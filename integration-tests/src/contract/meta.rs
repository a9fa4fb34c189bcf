//! Meta Marketing API Custom Audience users, as documented.
//!
//! Reproduces: `POST` (add) and `DELETE` (remove) `/<version>/<audience_id>/users` with a JSON
//! body `{"payload":{"schema","data"},"session":{...}}` or the reference's form encoding
//! (`payload=<url-encoded JSON>`); the token as `?access_token=` or a
//! bearer header (the latter UNCONFIRMED), a wrong one answered with HTTP 400 and
//! `OAuthException` code 190; an unknown audience answered with code 100 subcode 33; at most
//! 10,000 rows (code 100); a missing session refused (code 100); rows whose hashed values are
//! not lowercase hex SHA-256, or that are empty, counted in `num_invalid_entries` with the value
//! as key of `invalid_entry_samples`; the others applied (set semantics: adding a present member
//! changes nothing; removing matches any shared identifier). `POST .../usersreplace`, checked
//! the same way, collects a replace session's batches (`batch_seq` from 1, in order) and on
//! `last_batch_flag: true` makes the audience exactly the session's valid rows (its faults are
//! queued apart, `replace_faults`, so a test can fail a session while `users` keeps working).
//! Throttling is answered as Meta does, HTTP 400 with the code (4, 17, 32, 613, 80000-80014) and an
//! `X-Business-Use-Case-Usage` header carrying `estimated_time_to_regain_access`.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method};
use axum::routing::post;
use axum::Router;

use super::{authorization, is_sha256_hex, json, Faults, Recorded};

/// A fault to answer the next request with.
#[derive(Debug, Clone)]
pub enum Fault {
    /// HTTP 400 with this Graph API error code and subcode; `regain_minutes` goes into
    /// `X-Business-Use-Case-Usage`.
    Error { status: u16, code: i64, subcode: Option<i64>, regain_minutes: u64 },
}

/// One audience member: schema key → value, empty values left out.
pub type Member = std::collections::BTreeMap<String, String>;

/// A valid row the server applied, and when: what latency measurements read as Meta's
/// acknowledgement of that row.
#[derive(Debug, Clone)]
pub struct Applied {
    pub at: std::time::Instant,
    /// `POST` (add), `DELETE` (remove) or `REPLACE` (a member of a closed replace session).
    pub method: String,
    pub row: Member,
}

/// The server's state.
pub struct MetaState {
    token: String,
    audience_id: String,
    pub members: Mutex<Vec<Member>>,
    /// Values Meta will count invalid (as it does for values it cannot use), with the reason.
    pub rejected_values: Mutex<std::collections::HashMap<String, String>>,
    pub requests: Mutex<Vec<Recorded>>,
    /// Every valid row applied, in order, with its receipt time.
    pub applied: Mutex<Vec<Applied>>,
    pub faults: Faults<Fault>,
    /// Faults for `usersreplace` requests only (the `users` edge keeps answering normally).
    pub replace_faults: Faults<Fault>,
    /// `usersreplace` sessions by `session_id`.
    replace_sessions: Mutex<std::collections::HashMap<String, ReplaceSession>>,
}

/// A `usersreplace` session: the batches received so far and their valid rows.
#[derive(Debug, Default)]
struct ReplaceSession {
    batches: u64,
    rows: Vec<Member>,
    /// Closed by `last_batch_flag`; its rows became the audience.
    closed: bool,
}

impl MetaState {
    /// Whether a member holds `key = value`.
    pub fn has_member(&self, key: &str, value: &str) -> bool {
        self.members.lock().unwrap().iter().any(|m| m.get(key).map(String::as_str) == Some(value))
    }

    pub fn member_count(&self) -> usize {
        self.members.lock().unwrap().len()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// Every valid row applied so far, with its receipt time.
    pub fn applied(&self) -> Vec<Applied> {
        self.applied.lock().unwrap().clone()
    }
}

/// Start a server for one audience, accepting `token`.
pub async fn start(token: &str, audience_id: &str) -> (String, Arc<MetaState>) {
    let state = Arc::new(MetaState {
        token: token.into(),
        audience_id: audience_id.into(),
        members: Mutex::default(),
        rejected_values: Mutex::default(),
        requests: Mutex::default(),
        applied: Mutex::default(),
        faults: Faults::default(),
        replace_faults: Faults::default(),
        replace_sessions: Mutex::default(),
    });
    let router = Router::new()
        .route("/{version}/{audience}/users", post(users).delete(users))
        .route("/{version}/{audience}/usersreplace", post(users_replace))
        .with_state(Arc::clone(&state));
    (super::serve(router).await, state)
}

/// A JSON body, or the reference's form encoding (`payload=<url-encoded JSON>&session=...`).
fn parse_body(headers: &HeaderMap, body: &str) -> serde_json::Value {
    let form = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form {
        return serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    }
    // The query extractor's decoder reads form encoding too.
    let uri: axum::http::Uri = format!("/?{body}").parse().unwrap_or_default();
    let Ok(axum::extract::Query(fields)) = axum::extract::Query::<std::collections::HashMap<String, String>>::try_from_uri(&uri) else {
        return serde_json::Value::Null;
    };
    let mut out = serde_json::Map::new();
    for (name, value) in fields {
        out.insert(name, serde_json::from_str(&value).unwrap_or(serde_json::Value::String(value)));
    }
    serde_json::Value::Object(out)
}

fn graph_error(status: u16, code: i64, subcode: Option<i64>, message: &str, headers: Vec<(&'static str, String)>) -> axum::response::Response {
    let mut error = serde_json::json!({"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "AbCdEf123"});
    if let Some(subcode) = subcode {
        error["error_subcode"] = subcode.into();
    }
    json(status, headers, serde_json::json!({"error": error}))
}

/// The audience's edges.
#[derive(Clone, Copy)]
enum Edge {
    Users,
    Replace,
}

impl Edge {
    fn name(self) -> &'static str {
        match self {
            Edge::Users => "users",
            Edge::Replace => "usersreplace",
        }
    }

    /// The faults its requests are answered with.
    fn faults(self, state: &MetaState) -> &Faults<Fault> {
        match self {
            Edge::Users => &state.faults,
            Edge::Replace => &state.replace_faults,
        }
    }
}

/// What a request to either edge carries, once authenticated and checked.
struct Checked {
    audience: String,
    session: serde_json::Value,
    /// The valid rows, in request order.
    members: Vec<Member>,
    received: usize,
    invalid: usize,
    samples: serde_json::Map<String, serde_json::Value>,
}

/// What an edge's handler reads of a request besides its body.
type Call = (Method, Path<(String, String)>, RawQuery, HeaderMap);

/// [`check_request`] on a handler's [`Call`]: the method, and the checked request.
fn check(state: &MetaState, edge: Edge, call: Call, body: &str) -> Result<(Method, Checked), Box<axum::response::Response>> {
    let (method, Path((_version, audience)), RawQuery(query), headers) = call;
    let checked = check_request(state, &method, edge, audience, query, &headers, body)?;
    Ok((method, checked))
}

/// Record the request, then check it as Meta does (token, injected faults, audience, session,
/// schema, row limit) and sort its rows into valid members and invalid entries.
fn check_request(state: &MetaState, method: &Method, edge: Edge, audience: String, query: Option<String>, headers: &HeaderMap, body: &str) -> Result<Checked, Box<axum::response::Response>> {
    let body = parse_body(headers, body);
    state.requests.lock().unwrap().push(Recorded {
        method: method.to_string(),
        path: format!("/{audience}/{}", edge.name()),
        query: query.clone(),
        authorization: authorization(headers),
        body: body.clone(),
    });
    let query_token = query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("access_token="))
        .map(str::to_string);
    let bearer_token = authorization(headers).and_then(|a| a.strip_prefix("Bearer ").map(str::to_string));
    if query_token.or(bearer_token).as_deref() != Some(state.token.as_str()) {
        return Err(Box::new(graph_error(400, 190, None, "Invalid OAuth access token - Cannot parse access token", vec![])));
    }
    if let Some(Fault::Error { status, code, subcode, regain_minutes }) = edge.faults(state).next() {
        let usage = serde_json::json!({"1234567890": [{"type": "custom_audience", "call_count": 100, "total_cputime": 20, "total_time": 20,
            "estimated_time_to_regain_access": regain_minutes, "ads_api_access_tier": "standard_access"}]});
        let message = match code {
            80000..=80014 => format!("(#{code}) There have been too many calls from this ad-account. Wait a bit and try again."),
            _ => format!("(#{code}) injected error"),
        };
        return Err(Box::new(graph_error(status, code, subcode, &message, vec![("x-business-use-case-usage", usage.to_string())])));
    }
    if audience != state.audience_id {
        return Err(Box::new(graph_error(400, 100, Some(33), &format!("Unsupported post request. Object with ID '{audience}' does not exist"), vec![])));
    }
    if !body["session"]["session_id"].is_i64() && !body["session"]["session_id"].is_u64() {
        return Err(Box::new(graph_error(400, 100, None, "(#100) session is required", vec![])));
    }
    let schema: Vec<String> = match &body["payload"]["schema"] {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        _ => return Err(Box::new(graph_error(400, 100, None, "(#100) payload.schema is required", vec![]))),
    };
    let rows = body["payload"]["data"].as_array().cloned().unwrap_or_default();
    if rows.len() > 10_000 {
        return Err(Box::new(graph_error(400, 100, None, "(#100) Too many rows: at most 10000 per request", vec![])));
    }
    let mut checked = Checked { audience, session: body["session"].clone(), members: Vec::new(), received: rows.len(), invalid: 0, samples: serde_json::Map::new() };
    for row in &rows {
        let values: Vec<String> = match row {
            serde_json::Value::Array(a) => a.iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect(),
            serde_json::Value::String(s) => vec![s.clone()],
            _ => vec![],
        };
        let mut member = Member::new();
        let mut bad = values.len() != schema.len();
        for (key, value) in schema.iter().zip(&values) {
            if value.is_empty() {
                continue;
            }
            let hashed = !matches!(key.as_str(), "MADID" | "EXTERN_ID");
            if hashed && !is_sha256_hex(value) {
                bad = true;
                checked.samples.insert(value.clone(), "Value is not a valid SHA-256 hash".into());
            }
            if let Some(reason) = state.rejected_values.lock().unwrap().get(value) {
                bad = true;
                checked.samples.insert(value.clone(), reason.clone().into());
            }
            member.insert(key.clone(), value.clone());
        }
        if bad || member.is_empty() {
            checked.invalid += 1;
        } else {
            checked.members.push(member);
        }
    }
    Ok(checked)
}

impl Checked {
    /// Meta's answer to an accepted request.
    fn answer(self) -> axum::response::Response {
        json(
            200,
            vec![],
            serde_json::json!({"audience_id": self.audience, "session_id": self.session["session_id"].to_string(),
                "num_received": self.received, "num_invalid_entries": self.invalid, "invalid_entry_samples": self.samples}),
        )
    }
}

async fn users(State(state): State<Arc<MetaState>>, call: Call, body: String) -> axum::response::Response {
    let (method, mut checked) = match check(&state, Edge::Users, call, &body) {
        Ok(checked) => checked,
        Err(refused) => return *refused,
    };
    for member in std::mem::take(&mut checked.members) {
        let mut members = state.members.lock().unwrap();
        let applied = Applied { at: std::time::Instant::now(), method: method.to_string(), row: member.clone() };
        if method == Method::DELETE {
            members.retain(|m| !m.iter().any(|(k, v)| member.get(k) == Some(v)));
        } else if !members.contains(&member) {
            members.push(member);
        }
        drop(members);
        state.applied.lock().unwrap().push(applied);
    }
    checked.answer()
}

/// `usersreplace`: a batch of a replace session. Batches must come in `batch_seq` order from 1
/// (anything else, or a batch of a closed session, is refused with code 100: Meta's handling
/// of a re-sent batch is UNCONFIRMED); `last_batch_flag: true` closes the session and the
/// audience becomes exactly the session's valid rows. Until then the audience is untouched, and
/// `users` edits keep applying to it (and are then replaced: the worst case for a live sync).
async fn users_replace(State(state): State<Arc<MetaState>>, call: Call, body: String) -> axum::response::Response {
    let (_method, mut checked) = match check(&state, Edge::Replace, call, &body) {
        Ok(checked) => checked,
        Err(refused) => return *refused,
    };
    let id = checked.session["session_id"].to_string();
    let seq = checked.session["batch_seq"].as_u64();
    let last = checked.session["last_batch_flag"].as_bool();
    let mut sessions = state.replace_sessions.lock().unwrap();
    let session = sessions.entry(id.clone()).or_default();
    if session.closed {
        return graph_error(400, 100, None, &format!("(#100) replace session {id} is already closed"), vec![]);
    }
    if seq != Some(session.batches + 1) || last.is_none() {
        return graph_error(400, 100, None, &format!("(#100) batch_seq must be {} and last_batch_flag a bool in replace session {id}", session.batches + 1), vec![]);
    }
    session.batches += 1;
    for member in std::mem::take(&mut checked.members) {
        if !session.rows.contains(&member) {
            session.rows.push(member);
        }
    }
    if last == Some(true) {
        session.closed = true;
        let now = std::time::Instant::now();
        state.applied.lock().unwrap().extend(session.rows.iter().map(|row| Applied { at: now, method: "REPLACE".into(), row: row.clone() }));
        *state.members.lock().unwrap() = session.rows.clone();
    }
    drop(sessions);
    checked.answer()
}

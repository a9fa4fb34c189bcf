//! A local webhook receiver for tests: records every applied record and every request (with
//! the receiver's own timestamps), and answers the way a script says — which lets tests
//! reproduce what real vendors do: reject, throttle (with and without `Retry-After`), fail,
//! time out, answer slowly, refuse some records of a batch, refuse credentials.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use tokio::time::Instant;

/// What a [`Behaviour::Script`] runs: the request's number (from 0) and its records to the reply.
pub type ScriptFn = Arc<dyn Fn(usize, &[serde_json::Value]) -> Reply + Send + Sync>;

/// How the receiver answers.
#[derive(Clone)]
pub enum Behaviour {
    /// 200, except 422 for a request holding a record whose `email` field starts with `reject`.
    Normal,
    /// 401 to everything (an expired credential).
    Unauthorized,
    /// 503 with `Retry-After: 0` to the next `n` requests, then `Normal`.
    FailNext(usize),
    /// A script decides per request.
    Script(ScriptFn),
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
    /// Indexes of the request's records the receiver applies (records it keeps).
    pub apply: Vec<usize>,
    /// Answer only after this long (a slow vendor; past the client's timeout, a timeout).
    pub delay: Duration,
}

impl Reply {
    /// 200, applying every record.
    pub fn ok(records: usize) -> Reply {
        Reply { status: 200, retry_after: None, body: "{\"ok\":true}".into(), apply: (0..records).collect(), delay: Duration::ZERO }
    }

    /// An error status applying nothing.
    pub fn error(status: u16, retry_after: Option<&str>) -> Reply {
        Reply { status, retry_after: retry_after.map(String::from), body: format!("{{\"error\":\"status {status}\"}}"), apply: Vec::new(), delay: Duration::ZERO }
    }
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct RequestLog {
    pub at: Instant,
    pub records: usize,
    pub status: u16,
}

#[derive(Default)]
pub struct Received {
    /// Applied records, in arrival order.
    pub records: Mutex<Vec<serde_json::Value>>,
    pub requests: AtomicUsize,
    pub log: Mutex<Vec<RequestLog>>,
    behaviour: Mutex<Option<Behaviour>>,
}

impl Received {
    pub fn records(&self) -> Vec<serde_json::Value> {
        self.records.lock().unwrap().clone()
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = Some(behaviour);
    }

    pub fn log(&self) -> Vec<RequestLog> {
        self.log.lock().unwrap().clone()
    }
}

fn normal(records: &[serde_json::Value]) -> Reply {
    if records.iter().any(|r| r["fields"]["email"].as_str().is_some_and(|e| e.starts_with("reject"))) {
        return Reply { body: "{\"error\":\"invalid email address\"}".into(), ..Reply::error(422, None) };
    }
    Reply::ok(records.len())
}

async fn hook(State(state): State<Arc<Received>>, Json(body): Json<serde_json::Value>) -> (StatusCode, HeaderMap, String) {
    let request_no = state.requests.fetch_add(1, Ordering::SeqCst);
    let records = body["records"].as_array().cloned().unwrap_or_default();
    let behaviour = state.behaviour.lock().unwrap().clone().unwrap_or(Behaviour::Normal);
    let reply = match behaviour {
        Behaviour::Normal => normal(&records),
        Behaviour::Unauthorized => Reply { body: "{\"error\":\"token expired\"}".into(), ..Reply::error(401, None) },
        Behaviour::FailNext(n) if n > 0 => {
            state.set_behaviour(Behaviour::FailNext(n - 1));
            Reply::error(503, Some("0"))
        }
        Behaviour::FailNext(_) => normal(&records),
        Behaviour::Script(script) => script(request_no, &records),
    };
    state.log.lock().unwrap().push(RequestLog { at: Instant::now(), records: records.len(), status: reply.status });
    {
        let mut applied = state.records.lock().unwrap();
        applied.extend(reply.apply.iter().filter_map(|&i| records.get(i).cloned()));
    }
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut headers = HeaderMap::new();
    if let Some(retry_after) = &reply.retry_after {
        headers.insert("retry-after", retry_after.parse().unwrap());
    }
    (StatusCode::from_u16(reply.status).unwrap(), headers, reply.body)
}

/// Start a receiver on a free loopback port; returns its `/hook` URL and its state.
pub async fn start() -> (String, Arc<Received>) {
    let state = Arc::new(Received::default());
    let app = Router::new().route("/hook", post(hook)).with_state(Arc::clone(&state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), state)
}

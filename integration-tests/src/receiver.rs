//! A local webhook receiver for tests: records every accepted record in arrival order, and can
//! be told to misbehave the way real vendors do (reject, throttle, fail, refuse credentials).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};

/// How the receiver answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// 200, except 422 for a request holding a record whose `email` field starts with `reject`.
    Normal,
    /// 401 to everything (an expired credential).
    Unauthorized,
    /// 503 with `Retry-After: 0` to the next `n` requests, then `Normal`.
    FailNext(usize),
}

#[derive(Default)]
pub struct Received {
    /// Accepted records, in arrival order.
    pub records: Mutex<Vec<serde_json::Value>>,
    pub requests: AtomicUsize,
    behaviour: Mutex<Option<Behaviour>>,
}

impl Received {
    pub fn records(&self) -> Vec<serde_json::Value> {
        self.records.lock().unwrap().clone()
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = Some(behaviour);
    }
}

async fn hook(State(state): State<Arc<Received>>, _headers: HeaderMap, Json(body): Json<serde_json::Value>) -> (StatusCode, HeaderMap, String) {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let records = body["records"].as_array().cloned().unwrap_or_default();
    let mut out_headers = HeaderMap::new();
    let behaviour = state.behaviour.lock().unwrap().clone().unwrap_or(Behaviour::Normal);
    match behaviour {
        Behaviour::Unauthorized => return (StatusCode::UNAUTHORIZED, out_headers, "{\"error\":\"token expired\"}".into()),
        Behaviour::FailNext(n) if n > 0 => {
            state.set_behaviour(Behaviour::FailNext(n - 1));
            out_headers.insert("retry-after", "0".parse().unwrap());
            return (StatusCode::SERVICE_UNAVAILABLE, out_headers, "{\"error\":\"try later\"}".into());
        }
        _ => {}
    }
    let rejected = records.iter().any(|r| r["fields"]["email"].as_str().is_some_and(|e| e.starts_with("reject")));
    if rejected {
        return (StatusCode::UNPROCESSABLE_ENTITY, out_headers, "{\"error\":\"invalid email address\"}".into());
    }
    state.records.lock().unwrap().extend(records);
    (StatusCode::OK, out_headers, "{\"ok\":true}".into())
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

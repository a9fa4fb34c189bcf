//! Contract servers: local HTTP servers that reproduce each SaaS vendor's documented wire
//! contract (paths, auth, batch limits, success shapes, throttling signals, partial failures,
//! auth errors), so connectors are tested against what the vendor really answers. The facts and
//! their sources are in the project's destination-contracts reference; each module names the
//! behaviours it reproduces and the few it cannot (marked UNCONFIRMED there: configurable here).
//!
//! Every server:
//! - listens on `127.0.0.1:0` and returns its base URL, so tests run in parallel;
//! - records every request ([`Recorded`]) and what it applied, so tests assert exactly what
//!   the vendor would hold;
//! - can be told to answer the next requests with a fault (a throttle, an outage, an auth
//!   failure) through its `faults` queue, besides the faults its own limits produce.

pub mod braze;
pub mod hubspot;
pub mod meta;
pub mod salesforce;
pub mod webhook;

use std::collections::VecDeque;
use std::sync::Mutex;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub authorization: Option<String>,
    /// The parsed JSON body (`Null` when it was not JSON).
    pub body: serde_json::Value,
}

/// Faults to answer the next requests with, in order.
#[derive(Debug)]
pub struct Faults<F>(Mutex<VecDeque<F>>);

impl<F> Default for Faults<F> {
    fn default() -> Self {
        Faults(Mutex::new(VecDeque::new()))
    }
}

impl<F> Faults<F> {
    /// Answer the next request with `fault` (after those already queued).
    pub fn push(&self, fault: F) {
        self.0.lock().unwrap().push_back(fault);
    }

    pub(crate) fn next(&self) -> Option<F> {
        self.0.lock().unwrap().pop_front()
    }
}

/// Serve `router` on a free loopback port; returns `http://127.0.0.1:<port>`.
pub(crate) async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind contract server");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

/// The `Authorization` header of a request.
pub(crate) fn authorization(headers: &axum::http::HeaderMap) -> Option<String> {
    headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// A response with a JSON body and extra headers.
pub(crate) fn json(status: u16, headers: Vec<(&'static str, String)>, body: serde_json::Value) -> axum::response::Response {
    let mut response = axum::response::Response::new(axum::body::Body::from(body.to_string()));
    *response.status_mut() = axum::http::StatusCode::from_u16(status).expect("status");
    let map = response.headers_mut();
    map.insert(axum::http::header::CONTENT_TYPE, "application/json".parse().unwrap());
    for (name, value) in headers {
        map.insert(name, value.parse().expect("header value"));
    }
    response
}

/// Whether a string is a lowercase hex SHA-256.
pub(crate) fn is_sha256_hex(value: &str) -> bool {
    value.len() == 64 && value.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

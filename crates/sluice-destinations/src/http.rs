//! HTTP response classification shared by every HTTP destination.
//!
//! The status policy, in one table:
//!
//! | status                          | class       | why |
//! |---------------------------------|-------------|-----|
//! | 2xx                             | success     | |
//! | 408, 425, 429                   | retryable   | timeout / too early / throttled; honour `Retry-After` |
//! | 5xx                             | retryable   | the vendor's problem, usually passing |
//! | 401, 403                        | fatal       | credentials: every record would fail the same way |
//! | 404, 405, 410                   | fatal       | wrong or removed endpoint: a config problem |
//! | other 4xx (400, 413, 422, ...)  | permanent   | this request's records were refused |
//!
//! Vendor destinations override it where the vendor signals differently (Meta throttles with
//! 400, Salesforce with 403), in their `classify.rs`. Everything an HTTP kind's `call` needs is
//! here too: the client, [`send_json`] (an [`Answer`], or a transport failure), bearer headers.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sluice_core::ErrorClass;
use tracing::Instrument as _;

use crate::destination::DeliveryError;
use crate::settings::Invalid;

/// Bytes of a response body kept for dead-letter headers and logs.
pub const EXCERPT_BYTES: usize = 1024;

/// An HTTP client with the destination's per-request timeout; TLS by rustls (no system
/// OpenSSL), redirects not followed (a redirect from an API is a misconfiguration: Standard
/// Webhooks says 3xx is a failure).
pub fn client(timeout_ms: u64) -> Result<reqwest::Client, Invalid> {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(timeout_ms))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Invalid::new("", format!("cannot build the HTTP client: {e}"), "check the TLS setup of the host"))
}

/// Where an HTTP kind sends its requests: a client with the kind's timeout, the URL, and how
/// requests authenticate. One place for what every HTTP kind's `call` does the same way.
pub struct Endpoint {
    client: reqwest::Client,
    url: String,
    auth: Auth,
}

/// How an HTTP kind's requests authenticate.
pub enum Auth {
    /// `Authorization: Bearer <token>` ([`bearer`]).
    Bearer(reqwest::header::HeaderValue),
    /// The token as a query parameter (`?access_token=`).
    Query(&'static str, String),
    /// Configured headers (values marked sensitive).
    Headers(reqwest::header::HeaderMap),
}

impl Endpoint {
    /// An endpoint; nothing connects.
    pub fn new(timeout_ms: u64, url: String, auth: Auth) -> Result<Endpoint, Invalid> {
        Ok(Endpoint { client: client(timeout_ms)?, url, auth })
    }

    /// The URL requests go to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A request to the endpoint, authenticated; the caller adds the body.
    pub fn request(&self, method: reqwest::Method) -> reqwest::RequestBuilder {
        self.request_at(method, "")
    }

    /// A request to `path` below the endpoint's URL (appended as written), authenticated; for
    /// kinds whose calls go to several resources of one API root.
    pub fn request_at(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.request(method, format!("{}{path}", self.url));
        match &self.auth {
            Auth::Bearer(value) => request.header(reqwest::header::AUTHORIZATION, value.clone()),
            Auth::Query(name, token) => request.query(&[(*name, token.as_str())]),
            Auth::Headers(headers) => request.headers(headers.clone()),
        }
    }

    /// Send `body` as JSON and read the whole answer ([`send_json`]).
    pub async fn send_json(&self, vendor: &str, method: reqwest::Method, body: &impl serde::Serialize) -> Result<Answer, DeliveryError> {
        send_json(vendor, self.request(method).json(body)).await
    }

    /// Send `body` as JSON to `path` below the endpoint's URL and read the whole answer.
    pub async fn send_json_at(&self, vendor: &str, method: reqwest::Method, path: &str, body: &impl serde::Serialize) -> Result<Answer, DeliveryError> {
        send_json(vendor, self.request_at(method, path).json(body)).await
    }
}

/// A request that got no answer (timeout, refused or reset connection): retryable, the
/// destination may be back soon.
pub fn transport_error(vendor: &str, error: &reqwest::Error) -> DeliveryError {
    DeliveryError {
        class: ErrorClass::Retryable { retry_after: None },
        status: None,
        excerpt: String::new(),
        message: format!("{vendor} request failed: {}", without_url(error)),
        throttle: None,
    }
}

/// A vendor's answer, read whole: status, headers, the body as text (for excerpts) and as JSON
/// (`Null` when it is not JSON; each vendor's classifier decides what that means), and when it
/// arrived (waits such as "until midnight" or an HTTP-date `Retry-After` count from it, which
/// keeps classification a pure function of the answer).
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body as text.
    pub text: String,
    /// The body as JSON, `Null` when it is not JSON.
    pub body: serde_json::Value,
    /// When the answer arrived.
    pub at: DateTime<Utc>,
}

impl Answer {
    /// An answer from its parts, arrived at `at` (what `send_json` reads; tests build them).
    pub fn new(status: u16, headers: reqwest::header::HeaderMap, text: impl Into<String>, at: DateTime<Utc>) -> Answer {
        let text = text.into();
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Answer { status, headers, text, body, at }
    }

    /// `Retry-After`, if present and readable.
    pub fn retry_after(&self) -> Option<Duration> {
        retry_after_of(&self.headers, self.at)
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_text(&self.headers, name)
    }

    /// A whole-request failure quoting this answer.
    pub fn failure(&self, class: ErrorClass, message: String) -> DeliveryError {
        answered(class, self.status, &self.text, message)
    }
}

/// Send a JSON API request and read its whole answer; no answer at all is a
/// [`transport_error`]. One place for what every vendor module did the same way.
/// Traced as `destination.request` (a child of the current span: the sink's batch), with the
/// answer's status; never the URL, which may carry a key.
pub async fn send_json(vendor: &str, request: reqwest::RequestBuilder) -> Result<Answer, DeliveryError> {
    let span = tracing::info_span!("destination.request", otel.kind = "client", vendor, http.response.status_code = tracing::field::Empty);
    let answer = async {
        let response = request.send().await.map_err(|e| transport_error(vendor, &e))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        Ok(Answer::new(status, headers, text, Utc::now()))
    }
    .instrument(span.clone())
    .await;
    if let Ok(answer) = &answer {
        span.record("http.response.status_code", answer.status);
    }
    answer
}

/// A whole-request failure with the vendor's answer attached.
pub fn answered(class: ErrorClass, status: u16, body: &str, message: String) -> DeliveryError {
    DeliveryError { class, status: Some(status), excerpt: excerpt(body, EXCERPT_BYTES), message, throttle: None }
}

/// `Retry-After` of a response that arrived at `now`, if present and readable.
pub fn retry_after_of(headers: &reqwest::header::HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    headers.get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| parse_retry_after(v, now))
}

/// A header as text.
pub fn header_text<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `Authorization: Bearer <token>`, marked sensitive so it never prints; `key` names the
/// setting the token came from.
pub fn bearer(token: &str, key: &'static str) -> Result<reqwest::header::HeaderValue, Invalid> {
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
        .map_err(|_| Invalid::new(key, "contains characters not allowed in an HTTP header", "check the secret's value (no line breaks)"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// A reqwest error's text without its URL, which may carry credentials in query strings.
pub fn without_url(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else {
        "transport"
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(error);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    format!("{kind} error: {detail}")
}

/// Class of an HTTP status under the default policy; `None` for success.
pub fn classify_status(status: u16, retry_after: Option<Duration>) -> Option<ErrorClass> {
    match status {
        200..=299 => None,
        408 | 425 | 429 | 500..=599 => Some(ErrorClass::Retryable { retry_after }),
        401 | 403 | 404 | 405 | 410 => Some(ErrorClass::Fatal),
        _ => Some(ErrorClass::Permanent),
    }
}

/// Parse `Retry-After`: delay-seconds or an HTTP-date (relative to `now`). Bounded to one hour
/// so a bogus header cannot park a destination for days.
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    const MAX: Duration = Duration::from_secs(3600);
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds).min(MAX));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - now;
    Some(delta.to_std().unwrap_or(Duration::ZERO).min(MAX))
}

/// At most `max` bytes of a body, cut on a character boundary.
pub fn excerpt(body: &str, max: usize) -> String {
    // Masked before it is cut, so a cut never leaves half an address unmasked.
    let body = sluice_core::privacy::mask_personal(body);
    if body.len() <= max {
        return body;
    }
    let mut end = max;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    body[..end].to_string()
}

/// Headers from name/value pairs (for classifier table tests).
#[cfg(test)]
pub(crate) fn headers(pairs: &[(&'static str, &str)]) -> reqwest::header::HeaderMap {
    pairs.iter().map(|(name, value)| (reqwest::header::HeaderName::from_static(name), value.parse().expect("header value"))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_policy_table() {
        let ra = Some(Duration::from_secs(3));
        let cases = [
            (200, None),
            (204, None),
            (207, None),
            (408, Some(ErrorClass::Retryable { retry_after: ra })),
            (429, Some(ErrorClass::Retryable { retry_after: ra })),
            (500, Some(ErrorClass::Retryable { retry_after: ra })),
            (503, Some(ErrorClass::Retryable { retry_after: ra })),
            (401, Some(ErrorClass::Fatal)),
            (403, Some(ErrorClass::Fatal)),
            (404, Some(ErrorClass::Fatal)),
            (410, Some(ErrorClass::Fatal)),
            (400, Some(ErrorClass::Permanent)),
            (413, Some(ErrorClass::Permanent)),
            (422, Some(ErrorClass::Permanent)),
        ];
        for (status, expected) in cases {
            assert_eq!(classify_status(status, ra), expected, "status {status}");
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z").unwrap().with_timezone(&chrono::Utc);
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("999999", now), Some(Duration::from_secs(3600)));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn excerpt_cuts_on_char_boundary() {
        assert_eq!(excerpt("ééé", 3), "é");
        assert_eq!(excerpt("abc", 10), "abc");
    }
}

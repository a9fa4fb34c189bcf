//! Braze's answers: the status policy with `X-RateLimit-Reset`, and the per-object errors of
//! a 2xx.

use std::time::Duration;

use sluice_core::ErrorClass;

use super::request::Request;
use super::Braze;
use crate::http::{excerpt, Answer, EXCERPT_BYTES};
use crate::{DeliveryError, RecordFailure, RequestFailure, RetryLogic};

impl RetryLogic for Braze {
    type Request = Request;
    type Answer = Answer;

    /// Any 2xx passes (per-object errors are read from the body); a 429 is a throttle.
    fn request_failure(&self, _request: &Request, answer: &Answer) -> Option<RequestFailure> {
        let status = answer.status;
        let class = match status {
            200..=299 => return None,
            429 => {
                let reset = answer
                    .header("x-ratelimit-reset")
                    .and_then(|v| v.trim().parse::<i64>().ok())
                    .map(|epoch| Duration::from_secs(epoch.saturating_sub(answer.at.timestamp()).max(0) as u64));
                ErrorClass::Retryable { retry_after: answer.retry_after().or(reset) }
            }
            401 | 403 | 404 => ErrorClass::Fatal,
            _ => crate::http::classify_status(status, answer.retry_after())?,
        };
        let message = answer.body["message"].as_str().map(|m| excerpt(m, 120)).unwrap_or_default();
        let error = answer.failure(class, format!("braze answered {status} {message}").trim_end().to_string());
        Some(RequestFailure::throttled_if((status == 429).then_some("http_429"), error))
    }

    /// Objects named in `errors[]` (`input_array: "attributes"`, `index`) are refused; an
    /// error naming no object fails the request.
    fn record_failures(&self, request: &Request, answer: &Answer) -> Result<Vec<RecordFailure>, DeliveryError> {
        let mut failures = Vec::new();
        for error in answer.body["errors"].as_array().into_iter().flatten() {
            let index = error["index"].as_u64().map(|i| i as usize);
            let owner = match (error["input_array"].as_str(), index) {
                (Some("attributes"), Some(i)) => request.owners.get(i).copied(),
                _ => None,
            };
            let Some(owner) = owner else {
                return Err(answer.failure(ErrorClass::Permanent, "braze answered with an error naming no object".into()));
            };
            let kind = error["type"].as_str().map(|t| excerpt(t, 120)).unwrap_or_default();
            failures.push(RecordFailure::permanent(owner, format!("braze refused the object: {kind}"), Some(answer.status), excerpt(&error.to_string(), EXCERPT_BYTES)));
        }
        Ok(failures)
    }
}

#[cfg(test)]
mod tests {
    use super::super::request::tests::{braze, record};
    use super::super::{BrazeIdentifier, BrazeMode};
    use super::*;
    use crate::http::headers;
    use crate::{Action, Kind, Verdict};

    #[test]
    fn classification_table() {
        let b = braze(BrazeMode::Attributes, BrazeIdentifier::ExternalId);
        let request = &b.plan(&[record(Action::Upsert, serde_json::json!({"external_id": "u1"}), None)]).requests[0];
        let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let reset = headers(&[("x-ratelimit-reset", "1700000007")]);
        let none = headers(&[]);
        let cases = [
            (201, &none, None),
            (202, &none, None),
            (429, &reset, Some(ErrorClass::Retryable { retry_after: Some(Duration::from_secs(7)) })),
            (429, &none, Some(ErrorClass::Retryable { retry_after: None })),
            (503, &none, Some(ErrorClass::Retryable { retry_after: None })),
            (401, &none, Some(ErrorClass::Fatal)),
            (403, &none, Some(ErrorClass::Fatal)),
            (404, &none, Some(ErrorClass::Fatal)),
            (400, &none, Some(ErrorClass::Permanent)),
        ];
        for (status, headers, expected) in cases {
            let verdict = b.classify(request, &Answer::new(status, headers.clone(), r#"{"message":"success"}"#, now));
            assert_eq!(verdict.request_class(), expected, "{status}");
            if let Verdict::Failed(failure) = verdict {
                assert_eq!(failure.throttle, (status == 429).then_some("http_429"), "{status}");
            }
        }
    }

    #[test]
    fn object_errors_refuse_their_records_and_nameless_errors_fail_the_request() {
        let b = braze(BrazeMode::Attributes, BrazeIdentifier::ExternalId);
        let plan = b.plan(&[
            record(Action::Upsert, serde_json::json!({"plan": "no id"}), None),
            record(Action::Upsert, serde_json::json!({"external_id": "u1"}), None),
            record(Action::Upsert, serde_json::json!({"external_id": "u2"}), None),
        ]);
        let request = &plan.requests[0];
        let body = r#"{"message":"success","errors":[{"type":"'email' is not valid","input_array":"attributes","index":1}]}"#;
        let verdict = b.classify(request, &Answer::new(201, headers(&[]), body, chrono::Utc::now()));
        assert_eq!(verdict.refused(), [(2, ErrorClass::Permanent)], "object 1 is record 2");
        let nameless = r#"{"errors":[{"type":"x","input_array":"events","index":0}]}"#;
        let verdict = b.classify(request, &Answer::new(201, headers(&[]), nameless, chrono::Utc::now()));
        assert_eq!(verdict.request_class(), Some(ErrorClass::Permanent));
    }
}

//! Meta's answers: the Graph API error envelope by code, and the invalid-entry samples of an
//! accepted request.

use std::time::Duration;

use sluice_core::ErrorClass;

use super::request::Request;
use super::Meta;
use crate::http::{excerpt, Answer, EXCERPT_BYTES};
use crate::{DeliveryError, RecordFailure, RequestFailure, RetryLogic};

impl RetryLogic for Meta {
    type Request = Request;
    type Answer = Answer;

    /// Anything but a 2xx without an error envelope fails the request, classified by its code;
    /// the throttle codes are throttle signals.
    fn request_failure(&self, request: &Request, answer: &Answer) -> Option<RequestFailure> {
        if accepted(answer) {
            return None;
        }
        let status = answer.status;
        let code = answer.body["error"]["code"].as_i64();
        let subcode = answer.body["error"]["error_subcode"].as_i64();
        let class = classify(status, code, subcode, regain_access(&answer.headers));
        let code_text = code.map(|c| format!(" code {c}")).unwrap_or_default();
        let error = answer.failure(class, format!("meta answered {status}{code_text} to {}", request.operation.label()));
        Some(RequestFailure::throttled_if(code.and_then(throttle_signal), error))
    }

    /// Records of the rows named by `invalid_entry_samples` (permanent).
    fn record_failures(&self, request: &Request, answer: &Answer) -> Result<Vec<RecordFailure>, DeliveryError> {
        Ok(invalid_entries(request, answer).failures)
    }
}

/// Whether Meta accepted the request (2xx without an error envelope).
pub(super) fn accepted(answer: &Answer) -> bool {
    (200..300).contains(&answer.status) && answer.body.get("error").is_none()
}

/// What `invalid_entry_samples` says about a request's rows.
pub(super) struct InvalidEntries {
    /// The records of every row a sample names.
    pub(super) failures: Vec<RecordFailure>,
    /// How many rows the samples named (the rest of `num_invalid_entries` is untraceable).
    pub(super) traced_rows: u64,
}

/// The rows named by an accepted answer's samples (a sample's key is a value we sent).
pub(super) fn invalid_entries(request: &Request, answer: &Answer) -> InvalidEntries {
    let mut found = InvalidEntries { failures: Vec::new(), traced_rows: 0 };
    let Some(samples) = answer.body["invalid_entry_samples"].as_object() else { return found };
    for (value, reason) in samples {
        let reason = reason.as_str().map(|r| excerpt(r, 200)).unwrap_or_default();
        for (_, owners) in request.rows.iter().zip(&request.owners).filter(|(row, _)| row.iter().any(|v| v == value)) {
            found.traced_rows += 1;
            for &index in owners {
                found.failures.push(RecordFailure::permanent(
                    index,
                    format!("meta counted the row invalid: {reason}"),
                    Some(200),
                    excerpt(&format!("{{\"invalid_entry\":\"{value}\",\"reason\":{:?}}}", reason), EXCERPT_BYTES),
                ));
            }
        }
    }
    found
}

/// The throttle signal of a Graph API code: app (4), user (17), page (32), ad account (613),
/// business use case (80000-80014).
fn throttle_signal(code: i64) -> Option<&'static str> {
    match code {
        4 => Some("app"),
        17 => Some("user"),
        32 => Some("page"),
        613 => Some("ad_account"),
        80000..=80014 => Some("business_use_case"),
        _ => None,
    }
}

/// Class of a failed answer by its Graph API error code (the HTTP status is usually 400, for
/// throttling too).
fn classify(status: u16, code: Option<i64>, subcode: Option<i64>, regain: Option<Duration>) -> ErrorClass {
    let Some(code) = code else {
        return crate::http::classify_status(status, None).unwrap_or(ErrorClass::Retryable { retry_after: None });
    };
    match (code, subcode) {
        // Throttling: app (4), user (17), page (32), ad account (613), business use case.
        (4 | 17 | 32 | 613 | 80000..=80014, _) => ErrorClass::Retryable { retry_after: regain },
        // Unknown / temporary / "failed to update the custom audience" (retried within budget).
        (1 | 2 | 2650, _) => ErrorClass::Retryable { retry_after: regain },
        // The audience is too small to remove from: this request is refused, later ones may pass.
        (200, Some(1870047)) => ErrorClass::Permanent,
        // Token invalid or expired; missing permissions or terms; account blocked: every
        // request would fail the same way.
        (190 | 200 | 294 | 368, _) => ErrorClass::Fatal,
        // Audience flagged (operation_status 471), or the audience / ad account is not
        // reachable by this user: a configuration problem, not a bad record.
        (100, Some(1713230 | 33)) => ErrorClass::Fatal,
        _ if status >= 500 => ErrorClass::Retryable { retry_after: regain },
        _ => ErrorClass::Permanent,
    }
}

/// `estimated_time_to_regain_access` (minutes) from `X-Business-Use-Case-Usage`, the largest
/// over every business and use case; `None` when absent or zero.
fn regain_access(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let usage: serde_json::Value = serde_json::from_str(crate::http::header_text(headers, "x-business-use-case-usage")?).ok()?;
    let minutes = usage
        .as_object()?
        .values()
        .flat_map(|entries| entries.as_array().cloned().unwrap_or_default())
        .filter_map(|entry| entry["estimated_time_to_regain_access"].as_u64())
        .max()?;
    (minutes > 0).then(|| Duration::from_secs(minutes * 60))
}

#[cfg(test)]
mod tests {
    use super::super::request::tests::{meta, record};
    use super::super::AudienceMode;
    use super::*;
    use crate::http::headers;
    use crate::identifiers::sha256_hex;
    use crate::{Action, Kind, Verdict};

    #[test]
    fn classification_table() {
        let m = meta(AudienceMode::Audience);
        let request = &m.plan(&[record("t/0/1", Action::Upsert, serde_json::json!({"email": "a@x.com"}), None)]).requests[0];
        let usage = headers(&[("x-business-use-case-usage", r#"{"1":[{"type":"custom_audience","estimated_time_to_regain_access":5}]}"#)]);
        let wait = Some(Duration::from_secs(300));
        let retry = ErrorClass::Retryable { retry_after: wait };
        let cases = [
            (400, Some(80000), Some(2446079), retry.clone(), Some("business_use_case")),
            (400, Some(80003), None, retry.clone(), Some("business_use_case")),
            (400, Some(80014), None, retry.clone(), Some("business_use_case")),
            (400, Some(17), Some(2446079), retry.clone(), Some("user")),
            (400, Some(4), None, retry.clone(), Some("app")),
            (400, Some(32), None, retry.clone(), Some("page")),
            (400, Some(613), Some(1487742), retry.clone(), Some("ad_account")),
            (500, Some(2), None, retry.clone(), None),
            (400, Some(2650), None, retry.clone(), None),
            (400, Some(190), None, ErrorClass::Fatal, None),
            (401, Some(190), Some(463), ErrorClass::Fatal, None),
            (403, Some(200), None, ErrorClass::Fatal, None),
            (400, Some(294), None, ErrorClass::Fatal, None),
            (400, Some(100), Some(1713230), ErrorClass::Fatal, None),
            (400, Some(200), Some(1870047), ErrorClass::Permanent, None),
            (400, Some(100), None, ErrorClass::Permanent, None),
            (400, Some(105), None, ErrorClass::Permanent, None),
            (200, Some(4), None, retry.clone(), Some("app")),
            (503, None, None, ErrorClass::Retryable { retry_after: None }, None),
            (401, None, None, ErrorClass::Fatal, None),
        ];
        for (status, code, subcode, expected, throttle) in cases {
            let body = match code {
                Some(code) => serde_json::json!({"error": {"code": code, "error_subcode": subcode}}),
                None => serde_json::json!({}),
            };
            let verdict = m.classify(request, &Answer::new(status, usage.clone(), body.to_string(), chrono::Utc::now()));
            assert_eq!(verdict.request_class(), Some(expected), "{status} {code:?} {subcode:?}");
            let Verdict::Failed(failure) = verdict else { unreachable!() };
            assert_eq!(failure.throttle, throttle, "{status} {code:?}");
        }
        let ok = Answer::new(200, headers(&[]), r#"{"num_received":1,"num_invalid_entries":0}"#, chrono::Utc::now());
        assert_eq!(m.classify(request, &ok), Verdict::Applied);
    }

    #[test]
    fn invalid_entry_samples_refuse_the_records_of_their_rows() {
        let m = meta(AudienceMode::Audience);
        let plan = m.plan(&[
            record("t/0/1", Action::Upsert, serde_json::json!({"email": "a@x.com"}), None),
            record("t/0/2", Action::Upsert, serde_json::json!({"email": "bad@x.com"}), None),
            record("t/0/3", Action::Upsert, serde_json::json!({"email": "bad@x.com", "phone": "1"}), None),
        ]);
        let request = &plan.requests[0];
        let body = serde_json::json!({"num_received": 3, "num_invalid_entries": 3, "invalid_entry_samples": {sha256_hex("bad@x.com"): "Email domain not accepted"}});
        let answer = Answer::new(200, headers(&[]), body.to_string(), chrono::Utc::now());
        assert_eq!(m.classify(request, &answer).refused(), [(1, ErrorClass::Permanent), (2, ErrorClass::Permanent)]);
        assert_eq!(invalid_entries(request, &answer).traced_rows, 2, "one untraceable");
    }

    #[test]
    fn regain_access_reads_the_usage_header() {
        let headers = headers(&[(
            "x-business-use-case-usage",
            r#"{"123":[{"type":"custom_audience","call_count":100,"estimated_time_to_regain_access":3},{"type":"ads_management","estimated_time_to_regain_access":0}]}"#,
        )]);
        assert_eq!(regain_access(&headers), Some(Duration::from_secs(180)));
        assert_eq!(regain_access(&reqwest::header::HeaderMap::new()), None);
    }
}

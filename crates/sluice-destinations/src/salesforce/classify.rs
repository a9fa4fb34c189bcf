//! Salesforce's answers: `REQUEST_LIMIT_EXCEEDED` as throttling, the status policy, and the
//! per-record results of a 200.

use std::time::Duration;

use sluice_core::ErrorClass;

use super::request::Request;
use super::Salesforce;
use crate::http::{excerpt, Answer, EXCERPT_BYTES};
use crate::{DeliveryError, RecordFailure, RequestFailure, RetryLogic};

impl RetryLogic for Salesforce {
    type Request = Request;
    type Answer = Answer;

    /// Anything but 200 fails the request; `REQUEST_LIMIT_EXCEEDED` is a throttle.
    fn request_failure(&self, _request: &Request, answer: &Answer) -> Option<RequestFailure> {
        let status = answer.status;
        if status == 200 {
            return None;
        }
        let error_code = answer.body[0]["errorCode"].as_str().unwrap_or("");
        let class = self.class_of(status, error_code, api_usage(answer), answer.retry_after());
        let error = answer.failure(class, format!("salesforce answered {status} {error_code}").trim_end().to_string());
        Some(RequestFailure::throttled_if((error_code == "REQUEST_LIMIT_EXCEEDED").then_some("request_limit_exceeded"), error))
    }

    /// One result per sObject, in order: a `success:false` refuses (or retries) every record of
    /// its sObject; a 200 without one result per sObject is retried as a whole.
    fn record_failures(&self, request: &Request, answer: &Answer) -> Result<Vec<RecordFailure>, DeliveryError> {
        let Some(results) = answer.body.as_array().filter(|r| r.len() == request.records.items.len()) else {
            return Err(answer.failure(
                ErrorClass::Retryable { retry_after: None },
                format!("salesforce answered 200 without one result per record ({} sent)", request.records.items.len()),
            ));
        };
        let mut failures = Vec::new();
        for (result, owners) in results.iter().zip(&request.records.owners) {
            if result["success"].as_bool() == Some(true) {
                continue;
            }
            let code = result["errors"][0]["statusCode"].as_str().unwrap_or("UNKNOWN");
            let class = self.record_class(code);
            let excerpt = excerpt(&result["errors"].to_string(), EXCERPT_BYTES);
            for &index in owners {
                failures.push(RecordFailure { index, class: class.clone(), message: format!("salesforce refused the record: {code}"), status: Some(200), excerpt: excerpt.clone() });
            }
        }
        Ok(failures)
    }
}

impl Salesforce {
    /// Class of a request-level failure.
    fn class_of(&self, status: u16, error_code: &str, usage: Option<(u64, u64)>, retry_after: Option<Duration>) -> ErrorClass {
        match (status, error_code) {
            // Throttling, not an auth failure. A spent 24-hour allocation takes hours to free.
            (403, "REQUEST_LIMIT_EXCEEDED") => {
                let exhausted = usage.is_some_and(|(used, limit)| used >= limit);
                ErrorClass::Retryable { retry_after: exhausted.then_some(self.allocation_exhausted_wait).or(retry_after) }
            }
            (300 | 409, _) => ErrorClass::Permanent,
            (415, _) => ErrorClass::Fatal,
            _ => crate::http::classify_status(status, retry_after).unwrap_or(ErrorClass::Permanent),
        }
    }

    /// Class of one record's `statusCode` in a 200 answer.
    fn record_class(&self, code: &str) -> ErrorClass {
        if code == "ALL_OR_NONE_OPERATION_ROLLED_BACK" || self.retryable_error_codes.iter().any(|c| c == code) {
            ErrorClass::Retryable { retry_after: None }
        } else {
            ErrorClass::Permanent
        }
    }
}

/// `(used, limit)` from `Sforce-Limit-Info: api-usage=18/5000[; per-app-api-usage=...]`.
pub(super) fn api_usage(answer: &Answer) -> Option<(u64, u64)> {
    parse_api_usage(answer.header("sforce-limit-info")?)
}

fn parse_api_usage(header: &str) -> Option<(u64, u64)> {
    let usage = header.split(';').map(str::trim).find_map(|part| part.strip_prefix("api-usage="))?;
    let (used, limit) = usage.split_once('/')?;
    Some((used.trim().parse().ok()?, limit.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::super::request::tests::{record, salesforce};
    use super::*;
    use crate::http::headers;
    use crate::{Action, Kind, Verdict};

    #[test]
    fn classification_table() {
        let s = salesforce();
        let request = &s.plan(&[record("t/0/1", Action::Upsert, serde_json::json!({"Warehouse_Id__c": "W-1"}))]).requests[0];
        let hour = ErrorClass::Retryable { retry_after: Some(Duration::from_secs(3600)) };
        let cases = [
            (403, "REQUEST_LIMIT_EXCEEDED", Some("api-usage=5000/5000"), hour),
            (403, "REQUEST_LIMIT_EXCEEDED", Some("api-usage=18/5000"), ErrorClass::Retryable { retry_after: None }),
            (403, "REQUEST_LIMIT_EXCEEDED", None, ErrorClass::Retryable { retry_after: None }),
            (401, "INVALID_SESSION_ID", None, ErrorClass::Fatal),
            (403, "INSUFFICIENT_ACCESS", None, ErrorClass::Fatal),
            (404, "NOT_FOUND", None, ErrorClass::Fatal),
            (415, "", None, ErrorClass::Fatal),
            (400, "JSON_PARSER_ERROR", None, ErrorClass::Permanent),
            (409, "", None, ErrorClass::Permanent),
            (300, "", None, ErrorClass::Permanent),
            (503, "SERVER_UNAVAILABLE", None, ErrorClass::Retryable { retry_after: None }),
            (500, "", None, ErrorClass::Retryable { retry_after: None }),
        ];
        for (status, code, usage, expected) in cases {
            let headers = headers(&usage.map(|u| vec![("sforce-limit-info", u)]).unwrap_or_default());
            let body = serde_json::json!([{"errorCode": code, "message": "m"}]);
            let verdict = s.classify(request, &Answer::new(status, headers, body.to_string(), chrono::Utc::now()));
            assert_eq!(verdict.request_class(), Some(expected), "{status} {code}");
            let Verdict::Failed(failure) = verdict else { unreachable!() };
            assert_eq!(failure.throttle, (code == "REQUEST_LIMIT_EXCEEDED").then_some("request_limit_exceeded"), "{status} {code}");
        }
        assert_eq!(s.record_class("UNABLE_TO_LOCK_ROW"), ErrorClass::Retryable { retry_after: None });
        assert_eq!(s.record_class("ALL_OR_NONE_OPERATION_ROLLED_BACK"), ErrorClass::Retryable { retry_after: None });
        assert_eq!(s.record_class("REQUIRED_FIELD_MISSING"), ErrorClass::Permanent);
        assert_eq!(s.record_class("DUPLICATES_DETECTED"), ErrorClass::Permanent);
    }

    #[test]
    fn per_record_results_refuse_or_retry_their_records() {
        let s = salesforce();
        let request = &s
            .plan(&[
                record("t/0/1", Action::Upsert, serde_json::json!({"Warehouse_Id__c": "W-1"})),
                record("t/0/2", Action::Upsert, serde_json::json!({"Warehouse_Id__c": "W-2"})),
                record("t/0/3", Action::Upsert, serde_json::json!({"Warehouse_Id__c": "W-3"})),
            ])
            .requests[0];
        let body = serde_json::json!([
            {"success": true},
            {"success": false, "errors": [{"statusCode": "REQUIRED_FIELD_MISSING"}]},
            {"success": false, "errors": [{"statusCode": "UNABLE_TO_LOCK_ROW"}]},
        ]);
        let verdict = s.classify(request, &Answer::new(200, headers(&[]), body.to_string(), chrono::Utc::now()));
        assert_eq!(verdict.refused(), [(1, ErrorClass::Permanent), (2, ErrorClass::Retryable { retry_after: None })]);
        let short = s.classify(request, &Answer::new(200, headers(&[]), "[]", chrono::Utc::now()));
        assert_eq!(short.request_class(), Some(ErrorClass::Retryable { retry_after: None }), "one result per record, or retry");
    }

    #[test]
    fn limit_info_header() {
        assert_eq!(parse_api_usage("api-usage=18/5000"), Some((18, 5000)));
        assert_eq!(parse_api_usage("api-usage=25/5000; per-app-api-usage=17/250(appName=sample)"), Some((25, 5000)));
        assert_eq!(parse_api_usage("nonsense"), None);
    }
}

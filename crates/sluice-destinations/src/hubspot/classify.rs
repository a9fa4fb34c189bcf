//! HubSpot's answers: the status policy with its 429 policies, 423 and 477, and the
//! per-input errors of a 207.

use std::time::Duration;

use chrono::TimeZone as _;
use sluice_core::ErrorClass;

use super::request::Request;
use super::HubSpot;
use crate::http::{excerpt, Answer, EXCERPT_BYTES};
use crate::{DeliveryError, RecordFailure, RequestFailure, RetryLogic};

impl RetryLogic for HubSpot {
    type Request = Request;
    type Answer = Answer;

    /// Anything but 200, 201 and 207 fails the request; a 429 is a throttle, labelled by its
    /// policy.
    fn request_failure(&self, _request: &Request, answer: &Answer) -> Option<RequestFailure> {
        let status = answer.status;
        if matches!(status, 200 | 201 | 207) {
            return None;
        }
        let class = self.class_of(answer);
        let body = &answer.body;
        let throttle = (status == 429).then(|| match body["policyName"].as_str() {
            Some("DAILY") => "daily",
            Some("TEN_SECONDLY_ROLLING") | Some("SECONDLY") => "ten_secondly",
            _ => "other",
        });
        let what = body["category"].as_str().or(body["policyName"].as_str()).unwrap_or("");
        let error = answer.failure(class, format!("hubspot answered {status} {what}").trim_end().to_string());
        Some(RequestFailure::throttled_if(throttle, error))
    }

    /// The records of the inputs a 207 names by `objectWriteTraceId` (permanent); an error
    /// naming no input we sent fails the request.
    fn record_failures(&self, request: &Request, answer: &Answer) -> Result<Vec<RecordFailure>, DeliveryError> {
        if answer.status != 207 {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for error in answer.body["errors"].as_array().into_iter().flatten() {
            let traces: Vec<&str> = error["context"]["objectWriteTraceId"].as_array().into_iter().flatten().filter_map(|t| t.as_str()).collect();
            let positions: Vec<usize> =
                traces.iter().filter_map(|t| request.inputs.items.iter().position(|i| i.trace_id.as_deref() == Some(*t))).collect();
            if positions.is_empty() {
                return Err(answer.failure(ErrorClass::Permanent, "hubspot answered 207 with an error naming no input".into()));
            }
            let category = error["category"].as_str().unwrap_or("ERROR");
            let excerpt = excerpt(&error.to_string(), EXCERPT_BYTES);
            for position in positions {
                for &index in &request.inputs.owners[position] {
                    out.push(RecordFailure::permanent(index, format!("hubspot refused the record: {category}"), Some(207), excerpt.clone()));
                }
            }
        }
        Ok(out)
    }
}

impl HubSpot {
    /// Class of a failed answer.
    fn class_of(&self, answer: &Answer) -> ErrorClass {
        let retry_after = answer.retry_after();
        match answer.status {
            429 => match answer.body["policyName"].as_str() {
                Some("DAILY") => ErrorClass::Retryable { retry_after: Some(until_next_midnight(answer.at, self.portal_time_zone)) },
                _ => {
                    let interval = answer
                        .header("x-hubspot-ratelimit-interval-milliseconds")
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_millis);
                    ErrorClass::Retryable { retry_after: retry_after.or(interval).or(Some(self.ten_secondly_backoff)) }
                }
            },
            // A locked record stays locked about 2 s.
            423 => ErrorClass::Retryable { retry_after: Some(retry_after.unwrap_or(Duration::ZERO).max(Duration::from_secs(2))) },
            477 => ErrorClass::Retryable { retry_after },
            status => crate::http::classify_status(status, retry_after).unwrap_or(ErrorClass::Permanent),
        }
    }
}

/// Time from `now` to the next midnight in `zone` (where HubSpot's daily limit resets). On a
/// day whose midnight is skipped by a DST change, the first instant of that day.
pub fn until_next_midnight(now: chrono::DateTime<chrono::Utc>, zone: chrono_tz::Tz) -> Duration {
    let local = now.with_timezone(&zone);
    let tomorrow = local.date_naive().succ_opt().expect("not the end of time");
    let mut at = tomorrow.and_hms_opt(0, 0, 0).expect("midnight exists");
    let next = loop {
        if let Some(t) = zone.from_local_datetime(&at).earliest() {
            break t;
        }
        at += chrono::Duration::minutes(30);
    };
    (next.with_timezone(&chrono::Utc) - now).to_std().unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::super::request::tests::hubspot;
    use super::*;
    use crate::http::headers;
    use crate::record::test_record;
    use crate::{Action, Kind, OutboundRecord, Verdict};

    fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&chrono::Utc)
    }

    fn request(h: &HubSpot, emails: &[&str]) -> Request {
        let batch: Vec<OutboundRecord> =
            emails.iter().enumerate().map(|(i, email)| test_record(&format!("t/0/{i}"), Action::Upsert, serde_json::json!({ "email": email }), None)).collect();
        h.plan(&batch).requests.remove(0)
    }

    #[test]
    fn classification_table() {
        let h = hubspot("America/New_York");
        let request = request(&h, &["a@x.com"]);
        let now = at("2026-11-25T20:00:00Z"); // 15:00 in New York: 9 h to midnight
        let interval = headers(&[("x-hubspot-ratelimit-interval-milliseconds", "10000")]);
        let retry = headers(&[("retry-after", "3")]);
        let none = headers(&[]);
        let secs = |s| ErrorClass::Retryable { retry_after: Some(Duration::from_secs(s)) };
        let cases = [
            (200, serde_json::json!({}), &none, None, None),
            (201, serde_json::json!({}), &none, None, None),
            (202, serde_json::json!({}), &none, Some(ErrorClass::Permanent), None),
            (429, serde_json::json!({"policyName": "DAILY"}), &none, Some(secs(9 * 3600)), Some("daily")),
            (429, serde_json::json!({"policyName": "TEN_SECONDLY_ROLLING"}), &interval, Some(secs(10)), Some("ten_secondly")),
            (429, serde_json::json!({"policyName": "TEN_SECONDLY_ROLLING"}), &retry, Some(secs(3)), Some("ten_secondly")),
            (429, serde_json::json!({"policyName": "SECONDLY"}), &none, Some(secs(10)), Some("ten_secondly")),
            (429, serde_json::json!({}), &none, Some(secs(10)), Some("other")),
            (423, serde_json::json!({}), &none, Some(secs(2)), None),
            (477, serde_json::json!({}), &retry, Some(secs(3)), None),
            (502, serde_json::json!({}), &none, Some(ErrorClass::Retryable { retry_after: None }), None),
            (401, serde_json::json!({}), &none, Some(ErrorClass::Fatal), None),
            (403, serde_json::json!({"category": "MISSING_SCOPES"}), &none, Some(ErrorClass::Fatal), None),
            (400, serde_json::json!({"category": "VALIDATION_ERROR"}), &none, Some(ErrorClass::Permanent), None),
            (409, serde_json::json!({"category": "CONFLICT"}), &none, Some(ErrorClass::Permanent), None),
        ];
        for (status, body, headers, expected, throttle) in cases {
            let verdict = h.classify(&request, &Answer::new(status, headers.clone(), body.to_string(), now));
            assert_eq!(verdict.request_class(), expected, "{status} {body}");
            if let Verdict::Failed(failure) = verdict {
                assert_eq!(failure.throttle, throttle, "{status} {body}");
            }
        }
    }

    #[test]
    fn multi_status_refuses_the_records_of_the_inputs_it_names() {
        let h = hubspot("UTC");
        let request = request(&h, &["a@x.com", "not-an-email", "c@x.com"]);
        let body = serde_json::json!({"status": "COMPLETE", "results": [],
            "errors": [{"status": "error", "category": "VALIDATION_ERROR", "context": {"objectWriteTraceId": ["t/0/1"]}}]});
        let verdict = h.classify(&request, &Answer::new(207, headers(&[]), body.to_string(), chrono::Utc::now()));
        assert_eq!(verdict.refused(), [(1, ErrorClass::Permanent)]);
        let nameless = serde_json::json!({"errors": [{"category": "VALIDATION_ERROR", "context": {}}]});
        let verdict = h.classify(&request, &Answer::new(207, headers(&[]), nameless.to_string(), chrono::Utc::now()));
        assert_eq!(verdict.request_class(), Some(ErrorClass::Permanent), "an error naming no input fails the request");
    }

    #[test]
    fn daily_reset_is_midnight_in_the_portal_zone() {
        assert_eq!(until_next_midnight(at("2026-11-25T23:59:00Z"), chrono_tz::UTC), Duration::from_secs(60));
        assert_eq!(until_next_midnight(at("2026-11-25T05:30:00Z"), "Europe/Berlin".parse().unwrap()), Duration::from_secs(17 * 3600 + 1800));
    }
}

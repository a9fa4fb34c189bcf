//! Salesforce's answers: `REQUEST_LIMIT_EXCEEDED` as throttling, the status policy, the
//! per-record results of a 200 (upsert and delete), and what a query told about which records
//! exist.

use std::time::Duration;

use sluice_core::ErrorClass;

use super::request::{Operation, Request};
use super::Salesforce;
use crate::http::{excerpt, Answer, EXCERPT_BYTES};
use crate::{DeliveryError, RecordFailure, RequestFailure, RetryLogic};

/// Salesforce's answer to one request: for a delete, the query and the delete it decided.
#[derive(Debug)]
pub struct Exchange {
    /// The SOQL query's answer (its last page), for a delete.
    pub(super) lookup: Option<Answer>,
    /// Per sObject (position in the request), the Ids the query found.
    pub(super) found: Vec<Vec<String>>,
    /// The upsert's or the delete's answer; `None` when the query failed or found nothing.
    pub(super) write: Option<Answer>,
    /// Per id the delete carried, in its order: the sObject position and the Id.
    pub(super) deleted: Vec<(usize, String)>,
}

/// A delete result for a record already gone: confirmed, not refused.
const ENTITY_IS_DELETED: &str = "ENTITY_IS_DELETED";

/// Records of an accepted delete that were already gone: external IDs the query did not find,
/// and Ids answered `ENTITY_IS_DELETED` (counted once per sObject).
pub(super) fn already_deleted(request: &Request, exchange: &Exchange) -> usize {
    if request.operation != Operation::Delete {
        return 0;
    }
    let mut gone: Vec<usize> = (0..exchange.found.len()).filter(|&p| exchange.found[p].is_empty()).collect();
    if let Some(results) = exchange.write.as_ref().and_then(|w| w.body.as_array()) {
        for ((position, _), result) in exchange.deleted.iter().zip(results) {
            if result["errors"][0]["statusCode"] == ENTITY_IS_DELETED && !gone.contains(position) {
                gone.push(*position);
            }
        }
    }
    gone.iter().map(|&p| request.records.owners[p].len()).sum()
}

impl RetryLogic for Salesforce {
    type Request = Request;
    type Answer = Exchange;

    /// The query's failure, else the write's: anything but 200 fails the request;
    /// `REQUEST_LIMIT_EXCEEDED` is a throttle.
    fn request_failure(&self, _request: &Request, exchange: &Exchange) -> Option<RequestFailure> {
        let answer = [exchange.lookup.as_ref(), exchange.write.as_ref()].into_iter().flatten().find(|a| a.status != 200)?;
        let status = answer.status;
        let error_code = answer.body[0]["errorCode"].as_str().unwrap_or("");
        let class = self.class_of(status, error_code, api_usage(answer), answer.retry_after());
        let error = answer.failure(class, format!("salesforce answered {status} {error_code}").trim_end().to_string());
        Some(RequestFailure::throttled_if((error_code == "REQUEST_LIMIT_EXCEEDED").then_some("request_limit_exceeded"), error))
    }

    /// One result per sObject (upsert) or per Id (delete), in order: a `success:false` refuses
    /// (or retries) every record of its sObject, except a delete of a record already gone; a
    /// 200 without one result per item is retried as a whole.
    fn record_failures(&self, request: &Request, exchange: &Exchange) -> Result<Vec<RecordFailure>, DeliveryError> {
        let Some(answer) = &exchange.write else { return Ok(Vec::new()) };
        let positions: Vec<usize> = match request.operation {
            Operation::Upsert => (0..request.records.items.len()).collect(),
            Operation::Delete => exchange.deleted.iter().map(|(position, _)| *position).collect(),
        };
        let Some(results) = answer.body.as_array().filter(|r| r.len() == positions.len()) else {
            return Err(answer.failure(
                ErrorClass::Retryable { retry_after: None },
                format!("salesforce answered 200 without one result per record ({} sent)", positions.len()),
            ));
        };
        let mut failures = Vec::new();
        for (result, &position) in results.iter().zip(&positions) {
            let code = result["errors"][0]["statusCode"].as_str().unwrap_or("UNKNOWN");
            if result["success"].as_bool() == Some(true) || (request.operation == Operation::Delete && code == ENTITY_IS_DELETED) {
                continue;
            }
            let class = self.record_class(code);
            let excerpt = excerpt(&result["errors"].to_string(), EXCERPT_BYTES);
            for &index in &request.records.owners[position] {
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
    use super::super::request::tests::{record, salesforce, salesforce_with};
    use super::*;
    use crate::http::headers;
    use crate::{Action, Kind, Verdict};

    fn upserted(answer: Answer) -> Exchange {
        Exchange { lookup: None, found: Vec::new(), write: Some(answer), deleted: Vec::new() }
    }

    fn answer(status: u16, body: serde_json::Value) -> Answer {
        Answer::new(status, headers(&[]), body.to_string(), chrono::Utc::now())
    }

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
            let verdict = s.classify(request, &upserted(Answer::new(status, headers, body.to_string(), chrono::Utc::now())));
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
        let verdict = s.classify(request, &upserted(answer(200, body)));
        assert_eq!(verdict.refused(), [(1, ErrorClass::Permanent), (2, ErrorClass::Retryable { retry_after: None })]);
        let short = s.classify(request, &upserted(answer(200, serde_json::json!([]))));
        assert_eq!(short.request_class(), Some(ErrorClass::Retryable { retry_after: None }), "one result per record, or retry");
    }

    #[test]
    fn deletes_classify_per_id_and_count_what_was_already_gone() {
        let s = salesforce_with(crate::OnDelete::Delete);
        let request = &s
            .plan(&[
                record("t/0/1", Action::Delete, serde_json::json!({"Warehouse_Id__c": "W-1"})),
                record("t/0/2", Action::Delete, serde_json::json!({"Warehouse_Id__c": "W-2"})),
                record("t/0/3", Action::Delete, serde_json::json!({"Warehouse_Id__c": "W-3"})),
                record("t/0/4", Action::Delete, serde_json::json!({"Warehouse_Id__c": "W-4"})),
            ])
            .requests[0];
        let lookup = answer(200, serde_json::json!({"totalSize": 3, "done": true, "records": []}));
        let exchange = Exchange {
            lookup: Some(lookup.clone()),
            found: vec![vec!["a".into()], vec!["b".into()], vec![], vec!["d".into()]],
            write: Some(answer(
                200,
                serde_json::json!([
                    {"id": "a", "success": true, "errors": []},
                    {"id": "b", "success": false, "errors": [{"statusCode": "ENTITY_IS_DELETED", "message": "entity is deleted"}]},
                    {"id": "d", "success": false, "errors": [{"statusCode": "DELETE_FAILED", "message": "associated with cases"}]},
                ]),
            )),
            deleted: vec![(0, "a".into()), (1, "b".into()), (3, "d".into())],
        };
        assert_eq!(s.classify(request, &exchange).refused(), [(3, ErrorClass::Permanent)], "only the delete Salesforce refused");
        assert_eq!(already_deleted(request, &exchange), 2, "W-3 was not found, W-2 was already deleted");
        let failed_query = Exchange { lookup: Some(answer(401, serde_json::json!([{"errorCode": "INVALID_SESSION_ID"}]))), found: Vec::new(), write: None, deleted: Vec::new() };
        assert_eq!(s.classify(request, &failed_query).request_class(), Some(ErrorClass::Fatal), "a failed query fails the request");
        let nothing = Exchange { lookup: Some(lookup), found: vec![vec![]; 4], write: None, deleted: Vec::new() };
        assert_eq!((s.classify(request, &nothing), already_deleted(request, &nothing)), (Verdict::Applied, 4));
    }

    #[test]
    fn limit_info_header() {
        assert_eq!(parse_api_usage("api-usage=18/5000"), Some((18, 5000)));
        assert_eq!(parse_api_usage("api-usage=25/5000; per-app-api-usage=17/250(appName=sample)"), Some((25, 5000)));
        assert_eq!(parse_api_usage("nonsense"), None);
    }
}

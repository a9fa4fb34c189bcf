//! HubSpot's answers: the status policy with its 429 policies, 423 and 477, the per-input
//! errors of a 207, and what a read told about which records exist.

use std::time::Duration;

use chrono::TimeZone as _;
use sluice_core::ErrorClass;

use super::request::{Operation, Request};
use super::HubSpot;
use crate::http::{excerpt, Answer, EXCERPT_BYTES};
use crate::plan::Unchanged;
use crate::{DeliveryError, RecordFailure, RequestFailure, RetryLogic};

/// HubSpot's answer to one request: the read, when the operation looks records up first, and
/// the write it decided.
#[derive(Debug)]
pub struct Exchange {
    /// The `batch/read` answer (update, create, archive).
    pub(super) lookup: Option<Answer>,
    /// The write's answer; `None` when the read failed or left nothing to write.
    pub(super) write: Option<Answer>,
    /// The inputs the write carried (positions in the request), in body order.
    pub(super) sent: Vec<usize>,
}

/// Whether a `batch/read` answered: a 200, or a 207 whose errors only list ids it did not find
/// (`OBJECT_NOT_FOUND`). Any other error in a read's 207 fails the request, so a record is never
/// taken for absent because the read went wrong.
pub(super) fn read_succeeded(answer: &Answer) -> bool {
    match answer.status {
        200 => true,
        207 => answer.body["errors"].as_array().into_iter().flatten().all(|e| e["category"] == "OBJECT_NOT_FOUND"),
        _ => false,
    }
}

/// An error of a 207 that leaves its records alone instead of refusing them: a create of a
/// record that exists (created since the read), an update of one that is gone.
fn leaves_alone(operation: Operation, category: &str) -> bool {
    matches!((operation, category), (Operation::Create, "CONFLICT") | (Operation::Update, "OBJECT_NOT_FOUND"))
}

/// The errors of a 207 write, each with its category and the inputs (positions) it names by
/// `objectWriteTraceId`.
fn named_errors<'a>(request: &Request, answer: &'a Answer) -> Vec<(&'a serde_json::Value, &'a str, Vec<usize>)> {
    if answer.status != 207 {
        return Vec::new();
    }
    answer.body["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|error| {
            let traces = error["context"]["objectWriteTraceId"].as_array().into_iter().flatten().filter_map(|t| t.as_str());
            let positions = traces.filter_map(|t| request.inputs.items.iter().position(|i| i.trace_id.as_deref() == Some(t))).collect();
            (error, error["category"].as_str().unwrap_or("ERROR"), positions)
        })
        .collect()
}

impl RetryLogic for HubSpot {
    type Request = Request;
    type Answer = Exchange;

    /// The read's failure, else the write's: anything but 200, 201 and 207 (204 too for an
    /// archive) fails the request, except a lone create answered `CONFLICT` (the record
    /// exists: left alone). A 429 is a throttle, labelled by its policy.
    fn request_failure(&self, request: &Request, exchange: &Exchange) -> Option<RequestFailure> {
        if let Some(lookup) = exchange.lookup.as_ref().filter(|l| !read_succeeded(l)) {
            return Some(self.failure(lookup));
        }
        let write = exchange.write.as_ref()?;
        let accepted = match request.operation {
            Operation::Archive => matches!(write.status, 200 | 204),
            Operation::Upsert | Operation::Update | Operation::Create => matches!(write.status, 200 | 201 | 207),
        };
        let lone_conflict = request.operation == Operation::Create && write.status == 409 && exchange.sent.len() == 1;
        (!accepted && !lone_conflict).then(|| self.failure(write))
    }

    /// The records of the inputs a 207 names by `objectWriteTraceId` (permanent), except those
    /// it leaves alone; an error naming no input we sent fails the request.
    fn record_failures(&self, request: &Request, exchange: &Exchange) -> Result<Vec<RecordFailure>, DeliveryError> {
        let Some(write) = &exchange.write else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for (error, category, positions) in named_errors(request, write) {
            if leaves_alone(request.operation, category) {
                continue;
            }
            if positions.is_empty() {
                return Err(write.failure(ErrorClass::Permanent, "hubspot answered 207 with an error naming no input".into()));
            }
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
    /// Per input of `request`, the HubSpot record id a `batch/read` answer found for its id.
    pub(super) fn found_ids(&self, request: &Request, lookup: &Answer) -> Vec<Option<String>> {
        let mut found = vec![None; request.inputs.items.len()];
        for result in lookup.body["results"].as_array().into_iter().flatten() {
            let value = result["properties"][&self.id_property].as_str().and_then(|v| self.canonical_id(v));
            let id = match &result["id"] {
                serde_json::Value::String(id) => Some(id.clone()),
                serde_json::Value::Number(id) => Some(id.to_string()),
                _ => None,
            };
            if let (Some(position), Some(id)) = (value.and_then(|v| request.inputs.position(&v)), id) {
                found[position] = Some(id);
            }
        }
        found
    }

    /// The records an accepted exchange left alone, by why (counts of records).
    pub(super) fn unchanged(&self, request: &Request, exchange: &Exchange) -> Vec<(Unchanged, usize)> {
        let records = |positions: &mut dyn Iterator<Item = usize>| positions.map(|p| request.inputs.owners[p].len()).sum::<usize>();
        let unsent = (0..request.inputs.items.len()).filter(|p| !exchange.sent.contains(p));
        let by_answer: Vec<usize> = match &exchange.write {
            Some(write) if write.status == 409 => exchange.sent.clone(),
            Some(write) => named_errors(request, write)
                .into_iter()
                .filter(|(_, category, _)| leaves_alone(request.operation, category))
                .flat_map(|(_, _, positions)| positions)
                .collect(),
            None => Vec::new(),
        };
        match request.operation {
            Operation::Upsert => Vec::new(),
            Operation::Update => vec![(Unchanged::NotFound, records(&mut unsent.chain(by_answer)))],
            Operation::Create => vec![(Unchanged::Exists, records(&mut unsent.chain(by_answer)))],
            Operation::Archive => vec![(Unchanged::AlreadyDeleted, records(&mut unsent.into_iter()))],
        }
    }

    /// A failed answer (a read's or a write's) as a request failure; a 429 is a throttle,
    /// labelled by its policy. A read's 207 with an error other than `OBJECT_NOT_FOUND` is
    /// permanent (the sink isolates the record).
    fn failure(&self, answer: &Answer) -> RequestFailure {
        let status = answer.status;
        let class = if status == 207 { ErrorClass::Permanent } else { self.class_of(answer) };
        let body = &answer.body;
        let throttle = (status == 429).then(|| match body["policyName"].as_str() {
            Some("DAILY") => "daily",
            Some("TEN_SECONDLY_ROLLING") | Some("SECONDLY") => "ten_secondly",
            _ => "other",
        });
        let what = body["category"].as_str().or(body["policyName"].as_str()).unwrap_or("");
        let error = answer.failure(class, format!("hubspot answered {status} {what}").trim_end().to_string());
        RequestFailure::throttled_if(throttle, error)
    }

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
    use super::super::request::tests::{hubspot, hubspot_with};
    use super::*;
    use crate::http::headers;
    use crate::record::test_record;
    use crate::{Action, Kind, OutboundRecord, Verdict};

    fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&chrono::Utc)
    }

    fn request_of(h: &HubSpot, action: Action, emails: &[&str]) -> Request {
        let batch: Vec<OutboundRecord> =
            emails.iter().enumerate().map(|(i, email)| test_record(&format!("t/0/{i}"), action, serde_json::json!({ "email": email }), None)).collect();
        h.plan(&batch).requests.remove(0)
    }

    fn request(h: &HubSpot, emails: &[&str]) -> Request {
        request_of(h, Action::Upsert, emails)
    }

    /// An upsert's exchange: the write only, carrying every input.
    fn written(request: &Request, answer: Answer) -> Exchange {
        Exchange { lookup: None, write: Some(answer), sent: (0..request.inputs.items.len()).collect() }
    }

    fn answer(status: u16, body: serde_json::Value) -> Answer {
        Answer::new(status, headers(&[]), body.to_string(), chrono::Utc::now())
    }

    /// A read-then-write exchange: `found` per input, the write (if any) carrying what the
    /// operation writes.
    fn looked_up(h: &HubSpot, request: &Request, found: &[Option<&str>], write: Option<Answer>) -> Exchange {
        let results: Vec<serde_json::Value> = found
            .iter()
            .zip(&request.inputs.items)
            .filter_map(|(f, input)| f.map(|id| serde_json::json!({"id": id, "properties": {"email": input.id}})))
            .collect();
        let lookup = answer(200, serde_json::json!({"status": "COMPLETE", "results": results}));
        let found = h.found_ids(request, &lookup);
        let sent = (0..found.len()).filter(|&i| request.operation.writes(found[i].as_deref())).collect();
        Exchange { lookup: Some(lookup), write, sent }
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
            let verdict = h.classify(&request, &written(&request, Answer::new(status, headers.clone(), body.to_string(), now)));
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
        let verdict = h.classify(&request, &written(&request, answer(207, body)));
        assert_eq!(verdict.refused(), [(1, ErrorClass::Permanent)]);
        let nameless = serde_json::json!({"errors": [{"category": "VALIDATION_ERROR", "context": {}}]});
        let verdict = h.classify(&request, &written(&request, answer(207, nameless)));
        assert_eq!(verdict.request_class(), Some(ErrorClass::Permanent), "an error naming no input fails the request");
    }

    #[test]
    fn a_failed_read_fails_the_request_with_its_own_class() {
        let h = hubspot_with("UTC", crate::OnDelete::Delete);
        let request = request_of(&h, Action::Update, &["a@x.com"]);
        let throttled = Exchange {
            lookup: Some(answer(429, serde_json::json!({"policyName": "TEN_SECONDLY_ROLLING"}))),
            write: None,
            sent: Vec::new(),
        };
        let Verdict::Failed(failure) = h.classify(&request, &throttled) else { panic!("a throttled read fails the request") };
        assert_eq!(failure.throttle, Some("ten_secondly"));
        let unauthorised = Exchange { lookup: Some(answer(401, serde_json::json!({}))), write: None, sent: Vec::new() };
        assert_eq!(h.classify(&request, &unauthorised).request_class(), Some(ErrorClass::Fatal));
        let missing_only = serde_json::json!({"results": [], "errors": [{"category": "OBJECT_NOT_FOUND", "context": {"ids": ["a@x.com"]}}]});
        assert!(read_succeeded(&answer(207, missing_only)), "a 207 listing what it did not find is an answer");
        let broken = Exchange { lookup: Some(answer(207, serde_json::json!({"errors": [{"category": "VALIDATION_ERROR"}]}))), ..throttled };
        assert_eq!(h.classify(&request, &broken).request_class(), Some(ErrorClass::Permanent), "never taken for absent");
    }

    /// What a read decides: update and archive what exists, create what does not; everything
    /// else is left alone and counted, never refused.
    #[test]
    fn reads_decide_what_is_written_and_what_is_left_alone() {
        let h = hubspot_with("UTC", crate::OnDelete::Delete);
        let update = request_of(&h, Action::Update, &["a@x.com", "b@x.com"]);
        let exchange = looked_up(&h, &update, &[Some("7"), None], Some(answer(200, serde_json::json!({"status": "COMPLETE"}))));
        assert_eq!(exchange.sent, [0], "only the record found is updated");
        assert_eq!(h.found_ids(&update, exchange.lookup.as_ref().unwrap()), [Some("7".to_string()), None]);
        assert_eq!(h.classify(&update, &exchange), Verdict::Applied);
        assert_eq!(h.unchanged(&update, &exchange), [(Unchanged::NotFound, 1)]);

        let create = request_of(&h, Action::Create, &["a@x.com", "b@x.com"]);
        let exchange = looked_up(&h, &create, &[Some("7"), None], Some(answer(201, serde_json::json!({"status": "COMPLETE"}))));
        assert_eq!(exchange.sent, [1], "only the record not found is created");
        assert_eq!(h.unchanged(&create, &exchange), [(Unchanged::Exists, 1)]);
        let raced = looked_up(&h, &create, &[None, Some("8")], Some(answer(409, serde_json::json!({"category": "CONFLICT"}))));
        assert_eq!(h.classify(&create, &raced), Verdict::Applied, "a lone create that conflicts: it exists, left alone");
        assert_eq!(h.unchanged(&create, &raced), [(Unchanged::Exists, 2)]);
        let both = looked_up(&h, &create, &[None, None], Some(answer(409, serde_json::json!({"category": "CONFLICT"}))));
        assert_eq!(h.classify(&create, &both).request_class(), Some(ErrorClass::Permanent), "several: isolated by the sink");
        let multi = serde_json::json!({"errors": [{"category": "CONFLICT", "context": {"objectWriteTraceId": ["t/0/0"]}}]});
        let partly = looked_up(&h, &create, &[None, None], Some(answer(207, multi)));
        assert_eq!(h.classify(&create, &partly), Verdict::Applied);
        assert_eq!(h.unchanged(&create, &partly), [(Unchanged::Exists, 1)]);

        let archive = h.plan(&[test_record("t/0/0", Action::Delete, serde_json::json!({"email": "a@x.com"}), None), test_record("t/0/1", Action::Delete, serde_json::json!({"email": "b@x.com"}), None)]).requests.remove(0);
        let exchange = looked_up(&h, &archive, &[None, Some("9")], Some(answer(204, serde_json::Value::Null)));
        assert_eq!(exchange.sent, [1]);
        assert_eq!(h.classify(&archive, &exchange), Verdict::Applied);
        assert_eq!(h.unchanged(&archive, &exchange), [(Unchanged::AlreadyDeleted, 1)]);
        let gone = looked_up(&h, &archive, &[None, None], None);
        assert_eq!((h.classify(&archive, &gone), h.unchanged(&archive, &gone)), (Verdict::Applied, vec![(Unchanged::AlreadyDeleted, 2)]), "nothing to archive: no write");
    }

    #[test]
    fn daily_reset_is_midnight_in_the_portal_zone() {
        assert_eq!(until_next_midnight(at("2026-11-25T23:59:00Z"), chrono_tz::UTC), Duration::from_secs(60));
        assert_eq!(until_next_midnight(at("2026-11-25T05:30:00Z"), "Europe/Berlin".parse().unwrap()), Duration::from_secs(17 * 3600 + 1800));
    }
}

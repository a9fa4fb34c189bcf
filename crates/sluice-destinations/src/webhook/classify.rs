//! The webhook's answers: the default HTTP status policy, plus 3xx refused and the per-record
//! results of a `207 Multi-Status`.

use sluice_core::ErrorClass;

use super::request::Request;
use super::Webhook;
use crate::http::{classify_status, excerpt, Answer, EXCERPT_BYTES};
use crate::{DeliveryError, RecordFailure, RequestFailure, RetryLogic};

impl RetryLogic for Webhook {
    type Request = Request;
    type Answer = Answer;

    /// The default HTTP policy, which already says what Standard Webhooks asks: 2xx success,
    /// 3xx failure, 410 disables the endpoint (fatal), 429/502/504 throttle (retryable,
    /// `Retry-After` honoured).
    fn request_failure(&self, _request: &Request, answer: &Answer) -> Option<RequestFailure> {
        let class = match answer.status {
            300..=399 => ErrorClass::Permanent,
            status => classify_status(status, answer.retry_after())?,
        };
        let throttle = match answer.status {
            429 => Some("http_429"),
            502 => Some("http_502"),
            504 => Some("http_504"),
            _ => None,
        };
        Some(RequestFailure::throttled_if(throttle, answer.failure(class, format!("webhook answered {}", answer.status))))
    }

    /// Only a 207 may carry per-record results: `{"errors": [{"index": 3, "message": "...",
    /// "retryable": false}]}`. Records not listed were applied. `retryable` defaults to false
    /// (a refusal); a body that does not parse refuses nothing, since the status said success.
    fn record_failures(&self, request: &Request, answer: &Answer) -> Result<Vec<RecordFailure>, DeliveryError> {
        if answer.status != 207 {
            return Ok(Vec::new());
        }
        #[derive(serde::Deserialize)]
        struct Results {
            #[serde(default)]
            errors: Vec<ItemError>,
        }
        #[derive(serde::Deserialize)]
        struct ItemError {
            index: usize,
            #[serde(default)]
            message: String,
            #[serde(default)]
            retryable: bool,
        }
        let Ok(parsed) = serde_json::from_str::<Results>(&answer.text) else {
            tracing::warn!("207 answer without a readable `errors` list; treating the batch as applied");
            return Ok(Vec::new());
        };
        Ok(parsed
            .errors
            .into_iter()
            .filter(|e| e.index < request.records)
            .map(|e| RecordFailure {
                index: e.index,
                class: if e.retryable { ErrorClass::Retryable { retry_after: None } } else { ErrorClass::Permanent },
                excerpt: excerpt(&e.message, EXCERPT_BYTES),
                message: format!("webhook refused the record: {}", excerpt(&e.message, 200)),
                status: Some(207),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sluice_core::ErrorClass;

    use super::super::request::plan;
    use super::super::{Webhook, WebhookConfig};
    use crate::http::{headers, Answer};
    use crate::{Kind, Metrics, RetryLogic};

    fn webhook() -> Webhook {
        let config = WebhookConfig { url: "http://127.0.0.1:1".into(), headers: Default::default(), timeout_ms: 1000, signing_secret: None };
        Webhook::new(&config, Metrics::new("test", Webhook::NAME)).unwrap()
    }

    fn records(n: usize) -> Vec<crate::OutboundRecord> {
        (0..n).map(|i| crate::record::test_record(&format!("t/0/{i}"), crate::Action::Upsert, serde_json::json!({}), None)).collect()
    }

    #[test]
    fn classification_table() {
        let hook = webhook();
        let request = &plan(&records(1)).requests[0];
        let at = chrono::Utc::now();
        let ra = Some(Duration::from_secs(2));
        let cases = [
            (200, None, None),
            (204, None, None),
            (301, Some(ErrorClass::Permanent), None),
            (410, Some(ErrorClass::Fatal), None),
            (401, Some(ErrorClass::Fatal), None),
            (429, Some(ErrorClass::Retryable { retry_after: ra }), Some("http_429")),
            (502, Some(ErrorClass::Retryable { retry_after: ra }), Some("http_502")),
            (504, Some(ErrorClass::Retryable { retry_after: ra }), Some("http_504")),
            (503, Some(ErrorClass::Retryable { retry_after: ra }), None),
            (422, Some(ErrorClass::Permanent), None),
        ];
        for (status, expected, throttle) in cases {
            let verdict = hook.classify(request, &Answer::new(status, headers(&[("retry-after", "2")]), "", at));
            assert_eq!(verdict.request_class(), expected, "status {status}");
            if let crate::Verdict::Failed(failure) = verdict {
                assert_eq!(failure.throttle, throttle, "status {status}");
                assert_eq!(failure.error.message, format!("webhook answered {status}"));
            }
        }
    }

    #[test]
    fn multi_status_lists_refused_records() {
        let hook = webhook();
        let request = &plan(&records(3)).requests[0];
        let answer = |text: &str| Answer::new(207, headers(&[]), text, chrono::Utc::now());
        let verdict = hook.classify(request, &answer(r#"{"errors":[{"index":1,"message":"bad email"},{"index":2,"retryable":true},{"index":9}]}"#));
        assert_eq!(verdict.refused(), [(1, ErrorClass::Permanent), (2, ErrorClass::Retryable { retry_after: None })], "out-of-range indexes are ignored");
        assert_eq!(hook.classify(request, &answer("not json")), crate::Verdict::Applied);
        assert_eq!(hook.classify(&plan(&records(3)).requests[0], &Answer::new(200, headers(&[]), r#"{"errors":[{"index":1}]}"#, chrono::Utc::now())), crate::Verdict::Applied, "only a 207 lists failures");
    }
}

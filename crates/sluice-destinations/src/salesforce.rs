//! Salesforce: sObject Collections upsert by external ID.
//!
//! Request: `PATCH <instance_url>/services/data/<api_version>/composite/sobjects/<sobject>/
//! <external_id_field>`, `Authorization: Bearer`, body `{"allOrNone":false,"records":[{"attributes":
//! {"type":"Contact"},"Warehouse_Id__c":"W-1",...}]}`, at most 200 records of one type. Mapped
//! field names are Salesforce field names; a null clears the field; a mapped `Id` is dropped
//! (Salesforce refuses it on upsert; the external ID decides).
//!
//! Actions: Upsert/Update/Create/Event upsert; Delete follows `on_delete` (Collections delete
//! takes record ids, not external ids). The external ID should be a stable warehouse key: the
//! body's value is what Salesforce matches on, so when it changes the new value is upserted,
//! the old record stays, and `sluice_destination_salesforce_external_id_changes_total` counts
//! it. Two
//! records with one external ID in a batch are merged (later fields win): Salesforce's
//! behaviour for duplicates in one request is undocumented.
//!
//! Answers:
//! - 200 with one result per record, in order: `success:false` refuses that record (permanent),
//!   unless its `statusCode` is in `retryable_error_codes` (`UNABLE_TO_LOCK_ROW` by default) or
//!   is `ALL_OR_NONE_OPERATION_ROLLED_BACK` (collateral): those are retried.
//! - 403 `REQUEST_LIMIT_EXCEEDED`: throttling, retryable, never fatal. When `Sforce-Limit-Info`
//!   shows the 24-hour allocation spent, the wait is `allocation_exhausted_wait_secs`;
//!   otherwise (concurrency) backoff decides.
//! - 401 (`INVALID_SESSION_ID`), other 403, 404, 405, 415: fatal. 400/409/300: permanent.
//!   500/503: retryable.

use std::collections::HashMap;
use std::time::Duration;

use sluice_core::config::{SalesforceConfig, UnsupportedDelete};
use sluice_core::ErrorClass;

use crate::http::{answered, bearer, header_text, retry_after_of, send_json, Answer, EXCERPT_BYTES};
use crate::{DeliveryError, Destination, OutboundRecord, RecordFailure};

// ---- client -------------------------------------------------------------------------------

/// The Salesforce destination.
pub struct Salesforce {
    client: reqwest::Client,
    url: String,
    authorization: reqwest::header::HeaderValue,
    sobject: String,
    external_id_field: String,
    max_records: usize,
    retryable_error_codes: Vec<String>,
    allocation_exhausted_wait: Duration,
    on_delete: UnsupportedDelete,
}

impl Salesforce {
    /// Build from config; nothing connects.
    pub fn new(config: &SalesforceConfig) -> Result<Salesforce, String> {
        let version = config.api_version.trim().trim_start_matches('v');
        Ok(Salesforce {
            client: crate::http::client(config.timeout_ms)?,
            url: format!(
                "{}/services/data/v{version}/composite/sobjects/{}/{}",
                config.instance_url.trim_end_matches('/'),
                config.sobject,
                config.external_id_field
            ),
            authorization: bearer(config.access_token.expose(), "salesforce.access_token")?,
            sobject: config.sobject.clone(),
            external_id_field: config.external_id_field.clone(),
            max_records: config.max_records_per_request,
            retryable_error_codes: config.retryable_error_codes.clone(),
            allocation_exhausted_wait: Duration::from_secs(config.allocation_exhausted_wait_secs),
            on_delete: config.on_delete,
        })
    }
}

// ---- request ------------------------------------------------------------------------------

/// A batch as sObjects, with which records each one carries.
struct Built {
    records: Vec<serde_json::Map<String, serde_json::Value>>,
    owners: Vec<Vec<usize>>,
    refused: Vec<RecordFailure>,
}

impl Salesforce {
    fn build(&self, batch: &[OutboundRecord]) -> Built {
        let mut built = Built { records: Vec::new(), owners: Vec::new(), refused: Vec::new() };
        let mut by_id: HashMap<String, usize> = HashMap::new();
        for (index, record) in batch.iter().enumerate() {
            let deleting = record.removes();
            if deleting {
                built.refused.extend(crate::unsupported_delete(self.on_delete, "salesforce", index));
                continue;
            }
            let Some(current) = record.text(&self.external_id_field) else {
                built.refused.push(RecordFailure::permanent(index, format!("record has no value for {:?}", self.external_id_field), None, ""));
                continue;
            };
            if record.changed_from(&self.external_id_field).is_some() {
                // The body's external ID is what Salesforce matches on, so a record cannot be
                // renamed here: the new value is upserted and the old record stays.
                metrics::counter!("sluice_destination_salesforce_external_id_changes_total").increment(1);
            }
            let fields = record.fields.iter().filter(|(name, _)| name.as_str() != "Id").map(|(k, v)| (k.clone(), v.clone()));
            match by_id.get(&current) {
                Some(&at) => {
                    built.records[at].extend(fields);
                    built.owners[at].push(index);
                }
                None => {
                    let mut object = serde_json::Map::new();
                    object.insert("attributes".into(), serde_json::json!({"type": self.sobject}));
                    object.extend(fields);
                    object.insert(self.external_id_field.clone(), serde_json::Value::String(current.clone()));
                    by_id.insert(current, built.records.len());
                    built.records.push(object);
                    built.owners.push(vec![index]);
                }
            }
        }
        built
    }
}

// ---- send ---------------------------------------------------------------------------------

impl Destination for Salesforce {
    fn kind(&self) -> &'static str {
        "salesforce"
    }

    fn max_batch_records(&self) -> usize {
        self.max_records
    }

    async fn send(&self, batch: &[OutboundRecord]) -> Result<Vec<RecordFailure>, DeliveryError> {
        let built = self.build(batch);
        let mut failures = built.refused;
        if built.records.is_empty() {
            return Ok(failures);
        }
        let request = self
            .client
            .patch(&self.url)
            .header(reqwest::header::AUTHORIZATION, self.authorization.clone())
            .json(&serde_json::json!({"allOrNone": false, "records": built.records}));
        let Answer { status, headers, text, body } = send_json("salesforce", request).await?;
        let usage = header_text(&headers, "sforce-limit-info").and_then(api_usage);
        if let Some((used, limit)) = usage {
            metrics::gauge!("sluice_destination_salesforce_api_usage_ratio").set(used as f64 / limit.max(1) as f64);
        }
        if status != 200 {
            let error_code = body[0]["errorCode"].as_str().unwrap_or("");
            let class = self.classify(status, error_code, usage, retry_after_of(&headers));
            if error_code == "REQUEST_LIMIT_EXCEEDED" {
                metrics::counter!("sluice_destination_salesforce_rate_limited_total").increment(1);
            }
            return Err(answered(class, status, &text, format!("salesforce answered {status} {error_code}").trim_end().to_string()));
        }
        let Some(results) = body.as_array().filter(|r| r.len() == built.records.len()) else {
            return Err(answered(
                ErrorClass::Retryable { retry_after: None },
                status,
                &text,
                format!("salesforce answered 200 without one result per record ({} sent)", built.records.len()),
            ));
        };
        for (result, owners) in results.iter().zip(&built.owners) {
            if result["success"].as_bool() == Some(true) {
                continue;
            }
            let code = result["errors"][0]["statusCode"].as_str().unwrap_or("UNKNOWN");
            let class = self.classify_record(code);
            let excerpt = crate::http::excerpt(&result["errors"].to_string(), EXCERPT_BYTES);
            for &index in owners {
                failures.push(RecordFailure { index, class: class.clone(), message: format!("salesforce refused the record: {code}"), status: Some(200), excerpt: excerpt.clone() });
            }
        }
        metrics::counter!("sluice_destination_salesforce_record_errors_total").increment(failures.len() as u64);
        failures.sort_by_key(|f| f.index);
        Ok(failures)
    }
}

/// `(used, limit)` from `Sforce-Limit-Info: api-usage=18/5000[; per-app-api-usage=...]`.
fn api_usage(header: &str) -> Option<(u64, u64)> {
    let usage = header.split(';').map(str::trim).find_map(|part| part.strip_prefix("api-usage="))?;
    let (used, limit) = usage.split_once('/')?;
    Some((used.trim().parse().ok()?, limit.trim().parse().ok()?))
}

// ---- classify -----------------------------------------------------------------------------

impl Salesforce {
    /// Class of a request-level failure.
    fn classify(&self, status: u16, error_code: &str, usage: Option<(u64, u64)>, retry_after: Option<Duration>) -> ErrorClass {
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
    fn classify_record(&self, code: &str) -> ErrorClass {
        if code == "ALL_OR_NONE_OPERATION_ROLLED_BACK" || self.retryable_error_codes.iter().any(|c| c == code) {
            ErrorClass::Retryable { retry_after: None }
        } else {
            ErrorClass::Permanent
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Action;
    use sluice_core::config::Secret;

    fn salesforce() -> Salesforce {
        Salesforce::new(&SalesforceConfig {
            instance_url: "http://127.0.0.1:1/".into(),
            access_token: Secret::literal("t"),
            api_version: "62.0".into(),
            sobject: "Contact".into(),
            external_id_field: "Warehouse_Id__c".into(),
            max_records_per_request: 200,
            retryable_error_codes: vec!["UNABLE_TO_LOCK_ROW".into()],
            allocation_exhausted_wait_secs: 3600,
            on_delete: UnsupportedDelete::Reject,
            timeout_ms: 1000,
        })
        .unwrap()
    }

    #[test]
    fn url_and_records() {
        let s = salesforce();
        assert_eq!(s.url, "http://127.0.0.1:1/services/data/v62.0/composite/sobjects/Contact/Warehouse_Id__c");
        let record = |id: &str, action, fields: serde_json::Value| OutboundRecord {
            id: id.into(),
            model: "customers".into(),
            action,
            op: "u".into(),
            key: Default::default(),
            fields: fields.as_object().unwrap().clone(),
            previous: None,
            ts_ms: 0,
        };
        let built = s.build(&[
            record("t/0/1", Action::Upsert, serde_json::json!({"Warehouse_Id__c": "W-1", "LastName": "Doe", "Id": "x"})),
            record("t/0/2", Action::Upsert, serde_json::json!({"Warehouse_Id__c": "W-1", "Email": null})),
            record("t/0/3", Action::Delete, serde_json::json!({})),
        ]);
        assert_eq!(
            serde_json::Value::from(built.records.into_iter().map(serde_json::Value::Object).collect::<Vec<_>>()),
            serde_json::json!([{"attributes": {"type": "Contact"}, "Warehouse_Id__c": "W-1", "LastName": "Doe", "Email": null}])
        );
        assert_eq!(built.owners, vec![vec![0, 1]]);
        assert_eq!(built.refused.iter().map(|f| f.index).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn classification_table() {
        let s = salesforce();
        let hour = ErrorClass::Retryable { retry_after: Some(Duration::from_secs(3600)) };
        let cases = [
            (403, "REQUEST_LIMIT_EXCEEDED", Some((5000, 5000)), hour),
            (403, "REQUEST_LIMIT_EXCEEDED", Some((18, 5000)), ErrorClass::Retryable { retry_after: None }),
            (403, "REQUEST_LIMIT_EXCEEDED", None, ErrorClass::Retryable { retry_after: None }),
            (401, "INVALID_SESSION_ID", None, ErrorClass::Fatal),
            (403, "INSUFFICIENT_ACCESS", None, ErrorClass::Fatal),
            (404, "NOT_FOUND", None, ErrorClass::Fatal),
            (400, "JSON_PARSER_ERROR", None, ErrorClass::Permanent),
            (300, "", None, ErrorClass::Permanent),
            (503, "SERVER_UNAVAILABLE", None, ErrorClass::Retryable { retry_after: None }),
            (500, "", None, ErrorClass::Retryable { retry_after: None }),
        ];
        for (status, code, usage, expected) in cases {
            assert_eq!(s.classify(status, code, usage, None), expected, "{status} {code}");
        }
        assert_eq!(s.classify_record("UNABLE_TO_LOCK_ROW"), ErrorClass::Retryable { retry_after: None });
        assert_eq!(s.classify_record("ALL_OR_NONE_OPERATION_ROLLED_BACK"), ErrorClass::Retryable { retry_after: None });
        assert_eq!(s.classify_record("REQUIRED_FIELD_MISSING"), ErrorClass::Permanent);
        assert_eq!(s.classify_record("DUPLICATES_DETECTED"), ErrorClass::Permanent);
    }

    #[test]
    fn limit_info_header() {
        assert_eq!(api_usage("api-usage=18/5000"), Some((18, 5000)));
        assert_eq!(api_usage("api-usage=25/5000; per-app-api-usage=17/250(appName=sample)"), Some((25, 5000)));
        assert_eq!(api_usage("nonsense"), None);
    }
}

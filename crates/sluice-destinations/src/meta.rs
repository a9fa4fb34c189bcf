//! Meta Custom Audiences: membership add and remove.
//!
//! Requests: `POST` (add) and `DELETE` (remove) `<base_url>/<api_version>/<audience_id>/users`,
//! JSON body `{"payload":{"schema":["EMAIL","PHONE"],"data":[["<sha256>",""],...]},
//! "session":{"session_id":n,"batch_seq":1,"last_batch_flag":true,"estimated_num_total":k}}`,
//! at most 10,000 rows. The token travels as `?access_token=` (documented) or as a bearer header
//! (`token_placement`). Every configured field is normalised and hashed by
//! [`crate::identifiers`]; a missing value is `""`. `session_id` is derived from the batch, so a
//! retried batch re-sends the same session.
//!
//! Actions, by `mode`: `audience`: Upsert/Update/Create/Event add, Delete removes;
//! `suppression`: Upsert/Update/Create/Event remove, Delete is skipped. An identifier change
//! (the `before` image hashes differently) removes the old row and adds the new one. Within a
//! batch the last action per row wins (membership is a set), so one request never both adds
//! and removes a row; removes are sent before adds.
//!
//! Answers:
//! - 200 `{num_received, num_invalid_entries, invalid_entry_samples}`: both counts become
//!   metrics. A sample whose key is a value we sent refuses the records of that row
//!   (permanent); invalid entries that cannot be traced to a row are logged as a count and
//!   counted (`sluice_destination_meta_invalid_unmapped_total`): Meta reports samples, not
//!   row indices, so they cannot be dead-lettered.
//! - Error envelope `{"error":{"code","error_subcode",...}}`, usually with HTTP 400, classified by
//!   code (see [`classify`]): throttles (4, 17, 32, 613, 80000-80014) and temporary errors
//!   (1, 2, 2650) are retryable, with `estimated_time_to_regain_access` from
//!   `X-Business-Use-Case-Usage` as the wait; 190 (token), 200/294 (permissions), 368 and a
//!   flagged or unreachable audience are fatal; other codes refuse the request (permanent).

use std::collections::HashMap;
use std::time::Duration;

use sluice_core::config::{AudienceMode, MetaConfig, TokenPlacement};
use sluice_core::ErrorClass;

use crate::http::{answered, bearer, header_text, send_json, Answer, EXCERPT_BYTES};
use crate::identifiers::{meta_value, MetaKey};
use crate::{batch_digest, DeliveryError, Destination, OutboundRecord, RecordFailure};

// ---- client -------------------------------------------------------------------------------

/// The Meta Custom Audiences destination.
pub struct Meta {
    client: reqwest::Client,
    url: String,
    access_token: String,
    token_placement: TokenPlacement,
    /// (mapped field, schema key), in schema order.
    columns: Vec<(String, MetaKey)>,
    mode: AudienceMode,
    max_rows: usize,
}

impl Meta {
    /// Build from config; nothing connects.
    pub fn new(config: &MetaConfig) -> Result<Meta, String> {
        let mut columns = Vec::new();
        for (field, key) in &config.identifiers {
            let key = MetaKey::parse(key).ok_or_else(|| {
                let names: Vec<&str> = MetaKey::ALL.iter().map(|(_, n)| *n).collect();
                format!("meta.identifiers.{field}: {key:?} is not one of {}", names.join(", "))
            })?;
            columns.push((field.clone(), key));
        }
        Ok(Meta {
            client: crate::http::client(config.timeout_ms)?,
            url: format!(
                "{}/{}/{}/users",
                config.base_url.trim_end_matches('/'),
                config.api_version.trim_matches('/'),
                config.audience_id.trim()
            ),
            access_token: config.access_token.expose().to_string(),
            token_placement: config.token_placement,
            columns,
            mode: config.mode,
            max_rows: config.max_rows_per_request,
        })
    }
}

// ---- request ------------------------------------------------------------------------------

/// Add or remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Add,
    Remove,
}

impl Operation {
    fn label(self) -> &'static str {
        match self {
            Operation::Add => "add",
            Operation::Remove => "remove",
        }
    }
}

/// Rows to add and to remove, each with the records it carries.
#[derive(Debug, Default)]
struct Built {
    /// (row, operation, records), in first-seen order.
    rows: Vec<(Vec<String>, Operation, Vec<usize>)>,
    refused: Vec<RecordFailure>,
}

impl Meta {
    /// A record's row from one image (`None` for the record's best value of each field, see
    /// [`OutboundRecord::text`]; `Some(previous)` for the `before` image only).
    fn row(&self, record: &OutboundRecord, before: bool) -> Option<Vec<String>> {
        let row: Vec<String> = self
            .columns
            .iter()
            .map(|(field, key)| {
                let raw = if before {
                    record.previous.as_ref().and_then(|p| p.get(field)).and_then(crate::value_text)
                } else {
                    record.text(field)
                };
                raw.and_then(|raw| meta_value(*key, &raw)).unwrap_or_default()
            })
            .collect();
        row.iter().any(|v| !v.is_empty()).then_some(row)
    }

    fn build(&self, batch: &[OutboundRecord]) -> Built {
        let mut built = Built::default();
        let mut at: HashMap<Vec<String>, usize> = HashMap::new();
        let mut set = |built: &mut Built, row: Vec<String>, operation: Operation, index: usize| match at.get(&row) {
            Some(&i) => {
                built.rows[i].1 = operation;
                built.rows[i].2.push(index);
            }
            None => {
                at.insert(row.clone(), built.rows.len());
                built.rows.push((row, operation, vec![index]));
            }
        };
        for (index, record) in batch.iter().enumerate() {
            let leaving = record.removes();
            let operation = match (self.mode, leaving) {
                (AudienceMode::Audience, false) => Operation::Add,
                (AudienceMode::Audience, true) | (AudienceMode::Suppression, false) => Operation::Remove,
                (AudienceMode::Suppression, true) => {
                    metrics::counter!("sluice_destination_meta_skipped_total").increment(1);
                    continue;
                }
            };
            let Some(row) = self.row(record, false) else {
                built.refused.push(RecordFailure::permanent(index, "record has no usable identifier after normalisation", None, ""));
                continue;
            };
            if operation == Operation::Add {
                if let Some(old) = self.row(record, true).filter(|old| *old != row) {
                    set(&mut built, old, Operation::Remove, index);
                }
            }
            set(&mut built, row, operation, index);
        }
        built
    }

    fn body(&self, rows: &[&Vec<String>], session_id: i64) -> serde_json::Value {
        let schema: Vec<&str> = self.columns.iter().map(|(_, key)| key.name()).collect();
        serde_json::json!({
            "payload": {"schema": schema, "data": rows},
            "session": {"session_id": session_id, "batch_seq": 1, "last_batch_flag": true, "estimated_num_total": rows.len()},
        })
    }
}

/// A positive int64 session id for a batch and operation: the same on every retry.
fn session_id(batch: &[OutboundRecord], operation: Operation) -> i64 {
    let digest = batch_digest(batch);
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    let id = (u64::from_be_bytes(bytes) >> 2) as i64;
    match operation {
        Operation::Add => id,
        Operation::Remove => id ^ 1,
    }
}

// ---- send ---------------------------------------------------------------------------------

impl Destination for Meta {
    fn kind(&self) -> &'static str {
        "meta"
    }

    fn max_batch_records(&self) -> usize {
        self.max_rows
    }

    async fn send(&self, batch: &[OutboundRecord]) -> Result<Vec<RecordFailure>, DeliveryError> {
        let built = self.build(batch);
        let mut failures = built.refused;
        for operation in [Operation::Remove, Operation::Add] {
            let group: Vec<&(Vec<String>, Operation, Vec<usize>)> = built.rows.iter().filter(|(_, op, _)| *op == operation).collect();
            // An identifier change can turn one record into two rows; keep each request within
            // Meta's limit anyway.
            for chunk in group.chunks(self.max_rows.max(1)) {
                let rows: Vec<&Vec<String>> = chunk.iter().map(|(row, _, _)| row).collect();
                let answer = self.call(operation, &rows, session_id(batch, operation)).await?;
                failures.extend(self.invalid_entries(operation, &answer, chunk));
            }
        }
        failures.sort_by_key(|f| f.index);
        failures.dedup_by_key(|f| f.index);
        Ok(failures)
    }
}

impl Meta {
    async fn call(&self, operation: Operation, rows: &[&Vec<String>], session_id: i64) -> Result<serde_json::Value, DeliveryError> {
        let method = match operation {
            Operation::Add => reqwest::Method::POST,
            Operation::Remove => reqwest::Method::DELETE,
        };
        let mut request = self.client.request(method, &self.url).json(&self.body(rows, session_id));
        request = match self.token_placement {
            TokenPlacement::Query => request.query(&[("access_token", self.access_token.as_str())]),
            TokenPlacement::Bearer => request.header(reqwest::header::AUTHORIZATION, bearer(&self.access_token, "meta.access_token").map_err(|m| DeliveryError {
                class: ErrorClass::Fatal,
                status: None,
                excerpt: String::new(),
                message: m,
            })?),
        };
        let Answer { status, headers, text, body } = send_json("meta", request).await?;
        if (200..300).contains(&status) && body.get("error").is_none() {
            return Ok(body);
        }
        let code = body["error"]["code"].as_i64();
        let subcode = body["error"]["error_subcode"].as_i64();
        let class = classify(status, code, subcode, regain_access(&headers));
        if matches!(class, ErrorClass::Retryable { .. }) && code.is_some() {
            metrics::counter!("sluice_destination_meta_throttled_total", "operation" => operation.label()).increment(1);
        }
        let code_text = code.map(|c| format!(" code {c}")).unwrap_or_default();
        Err(answered(class, status, &text, format!("meta answered {status}{code_text} to {}", operation.label())))
    }

    /// Records refused through `invalid_entry_samples`; counts become metrics.
    fn invalid_entries(&self, operation: Operation, answer: &serde_json::Value, chunk: &[&(Vec<String>, Operation, Vec<usize>)]) -> Vec<RecordFailure> {
        let label = operation.label();
        let received = answer["num_received"].as_u64().unwrap_or(0);
        let invalid = answer["num_invalid_entries"].as_u64().unwrap_or(0);
        metrics::counter!("sluice_destination_meta_rows_received_total", "operation" => label).increment(received);
        metrics::counter!("sluice_destination_meta_invalid_entries_total", "operation" => label).increment(invalid);
        let mut failures = Vec::new();
        let mut mapped_rows = 0u64;
        if let Some(samples) = answer["invalid_entry_samples"].as_object() {
            for (value, reason) in samples {
                let reason = reason.as_str().map(|r| crate::http::excerpt(r, 200)).unwrap_or_default();
                for (_, _, owners) in chunk.iter().filter(|(row, _, _)| row.iter().any(|v| v == value)) {
                    mapped_rows += 1;
                    for &index in owners {
                        failures.push(RecordFailure::permanent(
                            index,
                            format!("meta counted the row invalid: {reason}"),
                            Some(200),
                            crate::http::excerpt(&format!("{{\"invalid_entry\":\"{value}\",\"reason\":{:?}}}", reason), EXCERPT_BYTES),
                        ));
                    }
                }
            }
        }
        let unmapped = invalid.saturating_sub(mapped_rows);
        if unmapped > 0 {
            metrics::counter!("sluice_destination_meta_invalid_unmapped_total", "operation" => label).increment(unmapped);
            tracing::warn!(operation = label, invalid_entries = unmapped, "meta counted rows invalid that cannot be traced to records");
        }
        failures
    }
}

/// `estimated_time_to_regain_access` (minutes) from `X-Business-Use-Case-Usage`, the largest
/// over every business and use case; `None` when absent or zero.
fn regain_access(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let usage: serde_json::Value = serde_json::from_str(header_text(headers, "x-business-use-case-usage")?).ok()?;
    let minutes = usage
        .as_object()?
        .values()
        .flat_map(|entries| entries.as_array().cloned().unwrap_or_default())
        .filter_map(|entry| entry["estimated_time_to_regain_access"].as_u64())
        .max()?;
    (minutes > 0).then(|| Duration::from_secs(minutes * 60))
}

// ---- classify -----------------------------------------------------------------------------

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Action;
    use crate::identifiers::sha256_hex;
    use sluice_core::config::Secret;

    fn meta(mode: AudienceMode) -> Meta {
        Meta::new(&MetaConfig {
            base_url: "http://127.0.0.1:1".into(),
            api_version: "v21.0".into(),
            access_token: Secret::literal("t"),
            token_placement: TokenPlacement::Query,
            audience_id: "123".into(),
            identifiers: [("email".to_string(), "EMAIL".to_string()), ("phone".to_string(), "PHONE".to_string())].into(),
            mode,
            max_rows_per_request: 10_000,
            timeout_ms: 1000,
        })
        .unwrap()
    }

    fn record(id: &str, action: Action, fields: serde_json::Value, previous: Option<serde_json::Value>) -> OutboundRecord {
        OutboundRecord {
            id: id.into(),
            model: "buyers".into(),
            action,
            op: "u".into(),
            key: Default::default(),
            fields: fields.as_object().unwrap().clone(),
            previous: previous.map(|p| p.as_object().unwrap().clone()),
            ts_ms: 0,
        }
    }

    #[test]
    fn rows_are_hashed_in_schema_order_and_changes_move_members() {
        let m = meta(AudienceMode::Audience);
        let built = m.build(&[
            record("t/0/1", Action::Upsert, serde_json::json!({"email": "New@X.com", "phone": "+1 650 555 1234"}), Some(serde_json::json!({"email": "old@x.com", "phone": "+1 650 555 1234"}))),
            record("t/0/2", Action::Delete, serde_json::json!({}), Some(serde_json::json!({"email": "gone@x.com"}))),
            record("t/0/3", Action::Upsert, serde_json::json!({"email": "no-at-sign"}), None),
        ]);
        let phone = sha256_hex("16505551234");
        assert_eq!(
            built.rows,
            vec![
                (vec![sha256_hex("old@x.com"), phone.clone()], Operation::Remove, vec![0]),
                (vec![sha256_hex("new@x.com"), phone], Operation::Add, vec![0]),
                (vec![sha256_hex("gone@x.com"), String::new()], Operation::Remove, vec![1]),
            ]
        );
        assert_eq!(built.refused.iter().map(|f| f.index).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn last_action_per_row_wins_and_suppression_inverts() {
        let m = meta(AudienceMode::Suppression);
        let built = m.build(&[
            record("t/0/1", Action::Upsert, serde_json::json!({"email": "a@x.com"}), None),
            record("t/0/2", Action::Delete, serde_json::json!({}), Some(serde_json::json!({"email": "a@x.com"}))),
        ]);
        assert_eq!(built.rows, vec![(vec![sha256_hex("a@x.com"), String::new()], Operation::Remove, vec![0])]);
        let m = meta(AudienceMode::Audience);
        let built = m.build(&[
            record("t/0/1", Action::Upsert, serde_json::json!({"email": "a@x.com"}), None),
            record("t/0/2", Action::Delete, serde_json::json!({"email": "a@x.com"}), None),
        ]);
        assert_eq!(built.rows, vec![(vec![sha256_hex("a@x.com"), String::new()], Operation::Remove, vec![0, 1])]);
    }

    #[test]
    fn classification_table() {
        let wait = Some(Duration::from_secs(300));
        let retry = ErrorClass::Retryable { retry_after: wait };
        let cases = [
            (400, Some(80000), Some(2446079), retry.clone()),
            (400, Some(80003), None, retry.clone()),
            (400, Some(80014), None, retry.clone()),
            (400, Some(17), Some(2446079), retry.clone()),
            (400, Some(4), None, retry.clone()),
            (400, Some(32), None, retry.clone()),
            (400, Some(613), Some(1487742), retry.clone()),
            (500, Some(2), None, retry.clone()),
            (400, Some(2650), None, retry.clone()),
            (400, Some(190), None, ErrorClass::Fatal),
            (401, Some(190), Some(463), ErrorClass::Fatal),
            (403, Some(200), None, ErrorClass::Fatal),
            (400, Some(294), None, ErrorClass::Fatal),
            (400, Some(100), Some(1713230), ErrorClass::Fatal),
            (400, Some(200), Some(1870047), ErrorClass::Permanent),
            (400, Some(100), None, ErrorClass::Permanent),
            (400, Some(105), None, ErrorClass::Permanent),
            (503, None, None, ErrorClass::Retryable { retry_after: None }),
            (401, None, None, ErrorClass::Fatal),
        ];
        for (status, code, subcode, expected) in cases {
            assert_eq!(classify(status, code, subcode, wait), expected, "{status} {code:?} {subcode:?}");
        }
    }

    #[test]
    fn regain_access_reads_the_usage_header() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            "x-business-use-case-usage",
            r#"{"123":[{"type":"custom_audience","call_count":100,"estimated_time_to_regain_access":3},{"type":"ads_management","estimated_time_to_regain_access":0}]}"#.parse().unwrap(),
        );
        assert_eq!(regain_access(&headers), Some(Duration::from_secs(180)));
        assert_eq!(regain_access(&reqwest::header::HeaderMap::new()), None);
    }
}

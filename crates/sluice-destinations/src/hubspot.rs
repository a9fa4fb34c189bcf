//! HubSpot CRM v3: batch upsert by a unique property.
//!
//! Request: `POST <base_url>/crm/v3/objects/<object_type>/batch/upsert`, `Authorization: Bearer`,
//! body `{"inputs":[{"idProperty":"email","id":"jane@example.com","properties":{...},
//! "objectWriteTraceId":"<record id>"}]}`, at most 100 inputs. Property values are strings; a
//! null field is sent as `""`, which clears the property in HubSpot. When `id_property` is
//! `email`, the id is trimmed and lowercased (HubSpot's case handling is not documented).
//!
//! Actions: Upsert/Update/Create/Event all upsert (the endpoint has no conditional form);
//! Delete follows `on_delete` (HubSpot's batch archive takes HubSpot record ids, which sluice
//! does not know). An identifier change (the `before` image holds another id) upserts *by the
//! old id* with the new value in the properties, so the record is renamed, not duplicated.
//! Two records for the same id in one batch are merged into one input (later fields win), since
//! HubSpot rejects duplicate ids in a batch.
//!
//! Answers:
//! - 200/201: every input applied.
//! - 207: `errors[]` name their inputs by `context.objectWriteTraceId`; those records are
//!   refused (permanent), the others applied. An error naming no input fails the request as
//!   permanent, so the sink isolates the bad record by sending one at a time.
//! - 429: by `policyName`. `TEN_SECONDLY_ROLLING`/`SECONDLY` retry after `Retry-After`, else
//!   the `X-HubSpot-RateLimit-Interval-Milliseconds` window, else `ten_secondly_backoff_ms`.
//!   `DAILY` retries at the next midnight in `portal_time_zone`: a spent daily allowance is a
//!   pause, never a dead letter.
//! - 423 (record locked, ≥ 2 s), 477 (migration, `Retry-After`), 5xx: retryable.
//! - 401, 403 (missing scopes), 404, 405, 410: fatal. Other 4xx (400 validation, 409
//!   conflict): permanent for the request.

use std::collections::HashMap;
use std::time::Duration;

use chrono::TimeZone as _;
use sluice_core::config::{HubSpotConfig, UnsupportedDelete};
use sluice_core::ErrorClass;

use crate::http::{answered, bearer, header_text, retry_after_of, send_json, Answer, EXCERPT_BYTES};
use crate::identifiers::canonical_email;
use crate::{DeliveryError, Destination, OutboundRecord, RecordFailure};

// ---- client -------------------------------------------------------------------------------

/// The HubSpot destination.
pub struct HubSpot {
    client: reqwest::Client,
    url: String,
    authorization: reqwest::header::HeaderValue,
    id_property: String,
    id_field: String,
    max_inputs: usize,
    portal_time_zone: chrono_tz::Tz,
    ten_secondly_backoff: Duration,
    multi_status: bool,
    on_delete: UnsupportedDelete,
}

impl HubSpot {
    /// Build from config; nothing connects.
    pub fn new(config: &HubSpotConfig) -> Result<HubSpot, String> {
        let portal_time_zone = config
            .portal_time_zone
            .parse::<chrono_tz::Tz>()
            .map_err(|_| format!("hubspot.portal_time_zone {:?} is not an IANA time zone (e.g. \"America/New_York\")", config.portal_time_zone))?;
        Ok(HubSpot {
            client: crate::http::client(config.timeout_ms)?,
            url: format!("{}/crm/v3/objects/{}/batch/upsert", config.base_url.trim_end_matches('/'), config.object_type),
            authorization: bearer(config.access_token.expose(), "hubspot.access_token")?,
            id_property: config.id_property.clone(),
            id_field: config.id_field.clone().unwrap_or_else(|| config.id_property.clone()),
            max_inputs: config.max_inputs_per_request,
            portal_time_zone,
            ten_secondly_backoff: Duration::from_millis(config.ten_secondly_backoff_ms),
            multi_status: config.multi_status,
            on_delete: config.on_delete,
        })
    }
}

// ---- request ------------------------------------------------------------------------------

#[derive(Debug, serde::Serialize)]
struct Input {
    #[serde(rename = "idProperty")]
    id_property: String,
    id: String,
    properties: serde_json::Map<String, serde_json::Value>,
    #[serde(rename = "objectWriteTraceId", skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
}

/// A batch as HubSpot inputs, with which records each input carries.
struct Built {
    inputs: Vec<Input>,
    owners: Vec<Vec<usize>>,
    refused: Vec<RecordFailure>,
}

impl HubSpot {
    fn build(&self, batch: &[OutboundRecord]) -> Built {
        let mut built = Built { inputs: Vec::new(), owners: Vec::new(), refused: Vec::new() };
        let mut by_id: HashMap<String, usize> = HashMap::new();
        for (index, record) in batch.iter().enumerate() {
            let deleting = record.removes();
            if deleting {
                built.refused.extend(crate::unsupported_delete(self.on_delete, "hubspot", index));
                continue;
            }
            let Some(id) = record.changed_from(&self.id_field).or_else(|| record.text(&self.id_field)) else {
                built.refused.push(RecordFailure::permanent(index, format!("record has no value for id field {:?}", self.id_field), None, ""));
                continue;
            };
            let id = self.canonical_id(&id);
            let mut properties: serde_json::Map<String, serde_json::Value> =
                record.fields.iter().map(|(name, value)| (name.clone(), serde_json::Value::String(property_text(value)))).collect();
            if let Some(serde_json::Value::String(value)) = properties.get_mut(&self.id_field) {
                *value = self.canonical_id(value);
            }
            match by_id.get(&id) {
                Some(&at) => {
                    built.inputs[at].properties.extend(properties);
                    built.owners[at].push(index);
                }
                None => {
                    by_id.insert(id.clone(), built.inputs.len());
                    built.inputs.push(Input {
                        id_property: self.id_property.clone(),
                        id,
                        properties,
                        trace_id: self.multi_status.then(|| record.id.clone()),
                    });
                    built.owners.push(vec![index]);
                }
            }
        }
        built
    }

    fn canonical_id(&self, id: &str) -> String {
        if self.id_property == "email" {
            canonical_email(id)
        } else {
            id.trim().to_string()
        }
    }
}

/// A property value as HubSpot wants it: text; null clears (`""`).
fn property_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

// ---- send ---------------------------------------------------------------------------------

impl Destination for HubSpot {
    fn kind(&self) -> &'static str {
        "hubspot"
    }

    fn max_batch_records(&self) -> usize {
        self.max_inputs
    }

    async fn send(&self, batch: &[OutboundRecord]) -> Result<Vec<RecordFailure>, DeliveryError> {
        let built = self.build(batch);
        let mut failures = built.refused;
        if built.inputs.is_empty() {
            return Ok(failures);
        }
        let request = self
            .client
            .post(&self.url)
            .header(reqwest::header::AUTHORIZATION, self.authorization.clone())
            .json(&serde_json::json!({ "inputs": built.inputs }));
        let Answer { status, headers, text, body } = send_json("hubspot", request).await?;
        match status {
            200 | 201 => {}
            207 => {
                let refused = self.multi_status_failures(&body, &built.inputs, &built.owners, &text)?;
                metrics::counter!("sluice_destination_hubspot_record_errors_total").increment(refused.len() as u64);
                failures.extend(refused);
            }
            _ => {
                let class = self.classify(status, &body, &headers, chrono::Utc::now());
                if status == 429 {
                    let policy = match body["policyName"].as_str() {
                        Some("DAILY") => "daily",
                        Some("TEN_SECONDLY_ROLLING") | Some("SECONDLY") => "ten_secondly",
                        _ => "other",
                    };
                    metrics::counter!("sluice_destination_hubspot_rate_limited_total", "policy" => policy).increment(1);
                }
                let what = body["category"].as_str().or(body["policyName"].as_str()).unwrap_or("");
                return Err(answered(class, status, &text, format!("hubspot answered {status} {what}").trim_end().to_string()));
            }
        }
        failures.sort_by_key(|f| f.index);
        Ok(failures)
    }
}

impl HubSpot {
    /// Records refused in a 207 answer; `Err` when an error names no input we sent.
    fn multi_status_failures(
        &self,
        body: &serde_json::Value,
        inputs: &[Input],
        owners: &[Vec<usize>],
        text: &str,
    ) -> Result<Vec<RecordFailure>, DeliveryError> {
        let mut out = Vec::new();
        for error in body["errors"].as_array().into_iter().flatten() {
            let traces: Vec<&str> = error["context"]["objectWriteTraceId"].as_array().into_iter().flatten().filter_map(|t| t.as_str()).collect();
            let positions: Vec<usize> =
                traces.iter().filter_map(|t| inputs.iter().position(|i| i.trace_id.as_deref() == Some(*t))).collect();
            if positions.is_empty() {
                return Err(answered(ErrorClass::Permanent, 207, text, "hubspot answered 207 with an error naming no input".into()));
            }
            let category = error["category"].as_str().unwrap_or("ERROR");
            let excerpt = crate::http::excerpt(&error.to_string(), EXCERPT_BYTES);
            for position in positions {
                for &index in &owners[position] {
                    out.push(RecordFailure::permanent(index, format!("hubspot refused the record: {category}"), Some(207), excerpt.clone()));
                }
            }
        }
        Ok(out)
    }
}

// ---- classify -----------------------------------------------------------------------------

impl HubSpot {
    /// Class of a non-2xx answer.
    fn classify(&self, status: u16, body: &serde_json::Value, headers: &reqwest::header::HeaderMap, now: chrono::DateTime<chrono::Utc>) -> ErrorClass {
        let retry_after = retry_after_of(headers);
        match status {
            429 => match body["policyName"].as_str() {
                Some("DAILY") => ErrorClass::Retryable { retry_after: Some(until_next_midnight(now, self.portal_time_zone)) },
                _ => {
                    let interval = header_text(headers, "x-hubspot-ratelimit-interval-milliseconds")
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_millis);
                    ErrorClass::Retryable { retry_after: retry_after.or(interval).or(Some(self.ten_secondly_backoff)) }
                }
            },
            // A locked record stays locked about 2 s.
            423 => ErrorClass::Retryable { retry_after: Some(retry_after.unwrap_or(Duration::ZERO).max(Duration::from_secs(2))) },
            477 => ErrorClass::Retryable { retry_after },
            _ => crate::http::classify_status(status, retry_after).unwrap_or(ErrorClass::Permanent),
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
    use super::*;
    use crate::Action;
    use sluice_core::config::Secret;

    fn hubspot(zone: &str) -> HubSpot {
        HubSpot::new(&HubSpotConfig {
            base_url: "http://127.0.0.1:1".into(),
            access_token: Secret::literal("t"),
            object_type: "contacts".into(),
            id_property: "email".into(),
            id_field: None,
            max_inputs_per_request: 100,
            portal_time_zone: zone.into(),
            ten_secondly_backoff_ms: 10_000,
            multi_status: true,
            on_delete: UnsupportedDelete::Skip,
            timeout_ms: 1000,
        })
        .unwrap()
    }

    fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&chrono::Utc)
    }

    #[test]
    fn classification_table() {
        let h = hubspot("America/New_York");
        let now = at("2026-11-25T20:00:00Z"); // 15:00 in New York: 9 h to midnight
        let mut interval = reqwest::header::HeaderMap::new();
        interval.insert("x-hubspot-ratelimit-interval-milliseconds", "10000".parse().unwrap());
        let mut retry = reqwest::header::HeaderMap::new();
        retry.insert("retry-after", "3".parse().unwrap());
        let none = reqwest::header::HeaderMap::new();
        let secs = |s| ErrorClass::Retryable { retry_after: Some(Duration::from_secs(s)) };
        let cases = [
            (429, serde_json::json!({"policyName": "DAILY"}), &none, secs(9 * 3600)),
            (429, serde_json::json!({"policyName": "TEN_SECONDLY_ROLLING"}), &interval, secs(10)),
            (429, serde_json::json!({"policyName": "TEN_SECONDLY_ROLLING"}), &retry, secs(3)),
            (429, serde_json::json!({"policyName": "SECONDLY"}), &none, secs(10)),
            (423, serde_json::json!({}), &none, secs(2)),
            (477, serde_json::json!({}), &retry, secs(3)),
            (502, serde_json::json!({}), &none, ErrorClass::Retryable { retry_after: None }),
            (401, serde_json::json!({}), &none, ErrorClass::Fatal),
            (403, serde_json::json!({"category": "MISSING_SCOPES"}), &none, ErrorClass::Fatal),
            (400, serde_json::json!({"category": "VALIDATION_ERROR"}), &none, ErrorClass::Permanent),
            (409, serde_json::json!({"category": "CONFLICT"}), &none, ErrorClass::Permanent),
        ];
        for (status, body, headers, expected) in cases {
            assert_eq!(h.classify(status, &body, headers, now), expected, "{status} {body}");
        }
    }

    #[test]
    fn daily_reset_is_midnight_in_the_portal_zone() {
        assert_eq!(until_next_midnight(at("2026-11-25T23:59:00Z"), chrono_tz::UTC), Duration::from_secs(60));
        assert_eq!(until_next_midnight(at("2026-11-25T05:30:00Z"), "Europe/Berlin".parse().unwrap()), Duration::from_secs(17 * 3600 + 1800));
    }

    #[test]
    fn inputs_merge_duplicates_move_changed_ids_and_lowercase_email() {
        let h = hubspot("UTC");
        let record = |id: &str, action, fields: serde_json::Value, previous: Option<serde_json::Value>| OutboundRecord {
            id: id.into(),
            model: "customers".into(),
            action,
            op: "u".into(),
            key: Default::default(),
            fields: fields.as_object().unwrap().clone(),
            previous: previous.map(|p| p.as_object().unwrap().clone()),
            ts_ms: 0,
        };
        let batch = [
            record("t/0/1", Action::Upsert, serde_json::json!({"email": " Jane@X.com", "plan": "pro"}), None),
            record("t/0/2", Action::Upsert, serde_json::json!({"email": "jane@x.com", "ltv": 12, "plan": null}), None),
            record("t/0/3", Action::Upsert, serde_json::json!({"email": "new@x.com"}), Some(serde_json::json!({"email": "old@x.com"}))),
            record("t/0/4", Action::Delete, serde_json::json!({}), None),
            record("t/0/5", Action::Upsert, serde_json::json!({"plan": "free"}), None),
        ];
        let built = h.build(&batch);
        let body = serde_json::to_value(&built.inputs).unwrap();
        assert_eq!(
            body,
            serde_json::json!([
                {"idProperty": "email", "id": "jane@x.com", "properties": {"email": "jane@x.com", "plan": "", "ltv": "12"}, "objectWriteTraceId": "t/0/1"},
                {"idProperty": "email", "id": "old@x.com", "properties": {"email": "new@x.com"}, "objectWriteTraceId": "t/0/3"},
            ])
        );
        assert_eq!(built.owners, vec![vec![0, 1], vec![2]]);
        assert_eq!(built.refused.iter().map(|f| f.index).collect::<Vec<_>>(), [4], "no id: refused; the delete is skipped");
    }
}

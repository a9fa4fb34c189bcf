//! Braze: user attributes and email/subscription-group suppression through `/users/track`.
//!
//! Request: `POST <base_url>/users/track`, `Authorization: Bearer <REST key>`, body
//! `{"attributes":[{"external_id":"u1", <mapped fields>...}, ...]}`, at most 75 objects (50 on
//! the 2024-25 MAU plans: `max_objects_per_request`). Only attributes are sent, never events or
//! purchases: those are not deduplicated by Braze, so a retried batch would double-count them.
//! Email identifiers are trimmed and lowercased.
//!
//! Actions, by `mode`:
//! - `attributes`: Upsert/Create/Event write the mapped fields (`_update_existing_only: false`,
//!   so a new user is created); Update writes them only to existing users
//!   (`_update_existing_only: true`); Delete (a row leaving, consent revoked) unsubscribes:
//!   `email_subscribe: "unsubscribed"` when `unsubscribe_email`, and every configured
//!   subscription group set to `unsubscribed`. A Delete with neither configured is skipped and
//!   counted. Braze user deletion is irreversible and never done.
//! - `suppression`: a row's presence suppresses: Upsert/Update/Create/Event unsubscribe (with
//!   the mapped fields); Delete is skipped (a suppression ending never re-subscribes anyone).
//!
//! Answers:
//! - 2xx (201 and 200 seen; 202 `queued` during maintenance): success, except objects named in
//!   `errors[]` (`input_array: "attributes"`, `index`), which are refused (permanent). An error
//!   naming no object fails the request as permanent, so the sink isolates the record.
//! - 429: retryable after `Retry-After`, else until `X-RateLimit-Reset` (epoch seconds).
//! - 5xx: retryable. 401/403/404 (bad, inactive or unknown key): fatal. 400: permanent.

use std::time::Duration;

use sluice_core::config::{BrazeConfig, BrazeIdentifier, BrazeMode};
use sluice_core::ErrorClass;

use crate::http::{answered, bearer, header_text, retry_after_of, send_json, Answer, EXCERPT_BYTES};
use crate::identifiers::canonical_email;
use crate::{Action, DeliveryError, Destination, OutboundRecord, RecordFailure};

// ---- client -------------------------------------------------------------------------------

/// The Braze destination.
pub struct Braze {
    client: reqwest::Client,
    url: String,
    authorization: reqwest::header::HeaderValue,
    identifier: BrazeIdentifier,
    identifier_field: String,
    mode: BrazeMode,
    max_objects: usize,
    unsubscribe_email: bool,
    subscription_group_ids: Vec<String>,
}

impl Braze {
    /// Build from config; nothing connects.
    pub fn new(config: &BrazeConfig) -> Result<Braze, String> {
        Ok(Braze {
            client: crate::http::client(config.timeout_ms)?,
            url: format!("{}/users/track", config.base_url.trim_end_matches('/')),
            authorization: bearer(config.api_key.expose(), "braze.api_key")?,
            identifier: config.identifier,
            identifier_field: config.identifier_field.clone().unwrap_or_else(|| identifier_name(config.identifier).to_string()),
            mode: config.mode,
            max_objects: config.max_objects_per_request,
            unsubscribe_email: config.unsubscribe_email,
            subscription_group_ids: config.subscription_group_ids.clone(),
        })
    }
}

fn identifier_name(identifier: BrazeIdentifier) -> &'static str {
    match identifier {
        BrazeIdentifier::ExternalId => "external_id",
        BrazeIdentifier::Email => "email",
    }
}

// ---- request ------------------------------------------------------------------------------

/// A batch as attribute objects, one per record sent (`owners[i]` is object i's record).
struct Built {
    attributes: Vec<serde_json::Value>,
    owners: Vec<usize>,
    refused: Vec<RecordFailure>,
}

impl Braze {
    fn build(&self, batch: &[OutboundRecord]) -> Built {
        let mut built = Built { attributes: Vec::new(), owners: Vec::new(), refused: Vec::new() };
        for (index, record) in batch.iter().enumerate() {
            let deleting = record.removes();
            let suppress = match (self.mode, deleting) {
                (BrazeMode::Attributes, false) | (BrazeMode::Suppression, true) => false,
                (BrazeMode::Attributes, true) | (BrazeMode::Suppression, false) => true,
            };
            let skip = (self.mode == BrazeMode::Suppression && deleting) || (suppress && !self.unsubscribe_email && self.subscription_group_ids.is_empty());
            if skip {
                metrics::counter!("sluice_destination_braze_skipped_total").increment(1);
                continue;
            }
            let Some(id) = record.text(&self.identifier_field) else {
                built.refused.push(RecordFailure::permanent(index, format!("record has no value for identifier field {:?}", self.identifier_field), None, ""));
                continue;
            };
            let id = match self.identifier {
                BrazeIdentifier::Email => canonical_email(&id),
                BrazeIdentifier::ExternalId => id,
            };
            let mut object = serde_json::Map::new();
            if !deleting {
                for (name, value) in &record.fields {
                    object.insert(name.clone(), value.clone());
                }
            }
            object.insert(identifier_name(self.identifier).into(), serde_json::Value::String(id));
            object.insert("_update_existing_only".into(), serde_json::Value::Bool(record.action == Action::Update || suppress));
            if suppress {
                if self.unsubscribe_email {
                    object.insert("email_subscribe".into(), "unsubscribed".into());
                }
                if !self.subscription_group_ids.is_empty() {
                    let groups: Vec<serde_json::Value> = self
                        .subscription_group_ids
                        .iter()
                        .map(|g| serde_json::json!({"subscription_group_id": g, "subscription_state": "unsubscribed"}))
                        .collect();
                    object.insert("subscription_groups".into(), groups.into());
                }
            }
            built.attributes.push(serde_json::Value::Object(object));
            built.owners.push(index);
        }
        built
    }
}

// ---- send ---------------------------------------------------------------------------------

impl Destination for Braze {
    fn kind(&self) -> &'static str {
        "braze"
    }

    fn max_batch_records(&self) -> usize {
        self.max_objects
    }

    async fn send(&self, batch: &[OutboundRecord]) -> Result<Vec<RecordFailure>, DeliveryError> {
        let built = self.build(batch);
        let mut failures = built.refused;
        if built.attributes.is_empty() {
            return Ok(failures);
        }
        let request = self
            .client
            .post(&self.url)
            .header(reqwest::header::AUTHORIZATION, self.authorization.clone())
            .json(&serde_json::json!({ "attributes": built.attributes }));
        let Answer { status, headers, text, body } = send_json("braze", request).await?;
        if let Some(remaining) = header_text(&headers, "x-ratelimit-remaining").and_then(|v| v.trim().parse::<f64>().ok()) {
            metrics::gauge!("sluice_destination_braze_rate_limit_remaining").set(remaining);
        }
        if let Some(class) = classify(status, &headers, chrono::Utc::now()) {
            if status == 429 {
                metrics::counter!("sluice_destination_braze_rate_limited_total").increment(1);
            }
            let message = body["message"].as_str().map(|m| crate::http::excerpt(m, 120)).unwrap_or_default();
            return Err(answered(class, status, &text, format!("braze answered {status} {message}").trim_end().to_string()));
        }
        for error in body["errors"].as_array().into_iter().flatten() {
            let index = error["index"].as_u64().map(|i| i as usize);
            let owner = match (error["input_array"].as_str(), index) {
                (Some("attributes"), Some(i)) => built.owners.get(i).copied(),
                _ => None,
            };
            let Some(owner) = owner else {
                return Err(answered(ErrorClass::Permanent, status, &text, "braze answered with an error naming no object".into()));
            };
            let kind = error["type"].as_str().map(|t| crate::http::excerpt(t, 120)).unwrap_or_default();
            failures.push(RecordFailure::permanent(owner, format!("braze refused the object: {kind}"), Some(status), crate::http::excerpt(&error.to_string(), EXCERPT_BYTES)));
        }
        metrics::counter!("sluice_destination_braze_object_errors_total").increment(failures.len() as u64);
        failures.sort_by_key(|f| f.index);
        failures.dedup_by_key(|f| f.index);
        Ok(failures)
    }
}

// ---- classify -----------------------------------------------------------------------------

/// Class of an answer; `None` for success (any 2xx: per-object errors are read from the body).
fn classify(status: u16, headers: &reqwest::header::HeaderMap, now: chrono::DateTime<chrono::Utc>) -> Option<ErrorClass> {
    match status {
        200..=299 => None,
        429 => {
            let reset = header_text(headers, "x-ratelimit-reset")
                .and_then(|v| v.trim().parse::<i64>().ok())
                .map(|epoch| Duration::from_secs(epoch.saturating_sub(now.timestamp()).max(0) as u64));
            Some(ErrorClass::Retryable { retry_after: retry_after_of(headers).or(reset) })
        }
        401 | 403 | 404 => Some(ErrorClass::Fatal),
        _ => crate::http::classify_status(status, retry_after_of(headers)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::config::Secret;

    fn braze(mode: BrazeMode, identifier: BrazeIdentifier) -> Braze {
        Braze::new(&BrazeConfig {
            base_url: "http://127.0.0.1:1/".into(),
            api_key: Secret::literal("k"),
            identifier,
            identifier_field: None,
            mode,
            max_objects_per_request: 75,
            unsubscribe_email: true,
            subscription_group_ids: vec!["sg-1".into()],
            timeout_ms: 1000,
        })
        .unwrap()
    }

    fn record(action: Action, fields: serde_json::Value, previous: Option<serde_json::Value>) -> OutboundRecord {
        OutboundRecord {
            id: "t/0/1".into(),
            model: "customers".into(),
            action,
            op: "u".into(),
            key: Default::default(),
            fields: fields.as_object().unwrap().clone(),
            previous: previous.map(|p| p.as_object().unwrap().clone()),
            ts_ms: 0,
        }
    }

    #[test]
    fn attributes_mode_writes_fields_and_unsubscribes_on_delete() {
        let b = braze(BrazeMode::Attributes, BrazeIdentifier::Email);
        let built = b.build(&[
            record(Action::Upsert, serde_json::json!({"email": " Jane@X.com", "plan": "pro"}), None),
            record(Action::Delete, serde_json::json!({}), Some(serde_json::json!({"email": "bob@x.com"}))),
            record(Action::Upsert, serde_json::json!({"plan": "pro"}), None),
        ]);
        assert_eq!(
            serde_json::Value::from(built.attributes),
            serde_json::json!([
                {"email": "jane@x.com", "plan": "pro", "_update_existing_only": false},
                {"email": "bob@x.com", "_update_existing_only": true, "email_subscribe": "unsubscribed",
                 "subscription_groups": [{"subscription_group_id": "sg-1", "subscription_state": "unsubscribed"}]},
            ])
        );
        assert_eq!(built.owners, [0, 1]);
        assert_eq!(built.refused.iter().map(|f| f.index).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn suppression_mode_unsubscribes_on_upsert_and_skips_deletes() {
        let b = braze(BrazeMode::Suppression, BrazeIdentifier::ExternalId);
        let built = b.build(&[
            record(Action::Upsert, serde_json::json!({"external_id": "u1"}), None),
            record(Action::Delete, serde_json::json!({}), Some(serde_json::json!({"external_id": "u2"}))),
        ]);
        assert_eq!(built.owners, [0]);
        assert_eq!(built.attributes[0]["email_subscribe"], "unsubscribed");
        assert_eq!(built.attributes[0]["external_id"], "u1");
    }

    #[test]
    fn classification_table() {
        let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let mut reset = reqwest::header::HeaderMap::new();
        reset.insert("x-ratelimit-reset", "1700000007".parse().unwrap());
        let none = reqwest::header::HeaderMap::new();
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
            assert_eq!(classify(status, headers, now), expected, "{status}");
        }
    }
}

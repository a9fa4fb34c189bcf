//! Batch → one `/users/track` request: an attribute object per record sent.

use super::{Braze, BrazeIdentifier, BrazeMode};
use crate::identifiers::{canonical_email, present};
use crate::plan::{RefusalReason, SkipReason};
use crate::{Action, OutboundRecord, Plan};

/// A batch as attribute objects, one per record sent (`owners[i]` is object i's record).
pub struct Request {
    pub(super) attributes: Vec<serde_json::Value>,
    pub(super) owners: Vec<usize>,
}

impl Braze {
    /// The batch as attribute objects; see the module docs for what each action becomes.
    pub(super) fn plan_attributes(&self, batch: &[OutboundRecord]) -> Plan<Request> {
        let mut plan = Plan::default();
        let mut request = Request { attributes: Vec::new(), owners: Vec::new() };
        for (index, record) in batch.iter().enumerate() {
            let deleting = record.removes();
            let suppress = match (self.mode, deleting) {
                (BrazeMode::Attributes, false) | (BrazeMode::Suppression, true) => false,
                (BrazeMode::Attributes, true) | (BrazeMode::Suppression, false) => true,
            };
            if self.mode == BrazeMode::Suppression && deleting {
                plan.skip(SkipReason::SuppressionMode);
                continue;
            }
            if suppress && !self.unsubscribe_email && self.subscription_group_ids.is_empty() {
                plan.skip(SkipReason::NothingToUnsubscribe);
                continue;
            }
            let normalise: fn(&str) -> Option<String> = match self.identifier {
                BrazeIdentifier::Email => canonical_email,
                BrazeIdentifier::ExternalId => present,
            };
            let Some(id) = plan.identifier(&self.identifier_field, record.text(&self.identifier_field), normalise) else {
                plan.refuse(index, RefusalReason::NoIdentifier, format!("record has no usable value for identifier field {:?}", self.identifier_field));
                continue;
            };
            let mut object = serde_json::Map::new();
            if !deleting {
                for (name, value) in &record.fields {
                    object.insert(name.clone(), value.clone());
                }
            }
            object.insert(self.identifier.name().into(), serde_json::Value::String(id));
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
            request.attributes.push(serde_json::Value::Object(object));
            request.owners.push(index);
        }
        if !request.attributes.is_empty() {
            plan.requests.push(request);
        }
        plan
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::{Braze, BrazeConfig, BrazeIdentifier, BrazeMode};
    use crate::plan::SkipReason;
    use crate::{Action, Kind, Metrics, OutboundRecord};
    use sluice_core::config::Secret;

    pub(in super::super) fn braze(mode: BrazeMode, identifier: BrazeIdentifier) -> Braze {
        let config = BrazeConfig {
            base_url: "http://127.0.0.1:1/".into(),
            api_key: Secret::literal("k"),
            identifier,
            identifier_field: None,
            mode,
            max_objects_per_request: 75,
            unsubscribe_email: true,
            subscription_group_ids: vec!["sg-1".into()],
            timeout_ms: 1000,
        };
        Braze::new(&config, Metrics::new("test", Braze::NAME)).unwrap()
    }

    pub(in super::super) fn record(action: Action, fields: serde_json::Value, previous: Option<serde_json::Value>) -> OutboundRecord {
        crate::record::test_record("t/0/1", action, fields, previous)
    }

    #[test]
    fn attributes_mode_writes_fields_and_unsubscribes_on_delete() {
        let b = braze(BrazeMode::Attributes, BrazeIdentifier::Email);
        let plan = b.plan_attributes(&[
            record(Action::Upsert, serde_json::json!({"email": " Jane@X.com", "plan": "pro"}), None),
            record(Action::Delete, serde_json::json!({}), Some(serde_json::json!({"email": "bob@x.com"}))),
            record(Action::Upsert, serde_json::json!({"plan": "pro"}), None),
            record(Action::Upsert, serde_json::json!({"email": " \t ", "plan": "pro"}), None),
        ]);
        let request = &plan.requests[0];
        assert_eq!(
            serde_json::Value::from(request.attributes.clone()),
            serde_json::json!([
                {"email": "jane@x.com", "plan": "pro", "_update_existing_only": false},
                {"email": "bob@x.com", "_update_existing_only": true, "email_subscribe": "unsubscribed",
                 "subscription_groups": [{"subscription_group_id": "sg-1", "subscription_state": "unsubscribed"}]},
            ])
        );
        assert_eq!(request.owners, [0, 1]);
        assert_eq!(plan.refused_indexes(), [2, 3], "no email, and a blank one: refused");
        assert_eq!(plan.missing, ["email"], "the blank email is counted as missing");
    }

    #[test]
    fn suppression_mode_unsubscribes_on_upsert_and_skips_deletes() {
        let b = braze(BrazeMode::Suppression, BrazeIdentifier::ExternalId);
        let plan = b.plan_attributes(&[
            record(Action::Upsert, serde_json::json!({"external_id": "u1"}), None),
            record(Action::Delete, serde_json::json!({}), Some(serde_json::json!({"external_id": "u2"}))),
        ]);
        let request = &plan.requests[0];
        assert_eq!(request.owners, [0]);
        assert_eq!(request.attributes[0]["email_subscribe"], "unsubscribed");
        assert_eq!(request.attributes[0]["external_id"], "u1");
        assert_eq!(plan.skipped, [SkipReason::SuppressionMode]);
    }
}

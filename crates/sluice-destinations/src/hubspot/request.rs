//! Batch → one batch-upsert request: an input per id, each knowing its records.

use super::HubSpot;
use crate::identifiers::canonical_email;
use crate::plan::{Keyed, RefusalReason};
use crate::{Kind, OutboundRecord, Plan};

/// One upsert input.
#[derive(Debug, serde::Serialize)]
pub(super) struct Input {
    #[serde(rename = "idProperty")]
    id_property: String,
    id: String,
    properties: serde_json::Map<String, serde_json::Value>,
    #[serde(rename = "objectWriteTraceId", skip_serializing_if = "Option::is_none")]
    pub(super) trace_id: Option<String>,
}

/// A batch as HubSpot inputs, one per id, with which records each input carries.
pub struct Request {
    pub(super) inputs: Keyed<String, Input>,
}

impl HubSpot {
    /// The batch as inputs: deletes follow `on_delete`, records without an id are refused, two
    /// records of one id merge.
    pub(super) fn plan_inputs(&self, batch: &[OutboundRecord]) -> Plan<Request> {
        let mut plan = Plan::default();
        let mut inputs: Keyed<String, Input> = Keyed::default();
        for (index, record) in batch.iter().enumerate() {
            if record.removes() {
                plan.unsupported_delete(self.on_delete, <Self as Kind>::NAME, index);
                continue;
            }
            let Some(id) = record.changed_from(&self.id_field).or_else(|| record.text(&self.id_field)) else {
                plan.refuse(index, RefusalReason::NoIdentifier, format!("record has no value for id field {:?}", self.id_field));
                continue;
            };
            let id = self.canonical_id(&id);
            let mut properties: serde_json::Map<String, serde_json::Value> =
                record.fields.iter().map(|(name, value)| (name.clone(), serde_json::Value::String(property_text(value)))).collect();
            if let Some(serde_json::Value::String(value)) = properties.get_mut(&self.id_field) {
                *value = self.canonical_id(value);
            }
            match inputs.existing(&id, index) {
                Some(input) => input.properties.extend(properties),
                None => {
                    let input = Input { id_property: self.id_property.clone(), id: id.clone(), properties, trace_id: self.multi_status.then(|| record.id.clone()) };
                    inputs.push(id, index, input);
                }
            }
        }
        if !inputs.is_empty() {
            plan.requests.push(Request { inputs });
        }
        plan
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

#[cfg(test)]
pub(super) mod tests {
    use super::super::{HubSpot, HubSpotConfig};
    use crate::plan::SkipReason;
    use crate::{Action, Kind, Metrics, UnsupportedDelete};
    use sluice_core::config::Secret;

    pub(in super::super) fn hubspot(zone: &str) -> HubSpot {
        let config = HubSpotConfig {
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
        };
        HubSpot::new(&config, Metrics::new("test", HubSpot::NAME)).unwrap()
    }

    #[test]
    fn inputs_merge_duplicates_move_changed_ids_and_lowercase_email() {
        let h = hubspot("UTC");
        let record = crate::record::test_record;
        let batch = [
            record("t/0/1", Action::Upsert, serde_json::json!({"email": " Jane@X.com", "plan": "pro"}), None),
            record("t/0/2", Action::Upsert, serde_json::json!({"email": "jane@x.com", "ltv": 12, "plan": null}), None),
            record("t/0/3", Action::Upsert, serde_json::json!({"email": "new@x.com"}), Some(serde_json::json!({"email": "old@x.com"}))),
            record("t/0/4", Action::Delete, serde_json::json!({}), None),
            record("t/0/5", Action::Upsert, serde_json::json!({"plan": "free"}), None),
        ];
        let plan = h.plan_inputs(&batch);
        let request = &plan.requests[0];
        let body = serde_json::to_value(&request.inputs.items).unwrap();
        assert_eq!(
            body,
            serde_json::json!([
                {"idProperty": "email", "id": "jane@x.com", "properties": {"email": "jane@x.com", "plan": "", "ltv": "12"}, "objectWriteTraceId": "t/0/1"},
                {"idProperty": "email", "id": "old@x.com", "properties": {"email": "new@x.com"}, "objectWriteTraceId": "t/0/3"},
            ])
        );
        assert_eq!(request.inputs.owners, vec![vec![0, 1], vec![2]]);
        assert_eq!(plan.refused_indexes(), [4], "no id: refused; the delete is skipped");
        assert_eq!(plan.skipped, [SkipReason::OnDeleteSkip]);
    }
}

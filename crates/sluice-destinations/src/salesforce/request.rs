//! Batch → one Collections upsert: an sObject per external ID, each knowing its records.

use super::Salesforce;
use crate::plan::{Keyed, RefusalReason};
use crate::{Kind, OutboundRecord, Plan};

/// A batch as sObjects, one per external ID, with which records each one carries.
pub struct Request {
    pub(super) records: Keyed<String, serde_json::Map<String, serde_json::Value>>,
}

impl Salesforce {
    /// The batch as sObjects: deletes follow `on_delete`, records without an external ID are
    /// refused, records of one external ID merge.
    pub(super) fn plan_records(&self, batch: &[OutboundRecord]) -> Plan<Request> {
        let mut plan = Plan::default();
        let mut records: Keyed<String, serde_json::Map<String, serde_json::Value>> = Keyed::default();
        for (index, record) in batch.iter().enumerate() {
            if record.removes() {
                plan.unsupported_delete(self.on_delete, <Self as Kind>::NAME, index);
                continue;
            }
            let Some(current) = record.text(&self.external_id_field) else {
                plan.refuse(index, RefusalReason::NoIdentifier, format!("record has no value for {:?}", self.external_id_field));
                continue;
            };
            if record.changed_from(&self.external_id_field).is_some() {
                // The body's external ID is what Salesforce matches on, so a record cannot be
                // renamed here: the new value is upserted and the old record stays.
                self.metrics.identifier_change_kept();
            }
            let fields = record.fields.iter().filter(|(name, _)| name.as_str() != "Id").map(|(k, v)| (k.clone(), v.clone()));
            match records.existing(&current, index) {
                Some(object) => object.extend(fields),
                None => {
                    let mut object = serde_json::Map::new();
                    object.insert("attributes".into(), serde_json::json!({"type": self.sobject}));
                    object.extend(fields);
                    object.insert(self.external_id_field.clone(), serde_json::Value::String(current.clone()));
                    records.push(current, index, object);
                }
            }
        }
        if !records.is_empty() {
            plan.requests.push(Request { records });
        }
        plan
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::{Salesforce, SalesforceConfig};
    use crate::{Action, Kind, Metrics, OutboundRecord, UnsupportedDelete};
    use sluice_core::config::Secret;

    pub(in super::super) fn salesforce() -> Salesforce {
        let config = SalesforceConfig {
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
        };
        Salesforce::new(&config, Metrics::new("test", Salesforce::NAME)).unwrap()
    }

    pub(in super::super) fn record(id: &str, action: Action, fields: serde_json::Value) -> OutboundRecord {
        crate::record::test_record(id, action, fields, None)
    }

    #[test]
    fn url_and_records() {
        let s = salesforce();
        assert_eq!(s.endpoint.url(), "http://127.0.0.1:1/services/data/v62.0/composite/sobjects/Contact/Warehouse_Id__c");
        let plan = s.plan_records(&[
            record("t/0/1", Action::Upsert, serde_json::json!({"Warehouse_Id__c": "W-1", "LastName": "Doe", "Id": "x"})),
            record("t/0/2", Action::Upsert, serde_json::json!({"Warehouse_Id__c": "W-1", "Email": null})),
            record("t/0/3", Action::Delete, serde_json::json!({})),
        ]);
        let request = &plan.requests[0];
        assert_eq!(
            serde_json::Value::from(request.records.items.iter().cloned().map(serde_json::Value::Object).collect::<Vec<_>>()),
            serde_json::json!([{"attributes": {"type": "Contact"}, "Warehouse_Id__c": "W-1", "LastName": "Doe", "Email": null}])
        );
        assert_eq!(request.records.owners, vec![vec![0, 1]]);
        assert_eq!(plan.refused_indexes(), [2]);
        assert_eq!(plan.refused[0].reason, crate::plan::RefusalReason::DeleteUnsupported);
    }
}

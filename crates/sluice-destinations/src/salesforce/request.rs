//! Batch → requests, one per operation (upsert, delete) in an order that keeps each external
//! ID's records in batch order; each sObject carries its records. The SOQL of the lookup and the
//! bodies are built here too.

use super::Salesforce;
use crate::identifiers::present;
use crate::plan::{Keyed, Phases, RefusalReason};
use crate::{Kind, OutboundRecord, Plan};

/// What a request does at Salesforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Operation {
    /// sObject Collections upsert by external ID.
    Upsert,
    /// A SOQL query for the records' Ids by external ID, then sObject Collections delete.
    Delete,
}

/// One operation's sObjects, one per external ID, with which records each one carries (a
/// delete's sObjects are empty: the external ID is all it needs).
#[derive(Debug)]
pub struct Request {
    pub(super) operation: Operation,
    pub(super) records: Keyed<String, serde_json::Map<String, serde_json::Value>>,
}

impl Salesforce {
    /// The batch as requests: deletes follow `on_delete`, records without a usable external ID
    /// are refused, records of one external ID in one operation merge.
    pub(super) fn plan_requests(&self, batch: &[OutboundRecord]) -> Plan<Request> {
        let mut plan = Plan::default();
        let mut phases: Phases<Operation, String, serde_json::Map<String, serde_json::Value>> = Phases::default();
        for (index, record) in batch.iter().enumerate() {
            let removes = record.removes();
            if removes && plan.decline_delete(self.on_delete, <Self as Kind>::NAME, index) {
                continue;
            }
            let Some(current) = plan.identifier(&self.external_id_field, record.text(&self.external_id_field), present) else {
                plan.refuse(index, RefusalReason::NoIdentifier, format!("record has no usable value for {:?}", self.external_id_field));
                continue;
            };
            if removes {
                phases.add(Operation::Delete, current, index, serde_json::Map::new, |_| {});
                continue;
            }
            if record.changed_from(&self.external_id_field).is_some() {
                // The body's external ID is what Salesforce matches on, so a record cannot be
                // renamed here: the new value is upserted and the old record stays.
                self.metrics.identifier_change_kept();
            }
            let fields: Vec<(String, serde_json::Value)> =
                record.fields.iter().filter(|(name, _)| name.as_str() != "Id").map(|(k, v)| (k.clone(), v.clone())).collect();
            let make = || {
                let mut object = serde_json::Map::new();
                object.insert("attributes".into(), serde_json::json!({"type": self.sobject}));
                object.extend(fields.iter().cloned());
                object.insert(self.external_id_field.clone(), serde_json::Value::String(current.clone()));
                object
            };
            phases.add(Operation::Upsert, current.clone(), index, make, |object| object.extend(fields.iter().cloned()));
        }
        plan.requests = phases.phases.into_iter().map(|(operation, records)| Request { operation, records }).collect();
        plan
    }

    /// The upsert's body: every sObject, `allOrNone: false` so one bad record fails alone.
    pub(super) fn upsert_body(&self, request: &Request) -> serde_json::Value {
        serde_json::json!({"allOrNone": false, "records": request.records.items})
    }

    /// `SELECT Id, <ext> FROM <sobject> WHERE <ext> IN ('...', ...)`: the Ids of a delete's
    /// external IDs, quoted as SOQL string literals.
    pub(super) fn lookup_soql(&self, request: &Request) -> String {
        let values: Vec<String> = request.records.owners.iter().enumerate().map(|(position, _)| soql_literal(self.external_id(request, position))).collect();
        format!("SELECT Id, {field} FROM {} WHERE {field} IN ({})", self.sobject, values.join(", "), field = self.external_id_field)
    }

    /// The external ID of the sObject at `position`.
    pub(super) fn external_id<'a>(&self, request: &'a Request, position: usize) -> &'a str {
        request.records.key_at(position)
    }
}

/// A SOQL string literal: quoted, with `\` and `'` escaped (SOQL's escape sequences).
fn soql_literal(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::{Salesforce, SalesforceConfig};
    use super::{soql_literal, Operation};
    use crate::{Action, Kind, Metrics, OnDelete, OutboundRecord};
    use sluice_core::config::Secret;

    pub(in super::super) fn salesforce_with(on_delete: OnDelete) -> Salesforce {
        let config = SalesforceConfig {
            instance_url: "http://127.0.0.1:1/".into(),
            access_token: Secret::literal("t"),
            api_version: "62.0".into(),
            sobject: "Contact".into(),
            external_id_field: "Warehouse_Id__c".into(),
            max_records_per_request: 200,
            retryable_error_codes: vec!["UNABLE_TO_LOCK_ROW".into()],
            allocation_exhausted_wait_secs: 3600,
            on_delete,
            timeout_ms: 1000,
        };
        Salesforce::new(&config, Metrics::new("test", Salesforce::NAME)).unwrap()
    }

    pub(in super::super) fn salesforce() -> Salesforce {
        salesforce_with(OnDelete::Reject)
    }

    pub(in super::super) fn record(id: &str, action: Action, fields: serde_json::Value) -> OutboundRecord {
        crate::record::test_record(id, action, fields, None)
    }

    #[test]
    fn url_and_records() {
        let s = salesforce();
        assert_eq!(s.endpoint.url(), "http://127.0.0.1:1");
        assert_eq!(s.upsert_path, "/services/data/v62.0/composite/sobjects/Contact/Warehouse_Id__c");
        let plan = s.plan_requests(&[
            record("t/0/1", Action::Upsert, serde_json::json!({"Warehouse_Id__c": "W-1", "LastName": "Doe", "Id": "x"})),
            record("t/0/2", Action::Upsert, serde_json::json!({"Warehouse_Id__c": "W-1", "Email": null})),
            record("t/0/3", Action::Delete, serde_json::json!({})),
            record("t/0/4", Action::Upsert, serde_json::json!({"Warehouse_Id__c": " ", "LastName": "Blank"})),
        ]);
        let request = &plan.requests[0];
        assert_eq!(
            s.upsert_body(request),
            serde_json::json!({"allOrNone": false, "records": [{"attributes": {"type": "Contact"}, "Warehouse_Id__c": "W-1", "LastName": "Doe", "Email": null}]})
        );
        assert_eq!(request.records.owners, vec![vec![0, 1]]);
        assert_eq!(plan.refused_indexes(), [2, 3]);
        assert_eq!(plan.refused[0].reason, crate::plan::RefusalReason::DeleteRejected);
        assert_eq!(plan.refused[1].reason, crate::plan::RefusalReason::NoIdentifier);
        assert_eq!(plan.missing, ["Warehouse_Id__c"], "a blank external ID is missing, and counted");
    }

    #[test]
    fn deletes_are_looked_up_by_external_id_in_batch_order() {
        let s = salesforce_with(OnDelete::Delete);
        let plan = s.plan_requests(&[
            record("t/0/1", Action::Upsert, serde_json::json!({"Warehouse_Id__c": "W-1", "LastName": "Doe"})),
            record("t/0/2", Action::Delete, serde_json::json!({"Warehouse_Id__c": "W-1"})),
            record("t/0/3", Action::Delete, serde_json::json!({"Warehouse_Id__c": "O'Brien\\1"})),
        ]);
        let operations: Vec<(Operation, Vec<Vec<usize>>)> = plan.requests.iter().map(|r| (r.operation, r.records.owners.clone())).collect();
        assert_eq!(operations, [(Operation::Upsert, vec![vec![0]]), (Operation::Delete, vec![vec![1], vec![2]])]);
        assert_eq!(
            s.lookup_soql(&plan.requests[1]),
            "SELECT Id, Warehouse_Id__c FROM Contact WHERE Warehouse_Id__c IN ('W-1', 'O\\'Brien\\\\1')"
        );
        assert_eq!(soql_literal("a'b"), "'a\\'b'");
    }
}

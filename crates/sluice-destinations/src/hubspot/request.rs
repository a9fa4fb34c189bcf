//! Batch → requests, one per operation (upsert, update, create, archive) in an order that keeps
//! each id's records in batch order; each request's inputs carry their records. The bodies of
//! the lookup and of the write it decides are built here too.

use super::HubSpot;
use crate::identifiers::canonical_email;
use crate::plan::{Keyed, Phases, RefusalReason};
use crate::{Action, Kind, OutboundRecord, Plan};

/// What a request does at HubSpot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Operation {
    /// `batch/upsert` by `idProperty`: create or update.
    Upsert,
    /// `batch/read`, then `batch/update` of the records found; the others are left alone.
    Update,
    /// `batch/read`, then `batch/create` of the records not found; the others are left alone.
    Create,
    /// `batch/read`, then `batch/archive` of the records found; the others are already gone.
    Archive,
}

impl Operation {
    /// The path below `/crm/v3/objects/<type>/batch/` of the write.
    pub(super) fn path(self) -> &'static str {
        match self {
            Operation::Upsert => "upsert",
            Operation::Update => "update",
            Operation::Create => "create",
            Operation::Archive => "archive",
        }
    }

    /// Whether the write needs HubSpot's record ids (or their absence), read first.
    pub(super) fn looks_up(self) -> bool {
        self != Operation::Upsert
    }

    /// Whether the write carries the input at a position whose lookup found (`Some`) or did not
    /// find (`None`) a record: update and archive what exists, create what does not.
    pub(super) fn writes(self, found: Option<&str>) -> bool {
        match self {
            Operation::Upsert => true,
            Operation::Update | Operation::Archive => found.is_some(),
            Operation::Create => found.is_none(),
        }
    }
}

/// One input: the `id_property` value it is matched on, its properties, its trace id.
#[derive(Debug)]
pub(super) struct Input {
    pub(super) id: String,
    pub(super) properties: serde_json::Map<String, serde_json::Value>,
    pub(super) trace_id: Option<String>,
}

/// One operation's inputs, one per id, with which records each input carries.
#[derive(Debug)]
pub struct Request {
    pub(super) operation: Operation,
    pub(super) inputs: Keyed<String, Input>,
}

impl HubSpot {
    /// The batch as requests: deletes follow `on_delete`, records without a usable id are
    /// refused, two records of one id in one operation merge (later fields win).
    pub(super) fn plan_requests(&self, batch: &[OutboundRecord]) -> Plan<Request> {
        let mut plan = Plan::default();
        let mut phases: Phases<Operation, String, Input> = Phases::default();
        for (index, record) in batch.iter().enumerate() {
            let operation = match record.action {
                _ if record.removes() => {
                    if plan.decline_delete(self.on_delete, <Self as Kind>::NAME, index) {
                        continue;
                    }
                    Operation::Archive
                }
                Action::Update => Operation::Update,
                Action::Create => Operation::Create,
                Action::Upsert | Action::Event | Action::Delete => Operation::Upsert,
            };
            // An upsert or update whose id changed is matched by the old id, so the record is
            // renamed; a create or a delete is about the id the record has.
            let raw = match operation {
                Operation::Upsert | Operation::Update => record.changed_from(&self.id_field).or_else(|| record.text(&self.id_field)),
                Operation::Create | Operation::Archive => record.text(&self.id_field),
            };
            let Some(id) = plan.identifier(&self.id_field, raw, |v| self.canonical_id(v)) else {
                plan.refuse(index, RefusalReason::NoIdentifier, format!("record has no usable value for id field {:?}", self.id_field));
                continue;
            };
            let properties = match operation {
                Operation::Archive => serde_json::Map::new(),
                _ => self.properties(record),
            };
            let trace_id = self.multi_status.then(|| record.id.clone());
            let make = || Input { id: id.clone(), properties: properties.clone(), trace_id };
            phases.add(operation, id.clone(), index, make, |input| input.properties.extend(properties.clone()));
        }
        plan.requests = phases.phases.into_iter().map(|(operation, inputs)| Request { operation, inputs }).collect();
        plan
    }

    /// A record's fields as HubSpot properties (text; null clears), the id field canonical.
    fn properties(&self, record: &OutboundRecord) -> serde_json::Map<String, serde_json::Value> {
        let mut properties: serde_json::Map<String, serde_json::Value> =
            record.fields.iter().map(|(name, value)| (name.clone(), serde_json::Value::String(property_text(value)))).collect();
        if let Some(serde_json::Value::String(value)) = properties.get_mut(&self.id_field) {
            // A new id that is nothing clears the property; it is never matched on.
            *value = self.canonical_id(value).unwrap_or_default();
        }
        properties
    }

    /// The form of an id HubSpot matches on: an email trimmed and lowercased, anything else
    /// trimmed; `None` when nothing is left.
    pub(super) fn canonical_id(&self, id: &str) -> Option<String> {
        if self.id_property == "email" {
            canonical_email(id)
        } else {
            Some(id.trim().to_string()).filter(|id| !id.is_empty())
        }
    }

    /// `batch/upsert`'s body: every input, matched by `idProperty`.
    pub(super) fn upsert_body(&self, request: &Request) -> serde_json::Value {
        let inputs: Vec<serde_json::Value> = request
            .inputs
            .items
            .iter()
            .map(|input| {
                let mut body = serde_json::json!({"idProperty": self.id_property, "id": input.id, "properties": input.properties});
                if let Some(trace) = &input.trace_id {
                    body["objectWriteTraceId"] = trace.as_str().into();
                }
                body
            })
            .collect();
        serde_json::json!({ "inputs": inputs })
    }

    /// `batch/read`'s body: the ids by `idProperty`, asking for that property back so answers
    /// map to inputs.
    pub(super) fn lookup_body(&self, request: &Request) -> serde_json::Value {
        let inputs: Vec<serde_json::Value> = request.inputs.items.iter().map(|input| serde_json::json!({"id": input.id})).collect();
        serde_json::json!({"idProperty": self.id_property, "properties": [self.id_property], "inputs": inputs})
    }

    /// The write's body for the inputs at `sent`, given the HubSpot ids found (`found[i]` for
    /// input i): update and archive by record id, create with the id property set.
    pub(super) fn write_body(&self, request: &Request, found: &[Option<String>], sent: &[usize]) -> serde_json::Value {
        let inputs: Vec<serde_json::Value> = sent
            .iter()
            .map(|&position| {
                let input = &request.inputs.items[position];
                let mut body = match request.operation {
                    Operation::Archive => return serde_json::json!({"id": found[position]}),
                    Operation::Update => serde_json::json!({"id": found[position], "properties": input.properties}),
                    Operation::Create | Operation::Upsert => {
                        let mut properties = input.properties.clone();
                        properties.insert(self.id_property.clone(), input.id.clone().into());
                        serde_json::json!({"properties": properties})
                    }
                };
                if let Some(trace) = &input.trace_id {
                    body["objectWriteTraceId"] = trace.as_str().into();
                }
                body
            })
            .collect();
        serde_json::json!({ "inputs": inputs })
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
    use super::Operation;
    use crate::plan::SkipReason;
    use crate::{Action, Kind, Metrics, OnDelete};
    use sluice_core::config::Secret;

    pub(in super::super) fn hubspot_with(zone: &str, on_delete: OnDelete) -> HubSpot {
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
            on_delete,
            timeout_ms: 1000,
        };
        HubSpot::new(&config, Metrics::new("test", HubSpot::NAME)).unwrap()
    }

    pub(in super::super) fn hubspot(zone: &str) -> HubSpot {
        hubspot_with(zone, OnDelete::Skip)
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
            record("t/0/6", Action::Upsert, serde_json::json!({"email": "  ", "plan": "free"}), None),
        ];
        let plan = h.plan_requests(&batch);
        assert_eq!(plan.requests.len(), 1);
        let request = &plan.requests[0];
        assert_eq!(
            h.upsert_body(request),
            serde_json::json!({"inputs": [
                {"idProperty": "email", "id": "jane@x.com", "properties": {"email": "jane@x.com", "plan": "", "ltv": "12"}, "objectWriteTraceId": "t/0/1"},
                {"idProperty": "email", "id": "old@x.com", "properties": {"email": "new@x.com"}, "objectWriteTraceId": "t/0/3"},
            ]})
        );
        assert_eq!(request.inputs.owners, vec![vec![0, 1], vec![2]]);
        assert_eq!(plan.refused_indexes(), [4, 5], "no id, and a blank id: refused; the delete is skipped");
        assert_eq!(plan.skipped, [SkipReason::OnDeleteSkip]);
        assert_eq!(plan.missing, ["email"], "the blank email is counted as missing, the absent one is not");
    }

    #[test]
    fn operations_follow_actions_and_keep_each_ids_order() {
        let h = hubspot_with("UTC", OnDelete::Delete);
        let record = |id: &str, action, email: &str| crate::record::test_record(id, action, serde_json::json!({"email": email}), None);
        let batch = [
            record("t/0/1", Action::Upsert, "a@x.com"),
            record("t/0/2", Action::Delete, "b@x.com"),
            record("t/0/3", Action::Upsert, "c@x.com"),
            record("t/0/4", Action::Delete, "a@x.com"),
            record("t/0/5", Action::Upsert, "a@x.com"),
            record("t/0/6", Action::Update, "d@x.com"),
            record("t/0/7", Action::Create, "e@x.com"),
        ];
        let plan = h.plan_requests(&batch);
        let requests: Vec<(Operation, Vec<Vec<usize>>)> = plan.requests.iter().map(|r| (r.operation, r.inputs.owners.clone())).collect();
        assert_eq!(
            requests,
            [
                (Operation::Upsert, vec![vec![0], vec![2]]),
                (Operation::Archive, vec![vec![1], vec![3]]),
                (Operation::Upsert, vec![vec![4]]),
                (Operation::Update, vec![vec![5]]),
                (Operation::Create, vec![vec![6]]),
            ],
            "a@x.com is upserted, archived, then upserted again, in that order"
        );
    }

    #[test]
    fn lookup_and_write_bodies() {
        let h = hubspot_with("UTC", OnDelete::Delete);
        let record = |id: &str, action, email: &str| crate::record::test_record(id, action, serde_json::json!({"email": email, "plan": "pro"}), None);
        let plan = h.plan_requests(&[record("t/0/1", Action::Update, "a@x.com"), record("t/0/2", Action::Update, "b@x.com")]);
        let update = &plan.requests[0];
        assert_eq!(
            h.lookup_body(update),
            serde_json::json!({"idProperty": "email", "properties": ["email"], "inputs": [{"id": "a@x.com"}, {"id": "b@x.com"}]})
        );
        let found = [None, Some("512".to_string())];
        assert_eq!(
            h.write_body(update, &found, &[1]),
            serde_json::json!({"inputs": [{"id": "512", "properties": {"email": "b@x.com", "plan": "pro"}, "objectWriteTraceId": "t/0/2"}]})
        );
        let create = &h.plan_requests(&[record("t/0/3", Action::Create, " C@X.com")]).requests[0];
        assert_eq!(
            h.write_body(create, &[None], &[0]),
            serde_json::json!({"inputs": [{"properties": {"email": "c@x.com", "plan": "pro"}, "objectWriteTraceId": "t/0/3"}]})
        );
        let archive = &h.plan_requests(&[crate::record::test_record("t/0/4", Action::Delete, serde_json::json!({}), Some(serde_json::json!({"email": "d@x.com"})))]).requests[0];
        assert_eq!(archive.operation, Operation::Archive);
        assert_eq!(h.write_body(archive, &[Some("9".into())], &[0]), serde_json::json!({"inputs": [{"id": "9"}]}));
    }
}

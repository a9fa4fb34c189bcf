//! Batch → membership rows → remove requests, then add requests, each within Meta's row limit.

use super::{AudienceMode, Meta};
use crate::identifiers::{meta_value, MetaKey};
use crate::plan::{Keyed, RefusalReason, SkipReason};
use crate::{batch_digest, OutboundRecord, Plan};

/// Add, remove, or one batch of a replace session (`usersreplace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Operation {
    Add,
    Remove,
    Replace,
}

impl Operation {
    /// The metric label and the word in messages.
    pub(super) fn label(self) -> &'static str {
        match self {
            Operation::Add => "add",
            Operation::Remove => "remove",
            Operation::Replace => "replace",
        }
    }

    /// `POST` adds (to `users`) and replaces (to `usersreplace`), `DELETE` removes.
    pub(super) fn method(self) -> reqwest::Method {
        match self {
            Operation::Add | Operation::Replace => reqwest::Method::POST,
            Operation::Remove => reqwest::Method::DELETE,
        }
    }
}

/// One request: its rows, which records each row carries, and its place in its session.
pub struct Request {
    pub(super) operation: Operation,
    pub(super) rows: Vec<Vec<String>>,
    pub(super) owners: Vec<Vec<usize>>,
    session: Session,
}

/// A request's `session` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Session {
    id: i64,
    /// From 1, one more per request of the session.
    batch_seq: usize,
    /// The session's last request: Meta closes it (for a replace: applies it).
    last: bool,
    /// Rows of the whole session.
    total: usize,
}

impl Session {
    /// An add or remove: a session of its own, of one request.
    fn single(id: i64, rows: usize) -> Session {
        Session { id, batch_seq: 1, last: true, total: rows }
    }
}

/// Each row and what to do with it, with the records it carries, in first-seen order.
type Membership = Keyed<Vec<String>, (Vec<String>, Operation)>;

impl Meta {
    /// Removes first, then adds, each chunked to `max_rows` (an identifier change can turn one
    /// record into two rows, so the limit is kept per request anyway).
    pub(super) fn plan_requests(&self, batch: &[OutboundRecord]) -> Plan<Request> {
        let mut plan = Plan::default();
        let membership = self.membership(batch, &mut plan);
        for operation in [Operation::Remove, Operation::Add] {
            let group: Vec<(&Vec<String>, &Vec<usize>)> =
                membership.items.iter().zip(&membership.owners).filter(|((_, op), _)| *op == operation).map(|((row, _), owners)| (row, owners)).collect();
            for chunk in group.chunks(self.max_rows.max(1)) {
                plan.requests.push(Request {
                    operation,
                    rows: chunk.iter().map(|(row, _)| (*row).clone()).collect(),
                    owners: chunk.iter().map(|(_, owners)| (*owners).clone()).collect(),
                    session: Session::single(session_id(batch, operation), chunk.len()),
                });
            }
        }
        plan
    }

    /// One `usersreplace` session holding every member among `members` (a record that leaves
    /// is not a member and is not sent; one without a usable identifier is refused), chunked to
    /// `max_rows`, `batch_seq` from 1, `last_batch_flag` on the last request, and
    /// `estimated_num_total` the session's row count. No members at all is still one (empty)
    /// request: the replace then empties the audience, as the members say.
    pub(super) fn plan_replace_session(&self, members: &[OutboundRecord], session_id: i64) -> Plan<Request> {
        let mut plan = Plan::default();
        let mut rows: Keyed<Vec<String>, Vec<String>> = Keyed::default();
        for (index, record) in members.iter().enumerate().filter(|(_, record)| !record.removes()) {
            let Some(row) = self.row(|field, key| plan.identifier(field, record.text(field), |raw| meta_value(key, raw))) else {
                plan.refuse(index, RefusalReason::NoIdentifier, "record has no usable identifier after normalisation");
                continue;
            };
            if rows.existing(&row, index).is_none() {
                rows.push(row.clone(), index, row);
            }
        }
        let (total, size) = (rows.items.len(), self.max_rows.max(1));
        let count = total.div_ceil(size).max(1);
        for seq in 0..count {
            let chunk = seq * size..((seq + 1) * size).min(total);
            plan.requests.push(Request {
                operation: Operation::Replace,
                rows: rows.items[chunk.clone()].to_vec(),
                owners: rows.owners[chunk].to_vec(),
                session: Session { id: session_id, batch_seq: seq + 1, last: seq + 1 == count, total },
            });
        }
        plan
    }

    /// Each record's rows and what to do with them; the last action per row wins.
    fn membership(&self, batch: &[OutboundRecord], plan: &mut Plan<Request>) -> Membership {
        let mut rows = Membership::default();
        let set = |rows: &mut Membership, row: Vec<String>, operation: Operation, index: usize| match rows.existing(&row, index) {
            Some(item) => item.1 = operation,
            None => rows.push(row.clone(), index, (row, operation)),
        };
        for (index, record) in batch.iter().enumerate() {
            let leaving = record.removes();
            let operation = match (self.mode, leaving) {
                (AudienceMode::Audience, false) => Operation::Add,
                (AudienceMode::Audience, true) | (AudienceMode::Suppression, false) => Operation::Remove,
                (AudienceMode::Suppression, true) => {
                    plan.skip(SkipReason::SuppressionMode);
                    continue;
                }
            };
            let Some(row) = self.row(|field, key| plan.identifier(field, record.text(field), |raw| meta_value(key, raw))) else {
                plan.refuse(index, RefusalReason::NoIdentifier, "record has no usable identifier after normalisation");
                continue;
            };
            if operation == Operation::Add {
                let before = |field: &str| record.previous.as_ref().and_then(|p| p.get(field)).and_then(crate::value_text);
                if let Some(old) = self.row(|field, key| before(field).and_then(|raw| meta_value(key, &raw))).filter(|old| *old != row) {
                    set(&mut rows, old, Operation::Remove, index);
                }
            }
            set(&mut rows, row, operation, index);
        }
        rows
    }

    /// A row in schema order, each column's value from `value(field, key)` (normalised and
    /// hashed; `None` is missing, sent as `""`); `None` when every column is missing. The
    /// current row reads the record's best value of each field ([`OutboundRecord::text`]) and
    /// counts values that normalise to nothing; the old row reads the `before` image only.
    fn row(&self, mut value: impl FnMut(&str, MetaKey) -> Option<String>) -> Option<Vec<String>> {
        let row: Vec<String> = self.columns.iter().map(|(field, key)| value(field, *key).unwrap_or_default()).collect();
        row.iter().any(|v| !v.is_empty()).then_some(row)
    }

    /// The JSON body of a request.
    pub(super) fn body(&self, request: &Request) -> serde_json::Value {
        let schema: Vec<&str> = self.columns.iter().map(|(_, key)| key.name()).collect();
        serde_json::json!({
            "payload": {"schema": schema, "data": request.rows},
            "session": {"session_id": request.session.id, "batch_seq": request.session.batch_seq, "last_batch_flag": request.session.last, "estimated_num_total": request.session.total},
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
        // A replace session's id is its caller's (`plan_replace_session`), never derived.
        Operation::Remove | Operation::Replace => id ^ 1,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::{AudienceMode, Meta, MetaConfig, TokenPlacement};
    use super::*;
    use crate::identifiers::sha256_hex;
    use crate::{Action, Kind, Metrics};
    use sluice_core::config::Secret;

    pub(in super::super) fn meta(mode: AudienceMode) -> Meta {
        Meta::new(&config_of(mode), Metrics::new("test", Meta::NAME)).unwrap()
    }

    fn config_of(mode: AudienceMode) -> MetaConfig {
        MetaConfig {
            base_url: "http://127.0.0.1:1".into(),
            api_version: "v21.0".into(),
            access_token: Secret::literal("t"),
            token_placement: TokenPlacement::Query,
            audience_id: "123".into(),
            identifiers: [("email".to_string(), "EMAIL".to_string()), ("phone".to_string(), "PHONE".to_string())].into(),
            mode,
            max_rows_per_request: 10_000,
            timeout_ms: 1000,
        }
    }

    pub(in super::super) use crate::record::test_record as record;

    /// (row, operation, records) per row, in first-seen order.
    fn flat(membership: Membership) -> Vec<(Vec<String>, Operation, Vec<usize>)> {
        membership.items.into_iter().zip(membership.owners).map(|((row, op), owners)| (row, op, owners)).collect()
    }

    #[test]
    fn rows_are_hashed_in_schema_order_and_changes_move_members() {
        let m = meta(AudienceMode::Audience);
        let mut plan = Plan::default();
        let rows = flat(m.membership(
            &[
                record("t/0/1", Action::Upsert, serde_json::json!({"email": "New@X.com", "phone": "+1 650 555 1234"}), Some(serde_json::json!({"email": "old@x.com", "phone": "+1 650 555 1234"}))),
                record("t/0/2", Action::Delete, serde_json::json!({}), Some(serde_json::json!({"email": "gone@x.com"}))),
                record("t/0/3", Action::Upsert, serde_json::json!({"email": "no-at-sign"}), None),
                record("t/0/4", Action::Upsert, serde_json::json!({"email": "d@x.com", "phone": "n/a"}), None),
                record("t/0/5", Action::Upsert, serde_json::json!({"phone": sha256_hex("")}), None),
            ],
            &mut plan,
        ));
        let phone = sha256_hex("16505551234");
        assert_eq!(
            rows,
            vec![
                (vec![sha256_hex("old@x.com"), phone.clone()], Operation::Remove, vec![0]),
                (vec![sha256_hex("new@x.com"), phone], Operation::Add, vec![0]),
                (vec![sha256_hex("gone@x.com"), String::new()], Operation::Remove, vec![1]),
                (vec![sha256_hex("d@x.com"), String::new()], Operation::Add, vec![3]),
            ]
        );
        assert_eq!(plan.refused_indexes(), [2, 4], "nothing usable: refused; a phone of n/a is missing, never the hash of \"\"");
        assert_eq!(plan.missing, ["email", "phone", "phone"], "every value that normalised to nothing is counted");
    }

    #[test]
    fn last_action_per_row_wins_and_suppression_inverts() {
        let m = meta(AudienceMode::Suppression);
        let mut plan = Plan::default();
        let rows = flat(m.membership(
            &[
                record("t/0/1", Action::Upsert, serde_json::json!({"email": "a@x.com"}), None),
                record("t/0/2", Action::Delete, serde_json::json!({}), Some(serde_json::json!({"email": "a@x.com"}))),
            ],
            &mut plan,
        ));
        assert_eq!(rows, vec![(vec![sha256_hex("a@x.com"), String::new()], Operation::Remove, vec![0])]);
        assert_eq!(plan.skipped, [SkipReason::SuppressionMode]);
        let m = meta(AudienceMode::Audience);
        let rows = flat(m.membership(
            &[
                record("t/0/1", Action::Upsert, serde_json::json!({"email": "a@x.com"}), None),
                record("t/0/2", Action::Delete, serde_json::json!({"email": "a@x.com"}), None),
            ],
            &mut Plan::default(),
        ));
        assert_eq!(rows, vec![(vec![sha256_hex("a@x.com"), String::new()], Operation::Remove, vec![0, 1])]);
    }

    #[test]
    fn removes_go_before_adds_with_one_session_per_operation() {
        let m = meta(AudienceMode::Audience);
        let batch = [
            record("t/0/1", Action::Upsert, serde_json::json!({"email": "new@x.com"}), Some(serde_json::json!({"email": "old@x.com"}))),
            record("t/0/2", Action::Upsert, serde_json::json!({"email": "b@x.com"}), None),
        ];
        let plan = m.plan_requests(&batch);
        let ops: Vec<(Operation, Vec<Vec<usize>>)> = plan.requests.iter().map(|r| (r.operation, r.owners.clone())).collect();
        assert_eq!(ops, [(Operation::Remove, vec![vec![0]]), (Operation::Add, vec![vec![0], vec![1]])]);
        let body = m.body(&plan.requests[1]);
        assert_eq!(body["payload"]["schema"], serde_json::json!(["EMAIL", "PHONE"]));
        assert_eq!(body["session"]["session_id"], session_id(&batch, Operation::Add));
        assert_eq!(body["session"]["estimated_num_total"], 2);
        assert_ne!(session_id(&batch, Operation::Add), session_id(&batch, Operation::Remove));
    }

    #[test]
    fn a_replace_is_one_session_of_every_member_in_order_with_the_last_batch_flagged() {
        let mut m = meta(AudienceMode::Audience);
        m.max_rows = 2;
        let batch = [
            record("t/0/1", Action::Upsert, serde_json::json!({"email": "a@x.com"}), None),
            record("t/0/2", Action::Delete, serde_json::json!({"email": "gone@x.com"}), None),
            record("t/0/3", Action::Upsert, serde_json::json!({"email": "b@x.com"}), None),
            record("t/0/4", Action::Upsert, serde_json::json!({"email": "A@x.com "}), None),
            record("t/0/5", Action::Upsert, serde_json::json!({"email": "no-at-sign"}), None),
            record("t/0/6", Action::Upsert, serde_json::json!({"email": "c@x.com"}), None),
        ];
        let plan = m.plan_replace_session(&batch, 77);
        assert_eq!(plan.refused_indexes(), [4], "no usable identifier: refused, not silently left out");
        let bodies: Vec<serde_json::Value> = plan.requests.iter().map(|r| m.body(r)).collect();
        let sessions: Vec<serde_json::Value> = bodies.iter().map(|b| b["session"].clone()).collect();
        assert_eq!(
            sessions,
            [
                serde_json::json!({"session_id": 77, "batch_seq": 1, "last_batch_flag": false, "estimated_num_total": 3}),
                serde_json::json!({"session_id": 77, "batch_seq": 2, "last_batch_flag": true, "estimated_num_total": 3}),
            ]
        );
        let rows: Vec<serde_json::Value> = bodies.iter().map(|b| b["payload"]["data"].clone()).collect();
        let row = |email: &str| serde_json::json!([sha256_hex(email), ""]);
        assert_eq!(rows, [serde_json::json!([row("a@x.com"), row("b@x.com")]), serde_json::json!([row("c@x.com")])], "the leaving record is no member; a duplicate row once");
        assert_eq!(plan.requests[0].owners, [vec![0, 3], vec![2]]);
        assert!(plan.requests.iter().all(|r| r.operation == Operation::Replace));
    }

    #[test]
    fn a_replace_without_members_is_one_empty_closing_request() {
        let m = meta(AudienceMode::Audience);
        let plan = m.plan_replace_session(&[record("t/0/1", Action::Delete, serde_json::json!({"email": "a@x.com"}), None)], 5);
        assert_eq!(plan.requests.len(), 1);
        assert_eq!(m.body(&plan.requests[0])["session"], serde_json::json!({"session_id": 5, "batch_seq": 1, "last_batch_flag": true, "estimated_num_total": 0}));
    }

    #[test]
    fn only_an_audience_can_be_replaced() {
        use crate::Kind;
        assert!(m_replace(AudienceMode::Audience).is_some());
        assert!(m_replace(AudienceMode::Suppression).is_none());
        let refusal = <Meta as Kind>::check_replace(&config_of(AudienceMode::Suppression)).unwrap_err();
        assert!(refusal.reason.contains("suppression mode"), "{refusal:?}");
        assert!(<Meta as Kind>::check_replace(&config_of(AudienceMode::Audience)).is_ok());
    }

    fn m_replace(mode: AudienceMode) -> Option<Plan<Request>> {
        crate::Kind::plan_replace(&meta(mode), &[record("t/0/1", Action::Upsert, serde_json::json!({"email": "a@x.com"}), None)], 1)
    }
}

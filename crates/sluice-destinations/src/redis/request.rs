//! Batch → one pipeline, each command tagged with the record it applies.

use super::{Redis, RedisMode};
use crate::identifiers::present;
use crate::plan::{RefusalReason, Unchanged};
use crate::{Action, OutboundRecord, Plan};

/// The conditional write of hash mode's `update` (write only when the hash exists) and `create`
/// (only when it does not), as one atomic script: `EXISTS`, then `HSET` of the fields, `HDEL`
/// of the nulls and `EXPIRE`. Answers 1 when it wrote, 0 when it left the hash alone.
/// KEYS[1]: the hash. ARGV[1]: `exists` or `absent`, the condition; ARGV[2]: TTL seconds (0:
/// none); ARGV[3]: n, the field/value pairs that follow; then the fields to delete.
const GUARDED_WRITE: &str = r"
local exists = redis.call('EXISTS', KEYS[1]) == 1
if exists ~= (ARGV[1] == 'exists') then return 0 end
local n = tonumber(ARGV[3])
if n > 0 then redis.call('HSET', KEYS[1], unpack(ARGV, 4, 3 + 2 * n)) end
if #ARGV > 3 + 2 * n then redis.call('HDEL', KEYS[1], unpack(ARGV, 4 + 2 * n)) end
if n > 0 and tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1
";

/// The commands of one batch, each tagged with the record it applies (`owners[i]` is command
/// i's record).
pub struct Request {
    pub(super) pipeline: ::redis::Pipeline,
    pub(super) owners: Vec<usize>,
    /// Commands (positions) that are conditional writes, and what a reply of 0 (left alone)
    /// means.
    pub(super) guarded: Vec<(usize, Unchanged)>,
    /// Set mode: the position of the closing `SCARD`, whose reply is the audience's size.
    pub(super) cardinality: Option<usize>,
}

impl Redis {
    /// The batch as one pipeline; records without a key or member are refused. No request when
    /// no command is left.
    pub(super) fn plan_commands(&self, batch: &[OutboundRecord]) -> Plan<Request> {
        let mut plan = Plan::default();
        let mut request = Request { pipeline: ::redis::pipe(), owners: Vec::new(), guarded: Vec::new(), cardinality: None };
        let push = |request: &mut Request, index: usize, cmd: ::redis::Cmd| {
            request.pipeline.add_command(cmd);
            request.owners.push(index);
        };
        for (index, record) in batch.iter().enumerate() {
            let removing = record.removes();
            match self.mode {
                RedisMode::Hash => {
                    let Some(key) = self.hash_key(record) else {
                        plan.refuse(index, RefusalReason::NoIdentifier, "record has no primary-key values to build a redis key");
                        continue;
                    };
                    if removing {
                        push(&mut request, index, ::redis::cmd("DEL").arg(&key).clone());
                        continue;
                    }
                    let condition = match record.action {
                        Action::Update => Some(Unchanged::NotFound),
                        Action::Create => Some(Unchanged::Exists),
                        Action::Upsert | Action::Event | Action::Delete => None,
                    };
                    if let Some(unchanged) = condition {
                        request.guarded.push((request.owners.len(), unchanged));
                        push(&mut request, index, self.guarded_write(&key, unchanged, &record.fields));
                        continue;
                    }
                    let mut hset = ::redis::cmd("HSET");
                    hset.arg(&key);
                    let mut hdel = ::redis::cmd("HDEL");
                    hdel.arg(&key);
                    let (mut sets, mut dels) = (0, 0);
                    for (field, value) in &record.fields {
                        match stored_text(value) {
                            Some(text) => {
                                hset.arg(field).arg(text);
                                sets += 1;
                            }
                            None => {
                                hdel.arg(field);
                                dels += 1;
                            }
                        }
                    }
                    if sets > 0 {
                        push(&mut request, index, hset);
                    }
                    if dels > 0 {
                        push(&mut request, index, hdel);
                    }
                    if let (Some(ttl), true) = (self.ttl_secs, sets > 0) {
                        push(&mut request, index, ::redis::cmd("EXPIRE").arg(&key).arg(ttl).clone());
                    }
                }
                RedisMode::Set => {
                    let Some(member) = plan.identifier(&self.member_field, record.text(&self.member_field), present) else {
                        plan.refuse(index, RefusalReason::NoIdentifier, format!("record has no usable value for member_field {:?}", self.member_field));
                        continue;
                    };
                    if removing {
                        push(&mut request, index, ::redis::cmd("SREM").arg(&self.set_key).arg(&member).clone());
                        continue;
                    }
                    if let Some(old) = record.changed_from(&self.member_field).and_then(|old| present(&old)) {
                        push(&mut request, index, ::redis::cmd("SREM").arg(&self.set_key).arg(old).clone());
                    }
                    push(&mut request, index, ::redis::cmd("SADD").arg(&self.set_key).arg(&member).clone());
                }
            }
        }
        if let (RedisMode::Set, Some(ttl), Some(last)) = (self.mode, self.ttl_secs, request.owners.last().copied()) {
            push(&mut request, last, ::redis::cmd("EXPIRE").arg(&self.set_key).arg(ttl).clone());
        }
        // The set's size after the batch, in the same round trip: the audience size that
        // volatility is measured against. Read-only, so it changes nothing a retry converges on.
        if let (RedisMode::Set, Some(last)) = (self.mode, request.owners.last().copied()) {
            request.cardinality = Some(request.owners.len());
            push(&mut request, last, ::redis::cmd("SCARD").arg(&self.set_key).clone());
        }
        if !request.owners.is_empty() {
            plan.requests.push(request);
        }
        plan
    }

    /// `update`'s or `create`'s write of a record's fields to the hash at `key`: the
    /// [`GUARDED_WRITE`] script, conditioned on the hash existing (`NotFound` when it does not)
    /// or not (`Exists` when it does).
    fn guarded_write(&self, key: &str, unchanged: Unchanged, fields: &serde_json::Map<String, serde_json::Value>) -> ::redis::Cmd {
        let condition = if unchanged == Unchanged::NotFound { "exists" } else { "absent" };
        let sets: Vec<(&String, String)> = fields.iter().filter_map(|(field, value)| stored_text(value).map(|text| (field, text))).collect();
        let mut eval = ::redis::cmd("EVAL");
        eval.arg(GUARDED_WRITE).arg(1).arg(key).arg(condition).arg(self.ttl_secs.unwrap_or(0)).arg(sets.len());
        for (field, text) in &sets {
            eval.arg(field.as_str()).arg(text.as_str());
        }
        for (field, value) in fields {
            if value.is_null() {
                eval.arg(field.as_str());
            }
        }
        eval
    }

    /// The hash key of a record, or `None` without primary-key values (blank ones count as
    /// none).
    pub fn hash_key(&self, record: &OutboundRecord) -> Option<String> {
        let parts: Vec<String> = record.key.values().map(|v| stored_text(v).unwrap_or_default()).collect();
        if parts.is_empty() || parts.iter().all(|part| part.trim().is_empty()) {
            return None;
        }
        Some(self.key_template.replace("{model}", &record.model).replace("{key}", &parts.join(":")))
    }
}

/// How a JSON value is stored: strings as they are, other scalars printed, arrays and objects
/// as JSON text; `None` for null.
fn stored_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::{Redis, RedisConfig, RedisMode};
    use super::*;
    use crate::{Action, Kind, Metrics};
    use sluice_core::config::Secret;

    pub(in super::super) fn redis(mode: RedisMode) -> Redis {
        let config = RedisConfig {
            url: Secret::literal("redis://127.0.0.1:1"),
            mode,
            key_template: "p:{model}:{key}".into(),
            set_key: "p:suppressed".into(),
            member_field: "email".into(),
            ttl_secs: Some(60),
            timeout_ms: 1000,
        };
        Redis::new(&config, Metrics::new("test", Redis::NAME)).unwrap()
    }

    fn record(action: Action, fields: serde_json::Value, previous: Option<serde_json::Value>) -> OutboundRecord {
        let key = serde_json::json!({"id": 7, "region": "eu"}).as_object().unwrap().clone();
        OutboundRecord { key, ..crate::record::test_record("t/0/1", action, fields, previous) }
    }

    fn commands(request: &Request) -> Vec<String> {
        request
            .pipeline
            .cmd_iter()
            .map(|c| c.args_iter().map(|a| match a { ::redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(), _ => "?".into() }).collect::<Vec<_>>().join(" "))
            .collect()
    }

    #[test]
    fn hash_mode_plans_hset_hdel_expire_and_del() {
        let redis = redis(RedisMode::Hash);
        let batch = [
            record(Action::Upsert, serde_json::json!({"email": "a@x", "ltv": 12.5, "tier": null}), None),
            record(Action::Delete, serde_json::json!({}), None),
        ];
        let plan = redis.plan_commands(&batch);
        let request = &plan.requests[0];
        assert_eq!(
            commands(request),
            ["HSET p:customers:7:eu email a@x ltv 12.5", "HDEL p:customers:7:eu tier", "EXPIRE p:customers:7:eu 60", "DEL p:customers:7:eu"]
        );
        assert_eq!(request.owners, [0, 0, 0, 1]);
    }

    #[test]
    fn set_mode_moves_a_changed_member_and_refuses_a_missing_one() {
        let redis = redis(RedisMode::Set);
        let batch = [
            record(Action::Upsert, serde_json::json!({"email": "new@x"}), Some(serde_json::json!({"email": "old@x"}))),
            record(Action::Delete, serde_json::json!({}), Some(serde_json::json!({"email": "gone@x"}))),
            record(Action::Upsert, serde_json::json!({"email": null}), None),
        ];
        let plan = redis.plan_commands(&batch);
        assert_eq!(
            commands(&plan.requests[0]),
            ["SREM p:suppressed old@x", "SADD p:suppressed new@x", "SREM p:suppressed gone@x", "EXPIRE p:suppressed 60", "SCARD p:suppressed"]
        );
        assert_eq!(plan.requests[0].cardinality, Some(4), "the audience size is the last reply");
        assert_eq!(plan.refused_indexes(), [2]);
        assert_eq!(plan.refused[0].reason, RefusalReason::NoIdentifier);
    }

    #[test]
    fn hash_mode_update_and_create_are_conditional_writes() {
        let redis = redis(RedisMode::Hash);
        let batch = [
            record(Action::Update, serde_json::json!({"email": "a@x", "tier": null}), None),
            record(Action::Create, serde_json::json!({"email": "b@x"}), None),
        ];
        let request = &redis.plan_commands(&batch).requests[0];
        let commands: Vec<String> = commands(request).into_iter().map(|c| c.replace(GUARDED_WRITE, "<script>")).collect();
        assert_eq!(commands, ["EVAL <script> 1 p:customers:7:eu exists 60 1 email a@x tier", "EVAL <script> 1 p:customers:7:eu absent 60 1 email b@x"]);
        assert_eq!(request.guarded, [(0, Unchanged::NotFound), (1, Unchanged::Exists)]);
    }

    #[test]
    fn a_blank_member_is_missing_and_counted() {
        let plan = redis(RedisMode::Set).plan_commands(&[record(Action::Upsert, serde_json::json!({"email": "  "}), None)]);
        assert!(plan.requests.is_empty());
        assert_eq!((plan.refused_indexes(), plan.missing.clone()), (vec![0], vec!["email".to_string()]));
    }

    #[test]
    fn nothing_to_send_is_no_request() {
        let plan = redis(RedisMode::Set).plan_commands(&[record(Action::Upsert, serde_json::json!({"email": null}), None)]);
        assert!(plan.requests.is_empty());
        assert_eq!(plan.refused_indexes(), [0]);
    }
}

//! Redis: the low-latency store a website reads (on-site suppression, personalisation).
//!
//! Two shapes, chosen by `mode`:
//! - `hash`: one hash per record at `key_template` (`{model}`, `{key}` = primary-key values
//!   joined by `:`). Upsert/Update/Create/Event `HSET` the mapped fields (a null field is
//!   `HDEL`ed, arrays and objects are stored as JSON text); Delete (and an Event with op `d`)
//!   `DEL`s the key. Update and Create behave as upsert: Redis has no cheap conditional
//!   multi-field write, and a website store wants the latest state.
//! - `set`: one set (`set_key`) of members (`member_field`'s value): Upsert/Update/Create/Event
//!   `SADD`; Delete `SREM`. When the member changed (the `before` image has another value), the
//!   old member is `SREM`ed first, so the set never keeps a stale identifier.
//!
//! `ttl_secs` sets `EXPIRE` on every written hash, or on the set after each batch.
//!
//! Delivery: the whole batch is one pipelined round trip (not MULTI/EXEC: Redis transactions do
//! not roll back failed commands, and a pipeline lets each command answer on its own). Commands
//! are idempotent, so a retried batch converges.
//!
//! Classification: no answer (connect refused, reset, timeout) is retryable; `NOAUTH`,
//! `WRONGPASS` and `NOPERM` are fatal (every record would fail); `LOADING`, `BUSY`, `TRYAGAIN`,
//! `MASTERDOWN`, `CLUSTERDOWN`, `OOM` and `READONLY` (a failover) are retryable for the record;
//! any other error reply (`WRONGTYPE`, ...) refuses that record only (permanent).

use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::{RedisError, Value};
use sluice_core::config::{RedisConfig, RedisMode};
use sluice_core::ErrorClass;

use crate::{DeliveryError, Destination, OutboundRecord, RecordFailure};

// ---- client -------------------------------------------------------------------------------

/// The Redis destination.
pub struct Redis {
    client: ::redis::Client,
    /// Connected on first use (building a destination never connects); a failed connect leaves
    /// it empty, so the next batch tries again.
    connection: tokio::sync::OnceCell<ConnectionManager>,
    mode: RedisMode,
    key_template: String,
    set_key: String,
    member_field: String,
    ttl_secs: Option<u64>,
    timeout: Duration,
}

impl Redis {
    /// Build from config; the URL is parsed, nothing connects.
    pub fn new(config: &RedisConfig) -> Result<Redis, String> {
        let client = ::redis::Client::open(config.url.expose()).map_err(|e| format!("redis.url: {}", e.kind_description()))?;
        Ok(Redis {
            client,
            connection: tokio::sync::OnceCell::new(),
            mode: config.mode,
            key_template: config.key_template.clone(),
            set_key: config.set_key.clone(),
            member_field: config.member_field.clone(),
            ttl_secs: config.ttl_secs,
            timeout: Duration::from_millis(config.timeout_ms),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, RedisError> {
        let manager = self
            .connection
            .get_or_try_init(|| {
                // One quick attempt: the sink's backoff, not the client's, paces reconnects.
                let config = ConnectionManagerConfig::new()
                    .set_number_of_retries(1)
                    .set_connection_timeout(self.timeout)
                    .set_response_timeout(self.timeout);
                ConnectionManager::new_with_config(self.client.clone(), config)
            })
            .await?;
        Ok(manager.clone())
    }
}

trait KindDescription {
    fn kind_description(&self) -> String;
}

impl KindDescription for RedisError {
    /// The error without its text, which for a bad URL may echo the password.
    fn kind_description(&self) -> String {
        format!("{:?}", self.kind())
    }
}

// ---- request ------------------------------------------------------------------------------

/// The commands of one batch, each tagged with the record it applies.
struct Plan {
    pipeline: ::redis::Pipeline,
    owners: Vec<usize>,
    /// Records refused before anything was sent.
    refused: Vec<RecordFailure>,
}

impl Redis {
    fn plan(&self, batch: &[OutboundRecord]) -> Plan {
        let mut plan = Plan { pipeline: ::redis::pipe(), owners: Vec::new(), refused: Vec::new() };
        let push = |plan: &mut Plan, index: usize, cmd: ::redis::Cmd| {
            plan.pipeline.add_command(cmd);
            plan.owners.push(index);
        };
        for (index, record) in batch.iter().enumerate() {
            let removing = record.removes();
            match self.mode {
                RedisMode::Hash => {
                    let Some(key) = self.hash_key(record) else {
                        plan.refused.push(RecordFailure::permanent(index, "record has no primary-key values to build a redis key", None, ""));
                        continue;
                    };
                    if removing {
                        push(&mut plan, index, ::redis::cmd("DEL").arg(&key).clone());
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
                        push(&mut plan, index, hset);
                    }
                    if dels > 0 {
                        push(&mut plan, index, hdel);
                    }
                    if let (Some(ttl), true) = (self.ttl_secs, sets > 0) {
                        push(&mut plan, index, ::redis::cmd("EXPIRE").arg(&key).arg(ttl).clone());
                    }
                }
                RedisMode::Set => {
                    let Some(member) = record.text(&self.member_field) else {
                        plan.refused.push(RecordFailure::permanent(index, format!("record has no value for member_field {:?}", self.member_field), None, ""));
                        continue;
                    };
                    if removing {
                        push(&mut plan, index, ::redis::cmd("SREM").arg(&self.set_key).arg(&member).clone());
                        continue;
                    }
                    if let Some(old) = record.changed_from(&self.member_field) {
                        push(&mut plan, index, ::redis::cmd("SREM").arg(&self.set_key).arg(old).clone());
                    }
                    push(&mut plan, index, ::redis::cmd("SADD").arg(&self.set_key).arg(&member).clone());
                }
            }
        }
        if let (RedisMode::Set, Some(ttl), Some(last)) = (self.mode, self.ttl_secs, plan.owners.last().copied()) {
            push(&mut plan, last, ::redis::cmd("EXPIRE").arg(&self.set_key).arg(ttl).clone());
        }
        plan
    }

    /// The hash key of a record, or `None` without primary-key values.
    pub fn hash_key(&self, record: &OutboundRecord) -> Option<String> {
        let parts: Vec<String> = record.key.values().map(|v| stored_text(v).unwrap_or_default()).collect();
        if parts.is_empty() || parts.iter().all(String::is_empty) {
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

// ---- send ---------------------------------------------------------------------------------

impl Destination for Redis {
    fn kind(&self) -> &'static str {
        "redis"
    }

    /// A pipeline has no protocol limit; the destination's `batch_max_records` decides.
    fn max_batch_records(&self) -> usize {
        usize::MAX
    }

    async fn send(&self, batch: &[OutboundRecord]) -> Result<Vec<RecordFailure>, DeliveryError> {
        let plan = self.plan(batch);
        let mut failures = plan.refused;
        if plan.owners.is_empty() {
            return Ok(failures);
        }
        let round_trip = async {
            let mut connection = self.connection().await?;
            connection.req_packed_commands(&plan.pipeline, 0, plan.owners.len()).await
        };
        let replies = match tokio::time::timeout(self.timeout, round_trip).await {
            Err(_) => return Err(whole(ErrorClass::Retryable { retry_after: None }, format!("redis: no answer within {:?}", self.timeout))),
            Ok(Err(error)) => return Err(whole(classify_error(&error), format!("redis: {}", describe(&error)))),
            Ok(Ok(replies)) => replies,
        };
        let mut failed = vec![false; batch.len()];
        for (owner, reply) in plan.owners.iter().zip(replies) {
            let Value::ServerError(error) = reply else { continue };
            let class = classify_reply(error.code());
            if class == ErrorClass::Fatal {
                return Err(whole(class, format!("redis refused the credentials: {}", error.code())));
            }
            if !std::mem::replace(&mut failed[*owner], true) {
                failures.push(RecordFailure {
                    index: *owner,
                    class,
                    message: format!("redis answered {}", error.code()),
                    status: None,
                    excerpt: format!("{} {}", error.code(), error.details().unwrap_or("")),
                });
            }
        }
        metrics::counter!("sluice_destination_redis_commands_total").increment(plan.owners.len() as u64);
        metrics::counter!("sluice_destination_redis_record_failures_total").increment(failures.len() as u64);
        failures.sort_by_key(|f| f.index);
        Ok(failures)
    }
}

fn whole(class: ErrorClass, message: String) -> DeliveryError {
    DeliveryError { class, status: None, excerpt: String::new(), message }
}

/// Kind and server code of an error, without its detail (which may echo keys or values).
fn describe(error: &RedisError) -> String {
    match error.code() {
        Some(code) => format!("{:?} ({code})", error.kind()),
        None if error.is_timeout() => "timeout".into(),
        None if error.is_connection_refusal() => "connection refused".into(),
        None => format!("{:?}", error.kind()),
    }
}

// ---- classify -----------------------------------------------------------------------------

/// Codes meaning the credentials or the user's permissions are wrong.
const FATAL_CODES: &[&str] = &["NOAUTH", "WRONGPASS", "NOPERM"];
/// Codes of a server that is busy, loading, failing over or full: the same command may succeed
/// soon.
const RETRYABLE_CODES: &[&str] = &["LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN", "OOM", "READONLY"];

/// Class of an error reply to one command.
fn classify_reply(code: &str) -> ErrorClass {
    if FATAL_CODES.contains(&code) {
        ErrorClass::Fatal
    } else if RETRYABLE_CODES.contains(&code) {
        ErrorClass::Retryable { retry_after: None }
    } else {
        ErrorClass::Permanent
    }
}

/// Class of a failed round trip.
fn classify_error(error: &RedisError) -> ErrorClass {
    if error.kind() == ::redis::ErrorKind::AuthenticationFailed || error.kind() == ::redis::ErrorKind::InvalidClientConfig {
        return ErrorClass::Fatal;
    }
    match error.code() {
        Some(code) if FATAL_CODES.contains(&code) => ErrorClass::Fatal,
        // Anything else without a per-command reply is the connection's problem.
        _ => ErrorClass::Retryable { retry_after: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Action;
    use sluice_core::config::Secret;

    fn config(mode: RedisMode) -> RedisConfig {
        RedisConfig {
            url: Secret::literal("redis://127.0.0.1:1"),
            mode,
            key_template: "p:{model}:{key}".into(),
            set_key: "p:suppressed".into(),
            member_field: "email".into(),
            ttl_secs: Some(60),
            timeout_ms: 1000,
        }
    }

    fn record(action: Action, fields: serde_json::Value, previous: Option<serde_json::Value>) -> OutboundRecord {
        OutboundRecord {
            id: "t/0/1".into(),
            model: "customers".into(),
            action,
            op: "u".into(),
            key: serde_json::json!({"id": 7, "region": "eu"}).as_object().unwrap().clone(),
            fields: fields.as_object().unwrap().clone(),
            previous: previous.map(|p| p.as_object().unwrap().clone()),
            ts_ms: 0,
        }
    }

    fn commands(plan: &Plan) -> Vec<String> {
        plan.pipeline
            .cmd_iter()
            .map(|c| c.args_iter().map(|a| match a { ::redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(), _ => "?".into() }).collect::<Vec<_>>().join(" "))
            .collect()
    }

    #[test]
    fn hash_mode_plans_hset_hdel_expire_and_del() {
        let redis = Redis::new(&config(RedisMode::Hash)).unwrap();
        let batch = [
            record(Action::Upsert, serde_json::json!({"email": "a@x", "ltv": 12.5, "tier": null}), None),
            record(Action::Delete, serde_json::json!({}), None),
        ];
        let plan = redis.plan(&batch);
        assert_eq!(
            commands(&plan),
            ["HSET p:customers:7:eu email a@x ltv 12.5", "HDEL p:customers:7:eu tier", "EXPIRE p:customers:7:eu 60", "DEL p:customers:7:eu"]
        );
        assert_eq!(plan.owners, [0, 0, 0, 1]);
    }

    #[test]
    fn set_mode_moves_a_changed_member_and_refuses_a_missing_one() {
        let redis = Redis::new(&config(RedisMode::Set)).unwrap();
        let batch = [
            record(Action::Upsert, serde_json::json!({"email": "new@x"}), Some(serde_json::json!({"email": "old@x"}))),
            record(Action::Delete, serde_json::json!({}), Some(serde_json::json!({"email": "gone@x"}))),
            record(Action::Upsert, serde_json::json!({"email": null}), None),
        ];
        let plan = redis.plan(&batch);
        assert_eq!(commands(&plan), ["SREM p:suppressed old@x", "SADD p:suppressed new@x", "SREM p:suppressed gone@x", "EXPIRE p:suppressed 60"]);
        assert_eq!(plan.refused.len(), 1);
        assert_eq!(plan.refused[0].index, 2);
    }

    #[test]
    fn reply_classification_table() {
        let cases = [
            ("WRONGTYPE", ErrorClass::Permanent),
            ("ERR", ErrorClass::Permanent),
            ("NOAUTH", ErrorClass::Fatal),
            ("WRONGPASS", ErrorClass::Fatal),
            ("NOPERM", ErrorClass::Fatal),
            ("LOADING", ErrorClass::Retryable { retry_after: None }),
            ("OOM", ErrorClass::Retryable { retry_after: None }),
            ("READONLY", ErrorClass::Retryable { retry_after: None }),
        ];
        for (code, expected) in cases {
            assert_eq!(classify_reply(code), expected, "{code}");
        }
    }
}

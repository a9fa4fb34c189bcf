//! Redis: the low-latency store a website reads (on-site suppression, personalisation).
//!
//! Two shapes, chosen by `mode`:
//! - `hash`: one hash per record at `key_template` (`{model}`, `{key}` = primary-key values
//!   joined by `:`). Upsert/Event `HSET` the mapped fields (a null field is `HDEL`ed, arrays and
//!   objects are stored as JSON text); Update and Create are one atomic script each (`EVAL`)
//!   that checks `EXISTS` first: Update writes only a hash that exists, Create only one that
//!   does not, and a hash left alone is counted
//!   (`sluice_destination_records_unchanged_total{reason="not_found"|"exists"}`). Delete (and
//!   an Event with op `d`) `DEL`s the key.
//! - `set`: one set (`set_key`) of members (`member_field`'s value): Upsert/Event `SADD`;
//!   Delete `SREM`. When the member changed (the `before` image has another value), the old
//!   member is `SREM`ed first, so the set never keeps a stale identifier. A member that is
//!   blank is missing: the record is refused and the field counted.
//!
//! The sync modes each shape honours are in [`Redis::check_mode`].
//!
//! `ttl_secs` sets `EXPIRE` on every written hash, or on the set after each batch. In set mode
//! each pipeline ends with `SCARD`: the set's size is the audience size
//! (`sluice_destination_audience_size`).
//!
//! Delivery: the whole batch is one pipelined round trip (not MULTI/EXEC: Redis transactions do
//! not roll back failed commands, and a pipeline lets each command answer on its own). Commands
//! are idempotent, so a retried batch converges.
//!
//! Answers (`classify.rs`, over Redis's own answer: the replies, a failed round trip, or no
//! answer in time): no answer (connect refused, reset, timeout) is retryable; `NOAUTH`,
//! `WRONGPASS` and `NOPERM` are fatal (every record would fail); `LOADING`, `BUSY`, `TRYAGAIN`,
//! `MASTERDOWN`, `CLUSTERDOWN`, `OOM` and `READONLY` (a failover) are retryable for the record;
//! any other error reply (`WRONGTYPE`, ...) refuses that record only (permanent).

mod classify;
mod config;
mod request;

pub use classify::Answer;
pub use config::{RedisConfig, RedisMode};

use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::RedisError;
use sluice_core::config::SyncMode;

use crate::modes::{one_of, ModeRefusal};
use crate::{DeliveryError, Invalid, Kind, Metrics, OutboundRecord, Plan};

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
    metrics: Metrics,
}

impl Kind for Redis {
    const NAME: &'static str = "redis";
    type Config = RedisConfig;

    /// `hash`: `upsert`, `update`, `create` (conditional writes) and `mirror` (a delete `DEL`s).
    /// `set`: `upsert` (members added; a delete leaves them, revoked consent removes them),
    /// `audience` and `mirror` (the same here: added on entering, removed on leaving). Never
    /// `append` (no event store). A set has no `update` or `create` (a member has no fields),
    /// a hash no `audience` (membership is a set).
    fn check_mode(config: &RedisConfig, mode: SyncMode) -> Result<(), ModeRefusal> {
        let supported: &[SyncMode] = match config.mode {
            RedisMode::Hash => &[SyncMode::Upsert, SyncMode::Update, SyncMode::Create, SyncMode::Mirror],
            RedisMode::Set => &[SyncMode::Upsert, SyncMode::Audience, SyncMode::Mirror],
        };
        one_of(mode, supported, || match (config.mode, mode) {
            (_, SyncMode::Append) => "Redis hashes and sets hold current state, not a stream of change events".into(),
            (RedisMode::Hash, _) => "audience membership is a set: use mode = \"set\" with a member_field".into(),
            (RedisMode::Set, _) => format!("a set member has no fields to {mode}; membership is added or removed"),
        })
    }

    /// The URL is parsed, nothing connects.
    fn new(config: &RedisConfig, metrics: Metrics) -> Result<Redis, Invalid> {
        Ok(Redis {
            client: config.client()?,
            connection: tokio::sync::OnceCell::new(),
            mode: config.mode,
            key_template: config.key_template.clone(),
            set_key: config.set_key.clone(),
            member_field: config.member_field.clone(),
            ttl_secs: config.ttl_secs,
            timeout: Duration::from_millis(config.timeout_ms),
            metrics,
        })
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A pipeline has no protocol limit; the destination's `batch_max_records` decides.
    fn request_limit(&self) -> usize {
        usize::MAX
    }

    fn plan(&self, batch: &[OutboundRecord]) -> Plan<request::Request> {
        self.plan_commands(batch)
    }

    /// One pipelined round trip, bounded by the timeout; every outcome is an answer to classify.
    async fn call(&self, request: &request::Request) -> Result<Answer, DeliveryError> {
        let round_trip = async {
            let mut connection = self.connection().await?;
            connection.req_packed_commands(&request.pipeline, 0, request.owners.len()).await
        };
        Ok(match tokio::time::timeout(self.timeout, round_trip).await {
            Err(_) => Answer::TimedOut(self.timeout),
            Ok(Err(error)) => Answer::Failed(error),
            Ok(Ok(replies)) => Answer::Replies(replies),
        })
    }

    /// Commands sent, conditional writes that left their hash alone (a reply of 0), and in set
    /// mode the set's size after the batch.
    fn observe(&self, request: &request::Request, answer: &Answer) {
        let Answer::Replies(replies) = answer else { return };
        self.metrics.commands(request.owners.len());
        if let Some(::redis::Value::Int(size)) = request.cardinality.and_then(|position| replies.get(position)) {
            self.metrics.audience_size(*size as f64);
        }
        for &(position, unchanged) in &request.guarded {
            if matches!(replies.get(position), Some(::redis::Value::Int(0))) {
                self.metrics.records_unchanged(unchanged, 1);
            }
        }
    }
}

impl Redis {
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

/// The settings variants of this kind and the sync modes each honours: its rows of the
/// registry's matrix test, which checks every other mode is refused with the reason.
#[cfg(test)]
pub(crate) fn mode_cases() -> Vec<crate::kind::ModeCase> {
    use crate::kind::ModeCase;
    use sluice_core::config::SyncMode::*;
    std::env::set_var("SLUICE_TEST_REDIS_URL_UNSET_OK", "redis://127.0.0.1:6379");
    const REDIS: &str = "[destinations.redis]\nurl = { env = \"SLUICE_TEST_REDIS_URL_UNSET_OK\" }";
    vec![
        ModeCase::new(REDIS, &[Upsert, Update, Create, Mirror]),
        ModeCase::new(format!("{REDIS}\nmode = \"set\"\nset_key = \"s\"\nmember_field = \"email\""), &[Upsert, Audience, Mirror]),
    ]
}

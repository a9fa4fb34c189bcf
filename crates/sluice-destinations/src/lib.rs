//! Destinations: where mapped change records are applied.
//!
//! A destination knows its vendor's API and nothing of Kafka or warehouses. It takes a batch of
//! [`OutboundRecord`]s (already mapped: only configured fields, consent applied) and answers
//! with one of:
//! - `Ok(vec![])`: the vendor confirmed every record;
//! - `Ok(failures)`: the request succeeded but the vendor refused some records (HubSpot 207
//!   `errors`, Braze 2xx `errors`, Salesforce per-record results, Meta invalid entries): only
//!   those are retried or dead-lettered, by their [`RecordFailure::class`];
//! - `Err(DeliveryError)`: the whole request failed, with an [`ErrorClass`] saying what the
//!   caller must do (retry, reject the records, or stop).
//!
//! Every destination lives in its own module with the same parts, in the same order: the
//! client built from its config (config structs live in `sluice_core::config::destinations`),
//! the request it builds from a batch, `send`, and a response classifier with table tests.
//! Read `webhook.rs` first; the others follow it.
//!
//! | module | vendor call | per request | throttle signal | partial failures |
//! |---|---|---|---|---|
//! | [`webhook`] | `POST <url>`, Standard Webhooks signature | config | 429/502/504 + `Retry-After` | none (whole request) |
//! | [`redis`] | one pipelined round trip | config | none (connection errors retry) | per-command error replies |
//! | [`hubspot`] | `POST /crm/v3/objects/<type>/batch/upsert` | 100 | 429 + `policyName` | 207 `errors` by `objectWriteTraceId` |
//! | [`braze`] | `POST /users/track` | 75 | 429 + `X-RateLimit-Reset` | 2xx `errors[].index` |
//! | [`meta`] | `POST`/`DELETE /<audience>/users` | 10,000 | 400 + codes 4/17/32/613/80000-80014 | `invalid_entry_samples` |
//! | [`salesforce`] | `PATCH /composite/sobjects/<type>/<field>` | 200 | 403 `REQUEST_LIMIT_EXCEEDED` | per-record `success:false` |
//!
//! Identifiers: a destination keyed by a field reads it from the record's current image, else
//! its `before` image ([`OutboundRecord::previous`], which is what a delete carries), else the
//! primary key ([`OutboundRecord::text`]). No connector logs personal data: logs and metrics
//! carry counts and classes only.

pub mod braze;
pub mod http;
pub mod hubspot;
pub mod identifiers;
pub mod meta;
pub mod redis;
pub mod salesforce;
pub mod webhook;

use std::future::Future;

use sluice_core::config::DestinationConfig;
use sluice_core::{ErrorClass, Op};

/// One record to apply, after mapping.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OutboundRecord {
    /// Stable id of the source record (`topic/partition/offset`): the same on every retry and
    /// replay, so receivers can deduplicate.
    pub id: String,
    pub model: String,
    /// What to do at the destination.
    pub action: Action,
    /// The source operation, `c`, `u`, `d` or `r`.
    pub op: String,
    /// Primary-key fields of the source row.
    pub key: serde_json::Map<String, serde_json::Value>,
    /// Mapped destination fields of the current image (empty for deletes).
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// Mapped destination fields of the `before` image, when the event has one and a mapped
    /// field changed. Destinations keyed by a mutable identifier (email, phone) use it to move
    /// the record: update through a stable id, or remove-old + add-new.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<serde_json::Map<String, serde_json::Value>>,
    /// When the change was observed, ms since the epoch.
    pub ts_ms: i64,
}

impl OutboundRecord {
    /// Whether the record takes its row out of the destination: a `Delete` action, or an
    /// append-mode event of a delete.
    pub fn removes(&self) -> bool {
        self.action == Action::Delete || (self.action == Action::Event && self.op == "d")
    }

    /// A field's value as text: from the current image, else the `before` image, else the
    /// primary key. `None` when absent, null or empty.
    pub fn text(&self, field: &str) -> Option<String> {
        [Some(&self.fields), self.previous.as_ref(), Some(&self.key)]
            .into_iter()
            .flatten()
            .find_map(|image| image.get(field).and_then(value_text))
    }

    /// A field's value in the `before` image only, when it differs from the current one: the
    /// identifier to move away from.
    pub fn changed_from(&self, field: &str) -> Option<String> {
        let before = self.previous.as_ref()?.get(field).and_then(value_text)?;
        let now = self.fields.get(field).and_then(value_text)?;
        (before != now).then_some(before)
    }
}

/// A JSON value as text: strings as they are, numbers and booleans printed; `None` for null,
/// empty strings, arrays and objects.
pub fn value_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// SHA-256 over a batch's first id, last id and length: the same for the same batch on every
/// retry, different for any other batch of the stream (ids are `topic/partition/offset`).
pub fn batch_digest(batch: &[OutboundRecord]) -> [u8; 32] {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(batch.first().map_or("", |r| r.id.as_str()).as_bytes());
    hasher.update(b"\n");
    hasher.update(batch.last().map_or("", |r| r.id.as_str()).as_bytes());
    hasher.update(b"\n");
    hasher.update(batch.len().to_string().as_bytes());
    hasher.finalize().into()
}

/// What the destination must do with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Update or create (audience syncs: add the member).
    Upsert,
    /// Update only; a missing record is not created.
    Update,
    /// Create only; an existing record is left alone.
    Create,
    /// Remove (mirror: delete the record; audience: remove the member; suppression: unsubscribe).
    Delete,
    /// Append-mode event, carrying the op.
    Event,
}

impl Action {
    /// The action of a change under a sync mode, or `None` when the mode ignores the change.
    /// `consented` is false when the row fails its sync's consent condition: the row is then
    /// treated as leaving the destination, so a revocation propagates.
    pub fn for_change(mode: sluice_core::config::SyncMode, op: Op, consented: bool) -> Option<Action> {
        use sluice_core::config::SyncMode;
        let leaving = op == Op::Delete || !consented;
        match mode {
            SyncMode::Append => Some(Action::Event),
            SyncMode::Mirror | SyncMode::Audience if leaving => Some(Action::Delete),
            SyncMode::Mirror | SyncMode::Audience => Some(Action::Upsert),
            SyncMode::Upsert if leaving => consent_removal(consented),
            SyncMode::Update if leaving => consent_removal(consented),
            SyncMode::Create if leaving => None,
            SyncMode::Upsert => Some(Action::Upsert),
            SyncMode::Update => Some(Action::Update),
            SyncMode::Create => Some(Action::Create),
        }
    }
}

/// A consent revocation removes (unsubscribes) even in modes that do not propagate deletes; a
/// plain delete in those modes is ignored.
fn consent_removal(consented: bool) -> Option<Action> {
    (!consented).then_some(Action::Delete)
}

/// A failed request: nothing of the batch was applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    /// What the caller must do.
    pub class: ErrorClass,
    /// HTTP status, when the destination answered.
    pub status: Option<u16>,
    /// Start of the destination's response body (bounded, for dead-letter headers).
    pub excerpt: String,
    pub message: String,
}

/// One record the destination refused inside an otherwise successful request.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordFailure {
    /// Index into the batch that was sent.
    pub index: usize,
    /// What the caller must do with this record.
    pub class: ErrorClass,
    /// Why, in words (no personal data).
    pub message: String,
    /// HTTP status of the request that carried it, when there was one.
    pub status: Option<u16>,
    /// The vendor's words about this record (bounded).
    pub excerpt: String,
}

impl RecordFailure {
    /// A record refused before or by the vendor: dead-letter it.
    pub fn permanent(index: usize, message: impl Into<String>, status: Option<u16>, excerpt: impl Into<String>) -> RecordFailure {
        RecordFailure { index, class: ErrorClass::Permanent, message: message.into(), status, excerpt: excerpt.into() }
    }
}

/// A delete reaching a destination that cannot delete (its delete endpoints take vendor ids
/// sluice does not have): counted and skipped, or refused so it is dead-lettered for a person,
/// as the destination's `on_delete` says. `Some` is the refusal to report.
pub(crate) fn unsupported_delete(
    policy: sluice_core::config::UnsupportedDelete,
    kind: &'static str,
    index: usize,
) -> Option<RecordFailure> {
    match policy {
        sluice_core::config::UnsupportedDelete::Skip => {
            metrics::counter!(format!("sluice_destination_{kind}_deletes_skipped_total")).increment(1);
            None
        }
        sluice_core::config::UnsupportedDelete::Reject => Some(RecordFailure::permanent(
            index,
            format!("{kind} destination does not delete (on_delete = \"reject\")"),
            None,
            "",
        )),
    }
}

/// A destination that applies batches of records.
pub trait Destination: Send + Sync {
    /// Stable name of the destination kind, for metrics (`webhook`, `hubspot`, ...).
    fn kind(&self) -> &'static str;

    /// Most records one request may carry (the vendor's limit); the sink never sends more.
    fn max_batch_records(&self) -> usize;

    /// Apply a batch; see the module docs for what each answer means.
    fn send(&self, batch: &[OutboundRecord]) -> impl Future<Output = Result<Vec<RecordFailure>, DeliveryError>> + Send;
}

/// Every destination kind, for services that pick one from config (enum dispatch: the trait's
/// async methods make it unusable as a trait object, and the set of kinds is closed).
pub enum AnyDestination {
    Webhook(webhook::Webhook),
    Redis(redis::Redis),
    HubSpot(hubspot::HubSpot),
    Braze(braze::Braze),
    Meta(meta::Meta),
    Salesforce(salesforce::Salesforce),
}

/// Build the destination a config describes. Nothing connects here; errors are config errors
/// (an unreadable secret, an unknown time zone).
pub fn build(config: &DestinationConfig) -> Result<AnyDestination, String> {
    if let Some(c) = &config.webhook {
        return Ok(AnyDestination::Webhook(webhook::Webhook::new(c)?));
    }
    if let Some(c) = &config.redis {
        return Ok(AnyDestination::Redis(redis::Redis::new(c)?));
    }
    if let Some(c) = &config.hubspot {
        return Ok(AnyDestination::HubSpot(hubspot::HubSpot::new(c)?));
    }
    if let Some(c) = &config.braze {
        return Ok(AnyDestination::Braze(braze::Braze::new(c)?));
    }
    if let Some(c) = &config.meta {
        return Ok(AnyDestination::Meta(meta::Meta::new(c)?));
    }
    if let Some(c) = &config.salesforce {
        return Ok(AnyDestination::Salesforce(salesforce::Salesforce::new(c)?));
    }
    Err(format!("destination {:?} has no kind", config.name.get_ref()))
}

macro_rules! each_kind {
    ($self:ident, $d:ident => $body:expr) => {
        match $self {
            AnyDestination::Webhook($d) => $body,
            AnyDestination::Redis($d) => $body,
            AnyDestination::HubSpot($d) => $body,
            AnyDestination::Braze($d) => $body,
            AnyDestination::Meta($d) => $body,
            AnyDestination::Salesforce($d) => $body,
        }
    };
}

impl Destination for AnyDestination {
    fn kind(&self) -> &'static str {
        each_kind!(self, d => d.kind())
    }

    fn max_batch_records(&self) -> usize {
        each_kind!(self, d => d.max_batch_records())
    }

    async fn send(&self, batch: &[OutboundRecord]) -> Result<Vec<RecordFailure>, DeliveryError> {
        each_kind!(self, d => d.send(batch).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(kind_table: &str) -> DestinationConfig {
        std::env::set_var("SLUICE_TEST_DESTINATIONS_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        toml::from_str(&format!("name = \"d\"\n{kind_table}")).expect("valid destination table")
    }

    #[test]
    fn build_picks_the_configured_kind_with_its_vendor_limit() {
        let secret = "{ env = \"SLUICE_TEST_DESTINATIONS_SECRET\" }";
        let cases = [
            (format!("[webhook]\nurl = \"http://127.0.0.1:1/hook\"\nsigning_secret = {secret}"), "webhook", usize::MAX),
            (format!("[redis]\nurl = {{ env = \"SLUICE_TEST_REDIS_URL_UNSET_OK\" }}"), "redis", usize::MAX),
            (format!("[hubspot]\naccess_token = {secret}"), "hubspot", 100),
            (format!("[braze]\nbase_url = \"http://127.0.0.1:1\"\napi_key = {secret}"), "braze", 75),
            (format!("[meta]\naccess_token = {secret}\naudience_id = \"1\"\nidentifiers = {{ email = \"EMAIL\" }}"), "meta", 10_000),
            (
                format!("[salesforce]\ninstance_url = \"http://127.0.0.1:1\"\naccess_token = {secret}\nsobject = \"Contact\"\nexternal_id_field = \"W__c\""),
                "salesforce",
                200,
            ),
        ];
        std::env::set_var("SLUICE_TEST_REDIS_URL_UNSET_OK", "redis://127.0.0.1:6379");
        for (table, kind, max) in cases {
            let destination = build(&config(&table)).unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!((destination.kind(), destination.max_batch_records()), (kind, max));
        }
    }

    #[test]
    fn build_refuses_what_validation_cannot_see() {
        let secret = "{ env = \"SLUICE_TEST_DESTINATIONS_SECRET\" }";
        let cases = [
            (format!("[hubspot]\naccess_token = {secret}\nportal_time_zone = \"Mars/Olympus\""), "IANA"),
            (format!("[meta]\naccess_token = {secret}\naudience_id = \"1\"\nidentifiers = {{ email = \"EMAIL_SHA256\" }}"), "EMAIL"),
            ("[webhook]\nurl = \"http://x\"\nsigning_secret = { env = \"SLUICE_TEST_DESTINATIONS_SHORT\" }".to_string(), "24 to 64"),
        ];
        std::env::set_var("SLUICE_TEST_DESTINATIONS_SHORT", "whsec_c2hvcnQ=");
        for (table, expected) in cases {
            let error = build(&config(&table)).err().expect("refused");
            assert!(error.contains(expected), "{table}: {error}");
        }
    }
}

//! Destination kinds and their settings.
//!
//! Each kind is a sub-table of its `[[destinations]]` entry named after the kind
//! (`[destinations.webhook]`), and exactly one must be present. To add a kind: a struct here, a
//! field in [`DestinationConfig`] and its name in [`DestinationConfig::KIND_NAMES`], and a module in
//! `sluice-destinations`.

use std::collections::BTreeMap;

use toml::Spanned;

use serde::Deserialize;

use super::delivery::{RateLimitConfig, RetryConfig};
use super::{defaults, Secret};

/// A destination: where one sink service delivers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Names the service instance, its consumer group and its dead-letter topic.
    pub name: Spanned<String>,
    /// Records per request, at most.
    #[serde(default = "defaults::batch_max_records")]
    pub batch_max_records: usize,
    /// How long a partial batch waits for more records before it is sent.
    #[serde(default = "defaults::batch_linger_ms")]
    pub batch_linger_ms: u64,
    /// Retries of retryable failures.
    #[serde(default)]
    pub retry: RetryConfig,
    /// JSON bytes per request, at most (a single larger record is still sent alone).
    #[serde(default = "defaults::batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// Requests in flight at most; adaptive concurrency (AIMD) moves between 1 and this.
    #[serde(default = "defaults::max_concurrency")]
    pub max_concurrency: usize,
    /// Records consumed but not finished, at most; beyond it the sink pauses its partitions
    /// (staying in its consumer group) instead of buffering without bound.
    #[serde(default = "defaults::max_buffered_records")]
    pub max_buffered_records: usize,
    /// The destination's rate limits; never exceeded, used fully.
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// Generic HTTP destination receiving JSON batches.
    pub webhook: Option<WebhookConfig>,
    /// Redis: attributes as hashes, or audience / suppression lists as sets.
    pub redis: Option<RedisConfig>,
    /// HubSpot CRM v3 batch upsert.
    pub hubspot: Option<HubSpotConfig>,
    /// Braze `/users/track`.
    pub braze: Option<BrazeConfig>,
    /// Meta (Facebook) Custom Audiences membership.
    pub meta: Option<MetaConfig>,
    /// Salesforce sObject Collections upsert by external ID.
    pub salesforce: Option<SalesforceConfig>,
}

impl DestinationConfig {
    /// Every kind's table name.
    pub const KIND_NAMES: &'static [&'static str] = &["webhook", "redis", "hubspot", "braze", "meta", "salesforce"];

    /// Exactly one kind must be configured, and its settings must be consistent.
    pub fn validate_kind(&self) -> Result<(), String> {
        let present = [
            self.webhook.is_some(),
            self.redis.is_some(),
            self.hubspot.is_some(),
            self.braze.is_some(),
            self.meta.is_some(),
            self.salesforce.is_some(),
        ]
        .iter()
        .filter(|p| **p)
        .count();
        match present {
            1 => {}
            0 => return Err("has no kind table".into()),
            _ => return Err("has more than one kind table".into()),
        }
        if let Some(redis) = &self.redis {
            redis.validate()?;
        }
        if let Some(hubspot) = &self.hubspot {
            nonempty("hubspot.id_property", &hubspot.id_property)?;
            nonempty("hubspot.object_type", &hubspot.object_type)?;
            positive("hubspot.max_inputs_per_request", hubspot.max_inputs_per_request)?;
        }
        if let Some(braze) = &self.braze {
            nonempty("braze.base_url", &braze.base_url)?;
            positive("braze.max_objects_per_request", braze.max_objects_per_request)?;
            if braze.mode == BrazeMode::Suppression && !braze.unsubscribe_email && braze.subscription_group_ids.is_empty() {
                return Err("braze.mode = \"suppression\" needs unsubscribe_email = true or subscription_group_ids".into());
            }
        }
        if let Some(meta) = &self.meta {
            nonempty("meta.audience_id", &meta.audience_id)?;
            positive("meta.max_rows_per_request", meta.max_rows_per_request)?;
            if meta.identifiers.is_empty() {
                return Err("meta.identifiers maps no field, e.g. identifiers = { email = \"EMAIL\" }".into());
            }
        }
        if let Some(salesforce) = &self.salesforce {
            nonempty("salesforce.instance_url", &salesforce.instance_url)?;
            nonempty("salesforce.sobject", &salesforce.sobject)?;
            nonempty("salesforce.external_id_field", &salesforce.external_id_field)?;
            positive("salesforce.max_records_per_request", salesforce.max_records_per_request)?;
        }
        Ok(())
    }

    /// Name of the configured kind, for metrics and logs.
    pub fn kind_name(&self) -> &'static str {
        if self.webhook.is_some() {
            "webhook"
        } else if self.redis.is_some() {
            "redis"
        } else if self.hubspot.is_some() {
            "hubspot"
        } else if self.braze.is_some() {
            "braze"
        } else if self.meta.is_some() {
            "meta"
        } else if self.salesforce.is_some() {
            "salesforce"
        } else {
            "none"
        }
    }
}

fn nonempty(what: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("{what} is empty"));
    }
    Ok(())
}

fn positive(what: &str, value: usize) -> Result<(), String> {
    if value == 0 {
        return Err(format!("{what} must be positive"));
    }
    Ok(())
}

/// The generic webhook destination.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where batches are POSTed (`https://` in production; TLS by rustls).
    pub url: String,
    /// Extra request headers; values may be secrets (`{ env = "TOKEN" }`) or plain text.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderValue>,
    /// Per-request timeout; a timeout is retryable.
    #[serde(default = "defaults::request_timeout_ms")]
    pub timeout_ms: u64,
    /// Standard Webhooks signing secret (`whsec_` + base64 of 24-64 random bytes). When set,
    /// every request carries `webhook-id`, `webhook-timestamp` and `webhook-signature`.
    pub signing_secret: Option<Secret>,
}

/// A header value: plain text, or a secret by reference.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum HeaderValue {
    /// Written in the file.
    Plain(String),
    /// Resolved from the environment or a file.
    Secret(Secret),
}

impl HeaderValue {
    /// The value to send; keep it out of logs.
    pub fn expose(&self) -> &str {
        match self {
            HeaderValue::Plain(s) => s,
            HeaderValue::Secret(secret) => secret.expose(),
        }
    }
}

/// What a Delete does at a vendor whose documented API has no delete by our identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnsupportedDelete {
    /// Confirm the record without a request, and count it
    /// (`sluice_destination_<vendor>_deletes_skipped_total`).
    #[default]
    Skip,
    /// Refuse the record (permanent): it lands in the dead-letter topic for a person to act on.
    Reject,
}

/// The Redis destination: the low-latency store a website reads (on-site suppression,
/// personalisation attributes).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://` for TLS); a secret because it may
    /// carry a password.
    pub url: Secret,
    /// How records are stored.
    #[serde(default)]
    pub mode: RedisMode,
    /// Hash mode: the key of a record's hash. `{model}` is the model name and `{key}` the
    /// primary-key values joined by `:` (in key-column name order).
    #[serde(default = "defaults_redis::key_template")]
    pub key_template: String,
    /// Set mode: the set holding the members (an audience or a suppression list).
    #[serde(default)]
    pub set_key: String,
    /// Set mode: the mapped field whose value is the member (e.g. `email`).
    #[serde(default)]
    pub member_field: String,
    /// Time to live of a written key (the hash, or the whole set), refreshed on every write;
    /// absent: keys never expire.
    pub ttl_secs: Option<u64>,
    /// Per-batch timeout (connect and the pipelined round trip); a timeout is retryable.
    #[serde(default = "defaults::request_timeout_ms")]
    pub timeout_ms: u64,
}

/// How the Redis destination stores records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RedisMode {
    /// One hash per record: `HSET` of the mapped fields (a null field is `HDEL`ed); Delete is
    /// `DEL`.
    #[default]
    Hash,
    /// One set for all records: Upsert/Update/Create `SADD` the member, Delete `SREM`s it.
    Set,
}

impl RedisConfig {
    fn validate(&self) -> Result<(), String> {
        match self.mode {
            RedisMode::Hash => {
                if !self.key_template.contains("{key}") {
                    return Err("redis.key_template must contain {key}, or records would overwrite each other".into());
                }
            }
            RedisMode::Set => {
                nonempty("redis.set_key (needed by mode = \"set\")", &self.set_key)?;
                nonempty("redis.member_field (needed by mode = \"set\")", &self.member_field)?;
            }
        }
        if self.ttl_secs == Some(0) {
            return Err("redis.ttl_secs must be positive (leave it out for no expiry)".into());
        }
        Ok(())
    }
}

mod defaults_redis {
    pub fn key_template() -> String {
        "sluice:{model}:{key}".into()
    }
}

/// HubSpot CRM v3: `POST /crm/v3/objects/<object_type>/batch/upsert`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSpotConfig {
    /// API root; change it only for tests or a proxy.
    #[serde(default = "defaults_hubspot::base_url")]
    pub base_url: String,
    /// Private-app or OAuth access token, sent as `Authorization: Bearer`.
    pub access_token: Secret,
    /// CRM object type in the path (`contacts`, `companies`, ...).
    #[serde(default = "defaults_hubspot::object_type")]
    pub object_type: String,
    /// The unique HubSpot property records are matched on (`email`, or a property with
    /// `hasUniqueValue`).
    #[serde(default = "defaults_hubspot::id_property")]
    pub id_property: String,
    /// The mapped field holding the `id_property` value; defaults to `id_property` itself.
    pub id_field: Option<String>,
    /// Inputs per request; HubSpot's batch endpoints take at most 100.
    #[serde(default = "defaults_hubspot::max_inputs")]
    pub max_inputs_per_request: usize,
    /// IANA time zone of the HubSpot account: the daily limit resets at its midnight.
    #[serde(default = "defaults_hubspot::portal_time_zone")]
    pub portal_time_zone: String,
    /// Wait after a `TEN_SECONDLY_ROLLING`/`SECONDLY` 429 when the response names no interval.
    #[serde(default = "defaults_hubspot::ten_secondly_backoff_ms")]
    pub ten_secondly_backoff_ms: u64,
    /// Send an `objectWriteTraceId` per input, so a 207 multi-status answer names the refused
    /// records (without it one bad input fails the whole batch with 400).
    #[serde(default = "yes")]
    pub multi_status: bool,
    /// What a Delete does: HubSpot's batch archive takes HubSpot record ids, not `id_property`
    /// values.
    #[serde(default)]
    pub on_delete: UnsupportedDelete,
    /// Per-request timeout; a timeout is retryable.
    #[serde(default = "defaults::request_timeout_ms")]
    pub timeout_ms: u64,
}

mod defaults_hubspot {
    pub fn base_url() -> String {
        "https://api.hubapi.com".into()
    }
    pub fn object_type() -> String {
        "contacts".into()
    }
    pub fn id_property() -> String {
        "email".into()
    }
    pub fn max_inputs() -> usize {
        100
    }
    pub fn portal_time_zone() -> String {
        "UTC".into()
    }
    pub fn ten_secondly_backoff_ms() -> u64 {
        10_000
    }
}

/// Braze: `POST <base_url>/users/track`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrazeConfig {
    /// The REST endpoint of the workspace's instance, e.g. `https://rest.iad-01.braze.com`.
    pub base_url: String,
    /// REST API key with the `users.track` permission, sent as `Authorization: Bearer`.
    pub api_key: Secret,
    /// Which Braze identifier the user objects carry.
    #[serde(default)]
    pub identifier: BrazeIdentifier,
    /// The mapped field holding the identifier's value; defaults to the identifier's name
    /// (`external_id` or `email`).
    pub identifier_field: Option<String>,
    /// What an upsert and a delete mean.
    #[serde(default)]
    pub mode: BrazeMode,
    /// Objects per request: 75 (50 for accounts on the MAU pricing of 2024-25).
    #[serde(default = "defaults_braze::max_objects")]
    pub max_objects_per_request: usize,
    /// Suppression sets `email_subscribe = "unsubscribed"`.
    #[serde(default = "yes")]
    pub unsubscribe_email: bool,
    /// Suppression also unsubscribes from these subscription groups.
    #[serde(default)]
    pub subscription_group_ids: Vec<String>,
    /// Per-request timeout; a timeout is retryable.
    #[serde(default = "defaults::request_timeout_ms")]
    pub timeout_ms: u64,
}

/// The identifier in Braze user objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BrazeIdentifier {
    /// The customer's own user id.
    #[default]
    ExternalId,
    /// The email address (trimmed and lowercased before sending).
    Email,
}

/// What records do in Braze.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BrazeMode {
    /// Upsert/Update/Create write the mapped fields as attributes; Delete (a row leaving, or
    /// consent revoked) unsubscribes. Braze user deletion is irreversible and never done.
    #[default]
    Attributes,
    /// A row's presence suppresses: Upsert/Update/Create unsubscribe (with the mapped fields as
    /// attributes); Delete does nothing (a suppression ending never re-subscribes anyone).
    Suppression,
}

mod defaults_braze {
    pub fn max_objects() -> usize {
        75
    }
}

/// Meta Custom Audiences: `POST` (add) and `DELETE` (remove) `/<version>/<audience_id>/users`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaConfig {
    /// Graph API root; change it only for tests or a proxy.
    #[serde(default = "defaults_meta::base_url")]
    pub base_url: String,
    /// Graph API version in the path.
    #[serde(default = "defaults_meta::api_version")]
    pub api_version: String,
    /// Access token of a system user with `ads_management` on the ad account.
    pub access_token: Secret,
    /// How the token is sent: `query` (`?access_token=`, as documented) or `bearer`
    /// (`Authorization: Bearer`, unconfirmed for this endpoint).
    #[serde(default)]
    pub token_placement: TokenPlacement,
    /// The Custom Audience's id.
    pub audience_id: String,
    /// Mapped field → Meta schema key (`EMAIL`, `PHONE`, `FN`, `LN`, `FI`, `CT`, `ST`, `ZIP`,
    /// `COUNTRY`, `GEN`, `DOBY`, `DOBM`, `DOBD`, `MADID`, `EXTERN_ID`). Values are normalised
    /// and SHA-256 hashed as Meta documents (MADID and EXTERN_ID are sent as is).
    pub identifiers: BTreeMap<String, String>,
    /// What an upsert and a delete mean.
    #[serde(default)]
    pub mode: AudienceMode,
    /// Rows per request; Meta takes at most 10,000.
    #[serde(default = "defaults_meta::max_rows")]
    pub max_rows_per_request: usize,
    /// Per-request timeout; a timeout is retryable.
    #[serde(default = "defaults::request_timeout_ms")]
    pub timeout_ms: u64,
}

/// How an access token travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TokenPlacement {
    /// `?access_token=...`
    #[default]
    Query,
    /// `Authorization: Bearer ...`
    Bearer,
}

/// What records do to an audience.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AudienceMode {
    /// A row is a member: Upsert/Update/Create add it, Delete removes it.
    #[default]
    Audience,
    /// A row's presence removes the person (a buyer leaves a prospecting audience): Upsert/Update/
    /// Create remove; Delete does nothing.
    Suppression,
}

mod defaults_meta {
    pub fn base_url() -> String {
        "https://graph.facebook.com".into()
    }
    pub fn api_version() -> String {
        "v21.0".into()
    }
    pub fn max_rows() -> usize {
        10_000
    }
}

/// Salesforce: `PATCH /services/data/<api_version>/composite/sobjects/<sobject>/<external_id_field>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesforceConfig {
    /// The org's My Domain URL, e.g. `https://acme.my.salesforce.com`.
    pub instance_url: String,
    /// OAuth access token, sent as `Authorization: Bearer`. sluice does not refresh it: a 401
    /// stops the destination until a valid token is configured.
    pub access_token: Secret,
    /// REST API version in the path (46.0 or later has sObject Collections upsert).
    #[serde(default = "defaults_salesforce::api_version")]
    pub api_version: String,
    /// The sObject type (`Contact`, `Lead`, `Account`, a custom `X__c`).
    pub sobject: String,
    /// The external-ID field records are matched on.
    pub external_id_field: String,
    /// Records per request; Salesforce takes at most 200.
    #[serde(default = "defaults_salesforce::max_records")]
    pub max_records_per_request: usize,
    /// Per-record error codes that are retried instead of dead-lettered (lock contention is
    /// commonly transient; not confirmed by Salesforce's docs, hence configurable).
    #[serde(default = "defaults_salesforce::retryable_error_codes")]
    pub retryable_error_codes: Vec<String>,
    /// Wait after `REQUEST_LIMIT_EXCEEDED` when `Sforce-Limit-Info` shows the rolling 24-hour
    /// allocation spent (otherwise the limit hit is on concurrency and backoff decides).
    #[serde(default = "defaults_salesforce::allocation_exhausted_wait_secs")]
    pub allocation_exhausted_wait_secs: u64,
    /// What a Delete does: sObject Collections delete takes record ids, not external ids.
    #[serde(default)]
    pub on_delete: UnsupportedDelete,
    /// Per-request timeout; a timeout is retryable.
    #[serde(default = "defaults::request_timeout_ms")]
    pub timeout_ms: u64,
}

mod defaults_salesforce {
    pub fn api_version() -> String {
        "v62.0".into()
    }
    pub fn max_records() -> usize {
        200
    }
    pub fn retryable_error_codes() -> Vec<String> {
        vec!["UNABLE_TO_LOCK_ROW".into()]
    }
    pub fn allocation_exhausted_wait_secs() -> u64 {
        3600
    }
}

fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(kind_table: &str) -> Result<DestinationConfig, String> {
        std::env::set_var("SLUICE_TEST_DESTINATION_TOKEN", "t0k3n");
        let text = format!("name = \"d\"\n{kind_table}");
        let config: DestinationConfig = toml::from_str(&text).map_err(|e| e.message().to_string())?;
        config.validate_kind()?;
        Ok(config)
    }

    #[test]
    fn every_kind_parses_with_its_defaults() {
        let token = "{ env = \"SLUICE_TEST_DESTINATION_TOKEN\" }";
        let redis = parse(&format!("[redis]\nurl = {token}\nmode = \"set\"\nset_key = \"s\"\nmember_field = \"email\"\nttl_secs = 60")).unwrap();
        assert_eq!(redis.kind_name(), "redis");
        assert_eq!(redis.redis.unwrap().key_template, "sluice:{model}:{key}");
        let hubspot = parse(&format!("[hubspot]\naccess_token = {token}")).unwrap().hubspot.unwrap();
        assert_eq!((hubspot.max_inputs_per_request, hubspot.id_property.as_str(), hubspot.portal_time_zone.as_str()), (100, "email", "UTC"));
        assert!(hubspot.multi_status);
        let braze = parse(&format!("[braze]\nbase_url = \"https://rest.iad-01.braze.com\"\napi_key = {token}")).unwrap().braze.unwrap();
        assert_eq!((braze.max_objects_per_request, braze.mode, braze.identifier), (75, BrazeMode::Attributes, BrazeIdentifier::ExternalId));
        let meta = parse(&format!("[meta]\naccess_token = {token}\naudience_id = \"1\"\nidentifiers = {{ email = \"EMAIL\" }}")).unwrap().meta.unwrap();
        assert_eq!((meta.max_rows_per_request, meta.mode, meta.token_placement), (10_000, AudienceMode::Audience, TokenPlacement::Query));
        let salesforce = parse(&format!(
            "[salesforce]\ninstance_url = \"https://x.my.salesforce.com\"\naccess_token = {token}\nsobject = \"Contact\"\nexternal_id_field = \"W__c\""
        ))
        .unwrap()
        .salesforce
        .unwrap();
        assert_eq!(salesforce.max_records_per_request, 200);
        assert_eq!(salesforce.retryable_error_codes, ["UNABLE_TO_LOCK_ROW"]);
        let webhook = parse(&format!("[webhook]\nurl = \"https://x\"\nsigning_secret = {token}")).unwrap().webhook.unwrap();
        assert_eq!(webhook.signing_secret.unwrap().expose(), "t0k3n");
    }

    #[test]
    fn inconsistent_kind_settings_are_refused() {
        let token = "{ env = \"SLUICE_TEST_DESTINATION_TOKEN\" }";
        let cases = [
            (format!("[redis]\nurl = {token}\nmode = \"set\""), "set_key"),
            (format!("[redis]\nurl = {token}\nkey_template = \"x:{{model}}\""), "{key}"),
            (format!("[meta]\naccess_token = {token}\naudience_id = \"1\"\nidentifiers = {{}}"), "identifiers"),
            (format!("[braze]\nbase_url = \"b\"\napi_key = {token}\nmode = \"suppression\"\nunsubscribe_email = false"), "suppression"),
            ("[hubspot]\naccess_token = \"inline\"".to_string(), "never written inline"),
            (format!("[webhook]\nurl = \"u\"\n[redis]\nurl = {token}"), "more than one kind"),
        ];
        for (table, expected) in cases {
            let error = parse(&table).unwrap_err();
            assert!(error.contains(expected), "{table}: {error}");
        }
    }
}

//! Redis settings: `[destinations.redis]`.

use serde::Deserialize;
use sluice_core::config::Secret;

use sluice_core::config::bounds::TTL_SECS;

use crate::settings::{default_timeout_ms, nonempty, timeout, within, IdentifierField, Invalid, Validate};

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
    #[serde(default = "default_key_template")]
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
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_key_template() -> String {
    "sluice:{model}:{key}".into()
}

/// How the Redis destination stores records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RedisMode {
    /// One hash per record: `HSET` of the mapped fields (a null field is `HDEL`ed); Delete is
    /// `DEL`.
    #[default]
    Hash,
    /// One set for all records: Upsert `SADD`s the member, Delete `SREM`s it.
    Set,
}

impl RedisConfig {
    /// A client for the URL; nothing connects. The error names the URL's problem without its
    /// text, which may carry a password.
    pub(super) fn client(&self) -> Result<::redis::Client, Invalid> {
        ::redis::Client::open(self.url.expose())
            .map_err(|e| Invalid::new("url", format!("is not a Redis URL ({:?})", e.kind()), "redis://[user:password@]host:port[/db], or rediss:// for TLS"))
    }
}

impl Validate for RedisConfig {
    fn validate(&self) -> Result<(), Invalid> {
        self.client()?;
        match self.mode {
            RedisMode::Hash => {
                if !self.key_template.contains("{key}") {
                    return Err(Invalid::new(
                        "key_template",
                        "must contain {key}, or records would overwrite each other",
                        "key_template = \"sluice:{model}:{key}\"",
                    ));
                }
            }
            RedisMode::Set => {
                nonempty("set_key", &self.set_key, "mode = \"set\" needs the set's key, e.g. set_key = \"sluice:suppressed\"")?;
                nonempty("member_field", &self.member_field, "mode = \"set\" needs the mapped field holding the member, e.g. member_field = \"email\"")?;
            }
        }
        if self.ttl_secs == Some(0) {
            return Err(Invalid::new("ttl_secs", "must be positive", "leave it out for no expiry"));
        }
        if let Some(ttl) = self.ttl_secs {
            within("ttl_secs", ttl as f64, TTL_SECS)?;
        }
        timeout(self.timeout_ms)
    }

    /// Set mode reads the member from a mapped field.
    fn identifier_fields(&self) -> Vec<IdentifierField> {
        match self.mode {
            RedisMode::Set => vec![IdentifierField::new("member_field", &self.member_field)],
            RedisMode::Hash => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RedisMode;
    use crate::kind::test_settings;

    #[test]
    fn parses_with_its_defaults() {
        let redis = test_settings::<super::super::Redis>(
            "[destinations.redis]\nurl = { env = \"SLUICE_TEST_DESTINATIONS_SECRET\" }\nmode = \"set\"\nset_key = \"s\"\nmember_field = \"email\"\nttl_secs = 60",
        );
        // The test secret is not a Redis URL: refused at `url`, by kind, without the value.
        let error = redis.unwrap_err();
        assert!(error.message.contains("redis.url: is not a Redis URL"), "{error}");
        assert!(!error.message.contains("whsec"), "{error}");
        std::env::set_var("SLUICE_TEST_REDIS_CONFIG_URL", "redis://127.0.0.1:6379");
        let redis = test_settings::<super::super::Redis>("[destinations.redis]\nurl = { env = \"SLUICE_TEST_REDIS_CONFIG_URL\" }").unwrap();
        assert_eq!((redis.mode, redis.key_template.as_str(), redis.ttl_secs, redis.timeout_ms), (RedisMode::Hash, "sluice:{model}:{key}", None, 10_000));
    }
}

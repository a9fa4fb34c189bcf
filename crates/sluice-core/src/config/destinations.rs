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
}

impl DestinationConfig {
    /// Every kind's table name.
    pub const KIND_NAMES: &'static [&'static str] = &["webhook"];

    /// Exactly one kind must be configured.
    pub fn validate_kind(&self) -> Result<(), String> {
        let present = [self.webhook.is_some()].iter().filter(|p| **p).count();
        match present {
            1 => Ok(()),
            0 => Err("has no kind table".into()),
            _ => Err("has more than one kind table".into()),
        }
    }

    /// Name of the configured kind, for metrics and logs.
    pub fn kind_name(&self) -> &'static str {
        if self.webhook.is_some() {
            "webhook"
        } else {
            "none"
        }
    }
}

/// The generic webhook destination.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// Extra request headers; values may be secrets (`{ env = "TOKEN" }`) or plain text.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderValue>,
    /// Per-request timeout; a timeout is retryable.
    #[serde(default = "defaults::request_timeout_ms")]
    pub timeout_ms: u64,
}

/// A header value: plain text, or a secret by reference.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum HeaderValue {
    Plain(String),
    Secret(Secret),
}

impl HeaderValue {
    pub fn expose(&self) -> &str {
        match self {
            HeaderValue::Plain(s) => s,
            HeaderValue::Secret(secret) => secret.expose(),
        }
    }
}


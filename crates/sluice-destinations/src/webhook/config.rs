//! Webhook settings: `[destinations.webhook]`.

use std::collections::BTreeMap;

use serde::Deserialize;
use sluice_core::config::{MaybeSecret, Secret};

use super::request::Signer;
use crate::settings::{default_timeout_ms, http_url, nonempty, timeout, Invalid, Validate};

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
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Standard Webhooks signing secret (`whsec_` + base64 of 24-64 random bytes). When set,
    /// every request carries `webhook-id`, `webhook-timestamp` and `webhook-signature`.
    pub signing_secret: Option<Secret>,
}

/// A header value: plain text, or a secret by reference (`{ env = "TOKEN" }`).
pub type HeaderValue = MaybeSecret;

impl WebhookConfig {
    /// The configured headers, values marked sensitive so they never print.
    pub(super) fn header_map(&self) -> Result<reqwest::header::HeaderMap, Invalid> {
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &self.headers {
            let fix = "use a valid HTTP header name and a value without line breaks";
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|e| Invalid::new("headers", format!("{name:?}: {e}"), fix))?;
            let mut value = reqwest::header::HeaderValue::from_str(value.expose()).map_err(|e| Invalid::new("headers", format!("{name}: {e}"), fix))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        Ok(headers)
    }

    /// The signer of the configured secret, if one is set.
    pub(super) fn signer(&self) -> Result<Option<Signer>, Invalid> {
        let fix = "generate one: `whsec_` followed by base64 of 24 to 64 random bytes";
        self.signing_secret.as_ref().map(|s| Signer::from_secret(s.expose()).map_err(|message| Invalid::new("signing_secret", message, fix))).transpose()
    }
}

impl Validate for WebhookConfig {
    fn validate(&self) -> Result<(), Invalid> {
        nonempty("url", &self.url, "url = \"https://example.com/hook\"")?;
        self.header_map()?;
        self.signer()?;
        timeout(self.timeout_ms)?;
        http_url("url", &self.url, "https://example.com/hook")
    }
}

#[cfg(test)]
mod tests {
    use crate::kind::test_settings;

    #[test]
    fn parses_with_its_defaults_and_resolves_the_secret() {
        let webhook = test_settings::<super::super::Webhook>("[destinations.webhook]\nurl = \"https://x\"\nsigning_secret = { env = \"SLUICE_TEST_DESTINATIONS_SECRET\" }").unwrap();
        assert_eq!(webhook.signing_secret.unwrap().expose(), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert_eq!(webhook.timeout_ms, 10_000);
    }
}

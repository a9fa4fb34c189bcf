//! Meta settings: `[destinations.meta]`.

use std::collections::BTreeMap;

use serde::Deserialize;
use sluice_core::config::Secret;

use crate::identifiers::MetaKey;
use sluice_core::config::bounds::Bounded;

use crate::settings::{default_timeout_ms, http_url, nonempty, timeout, within, IdentifierField, Invalid, Validate};

/// Meta Custom Audiences: `POST` (add) and `DELETE` (remove) `/<version>/<audience_id>/users`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaConfig {
    /// Graph API root; change it only for tests or a proxy.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Graph API version in the path.
    #[serde(default = "default_api_version")]
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
    #[serde(default = "default_max_rows")]
    pub max_rows_per_request: usize,
    /// Per-request timeout; a timeout is retryable.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_base_url() -> String {
    "https://graph.facebook.com".into()
}
fn default_api_version() -> String {
    "v21.0".into()
}
fn default_max_rows() -> usize {
    10_000
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

impl MetaConfig {
    /// (mapped field, schema key) per identifier, in schema order.
    pub(super) fn columns(&self) -> Result<Vec<(String, MetaKey)>, Invalid> {
        let mut columns = Vec::new();
        for (field, key) in &self.identifiers {
            let parsed = MetaKey::parse(key).ok_or_else(|| {
                let names: Vec<&str> = MetaKey::ALL.iter().map(|(_, n)| *n).collect();
                Invalid::new("identifiers", format!("{field}: {key:?} is not one of {}", names.join(", ")), "map each field to a schema key, e.g. { email = \"EMAIL\" }")
            })?;
            columns.push((field.clone(), parsed));
        }
        Ok(columns)
    }
}

impl Validate for MetaConfig {
    fn validate(&self) -> Result<(), Invalid> {
        nonempty("audience_id", &self.audience_id, "the Custom Audience's id, e.g. audience_id = \"23851234567890\"")?;
        within("max_rows_per_request", self.max_rows_per_request as f64, MAX_ROWS)?;
        if self.identifiers.is_empty() {
            return Err(Invalid::new("identifiers", "maps no field", "e.g. identifiers = { email = \"EMAIL\" }"));
        }
        self.columns()?;
        if self.token_placement == TokenPlacement::Bearer {
            crate::http::bearer(self.access_token.expose(), "access_token")?;
        }
        nonempty("api_version", &self.api_version, "api_version = \"v21.0\"")?;
        timeout(self.timeout_ms)?;
        http_url("base_url", &self.base_url, "https://graph.facebook.com")
    }

    /// Every identifier: one no sync maps is empty in every row Meta receives.
    fn identifier_fields(&self) -> Vec<IdentifierField> {
        self.identifiers.keys().map(|field| IdentifierField::new("identifiers", field)).collect()
    }
}

/// Rows per request: Meta takes at most 10,000.
const MAX_ROWS: Bounded = Bounded { min: 1.0, max: 10_000.0, example: "max_rows_per_request = 10000 (Meta's limit)" };

#[cfg(test)]
mod tests {
    use super::{AudienceMode, TokenPlacement};
    use crate::kind::test_settings;

    #[test]
    fn parses_with_its_defaults() {
        let meta = test_settings::<super::super::Meta>(
            "[destinations.meta]\naccess_token = { env = \"SLUICE_TEST_DESTINATIONS_SECRET\" }\naudience_id = \"1\"\nidentifiers = { email = \"EMAIL\" }",
        )
        .unwrap();
        assert_eq!((meta.max_rows_per_request, meta.mode, meta.token_placement), (10_000, AudienceMode::Audience, TokenPlacement::Query));
        assert_eq!((meta.base_url.as_str(), meta.api_version.as_str()), ("https://graph.facebook.com", "v21.0"));
    }
}

//! Braze settings: `[destinations.braze]`.

use serde::Deserialize;
use sluice_core::config::Secret;

use sluice_core::config::bounds::Bounded;

use crate::settings::{default_timeout_ms, http_url, nonempty, timeout, within, yes, IdentifierField, Invalid, Validate};

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
    #[serde(default = "default_max_objects")]
    pub max_objects_per_request: usize,
    /// Suppression sets `email_subscribe = "unsubscribed"`.
    #[serde(default = "yes")]
    pub unsubscribe_email: bool,
    /// Suppression also unsubscribes from these subscription groups.
    #[serde(default)]
    pub subscription_group_ids: Vec<String>,
    /// Per-request timeout; a timeout is retryable.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_max_objects() -> usize {
    75
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

impl BrazeIdentifier {
    /// The attribute name Braze reads it from.
    pub fn name(self) -> &'static str {
        match self {
            BrazeIdentifier::ExternalId => "external_id",
            BrazeIdentifier::Email => "email",
        }
    }
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

impl Validate for BrazeConfig {
    fn validate(&self) -> Result<(), Invalid> {
        nonempty("base_url", &self.base_url, "the workspace's REST endpoint, e.g. base_url = \"https://rest.iad-01.braze.com\"")?;
        within("max_objects_per_request", self.max_objects_per_request as f64, MAX_OBJECTS)?;
        if self.mode == BrazeMode::Suppression && !self.unsubscribe_email && self.subscription_group_ids.is_empty() {
            return Err(Invalid::new(
                "mode",
                "\"suppression\" with unsubscribe_email = false and no subscription_group_ids would suppress nothing",
                "set unsubscribe_email = true, or list subscription_group_ids",
            ));
        }
        crate::http::bearer(self.api_key.expose(), "api_key")?;
        timeout(self.timeout_ms)?;
        http_url("base_url", &self.base_url, "https://rest.iad-01.braze.com")
    }

    fn identifier_fields(&self) -> Vec<IdentifierField> {
        vec![match &self.identifier_field {
            Some(field) => IdentifierField::new("identifier_field", field),
            None => IdentifierField::new("identifier", self.identifier.name()),
        }]
    }
}

/// Objects per `/users/track` request: Braze takes at most 75.
const MAX_OBJECTS: Bounded = Bounded { min: 1.0, max: 75.0, example: "max_objects_per_request = 75 (50 on MAU plans)" };

#[cfg(test)]
mod tests {
    use super::{BrazeIdentifier, BrazeMode};
    use crate::kind::test_settings;

    #[test]
    fn parses_with_its_defaults() {
        let braze = test_settings::<super::super::Braze>(
            "[destinations.braze]\nbase_url = \"https://rest.iad-01.braze.com\"\napi_key = { env = \"SLUICE_TEST_DESTINATIONS_SECRET\" }",
        )
        .unwrap();
        assert_eq!((braze.max_objects_per_request, braze.mode, braze.identifier), (75, BrazeMode::Attributes, BrazeIdentifier::ExternalId));
        assert!(braze.unsubscribe_email && braze.subscription_group_ids.is_empty());
    }
}

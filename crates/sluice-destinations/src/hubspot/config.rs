//! HubSpot settings: `[destinations.hubspot]`.

use serde::Deserialize;
use sluice_core::config::Secret;

use sluice_core::config::bounds::{Bounded, VENDOR_WAIT_MS};

use crate::settings::{default_timeout_ms, http_url, nonempty, timeout, within, yes, IdentifierField, Invalid, Validate};
use crate::OnDelete;

/// HubSpot CRM v3 batch endpoints under `/crm/v3/objects/<object_type>/batch/`: `upsert`,
/// `read` (ids by `idProperty`), `update`, `create`, `archive`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSpotConfig {
    /// API root; change it only for tests or a proxy.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Private-app or OAuth access token, sent as `Authorization: Bearer`.
    pub access_token: Secret,
    /// CRM object type in the path (`contacts`, `companies`, ...).
    #[serde(default = "default_object_type")]
    pub object_type: String,
    /// The unique HubSpot property records are matched on (`email`, or a property with
    /// `hasUniqueValue`).
    #[serde(default = "default_id_property")]
    pub id_property: String,
    /// The mapped field holding the `id_property` value; defaults to `id_property` itself.
    pub id_field: Option<String>,
    /// Inputs per request; HubSpot's batch endpoints take at most 100.
    #[serde(default = "default_max_inputs")]
    pub max_inputs_per_request: usize,
    /// IANA time zone of the HubSpot account: the daily limit resets at its midnight.
    #[serde(default = "default_portal_time_zone")]
    pub portal_time_zone: String,
    /// Wait after a `TEN_SECONDLY_ROLLING`/`SECONDLY` 429 when the response names no interval.
    #[serde(default = "default_ten_secondly_backoff_ms")]
    pub ten_secondly_backoff_ms: u64,
    /// Send an `objectWriteTraceId` per input, so a 207 multi-status answer names the refused
    /// records (without it one bad input fails the whole batch with 400).
    #[serde(default = "yes")]
    pub multi_status: bool,
    /// What a Delete does: `archive` (the default; `delete` is accepted too) looks the records'
    /// HubSpot ids up by `id_property` and archives them; `skip` confirms without a request
    /// (counted); `reject` dead-letters. A `mirror` sync needs `archive`.
    #[serde(default)]
    pub on_delete: OnDelete,
    /// Per-request timeout; a timeout is retryable.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_base_url() -> String {
    "https://api.hubapi.com".into()
}
fn default_object_type() -> String {
    "contacts".into()
}
fn default_id_property() -> String {
    "email".into()
}
fn default_max_inputs() -> usize {
    100
}
fn default_portal_time_zone() -> String {
    "UTC".into()
}
fn default_ten_secondly_backoff_ms() -> u64 {
    10_000
}

impl HubSpotConfig {
    /// The account's time zone.
    pub(super) fn time_zone(&self) -> Result<chrono_tz::Tz, Invalid> {
        self.portal_time_zone.parse::<chrono_tz::Tz>().map_err(|_| {
            Invalid::new("portal_time_zone", format!("{:?} is not an IANA time zone", self.portal_time_zone), "use the account's zone, e.g. \"America/New_York\"")
        })
    }
}

impl Validate for HubSpotConfig {
    fn validate(&self) -> Result<(), Invalid> {
        nonempty("id_property", &self.id_property, "id_property = \"email\", or a property with a unique value")?;
        nonempty("object_type", &self.object_type, "object_type = \"contacts\"")?;
        within("max_inputs_per_request", self.max_inputs_per_request as f64, MAX_INPUTS)?;
        self.time_zone()?;
        crate::http::bearer(self.access_token.expose(), "access_token")?;
        within("ten_secondly_backoff_ms", self.ten_secondly_backoff_ms as f64, VENDOR_WAIT_MS)?;
        timeout(self.timeout_ms)?;
        http_url("base_url", &self.base_url, "https://api.hubapi.com")
    }

    fn identifier_fields(&self) -> Vec<IdentifierField> {
        vec![match &self.id_field {
            Some(field) => IdentifierField::new("id_field", field),
            None => IdentifierField::new("id_property", &self.id_property),
        }]
    }
}

/// Inputs per request: HubSpot's batch endpoints take at most 100.
const MAX_INPUTS: Bounded = Bounded { min: 1.0, max: 100.0, example: "max_inputs_per_request = 100 (HubSpot's limit)" };

#[cfg(test)]
mod tests {
    use crate::kind::test_settings;

    #[test]
    fn parses_with_its_defaults() {
        let hubspot = test_settings::<super::super::HubSpot>("[destinations.hubspot]\naccess_token = { env = \"SLUICE_TEST_DESTINATIONS_SECRET\" }").unwrap();
        assert_eq!((hubspot.max_inputs_per_request, hubspot.id_property.as_str(), hubspot.portal_time_zone.as_str()), (100, "email", "UTC"));
        assert!(hubspot.multi_status);
        assert_eq!((hubspot.base_url.as_str(), hubspot.object_type.as_str(), hubspot.on_delete), ("https://api.hubapi.com", "contacts", crate::OnDelete::Delete));
        let archive = test_settings::<super::super::HubSpot>("[destinations.hubspot]\naccess_token = { env = \"SLUICE_TEST_DESTINATIONS_SECRET\" }\non_delete = \"archive\"").unwrap();
        assert_eq!(archive.on_delete, crate::OnDelete::Delete, "HubSpot's own word for it");
    }
}

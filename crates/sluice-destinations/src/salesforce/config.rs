//! Salesforce settings: `[destinations.salesforce]`.

use serde::Deserialize;
use sluice_core::config::Secret;

use sluice_core::config::bounds::Bounded;

use crate::settings::{default_timeout_ms, http_url, nonempty, timeout, within, IdentifierField, Invalid, Validate};
use crate::OnDelete;

/// Salesforce REST under `/services/data/<api_version>/`: sObject Collections upsert by external
/// ID, a SOQL `query` for record ids, and sObject Collections delete.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesforceConfig {
    /// The org's My Domain URL, e.g. `https://acme.my.salesforce.com`.
    pub instance_url: String,
    /// OAuth access token, sent as `Authorization: Bearer`. sluice does not refresh it: a 401
    /// stops the destination until a valid token is configured.
    pub access_token: Secret,
    /// REST API version in the path (46.0 or later has sObject Collections upsert).
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// The sObject type (`Contact`, `Lead`, `Account`, a custom `X__c`).
    pub sobject: String,
    /// The external-ID field records are matched on.
    pub external_id_field: String,
    /// Records per request; Salesforce takes at most 200.
    #[serde(default = "default_max_records")]
    pub max_records_per_request: usize,
    /// Per-record error codes that are retried instead of dead-lettered (lock contention is
    /// commonly transient; not confirmed by Salesforce's docs, hence configurable).
    #[serde(default = "default_retryable_error_codes")]
    pub retryable_error_codes: Vec<String>,
    /// Wait after `REQUEST_LIMIT_EXCEEDED` when `Sforce-Limit-Info` shows the rolling 24-hour
    /// allocation spent (otherwise the limit hit is on concurrency and backoff decides).
    #[serde(default = "default_allocation_exhausted_wait_secs")]
    pub allocation_exhausted_wait_secs: u64,
    /// What a Delete does: `delete` (the default) looks the record ids up by external ID (SOQL)
    /// and deletes them with sObject Collections delete; `skip` confirms without a request
    /// (counted); `reject` dead-letters. A `mirror` sync needs `delete`.
    #[serde(default)]
    pub on_delete: OnDelete,
    /// Per-request timeout; a timeout is retryable.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_api_version() -> String {
    "v62.0".into()
}
fn default_max_records() -> usize {
    200
}
fn default_retryable_error_codes() -> Vec<String> {
    vec!["UNABLE_TO_LOCK_ROW".into()]
}
fn default_allocation_exhausted_wait_secs() -> u64 {
    3600
}

impl Validate for SalesforceConfig {
    fn validate(&self) -> Result<(), Invalid> {
        nonempty("instance_url", &self.instance_url, "the org's My Domain URL, e.g. instance_url = \"https://acme.my.salesforce.com\"")?;
        nonempty("sobject", &self.sobject, "sobject = \"Contact\"")?;
        nonempty("external_id_field", &self.external_id_field, "the external-ID field records are matched on, e.g. external_id_field = \"Warehouse_Id__c\"")?;
        within("max_records_per_request", self.max_records_per_request as f64, MAX_RECORDS)?;
        crate::http::bearer(self.access_token.expose(), "access_token")?;
        nonempty("api_version", &self.api_version, "api_version = \"v62.0\"")?;
        within("allocation_exhausted_wait_secs", self.allocation_exhausted_wait_secs as f64, ALLOCATION_WAIT_SECS)?;
        timeout(self.timeout_ms)?;
        http_url("instance_url", &self.instance_url, "https://acme.my.salesforce.com")
    }

    fn identifier_fields(&self) -> Vec<IdentifierField> {
        vec![IdentifierField::new("external_id_field", &self.external_id_field)]
    }
}

/// Records per sObject Collections request: Salesforce takes at most 200.
const MAX_RECORDS: Bounded = Bounded { min: 1.0, max: 200.0, example: "max_records_per_request = 200 (Salesforce's limit)" };
/// The wait for a spent 24-hour allocation: at most the rolling day itself.
const ALLOCATION_WAIT_SECS: Bounded = Bounded { min: 1.0, max: 86_400.0, example: "allocation_exhausted_wait_secs = 3600" };

#[cfg(test)]
mod tests {
    use crate::kind::test_settings;

    #[test]
    fn parses_with_its_defaults() {
        let salesforce = test_settings::<super::super::Salesforce>(
            "[destinations.salesforce]\ninstance_url = \"https://x.my.salesforce.com\"\naccess_token = { env = \"SLUICE_TEST_DESTINATIONS_SECRET\" }\nsobject = \"Contact\"\nexternal_id_field = \"W__c\"",
        )
        .unwrap();
        assert_eq!(salesforce.max_records_per_request, 200);
        assert_eq!(salesforce.retryable_error_codes, ["UNABLE_TO_LOCK_ROW"]);
        assert_eq!((salesforce.api_version.as_str(), salesforce.allocation_exhausted_wait_secs), ("v62.0", 3600));
        assert_eq!(salesforce.on_delete, crate::OnDelete::Delete);
    }
}

//! What every kind's settings (`<kind>/config.rs`) share: the validation step and its error,
//! and the defaults common to all kinds.
//!
//! A kind's settings struct is serde with `deny_unknown_fields` (typos are loud), a doc comment
//! on every field and its defaults next to it; [`Validate`] then refuses what parses but cannot
//! work, naming the key, so the registry can point at its line.

use sluice_core::config::bounds::{self, Bounded};

/// The settings of a kind, checked before anything connects.
pub trait Validate {
    /// `Err` names the key at fault, what is wrong and how to fix it.
    fn validate(&self) -> Result<(), Invalid>;

    /// The mapped fields every record must carry for the kind to address it (HubSpot's
    /// `id_field`, Salesforce's `external_id_field`, ...): the validation refuses a sync to this
    /// destination that maps none of them by that name (nor has it as a primary-key column,
    /// which records carry too), since every record of it would be refused.
    fn identifier_fields(&self) -> Vec<IdentifierField> {
        Vec::new()
    }
}

/// A mapped field a kind reads to address a record, and the setting that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifierField {
    /// The top-level key of the kind's table that names (or defaults) the field.
    pub key: &'static str,
    /// The field's name in the sync's `fields`.
    pub field: String,
}

impl IdentifierField {
    /// The field `field`, named by the setting `key`.
    pub fn new(key: &'static str, field: impl Into<String>) -> IdentifierField {
        IdentifierField { key, field: field.into() }
    }
}

/// A setting that parses but cannot work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The top-level key of the kind's table at fault (empty: the table as a whole).
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

impl Invalid {
    /// An invalid setting.
    pub fn new(key: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Invalid {
        Invalid { key, message: message.into(), fix: fix.into() }
    }
}

/// A text setting that must not be empty.
pub(crate) fn nonempty(key: &'static str, value: &str, fix: &str) -> Result<(), Invalid> {
    if value.trim().is_empty() {
        return Err(Invalid::new(key, "is empty", fix));
    }
    Ok(())
}

/// A number within its bounds (`sluice_core::config::bounds`).
pub(crate) fn within(key: &'static str, value: f64, bound: Bounded) -> Result<(), Invalid> {
    bound.check(value).map_err(|range| Invalid::new(key, format!("{} {range}", bounds::show(value)), format!("e.g. {} (see docs/configuration.md#destination-kinds)", bound.example)))
}

/// A per-request timeout: positive (0 would time every request out) and at most 10 minutes.
pub(crate) fn timeout(value: u64) -> Result<(), Invalid> {
    within("timeout_ms", value as f64, bounds::TIMEOUT_MS)
}

/// An `http://` or `https://` URL with a host: anything else fails every request, which the
/// sink would retry as a transport error forever.
pub(crate) fn http_url(key: &'static str, value: &str, example: &str) -> Result<(), Invalid> {
    let fix = || format!("an http(s) URL, e.g. {key} = \"{example}\"");
    let url = reqwest::Url::parse(value.trim()).map_err(|e| Invalid::new(key, format!("{value:?} is not a URL ({e})"), fix()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(Invalid::new(key, format!("{value:?} is not an http(s) URL with a host"), fix()));
    }
    Ok(())
}

/// Per-request timeout of every kind, unless its table says otherwise.
pub(crate) fn default_timeout_ms() -> u64 {
    10_000
}

/// For `#[serde(default = ...)]` of flags that are on unless turned off.
pub(crate) fn yes() -> bool {
    true
}

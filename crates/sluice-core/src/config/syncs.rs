//! Syncs: one model flowing into one destination, with its mode and field mapping.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// What a sync does at its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Update the record, or create it when missing. Deletes are not propagated.
    #[default]
    Upsert,
    /// Update records that exist; never create one.
    Update,
    /// Create records that do not exist yet; never change one.
    Create,
    /// Like upsert, and deletes propagate (the destination mirrors the model).
    Mirror,
    /// Every change is sent as an event, deletes included.
    Append,
    /// Audience membership: a row in the model (that passes consent) is a member; it is added
    /// when it enters and removed when it leaves (delete, or consent revoked).
    Audience,
}

/// One model flowing into one destination.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    pub model: Spanned<String>,
    pub destination: Spanned<String>,
    #[serde(default)]
    pub mode: SyncMode,
    /// `destination_field = "source_column"`. Only mapped fields ever leave.
    pub fields: Spanned<BTreeMap<String, String>>,
}


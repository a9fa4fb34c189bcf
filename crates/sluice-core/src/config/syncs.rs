//! Syncs: one model flowing into one destination, with its mode, field mapping, consent rule
//! and the suppression lists it honours.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::IdentifierConfig;

/// What a sync does at its destination. Not every destination can honour every mode: each
/// destination kind declares the modes it supports (`sluice-destinations`), and a sync in a mode
/// its destination cannot honour is refused when the config is checked, with the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
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

impl SyncMode {
    /// Every mode, in the order the docs list them.
    pub const ALL: [SyncMode; 6] = [SyncMode::Upsert, SyncMode::Update, SyncMode::Create, SyncMode::Mirror, SyncMode::Append, SyncMode::Audience];

    /// The mode as written in the config (`mode = "upsert"`).
    pub fn name(self) -> &'static str {
        match self {
            SyncMode::Upsert => "upsert",
            SyncMode::Update => "update",
            SyncMode::Create => "create",
            SyncMode::Mirror => "mirror",
            SyncMode::Append => "append",
            SyncMode::Audience => "audience",
        }
    }
}

impl std::fmt::Display for SyncMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One model flowing into one destination.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    pub model: Spanned<String>,
    pub destination: Spanned<String>,
    /// What the sync does at its destination ([`SyncConfig::mode`]); kept with its place in the
    /// file so an unsupported mode is refused at its line. Absent: `upsert`.
    #[serde(default, rename = "mode")]
    pub mode_setting: Option<Spanned<SyncMode>>,
    /// `destination_field = <source>`. Only mapped fields ever leave. A source is a column name
    /// (`email = "email"`) or a table: `{ column = "email", transforms = ["normalize_email",
    /// "sha256"], type = "string" }`, `{ value = 42 }` (a constant) or
    /// `{ template = "{first_name} {last_name}" }`.
    pub fields: Spanned<BTreeMap<String, FieldSource>>,
    /// Consent condition. A row that fails it is treated as *leaving* the destination
    /// (removed, unsubscribed) rather than skipped, so a revocation propagates on the next
    /// change. Absent = every row consents. Decided by the sink's membership stage, with
    /// `suppressed_by`.
    #[serde(default)]
    pub consent: Option<ConsentRule>,
    /// Suppression lists (`[[suppression_lists]]` names) whose members this sync keeps out of
    /// its destination for as long as they are on a list, whatever else changes about them;
    /// they come back (with their current fields) when they leave every list. Needs
    /// `identifier`, and a mode in which a row can leave: `audience`, `mirror` or `upsert`.
    #[serde(default)]
    pub suppressed_by: Vec<Spanned<String>>,
    /// This sync's side of the match against its suppression lists: the column that identifies
    /// a person and how it is normalised (the same transforms as the lists', so equal people
    /// compare equal). Required with `suppressed_by`, refused without it.
    #[serde(default)]
    pub identifier: Option<IdentifierConfig>,
}

impl SyncConfig {
    /// The sync's mode (`upsert` when not written).
    pub fn mode(&self) -> SyncMode {
        self.mode_setting.as_ref().map(|m| *m.get_ref()).unwrap_or_default()
    }

    /// Where the mode is written, or the sync's `destination` when it is not: what an error
    /// about the mode points at.
    pub fn mode_span(&self) -> std::ops::Range<usize> {
        self.mode_setting.as_ref().map_or_else(|| self.destination.span(), |m| m.span())
    }

    /// Every column the sync reads (mapped fields, templates, consent, identifier).
    pub fn columns(&self) -> Vec<String> {
        let mut columns: Vec<String> = self.fields.get_ref().values().flat_map(FieldSource::columns).collect();
        if let Some(consent) = &self.consent {
            columns.push(consent.column.clone());
        }
        if let Some(identifier) = &self.identifier {
            columns.push(identifier.column.get_ref().clone());
        }
        columns
    }

    /// Whether the sync names suppression lists (and so has a membership stage beyond consent).
    pub fn is_suppressed(&self) -> bool {
        !self.suppressed_by.is_empty()
    }
}

/// Where a destination field's value comes from. (Untagged: serde tries the forms in order, so
/// each table form is its own struct with `deny_unknown_fields` to keep typos loud.)
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged, expecting = "a column name, or a table with `column` (+ `transforms`, `type`), `value` or `template`")]
pub enum FieldSource {
    /// A column, as is.
    Column(String),
    /// A column, transformed and coerced.
    Transformed(TransformedColumn),
    /// A constant.
    Value(ConstantValue),
    /// Text with `{column}` placeholders.
    Template(TemplateText),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformedColumn {
    pub column: String,
    #[serde(default)]
    pub transforms: Vec<Transform>,
    #[serde(rename = "type", default)]
    pub coerce: Option<Coerce>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConstantValue {
    pub value: toml::Value,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateText {
    pub template: String,
}

impl FieldSource {
    /// The columns this source reads.
    pub fn columns(&self) -> Vec<String> {
        match self {
            FieldSource::Column(column) | FieldSource::Transformed(TransformedColumn { column, .. }) => vec![column.clone()],
            FieldSource::Value(_) => Vec::new(),
            FieldSource::Template(TemplateText { template }) => template_columns(template),
        }
    }
}

/// The `{column}` placeholders of a template, in order.
pub fn template_columns(template: &str) -> Vec<String> {
    let mut columns = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let Some(end) = rest[start..].find('}') else { break };
        columns.push(rest[start + 1..start + end].to_string());
        rest = &rest[start + end + 1..];
    }
    columns
}

/// Value transforms, applied in order to text (non-text values are first rendered as text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    Trim,
    Lowercase,
    Uppercase,
    /// Keep only the digits (phone numbers).
    DigitsOnly,
    /// Trim and lowercase: the normal form ad platforms hash emails in.
    NormalizeEmail,
    /// Digits only, without leading zeros: E.164 without `+`, the form ad platforms hash
    /// phone numbers in (the number must already carry its country code).
    NormalizePhone,
    /// Lowercase hex SHA-256 of the UTF-8 text. NULL stays NULL.
    Sha256,
}

impl Transform {
    /// The transform as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            Transform::Trim => "trim",
            Transform::Lowercase => "lowercase",
            Transform::Uppercase => "uppercase",
            Transform::DigitsOnly => "digits_only",
            Transform::NormalizeEmail => "normalize_email",
            Transform::NormalizePhone => "normalize_phone",
            Transform::Sha256 => "sha256",
        }
    }
}

/// Type coercion of a mapped value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Coerce {
    String,
    Integer,
    Float,
    Boolean,
}

/// A row consents when `column` equals `equals` (default `true`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentRule {
    pub column: String,
    #[serde(default = "consent_default")]
    pub equals: toml::Value,
}

fn consent_default() -> toml::Value {
    toml::Value::Boolean(true)
}


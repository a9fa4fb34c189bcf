//! `docs/configuration.md` and each kind's page `docs/destinations/<kind>.md` name every key the
//! configuration accepts.
//!
//! The keys come from the code, not from a list kept here: serde hands a derived struct's
//! deserializer the names of its fields (`deserialize_struct`'s `fields`), which [`fields_of`]
//! captures; enums and secret references give theirs in the "expected one of" of an unknown
//! key; the destinations' common keys are `COMMON_KEYS`; the kinds come from the registry, and a
//! kind's keys are documented in the "Keys" table of its own page (anchor `keys`), so a new kind
//! brings its reference with it and edits no shared page. A field added to any of these structs
//! without a row in its section of the reference fails
//! [`the_reference_names_every_key_the_structs_accept`]. A new *struct* needs a line in
//! [`accepted`] (its parent's new key fails the test until documented, which is the reminder).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use sluice_core::config::{
    Config, ConsentRule, ConstantValue, DeadLetterBreakerConfig, Detection, Expire, Gates, IdentifierConfig, KafkaConfig, ModelConfig, RateLimitConfig, RetryConfig,
    SecretRef, SuppressionListConfig, SyncConfig, TemplateText, TransformedColumn, WarehouseConfig, WritebackConfig, COMMON_KEYS,
};

/// The field names serde knows for `T`, a struct deriving `Deserialize`.
pub(crate) fn fields_of<T: DeserializeOwned>() -> Vec<&'static str> {
    match T::deserialize(Probe) {
        Err(Found(fields)) if !fields.is_empty() => fields,
        _ => panic!("{} is not a struct deriving Deserialize", std::any::type_name::<T>()),
    }
}

/// A deserializer that only records the field names it is asked for.
struct Probe;

#[derive(Debug)]
struct Found(Vec<&'static str>);

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fields {:?}", self.0)
    }
}

impl std::error::Error for Found {}

impl de::Error for Found {
    fn custom<M: fmt::Display>(_: M) -> Found {
        Found(Vec::new())
    }
}

impl<'de> Deserializer<'de> for Probe {
    type Error = Found;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Found> {
        Err(Found(Vec::new()))
    }

    fn deserialize_struct<V: Visitor<'de>>(self, _: &'static str, fields: &'static [&'static str], _: V) -> Result<V::Value, Found> {
        Err(Found(fields.to_vec()))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit unit_struct
        newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// The backticked names of a serde "unknown field/variant ..., expected ..." message, without
/// the probe's own.
fn expected_in(message: &str) -> Vec<String> {
    let expected = message.split("expected").nth(1).unwrap_or_default();
    expected.split('`').skip(1).step_by(2).filter(|name| *name != "__probe").map(str::to_string).collect()
}

/// The keys of each section of the reference (by its anchor), from the code.
fn accepted() -> BTreeMap<String, Vec<String>> {
    let owned = |fields: Vec<&'static str>| fields.into_iter().map(str::to_string).collect::<Vec<_>>();
    let mut sections: BTreeMap<String, Vec<String>> = BTreeMap::new();
    sections.insert("top-level".into(), owned(fields_of::<Config>()));
    sections.insert("kafka".into(), owned(fields_of::<KafkaConfig>()));
    sections.insert("warehouse".into(), owned(fields_of::<WarehouseConfig>()));
    sections.insert("models".into(), owned(fields_of::<ModelConfig>()));
    sections.insert("gates".into(), owned(fields_of::<Gates>()));
    sections.insert("expire".into(), owned(fields_of::<Expire>()));
    sections.insert("destinations".into(), COMMON_KEYS.iter().map(|k| k.to_string()).collect());
    sections.insert("retries".into(), owned(fields_of::<RetryConfig>()));
    sections.insert("rate-limits".into(), owned(fields_of::<RateLimitConfig>()));
    sections.insert("dead-letter-breaker".into(), owned(fields_of::<DeadLetterBreakerConfig>()));
    sections.insert("syncs".into(), owned(fields_of::<SyncConfig>()));
    sections.insert("writeback".into(), owned(fields_of::<WritebackConfig>()));
    sections.insert("consent".into(), owned(fields_of::<ConsentRule>()));
    sections.insert("suppression-lists".into(), owned(fields_of::<SuppressionListConfig>()));
    sections.insert("identifier".into(), owned(fields_of::<IdentifierConfig>()));
    let mut sources = owned(fields_of::<TransformedColumn>());
    sources.extend(owned(fields_of::<ConstantValue>()));
    sources.extend(owned(fields_of::<TemplateText>()));
    sections.insert("field-sources".into(), sources);

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Holder {
        r: SecretRef,
    }
    let secret = toml::from_str::<Holder>("r = { __probe = 1 }").unwrap_err();
    sections.insert("secrets".into(), expected_in(secret.message()));

    // The tag, and every mode's keys (each mode's unknown-key error lists them).
    let modes = expected_in(toml::from_str::<Detection>("mode = \"__probe\"").unwrap_err().message());
    assert!(modes.len() >= 3, "detection modes: {modes:?}");
    let mut detection = vec!["mode".to_string()];
    for mode in modes {
        let error = toml::from_str::<Detection>(&format!("mode = \"{mode}\"\n__probe = 1")).unwrap_err();
        detection.extend(expected_in(error.message()));
    }
    sections.insert("detection".into(), detection);

    for (kind, fields) in crate::kind_fields() {
        sections.insert(kind.to_string(), owned(fields));
    }
    sections
}

/// The keys of each section of a reference text: the first backticked word of each table row,
/// under the nearest `<a id="...">` anchor above it.
fn documented(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut sections: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(rest) = line.trim().strip_prefix("<a id=\"") {
            current = rest.split('"').next().unwrap_or_default().to_string();
        } else if let Some(key) = row_key(line) {
            sections.entry(current.clone()).or_default().push(key.to_string());
        }
    }
    sections
}

/// The first backticked word of a table row.
fn row_key(line: &str) -> Option<&str> {
    line.strip_prefix("| `").map(|row| row.split('`').next().unwrap_or_default())
}

/// The keys a kind's page documents: the rows of the first table after its `<a id="keys">`
/// anchor (the page's other tables, such as its sync modes, are not keys).
fn page_keys(page: &str) -> Vec<String> {
    let after = page.lines().skip_while(|line| line.trim() != "<a id=\"keys\"></a>");
    let table = after.skip_while(|line| !line.starts_with('|')).take_while(|line| line.starts_with('|'));
    table.filter_map(row_key).map(str::to_string).collect()
}

/// The documentation: `docs/configuration.md`, and each kind's page by kind name.
#[derive(Clone)]
struct Reference {
    configuration: String,
    pages: BTreeMap<String, String>,
}

impl Reference {
    fn read() -> Reference {
        let read = |path: String| std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs");
        let pages = crate::KIND_NAMES.iter().map(|kind| (kind.to_string(), read(format!("{docs}/destinations/{kind}.md")))).collect();
        Reference { configuration: read(format!("{docs}/configuration.md")), pages }
    }

    /// `section: key` for every accepted key the reference does not list in its section (a
    /// kind's section is its page's "Keys" table).
    fn missing(&self) -> Vec<String> {
        let mut documented = documented(&self.configuration);
        for (kind, page) in &self.pages {
            documented.insert(kind.clone(), page_keys(page));
        }
        let mut missing = Vec::new();
        for (section, keys) in accepted() {
            for key in keys {
                if !documented.get(&section).is_some_and(|listed| listed.contains(&key)) {
                    missing.push(format!("{section}: {key}"));
                }
            }
        }
        missing
    }

    /// The same reference without the first line of `file` (`configuration`, or a kind's page)
    /// that starts with `row`.
    fn without_row(&self, file: &str, row: &str) -> Reference {
        let mut reference = self.clone();
        let text = if file == "configuration" { &mut reference.configuration } else { reference.pages.get_mut(file).unwrap_or_else(|| panic!("{file}")) };
        let line = text.lines().find(|l| l.starts_with(row)).unwrap_or_else(|| panic!("{file}: {row}")).to_string();
        *text = text.replace(&format!("{line}\n"), "");
        reference
    }
}

#[test]
fn the_reference_names_every_key_the_structs_accept() {
    let missing = Reference::read().missing();
    assert!(missing.is_empty(), "docs/configuration.md (or docs/destinations/<kind>.md, table \"Keys\") lacks a row for (section: key): {missing:#?}");
}

/// The check is not vacuous: it finds keys in every kind of section, and a row removed from the
/// reference or from a kind's page is reported.
#[test]
fn the_reference_check_reports_an_undocumented_key() {
    let accepted = accepted();
    for section in ["top-level", "kafka", "models", "detection", "destinations", "rate-limits", "secrets", "field-sources", "consent", "suppression-lists", "identifier", "webhook", "salesforce"] {
        assert!(accepted.get(section).is_some_and(|keys| !keys.is_empty()), "{section}: {accepted:?}");
    }
    assert!(accepted["detection"].contains(&"reconcile_interval_ms".to_string()), "{:?}", accepted["detection"]);
    assert!(accepted["field-sources"].contains(&"type".to_string()), "renamed fields by their file name");
    let reference = Reference::read();
    for (file, row, expected) in [
        ("configuration", "| `requests_per_second` |", "rate-limits: requests_per_second"),
        ("salesforce", "| `instance_url` |", "salesforce: instance_url"),
        ("meta", "| `api_version` | string | `\"v21.0\"`", "meta: api_version"),
        ("configuration", "| `lookback_ms` |", "detection: lookback_ms"),
        ("redis", "| `mode` |", "redis: mode"),
    ] {
        assert_eq!(reference.without_row(file, row).missing(), [expected], "{file}: {row}");
    }
    // Every kind's page has its keys table, and only that table counts as keys.
    for (kind, page) in &reference.pages {
        let keys = page_keys(page);
        assert!(!keys.is_empty(), "{kind}: no table after <a id=\"keys\">");
        assert!(!keys.iter().any(|key| key == "upsert"), "{kind}: the sync-mode table is not keys: {keys:?}");
    }
}

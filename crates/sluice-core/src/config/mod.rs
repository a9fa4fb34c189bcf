//! The declarative configuration: one TOML file for warehouse, Kafka, models, destinations and
//! syncs.
//!
//! Guarantees:
//! - Everything is validated before anything connects: unknown keys, wrong types, dangling
//!   references, duplicate names, missing secrets. Every error names the file, the line and the
//!   fix ([`ConfigError`]).
//! - Secrets are never written inline: a secret field takes `{ env = "VAR" }` or
//!   `{ file = "/path" }` and is resolved at load time, so a missing variable fails up front and
//!   the file itself can be committed.
//! - Precedence: environment over file, for the few settings an operator overrides per
//!   deployment (`SLUICE_KAFKA_BOOTSTRAP_SERVERS`, `SLUICE_KAFKA_TOPIC_PREFIX`).
//!
//! Every destination kind is a sub-table named after the kind (`[destinations.webhook]`). This
//! crate knows no kinds: it keeps that table as written ([`KindTable`]) and the
//! `sluice-destinations` registry parses and validates it, with errors placed by
//! [`Config::error_at`] and [`Config::kind_error`] from the source text kept in the [`Config`]. So
//! [`Config::load`] checks everything but the kinds' tables; `sluice check` checks those too.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::{self, Deserializer};
use serde::Deserialize;

/// A configuration error, pointing at the offending place and saying how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line, when the error has a place in the file.
    pub line: Option<usize>,
    pub message: String,
    pub fix: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message)?,
            None => write!(f, "{}: {}", self.file.display(), self.message)?,
        }
        if !self.fix.is_empty() {
            write!(f, "\n  fix: {}", self.fix)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub warehouse: WarehouseConfig,
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    #[serde(default)]
    pub destinations: Vec<DestinationConfig>,
    #[serde(default)]
    pub syncs: Vec<SyncConfig>,
    /// Models whose rows keep people out of the syncs that name them ([`suppression`]).
    #[serde(default)]
    pub suppression_lists: Vec<SuppressionListConfig>,
    /// The file and its text, so an error found after parsing still names its line.
    #[serde(skip)]
    source: Source,
}

/// Where a config came from: its path and its text (spans index into it).
#[derive(Clone, Default)]
struct Source {
    path: PathBuf,
    text: Arc<str>,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Source({}, {} bytes)", self.path.display(), self.text.len())
    }
}

/// How to reach Kafka and how to name and create topics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list. Overridden by `SLUICE_KAFKA_BOOTSTRAP_SERVERS`.
    pub bootstrap_servers: String,
    /// First segment of every topic and group name (`<prefix>.changes.<model>`). Lets several
    /// sluice deployments, or test runs, share a cluster. Overridden by
    /// `SLUICE_KAFKA_TOPIC_PREFIX`.
    #[serde(default = "defaults::topic_prefix")]
    pub topic_prefix: String,
    /// Partitions of topics sluice creates. More partitions = more sink parallelism.
    #[serde(default = "defaults::partitions")]
    pub partitions: i32,
    /// Replication factor of topics sluice creates (1 for a single local broker, 3 in production).
    #[serde(default = "defaults::replication_factor")]
    pub replication_factor: i32,
    /// Extra librdkafka properties applied to every client (e.g. security settings).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// The warehouse models are read from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarehouseConfig {
    /// Name recorded in every event's `source.warehouse`.
    #[serde(default = "defaults::warehouse_name")]
    pub name: String,
    pub kind: WarehouseKind,
    /// PostgreSQL: the connection string, by reference (it usually holds a password).
    #[serde(default)]
    pub url: Option<Secret>,
    /// DuckDB: the database file (relative to the working directory, like `schema_contract`).
    /// It must exist: a missing file is an error, never a new empty warehouse.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

/// The warehouses sluice reads. What the config knows of a kind is in its `impl` below (its
/// name, the setting that locates it, whether it can notify), so a new warehouse is a variant
/// and one arm in each of those methods and in [`WarehouseConfig::location`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WarehouseKind {
    Postgres,
    /// Embedded and file-backed; needs a build with the `duckdb` cargo feature.
    Duckdb,
}

/// The `[warehouse]` setting that locates a warehouse; a kind takes exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarehouseSetting {
    /// `url`: a connection string, by reference (it usually holds a password).
    Url,
    /// `path`: a database file.
    Path,
}

impl WarehouseKind {
    /// The kind as written in the config (`kind = "postgres"`).
    pub fn name(self) -> &'static str {
        match self {
            WarehouseKind::Postgres => "postgres",
            WarehouseKind::Duckdb => "duckdb",
        }
    }

    /// The setting that locates it, and an example of it for error messages.
    pub fn setting(self) -> (WarehouseSetting, &'static str) {
        match self {
            WarehouseKind::Postgres => (WarehouseSetting::Url, "url = { env = \"SLUICE_WAREHOUSE_URL\" } (a postgres:// connection string)"),
            WarehouseKind::Duckdb => (WarehouseSetting::Path, "path = \"warehouse.duckdb\" (the database file)"),
        }
    }

    /// Whether it can wake models when their data changes (`notify_channel`): the warehouse
    /// crate's `ChangeNotifications` gives a stream exactly for these kinds.
    pub fn can_notify(self) -> bool {
        match self {
            WarehouseKind::Postgres => true,
            WarehouseKind::Duckdb => false,
        }
    }
}

impl WarehouseSetting {
    /// The setting's key in `[warehouse]`.
    pub fn key(self) -> &'static str {
        match self {
            WarehouseSetting::Url => "url",
            WarehouseSetting::Path => "path",
        }
    }
}

/// Where the warehouse is, by kind (validated: each kind has its own setting and only that).
#[derive(Debug, Clone, Copy)]
pub enum WarehouseLocation<'a> {
    Postgres { url: &'a str },
    Duckdb { path: &'a Path },
}

impl WarehouseConfig {
    /// The warehouse's address for its kind.
    pub fn location(&self) -> WarehouseLocation<'_> {
        match self.kind {
            WarehouseKind::Postgres => WarehouseLocation::Postgres { url: self.url.as_ref().expect("validated: postgres has a url").expose() },
            WarehouseKind::Duckdb => WarehouseLocation::Duckdb { path: self.path.as_deref().expect("validated: duckdb has a path") },
        }
    }
}

/// A secret, given by reference and resolved at load time. Its value is never printed.
#[derive(Clone)]
pub struct Secret {
    reference: String,
    value: String,
}

impl Secret {
    /// The secret's value; keep it out of logs.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// A secret with a literal value, for tests and generated configs.
    pub fn literal(value: impl Into<String>) -> Secret {
        Secret { reference: "literal".into(), value: value.into() }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({}, redacted)", self.reference)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Reference {
            env: Option<String>,
            file: Option<String>,
        }
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a secret reference: { env = \"VAR\" } or { file = \"/path\" }")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Secret, E> {
                Err(E::custom(
                    "secrets are never written inline; reference one: { env = \"VAR\" } or { file = \"/path\" }",
                ))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Secret, A::Error> {
                let reference = Reference::deserialize(de::value::MapAccessDeserializer::new(map))?;
                match (reference.env, reference.file) {
                    (Some(var), None) => match std::env::var(&var) {
                        Ok(value) => Ok(Secret { reference: format!("env:{var}"), value }),
                        Err(_) => Err(de::Error::custom(format!(
                            "environment variable {var} is not set; export it before starting"
                        ))),
                    },
                    (None, Some(path)) => match std::fs::read_to_string(&path) {
                        Ok(value) => Ok(Secret {
                            reference: format!("file:{path}"),
                            value: value.trim_end_matches(['\n', '\r']).to_string(),
                        }),
                        Err(e) => Err(de::Error::custom(format!("cannot read secret file {path}: {e}"))),
                    },
                    _ => Err(de::Error::custom("a secret takes exactly one of `env` or `file`")),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

pub mod delivery;
pub mod destinations;
pub mod models;
pub mod suppression;
pub mod syncs;
pub use delivery::*;
pub use destinations::*;
pub use models::*;
pub use suppression::*;
pub use syncs::*;

pub(crate) mod defaults {
    pub fn topic_prefix() -> String {
        "sluice".into()
    }
    pub fn partitions() -> i32 {
        3
    }
    pub fn replication_factor() -> i32 {
        1
    }
    pub fn warehouse_name() -> String {
        "warehouse".into()
    }
    pub fn poll_interval_ms() -> u64 {
        1_000
    }
    pub fn batch_rows() -> usize {
        10_000
    }
    pub fn batch_max_records() -> usize {
        500
    }
    pub fn batch_max_bytes() -> usize {
        4 * 1024 * 1024
    }
    pub fn max_concurrency() -> usize {
        8
    }
    pub fn max_buffered_records() -> usize {
        10_000
    }
    pub fn batch_linger_ms() -> u64 {
        100
    }
}

impl Config {
    /// Read, parse, apply environment overrides and validate a config file.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            message: format!("cannot read the config file: {e}"),
            fix: "pass an existing file with --config or SLUICE_CONFIG".into(),
        })?;
        Config::parse(path, &text)
    }

    /// Parse and validate config text; `path` is only used in error messages.
    pub fn parse(path: impl AsRef<Path>, text: &str) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: e.span().map(|span| line_of(text, span.start)),
            message: e.message().to_string(),
            fix: fix_for_parse_error(e.message()),
        })?;
        if let Ok(servers) = std::env::var("SLUICE_KAFKA_BOOTSTRAP_SERVERS") {
            config.kafka.bootstrap_servers = servers;
        }
        if let Ok(prefix) = std::env::var("SLUICE_KAFKA_TOPIC_PREFIX") {
            config.kafka.topic_prefix = prefix;
        }
        config.source = Source { path: path.to_path_buf(), text: text.into() };
        config.validate()?;
        Ok(config)
    }

    /// An error at a place in the file (a span from a [`toml::Spanned`] value or a
    /// [`KindTable`]), naming its line and the fix.
    pub fn error_at(&self, span: Range<usize>, message: impl Into<String>, fix: impl Into<String>) -> ConfigError {
        ConfigError { file: self.source.path.clone(), line: Some(line_of(&self.source.text, span.start)), message: message.into(), fix: fix.into() }
    }

    /// An error about a destination's kind table: `destination "<name>": <kind>.<key>: <message>`
    /// at the key's line (the table's when the key is not written, or `key` is empty).
    pub fn kind_error(&self, destination: &DestinationConfig, key: &str, message: &str, fix: &str) -> ConfigError {
        let kind = &destination.kind;
        let span = kind.key_span(key).unwrap_or_else(|| kind.span());
        let place = if key.is_empty() { kind.name().to_string() } else { format!("{}.{key}", kind.name()) };
        self.error_at(span, format!("destination {:?}: {place}: {message}", destination.name.get_ref()), fix)
    }

    /// A destination's kind table deserialized into `T` (the kind's settings), its secrets
    /// resolved; an error names the destination, the kind, the line of the key at fault and the
    /// fix.
    pub fn kind_settings<T: serde::de::DeserializeOwned>(&self, destination: &DestinationConfig) -> Result<T, ConfigError> {
        let kind = &destination.kind;
        kind.deserialize().map_err(|error| {
            self.error_at(
                error.span.unwrap_or_else(|| kind.span()),
                format!("destination {:?}: {}: {}", destination.name.get_ref(), kind.name(), error.message),
                fix_for_parse_error(&error.message),
            )
        })
    }

    /// The model of that name.
    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name.get_ref() == name)
    }

    /// The destination of that name.
    pub fn destination(&self, name: &str) -> Option<&DestinationConfig> {
        self.destinations.iter().find(|d| d.name.get_ref() == name)
    }

    /// The syncs delivering into one destination.
    pub fn syncs_to<'a>(&'a self, destination: &'a str) -> impl Iterator<Item = &'a SyncConfig> + 'a {
        self.syncs.iter().filter(move |s| s.destination.get_ref() == destination)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let err = |span: Range<usize>, message: String, fix: &str| self.error_at(span, message, fix);
        let whole = |message: String, fix: &str| ConfigError {
            file: self.source.path.clone(),
            line: None,
            message,
            fix: fix.to_string(),
        };
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return Err(whole("kafka.bootstrap_servers is empty".into(), "set it, e.g. \"127.0.0.1:9092\""));
        }
        if !is_identifier(&self.kafka.topic_prefix) {
            return Err(whole(
                format!("kafka.topic_prefix {:?} is not a valid topic segment", self.kafka.topic_prefix),
                "use letters, digits, '_' and '-' only",
            ));
        }
        let kind = self.warehouse.kind;
        let (setting, example) = kind.setting();
        let given = [(WarehouseSetting::Url, self.warehouse.url.is_some()), (WarehouseSetting::Path, self.warehouse.path.is_some())];
        if given.iter().any(|&(key, is_set)| is_set != (key == setting)) {
            let others: Vec<String> = given.iter().filter(|(key, _)| *key != setting).map(|(key, _)| format!("`{}`", key.key())).collect();
            return Err(whole(format!("[warehouse] kind = \"{}\" needs `{}` and no {}", kind.name(), setting.key(), others.join(" or ")), example));
        }
        let mut names = HashSet::new();
        for model in &self.models {
            let name = model.name.get_ref();
            if !is_identifier(name) {
                return Err(err(model.name.span(), format!("model name {name:?} cannot name a topic"), "use letters, digits, '_' and '-' only"));
            }
            if !names.insert(name.clone()) {
                return Err(err(model.name.span(), format!("model {name:?} is defined twice"), "give each model a unique name"));
            }
            if model.table.is_some() == model.query.is_some() {
                return Err(err(model.name.span(), format!("model {name:?} needs exactly one of `table` and `query`"), "set `table = \"schema.table\"` or `query = \"select ...\"`"));
            }
            if model.primary_key.is_empty() {
                return Err(err(model.name.span(), format!("model {name:?} has no primary key"), "list its key columns: primary_key = [\"id\"]"));
            }
            for key in &model.primary_key {
                if !model.columns.contains(key) {
                    return Err(err(model.name.span(), format!("model {name:?}: primary-key column {key:?} is not in `columns`"), "add it to `columns`"));
                }
            }
            let detection_columns: Vec<&String> = match &model.detection {
                Detection::Cursor { cursor_column, created_column, deleted_column, .. } => {
                    std::iter::once(cursor_column).chain(created_column.iter()).chain(deleted_column.iter()).collect()
                }
                Detection::Diff {} | Detection::WarehouseDiff {} => Vec::new(),
            };
            for column in detection_columns {
                if !model.columns.contains(column) {
                    return Err(err(model.name.span(), format!("model {name:?}: detection column {column:?} is not in `columns`"), "add it to `columns`"));
                }
            }
            if model.notify_channel.is_some() && !self.warehouse.kind.can_notify() {
                return Err(err(
                    model.name.span(),
                    format!("model {name:?}: notify_channel needs a warehouse that can notify (PostgreSQL's LISTEN/NOTIFY); kind = \"{}\" cannot", self.warehouse.kind.name()),
                    "remove it and use poll_interval_ms, cron or POST /run/<model>",
                ));
            }
            if let Detection::Cursor { cursor_column, deleted_column, reconcile_interval_ms, .. } = &model.detection {
                if let Some(deleted) = deleted_column {
                    if model.primary_key.contains(deleted) || deleted == cursor_column {
                        return Err(err(model.name.span(), format!("model {name:?}: deleted_column {deleted:?} is a primary-key column or the cursor column, so it cannot mark a row deleted"), "name the column that marks a deleted row, e.g. deleted_column = \"deleted_at\" (non-NULL = deleted) or \"is_deleted\" (true = deleted)"));
                    }
                }
                if *reconcile_interval_ms == Some(0) {
                    return Err(err(model.name.span(), format!("model {name:?}: reconcile_interval_ms must be positive"), "use e.g. reconcile_interval_ms = 3600000 (hourly), or remove it to never reconcile hard deletes"));
                }
            }
            if model.batch_rows == 0 || model.poll_interval_ms == 0 {
                return Err(err(model.name.span(), format!("model {name:?}: batch_rows and poll_interval_ms must be positive"), "use e.g. batch_rows = 10000, poll_interval_ms = 1000"));
            }
        }
        let mut names = HashSet::new();
        for destination in &self.destinations {
            let name = destination.name.get_ref();
            if !is_identifier(name) {
                return Err(err(destination.name.span(), format!("destination name {name:?} cannot name a topic"), "use letters, digits, '_' and '-' only"));
            }
            if !names.insert(name.clone()) {
                return Err(err(destination.name.span(), format!("destination {name:?} is defined twice"), "give each destination a unique name"));
            }
            if destination.batch_max_records == 0 || destination.retry.max_attempts == 0 || destination.max_concurrency == 0 || destination.batch_max_bytes == 0 {
                return Err(err(destination.name.span(), format!("destination {name:?}: batch_max_records, batch_max_bytes, max_concurrency and retry.max_attempts must be positive"), "use e.g. batch_max_records = 500, max_concurrency = 8"));
            }
            if destination.max_buffered_records < destination.batch_max_records {
                return Err(err(destination.name.span(), format!("destination {name:?}: max_buffered_records is below batch_max_records, so no full batch could form"), "raise max_buffered_records (default 10000)"));
            }
            let limits = &destination.rate_limit;
            if limits.requests_per_second.is_some_and(|r| r.is_nan() || r <= 0.0) || limits.records_per_second.is_some_and(|r| r.is_nan() || r < 1.0) {
                return Err(err(destination.name.span(), format!("destination {name:?}: rate limits must be positive (records_per_second at least 1)"), "e.g. rate_limit = { requests_per_second = 10 }"));
            }
        }
        for sync in &self.syncs {
            let Some(model) = self.model(sync.model.get_ref()) else {
                return Err(err(sync.model.span(), format!("sync names unknown model {:?}", sync.model.get_ref()), "define it under [[models]] or fix the name"));
            };
            if self.destination(sync.destination.get_ref()).is_none() {
                return Err(err(sync.destination.span(), format!("sync names unknown destination {:?}", sync.destination.get_ref()), "define it under [[destinations]] or fix the name"));
            }
            if sync.fields.get_ref().is_empty() {
                return Err(err(sync.fields.span(), "sync maps no fields, so nothing would leave".into(), "map at least one: fields = { email = \"email\" }"));
            }
            for (field, source) in sync.fields.get_ref() {
                for column in source.columns() {
                    if !model.columns.contains(&column) {
                        return Err(err(sync.fields.span(), format!("field {field:?} maps column {column:?}, which model {:?} does not have", model.name.get_ref()), "map one of the model's `columns`"));
                    }
                }
            }
            if let Some(consent) = &sync.consent {
                if !model.columns.contains(&consent.column) {
                    return Err(err(sync.model.span(), format!("consent column {:?} is not a column of model {:?}", consent.column, model.name.get_ref()), "add it to the model's `columns`"));
                }
            }
        }
        self.validate_suppression()
    }
}

/// Letters, digits, `_` and `-`: safe inside topic, group and transactional-id names.
fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// 1-based line number of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn fix_for_parse_error(message: &str) -> String {
    if message.contains("unknown field") {
        "remove the key or correct its spelling (the message lists the expected keys)".into()
    } else if message.contains("missing field") {
        "add the missing key".into()
    } else if message.contains("environment variable") {
        "export the variable in the service's environment".into()
    } else {
        "see docs/configuration.md for the expected shape".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[kafka]
bootstrap_servers = "127.0.0.1:9092"

[warehouse]
kind = "postgres"
url = { env = "SLUICE_TEST_WAREHOUSE_URL" }

[[models]]
name = "customers"
table = "public.customers"
primary_key = ["id"]
columns = ["id", "email", "updated_at"]
detection = { mode = "cursor", cursor_column = "updated_at" }

[[destinations]]
name = "crm"
[destinations.webhook]
url = "http://127.0.0.1:1/hook"

[[syncs]]
model = "customers"
destination = "crm"
fields = { email = "email" }
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        std::env::set_var("SLUICE_TEST_WAREHOUSE_URL", "postgres://u:p@h/db");
        Config::parse("sluice.toml", text)
    }

    #[test]
    fn a_valid_config_loads() {
        let config = parse(GOOD).expect("valid");
        assert_eq!(config.kafka.topic_prefix, "sluice");
        assert_eq!(config.warehouse.url.as_ref().unwrap().expose(), "postgres://u:p@h/db");
        assert_eq!(config.syncs_to("crm").count(), 1);
        assert!(!format!("{:?}", config.warehouse.url).contains("u:p"), "secrets never print");
    }

    #[test]
    fn unknown_key_names_line_and_fix() {
        let text = GOOD.replace("primary_key = [\"id\"]", "primary_key = [\"id\"]\nprimary_keys = 1");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line, Some(13), "{e}");
        assert!(e.message.contains("unknown field `primary_keys`"), "{e}");
        assert!(e.to_string().starts_with("sluice.toml:13: "), "{e}");
        assert!(e.fix.contains("spelling"), "{e}");
    }

    #[test]
    fn inline_secret_is_refused() {
        let text = GOOD.replace("{ env = \"SLUICE_TEST_WAREHOUSE_URL\" }", "\"postgres://u:p@h/db\"");
        let e = parse(&text).unwrap_err();
        assert!(e.message.contains("never written inline"), "{e}");
        assert_eq!(e.line, Some(7), "{e}");
    }

    #[test]
    fn missing_secret_variable_is_named() {
        let text = GOOD.replace("SLUICE_TEST_WAREHOUSE_URL", "SLUICE_TEST_UNSET_VARIABLE");
        let e = parse(&text).unwrap_err();
        assert!(e.message.contains("SLUICE_TEST_UNSET_VARIABLE is not set"), "{e}");
    }

    #[test]
    fn dangling_sync_reference_names_line() {
        let text = GOOD.replace("model = \"customers\"", "model = \"customer\"");
        let e = parse(&text).unwrap_err();
        assert!(e.message.contains("unknown model \"customer\""), "{e}");
        assert_eq!(e.line, Some(22), "{e}");
    }

    #[test]
    fn unmapped_column_is_refused() {
        let text = GOOD.replace("fields = { email = \"email\" }", "fields = { email = \"mail\" }");
        let e = parse(&text).unwrap_err();
        assert!(e.message.contains("column \"mail\""), "{e}");
    }

    #[test]
    fn field_sources_parse_and_typos_are_loud() {
        let text = GOOD.replace(
            "fields = { email = \"email\" }",
            "fields = { email = { column = \"email\", transforms = [\"normalize_email\", \"sha256\"] }, kind = { value = \"customer\" }, label = { template = \"{id}: {email}\" } }",
        );
        let config = parse(&text).expect("valid");
        let fields = config.syncs[0].fields.get_ref();
        assert_eq!(fields["label"].columns(), ["id", "email"]);
        let typo = GOOD.replace("fields = { email = \"email\" }", "fields = { email = { column = \"email\", transform = [\"sha256\"] } }");
        let e = parse(&typo).unwrap_err();
        assert!(e.message.contains("a column name, or a table"), "{e}");
    }

    #[test]
    fn duckdb_warehouse_takes_a_path_and_refuses_postgres_only_settings() {
        let duck = GOOD.replace("kind = \"postgres\"", "kind = \"duckdb\"").replace("url = { env = \"SLUICE_TEST_WAREHOUSE_URL\" }", "path = \"demo/warehouse.duckdb\"");
        let config = parse(&duck).expect("a duckdb warehouse with a path loads");
        assert!(matches!(config.warehouse.location(), WarehouseLocation::Duckdb { path } if path == Path::new("demo/warehouse.duckdb")));

        let with_url = GOOD.replace("kind = \"postgres\"", "kind = \"duckdb\"");
        let e = parse(&with_url).unwrap_err();
        assert!(e.message.contains("kind = \"duckdb\" needs `path` and no `url`"), "{e}");

        let pg_with_path = GOOD.replace("url = { env = \"SLUICE_TEST_WAREHOUSE_URL\" }", "path = \"x.duckdb\"");
        let e = parse(&pg_with_path).unwrap_err();
        assert!(e.message.contains("kind = \"postgres\" needs `url`"), "{e}");

        let notify = duck.replace("primary_key = [\"id\"]", "primary_key = [\"id\"]\nnotify_channel = \"members_changed\"");
        let e = parse(&notify).unwrap_err();
        assert!(e.message.contains("notify_channel needs a warehouse that can notify (PostgreSQL's LISTEN/NOTIFY); kind = \"duckdb\" cannot"), "{e}");
        assert_eq!(e.fix, "remove it and use poll_interval_ms, cron or POST /run/<model>");
        assert!(e.line.is_some(), "points at the model");
    }

    #[test]
    fn soft_delete_and_reconciliation_settings_are_validated() {
        let cursor = "detection = { mode = \"cursor\", cursor_column = \"updated_at\" }";
        let with = |extra: &str| {
            GOOD.replace(cursor, &format!("detection = {{ mode = \"cursor\", cursor_column = \"updated_at\", {extra} }}"))
                .replace("\"email\", \"updated_at\"]", "\"email\", \"updated_at\", \"deleted_at\"]")
        };
        let ok = parse(&with("deleted_column = \"deleted_at\", reconcile_interval_ms = 60000")).expect("valid");
        assert!(matches!(
            &ok.models[0].detection,
            Detection::Cursor { deleted_column: Some(d), reconcile_interval_ms: Some(60000), .. } if d == "deleted_at"
        ));

        let e = parse(&with("deleted_column = \"removed_at\"")).unwrap_err();
        assert_eq!(e.to_string(), "sluice.toml:10: model \"customers\": detection column \"removed_at\" is not in `columns`\n  fix: add it to `columns`");
        let e = parse(&with("deleted_column = \"id\"")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "sluice.toml:10: model \"customers\": deleted_column \"id\" is a primary-key column or the cursor column, so it cannot mark a row deleted\n  fix: name the column that marks a deleted row, e.g. deleted_column = \"deleted_at\" (non-NULL = deleted) or \"is_deleted\" (true = deleted)"
        );
        let e = parse(&with("deleted_column = \"updated_at\"")).unwrap_err();
        assert!(e.message.contains("deleted_column \"updated_at\" is a primary-key column or the cursor column"), "{e}");
        let e = parse(&with("reconcile_interval_ms = 0")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "sluice.toml:10: model \"customers\": reconcile_interval_ms must be positive\n  fix: use e.g. reconcile_interval_ms = 3600000 (hourly), or remove it to never reconcile hard deletes"
        );
        let e = parse(&with("reconcile_every = 5")).unwrap_err();
        assert!(e.message.contains("unknown field `reconcile_every`"), "{e}");
    }

    #[test]
    fn destination_entries_need_exactly_one_kind_table_and_errors_name_the_line() {
        // GOOD's destination: `[[destinations]]` on line 16, `[destinations.webhook]` on 18.
        let two = GOOD.replace("url = \"http://127.0.0.1:1/hook\"", "url = \"http://127.0.0.1:1/hook\"\n[destinations.redis]\nurl = \"r\"");
        let e = parse(&two).unwrap_err();
        assert!(e.message.contains("two kind tables, `webhook` and `redis`"), "{e}");
        assert_eq!(e.line, Some(20), "{e}");
        let none = GOOD.replace("[destinations.webhook]\nurl = \"http://127.0.0.1:1/hook\"\n", "");
        let e = parse(&none).unwrap_err();
        assert!(e.message.contains("no kind table"), "{e}");
        assert_eq!(e.line, Some(16), "{e}");
        let typo = GOOD.replace("name = \"crm\"", "name = \"crm\"\nbatch_max_record = 5");
        let e = parse(&typo).unwrap_err();
        assert!(e.message.contains("unknown field `batch_max_record`"), "{e}");
        assert_eq!(e.line, Some(18), "{e}");
    }

    #[test]
    fn kind_errors_point_at_the_key_of_the_kind_table() {
        let text = GOOD.replace("url = \"http://127.0.0.1:1/hook\"", "url = \"http://127.0.0.1:1/hook\"\ntimeout_ms = \"soon\"");
        let config = parse(&text).expect("kind tables are not parsed by Config::load");
        let destination = &config.destinations[0];
        assert_eq!(destination.kind.name(), "webhook");
        let e = config.kind_error(destination, "timeout_ms", "must be a number", "timeout_ms = 5000");
        assert_eq!(e.to_string(), "sluice.toml:20: destination \"crm\": webhook.timeout_ms: must be a number\n  fix: timeout_ms = 5000");
        let e = config.kind_error(destination, "absent", "x", "");
        assert_eq!(e.line, Some(18), "a key not written: the table's line");
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Settings {
            url: String,
            timeout_ms: u64,
        }
        let e = config.kind_settings::<Settings>(destination).unwrap_err();
        assert_eq!(e.line, Some(20), "{e}");
        assert!(e.message.starts_with("destination \"crm\": webhook: "), "{e}");
    }

    #[test]
    fn key_column_must_be_listed() {
        let text = GOOD.replace("primary_key = [\"id\"]", "primary_key = [\"uid\"]");
        let e = parse(&text).unwrap_err();
        assert!(e.message.contains("\"uid\" is not in `columns`"), "{e}");
        assert_eq!(e.line, Some(10), "{e}");
    }
}

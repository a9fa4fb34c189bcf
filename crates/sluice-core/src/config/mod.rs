//! The declarative configuration: one TOML file for warehouse, Kafka, models, destinations and
//! syncs. Every key, its default and its meaning: `docs/configuration.md`.
//!
//! Guarantees:
//! - [`Config::parse`] checks everything knowable from the file but the destinations' kind
//!   tables: unknown keys, wrong types, dangling references, duplicate names, numbers outside
//!   their [`bounds`], cron expressions. Every error names the file, the line and the fix
//!   ([`ConfigError`]). `sluice-destinations`' `validate` adds the kind tables and what needs
//!   them, for a [`Scope`]; `sluice check` and every service run it at load.
//! - Secrets are never written inline: a secret field takes `{ env = "VAR" }` or
//!   `{ file = "/path" }` ([`secret`]). Each process resolves only the secrets of its scope:
//!   Kafka's when the file is parsed (every process talks to Kafka), the warehouse's only in the
//!   poller's scope ([`Config::check_secrets`], [`WarehouseConfig::location`]), a destination's
//!   only when its kind table is parsed (by its sink, or by `sluice check`).
//! - Precedence: environment over file, for the few settings an operator overrides per
//!   deployment (`SLUICE_KAFKA_BOOTSTRAP_SERVERS`, `SLUICE_KAFKA_TOPIC_PREFIX`).
//!
//! Every destination kind is a sub-table named after the kind (`[destinations.webhook]`). This
//! crate knows no kinds: it keeps that table as written ([`KindTable`]) and the
//! `sluice-destinations` registry parses and validates it, with errors placed by
//! [`Config::error_at`] and [`Config::kind_error`] from the source text kept in the [`Config`].

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

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
    /// How outcomes of destinations with `writeback = true` are written to the warehouse.
    #[serde(default)]
    pub writeback: WritebackConfig,
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
    /// `plaintext` (default), `ssl`, `sasl_ssl` or `sasl_plaintext` ([`SecurityProtocol`]).
    #[serde(default)]
    pub security_protocol: Option<Spanned<SecurityProtocol>>,
    /// TLS settings of `ssl` and `sasl_ssl` ([`TlsConfig`]).
    #[serde(default)]
    pub tls: Option<Spanned<TlsConfig>>,
    /// SASL settings of `sasl_ssl` and `sasl_plaintext` ([`SaslConfig`]).
    #[serde(default)]
    pub sasl: Option<Spanned<SaslConfig>>,
    /// Extra librdkafka properties applied to every client (tuning); not the ones the typed
    /// settings own ([`SECURITY_PROPERTIES`]). A value may be a secret reference
    /// (`"ssl.keystore.password" = { env = "KAFKA_KEYSTORE_PASSWORD" }`).
    #[serde(default = "defaults::no_properties")]
    pub properties: Spanned<BTreeMap<String, MaybeSecret>>,
    /// `min.compaction.lag.ms` of change topics: how long every change event, `d` events
    /// included, stays in the topic before compaction may drop it for a newer record of its key.
    /// A sink that lags less than this sees every delete as its `d` event. Applied when topics
    /// are created and to existing change topics at every start (default 7 days).
    #[serde(default = "defaults::min_compaction_lag_ms")]
    pub min_compaction_lag_ms: u64,
    /// `delete.retention.ms` of change topics: how long a tombstone stays after compaction
    /// reached it. A sink that lags more than `min_compaction_lag_ms` but less than both together
    /// still sees the delete, as a tombstone whose `d` event is gone (docs/sink.md). Applied like
    /// `min_compaction_lag_ms` (default 7 days).
    #[serde(default = "defaults::delete_retention_ms")]
    pub delete_retention_ms: u64,
}

impl KafkaConfig {
    /// A plaintext connection to `bootstrap_servers` with the default topic settings, for tests
    /// and tools that build a config in code.
    pub fn plaintext(bootstrap_servers: impl Into<String>, topic_prefix: impl Into<String>) -> KafkaConfig {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            topic_prefix: topic_prefix.into(),
            partitions: defaults::partitions(),
            replication_factor: defaults::replication_factor(),
            security_protocol: None,
            tls: None,
            sasl: None,
            properties: defaults::no_properties(),
            min_compaction_lag_ms: defaults::min_compaction_lag_ms(),
            delete_retention_ms: defaults::delete_retention_ms(),
        }
    }

    /// The protocol, `plaintext` when not written.
    pub fn security_protocol(&self) -> SecurityProtocol {
        self.security_protocol.as_ref().map(|p| *p.get_ref()).unwrap_or_default()
    }
}

/// The warehouse models are read from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarehouseConfig {
    /// Name recorded in every event's `source.warehouse`.
    #[serde(default = "defaults::warehouse_name")]
    pub name: String,
    pub kind: WarehouseKind,
    /// PostgreSQL: the connection string, by reference (it usually holds a password). Resolved
    /// only by [`WarehouseConfig::location`], so a sink never reads it.
    #[serde(default)]
    pub url: Option<Spanned<SecretRef>>,
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
#[derive(Debug, Clone)]
pub enum WarehouseLocation<'a> {
    /// The connection string, resolved.
    Postgres { url: Secret },
    Duckdb { path: &'a Path },
}

/// Why the warehouse cannot be located: its secret does not resolve, or the setting its kind
/// needs is missing (only for a `WarehouseConfig` built by hand: parsing refuses that).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    /// The connection string's reference does not resolve.
    #[error("[warehouse] url: {0}")]
    Secret(#[from] SecretError),
    /// The kind's setting is missing.
    #[error("[warehouse] kind = \"{kind}\" needs `{key}`")]
    Missing { kind: &'static str, key: &'static str },
}

impl WarehouseConfig {
    /// The warehouse's address for its kind, its secret resolved now.
    pub fn location(&self) -> Result<WarehouseLocation<'_>, LocationError> {
        let missing = || LocationError::Missing { kind: self.kind.name(), key: self.kind.setting().0.key() };
        Ok(match self.kind {
            WarehouseKind::Postgres => WarehouseLocation::Postgres { url: self.url.as_ref().ok_or_else(missing)?.get_ref().resolve()? },
            WarehouseKind::Duckdb => WarehouseLocation::Duckdb { path: self.path.as_deref().ok_or_else(missing)? },
        })
    }
}

pub mod bounds;
pub mod delivery;
pub mod destinations;
pub mod kafka;
pub mod models;
pub mod scope;
pub mod secret;
pub mod suppression;
pub mod syncs;
mod validate;
pub mod writeback;
pub use delivery::*;
pub use destinations::*;
pub use kafka::*;
pub use models::*;
pub use scope::*;
pub use secret::*;
pub use suppression::*;
pub use syncs::*;
pub use writeback::*;

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
    pub fn min_compaction_lag_ms() -> u64 {
        7 * 24 * 3600 * 1000
    }
    pub fn delete_retention_ms() -> u64 {
        7 * 24 * 3600 * 1000
    }
    pub fn no_properties() -> toml::Spanned<std::collections::BTreeMap<String, super::MaybeSecret>> {
        // Never pointed at: an error about a property has a property, hence a real span.
        toml::Spanned::new(0..0, std::collections::BTreeMap::new())
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
    pub fn yes() -> bool {
        true
    }
    pub fn writeback_table() -> String {
        "sluice_sync_log".into()
    }
    pub fn writeback_batch_max_records() -> usize {
        1_000
    }
    pub fn writeback_batch_linger_ms() -> u64 {
        1_000
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

    /// The file the config was read from (as given to [`Config::parse`]).
    pub fn path(&self) -> &Path {
        &self.source.path
    }

    /// The model of that name.
    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name.get_ref() == name)
    }

    /// The destination of that name.
    pub fn destination(&self, name: &str) -> Option<&DestinationConfig> {
        self.destinations.iter().find(|d| d.name.get_ref() == name)
    }

    /// Resolve the secrets of the core sections that `scope` uses, and refuse the first that
    /// does not resolve at its line: the warehouse's connection string for the poller's scope.
    /// Kafka's were resolved by [`Config::parse`]; a destination's are resolved with its kind
    /// table (`sluice-destinations`).
    pub fn check_secrets(&self, scope: &Scope) -> Result<(), ConfigError> {
        if !scope.has_poller() {
            return Ok(());
        }
        if let Some(url) = &self.warehouse.url {
            url.get_ref().resolve().map_err(|e| {
                self.error_at(url.span(), format!("[warehouse] url: {e}"), format!("export the variable or create the file in the poller's environment (see {})", validate::reference("secrets")))
            })?;
        }
        Ok(())
    }

    /// The destinations whose outcomes are written back to the warehouse (`writeback = true`).
    pub fn writeback_destinations(&self) -> impl Iterator<Item = &DestinationConfig> + '_ {
        self.destinations.iter().filter(|d| d.writeback)
    }

    /// The syncs delivering into one destination.
    pub fn syncs_to<'a>(&'a self, destination: &'a str) -> impl Iterator<Item = &'a SyncConfig> + 'a {
        self.syncs.iter().filter(move |s| s.destination.get_ref() == destination)
    }
}


/// Letters, digits, `_` and `-`: safe inside topic, group and transactional-id names.
fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// 1-based line number of a byte offset (counted in bytes: any offset is safe).
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

fn fix_for_parse_error(message: &str) -> String {
    if message.contains("unknown field") {
        "remove the key or correct its spelling (the message lists the expected keys)".into()
    } else if message.contains("missing field") {
        "add the missing key".into()
    } else if message.contains("environment variable") {
        "export the variable in the service's environment".into()
    } else if message.contains("unknown variant") {
        "use one of the values the message lists".into()
    } else {
        "see docs/configuration.md for the expected shape".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const GOOD: &str = r#"
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
        assert_eq!((config.kafka.min_compaction_lag_ms, config.kafka.delete_retention_ms), (604_800_000, 604_800_000), "deletes kept a week by default");
        let Ok(WarehouseLocation::Postgres { url }) = config.warehouse.location() else { panic!("a postgres location") };
        assert_eq!(url.expose(), "postgres://u:p@h/db");
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

    /// The warehouse's secret is resolved by the poller's scope only: a sink starts without it.
    #[test]
    fn missing_secret_variable_is_named_in_the_scopes_that_need_it() {
        let text = GOOD.replace("SLUICE_TEST_WAREHOUSE_URL", "SLUICE_TEST_UNSET_VARIABLE");
        let config = parse(&text).expect("parsing resolves no warehouse secret");
        for scope in [Scope::Poller, Scope::All] {
            let e = config.check_secrets(&scope).unwrap_err();
            assert!(e.message.contains("SLUICE_TEST_UNSET_VARIABLE is not set"), "{e}");
            assert_eq!(e.line, Some(7), "{e}");
        }
        config.check_secrets(&Scope::Sink("crm".into())).expect("a sink never reads the warehouse URL");
        assert!(config.warehouse.location().unwrap_err().to_string().contains("SLUICE_TEST_UNSET_VARIABLE is not set"));
    }

    #[test]
    fn kafka_properties_take_secret_references() {
        std::env::set_var("SLUICE_TEST_KAFKA_PASSWORD", "pw");
        // (Security settings have typed keys of their own; `properties` is for the rest, e.g. a
        // keystore password of a provider-specific property.)
        let text = GOOD.replace("bootstrap_servers = \"127.0.0.1:9092\"", "bootstrap_servers = \"127.0.0.1:9092\"\nproperties = { \"client.id\" = { env = \"SLUICE_TEST_KAFKA_PASSWORD\" }, \"linger.ms\" = \"5\" }");
        let config = parse(&text).expect("valid");
        let properties = config.kafka.properties.get_ref();
        assert_eq!((properties["client.id"].expose(), properties["linger.ms"].expose()), ("pw", "5"));
        let e = parse(&text.replace("SLUICE_TEST_KAFKA_PASSWORD", "SLUICE_TEST_KAFKA_UNSET")).unwrap_err();
        assert!(e.message.contains("SLUICE_TEST_KAFKA_UNSET is not set"), "every process talks to Kafka: {e}");
        assert_eq!(e.line, Some(4), "the property's line: {e}");
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
        assert!(matches!(config.warehouse.location(), Ok(WarehouseLocation::Duckdb { path }) if path == Path::new("demo/warehouse.duckdb")));

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
    fn expire_is_validated_and_refused_where_the_poller_cannot_emit_it() {
        let with = |detection: &str, expire: &str| {
            GOOD.replace("detection = { mode = \"cursor\", cursor_column = \"updated_at\" }", &format!("detection = {detection}\nexpire = {expire}"))
        };
        let cursor = "{ mode = \"cursor\", cursor_column = \"updated_at\" }";
        let ok = parse(&with(cursor, "{ column = \"updated_at\", after_ms = 1209600000 }")).expect("valid");
        assert_eq!(ok.models[0].expire, Some(Expire { column: "updated_at".into(), after_ms: 1_209_600_000 }));
        assert!(matches!(ok.models[0].detection, Detection::Cursor { before_images: true, .. }), "before images by default");
        assert!(parse(&with("{ mode = \"diff\" }", "{ column = \"updated_at\", after_ms = 1 }")).is_ok());

        let e = parse(&with(cursor, "{ column = \"purchased_at\", after_ms = 1000 }")).unwrap_err();
        assert_eq!(e.to_string(), "sluice.toml:10: model \"customers\": expire.column \"purchased_at\" is not in `columns`\n  fix: add it to `columns`");
        let e = parse(&with(cursor, "{ column = \"updated_at\", after_ms = 0 }")).unwrap_err();
        assert!(e.message.contains("expire.after_ms must be positive"), "{e}");
        let e = parse(&with(cursor, "{ column = \"updated_at\", after_ms = -5 }")).unwrap_err();
        assert!(e.line.is_some(), "{e}");
        let e = parse(&with(cursor, "{ column = \"updated_at\", after = 5 }")).unwrap_err();
        assert!(e.message.contains("unknown field `after`"), "{e}");
        let e = parse(&with("{ mode = \"warehouse_diff\" }", "{ column = \"updated_at\", after_ms = 1000 }")).unwrap_err();
        assert!(e.message.contains("expire is not available in mode = \"warehouse_diff\""), "{e}");
        assert!(e.fix.starts_with("write the filter in the model's query"), "{e}");
        let opted_out = "{ mode = \"cursor\", cursor_column = \"updated_at\", before_images = false }";
        assert!(matches!(parse(&with(opted_out, "{ column = \"updated_at\", after_ms = 1 }").replace("expire = { column = \"updated_at\", after_ms = 1 }", "")).unwrap().models[0].detection, Detection::Cursor { before_images: false, .. }));
        let e = parse(&with(opted_out, "{ column = \"updated_at\", after_ms = 1000 }")).unwrap_err();
        assert!(e.message.contains("before_images = false turns it off"), "{e}");
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
    fn a_sync_mode_defaults_to_upsert_and_keeps_its_line() {
        let config = parse(GOOD).expect("valid");
        assert_eq!(config.syncs[0].mode(), SyncMode::Upsert);
        assert_eq!(line_of(&config.source.text, config.syncs[0].mode_span().start), 23, "no mode: the sync's destination line");
        let audience = parse(&GOOD.replace("destination = \"crm\"\n", "destination = \"crm\"\nmode = \"audience\"\n")).expect("valid");
        assert_eq!(audience.syncs[0].mode(), SyncMode::Audience);
        assert_eq!(line_of(&audience.source.text, audience.syncs[0].mode_span().start), 24, "the mode's own line");
        assert_eq!(SyncMode::ALL.map(SyncMode::name), ["upsert", "update", "create", "mirror", "append", "audience"]);
        let typo = GOOD.replace("destination = \"crm\"\n", "destination = \"crm\"\nmode = \"mirrror\"\n");
        assert!(parse(&typo).unwrap_err().message.contains("unknown variant `mirrror`"));
    }

    #[test]
    fn key_column_must_be_listed() {
        let text = GOOD.replace("primary_key = [\"id\"]", "primary_key = [\"uid\"]");
        let e = parse(&text).unwrap_err();
        assert!(e.message.contains("\"uid\" is not in `columns`"), "{e}");
        assert_eq!(e.line, Some(10), "{e}");
    }
}

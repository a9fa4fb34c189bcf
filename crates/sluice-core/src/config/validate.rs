//! What [`Config::parse`] checks after the file parsed: everything knowable from the file alone
//! but the destinations' kind tables (`sluice-destinations` checks those, and what needs them).
//!
//! Guaranteed for a config that passes: names are unique and usable in topic, group and Avro
//! names; every reference resolves; every number lies in the range of [`bounds`], so turning it
//! into a `Duration`, a rate limiter, a capacity or a topic never panics or overflows; every
//! cron expression parses with the poller's parser and fires again; every consent value and
//! constant is a scalar a row can match. Each error names the line and the fix, with the
//! section of `docs/configuration.md` that describes the key.

use std::collections::HashSet;
use std::ops::Range;

use super::bounds::{self, Bounded};
use super::{is_identifier, Config, ConfigError, Detection, DestinationConfig, Expire, FieldSource, ModelConfig, SyncConfig, WarehouseSetting};

/// The reference, for fixes: `docs/configuration.md#<anchor>`.
pub(crate) fn reference(anchor: &str) -> String {
    format!("docs/configuration.md#{anchor}")
}

/// Longest topic name Kafka accepts.
const MAX_TOPIC_NAME: usize = 249;

impl Config {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.validate_kafka()?;
        self.validate_warehouse()?;
        let mut names = HashSet::new();
        for model in &self.models {
            if !names.insert(model.name.get_ref().clone()) {
                return Err(self.error_at(model.name.span(), format!("model {:?} is defined twice", model.name.get_ref()), "give each model a unique name"));
            }
            self.validate_model(model)?;
        }
        let mut names = HashSet::new();
        for destination in &self.destinations {
            if !names.insert(destination.name.get_ref().clone()) {
                return Err(self.error_at(destination.name.span(), format!("destination {:?} is defined twice", destination.name.get_ref()), "give each destination a unique name"));
            }
            self.validate_destination(destination)?;
        }
        self.validate_writeback()?;
        let mut pairs = HashSet::new();
        for sync in &self.syncs {
            self.validate_sync(sync)?;
            if !pairs.insert((sync.model.get_ref(), sync.destination.get_ref())) {
                return Err(self.error_at(
                    sync.model.span(),
                    format!("model {:?} is synced to destination {:?} twice", sync.model.get_ref(), sync.destination.get_ref()),
                    "merge the two [[syncs]] entries into one (a destination receives a model once)",
                ));
            }
        }
        // After syncs: a list's references (models, syncs' modes and columns) hold by then.
        self.validate_suppression()
    }

    /// An error without a line (the `[kafka]` and `[warehouse]` sections are not spanned).
    fn whole(&self, message: String, fix: impl Into<String>) -> ConfigError {
        ConfigError { file: self.source.path.clone(), line: None, message, fix: fix.into() }
    }

    fn validate_kafka(&self) -> Result<(), ConfigError> {
        self.validate_kafka_security()?;
        let kafka = &self.kafka;
        if kafka.bootstrap_servers.trim().is_empty() {
            return Err(self.whole("kafka.bootstrap_servers is empty".into(), "set it, e.g. \"127.0.0.1:9092\""));
        }
        if !is_identifier(&kafka.topic_prefix) {
            return Err(self.whole(format!("kafka.topic_prefix {:?} is not a valid topic segment", kafka.topic_prefix), "use letters, digits, '_' and '-' only"));
        }
        let numbers = [
            ("partitions", f64::from(kafka.partitions), bounds::PARTITIONS),
            ("replication_factor", f64::from(kafka.replication_factor), bounds::REPLICATION_FACTOR),
            ("min_compaction_lag_ms", kafka.min_compaction_lag_ms as f64, bounds::MIN_COMPACTION_LAG_MS),
            ("delete_retention_ms", kafka.delete_retention_ms as f64, bounds::DELETE_RETENTION_MS),
        ];
        for (key, value, bound) in numbers {
            if let Err(range) = bound.check(value) {
                return Err(self.whole(format!("kafka.{key} = {} {range}", bounds::show(value)), format!("e.g. {} (see {})", bound.example, reference("kafka"))));
            }
        }
        Ok(())
    }

    fn validate_warehouse(&self) -> Result<(), ConfigError> {
        let kind = self.warehouse.kind;
        let (setting, example) = kind.setting();
        let given = [(WarehouseSetting::Url, self.warehouse.url.is_some()), (WarehouseSetting::Path, self.warehouse.path.is_some())];
        if given.iter().any(|&(key, is_set)| is_set != (key == setting)) {
            let others: Vec<String> = given.iter().filter(|(key, _)| *key != setting).map(|(key, _)| format!("`{}`", key.key())).collect();
            return Err(self.whole(format!("[warehouse] kind = \"{}\" needs `{}` and no {}", kind.name(), setting.key(), others.join(" or ")), example));
        }
        Ok(())
    }

    /// `[writeback]`: a table name the writeback can quote, and batches within their bounds.
    fn validate_writeback(&self) -> Result<(), ConfigError> {
        let writeback = &self.writeback;
        if writeback.table_parts().is_none() {
            return Err(self.whole(
                format!("writeback.table {:?} is not a table name", writeback.table),
                format!("use `name` or `schema.name`, letters, digits and '_' (see {})", reference("writeback")),
            ));
        }
        let numbers = [
            ("batch_max_records", writeback.batch_max_records as f64, bounds::WRITEBACK_BATCH_MAX_RECORDS),
            ("batch_linger_ms", writeback.batch_linger_ms as f64, bounds::WRITEBACK_BATCH_LINGER_MS),
        ];
        for (key, value, bound) in numbers {
            if let Err(range) = bound.check(value) {
                return Err(self.whole(format!("writeback.{key} = {} {range}", bounds::show(value)), format!("e.g. {} (see {})", bound.example, reference("writeback"))));
            }
        }
        Ok(())
    }

    /// A topic name this config would create, refused when Kafka would refuse it.
    fn topic_fits(&self, span: Range<usize>, what: &str, topic: String) -> Result<(), ConfigError> {
        if topic.len() > MAX_TOPIC_NAME {
            return Err(self.error_at(span, format!("{what}: topic {topic:?} is longer than Kafka's {MAX_TOPIC_NAME} characters"), "shorten the name or kafka.topic_prefix"));
        }
        Ok(())
    }

    fn validate_model(&self, model: &ModelConfig) -> Result<(), ConfigError> {
        let name = model.name.get_ref();
        let span = model.name.span();
        let err = |message: String, fix: &str| self.error_at(span.clone(), message, fix);
        if !is_identifier(name) || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(err(format!("model name {name:?} cannot name a topic and an Avro namespace"), "start with a letter or '_', then letters, digits, '_' and '-' only"));
        }
        self.topic_fits(span.clone(), &format!("model {name:?}"), crate::naming::change_topic(&self.kafka.topic_prefix, name))?;
        if model.table.is_some() == model.query.is_some() {
            return Err(err(format!("model {name:?} needs exactly one of `table` and `query`"), "set `table = \"schema.table\"` or `query = \"select ...\"`"));
        }
        if model.table.as_deref().is_some_and(|t| t.trim().is_empty()) || model.query.as_deref().is_some_and(|q| q.trim().is_empty()) {
            return Err(err(format!("model {name:?}: `table` or `query` is empty"), "name the table (`schema.table`) or write the query"));
        }
        let mut seen = HashSet::new();
        for column in &model.columns {
            if !is_avro_name(column) {
                return Err(err(format!("model {name:?}: column {column:?} cannot be a field name (letters, digits and '_', not starting with a digit)"), "rename it in the model (`select x as new_name`) and list the new name"));
            }
            if !seen.insert(column) {
                return Err(err(format!("model {name:?}: column {column:?} is listed twice"), "list each column once"));
            }
        }
        if model.primary_key.is_empty() {
            return Err(err(format!("model {name:?} has no primary key"), "list its key columns: primary_key = [\"id\"]"));
        }
        let mut seen = HashSet::new();
        for key in &model.primary_key {
            if !model.columns.contains(key) {
                return Err(err(format!("model {name:?}: primary-key column {key:?} is not in `columns`"), "add it to `columns`"));
            }
            if !seen.insert(key) {
                return Err(err(format!("model {name:?}: primary-key column {key:?} is listed twice"), "list each key column once"));
            }
        }
        self.validate_detection(model)?;
        if model.notify_channel.is_some() && !self.warehouse.kind.can_notify() {
            return Err(err(
                format!("model {name:?}: notify_channel needs a warehouse that can notify (PostgreSQL's LISTEN/NOTIFY); kind = \"{}\" cannot", self.warehouse.kind.name()),
                "remove it and use poll_interval_ms, cron or POST /run/<model>",
            ));
        }
        if model.notify_channel.as_deref().is_some_and(|c| c.trim().is_empty()) {
            return Err(err(format!("model {name:?}: notify_channel is empty"), "name the channel, e.g. notify_channel = \"customers_changed\", or remove it"));
        }
        self.check_number(span.clone(), &format!("model {name:?}: batch_rows"), model.batch_rows as f64, bounds::BATCH_ROWS, "models")?;
        self.check_number(span.clone(), &format!("model {name:?}: poll_interval_ms"), model.poll_interval_ms as f64, bounds::POLL_INTERVAL_MS, "models")?;
        if let Some(expression) = &model.cron {
            model.cron_schedule().map_err(|reason| {
                err(
                    format!("model {name:?}: cron = {expression:?} {reason}"),
                    &format!("use 5 fields (minute hour day month weekday) or 6 with seconds first, e.g. \"0 */15 * * * *\" (see {})", reference("models")),
                )
            })?;
        }
        if let Some(expire) = &model.expire {
            self.validate_expire(model, expire)?;
        }
        self.validate_gates(model)
    }

    fn validate_detection(&self, model: &ModelConfig) -> Result<(), ConfigError> {
        let name = model.name.get_ref();
        let err = |message: String, fix: &str| self.error_at(model.name.span(), message, fix);
        let Detection::Cursor { cursor_column, created_column, deleted_column, lookback_ms, reconcile_interval_ms, .. } = &model.detection else {
            return Ok(());
        };
        for column in std::iter::once(cursor_column).chain(created_column.iter()).chain(deleted_column.iter()) {
            if !model.columns.contains(column) {
                return Err(err(format!("model {name:?}: detection column {column:?} is not in `columns`"), "add it to `columns`"));
            }
        }
        if let Some(deleted) = deleted_column {
            if model.primary_key.contains(deleted) || deleted == cursor_column {
                return Err(err(format!("model {name:?}: deleted_column {deleted:?} is a primary-key column or the cursor column, so it cannot mark a row deleted"), "name the column that marks a deleted row, e.g. deleted_column = \"deleted_at\" (non-NULL = deleted) or \"is_deleted\" (true = deleted)"));
            }
        }
        if *reconcile_interval_ms == Some(0) {
            return Err(err(format!("model {name:?}: reconcile_interval_ms must be positive"), "use e.g. reconcile_interval_ms = 3600000 (hourly), or remove it to never reconcile hard deletes"));
        }
        if let Some(ms) = reconcile_interval_ms {
            self.check_number(model.name.span(), &format!("model {name:?}: reconcile_interval_ms"), *ms as f64, bounds::RECONCILE_INTERVAL_MS, "detection")?;
        }
        if let Some(ms) = lookback_ms {
            self.check_number(model.name.span(), &format!("model {name:?}: lookback_ms"), *ms as f64, bounds::LOOKBACK_MS, "detection")?;
        }
        Ok(())
    }

    fn validate_gates(&self, model: &ModelConfig) -> Result<(), ConfigError> {
        let name = model.name.get_ref();
        let gates = &model.gates;
        if let Some(pct) = gates.max_change_pct {
            self.check_number(model.name.span(), &format!("model {name:?}: gates.max_change_pct"), pct, bounds::MAX_CHANGE_PCT, "gates")?;
        }
        if let (Some(min), Some(max)) = (gates.min_rows, gates.max_rows) {
            if min > max {
                return Err(self.error_at(model.name.span(), format!("model {name:?}: gates.min_rows = {min} is above gates.max_rows = {max}, so every run would be refused"), "lower min_rows or raise max_rows"));
            }
        }
        Ok(())
    }

    fn validate_destination(&self, destination: &DestinationConfig) -> Result<(), ConfigError> {
        let name = destination.name.get_ref();
        if !is_identifier(name) {
            return Err(self.error_at(destination.name.span(), format!("destination name {name:?} cannot name a topic"), "use letters, digits, '_' and '-' only"));
        }
        self.topic_fits(destination.name.span(), &format!("destination {name:?}"), crate::naming::dead_letter_topic(&self.kafka.topic_prefix, name))?;
        self.topic_fits(destination.name.span(), &format!("destination {name:?}"), crate::naming::outcomes_topic(&self.kafka.topic_prefix, name))?;
        let at = |key: &str| destination.key_span(key);
        let what = |key: &str| format!("destination {name:?}: {key}");
        let numbers = [
            ("batch_max_records", destination.batch_max_records as f64, bounds::BATCH_MAX_RECORDS),
            ("batch_max_bytes", destination.batch_max_bytes as f64, bounds::BATCH_MAX_BYTES),
            ("batch_linger_ms", destination.batch_linger_ms as f64, bounds::BATCH_LINGER_MS),
            ("max_concurrency", destination.max_concurrency as f64, bounds::MAX_CONCURRENCY),
            ("max_buffered_records", destination.max_buffered_records as f64, bounds::MAX_BUFFERED_RECORDS),
        ];
        for (key, value, bound) in numbers {
            self.check_number(at(key), &what(key), value, bound, "destinations")?;
        }
        if destination.max_buffered_records < destination.batch_max_records {
            return Err(self.error_at(at("max_buffered_records"), format!("destination {name:?}: max_buffered_records is below batch_max_records, so no full batch could form"), "raise max_buffered_records (default 10000)"));
        }
        let retry = &destination.retry;
        let numbers = [
            ("retry.initial_backoff_ms", retry.initial_backoff_ms as f64, bounds::INITIAL_BACKOFF_MS),
            ("retry.max_backoff_ms", retry.max_backoff_ms as f64, bounds::MAX_BACKOFF_MS),
            ("retry.max_attempts", retry.max_attempts as f64, bounds::MAX_ATTEMPTS),
        ];
        for (key, value, bound) in numbers {
            self.check_number(at("retry"), &what(key), value, bound, "retries")?;
        }
        if retry.initial_backoff_ms > retry.max_backoff_ms {
            return Err(self.error_at(at("retry"), what("retry.initial_backoff_ms is above retry.max_backoff_ms"), "make initial_backoff_ms at most max_backoff_ms"));
        }
        for status in &retry.retry_on_statuses {
            self.check_number(at("retry"), &what("retry.retry_on_statuses"), f64::from(*status), bounds::RETRY_STATUS, "retries")?;
        }
        let limits = &destination.rate_limit;
        if let Some(rate) = limits.requests_per_second {
            self.check_number(at("rate_limit"), &what("rate_limit.requests_per_second"), rate, bounds::REQUESTS_PER_SECOND, "rate-limits")?;
        }
        if let Some(rate) = limits.records_per_second {
            self.check_number(at("rate_limit"), &what("rate_limit.records_per_second"), rate, bounds::RECORDS_PER_SECOND, "rate-limits")?;
        }
        let breaker = &destination.dead_letter_breaker;
        let numbers = [
            ("dead_letter_breaker.max_consecutive", breaker.max_consecutive as f64, bounds::BREAKER_MAX_CONSECUTIVE),
            ("dead_letter_breaker.max_ratio", breaker.max_ratio, bounds::BREAKER_MAX_RATIO),
            ("dead_letter_breaker.window_records", breaker.window_records as f64, bounds::BREAKER_WINDOW_RECORDS),
        ];
        for (key, value, bound) in numbers {
            self.check_number(at("dead_letter_breaker"), &what(key), value, bound, "dead-letter-breaker")?;
        }
        Ok(())
    }

    fn validate_sync(&self, sync: &SyncConfig) -> Result<(), ConfigError> {
        let err = |span: Range<usize>, message: String, fix: &str| self.error_at(span, message, fix);
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
            if field.trim().is_empty() {
                return Err(err(sync.fields.span(), "a mapped field has an empty name".into(), "name the destination field: fields = { email = \"email\" }"));
            }
            for column in source.columns() {
                if !model.columns.contains(&column) {
                    return Err(err(sync.fields.span(), format!("field {field:?} maps column {column:?}, which model {:?} does not have", model.name.get_ref()), "map one of the model's `columns`"));
                }
            }
            if let FieldSource::Value(constant) = source {
                if let Some(problem) = scalar_problem(&constant.value) {
                    return Err(err(sync.fields.span(), format!("field {field:?}: the constant {problem}"), &format!("write a string, integer, finite float or boolean (see {})", reference("field-sources"))));
                }
            }
        }
        if let Some(consent) = &sync.consent {
            if !model.columns.contains(&consent.column) {
                return Err(err(sync.model.span(), format!("consent column {:?} is not a column of model {:?}", consent.column, model.name.get_ref()), "add it to the model's `columns`"));
            }
            if let Some(problem) = scalar_problem(&consent.equals) {
                return Err(err(sync.model.span(), format!("consent `equals` {problem}"), &format!("compare with a boolean, integer, finite float or string, e.g. equals = true (see {})", reference("consent"))));
            }
        }
        Ok(())
    }

    /// A number against its bounds: the error names the setting, the value and the range.
    fn check_number(&self, span: Range<usize>, what: &str, value: f64, bound: Bounded, anchor: &str) -> Result<(), ConfigError> {
        bound.check(value).map_err(|range| {
            self.error_at(span, format!("{what} = {} {range}", bounds::show(value)), format!("e.g. {} (see {})", bound.example, reference(anchor)))
        })
    }
}

/// Why a value cannot be compared with a row's value or sent as a constant, if it cannot:
/// arrays, tables, dates and non-finite floats have no match in a row (a consent rule with one
/// would remove everyone).
fn scalar_problem(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(_) | toml::Value::Integer(_) | toml::Value::Boolean(_) => None,
        toml::Value::Float(f) if f.is_finite() => None,
        toml::Value::Float(f) => Some(format!("{f} is not a finite number")),
        toml::Value::Datetime(_) => Some("is a date-time, which no row value equals".into()),
        toml::Value::Array(_) | toml::Value::Table(_) => Some("is an array or a table, not a single value".into()),
    }
}

/// A valid Avro field name: `[A-Za-z_][A-Za-z0-9_]*` (what the poller's codec accepts).
fn is_avro_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Config {
    /// `expire` on a model: a column of the model, a positive duration, a mode that can emit
    /// expiries (the column's type is checked by the poller, which knows it).
    fn validate_expire(&self, model: &ModelConfig, expire: &Expire) -> Result<(), ConfigError> {
        let name = model.name.get_ref();
        let err = |message: String, fix: &str| self.error_at(model.name.span(), message, fix);
        if !model.columns.contains(&expire.column) {
            return Err(err(format!("model {name:?}: expire.column {:?} is not in `columns`", expire.column), "add it to `columns`"));
        }
        if expire.after_ms == 0 {
            return Err(err(format!("model {name:?}: expire.after_ms must be positive"), "e.g. expire = { column = \"purchased_at\", after_ms = 1209600000 } (14 days)"));
        }
        match &model.detection {
            Detection::WarehouseDiff {} => Err(err(
                format!("model {name:?}: expire is not available in mode = \"warehouse_diff\": its previous snapshot lives in the warehouse, so the poller cannot treat a row that expires between runs as absent"),
                "write the filter in the model's query (query = \"select ... where purchased_at > now() - interval '14 days'\"): each run then deletes the rows that left it; or use mode = \"diff\" or \"cursor\" with expire",
            )),
            Detection::Cursor { before_images: false, .. } => Err(err(
                format!("model {name:?}: expire needs the change topic's state that cursor mode keeps for before images, and before_images = false turns it off"),
                "remove before_images = false (or remove expire)",
            )),
            Detection::Cursor { .. } | Detection::Diff {} => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    /// A valid config (line numbers: the model's name on 10, the destination's on 17, the
    /// sync's model on 22, its fields on 24): the one of `config`'s tests, in a DuckDB warehouse,
    /// its model reading `opt_in` too.
    fn good() -> String {
        let text = super::super::tests::GOOD
            .replacen("kind = \"postgres\"\nurl = { env = \"SLUICE_TEST_WAREHOUSE_URL\" }", "kind = \"duckdb\"\npath = \"w.duckdb\"", 1)
            .replacen("columns = [\"id\", \"email\", \"updated_at\"]", "columns = [\"id\", \"email\", \"opt_in\", \"updated_at\"]", 1);
        assert!(text.contains("path = \"w.duckdb\"") && text.contains("\"opt_in\""), "GOOD of config's tests changed: {text}");
        text
    }

    fn with(from: &str, to: &str) -> Result<Config, ConfigError> {
        let good = good();
        assert!(good.contains(from), "{from}");
        Config::parse("sluice.toml", &good.replacen(from, to, 1))
    }

    fn refused(from: &str, to: &str, expected: &str, line: usize) -> ConfigError {
        let error = with(from, to).expect_err(to);
        assert!(error.message.contains(expected), "{to}: {error}");
        assert_eq!(error.line, Some(line), "{to}: {error}");
        assert!(!error.fix.is_empty(), "{error}");
        error
    }

    #[test]
    fn the_good_config_is_valid() {
        with("", "").unwrap_or_else(|e| panic!("{e}"));
    }

    /// Issue 12: each passed `check` and then panicked in the sink (`inf` in `limits.rs`,
    /// `1e-20` in `Duration`), or would have.
    #[test]
    fn rates_that_no_limiter_can_hold_are_refused_at_their_line() {
        let name = "name = \"crm\"";
        for rate in ["inf", "nan", "1e-20", "-0.0", "0", "1e300", "-1"] {
            let error = refused(name, &format!("{name}\nrate_limit = {{ requests_per_second = {rate} }}"), "rate_limit.requests_per_second", 18);
            assert!(error.fix.contains("docs/configuration.md#rate-limits"), "{error}");
        }
        for rate in ["inf", "0.5", "1e300"] {
            refused(name, &format!("{name}\nrate_limit = {{ records_per_second = {rate} }}"), "rate_limit.records_per_second", 18);
        }
        with(name, &format!("{name}\nrate_limit = {{ requests_per_second = 0.5, records_per_second = 1000 }}")).expect("sensible rates");
        let error = refused(name, &format!("{name}\nrate_limit = {{ requests_per_second = inf }}"), "", 18);
        assert_eq!(error.message, "destination \"crm\": rate_limit.requests_per_second = inf is not a finite number; it must be between 1.157e-5 and 1000000");
    }

    #[test]
    fn numbers_that_would_overflow_or_stall_are_refused() {
        let name = "name = \"crm\"";
        let huge = "9223372036854775807";
        let cases = [
            (format!("{name}\nbatch_linger_ms = {huge}"), "batch_linger_ms", 18),
            (format!("{name}\nmax_concurrency = {huge}"), "max_concurrency", 18),
            (format!("{name}\nbatch_max_bytes = 0"), "batch_max_bytes", 18),
            (format!("{name}\nretry = {{ max_backoff_ms = {huge} }}"), "retry.max_backoff_ms", 18),
            (format!("{name}\nretry = {{ initial_backoff_ms = 0 }}"), "retry.initial_backoff_ms", 18),
            (format!("{name}\nretry = {{ initial_backoff_ms = 5000, max_backoff_ms = 1000 }}"), "initial_backoff_ms is above", 18),
            (format!("{name}\nretry = {{ retry_on_statuses = [200] }}"), "retry_on_statuses", 18),
        ];
        for (to, expected, line) in cases {
            refused(name, &to, expected, line);
        }
        let model = "primary_key = [\"id\"]";
        refused(model, &format!("{model}\nbatch_rows = {huge}"), "batch_rows", 10);
        refused(model, &format!("{model}\npoll_interval_ms = 0"), "poll_interval_ms", 10);
        refused(model, &format!("{model}\ngates = {{ max_change_pct = nan }}"), "gates.max_change_pct", 10);
        refused(model, &format!("{model}\ngates = {{ min_rows = 10, max_rows = 5 }}"), "every run would be refused", 10);
        refused("cursor_column = \"updated_at\"", &format!("cursor_column = \"updated_at\", lookback_ms = {huge}"), "lookback_ms", 10);
        let error = with("bootstrap_servers = \"127.0.0.1:9092\"", "bootstrap_servers = \"127.0.0.1:9092\"\npartitions = 0").unwrap_err();
        assert_eq!(error.message, "kafka.partitions = 0 is out of range; it must be between 1 and 10000");
        let error = with("bootstrap_servers = \"127.0.0.1:9092\"", "bootstrap_servers = \"127.0.0.1:9092\"\nmin_compaction_lag_ms = 99999999999999").unwrap_err();
        assert_eq!(error.message, "kafka.min_compaction_lag_ms = 99999999999999 is out of range; it must be between 0 and 31536000000");
    }

    /// Issue 12: a cron expression passed `check` and stopped the poller at start.
    #[test]
    fn cron_expressions_parse_with_the_pollers_parser_and_must_fire() {
        let model = "primary_key = [\"id\"]";
        with(model, &format!("{model}\ncron = \"0 */15 * * * *\"")).expect("6 fields");
        with(model, &format!("{model}\ncron = \"*/5 * * * *\"")).expect("5 fields");
        let error = refused(model, &format!("{model}\ncron = \"every hour\""), "cron = \"every hour\" does not parse", 10);
        assert!(error.fix.contains("e.g. \"0 */15 * * * *\""), "{error}");
        refused(model, &format!("{model}\ncron = \"61 * * * *\""), "does not parse", 10);
        refused(model, &format!("{model}\ncron = \"0 0 31 2 *\""), "never fires", 10);
    }

    #[test]
    fn names_columns_and_values_the_runtime_cannot_carry_are_refused() {
        refused("name = \"customers\"", "name = \"1customers\"", "Avro namespace", 10);
        refused("\"opt_in\", \"updated_at\"]", "\"opt in\", \"updated_at\"]", "column \"opt in\" cannot be a field name", 10);
        refused("\"opt_in\", \"updated_at\"]", "\"opt_in\", \"updated_at\", \"email\"]", "column \"email\" is listed twice", 10);
        refused("fields = { email = \"email\" }", "fields = { email = \"email\" }\nconsent = { column = \"opt_in\", equals = nan }", "consent `equals` NaN is not a finite number", 22);
        refused("fields = { email = \"email\" }", "fields = { email = \"email\" }\nconsent = { column = \"opt_in\", equals = [true] }", "not a single value", 22);
        refused("fields = { email = \"email\" }", "fields = { email = \"email\", x = { value = inf } }", "the constant inf is not a finite number", 24);
        let twice = "\n[[syncs]]\nmodel = \"customers\"\ndestination = \"crm\"\nfields = { id = \"id\" }\n";
        let error = Config::parse("sluice.toml", &format!("{}{twice}", good())).unwrap_err();
        assert!(error.message.contains("is synced to destination \"crm\" twice"), "{error}");
        let long = "x".repeat(240);
        refused("name = \"customers\"", &format!("name = \"{long}\""), "longer than Kafka's 249 characters", 10);
    }

    #[test]
    fn writeback_settings_are_checked_and_default_when_absent() {
        let config = with("", "").unwrap();
        assert_eq!((config.writeback.table.as_str(), config.writeback.batch_max_records), ("sluice_sync_log", 1000));
        assert_eq!(config.writeback_destinations().count(), 0, "opt-in");
        let name = "name = \"crm\"";
        assert_eq!(with(name, &format!("{name}\nwriteback = true")).unwrap().writeback_destinations().count(), 1);
        let sync = "[[syncs]]";
        for (section, expected) in [
            ("[writeback]\ntable = \"a.b.c\"", "writeback.table \"a.b.c\" is not a table name"),
            ("[writeback]\ntable = \"log; drop\"", "is not a table name"),
            ("[writeback]\nbatch_max_records = 0", "writeback.batch_max_records = 0 is out of range"),
            ("[writeback]\nbatch_max_records = 6000", "it must be between 1 and 5000"),
            ("[writeback]\nbatch_linger_ms = 9223372036854775807", "writeback.batch_linger_ms"),
        ] {
            let error = with(sync, &format!("{section}\n\n{sync}")).expect_err(section);
            assert!(error.message.contains(expected), "{section}: {error}");
            assert!(error.fix.contains("docs/configuration.md#writeback"), "{error}");
        }
        let error = with(sync, &format!("[writeback]\ntabel = \"x\"\n\n{sync}")).expect_err("unknown key");
        assert!(error.message.contains("unknown field `tabel`"), "{error}");
        let config = with(sync, &format!("[writeback]\ntable = \"analytics.sync_log\"\nbatch_max_records = 5\nbatch_linger_ms = 0\n\n{sync}")).unwrap();
        assert_eq!((config.writeback.table_parts(), config.writeback.batch_linger_ms), (Some(vec!["analytics", "sync_log"]), 0));
    }
}

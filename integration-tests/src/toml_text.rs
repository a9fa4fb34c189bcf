//! Configuration text for the tests, as a user writes it: one function per TOML table that
//! several tests share, so each test's configuration spells out only what the test is about.
//! Everything here only renders text; `Config::parse` still checks every file a test builds.
//!
//! Each piece ends with a newline and holds no blank line, so a test joins pieces with `\n` to
//! get the usual blank line between tables.

use std::fmt;

use crate::kafka_bootstrap;

/// The usual cursor detection of the tests' tables: on `updated_at`, with inserts told apart by
/// `created_at`.
pub const CURSOR: &str = r#"{ mode = "cursor", cursor_column = "updated_at", created_column = "created_at" }"#;

/// `[kafka]` on the test broker ([`kafka_bootstrap`]) with `topic_prefix = prefix`, then
/// `[warehouse]`: PostgreSQL, its url read from the environment variable `url_env`.
pub fn services(prefix: &str, url_env: &str) -> String {
    services_on(&kafka_bootstrap(), prefix, "", url_env)
}

/// [`services`] on the broker `bootstrap_servers`, with `kafka_extra` lines (`partitions`,
/// client `properties`…) added to the `[kafka]` table.
pub fn services_on(bootstrap_servers: &str, prefix: &str, kafka_extra: &str, url_env: &str) -> String {
    format!(
        "[kafka]\nbootstrap_servers = \"{bootstrap_servers}\"\ntopic_prefix = \"{prefix}\"\n{}\n[warehouse]\nkind = \"postgres\"\nurl = {{ env = \"{url_env}\" }}\n",
        lines(kafka_extra)
    )
}

/// One `[[models]]` table keyed on `id`: built with [`Model::table`] or [`Model::query`], shown
/// with `{}`.
#[derive(Debug, Clone)]
pub struct Model<'a> {
    name: &'a str,
    /// `table = "…"` or `query = "…"`.
    relation: String,
    columns: &'a [&'a str],
    detection: &'a str,
    poll_interval_ms: Option<u64>,
    extra: &'a str,
}

impl<'a> Model<'a> {
    /// The model `name` over the table `table`, reading `columns`, with `detection` (an inline
    /// table such as `{ mode = "diff" }`).
    pub fn table(name: &'a str, table: &str, columns: &'a [&'a str], detection: &'a str) -> Self {
        Self { name, relation: format!("table = \"{table}\""), columns, detection, poll_interval_ms: None, extra: "" }
    }

    /// The model `name` over the SQL `query` (no double quotes in it), otherwise as [`Model::table`].
    pub fn query(name: &'a str, query: &str, columns: &'a [&'a str], detection: &'a str) -> Self {
        Self { relation: format!("query = \"{query}\""), ..Self::table(name, "", columns, detection) }
    }

    /// Poll every `ms` milliseconds (the default is the product's).
    pub fn poll_interval_ms(self, ms: u64) -> Self {
        Self { poll_interval_ms: Some(ms), ..self }
    }

    /// Further lines of the model's table (`batch_rows`, gates, `expire`…).
    pub fn extra(self, extra: &'a str) -> Self {
        Self { extra, ..self }
    }
}

impl fmt::Display for Model<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let columns = self.columns.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", ");
        write!(f, "[[models]]\nname = \"{}\"\n{}\nprimary_key = [\"id\"]\ncolumns = [{columns}]\ndetection = {}\n", self.name, self.relation, self.detection)?;
        if let Some(ms) = self.poll_interval_ms {
            writeln!(f, "poll_interval_ms = {ms}")?;
        }
        f.write_str(&lines(self.extra))
    }
}

/// `[[destinations]]` named `name` with its `settings` lines (batching, retry…), then `kind`:
/// the kind's table, e.g. from [`redis_set`] or [`meta_audience`].
pub fn destination(name: &str, settings: &str, kind: &str) -> String {
    format!("[[destinations]]\nname = \"{name}\"\n{}{}", lines(settings), lines(kind))
}

/// `[destinations.redis]` keeping the set `set_key` of `email` values, its url read from the
/// environment variable `url_env`; `extra` lines follow (`ttl_secs`…).
pub fn redis_set(url_env: &str, set_key: &str, extra: &str) -> String {
    format!("[destinations.redis]\nurl = {{ env = \"{url_env}\" }}\nmode = \"set\"\nset_key = \"{set_key}\"\nmember_field = \"email\"\n{}", lines(extra))
}

/// `[destinations.meta]` at `base_url` for the audience `audience_id` matched on `EMAIL`, its
/// token read from the environment variable `token_env`; `extra` lines follow (`mode`…).
pub fn meta_audience(base_url: &str, token_env: &str, audience_id: &str, extra: &str) -> String {
    format!(
        "[destinations.meta]\nbase_url = \"{base_url}\"\naccess_token = {{ env = \"{token_env}\" }}\naudience_id = \"{audience_id}\"\nidentifiers = {{ email = \"EMAIL\" }}\n{}",
        lines(extra)
    )
}

/// `[[syncs]]` of `model` to `destination`, then its `settings` lines (`mode`, `fields`…).
pub fn sync(model: &str, destination: &str, settings: &str) -> String {
    format!("[[syncs]]\nmodel = \"{model}\"\ndestination = \"{destination}\"\n{}", lines(settings))
}

/// [`sync`] in `mode` writing `fields` (an inline table such as [`EMAIL`]).
pub fn sync_fields(model: &str, destination: &str, mode: &str, fields: &str) -> String {
    sync(model, destination, &format!("mode = \"{mode}\"\nfields = {fields}"))
}

/// [`sync_fields`] of `model` to each `(destination, mode, fields)` in turn, a blank line apart.
pub fn syncs(model: &str, to: &[(&str, &str, &str)]) -> String {
    to.iter().map(|(destination, mode, fields)| sync_fields(model, destination, mode, fields)).collect::<Vec<_>>().join("\n")
}

/// The `fields` of a sync that writes the `email` column as it is.
pub const EMAIL: &str = r#"{ email = "email" }"#;

/// The `fields` of a sync that writes the `email` column normalised (trimmed, lower case).
pub const NORMALIZED_EMAIL: &str = r#"{ email = { column = "email", transforms = ["normalize_email"] } }"#;

/// `text` trimmed of surrounding blank lines, ending with a newline unless empty.
fn lines(text: &str) -> String {
    let text = text.trim_matches('\n');
    if text.is_empty() {
        String::new()
    } else {
        format!("{text}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_of_the_pieces_parses_with_every_piece_in_place() {
        let columns = ["id", "email"];
        let text = [
            services_on("127.0.0.1:1", "p", "partitions = 2", "SLUICE_TOML_TEXT_TEST_URL"),
            Model::table("m", "t", &columns, "{ mode = \"diff\" }").poll_interval_ms(200).extra("batch_rows = 3").to_string(),
            Model::query("q", "SELECT id, email FROM t", &columns, "{ mode = \"diff\" }").to_string(),
            destination("site", "batch_linger_ms = 20", &redis_set("SLUICE_TOML_TEXT_TEST_REDIS", "k", "ttl_secs = 60")),
            destination("ads", "", &meta_audience("http://127.0.0.1:1", "SLUICE_TOML_TEXT_TEST_TOKEN", "1", "mode = \"audience\"")),
            sync("m", "site", "mode = \"upsert\"\nfields = { email = \"email\" }"),
            syncs("q", &[("ads", "audience", EMAIL), ("site", "upsert", NORMALIZED_EMAIL)]),
        ]
        .join("\n");
        std::env::set_var("SLUICE_TOML_TEXT_TEST_URL", "postgres://unused@127.0.0.1/unused");
        std::env::set_var("SLUICE_TOML_TEXT_TEST_REDIS", "redis://127.0.0.1:1");
        std::env::set_var("SLUICE_TOML_TEXT_TEST_TOKEN", "token");
        let config = sluice_core::config::Config::parse("pieces.toml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.kafka.topic_prefix, "p");
        assert_eq!(config.models.len(), 2);
        assert_eq!(config.destinations.len(), 2);
        assert_eq!(config.syncs.len(), 3);
        assert!(text.contains("[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\ntopic_prefix = \"p\"\npartitions = 2\n\n[warehouse]\n"), "{text}");
        assert!(text.contains("columns = [\"id\", \"email\"]\ndetection = { mode = \"diff\" }\npoll_interval_ms = 200\nbatch_rows = 3\n"), "{text}");
    }
}

//! `[writeback]`: how the warehouse writeback writes the row-level outcomes of destinations
//! with `writeback = true` into the warehouse (`docs/audit.md`). Only the poller reads it: the
//! writeback runs there, next to the warehouse connection.

use serde::Deserialize;

use super::defaults;

/// The warehouse writeback's settings; every key has a default, so the section is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WritebackConfig {
    /// The sync-log table, `name` or `schema.name` (the schema must exist); created if missing.
    #[serde(default = "defaults::writeback_table")]
    pub table: String,
    /// Outcomes written per warehouse transaction, at most.
    #[serde(default = "defaults::writeback_batch_max_records")]
    pub batch_max_records: usize,
    /// How long a partial batch waits for more outcomes before it is written.
    #[serde(default = "defaults::writeback_batch_linger_ms")]
    pub batch_linger_ms: u64,
}

impl Default for WritebackConfig {
    fn default() -> WritebackConfig {
        WritebackConfig {
            table: defaults::writeback_table(),
            batch_max_records: defaults::writeback_batch_max_records(),
            batch_linger_ms: defaults::writeback_batch_linger_ms(),
        }
    }
}

impl WritebackConfig {
    /// The table's name parts (`["schema", "name"]` or `["name"]`), when each is a plain SQL
    /// identifier (letters, digits and `_`, not starting with a digit); `None` otherwise.
    pub fn table_parts(&self) -> Option<Vec<&str>> {
        let parts: Vec<&str> = self.table.split('.').collect();
        let plain = |part: &&str| part.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        (parts.len() <= 2 && parts.iter().all(plain)).then_some(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_a_name_or_a_schema_qualified_name() {
        let table = |name: &str| WritebackConfig { table: name.into(), ..WritebackConfig::default() };
        assert_eq!(WritebackConfig::default().table_parts(), Some(vec!["sluice_sync_log"]));
        assert_eq!(table("analytics.sync_log").table_parts(), Some(vec!["analytics", "sync_log"]));
        for bad in ["", "a.b.c", "1log", "log;drop", "a.", "\"quoted\""] {
            assert_eq!(table(bad).table_parts(), None, "{bad:?}");
        }
    }
}

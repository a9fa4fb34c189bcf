//! Models: what the poller reads, and how it detects changes.

use serde::Deserialize;
use toml::Spanned;

use super::defaults;

/// A table, view or SQL query with a declared primary key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Names the topic (`<prefix>.changes.<name>`); letters, digits, `_` and `-` only.
    pub name: Spanned<String>,
    /// A table or view (`schema.table`); exactly one of `table` and `query`.
    pub table: Option<String>,
    /// A SQL query; exactly one of `table` and `query`.
    pub query: Option<String>,
    /// Primary-key columns, in key order (composite keys allowed).
    pub primary_key: Vec<String>,
    /// The columns that are read and emitted, in order. Explicit so a new warehouse column
    /// never leaks into Kafka unannounced.
    pub columns: Vec<String>,
    /// How changes are detected.
    pub detection: Detection,
    /// Time between runs.
    #[serde(default = "defaults::poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Cron expression (UTC; 5 fields, or 6 with seconds) for when runs start, instead of every
    /// `poll_interval_ms` — e.g. `"0 */15 * * * *"` after a warehouse job that lands at :00.
    #[serde(default)]
    pub cron: Option<String>,
    /// PostgreSQL `LISTEN` channel: a `NOTIFY <channel>` (from a trigger or the job that builds
    /// the model) starts a run at once, for low latency without tight polling.
    #[serde(default)]
    pub notify_channel: Option<String>,
    /// Rows fetched per query page and committed per Kafka transaction.
    #[serde(default = "defaults::batch_rows")]
    pub batch_rows: usize,
    /// The model's checked-in row schema (`sluice schema export <model>` writes it, usually
    /// `schemas/models/<model>.avsc`, relative to the working directory). When set, a model whose
    /// columns or types differ from it is refused with the list of differences, before anything
    /// is read: a data contract instead of silently syncing a changed shape.
    #[serde(default)]
    pub schema_contract: Option<String>,
    /// Accept columns present in the model but not in its contract (additions are compatible
    /// for consumers that ignore unknown fields). Removed or retyped columns are always refused.
    #[serde(default)]
    pub allow_additions: bool,
    /// Data-quality gates checked before a run emits anything (`diff` mode).
    #[serde(default)]
    pub gates: Gates,
    /// Rows that stop being live some time after a timestamp (`expire = { column =
    /// "purchased_at", after_ms = 1209600000 }`: a purchase keeps its buyer suppressed for 14
    /// days). The poller treats an expired row as absent: it never emits one, and emits a live
    /// key whose row expired as an ordinary delete (`d` + tombstone), once, so the change topic
    /// holds exactly the live rows and consumers need no clock. `cursor` and `diff` modes only.
    #[serde(default)]
    pub expire: Option<Expire>,
}

/// When a model's rows expire: `column + after_ms` (see [`ModelConfig::expire`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expire {
    /// A timestamp column of the model (a local timestamp is read as UTC). A row whose value
    /// here is NULL never expires.
    pub column: String,
    /// How long after `column` a row stays live, in milliseconds (positive).
    pub after_ms: u64,
}

/// Data-quality gates: a run that fails one emits nothing and the model stops with the reason,
/// so a broken upstream job cannot pour a wrong picture of the world into every destination.
/// Duplicate and NULL primary keys are always refused; these bounds are opt-in.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    /// Refuse a run in which more than this percentage of the tracked rows would change
    /// (inserts + updates + deletes, against the rows emitted so far). Guards against a
    /// truncated or rewritten upstream table. The first snapshot is exempt. An operator lets
    /// one such run through with `sluice-poller --confirm-large-change <model>`.
    pub max_change_pct: Option<f64>,
    /// Refuse a run whose model returns fewer rows than this (an empty or half-loaded table).
    pub min_rows: Option<u64>,
    /// Refuse a run whose model returns more rows than this (a fan-out join gone wrong).
    pub max_rows: Option<u64>,
}

impl ModelConfig {
    /// The model's `cron` expression parsed by the poller's parser (`croner`, 5 fields or 6
    /// with seconds first), checked to fire again from now on; `Ok(None)` without one. `Err`
    /// says what is wrong, for the validation's message.
    pub fn cron_schedule(&self) -> Result<Option<croner::Cron>, String> {
        let Some(expression) = &self.cron else { return Ok(None) };
        let cron = croner::Cron::new(expression).with_seconds_optional().parse().map_err(|e| format!("does not parse: {e}"))?;
        cron.find_next_occurrence(&chrono::Utc::now(), false).map_err(|e| format!("never fires ({e})"))?;
        Ok(Some(cron))
    }

    /// The SQL relation to select from: the table, or the query as a subquery.
    pub fn relation_sql(&self) -> String {
        match (&self.table, &self.query) {
            (Some(table), _) => table.clone(),
            (None, Some(query)) => format!("({query}) AS sluice_model"),
            (None, None) => unreachable!("validated: a model has a table or a query"),
        }
    }
}

/// Change-detection mode of a model.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum Detection {
    /// Tuple cursor over (`cursor_column`, primary key). Sees inserts and updates, soft deletes
    /// with `deleted_column`; hard deletes only with `reconcile_interval_ms` (the cursor alone
    /// cannot see a row that is gone).
    Cursor {
        /// A column that grows whenever a row changes (`updated_at`, a sequence).
        cursor_column: String,
        /// Optional creation-time column: rows created after the previous run's cursor are
        /// emitted as `c`, others as `u`. Without it every change after the first snapshot is `u`.
        #[serde(default)]
        created_column: Option<String>,
        /// Look-back window (timestamp cursors): every poll re-reads rows whose cursor is at
        /// most this far behind the position and emits those not emitted yet, so a transaction
        /// that commits after later cursor values were read (out-of-order commits) is still
        /// seen. Must exceed the longest write transaction. The (key, cursor) pairs emitted
        /// inside the window are kept in the state record (at most 20000).
        #[serde(default)]
        lookback_ms: Option<u64>,
        /// Soft-delete column: a row whose value here is `true` (boolean column) or not NULL
        /// (any other type, e.g. `deleted_at`) is emitted as a delete (`d`, the row as read as
        /// `before`, then a tombstone) instead of an update. Skipped by the first snapshot
        /// (destinations never knew the row). Not a key column, not the cursor column.
        #[serde(default)]
        deleted_column: Option<String>,
        /// Reconciliation of hard deletes: at most this often (checked after a poll that caught
        /// up, and once after each start), the keys emitted so far (rebuilt from the change
        /// topic) are compared with the model's keys, and keys no longer in the model are
        /// emitted as deletes. Costs one full key scan of the model and one read of the change
        /// topic per reconciliation; emits deletes only.
        #[serde(default)]
        reconcile_interval_ms: Option<u64>,
        /// Whether updates and deletes carry the key's last emitted image as `before` (updates
        /// also the changed columns), so a destination can move a changed identifier. The poller
        /// keeps the change topic's state (key hash → row hash and location of the latest event,
        /// rebuilt from the topic at start, ~50 bytes per key) and reads previous images back
        /// from the topic; that state also decides `c` against `u` exactly. `false`: updates
        /// carry no `before`, a soft delete carries the row as read, `created_column` decides
        /// `c` against `u`, and no state is kept (for very large models whose identifiers never
        /// change). Default `true`; `expire` needs it.
        #[serde(default = "defaults::yes")]
        before_images: bool,
    },
    /// Full snapshot compared by primary key and row hash (xxh3) against the last emitted
    /// state: inserts, updates (with `before` image and changed columns) and deletes. Works
    /// for any query, so segments produce membership changes. Costs a full read per run.
    Diff {},
    /// The previous snapshot is kept as a table in the warehouse (`sluice_state.<model>_snapshot`,
    /// rows plus an md5 row hash computed in SQL) and the diff is a FULL OUTER JOIN computed
    /// there, so only changed rows cross the network. The new snapshot replaces the old one only
    /// after Kafka committed the run. Needs CREATE on the warehouse (schema `sluice_state`).
    WarehouseDiff {},
}

impl Detection {
    /// The mode's name as written in the config.
    pub fn mode(&self) -> &'static str {
        match self {
            Detection::Cursor { .. } => "cursor",
            Detection::Diff {} => "diff",
            Detection::WarehouseDiff {} => "warehouse_diff",
        }
    }
}


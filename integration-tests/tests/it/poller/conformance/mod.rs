//! The warehouse conformance suite: every scenario is written once ([`scenarios`]), generic over
//! a [`Backend`] (a fresh warehouse per test, SQL run in it, rows read back as text), and runs on
//! every warehouse: each backend's module ends with `conformance_tests!(Backend)`, which generates
//! one test per scenario in that module (`poller::conformance::postgres::…`,
//! `poller::conformance::duckdb::…`).
//!
//! What a warehouse must pass, against the real Kafka: each detection mode end to end (exact
//! events, `before` images, changed columns, exact decimals, non-ASCII, a restart that repeats
//! nothing; `warehouse_diff`'s snapshot swapped only after the commit), the read-only plan of
//! `warehouse_diff`, its type mapping (every mapped type read exactly, directly and through
//! Avro; an unmapped type refused by name), the refusal of a warehouse that is not there (nothing
//! created), and the poller binary SIGKILLed at random points under concurrent writes losing and
//! duplicating nothing.
//!
//! Adding a warehouse: a module here implementing [`Backend`] (its SQL for the suite's tables is
//! the shared subset below, so usually only connection, type list and refusal texts differ) and
//! one `mod` line in the list at the bottom. See `docs/warehouses.md`.

use std::future::Future;
use std::time::Duration;

use sluice_core::{ColumnType, Value};

mod scenarios;

/// A warehouse the suite can run on.
///
/// The suite's own SQL (tables, inserts, updates, deletes, reads as text) is written in the
/// subset PostgreSQL and DuckDB share: `bigint`, `text`, `numeric(p,s)`, `timestamptz`,
/// `now()`, `generate_series(a, b) AS t(i)`, `||`, `CAST(… AS VARCHAR)`, `information_schema`.
pub(crate) trait Backend: Send + Sync + Sized + 'static {
    /// A fresh, empty warehouse for one test (PostgreSQL: the shared server, tables named
    /// uniquely; DuckDB: a new file).
    fn create() -> impl Future<Output = Self> + Send;

    /// The `[warehouse]` section of a config that reads this warehouse.
    fn warehouse_section(&self) -> String;

    /// Run one or more statements; panics with the SQL on error.
    fn exec(&self, sql: &str) -> impl Future<Output = ()> + Send;

    /// The rows of a query whose columns are all text (`CAST(… AS VARCHAR)`), NULL as `None`.
    fn text_rows(&self, sql: &str) -> impl Future<Output = Vec<Vec<Option<String>>>> + Send;

    /// The type-mapping case: this warehouse's types and how they read.
    fn types() -> Types;

    /// A warehouse that is not there.
    fn absent() -> Absent;

    /// The crash test's concurrent writer: changes per transaction and the pause between
    /// transactions (a file warehouse takes turns with the poller for its lock).
    const WRITES_PER_TRANSACTION: usize;
    const WRITER_PAUSE: Duration;
    /// How long the crash test's first snapshot of 100k rows may take.
    const SNAPSHOT_DEADLINE: Duration;
}

/// A backend's type-mapping case.
pub(crate) struct Types {
    /// Creates `{table}` with the mapped columns and an unmapped column `tags`, and inserts
    /// [`rows`](Types::rows).
    pub setup: &'static str,
    /// The mapped columns, the key `id` (bigint) first.
    pub columns: &'static [&'static str],
    /// Their sluice types.
    pub types: Vec<ColumnType>,
    /// Every row as read, in key order; the row with id 2 is NULL in every column but the key.
    pub rows: Vec<Vec<Value>>,
    /// How `tags` is refused: the message after `column "tags" has `.
    pub refusal: &'static str,
}

/// A warehouse that is not there.
pub(crate) struct Absent {
    /// The `[warehouse]` section pointing at it.
    pub section: String,
    /// What the refusal says.
    pub says: &'static str,
    /// What must still not exist afterwards (a file warehouse is never created empty).
    pub must_not_exist: Option<std::path::PathBuf>,
}

/// One test per scenario, for the backend `$backend`, in the module that invokes it.
macro_rules! conformance_tests {
    ($backend:ty) => {
        use super::scenarios;

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn diff_mode_emits_inserts_updates_and_deletes_and_repeats_nothing_after_a_restart() {
            scenarios::snapshot_mode_round_trip::<$backend>("diff").await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn warehouse_diff_mode_emits_the_same_and_swaps_its_snapshot_after_the_commit() {
            scenarios::snapshot_mode_round_trip::<$backend>("warehouse_diff").await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn cursor_mode_sees_inserts_and_updates() {
            scenarios::cursor_mode_sees_inserts_and_updates::<$backend>().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn plan_of_a_warehouse_diff_model_compares_with_the_kept_snapshot_read_only() {
            scenarios::plan_of_a_warehouse_diff_model_is_read_only::<$backend>().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn every_mapped_type_reads_exactly_directly_and_through_kafka() {
            scenarios::every_mapped_type_reads_exactly::<$backend>().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn an_unmapped_type_is_refused_by_name() {
            scenarios::an_unmapped_type_is_refused_by_name::<$backend>().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_warehouse_that_is_not_there_is_refused_and_never_created() {
            scenarios::a_warehouse_that_is_not_there_is_refused::<$backend>().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn poller_binary_killed_with_sigkill_at_random_points_loses_and_duplicates_nothing() {
            scenarios::poller_binary_killed_at_random_points::<$backend>().await;
        }
    };
}

// The warehouses the suite runs on: one module each.
mod postgres;
// DuckDB needs its one-off C++ build: the `duckdb` feature (ops/test.sh turns it on).
#[cfg(feature = "duckdb")]
mod duckdb;

//! The poller against the real broker and warehouses: every detection mode, gates, contracts,
//! triggers, plans, first snapshots and crash tests.

pub(crate) mod common;
mod crash;
mod cursor;
mod diff;
// The DuckDB warehouse needs DuckDB's one-off C++ build: the `duckdb` feature (ops/test.sh
// turns it on).
#[cfg(feature = "duckdb")]
mod on_duckdb;
mod lookback;
mod plan;
mod schema_contract;
mod snapshot;
mod triggers;
mod types;
mod warehouse_diff;

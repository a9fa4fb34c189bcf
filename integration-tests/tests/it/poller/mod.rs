//! The poller against the real broker and warehouses: every detection mode, gates, contracts,
//! triggers, plans, first snapshots and crash tests. What every warehouse must pass is the
//! conformance suite (`conformance`), run on PostgreSQL and DuckDB; the other modules are
//! PostgreSQL's (before images, look-back, soft deletes, reconciliation, expiry, NOTIFY, gates…).

pub(crate) mod common;
mod conformance;
mod cursor;
mod diff;
mod expire;
mod lookback;
mod plan;
mod schema_contract;
mod snapshot;
mod triggers;
mod warehouse_diff;

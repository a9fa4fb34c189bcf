//! The sink service against the real broker: delivery, back-pressure, rebalances and kills; the
//! order guard under replays, side records and compaction; the `sluice` commands that act on
//! them (`dlq`, `replay`, `backfill`, `resync`, `inspect`); the broker stopped and restarted under
//! a running poller and sink (`broker_restart`).

mod backfill;
mod breaker;
mod broker_restart;
mod common;
mod compaction;
mod delivery;
mod dlq;
mod failures;
mod faults;
mod inspect;
mod replace;
mod replay;
mod resync;
mod side;

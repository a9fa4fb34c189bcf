//! The sink service against the real broker: delivery, back-pressure, rebalances and kills; the
//! order guard under replays, side records and compaction.

mod backfill;
mod breaker;
mod common;
mod compaction;
mod delivery;
mod dlq;
mod failures;
mod faults;
mod replay;
mod side;

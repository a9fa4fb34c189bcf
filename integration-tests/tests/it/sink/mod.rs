//! The sink service against the real broker: delivery, back-pressure, rebalances and kills; the
//! order guard under replays, side records and compaction.

mod common;
mod compaction;
mod delivery;
mod replay;
mod side;

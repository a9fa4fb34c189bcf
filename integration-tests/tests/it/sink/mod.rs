//! The sink service against the real broker: delivery, back-pressure, rebalances and kills.

mod delivery;

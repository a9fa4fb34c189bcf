//! sluice's integration tests, in one binary: every area is a module, so the suite links once
//! (each test binary links DuckDB and librdkafka, ~530 MB in a debug build; one per area once
//! filled a 50 GB disk).
//!
//! They run against the real Kafka broker, PostgreSQL and Redis that `ops/services.sh up` starts
//! (`ops/test.sh` does), and `secure_kafka` against the secured broker it also starts
//! (`ops/kafka-secure.sh`); a missing service fails the test with the command that starts it.
//! Filter by area as usual: `cargo test -p sluice-integration-tests --test it poller::cursor`.

mod audit;
mod destinations;
mod identifier_change;
mod kafka_admin;
mod no_leak;
mod ops;
mod outside_decoder;
mod plain_logs;
mod poller;
mod secure_kafka;
mod sink;
mod suppression;
mod sync_modes;
mod trace;
mod walking_skeleton;

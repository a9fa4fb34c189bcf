//! A Kafka broker of the test's own (`ops/kafka-private.sh`): the fault tests stop and restart
//! it mid-run, which they must never do to the shared broker every other test uses.
//!
//! Guarantees: its ports and its state dir (data, pid file, log) are its own — free ports
//! picked at start, a fresh temp dir — so runs never share one; it is stopped and its state
//! removed when dropped, a failed test included.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::free_address;
use crate::unique;

/// A running (or stopped, between [`PrivateBroker::stop`] and [`PrivateBroker::start`])
/// single-node PLAINTEXT broker.
pub struct PrivateBroker {
    /// `host:port` of its PLAINTEXT listener.
    pub bootstrap: String,
    port: String,
    controller_port: String,
    state: PathBuf,
}

impl PrivateBroker {
    /// Start a new broker (formatted storage, ports of its own); fails with its log when it
    /// does not answer within `ops/kafka.sh`'s readiness timeout.
    pub fn launch() -> PrivateBroker {
        let port_of = |address: String| address.rsplit_once(':').expect("host:port").1.to_string();
        let (port, controller_port) = (port_of(free_address()), port_of(free_address()));
        let state = std::env::temp_dir().join(unique("sluice-private-kafka"));
        let broker = PrivateBroker { bootstrap: format!("127.0.0.1:{port}"), port, controller_port, state };
        broker.start();
        broker
    }

    /// Start it again on the same ports and data, and wait until it answers metadata requests.
    pub fn start(&self) {
        self.ops("start");
    }

    /// Stop it the way an operator does (SIGTERM, `ops/kafka.sh`'s grace, then SIGKILL).
    pub fn stop(&self) {
        self.ops("stop");
    }

    fn ops(&self, action: &str) {
        let output = self.run(action).unwrap_or_else(|e| panic!("run ops/kafka-private.sh: {e}"));
        assert!(
            output.status.success(),
            "ops/kafka-private.sh {action} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn run(&self, action: &str) -> std::io::Result<std::process::Output> {
        Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/kafka-private.sh"))
            .arg(action)
            .env("SLUICE_STATE_DIR", &self.state)
            .env("KAFKA_PRIVATE_PORT", &self.port)
            .env("KAFKA_PRIVATE_CONTROLLER_PORT", &self.controller_port)
            .output()
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        // No panic here: a failed test is already unwinding.
        if let Err(error) = self.run("stop") {
            eprintln!("stopping the private broker in {}: {error}", self.state.display());
        }
        std::fs::remove_dir_all(&self.state).ok();
    }
}

#!/usr/bin/env bash
# Sink benchmarks (not part of the test suite): throughput against Kafka's own
# kafka-consumer-perf-test on the same topic, and rate-limit accuracy. Prints
# ratios measured in the same run. Release build; see docs/benchmarks.md.
set -euo pipefail
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
prepare_build_env
cd "$REPO"
RUST_LOG="${RUST_LOG:-warn}" cargo run --locked --release -p sluice-integration-tests --bin bench-sink

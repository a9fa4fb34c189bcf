#!/usr/bin/env bash
# Suppression-after-purchase benchmark (issue 5; not part of the test suite): 200
# purchases committed in PostgreSQL at 20/s, each timed from its commit to the last
# of Meta (audience removal), Redis (suppression set) and Braze (unsubscribe)
# acknowledging it. Prints p50/p90/p99/max and the config; exits 1 if p99 > 2 s.
# Release build; figures in docs/benchmarks.md.
set -euo pipefail
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
prepare_build_env
cd "$REPO"
RUST_LOG="${RUST_LOG:-warn}" cargo run --locked --release -p sluice-integration-tests --bin bench-suppression

#!/usr/bin/env bash
# The whole test suite, from a fresh machine: install what the build and tests
# need, start Kafka, PostgreSQL and Redis, then run every test of the workspace
# against them. Extra arguments go to `cargo test` (e.g. `ops/test.sh -p sluice-core`).
#
# CARGO_TARGET_DIR defaults to a folder outside the clone so that every clone on
# this machine (yours, CI's) shares one build.
set -euo pipefail
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"

prepare_build_env
log "cargo test (target dir $CARGO_TARGET_DIR)"
cd "$REPO"
started=$(date +%s)
# Crash tests run the service binaries as processes (SIGKILL), so build them first.
# --features: the DuckDB warehouse and its tests (see SLUICE_CARGO_FEATURES in lib.sh).
cargo build --workspace --bins --locked --features "$SLUICE_CARGO_FEATURES"
cargo test --workspace --locked --features "$SLUICE_CARGO_FEATURES" "$@"
log "test suite passed in $(( $(date +%s) - started )) s"

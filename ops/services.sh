#!/usr/bin/env bash
# Bring sluice's local backing services up or down together.
#
#   ops/services.sh up       postgres, redis, kafka, the secured kafka (each idempotent)
#   ops/services.sh down     reverse order
#   ops/services.sh status   exit 0 iff all four are up
#
# Endpoints: postgres://sluice:sluice@127.0.0.1:5432/sluice,
#            redis://127.0.0.1:6379, Kafka bootstrap 127.0.0.1:9092,
#            secured Kafka 127.0.0.1:9094 (TLS, client certificate) and 127.0.0.1:9095
#            (SASL_SSL, SCRAM-SHA-512/256): ops/kafka-secure.sh, for the secure-Kafka tests.
set -euo pipefail
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"

up() {
    # Kafka last: it is the slowest, and the others are cheap to have ready first.
    "$OPS_DIR/postgres.sh" start
    "$OPS_DIR/redis.sh" start
    "$OPS_DIR/kafka.sh" start
    # A second broker, so the plaintext one the rest of the suite uses is never reconfigured.
    # ~10 s on a warm machine (certificates once: a few seconds more).
    "$OPS_DIR/kafka-secure.sh" start
    log "services up; logs in $SLUICE_LOG_DIR (postgres: /var/log/postgresql/)"
}

down() {
    # Keep going if one fails to stop so the rest still go down.
    local rc=0
    "$OPS_DIR/kafka-secure.sh" stop || rc=1
    "$OPS_DIR/kafka.sh" stop || rc=1
    "$OPS_DIR/redis.sh" stop || rc=1
    "$OPS_DIR/postgres.sh" stop || rc=1
    return "$rc"
}

status() {
    local rc=0
    "$OPS_DIR/postgres.sh" status || rc=1
    "$OPS_DIR/redis.sh" status || rc=1
    "$OPS_DIR/kafka.sh" status || rc=1
    "$OPS_DIR/kafka-secure.sh" status || rc=1
    return "$rc"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 {up|down|status}" >&2; exit 2 ;;
esac

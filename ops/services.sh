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

# The services' scripts in start order. Kafka last: it is the slowest, and the others are
# cheap to have ready first. kafka-secure is a second broker, so the plaintext one the rest of
# the suite uses is never reconfigured (~10 s on a warm machine; certificates once: a few
# seconds more).
SERVICES=(postgres redis kafka kafka-secure)

up() {
    local service
    for service in "${SERVICES[@]}"; do
        "$OPS_DIR/$service.sh" start
    done
    log "services up; logs in $SLUICE_LOG_DIR (postgres: /var/log/postgresql/)"
}

down() {
    # Keep going if one fails to stop so the rest still go down.
    local rc=0 i
    for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
        "$OPS_DIR/${SERVICES[i]}.sh" stop || rc=1
    done
    return "$rc"
}

status() {
    local rc=0 service
    for service in "${SERVICES[@]}"; do
        "$OPS_DIR/$service.sh" status || rc=1
    done
    return "$rc"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 {up|down|status}" >&2; exit 2 ;;
esac

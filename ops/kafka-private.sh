#!/usr/bin/env bash
# A test-private broker: a third single-node PLAINTEXT Kafka that a test starts, stops and
# restarts itself (the broker-restart fault test, integration-tests/tests/it/broker_restart.rs),
# so the shared broker on 9092 is never disturbed. Same broker as ops/kafka.sh; only its
# ports and state differ.
#
#   ops/kafka-private.sh start|stop|restart|status     as ops/kafka.sh, for this broker
#
# A test gives it ports and a state dir of its own (SLUICE_STATE_DIR=<temp dir>: data, pid
# file and log under it), so two runs never share one; the Kafka jars come from the shared
# cache ($SLUICE_CACHE_DIR) as for the other brokers. `ops/services.sh` never starts it.
# Env: KAFKA_PRIVATE_PORT (9098), KAFKA_PRIVATE_CONTROLLER_PORT (9099), KAFKA_PRIVATE_HEAP_OPTS,
#      SLUICE_STATE_DIR.
set -euo pipefail
ops="$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"
KAFKA_INSTANCE=private \
KAFKA_PORT="${KAFKA_PRIVATE_PORT:-9098}" \
KAFKA_CONTROLLER_PORT="${KAFKA_PRIVATE_CONTROLLER_PORT:-9099}" \
KAFKA_HEAP_OPTS="${KAFKA_PRIVATE_HEAP_OPTS:--Xms128m -Xmx512m}" \
    exec "$ops/kafka.sh" "$@"

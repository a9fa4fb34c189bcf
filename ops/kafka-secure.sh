#!/usr/bin/env bash
# The secured test broker: a second single-node Kafka with a TLS listener (client certificate
# required) on 127.0.0.1:9094 and a SASL_SSL listener (SCRAM-SHA-512/256) on 127.0.0.1:9095,
# with a test CA and certificates made at its first start and a SCRAM user created when its
# storage is formatted. Details (files, credentials, ports): ops/kafka/secure.sh.
#
#   ops/kafka-secure.sh start|stop|restart|status     as ops/kafka.sh, for this broker
#
# State in .state/kafka-secure (certificates in .state/kafka-secure/tls), log in
# .state/logs/kafka-secure.log. `ops/services.sh up` starts it; the secure-Kafka integration
# tests (integration-tests/tests/it/secure_kafka.rs) use it.
# Env: KAFKA_SSL_PORT (9094), KAFKA_SASL_SSL_PORT (9095), KAFKA_SECURE_CONTROLLER_PORT (9096),
#      KAFKA_SECURE_INTERNAL_PORT (9097), KAFKA_SECURE_USER, KAFKA_SECURE_PASSWORD,
#      KAFKA_SECURE_KEY_PASSWORD.
set -euo pipefail
ops="$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"
KAFKA_INSTANCE=secure \
KAFKA_PORT="${KAFKA_SECURE_INTERNAL_PORT:-9097}" \
KAFKA_CONTROLLER_PORT="${KAFKA_SECURE_CONTROLLER_PORT:-9096}" \
KAFKA_HEAP_OPTS="${KAFKA_SECURE_HEAP_OPTS:--Xms128m -Xmx512m}" \
    exec "$ops/kafka.sh" "$@"

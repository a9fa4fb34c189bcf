#!/usr/bin/env bash
# Install everything sluice's build and tests need on a fresh Debian 12 machine
# (CI starts from a clean clone on such a machine, as root). Idempotent: on a
# machine that already has everything it touches neither apt nor the network.
set -euo pipefail
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"

# cmake/build-essential/pkg-config/zlib1g-dev: the build of rdkafka's bundled
# librdkafka; libssl-dev: its `ssl` feature (TLS and SASL/SCRAM, linked to the system
# OpenSSL; SCRAM needs no libsasl2). libcurl4-openssl-dev: librdkafka 2.12's rdkafka_conf.c
# includes <curl/curl.h> even when built WITH_CURL=0, so the header must exist.
# openssl (and the JDK's keytool, checked below) make the secured test broker's certificates.
# prometheus: for its `promtool`, which the suite runs to check and unit-test the alert rules
# (ops/prometheus/rules.yml; integration-tests/tests/it/ops/promtool.rs); the tests never start
# the Prometheus server itself.
apt_install \
    postgresql redis-server redis-tools \
    cmake build-essential pkg-config libssl-dev zlib1g-dev libcurl4-openssl-dev \
    curl ca-certificates openssl unzip python3 python3-venv \
    prometheus

# Toolchains can't be fetched from outside the package registries here, so we
# only check for them and say clearly what is missing.
if ! command -v java >/dev/null; then
    die "java not found: need a JDK/JRE 17+ (apt-get install openjdk-17-jre-headless)"
fi
java_major="$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p' | head -n 1)"
java_major="${java_major#1.}"   # Java 8 reports 1.8
if [ -z "$java_major" ] || [ "$java_major" -lt 17 ]; then
    die "java ${java_major:-?} found at $(command -v java); Kafka 4.x needs 17+"
fi
log "java $java_major: ok ($(command -v java))"
command -v keytool >/dev/null || die "keytool not found: it comes with the JDK/JRE (openjdk-17-jre-headless); ops/kafka-secure.sh needs it"

command -v mvn >/dev/null || die "mvn not found: needed to fetch Kafka jars (apt-get install maven)"
log "mvn: ok ($(command -v mvn))"

if ! command -v cargo >/dev/null && [ -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
    export PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (rustup) and put ~/.cargo/bin on PATH"
log "cargo: ok ($(cargo --version 2>/dev/null || command -v cargo))"

"$OPS_DIR/kafka.sh" fetch

# fastavro: the outside decoder of the integration tests (an Avro implementation that is not
# ours computes every fingerprint itself). Pinned, so the vectors it produced stay reproducible.
# confluent-kafka: the Kafka client of the Python consumer example (docs/examples/), which the
# same tests run against the live broker.
py_install fastavro==1.13.1 confluent-kafka==2.16.1
log "deps: all present"

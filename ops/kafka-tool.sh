#!/usr/bin/env bash
# Run a Kafka command-line tool from the same Maven-fetched jars as the broker,
# standing in for the bin/kafka-*.sh scripts of a Kafka tarball.
#
#   ops/kafka-tool.sh TOOL [ARGS...]
#   e.g. ops/kafka-tool.sh topics --bootstrap-server 127.0.0.1:9092 --list
#
# Tools log WARN+ to stderr only, so their stdout can be parsed.
# Env: KAFKA_TOOL_HEAP (default -Xmx512m), KAFKA_TOOL_OPTS (extra JVM flags).
set -euo pipefail
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"

usage() {
    cat >&2 <<USAGE
usage: $0 TOOL [ARGS...]
tools: topics consumer-groups console-consumer console-producer consumer-perf-test
       producer-perf-test storage get-offsets delete-records
USAGE
    exit 2
}

[ $# -ge 1 ] || usage
tool="$1"; shift

# Main classes as of Kafka 4.1 (most tools moved from the Scala `kafka.*` packages
# to org.apache.kafka.tools in 3.x/4.0; StorageTool is still Scala).
case "$tool" in
    topics)             main=org.apache.kafka.tools.TopicCommand ;;
    consumer-groups)    main=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
    console-consumer)   main=org.apache.kafka.tools.consumer.ConsoleConsumer ;;
    console-producer)   main=org.apache.kafka.tools.ConsoleProducer ;;
    consumer-perf-test) main=org.apache.kafka.tools.ConsumerPerformance ;;
    producer-perf-test) main=org.apache.kafka.tools.ProducerPerformance ;;
    storage)            main=kafka.tools.StorageTool ;;
    get-offsets)        main=org.apache.kafka.tools.GetOffsetShell ;;
    delete-records)     main=org.apache.kafka.tools.DeleteRecordsCommand ;;
    -h|--help)          usage ;;
    *) log "unknown tool: $tool"; usage ;;
esac

# Fetching is quiet when the jars are cached; on a fresh machine it downloads once.
if ! kafka_jars_ready; then
    "$OPS_DIR/kafka.sh" fetch
fi

# Short-lived tools: C1-only JIT starts noticeably faster. Perf tests run long
# enough that full JIT matters, so they keep the default.
jit=(-XX:TieredStopAtLevel=1)
case "$tool" in *perf-test) jit=() ;; esac

# shellcheck disable=SC2086  # heap/opts are deliberately word-split
exec java ${KAFKA_TOOL_HEAP:--Xmx512m} "${jit[@]}" -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$OPS_DIR/kafka/tools-log4j2.properties" \
    ${KAFKA_TOOL_OPTS:-} \
    -cp "$KAFKA_LIBS/*" "$main" "$@"

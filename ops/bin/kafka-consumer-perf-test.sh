#!/usr/bin/env bash
# Drop-in for Kafka's bin/kafka-consumer-perf-test.sh; see ops/kafka-tool.sh.
exec "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../kafka-tool.sh" consumer-perf-test "$@"

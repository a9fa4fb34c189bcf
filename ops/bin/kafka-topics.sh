#!/usr/bin/env bash
# Drop-in for Kafka's bin/kafka-topics.sh; see ops/kafka-tool.sh.
exec "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../kafka-tool.sh" topics "$@"

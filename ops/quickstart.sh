#!/usr/bin/env bash
# The main job end to end on this machine: start Kafka, load a demo warehouse,
# run the poller and a webhook sink, make changes in the warehouse and show them
# arriving at the destination. Stops what it started (Kafka, PostgreSQL and Redis
# keep running; `ops/services.sh down` stops them).
#
#   ops/quickstart.sh            # demo warehouse in a DuckDB file (embedded, the default)
#   ops/quickstart.sh postgres   # the same demo on the local PostgreSQL
set -euo pipefail
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"

warehouse="${1:-duckdb}"
case "$warehouse" in duckdb|postgres) ;; *) die "usage: ops/quickstart.sh [duckdb|postgres]" ;; esac

prepare_build_env
log "building sluice with DuckDB support (target dir $CARGO_TARGET_DIR; DuckDB's C++ is compiled once per machine, 10-20 min)"
# The same command as ops/test.sh, so both reuse one build (another package selection would
# resolve other feature sets and compile DuckDB's C++ a second time).
(cd "$REPO" && cargo build --workspace --bins --locked --features "$SLUICE_CARGO_FEATURES")
bin="$CARGO_TARGET_DIR/debug"
cd "$REPO"   # the DuckDB config's path is relative to the repo root

export SLUICE_WAREHOUSE_URL="postgres://sluice:sluice@127.0.0.1:5432/sluice"
if [ "$warehouse" = duckdb ]; then
    export SLUICE_CONFIG="$REPO/ops/demo/sluice.toml"
    table=customers
    sql() { "$bin/sluice" warehouse exec --sql "$1"; }
    log "loading the demo warehouse into .state/demo-warehouse.duckdb (ops/demo/warehouse-duckdb.sql: 20 customers)"
    "$bin/sluice" warehouse exec --create --file "$REPO/ops/demo/warehouse-duckdb.sql"
    now=now
else
    export SLUICE_CONFIG="$REPO/ops/demo/sluice-postgres.toml"
    table=public.customers
    sql() { PGOPTIONS="-c client_min_messages=warning" psql -v ON_ERROR_STOP=1 -q "$SLUICE_WAREHOUSE_URL" -c "$1"; }
    log "loading the demo warehouse into PostgreSQL (ops/demo/warehouse.sql: 20 customers)"
    PGOPTIONS="-c client_min_messages=warning" psql -v ON_ERROR_STOP=1 -q "$SLUICE_WAREHOUSE_URL" -f "$REPO/ops/demo/warehouse.sql"
    now=clock_timestamp
fi
# A fresh demo every time: drop the demo topics and the sink's consumer group.
"$OPS_DIR/kafka-tool.sh" topics --bootstrap-server 127.0.0.1:9092 --delete --if-exists --topic 'demo\..*' >/dev/null 2>&1 || true
"$OPS_DIR/kafka-tool.sh" consumer-groups --bootstrap-server 127.0.0.1:9092 --delete --group demo.sink.crm-webhook >/dev/null 2>&1 || true
"$bin/sluice" check --config "$SLUICE_CONFIG"

logs="$SLUICE_STATE_DIR/logs"
mkdir -p "$logs"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

: >"$logs/demo-receiver.log"
"$bin/sluice" demo-receiver --listen 127.0.0.1:8088 >"$logs/demo-receiver.log" 2>&1 & pids+=($!)
"$bin/sluice-sink" --destination crm-webhook --ops-listen 127.0.0.1:9465 >"$logs/demo-sink.log" 2>&1 & pids+=($!)
"$bin/sluice-poller" --ops-listen 127.0.0.1:9464 >"$logs/demo-poller.log" 2>&1 & pids+=($!)
log "poller, sink and demo receiver started; logs: $logs/demo-{poller,sink,receiver}.log"
log "ops endpoints: http://127.0.0.1:9464/metrics (poller), http://127.0.0.1:9465/readyz (sink)"

tail -n +1 -f "$logs/demo-receiver.log" & pids+=($!)

received() { grep -c '^received' "$logs/demo-receiver.log" 2>/dev/null || true; }
wait_for() { # count seconds
    local deadline=$((SECONDS + $2))
    until [ "$(received)" -ge "$1" ]; do
        [ $SECONDS -lt $deadline ] || die "only $(received) of $1 records arrived in $2 s; see $logs"
        sleep 0.5
    done
}

wait_for 20 120
log "snapshot delivered: 20 customers arrived at the destination"

log "warehouse ($warehouse): customer 3 upgrades to pro, customer 7 changes name; customers 21 and 22 sign up"
sql "UPDATE $table SET plan = 'pro', lifetime_value = lifetime_value + 499, updated_at = $now() WHERE id = 3"
sql "UPDATE $table SET full_name = 'Ada Lovelace', updated_at = $now() WHERE id = 7"
sql "INSERT INTO $table (id, email, full_name, plan, lifetime_value) VALUES (21, 'new21@example.com', 'Customer 21', 'starter', 0), (22, 'new22@example.com', 'Customer 22', 'free', 0)"
wait_for 24 60
sleep 1
curl -fsS http://127.0.0.1:9465/metrics | grep -E '^sluice_sink_records_total' || true
log "done: 20 snapshot rows, 2 updates and 2 inserts arrived, each once. Change topic: demo.changes.customers"

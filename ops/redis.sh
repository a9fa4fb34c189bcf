#!/usr/bin/env bash
# Local Redis for sluice: a throwaway, non-persistent instance on loopback,
# with its pid file, working dir and log under $SLUICE_STATE_DIR.
#
#   ops/redis.sh install   apt-get install redis-server if missing
#   ops/redis.sh start     install if needed, start daemonized, wait for PONG
#   ops/redis.sh stop
#   ops/redis.sh status    exit 0 iff PING answers PONG
#
# Env: REDIS_PORT (6379).
set -euo pipefail
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"

REDIS_PORT="${REDIS_PORT:-6379}"
STATE="$SLUICE_STATE_DIR/redis"
PIDFILE="$STATE/redis.pid"
LOGFILE="$SLUICE_LOG_DIR/redis.log"

install() {
    if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
        log "redis: already installed"
        return 0
    fi
    apt_install redis-server redis-tools
    # Without policy-rc.d the package's postinst starts its own persistent instance
    # on 6379 via the init script; stop it so the instance we manage (no persistence,
    # state under $SLUICE_STATE_DIR) gets the port.
    if [ -x /etc/init.d/redis-server ] && pong; then
        log "redis: stopping the instance the Debian package started"
        /etc/init.d/redis-server stop >/dev/null 2>&1 || true
    fi
}

pong() {
    [ "$(timeout 3 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]
}

start() {
    install
    if pid_alive "$PIDFILE" redis-server && pong; then
        log "redis: already running (pid $(cat "$PIDFILE")) on 127.0.0.1:$REDIS_PORT (log: $LOGFILE)"
        return 0
    fi
    if ! pid_alive "$PIDFILE" redis-server && pong; then
        # Typically the Debian package's own init-script instance. It is just as
        # usable for dev/tests, so use it rather than fail.
        log "redis: 127.0.0.1:$REDIS_PORT already answers PONG but was not started by this script; using it"
        return 0
    fi
    mkdir -p "$STATE"
    log "redis: starting on 127.0.0.1:$REDIS_PORT (dir $STATE, log $LOGFILE)"
    # No persistence: tests must not see state from earlier runs via dump.rdb.
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
        --daemonize yes --pidfile "$PIDFILE" --dir "$STATE" --logfile "$LOGFILE" \
        --save '' --appendonly no
    local deadline=$((SECONDS + 20))
    until pong; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 30 "$LOGFILE" >&2 || true
            die "redis: no PONG on 127.0.0.1:$REDIS_PORT after 20s (log: $LOGFILE)"
        fi
        sleep 0.2
    done
    log "redis: ready: redis://127.0.0.1:$REDIS_PORT (pid $(cat "$PIDFILE" 2>/dev/null || echo '?'), log $LOGFILE)"
}

stop() {
    stop_pidfile redis "$PIDFILE" 15 redis-server
}

status() {
    if command -v redis-cli >/dev/null && pong; then
        if pid_alive "$PIDFILE" redis-server; then
            log "redis: running (pid $(cat "$PIDFILE")): redis://127.0.0.1:$REDIS_PORT (log: $LOGFILE)"
        else
            log "redis: answering on 127.0.0.1:$REDIS_PORT (not started by ops/redis.sh)"
        fi
        return 0
    fi
    log "redis: not answering on 127.0.0.1:$REDIS_PORT"
    return 1
}

service_main "$@"

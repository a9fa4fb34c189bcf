#!/usr/bin/env bash
# Local PostgreSQL for sluice, using Debian's packaged cluster tooling
# (pg_lsclusters / pg_createcluster / pg_ctlcluster), which works without systemd.
#
#   ops/postgres.sh install   apt-get install postgresql if the server is missing
#   ops/postgres.sh start     install if needed, configure, start, ensure role+db
#   ops/postgres.sh stop
#   ops/postgres.sh status    exit 0 iff accepting connections on 127.0.0.1:$PGPORT
#
# Result: postgres://sluice:sluice@127.0.0.1:5432/sluice
# Env: PGPORT (5432), PG_CLUSTER (main), SLUICE_PG_USER/SLUICE_PG_PASSWORD/SLUICE_PG_DB (sluice).
set -euo pipefail
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"

PGPORT="${PGPORT:-5432}"
PG_CLUSTER="${PG_CLUSTER:-main}"
PG_USER="${SLUICE_PG_USER:-sluice}"
PG_PASSWORD="${SLUICE_PG_PASSWORD:-sluice}"
PG_DB="${SLUICE_PG_DB:-sluice}"
PG_URL="postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PGPORT/$PG_DB"
# Clients would otherwise inherit PGPORT etc. and talk to the wrong place; we
# always pass -p explicitly below.
unset PGHOST PGDATABASE PGUSER PGPASSWORD

# Newest installed server major version (e.g. 15 on Debian 12), empty if none.
pg_version() {
    local d
    for d in /usr/lib/postgresql/*/bin/postgres; do
        if [ -x "$d" ]; then basename "$(dirname "$(dirname "$d")")"; fi
    done | sort -V | tail -n 1
}

install() {
    if command -v pg_ctlcluster >/dev/null && [ -n "$(pg_version)" ]; then
        log "postgres: server $(pg_version) already installed"
        return 0
    fi
    # The package's postinst creates the default "$V main" cluster; without
    # systemd its attempt to start it may fail harmlessly, start() handles that.
    apt_install postgresql
}

# Run SQL as the postgres superuser over the unix socket (peer auth), so this
# works before the sluice role or any password exists.
psql_admin() {
    runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PGPORT" -d postgres "$@"
}

cluster_running() {
    pg_lsclusters -h 2>/dev/null | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" '$1==v && $2==c {print $4}' | grep -q online
}

start() {
    install
    PG_VERSION="$(pg_version)"
    [ -n "$PG_VERSION" ] || die "postgres: no server binaries under /usr/lib/postgresql after install"
    if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -qx "$PG_VERSION $PG_CLUSTER"; then
        log "postgres: creating cluster $PG_VERSION/$PG_CLUSTER on port $PGPORT"
        pg_createcluster "$PG_VERSION" "$PG_CLUSTER" --port "$PGPORT" >/dev/null
    fi
    local conf_dir="/etc/postgresql/$PG_VERSION/$PG_CLUSTER" changed=""
    local logfile="/var/log/postgresql/postgresql-$PG_VERSION-$PG_CLUSTER.log"

    # Our settings go in a conf.d drop-in (postgresql.conf includes conf.d last,
    # so it wins) instead of editing postgresql.conf: rewriting it is trivially
    # idempotent and removing the file undoes it. pg_lsclusters reads it too.
    # TCP on loopback only: sluice's services and tests connect via 127.0.0.1.
    local dropin="$conf_dir/conf.d/sluice.conf" want
    want="# Managed by sluice ops/postgres.sh; rewritten on every start.
port = $PGPORT
listen_addresses = '127.0.0.1'
password_encryption = 'scram-sha-256'"
    if [ "$(cat "$dropin" 2>/dev/null)" != "$want" ]; then
        log "postgres: writing $dropin (port $PGPORT, listen 127.0.0.1, scram)"
        mkdir -p "$conf_dir/conf.d"
        printf '%s\n' "$want" >"$dropin"
        changed+="conf"
    fi

    # Password auth from loopback must win over anything later in pg_hba.conf
    # (first match wins), so our block goes at the top, once.
    local hba="$conf_dir/pg_hba.conf"
    if ! grep -q '# sluice-ops: begin' "$hba"; then
        log "postgres: adding scram-sha-256 loopback rules for $PG_USER to $hba"
        local tmp; tmp="$(mktemp)"
        {
            echo "# sluice-ops: begin (added by ops/postgres.sh)"
            echo "host    all             $PG_USER          127.0.0.1/32            scram-sha-256"
            echo "host    replication     $PG_USER          127.0.0.1/32            scram-sha-256"
            echo "# sluice-ops: end"
            cat "$hba"
        } >"$tmp"
        cat "$tmp" >"$hba"   # keep the file's owner and mode
        rm -f "$tmp"
        changed+="hba"
    fi

    if cluster_running; then
        if [ -n "$changed" ]; then
            log "postgres: restarting cluster $PG_VERSION/$PG_CLUSTER to apply config"
            pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" restart
        else
            log "postgres: cluster $PG_VERSION/$PG_CLUSTER already running"
        fi
    else
        log "postgres: starting cluster $PG_VERSION/$PG_CLUSTER on 127.0.0.1:$PGPORT (log: $logfile)"
        pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start \
            || { tail -n 30 "$logfile" >&2 || true; die "postgres: pg_ctlcluster start failed (log: $logfile)"; }
    fi

    local deadline=$((SECONDS + 30))
    until pg_isready -q -h 127.0.0.1 -p "$PGPORT"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 30 "$logfile" >&2 || true
            die "postgres: not accepting connections on 127.0.0.1:$PGPORT after 30s (log: $logfile)"
        fi
        sleep 0.5
    done

    # Idempotent role/db setup; ALTER keeps the password right even if the role
    # pre-existed. SUPERUSER because tests use replication slots and LISTEN/NOTIFY
    # and create/drop databases freely; this is a throwaway local cluster.
    psql_admin -v user="$PG_USER" -v pass="$PG_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE %I', :'user')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'user') \gexec
SELECT format('ALTER ROLE %I WITH LOGIN CREATEDB SUPERUSER REPLICATION PASSWORD %L', :'user', :'pass') \gexec
SQL
    psql_admin -v user="$PG_USER" -v db="$PG_DB" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'user')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
SQL
    log "postgres: ready: $PG_URL (log: $logfile)"
}

stop() {
    PG_VERSION="$(pg_version)"
    if [ -z "$PG_VERSION" ] || ! command -v pg_ctlcluster >/dev/null; then
        log "postgres: not installed"
        return 0
    fi
    if cluster_running; then
        log "postgres: stopping cluster $PG_VERSION/$PG_CLUSTER"
        pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" stop -m fast
        log "postgres: stopped"
    else
        log "postgres: not running"
    fi
}

status() {
    if command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p "$PGPORT"; then
        log "postgres: running: $PG_URL (log: /var/log/postgresql/)"
        return 0
    fi
    log "postgres: not accepting connections on 127.0.0.1:$PGPORT"
    return 1
}

service_main "$@"

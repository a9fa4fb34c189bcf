# shellcheck shell=bash disable=SC2034  # KAFKA_* etc. are used by the scripts sourcing this
# Shared helpers for sluice's local-infrastructure scripts. Source it, don't run it:
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Everything here must work from any cwd and on a machine with no systemd and
# no Docker (developers' boxes and CI are plain Debian 12 running as root).

# Paths are resolved from this file, not from $PWD, so `cd /tmp && /work/main/ops/x.sh`
# behaves exactly like running it from the repo root.
OPS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$OPS_DIR/.." && pwd)"

# Runtime state (data dirs, pid files, logs) lives in the work tree so that
# `rm -rf .state` is a full reset; it is git-ignored.
SLUICE_STATE_DIR="${SLUICE_STATE_DIR:-$REPO/.state}"
SLUICE_LOG_DIR="$SLUICE_STATE_DIR/logs"
# Downloads that are expensive and immutable (Kafka jars, ~54MB) live outside the
# work tree so fresh clones of the repo (as CI makes) reuse them.
SLUICE_CACHE_DIR="${SLUICE_CACHE_DIR:-${HOME:-/root}/.cache/sluice}"
export SLUICE_STATE_DIR SLUICE_CACHE_DIR

mkdir -p "$SLUICE_STATE_DIR" "$SLUICE_LOG_DIR" "$SLUICE_CACHE_DIR"

log() { printf '[sluice-ops] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# apt_install PKG... — install Debian packages that are not installed yet.
# `apt-get update` is slow and hits the network, so it is skipped entirely when
# nothing is missing and otherwise run at most once per machine (marker file).
# The marker lives in the cache dir, which is per machine rather than per clone.
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        # dpkg -s also succeeds for removed-but-configured packages; require "install ok installed".
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        log "apt: already installed: $*"
        return 0
    fi
    local marker="$SLUICE_CACHE_DIR/apt-updated" updated=""
    # Also update when the package lists are gone (e.g. cleaned image), marker or not.
    if [ ! -f "$marker" ] || ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
        _apt_update "$marker"
        updated=1
    fi
    log "apt: installing ${missing[*]} (log: $SLUICE_LOG_DIR/apt.log)"
    if ! _apt_get_install "${missing[@]}"; then
        # Lists older than the archive (404s, unknown package): refresh once and retry.
        [ -z "$updated" ] || { tail -n 20 "$SLUICE_LOG_DIR/apt.log" >&2; die "apt-get install ${missing[*]} failed (log: $SLUICE_LOG_DIR/apt.log)"; }
        log "apt: install failed with cached lists; updating and retrying"
        _apt_update "$marker"
        _apt_get_install "${missing[@]}" \
            || { tail -n 20 "$SLUICE_LOG_DIR/apt.log" >&2; die "apt-get install ${missing[*]} failed (log: $SLUICE_LOG_DIR/apt.log)"; }
    fi
}

_apt_update() {
    log "apt: apt-get update (once per machine; marker $1)"
    apt-get update -q >>"$SLUICE_LOG_DIR/apt.log" 2>&1 \
        || { tail -n 20 "$SLUICE_LOG_DIR/apt.log" >&2; die "apt-get update failed (log: $SLUICE_LOG_DIR/apt.log)"; }
    touch "$1"
}

_apt_get_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" \
        >>"$SLUICE_LOG_DIR/apt.log" 2>&1
}

# --- Python tools of the tests -------------------------------------------------
# A virtualenv outside the clone (per machine, like the Kafka jars) with the pinned Python
# packages the integration tests run: fastavro, an Avro implementation independent of ours,
# decodes sluice's topics by fingerprints it computes itself (tests/it/outside_decoder.rs).
# The tests find its interpreter at $SLUICE_CACHE_DIR/py/bin/python.
SLUICE_PY_VENV="$SLUICE_CACHE_DIR/py"

# py_install NAME==VERSION... — make the venv and pip-install the pins it lacks.
# Like apt_install: when every pin is already installed it touches neither pip nor the
# network. Only exact pins are accepted, so "installed" has one meaning.
py_install() {
    local missing=() req name want have
    for req in "$@"; do
        case "$req" in *==*) ;; *) die "py_install: $req is not pinned (NAME==VERSION)" ;; esac
    done
    if [ ! -x "$SLUICE_PY_VENV/bin/python" ]; then
        command -v python3 >/dev/null || die "python3 not found: needed for the test venv (apt-get install python3 python3-venv)"
        log "python: creating venv $SLUICE_PY_VENV"
        python3 -m venv "$SLUICE_PY_VENV" >>"$SLUICE_LOG_DIR/pip.log" 2>&1 \
            || { tail -n 20 "$SLUICE_LOG_DIR/pip.log" >&2; die "python3 -m venv $SLUICE_PY_VENV failed (log: $SLUICE_LOG_DIR/pip.log)"; }
    fi
    for req in "$@"; do
        name="${req%%==*}" want="${req#*==}"
        have="$("$SLUICE_PY_VENV/bin/python" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$name" 2>/dev/null || true)"
        [ "$have" = "$want" ] || missing+=("$req")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        log "python: already installed in $SLUICE_PY_VENV: $*"
        return 0
    fi
    log "python: installing ${missing[*]} into $SLUICE_PY_VENV (log: $SLUICE_LOG_DIR/pip.log)"
    "$SLUICE_PY_VENV/bin/python" -m pip install -q "${missing[@]}" >>"$SLUICE_LOG_DIR/pip.log" 2>&1 \
        || { tail -n 20 "$SLUICE_LOG_DIR/pip.log" >&2; die "pip install ${missing[*]} failed (log: $SLUICE_LOG_DIR/pip.log)"; }
}

# port_open HOST PORT — true if something accepts TCP connections there.
# bash's /dev/tcp needs no extra packages (nc is not installed everywhere).
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

# wait_for_port HOST PORT TIMEOUT_SECS — poll until the port accepts connections.
wait_for_port() {
    local host="$1" port="$2" timeout_s="${3:-30}" deadline
    deadline=$((SECONDS + timeout_s))
    until port_open "$host" "$port"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            return 1
        fi
        sleep 0.5
    done
}

# pid_alive PIDFILE [PATTERN] — true if the pid file names a live process whose
# command line contains PATTERN. The pattern guards against a stale pid file
# (e.g. after a machine restart) whose pid now belongs to something unrelated,
# which we must neither wait on nor kill.
# The command line of a service script (postgres.sh, redis.sh): run its function named by $1,
# one of install, start, stop and status; anything else is a usage error (exit 2).
service_main() {
    case "${1:-}" in
        install | start | stop | status) "$1" ;;
        *) echo "usage: $0 {install|start|stop|status}" >&2; exit 2 ;;
    esac
}

pid_alive() {
    local pid
    [ -s "$1" ] || return 1
    pid="$(cat "$1")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    [ -z "${2:-}" ] || tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2"
}

# stop_pidfile NAME PIDFILE GRACE_SECS PATTERN — SIGTERM, wait, then SIGKILL.
stop_pidfile() {
    local name="$1" pidfile="$2" grace="${3:-30}" pattern="${4:-}" pid deadline
    if ! pid_alive "$pidfile" "$pattern"; then
        log "$name: not running"
        rm -f "$pidfile"
        return 0
    fi
    pid="$(cat "$pidfile")"
    log "$name: stopping pid $pid (SIGTERM, up to ${grace}s)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + grace))
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "$name: still alive after ${grace}s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 1
            break
        fi
        sleep 0.5
    done
    rm -f "$pidfile"
    log "$name: stopped"
}

# --- Kafka locations, shared by kafka.sh and kafka-tool.sh -------------------
# The version is read from the pom so there is a single place to bump it.
KAFKA_POM="$OPS_DIR/kafka/pom.xml"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$KAFKA_POM" | head -n 1)"
[ -n "$KAFKA_VERSION" ] || die "could not read <kafka.version> from $KAFKA_POM"
KAFKA_HOME="$SLUICE_CACHE_DIR/kafka-$KAFKA_VERSION"
KAFKA_LIBS="$KAFKA_HOME/libs"
# The marker holds the pom's checksum: a pom change (e.g. a log4j bump that keeps
# the Kafka version) invalidates the cached jars.
KAFKA_LIBS_MARKER="$KAFKA_HOME/.complete"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_BOOTSTRAP="127.0.0.1:$KAFKA_PORT"

kafka_pom_sum() { sha256sum "$KAFKA_POM" | cut -d' ' -f1; }

kafka_jars_ready() {
    [ -f "$KAFKA_LIBS_MARKER" ] && [ "$(cat "$KAFKA_LIBS_MARKER")" = "$(kafka_pom_sum)" ]
}

# Cargo features the ops scripts build with: DuckDB (the embedded warehouse) in the
# services, the CLI and the integration tests. Its C++ is compiled once per machine into the
# shared target dir; the everyday `cargo build`/`cargo test` without features skips it.
# Every ops script builds with exactly `cargo build --workspace --bins --locked --features
# "$SLUICE_CARGO_FEATURES"`: a different package selection resolves different feature sets and
# would compile DuckDB again.
SLUICE_CARGO_FEATURES="sluice-cli/duckdb,sluice-poller/duckdb,sluice-integration-tests/duckdb"

# Everything a cargo build here needs: installed packages, Kafka/PostgreSQL/Redis
# running, cargo on PATH, and one shared target dir outside the clone (so every
# clone on this machine, CI's included, reuses one build).
prepare_build_env() {
    "$OPS_DIR/deps.sh"
    "$OPS_DIR/services.sh" up
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$SLUICE_CACHE_DIR/target}"
    if ! command -v cargo >/dev/null; then export PATH="${HOME:-/root}/.cargo/bin:$PATH"; fi
}

#!/usr/bin/env bash
# A throwaway PostgreSQL cluster from Debian's packages, on 127.0.0.1, in a project-local data dir.
#
#   deploy/local/postgres.sh start|stop|status|restart|url
#
# Environment:
#   PGPORT          port (default 5432, or the next free one when taken by something else)
#   PG_STATE_DIR    data dir, socket and log (default <repo>/.local/postgres)
#   PG_DATABASE     database created for us (default ttsync)
#   PG_DURABLE      1: fsync, synchronous_commit and full_page_writes on (benchmarks, durability proofs);
#                   0: off, for the test suite's speed. `start` with it set restarts a running cluster whose
#                   mode differs; unset, a running cluster keeps its mode (a new one starts fast), so a
#                   plain `start` never quietly makes a durable cluster unsafe. `status` says which it runs.
#
# `start` installs PostgreSQL with apt when missing, is idempotent, waits until the server accepts
# connections and prints the SQLAlchemy URL as its last line. wal_level=logical so that Debezium can
# read the same cluster.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
STATE_DIR="${PG_STATE_DIR:-$REPO/.local/postgres}"
DATA="$STATE_DIR/data"
DB="${PG_DATABASE:-ttsync}"
PORT_FILE="$STATE_DIR/port"
MODE_FILE="$STATE_DIR/mode"
case "${PG_DURABLE:-}" in
  1) MODE=durable ;;
  0) MODE=fast ;;
  "") MODE="" ;;  # keep what runs; decided in start()
  *) echo "[postgres.sh] PG_DURABLE must be 0 or 1, not '$PG_DURABLE'" >&2; exit 2 ;;
esac
LOG_FILE="$STATE_DIR/postgres.log"

log() { echo "[postgres.sh] $*" >&2; }

bindir() {
  local d
  if command -v pg_config >/dev/null && d="$(pg_config --bindir 2>/dev/null)" && [[ -x "$d/initdb" ]]; then
    echo "$d"; return 0
  fi
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  [[ -n "$d" && -x "$d/initdb" ]] && { echo "$d"; return 0; }
  return 1
}

ensure_installed() {
  if ! BIN="$(bindir)"; then
    log "PostgreSQL not found; installing Debian's postgresql package"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    BIN="$(bindir)" || { log "postgresql installed but initdb not found"; exit 1; }
  fi
}

# PostgreSQL refuses to run as root: run its tools as the postgres user then.
as_pg() {
  if [[ "$(id -u)" == 0 ]]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

is_running() { [[ -f "$DATA/postmaster.pid" ]] && as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

current_port() { cat "$PORT_FILE"; }

url() { echo "postgresql+psycopg://postgres@127.0.0.1:$(current_port)/$DB"; }

pick_port() {
  local port="${PGPORT:-5432}"
  if [[ -z "${PGPORT:-}" ]]; then
    while port_busy "$port"; do port=$((port + 1)); done
  elif port_busy "$port"; then
    log "port $port is taken; unset PGPORT to take the next free one"; exit 1
  fi
  echo "$port"
}

start() {
  ensure_installed
  mkdir -p "$STATE_DIR"
  if [[ "$(id -u)" == 0 ]]; then
    chown postgres "$STATE_DIR"
    # The postgres user must be able to reach the state dir through the repo's parents.
    local d="$STATE_DIR"
    while [[ "$d" != "/" ]]; do chmod o+x "$d" 2>/dev/null || true; d="$(dirname "$d")"; done
  fi
  if [[ -z "$MODE" ]]; then
    MODE=fast
    is_running && MODE="$(cat "$MODE_FILE" 2>/dev/null || echo fast)"
  fi
  if is_running && [[ "$(cat "$MODE_FILE" 2>/dev/null || echo fast)" != "$MODE" ]]; then
    log "running in $(cat "$MODE_FILE" 2>/dev/null || echo fast) mode; restarting it $MODE"
    as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
  fi
  if is_running; then
    log "already running on port $(current_port) from $DATA ($MODE)"
  else
    if [[ ! -f "$DATA/PG_VERSION" ]]; then
      log "initdb in $DATA"
      as_pg "$BIN/initdb" -D "$DATA" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
    fi
    local port
    port="$(pick_port)"
    echo "$port" >"$PORT_FILE"
    local durability="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    [[ "$MODE" == durable ]] && durability="-c fsync=on -c synchronous_commit=on -c full_page_writes=on"
    as_pg "$BIN/pg_ctl" -D "$DATA" -l "$LOG_FILE" -w -t 60 start -o \
      "-c listen_addresses=127.0.0.1 -p $port -k $STATE_DIR -c max_connections=200 \
       -c wal_level=logical -c max_wal_senders=10 -c max_replication_slots=10 \
       $durability -c shared_buffers=128MB" >/dev/null
    echo "$MODE" >"$MODE_FILE"
  fi
  local port
  port="$(current_port)"
  for _ in $(seq 1 60); do
    "$BIN/pg_isready" -q -h 127.0.0.1 -p "$port" && break
    sleep 0.5
  done
  "$BIN/pg_isready" -q -h 127.0.0.1 -p "$port" || { log "server not ready; see $LOG_FILE"; exit 1; }
  if ! as_pg "$BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$DB'" | grep -q 1; then
    as_pg "$BIN/createdb" -h 127.0.0.1 -p "$port" -U postgres "$DB"
  fi
  log "ready on 127.0.0.1:$port, data in $DATA"
  url
}

stop() {
  BIN="$(bindir)" || { log "PostgreSQL not installed"; return 0; }
  if is_running; then
    as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
    log "stopped"
  else
    log "not running from $DATA"
  fi
}

status() {
  BIN="$(bindir)" || { echo "not installed"; return 3; }
  if is_running; then
    echo "running port=$(current_port) mode=$(cat "$MODE_FILE" 2>/dev/null || echo fast) data=$DATA url=$(url)"
  else
    echo "stopped data=$DATA"
    return 3
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  restart) stop; start ;;
  url) url ;;
  *) echo "usage: $0 start|stop|status|restart|url" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Kafka Connect (distributed mode, one worker) with the Debezium PostgreSQL connector, from Maven Central jars,
# relaying ttsync's outbox through Debezium's Outbox Event Router (deploy/debezium/).
#
#   deploy/local/connect.sh start|stop|status|register|unregister
#
# Environment:
#   CONNECT_PORT              REST port on 127.0.0.1 (default 8083)
#   KAFKA_BOOTSTRAP           broker (default 127.0.0.1:9092)
#   CONNECT_GROUP             worker group and prefix of its internal topics (default ttsync-connect-<port>)
#   CONNECT_STATE_DIR         pid file, worker config and log (default <repo>/.local/connect-<port>)
#   TTSYNC_CACHE_DIR          where the jars are cached (default ~/.cache/ttsync); reused when present
#   CONNECT_HEAP_OPTS         JVM heap (default -Xms256m -Xmx512m)
#   TTSYNC_DATABASE_URL       the TimeTracker database holding ttsync_outbox (register)
#   TTSYNC_TOPIC_PREFIX       topics are <prefix>.<aggregate type>, as with `ttsync relay` (default timetracker)
#   DEBEZIUM_SLOT             replication slot and publication name (default ttsync_outbox_<database>)
#   DEBEZIUM_CONNECTOR        connector name (default ttsync-outbox)
#   DEBEZIUM_PUBLICATION_EXISTS  set (to 1) when `ttsync outbox cdc-role` made the publication and the URL is that
#                             least-privilege role's: the connector then makes none
#
# `start` runs the worker (idempotent) and waits for its REST API; `register` puts the outbox connector in
# (idempotent: PUT of its config) and waits until its task runs. `stop` ends only the worker it started.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
POM="$REPO/deploy/debezium/connect-pom.xml"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")"
DEBEZIUM_VERSION="$(sed -n 's:.*<debezium.version>\(.*\)</debezium.version>.*:\1:p' "$POM")"
PORT="${CONNECT_PORT:-8083}"
BOOTSTRAP="${KAFKA_BOOTSTRAP:-127.0.0.1:9092}"
GROUP="${CONNECT_GROUP:-ttsync-connect-$PORT}"
STATE_DIR="${CONNECT_STATE_DIR:-$REPO/.local/connect-$PORT}"
CACHE_DIR="${TTSYNC_CACHE_DIR:-$HOME/.cache/ttsync}"
LIBS="$CACHE_DIR/connect-$KAFKA_VERSION-debezium-$DEBEZIUM_VERSION/libs"
PID_FILE="$STATE_DIR/worker.pid"
LOG_FILE="$STATE_DIR/worker.log"
TIMEOUT="${CONNECT_START_TIMEOUT:-120}"
REST="http://127.0.0.1:$PORT"
CONNECTOR="${DEBEZIUM_CONNECTOR:-ttsync-outbox}"

PROCESS_MARK="ConnectDistributed"

log() { echo "[connect.sh] $*" >&2; }

# shellcheck source=deploy/local/jvm_service.sh
source "$HERE/jvm_service.sh"

write_config() {
  mkdir -p "$STATE_DIR"
  cat >"$STATE_DIR/worker.properties" <<CFG
bootstrap.servers=$BOOTSTRAP
group.id=$GROUP
listeners=http://127.0.0.1:$PORT
rest.advertised.host.name=127.0.0.1
rest.advertised.port=$PORT
config.storage.topic=$GROUP-configs
offset.storage.topic=$GROUP-offsets
status.storage.topic=$GROUP-status
config.storage.replication.factor=1
offset.storage.replication.factor=1
status.storage.replication.factor=1
offset.storage.partitions=1
status.storage.partitions=1
# The outbox row's payload column is already the event envelope (JSON text) and its aggregateid the key: both
# go to Kafka as they are, byte for byte what 'ttsync relay' sends.
key.converter=org.apache.kafka.connect.storage.StringConverter
value.converter=org.apache.kafka.connect.storage.StringConverter
header.converter=org.apache.kafka.connect.storage.StringConverter
offset.flush.interval.ms=1000
producer.max.request.size=8388608
producer.enable.idempotence=true
producer.acks=all
plugin.discovery=only_scan
# Secrets stay out of the REST API and the config topic: the connector names a file (FileConfigProvider).
config.providers=file
config.providers.file.class=org.apache.kafka.common.config.provider.FileConfigProvider
CFG
}

rest_up() { python3 - "$REST" <<'PY' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/connectors", timeout=3).read()
PY
}

start() {
  local pid
  if pid="$(jvm_running_pid)"; then
    log "worker already running (pid $pid) from $STATE_DIR"
    echo "$REST"
    return 0
  fi
  jvm_fetch_jars
  write_config
  local started=$SECONDS
  # shellcheck disable=SC2086
  setsid nohup java ${CONNECT_HEAP_OPTS:--Xms256m -Xmx512m} -XX:+UseG1GC -Djava.awt.headless=true \
    -Dorg.slf4j.simpleLogger.defaultLogLevel=info -Dorg.slf4j.simpleLogger.showDateTime=true \
    -Dorg.slf4j.simpleLogger.log.org.apache.kafka.clients=warn \
    -Dorg.slf4j.simpleLogger.log.org.reflections=error \
    -cp "$LIBS/*" org.apache.kafka.connect.cli.ConnectDistributed "$STATE_DIR/worker.properties" \
    >>"$LOG_FILE" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$PID_FILE"
  local deadline=$((SECONDS + TIMEOUT))
  until rest_up; do
    if ! kill -0 "$pid" 2>/dev/null || ((SECONDS > deadline)); then
      log "worker did not come up; last log lines:"; tail -n 40 "$LOG_FILE" >&2 || true
      kill "$pid" 2>/dev/null || true
      rm -f "$PID_FILE"
      exit 1
    fi
    sleep 1
  done
  log "worker pid $pid ready in $((SECONDS - started))s; log: $LOG_FILE"
  echo "$REST"
}

register() {
  rest_up || { log "no worker answers on $REST (run: $0 start)"; exit 1; }
  : "${TTSYNC_DATABASE_URL:?TTSYNC_DATABASE_URL is not set}"  # read from the environment, never an argument
  python3 "$REPO/deploy/debezium/register.py" --rest "$REST" --name "$CONNECTOR" \
    --secrets-dir "$STATE_DIR" --topic-prefix "${TTSYNC_TOPIC_PREFIX:-timetracker}" ${DEBEZIUM_SLOT:+--slot "$DEBEZIUM_SLOT"} \
    ${DEBEZIUM_PUBLICATION_EXISTS:+--publication-exists}
}

unregister() {
  python3 - "$REST" "$CONNECTOR" <<'PY'
import sys, urllib.error, urllib.request
req = urllib.request.Request(f"{sys.argv[1]}/connectors/{sys.argv[2]}", method="DELETE")
try:
    urllib.request.urlopen(req, timeout=10)
    print(f"connector {sys.argv[2]} removed")
except urllib.error.HTTPError as exc:
    if exc.code != 404:
        raise
    print(f"no connector {sys.argv[2]}")
PY
}

stop() { jvm_stop worker; }

status() { jvm_status "rest=$REST state=$STATE_DIR"; }

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  register) register ;;
  unregister) unregister ;;
  restart) stop; start ;;
  *) echo "usage: $0 start|stop|status|register|unregister|restart" >&2; exit 2 ;;
esac

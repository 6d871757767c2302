#!/usr/bin/env bash
# A real Apache Kafka 4.x broker (single node, KRaft, combined broker+controller) from Maven Central jars.
#
#   deploy/local/kafka.sh start|stop|status|restart
#
# Environment:
#   KAFKA_PORT             client port (default 9092); the controller listens on KAFKA_CONTROLLER_PORT
#                          (default KAFKA_PORT+1). Both bind 127.0.0.1 only.
#   KAFKA_STATE_DIR        pid file, config, data and log (default <repo>/.local/kafka-<port>)
#   TTSYNC_CACHE_DIR       where the jars are cached (default ~/.cache/ttsync); reused when present
#   KAFKA_HEAP_OPTS        JVM heap (default -Xms256m -Xmx512m)
#   KAFKA_START_TIMEOUT    seconds to wait for the broker to answer metadata (default 90)
#
# `start` is idempotent: a broker already running from this state dir is reused, never doubled. Its last
# line of output is the bootstrap address. `stop` ends only the broker whose pid this state dir recorded.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/kafka-pom.xml")"
PORT="${KAFKA_PORT:-9092}"
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
STATE_DIR="${KAFKA_STATE_DIR:-$REPO/.local/kafka-$PORT}"
CACHE_DIR="${TTSYNC_CACHE_DIR:-$HOME/.cache/ttsync}"
LIBS="$CACHE_DIR/kafka-$KAFKA_VERSION/libs"
PID_FILE="$STATE_DIR/broker.pid"
LOG_FILE="$STATE_DIR/broker.log"
TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
BOOTSTRAP="127.0.0.1:$PORT"

POM="$HERE/kafka-pom.xml"
PROCESS_MARK="kafka.Kafka"

log() { echo "[kafka.sh] $*" >&2; }

# shellcheck source=deploy/local/jvm_service.sh
source "$HERE/jvm_service.sh"

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

write_config() {
  mkdir -p "$STATE_DIR/data"
  cat >"$STATE_DIR/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$STATE_DIR/data
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Our envelopes carry whole invoices; allow records up to 8 MiB.
message.max.bytes=8388608
replica.fetch.max.bytes=8388608
log.retention.hours=168
log.segment.bytes=104857600
EOF
}

wait_ready() {
  local deadline=$((SECONDS + TIMEOUT)) pid=$1
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "broker exited during start-up; last log lines:"; tail -n 30 "$LOG_FILE" >&2 || true
      return 1
    fi
    if port_busy "$PORT" && python3 "$HERE/wait_kafka.py" "$BOOTSTRAP" 5 >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.5
  done
  log "broker did not answer metadata within ${TIMEOUT}s; last log lines:"; tail -n 30 "$LOG_FILE" >&2 || true
  return 1
}

start() {
  local pid
  if pid="$(jvm_running_pid)"; then
    log "broker already running (pid $pid) from $STATE_DIR"
    wait_ready "$pid"
    echo "$BOOTSTRAP"
    return 0
  fi
  if port_busy "$PORT" || port_busy "$CONTROLLER_PORT"; then
    log "port $PORT or $CONTROLLER_PORT is taken by another process; set KAFKA_PORT to a free port"
    exit 1
  fi
  jvm_fetch_jars
  mkdir -p "$STATE_DIR"
  if [[ ! -f "$STATE_DIR/data/meta.properties" ]]; then
    write_config
    local cluster_id
    # Kafka's own Uuid.randomUuid() redraws ids that start with "-": the storage tool would read one as an option.
    cluster_id="$(python3 -c '
import base64, uuid
while True:
    cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    if not cid.startswith("-"):
        print(cid)
        break
')"
    log "formatting storage in $STATE_DIR/data (cluster id $cluster_id)"
    java -cp "$LIBS/*" kafka.tools.StorageTool format -t "$cluster_id" -c "$STATE_DIR/server.properties" \
      >>"$LOG_FILE" 2>&1
  fi
  local started=$SECONDS
  # setsid: the broker must outlive this script and the shell that called it.
  # shellcheck disable=SC2086
  setsid nohup java ${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m} -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true -Dorg.slf4j.simpleLogger.defaultLogLevel=info \
    -Dorg.slf4j.simpleLogger.showDateTime=true \
    -Dorg.slf4j.simpleLogger.log.kafka.server.KafkaApis=warn \
    -Dorg.slf4j.simpleLogger.log.org.apache.kafka.clients=warn \
    -cp "$LIBS/*" kafka.Kafka "$STATE_DIR/server.properties" >>"$LOG_FILE" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$PID_FILE"
  if ! wait_ready "$pid"; then
    kill "$pid" 2>/dev/null || true
    rm -f "$PID_FILE"
    exit 1
  fi
  log "broker pid $pid ready in $((SECONDS - started))s; log: $LOG_FILE"
  echo "$BOOTSTRAP"
}

stop() { jvm_stop broker; }

status() { jvm_status "bootstrap=$BOOTSTRAP state=$STATE_DIR"; }

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  restart) stop; start ;;
  *) echo "usage: $0 start|stop|status|restart" >&2; exit 2 ;;
esac

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
#   KAFKA_SECURITY         plaintext (default) or sasl_ssl: the client port then speaks SASL_SSL only (TLS from
#                          a CA made here with openssl, SCRAM-SHA-512 users made by Kafka's StorageTool), the
#                          controller port SASL_PLAINTEXT, and ACLs are enforced (StandardAuthorizer, nothing
#                          allowed without an ACL). Users: admin (super user), ttsync-relay and ttsync-consumer with
#                          the ACLs of schemas.kafka_client.principal_acls for KAFKA_ACL_PREFIX (default
#                          timetracker), KAFKA_ACL_GROUP (ttsync-qbo) and KAFKA_ACL_RETRY_DELAYS (10,60,300).
#                          Each user's client settings are written to <state dir>/<user>.env (mode 0600, the
#                          TTSYNC_KAFKA_* variables), the CA to <state dir>/tls/ca.pem.
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
SECURITY="${KAFKA_SECURITY:-plaintext}"
case "$SECURITY" in
  plaintext) ;;
  sasl_ssl) STATE_DIR="${KAFKA_STATE_DIR:-$REPO/.local/kafka-sasl-$PORT}"; PID_FILE="$STATE_DIR/broker.pid"
            LOG_FILE="$STATE_DIR/broker.log" ;;
  *) echo "[kafka.sh] KAFKA_SECURITY must be plaintext or sasl_ssl, not $SECURITY" >&2; exit 2 ;;
esac
TLS_DIR="$STATE_DIR/tls"
SASL_USERS=(admin ttsync-relay ttsync-consumer)

POM="$HERE/kafka-pom.xml"
PROCESS_MARK="kafka.Kafka"

log() { echo "[kafka.sh] $*" >&2; }

# shellcheck source=deploy/local/jvm_service.sh
source "$HERE/jvm_service.sh"

client_env() {
  # Runs "$2..." with the TTSYNC_KAFKA_* settings of user $1 (plaintext: none needed).
  local user="$1"; shift
  if [[ "$SECURITY" == plaintext ]]; then "$@"; return; fi
  # shellcheck disable=SC2046 # one VAR=value word per line of the settings file, none with spaces
  env $(grep -v '^#' "$STATE_DIR/$user.env") "$@"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

password_of() { sed -n "s/^TTSYNC_KAFKA_SASL_PASSWORD=//p" "$STATE_DIR/$1.env"; }

make_tls_and_users() {
  # A CA of this broker only, a broker key signed by it for 127.0.0.1/localhost (clients check the host name),
  # a PKCS12 keystore, and one random SCRAM password per user in its client settings file.
  mkdir -p "$TLS_DIR" && chmod 700 "$STATE_DIR" "$TLS_DIR"
  local store_pass
  store_pass="$(openssl rand -hex 24)"
  echo "$store_pass" >"$TLS_DIR/keystore.pass"
  openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=ttsync local Kafka CA" \
    -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$TLS_DIR/broker.key" \
    -out "$TLS_DIR/broker.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$TLS_DIR/san.ext"
  openssl x509 -req -in "$TLS_DIR/broker.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" -CAcreateserial \
    -days 825 -extfile "$TLS_DIR/san.ext" -out "$TLS_DIR/broker.pem" 2>/dev/null
  openssl pkcs12 -export -in "$TLS_DIR/broker.pem" -inkey "$TLS_DIR/broker.key" -certfile "$TLS_DIR/ca.pem" \
    -name broker -passout "pass:$store_pass" -out "$TLS_DIR/broker.p12"
  rm -f "$TLS_DIR/broker.csr" "$TLS_DIR/ca.key"  # nothing else is ever signed by this CA
  chmod 600 "$TLS_DIR"/*
  local user
  for user in "${SASL_USERS[@]}"; do
    (umask 077; cat >"$STATE_DIR/$user.env" <<EOF
TTSYNC_KAFKA_BOOTSTRAP_SERVERS=$BOOTSTRAP
TTSYNC_KAFKA_SECURITY_PROTOCOL=SASL_SSL
TTSYNC_KAFKA_SASL_MECHANISM=SCRAM-SHA-512
TTSYNC_KAFKA_SASL_USERNAME=$user
TTSYNC_KAFKA_SASL_PASSWORD=$(openssl rand -hex 24)
TTSYNC_KAFKA_SSL_CAFILE=$TLS_DIR/ca.pem
EOF
)
  done
}

listener_config() {
  if [[ "$SECURITY" == plaintext ]]; then
    cat <<EOF
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
EOF
    return
  fi
  local admin_pass
  admin_pass="$(password_of admin)"
  # The controller speaks SASL_PLAINTEXT with PLAIN (SCRAM cannot authenticate controllers: KIP-900), so no
  # unauthenticated principal needs to be a super user.
  cat <<EOF
listeners=SASL_SSL://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=SASL_SSL://127.0.0.1:$PORT
inter.broker.listener.name=SASL_SSL
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
sasl.mechanism.controller.protocol=PLAIN
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin_pass";
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="$admin_pass" user_admin="$admin_pass";
ssl.keystore.type=PKCS12
ssl.keystore.location=$TLS_DIR/broker.p12
ssl.keystore.password=$(cat "$TLS_DIR/keystore.pass")
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem
ssl.endpoint.identification.algorithm=https
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:admin
EOF
}

write_config() {
  mkdir -p "$STATE_DIR/data"
  cat >"$STATE_DIR/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
$(listener_config)
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
    if port_busy "$PORT" && client_env admin python3 "$HERE/wait_kafka.py" "$BOOTSTRAP" 5 >/dev/null 2>&1; then
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
    local scram=()
    if [[ "$SECURITY" == sasl_ssl ]]; then
      make_tls_and_users
      local user
      for user in "${SASL_USERS[@]}"; do
        scram+=(--add-scram "SCRAM-SHA-512=[name=$user,password=$(password_of "$user")]")
      done
    fi
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
      "${scram[@]}" >>"$LOG_FILE" 2>&1
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
  if [[ "$SECURITY" == sasl_ssl ]]; then
    client_env admin python3 "$HERE/kafka_acls.py" --relay ttsync-relay --consumer ttsync-consumer \
      --prefix "${KAFKA_ACL_PREFIX:-timetracker}" --group "${KAFKA_ACL_GROUP:-ttsync-qbo}" \
      --retry-delays "${KAFKA_ACL_RETRY_DELAYS:-10,60,300}" >&2
    log "SASL_SSL with ACLs; client settings per user: $STATE_DIR/{admin,ttsync-relay,ttsync-consumer}.env"
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

#!/usr/bin/env bash
# A real Apache Kafka 4.x cluster (KRaft, each node a combined broker+controller) from Maven Central jars: one
# node by default, or KAFKA_NODES of them in one quorum.
#
#   deploy/local/kafka.sh start|stop|status|restart
#
# Environment:
#   KAFKA_PORT             client port (default 9092); the controller listens on KAFKA_CONTROLLER_PORT
#                          (default KAFKA_PORT+1). Both bind 127.0.0.1 only.
#   KAFKA_NODES            nodes in the cluster (default 1). With N > 1, node i (1..N) listens on
#                          KAFKA_PORT+2(i-1) for clients and the next port for its controller; all N are voters of
#                          one controller quorum and share one cluster id; Kafka's internal topics get replication
#                          factor min(N,3), and every topic min.insync.replicas min(N,3)-1 (or 1) unless it
#                          sets its own; unclean leader election is off; each node keeps its pid file,
#                          config, data and log in <state dir>/node-<i>. Plaintext only.
#   KAFKA_NODE             with KAFKA_NODES > 1: act on node i only (start, stop, status, restart), e.g. to bring
#                          back a node a test killed. Without it every node is acted on.
#   KAFKA_STATE_DIR        pid file, config, data and log (default <repo>/.local/kafka-<port>, or
#                          <repo>/.local/kafka-<port>-x<N> for N nodes)
#   TTSYNC_CACHE_DIR       where the jars are cached (default ~/.cache/ttsync); reused when present
#   KAFKA_HEAP_OPTS        JVM heap per node (default -Xms256m -Xmx1g: the test suite leaves over 15,000
#                          partitions on its broker, where 512 MiB ran out of heap)
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
# line of output is the bootstrap address (every node's, comma-separated). `stop` ends only the brokers whose
# pids this state dir recorded.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/kafka-pom.xml")"
BASE_PORT="${KAFKA_PORT:-9092}"
NODES="${KAFKA_NODES:-1}"
ONLY_NODE="${KAFKA_NODE:-}"
CACHE_DIR="${TTSYNC_CACHE_DIR:-$HOME/.cache/ttsync}"
LIBS="$CACHE_DIR/kafka-$KAFKA_VERSION/libs"
TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
SECURITY="${KAFKA_SECURITY:-plaintext}"
if ! [[ "$NODES" =~ ^[1-9]$ ]]; then
  echo "[kafka.sh] KAFKA_NODES must be 1 to 9, not $NODES" >&2; exit 2
fi
if [[ -n "$ONLY_NODE" ]] && ! { [[ "$ONLY_NODE" =~ ^[1-9]$ ]] && ((ONLY_NODE <= NODES)); }; then
  echo "[kafka.sh] KAFKA_NODE must be a node of 1..$NODES, not $ONLY_NODE" >&2; exit 2
fi
case "$SECURITY" in
  plaintext) STATE_DIR="${KAFKA_STATE_DIR:-$REPO/.local/kafka-$BASE_PORT}" ;;
  sasl_ssl) STATE_DIR="${KAFKA_STATE_DIR:-$REPO/.local/kafka-sasl-$BASE_PORT}"
            if ((NODES > 1)); then echo "[kafka.sh] KAFKA_SECURITY=sasl_ssl runs one node only" >&2; exit 2; fi ;;
  *) echo "[kafka.sh] KAFKA_SECURITY must be plaintext or sasl_ssl, not $SECURITY" >&2; exit 2 ;;
esac
if ((NODES > 1)); then STATE_DIR="${KAFKA_STATE_DIR:-$STATE_DIR-x$NODES}"; fi
TLS_DIR="$STATE_DIR/tls"
# Internal topics (offsets, transactions) replicated to up to three nodes, writable with one of them down.
INTERNAL_RF=$((NODES < 3 ? NODES : 3))
INTERNAL_MIN_ISR=$((INTERNAL_RF > 1 ? INTERNAL_RF - 1 : 1))

node_port() { echo $((BASE_PORT + 2 * ($1 - 1))); }
node_controller_port() {
  if ((NODES == 1)); then echo "${KAFKA_CONTROLLER_PORT:-$((BASE_PORT + 1))}"; else echo $(($(node_port "$1") + 1)); fi
}
node_dir() { if ((NODES == 1)); then echo "$STATE_DIR"; else echo "$STATE_DIR/node-$1"; fi; }

select_node() {
  # Points the per-node globals (and jvm_service.sh's PID_FILE) at node $1.
  NODE_ID="$1"
  PORT="$(node_port "$1")"
  CONTROLLER_PORT="$(node_controller_port "$1")"
  NODE_DIR="$(node_dir "$1")"
  PID_FILE="$NODE_DIR/broker.pid"
  LOG_FILE="$NODE_DIR/broker.log"
}

all_nodes() { seq 1 "$NODES"; }
acted_nodes() { if [[ -n "$ONLY_NODE" ]]; then echo "$ONLY_NODE"; else all_nodes; fi; }

bootstrap_list() {
  local i out=()
  for i in $(all_nodes); do out+=("127.0.0.1:$(node_port "$i")"); done
  (IFS=,; echo "${out[*]}")
}
BOOTSTRAP="$(bootstrap_list)"

quorum_voters() {
  local i out=()
  for i in $(all_nodes); do out+=("$i@127.0.0.1:$(node_controller_port "$i")"); done
  (IFS=,; echo "${out[*]}")
}
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
  # The selected node's server.properties.
  mkdir -p "$NODE_DIR/data"
  cat >"$NODE_DIR/server.properties" <<EOF
process.roles=broker,controller
node.id=$NODE_ID
controller.quorum.voters=$(quorum_voters)
$(listener_config)
log.dirs=$NODE_DIR/data
num.partitions=1
default.replication.factor=$INTERNAL_RF
auto.create.topics.enable=true
unclean.leader.election.enable=false
min.insync.replicas=$INTERNAL_MIN_ISR
offsets.topic.replication.factor=$INTERNAL_RF
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=$INTERNAL_RF
transaction.state.log.min.isr=$INTERNAL_MIN_ISR
share.coordinator.state.topic.replication.factor=$INTERNAL_RF
share.coordinator.state.topic.min.isr=$INTERNAL_MIN_ISR
group.initial.rebalance.delay.ms=0
# Our envelopes carry whole invoices; allow records up to 8 MiB.
message.max.bytes=8388608
replica.fetch.max.bytes=8388608
log.retention.hours=168
log.segment.bytes=104857600
EOF
}

wait_ready() {
  # Until the selected node, pid $1, answers a metadata request (it has joined its quorum).
  local deadline=$((SECONDS + TIMEOUT)) pid=$1
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "node $NODE_ID exited during start-up; last log lines:"; tail -n 30 "$LOG_FILE" >&2 || true
      return 1
    fi
    if port_busy "$PORT" && client_env admin python3 "$HERE/wait_kafka.py" "127.0.0.1:$PORT" 5 >/dev/null 2>&1
    then
      return 0
    fi
    sleep 0.5
  done
  log "node $NODE_ID did not answer metadata within ${TIMEOUT}s; last log lines:"
  tail -n 30 "$LOG_FILE" >&2 || true
  return 1
}

cluster_id() {
  # One id for every node of this state dir, drawn once. Kafka's own Uuid.randomUuid() redraws ids that start
  # with "-": the storage tool would read one as an option.
  local file="$STATE_DIR/cluster.id"
  if [[ ! -s "$file" ]]; then
    python3 -c '
import base64, uuid
while True:
    cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    if not cid.startswith("-"):
        print(cid)
        break
' >"$file"
  fi
  cat "$file"
}

format_node() {
  # Writes the selected node's config and formats its storage on first start.
  [[ -f "$NODE_DIR/data/meta.properties" ]] && return 0
  local scram=()
  if [[ "$SECURITY" == sasl_ssl ]]; then
    make_tls_and_users
    local user
    for user in "${SASL_USERS[@]}"; do
      scram+=(--add-scram "SCRAM-SHA-512=[name=$user,password=$(password_of "$user")]")
    done
  fi
  write_config
  local cid
  cid="$(cluster_id)"
  log "formatting storage of node $NODE_ID in $NODE_DIR/data (cluster id $cid)"
  java -cp "$LIBS/*" kafka.tools.StorageTool format -t "$cid" -c "$NODE_DIR/server.properties" \
    "${scram[@]}" >>"$LOG_FILE" 2>&1
}

launch_node() {
  # Starts the selected node's JVM detached and records its pid.
  # setsid: the broker must outlive this script and the shell that called it.
  # shellcheck disable=SC2086
  setsid nohup java ${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g} -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true -Dorg.slf4j.simpleLogger.defaultLogLevel=info \
    -Dorg.slf4j.simpleLogger.showDateTime=true \
    -Dorg.slf4j.simpleLogger.log.kafka.server.KafkaApis=warn \
    -Dorg.slf4j.simpleLogger.log.org.apache.kafka.clients=warn \
    -cp "$LIBS/*" kafka.Kafka "$NODE_DIR/server.properties" >>"$LOG_FILE" 2>&1 </dev/null &
  echo "$!" >"$PID_FILE"
}

start() {
  local i pid started=$SECONDS launched=() failed=0
  mkdir -p "$STATE_DIR"
  # Every node is launched before any is waited for: a node answers only once a majority of the quorum runs.
  for i in $(acted_nodes); do
    select_node "$i"
    if pid="$(jvm_running_pid)"; then
      log "node $i already running (pid $pid) from $NODE_DIR"
      continue
    fi
    if port_busy "$PORT" || port_busy "$CONTROLLER_PORT"; then
      log "port $PORT or $CONTROLLER_PORT is taken by another process; set KAFKA_PORT to a free port"
      exit 1
    fi
    jvm_fetch_jars
    mkdir -p "$NODE_DIR"
    format_node
    launch_node
    launched+=("$i")
  done
  for i in $(acted_nodes); do
    select_node "$i"
    pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    if [[ -z "$pid" ]] || ! wait_ready "$pid"; then failed=1; break; fi
  done
  if ((failed)); then
    for i in "${launched[@]}"; do
      select_node "$i"
      kill "$(cat "$PID_FILE")" 2>/dev/null || true
      rm -f "$PID_FILE"
    done
    exit 1
  fi
  if [[ "$SECURITY" == sasl_ssl && ${#launched[@]} -gt 0 ]]; then
    client_env admin python3 "$HERE/kafka_acls.py" --relay ttsync-relay --consumer ttsync-consumer \
      --prefix "${KAFKA_ACL_PREFIX:-timetracker}" --group "${KAFKA_ACL_GROUP:-ttsync-qbo}" \
      --retry-delays "${KAFKA_ACL_RETRY_DELAYS:-10,60,300}" >&2
    log "SASL_SSL with ACLs; client settings per user: $STATE_DIR/{admin,ttsync-relay,ttsync-consumer}.env"
  fi
  if ((${#launched[@]})); then
    log "node(s) ${launched[*]} of $NODES ready in $((SECONDS - started))s; logs: $(node_dir "${launched[0]}")/broker.log"
  fi
  echo "$BOOTSTRAP"
}

stop() {
  # All at once: stopped one after the other, the last nodes wait for a controller quorum that has gone, and a
  # clean shutdown then needs jvm_stop's SIGKILL after 30 s.
  local i
  for i in $(acted_nodes); do
    (select_node "$i"; jvm_stop "node $i") &
  done
  wait
}

status() {
  local i code=0
  for i in $(acted_nodes); do
    select_node "$i"
    jvm_status "node=$i bootstrap=127.0.0.1:$PORT state=$NODE_DIR" || code=3
  done
  return "$code"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  restart) stop; start ;;
  *) echo "usage: $0 start|stop|status|restart" >&2; exit 2 ;;
esac

# Shared by kafka.sh and connect.sh (sourced, not run): a Java service from Maven Central jars, started
# detached, recorded in a pid file, stopped by that pid only.
#
# The caller sets: PID_FILE, LIBS (jar cache dir), POM (the pom listing the jars), PROCESS_MARK (a string of
# the java command line that tells our process from a recycled pid), and defines log().

jvm_running_pid() {
  # Prints the recorded pid when that process is alive and is ours (not a recycled pid).
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(cat "$PID_FILE")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  grep -q "$PROCESS_MARK" "/proc/$pid/cmdline" 2>/dev/null || return 1
  echo "$pid"
}

jvm_fetch_jars() {
  # Downloads the pom's runtime jars once into LIBS (reused while LIBS/.complete exists).
  if [[ -f "$LIBS/.complete" ]]; then return 0; fi
  command -v java >/dev/null || { log "java not found (install openjdk-17-jre-headless)"; exit 1; }
  if ! command -v mvn >/dev/null; then
    log "maven not found; installing it with apt"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq maven >/dev/null
  fi
  log "fetching the jars of $(basename "$POM") from Maven Central into $LIBS"
  rm -rf "$LIBS" && mkdir -p "$LIBS"
  mvn -q -B -f "$POM" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$LIBS" >&2
  touch "$LIBS/.complete"
}

jvm_stop() {
  # SIGTERM, up to 30 s for a clean shutdown, then SIGKILL. $1 names the service in messages.
  local pid what="$1"
  if ! pid="$(jvm_running_pid)"; then
    log "no $what running (pid file $PID_FILE)"
    rm -f "$PID_FILE"
    return 0
  fi
  kill -TERM "$pid"
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$what $pid ignored SIGTERM for 30s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PID_FILE"
  log "$what $pid stopped"
}

jvm_status() {
  # $1: what to print after the state (running pid=..., or stopped).
  local pid
  if pid="$(jvm_running_pid)"; then
    echo "running pid=$pid $1"
  else
    echo "stopped $1"
    return 3
  fi
}

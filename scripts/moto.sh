#!/usr/bin/env bash
# Runs a moto AWS emulator (SQS, DynamoDB, S3, CloudFormation, IAM, ...) on loopback for tests.
#
#   scripts/moto.sh start   start moto_server on a free 127.0.0.1 port in the background, wait until
#                           it answers, write the endpoint to .tools/moto/endpoint and print
#                           `export ATLAS_TEST_MOTO_ENDPOINT=http://127.0.0.1:PORT` (eval it)
#   scripts/moto.sh stop    stop the server started by `start` (by its recorded pid only)
#   scripts/moto.sh status  print the endpoint and exit 0 when the recorded server answers
#
# Needs .venv from scripts/install-tools.sh. State lives in .tools/moto/ (git-ignored); the server's
# output goes to .tools/moto/server.log. Running `start` twice reuses a server that still answers.
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=.tools/moto
PY=.venv/bin/python
SERVER=.venv/bin/moto_server

log() { printf '[moto] %s\n' "$*" >&2; }

answers() { # url -> 0 when moto answers (its dashboard page: cheap, unlike data.json)
  "$PY" - "$1" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1] + "/moto-api/", timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

recorded_alive() {
  [ -f "$STATE/pid" ] && [ -f "$STATE/endpoint" ] || return 1
  kill -0 "$(cat "$STATE/pid")" 2>/dev/null || return 1
  answers "$(cat "$STATE/endpoint")"
}

free_port() {
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start() {
  [ -x "$SERVER" ] || { log "moto_server missing: run scripts/install-tools.sh"; exit 1; }
  mkdir -p "$STATE"
  if recorded_alive; then
    log "reusing moto at $(cat "$STATE/endpoint") (pid $(cat "$STATE/pid"))"
    echo "export ATLAS_TEST_MOTO_ENDPOINT=$(cat "$STATE/endpoint")"
    return 0
  fi
  local attempt port pid url i
  for attempt in 1 2 3; do
    port=$(free_port)
    url="http://127.0.0.1:$port"
    # setsid: its own process group, so `stop` ends it and its children without touching anyone else.
    # scripts/moto_server.py: moto's own server with DynamoDB writes made atomic (see its docstring).
    setsid "$PY" scripts/moto_server.py -H 127.0.0.1 -p "$port" >"$STATE/server.log" 2>&1 </dev/null &
    pid=$!
    for i in $(seq 1 100); do
      if answers "$url"; then
        echo "$pid" >"$STATE/pid"
        echo "$url" >"$STATE/endpoint"
        log "moto listening at $url (pid $pid)"
        echo "export ATLAS_TEST_MOTO_ENDPOINT=$url"
        return 0
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    log "attempt $attempt: moto did not answer on port $port; see $STATE/server.log"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  tail -20 "$STATE/server.log" >&2 || true
  exit 1
}

stop() {
  if [ -f "$STATE/pid" ]; then
    local pid
    pid=$(cat "$STATE/pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 -- "-$pid" 2>/dev/null || true
      log "stopped moto (pid $pid)"
    fi
  fi
  rm -f "$STATE/pid" "$STATE/endpoint"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status)
    if recorded_alive; then cat "$STATE/endpoint"; else log "not running"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac

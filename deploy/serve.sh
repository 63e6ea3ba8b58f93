#!/usr/bin/env bash
# A local production setup in one command, and its undo (`make serve`, `make stop`).
#
#   deploy/serve.sh start   a Prefect server (SQLite, home in .prefect-local/, 127.0.0.1 on
#                           $PREFECT_PORT or a free port), the work pool, `prefect deploy --all`,
#                           a process worker; all in the background, each in its own process
#                           group, recorded in .prefect-local/pids
#   deploy/serve.sh stop    stops exactly those process groups; safe to run twice
#   deploy/serve.sh status  what is recorded and whether it still runs
#
# Nothing here reads or changes ~/.prefect: PREFECT_HOME is .prefect-local/ for every command.
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$ROOT/.prefect-local"
PIDS="$STATE/pids"   # lines "NAME PID"; each PID leads its own process group
ENVFILE="$STATE/env" # the exports a shell needs to talk to this server
BIN="$ROOT/.venv/bin"
POOL="master-process"

alive() { kill -0 -- "-$1" 2>/dev/null; } # does process group $1 still have a member?

ours() { # is group $1 still what we started (a prefect process), not a recycled pid?
  local pid
  for pid in $(pgrep -g "$1" 2>/dev/null); do
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q prefect && return 0
  done
  return 1
}

stop() {
  if [[ ! -s "$PIDS" ]]; then
    echo "nothing to stop (no $PIDS)"
    return 0
  fi
  local name pid waited
  # the worker first (it cancels its flow runs), the server last
  tac "$PIDS" | while read -r name pid; do
    if ! alive "$pid"; then
      echo "$name ($pid) already stopped"
      continue
    fi
    if ! ours "$pid"; then
      echo "$name ($pid): process group no longer runs prefect, left alone"
      continue
    fi
    kill -TERM -- "-$pid" 2>/dev/null || true
    for ((waited = 0; waited < 20; waited++)); do
      alive "$pid" || break
      sleep 1
    done
    if alive "$pid"; then
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    echo "stopped $name ($pid)"
  done
  rm -f "$PIDS" "$ENVFILE"
}

status() {
  if [[ ! -s "$PIDS" ]]; then
    echo "not running"
    return 0
  fi
  local name pid
  while read -r name pid; do
    if alive "$pid"; then echo "$name ($pid) running"; else echo "$name ($pid) stopped"; fi
  done <"$PIDS"
  cat "$ENVFILE" 2>/dev/null || true
}

free_port() {
  "$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

launch() { # NAME LOGFILE COMMAND...: run in the background in a new process group, record it
  local name="$1" log="$2"
  shift 2
  setsid "$@" >"$log" 2>&1 </dev/null &
  echo "$name $!" >>"$PIDS"
}

start() {
  if [[ -s "$PIDS" ]]; then
    echo "already started (see $PIDS); run \`make stop\` first" >&2
    status
    exit 1
  fi
  mkdir -p "$STATE/logs"
  echo '*' >"$STATE/.gitignore" # the folder ignores itself

  local port="${PREFECT_PORT:-}"
  [[ -n "$port" ]] || port="$(free_port)"
  export PREFECT_HOME="$STATE"
  export PREFECT_API_URL="http://127.0.0.1:$port/api"
  export PREFECT_API_DATABASE_CONNECTION_URL="sqlite+aiosqlite:///$STATE/prefect.db"
  export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
  export MASTER_PROJECT_DIR="$ROOT" # the deployments' pull step: flows run from this folder
  : >"$PIDS"
  trap 'echo "start failed; logs in $STATE/logs" >&2; stop' ERR

  # The server's only outbound call is for Prefect's integration catalogue, which has a bundled
  # copy: a dead proxy keeps it offline (loopback is exempt).
  launch server "$STATE/logs/server.log" env HTTPS_PROXY=http://127.0.0.1:9 \
    HTTP_PROXY=http://127.0.0.1:9 NO_PROXY=127.0.0.1,localhost \
    "$BIN/prefect" server start --host 127.0.0.1 --port "$port"
  echo -n "waiting for the server on port $port "
  for ((i = 0; i < 120; i++)); do
    curl -fsS "$PREFECT_API_URL/health" >/dev/null 2>&1 && break
    alive "$(awk '$1 == "server" {print $2}' "$PIDS")" || {
      echo
      tail -n 20 "$STATE/logs/server.log" >&2
      false
    }
    echo -n .
    sleep 1
  done
  curl -fsS "$PREFECT_API_URL/health" >/dev/null
  echo " up"

  "$BIN/prefect" work-pool inspect "$POOL" >/dev/null 2>&1 ||
    "$BIN/prefect" work-pool create "$POOL" --type process
  (cd "$ROOT" && "$BIN/prefect" --no-prompt deploy --all)
  launch worker "$STATE/logs/worker.log" \
    "$BIN/prefect" worker start --pool "$POOL" --name master-local --install-policy never
  trap - ERR

  cat >"$ENVFILE" <<EOF
export PREFECT_API_URL=$PREFECT_API_URL
export PREFECT_HOME=$STATE
EOF
  cat <<EOF

Prefect is serving MASTER (pids in $PIDS, logs in $STATE/logs/):
  UI:      http://127.0.0.1:$port
  In your shell:
    export PREFECT_API_URL=$PREFECT_API_URL      (or: source $ENVFILE)
  Run now:
    $BIN/prefect deployment run 'augment/adhoc' --param sample=6
  (the nightly run 'augment/nightly' is scheduled for 02:00 UTC)
  Stop everything:
    make stop
EOF
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac

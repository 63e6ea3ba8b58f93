#!/usr/bin/env bash
# A local production setup in one command, and its undo (`make serve`, `make stop`).
#
#   deploy/serve.sh start   Prefect's own background server (`prefect server start
#                           --background`: SQLite, 127.0.0.1 on $PREFECT_PORT or a free port,
#                           its PID in .prefect-local/server.pid), the work pool, `prefect
#                           deploy --all`, the failed-nightly alert (deploy/alerts.yaml, when
#                           $MASTER_ALERT_WEBHOOK_URL is set), and a process worker (`prefect
#                           worker start` has no background mode: it runs in its own process
#                           group, whose PID is recorded in .prefect-local/worker.pid)
#   deploy/serve.sh stop    the worker's process group, then `prefect server stop`; only what
#                           those two files record and still runs Prefect; safe to run twice
#   deploy/serve.sh status  `prefect server status` and whether the worker runs
#
# Nothing here reads or changes ~/.prefect: PREFECT_HOME is .prefect-local/ for every command
# ($MASTER_SERVE_DIR moves it, for tests). $MASTER_VENV is the virtualenv (default .venv/).
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${MASTER_SERVE_DIR:-$ROOT/.prefect-local}"
SERVER_PID="$STATE/server.pid" # written and removed by Prefect's server start / stop
WORKER_PID="$STATE/worker.pid" # ours: the worker's PID, leader of its own process group
ENVFILE="$STATE/env"           # the exports a shell needs to talk to this server
BIN="${MASTER_VENV:-$ROOT/.venv}/bin"
POOL="master-process"

export PREFECT_HOME="$STATE"
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1

alive() { kill -0 "$1" 2>/dev/null; }             # does process $1 run?
group_alive() { kill -0 -- "-$1" 2>/dev/null; } # does process group $1 still have a member?

runs() { # PID PATTERN: is process $1 still what we started, not a recycled pid?
  tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q -- "$2"
}

group_runs() { # PGID PATTERN: does a member of group $1 still run it?
  local pid
  for pid in $(pgrep -g "$1" 2>/dev/null); do
    runs "$pid" "$2" && return 0
  done
  return 1
}

wait_gone() { # CHECK PID: wait up to 20 s for `CHECK PID` to fail; 1 if it still holds
  local waited
  for ((waited = 0; waited < 40; waited++)); do
    "$1" "$2" || return 0
    sleep 0.5
  done
  return 1
}

stop_worker() {
  [[ -s "$WORKER_PID" ]] || return 0
  local pid
  pid="$(cat "$WORKER_PID")"
  if ! group_alive "$pid"; then
    echo "worker ($pid) already stopped"
  elif ! group_runs "$pid" "prefect worker start"; then
    echo "worker ($pid): process group no longer runs the prefect worker, left alone"
  else
    # the whole group: the worker and any flow run it started there
    kill -TERM -- "-$pid" 2>/dev/null || true
    wait_gone group_alive "$pid" || kill -KILL -- "-$pid" 2>/dev/null || true
    echo "stopped worker ($pid)"
  fi
  rm -f "$WORKER_PID"
}

stop_server() {
  [[ -s "$SERVER_PID" ]] || return 0
  local pid
  pid="$(cat "$SERVER_PID")"
  if alive "$pid" && ! runs "$pid" "prefect.server.api.server:create_app"; then
    # `prefect server stop` would signal whatever has this pid now
    echo "server ($pid): no longer the prefect server, left alone"
    rm -f "$SERVER_PID"
    return 0
  fi
  "$BIN/prefect" server stop # signals the pid in server.pid and removes the file
  if alive "$pid"; then
    wait_gone alive "$pid" || kill -KILL "$pid" 2>/dev/null || true
  fi
}

stop() {
  if [[ ! -s "$SERVER_PID" && ! -s "$WORKER_PID" ]]; then
    echo "nothing to stop (no $SERVER_PID or $WORKER_PID)"
    rm -f "$ENVFILE"
    return 0
  fi
  stop_worker # first: it cancels its flow runs while the server still answers
  stop_server
  rm -f "$ENVFILE"
}

status() {
  if [[ ! -s "$SERVER_PID" && ! -s "$WORKER_PID" ]]; then
    echo "not running"
    return 0
  fi
  if [[ -s "$ENVFILE" ]]; then
    # shellcheck disable=SC1090
    source "$ENVFILE"
    "$BIN/prefect" server status || true
  fi
  if [[ -s "$SERVER_PID" ]]; then
    local server
    server="$(cat "$SERVER_PID")"
    if alive "$server"; then echo "server ($server) running"; else echo "server ($server) stopped"; fi
  fi
  if [[ -s "$WORKER_PID" ]]; then
    local worker
    worker="$(cat "$WORKER_PID")"
    if group_alive "$worker"; then echo "worker ($worker) running"; else echo "worker ($worker) stopped"; fi
  fi
  cat "$ENVFILE" 2>/dev/null || true
}

free_port() {
  "$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
  if [[ -s "$SERVER_PID" || -s "$WORKER_PID" ]]; then
    echo "already started (see $STATE); run \`make stop\` first" >&2
    status
    exit 1
  fi
  mkdir -p "$STATE/logs"
  echo '*' >"$STATE/.gitignore" # the folder ignores itself

  local port="${PREFECT_PORT:-}"
  [[ -n "$port" ]] || port="$(free_port)"
  export PREFECT_API_URL="http://127.0.0.1:$port/api"
  export PREFECT_API_DATABASE_CONNECTION_URL="sqlite+aiosqlite:///$STATE/prefect.db"
  export MASTER_PROJECT_DIR="$ROOT" # the deployments' pull step: flows run from this folder
  trap 'echo "start failed; logs in $STATE/logs" >&2; stop' ERR

  # In its own session (setsid), away from this terminal. The server's only outbound call is
  # for Prefect's integration catalogue, which has a bundled copy: a dead proxy keeps it
  # offline (loopback is exempt). Prefect's background server keeps no log of its own; the
  # log has what `server start` and `server status` said.
  setsid --wait env HTTPS_PROXY=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 \
    NO_PROXY=127.0.0.1,localhost \
    "$BIN/prefect" server start --background --host 127.0.0.1 --port "$port" \
    >"$STATE/logs/server.log" 2>&1 </dev/null
  echo "waiting for the server on port $port"
  "$BIN/prefect" server status --wait --timeout 120 >>"$STATE/logs/server.log" 2>&1 &
  local waiter=$!
  while alive "$waiter"; do
    if ! alive "$(cat "$SERVER_PID" 2>/dev/null || echo 0)"; then
      kill "$waiter" 2>/dev/null || true
      echo "the server exited" >&2
      false
    fi
    sleep 1
  done
  wait "$waiter"

  "$BIN/prefect" work-pool inspect "$POOL" >/dev/null 2>&1 ||
    "$BIN/prefect" work-pool create "$POOL" --type process
  (cd "$ROOT" && "$BIN/prefect" --no-prompt deploy --all)
  local alerts="no alert on a failed nightly run: set MASTER_ALERT_WEBHOOK_URL and run deploy/alerts.py"
  if [[ -n "${MASTER_ALERT_WEBHOOK_URL:-}" ]]; then # the automation of deploy/alerts.yaml
    "$BIN/python" "$ROOT/deploy/alerts.py"
    alerts="a failed nightly run POSTs to \$MASTER_ALERT_WEBHOOK_URL (deploy/alerts.yaml)"
  fi
  setsid "$BIN/prefect" worker start --pool "$POOL" --name master-local --install-policy never \
    >"$STATE/logs/worker.log" 2>&1 </dev/null &
  echo "$!" >"$WORKER_PID"
  trap - ERR

  cat >"$ENVFILE" <<EOF
export PREFECT_API_URL=$PREFECT_API_URL
export PREFECT_HOME=$STATE
EOF
  cat <<EOF

Prefect is serving MASTER (server.pid, worker.pid and logs/ in $STATE):
  UI:      http://127.0.0.1:$port
  In your shell:
    export PREFECT_API_URL=$PREFECT_API_URL      (or: source $ENVFILE)
  Run now:
    $BIN/prefect deployment run 'augment/adhoc' --param sample=6
  (the nightly run 'augment/nightly' is scheduled for 02:00 UTC; $alerts)
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

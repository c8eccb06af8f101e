#!/usr/bin/env bash
# Start (or stop) the project's local services, on loopback only. `start` is idempotent and prints the
# environment to use; `stop` stops only what `start` started (by the PID files under .run/).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUN=$ROOT/.run
REDIS_PORT=${ORCHESTRATOR_REDIS_PORT:-6390}

env_lines() {
  cat <<ENV
export REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
export ORCHESTRATOR_DATA_DIR=$RUN/data
export ORCHESTRATOR_STATE_DIR=$RUN/state
export DOMAIN=\${DOMAIN:-kanban.localhost}
export PORTAL_API_URL=\${PORTAL_API_URL:-https://kanban.localhost/api}
ENV
}

redis_up() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; }

start() {
  mkdir -p "$RUN/redis" "$RUN/data" "$RUN/state"
  if ! redis_up; then
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$RUN/redis" --appendonly yes \
      --daemonize yes --pidfile "$RUN/redis.pid" --logfile "$RUN/redis.log" --save "" \
      --notify-keyspace-events Kl >/dev/null
    for _ in $(seq 50); do redis_up && break; sleep 0.1; done
    redis_up || { echo "services: redis did not start, see $RUN/redis.log" >&2; exit 1; }
    echo "services: redis started on 127.0.0.1:$REDIS_PORT" >&2
  else
    echo "services: redis already running on 127.0.0.1:$REDIS_PORT" >&2
  fi
  env_lines >"$RUN/env"
  env_lines
}

stop() {
  if [ -f "$RUN/redis.pid" ]; then
    pid=$(cat "$RUN/redis.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      echo "services: redis stopped" >&2
    fi
    rm -f "$RUN/redis.pid"
  fi
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  env) env_lines ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac

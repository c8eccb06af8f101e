#!/usr/bin/env bash
# Start (or stop) the project's local services, on loopback only. `start` is idempotent and prints the
# environment to use; `stop` stops only what `start` started (by the PID files under .run/).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUN=$ROOT/.run
REDIS_PORT=${ORCHESTRATOR_REDIS_PORT:-6390}
GITHUB_PORT=${ORCHESTRATOR_GITHUB_PORT:-8770}
PY=$ROOT/.venv/bin/python

env_lines() {
  cat <<ENV
export REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
export ORCHESTRATOR_DATA_DIR=$RUN/data
export ORCHESTRATOR_STATE_DIR=$RUN/state
export DOMAIN=\${DOMAIN:-kanban.localhost}
export PORTAL_API_URL=\${PORTAL_API_URL:-https://kanban.localhost/api}
export GITHUB_API_URL=http://127.0.0.1:$GITHUB_PORT
export GITHUB_TOKEN=$(cat "$RUN/github-token" 2>/dev/null)
export GITHUB_ORG=kanban
export GITHUB_TEMPLATE_REPO=kanban/workspace-template
ENV
}

redis_up() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; }
github_up() { curl -fsS -o /dev/null "http://127.0.0.1:$GITHUB_PORT/rate_limit" -H "Authorization: Bearer $(cat "$RUN/github-token")" 2>/dev/null; }

# The local GitHub (devservices/github): real bare repositories under .run/github, one token of ours.
start_github() {
  [ -s "$RUN/github-token" ] || { (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' | sed 's/^/ghs_/' >"$RUN/github-token"); }
  if github_up; then
    echo "services: local GitHub already running on 127.0.0.1:$GITHUB_PORT" >&2
  else
    GITHUB_TOKEN=$(cat "$RUN/github-token") setsid "$PY" -m devservices.github --host 127.0.0.1 --port "$GITHUB_PORT" \
      --data "$RUN/github" --org kanban >"$RUN/github.log" 2>&1 </dev/null &
    echo $! >"$RUN/github.pid"
    for _ in $(seq 100); do github_up && break; sleep 0.1; done
    github_up || { echo "services: local GitHub did not start, see $RUN/github.log" >&2; exit 1; }
    echo "services: local GitHub started on 127.0.0.1:$GITHUB_PORT" >&2
  fi
  GITHUB_API_URL=http://127.0.0.1:$GITHUB_PORT GITHUB_TOKEN=$(cat "$RUN/github-token") \
    GITHUB_TEMPLATE_REPO=kanban/workspace-template "$PY" -m devservices.github.seed >&2
}

docker_up() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

# There is no systemd here: dockerd runs in the background, started by us (and stopped by its PID file)
# unless an engine already answers. No forwarding or masquerading: containers reach loopback-published
# ports and each other on their project networks, nothing else.
start_docker() {
  if docker_up; then
    echo "services: docker engine already running" >&2
  else
    setsid dockerd --ip-forward=false --ip-masq=false --pidfile "$RUN/dockerd.pid" \
      >"$RUN/dockerd.log" 2>&1 </dev/null &
    for _ in $(seq 150); do docker_up && break; sleep 0.2; done
    docker_up || { echo "services: dockerd did not start, see $RUN/dockerd.log" >&2; exit 1; }
    echo "services: docker engine started" >&2
  fi
  bash scripts/build-images.sh >&2
}

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
  start_docker
  start_github
  (umask 077; env_lines >"$RUN/env") && chmod 600 "$RUN/env"
  env_lines
}

# Stop a process we started, by its PID file (never one we did not start).
stop_pidfile() {
  local pidfile=$1 name=$2 pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "services: $name stopped" >&2
  fi
  rm -f "$pidfile"
}

stop() {
  stop_pidfile "$RUN/github.pid" "local GitHub"
  stop_pidfile "$RUN/dockerd.pid" "docker engine"
  stop_pidfile "$RUN/redis.pid" redis
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  env) env_lines ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Start (or stop) the project's local services, on loopback only. `start` is idempotent and prints the
# environment to use; `stop` stops only what `start` started (by the PID files under .run/).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
RUN=$ROOT/.run
REDIS_PORT=${ORCHESTRATOR_REDIS_PORT:-6390}
GITHUB_PORT=${ORCHESTRATOR_GITHUB_PORT:-8770}
GRAPH_PORT=${ORCHESTRATOR_GRAPH_PORT:-8771}
# The orchestrator's identity in the local tenant (fixed ids; the secret is made once, 0600).
AZURE_TENANT=5f1e0c2a-7b9d-4e3f-8a61-0c4d2b7e9f10
AZURE_CLIENT=0b7c9e2d-3f4a-4c5b-9d6e-1a2b3c4d5e6f
PEBBLE_PORT=${ORCHESTRATOR_PEBBLE_PORT:-14000}
PEBBLE_MANAGEMENT_PORT=${ORCHESTRATOR_PEBBLE_MANAGEMENT_PORT:-15000}
PEBBLE_DNS_PORT=${ORCHESTRATOR_PEBBLE_DNS_PORT:-8053}
PEBBLE_CHALLTESTSRV_PORT=${ORCHESTRATOR_PEBBLE_CHALLTESTSRV_PORT:-8055}
ACME_HTTP_PORT=${ORCHESTRATOR_ACME_HTTP_PORT:-5002}
ACME_TLS_PORT=${ORCHESTRATOR_ACME_TLS_PORT:-5001}
# The Messages API stand-in, on the root side of the agent host's veth (same defaults as scripts/agent-host.sh).
ANTHROPIC_HOST=${ORCHESTRATOR_AGENT_GATEWAY:-10.213.7.1}
ANTHROPIC_PORT=${ORCHESTRATOR_ANTHROPIC_PORT:-8772}
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
export AZURE_AUTHORITY_URL=http://127.0.0.1:$GRAPH_PORT
export GRAPH_API_URL=http://127.0.0.1:$GRAPH_PORT/v1.0
export AZURE_TENANT_ID=$AZURE_TENANT
export AZURE_CLIENT_ID=$AZURE_CLIENT
export AZURE_CLIENT_SECRET=$(cat "$RUN/azure-client-secret" 2>/dev/null)
export ACME_DIRECTORY_URL=https://127.0.0.1:$PEBBLE_PORT/dir
export ACME_CA_BUNDLE=$RUN/pebble/ca.pem
export ACME_EMAIL=ops@kanban.localhost
export ACME_WEBROOT=$RUN/acme-webroot
export ORCHESTRATOR_CERTIFICATES=true
ENV
  bash "$ROOT/scripts/agent-host.sh" env
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

# Any HTTP answer (a 401 without a token) means the server is there.
graph_up() { curl -sS -o /dev/null "http://127.0.0.1:$GRAPH_PORT/v1.0/applications" 2>/dev/null; }

# The local Microsoft identity platform and Graph (devservices/graph): one tenant, the orchestrator's identity,
# applications kept under .run/graph. The secret goes by file, never on a command line.
start_graph() {
  [ -s "$RUN/azure-client-secret" ] || { (umask 077; head -c 30 /dev/urandom | base64 | tr -d '/+=\n' >"$RUN/azure-client-secret"); }
  start_process "local Graph on 127.0.0.1:$GRAPH_PORT" "$RUN/graph.pid" "$RUN/graph.log" graph_up \
    "$PY" -m devservices.graph --host 127.0.0.1 --port "$GRAPH_PORT" --data "$RUN/graph" \
    --tenant "$AZURE_TENANT" --client-id "$AZURE_CLIENT" --client-secret-file "$RUN/azure-client-secret"
}

pebble_up() { curl -fsS -o /dev/null --cacert "$RUN/pebble/ca.pem" "https://127.0.0.1:$PEBBLE_PORT/dir" 2>/dev/null; }
# Any HTTP answer (a 404 included) means the server is there.
challtestsrv_up() { curl -sS -o /dev/null "http://127.0.0.1:$PEBBLE_CHALLTESTSRV_PORT/" 2>/dev/null; }
acme_webroot_up() { curl -sS -o /dev/null "http://127.0.0.1:$ACME_HTTP_PORT/" 2>/dev/null; }

# Start one background process of ours and wait for it to answer: name, pid file, log, up-check, command...
start_process() {
  local name=$1 pidfile=$2 log=$3 up=$4
  shift 4
  if "$up"; then
    echo "services: $name already running" >&2
    return 0
  fi
  setsid "$@" >"$log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  for _ in $(seq 100); do "$up" && break; sleep 0.1; done
  "$up" || { echo "services: $name did not start, see $log" >&2; exit 1; }
  echo "services: $name started" >&2
}

# The TLS certificate of Pebble's own HTTPS listeners (ACME and management), signed by a project test CA made
# once: clients trust that CA through ACME_CA_BUNDLE, never the system store. Not the CA that signs the
# certificates Pebble issues (Pebble makes a new one at every start, see /roots/0 on the management port).
pebble_tls() {
  local dir=$RUN/pebble
  [ -s "$dir/ca.pem" ] && [ -s "$dir/cert.pem" ] && [ -s "$dir/key.pem" ] && return 0
  (
    umask 077
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -subj "/CN=orchestrator test CA for Pebble" -keyout "$dir/ca.key" -out "$dir/ca.pem" \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
      -keyout "$dir/key.pem" -out "$dir/cert.csr"
    printf '%s\n' 'subjectAltName=IP:127.0.0.1,DNS:localhost' 'extendedKeyUsage=serverAuth' \
      'basicConstraints=critical,CA:FALSE' 'subjectKeyIdentifier=hash' 'authorityKeyIdentifier=keyid' >"$dir/cert.ext"
    openssl x509 -req -in "$dir/cert.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
      -days 825 -extfile "$dir/cert.ext" -out "$dir/cert.pem"
  ) 2>>"$dir/openssl.log"
  rm -f "$dir/cert.csr" "$dir/cert.ext"
  chmod 644 "$dir/ca.pem" "$dir/cert.pem"
  echo "services: Pebble's listener certificate made under $dir" >&2
}

# Pebble, Let's Encrypt's test ACME server, with real validation: it resolves every name through
# pebble-challtestsrv's DNS (answering 127.0.0.1 for all A queries, nothing for AAAA) and fetches HTTP-01
# answers from a static server on ACME_HTTP_PORT that serves ACME_WEBROOT, as the edge would in production.
# No random sleep before validating, no rejected nonces, no reused authorizations: fast and deterministic.
start_pebble() {
  mkdir -p "$RUN/pebble" "$RUN/acme-webroot/.well-known/acme-challenge"
  pebble_tls
  cat >"$RUN/pebble/pebble-config.json" <<JSON
{"pebble": {"listenAddress": "127.0.0.1:$PEBBLE_PORT", "managementListenAddress": "127.0.0.1:$PEBBLE_MANAGEMENT_PORT",
  "certificate": "$RUN/pebble/cert.pem", "privateKey": "$RUN/pebble/key.pem", "httpPort": $ACME_HTTP_PORT,
  "tlsPort": $ACME_TLS_PORT, "ocspResponderURL": "", "externalAccountBindingRequired": false,
  "certificateValidityPeriod": 7776000}}
JSON
  start_process "pebble-challtestsrv on 127.0.0.1:$PEBBLE_DNS_PORT (DNS)" "$RUN/pebble-challtestsrv.pid" \
    "$RUN/pebble-challtestsrv.log" challtestsrv_up \
    pebble-challtestsrv -management "127.0.0.1:$PEBBLE_CHALLTESTSRV_PORT" -dns01 "127.0.0.1:$PEBBLE_DNS_PORT" \
    -http01 "" -https01 "" -tlsalpn01 "" -defaultIPv4 127.0.0.1 -defaultIPv6 ""
  start_process "ACME webroot server on 127.0.0.1:$ACME_HTTP_PORT" "$RUN/acme-webroot.pid" "$RUN/acme-webroot.log" \
    acme_webroot_up busybox httpd -f -p "127.0.0.1:$ACME_HTTP_PORT" -h "$RUN/acme-webroot"
  start_process "Pebble on 127.0.0.1:$PEBBLE_PORT" "$RUN/pebble.pid" "$RUN/pebble.log" pebble_up \
    env -u PEBBLE_VA_ALWAYS_VALID PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 PEBBLE_AUTHZREUSE=0 \
    pebble -config "$RUN/pebble/pebble-config.json" -dnsserver "127.0.0.1:$PEBBLE_DNS_PORT"
}

# Any HTTP answer means the server is there.
anthropic_up() { curl -sS -o /dev/null "http://$ANTHROPIC_HOST:$ANTHROPIC_PORT/_control/requests" 2>/dev/null; }

# The simulated agent host (scripts/agent-host.sh: namespace, sshd, the CLI's wrapper), then the Messages API
# stand-in on the root side of its veth (the address exists only once the namespace does). The key goes by file.
start_agent_host() {
  bash scripts/agent-host.sh start
  start_process "Messages API stand-in on $ANTHROPIC_HOST:$ANTHROPIC_PORT" "$RUN/anthropic.pid" "$RUN/anthropic.log" \
    anthropic_up "$PY" -m devservices.anthropic --host "$ANTHROPIC_HOST" --port "$ANTHROPIC_PORT" \
    --api-key-file "$RUN/anthropic-api-key" --control-from "$ANTHROPIC_HOST"
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
  start_graph
  start_pebble
  start_agent_host
  (umask 077; env_lines >"$RUN/env") && chmod 600 "$RUN/env"
  env_lines
}

# Stop a process we started, by its PID file (never one we did not start).
stop_pidfile() {
  local pidfile=$1 name=$2 pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if alive "$pid"; then
    kill "$pid"
    for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
    echo "services: $name stopped" >&2
  fi
  rm -f "$pidfile"
}

stop() {
  stop_pidfile "$RUN/anthropic.pid" "Messages API stand-in"
  bash scripts/agent-host.sh stop
  stop_pidfile "$RUN/pebble.pid" Pebble
  stop_pidfile "$RUN/acme-webroot.pid" "ACME webroot server"
  stop_pidfile "$RUN/pebble-challtestsrv.pid" pebble-challtestsrv
  stop_pidfile "$RUN/graph.pid" "local Graph"
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

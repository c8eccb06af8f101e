#!/usr/bin/env bash
# The simulated agent host: a network namespace with its own sshd, an unprivileged user with key-only login
# and the real Claude Code CLI, run through a wrapper that points it at the local Messages API stand-in.
# Nothing in the namespace can leave the machine: its only route is the /30 of the veth pair.
#   install  the CLI (npm, pinned) and the user (called by scripts/setup.sh; a second run only checks)
#   start    namespace, veth, sshd, keys, wrapper (called by scripts/services.sh start; idempotent)
#   stop     sshd and every process left in the namespace, then the namespace itself
#   env      the environment lines that point the orchestrator at this host (in .run/env)
# See docs/agent-host.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
RUN=$ROOT/.run

CLAUDE_CODE_VERSION=2.1.330
CLAUDE_PREFIX=${ORCHESTRATOR_CLAUDE_PREFIX:-/opt/orchestrator/claude-code}
CLAUDE_BIN=$CLAUDE_PREFIX/node_modules/.bin/claude
AGENT_USER=${ORCHESTRATOR_AGENT_USER:-agent}
AGENT_HOME=/home/$AGENT_USER
AGENT_NETNS=${ORCHESTRATOR_AGENT_HOST_NETNS:-orch-agent}
AGENT_VETH_ROOT=${ORCHESTRATOR_AGENT_VETH_ROOT:-orch-agent0}
AGENT_VETH_NS=${ORCHESTRATOR_AGENT_VETH_NS:-orch-agent1}
# The /30 of the veth pair: the root side (where the Messages API stand-in listens) and the agent host.
AGENT_GATEWAY=${ORCHESTRATOR_AGENT_GATEWAY:-10.213.7.1}
AGENT_ADDR=${ORCHESTRATOR_AGENT_ADDR:-10.213.7.2}
AGENT_PREFIX_LEN=30
# The Messages API stand-in (started by scripts/services.sh on the root side, same defaults there).
ANTHROPIC_PORT=${ORCHESTRATOR_ANTHROPIC_PORT:-8772}
ANTHROPIC_URL=http://$AGENT_GATEWAY:$ANTHROPIC_PORT
HOST_DIR=$RUN/agent-host
CLIENT_DIR=$RUN/agent-ssh
WRAPPER=$AGENT_HOME/.local/bin/claude-loggedin
FIREWALL_CHAIN=ORCH-AGENT-IN

say() { echo "$1: $2" >&2; }
die() { echo "$1: $2" >&2; exit 1; }

# The CLI's own report of its version, run with everything that calls out switched off.
claude_version() {
  [ -x "$CLAUDE_BIN" ] || return 0
  local home
  home=$(mktemp -d)
  env -i PATH=/usr/bin:/bin HOME="$home" CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_AUTOUPDATER=1 \
    DISABLE_TELEMETRY=1 DISABLE_ERROR_REPORTING=1 DO_NOT_TRACK=1 "$CLAUDE_BIN" --version 2>/dev/null </dev/null |
    awk '{print $1; exit}' || true
  rm -rf "$home"
}

package_version() {
  local pkg=$CLAUDE_PREFIX/node_modules/@anthropic-ai/claude-code/package.json
  [ -f "$pkg" ] && sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$pkg" | head -n1 || true
}

cmd_install() {
  local cmd
  for cmd in sshd:/usr/sbin/sshd ssh-keygen:/usr/bin/ssh-keygen ip:/usr/sbin/ip setfacl:/usr/bin/setfacl; do
    [ -x "${cmd#*:}" ] || die setup "${cmd%%:*} is missing (openssh-server, iproute2, acl: scripts/setup.sh installs them)"
  done
  command -v npm >/dev/null || die setup "npm is missing (scripts/setup.sh installs nodejs and npm)"

  if ! id "$AGENT_USER" >/dev/null 2>&1; then
    useradd -m -s /bin/bash "$AGENT_USER"
    say setup "user $AGENT_USER made"
  fi
  # Unlocked without a password: sshd (UsePAM no) refuses a locked account even for a key.
  if [ "$(getent shadow "$AGENT_USER" | cut -d: -f2)" != "*" ]; then usermod -p '*' "$AGENT_USER"; fi

  if [ "$(package_version)" != "$CLAUDE_CODE_VERSION" ] || [ "$(claude_version)" != "$CLAUDE_CODE_VERSION" ]; then
    say setup "installing Claude Code $CLAUDE_CODE_VERSION (npm) under $CLAUDE_PREFIX"
    mkdir -p "$CLAUDE_PREFIX"
    # Not --ignore-scripts nor --omit=optional: the install script links the platform package's native binary.
    (umask 022 && npm install --prefix "$CLAUDE_PREFIX" --no-audit --no-fund --loglevel=error \
      "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" >/dev/null)
    chmod -R a+rX "$CLAUDE_PREFIX"
    local got
    got=$(claude_version)
    [ "$got" = "$CLAUDE_CODE_VERSION" ] ||
      die setup "$CLAUDE_BIN --version says '${got:-nothing}', not $CLAUDE_CODE_VERSION (native binary not linked?)"
  fi
  say setup "agent host ready: user $AGENT_USER, Claude Code $CLAUDE_CODE_VERSION"
}

# --- the namespace -------------------------------------------------------------------------------

netns_exists() { ip netns list | awk '{print $1}' | grep -qx "$AGENT_NETNS"; }
in_ns() { ip netns exec "$AGENT_NETNS" "$@"; }

netns_ok() {
  netns_exists || return 1
  ip -o -4 addr show dev "$AGENT_VETH_ROOT" 2>/dev/null | grep -q " inet $AGENT_GATEWAY/$AGENT_PREFIX_LEN " || return 1
  ip -o link show dev "$AGENT_VETH_ROOT" 2>/dev/null | grep -q ',UP' || return 1
  ip -n "$AGENT_NETNS" -o -4 addr show dev "$AGENT_VETH_NS" 2>/dev/null |
    grep -q " inet $AGENT_ADDR/$AGENT_PREFIX_LEN " || return 1
  ip -n "$AGENT_NETNS" -o link show dev "$AGENT_VETH_NS" 2>/dev/null | grep -q ',UP' || return 1
  ip -n "$AGENT_NETNS" -o link show dev lo 2>/dev/null | grep -q ',UP' || return 1
  # No default route, nothing but the veth's own /30.
  [ -z "$(ip -n "$AGENT_NETNS" route show default)" ] || return 1
}

# Every process still in the namespace (sshd's sessions, CLI runs): TERM, a few seconds, then KILL.
kill_netns_processes() {
  netns_exists || return 0
  local pids
  pids=$(ip netns pids "$AGENT_NETNS" 2>/dev/null | tr '\n' ' ')
  [ -n "${pids// /}" ] || return 0
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  for _ in $(seq 30); do
    [ -z "$(ip netns pids "$AGENT_NETNS" 2>/dev/null)" ] && return 0
    sleep 0.1
  done
  pids=$(ip netns pids "$AGENT_NETNS" 2>/dev/null | tr '\n' ' ')
  # shellcheck disable=SC2086
  [ -z "${pids// /}" ] || kill -KILL $pids 2>/dev/null || true
  sleep 0.2
}

netns_delete() {
  if netns_exists; then
    kill_netns_processes
    ip netns del "$AGENT_NETNS"
  fi
  # The root side goes with its peer; one left over from a namespace deleted while in use goes here.
  if ip link show dev "$AGENT_VETH_ROOT" >/dev/null 2>&1; then ip link del "$AGENT_VETH_ROOT" 2>/dev/null || true; fi
}

netns_create() {
  if netns_ok; then
    say services "agent host namespace $AGENT_NETNS already configured"
    return 0
  fi
  stop_sshd
  netns_delete
  ip netns add "$AGENT_NETNS"
  ip link add "$AGENT_VETH_ROOT" type veth peer name "$AGENT_VETH_NS" netns "$AGENT_NETNS"
  ip addr add "$AGENT_GATEWAY/$AGENT_PREFIX_LEN" dev "$AGENT_VETH_ROOT"
  ip link set "$AGENT_VETH_ROOT" up
  # No IPv6 inside (not even link-local), loopback up, the veth's address; no default route.
  in_ns sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 >/dev/null 2>&1 || true
  ip -n "$AGENT_NETNS" link set lo up
  ip -n "$AGENT_NETNS" addr add "$AGENT_ADDR/$AGENT_PREFIX_LEN" dev "$AGENT_VETH_NS"
  ip -n "$AGENT_NETNS" link set "$AGENT_VETH_NS" up
  netns_ok || die services "agent host namespace $AGENT_NETNS could not be configured"
  say services "agent host namespace $AGENT_NETNS made ($AGENT_ADDR, root side $AGENT_GATEWAY, no default route)"
}

# What the namespace may open on the root side: the stand-in's port only (and the replies to the root's own
# connections, ssh). Other listeners on wildcard addresses of this machine stay out of its reach.
firewall_rules() {
  printf '%s\n' \
    "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT" \
    "-d $AGENT_GATEWAY/32 -p tcp -m tcp --dport $ANTHROPIC_PORT -j ACCEPT" \
    "-j REJECT --reject-with icmp-port-unreachable"
}

firewall_add() {
  local rule
  if ! iptables -w -n -L "$FIREWALL_CHAIN" >/dev/null 2>&1; then
    iptables -w -N "$FIREWALL_CHAIN" 2>/dev/null ||
      { say services "warning: iptables unusable, the agent host can reach wildcard listeners on $AGENT_GATEWAY"; return 0; }
  fi
  if [ "$(iptables -w -S "$FIREWALL_CHAIN" | tail -n +2 | sed "s/^-A $FIREWALL_CHAIN //")" != "$(firewall_rules)" ]; then
    iptables -w -F "$FIREWALL_CHAIN"
    while read -r rule; do
      # shellcheck disable=SC2086
      iptables -w -A "$FIREWALL_CHAIN" $rule
    done < <(firewall_rules)
  fi
  iptables -w -C INPUT -i "$AGENT_VETH_ROOT" -j "$FIREWALL_CHAIN" 2>/dev/null ||
    iptables -w -I INPUT 1 -i "$AGENT_VETH_ROOT" -j "$FIREWALL_CHAIN"
}

firewall_del() {
  command -v iptables >/dev/null || return 0
  while iptables -w -D INPUT -i "$AGENT_VETH_ROOT" -j "$FIREWALL_CHAIN" 2>/dev/null; do :; done
  iptables -w -F "$FIREWALL_CHAIN" 2>/dev/null || true
  iptables -w -X "$FIREWALL_CHAIN" 2>/dev/null || true
}

# --- keys, user files, sshd ----------------------------------------------------------------------

# Write a file only when its content changes: path, owner, mode (content on stdin). Returns 0 if it changed.
put_file() {
  local path=$1 owner=$2 mode=$3 tmp
  tmp=$(mktemp "$path.XXXXXX")
  cat >"$tmp"
  if [ -f "$path" ] && cmp -s "$tmp" "$path" && [ "$(stat -c '%U:%G %a' "$path")" = "$owner $mode" ]; then
    rm -f "$tmp"
    return 1
  fi
  chown "$owner" "$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$path"
}

keys() {
  mkdir -p "$HOST_DIR" "$CLIENT_DIR"
  chmod 700 "$HOST_DIR" "$CLIENT_DIR"
  [ -s "$HOST_DIR/ssh_host_ed25519_key" ] ||
    ssh-keygen -q -t ed25519 -N '' -C "agent-host@$AGENT_ADDR" -f "$HOST_DIR/ssh_host_ed25519_key"
  [ -s "$CLIENT_DIR/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C orchestrator -f "$CLIENT_DIR/id_ed25519"
  chmod 600 "$HOST_DIR/ssh_host_ed25519_key" "$CLIENT_DIR/id_ed25519"
  put_file "$CLIENT_DIR/known_hosts" root:root 644 < <(
    echo "$AGENT_ADDR $(cut -d' ' -f1,2 "$HOST_DIR/ssh_host_ed25519_key.pub")") || true
  # The stand-in's API key: made once, read by the stand-in from the file, held by the wrapper.
  [ -s "$RUN/anthropic-api-key" ] ||
    (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' | sed 's/^/sk-ant-local-/' >"$RUN/anthropic-api-key")
  chmod 600 "$RUN/anthropic-api-key"
}

agent_files() {
  id "$AGENT_USER" >/dev/null 2>&1 || die services "no user $AGENT_USER: run scripts/setup.sh first"
  [ -x "$CLAUDE_BIN" ] || die services "no Claude Code at $CLAUDE_BIN: run scripts/setup.sh first"
  local group key
  group=$(id -gn "$AGENT_USER")
  key=$(cat "$RUN/anthropic-api-key")
  # StrictModes: the home must not be writable by others.
  chmod go-w "$AGENT_HOME"
  install -d -o "$AGENT_USER" -g "$group" -m 700 "$AGENT_HOME/.ssh"
  install -d -o "$AGENT_USER" -g "$group" -m 755 "$AGENT_HOME/.local"
  # The wrapper's folder and the wrapper are root's: the agent runs it, it does not change it.
  install -d -o root -g root -m 755 "$AGENT_HOME/.local/bin"
  put_file "$AGENT_HOME/.ssh/authorized_keys" "$AGENT_USER:$group" 600 <"$CLIENT_DIR/id_ed25519.pub" || true
  # Holds the stand-in's key: readable and runnable by the agent only (root:agent 0750).
  put_file "$WRAPPER" "root:$group" 750 <<WRAP || true
#!/bin/bash
# Wrapper to run Claude with the agent host's context: the local Messages API, no other traffic.
export HOME=$AGENT_HOME
export CLAUDE_CONFIG_DIR=\$HOME/.claude
export ANTHROPIC_BASE_URL=$ANTHROPIC_URL
export ANTHROPIC_API_KEY=$key
export CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_AUTOUPDATER=1 DISABLE_TELEMETRY=1 DISABLE_ERROR_REPORTING=1 DO_NOT_TRACK=1 DISABLE_UPDATES=1 CLAUDE_CODE_DISABLE_FEATURE_FLAGS=1
exec $CLAUDE_BIN "\$@"
WRAP
  # The agent commits in clones owned by root that it writes through group permissions.
  put_file "$AGENT_HOME/.gitconfig" root:root 644 <<GIT || true
[user]
	name = Kanban agent
	email = $AGENT_USER@agent-host.kanban.localhost
[safe]
	directory = *
GIT
}

sshd_config() {
  cat <<CONF
# The agent host's sshd (scripts/agent-host.sh), run inside the network namespace $AGENT_NETNS.
ListenAddress $AGENT_ADDR:22
HostKey $HOST_DIR/ssh_host_ed25519_key
PidFile $HOST_DIR/sshd.pid
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin no
AllowUsers $AGENT_USER
StrictModes yes
ClientAliveInterval 15
ClientAliveCountMax 3
MaxSessions 50
MaxStartups 100:30:200
LogLevel VERBOSE
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowAgentForwarding no
AllowTcpForwarding no
PermitTunnel no
Subsystem sftp internal-sftp
CONF
}

sshd_running() {
  local pid
  [ -f "$HOST_DIR/sshd.pid" ] || return 1
  pid=$(cat "$HOST_DIR/sshd.pid")
  alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = sshd ]
}

# The server's banner on the agent host's address, from the root side.
sshd_up() { [ "$(timeout 2 bash -c "exec 3<>/dev/tcp/$AGENT_ADDR/22 && head -c 4 <&3" 2>/dev/null)" = SSH- ]; }

stop_sshd() {
  sshd_running || { rm -f "$HOST_DIR/sshd.pid"; return 0; }
  local pid
  pid=$(cat "$HOST_DIR/sshd.pid")
  kill "$pid"
  for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
  rm -f "$HOST_DIR/sshd.pid"
  say services "agent host sshd stopped"
}

start_sshd() {
  local changed=0
  put_file "$HOST_DIR/sshd_config" root:root 600 < <(sshd_config) && changed=1
  mkdir -p /run/sshd
  chmod 755 /run/sshd
  /usr/sbin/sshd -t -f "$HOST_DIR/sshd_config" || die services "sshd rejects $HOST_DIR/sshd_config"
  if sshd_running && [ "$changed" = 0 ] && sshd_up; then
    say services "agent host sshd already running on $AGENT_ADDR:22"
    return 0
  fi
  stop_sshd
  in_ns /usr/sbin/sshd -f "$HOST_DIR/sshd_config" -E "$HOST_DIR/sshd.log" </dev/null
  for _ in $(seq 50); do sshd_up && break; sleep 0.1; done
  sshd_up || die services "agent host sshd did not start, see $HOST_DIR/sshd.log"
  say services "agent host sshd started on $AGENT_ADDR:22 (namespace $AGENT_NETNS)"
}

cmd_start() {
  netns_create
  firewall_add
  keys
  agent_files
  start_sshd
}

cmd_stop() {
  stop_sshd
  if netns_exists; then
    netns_delete
    say services "agent host namespace $AGENT_NETNS deleted"
  fi
  netns_delete
  firewall_del
}

env_lines() {
  cat <<ENV
export SSH_USER=$AGENT_USER
export SSH_HOST=$AGENT_ADDR
export SSH_CLAUDE_PATH=$WRAPPER
export ORCHESTRATOR_SSH_KEY_FILE=$CLIENT_DIR/id_ed25519
export ORCHESTRATOR_SSH_KNOWN_HOSTS=$CLIENT_DIR/known_hosts
export ORCHESTRATOR_AGENT_HOST_NETNS=$AGENT_NETNS
export ANTHROPIC_STANDIN_URL=$ANTHROPIC_URL
ENV
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  env) env_lines ;;
  *) echo "usage: $0 install|start|stop|env" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Install everything the project needs, on a fresh Debian 12 machine as root. Idempotent: a second run
# only checks. Python packages come from requirements.lock (uv), Ansible collections from
# collections/requirements.yml (scripts/install-collections.py), system packages from Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

APT_PACKAGES=(redis-server git make python3 python3-venv python3-pip procps ca-certificates
  docker.io tini iptables busybox-static curl pebble openssh-server openssh-client iproute2 acl)
# The agent host's Claude Code comes from npm (scripts/agent-host.sh); Debian's node is enough when none is here.
command -v npm >/dev/null || APT_PACKAGES+=(nodejs npm)
UV_VERSION=0.13.9

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  # Package scripts must not start system services (redis on 6379, ssh on 22): the project runs its own.
  policy_added=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_added=1
  fi
  trap '[ "$policy_added" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Compose v2: bookworm's docker-compose is v1, trixie's is v2 (a static binary needing only libc). Take
# that one package from trixie, pinned low so nothing else leaves bookworm. The mirror is the one this
# machine's own apt sources already use.
if ! [ -x /usr/libexec/docker/cli-plugins/docker-compose ]; then
  echo "setup: installing compose v2 (docker-compose from trixie)"
  uri=$(grep -h -m1 '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' || true)
  [ -n "$uri" ] || uri=$(grep -h -m1 -E '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' || true)
  [ -n "$uri" ] || { echo "setup: no Debian mirror found in the apt sources" >&2; exit 1; }
  cat >/etc/apt/sources.list.d/orchestrator-trixie.sources <<SRC
Types: deb
URIs: $uri
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  printf 'Package: *\nPin: release n=trixie\nPin-Priority: 100\n' >/etc/apt/preferences.d/orchestrator-trixie
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose/trixie >/dev/null
fi

# A private bootstrap environment with uv (and pip, used to fetch the collections wheel).
PY=$(command -v python3.11 || command -v python3)
if [ ! -x .tools/bin/uv ] || [ "$(.tools/bin/uv --version | awk '{print $2}')" != "$UV_VERSION" ]; then
  echo "setup: bootstrapping uv $UV_VERSION"
  "$PY" -m venv .tools
  .tools/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi

stamp=.venv/.setup-stamp
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing Python packages from requirements.lock"
  [ -x .venv/bin/python ] || .tools/bin/uv venv --quiet --python "$PY" .venv
  .tools/bin/uv pip sync --quiet --python .venv/bin/python --compile-bytecode requirements.lock
  .tools/bin/uv pip install --quiet --python .venv/bin/python --no-deps --compile-bytecode -e .
  echo "$want" >"$stamp"
fi

.tools/bin/python scripts/install-collections.py
bash scripts/agent-host.sh install
echo "setup: done ($ROOT)"

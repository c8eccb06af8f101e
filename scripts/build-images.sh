#!/usr/bin/env bash
# Build the local stand-ins for the seed's images, offline (no registry is reachable here):
# a base imported from Debian's busybox-static, then images/stand-in built once per name.
# In production these names point at the real images; nothing in the roles depends on the stand-ins.
# Idempotent: an image is rebuilt only when its folder changed (content hash in a label).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=orchestrator/busybox-base:local
NAMES=(kanban-team-api kanban-team-web kanban-agents kanban-workspace-app)

hash_of() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16; }

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  mkdir -p "$root"/{bin,etc,tmp,www,data} && chmod 1777 "$root/tmp"
  cp /bin/busybox "$root/bin/busybox"
  for applet in $("$root/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
  done
  for link in sbin usr/bin usr/sbin; do mkdir -p "$(dirname "$root/$link")"; ln -sfn /bin "$root/$link"; done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
  echo 'nobody:x:65534:65534:nobody:/:/bin/false' >>"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  tar -C "$root" -c . | docker import - "$BASE" >/dev/null
  echo "images: imported $BASE from busybox-static"
fi

want=$(hash_of images/stand-in)
for name in "${NAMES[@]}"; do
  tag="$name:latest"
  have=$(docker image inspect -f '{{ index .Config.Labels "orchestrator.source-hash" }}' "$tag" 2>/dev/null || true)
  if [ "$have" != "$want" ]; then
    docker build -q --network none --build-arg BASE="$BASE" --build-arg NAME="$name" \
      --label "orchestrator.source-hash=$want" -t "$tag" images/stand-in >/dev/null 2>&1
    echo "images: built $tag"
  fi
done

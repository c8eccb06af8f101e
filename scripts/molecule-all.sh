#!/usr/bin/env bash
# Run `molecule test` for every role that has a molecule/default scenario. Works from a clean clone once
# .venv and .ansible/collections exist (scripts/setup.sh). Offline: see .config/molecule/config.yml.
# Exits non-zero when any scenario fails; runs them all either way.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$root/.venv/bin:$PATH"
# Molecule generates its own ansible.cfg for the playbooks it runs; these keep the project's roles and
# collections (the local orchestrator.core and the pinned community ones) visible to them, and
# ANSIBLE_CONFIG serves the ansible-config calls molecule makes before that.
export ANSIBLE_CONFIG="$root/ansible.cfg"
export ANSIBLE_ROLES_PATH="$root/roles"
export ANSIBLE_COLLECTIONS_PATH="$root/collections:$root/.ansible/collections"

shopt -s nullglob
scenarios=("$root"/roles/*/molecule/default/molecule.yml)
if [ ${#scenarios[@]} -eq 0 ]; then
  echo "molecule-all: no role has a molecule/default scenario" >&2
  exit 1
fi

failed=()
for scenario in "${scenarios[@]}"; do
  role_dir="${scenario%/molecule/default/molecule.yml}"
  role="$(basename "$role_dir")"
  echo "== molecule test: $role"
  if ! (cd "$role_dir" && molecule test); then
    failed+=("$role")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "molecule-all: failed: ${failed[*]}" >&2
  exit 1
fi
echo "molecule-all: ${#scenarios[@]} scenario(s) passed"

# Shell functions shared by scripts/services.sh and scripts/agent-host.sh (sourced, not run).

# Alive and not a zombie: what reaps our detached processes here (PID 1, or sshd's parent) may take a second or
# two, and `kill -0` succeeds on a zombie.
alive() {
  local state
  state=$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null || true)
  [ -n "$state" ] && [ "$state" != Z ]
}

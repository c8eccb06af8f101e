#!/usr/bin/env bash
# make demo: start the local services, run a worker, push real tasks as the Portal would, show live
# progress and the final statuses, then stop the worker gracefully.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PWD/.venv/bin:$PATH
eval "$(bash scripts/services.sh start)"
export ORCHESTRATOR_CONCURRENCY=${ORCHESTRATOR_CONCURRENCY:-4}
LOG=.run/demo-worker.log
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "starting a worker (log: $LOG)"
orchestrator worker >"$LOG" 2>&1 &
WORKER=$!
trap 'kill -TERM $WORKER 2>/dev/null || true; wait $WORKER 2>/dev/null || true' EXIT
for _ in $(seq 100); do orchestrator health --require-worker >/dev/null 2>&1 && break; sleep 0.1; done
orchestrator health

say "team.provision acme and globex (pushed together; they run concurrently)"
acme=$(orchestrator submit team.provision --payload '{"team_slug": "acme"}' --resource team-acme --user demo)
globex=$(orchestrator submit team.provision --payload '{"team_slug": "globex"}' --resource team-globex --user demo)
orchestrator watch "$acme" || true
orchestrator watch "$globex" || true

say "team.suspend then team.restart acme (same resource: they run in order)"
suspend=$(orchestrator submit team.suspend --payload '{"team_slug": "acme"}' --resource team-acme --user demo)
restart=$(orchestrator submit team.restart --payload '{"team_slug": "acme"}' --resource team-acme --user demo)
orchestrator watch "$suspend" || true
orchestrator watch "$restart" || true

say "bad input: a slug that is not a DNS label gets a clear failed status"
bad=$(orchestrator submit team.provision --payload '{"team_slug": "{{ lookup(\"pipe\", \"id\") }}"}' --user demo)
orchestrator watch "$bad" || true

say "team.delete globex"
delete=$(orchestrator submit team.delete --payload '{"team_slug": "globex"}' --resource team-globex --user demo)
orchestrator watch "$delete" || true

say "what the Portal saw on team:status (replayed from the orchestrator:events stream)"
python - <<'PY'
import json, os
import redis
r = redis.Redis.from_url(os.environ["REDIS_URL"])
for _id, fields in r.xrange("orchestrator:events"):
    if fields[b"channel"] == b"team:status":
        m = json.loads(fields[b"data"])
        meta = {k: ("<secret, %d chars>" % len(v) if k == "agent_webhook_secret" else v) for k, v in m["metadata"].items()}
        print(f'{m["timestamp"][11:19]}  {m["type"]:<9} {m["resource_id"]:<12} {m["status"]:<9} {m["error"] or ""} {meta}')
PY

say "files on disk ($ORCHESTRATOR_DATA_DIR/teams)"
find "$ORCHESTRATOR_DATA_DIR/teams" -maxdepth 4 | sort

say "stopping the worker gracefully"
kill -TERM $WORKER; wait $WORKER || true
trap - EXIT
orchestrator health || true
echo
echo "demo done. Services are still running: make services-stop stops them."

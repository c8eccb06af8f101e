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

say "workspace.provision acme/web: a repository from the template, an app registration with its redirect URI"
ws=$(orchestrator submit workspace.provision --payload '{"team_slug": "acme", "workspace_slug": "web"}' \
  --resource ws-acme-web --user demo)
orchestrator watch "$ws" || true

say "sandbox.provision s1 and s2 of acme/web at once: a branch and a clone each, redirect URIs under the app's lock"
s1=$(orchestrator submit sandbox.provision --payload '{"team_slug": "acme", "workspace_slug": "web", "sandbox_slug": "s1"}' \
  --resource sb-acme-web-s1 --user demo)
s2=$(orchestrator submit sandbox.provision --payload '{"team_slug": "acme", "workspace_slug": "web", "sandbox_slug": "s2"}' \
  --resource sb-acme-web-s2 --user demo)
orchestrator watch "$s1" || true
orchestrator watch "$s2" || true

say "the app registration kanban-acme-web as the (local) Graph has it"
python - <<'PY'
import json, os, urllib.parse, urllib.request
base = os.environ["AZURE_AUTHORITY_URL"]
form = urllib.parse.urlencode({"client_id": os.environ["AZURE_CLIENT_ID"], "client_secret": os.environ["AZURE_CLIENT_SECRET"],
                               "scope": "https://graph.microsoft.com/.default", "grant_type": "client_credentials"}).encode()
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
token = json.load(opener.open(f"{base}/{os.environ['AZURE_TENANT_ID']}/oauth2/v2.0/token", form))["access_token"]
query = urllib.parse.urlencode({"$filter": "displayName eq 'kanban-acme-web'"}, quote_via=urllib.parse.quote)
request = urllib.request.Request(f"{os.environ['GRAPH_API_URL']}/applications?{query}", headers={"Authorization": f"Bearer {token}"})
for app in json.load(opener.open(request))["value"]:
    print(f'appId {app["appId"]}  secrets {len(app["passwordCredentials"])}  redirect URIs:')
    for uri in app["web"]["redirectUris"]:
        print("   ", uri)
PY

say "agent.run in sandbox s1: the real Claude Code CLI on the agent host, every line of its stream live"
agent=$(orchestrator submit agent.run --payload '{"team_slug": "acme", "workspace_slug": "web", "sandbox_slug": "s1",
  "prompt": "Leave notes for the team in the sandbox. [[script:write]]", "tool_profile": "developer"}' \
  --resource agent-acme-web-s1 --user demo)
orchestrator watch "$agent" || true
echo "AGENT_NOTES.md in the sandbox's clone: $(cat "$ORCHESTRATOR_DATA_DIR/teams/acme/workspaces/web/sandboxes/s1/repo/AGENT_NOTES.md" 2>/dev/null)"

say "sandbox.delete s2 (its redirect URI goes, s1's stays)"
d2=$(orchestrator submit sandbox.delete --payload '{"team_slug": "acme", "workspace_slug": "web", "sandbox_slug": "s2"}' \
  --resource sb-acme-web-s2 --user demo)
orchestrator watch "$d2" || true

say "bad input: a slug that is not a DNS label gets a clear failed status"
bad=$(orchestrator submit team.provision --payload '{"team_slug": "{{ lookup(\"pipe\", \"id\") }}"}' --user demo)
orchestrator watch "$bad" || true

say "team.delete globex"
delete=$(orchestrator submit team.delete --payload '{"team_slug": "globex"}' --resource team-globex --user demo)
orchestrator watch "$delete" || true

say "what the Portal saw on the status channels (replayed from the orchestrator:events stream)"
python - <<'PY'
import json, os
import redis
r = redis.Redis.from_url(os.environ["REDIS_URL"])
for _id, fields in r.xrange("orchestrator:events"):
    if fields[b"channel"] in (b"team:status", b"workspace:status", b"sandbox:status"):
        m = json.loads(fields[b"data"])
        meta = {k: ("<secret, %d chars>" % len(v) if k == "agent_webhook_secret" else v) for k, v in m["metadata"].items()}
        print(f'{m["timestamp"][11:19]}  {m["type"]:<9} {m["resource_id"]:<12} {m["status"]:<9} {m["error"] or ""} {meta}')
PY

say "files on disk ($ORCHESTRATOR_DATA_DIR/teams)"
find "$ORCHESTRATOR_DATA_DIR/teams" -maxdepth 4 | sort

say "certificates from the local ACME CA (orchestrator certs)"
orchestrator certs || true

say "stopping the worker gracefully"
kill -TERM $WORKER; wait $WORKER || true
trap - EXIT
orchestrator health || true
echo
echo "demo done. Services are still running: make services-stop stops them."

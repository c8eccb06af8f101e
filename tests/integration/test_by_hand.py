"""Every playbook run by hand with `ansible-playbook` (README, "Running a playbook by hand"), with the extra vars
a worker gives every run (`orchestrator vars`), no worker involved: `--check` ends without a failed task and
changes nothing anywhere (GitHub, Graph, the data folder, Docker), on a fresh state (where later steps depend on
what the check of an earlier one could not create) and on an existing one; real runs give what the queue gives."""

from __future__ import annotations

import json
import re
import stat
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import BIN, ROOT, Env
from tests.contract.conftest import CLIENT_SECRET, ORG, TENANT, TOKEN, GitHub, Graph
from tests.integration.conftest import (
    app_serves,
    apps,
    assert_same,
    docker_state,
    ls_remote,
    project_containers,
    snapshot,
)

pytestmark = [pytest.mark.integration, pytest.mark.certificates]

TEAM = "hand"  # not "acme": other tests use it, and containers are named after the team
WS = {"team_slug": TEAM, "workspace_slug": "web"}
SB = {**WS, "sandbox_slug": "s1"}
TEAM_ONLY = {"team_slug": TEAM}
DOMAIN = "kanban.test"
REPO = f"{TEAM}-web"
APP = f"kanban-{TEAM}-web"
WS_HOST = f"web.{TEAM}.{DOMAIN}"
SB_HOST = f"s1.{WS_HOST}"
RECAP = re.compile(r"^localhost\s+:\s+(ok=.*)$", re.MULTILINE)


@dataclass
class Run:
    playbook: str
    check: bool
    output: str
    recap: dict[str, int]

    @property
    def changed(self) -> int:
        return self.recap["changed"]

    @property
    def text(self) -> str:
        """The output with its whitespace collapsed: the YAML callback folds long messages."""
        return " ".join(self.output.split())


class ByHand:
    """Runs playbooks the way an operator does: from the project root, ANSIBLE_CONFIG there, `-e @vars.yml` written
    by `orchestrator vars` from the test's settings. The secrets are only in that file, not in the environment."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.vars = env.tmp / "vars.yml"
        subprocess.run(
            [str(BIN / "orchestrator"), "vars", "--out", str(self.vars)],
            env=env.environ(),
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        assert stat.S_IMODE(self.vars.stat().st_mode) == 0o600
        self.environ = env.environ(ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
        for secret in ("GITHUB_TOKEN", "AZURE_CLIENT_SECRET"):
            self.environ.pop(secret, None)
        self.runs: list[Run] = []

    def run(self, playbook: str, payload: dict[str, str], *, check: bool) -> Run:
        argv = [str(BIN / "ansible-playbook"), f"playbooks/{playbook}.yml", "-e", f"@{self.vars}"]
        argv += ["-e", json.dumps(payload)] + (["--check"] if check else [])
        done = subprocess.run(
            argv, check=False, cwd=ROOT, env=self.environ, capture_output=True, text=True, timeout=280
        )
        output = done.stdout + done.stderr
        what = f"{playbook}{' --check' if check else ''}"
        found = RECAP.findall(output)
        assert done.returncode == 0 and found, f"{what} exited {done.returncode}:\n{output[-6000:]}"
        recap = {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", found[-1])}
        assert recap["failed"] == 0 and recap["unreachable"] == 0, f"{what}: {recap}\n{output[-6000:]}"
        for secret in (TOKEN, CLIENT_SECRET):
            assert secret not in output, f"a secret in the output of {what}"
        result = Run(playbook, check, output, recap)
        self.runs.append(result)
        return result

    def checks(self, *plays: tuple[str, dict[str, str]]) -> dict[str, Run]:
        """Check runs change nothing, so they may run side by side (the snapshot around them says whether one
        changed something)."""
        with ThreadPoolExecutor(max_workers=len(plays)) as pool:
            futures = {name: pool.submit(self.run, name, payload, check=True) for name, payload in plays}
            return {name: future.result() for name, future in futures.items()}


def assert_unchanged(before: dict[str, Any], after: dict[str, Any], runs: dict[str, Run]) -> None:
    """The state after check runs is the state before them."""
    assert all(run.check for run in runs.values())
    assert_same(before, after, "check runs")


def changed_tasks(run: Run) -> list[str]:
    """The names of the tasks a run reported changed (for the failure messages)."""
    names: list[str] = []
    current = ""
    for line in run.output.splitlines():
        if line.startswith("TASK ["):
            current = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed:") and (not names or names[-1] != current):
            names.append(current)
    return names


# -- the test ----------------------------------------------------------------------------------------------------

WORKSPACE_PLAYS = [
    ("workspace.provision", WS),
    ("sandbox.provision", SB),
    ("sandbox.agent.restart", SB),
    ("sandbox.delete", SB),
    ("workspace.delete", WS),
]
TEAM_PLAYS = [(name, TEAM_ONLY) for name in ("team.provision", "team.suspend", "team.restart", "team.delete")]
EVERY_PLAY = [*WORKSPACE_PLAYS, *TEAM_PLAYS, ("certificates.renew", {})]


def in_parallel(*steps: Callable[[], object]) -> None:
    """Runs each step (a function of no argument) in its own thread; the first failure is raised."""
    with ThreadPoolExecutor(max_workers=len(steps)) as pool:
        for future in [pool.submit(step) for step in steps]:
            future.result()


# The real runs are slow (about 150 tasks each); the team's go alongside the workspace's, and the check runs side by
# side, always while nothing else runs: each check batch sits between two snapshots.
@pytest.mark.timeout(600)
def test_every_playbook_by_hand(env: Env, github: GitHub, graph: Graph) -> None:
    hand = ByHand(env)
    team_dir = env.data_dir / "teams" / TEAM
    ws_dir = team_dir / "workspaces" / "web"
    certificates = env.data_dir / "certificates"

    # 1. Fresh: nothing exists. The sandbox's check depends on the workspace that a check could not create, restart
    # and suspend on a team a check could not provision: they go on, saying so. Nothing changes anywhere.
    fresh = snapshot(env, github, graph, TEAM)
    assert f"{ORG}/{REPO}" not in fresh["github"] and fresh["graph"] == [] and fresh["docker"]["containers"] == []
    checks = hand.checks(*EVERY_PLAY)
    assert_unchanged(fresh, snapshot(env, github, graph, TEAM), checks)
    # What a real run would do is reported as changed: the repository, the app, the folders, the containers...
    for name in ("workspace.provision", "sandbox.provision", "team.provision"):
        assert checks[name].changed >= 8, (name, changed_tasks(checks[name]))
    assert "github_repo : Report the repository a real run would generate (check mode)" in changed_tasks(
        checks["workspace.provision"]
    )
    assert "would create the branch sandbox/s1 of test-org/hand-web" in checks["sandbox.provision"].text
    assert f"would order a certificate for {SB_HOST}" in checks["sandbox.provision"].text
    assert f"would order a certificate for {TEAM}.{DOMAIN}" in checks["team.provision"].text
    assert f"team {TEAM} is not provisioned: a real run fails here" in checks["team.restart"].text
    # ... and deleting, restarting or renewing what does not exist changes nothing.
    for name in ("sandbox.agent.restart", "sandbox.delete", "workspace.delete", "team.delete", "certificates.renew"):
        assert checks[name].changed == 0, (name, changed_tasks(checks[name]))

    # 2. Real runs by hand give what the queue gives (test_workspaces.py, test_team_lifecycle.py).
    in_parallel(
        lambda: [hand.run(name, payload, check=False) for name, payload in WORKSPACE_PLAYS[:2]],
        lambda: hand.run("team.provision", TEAM_ONLY, check=False),
    )
    [app] = apps(graph, APP)
    secrets_file = ws_dir / ".secrets" / "azure.env"
    creds = dict(line.split("=", 1) for line in secrets_file.read_text().splitlines())
    assert creds["AZURE_CLIENT_ID"] == app["appId"] and creds["AZURE_TENANT_ID"] == TENANT
    assert [c["keyId"] for c in app["passwordCredentials"]] == [creds["AZURE_CLIENT_SECRET_ID"]]
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert sorted(app["web"]["redirectUris"]) == sorted(f"https://{h}/auth/callback" for h in (WS_HOST, SB_HOST))
    heads = ls_remote(github, REPO)
    assert "refs/heads/main" in heads and "refs/heads/sandbox/s1" in heads
    checkout = ws_dir / "sandboxes" / "s1" / "repo"
    assert (checkout / "README.md").exists() and TOKEN not in (checkout / ".git" / "config").read_text()
    assert app_serves(f"ws-{TEAM}-web", "README.md").startswith("# Workspace app")
    assert app_serves(f"sb-{TEAM}-web-s1", "README.md").startswith("# Workspace app")
    ws_db, sb_db = ws_dir / "app" / "data" / "db.json", ws_dir / "sandboxes" / "s1" / "app" / "data" / "db.json"
    assert json.loads(ws_db.read_text()) == {}
    assert sb_db.read_bytes() == ws_db.read_bytes() and sb_db.stat().st_ino != ws_db.stat().st_ino
    assert (team_dir / "state").read_text() == "active\n" and project_containers(f"team-{TEAM}")
    for host in (WS_HOST, SB_HOST, f"{TEAM}.{DOMAIN}"):
        assert (certificates / host / "fullchain.pem").exists(), host

    # 3. Existing: the provisions' and the renewal's checks change nothing and say so; the others report what they
    # would do (workspace.delete goes on past the sandbox a real run would refuse); nothing changes anywhere.
    existing = snapshot(env, github, graph, TEAM)
    checks = hand.checks(*EVERY_PLAY)
    assert_unchanged(existing, snapshot(env, github, graph, TEAM), checks)
    for name in ("workspace.provision", "sandbox.provision", "sandbox.agent.restart", "team.provision"):
        assert checks[name].changed == 0, (name, changed_tasks(checks[name]))
    assert checks["certificates.renew"].changed == 0, changed_tasks(checks["certificates.renew"])
    for name in ("sandbox.delete", "workspace.delete", "team.delete"):
        assert checks[name].changed >= 3, (name, changed_tasks(checks[name]))
    assert "would delete the branch sandbox/s1 of test-org/hand-web" in checks["sandbox.delete"].text
    assert f"would delete {ORG}/{REPO}" in checks["workspace.delete"].text
    assert "a real run refuses until they are deleted" in checks["workspace.delete"].text
    assert "compose_deploy : Stop the project's containers" in changed_tasks(checks["team.suspend"])
    assert "compose_deploy : Restart the project's containers" in changed_tasks(checks["team.restart"])

    # 4. Real deletes by hand: everything is gone.
    in_parallel(
        lambda: [hand.run(name, payload, check=False) for name, payload in WORKSPACE_PLAYS[3:]],
        lambda: hand.run("team.delete", TEAM_ONLY, check=False),
    )
    assert github.call("GET", f"/repos/{ORG}/{REPO}").status == 404
    assert apps(graph, APP) == []
    assert not team_dir.exists()
    assert docker_state(TEAM) == {"containers": [], "networks": [], "volumes": []}
    assert not any((certificates / host).exists() for host in (WS_HOST, SB_HOST, f"{TEAM}.{DOMAIN}"))
    secret = creds["AZURE_CLIENT_SECRET"]
    assert all(secret not in run.output for run in hand.runs)

"""All-or-nothing workspace and sandbox provisioning, through the queue as the Portal pushes tasks: a failure
injected at each step in turn (GitHub, Graph, ACME, Docker, database) leaves the real state of every part exactly
as it was before the task, reports `failed` naming the step, and the same task pushed again once the fault is gone
succeeds. A worker killed -9 in the middle of a rollback leaves the ledger to the worker that adopts the task,
which finishes the rollback instead of running the provision again."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from orchestrator import constants as k
from tests.conftest import Env, envelope, push, stream_messages, task_hash, wait_final, wait_for
from tests.contract.conftest import ORG, GitHub, Graph
from tests.integration.conftest import (
    CHALLTESTSRV,
    PLAIN,
    SB,
    WS,
    assert_same,
    not_retried,
    project_containers,
    snapshot,
)

pytestmark = [pytest.mark.integration, pytest.mark.certificates]


# What every provision shares, kept whatever happens to one: the certificates folder and the ACME account key; and
# the database role's <db>.lock beside a database, a convention, not a resource.
IGNORE = ("certificates", "certificates/.account", "certificates/.account/*", "*.lock")


def state(env: Env, github: GitHub, graph: Graph) -> dict[str, Any]:
    return snapshot(env, github, graph, "acme", IGNORE)


def _lines(*args: str) -> list[str]:
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()


@dataclass
class Fault:
    """A real fault at one step of a provision: `inject` makes the step fail, `clear` removes the cause."""

    task_type: str
    step: str  # what the failed status must name (the role of the failed task)
    reason: str  # and why
    inject: Callable[[Env, GitHub, Graph], None]
    clear: Callable[[Env, GitHub, Graph], None]


def _github_branches_refused(env: Env, github: GitHub, graph: Graph) -> None:
    # The repository gets created, then every read of its branches is refused: its content never shows.
    github.control("fail", {"count": 1000, "status": 401, "path_prefix": f"/repos/{ORG}/acme-web/branches"})


def _github_refs_refused(env: Env, github: GitHub, graph: Graph) -> None:
    github.control("fail", {"count": 1000, "status": 422, "path_prefix": f"/repos/{ORG}/acme-web/git/refs"})


def _graph_secret_refused(env: Env, github: GitHub, graph: Graph) -> None:
    graph.control("fail", {"method": "POST", "path": "/addPassword$", "status": 400, "count": 1000})


def _graph_update_refused(env: Env, github: GitHub, graph: Graph) -> None:
    graph.control("fail", {"method": "PATCH", "path": "^/v1\\.0/applications", "status": 403, "count": 1000})


def _github_clear(env: Env, github: GitHub, graph: Graph) -> None:
    github.control("clear-failures")


def _graph_clear(env: Env, github: GitHub, graph: Graph) -> None:
    graph.control("clear-failures")


def _challenge_unreachable(env: Env, github: GitHub, graph: Graph) -> None:
    # Pebble resolves the workspace's host to 127.0.0.2, where no edge answers: HTTP-01 validation fails.
    body = json.dumps({"host": "web.acme.kanban.test.", "addresses": ["127.0.0.2"]}).encode()
    PLAIN.open(urllib.request.Request(CHALLTESTSRV + "/add-a", data=body, method="POST"), timeout=5)


def _challenge_clear(env: Env, github: GitHub, graph: Graph) -> None:
    body = json.dumps({"host": "web.acme.kanban.test."}).encode()
    PLAIN.open(urllib.request.Request(CHALLTESTSRV + "/clear-a", data=body, method="POST"), timeout=5)


def _container_name_taken(project: str) -> Callable[[Env, GitHub, Graph], None]:
    def inject(env: Env, github: GitHub, graph: Graph) -> None:
        # A container outside the project holds the name compose gives the app's container: the engine refuses.
        subprocess.run(
            ["docker", "create", "--name", f"{project}-app-1", "kanban-workspace-app:latest"],
            capture_output=True,
            check=True,
        )

    return inject


def _container_name_free(project: str) -> Callable[[Env, GitHub, Graph], None]:
    def clear(env: Env, github: GitHub, graph: Graph) -> None:
        subprocess.run(["docker", "rm", "-f", f"{project}-app-1"], capture_output=True, check=True)

    return clear


def _workspace_db(env: Env) -> Path:
    return env.data_dir / "teams" / "acme" / "workspaces" / "web" / "app" / "data" / "db.json"


def _database_corrupt(env: Env, github: GitHub, graph: Graph) -> None:
    # The workspace's database is not TinyDB JSON any more: the clone's validation refuses it.
    db = _workspace_db(env)
    db.with_name("db.json.good").write_bytes(db.read_bytes())
    db.write_text('{"_default": {"1": {"title": "half-written')


def _database_restore(env: Env, github: GitHub, graph: Graph) -> None:
    db = _workspace_db(env)
    db.write_bytes(db.with_name("db.json.good").read_bytes())
    db.with_name("db.json.good").unlink()


FAULTS = {
    "workspace-github": Fault(
        "workspace.provision", "github_repo", "HTTP 401", _github_branches_refused, _github_clear
    ),
    "workspace-graph": Fault("workspace.provision", "azure_app", "addPassword", _graph_secret_refused, _graph_clear),
    "workspace-docker": Fault(
        "workspace.provision",
        "compose_deploy",
        "already in use",
        _container_name_taken("ws-acme-web"),
        _container_name_free("ws-acme-web"),
    ),
    "workspace-acme": Fault(
        "workspace.provision", "certificate", "could not validate", _challenge_unreachable, _challenge_clear
    ),
    "sandbox-github": Fault("sandbox.provision", "github_repo", "HTTP 422", _github_refs_refused, _github_clear),
    "sandbox-graph": Fault("sandbox.provision", "azure_app", "403", _graph_update_refused, _graph_clear),
    "sandbox-database": Fault(
        "sandbox.provision", "database", "is not a valid TinyDB database", _database_corrupt, _database_restore
    ),
    "sandbox-docker": Fault(
        "sandbox.provision",
        "compose_deploy",
        "already in use",
        _container_name_taken("sb-acme-web-s1"),
        _container_name_free("sb-acme-web-s1"),
    ),
}


def remove_acme_docker_objects() -> None:
    """Containers and networks of team acme's apps, whoever left them (a fault's container, an earlier test)."""
    for name in _lines("docker", "ps", "-a", "--format", "{{.Names}}"):
        if name.startswith(("ws-acme-", "sb-acme-")):
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
    for name in _lines("docker", "network", "ls", "--format", "{{.Name}}"):
        if name.startswith(("ws-acme-", "sb-acme-")):
            subprocess.run(["docker", "network", "rm", name], capture_output=True, check=False)


@pytest.fixture
def clean_docker() -> Iterator[None]:
    remove_acme_docker_objects()
    yield
    remove_acme_docker_objects()


def provision_fails_and_changes_nothing(
    task_id: str, fault: Fault, env: Env, redis: redis_lib.Redis, github: GitHub, graph: Graph
) -> dict[str, str]:
    """Inject the fault, push the provision, and check it failed naming the step, rolled back everything (the
    ledger is empty) and left every part exactly as it found it; the fault is cleared whatever happens."""
    payload, resource = (WS, "ws-1") if fault.task_type == "workspace.provision" else (SB, "sb-1")
    fault.inject(env, github, graph)
    before = state(env, github, graph)  # the fault's own change (a database rewritten, a container) included
    try:
        push(redis, envelope(task_id, fault.task_type, payload, resource=resource))
        env.run_burst(timeout=300)
        record = task_hash(redis, task_id)
        after = state(env, github, graph)
    finally:
        fault.clear(env, github, graph)
    assert record["status"] == "failed", record
    assert f"task '{fault.step} : " in record["error"] and fault.reason in record["error"], record["error"]
    assert "rollback incomplete" not in record["error"], record["error"]
    assert not redis.exists(k.ledger_key(task_id))
    assert_same(before, after)
    return record


def undone(redis: redis_lib.Redis, task_id: str) -> list[str]:
    """The kinds of resource the rollback of a task undid, in order."""
    messages = [str(m.get("message")) for m in stream_messages(redis, task_id)]
    return [m.split()[2] for m in messages if m.startswith("rolling back ")]


def test_workspace_failure_at_each_step_leaves_nothing_and_a_retry_succeeds(
    env: Env, redis: redis_lib.Redis, github: GitHub, graph: Graph, clean_docker: None
) -> None:
    # One fault after the other, each later in the flow: the repository, then the app registration's secret, then
    # the containers, then the certificate. Each provision fails, undoes what it made and leaves no trace.
    gh = provision_fails_and_changes_nothing("w-github", FAULTS["workspace-github"], env, redis, github, graph)
    assert undone(redis, "w-github") == ["github_repo", "home_directory"]
    az = provision_fails_and_changes_nothing("w-graph", FAULTS["workspace-graph"], env, redis, github, graph)
    assert "new application was deleted" in az["error"], az["error"]  # the module removed its half-made app
    assert undone(redis, "w-graph") == ["github_repo", "home_directory"]
    provision_fails_and_changes_nothing("w-docker", FAULTS["workspace-docker"], env, redis, github, graph)
    provision_fails_and_changes_nothing("w-acme", FAULTS["workspace-acme"], env, redis, github, graph)
    # Newest first: the app's containers and folder, the checkout, the app registration, the repository, the folder.
    assert undone(redis, "w-acme") == [
        "compose_project",
        "app_directory",
        "git_clone",
        "azure_app",
        "github_repo",
        "home_directory",
    ]
    assert not_retried(env) and gh["error"].count("HTTP 401") == 1
    # The same task again, every fault gone: it provisions everything.
    push(redis, envelope("w-again", "workspace.provision", WS, resource="ws-1"))
    env.run_burst(timeout=300)
    assert task_hash(redis, "w-again")["status"] == "completed", task_hash(redis, "w-again")
    done = state(env, github, graph)
    assert [app["displayName"] for app in done["graph"]] == ["kanban-acme-web"]
    assert any(ref.startswith("refs/heads/main ") for ref in done["github"][f"{ORG}/acme-web"]["refs"])
    assert project_containers("ws-acme-web")


def test_sandbox_failure_at_each_step_leaves_nothing_and_a_retry_succeeds(
    env: Env, redis: redis_lib.Redis, github: GitHub, graph: Graph, clean_docker: None
) -> None:
    push(redis, envelope("w-first", "workspace.provision", WS, resource="ws-1"))
    env.run_burst()
    assert task_hash(redis, "w-first")["status"] == "completed", task_hash(redis, "w-first")
    # The workspace app's data: what the sandbox's clone must carry over.
    _workspace_db(env).write_text('{"_default": {"1": {"title": "first card"}}}')
    for task_id, fault in (
        ("s-github", "sandbox-github"),
        ("s-graph", "sandbox-graph"),
        ("s-database", "sandbox-database"),
        ("s-docker", "sandbox-docker"),
    ):
        provision_fails_and_changes_nothing(task_id, FAULTS[fault], env, redis, github, graph)
    assert undone(redis, "s-docker") == [
        "compose_project",
        "database_clone",
        "app_directory",
        "azure_redirect_uri",
        "git_clone",
        "github_branch",
        "home_directory",
    ]
    push(redis, envelope("s-again", "sandbox.provision", SB, resource="sb-1"))
    env.run_burst(timeout=300)
    assert task_hash(redis, "s-again")["status"] == "completed", task_hash(redis, "s-again")
    done = state(env, github, graph)
    assert any(ref.startswith("refs/heads/sandbox/s1 ") for ref in done["github"][f"{ORG}/acme-web"]["refs"])
    assert project_containers("sb-acme-web-s1") and project_containers("ws-acme-web")
    sandbox_db = env.data_dir / "teams" / "acme" / "workspaces" / "web" / "sandboxes" / "s1" / "app" / "data"
    assert json.loads((sandbox_db / "db.json").read_text()) == {"_default": {"1": {"title": "first card"}}}


# A worker taken for dead 2 s after its last heartbeat.
SHORT_LEASE = {
    "ORCHESTRATOR_LEASE_TTL": "2",
    "ORCHESTRATOR_HEARTBEAT_INTERVAL": "0.5",
    "ORCHESTRATOR_REAP_INTERVAL": "0.5",
}


def test_kill9_during_rollback_the_next_worker_finishes_it(
    env: Env, redis: redis_lib.Redis, github: GitHub, graph: Graph, unreachable_host: str, clean_docker: None
) -> None:
    # The certificate cannot be validated: the provision fails after the repository, the app registration, the
    # checkout and the app; the worker is killed while it undoes the checkout (the third of five undo steps).
    env.extra["DOMAIN"] = "certfail.test"
    before = state(env, github, graph)
    first = env.start_worker(**SHORT_LEASE)
    push(redis, envelope("w-kill", "workspace.provision", WS, resource="ws-1"))

    def undoing_checkout() -> bool:
        return any("rolling back git_clone" in str(m.get("message")) for m in stream_messages(redis, "w-kill"))

    wait_for(undoing_checkout, 300, interval=0.02, what="the rollback of the checkout")
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    record = task_hash(redis, "w-kill")
    assert record["status"] == "running", record  # nothing final yet: the task is still held by the dead worker
    assert json.loads(record[k.ROLLBACK_FIELD])["status"] == "failed"
    left = [json.loads(e)["resource"] for e in redis.lrange(k.ledger_key("w-kill"), 0, -1)]
    assert "github_repo" in left and "azure_app" in left, left  # the ledger survived, older entries still in it

    second = env.start_worker(**SHORT_LEASE)
    record = wait_final(redis, "w-kill", 180)
    second.stop()
    assert record["status"] == "failed", record
    assert "could not validate " + unreachable_host in record["error"], record["error"]
    assert "rollback finished after the worker was lost" in record["error"], record["error"]
    assert "rollback incomplete" not in record["error"], record["error"]
    assert record["recoveries"] == "1"
    assert "finishing the rollback" in second.log()
    # The provision was not run again: its first step started once (the undo runs start with "Check the undo step").
    messages = [m.get("message") for m in stream_messages(redis, "w-kill")]
    assert messages.count("Check the slugs") == 1, messages
    assert not redis.exists(k.ledger_key("w-kill"))
    assert_same(before, state(env, github, graph))
    assert not_retried(env)

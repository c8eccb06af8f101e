"""workspace.* and sandbox.* against the local GitHub, through the queue as the Portal pushes them."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib

from devservices.github import seed
from tests.conftest import Env, Subscriber, envelope, push, task_hash
from tests.contract.conftest import ORG, TOKEN, GitHub, start_github

pytestmark = pytest.mark.integration

TEMPLATE = f"{ORG}/workspace-template"


@pytest.fixture
def github(tmp_path_factory: pytest.TempPathFactory, env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[GitHub]:
    server = start_github(tmp_path_factory.mktemp("github-queue"))
    monkeypatch.setenv("GITHUB_API_URL", server.base)
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    monkeypatch.setenv("GITHUB_TEMPLATE_REPO", TEMPLATE)
    assert seed.main() == 0
    env.extra.update(
        {"GITHUB_API_URL": server.base, "GITHUB_TOKEN": TOKEN, "GITHUB_ORG": ORG, "GITHUB_TEMPLATE_REPO": TEMPLATE}
    )
    yield server
    server.stop()


def ls_remote(github: GitHub, repo: str) -> str:
    return subprocess.run(
        ["git", "ls-remote", "--heads", github.clone_url(repo)],
        capture_output=True,
        text=True,
        check=True,
        env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin"},
    ).stdout


WS = {"team_slug": "acme", "workspace_slug": "web"}
SB = {**WS, "sandbox_slug": "s1"}


def test_workspace_and_sandbox_lifecycle(env: Env, redis: redis_lib.Redis, github: GitHub, tmp_path: Path) -> None:
    with Subscriber(redis, "workspace:status", "sandbox:status") as sub:
        push(redis, envelope("w-prov", "workspace.provision", WS, resource="ws-1"))
        env.run_burst()
        assert task_hash(redis, "w-prov")["status"] == "completed", task_hash(redis, "w-prov")
        [status] = sub.on("workspace:status")
        assert status["status"] == "active" and status["metadata"]["github_repo_url"].endswith("/acme-web")
        clone = tmp_path / "clone"
        subprocess.run(
            ["git", "clone", "-q", github.clone_url("acme-web"), str(clone)],
            check=True,
            env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        )
        assert (clone / "README.md").read_text().startswith("# Workspace app")

        push(redis, envelope("s-prov", "sandbox.provision", SB, resource="sb-1"))
        env.run_burst()
        assert task_hash(redis, "s-prov")["status"] == "completed", task_hash(redis, "s-prov")
        assert "refs/heads/sandbox/s1" in ls_remote(github, "acme-web")
        checkout = env.data_dir / "teams" / "acme" / "workspaces" / "web" / "sandboxes" / "s1" / "repo"
        assert (checkout / "README.md").exists()
        assert TOKEN not in (checkout / ".git" / "config").read_text()
        sandbox_status = sub.on("sandbox:status")[-1]
        assert sandbox_status["metadata"]["branch"] == "sandbox/s1"

        push(redis, envelope("s-del", "sandbox.delete", SB, resource="sb-1"))
        env.run_burst()
        assert task_hash(redis, "s-del")["status"] == "completed"
        assert "sandbox/s1" not in ls_remote(github, "acme-web")
        assert not checkout.exists()

        push(redis, envelope("w-del", "workspace.delete", WS, resource="ws-1"))
        env.run_burst()
        assert task_hash(redis, "w-del")["status"] == "completed"
        assert github.call("GET", f"/repos/{ORG}/acme-web").status == 404
    logs = "".join(w.log() for w in env.workers)
    assert TOKEN not in logs


def test_transient_errors_are_retried(env: Env, redis: redis_lib.Redis, github: GitHub) -> None:
    github.control("fail", {"count": 2, "status": 503, "path_prefix": f"/repos/{TEMPLATE}/generate"})
    push(redis, envelope("w-flaky", "workspace.provision", WS, resource="ws-2"))
    env.run_burst()
    assert task_hash(redis, "w-flaky")["status"] == "completed", task_hash(redis, "w-flaky")
    assert github.call("GET", f"/repos/{ORG}/acme-web").status == 200


def test_permanent_errors_fail_at_once(env: Env, redis: redis_lib.Redis, github: GitHub) -> None:
    push(redis, envelope("w-notemplate", "workspace.provision", {**WS, "template_repo": f"{ORG}/nope"}))
    env.run_burst()
    record = task_hash(redis, "w-notemplate")
    assert record["status"] == "failed"
    assert "404" in record["error"] and f"{ORG}/nope" in record["error"]
    assert record["attempts"] == "1"
    assert TOKEN not in record["error"]


def test_failure_after_repo_created_rolls_it_back(env: Env, redis: redis_lib.Redis, github: GitHub) -> None:
    # The repo gets created, then every look at its branch is refused: the provision fails and is undone.
    github.control("fail", {"count": 1000, "status": 401, "path_prefix": f"/repos/{ORG}/acme-web/branches"})
    push(redis, envelope("w-rb", "workspace.provision", WS, resource="ws-3"))
    env.run_burst()
    record = task_hash(redis, "w-rb")
    assert record["status"] == "failed", record
    assert "rollback incomplete" not in record["error"]
    github.control("reset")
    assert github.call("GET", f"/repos/{ORG}/acme-web").status == 404

"""Fixtures and helpers of the workspace and sandbox tests: the local GitHub and Graph wired into the test's
workers, and readers of the real state of every part (repositories, app registrations, containers, files)."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from devservices.github import seed
from tests.conftest import Env
from tests.contract.conftest import ORG, TOKEN, GitHub, Graph, start_github, start_graph

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


@pytest.fixture
def graph(tmp_path_factory: pytest.TempPathFactory, env: Env) -> Iterator[Graph]:
    server = start_graph(tmp_path_factory.mktemp("graph-queue"))
    env.extra.update(
        {
            "AZURE_AUTHORITY_URL": server.base,
            "GRAPH_API_URL": server.base + "/v1.0",
            "AZURE_TENANT_ID": server.tenant,
            "AZURE_CLIENT_ID": server.client_id,
            "AZURE_CLIENT_SECRET": server.client_secret,
            "DOMAIN": "kanban.test",
        }
    )
    yield server
    server.stop()


def apps(graph: Graph, name: str) -> list[dict[str, Any]]:
    reply = graph.call("GET", "/applications", query={"$filter": f"displayName eq '{name}'"})
    assert reply.status == 200, reply.data
    found: list[dict[str, Any]] = reply.json()["value"]
    return found


def redirect_uris(graph: Graph, name: str = "kanban-acme-web") -> list[str]:
    [app] = apps(graph, name)
    return sorted(app["web"]["redirectUris"])


def credentials(env: Env) -> dict[str, str]:
    path = env.data_dir / "teams" / "acme" / "workspaces" / "web" / ".secrets" / "azure.env"
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def project_containers(project: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


def app_serves(project: str, path: str) -> str:
    """What the app of a compose project serves at /app/<path> (its checkout), asked from inside its container,
    which must be healthy."""
    [container] = project_containers(project)
    health = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Health.Status}}", container], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert health == "healthy", health
    return subprocess.run(
        ["docker", "exec", container, "wget", "-qO-", f"http://127.0.0.1:8080/app/{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def not_retried(env: Env) -> bool:
    """No run of the task was tried again (a transient failure would log "failed transiently, retrying")."""
    return "failed transiently" not in "".join(w.log() for w in env.workers)


def ws_uri(host: str) -> str:
    return f"https://{host}.kanban.test/auth/callback"


CHALLTESTSRV = "http://127.0.0.1:8055"
PLAIN = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def unreachable_host() -> Iterator[str]:
    """A host name Pebble resolves to 127.0.0.2, where no edge answers: its validation cannot succeed."""
    host = "web.acme.certfail.test"
    body = json.dumps({"host": host + ".", "addresses": ["127.0.0.2"]}).encode()
    PLAIN.open(urllib.request.Request(CHALLTESTSRV + "/add-a", data=body, method="POST"), timeout=5)
    yield host
    body = json.dumps({"host": host + "."}).encode()
    PLAIN.open(urllib.request.Request(CHALLTESTSRV + "/clear-a", data=body, method="POST"), timeout=5)


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

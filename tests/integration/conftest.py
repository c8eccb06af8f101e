"""Fixtures and helpers of the workspace and sandbox tests: the local GitHub and Graph wired into the test's
workers, and readers of the real state of every part (repositories, app registrations, containers, files)."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import stat
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
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


GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin"}


def ls_remote(github: GitHub, repo: str) -> str:
    return subprocess.run(
        ["git", "ls-remote", "--heads", github.clone_url(repo)],
        capture_output=True,
        text=True,
        check=True,
        env=GIT_ENV,
    ).stdout


WS = {"team_slug": "acme", "workspace_slug": "web"}
SB = {**WS, "sandbox_slug": "s1"}


# -- the real state of every part a workspace, sandbox or team touches ---------------------------------------------


def files_state(root: Path, ignore: tuple[str, ...] = ()) -> dict[str, tuple[Any, ...]]:
    """Every file, folder and link under root (but those whose relative path matches a glob of `ignore`): mode,
    owner, group, and the SHA-256 of a file's content or a link's target."""
    tree: dict[str, tuple[Any, ...]] = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = Path(folder, name)
            rel = str(path.relative_to(root))
            if any(fnmatch.fnmatchcase(rel, pattern) for pattern in ignore):
                continue
            info = path.lstat()
            entry: tuple[Any, ...] = (oct(info.st_mode), info.st_uid, info.st_gid)
            if stat.S_ISREG(info.st_mode):
                entry += (hashlib.sha256(path.read_bytes()).hexdigest(),)
            elif stat.S_ISLNK(info.st_mode):
                entry += (os.readlink(path),)
            tree[rel] = entry
    return tree


def docker_state(team: str) -> dict[str, list[str]]:
    """The team's containers (id, name, image, state, creation), networks and volumes on the engine."""

    def named(*argv: str) -> list[str]:
        out = subprocess.run(["docker", *argv], capture_output=True, text=True, check=True).stdout
        return sorted(line for line in out.splitlines() if f"-{team}-" in line or f"-{team}_" in line)

    return {
        "containers": named("ps", "-a", "--format", "{{.ID}} {{.Names}} {{.Image}} {{.State}} {{.CreatedAt}}"),
        "networks": named("network", "ls", "--format", "{{.ID}} {{.Name}}"),
        "volumes": named("volume", "ls", "--format", "{{.Name}}"),
    }


def github_state(github: GitHub) -> dict[str, dict[str, Any]]:
    """Every repository the local GitHub serves, read from its bare repositories: default branch and refs."""
    state: dict[str, dict[str, Any]] = {}
    for bare in sorted((github.data_dir / "repos").glob("*/*.git")):

        def git(*argv: str, bare: Path = bare) -> str:
            return subprocess.run(
                ["git", "--git-dir", str(bare), *argv], capture_output=True, text=True, check=True, env=GIT_ENV
            ).stdout

        refs = git("for-each-ref", "--format=%(refname) %(objectname)").split("\n")
        state[f"{bare.parent.name}/{bare.name.removesuffix('.git')}"] = {
            "head": git("symbolic-ref", "HEAD").strip(),
            "refs": sorted(r for r in refs if r),
        }
    return state


def graph_state(graph: Graph) -> list[dict[str, Any]]:
    """Every application with its ids, redirect URIs and secrets (key ids and ends)."""
    reply = graph.call("GET", "/applications")
    assert reply.status == 200, reply.data
    return sorted(
        (
            {
                "id": app["id"],
                "appId": app["appId"],
                "displayName": app["displayName"],
                "redirectUris": sorted((app.get("web") or {}).get("redirectUris") or []),
                "secrets": sorted((c["keyId"], c.get("endDateTime")) for c in app.get("passwordCredentials") or []),
            }
            for app in reply.json()["value"]
        ),
        key=lambda app: str(app["displayName"]),
    )


def snapshot(env: Env, github: GitHub, graph: Graph, team: str, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """The real state of every part: the data folder, the team's Docker objects, GitHub and Graph."""
    return {
        "files": files_state(env.data_dir, ignore),
        "docker": docker_state(team),
        "github": github_state(github),
        "graph": graph_state(graph),
    }


def assert_same(before: dict[str, Any], after: dict[str, Any], what: str = "the runs") -> None:
    """Part by part, the state after is the state before (files named one by one)."""
    for part, then in before.items():
        now = after[part]
        if part == "files":
            added = sorted(set(now) - set(then))
            removed = sorted(set(then) - set(now))
            modified = sorted(path for path in set(then) & set(now) if then[path] != now[path])
            assert not (added or removed or modified), f"{what} changed files: {added=} {removed=} {modified=}"
        else:
            assert now == then, f"{what} changed {part}: {then} -> {now}"

"""workspace.* and sandbox.* against the local GitHub and the local Graph, through the queue as the Portal pushes
them, asserting on the real state of both."""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from tests.conftest import Env, Subscriber, envelope, push, task_hash
from tests.contract.conftest import CLIENT_SECRET, ORG, TENANT, TOKEN, GitHub, Graph
from tests.integration.conftest import (
    SB,
    TEMPLATE,
    WS,
    app_serves,
    apps,
    credentials,
    ls_remote,
    not_retried,
    project_containers,
    redirect_uris,
    ws_uri,
)

pytestmark = pytest.mark.integration


@pytest.mark.certificates
def test_workspace_and_sandbox_lifecycle(
    env: Env, redis: redis_lib.Redis, github: GitHub, graph: Graph, tmp_path: Path
) -> None:
    # GitHub answers the generate call 503 twice: the step tries again and the provision goes on.
    github.control("fail", {"count": 2, "status": 503, "path_prefix": f"/repos/{TEMPLATE}/generate"})
    with Subscriber(redis, "workspace:status", "sandbox:status") as sub:
        push(redis, envelope("w-prov", "workspace.provision", WS, resource="ws-1"))
        env.run_burst()
        assert task_hash(redis, "w-prov")["status"] == "completed", task_hash(redis, "w-prov")
        [status] = sub.on("workspace:status")
        assert status["status"] == "active" and status["metadata"]["github_repo_url"].endswith("/acme-web")
        # The app registration: the workspace's URI, a service principal (its secret gets a token), the secret in
        # a 0600 file only, the public ids in the metadata.
        [app] = apps(graph, "kanban-acme-web")
        assert app["web"]["redirectUris"] == [ws_uri("web.acme")]
        creds = credentials(env)
        assert creds["AZURE_CLIENT_ID"] == app["appId"] == status["metadata"]["client_id"]
        assert creds["AZURE_TENANT_ID"] == TENANT == status["metadata"]["tenant_id"]
        assert [c["keyId"] for c in app["passwordCredentials"]] == [creds["AZURE_CLIENT_SECRET_ID"]]
        assert graph.token(creds["AZURE_CLIENT_ID"], creds["AZURE_CLIENT_SECRET"])
        secrets_file = env.data_dir / "teams" / "acme" / "workspaces" / "web" / ".secrets" / "azure.env"
        assert secrets_file.stat().st_mode & 0o777 == 0o600
        assert secrets_file.parent.stat().st_mode & 0o777 == 0o700
        assert status["metadata"]["subdomain"] == "web.acme.kanban.test"
        clone = tmp_path / "clone"
        subprocess.run(
            ["git", "clone", "-q", github.clone_url("acme-web"), str(clone)],
            check=True,
            env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        )
        assert (clone / "README.md").read_text().startswith("# Workspace app")
        # The app runs the checkout, healthy, with its own database; the workspace's certificate is there.
        ws_dir = env.data_dir / "teams" / "acme" / "workspaces" / "web"
        assert app_serves("ws-acme-web", "README.md").startswith("# Workspace app")
        assert json.loads((ws_dir / "app" / "data" / "db.json").read_text()) == {}
        assert (env.data_dir / "certificates" / "web.acme.kanban.test" / "fullchain.pem").exists()

        # Graph throttles the redirect URI's update twice (429, Retry-After 1 s): the step waits it out.
        graph.control(
            "fail", {"method": "PATCH", "path": "^/v1\\.0/applications/", "status": 429, "count": 2, "retry_after": 1}
        )
        push(redis, envelope("s-prov", "sandbox.provision", SB, resource="sb-1"))
        env.run_burst()
        assert task_hash(redis, "s-prov")["status"] == "completed", task_hash(redis, "s-prov")
        assert not_retried(env)  # the 503s and the 429s were waited out inside their steps, no run tried again
        assert "refs/heads/sandbox/s1" in ls_remote(github, "acme-web")
        checkout = env.data_dir / "teams" / "acme" / "workspaces" / "web" / "sandboxes" / "s1" / "repo"
        assert (checkout / "README.md").exists()
        assert TOKEN not in (checkout / ".git" / "config").read_text()
        sandbox_status = sub.on("sandbox:status")[-1]
        assert sandbox_status["metadata"]["branch"] == "sandbox/s1"
        assert sandbox_status["metadata"]["subdomain"] == "s1.web.acme.kanban.test"
        assert redirect_uris(graph) == sorted([ws_uri("web.acme"), ws_uri("s1.web.acme")])
        # The sandbox app runs the branch's checkout with a clone of the workspace's database, never the same file.
        assert app_serves("sb-acme-web-s1", "README.md").startswith("# Workspace app")
        ws_db, sb_db = ws_dir / "app" / "data" / "db.json", ws_dir / "sandboxes" / "s1" / "app" / "data" / "db.json"
        assert sb_db.read_bytes() == ws_db.read_bytes() and sb_db.stat().st_ino != ws_db.stat().st_ino
        assert (env.data_dir / "certificates" / "s1.web.acme.kanban.test" / "fullchain.pem").exists()

        # A workspace with a sandbox is not deleted: the task fails, nothing is touched.
        push(redis, envelope("w-del-early", "workspace.delete", WS, resource="ws-1"))
        env.run_burst()
        refused = task_hash(redis, "w-del-early")
        assert refused["status"] == "failed" and "still has 1 sandbox(es) (s1)" in refused["error"], refused
        assert app_serves("ws-acme-web", "README.md") and apps(graph, "kanban-acme-web")

        push(redis, envelope("s-del", "sandbox.delete", SB, resource="sb-1"))
        env.run_burst()
        assert task_hash(redis, "s-del")["status"] == "completed"
        assert "sandbox/s1" not in ls_remote(github, "acme-web")
        assert not checkout.exists()
        assert redirect_uris(graph) == [ws_uri("web.acme")]
        assert not (ws_dir / "sandboxes" / "s1").exists() and project_containers("sb-acme-web-s1") == []
        assert not (env.data_dir / "certificates" / "s1.web.acme.kanban.test").exists()

        push(redis, envelope("w-del", "workspace.delete", WS, resource="ws-1"))
        env.run_burst()
        assert task_hash(redis, "w-del")["status"] == "completed"
        assert github.call("GET", f"/repos/{ORG}/acme-web").status == 404
        assert apps(graph, "kanban-acme-web") == []
        assert not secrets_file.exists() and not ws_dir.exists()
        assert project_containers("ws-acme-web") == []
        assert not (env.data_dir / "certificates" / "web.acme.kanban.test").exists()
    logs = "".join(w.log() for w in env.workers)
    assert TOKEN not in logs and CLIENT_SECRET not in logs


def test_permanent_errors_fail_at_once(env: Env, redis: redis_lib.Redis, github: GitHub, graph: Graph) -> None:
    push(redis, envelope("w-notemplate", "workspace.provision", {**WS, "template_repo": f"{ORG}/nope"}))
    env.run_burst()
    record = task_hash(redis, "w-notemplate")
    assert record["status"] == "failed"
    assert "404" in record["error"] and f"{ORG}/nope" in record["error"]
    assert not_retried(env)
    assert TOKEN not in record["error"]


def test_sandbox_on_workspace_without_app_fails_and_rolls_back(
    env: Env, redis: redis_lib.Redis, github: GitHub, graph: Graph
) -> None:
    # The repo exists (made by hand) but no app registration: the branch and clone made before the redirect URI
    # step are undone.
    github.call("POST", "/repos/" + TEMPLATE + "/generate", {"owner": ORG, "name": "acme-web"})
    github.wait_branch("acme-web", "main")
    push(redis, envelope("s-noapp", "sandbox.provision", SB, resource="sb-9"))
    env.run_burst()
    record = task_hash(redis, "s-noapp")
    assert record["status"] == "failed", record
    assert "kanban-acme-web" in record["error"] and "does not exist" in record["error"], record["error"]
    assert "sandbox/s1" not in ls_remote(github, "acme-web")
    assert not (env.data_dir / "teams" / "acme" / "workspaces" / "web" / "sandboxes" / "s1" / "repo").exists()


def run_bursts(env: Env, workers: int, concurrency: int, timeout: float = 600) -> None:
    """Several burst workers at once, as a deployment runs them; each must end cleanly."""
    started = [env.start_worker("--burst", "--concurrency", str(concurrency)) for _ in range(workers)]
    for worker in started:
        assert worker.process.wait(timeout) == 0, worker.log()


def test_ten_concurrent_sandboxes_all_active_with_isolated_databases(
    env: Env, redis: redis_lib.Redis, github: GitHub, graph: Graph
) -> None:
    push(redis, envelope("w-conc", "workspace.provision", WS, resource="ws-6"))
    env.run_burst()
    assert task_hash(redis, "w-conc")["status"] == "completed"
    ws_dir = env.data_dir / "teams" / "acme" / "workspaces" / "web"
    ws_db = ws_dir / "app" / "data" / "db.json"
    ws_db.write_text('{"_default": {"1": {"title": "shared card"}}}')
    names = [f"c{i}" for i in range(10)]
    with Subscriber(redis, "sandbox:status") as sub:
        for name in names:
            push(redis, envelope(f"s-{name}", "sandbox.provision", {**WS, "sandbox_slug": name}, resource=f"sb-{name}"))
        run_bursts(env, workers=2, concurrency=5)  # ten runs at once, on two workers
        active = {m["resource_id"] for m in sub.on("sandbox:status") if m["status"] == "active"}
    assert active == {f"sb-{name}" for name in names}
    for name in names:
        assert task_hash(redis, f"s-{name}")["status"] == "completed", task_hash(redis, f"s-{name}")
    # Every redirect URI kept (each added under the app registration's lock), ten branches, ten apps.
    assert redirect_uris(graph) == sorted([ws_uri("web.acme")] + [ws_uri(f"{n}.web.acme") for n in names])
    heads = ls_remote(github, "acme-web")
    assert all(f"refs/heads/sandbox/{name}" in heads for name in names), heads
    inodes = {ws_db.stat().st_ino}
    for name in names:
        db = ws_dir / "sandboxes" / name / "app" / "data" / "db.json"
        assert db.read_bytes() == ws_db.read_bytes()
        inodes.add(db.stat().st_ino)
        assert app_serves(f"sb-acme-web-{name}", "README.md").startswith("# Workspace app")
    assert len(inodes) == 11  # ten databases of their own, none the workspace's file
    # A write to one sandbox's database reaches no other.
    (ws_dir / "sandboxes" / "c0" / "app" / "data" / "db.json").write_text('{"_default": {}}')
    assert (ws_dir / "sandboxes" / "c1" / "app" / "data" / "db.json").read_bytes() == ws_db.read_bytes()

    # Half removed at once, none touching another's.
    for name in names[:5]:
        push(redis, envelope(f"d-{name}", "sandbox.delete", {**WS, "sandbox_slug": name}, resource=f"sb-{name}"))
    run_bursts(env, workers=1, concurrency=5)
    assert redirect_uris(graph) == sorted([ws_uri("web.acme")] + [ws_uri(f"{n}.web.acme") for n in names[5:]])
    for name in names:
        assert (ws_dir / "sandboxes" / name).exists() == (name in names[5:])
        assert bool(project_containers(f"sb-acme-web-{name}")) == (name in names[5:])


class FileWatcher:
    """Reads every file under a folder again and again while runs go, so short-lived run files (ansible-runner's
    private folder, partial event files) are seen too. vars.yml, the run's 0600 extra-vars file, is kept apart:
    it holds the orchestrator's own credentials by design, for that run only."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.seen: dict[str, bytes] = {}
        self.vars_files: dict[str, bytes] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> FileWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._scan()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._scan()
            self._stop.wait(0.01)

    def _scan(self) -> None:
        for path in self.root.rglob("*"):
            try:
                if path.is_file():
                    data = path.read_bytes()
                    target = self.vars_files if path.name == "vars.yml" else self.seen
                    key = f"{path}:{hash(data)}"
                    target[key] = data
            except OSError:
                continue


def as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def redis_dump(redis: redis_lib.Redis) -> bytes:
    out = []
    for key in redis.scan_iter(count=1000):
        kind = redis.type(key)
        out.append(key)
        if kind == b"string":
            out.append(redis.get(key) or b"")
        elif kind == b"hash":
            out.extend(as_bytes(k) + b"=" + as_bytes(v) for k, v in redis.hgetall(key).items())
        elif kind == b"list":
            out.extend(redis.lrange(key, 0, -1))
        elif kind == b"set":
            out.extend(redis.smembers(key))
        elif kind == b"zset":
            out.extend(redis.zrange(key, 0, -1))
        elif kind == b"stream":
            for _id, fields in redis.xrange(key):
                out.extend(as_bytes(k) + b"=" + as_bytes(v) for k, v in fields.items())
    return b"\n".join(out)


def test_secrets_appear_nowhere(env: Env, redis: redis_lib.Redis, github: GitHub, graph: Graph) -> None:
    runs = env.state_dir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    pubsub = redis.pubsub()  # type: ignore[no-untyped-call]
    pubsub.psubscribe("*")
    published: list[bytes] = []

    def drain() -> None:
        while (message := pubsub.get_message(timeout=0.01)) is not None:
            if isinstance(message.get("data"), bytes):
                published.append(message["data"])

    with FileWatcher(runs) as watcher:
        push(redis, envelope("w-s", "workspace.provision", WS, resource="ws-7"))
        env.run_burst()
        drain()
        app_secret = credentials(env)["AZURE_CLIENT_SECRET"]
        # One after the other, as the Portal sends them (a workspace's delete waits for its sandboxes).
        for task_id, kind, payload, resource in (
            ("s-s", "sandbox.provision", SB, "sb-7"),
            ("s-d", "sandbox.delete", SB, "sb-7"),
            ("w-d", "workspace.delete", WS, "ws-7"),
        ):
            push(redis, envelope(task_id, kind, payload, resource=resource))
            env.run_burst()
            drain()
    for task in ("w-s", "s-s", "s-d", "w-d"):
        assert task_hash(redis, task)["status"] == "completed", task_hash(redis, task)
    # The Graph tokens the runs used: the cache holds the one in use.
    tokens = [json.loads(p.read_text())["access_token"] for p in (env.state_dir / "azure").glob("graph-token-*.json")]
    assert tokens, "the runs cached no Graph token"
    logs = "".join(w.log() for w in env.workers).encode()
    stored = redis_dump(redis)
    assert watcher.seen, "no run file was seen"
    assert any(b"orchestrator_task_id" in data for data in watcher.vars_files.values())
    everywhere = {
        "worker logs": logs,
        "Redis keys": stored,
        "published messages": b"\n".join(published),
        "run files": b"\n".join(watcher.seen.values()),
    }
    generated = {
        "app client secret": app_secret.encode(),
        **{f"Graph token {i}": t.encode() for i, t in enumerate(tokens)},
    }
    for where, blob in everywhere.items():
        for what, secret in generated.items():
            assert secret not in blob, f"{what} found in {where}"
        for what, secret in {"orchestrator client secret": CLIENT_SECRET, "GitHub token": TOKEN}.items():
            assert secret.encode() not in blob, f"{what} found in {where}"
    # The generated secret and the tokens are not even in the run's own vars file.
    for what, secret in generated.items():
        assert all(secret not in data for data in watcher.vars_files.values()), f"{what} found in a vars file"
    assert graph.process.poll() is None
    assert urllib.parse.quote(app_secret) not in logs.decode()

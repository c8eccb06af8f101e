"""workspace.* and sandbox.* against the local GitHub and the local Graph, through the queue as the Portal pushes
them, asserting on the real state of both."""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from devservices.github import seed
from tests.conftest import Env, Subscriber, envelope, push, stream_messages, task_hash
from tests.contract.conftest import CLIENT_SECRET, ORG, TENANT, TOKEN, GitHub, Graph, start_github, start_graph

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


def test_workspace_and_sandbox_lifecycle(
    env: Env, redis: redis_lib.Redis, github: GitHub, graph: Graph, tmp_path: Path
) -> None:
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

        push(redis, envelope("s-prov", "sandbox.provision", SB, resource="sb-1"))
        env.run_burst()
        assert task_hash(redis, "s-prov")["status"] == "completed", task_hash(redis, "s-prov")
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


def test_transient_errors_are_retried(env: Env, redis: redis_lib.Redis, github: GitHub, graph: Graph) -> None:
    github.control("fail", {"count": 2, "status": 503, "path_prefix": f"/repos/{TEMPLATE}/generate"})
    push(redis, envelope("w-flaky", "workspace.provision", WS, resource="ws-2"))
    env.run_burst()
    assert task_hash(redis, "w-flaky")["status"] == "completed", task_hash(redis, "w-flaky")
    assert github.call("GET", f"/repos/{ORG}/acme-web").status == 200


def test_permanent_errors_fail_at_once(env: Env, redis: redis_lib.Redis, github: GitHub, graph: Graph) -> None:
    push(redis, envelope("w-notemplate", "workspace.provision", {**WS, "template_repo": f"{ORG}/nope"}))
    env.run_burst()
    record = task_hash(redis, "w-notemplate")
    assert record["status"] == "failed"
    assert "404" in record["error"] and f"{ORG}/nope" in record["error"]
    assert not_retried(env)
    assert TOKEN not in record["error"]


def test_failure_after_repo_created_rolls_it_back(
    env: Env, redis: redis_lib.Redis, github: GitHub, graph: Graph
) -> None:
    # The repo gets created, then every look at its branch is refused: the provision fails and is undone.
    github.control("fail", {"count": 1000, "status": 401, "path_prefix": f"/repos/{ORG}/acme-web/branches"})
    push(redis, envelope("w-rb", "workspace.provision", WS, resource="ws-3"))
    env.run_burst()
    record = task_hash(redis, "w-rb")
    assert record["status"] == "failed", record
    assert "rollback incomplete" not in record["error"]
    github.control("reset")
    assert github.call("GET", f"/repos/{ORG}/acme-web").status == 404


def test_app_secret_failure_removes_new_app_then_rolls_back_repo(
    env: Env, redis: redis_lib.Redis, github: GitHub, graph: Graph
) -> None:
    # The app gets created, then Graph refuses its secret: the module deletes the app it made, the worker's
    # rollback deletes the repository created before it; the task fails once, naming the step.
    graph.control("fail", {"method": "POST", "path": "/addPassword$", "status": 400, "count": 100})
    push(redis, envelope("w-nosecret", "workspace.provision", WS, resource="ws-4"))
    env.run_burst()
    record = task_hash(redis, "w-nosecret")
    assert record["status"] == "failed", record
    assert "addPassword" in record["error"] and "new application was deleted" in record["error"], record["error"]
    assert not_retried(env)
    assert "rollback incomplete" not in record["error"]
    graph.control("reset")
    assert apps(graph, "kanban-acme-web") == []
    assert github.call("GET", f"/repos/{ORG}/acme-web").status == 404


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


def test_graph_throttling_waits_out_retry_after(env: Env, redis: redis_lib.Redis, github: GitHub, graph: Graph) -> None:
    push(redis, envelope("w-ok", "workspace.provision", WS, resource="ws-5"))
    env.run_burst()
    assert task_hash(redis, "w-ok")["status"] == "completed"
    graph.control(
        "fail", {"method": "PATCH", "path": "^/v1\\.0/applications/", "status": 429, "count": 2, "retry_after": 1}
    )
    push(redis, envelope("s-throttled", "sandbox.provision", SB, resource="sb-5"))
    env.run_burst()
    record = task_hash(redis, "s-throttled")
    assert record["status"] == "completed", record
    assert not_retried(env)  # waited inside the step, no task-level retry
    assert redirect_uris(graph) == sorted([ws_uri("web.acme"), ws_uri("s1.web.acme")])


def test_concurrent_sandboxes_keep_every_redirect_uri(
    env: Env, redis: redis_lib.Redis, github: GitHub, graph: Graph
) -> None:
    push(redis, envelope("w-conc", "workspace.provision", WS, resource="ws-6"))
    env.run_burst()
    assert task_hash(redis, "w-conc")["status"] == "completed"
    names = [f"c{i}" for i in range(6)]
    for name in names:
        push(redis, envelope(f"s-{name}", "sandbox.provision", {**WS, "sandbox_slug": name}, resource=f"sb-{name}"))
    env.run_burst("--concurrency", "6", timeout=300)
    for name in names:
        assert task_hash(redis, f"s-{name}")["status"] == "completed", task_hash(redis, f"s-{name}")
    assert redirect_uris(graph) == sorted([ws_uri("web.acme")] + [ws_uri(f"{n}.web.acme") for n in names])
    # And all removed at once, none touching another's.
    for name in names[:3]:
        push(redis, envelope(f"d-{name}", "sandbox.delete", {**WS, "sandbox_slug": name}, resource=f"sb-{name}"))
    env.run_burst("--concurrency", "3", timeout=300)
    assert redirect_uris(graph) == sorted([ws_uri("web.acme")] + [ws_uri(f"{n}.web.acme") for n in names[3:]])


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


def test_certificate_failure_rolls_back_app_then_repo(
    env: Env, redis: redis_lib.Redis, github: GitHub, graph: Graph, unreachable_host: str
) -> None:
    # Repo, then app registration, then the certificate, whose HTTP-01 validation cannot succeed: failed at once
    # (not retried: the CA's "connection refused" is about the edge), the app and the repo rolled back in that order.
    env.extra["DOMAIN"] = "certfail.test"
    push(redis, envelope("w-nocert", "workspace.provision", WS, resource="ws-8"))
    env.run_burst(timeout=300)
    record = task_hash(redis, "w-nocert")
    assert record["status"] == "failed", record
    assert "could not validate " + unreachable_host in record["error"], record["error"]
    assert not_retried(env)
    assert "rollback incomplete" not in record["error"]
    assert apps(graph, "kanban-acme-web") == []
    assert github.call("GET", f"/repos/{ORG}/acme-web").status == 404
    assert not (env.data_dir / "certificates" / unreachable_host).exists()
    undone = [m["message"] for m in stream_messages(redis, "w-nocert") if "rolling back" in str(m.get("message"))]
    # Newest first: the app's containers and folder, the checkout, the app registration, the repository.
    kinds = [message.split()[2] for message in undone]
    assert kinds == ["compose_project", "app_directory", "git_clone", "azure_app", "github_repo"], undone
    assert project_containers("ws-acme-web") == []
    assert not (env.data_dir / "teams" / "acme" / "workspaces" / "web" / "app").exists()

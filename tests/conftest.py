"""Shared fixtures: a private Redis server (real), a worker process (real), Portal-style helpers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from orchestrator import constants as k

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    directory: Path

    def client(self) -> redis_lib.Redis:
        return redis_lib.Redis.from_url(self.url)


def start_redis(directory: Path, port: int | None = None) -> RedisServer:
    port = port or free_port()
    directory.mkdir(parents=True, exist_ok=True)
    redis_bin = shutil.which("redis-server")
    assert redis_bin, "redis-server is not installed: run make setup"
    process = subprocess.Popen(
        [
            redis_bin,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(directory),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(directory / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis_lib.Redis(host="127.0.0.1", port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis_lib.ConnectionError:
            time.sleep(0.05)
    else:
        process.kill()
        raise RuntimeError("redis-server did not start")
    return RedisServer(f"redis://127.0.0.1:{port}/0", port, process, directory)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.process.terminate()
    server.process.wait(10)


@pytest.fixture
def redis(redis_server: RedisServer) -> Iterator[redis_lib.Redis]:
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="session")
def plans_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared across tests so each playbook's task list is computed once per session."""
    return tmp_path_factory.mktemp("state")


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log().splitlines() if line.startswith("{")]

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


@dataclass
class Env:
    """Everything a test needs to run workers against the private Redis."""

    redis_url: str
    data_dir: Path
    state_dir: Path
    tmp: Path
    extra: dict[str, str] = field(default_factory=dict)
    workers: list[WorkerProcess] = field(default_factory=list)

    def environ(self, **overrides: str) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("ORCHESTRATOR_", "ANSIBLE_"))}
        env.update(
            {
                "REDIS_URL": self.redis_url,
                "ORCHESTRATOR_DATA_DIR": str(self.data_dir),
                "ORCHESTRATOR_STATE_DIR": str(self.state_dir),
                "ORCHESTRATOR_LOG_LEVEL": "DEBUG",
                "ORCHESTRATOR_RETRY_MIN_WAIT": "0.2",
                "ORCHESTRATOR_RETRY_MAX_WAIT": "0.5",
                "ORCHESTRATOR_GRACE_PERIOD": "30",
                "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            }
        )
        env.update(self.extra)
        env.update(overrides)
        return env

    def start_worker(self, *args: str, **overrides: str) -> WorkerProcess:
        log_path = self.tmp / f"worker-{len(self.workers)}.log"
        handle = log_path.open("wb")
        process = subprocess.Popen(
            [str(BIN / "orchestrator"), "worker", *args],
            env=self.environ(**overrides),
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        worker = WorkerProcess(process, log_path)
        self.workers.append(worker)
        return worker

    def run_burst(self, *args: str, timeout: float = 120, **overrides: str) -> WorkerProcess:
        worker = self.start_worker("--burst", *args, **overrides)
        assert worker.process.wait(timeout) == 0, worker.log()
        return worker


def services_env() -> dict[str, str]:
    """The environment `make services` printed (.run/env): where the local Pebble, GitHub and Graph listen."""
    path = ROOT / ".run" / "env"
    assert path.exists(), "the local services are not running: run `make services`"
    values = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.removeprefix("export ").partition("=")
        if sep:
            values[name] = value
    return values


# Workers always know the local Pebble (make services); provisions get certificates from it in the tests marked
# `certificates` (every certificate flow, the workspace and sandbox lifecycle, the faults, the runs by hand), as in
# the demo. The others leave them off: an order is 40% of a provision's time, and they test something else.
ACME_ENV = ("ACME_DIRECTORY_URL", "ACME_CA_BUNDLE", "ACME_EMAIL", "ACME_WEBROOT")


@pytest.fixture
def env(
    request: pytest.FixtureRequest, redis: redis_lib.Redis, redis_server: RedisServer, tmp_path: Path, plans_dir: Path
) -> Iterator[Env]:
    data = tmp_path / "data"
    data.mkdir()
    environment = Env(redis_server.url, data, plans_dir, tmp_path)
    services = services_env()
    environment.extra.update({name: services[name] for name in ACME_ENV})
    certificates = request.node.get_closest_marker("certificates") is not None
    environment.extra["ORCHESTRATOR_CERTIFICATES"] = "true" if certificates else "false"
    yield environment
    for worker in environment.workers:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait(10)
    remove_compose_projects_under(tmp_path)


def remove_compose_projects_under(root: Path) -> None:
    """Remove the containers, networks and volumes of every compose project whose files lived under `root`
    (a test's own folder), so that no test leaves a running team behind."""
    if not shutil.which("docker"):
        return
    label = "com.docker.compose.project.working_dir"
    listed = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={label}"], capture_output=True, text=True, check=False
    ).stdout.split()
    projects = set()
    for container in listed:
        inspected = subprocess.run(
            [
                "docker",
                "inspect",
                "-f",
                f'{{{{ index .Config.Labels "{label}" }}}}|{{{{ index .Config.Labels "com.docker.compose.project" }}}}',
                container,
            ],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        working_dir, _, project = inspected.partition("|")
        if working_dir.startswith(str(root)):
            projects.add(project)
    for project in projects:
        filters = ["--filter", f"label=com.docker.compose.project={project}"]
        for kind, remove in (("container", ["rm", "-f"]), ("network", ["rm"]), ("volume", ["rm", "-f"])):
            ids = subprocess.run(
                ["docker", kind, "ls", "-aq" if kind == "container" else "-q", *filters],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.split()
            if ids:
                subprocess.run(["docker", kind, *remove, *ids], capture_output=True, check=False)


def push(redis: redis_lib.Redis, body: bytes | str | dict[str, Any], *, queue: str = k.QUEUE_NORMAL) -> None:
    """LPUSH exactly as the Portal does."""
    if isinstance(body, dict):
        body = json.dumps(body)
    redis.lpush(queue, body)


def envelope(
    task_id: str, task_type: str, payload: dict[str, Any], *, user: str = "u1", resource: str | None = None
) -> dict[str, Any]:
    return {
        "id": task_id,
        "type": task_type,
        "user_id": user,
        "resource_id": resource or f"res-{task_id}",
        "payload": payload,
    }


def task_hash(redis: redis_lib.Redis, task_id: str) -> dict[str, str]:
    return {key.decode(): value.decode() for key, value in redis.hgetall(k.task_key(task_id)).items()}


def wait_for(predicate: Any, timeout: float = 60, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_final(redis: redis_lib.Redis, task_id: str, timeout: float = 120) -> dict[str, str]:
    def final() -> dict[str, str] | None:
        record = task_hash(redis, task_id)
        return record if record.get("status") in k.FINAL_STATUSES else None

    return wait_for(final, timeout, what=f"final status of {task_id}")  # type: ignore[no-any-return]


def stream_messages(redis: redis_lib.Redis, task_id: str) -> list[dict[str, Any]]:
    out = []
    for _id, fields in redis.xrange(k.task_stream(task_id)):
        message = json.loads(fields[b"data"])
        message["_channel"] = fields[b"channel"].decode()
        out.append(message)
    return out


class Subscriber:
    """Collects every message published on some channel patterns, in a background thread (as the Portal would)."""

    def __init__(self, client: redis_lib.Redis, *patterns: str):
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]

        def handler(message: dict[str, Any]) -> None:
            channel = message["channel"].decode()
            if not channel.startswith("__keyspace@"):  # the queues' wake-up notifications
                self.messages.append((channel, json.loads(message["data"])))

        self._pubsub.psubscribe(**{pattern: handler for pattern in patterns})
        self._thread = self._pubsub.run_in_thread(sleep_time=0.01, daemon=True)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.stop()
        self._thread.join(5)

    def on(self, channel: str) -> list[dict[str, Any]]:
        return [m for c, m in self.messages if c == channel]

"""The CLI as operators use it, and several workers sharing one Redis."""

from __future__ import annotations

import json
import subprocess
from collections import Counter

import pytest
import redis as redis_lib

from orchestrator import constants as k
from tests.conftest import BIN, Env, Subscriber, envelope, push, task_hash, wait_final

pytestmark = pytest.mark.integration


def cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "orchestrator"), *args], env=env.environ(), capture_output=True, text=True, timeout=120, check=False
    )


def test_submit_watch_status_health(env: Env, redis: redis_lib.Redis) -> None:
    unhealthy = cli(env, "health", "--require-worker", "--json")
    assert unhealthy.returncode == 1 and json.loads(unhealthy.stdout)["redis"] is True
    worker = env.start_worker()
    submitted = cli(env, "submit", "team.provision", "--payload", '{"team_slug": "clidemo"}', "--json", "--user", "op")
    task_id = json.loads(submitted.stdout)["task_id"]
    watched = cli(env, "watch", task_id, "--json")
    assert watched.returncode == 0, watched.stderr
    lines = [json.loads(line) for line in watched.stdout.splitlines()]
    assert lines[0]["type"] == "task.started" and lines[-1]["type"] == "task.completed"
    assert any(line["type"] == "task.progress" for line in lines)
    status = json.loads(cli(env, "status", task_id, "--json").stdout)
    assert status["status"] == "completed" and status["priority"] == "high"  # the seed's priority for the type
    health = cli(env, "health", "--require-worker", "--json")
    assert health.returncode == 0
    assert [w["heartbeat_age"] is not None for w in json.loads(health.stdout)["workers"]] == [True]
    assert cli(env, "status", "nope").returncode == 3
    assert cli(env, "cancel", task_id).returncode == 3  # already final
    bad = cli(env, "submit", "team.provision", "--payload", "{not json")
    assert bad.returncode == 2 and "not JSON" in bad.stderr
    assert worker.stop() == 0
    assert json.loads(cli(env, "health", "--json").stdout)["workers"] == []  # left cleanly


def test_two_workers_share_the_queues(env: Env, redis: redis_lib.Redis) -> None:
    with Subscriber(redis, "tasks:*") as sub:
        for i in range(8):
            push(
                redis,
                envelope(f"m{i}", "team.provision", {"team_slug": f"multi{i}"}),
                queue=k.QUEUE_HIGH if i % 2 else k.QUEUE_NORMAL,
            )
        first, second = env.start_worker("--concurrency", "2"), env.start_worker("--concurrency", "2")
        records = [wait_final(redis, f"m{i}", 180) for i in range(8)]
        assert first.stop() == 0 and second.stop() == 0
    assert all(r["status"] == "completed" for r in records)
    assert len({r["worker"] for r in records}) == 2  # both took part
    finals = Counter(m["task_id"] for _, m in sub.messages if m["type"] == "task.completed")
    starts = Counter(m["task_id"] for _, m in sub.messages if m["type"] == "task.started")
    assert finals == starts == Counter({f"m{i}": 1 for i in range(8)})
    assert task_hash(redis, "m0")["attempts"] == "1"

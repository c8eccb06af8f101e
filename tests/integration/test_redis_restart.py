"""Redis restarting (AOF on) in the middle of a run: the task still ends with exactly one final status."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from orchestrator import constants as k
from tests.conftest import Env, envelope, push, start_redis, task_hash, wait_final, wait_for

pytestmark = pytest.mark.integration


def test_task_survives_a_redis_restart(env: Env, tmp_path: Path) -> None:
    server = start_redis(tmp_path / "own-redis")
    try:
        redis = server.client()
        env.redis_url = server.url
        worker = env.start_worker()
        push(redis, envelope("rr-1", "team.provision", {"team_slug": "survivor"}))
        push(redis, envelope("rr-2", "team.provision", {"team_slug": "second"}))
        wait_for(lambda: task_hash(redis, "rr-1").get("status") == "running", 30, what="rr-1 running")
        time.sleep(0.5)
        server.process.terminate()
        server.process.wait(10)
        time.sleep(2)  # the run goes on while Redis is away; progress and heartbeats fail and are retried
        server = start_redis(tmp_path / "own-redis", port=server.port)
        redis = server.client()
        for task_id in ("rr-1", "rr-2"):
            record = wait_final(redis, task_id, 120)
            assert record["status"] == "completed", record
        assert (env.data_dir / "teams" / "survivor" / "docker-compose.yml").exists()
        finals = [m for _, f in redis.xrange(k.task_stream("rr-1")) if (m := f[b"data"]) and b"task.completed" in m]
        assert len(finals) == 1
        assert worker.stop() == 0
        assert not [key for key in redis.keys("orchestrator:worker:*:processing") if redis.llen(key)]
    finally:
        server.process.terminate()
        server.process.wait(10)

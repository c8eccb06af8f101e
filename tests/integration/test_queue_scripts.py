"""The Lua scripts on a real Redis: take order and lines, claim once, requeue keeps its place, finish once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis as redis_lib
from redis.asyncio import Redis

from orchestrator import constants as k
from orchestrator.constants import TaskStatus
from orchestrator.queue import TaskQueue, line_of
from orchestrator.redact import Redactor
from orchestrator.status import Publisher, TaskRef
from tests.conftest import RedisServer, envelope, push

pytestmark = pytest.mark.integration


def run(coro_fn: Callable[[Redis], Awaitable[Any]], server: RedisServer) -> Any:
    async def main() -> Any:
        client = Redis.from_url(server.url)
        try:
            return await coro_fn(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_take_order_and_lines(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    push(redis, envelope("n1", "team.provision", {"team_slug": "a"}, resource="r1"))
    push(redis, envelope("n2", "team.delete", {"team_slug": "a"}, resource="r1"))
    push(redis, envelope("h1", "team.restart", {"team_slug": "a"}, resource="r1"), queue=k.QUEUE_HIGH)
    push(redis, b"garbage")

    async def scenario(client: Redis) -> list[tuple[str, str, bool]]:
        queue = TaskQueue(client, worker_id="w1", lease_ttl=10)
        taken = []
        while (held := await queue.take()) is not None:
            taken.append(
                (json.loads(held.body)["id"] if held.body.startswith(b"{") else "garbage", held.line, held.joined_line)
            )
        return taken

    taken = run(scenario, redis_server)
    line = line_of("team.provision", "r1")
    assert taken == [("h1", line, True), ("n1", line, True), ("n2", line, True), ("garbage", "", False)]
    assert [x.decode() for x in redis.lrange(line, 0, -1)] == ["h1", "n1", "n2"]
    assert redis.llen(k.processing_key("w1")) == 4


def test_agent_runs_line_up_by_their_clone(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    """Two agent runs in one sandbox wait for each other whatever resource ids they came with; the take script and
    line_of agree."""
    sandbox = {"team_slug": "a", "workspace_slug": "w", "sandbox_slug": "s", "prompt": "p"}
    push(redis, envelope("g1", "agent.run", sandbox, resource="card-1"))
    push(redis, envelope("g2", "agent.run", sandbox, resource="card-2"))
    workspace = {"team_slug": "a", "workspace_slug": "w", "prompt": "p"}
    push(redis, envelope("g3", "agent.run", workspace, resource="card-3"))
    push(redis, envelope("g4", "agent.run", {"prompt": "no slugs"}, resource="card-4"))

    async def scenario(client: Redis) -> list[tuple[str, str]]:
        queue = TaskQueue(client, worker_id="w1", lease_ttl=10)
        taken = []
        while (held := await queue.take()) is not None:
            taken.append((json.loads(held.body)["id"], held.line))
        return taken

    taken = run(scenario, redis_server)
    assert taken == [
        ("g1", "orchestrator:line:agent:a/w/s"),
        ("g2", "orchestrator:line:agent:a/w/s"),
        ("g3", "orchestrator:line:agent:a/w/_workspace"),
        ("g4", "orchestrator:line:agent:card-4"),
    ]
    assert taken[0][1] == line_of("agent.run", "card-1", sandbox)
    assert taken[2][1] == line_of("agent.run", "card-3", workspace)
    assert taken[3][1] == line_of("agent.run", "card-4", {"prompt": "no slugs"})


def test_claim_once_and_requeue_keeps_line_place(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    push(redis, envelope("t1", "team.provision", {"team_slug": "a"}, resource="r1"))
    push(redis, envelope("t2", "team.delete", {"team_slug": "a"}, resource="r1"))
    line = line_of("team.provision", "r1")

    async def scenario(client: Redis) -> None:
        queue = TaskQueue(client, worker_id="w1", lease_ttl=10)
        first = await queue.take()
        second = await queue.take()
        assert first is not None and second is not None
        claim = await queue.claim("t1", line, {"status": "queued"})
        assert claim.claimed and not claim.cancel_requested
        again = await TaskQueue(client, worker_id="w2", lease_ttl=10).claim("t1", line, {"status": "queued"})
        assert not again.claimed and again.holder == "w1"
        assert await queue.requeue(first, task_id="t1")
        assert await client.hget(k.task_key("t1"), "worker") is None
        # Taken again: it did not join the line a second time, and is still ahead of t2.
        retaken = await queue.take()
        assert retaken is not None and retaken.body == first.body and not retaken.joined_line
        assert await queue.is_head(line, "t1")

    run(scenario, redis_server)
    assert [x.decode() for x in redis.lrange(line, 0, -1)] == ["t1", "t2"]


def test_finish_is_written_exactly_once(redis: redis_lib.Redis, redis_server: RedisServer) -> None:
    push(redis, envelope("f1", "team.provision", {"team_slug": "a"}, resource="r1"))
    line = line_of("team.provision", "r1")

    async def scenario(client: Redis) -> tuple[bool, bool]:
        queue = TaskQueue(client, worker_id="w1", lease_ttl=10)
        held = await queue.take()
        assert held is not None
        publisher = Publisher(client, redactor=Redactor(), retention=60, task_stream_maxlen=100, stream_maxlen=100)
        ref = TaskRef(task_id="f1", user_id="u1", type="team.provision", resource_type="team", resource_id="r1")
        kwargs: dict[str, Any] = {
            "status": TaskStatus.COMPLETED,
            "error": None,
            "held_entry": held.entry,
            "processing_key": queue.processing,
            "line": line,
            "resource_status": "active",
            "verb": "provision",
            "metadata": {"subdomain": "a.x"},
        }
        return await publisher.finish(ref, **kwargs), await publisher.finish(ref, **kwargs)

    assert run(scenario, redis_server) == (True, False)
    assert redis.hget(k.task_key("f1"), "status") == b"completed"
    assert redis.llen(k.processing_key("w1")) == 0 and redis.llen(line) == 0
    finals = [json.loads(f[b"data"]) for _, f in redis.xrange(k.task_stream("f1"))]
    assert [m["type"] for m in finals] == ["task.completed", "provision"]
    assert redis.ttl(k.task_key("f1")) > 0

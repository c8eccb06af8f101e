"""The queue's promises: bad input fails clearly, duplicates run once, priorities, per-resource order."""

from __future__ import annotations

import itertools
import json
from datetime import datetime

import pytest
import redis as redis_lib

from orchestrator import constants as k
from tests.conftest import FIXTURES, Env, Subscriber, envelope, push, task_hash

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def quick_playbooks(env: Env) -> None:
    """Queue semantics do not need containers: quick stand-ins of the team playbooks (fixtures/playbooks/quick)."""
    env.extra["ORCHESTRATOR_PLAYBOOK_DIR"] = str(FIXTURES / "playbooks" / "quick")


GOOD = {"team_slug": "acme"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (dict(envelope("b-type", "team.explode", GOOD)), "type: Input should be"),
        (
            {"id": "b-missing", "type": "team.provision", "user_id": "u1", "payload": GOOD},
            "resource_id: Field required",
        ),
        (
            dict(envelope("b-wrongtype", "team.provision", {"team_slug": 42})),
            "payload.team_slug: Input should be a valid string",
        ),
        (
            dict(envelope("b-slug", "team.provision", {"team_slug": "../../etc"})),
            "payload.team_slug: invalid value: must be a DNS label",
        ),
        (
            dict(envelope("b-jinja", "team.provision", {"team_slug": "{{ lookup('pipe','id') }}"})),
            "payload.team_slug: invalid value",
        ),
        (
            dict(envelope("b-unknown", "team.provision", {"team_slug": "acme", "extra": 1})),
            "payload.extra: unknown field",
        ),
        (
            dict(envelope("b-payload", "team.provision", GOOD), payload="nope"),
            "payload: Input should be a valid dictionary",
        ),
    ],
)
def test_bad_input_fails_naming_the_field(
    env: Env, redis: redis_lib.Redis, body: dict[str, object], expected: str
) -> None:
    task_id = str(body["id"])
    with Subscriber(redis, "tasks:*", "team:status") as sub:
        push(redis, body)
        push(redis, envelope("after", "team.provision", GOOD))  # the worker keeps going
        env.run_burst()
    record = task_hash(redis, task_id)
    assert record["status"] == "failed"
    assert expected in record["error"], record["error"]
    assert "lookup" not in record["error"]  # the error names the field; it never echoes the input
    assert task_hash(redis, "after")["status"] == "completed"
    failed = [m for m in sub.on("tasks:u1") if m["task_id"] == task_id]
    assert [m["type"] for m in failed] == ["task.failed"]


def test_unattributable_bodies_are_dead_lettered(env: Env, redis: redis_lib.Redis) -> None:
    push(redis, b"not json at all")
    push(redis, b"\xff\xfe binary")
    push(redis, b'["a", "list"]')
    push(redis, json.dumps({"type": "team.provision"}))
    big = envelope("b-big", "team.provision", {"team_slug": "a" * 10})
    big["payload"]["pad"] = "x" * (300 * 1024)
    push(redis, big)
    push(redis, envelope("after", "team.provision", GOOD))
    env.run_burst()
    letters = [json.loads(x) for x in redis.lrange(k.DEADLETTER_LIST, 0, -1)]
    errors = " | ".join(entry["error"] for entry in letters)
    assert len(letters) == 5, errors
    assert "not valid JSON" in errors and "must be a JSON object" in errors and "more than the limit" in errors
    assert task_hash(redis, "after")["status"] == "completed"
    assert redis.llen(k.QUEUE_NORMAL) == 0


def test_same_id_twice_runs_once(env: Env, redis: redis_lib.Redis) -> None:
    body = envelope("dup-1", "team.provision", GOOD)
    with Subscriber(redis, "tasks:*") as sub:
        push(redis, body)
        push(redis, body)
        worker = env.run_burst()
    assert task_hash(redis, "dup-1")["status"] == "completed"
    assert task_hash(redis, "dup-1")["attempts"] == "1"
    assert [m["type"] for m in sub.on("tasks:u1")].count("task.started") == 1
    assert [m["type"] for m in sub.on("tasks:u1")].count("task.completed") == 1
    assert "duplicate task id dup-1" in worker.log()
    # Pushed again after it finished: still not a second run, and its status is untouched.
    push(redis, body)
    worker = env.run_burst()
    assert task_hash(redis, "dup-1")["status"] == "completed"
    assert "duplicate task id dup-1" in worker.log()


def test_high_priority_first(env: Env, redis: redis_lib.Redis) -> None:
    for i in range(3):
        push(redis, envelope(f"n{i}", "team.provision", {"team_slug": f"n{i}"}), queue=k.QUEUE_NORMAL)
    for i in range(2):
        push(redis, envelope(f"h{i}", "team.provision", {"team_slug": f"h{i}"}), queue=k.QUEUE_HIGH)
    env.run_burst("--concurrency", "1")
    order = sorted(["n0", "n1", "n2", "h0", "h1"], key=lambda t: task_hash(redis, t)["started_at"])
    assert order == ["h0", "h1", "n0", "n1", "n2"]


def _interval(redis: redis_lib.Redis, task_id: str) -> tuple[datetime, datetime]:
    record = task_hash(redis, task_id)
    return datetime.fromisoformat(record["started_at"]), datetime.fromisoformat(record["finished_at"])


def test_same_resource_in_order_other_resources_concurrently(env: Env, redis: redis_lib.Redis) -> None:
    same = ["r-prov", "r-susp", "r-rest", "r-del"]
    types = ["team.provision", "team.suspend", "team.restart", "team.delete"]
    for task_id, task_type in zip(same, types, strict=True):
        push(redis, envelope(task_id, task_type, {"team_slug": "same"}, resource="team-same"))
    for i in range(3):
        push(redis, envelope(f"o{i}", "team.provision", {"team_slug": f"other{i}"}, resource=f"team-o{i}"))
    env.run_burst("--concurrency", "4")
    for task_id in [*same, "o0", "o1", "o2"]:
        assert task_hash(redis, task_id)["status"] == "completed", task_hash(redis, task_id)
    intervals = [_interval(redis, t) for t in same]
    for (_, end), (start, _) in itertools.pairwise(intervals):
        assert end <= start, "tasks of one resource overlapped or ran out of order"
    others = [_interval(redis, f"o{i}") for i in range(3)]
    assert any(a[0] < b[1] and b[0] < a[1] for a in others for b in others if a is not b), (
        "different resources did not run concurrently"
    )
    assert redis.keys("orchestrator:line:*") == []


def test_cancel_before_start(env: Env, redis: redis_lib.Redis) -> None:
    from orchestrator import client

    client.submit(redis, "team.provision", GOOD, task_id="c-queued", user_id="u1")
    assert client.cancel(redis, "c-queued")
    with Subscriber(redis, "tasks:*", "team:status") as sub:
        env.run_burst()
    record = task_hash(redis, "c-queued")
    assert record["status"] == "cancelled"
    assert [m["type"] for m in sub.on("tasks:u1")] == ["task.cancelled"]
    assert sub.on("team:status") == []  # nothing ran, so the resource did not change
    assert not (env.data_dir / "teams" / "acme").exists()
    assert FIXTURES.exists()

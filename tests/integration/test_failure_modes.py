"""Cancel, timeout, kill -9 of a worker, transient retries, rollback, graceful shutdown, secrets."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import redis as redis_lib

from orchestrator import client
from orchestrator import constants as k
from orchestrator.processes import RUN_MARKER
from tests.conftest import FIXTURES, Env, Subscriber, envelope, push, stream_messages, task_hash, wait_final, wait_for

pytestmark = pytest.mark.integration

SLOW = str(FIXTURES / "playbooks" / "slow")
# A worker taken for dead 2 s after its last heartbeat, running the slow fixture.
SHORT_LEASE = {
    "ORCHESTRATOR_LEASE_TTL": "2",
    "ORCHESTRATOR_HEARTBEAT_INTERVAL": "0.5",
    "ORCHESTRATOR_REAP_INTERVAL": "0.5",
    "ORCHESTRATOR_PLAYBOOK_DIR": SLOW,
}


def processes_of_task(task_id: str) -> list[int]:
    """Every live process of any run of this task (run ids are `<task id>-<attempt>-<try>`)."""
    import psutil

    found = []
    for proc in psutil.process_iter():
        try:
            marker = proc.environ().get(RUN_MARKER, "")
            if marker.startswith(f"{task_id}-") and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def wait_sleeping(redis: redis_lib.Redis, task_id: str) -> None:
    wait_for(
        lambda: task_hash(redis, task_id).get("message") == "Sleep with a detached child",
        60,
        what="the sleep task to start",
    )
    wait_for(lambda: len(processes_of_task(task_id)) >= 4, 30, what="the sleeping processes")


def test_cancel_running_task_ends_whole_tree(env: Env, redis: redis_lib.Redis) -> None:
    worker = env.start_worker(ORCHESTRATOR_PLAYBOOK_DIR=SLOW)
    with Subscriber(redis, "tasks:*", "team:status") as sub:
        push(redis, envelope("c-run", "team.provision", {"team_slug": "slowpoke"}))
        wait_sleeping(redis, "c-run")
        assert client.cancel(redis, "c-run")
        record = wait_final(redis, "c-run", 30)
        assert record["status"] == "cancelled"
        assert "cancelled by request" in record["error"]
        assert processes_of_task("c-run") == []
        assert [m["type"] for m in sub.on("tasks:u1")][-1] == "task.cancelled"
        assert [m["status"] for m in sub.on("team:status")] == ["failed"]
    assert not client.cancel(redis, "c-run")  # already final
    assert worker.stop() == 0


def test_timeout_fails_and_ends_tree(env: Env, redis: redis_lib.Redis) -> None:
    env.start_worker(ORCHESTRATOR_PLAYBOOK_DIR=SLOW, ORCHESTRATOR_TIMEOUTS='{"team.provision": 4}')
    push(redis, envelope("t-out", "team.provision", {"team_slug": "slowpoke"}))
    record = wait_final(redis, "t-out", 60)
    assert record["status"] == "failed"
    assert "timed out after 4s" in record["error"]
    assert processes_of_task("t-out") == []


def test_kill9_mid_run_is_recovered_by_another_worker(env: Env, redis: redis_lib.Redis) -> None:
    lease = {**SHORT_LEASE, "ORCHESTRATOR_LEASE_TTL": "3"}
    first = env.start_worker(**lease)
    push(redis, envelope("k-1", "team.provision", {"team_slug": "phoenix"}))
    wait_sleeping(redis, "k-1")
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    killed_at = time.monotonic()
    # The orphaned run notices its worker is gone and stops (watchdog callback).
    wait_for(lambda: processes_of_task("k-1") == [], 20, what="the orphaned run to stop")
    assert task_hash(redis, "k-1")["status"] == "running"  # nothing lost: still held by the dead worker

    env.start_worker(**lease)
    record = wait_final(redis, "k-1", 60)
    recovered_in = time.monotonic() - killed_at
    assert record["status"] == "completed", record
    assert record["recoveries"] == "1" and record["attempts"] == "2"
    assert recovered_in < 30
    held = [key for key in redis.keys("orchestrator:worker:*:processing") if redis.llen(key)]
    assert held == []


def test_task_failed_after_too_many_lost_workers(env: Env, redis: redis_lib.Redis) -> None:
    lease = {**SHORT_LEASE, "ORCHESTRATOR_MAX_RECOVERIES": "0"}
    first = env.start_worker(**lease)
    push(redis, envelope("k-2", "team.provision", {"team_slug": "doomed"}))
    wait_sleeping(redis, "k-2")
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    env.start_worker(**lease)
    record = wait_final(redis, "k-2", 60)
    assert record["status"] == "failed"
    assert "worker lost 1 times" in record["error"]


def test_transient_failure_is_retried(env: Env, redis: redis_lib.Redis) -> None:
    push(redis, envelope("f-1", "team.provision", {"team_slug": "flaky"}))
    env.run_burst(ORCHESTRATOR_PLAYBOOK_DIR=str(FIXTURES / "playbooks" / "flaky"))
    record = task_hash(redis, "f-1")
    assert record["status"] == "completed", record
    messages = [m.get("message", "") for m in stream_messages(redis, "f-1")]
    assert any(m.startswith("retrying in") and "Connection refused" in m for m in messages)


def test_permanent_failure_is_not_retried_and_rolls_back(env: Env, redis: redis_lib.Redis) -> None:
    with Subscriber(redis, "team:status") as sub:
        push(redis, envelope("rb-1", "team.provision", {"team_slug": "fragile"}))
        env.run_burst(ORCHESTRATOR_PLAYBOOK_DIR=str(FIXTURES / "playbooks" / "failing"))
    record = task_hash(redis, "rb-1")
    assert record["status"] == "failed"
    assert "boom after provisioning fragile" in record["error"]
    assert "rollback incomplete" not in record["error"]
    assert record["attempts"] == "1"
    # What the run created is gone again, and the ledger is empty.
    assert not (env.data_dir / "teams" / "fragile").exists()
    assert redis.llen(k.ledger_key("rb-1")) == 0
    assert any("rolling back team_directory" in m.get("message", "") for m in stream_messages(redis, "rb-1"))
    assert [m["status"] for m in sub.on("team:status")] == ["failed"]


def test_failed_reprovision_keeps_existing_team(env: Env, redis: redis_lib.Redis) -> None:
    push(redis, envelope("ok-1", "team.provision", {"team_slug": "keeper"}, resource="team-keeper"))
    env.run_burst()
    assert task_hash(redis, "ok-1")["status"] == "completed"
    push(redis, envelope("rb-2", "team.provision", {"team_slug": "keeper"}, resource="team-keeper"))
    env.run_burst(ORCHESTRATOR_PLAYBOOK_DIR=str(FIXTURES / "playbooks" / "failing"))
    assert task_hash(redis, "rb-2")["status"] == "failed"
    assert (env.data_dir / "teams" / "keeper" / "docker-compose.yml").exists()


def test_graceful_shutdown_lets_running_task_finish(env: Env, redis: redis_lib.Redis) -> None:
    worker = env.start_worker("--concurrency", "1")
    push(redis, envelope("g-1", "team.provision", {"team_slug": "graceful"}))
    wait_for(lambda: task_hash(redis, "g-1").get("status") == "running", 30, what="g-1 running")
    push(redis, envelope("g-2", "team.provision", {"team_slug": "later"}))
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(60) == 0
    assert task_hash(redis, "g-1")["status"] == "completed"
    # Not taken after the signal: still queued for the next worker.
    assert task_hash(redis, "g-2") == {}
    assert redis.llen(k.QUEUE_NORMAL) == 1


def test_second_sigterm_requeues_running_task(env: Env, redis: redis_lib.Redis) -> None:
    worker = env.start_worker(ORCHESTRATOR_PLAYBOOK_DIR=SLOW)
    push(redis, envelope("g-3", "team.provision", {"team_slug": "twice"}))
    wait_sleeping(redis, "g-3")
    worker.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(30) == 0
    assert processes_of_task("g-3") == []
    record = task_hash(redis, "g-3")
    assert record["status"] == "queued" and "worker" not in record
    assert redis.llen(k.QUEUE_NORMAL) == 1
    # The next worker finishes it (the slow fixture completes on a second attempt).
    env.run_burst(ORCHESTRATOR_PLAYBOOK_DIR=SLOW)
    assert task_hash(redis, "g-3")["status"] == "completed"


def test_secrets_never_leave_except_the_published_one(env: Env, redis: redis_lib.Redis) -> None:
    token = "ghp_" + "S3cr3tT0kenValue" * 2
    (env.data_dir / "token.txt").write_text(token)
    with Subscriber(redis, "*") as sub:
        push(redis, envelope("s-1", "team.provision", {"team_slug": "leaky"}))
        env.run_burst(ORCHESTRATOR_PLAYBOOK_DIR=str(FIXTURES / "playbooks" / "leaky"), GITHUB_TOKEN=token)
        push(redis, envelope("s-2", "team.provision", {"team_slug": "real"}))
        env.run_burst(GITHUB_TOKEN=token)
    record = task_hash(redis, "s-1")
    assert record["status"] == "failed"
    assert "env token '', cannot use token ***" in record["error"]  # not inherited; redacted when leaked
    webhook = (env.data_dir / "teams" / "real" / ".secrets" / "agent_webhook_secret").read_text().strip()
    # Everything in Redis, every published message, every log line.
    dump = []
    for key in redis.keys("*"):
        kind = redis.type(key).decode()
        if kind == "hash":
            dump.append(json.dumps({a.decode(): b.decode() for a, b in redis.hgetall(key).items()}))
        elif kind == "list":
            dump.extend(x.decode(errors="replace") for x in redis.lrange(key, 0, -1))
        elif kind == "stream" and key != k.EVENTS_STREAM.encode():
            dump.extend(json.dumps({a.decode(): b.decode() for a, b in f.items()}) for _, f in redis.xrange(key))
    logs = "".join(w.log() for w in env.workers)
    haystack = "\n".join(dump) + logs
    assert token not in haystack
    assert webhook not in haystack
    published = [(c, m) for c, m in sub.messages if webhook in json.dumps(m)]
    assert [(c, m["metadata"]["agent_webhook_secret"]) for c, m in published] == [("team:status", webhook)]
    assert token not in json.dumps(sub.messages)
    # The global replay stream carries the status message exactly as published, and nothing else secret.
    replay = [json.loads(f[b"data"]) for _, f in redis.xrange(k.EVENTS_STREAM)]
    assert token not in json.dumps(replay)
    assert [m["resource_type"] for m in replay if webhook in json.dumps(m)] == ["team"]
    assert os.environ.get("GITHUB_TOKEN") != token

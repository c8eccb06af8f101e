"""team.* through the queue exactly as the Portal pushes them, on a real Redis and real playbooks."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import redis as redis_lib
import yaml

from orchestrator import constants as k
from tests.conftest import Env, Subscriber, envelope, push, stream_messages, task_hash

pytestmark = pytest.mark.integration


def team_dir(env: Env, slug: str) -> Path:
    return env.data_dir / "teams" / slug


def test_provision_restart_suspend_delete(env: Env, redis: redis_lib.Redis) -> None:
    with Subscriber(redis, "tasks:*", "team:status") as sub:
        push(redis, envelope("t-prov", "team.provision", {"team_slug": "acme"}, resource="team-1"), queue=k.QUEUE_HIGH)
        env.run_burst()
        record = task_hash(redis, "t-prov")
        assert record["status"] == "completed", record
        assert record["percentage"] == "100"
        assert int(record["step"]) == int(record["total_steps"]) > 3

        root = team_dir(env, "acme")
        compose = (root / "docker-compose.yml").read_text()
        assert "Host(`acme.kanban.localhost`)" in compose
        assert "acme-api:" in compose and "version" not in yaml.safe_load(compose)
        assert json.loads((root / "data" / "acme" / "db.json").read_text()) == {"_default": {}} or isinstance(
            json.loads((root / "data" / "acme" / "db.json").read_text()), dict
        )
        secret_file = root / ".secrets" / "agent_webhook_secret"
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        secret = secret_file.read_text().strip()
        assert len(secret) >= 32

        # Progress: the seed's message shape, steps from the real tasks, monotonic, ending in task.completed.
        user_messages = sub.on("tasks:u1")
        kinds = [m["type"] for m in user_messages]
        assert kinds[0] == "task.started" and kinds[-1] == "task.completed"
        progress = [m for m in user_messages if m["type"] == "task.progress"]
        assert set(progress[0]) == {"type", "task_id", "step", "total_steps", "percentage", "message"}
        steps = [m["step"] for m in progress]
        assert steps == sorted(steps) and len(steps) >= 4
        assert any("team directory" in m["message"].lower() for m in progress)
        assert all(m["percentage"] == int(m["step"] / m["total_steps"] * 100) for m in progress)

        # Status: exactly the seed's shape, with the contract's published secret.
        status = sub.on("team:status")
        assert len(status) == 1
        assert set(status[0]) == {"type", "resource_type", "resource_id", "status", "error", "metadata", "timestamp"}
        assert status[0]["type"] == "provision" and status[0]["status"] == "active"
        assert status[0]["resource_id"] == "team-1"
        assert status[0]["metadata"]["subdomain"] == "acme.kanban.localhost"
        assert status[0]["metadata"]["agent_webhook_secret"] == secret
        # ...but nowhere else: not the hash, not the task stream, not the user channel.
        assert secret not in json.dumps(record)
        assert secret not in json.dumps(stream_messages(redis, "t-prov"))
        assert secret not in json.dumps(user_messages)

        # The stream replays what the channels carried, ending with the final message.
        replay = [m for m in stream_messages(redis, "t-prov") if m["_channel"] == "tasks:u1"]
        assert [m["type"] for m in replay] == kinds

        # Idempotent re-provision keeps the same secret; restart and suspend act on the deployment.
        push(redis, envelope("t-prov2", "team.provision", {"team_slug": "acme"}, resource="team-1"))
        push(redis, envelope("t-susp", "team.suspend", {"team_slug": "acme"}, resource="team-1"))
        env.run_burst()
        assert task_hash(redis, "t-prov2")["status"] == "completed"
        assert secret_file.read_text().strip() == secret
        assert task_hash(redis, "t-susp")["status"] == "completed"
        assert (root / "state").read_text().strip() == "suspended"
        assert (root / "data" / "acme" / "db.json").exists()

        push(redis, envelope("t-rest", "team.restart", {"team_slug": "acme"}, resource="team-1"))
        env.run_burst()
        assert task_hash(redis, "t-rest")["status"] == "completed"
        assert (root / "state").read_text().strip() == "active"

        push(redis, envelope("t-del", "team.delete", {"team_slug": "acme"}, resource="team-1"))
        env.run_burst()
        assert task_hash(redis, "t-del")["status"] == "completed"
        assert not root.exists()
        statuses = [(m["type"], m["status"]) for m in sub.on("team:status")]
        assert statuses == [
            ("provision", "active"),
            ("provision", "active"),
            ("suspend", "suspended"),
            ("restart", "active"),
            ("delete", "deleted"),
        ]

        # Deleting what is already gone converges.
        push(redis, envelope("t-del2", "team.delete", {"team_slug": "acme"}, resource="team-1"))
        env.run_burst()
        assert task_hash(redis, "t-del2")["status"] == "completed"


def test_restart_of_unprovisioned_team_fails_clearly(env: Env, redis: redis_lib.Redis) -> None:
    with Subscriber(redis, "team:status") as sub:
        push(redis, envelope("t-r", "team.restart", {"team_slug": "ghost"}, resource="team-x"))
        env.run_burst()
    record = task_hash(redis, "t-r")
    assert record["status"] == "failed"
    assert "ghost" in record["error"] and "not provisioned" in record["error"]
    assert [m["status"] for m in sub.on("team:status")] == ["failed"]


def test_workspace_without_github_settings_fails_clearly(env: Env, redis: redis_lib.Redis) -> None:
    push(redis, envelope("w-1", "workspace.provision", {"team_slug": "acme", "workspace_slug": "web"}))
    env.run_burst(GITHUB_API_URL="http://127.0.0.1:1", GITHUB_ORG="")
    record = task_hash(redis, "w-1")
    assert record["status"] == "failed"
    assert "GitHub settings are invalid" in record["error"], record["error"]


def test_agent_restart_in_on_demand_mode(env: Env, redis: redis_lib.Redis) -> None:
    with Subscriber(redis, "sandbox:status") as sub:
        push(
            redis,
            envelope(
                "a-1",
                "sandbox.agent.restart",
                {"team_slug": "acme", "workspace_slug": "web", "sandbox_slug": "s1"},
                resource="sb-1",
            ),
        )
        env.run_burst()
    assert task_hash(redis, "a-1")["status"] == "completed"
    [status] = sub.on("sandbox:status")
    assert (status["type"], status["status"]) == ("restart", "active")
    assert status["metadata"] == {"agent_mode": "on-demand", "stopped_runs": 0}


def test_two_teams_at_once_are_isolated(env: Env, redis: redis_lib.Redis) -> None:
    for slug in ("alpha", "beta"):
        push(redis, envelope(f"t-{slug}", "team.provision", {"team_slug": slug}, resource=f"team-{slug}"))
    env.run_burst()
    for slug in ("alpha", "beta"):
        assert task_hash(redis, f"t-{slug}")["status"] == "completed"
    push(redis, envelope("t-del-alpha", "team.delete", {"team_slug": "alpha"}, resource="team-alpha"))
    env.run_burst()
    assert not team_dir(env, "alpha").exists()
    assert (team_dir(env, "beta") / "docker-compose.yml").exists()

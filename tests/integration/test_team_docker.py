"""Team deployments on the real Docker engine, through the queue as the Portal pushes them."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_lib

from tests.conftest import Env, Subscriber, envelope, push, task_hash, wait_final, wait_for

pytestmark = pytest.mark.integration

SLUGS = ("dk-alpha", "dk-beta", "dk-down", "dk-phoenix")


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True, timeout=60).stdout


def project_containers(project: str) -> list[dict[str, Any]]:
    ids = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={project}").split()
    return json.loads(docker("inspect", *ids)) if ids else []


def states(project: str) -> dict[str, str]:
    found = {}
    for container in project_containers(project):
        name = str(container["Name"]).lstrip("/")
        state = container["State"]
        health = state.get("Health", {}).get("Status", "none")
        found[name] = f"{state['Status']}/{health}"
    return found


@pytest.fixture(autouse=True)
def clean_projects() -> Iterator[None]:
    yield
    for slug in SLUGS:
        project = f"team-{slug}"
        ids = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={project}").split()
        if ids:
            docker("rm", "-f", *ids)
        for net in docker("network", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}").split():
            docker("network", "rm", net)


def test_team_lifecycle_on_docker(env: Env, redis: redis_lib.Redis) -> None:
    with Subscriber(redis, "team:status") as sub:
        for slug in SLUGS[:2]:
            push(redis, envelope(f"p-{slug}", "team.provision", {"team_slug": slug}, resource=slug))
        env.run_burst()
        for slug in SLUGS[:2]:
            assert task_hash(redis, f"p-{slug}")["status"] == "completed", task_hash(redis, f"p-{slug}")
            running = states(f"team-{slug}")
            assert len(running) == 2 and all(s == "running/healthy" for s in running.values()), running
        # Each team has its own network; the api answers its health endpoint inside it.
        alpha = project_containers("team-dk-alpha")
        beta = project_containers("team-dk-beta")
        alpha_nets = {n for c in alpha for n in c["NetworkSettings"]["Networks"]}
        beta_nets = {n for c in beta for n in c["NetworkSettings"]["Networks"]}
        assert alpha_nets and beta_nets and not alpha_nets & beta_nets
        api = next(str(c["Name"]).lstrip("/") for c in alpha if "api" in str(c["Name"]))
        assert docker("exec", api, "wget", "-qO-", "http://127.0.0.1:8080/health").strip() == "ok"
        env_vars = next(c["Config"]["Env"] for c in alpha if "api" in str(c["Name"]))
        assert "TEAM_SLUG=dk-alpha" in env_vars and "DATABASE_PATH=/data/dk-alpha/db.json" in env_vars

        started = {str(c["Name"]): c["State"]["StartedAt"] for c in alpha}
        push(redis, envelope("r-alpha", "team.restart", {"team_slug": "dk-alpha"}, resource="dk-alpha"))
        env.run_burst()
        assert task_hash(redis, "r-alpha")["status"] == "completed"
        restarted = {str(c["Name"]): c["State"]["StartedAt"] for c in project_containers("team-dk-alpha")}
        assert restarted.keys() == started.keys() and all(restarted[n] != started[n] for n in started)
        assert all(s == "running/healthy" for s in states("team-dk-alpha").values())

        push(redis, envelope("s-alpha", "team.suspend", {"team_slug": "dk-alpha"}, resource="dk-alpha"))
        env.run_burst()
        assert task_hash(redis, "s-alpha")["status"] == "completed"
        assert all(s.startswith("exited") for s in states("team-dk-alpha").values()), states("team-dk-alpha")
        assert (env.data_dir / "teams" / "dk-alpha" / "data" / "dk-alpha" / "db.json").exists()
        assert all(s == "running/healthy" for s in states("team-dk-beta").values())  # untouched

        push(redis, envelope("p2-alpha", "team.provision", {"team_slug": "dk-alpha"}, resource="dk-alpha"))
        env.run_burst()
        assert task_hash(redis, "p2-alpha")["status"] == "completed"
        assert all(s == "running/healthy" for s in states("team-dk-alpha").values())  # resumed

        push(redis, envelope("d-alpha", "team.delete", {"team_slug": "dk-alpha"}, resource="dk-alpha"))
        env.run_burst()
        assert task_hash(redis, "d-alpha")["status"] == "completed"
        assert states("team-dk-alpha") == {}
        assert docker("network", "ls", "-q", "--filter", "label=com.docker.compose.project=team-dk-alpha") == ""
        assert not (env.data_dir / "teams" / "dk-alpha").exists()
        assert all(s == "running/healthy" for s in states("team-dk-beta").values())

        # Delete of a half-gone team: containers present, files already removed.
        import shutil

        shutil.rmtree(env.data_dir / "teams" / "dk-beta")
        push(redis, envelope("d-beta", "team.delete", {"team_slug": "dk-beta"}, resource="dk-beta"))
        env.run_burst()
        assert task_hash(redis, "d-beta")["status"] == "completed", task_hash(redis, "d-beta")
        assert states("team-dk-beta") == {}
    kinds = [(m["type"], m["resource_id"], m["status"]) for m in sub.on("team:status")]
    assert ("suspend", "dk-alpha", "suspended") in kinds and ("delete", "dk-beta", "deleted") in kinds


def test_engine_down_fails_clearly_and_leaves_nothing(env: Env, redis: redis_lib.Redis) -> None:
    push(redis, envelope("p-down", "team.provision", {"team_slug": "dk-down"}, resource="dk-down"))
    env.run_burst(DOCKER_HOST="unix:///nonexistent/docker.sock")
    record = task_hash(redis, "p-down")
    assert record["status"] == "failed"
    assert "Docker engine is not reachable" in record["error"], record["error"]
    assert not (env.data_dir / "teams" / "dk-down").exists()
    assert states("team-dk-down") == {}


def test_provision_killed_mid_compose_up_converges_after_recovery(env: Env, redis: redis_lib.Redis) -> None:
    lease = {
        "ORCHESTRATOR_LEASE_TTL": "2",
        "ORCHESTRATOR_HEARTBEAT_INTERVAL": "0.5",
        "ORCHESTRATOR_REAP_INTERVAL": "0.5",
    }
    first = env.start_worker(**lease)
    push(redis, envelope("p-phoenix", "team.provision", {"team_slug": "dk-phoenix"}, resource="dk-phoenix"))
    wait_for(
        lambda: "containers" in task_hash(redis, "p-phoenix").get("message", ""),
        90,
        interval=0.02,
        what="the compose up step",
    )
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    env.start_worker(**lease)
    record = wait_final(redis, "p-phoenix", 120)
    assert record["status"] == "completed", record
    assert record["recoveries"] == "1"
    running = states("team-dk-phoenix")
    assert len(running) == 2 and all(s == "running/healthy" for s in running.values()), running

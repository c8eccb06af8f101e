"""agent.run: the real Claude Code CLI on the agent host (make services: a network namespace with its own sshd),
talking to the scripted Messages API stand-in, through the queue as the Portal pushes tasks. Asserts on the
live stream, the working clone, the stand-in's record of what it received, and the agent host's processes."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from orchestrator import client
from tests.conftest import BIN, ROOT, Env, Subscriber, envelope, push, services_env, task_hash, wait_final, wait_for
from tests.contract.conftest import GitHub, Graph

pytestmark = pytest.mark.integration

SANDBOX = {"team_slug": "acme", "workspace_slug": "web", "sandbox_slug": "s1"}
SSH_ENV = (
    "SSH_USER",
    "SSH_HOST",
    "SSH_CLAUDE_PATH",
    "ORCHESTRATOR_SSH_KEY_FILE",
    "ORCHESTRATOR_SSH_KNOWN_HOSTS",
)
HOSTILE = (
    "Fix the bug. \"double\" 'single' $(id) `uname -a` ${HOME} $HOME {{ 7*7 }} {% if x %}y{% endif %}\n"
    "\ttabbed \\backslash\\ ; rm -rf ~ # | & > /tmp/x < /etc/passwd\n"
    "emoji \U0001f600 and \u00e9\u00e8 and a line that ends with a backslash \\\n"
    "!unsafe {{ lookup('pipe', 'id') }}\n"
)


def standin() -> str:
    return services_env()["ANTHROPIC_STANDIN_URL"]


def standin_requests() -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{standin()}/_control/requests", timeout=10) as reply:
        data: list[dict[str, Any]] = json.loads(reply.read())
        return data


def standin_reset() -> None:
    request = urllib.request.Request(f"{standin()}/_control/reset", method="POST", data=b"")
    urllib.request.urlopen(request, timeout=10).close()


def agent_processes() -> list[str]:
    """Every process of the agent user on the agent host (the namespace shares the process table), except the
    sshd sessions a test may hold."""
    out = subprocess.run(["ps", "-u", "agent", "-o", "pid=,args="], capture_output=True, text=True, check=False)
    return [line.strip() for line in out.stdout.splitlines() if line.strip() and "sshd" not in line]


def clone(env: Env, sandbox: str = "s1") -> Path:
    return env.data_dir / "teams" / "acme" / "workspaces" / "web" / "sandboxes" / sandbox / "repo"


def make_clone(env: Env, sandbox: str = "s1") -> Path:
    """A sandbox's working clone as sandbox.provision leaves it (a git checkout owned by root; the team's
    folders closed to others), without the rest of the sandbox: agent.run needs only the clone."""
    repo = clone(env, sandbox)
    repo.mkdir(parents=True)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q", "-b", "sandbox/" + sandbox, str(repo)], check=True)
    (repo / "README.md").write_text("# web\n")
    subprocess.run([*git, "-C", str(repo), "add", "."], check=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-qm", "init"], check=True)
    for folder in (env.data_dir / "teams", env.data_dir / "teams" / "acme"):
        folder.chmod(0o750)
    return repo


@pytest.fixture
def agent_env(env: Env) -> Iterator[Env]:
    """Workers that reach the agent host; the test's data folder reachable by the agent user (the folders
    above it are pytest's, 0700: a deployment keeps its data directory reachable, the playbook does the rest)."""
    services = services_env()
    env.extra.update({name: services[name] for name in SSH_ENV})
    folder = env.data_dir
    closed = []  # pytest's own folders are 0700; nothing is added where others may pass already
    while folder != folder.parent:
        if not folder.stat().st_mode & 0o001:
            closed.append(folder)
        folder = folder.parent
    if closed:
        subprocess.run(["setfacl", "-m", "g:agent:x", *map(str, closed)], check=True)
    standin_reset()
    yield env
    wait_for(lambda: not agent_processes(), timeout=30, what="no agent process left")


def agent_task(task_id: str, prompt: str, **payload: Any) -> dict[str, Any]:
    return envelope(task_id, "agent.run", {**SANDBOX, "prompt": prompt, **payload}, resource=f"sb-{task_id}")


def progress(sub: Subscriber, task_id: str) -> list[dict[str, Any]]:
    return [m for m in sub.on("tasks:u1") if m.get("task_id") == task_id and m["type"] == "task.progress"]


def agent_lines(sub: Subscriber, task_id: str) -> list[dict[str, Any]]:
    return [m for m in progress(sub, task_id) if "agent" in m]


def test_developer_run_edits_the_clone_and_streams_every_line(agent_env: Env, redis: redis_lib.Redis) -> None:
    repo = make_clone(agent_env)
    with Subscriber(redis, "tasks:*") as sub:
        push(redis, agent_task("a-dev", "Write the notes. [[script:write]]"))
        agent_env.run_burst()
        record = task_hash(redis, "a-dev")
        assert record["status"] == "completed", record
        # The agent really wrote and edited a file in the sandbox's clone, as the agent user.
        notes = repo / "AGENT_NOTES.md"
        assert notes.read_text() == "written and edited by the agent\n"
        assert notes.stat().st_uid != 0
        lines = agent_lines(sub, "a-dev")
        kinds = [(m["agent"]["type"], m["agent"].get("block"), m["agent"].get("tool")) for m in lines]
        assert kinds[0] == ("system", None, None) and lines[0]["message"].startswith("agent started:")
        assert ("assistant", "tool_use", "Write") in kinds
        assert ("assistant", "tool_use", "Edit") in kinds
        assert [m["agent"]["is_error"] for m in lines if m["agent"].get("block") == "tool_result"] == [False, False]
        assert kinds[-1] == ("result", None, None)
        assert lines[-1]["message"].startswith("result: success")
        assert "tool Write: " + str(repo) + "/AGENT_NOTES.md" in [m["message"] for m in lines]
        # Every line of the stream, in order, each published once.
        numbers = [m["agent"]["line"] for m in lines]
        assert numbers == sorted(numbers) and set(numbers) == set(range(1, max(numbers) + 1))
        [final] = [m for m in sub.on("tasks:u1") if m["type"] == "task.completed"]
        meta = final["metadata"]
        assert meta["num_turns"] == 3 and float(meta["cost_usd"]) > 0 and int(meta["duration_ms"]) >= 0
        assert meta["tool_profile"] == "developer" and meta["agent_type"] == "developer"
        assert meta["result"] == "Done: wrote and edited AGENT_NOTES.md."
        assert int(meta["lines"]) == max(numbers)
        # The messages came before the final status.
        types = [m["type"] for m in sub.on("tasks:u1") if m.get("task_id") == "a-dev"]
        assert types[0] == "task.started" and types[-1] == "task.completed"
    # The stream as the CLI wrote it on the agent host follows the contract notes (claude-stream-json.md, 2.1-2.4).
    stream = Path("/home/agent/.orchestrator/agent-runs/acme/web/s1/a-dev-1/stream.jsonl").read_text().splitlines()
    parsed = [json.loads(line) for line in stream]
    assert len(parsed) == max(numbers)
    init, result = parsed[0], parsed[-1]
    assert (init["type"], init["subtype"], init["cwd"], init["permissionMode"]) == (
        "system",
        "init",
        str(repo),
        "acceptEdits",
    )
    assert {"Write", "Edit", "Bash"} <= set(init["tools"]) and "WebFetch" not in init["tools"]
    assert {line["session_id"] for line in parsed} == {init["session_id"]} == {meta["session_id"]}
    assert (result["type"], result["subtype"], result["is_error"], result["num_turns"]) == (
        "result",
        "success",
        False,
        3,
    )
    assert {"duration_ms", "duration_api_ms", "total_cost_usd", "usage", "permission_denials"} <= set(result)
    for line in parsed[1:-1]:
        assert line["type"] in {"assistant", "user", "system"}, line
        if line["type"] in {"assistant", "user"}:
            assert isinstance(line["message"]["content"], list)
    # `orchestrator watch` shows each line of the agent's stream (a replay here: the task is over).
    watched = subprocess.run(
        [str(BIN / "orchestrator"), "watch", "a-dev"],
        env=agent_env.environ(),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert "agent tool Write: " in watched.stdout and "agent result: success" in watched.stdout
    # What the CLI sent: the tools of the developer profile, none of the removed ones.
    offered = {tool for request in standin_requests() for tool in request["tools"]}
    assert {"Write", "Edit", "Bash"} <= offered and not {"WebFetch", "WebSearch"} & offered


def test_hostile_prompt_arrives_byte_for_byte_and_readonly_cannot_write(agent_env: Env, redis: redis_lib.Redis) -> None:
    repo = make_clone(agent_env)
    make_clone(agent_env, "s2")
    with Subscriber(redis, "tasks:*") as sub:
        push(redis, agent_task("a-hostile", HOSTILE, tool_profile="readonly"))
        push(
            redis,
            envelope(
                "a-ro",
                "agent.run",
                {**SANDBOX, "sandbox_slug": "s2", "prompt": "[[script:write]]", "tool_profile": "readonly"},
                resource="sb-s2",
            ),
        )
        agent_env.run_burst("--concurrency", "2")
        assert task_hash(redis, "a-hostile")["status"] == "completed", task_hash(redis, "a-hostile")
        assert task_hash(redis, "a-ro")["status"] == "completed", task_hash(redis, "a-ro")
        # The CLI's own denial, seen in its stream: the write tools are not there, each call is a tool error.
        lines = agent_lines(sub, "a-ro")
        results = [m for m in lines if m["agent"].get("block") == "tool_result"]
        assert [m["agent"]["is_error"] for m in results] == [True, True]
        assert "No such tool available" in results[0]["message"]
        [final] = [m for m in sub.on("tasks:u1") if m["type"] == "task.completed" and m["task_id"] == "a-ro"]
        assert final["metadata"]["tool_profile"] == "readonly"
        assert final["metadata"]["result"].startswith("Could not write AGENT_NOTES.md")
    assert not (clone(agent_env, "s2") / "AGENT_NOTES.md").exists()
    # The stand-in received the prompt exactly: nothing templated, nothing parsed by a shell.
    prompts = [r["prompt"] for r in standin_requests()]
    assert HOSTILE in prompts
    assert not any("49" in p and p != HOSTILE and "7*7" not in p for p in prompts)
    readonly_tools = {tool for r in standin_requests() if r["prompt"] == HOSTILE for tool in r["tools"]}
    assert {"Read", "Glob", "Grep"} <= readonly_tools and not {"Write", "Edit", "Bash"} & readonly_tools
    assert not (repo / "AGENT_NOTES.md").exists()


def test_cancel_and_timeout_end_every_process_of_the_run(agent_env: Env, redis: redis_lib.Redis) -> None:
    make_clone(agent_env)
    make_clone(agent_env, "s2")
    worker = agent_env.start_worker("--concurrency", "2")
    with Subscriber(redis, "tasks:*") as sub:
        push(redis, agent_task("a-cancel", "[[script:slow]]"))
        push(
            redis,
            envelope(
                "a-timeout",
                "agent.run",
                {**SANDBOX, "sandbox_slug": "s2", "prompt": "[[script:slow]]", "timeout": 10},
                resource="sb-s2",
            ),
        )
        # The long job is running on the agent host: its tool use was streamed, its sleep is alive.
        wait_for(
            lambda: any(m["agent"].get("tool") == "Bash" for m in agent_lines(sub, "a-cancel")),
            timeout=60,
            what="the slow run's Bash call",
        )
        wait_for(lambda: any("sleep 600" in p for p in agent_processes()), timeout=30, what="the long job")
        cancelled_at = time.monotonic()
        assert client.cancel(redis, "a-cancel")
        record = wait_final(redis, "a-cancel", timeout=60)
        assert record["status"] == "cancelled" and record["error"] == "cancelled by request", record
        assert time.monotonic() - cancelled_at < 30
        record = wait_final(redis, "a-timeout", timeout=90)
        assert record["status"] == "failed", record
        assert "agent run stopped: timed out after 10s" in record["error"]
        # Nothing of either run is left on the agent host: not the CLI, not its tool's sleep.
        wait_for(lambda: not agent_processes(), timeout=15, what="no agent process left")
        failed = [m for m in sub.on("tasks:u1") if m["type"] == "task.failed" and m["task_id"] == "a-timeout"]
        assert failed and "timed out" in failed[0]["error"]
    assert worker.stop() == 0


def test_sandbox_agent_restart_stops_the_sandboxs_runs(agent_env: Env, redis: redis_lib.Redis) -> None:
    make_clone(agent_env)
    worker = agent_env.start_worker("--concurrency", "2")
    with Subscriber(redis, "tasks:*", "sandbox:status") as sub:
        push(redis, agent_task("a-long", "[[script:slow]]"))
        wait_for(lambda: any("sleep 600" in p for p in agent_processes()), timeout=60, what="the long job")
        push(redis, envelope("a-restart", "sandbox.agent.restart", SANDBOX, resource="sb-restart"))
        restart = wait_final(redis, "a-restart", timeout=60)
        assert restart["status"] == "completed", restart
        [status] = sub.on("sandbox:status")
        assert status["metadata"] == {"agent_mode": "on-demand", "stopped_runs": 1}
        record = wait_final(redis, "a-long", timeout=60)
        assert record["status"] == "failed"
        assert "agent run stopped: stopped by sandbox.agent.restart" in record["error"], record
        wait_for(lambda: not agent_processes(), timeout=15, what="no agent process left")
    assert worker.stop() == 0


def test_each_broken_setting_fails_with_a_clear_message(agent_env: Env, redis: redis_lib.Redis, tmp_path: Path) -> None:
    make_clone(agent_env)
    stranger = tmp_path / "stranger_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    cases: list[tuple[str, dict[str, str], str]] = [
        ("b-nouser", {"SSH_USER": ""}, "SSH_USER is not set"),
        ("b-port", {"ORCHESTRATOR_SSH_PORT": "2"}, "host unreachable"),
        ("b-key", {"ORCHESTRATOR_SSH_KEY_FILE": str(stranger)}, "Permission denied (publickey"),
        ("b-cli", {"SSH_CLAUDE_PATH": "/home/agent/.local/bin/no-such-claude"}, "was not found"),
        ("b-noresult", {"SSH_CLAUDE_PATH": "/bin/true"}, "exited with code 0 without a result line"),
        ("b-api", {}, "the agent run failed"),
    ]
    for task_id, overrides, expected in cases:
        prompt = "[[script:error]]" if task_id == "b-api" else "hello"
        push(redis, agent_task(task_id, prompt))
        started = time.monotonic()
        worker = agent_env.start_worker("--burst", **overrides)
        assert worker.process.wait(120) == 0, worker.log()
        record = task_hash(redis, task_id)
        assert record["status"] == "failed", (task_id, record)
        assert expected in record["error"], (task_id, record["error"])
        assert time.monotonic() - started < 60, task_id  # failed at once, not retried
        assert int(record["attempts"]) == 1
    assert "scripted failure" in task_hash(redis, "b-api")["error"]


def test_bad_agent_payloads_are_rejected_naming_the_field(agent_env: Env, redis: redis_lib.Redis) -> None:
    bad: dict[str, dict[str, Any]] = {
        "r-profile": {**SANDBOX, "prompt": "x", "tool_profile": "root"},
        "r-both": {**SANDBOX, "prompt": "x", "tool_profile": "readonly", "allowed_tools": ["Read"]},
        "r-tool": {**SANDBOX, "prompt": "x", "allowed_tools": ["Read; rm -rf /"]},
        "r-type": {**SANDBOX, "prompt": "x", "agent_type": "wizard"},
        "r-empty": {**SANDBOX, "prompt": ""},
        "r-noclone": {**SANDBOX, "sandbox_slug": "nowhere", "prompt": "x"},
    }
    for task_id, payload in bad.items():
        push(redis, envelope(task_id, "agent.run", payload, resource=f"res-{task_id}"))
    agent_env.run_burst("--concurrency", "4")
    errors = {task_id: task_hash(redis, task_id) for task_id in bad}
    assert all(r["status"] == "failed" for r in errors.values()), errors
    assert "payload.tool_profile" in errors["r-profile"]["error"]
    assert "not both" in errors["r-both"]["error"]
    assert "payload.allowed_tools.0" in errors["r-tool"]["error"]
    assert "payload.agent_type" in errors["r-type"]["error"]
    assert "payload.prompt" in errors["r-empty"]["error"]
    assert "sandbox nowhere of acme has no working clone" in errors["r-noclone"]["error"]
    assert standin_requests() == []


def test_a_lost_workers_run_is_superseded_by_the_next_attempt(agent_env: Env, redis: redis_lib.Redis) -> None:
    make_clone(agent_env)
    short_lease = {"ORCHESTRATOR_LEASE_TTL": "2", "ORCHESTRATOR_HEARTBEAT_INTERVAL": "0.5"}
    first = agent_env.start_worker(**short_lease)
    push(redis, agent_task("a-lost", "[[script:slow]]"))
    wait_for(lambda: any("sleep 600" in p for p in agent_processes()), timeout=60, what="the first attempt's job")
    first_sleep = [p.split()[0] for p in agent_processes() if "sleep 600" in p]
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    second = agent_env.start_worker(**short_lease)

    def second_attempt_running() -> bool:
        sleeps = [p.split()[0] for p in agent_processes() if "sleep 600" in p]
        return bool(sleeps) and not set(sleeps) & set(first_sleep)

    # The first attempt's agent is gone before the second one's starts: never two agents in the clone. Its
    # worker's death hung up the SSH session (Ansible runs modules on a pty), and the supervisor took that as a
    # stop; had it not, the second attempt would have stopped it ("superseded").
    wait_for(second_attempt_running, timeout=90, what="the second attempt's job alone")
    assert task_hash(redis, "a-lost")["attempts"] == "2"
    old = Path("/home/agent/.orchestrator/agent-runs/acme/web/s1/a-lost-1/exit.json")
    assert json.loads(old.read_text())["reason"] in {"stopped by signal SIGHUP", "superseded by a-lost-2"}
    assert client.cancel(redis, "a-lost")
    assert wait_final(redis, "a-lost", timeout=60)["status"] == "cancelled"
    wait_for(lambda: not agent_processes(), timeout=15, what="no agent process left")
    assert second.stop() == 0


def test_by_hand_with_ansible_playbook_and_in_check_mode(agent_env: Env, tmp_path: Path) -> None:
    """What an operator does: `orchestrator vars`, then the playbook with the prompt in a file."""
    repo = make_clone(agent_env)
    variables = tmp_path / "vars.yml"
    environ = agent_env.environ(ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    subprocess.run([str(BIN / "orchestrator"), "vars", "--out", str(variables)], env=environ, cwd=ROOT, check=True)
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(HOSTILE + "[[script:write]]")
    runs = Path("/home/agent/.orchestrator/agent-runs/acme/web/s1")

    def playbook(run_id: str, *extra: str) -> subprocess.CompletedProcess[str]:
        argv = [str(BIN / "ansible-playbook"), "playbooks/agent.run.yml", "-e", f"@{variables}"]
        argv += ["-e", json.dumps({**SANDBOX, "prompt_file": str(prompt), "agent_run_id": run_id}), *extra]
        return subprocess.run(argv, env=environ, cwd=ROOT, capture_output=True, text=True, check=False, timeout=240)

    checked = playbook("hand-check", "--check")
    assert checked.returncode == 0, checked.stdout[-4000:]
    assert "would run Claude Code in " + str(repo) in checked.stdout
    assert not (runs / "hand-check").exists() and not (repo / "AGENT_NOTES.md").exists()
    assert standin_requests() == []

    done = playbook("hand-1")
    assert done.returncode == 0, done.stdout[-4000:]
    assert (repo / "AGENT_NOTES.md").read_text() == "written and edited by the agent\n"
    assert {r["prompt"] for r in standin_requests()} == {HOSTILE + "[[script:write]]"}
    assert json.loads((runs / "hand-1" / "exit.json").read_text())["rc"] == 0
    assert (runs / "hand-1" / "prompt").read_bytes() == prompt.read_bytes()


def test_deleting_the_sandbox_stops_its_runs_first(
    agent_env: Env, redis: redis_lib.Redis, github: GitHub, graph: Graph
) -> None:
    repo = make_clone(agent_env)
    worker = agent_env.start_worker("--concurrency", "2")
    push(redis, agent_task("a-doomed", "[[script:slow]]"))
    wait_for(lambda: any("sleep 600" in p for p in agent_processes()), timeout=60, what="the long job")
    push(redis, envelope("a-delete", "sandbox.delete", SANDBOX, resource="sb-delete"))
    deleted = wait_final(redis, "a-delete", timeout=120)
    assert deleted["status"] == "completed", deleted
    record = wait_final(redis, "a-doomed", timeout=60)
    assert record["status"] == "failed" and "agent run stopped: stopped by sandbox.delete" in record["error"], record
    assert not repo.exists()
    wait_for(lambda: not agent_processes(), timeout=15, what="no agent process left")
    assert worker.stop() == 0


def test_the_seeds_claude_code_runner_api(agent_env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ClaudeCodeRunner.run(prompt, working_dir, agent_type, tool_profile, allowed_tools, timeout) -> AgentResult,
    streaming each line to a callback as it comes, from Python (no queue)."""
    import asyncio

    from orchestrator.agents import ClaudeCodeRunner
    from orchestrator.config import Settings
    from orchestrator.runner import PlaybookRunner

    repo = make_clone(agent_env)
    # A working directory given as such is the caller's to make reachable (the slugs' path opens the team's folders).
    for folder in (agent_env.data_dir / "teams", agent_env.data_dir / "teams" / "acme"):
        folder.chmod(0o755)
    for name, value in agent_env.environ().items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    runner = ClaudeCodeRunner(
        settings,
        PlaybookRunner(project_dir=ROOT, runs_dir=tmp_path / "runs", env=settings.playbook_env(), kill_grace=2),
    )
    seen: list[tuple[int, str]] = []
    result = asyncio.run(
        runner.run(
            "Write the notes. [[script:write]]",
            str(repo),
            agent_type="reviewer",
            allowed_tools=["Read", "Write", "Edit"],
            timeout=120,
            on_line=lambda number, line, _at: seen.append((number, str(line.get("type")))),
        )
    )
    assert result.success and result.status == "completed", result
    assert result.num_turns == 3 and result.cost_usd and result.session_id
    assert result.result == "Done: wrote and edited AGENT_NOTES.md."
    assert [n for n, _ in seen] == list(range(1, result.lines + 1)) and seen[-1][1] == "result"
    assert result.metadata["tool_profile"] == "custom"
    assert (repo / "AGENT_NOTES.md").read_text() == "written and edited by the agent\n"
    # The explicit rules replaced the reviewer's readonly profile: the write tools were there and pre-approved.
    offered = {tool for request in standin_requests() for tool in request["tools"]}
    assert {"Write", "Edit"} <= offered
    failed = asyncio.run(runner.run("[[script:error]]", str(repo), tool_profile="readonly"))
    assert not failed.success and failed.status == "failed" and "scripted failure" in str(failed.error)


def test_two_runs_in_one_clone_take_turns(agent_env: Env, redis: redis_lib.Redis) -> None:
    """Different resource ids (two cards, say), the same sandbox: one agent at a time in its clone, in order."""
    make_clone(agent_env)
    push(redis, envelope("t-first", "agent.run", {**SANDBOX, "prompt": "[[script:write]]"}, resource="card-1"))
    push(redis, envelope("t-second", "agent.run", {**SANDBOX, "prompt": "[[script:write]]"}, resource="card-2"))
    agent_env.run_burst("--concurrency", "2")
    first, second = task_hash(redis, "t-first"), task_hash(redis, "t-second")
    assert first["status"] == second["status"] == "completed", (first, second)
    assert second["started_at"] >= first["finished_at"], (first, second)

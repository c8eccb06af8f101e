#!/usr/bin/env python
"""Benchmarks of the orchestrator, side by side in one run: `.venv/bin/python bench/run.py [--quick] [--only NAME]`.

Self-contained: starts its own redis-server on a free loopback port in a temporary folder, its own
`orchestrator worker` subprocesses, and removes all of it (processes and folders) on the way out.
Prints a table and writes bench/results.json (figures, targets, pass/fail per target, machine info).

Benchmarks (NAME for --only):
  overhead  wall time of playbooks/team.provision.yml through a worker vs bare ansible-playbook
  dispatch  LPUSH -> task.started latency on an idle worker (fixture playbook)
  cancel    cancel request -> no process of the run left, and -> final task.cancelled message
  events    event pipeline throughput: runner thread -> Worker._event_sink -> Publisher -> Redis
  memory    idle worker RSS (the RSS of the workers of overhead/dispatch/cancel is reported too)
  compose   docker_compose_v2 up / idempotent up / restart / stop / down (Ansible task durations)
  workspace playbooks/workspace.provision.yml, then sandbox.provision.yml of a sandbox of it, through a worker vs
            bare ansible-playbook (same vars, interleaved pairs), and each step's (role's) share of the orchestrated
            runs from their Ansible events; needs the local GitHub, Graph and Pebble of `make services` (.run/env),
            certificates on; deletes (sandbox, then workspace) between runs, untimed (quick: 2 pairs, 5-10 min;
            full: 4 pairs, 10-17 min)
  agent     agent.run with the real Claude Code CLI on the agent host of `make services` (SSH settings from .run/env;
            skipped without SSH_USER there) through a worker: the time from the supervisor writing a stream line down
            (stream.times) to its progress message reaching Redis (`[[script:ticks 50]]` runs; quick: 2, full: 5);
            asyncssh and OpenSSH connection costs, fresh vs reused / ControlMaster; a plain prompt's wall time vs the
            CLI's own duration_ms, and vs bare ansible-playbook playbooks/agent.run.yml (interleaved pairs; quick: 3,
            full: 6)

Only Python's clocks (time.perf_counter) and /proc are used for measurements; the agent benchmark's stream latency
compares time.time() with the stamps the supervisor on the agent host writes (same machine, same clock). Machines are
noisy: the figures that matter are ratios and percentiles over repeated, interleaved runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psutil
from redis import Redis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from orchestrator import client  # noqa: E402
from orchestrator import constants as k  # noqa: E402
from orchestrator.processes import run_processes  # noqa: E402
from orchestrator.runner import unsafe_vars_yaml  # noqa: E402

if TYPE_CHECKING:
    from orchestrator.config import Settings

T = TypeVar("T")
BENCH_DIR = ROOT / "bench"
FIXTURES = BENCH_DIR / "playbooks"
RESULTS = BENCH_DIR / "results.json"
BIN = Path(sys.executable).parent
# Every process this script starts (and all their descendants) carries this variable: the final sweep
# finds leftovers by it, whoever their parent is now.
SESSION_VAR = "ORCHESTRATOR_BENCH_SESSION"
SESSION = uuid.uuid4().hex
NAMES = ("overhead", "dispatch", "cancel", "events", "memory", "compose", "workspace", "agent")
FINAL_TYPES = frozenset(k.FINAL_MESSAGES.values())
CANCEL_SLEEP_TASK = "Sleep with a forked child"


# ----------------------------------------------------------------------------------------------- helpers


def percentile(values: list[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * pct / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary_ms(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else float("nan"),
        "mean_ms": round(statistics.fmean(ms), 2) if ms else float("nan"),
    }


def med(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def ratio_stats(ratios: list[float]) -> dict[str, Any]:
    """The median, range and list of orchestrated/bare ratios of interleaved pairs."""
    return {
        **ratio_stats(ratios),
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def proc_memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MB (from /proc/<pid>/status)."""
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = round(int(value.split()[0]) / 1024, 1)
    return found


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of a process (its own CPU and that of its reaped children)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(v) for v in fields[11:15]) / ticks


def session_processes() -> list[psutil.Process]:
    found = []
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            if proc.environ().get(SESSION_VAR) == SESSION:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


def new_slug() -> str:
    """Team slugs of the benchmark: `bench-` and a random part. Their compose projects are `team-bench-...` (a team),
    `ws-bench-...` (a workspace) and `sb-bench-...` (a sandbox): see BENCH_PROJECTS."""
    return "bench-" + uuid.uuid4().hex[:12]


# Compose project prefixes of the benchmark's teams, workspaces and sandboxes (playbooks/vars/names.yml).
BENCH_PROJECTS = ("team-bench-", "ws-bench-", "sb-bench-")


def _bench_objects(kind: str) -> list[str]:
    """Ids of the containers, networks or volumes that belong to a compose project of the benchmark."""
    listed = subprocess.run(
        ["docker", kind, "ls", "-aq" if kind == "container" else "-q", "--filter", "label=com.docker.compose.project"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    found = []
    for ident in listed:
        project = subprocess.run(
            [
                "docker",
                kind,
                "inspect",
                "-f",
                '{{ index .Config.Labels "com.docker.compose.project" }}'
                if kind == "container"
                else '{{ index .Labels "com.docker.compose.project" }}',
                ident,
            ],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if project.startswith(BENCH_PROJECTS):
            found.append(ident)
    return found


def remove_bench_teams() -> None:
    """Remove the containers, networks and volumes of every team, workspace and sandbox the benchmark provisioned,
    and nothing else."""
    for kind, verb in (("container", ["rm", "-f"]), ("network", ["rm"]), ("volume", ["rm", "-f"])):
        doomed = _bench_objects(kind)
        if doomed:
            subprocess.run(["docker", kind, *verb, *doomed], capture_output=True, check=False)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- services


class RedisServer:
    """A private redis-server on a free loopback port, configured like scripts/services.sh."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        for _ in range(5):
            self.port = free_port()
            self.proc = subprocess.Popen(
                [
                    "redis-server",
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--dir",
                    str(self.folder),
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--notify-keyspace-events",
                    "Kl",
                    "--logfile",
                    str(self.folder / "redis.log"),
                ],
                env={**os.environ, SESSION_VAR: SESSION},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self.proc.poll() is None:
                with contextlib.suppress(Exception):
                    if Redis.from_url(self.url, socket_connect_timeout=0.2).ping():
                        return
                time.sleep(0.02)
            self.stop()
        raise RuntimeError(f"redis-server did not start (see {self.folder / 'redis.log'})")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


class WorkerProcess:
    """An `orchestrator worker` subprocess with its own data/state folders."""

    def __init__(self, ctx: Context, name: str, *, concurrency: int, playbook_dir: Path | None):
        self.ctx = ctx
        self.name = name
        self.data_dir = ctx.tmp / f"{name}-data"
        self.state_dir = ctx.tmp / f"{name}-state"
        self.log_path = ctx.tmp / f"{name}-worker.log"
        self.env = {
            **ctx.base_env,
            "REDIS_URL": ctx.redis.url,
            "ORCHESTRATOR_DATA_DIR": str(self.data_dir),
            "ORCHESTRATOR_STATE_DIR": str(self.state_dir),
            "ORCHESTRATOR_CONCURRENCY": str(concurrency),
            "ORCHESTRATOR_GRACE_PERIOD": "5",
            "ORCHESTRATOR_LOG_LEVEL": "INFO",
        }
        if playbook_dir is not None:
            self.env["ORCHESTRATOR_PLAYBOOK_DIR"] = str(playbook_dir)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> float:
        """Start and wait until registered in orchestrator:workers; returns the start-up time in s."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            t0 = time.perf_counter()
            self.proc = subprocess.Popen(
                [str(BIN / "orchestrator"), "worker"],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.ctx.workers.append(self)
        redis = self.ctx.r
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited {self.proc.returncode}: {self.log_tail()}")
            for raw in redis.hvals(k.WORKERS_HASH):
                with contextlib.suppress(ValueError, TypeError):
                    if json.loads(raw).get("pid") == self.proc.pid:
                        return time.perf_counter() - t0
            time.sleep(0.02)
        raise RuntimeError(f"worker {self.name} did not register within {timeout}s: {self.log_tail()}")

    def memory(self) -> dict[str, float]:
        return proc_memory_mb(self.pid)

    def cpu(self) -> float:
        return proc_cpu_seconds(self.pid)

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        """SIGTERM (finish running tasks), again (cancel them), then SIGKILL the group as a last resort."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 8.0), (signal.SIGTERM, 8.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                if sig is signal.SIGKILL:
                    os.killpg(proc.pid, sig)
                else:
                    proc.send_signal(sig)
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                log(f"worker {self.name} still running after {sig.name}")


class Subscriber:
    """Receives the messages of one tasks:{user_id} channel in a thread, time-stamped on receipt (perf_counter for
    durations; time.time() too, to compare with time stamps taken by other processes: `received`)."""

    def __init__(self, url: str, user_id: str):
        self._redis = Redis.from_url(url)
        self._pubsub = self._redis.pubsub()  # type: ignore[no-untyped-call]
        self._pubsub.subscribe(k.user_channel(user_id))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the subscription is active once confirmed
            message = self._pubsub.get_message(timeout=0.5)
            if message and message["type"] == "subscribe":
                break
        else:
            raise RuntimeError("no subscribe confirmation")
        self._by_task: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        self._wall_by_task: dict[str, list[float]] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-subscriber", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._pubsub.get_message(timeout=0.2)
            except Exception:  # closed under us on exit
                return
            if message is None or message["type"] != "message":
                continue
            received = time.perf_counter()
            wall = time.time()
            data = json.loads(message["data"])
            with self._cond:
                self._by_task.setdefault(str(data.get("task_id")), []).append((received, data))
                self._wall_by_task.setdefault(str(data.get("task_id")), []).append(wall)
                self._cond.notify_all()

    def wait(
        self, task_id: str, match: Callable[[dict[str, Any]], bool], timeout: float
    ) -> tuple[float, dict[str, Any]]:
        """The first message of a task that matches (already received or to come)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for received, data in self._by_task.get(task_id, []):
                    if match(data):
                        return received, data
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [d.get("type") for _t, d in self._by_task.get(task_id, [])]
                    raise TimeoutError(f"task {task_id}: no matching message within {timeout}s (saw {seen})")
                self._cond.wait(remaining)

    def wait_type(self, task_id: str, types: frozenset[str] | set[str], timeout: float) -> tuple[float, dict[str, Any]]:
        return self.wait(task_id, lambda d: d.get("type") in types, timeout)

    def finals(self) -> dict[str, str]:
        with self._cond:
            return {
                task_id: str(d.get("type"))
                for task_id, messages in self._by_task.items()
                for _t, d in messages
                if d.get("type") in FINAL_TYPES
            }

    def received(self, task_id: str) -> list[tuple[float, dict[str, Any]]]:
        """The messages of a task received so far, in order, each with its time of receipt by the wall clock."""
        with self._cond:
            messages = self._by_task.get(task_id, [])
            walls = self._wall_by_task.get(task_id, [])
            return [(wall, data) for wall, (_t, data) in zip(walls, messages, strict=True)]

    def forget(self, task_id: str) -> None:
        with self._cond:
            self._by_task.pop(task_id, None)
            self._wall_by_task.pop(task_id, None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        with contextlib.suppress(Exception):
            self._pubsub.close()
        with contextlib.suppress(Exception):
            self._redis.close()


@dataclass
class Context:
    tmp: Path
    redis: RedisServer
    quick: bool
    base_env: dict[str, str]
    workers: list[WorkerProcess] = field(default_factory=list)
    _r: Redis | None = None

    @property
    def r(self) -> Redis:
        if self._r is None:
            self._r = Redis.from_url(self.redis.url)
        return self._r


@dataclass
class Target:
    name: str
    value: float
    op: str  # "<=" or "<" or ">="
    limit: float
    unit: str

    @property
    def passed(self) -> bool:
        if self.value != self.value:  # NaN: not measured
            return False
        return {"<=": self.value <= self.limit, "<": self.value < self.limit, ">=": self.value >= self.limit}[self.op]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "op": self.op,
            "limit": self.limit,
            "unit": self.unit,
            "pass": self.passed,
        }


def interleaved_pair(index: int, orchestrated: Callable[[], T], bare: Callable[[], T]) -> tuple[T, T]:
    """One (orchestrated, bare) pair of runs; which side goes first alternates with the index, so neither side
    always gets the machine the other just warmed."""
    if index % 2 == 0:
        first = orchestrated()
        return first, bare()
    second = bare()
    return orchestrated(), second


# ----------------------------------------------------------------------------------------------- 1. overhead


def bench_overhead(ctx: Context) -> dict[str, Any]:
    """Same playbook, same vars: through a worker (LPUSH -> task.completed) vs bare ansible-playbook."""
    pairs = 3 if ctx.quick else 8
    user = "bench-overhead"
    worker = WorkerProcess(ctx, "overhead", concurrency=1, playbook_dir=None)
    worker.start()
    sub = Subscriber(ctx.redis.url, user)
    bare_dir = ctx.tmp / "overhead-bare"
    bare_data = bare_dir / "data"
    bare_data.mkdir(parents=True, exist_ok=True)
    bare_log = bare_dir / "ansible-playbook.log"
    bare_env = {
        **ctx.base_env,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ORCHESTRATOR_DATA_DIR": str(bare_data),
        "DOMAIN": "kanban.localhost",
        "PORTAL_API_URL": "https://kanban.localhost/api",
    }
    try:

        def orchestrated() -> dict[str, float]:
            slug = new_slug()
            cpu0 = worker.cpu()
            t0 = time.perf_counter()
            task_id = client.submit(ctx.r, "team.provision", {"team_slug": slug}, user_id=user)
            t_started, _ = sub.wait_type(task_id, {k.MSG_STARTED}, 60)
            t_final, final = sub.wait_type(task_id, FINAL_TYPES, 300)
            status = client.status(ctx.r, task_id).get("status")
            if final.get("type") != k.MSG_COMPLETED or status != "completed":
                raise RuntimeError(f"orchestrated run ended {final.get('type')}/{status}: {final.get('error')}")
            if not (worker.data_dir / "teams" / slug).is_dir():
                raise RuntimeError(f"orchestrated run did not create the team directory of {slug}")
            time.sleep(0.05)  # let the worker reap and account the run's CPU
            return {
                "wall": t_final - t0,
                "dispatch": t_started - t0,
                "run": t_final - t_started,
                "cpu": worker.cpu() - cpu0,
            }

        def bare() -> dict[str, float]:
            slug = new_slug()
            extravars = {
                "team_slug": slug,
                "orchestrator_task_id": str(uuid.uuid4()),
                "orchestrator_task_type": "team.provision",
                "orchestrator_resource_id": str(uuid.uuid4()),
                "orchestrator_user_id": user,
                "orchestrator_data_dir": str(bare_data),
                "orchestrator_domain": "kanban.localhost",
                "orchestrator_portal_api_url": "https://kanban.localhost/api",
            }
            vars_file = bare_dir / f"vars-{slug}.yml"
            vars_file.write_text(unsafe_vars_yaml(extravars))  # exactly how the worker writes them
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [
                    str(BIN / "ansible-playbook"),
                    "-i",
                    "inventory",
                    "playbooks/team.provision.yml",
                    "-e",
                    f"@{vars_file}",
                ],
                cwd=ROOT,
                env=bare_env,
                stdin=subprocess.DEVNULL,
                stdout=bare_log.open("ab"),
                stderr=subprocess.STDOUT,
            )
            _pid, wait_status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            proc.returncode = os.waitstatus_to_exitcode(wait_status)
            if proc.returncode != 0:
                tail = " | ".join(bare_log.read_text(errors="replace").strip().splitlines()[-6:])
                raise RuntimeError(f"bare ansible-playbook exited {proc.returncode}: {tail}")
            if not (bare_data / "teams" / slug).is_dir():
                raise RuntimeError(f"bare run did not create the team directory of {slug}")
            return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime}

        log("overhead: warm-up (the worker lists the playbook's tasks once)")
        warm_orch = orchestrated()
        warm_bare = bare()
        remove_bench_teams()
        orch_runs: list[dict[str, float]] = []
        bare_runs: list[dict[str, float]] = []
        for i in range(pairs):
            o, b = interleaved_pair(i, orchestrated, bare)
            orch_runs.append(o)
            bare_runs.append(b)
            log(
                f"overhead: pair {i + 1}/{pairs}: orchestrator {orch_runs[-1]['wall']:.3f}s, "
                f"bare {bare_runs[-1]['wall']:.3f}s"
            )
            remove_bench_teams()  # untimed: running teams' healthchecks would slow every later pair
        ratios = [o["wall"] / b["wall"] for o, b in zip(orch_runs, bare_runs, strict=True)]
        cpu_ratios = [o["cpu"] / b["cpu"] for o, b in zip(orch_runs, bare_runs, strict=True) if b["cpu"] > 0]
        memory_after = worker.memory()
    finally:
        sub.close()
        worker.stop()
        remove_bench_teams()
    median_ratio = statistics.median(ratios)
    # A pair is disturbed when either side took 1.5x its side's median: machine noise, not the engine.
    o_med = statistics.median(r["wall"] for r in orch_runs)
    b_med = statistics.median(r["wall"] for r in bare_runs)
    disturbed = [
        i
        for i, (o, b) in enumerate(zip(orch_runs, bare_runs, strict=True))
        if o["wall"] > 1.5 * o_med or b["wall"] > 1.5 * b_med
    ]
    clean = [r for i, r in enumerate(ratios) if i not in disturbed]

    def med(runs: list[dict[str, float]], key: str) -> float:
        return round(statistics.median(r[key] for r in runs), 4)

    return {
        "pairs": pairs,
        "playbook": "playbooks/team.provision.yml",
        "warmup_s": {"orchestrator": round(warm_orch["wall"], 3), "bare": round(warm_bare["wall"], 3)},
        "orchestrator_wall_median_s": med(orch_runs, "wall"),
        "bare_wall_median_s": med(bare_runs, "wall"),
        "orchestrator_dispatch_median_s": med(orch_runs, "dispatch"),
        "orchestrator_run_median_s": med(orch_runs, "run"),
        "orchestrator_cpu_median_s": med(orch_runs, "cpu"),
        "bare_cpu_median_s": med(bare_runs, "cpu"),
        "ratio_median": round(median_ratio, 4),
        "ratio_min": round(min(ratios), 4),
        "ratio_max": round(max(ratios), 4),
        "cpu_ratio_median": round(statistics.median(cpu_ratios), 4) if cpu_ratios else None,
        "ratios": [round(r, 4) for r in ratios],
        "disturbed_pairs": disturbed,
        "ratio_median_undisturbed": round(statistics.median(clean), 4) if clean else None,
        "orchestrator_wall_s": [round(r["wall"], 4) for r in orch_runs],
        "bare_wall_s": [round(r["wall"], 4) for r in bare_runs],
        "worker_memory_after_mb": memory_after,
        "targets": [
            Target("overhead: orchestrator/bare wall ratio (median of pairs)", round(median_ratio, 4), "<=", 1.05, "x")
        ],
    }


# ----------------------------------------------------------------------------------------------- 2. dispatch


def bench_dispatch(ctx: Context) -> dict[str, Any]:
    """LPUSH -> task.started, one task at a time on an idle worker."""
    samples = 50 if ctx.quick else 200
    concurrency = 4
    user = "bench-dispatch"
    worker = WorkerProcess(ctx, "dispatch", concurrency=concurrency, playbook_dir=FIXTURES)
    worker.start()
    sub = Subscriber(ctx.redis.url, user)
    latencies: list[float] = []
    in_flight_at_push: list[int] = []
    pending: list[str] = []
    try:
        log("dispatch: warm-up")
        warm = client.submit(ctx.r, "team.provision", {"team_slug": new_slug()}, user_id=user)
        sub.wait_type(warm, FINAL_TYPES, 120)
        time.sleep(0.5)
        for i in range(samples):
            # Keep the worker idle as seen by the dispatcher: a free slot, and at most one playbook
            # (the previous sample's) still running, so the figure is dispatch, not CPU queueing.
            finals = sub.finals()
            while True:
                finals = sub.finals()
                pending = [t for t in pending if t not in finals]
                if len(pending) <= 1:
                    break
                sub.wait_type(pending[0], FINAL_TYPES, 120)
            in_flight_at_push.append(len(pending))
            t0 = time.perf_counter()
            task_id = client.submit(ctx.r, "team.provision", {"team_slug": new_slug()}, user_id=user)
            t_started, _ = sub.wait_type(task_id, {k.MSG_STARTED}, 30)
            latencies.append(t_started - t0)
            pending.append(task_id)
            if (i + 1) % 50 == 0:
                log(f"dispatch: {i + 1}/{samples}, p50 so far {percentile(latencies, 50) * 1000:.1f} ms")
        for task_id in pending:
            _t, final = sub.wait_type(task_id, FINAL_TYPES, 120)
            if final.get("type") != k.MSG_COMPLETED:
                raise RuntimeError(f"dispatch task {task_id} ended {final.get('type')}: {final.get('error')}")
        memory_after = worker.memory()
    finally:
        sub.close()
        worker.stop()
    stats = summary_ms(latencies)
    idle = [lat for lat, n in zip(latencies, in_flight_at_push, strict=True) if n == 0]
    return {
        **stats,
        "concurrency": concurrency,
        "playbook": "bench/playbooks/team.provision.yml",
        "samples_with_no_other_run": len(idle),
        "p99_ms_with_no_other_run": round(percentile([v * 1000 for v in idle], 99), 2) if idle else None,
        "worker_memory_after_mb": memory_after,
        "targets": [Target("dispatch: LPUSH -> task.started p99", stats["p99_ms"], "<", 50, "ms")],
    }


# ----------------------------------------------------------------------------------------------- 3. cancel


def bench_cancel(ctx: Context) -> dict[str, Any]:
    """Cancel a run in `sleep 600 & sleep 600`; time until no process of the run is left and until the final status."""
    samples = 5 if ctx.quick else 20
    user = "bench-cancel"
    worker = WorkerProcess(ctx, "cancel", concurrency=4, playbook_dir=FIXTURES)
    worker.start()
    sub = Subscriber(ctx.redis.url, user)
    gone: list[float] = []
    final: list[float] = []
    tree_sizes: list[int] = []
    tree_sessions: list[int] = []
    scan_ms: list[float] = []
    try:
        for i in range(samples):
            task_id = client.submit(ctx.r, "team.restart", {"team_slug": new_slug()}, user_id=user)
            _t, started = sub.wait_type(task_id, {k.MSG_STARTED}, 60)
            run_id = f"{task_id}-{started.get('attempt', 1)}-1"  # Worker._run_with_retries: {task}-{attempt}-{try}
            sub.wait(
                task_id,
                lambda d: d.get("type") == k.MSG_PROGRESS and d.get("message") == CANCEL_SLEEP_TASK,
                60,
            )
            time.sleep(0.3)
            deadline = time.monotonic() + 10
            procs = run_processes(run_id)
            while not any(_is_sleep(p) for p in procs) and time.monotonic() < deadline:
                time.sleep(0.05)
                procs = run_processes(run_id)
            if not any(_is_sleep(p) for p in procs):
                raise RuntimeError(f"run {run_id}: the sleep processes never appeared ({len(procs)} processes)")
            tree_sizes.append(len(procs))
            with contextlib.suppress(OSError):
                tree_sessions.append(len({os.getsid(p.pid) for p in procs}))
            t0 = time.perf_counter()
            if not client.cancel(ctx.r, task_id):
                raise RuntimeError(f"cancel of {task_id} refused")
            t_gone = None
            while time.perf_counter() - t0 < 30:
                s0 = time.perf_counter()
                left = run_processes(run_id)
                s1 = time.perf_counter()
                scan_ms.append((s1 - s0) * 1000)
                if not left:
                    t_gone = s1  # conservative: the end of the first scan that found none
                    break
                time.sleep(0.005)
            if t_gone is None:
                raise RuntimeError(f"run {run_id}: processes still there 30s after cancel")
            t_final, message = sub.wait_type(task_id, FINAL_TYPES, 30)
            status = client.status(ctx.r, task_id).get("status")
            if message.get("type") != k.MSG_CANCELLED or status != "cancelled":
                raise RuntimeError(f"cancelled task {task_id} ended {message.get('type')}/{status}")
            gone.append(t_gone - t0)
            final.append(t_final - t0)
            log(f"cancel: {i + 1}/{samples}: processes gone {gone[-1]:.3f}s, final status {final[-1]:.3f}s")
        memory_after = worker.memory()
    finally:
        sub.close()
        worker.stop()
    g = summary_ms(gone)
    f = summary_ms(final)
    return {
        "samples": samples,
        "playbook": "bench/playbooks/team.restart.yml",
        "processes_gone": g,
        "final_status": f,
        "run_tree_size_median": statistics.median(tree_sizes),
        "run_tree_sessions_median": statistics.median(tree_sessions) if tree_sessions else None,
        "process_scan_median_ms": round(statistics.median(scan_ms), 2),
        "worker_memory_after_mb": memory_after,
        "targets": [
            Target("cancel: -> no process left p99", g["p99_ms"], "<", 1000, "ms"),
            Target("cancel: -> final task.cancelled p99", f["p99_ms"], "<", 1000, "ms"),
        ],
    }


def _is_sleep(proc: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return proc.name() == "sleep"
    return False


# ----------------------------------------------------------------------------------------------- 4. events


def synthetic_events(count: int, run_id: str) -> tuple[list[dict[str, Any]], list[str]]:
    """playbook_on_task_start / runner_on_ok pairs shaped like ansible-runner's, and the matching plan."""
    play_uuid = str(uuid.uuid4())
    playbook_uuid = str(uuid.uuid4())
    events: list[dict[str, Any]] = []
    plan: list[str] = []
    now = datetime.datetime.now(datetime.UTC).isoformat()
    for i in range(count // 2):
        name = f"Synthetic step {i}"
        plan.append(f"team_instance : {name}")
        task_uuid = str(uuid.uuid4())
        common = {
            "playbook": "team.provision.yml",
            "playbook_uuid": playbook_uuid,
            "play": "Provision the team instance",
            "play_uuid": play_uuid,
            "play_pattern": "localhost",
            "task": name,
            "task_uuid": task_uuid,
            "task_action": "ansible.builtin.file",
            "resolved_action": "ansible.builtin.file",
            "task_args": "",
            "task_path": f"{ROOT}/roles/team_instance/tasks/directory.yml:{i % 40 + 2}",
            "role": "team_instance",
        }
        events.append(
            {
                "uuid": str(uuid.uuid4()),
                "counter": 2 * i + 1,
                "stdout": f"\r\nTASK [team_instance : {name}] " + "*" * 40,
                "start_line": 4 * i,
                "end_line": 4 * i + 2,
                "runner_ident": run_id,
                "event": "playbook_on_task_start",
                "pid": 4242,
                "created": now,
                "parent_uuid": play_uuid,
                "event_data": {**common, "name": f"team_instance : {name}", "is_conditional": False, "uuid": task_uuid},
            }
        )
        events.append(
            {
                "uuid": str(uuid.uuid4()),
                "counter": 2 * i + 2,
                "stdout": "\x1b[0;33mchanged: [localhost]\x1b[0m",
                "start_line": 4 * i + 2,
                "end_line": 4 * i + 3,
                "runner_ident": run_id,
                "event": "runner_on_ok",
                "pid": 4242,
                "created": now,
                "parent_uuid": task_uuid,
                "event_data": {
                    **common,
                    "host": "localhost",
                    "remote_addr": "localhost",
                    "res": {
                        "changed": True,
                        "diff": {"before": {"path": f"/tmp/t/{i}", "state": "absent"}, "after": {"state": "directory"}},
                        "path": f"/tmp/t/{i}",
                        "mode": "0750",
                        "state": "directory",
                        "uid": 0,
                        "gid": 0,
                        "owner": "root",
                        "group": "root",
                        "size": 4096,
                        "invocation": {"module_args": {"path": f"/tmp/t/{i}", "state": "directory", "mode": "0750"}},
                        "_ansible_no_log": False,
                    },
                    "start": now,
                    "end": now,
                    "duration": 0.0123,
                    "event_loop": None,
                    "uuid": str(uuid.uuid4()),
                },
            }
        )
    return events, plan


def bench_events(ctx: Context) -> dict[str, Any]:
    count = 50_000
    return asyncio.run(_bench_events(ctx, count))


async def _bench_events(ctx: Context, count: int) -> dict[str, Any]:
    from orchestrator.config import Settings  # noqa: PLC0415 - heavy imports only for this benchmark
    from orchestrator.progress import ProgressTracker  # noqa: PLC0415
    from orchestrator.runner import _RunState  # noqa: PLC0415
    from orchestrator.status import TaskRef  # noqa: PLC0415
    from orchestrator.worker import Worker  # noqa: PLC0415

    settings = Settings(
        redis_url=ctx.redis.url,
        data_dir=ctx.tmp / "events-data",
        state_dir=ctx.tmp / "events-state",
        # Large enough that XLEN can prove every message landed (the defaults trim approximately).
        task_stream_maxlen=count * 2,
        stream_maxlen=count * 2,
    )
    worker = Worker(settings)
    publisher = worker.publisher
    publisher.start()
    task_id = f"bench-events-{uuid.uuid4().hex[:8]}"
    ref = TaskRef(
        task_id=task_id, user_id="bench-events", type="team.provision", resource_type="team", resource_id="r1"
    )
    events, plan = synthetic_events(count, f"{task_id}-1-1")
    tracker = ProgressTracker(plan)
    state = _RunState(on_event=worker._event_sink(ref, tracker))
    loop_lag: list[float] = []
    stop_probe = asyncio.Event()

    async def probe() -> None:  # how late the loop runs a 10 ms timer while the pipeline is busy
        while not stop_probe.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            loop_lag.append(time.perf_counter() - t - 0.01)

    def feed() -> float:
        for event in events:
            state.handle(event)
        return time.perf_counter()

    global_before = int(await worker.redis.xlen(k.EVENTS_STREAM))  # other benchmarks wrote there too
    probe_task = asyncio.create_task(probe())
    try:
        t0 = time.perf_counter()
        t_fed = await asyncio.to_thread(feed)
        await publisher.drain()
        t_done = time.perf_counter()
        stop_probe.set()
        await probe_task
        r = worker.redis
        task_stream_len = int(await r.xlen(k.task_stream(task_id)))
        global_len = int(await r.xlen(k.EVENTS_STREAM)) - global_before
        step = int(await r.hget(k.task_key(task_id), "step") or 0)
        written = publisher.written
    finally:
        await publisher.close()
        await worker.redis.aclose()
    elapsed = t_done - t0
    rate = count / elapsed
    ok = task_stream_len == count and global_len == count // 2 and step == count // 2 and written == count
    if not ok:
        raise RuntimeError(
            f"events lost: fed {count}, task stream {task_stream_len}, global +{global_len}, step {step}, "
            f"written {written}"
        )
    return {
        "events": count,
        "elapsed_s": round(elapsed, 3),
        "feed_s": round(t_fed - t0, 3),
        "drain_after_feed_s": round(t_done - t_fed, 3),
        "events_per_s": round(rate),
        "verified": {"task_stream_xlen": task_stream_len, "global_stream_added": global_len, "progress_step": step},
        "loop_lag_p99_ms": round(percentile(loop_lag, 99) * 1000, 2),
        "loop_lag_max_ms": round(max(loop_lag) * 1000, 2) if loop_lag else None,
        "targets": [Target("events: pipeline throughput", round(rate), ">=", 5000, "events/s")],
    }


# ----------------------------------------------------------------------------------------------- 5. memory


def bench_memory(ctx: Context) -> dict[str, Any]:
    worker = WorkerProcess(ctx, "memory", concurrency=4, playbook_dir=FIXTURES)
    try:
        startup = worker.start()
        time.sleep(3)
        memory = worker.memory()
    finally:
        worker.stop()
    return {
        "startup_s": round(startup, 3),
        "idle_vmrss_mb": memory.get("VmRSS"),
        "idle_vmhwm_mb": memory.get("VmHWM"),
        "targets": [Target("memory: idle worker VmRSS", memory.get("VmRSS", float("nan")), "<=", 80, "MB")],
    }


# ----------------------------------------------------------------------------------------------- 6. compose

COMPOSE_STATES = ("up", "idempotent up", "restart", "stop", "down")
COMPOSE_FILE = """services:
  api:
    image: kanban-team-api:latest
    pull_policy: never
    init: true
  web:
    image: kanban-team-web:latest
    pull_policy: never
    init: true
"""


def bench_compose(ctx: Context) -> dict[str, Any]:
    """docker_compose_v2 up / idempotent up / restart / stop / down, each timed by Ansible (task duration)."""
    import ansible_runner  # noqa: PLC0415

    rounds = 2 if ctx.quick else 5
    durations: dict[str, list[float]] = {state: [] for state in COMPOSE_STATES}
    for index in range(rounds):
        project_dir = ctx.tmp / f"compose-{index}"
        project_dir.mkdir()
        (project_dir / "docker-compose.yml").write_text(COMPOSE_FILE)
        (ctx.tmp / f"compose-run-{index}").mkdir()
        seen: dict[str, float] = {}

        def handler(event: dict[str, Any], seen: dict[str, float] = seen) -> bool:
            data = event.get("event_data") or {}
            if event.get("event") == "runner_on_ok" and data.get("task") in COMPOSE_STATES:
                seen[str(data["task"])] = float(data.get("duration") or 0)
            return False

        result = ansible_runner.run(
            private_data_dir=str(ctx.tmp / f"compose-run-{index}"),
            project_dir=str(ROOT),
            playbook=str(ROOT / "bench" / "playbooks" / "compose-states.yml"),
            inventory=str(ROOT / "inventory"),
            quiet=True,
            event_handler=handler,
            extravars={"project_dir": str(project_dir), "project_name": f"bench-compose-{uuid.uuid4().hex[:8]}"},
            envvars={
                "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            },
        )
        if result.status != "successful" or set(seen) != set(COMPOSE_STATES):
            raise RuntimeError(f"compose round {index} ended {result.status} with {sorted(seen)}")
        for state, seconds in seen.items():
            durations[state].append(seconds)
        log(f"compose: round {index + 1}/{rounds}: " + ", ".join(f"{k} {v:.2f}s" for k, v in seen.items()))
    return {
        "rounds": rounds,
        "median_s": {state: round(statistics.median(v), 3) for state, v in durations.items()},
        "all_s": durations,
    }


# ----------------------------------------------------------------------------------------------- 7. workspace

RUN_ENV = ROOT / ".run" / "env"
# What `make services` prints into .run/env that the workspace and sandbox playbooks need: the local GitHub, the
# local Microsoft identity platform and Graph, Pebble (ACME), and certificates on. DOMAIN stays kanban.localhost
# (ctx.base_env, as in scripts/services.sh): pebble-challtestsrv resolves every name to 127.0.0.1 for HTTP-01.
SERVICE_ENV = (
    "GITHUB_API_URL",
    "GITHUB_TOKEN",
    "GITHUB_ORG",
    "GITHUB_TEMPLATE_REPO",
    "AZURE_AUTHORITY_URL",
    "GRAPH_API_URL",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "ACME_DIRECTORY_URL",
    "ACME_CA_BUNDLE",
    "ACME_EMAIL",
    "ACME_WEBROOT",
    "ORCHESTRATOR_CERTIFICATES",
)
WORKSPACE_SLUG = "ws"
SANDBOX_SLUG = "sb"
# The playbooks' steps: the role an Ansible task belongs to (the innermost one), "playbook" for the playbook's own
# tasks, and "outside tasks" for the rest of the wall time (dispatch, ansible-playbook start-up, parsing, the final
# status), so that the shares of a run add up to 100 %.
WORKSPACE_STEPS = (
    "github_repo",
    "azure_app",
    "workspace_app",
    "database",
    "certificate",
    "compose_deploy",
    "playbook",
    "outside tasks",
)
PROVISIONS = ("workspace.provision", "sandbox.provision")


def read_run_env() -> dict[str, str]:
    """Every value of .run/env (`export K=V` lines, written by `make services`)."""
    if not RUN_ENV.is_file():
        raise RuntimeError(f"{RUN_ENV} is missing: the local services are not running (run make services)")
    values: dict[str, str] = {}
    for line in RUN_ENV.read_text().splitlines():
        name, sep, value = line.strip().removeprefix("export ").partition("=")
        if sep:
            values[name.strip()] = value.strip().strip("'\"")
    return values


def read_services_env() -> dict[str, str]:
    """The values SERVICE_ENV names from .run/env."""
    values = read_run_env()
    missing = [name for name in SERVICE_ENV if not values.get(name)]
    if missing:
        raise RuntimeError(f"{RUN_ENV} has no value for {', '.join(missing)}: run make services")
    return {name: values[name] for name in SERVICE_ENV}


class LocalServices:
    """The local GitHub, Graph and Pebble of `make services`: reachability, and the benchmark's own leftovers
    (repositories <team>-ws, app registrations kanban-<team>-ws), found and removed by name."""

    def __init__(self, env: dict[str, str]):
        import ssl  # noqa: PLC0415
        import urllib.request  # noqa: PLC0415

        self.env = env
        self._urllib = urllib.request
        # Loopback services: no proxy from the environment; Pebble's listener is signed by the project's test CA.
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}),
            urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=env["ACME_CA_BUNDLE"])),
        )
        self._graph_token: str | None = None

    def _call(
        self, method: str, url: str, *, headers: dict[str, str] | None = None, body: bytes | None = None
    ) -> tuple[int, bytes]:
        import urllib.error  # noqa: PLC0415

        request = self._urllib.Request(url, data=body, method=method, headers=headers or {})
        try:
            with self._opener.open(request, timeout=15) as reply:
                return int(reply.status), reply.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()

    def _github(self, method: str, path: str) -> int:
        status, _ = self._call(
            method,
            self.env["GITHUB_API_URL"].rstrip("/") + path,
            headers={"Authorization": f"Bearer {self.env['GITHUB_TOKEN']}", "Accept": "application/vnd.github+json"},
        )
        return status

    def _graph(self, method: str, path: str) -> tuple[int, Any]:
        import urllib.parse  # noqa: PLC0415

        if self._graph_token is None:
            form = urllib.parse.urlencode(
                {
                    "grant_type": "client_credentials",
                    "client_id": self.env["AZURE_CLIENT_ID"],
                    "client_secret": self.env["AZURE_CLIENT_SECRET"],
                    "scope": "https://graph.microsoft.com/.default",
                }
            ).encode()
            url = f"{self.env['AZURE_AUTHORITY_URL'].rstrip('/')}/{self.env['AZURE_TENANT_ID']}/oauth2/v2.0/token"
            status, raw = self._call(
                "POST", url, headers={"Content-Type": "application/x-www-form-urlencoded"}, body=form
            )
            if status != 200:
                raise RuntimeError(f"the local Graph refused a token ({status}): run make services")
            self._graph_token = str(json.loads(raw)["access_token"])
        status, raw = self._call(
            method,
            self.env["GRAPH_API_URL"].rstrip("/") + path,
            headers={"Authorization": f"Bearer {self._graph_token}"},
        )
        return status, json.loads(raw) if raw.strip() else None

    def check(self) -> None:
        """Fail early, with the fix, when a service is down."""
        import urllib.error  # noqa: PLC0415

        checks: tuple[tuple[str, Callable[[], bool]], ...] = (
            ("local GitHub", lambda: self._github("GET", "/rate_limit") == 200),
            ("local Graph", lambda: self._graph("GET", "/applications?$top=1")[0] == 200),
            ("Pebble", lambda: self._call("GET", self.env["ACME_DIRECTORY_URL"])[0] == 200),
        )
        for name, check in checks:
            try:
                ok = check()
            except (OSError, urllib.error.URLError, ValueError) as exc:
                raise RuntimeError(f"the {name} is not reachable ({exc}): run make services") from exc
            if not ok:
                raise RuntimeError(f"the {name} does not answer as expected: run make services")

    def repo(self, team: str) -> str:
        return f"{team}-{WORKSPACE_SLUG}"

    def app_name(self, team: str) -> str:
        return f"kanban-{team}-{WORKSPACE_SLUG}"

    def app_ids(self, team: str) -> list[str]:
        import urllib.parse  # noqa: PLC0415

        query = urllib.parse.quote(f"displayName eq '{self.app_name(team)}'")
        status, data = self._graph("GET", f"/applications?$filter={query}&$select=id,displayName")
        if status != 200:
            raise RuntimeError(f"the local Graph answered {status} to a list of applications")
        return [str(app["id"]) for app in data.get("value", [])]

    def leftovers(self, team: str) -> list[str]:
        """What of a workspace of `team` is still there: repository, app registration, compose projects."""
        found = []
        if self._github("GET", f"/repos/{self.env['GITHUB_ORG']}/{self.repo(team)}") != 404:
            found.append(f"repository {self.env['GITHUB_ORG']}/{self.repo(team)}")
        if self.app_ids(team):
            found.append(f"app registration {self.app_name(team)}")
        for project in (f"ws-{team}-{WORKSPACE_SLUG}", f"sb-{team}-{WORKSPACE_SLUG}-{SANDBOX_SLUG}"):
            listed = subprocess.run(
                ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.split()
            if listed:
                found.append(f"compose project {project} ({len(listed)} containers)")
        return found

    def sweep(self, team: str) -> None:
        """Last resort after a failed run: remove the repository and the app registration by name."""
        self._github("DELETE", f"/repos/{self.env['GITHUB_ORG']}/{self.repo(team)}")
        for app_id in self.app_ids(team):
            self._graph("DELETE", f"/applications/{app_id}")


def ansible_steps(redis: Redis, task_id: str) -> tuple[dict[str, float], dict[str, float], int]:
    """Seconds per step of a run and per Ansible task ("role : task"), from the ansible.event messages of the task's
    stream (Worker._event_sink: one per finished Ansible task, with its role and duration), and how many retries the
    worker announced."""
    steps: dict[str, float] = {}
    tasks: dict[str, float] = {}
    retries = 0
    entries: list[tuple[bytes, dict[bytes, bytes]]] = redis.xrange(k.task_stream(task_id))  # type: ignore[assignment]
    for _id, fields in entries:
        message = json.loads(fields[b"data"])
        if message.get("type") == k.MSG_ANSIBLE_EVENT:
            step = str(message.get("role") or "playbook")
            seconds = float(message.get("duration") or 0.0)
            steps[step] = steps.get(step, 0.0) + seconds
            name = f"{step} : {message.get('task')}"
            tasks[name] = tasks.get(name, 0.0) + seconds
        elif message.get("type") == k.MSG_PROGRESS and str(message.get("message", "")).startswith("retrying in"):
            retries += 1
    return steps, tasks, retries


def write_private(path: Path, text: str) -> None:
    """Create a file readable by its owner only (it holds the orchestrator's credentials), as `orchestrator vars`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def slowest_tasks(runs: list[dict[str, Any]], count: int = 6) -> dict[str, float]:
    """The Ansible tasks that took longest, median over the runs (a task a run did not have counts 0)."""
    names = {name for run in runs for name in run["tasks"]}
    medians = {name: statistics.median(run["tasks"].get(name, 0.0) for run in runs) for name in names}
    ranked = sorted(medians.items(), key=lambda item: item[1], reverse=True)[:count]
    return {name: round(seconds, 3) for name, seconds in ranked}


def bench_workspace(ctx: Context) -> dict[str, Any]:
    """workspace.provision, then sandbox.provision of a sandbox of it, through a worker (LPUSH -> task.completed) vs
    bare ansible-playbook with the same vars, in interleaved pairs on fresh slugs; each step's share of the
    orchestrated runs from their Ansible events. Deletes (sandbox, then workspace) between runs, untimed."""
    from pydantic import SecretStr  # noqa: PLC0415 - heavy imports only for this benchmark

    from orchestrator.config import SECRET_ENV, Settings  # noqa: PLC0415
    from orchestrator.constants import TaskType  # noqa: PLC0415
    from orchestrator.models import PAYLOADS  # noqa: PLC0415

    rounds = 2 if ctx.quick else 4
    user = "bench-workspace"
    services = LocalServices(read_services_env())
    services.check()
    public_services = {name: v for name, v in services.env.items() if name not in SECRET_ENV}

    worker = WorkerProcess(ctx, "workspace", concurrency=1, playbook_dir=None)
    # No renewal run at start-up in the middle of the measurements (the benchmark's certificates are all new).
    worker.env.update({**services.env, "ORCHESTRATOR_CERT_RENEW_INTERVAL": "0"})
    bare_dir = ctx.tmp / "workspace-bare"
    bare_log = bare_dir / "ansible-playbook.log"

    def settings_for(data_dir: Path, state_dir: Path) -> Settings:
        return Settings(
            domain=ctx.base_env["DOMAIN"],
            portal_api_url=ctx.base_env["PORTAL_API_URL"],
            github_api_url=services.env["GITHUB_API_URL"],
            github_token=SecretStr(services.env["GITHUB_TOKEN"]),
            github_org=services.env["GITHUB_ORG"],
            github_template=services.env["GITHUB_TEMPLATE_REPO"],
            azure_authority_url=services.env["AZURE_AUTHORITY_URL"],
            graph_api_url=services.env["GRAPH_API_URL"],
            azure_tenant_id=services.env["AZURE_TENANT_ID"],
            azure_client_id=services.env["AZURE_CLIENT_ID"],
            azure_client_secret=SecretStr(services.env["AZURE_CLIENT_SECRET"]),
            acme_directory_url=services.env["ACME_DIRECTORY_URL"],
            acme_email=services.env["ACME_EMAIL"],
            acme_ca_bundle=Path(services.env["ACME_CA_BUNDLE"]),
            acme_webroot=Path(services.env["ACME_WEBROOT"]),
            certificates=services.env["ORCHESTRATOR_CERTIFICATES"].strip().lower() in ("1", "true", "yes", "on"),
            data_dir=data_dir,
            state_dir=state_dir,
        )

    bare_settings = settings_for(bare_dir / "data", bare_dir / "state")
    # For the deletes after a failure, by hand in the worker's folders.
    worker_settings = settings_for(worker.data_dir, worker.state_dir)
    for folder in (bare_settings.data_dir, bare_settings.state_dir):
        folder.mkdir(parents=True, exist_ok=True)
    # The environment a worker's run gets: the worker's own (no secrets: it scrubs them) + Settings.playbook_env().
    bare_base_env = {
        **{name: v for name, v in ctx.base_env.items() if name not in SECRET_ENV},
        **public_services,
        "ORCHESTRATOR_CERT_RENEW_INTERVAL": "0",
    }
    live: dict[str, Settings] = {}  # teams whose workspace may exist, and the folders their files are in

    def by_hand(task_type: str, payload: dict[str, Any], settings: Settings) -> dict[str, float]:
        """One bare ansible-playbook run, with the vars Worker._extravars gives the task's run."""
        model = PAYLOADS[TaskType(task_type)].model_validate(payload)
        extravars = {
            **model.model_dump(exclude_none=True),
            "orchestrator_task_id": str(uuid.uuid4()),
            "orchestrator_task_type": task_type,
            "orchestrator_resource_id": str(uuid.uuid4()),
            "orchestrator_user_id": user,
            **settings.service_vars(),
        }
        vars_file = bare_dir / f"vars-{uuid.uuid4().hex}.yml"
        write_private(vars_file, unsafe_vars_yaml(extravars))  # how the worker writes them, 0600
        try:
            with bare_log.open("ab") as out:
                t0 = time.perf_counter()
                proc = subprocess.Popen(
                    [
                        str(BIN / "ansible-playbook"),
                        "-i",
                        "inventory",
                        f"playbooks/{task_type}.yml",
                        "-e",
                        f"@{vars_file}",
                    ],
                    cwd=ROOT,
                    env={**bare_base_env, **settings.playbook_env()},
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
                _pid, wait_status, usage = os.wait4(proc.pid, 0)
                wall = time.perf_counter() - t0
        finally:
            vars_file.unlink(missing_ok=True)
        proc.returncode = os.waitstatus_to_exitcode(wait_status)
        if proc.returncode != 0:
            tail = " | ".join(bare_log.read_text(errors="replace").strip().splitlines()[-6:])
            raise RuntimeError(f"bare {task_type} exited {proc.returncode}: {tail}")
        return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime}

    def delete_by_hand(team: str, settings: Settings) -> None:
        payload = {"team_slug": team, "workspace_slug": WORKSPACE_SLUG}
        by_hand("sandbox.delete", {**payload, "sandbox_slug": SANDBOX_SLUG}, settings)
        by_hand("workspace.delete", payload, settings)

    def check_gone(team: str) -> None:
        left = services.leftovers(team)
        if left:
            raise RuntimeError(f"the deletes of {team} left {', '.join(left)}")

    worker.start()
    sub = Subscriber(ctx.redis.url, user)
    try:

        def through_worker(task_type: str, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
            cpu0 = worker.cpu()
            t0 = time.perf_counter()
            task_id = client.submit(ctx.r, task_type, payload, user_id=user)
            t_started, _ = sub.wait_type(task_id, {k.MSG_STARTED}, 120)
            t_final, final = sub.wait_type(task_id, FINAL_TYPES, timeout)
            status = client.status(ctx.r, task_id)
            if final.get("type") != k.MSG_COMPLETED or status.get("status") != "completed":
                raise RuntimeError(
                    f"{task_type} through the worker ended {final.get('type')}/{status.get('status')}: "
                    f"{status.get('error') or final.get('error')}"
                )
            sub.forget(task_id)
            time.sleep(0.05)  # let the worker reap and account the run's CPU
            steps, tasks, retries = ansible_steps(ctx.r, task_id)
            wall = t_final - t0
            steps["outside tasks"] = max(0.0, wall - sum(steps.values()))
            return {
                "wall": wall,
                "dispatch": t_started - t0,
                "run": t_final - t_started,
                "cpu": worker.cpu() - cpu0,
                "steps": steps,
                "tasks": tasks,
                "retries": retries,
            }

        def orchestrated() -> dict[str, Any]:
            team = new_slug()
            live[team] = worker_settings
            payload = {"team_slug": team, "workspace_slug": WORKSPACE_SLUG}
            runs = {
                "workspace.provision": through_worker("workspace.provision", payload, 1800),
                "sandbox.provision": through_worker(
                    "sandbox.provision", {**payload, "sandbox_slug": SANDBOX_SLUG}, 1200
                ),
            }
            t0 = time.perf_counter()
            through_worker("sandbox.delete", {**payload, "sandbox_slug": SANDBOX_SLUG}, 600)
            through_worker("workspace.delete", payload, 900)
            check_gone(team)
            del live[team]
            return {**runs, "cleanup_s": time.perf_counter() - t0}

        def bare() -> dict[str, Any]:
            team = new_slug()
            live[team] = bare_settings
            payload = {"team_slug": team, "workspace_slug": WORKSPACE_SLUG}
            runs = {
                "workspace.provision": by_hand("workspace.provision", payload, bare_settings),
                "sandbox.provision": by_hand(
                    "sandbox.provision", {**payload, "sandbox_slug": SANDBOX_SLUG}, bare_settings
                ),
            }
            if services.leftovers(team) == []:
                raise RuntimeError(f"bare run of {team}: no repository, app registration or app found")
            t0 = time.perf_counter()
            delete_by_hand(team, bare_settings)
            check_gone(team)
            del live[team]
            return {**runs, "cleanup_s": time.perf_counter() - t0}

        # The worker lists each playbook's tasks once (a new state folder): an untimed round through it first, which
        # warms the machine's caches (Python, Ansible, the engine) for the bare runs too.
        log("workspace: warm-up (the worker lists each playbook's tasks once)")
        warm_orch = orchestrated()
        orch_runs: list[dict[str, Any]] = []
        bare_runs: list[dict[str, Any]] = []
        loads: list[float] = []  # 1-minute load average after each pair: other work on the machine shows here
        for i in range(rounds):
            o, b = interleaved_pair(i, orchestrated, bare)
            orch_runs.append(o)
            bare_runs.append(b)
            log(
                f"workspace: pair {i + 1}/{rounds}: workspace.provision orchestrator "
                f"{o['workspace.provision']['wall']:.2f}s / bare {b['workspace.provision']['wall']:.2f}s, "
                f"sandbox.provision {o['sandbox.provision']['wall']:.2f}s / {b['sandbox.provision']['wall']:.2f}s "
                f"(load average {os.getloadavg()[0]:.1f})"
            )
            loads.append(round(os.getloadavg()[0], 2))
        memory_after = worker.memory()
    finally:
        sub.close()
        worker.stop()
        for team, settings in list(live.items()):  # a failed run: delete by hand, then by name what is still there
            log(f"workspace: cleaning up after a failure: {team}")
            with contextlib.suppress(Exception):
                delete_by_hand(team, settings)
            with contextlib.suppress(Exception):
                services.sweep(team)
        remove_bench_teams()

    result: dict[str, Any] = {
        "pairs": rounds,
        "playbooks": [f"playbooks/{name}.yml" for name in PROVISIONS],
        "domain": ctx.base_env["DOMAIN"],
        "certificates": bare_settings.certificates,
        "warmup_orchestrator_s": {name: round(warm_orch[name]["wall"], 3) for name in PROVISIONS},
        "cleanup_median_s": {
            "orchestrator": med([r["cleanup_s"] for r in orch_runs]),
            "bare": med([r["cleanup_s"] for r in bare_runs]),
        },
        "retries": sum(r[name]["retries"] for r in orch_runs for name in PROVISIONS),
        "worker_memory_after_mb": memory_after,
    }
    targets = []
    both_ratios = [
        sum(o[n]["wall"] for n in PROVISIONS) / sum(b[n]["wall"] for n in PROVISIONS)
        for o, b in zip(orch_runs, bare_runs, strict=True)
    ]
    result["ratio_both_median"] = med(both_ratios)
    result["load_average_after_pairs"] = loads
    # A pair is disturbed when either side took 1.5x its side's median (both playbooks together): machine noise.
    o_walls = [sum(r[n]["wall"] for n in PROVISIONS) for r in orch_runs]
    b_walls = [sum(r[n]["wall"] for n in PROVISIONS) for r in bare_runs]
    o_med, b_med = statistics.median(o_walls), statistics.median(b_walls)
    disturbed = [i for i, (o, b) in enumerate(zip(o_walls, b_walls, strict=True)) if o > 1.5 * o_med or b > 1.5 * b_med]
    result["disturbed_pairs"] = disturbed
    for name in PROVISIONS:
        orch = [r[name] for r in orch_runs]
        by = [r[name] for r in bare_runs]
        ratios = [o["wall"] / b["wall"] for o, b in zip(orch, by, strict=True)]
        clean = [r for i, r in enumerate(ratios) if i not in disturbed]
        steps: dict[str, dict[str, float]] = {}
        for step in WORKSPACE_STEPS:
            seconds = [run["steps"].get(step, 0.0) for run in orch]
            if not any(seconds):
                continue
            shares = [100 * s / run["wall"] for s, run in zip(seconds, orch, strict=True)]
            steps[step] = {"s": round(statistics.median(seconds), 3), "share_pct": round(statistics.median(shares), 1)}
        for step in sorted({s for run in orch for s in run["steps"]} - set(WORKSPACE_STEPS)):
            seconds = [run["steps"].get(step, 0.0) for run in orch]
            shares = [100 * s / run["wall"] for s, run in zip(seconds, orch, strict=True)]
            steps[step] = {"s": round(statistics.median(seconds), 3), "share_pct": round(statistics.median(shares), 1)}
        result[name] = {
            "orchestrator_wall_median_s": med([r["wall"] for r in orch]),
            "bare_wall_median_s": med([r["wall"] for r in by]),
            "orchestrator_dispatch_median_s": med([r["dispatch"] for r in orch]),
            "orchestrator_run_median_s": med([r["run"] for r in orch]),
            "orchestrator_cpu_median_s": med([r["cpu"] for r in orch]),
            "bare_cpu_median_s": med([r["cpu"] for r in by]),
            **ratio_stats(ratios),
            "ratio_median_undisturbed": med(clean) if clean else None,
            "cpu_ratio_median": med([o["cpu"] / b["cpu"] for o, b in zip(orch, by, strict=True) if b["cpu"] > 0]),
            "orchestrator_wall_s": [round(r["wall"], 3) for r in orch],
            "bare_wall_s": [round(r["wall"], 3) for r in by],
            "steps": steps,
            "slowest_tasks_median_s": slowest_tasks(orch),
        }
        targets.append(
            Target(f"workspace: orchestrator/bare wall ratio, {name} (median of pairs)", med(ratios), "<=", 1.10, "x")
        )
    result["targets"] = targets
    return result


# ----------------------------------------------------------------------------------------------- 8. agent

# What `make services` prints into .run/env for agent runs: the agent host (a network namespace with its own sshd)
# and the CLI there (a wrapper that points it at the Messages API stand-in).
AGENT_ENV = ("SSH_USER", "SSH_HOST", "SSH_CLAUDE_PATH", "ORCHESTRATOR_SSH_KEY_FILE", "ORCHESTRATOR_SSH_KNOWN_HOSTS")
AGENT_OPTIONAL_ENV = ("ORCHESTRATOR_SSH_PORT", "ORCHESTRATOR_AGENT_GROUP")
# Where runs keep their files on the agent host, under the agent user's home (roles/claude_code defaults). The agent
# host shares this machine's file system, process table and clock: only its network is its own.
AGENT_RUNS = Path(".orchestrator") / "agent-runs"
AGENT_WORKSPACE = "ws"
AGENT_SANDBOX = "sb"
# The stand-in's scripts (devservices/anthropic): 50 turns of a Glob call (about 2N+3 stream lines, quickly), and a
# one-turn answer.
AGENT_TICKS_PROMPT = "[[script:ticks 50]]"
AGENT_PLAIN_PROMPT = "Say hello."
SSH_SAMPLES = 20


def agent_clone(data_dir: Path, team: str) -> Path:
    """A sandbox's working clone as sandbox.provision leaves it (tests/integration/test_agents.py make_clone): a git
    checkout owned by root, the team's folders closed to others; agent.run needs only the clone."""
    repo = data_dir / "teams" / team / "workspaces" / AGENT_WORKSPACE / "sandboxes" / AGENT_SANDBOX / "repo"
    repo.mkdir(parents=True)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
    subprocess.run([*git, "init", "-q", "-b", f"sandbox/{AGENT_SANDBOX}", str(repo)], check=True, capture_output=True)
    (repo / "README.md").write_text(f"# {AGENT_WORKSPACE}\n")
    subprocess.run([*git, "-C", str(repo), "add", "."], check=True, capture_output=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-qm", "init"], check=True, capture_output=True)
    for folder in (data_dir / "teams", data_dir / "teams" / team):
        folder.chmod(0o750)
    return repo


def let_group_through(folder: Path, group: str, inside: Path) -> list[Path]:
    """Let `group` pass through `folder` and every folder above it (setfacl -m g:<group>:x, as the agent tests'
    fixture does; the playbook does the team's folders itself): all of those in `inside` (they go with it), and
    above it only those closed to others that have no entry for the group yet. Returns the latter: the entries to
    take back afterwards (`take_back_entries`)."""
    added: list[Path] = []
    for current in (folder, *folder.parents):
        if current == current.parent:
            break
        if not current.is_relative_to(inside):
            if current.stat().st_mode & 0o001:
                continue
            listed = subprocess.run(["getfacl", "-cp", str(current)], capture_output=True, text=True, check=True)
            if f"group:{group}:" in listed.stdout:
                continue
            added.append(current)
        subprocess.run(["setfacl", "-m", f"g:{group}:x", str(current)], check=True, capture_output=True)
    return added


def take_back_entries(folders: list[Path], group: str) -> None:
    for folder in folders:
        subprocess.run(["setfacl", "-x", f"g:{group}", str(folder)], check=False, capture_output=True)


async def asyncssh_costs(settings: Settings, samples: int) -> dict[str, list[float]]:
    """Seconds of asyncssh.connect + `true`, a fresh connection each time (what the stream follower pays once per
    run), and of `true` alone on one reused connection. Host keys are checked (orchestrator.agents.ssh_options)."""
    import asyncssh  # noqa: PLC0415 - heavy imports only for this benchmark

    from orchestrator.agents import ssh_options  # noqa: PLC0415

    options = ssh_options(settings)
    async with asyncssh.connect(settings.ssh_host, **options) as conn:  # warm-up: imports, key loading
        await conn.run("true", check=True)
    fresh: list[float] = []
    for _ in range(samples):
        t0 = time.perf_counter()
        async with asyncssh.connect(settings.ssh_host, **options) as conn:
            await conn.run("true", check=True)
            fresh.append(time.perf_counter() - t0)  # the close is not counted
    reused: list[float] = []
    async with asyncssh.connect(settings.ssh_host, **options) as conn:
        await conn.run("true", check=True)
        for _ in range(samples):
            t0 = time.perf_counter()
            await conn.run("true", check=True)
            reused.append(time.perf_counter() - t0)
    return {"fresh": fresh, "reused": reused}


def openssh_costs(ctx: Context, settings: Settings, samples: int) -> dict[str, list[float]]:
    """Seconds of `ssh ... true` (process start included, as Ansible pays it): a fresh connection each time, and
    through a ControlMaster (ControlPersist, a temporary ControlPath; the master's own first call not counted)."""
    control_dir = ctx.tmp / "agent-ssh"
    control_dir.mkdir(mode=0o700, exist_ok=True)
    errors = control_dir / "ssh.log"
    base = [
        "ssh",
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={settings.ssh_known_hosts}",
        "-o",
        "IdentitiesOnly=yes",
        "-i",
        str(settings.ssh_key_file),
        "-p",
        str(settings.ssh_port),
        "-l",
        str(settings.ssh_user),
    ]
    mux = ["-o", "ControlMaster=auto", "-o", f"ControlPath={control_dir}/%C", "-o", "ControlPersist=60"]

    def once(extra: list[str]) -> float:
        # Output to a file, never a pipe: a master that stays in the background would hold a pipe open.
        with errors.open("ab") as out:
            t0 = time.perf_counter()
            code = subprocess.run(
                [*base, *extra, settings.ssh_host, "true"],
                env=ctx.base_env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                timeout=60,
                check=False,
            ).returncode
            elapsed = time.perf_counter() - t0
        if code != 0:
            tail = " | ".join(errors.read_text(errors="replace").strip().splitlines()[-3:])
            raise RuntimeError(f"ssh to the agent host exited {code}: {tail}")
        return elapsed

    once([])  # warm-up
    fresh = [once([]) for _ in range(samples)]
    try:
        once(mux)  # starts the master
        multiplexed = [once(mux) for _ in range(samples)]
    finally:
        subprocess.run(
            [*base, *mux, "-O", "exit", settings.ssh_host],
            env=ctx.base_env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
        )
    return {"fresh": fresh, "controlmaster": multiplexed}


def end_session_ssh() -> None:
    """End (by pid) the SSH masters Ansible left behind for the benchmark's runs (ControlPersist: they outlive a run
    by a minute); the final sweep would otherwise kill them."""
    masters = []
    for proc in session_processes():
        with contextlib.suppress(psutil.Error):
            if proc.name() == "ssh":
                proc.terminate()
                masters.append(proc)
    psutil.wait_procs(masters, timeout=5)


def bench_agent(ctx: Context) -> dict[str, Any]:
    """agent.run with the real Claude Code CLI on the agent host of `make services` (and its Messages API stand-in),
    through a worker: how late each stream line reaches Redis, what an SSH connection costs, and the orchestration
    overhead of a run (vs the CLI's own duration, and vs bare ansible-playbook, interleaved pairs)."""
    import pwd  # noqa: PLC0415

    from orchestrator.config import SECRET_ENV, Settings  # noqa: PLC0415 - heavy imports only for this benchmark
    from orchestrator.models import AgentRunPayload  # noqa: PLC0415

    try:
        run_env = read_run_env()
    except RuntimeError as exc:
        run_env = {}
        log(f"agent: {exc}")
    if not run_env.get("SSH_USER"):
        reason = f"no SSH_USER in {RUN_ENV}: no agent host to run Claude Code on (make services sets one up)"
        log(f"agent: skipped: {reason}")
        return {"skipped": reason}
    unset = [name for name in AGENT_ENV if not run_env.get(name)]
    if unset:
        raise RuntimeError(f"{RUN_ENV} has no value for {', '.join(unset)}: run make services")
    agent_env = {name: run_env[name] for name in (*AGENT_ENV, *AGENT_OPTIONAL_ENV) if run_env.get(name)}
    stream_runs = 2 if ctx.quick else 5
    pairs = 3 if ctx.quick else 6
    user = "bench-agent"
    team = new_slug()
    group = agent_env.get("ORCHESTRATOR_AGENT_GROUP") or agent_env["SSH_USER"]
    home = Path(pwd.getpwnam(agent_env["SSH_USER"]).pw_dir)
    team_runs = home / AGENT_RUNS / team

    def settings_for(data_dir: Path, state_dir: Path) -> Settings:
        return Settings(
            ssh_user=agent_env["SSH_USER"],
            ssh_host=agent_env["SSH_HOST"],
            ssh_port=int(agent_env.get("ORCHESTRATOR_SSH_PORT", "22")),
            ssh_claude_path=agent_env["SSH_CLAUDE_PATH"],
            ssh_key_file=Path(agent_env["ORCHESTRATOR_SSH_KEY_FILE"]),
            ssh_known_hosts=Path(agent_env["ORCHESTRATOR_SSH_KNOWN_HOSTS"]),
            agent_group=agent_env.get("ORCHESTRATOR_AGENT_GROUP"),
            agent_data_dir=None,
            domain=ctx.base_env["DOMAIN"],
            portal_api_url=ctx.base_env["PORTAL_API_URL"],
            data_dir=data_dir,
            state_dir=state_dir,
        )

    worker = WorkerProcess(ctx, "agent", concurrency=1, playbook_dir=None)
    worker.env.update(agent_env)
    bare_dir = ctx.tmp / "agent-bare"
    bare_log = bare_dir / "ansible-playbook.log"
    bare_settings = settings_for(bare_dir / "data", bare_dir / "state")
    # The environment a worker's run gets: the worker's own (no secrets: it scrubs them) + Settings.playbook_env().
    bare_env = {
        **{name: v for name, v in ctx.base_env.items() if name not in SECRET_ENV},
        **agent_env,
        **bare_settings.playbook_env(),
    }
    clones: list[Path] = []
    acl_added: list[Path] = []
    sessions: set[str] = set()

    def through_worker(prompt: str, timeout: float) -> dict[str, Any]:
        assert sub is not None
        t0 = time.perf_counter()
        t0_wall = time.time()
        payload = {
            "team_slug": team,
            "workspace_slug": AGENT_WORKSPACE,
            "sandbox_slug": AGENT_SANDBOX,
            "prompt": prompt,
        }
        task_id = client.submit(ctx.r, "agent.run", payload, user_id=user)
        t_started, _ = sub.wait_type(task_id, {k.MSG_STARTED}, 120)
        t_final, final = sub.wait_type(task_id, FINAL_TYPES, timeout)
        messages = sub.received(task_id)
        sub.forget(task_id)
        meta = final.get("metadata") or {}
        if final.get("type") != k.MSG_COMPLETED:
            raise RuntimeError(f"agent.run through the worker ended {final.get('type')}: {final.get('error')}")
        if meta.get("session_id"):
            sessions.add(str(meta["session_id"]))
        run_dir = home / str(
            meta.get("run_dir") or AGENT_RUNS / team / AGENT_WORKSPACE / AGENT_SANDBOX / f"{task_id}-1"
        )
        first_line, cli_exit = cli_span(run_dir)
        final_wall = max(wall for wall, data in messages if data.get("type") in FINAL_TYPES)
        return {
            "wall": t_final - t0,
            "dispatch": t_started - t0,
            "run": t_final - t_started,
            "cli": float(meta.get("duration_ms") or "nan") / 1000,
            "before_cli": first_line - t0_wall,
            "after_cli": final_wall - cli_exit,
            "lines": int(float(meta.get("lines") or 0)),
            "run_dir": run_dir,
            "messages": messages,
        }

    def by_hand(prompt: str) -> dict[str, float]:
        """One bare ansible-playbook run, with the vars Worker._extravars and _run_agent give the task's run."""
        task_id = str(uuid.uuid4())
        run_id = f"{task_id}-1"
        payload = AgentRunPayload.model_validate(
            {"team_slug": team, "workspace_slug": AGENT_WORKSPACE, "sandbox_slug": AGENT_SANDBOX, "prompt": prompt}
        )
        extravars = {
            **payload.model_dump(exclude_none=True),
            "orchestrator_task_id": task_id,
            "orchestrator_task_type": "agent.run",
            "orchestrator_resource_id": str(uuid.uuid4()),
            "orchestrator_user_id": user,
            **bare_settings.service_vars(),
            "agent_run_id": run_id,
        }
        vars_file = bare_dir / f"vars-{task_id}.yml"
        write_private(vars_file, unsafe_vars_yaml(extravars))  # how the worker writes them, 0600
        try:
            with bare_log.open("ab") as out:
                t0 = time.perf_counter()
                t0_wall = time.time()
                proc = subprocess.Popen(
                    [
                        str(BIN / "ansible-playbook"),
                        "-i",
                        "inventory",
                        "playbooks/agent.run.yml",
                        "-e",
                        f"@{vars_file}",
                    ],
                    cwd=ROOT,
                    env=bare_env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
                _pid, wait_status, usage = os.wait4(proc.pid, 0)
                wall = time.perf_counter() - t0
                end_wall = time.time()
        finally:
            vars_file.unlink(missing_ok=True)
        code = os.waitstatus_to_exitcode(wait_status)
        if code != 0:
            tail = " | ".join(bare_log.read_text(errors="replace").strip().splitlines()[-6:])
            raise RuntimeError(f"bare agent.run exited {code}: {tail}")
        run_dir = team_runs / AGENT_WORKSPACE / AGENT_SANDBOX / run_id
        first_line, cli_exit = cli_span(run_dir)
        outcome = json.loads((run_dir / "exit.json").read_text())
        result = outcome.get("result") or {}
        if result.get("session_id"):
            sessions.add(str(result["session_id"]))
        return {
            "wall": wall,
            "cli": float(result.get("duration_ms") or "nan") / 1000,
            "before_cli": first_line - t0_wall,
            "after_cli": end_wall - cli_exit,
            "cpu": usage.ru_utime + usage.ru_stime,
        }

    def cli_span(run_dir: Path) -> tuple[float, float]:
        """When (wall clock) the supervisor wrote the CLI's first line down, and when it had written its summary
        (exit.json: the CLI and every process of the run gone)."""
        with (run_dir / "stream.times").open() as times:
            first_line = float(times.readline())
        return first_line, (run_dir / "exit.json").stat().st_mtime

    def stream_latency(run: dict[str, Any]) -> tuple[list[float], list[int]]:
        """Per line of the run's stream: its first progress message's receipt (the subscriber's wall clock) minus the
        time the supervisor wrote it down (stream.times, same order as stream.jsonl). And the lines with no message."""
        stamps = [float(v) for v in (run["run_dir"] / "stream.times").read_text().split()]
        first: dict[int, float] = {}
        for wall, data in run["messages"]:
            agent = data.get("agent")
            if data.get("type") == k.MSG_PROGRESS and isinstance(agent, dict) and isinstance(agent.get("line"), int):
                first.setdefault(agent["line"], wall)
        latencies = [first[n] - stamp for n, stamp in enumerate(stamps, start=1) if n in first]
        missing = [n for n in range(1, len(stamps) + 1) if n not in first]
        return latencies, missing

    sub: Subscriber | None = None
    try:
        for data_dir in (worker.data_dir, bare_settings.data_dir):
            clones.append(agent_clone(data_dir, team))
            acl_added += let_group_through(data_dir, group, ctx.tmp)
        bare_settings.state_dir.mkdir(parents=True, exist_ok=True)
        ssh_settings = settings_for(worker.data_dir, worker.state_dir)
        log(f"agent: SSH connections to {ssh_settings.ssh_host} ({SSH_SAMPLES} each: asyncssh, OpenSSH)")
        asyncssh_s = asyncio.run(asyncssh_costs(ssh_settings, SSH_SAMPLES))
        openssh_s = openssh_costs(ctx, ssh_settings, SSH_SAMPLES)

        worker.start()
        sub = Subscriber(ctx.redis.url, user)
        log("agent: warm-up (one plain run through the worker, one by hand)")
        warm_orch = through_worker(AGENT_PLAIN_PROMPT, 300)
        warm_bare = by_hand(AGENT_PLAIN_PROMPT)

        latencies: list[float] = []
        first_line: list[float] = []
        missing_lines = 0
        stream_walls: list[float] = []
        lines_per_run: list[int] = []
        per_run_p99: list[float] = []
        for i in range(stream_runs):
            run = through_worker(AGENT_TICKS_PROMPT, 900)
            found, missing = stream_latency(run)
            latencies += found
            missing_lines += len(missing)
            if found:
                first_line.append(found[0])
            stream_walls.append(run["run"])
            lines_per_run.append(len(found) + len(missing))
            per_run_p99.append(round(percentile(found, 99) * 1000, 1))
            log(
                f"agent: stream run {i + 1}/{stream_runs}: {len(found) + len(missing)} lines in {run['run']:.1f}s, "
                f"line -> Redis p50 {percentile(found, 50) * 1000:.0f} / p99 {percentile(found, 99) * 1000:.0f} / "
                f"max {max(found, default=float('nan')) * 1000:.0f} ms, {len(missing)} lines without a message"
            )

        orch_runs: list[dict[str, Any]] = []
        bare_runs: list[dict[str, float]] = []
        for i in range(pairs):
            o, b = interleaved_pair(
                i, lambda: through_worker(AGENT_PLAIN_PROMPT, 300), lambda: by_hand(AGENT_PLAIN_PROMPT)
            )
            orch_runs.append(o)
            bare_runs.append(b)
            log(
                f"agent: pair {i + 1}/{pairs}: orchestrator {o['wall']:.2f}s (CLI {o['cli']:.2f}s), "
                f"bare {b['wall']:.2f}s (CLI {b['cli']:.2f}s)"
            )
        memory_after = worker.memory()
    finally:
        if sub is not None:
            sub.close()
        worker.stop()
        end_session_ssh()
        shutil.rmtree(team_runs, ignore_errors=True)
        # The CLI's own files in the agent user's home: a folder of session files per working directory (named
        # after its path, every other character a '-'), and one per session in session-env for some runs.
        claude_dir = home / ".claude"
        left = [claude_dir / "projects" / re.sub(r"[^A-Za-z0-9]", "-", str(repo)) for repo in clones]
        left += [claude_dir / "session-env" / s for s in sessions if re.fullmatch(r"[0-9a-f-]{36}", s)]
        removed = [folder.name for folder in left if folder.is_dir()]
        for folder in left:
            shutil.rmtree(folder, ignore_errors=True)
        for repo in clones:
            shutil.rmtree(repo.parents[4], ignore_errors=True)  # teams/<team>
        take_back_entries(acl_added, group)
        log(
            f"agent: removed {team_runs} and {len(removed)} folders of the CLI in {claude_dir}"
            + (f"; took back the ACL entries of {', '.join(map(str, acl_added))}" if acl_added else "")
        )

    stream = summary_ms(latencies)
    ratios = [o["wall"] / b["wall"] for o, b in zip(orch_runs, bare_runs, strict=True)]
    ssh = {
        "samples": SSH_SAMPLES,
        "asyncssh_fresh": summary_ms(asyncssh_s["fresh"]),
        "asyncssh_reused": summary_ms(asyncssh_s["reused"]),
        "openssh_fresh": summary_ms(openssh_s["fresh"]),
        "openssh_controlmaster": summary_ms(openssh_s["controlmaster"]),
    }
    plain = {
        "pairs": pairs,
        "prompt": AGENT_PLAIN_PROMPT,
        "warmup_s": {"orchestrator": round(warm_orch["wall"], 3), "bare": round(warm_bare["wall"], 3)},
        "orchestrator_wall_median_s": med([r["wall"] for r in orch_runs]),
        "orchestrator_dispatch_median_s": med([r["dispatch"] for r in orch_runs]),
        "orchestrator_run_median_s": med([r["run"] for r in orch_runs]),
        "orchestrator_cli_median_s": med([r["cli"] for r in orch_runs]),
        "orchestrator_overhead_median_s": med([r["run"] - r["cli"] for r in orch_runs]),
        "bare_wall_median_s": med([r["wall"] for r in bare_runs]),
        "bare_cli_median_s": med([r["cli"] for r in bare_runs]),
        "bare_overhead_median_s": med([r["wall"] - r["cli"] for r in bare_runs]),
        "bare_cpu_median_s": med([r["cpu"] for r in bare_runs]),
        # Where the time goes: start (LPUSH, or ansible-playbook's start) -> the CLI's first stream line written
        # down on the agent host, and the supervisor's exit.json -> the end (task.completed received, or
        # ansible-playbook gone). Both by the wall clock.
        "orchestrator_before_cli_median_s": med([r["before_cli"] for r in orch_runs]),
        "orchestrator_after_cli_median_s": med([r["after_cli"] for r in orch_runs]),
        "bare_before_cli_median_s": med([r["before_cli"] for r in bare_runs]),
        "bare_after_cli_median_s": med([r["after_cli"] for r in bare_runs]),
        **ratio_stats(ratios),
        "orchestrator_wall_s": [round(r["wall"], 3) for r in orch_runs],
        "bare_wall_s": [round(r["wall"], 3) for r in bare_runs],
    }
    return {
        "team": team,
        "stream_runs": stream_runs,
        "stream_prompt": AGENT_TICKS_PROMPT,
        "stream_latency": {
            **stream,
            "lines": len(latencies),
            "lines_without_message": missing_lines,
            "lines_per_run": lines_per_run,
            "run_s": [round(s, 2) for s in stream_walls],
            "per_run_p99_ms": per_run_p99,
            "first_line_ms": [round(s * 1000, 1) for s in first_line],
        },
        "ssh": ssh,
        "plain": plain,
        "worker_memory_after_mb": memory_after,
        "targets": [
            Target("agent: stream line -> Redis p99", stream["p99_ms"], "<=", 1000, "ms"),
            Target("agent: orchestrator/bare wall ratio, plain prompt (median of pairs)", med(ratios), "<=", 1.10, "x"),
        ],
    }


def agent_rows(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    s = res["stream_latency"]
    ssh = res["ssh"]
    p = res["plain"]
    return [
        (
            "agent: stream line -> Redis",
            f"p50 {s['p50_ms']:.0f} / p99 {s['p99_ms']:.0f} / max {s['max_ms']:.0f} ms "
            f"(n={s['lines']} lines of {res['stream_runs']} runs, {s['lines_without_message']} without a message; "
            f"first line {', '.join(f'{v:.0f}' for v in s['first_line_ms'])} ms)",
            "",
            "",
        ),
        (
            "agent: SSH connect + true (median)",
            f"asyncssh fresh {ssh['asyncssh_fresh']['p50_ms']:.1f} ms / reused "
            f"{ssh['asyncssh_reused']['p50_ms']:.1f} ms; "
            f"OpenSSH fresh {ssh['openssh_fresh']['p50_ms']:.1f} ms / ControlMaster "
            f"{ssh['openssh_controlmaster']['p50_ms']:.1f} ms (n={ssh['samples']} each)",
            "",
            "",
        ),
        (
            "agent: plain prompt through the worker (median)",
            f"LPUSH->completed {p['orchestrator_wall_median_s']:.2f} s (started->completed "
            f"{p['orchestrator_run_median_s']:.2f} s), CLI duration_ms {p['orchestrator_cli_median_s']:.2f} s: "
            f"overhead {p['orchestrator_overhead_median_s']:.2f} s",
            "",
            "",
        ),
        (
            "agent: plain prompt by hand (median)",
            f"ansible-playbook {p['bare_wall_median_s']:.2f} s, CLI duration_ms {p['bare_cli_median_s']:.2f} s: "
            f"overhead {p['bare_overhead_median_s']:.2f} s",
            "",
            "",
        ),
        (
            "agent: plain prompt split (median, orch vs bare)",
            f"start -> first CLI line {p['orchestrator_before_cli_median_s']:.2f} s vs "
            f"{p['bare_before_cli_median_s']:.2f} s; supervisor exit -> end "
            f"{p['orchestrator_after_cli_median_s']:.2f} s vs {p['bare_after_cli_median_s']:.2f} s",
            "",
            "",
        ),
        (
            "agent: ratio min / max",
            f"{p['ratio_min']:.3f} / {p['ratio_max']:.3f} (n={p['pairs']})",
            "",
            "",
        ),
    ]


# ----------------------------------------------------------------------------------------------- main

BENCHMARKS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "overhead": bench_overhead,
    "dispatch": bench_dispatch,
    "cancel": bench_cancel,
    "events": bench_events,
    "memory": bench_memory,
    "compose": bench_compose,
    "workspace": bench_workspace,
    "agent": bench_agent,
}


def machine_info() -> dict[str, Any]:
    from ansible.release import __version__ as ansible_version  # noqa: PLC0415

    redis_version = subprocess.run(
        ["redis-server", "--version"], check=False, capture_output=True, text=True
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "ansible_core": ansible_version,
        "redis_server": redis_version,
        "platform": platform.platform(),
        "loadavg_at_start": list(os.getloadavg()),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def row_lines(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    for name, res in results.items():
        if "error" in res:
            rows.append((name, f"ERROR: {res['error']}", "", "FAIL"))
            continue
        if "skipped" in res:
            rows.append((name, f"SKIPPED: {res['skipped']}", "", "SKIP"))
            continue
        if name == "overhead":
            rows.append(("overhead: orchestrator wall (median)", f"{res['orchestrator_wall_median_s']:.3f} s", "", ""))
            rows.append(("overhead: bare ansible-playbook wall (median)", f"{res['bare_wall_median_s']:.3f} s", "", ""))
            rows.append(
                (
                    "overhead: orchestrator split (median)",
                    f"LPUSH->started {res['orchestrator_dispatch_median_s'] * 1000:.0f} ms, "
                    f"started->completed {res['orchestrator_run_median_s']:.3f} s",
                    "",
                    "",
                )
            )
            rows.append(
                (
                    "overhead: CPU per run (median)",
                    f"orch {res['orchestrator_cpu_median_s']:.2f} s vs bare {res['bare_cpu_median_s']:.2f} s",
                    "",
                    "",
                )
            )
            rows.append(
                (
                    "overhead: ratio min / max",
                    f"{res['ratio_min']:.3f} / {res['ratio_max']:.3f} (n={res['pairs']}); "
                    f"{len(res['disturbed_pairs'])} disturbed pairs, median of the others "
                    f"{res['ratio_median_undisturbed']}",
                    "",
                    "",
                )
            )
        elif name == "dispatch":
            rows.append(
                (
                    "dispatch: LPUSH -> task.started",
                    f"p50 {res['p50_ms']:.1f} / p90 {res['p90_ms']:.1f} / p99 {res['p99_ms']:.1f} / "
                    f"max {res['max_ms']:.1f} ms (n={res['n']})",
                    "",
                    "",
                )
            )
            rows.append(
                (
                    "dispatch: same, no other run in flight",
                    f"p99 {res['p99_ms_with_no_other_run']} ms (n={res['samples_with_no_other_run']})",
                    "",
                    "",
                )
            )
        elif name == "cancel":
            for key, label in (("processes_gone", "no process left"), ("final_status", "final task.cancelled")):
                s = res[key]
                rows.append(
                    (
                        f"cancel: -> {label}",
                        f"p50 {s['p50_ms']:.0f} / p99 {s['p99_ms']:.0f} / max {s['max_ms']:.0f} ms (n={s['n']})",
                        "",
                        "",
                    )
                )
        elif name == "events":
            rows.append(
                (
                    "events: feed / drain after feed",
                    f"{res['feed_s']:.2f} s / {res['drain_after_feed_s']:.2f} s for {res['events']} events",
                    "",
                    "",
                )
            )
        elif name == "compose":
            medians = res["median_s"]
            rows.append(
                (
                    "compose: docker_compose_v2 median (s)",
                    " / ".join(f"{state} {medians[state]:.2f}" for state in COMPOSE_STATES),
                    "",
                    "",
                )
            )
        elif name == "workspace":
            rows.extend(workspace_rows(res))
        elif name == "agent":
            rows.extend(agent_rows(res))
        elif name == "memory":
            rows.append(("memory: idle VmHWM", f"{res['idle_vmhwm_mb']} MB (start-up {res['startup_s']} s)", "", ""))
        for t in res.get("targets", []):
            unit = t["unit"]
            value = t["value"]
            shown = f"{value:g} {unit}" if isinstance(value, (int, float)) else str(value)
            rows.append((t["name"], shown, f"{t['op']} {t['limit']:g} {unit}", "PASS" if t["pass"] else "FAIL"))
        mem = res.get("worker_memory_after_mb")
        if mem:
            rows.append(
                (
                    f"{name}: worker RSS after the benchmark",
                    f"VmRSS {mem.get('VmRSS')} / VmHWM {mem.get('VmHWM')} MB",
                    "",
                    "",
                )
            )
    return rows


def workspace_rows(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    for label, key in (
        ("orchestrator wall", "orchestrator_wall_median_s"),
        ("bare ansible-playbook wall", "bare_wall_median_s"),
    ):
        rows.append(
            (f"workspace: {label} (median)", " / ".join(f"{n} {res[n][key]:.2f} s" for n in PROVISIONS), "", "")
        )
    rows.append(
        (
            "workspace: orchestrator split (median)",
            " / ".join(
                f"{n} LPUSH->started {res[n]['orchestrator_dispatch_median_s'] * 1000:.0f} ms" for n in PROVISIONS
            ),
            "",
            "",
        )
    )
    rows.append(
        (
            "workspace: CPU per run (median)",
            " / ".join(
                f"{n} orch {res[n]['orchestrator_cpu_median_s']:.1f} s vs bare {res[n]['bare_cpu_median_s']:.1f} s "
                f"(ratio {res[n]['cpu_ratio_median']:.3f})"
                for n in PROVISIONS
            ),
            "",
            "",
        )
    )
    rows.append(
        (
            "workspace: ratio min / max",
            " / ".join(f"{n} {res[n]['ratio_min']:.3f} / {res[n]['ratio_max']:.3f}" for n in PROVISIONS)
            + f" (n={res['pairs']}); both together, median {res['ratio_both_median']:.3f}; "
            f"{len(res['disturbed_pairs'])} disturbed pairs; load average after each {res['load_average_after_pairs']}",
            "",
            "",
        )
    )
    for n in PROVISIONS:
        steps = res[n]["steps"]
        rows.append(
            (
                f"workspace: {n} steps (median s, share)",
                ", ".join(f"{step} {v['s']:.2f} s {v['share_pct']:.0f}%" for step, v in steps.items()),
                "",
                "",
            )
        )
    rows.append(
        (
            "workspace: deletes between runs (median, untimed)",
            f"orch {res['cleanup_median_s']['orchestrator']:.2f} s, bare {res['cleanup_median_s']['bare']:.2f} s; "
            f"retries {res['retries']}",
            "",
            "",
        )
    )
    return rows


def print_table(results: dict[str, dict[str, Any]]) -> None:
    rows = [("measure", "figure", "target", "result"), *row_lines(results)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    line = "  ".join("-" * w for w in widths)
    print(line)
    for index, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            print(line)
    print(line)


@contextlib.contextmanager
def environment(quick: bool) -> Iterator[Context]:
    tmp = Path(tempfile.mkdtemp(prefix="orchestrator-bench-"))
    base_env = {key: v for key, v in os.environ.items() if not key.startswith(("ORCHESTRATOR_", "REDIS_"))}
    base_env.update(
        {
            SESSION_VAR: SESSION,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "DOMAIN": "kanban.localhost",
            "PORTAL_API_URL": "https://kanban.localhost/api",
        }
    )
    redis = RedisServer(tmp / "redis")
    ctx = Context(tmp=tmp, redis=redis, quick=quick, base_env=base_env)
    try:
        redis.start()
        log(f"redis-server on {redis.url}, temp folder {tmp}")
        yield ctx
    finally:
        for worker in ctx.workers:
            worker.stop()
        if ctx._r is not None:
            with contextlib.suppress(Exception):
                ctx._r.close()
        redis.stop()
        left = session_processes()
        if left:
            log(f"cleanup: {len(left)} processes left behind: {[p.pid for p in left]}; killing them")
            for proc in left:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            psutil.wait_procs(left, timeout=5)
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer samples (about a minute and a half; workspace alone takes 5 to 10 minutes)",
    )
    parser.add_argument("--only", choices=NAMES, action="append", help="run only this benchmark (repeatable)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON results")
    args = parser.parse_args(argv)
    selected = [n for n in NAMES if not args.only or n in args.only]

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    machine = machine_info()
    results: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    with environment(args.quick) as ctx:
        for name in selected:
            log(f"{name}: start")
            t0 = time.perf_counter()
            try:
                results[name] = BENCHMARKS[name](ctx)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # one broken benchmark does not hide the others
                log(f"{name}: FAILED: {exc!r}")
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            results[name]["duration_s"] = round(time.perf_counter() - t0, 1)
            log(f"{name}: done in {results[name]['duration_s']}s")
    leftovers = len(session_processes())
    targets: list[dict[str, Any]] = []
    for res in results.values():
        res["targets"] = [t.as_dict() if isinstance(t, Target) else t for t in res.get("targets", [])]
        targets.extend(res["targets"])
    failed_benchmarks = [name for name, res in results.items() if "error" in res]
    report = {
        "machine": machine,
        "mode": "quick" if args.quick else "full",
        "only": args.only or None,
        "total_s": round(time.perf_counter() - started, 1),
        "benchmarks": results,
        "targets": targets,
        "errors": failed_benchmarks,
        "leftover_processes": leftovers,
        "loadavg_at_end": list(os.getloadavg()),
        "all_passed": bool(targets) and all(t["pass"] for t in targets) and not failed_benchmarks,
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print_table(results)
    print(
        f"nproc {machine['nproc']}, python {machine['python']}, ansible-core {machine['ansible_core']}; "
        f"total {report['total_s']} s; leftover processes {leftovers}; results in {args.output}"
    )
    failing = [t["name"] for t in targets if not t["pass"]] + [f"{n} (error)" for n in failed_benchmarks]
    print("all targets met" if not failing else "FAILING: " + "; ".join(failing))
    return 0 if report["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

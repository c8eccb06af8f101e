"""Find and end every process of one playbook run, however it was spawned.

ansible-runner only signals ansible-playbook's process group, but Ansible's forked workers call
setsid() and module children may detach further (see research/machine-probe.md). Every run therefore
carries a marker in its environment, which all descendants inherit; ending a run means: SIGTERM
ansible-playbook (its own handler stops its workers), wait a grace period, then SIGKILL everything
that still carries the marker.
"""

from __future__ import annotations

import os
import signal
import time

import psutil

RUN_MARKER = "ORCHESTRATOR_RUN_ID"


def run_processes(run_id: str) -> list[psutil.Process]:
    """Every live process whose environment carries this run's marker."""
    found = []
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            if proc.environ().get(RUN_MARKER) == run_id and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


def _leaders(procs: list[psutil.Process]) -> list[psutil.Process]:
    pids = {p.pid for p in procs}
    leaders = []
    for proc in procs:
        try:
            if proc.ppid() not in pids:
                leaders.append(proc)
        except psutil.NoSuchProcess:
            continue
    return leaders


def _signal(procs: list[psutil.Process], sig: signal.Signals) -> None:
    for proc in procs:
        try:
            proc.send_signal(sig)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def end_run(run_id: str, *, grace: float) -> int:
    """End every process of the run; returns how many were left after the polite SIGTERM."""
    procs = run_processes(run_id)
    if not procs:
        return 0
    _signal(_leaders(procs), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        procs = run_processes(run_id)
        if not procs:
            return 0
        time.sleep(0.05)
    stragglers = len(procs)
    for _ in range(20):
        procs = run_processes(run_id)
        if not procs:
            break
        _signal(procs, signal.SIGKILL)
        psutil.wait_procs(procs, timeout=0.5)
    return stragglers

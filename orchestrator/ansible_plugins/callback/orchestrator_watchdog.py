"""Callback plugin loaded into every playbook run the worker starts: ends the run if the worker dies.

ansible-runner spawns ansible-playbook with SIGHUP ignored in its own session, so a worker killed with
SIGKILL would leave the run going while another worker takes the task over. This plugin watches its
parent: once it changes (the worker is gone), it kills every other process of the run (they all carry
the run's marker in their environment, see orchestrator/processes.py), then ends ansible-playbook.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: orchestrator_watchdog
    type: aggregate
    short_description: stop the playbook when the orchestrator worker that started it dies
    description: Polls the parent pid twice a second; on change, SIGTERMs ansible-playbook.
"""


MARKER = "ORCHESTRATOR_RUN_ID"


def _run_pids(marker: bytes) -> list[int]:
    pids = []
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as handle:
                if marker in handle.read().split(b"\0"):
                    pids.append(int(name))
        except OSError:
            continue
    return pids


def _end_run() -> None:
    run_id = os.environ.get(MARKER)
    if run_id:
        marker = f"{MARKER}={run_id}".encode()
        for _ in range(3):
            pids = _run_pids(marker)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
    os.kill(os.getpid(), signal.SIGKILL)


def _watch(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            _end_run()
            return


class CallbackModule(CallbackBase):  # type: ignore[misc]
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "orchestrator_watchdog"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        threading.Thread(target=_watch, args=(os.getppid(),), name="orchestrator-watchdog", daemon=True).start()

"""Callback plugin loaded into every playbook run the worker starts: ends the run if the worker dies.

ansible-runner spawns ansible-playbook with SIGHUP ignored in its own session, so a worker killed with
SIGKILL would leave the run going while another worker takes the task over. This plugin watches its
parent: once it changes (the worker is gone), it sends SIGTERM to ansible-playbook, whose own handler
stops its forked workers.
"""

from __future__ import annotations

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


def _watch(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)
            return


class CallbackModule(CallbackBase):  # type: ignore[misc]
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "orchestrator_watchdog"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        threading.Thread(target=_watch, args=(os.getppid(),), name="orchestrator-watchdog", daemon=True).start()

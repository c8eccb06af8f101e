"""Run one playbook through ansible-runner, in a private data dir, with live events and a hard stop.

- Extra vars are written to a vars file in the private data dir with every string tagged `!unsafe`,
  so user input (slugs, names, messages) is data to Jinja, never a template, and never on a command line.
- Events are handled in ansible-runner's thread and handed to the caller's `on_event` at once;
  `event_handler` returns False so nothing is written to disk, and the data dir is removed afterwards.
- Cancel and timeout end the whole process tree of the run (orchestrator.processes).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner
import ansible_runner.runner
import pexpect
import yaml

from orchestrator.errors import Failure, classify_failure
from orchestrator.processes import RUN_MARKER, end_run, run_processes

log = logging.getLogger(__name__)

METADATA_STAT = "orchestrator_metadata"
LEDGER_RESULT = "orchestrator_ledger"
WATCHDOG_DIR = Path(__file__).resolve().parent / "ansible_plugins" / "callback"


class _PromptSpawn(pexpect.spawn):  # type: ignore[misc]
    """pexpect.spawn without its fixed sleeps: 0.1 s after closing the pty (the child has already exited
    when ansible-runner closes it) and 0.1 ms after every read. Measured: ~0.1 s of every run."""

    def _spawnpty(self, args: list[str], **kwargs: Any) -> Any:
        pty = super()._spawnpty(args, **kwargs)
        pty.delayafterclose = 0
        return pty

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delayafterread = None
        self.delayafterclose = 0


class _PexpectForRunner:
    """What ansible-runner sees as `pexpect`: the real module, with the spawn class above."""

    spawn = _PromptSpawn

    def __getattr__(self, name: str) -> Any:
        return getattr(pexpect, name)


ansible_runner.runner.pexpect = _PexpectForRunner()


class _UnsafeDumper(yaml.SafeDumper):
    """Dumps every string as `!unsafe` so Ansible never templates it."""


def _unsafe_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("!unsafe", value, style="'")


class _Name(str):
    """A mapping key: a variable name of ours, written as a plain string."""


def _plain_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(value))


def _mapping(dumper: yaml.SafeDumper, value: dict[Any, Any]) -> yaml.MappingNode:
    return dumper.represent_dict({_Name(key): item for key, item in value.items()})


_UnsafeDumper.add_representer(str, _unsafe_str)
_UnsafeDumper.add_representer(_Name, _plain_str)
_UnsafeDumper.add_representer(dict, _mapping)


def unsafe_vars_yaml(extravars: dict[str, Any]) -> str:
    return yaml.dump(extravars, Dumper=_UnsafeDumper, allow_unicode=True, sort_keys=True, width=1 << 30)


class CancelToken:
    """Set once, from any thread, with the reason the run must stop."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def set(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


@dataclass
class RunResult:
    """What a playbook run came to."""

    status: str  # successful | failed | canceled | timeout
    rc: int | None
    failure: Failure | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    events: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "successful"


@dataclass(kw_only=True)
class _RunState:
    on_event: Callable[[dict[str, Any]], None]
    failure: Failure | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    events: int = 0
    output_tail: deque[str] = field(default_factory=lambda: deque(maxlen=20))

    def handle(self, event: dict[str, Any]) -> bool:
        self.events += 1
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        if kind == "verbose":
            text = str(event.get("stdout") or "").strip()
            if text:
                self.output_tail.append(text)
        elif kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            # The last failure is the one that ended the play: an earlier one may have been rescued by a block
            # whose rescue then failed with a clearer message.
            self.failure = classify_failure(kind, data)
        elif kind == "playbook_on_stats":
            artifact = data.get("artifact_data") or {}
            metadata = artifact.get(METADATA_STAT)
            if isinstance(metadata, dict):
                self.metadata = metadata
        self.on_event(event)
        return False  # never write event files


class PlaybookRunner:
    """Runs playbooks of one project; one instance per worker, safe to use from many tasks at once."""

    def __init__(self, *, project_dir: Path, runs_dir: Path, env: dict[str, str], kill_grace: float):
        self._project_dir = project_dir
        self._runs_dir = runs_dir
        self._env = env
        self._kill_grace = kill_grace

    async def run(
        self,
        *,
        playbook: Path,
        extravars: dict[str, Any],
        run_id: str,
        timeout: float,
        cancel: CancelToken,
        on_event: Callable[[dict[str, Any]], None],
    ) -> RunResult:
        if not playbook.is_file():
            return RunResult("failed", None, Failure(f"playbook {playbook.name} does not exist", transient=False))
        self._runs_dir.mkdir(parents=True, exist_ok=True)
        private = Path(tempfile.mkdtemp(prefix=f"run-{run_id[:40]}-", dir=self._runs_dir))
        state = _RunState(on_event=on_event)
        try:
            vars_file = private / "vars.yml"
            vars_file.write_text(unsafe_vars_yaml(extravars))
            vars_file.chmod(0o600)
            runner_thread = asyncio.ensure_future(
                asyncio.to_thread(self._run_blocking, private, playbook, vars_file, run_id, cancel, state)
            )
            status, rc = await self._supervise(runner_thread, run_id, timeout, cancel)
        finally:
            await asyncio.to_thread(self._cleanup, private, run_id)
        if status == "successful":
            return RunResult(status, rc, None, state.metadata, state.events)
        failure = state.failure
        if status == "timeout":
            failure = Failure(f"timed out after {timeout:g}s", transient=False)
        elif status == "canceled":
            failure = Failure(cancel.reason or "cancelled", transient=False)
        elif failure is None:
            tail = " | ".join(list(state.output_tail)[-3:])
            failure = Failure(f"ansible-playbook exited {rc}" + (f": {tail}" if tail else ""), transient=False)
        return RunResult(status, rc, failure, state.metadata, state.events)

    async def _supervise(
        self, thread: asyncio.Future[tuple[str, int | None]], run_id: str, timeout: float, cancel: CancelToken
    ) -> tuple[str, int | None]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        timed_out = False
        while not thread.done():
            remaining = deadline - loop.time()
            if remaining <= 0 and not timed_out:
                timed_out = True
                cancel.set(f"timed out after {timeout:g}s")
            if cancel.is_set():
                await asyncio.to_thread(end_run, run_id, grace=self._kill_grace)
                break
            await asyncio.wait({thread}, timeout=min(0.05, max(remaining, 0.01)))
        status, rc = await thread
        if timed_out:
            return "timeout", rc
        if cancel.is_set():
            return "canceled", rc
        return status, rc

    def _run_blocking(
        self, private: Path, playbook: Path, vars_file: Path, run_id: str, cancel: CancelToken, state: _RunState
    ) -> tuple[str, int | None]:
        bindir = str(Path(sys.executable).parent)
        envvars = {
            **self._env,
            RUN_MARKER: run_id,
            "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
            "ANSIBLE_CALLBACK_PLUGINS": str(WATCHDOG_DIR),
            "ANSIBLE_CALLBACKS_ENABLED": "orchestrator_watchdog",
            "PYTHONUNBUFFERED": "1",
        }
        result = ansible_runner.run(
            private_data_dir=str(private),
            project_dir=str(self._project_dir),
            playbook=str(playbook),
            inventory=str(self._project_dir / "inventory"),
            cmdline=f"-e @{vars_file}",
            envvars=envvars,
            ident=run_id,
            quiet=True,
            suppress_env_files=True,
            event_handler=state.handle,
            cancel_callback=cancel.is_set,
            settings={
                "pexpect_timeout": 0.05,
                "pexpect_use_poll": True,
                "suppress_output_file": True,
                "suppress_ansible_output": True,
            },
        )
        return str(result.status), result.rc

    def _cleanup(self, private: Path, run_id: str) -> None:
        left = run_processes(run_id)
        if left:
            log.warning("run %s left %d processes behind: ending them", run_id, len(left))
            end_run(run_id, grace=self._kill_grace)
        shutil.rmtree(private, ignore_errors=True)

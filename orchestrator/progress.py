"""Ansible events -> task progress (the seed's step / total_steps / percentage / message).

Steps are the playbook's real tasks: `total_steps` comes from `ansible-playbook --list-tasks`
(computed once per playbook version and cached on disk), and each `playbook_on_task_start` event
advances `step` to that task's position. Conditional, looped or dynamically included tasks the
listing cannot see only ever raise `total_steps`, so percentages never go backwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_TASK_LINE = re.compile(r"^\s{6}(?P<name>.+?)\s+TAGS: \[.*\]\s*$")


def parse_task_list(output: str) -> list[str]:
    """Task names, in order, from `ansible-playbook --list-tasks` output."""
    names = []
    for line in output.splitlines():
        match = _TASK_LINE.match(line.replace("\t", "  "))
        if match:
            names.append(match.group("name").strip())
    return names


def event_task_name(event_data: dict[str, Any]) -> str:
    """The name --list-tasks shows for the task of an event: `role : task` or `task`."""
    task = str(event_data.get("task") or event_data.get("name") or "").strip()
    role = str(event_data.get("role") or "").strip()
    return f"{role} : {task}" if role and task else task


class StepPlans:
    """Cached task lists per playbook, keyed by a hash of the playbook and the roles it can use."""

    def __init__(self, *, cache_dir: Path, project_dir: Path, env: dict[str, str]):
        self._cache_dir = cache_dir
        self._project_dir = project_dir
        self._env = env
        self._memory: dict[tuple[Path, int], list[str]] = {}
        self._pending: dict[Path, asyncio.Task[list[str]]] = {}

    def _fingerprint(self, playbook: Path) -> str:
        digest = hashlib.sha256(playbook.read_bytes())
        for folder in ("roles", "collections/ansible_collections"):
            root = self._project_dir / folder
            for dirpath, _dirs, files in sorted(os.walk(root)):
                for name in sorted(files):
                    if name.endswith((".yml", ".yaml")):
                        stat = os.stat(os.path.join(dirpath, name))
                        digest.update(f"{dirpath}/{name}:{stat.st_mtime_ns}:{stat.st_size}".encode())
        return digest.hexdigest()[:32]

    async def plan(self, playbook: Path) -> list[str]:
        """The task list of a playbook; [] when it cannot be listed (then steps only count up)."""
        try:
            mtime = playbook.stat().st_mtime_ns
        except OSError:
            return []
        cached = self._memory.get((playbook, mtime))
        if cached is not None:
            return cached
        pending = self._pending.get(playbook)
        if pending is None:
            pending = asyncio.ensure_future(self._compute(playbook))
            self._pending[playbook] = pending
        try:
            names = await asyncio.shield(pending)
        finally:
            self._pending.pop(playbook, None)
        self._memory[(playbook, mtime)] = names
        return names

    async def _compute(self, playbook: Path) -> list[str]:
        key = await asyncio.to_thread(self._fingerprint, playbook)
        cache_file = self._cache_dir / f"{playbook.stem}-{key}.json"
        try:
            return list(json.loads(cache_file.read_text()))
        except (OSError, ValueError):
            pass
        binary = Path(sys.executable).parent / "ansible-playbook"
        env = {**os.environ, **self._env}
        env["PATH"] = f"{binary.parent}{os.pathsep}{env.get('PATH', '')}"
        proc = await asyncio.create_subprocess_exec(
            str(binary),
            "--list-tasks",
            str(playbook),
            cwd=self._project_dir,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            log.warning(
                "could not list the tasks of %s (exit %s): progress counts steps only", playbook.name, proc.returncode
            )
            return []
        names = parse_task_list(out.decode(errors="replace"))
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(names))
        tmp.replace(cache_file)
        return names


@dataclass
class Step:
    step: int
    total_steps: int
    percentage: int
    message: str


@dataclass
class ProgressTracker:
    """Turns task-start events of one run into monotonic steps."""

    plan: list[str]
    step: int = 0
    total: int = field(init=False)

    def __post_init__(self) -> None:
        self.total = max(len(self.plan), 1)

    def task_started(self, event_data: dict[str, Any]) -> Step:
        name = event_task_name(event_data)
        position = None
        for index in range(self.step, len(self.plan)):
            if self.plan[index] == name:
                position = index + 1
                break
        self.step = position if position is not None else self.step + 1
        if not self.plan:
            self.total = self.step + 1  # unknown length: never claim to be done before the end
        elif self.step > self.total:
            self.total = self.step
        message = str(event_data.get("task") or name)
        return Step(self.step, self.total, self.percentage(), message)

    def percentage(self) -> int:
        return int(self.step / self.total * 100) if self.total else 0

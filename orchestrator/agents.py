"""On-demand Claude Code runs over SSH: the seed's ClaudeCodeRunner, and the live stream of a run.

A run is the playbook agent.run.yml (role claude_code): it prepares the working clone, then runs the CLI on the
agent host under a small supervisor that appends every stream-json line to a file as it comes. Ansible only
reports a task when it ends, so the stream is followed separately: when the role announces the run's directory
(its `claude_code_stream` fact), a follower opens one SSH connection (asyncssh) to the agent host, tails
the file and hands every line over as it arrives. Cancel goes over that connection too: the supervisor is told
to stop, TERMs the CLI and kills whatever of the run is left. The tool profiles and agent types are defined
once, in roles/claude_code/vars/main.yml, for both the role and this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from orchestrator.config import Settings
from orchestrator.profiles import AGENT_TYPES, PROFILES
from orchestrator.runner import CancelToken, PlaybookRunner, RunResult

log = logging.getLogger(__name__)

ANNOUNCE_FACT = "claude_code_stream"
# After the playbook ends, how long to wait for the stream's last lines (the result line normally).
DRAIN_SECONDS = 2.0
SUMMARY_CHARS = 300


@dataclass
class AgentResult:
    """How a run ended (the seed's AgentResult)."""

    success: bool
    status: str  # completed | failed | cancelled
    result: str = ""
    error: str | None = None
    session_id: str | None = None
    cost_usd: float | None = None
    num_turns: int | None = None
    duration_ms: int | None = None
    lines: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)


def _clip(text: str, limit: int = SUMMARY_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tool_input_summary(name: str, data: Any) -> str:
    if not isinstance(data, dict):
        return ""
    for key in ("file_path", "command", "pattern", "path", "url", "description", "prompt"):
        value = data.get(key)
        if isinstance(value, str) and value:
            return _clip(value, 160)
    return _clip(json.dumps(data, ensure_ascii=False), 160)


def _result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def describe(line: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """One stream-json line -> the progress messages it makes: (text, details). Unknown types are named, never
    dropped silently, and never fail (the union grows between CLI releases)."""
    kind = str(line.get("type", "?"))
    subtype = line.get("subtype")
    base: dict[str, Any] = {"type": kind}
    if isinstance(subtype, str):
        base["subtype"] = subtype
    message = line.get("message") if isinstance(line.get("message"), dict) else {}
    assert isinstance(message, dict)
    blocks = [b for b in message.get("content") or [] if isinstance(b, dict)] if kind in {"assistant", "user"} else []
    out: list[tuple[str, dict[str, Any]]] = []
    if kind == "system" and subtype == "init":
        tools = line.get("tools")
        tools = tools if isinstance(tools, list) else []
        text = (
            f"agent started: model {line.get('model', '?')}, {len(tools)} tools, "
            f"permission mode {line.get('permissionMode', '?')}"
        )
        out.append((text, {**base, "session_id": line.get("session_id")}))
    elif kind == "system" and subtype == "api_retry":
        text = (
            f"API call failed ({line.get('error_status') or line.get('error') or '?'}), retry "
            f"{line.get('attempt', '?')} of {line.get('max_retries', '?')}"
        )
        out.append((text, base))
    elif kind == "system" and subtype == "permission_denied":
        out.append((f"permission denied: {line.get('tool_name', '?')}", {**base, "tool": line.get("tool_name")}))
    elif kind == "assistant":
        if line.get("error"):
            out.append((f"API error: {line.get('error')}", {**base, "error": line.get("error")}))
        for block in blocks:
            if block.get("type") == "text" and str(block.get("text", "")).strip():
                out.append((f"assistant: {_clip(str(block['text']))}", {**base, "block": "text"}))
            elif block.get("type") == "tool_use":
                name = str(block.get("name", "?"))
                summary = _tool_input_summary(name, block.get("input"))
                text = f"tool {name}: {summary}" if summary else f"tool {name}"
                out.append((text, {**base, "block": "tool_use", "tool": name}))
            elif block.get("type") == "thinking":
                out.append(("assistant is thinking", {**base, "block": "thinking"}))
    elif kind == "user":
        for block in blocks:
            if block.get("type") == "tool_result":
                failed = bool(block.get("is_error"))
                text = _clip(_result_text(block.get("content")), 200)
                out.append(
                    (
                        f"tool result ({'error' if failed else 'ok'}){': ' + text if text else ''}",
                        {**base, "block": "tool_result", "is_error": failed},
                    )
                )
    elif kind == "result":
        ok = line.get("is_error") is False
        cost = line.get("total_cost_usd")
        text = (
            f"result: {'success' if ok else 'error'} ({subtype or '?'}), {line.get('num_turns', '?')} turns, "
            f"{(line.get('duration_ms') or 0) / 1000:.1f}s"
            + (f", ${cost:.4f}" if isinstance(cost, int | float) else "")
        )
        out.append((text, {**base, "is_error": not ok}))
    if not out:
        out.append((f"{kind}{'/' + subtype if isinstance(subtype, str) else ''}", base))
    return out


def ssh_options(settings: Settings) -> dict[str, Any]:
    """asyncssh.connect keyword arguments from the settings. Host keys are always checked: against
    ORCHESTRATOR_SSH_KNOWN_HOSTS, or ~/.ssh/known_hosts (asyncssh's default) when unset."""
    options: dict[str, Any] = {
        "port": settings.ssh_port,
        "username": settings.ssh_user,
        "connect_timeout": 10,
        "agent_path": None,
    }
    if settings.ssh_key_file:
        options["client_keys"] = [str(settings.ssh_key_file)]
    if settings.ssh_known_hosts:
        options["known_hosts"] = str(settings.ssh_known_hosts)
    return options


LineHandler = Callable[[int, dict[str, Any], float], None]


class StreamFollower:
    """Follows one run's stream.jsonl on the agent host over one SSH connection; stops the run on cancel."""

    def __init__(
        self, settings: Settings, run_dir: str, supervisor: str, on_line: LineHandler, cancel: CancelToken
    ) -> None:
        self.settings = settings
        self.run_dir = run_dir
        self.supervisor = supervisor
        self.on_line = on_line
        self.cancel = cancel
        self.finished = asyncio.Event()  # set when the playbook run is over
        self.lines = 0
        self.saw_result = False
        self.stop_sent = False
        self.error: str | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"follow {self.run_dir}")

    async def close(self) -> None:
        self.finished.set()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        try:
            async with asyncssh.connect(self.settings.ssh_host, **ssh_options(self.settings)) as conn:
                await self._follow(conn)
        except (OSError, asyncssh.Error) as exc:
            self.error = f"cannot follow the agent's stream: {exc}"
            log.warning("%s", self.error)

    async def _follow(self, conn: asyncssh.SSHClientConnection) -> None:
        path = shlex.quote(f"{self.run_dir}/stream.jsonl")
        # The file does not exist yet when following starts, and GNU tail then checks for it by polling, at -s (1 s
        # by default, which delayed every line by up to a second, measured); 50 ms costs a stat per tick.
        process = await conn.create_process(f"exec tail -n +1 -F -s 0.05 -- {path} 2>/dev/null", encoding=None)
        quiet_since: float | None = None
        pending = b""
        try:
            while True:
                if self.cancel.is_set() and not self.stop_sent:
                    await self._stop(conn, self.cancel.reason or "cancelled")
                if self.finished.is_set():
                    quiet_since = quiet_since or time.monotonic()
                    if self.saw_result or time.monotonic() - quiet_since > DRAIN_SECONDS:
                        return
                try:
                    chunk = await asyncio.wait_for(process.stdout.read(65536), timeout=0.1)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                quiet_since = None
                received = time.time()
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    self._handle(raw, received)
        finally:
            process.terminate()
            with contextlib.suppress(Exception):
                process.close()

    def _handle(self, raw: bytes, received: float) -> None:
        if not raw.strip():
            return
        self.lines += 1
        try:
            line = json.loads(raw)
        except ValueError:
            line = {"type": "unparsed", "text": raw[:200].decode(errors="replace")}
        if not isinstance(line, dict):
            line = {"type": "unparsed"}
        if line.get("type") == "result":
            self.saw_result = True
        try:
            self.on_line(self.lines, line, received)
        except Exception:
            log.exception("agent stream line handler failed")

    async def _stop(self, conn: asyncssh.SSHClientConnection, reason: str) -> None:
        self.stop_sent = True
        command = " ".join(
            shlex.quote(part)
            for part in ("python3", self.supervisor, "stop", "--run-dir", self.run_dir, "--reason", reason)
        )
        with contextlib.suppress(OSError, asyncssh.Error):
            result = await conn.run(command, check=False, timeout=30)
            log.info("agent run %s: stop requested (%s): %s", self.run_dir, reason, str(result.stdout).strip())


class ClaudeCodeRunner:
    """The seed's ClaudeCodeRunner: Claude Code on the agent host over SSH (SSH_USER, SSH_HOST, SSH_CLAUDE_PATH).

    `run` is the direct API (a prompt and a working directory on the agent host); the worker's agent.run tasks
    go through `run_playbook` with the task's payload. Both run playbooks/agent.run.yml and stream live."""

    def __init__(self, settings: Settings, runner: PlaybookRunner) -> None:
        self.settings = settings
        self.runner = runner

    # -- the seed's table lookups --

    def get_tools_for_profile(self, tool_profile: str) -> list[str]:
        """Allowed tools of a tool profile (readonly, developer, full-access)."""
        if tool_profile not in PROFILES:
            raise ValueError(f"unknown tool profile {tool_profile!r}: use one of {', '.join(PROFILES)}")
        return list(PROFILES[tool_profile]["allowed_tools"])

    def get_tools_for_agent(self, agent_type: str) -> list[str]:
        """Legacy: allowed tools of an agent type (its profile's)."""
        return self.get_tools_for_profile(self._agent(agent_type)["profile"])

    def get_timeout_for_agent(self, agent_type: str) -> int:
        """Timeout in seconds of an agent type."""
        return int(self._agent(agent_type)["timeout"])

    @staticmethod
    def _agent(agent_type: str) -> dict[str, Any]:
        if agent_type not in AGENT_TYPES:
            raise ValueError(f"unknown agent type {agent_type!r}: use one of {', '.join(AGENT_TYPES)}")
        return AGENT_TYPES[agent_type]

    def run_timeout(self, agent_type: str, timeout: int | None) -> float:
        """The hard limit of the whole playbook: the run's own timeout, plus room for SSH and the stop."""
        return float(timeout or self.get_timeout_for_agent(agent_type)) + 120.0

    # -- runs --

    async def run(
        self,
        prompt: str,
        working_dir: str,
        agent_type: str = "developer",
        tool_profile: str | None = None,
        allowed_tools: list[str] | None = None,
        timeout: int | None = None,
        *,
        on_line: LineHandler | None = None,
        cancel: CancelToken | None = None,
        run_id: str | None = None,
    ) -> AgentResult:
        """Execute Claude Code on the agent host in working_dir; stream lines to on_line as they come."""
        self._agent(agent_type)
        if tool_profile is not None:
            self.get_tools_for_profile(tool_profile)
        extravars: dict[str, Any] = {
            "prompt": prompt,
            "workdir": working_dir,
            "agent_type": agent_type,
            "agent_run_id": run_id or f"run-{int(time.time() * 1000)}",
        }
        if tool_profile:
            extravars["tool_profile"] = tool_profile
        if allowed_tools:
            extravars["allowed_tools"] = list(allowed_tools)
        if timeout:
            extravars["timeout"] = timeout
        token = cancel or CancelToken()
        result, follower = await self.run_playbook(
            {**self.settings.service_vars(), **extravars},
            run_id=str(extravars["agent_run_id"]),
            timeout=self.run_timeout(agent_type, timeout),
            cancel=token,
            on_line=on_line or (lambda _n, _line, _t: None),
            on_event=lambda _event: None,
        )
        return self.outcome(result, follower, token)

    async def run_playbook(
        self,
        extravars: dict[str, Any],
        *,
        run_id: str,
        timeout: float,
        cancel: CancelToken,
        on_line: LineHandler,
        on_event: Callable[[dict[str, Any]], None],
    ) -> tuple[RunResult, StreamFollower | None]:
        """Run agent.run.yml; start following the stream when the role announces it."""
        loop = asyncio.get_running_loop()
        holder: list[StreamFollower] = []

        def start_follower(run_dir: str, supervisor: str) -> None:
            if not holder:
                follower = StreamFollower(self.settings, run_dir, supervisor, on_line, cancel)
                holder.append(follower)
                follower.start()

        def events(event: dict[str, Any]) -> None:
            data = event.get("event_data") or {}
            if event.get("event") == "runner_on_ok":
                res = data.get("res")
                facts = res.get("ansible_facts") if isinstance(res, dict) else None
                announced = facts.get(ANNOUNCE_FACT) if isinstance(facts, dict) else None
                if isinstance(announced, dict) and announced.get("run_dir"):
                    loop.call_soon_threadsafe(
                        start_follower, str(announced["run_dir"]), str(announced.get("supervisor", ""))
                    )
            on_event(event)

        result = await self.runner.run(
            playbook=self.settings.playbook_dir / "agent.run.yml",
            extravars=extravars,
            run_id=run_id,
            timeout=timeout,
            cancel=cancel,
            on_event=events,
        )
        await asyncio.sleep(0)  # let a follower scheduled by the last events start
        follower = holder[0] if holder else None
        if follower is not None:
            if cancel.is_set() and not follower.stop_sent:
                # The playbook was killed locally before the follower could stop the remote run: make sure.
                await asyncio.sleep(0.2)
            await follower.close()
        return result, follower

    @staticmethod
    def outcome(result: RunResult, follower: StreamFollower | None, cancel: CancelToken) -> AgentResult:
        meta = dict(result.metadata)
        status = "completed" if result.ok else "cancelled" if result.status == "canceled" else "failed"
        error = None
        if not result.ok:
            error = cancel.reason if status == "cancelled" else result.failure.message if result.failure else "failed"
        return AgentResult(
            success=result.ok,
            status=status,
            result=str(meta.get("result") or ""),
            error=error,
            session_id=meta.get("session_id") or None,
            cost_usd=_number(meta.get("cost_usd")),
            num_turns=_int(meta.get("num_turns")),
            duration_ms=_int(meta.get("duration_ms")),
            lines=follower.lines if follower else _int(meta.get("lines")) or 0,
            metadata=meta,
        )


def _number(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None

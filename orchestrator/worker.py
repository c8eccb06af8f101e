"""The worker: takes tasks, runs their playbooks, reports progress and exactly one final status.

One asyncio loop per process. Playbooks run in threads (ansible-runner is blocking); their events come
back through the publisher's thread-safe buffer. See docs/architecture.md for the walk
of one task from the queue to its final status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import AsyncRetrying, RetryCallState, retry_if_result, stop_after_attempt, wait_exponential

from orchestrator import constants as k
from orchestrator import models
from orchestrator.agents import ClaudeCodeRunner, describe
from orchestrator.config import Settings
from orchestrator.constants import ResourceStatus, TaskStatus, TaskType
from orchestrator.errors import Failure
from orchestrator.models import Task, TaskRejected, parse_task
from orchestrator.progress import ProgressTracker, StepPlans
from orchestrator.queue import Held, TaskQueue, as_text, line_of, new_worker_id, queue_notification_channels
from orchestrator.redact import Redactor
from orchestrator.router import Route, route_for
from orchestrator.runner import LEDGER_RESULT, CancelToken, PlaybookRunner, RunResult
from orchestrator.status import Publisher, TaskRef, dumps, now_iso

log = logging.getLogger(__name__)

ROLE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
SAFE_ID = re.compile(models.SAFE_ID)
USER_ID = re.compile(models.USER_ID)
SHUTDOWN_REASON = "worker shutting down"
RECORDED_EVENTS = frozenset(
    {"runner_on_ok", "runner_on_failed", "runner_on_unreachable", "runner_on_skipped", "runner_item_on_failed"}
)
STEP_EVENTS = frozenset({"playbook_on_task_start", "playbook_on_handler_task_start"})


@dataclass(eq=False)
class Running:
    """A task this worker holds, from claim to final status."""

    task: Task
    route: Route
    held: Held
    line: str  # the resource's line key: only its head may run
    token: CancelToken = field(default_factory=CancelToken)
    requeue_on_cancel: bool = False
    started: bool = False

    @property
    def ref(self) -> TaskRef:
        env = self.task.envelope
        return TaskRef(
            task_id=env.id,
            user_id=env.user_id,
            type=env.type.value,
            resource_type=env.resource_type,
            resource_id=env.resource_id,
        )


class Worker:
    """Consumes the provisioning queues until stopped (or, in burst mode, until they are empty)."""

    def __init__(self, settings: Settings, *, burst: bool = False, redis: Redis | None = None):
        self.settings = settings
        self.burst = burst
        self.worker_id = new_worker_id()
        self.redis = redis or Redis.from_url(settings.redis_url, decode_responses=False, health_check_interval=30)
        self.redactor = Redactor(settings.secret_values)
        self.queue = TaskQueue(self.redis, worker_id=self.worker_id, lease_ttl=settings.lease_ttl)
        self.publisher = Publisher(
            self.redis,
            redactor=self.redactor,
            retention=settings.retention_seconds,
            task_stream_maxlen=settings.task_stream_maxlen,
            stream_maxlen=settings.stream_maxlen,
        )
        env = settings.playbook_env()
        self.runner = PlaybookRunner(
            project_dir=settings.project_dir,
            runs_dir=settings.state_dir / "runs",
            env=env,
            kill_grace=settings.kill_grace,
        )
        self.agents = ClaudeCodeRunner(settings, self.runner)
        self.plans = StepPlans(cache_dir=settings.state_dir / "plans", project_dir=settings.project_dir, env=env)
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._handlers: set[asyncio.Task[None]] = set()
        self._running: dict[str, Running] = {}
        self._active = 0  # held tasks not waiting behind another task of their resource
        self._wake = asyncio.Event()
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._signals = 0
        self._notifications = False
        self.completed = 0

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        """Run until stopped; returns the process exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        await self.redis.ping()
        await self.queue.register(
            {"host": socket.gethostname(), "pid": os.getpid(), "concurrency": self.settings.concurrency}
        )
        self._notifications = await self.queue.enable_notifications()
        self.publisher.start()
        log.info(
            "worker %s started (concurrency %d, %s)",
            self.worker_id,
            self.settings.concurrency,
            "burst" if self.burst else "waiting for tasks",
        )
        background = [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._listen(), name="listen"),
            asyncio.create_task(self._reap_loop(), name="reaper"),
            asyncio.create_task(self._renew_loop(), name="certificate renewal"),
        ]
        try:
            await self._take_loop()
            await self._shutdown()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self.publisher.close()
            with contextlib.suppress(Exception):
                await self.queue.unregister()
            await self.redis.aclose()
        log.info("worker %s stopped", self.worker_id)
        return 0

    def request_stop(self) -> None:
        """First call: stop taking tasks, let running ones finish. Second: cancel and re-queue them."""
        self._signals += 1
        self._stopping = True
        self._stop_event.set()
        self._wake.set()
        if self._signals == 1:
            log.info(
                "stopping: no new tasks; waiting up to %ss for %d running",
                self.settings.grace_period,
                len(self._running),
            )
        else:
            log.warning("stopping now: cancelling %d running tasks and re-queueing them", len(self._running))
            self._cancel_all_for_requeue()

    def _cancel_all_for_requeue(self) -> None:
        for running in self._running.values():
            running.requeue_on_cancel = True
            running.token.set(SHUTDOWN_REASON)

    async def _shutdown(self) -> None:
        if self._handlers:
            _done, pending = await asyncio.wait(set(self._handlers), timeout=self.settings.grace_period)
            if pending:
                log.warning("grace period over: cancelling and re-queueing %d tasks", len(pending))
                self._cancel_all_for_requeue()
                await asyncio.wait(pending)

    # ------------------------------------------------------------------ taking

    def _can_take(self) -> bool:
        limit = self.settings.concurrency
        return not self._stopping and self._active < limit and len(self._handlers) < 4 * limit

    async def _take_loop(self) -> None:
        interval = self.settings.poll_interval if self._notifications else min(self.settings.poll_interval, 0.05)
        while not self._stopping:
            self._wake.clear()
            took = 0
            while self._can_take():
                try:
                    held = await self.queue.take()
                except (RedisConnectionError, RedisTimeoutError) as exc:
                    log.error("cannot reach Redis to take tasks: %s", exc)
                    await asyncio.sleep(1.0)
                    break
                if held is None:
                    break
                took += 1
                self._spawn(self._guarded(held))
            if self.burst and not took and not self._handlers and not await self._queues_have_work():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=interval)

    async def _queues_have_work(self) -> bool:
        pipe = self.redis.pipeline(transaction=False)
        for name in k.QUEUES:
            pipe.llen(name)
        pipe.llen(self.queue.processing)
        return any(await pipe.execute())

    def _spawn(self, coro: Awaitable[None]) -> None:
        self._active += 1
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._handlers.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._handlers.discard(t)
            self._active -= 1
            self._wake.set()
            if not t.cancelled() and t.exception() is not None:
                log.error("task handler crashed", exc_info=t.exception())

        task.add_done_callback(done)

    # ------------------------------------------------------------------ one task

    async def _guarded(self, held: Held, *, recovered: bool = False) -> None:
        """Handle a task; on an unexpected error, re-queue it (or fail it once it keeps failing) so that it
        never stays held by a live worker with no one working on it."""
        try:
            await self._handle(held, recovered=recovered)
        except Exception as exc:
            log.exception("internal error while handling a task")
            error = exc
            await self._with_redis_retry(lambda: self._salvage(held, error))

    async def _salvage(self, held: Held, exc: Exception) -> bool:
        try:
            task = parse_task(held.body, max_bytes=self.settings.max_body_bytes)
        except TaskRejected:
            return await self.queue.drop(held, deadletter=dumps({"error": f"internal error: {exc!r}"}))
        env = task.envelope
        running = self._running.pop(task.id, None) or Running(
            task=task, route=route_for(task), held=held, line=line_of(env.type.value, env.resource_id, env.payload)
        )
        running.token.set("internal error")
        recoveries = int(await self.redis.hincrby(k.task_key(task.id), "recoveries", 1))
        if recoveries > self.settings.max_recoveries:
            await self._finish(
                running,
                TaskStatus.FAILED,
                f"internal error: {self.redactor.redact(repr(exc))}",
                resource_status=ResourceStatus.FAILED.value,
            )
            return True
        return await self.queue.requeue(held, task_id=task.id)

    async def _handle(self, held: Held, *, recovered: bool = False) -> None:
        try:
            task = parse_task(held.body, max_bytes=self.settings.max_body_bytes)
        except TaskRejected as rejection:
            await self._reject(held, rejection)
            return
        route = route_for(task)
        line = line_of(task.type.value, task.envelope.resource_id, task.envelope.payload)
        running = Running(task=task, route=route, held=held, line=line)
        if recovered:
            await self._recover(running)
            return
        claim = await self.queue.claim(
            task.id,
            line,
            {
                "type": task.type.value,
                "user_id": task.envelope.user_id,
                "resource_id": task.envelope.resource_id,
                "resource_type": route.resource_type,
                "priority": held.priority,
                "line": line,
                "status": TaskStatus.QUEUED.value,
                "taken_at": now_iso(),
            },
        )
        if not claim.claimed:
            log.error(
                "duplicate task id %s (%s) dropped: it was already taken by %s (status %s)",
                task.id,
                task.type.value,
                claim.holder or "?",
                claim.status or "?",
            )
            await self.queue.drop(held, leave_line=task.id)
            return
        self._running[task.id] = running
        try:
            if claim.cancel_requested:
                running.token.set("cancelled before it started")
            await self._wait_for_turn(running)
            if running.token.is_set():
                await self._end_unstarted(running)
                return
            async with self._slots:
                await self._execute(running)
        finally:
            self._running.pop(task.id, None)

    async def _wait_for_turn(self, running: Running) -> None:
        """Wait until this task heads its resource's line (tasks of one resource run in order)."""
        if await self.queue.is_head(running.line, running.task.id):
            return
        self._active -= 1
        self._wake.set()
        try:
            delay = 0.02
            while not running.token.is_set():
                if await self.queue.is_head(running.line, running.task.id):
                    return
                await self._clear_stale_head(running.line)
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, 0.25)
        finally:
            self._active += 1

    async def _clear_stale_head(self, line: str) -> None:
        """A head whose task is finished (or unknown) was left by a crash between steps: remove it."""
        head = as_text(await self.redis.lindex(line, 0))
        if not head:
            return
        status = as_text(await self.redis.hget(k.task_key(head), "status"))
        if not status or status in k.FINAL_STATUSES:
            await self.redis.lrem(line, 1, head)

    async def _end_unstarted(self, running: Running) -> None:
        if running.requeue_on_cancel:
            await self.queue.requeue(running.held, task_id=running.task.id)
            return
        await self._finish(running, TaskStatus.CANCELLED, running.token.reason, resource_status=None)

    async def _execute(self, running: Running) -> None:
        ref = running.ref
        attempt_no = int(await self.redis.hincrby(k.task_key(ref.task_id), "attempts", 1))
        running.started = True
        await self.publisher.started(ref, worker_id=self.worker_id, attempt=attempt_no)
        log.info("task %s (%s) started", ref.task_id, ref.type, extra={"task_id": ref.task_id})
        pending = as_text(await self.redis.hget(k.task_key(ref.task_id), k.ROLLBACK_FIELD))
        if pending:
            await self._resume_rollback(running, pending)
            return
        playbook = running.route.playbook(self.settings.playbook_dir)
        plan = await self.plans.plan(playbook)
        tracker = ProgressTracker(plan)
        if running.route.type is TaskType.AGENT_RUN:
            result = await self._run_agent(running, tracker, attempt_no)
        else:
            result = await self._run_with_retries(running, playbook, tracker, attempt_no)
        success_status = running.route.success_status
        if result.ok:
            self.redactor.add(*(str(result.metadata[s]) for s in k.PUBLISHED_SECRET_KEYS if s in result.metadata))
            await self._finish(
                running,
                TaskStatus.COMPLETED,
                None,
                resource_status=success_status.value if success_status else None,
                metadata=result.metadata,
                total_steps=max(tracker.total, tracker.step),
            )
            return
        if running.requeue_on_cancel and running.token.reason == SHUTDOWN_REASON:
            log.info("task %s re-queued for another worker", ref.task_id)
            await self.publisher.drain()
            await self.queue.requeue(running.held, task_id=ref.task_id)
            return
        failure = result.failure or Failure("failed", transient=False)
        status = TaskStatus.CANCELLED if result.status == "canceled" else TaskStatus.FAILED
        await self._fail(running, status, failure.message, metadata=result.metadata)

    async def _fail(
        self, running: Running, status: TaskStatus, error: str, *, metadata: dict[str, Any] | None = None
    ) -> None:
        """Roll back what the run created, then report the failure. The verdict is written to the task's hash
        first: a worker killed during the rollback leaves it, and the worker that adopts the task finishes the
        rollback (_resume_rollback) rather than running the playbook again."""
        ref = running.ref
        if running.route.rollback_on_failure:
            verdict = dumps({"status": status.value, "error": self.redactor.redact(error)})
            await self.redis.hset(k.task_key(ref.task_id), k.ROLLBACK_FIELD, verdict)
            rollback_error = await self._rollback(running)
            if rollback_error:
                error = f"{error}; rollback incomplete: {rollback_error}"
        await self._finish(running, status, error, resource_status=ResourceStatus.FAILED.value, metadata=metadata)

    async def _resume_rollback(self, running: Running, pending: str) -> None:
        """The task's previous worker died while rolling it back: finish the rollback from the ledger (entries
        already undone were removed from it) and report the run's verdict."""
        ref = running.ref
        try:
            verdict = json.loads(pending)
            status = TaskStatus(verdict["status"])
            error = str(verdict["error"])
        except (ValueError, KeyError, TypeError):
            status, error = TaskStatus.FAILED, "failed"
        log.warning(
            "task %s: its worker was lost while rolling it back; finishing the rollback",
            ref.task_id,
            extra={"task_id": ref.task_id},
        )
        self.publisher.progress(ref, 0, 0, 0, "finishing the rollback its lost worker started")
        await self._fail(running, status, f"{error} (rollback finished after the worker was lost)")

    async def _run_with_retries(
        self, running: Running, playbook: Any, tracker: ProgressTracker, attempt_no: int
    ) -> RunResult:
        """Run the playbook; again after a transient failure (seed backoff). Run ids: {task}-{attempt}-{try}."""
        settings = self.settings
        ref = running.ref
        token = running.token

        def should_retry(result: RunResult) -> bool:
            return not result.ok and result.failure is not None and result.failure.transient and not token.is_set()

        async def sleep_unless_cancelled(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and not token.is_set():
                await asyncio.sleep(min(0.1, deadline - time.monotonic()))

        def before_sleep(state: RetryCallState) -> None:
            result = state.outcome.result() if state.outcome else None
            reason = result.failure.message if result and result.failure else "transient failure"
            wait = state.next_action.sleep if state.next_action else 0
            log.warning(
                "task %s attempt %d failed transiently, retrying in %.0fs: %s",
                ref.task_id,
                state.attempt_number,
                wait,
                self.redactor.redact(reason),
            )
            self.publisher.progress(
                ref, tracker.step, tracker.total, tracker.percentage(), f"retrying in {wait:.0f}s after: {reason}"
            )

        retrying = AsyncRetrying(
            stop=stop_after_attempt(settings.retry_attempts),
            wait=wait_exponential(multiplier=1, min=settings.retry_min_wait, max=settings.retry_max_wait),
            retry=retry_if_result(should_retry),
            sleep=sleep_unless_cancelled,
            before_sleep=before_sleep,
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )
        timeout = settings.timeouts.get(ref.type or "", running.route.timeout)
        result: RunResult | None = None
        async for attempt in retrying:
            with attempt:
                tracker.step = 0
                result = await self.runner.run(
                    playbook=playbook,
                    extravars=self._extravars(running),
                    run_id=f"{ref.task_id}-{attempt_no}-{attempt.retry_state.attempt_number}",
                    timeout=timeout,
                    cancel=token,
                    on_event=self._event_sink(ref, tracker),
                )
            if attempt.retry_state.outcome is not None and not attempt.retry_state.outcome.failed:
                attempt.retry_state.set_result(result)
        assert result is not None
        return result

    async def _run_agent(self, running: Running, tracker: ProgressTracker, attempt_no: int) -> RunResult:
        """An agent.run task: the playbook through ClaudeCodeRunner, with every line of the CLI's stream published
        as progress as it arrives (never retried: a run is not idempotent)."""
        ref = running.ref
        payload = running.task.payload
        assert isinstance(payload, models.AgentRunPayload)
        publisher = self.publisher

        def on_line(number: int, line: dict[str, Any], _received: float) -> None:
            for text, details in describe(line):
                publisher.progress(
                    ref, tracker.step, tracker.total, tracker.percentage(), text, agent={"line": number, **details}
                )

        run_id = f"{ref.task_id}-{attempt_no}"
        default_timeout = self.agents.run_timeout(payload.agent_type, payload.timeout)
        timeout = self.settings.timeouts.get(ref.type or "", default_timeout)
        result, follower = await self.agents.run_playbook(
            self._extravars(running, agent_run_id=run_id),
            run_id=f"{run_id}-1",
            timeout=timeout,
            cancel=running.token,
            on_line=on_line,
            on_event=self._event_sink(ref, tracker),
        )
        if follower is not None:
            result.metadata.setdefault("lines", follower.lines)
            if follower.error and not result.ok:
                log.warning("task %s: %s", ref.task_id, follower.error, extra={"task_id": ref.task_id})
        return result

    def _extravars(self, running: Running, **extra: Any) -> dict[str, Any]:
        env = running.task.envelope
        return {
            **running.task.payload.model_dump(exclude_none=True),
            "orchestrator_task_id": env.id,
            "orchestrator_task_type": env.type.value,
            "orchestrator_resource_id": env.resource_id,
            "orchestrator_user_id": env.user_id,
            **self.settings.service_vars(),
            **extra,
        }

    def _event_sink(self, ref: TaskRef, tracker: ProgressTracker | None) -> Callable[[dict[str, Any]], None]:
        """Runs in ansible-runner's thread: translate, then hand over to the loop without waiting."""
        publisher = self.publisher

        def sink(event: dict[str, Any]) -> None:
            kind = event.get("event", "")
            data = event.get("event_data") or {}
            if kind in STEP_EVENTS and tracker is not None:
                step = tracker.task_started(data)
                publisher.progress(ref, step.step, step.total_steps, step.percentage, step.message)
            elif kind in RECORDED_EVENTS:
                res: dict[str, Any] = data["res"] if isinstance(data.get("res"), dict) else {}
                entry = res.get(LEDGER_RESULT) if kind == "runner_on_ok" else None
                if isinstance(entry, dict):
                    publisher.enqueue("ledger", ref, entry)
                summary = {
                    "type": k.MSG_ANSIBLE_EVENT,
                    "event": kind,
                    "task": data.get("task"),
                    "role": data.get("role"),
                    "host": data.get("host"),
                    "changed": bool(res.get("changed")),
                    "duration": data.get("duration"),
                }
                if kind not in {"runner_on_ok", "runner_on_skipped"}:
                    summary["msg"] = str(res.get("msg") or res.get("stderr") or "")[:2000]
                publisher.enqueue("event", ref, summary)

        return sink

    # ------------------------------------------------------------------ rollback

    async def _rollback(self, running: Running) -> str | None:
        """Undo what the run recorded in its ledger, newest first. Returns an error, or None."""
        ref = running.ref
        key = k.ledger_key(ref.task_id)
        raw_entries = await self.redis.lrange(key, 0, -1)
        if not raw_entries:
            return None
        seen: set[tuple[str, str]] = set()
        entries: list[tuple[str, dict[str, Any]]] = []
        for raw in map(as_text, raw_entries):
            try:
                entry = json.loads(raw)
                ident = (str(entry["resource"]), str(entry["id"]))
                undo = entry["undo"]
            except (ValueError, KeyError, TypeError):
                await self.redis.lrem(key, 0, raw)
                continue
            if ident not in seen:
                seen.add(ident)
                entries.append((raw, entry))
            else:
                await self.redis.lrem(key, 1, raw)
        errors = []
        playbook = self.settings.project_dir / "playbooks" / "rollback.yml"
        for index, (raw, entry) in enumerate(reversed(entries), start=1):
            undo = entry["undo"]
            role = str(undo.get("role", ""))
            label = f"{entry['resource']} {entry['id']}"
            if not ROLE_NAME.match(role) or not (self.settings.project_dir / "roles" / role).is_dir():
                errors.append(f"{label}: unknown undo role")
                continue
            self.publisher.progress(ref, index, len(entries), int(index / len(entries) * 100), f"rolling back {label}")
            undo_vars = undo.get("vars") if isinstance(undo.get("vars"), dict) else {}
            result = await self.runner.run(
                playbook=playbook,
                extravars=self._extravars(
                    running,
                    **undo_vars,
                    orchestrator_undo_role=role,
                    orchestrator_undo_tasks_from=str(undo.get("tasks_from") or "absent"),
                ),
                run_id=f"{ref.task_id}-rollback-{index}",
                timeout=300,
                cancel=CancelToken(),
                on_event=self._event_sink(ref, None),
            )
            if result.ok:
                await self.redis.lrem(key, 1, raw)
            else:
                errors.append(f"{label}: {result.failure.message if result.failure else 'failed'}")
        return "; ".join(errors) or None

    # ------------------------------------------------------------------ endings

    async def _finish(
        self,
        running: Running,
        status: TaskStatus,
        error: str | None,
        *,
        resource_status: str | None,
        metadata: dict[str, Any] | None = None,
        total_steps: int | None = None,
    ) -> None:
        ref = running.ref
        if resource_status is not None and not running.started:
            resource_status = None
        written = await self._with_redis_retry(
            lambda: self.publisher.finish(
                ref,
                status=status,
                error=error,
                held_entry=running.held.entry,
                processing_key=self.queue.processing,
                line=running.line,
                resource_status=resource_status,
                verb=running.route.verb,
                metadata=metadata,
                total_steps=total_steps,
            )
        )
        if not written:
            log.error(
                "task %s: no longer held by this worker (lease lost); its final status is left to the "
                "worker that took it over",
                ref.task_id,
            )
            return
        self.completed += 1
        if status is TaskStatus.COMPLETED:
            await self.redis.delete(k.ledger_key(ref.task_id))
        log_fn = log.info if status is TaskStatus.COMPLETED else log.warning
        log_fn(
            "task %s (%s) %s%s",
            ref.task_id,
            ref.type,
            status.value,
            f": {self.redactor.redact(error)}" if error else "",
            extra={"task_id": ref.task_id},
        )

    async def _reject(self, held: Held, rejection: TaskRejected) -> None:
        """Bad input: a failed status naming the field when the body has a usable id, dead-letter otherwise."""
        fields = rejection.fields
        task_id = rejection.task_id
        message = f"invalid task: {rejection.message}"
        if task_id and SAFE_ID.match(task_id):
            claim = await self.queue.claim(task_id, "", {"status": TaskStatus.QUEUED.value, "taken_at": now_iso()})
            if not claim.claimed:
                log.error(
                    "duplicate task id %s with an invalid body dropped (already taken by %s)",
                    task_id,
                    claim.holder or "?",
                )
                await self.queue.drop(held, leave_line=task_id)
                return
            user_id = fields.get("user_id") if USER_ID.match(fields.get("user_id", "")) else None
            task_type = fields.get("type", "")
            resource_type = task_type.split(".", 1)[0] if task_type in {t.value for t in k.TaskType} else None
            ref = TaskRef(
                task_id=task_id,
                user_id=user_id,
                type=task_type or None,
                resource_type=resource_type,
                resource_id=fields.get("resource_id") if SAFE_ID.match(fields.get("resource_id", "")) else None,
            )
            verb = task_type.split(".")[-1] if resource_type else None
            await self._with_redis_retry(
                lambda: self.publisher.finish(
                    ref,
                    status=TaskStatus.FAILED,
                    error=message,
                    held_entry=held.entry,
                    processing_key=self.queue.processing,
                    line=held.line if held.joined_line else None,
                    resource_status=ResourceStatus.FAILED.value if resource_type and ref.resource_id else None,
                    verb=verb,
                )
            )
            log.warning("task %s rejected: %s", task_id, message, extra={"task_id": task_id})
            return
        record = dumps(
            {
                "error": message,
                "at": now_iso(),
                "worker": self.worker_id,
                "bytes": len(held.body),
                "body": held.body[:4096].decode(errors="replace"),
            }
        )
        await self.queue.drop(held, deadletter=self.redactor.redact(record), leave_line=task_id)
        log.error("task without a usable id rejected and dead-lettered: %s", message)

    async def _recover(self, running: Running) -> None:
        """A task adopted from a dead worker: re-queue it, or fail it once it has cost too many workers."""
        ref = running.ref
        status = as_text(await self.redis.hget(k.task_key(ref.task_id), "status"))
        if status in k.FINAL_STATUSES:
            await self.queue.drop(running.held)
            return
        # Only a run that had started counts against the task: a task merely waiting is simply re-queued.
        recoveries = 0
        if status == TaskStatus.RUNNING.value:
            recoveries = int(await self.redis.hincrby(k.task_key(ref.task_id), "recoveries", 1))
        if recoveries > self.settings.max_recoveries:
            running.started = True
            await self._fail(running, TaskStatus.FAILED, f"worker lost {recoveries} times while running this task")
            return
        await self.queue.requeue(running.held, task_id=ref.task_id)
        log.warning("task %s re-queued after its worker was lost", ref.task_id, extra={"task_id": ref.task_id})

    async def _with_redis_retry(self, call: Callable[[], Awaitable[bool]]) -> bool:
        delay = 0.2
        deadline = time.monotonic() + 300
        while True:
            try:
                return await call()
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise
                log.error("cannot reach Redis to write a final status (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # ------------------------------------------------------------------ background loops

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                await self.queue.heartbeat()
                if self._running:
                    ids = list(self._running)
                    pipe = self.redis.pipeline(transaction=False)
                    for task_id in ids:
                        pipe.hget(k.task_key(task_id), k.CANCEL_FIELD)
                    for task_id, flag in zip(ids, await pipe.execute(), strict=True):
                        if flag and task_id in self._running:
                            self._running[task_id].token.set("cancelled by request")
            except (RedisConnectionError, RedisTimeoutError) as exc:
                log.error("heartbeat failed: %s", exc)
            await asyncio.sleep(self.settings.heartbeat_interval)

    async def _renew_loop(self) -> None:
        """Every cert_renew_interval seconds one worker (whoever takes the lock first) runs
        playbooks/certificates.renew.yml, outside the queue; its outcome goes to the log and CERT_RENEW_LAST."""
        interval = self.settings.cert_renew_interval
        if not self.settings.certificates or interval <= 0 or self.burst:
            return
        while not self._stopping:
            try:
                if await self.redis.set(k.CERT_RENEW_LOCK, self.worker_id, nx=True, ex=max(1, int(interval))):
                    await self.renew_certificates()
            except (RedisConnectionError, RedisTimeoutError) as exc:
                log.error("certificate renewal: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_event.wait(), timeout=min(interval, 300.0))

    async def renew_certificates(self) -> RunResult:
        settings = self.settings
        run_id = f"cert-renew-{int(time.time())}-{self.worker_id[-8:]}"
        result = await self.runner.run(
            playbook=settings.playbook_dir / "certificates.renew.yml",
            extravars=self.settings.service_vars(),
            run_id=run_id,
            timeout=self.settings.timeouts.get("certificates.renew", 3600.0),
            cancel=CancelToken(),
            on_event=lambda _event: None,
        )
        summary: dict[Any, Any] = {
            "at": now_iso(),
            "worker": self.worker_id,
            "status": result.status,
            "renewed": json.dumps(result.metadata.get("renewed", [])),
            "failed": json.dumps(result.metadata.get("failed", [])),
            "error": self.redactor.redact(result.failure.message) if result.failure else "",
        }
        await self.redis.hset(k.CERT_RENEW_LAST, mapping=summary)
        if result.ok:
            log.info(
                "certificate renewal: %d renewed of %s",
                len(result.metadata.get("renewed", [])),
                result.metadata.get("certificates", 0),
            )
        else:
            log.error("certificate renewal failed: %s", summary["error"])
        return result

    async def _reap_loop(self) -> None:
        while True:
            try:
                for held in await self.queue.adopt_orphans():
                    self._spawn(self._guarded(held, recovered=True))
            except (RedisConnectionError, RedisTimeoutError) as exc:
                log.error("reaper failed: %s", exc)
            await asyncio.sleep(self.settings.reap_interval)

    async def _listen(self) -> None:
        """Queue wake-ups (keyspace notifications) and cancel requests."""
        db = int(self.redis.connection_pool.connection_kwargs.get("db", 0) or 0)
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                channels = [k.CANCEL_CHANNEL]
                if self._notifications:
                    channels += queue_notification_channels(db)
                await pubsub.subscribe(*channels)
                self._wake.set()  # anything pushed while we were not subscribed
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is None:
                        continue
                    channel = message["channel"].decode()
                    if channel == k.CANCEL_CHANNEL:
                        self._on_cancel_message(message["data"])
                    else:
                        self._wake.set()
            except (RedisConnectionError, RedisTimeoutError) as exc:
                log.error("subscription lost: %s; reconnecting", exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _on_cancel_message(self, data: bytes) -> None:
        try:
            task_id = str(json.loads(data)["task_id"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed cancel request")
            return
        running = self._running.get(task_id)
        if running is not None:
            log.info("cancel requested for task %s", task_id, extra={"task_id": task_id})
            running.token.set("cancelled by request")

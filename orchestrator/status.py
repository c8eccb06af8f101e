"""Status publisher: the task hash, the user's progress channel, the resource status channels, streams.

Every message goes three ways in one pipeline: PUBLISH on its contract channel (fire-and-forget),
XADD to the task's own stream (for `orchestrator watch` and replay) and XADD to the capped global
stream (for a Portal that was not subscribed). Progress is buffered and written in batches by one
writer task, so ansible-runner's event thread never waits on Redis. The final status is written by
one Lua script together with removing the task from the worker's processing list: a task is either
still held (and will be recovered) or finished, exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from orchestrator import constants as k
from orchestrator.constants import TaskStatus
from orchestrator.queue import HSET_ALL
from orchestrator.redact import Redactor

log = logging.getLogger(__name__)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True, kw_only=True)
class TaskRef:
    """Where a task's messages go."""

    task_id: str
    user_id: str | None
    type: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None


def dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, default=str)


FINISH_SCRIPT = (
    HSET_ALL
    + """
-- KEYS: 1 processing list, 2 task hash, 3 line (or ''), 4 task stream, 5 global stream, 6 recent zset
-- ARGV: 1 held entry, 2 hash fields (json), 3 retention s, 4 task stream maxlen, 5 global maxlen,
--       6 finished-at score, then (channel, published message, task-stream copy) triples
if ARGV[1] ~= '' and redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return 0
end
local fields = cjson.decode(ARGV[2])
hset_all(KEYS[2], fields)
if KEYS[3] ~= '' then
  redis.call('LREM', KEYS[3], 0, fields['task_id'] or '')
end
for i = 7, #ARGV, 3 do
  local channel, message, copy = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if channel ~= '' then
    redis.call('PUBLISH', channel, message)
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[5], '*', 'channel', channel, 'data', message)
  end
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 'channel', channel, 'data', copy)
end
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[4], ARGV[3])
redis.call('ZADD', KEYS[6], ARGV[6], fields['task_id'] or '')
return 1
"""
)


class Publisher:
    """Writes progress and status; one per worker process."""

    def __init__(
        self, redis: Redis, *, redactor: Redactor, retention: int, task_stream_maxlen: int, stream_maxlen: int
    ):
        self._redis = redis
        self._redactor = redactor
        self._retention = retention
        self._task_maxlen = task_stream_maxlen
        self._maxlen = stream_maxlen
        self._finish = redis.register_script(FINISH_SCRIPT)
        self._buffer: list[tuple[str, TaskRef, dict[str, Any]]] = []
        self._incoming: deque[tuple[str, TaskRef, dict[str, Any]]] = deque()
        self._pull_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._writer: asyncio.Task[None] | None = None
        self.written = 0
        self.lag_max = 0.0

    # -- buffered messages: enqueue from any thread --

    def enqueue(self, kind: str, ref: TaskRef, message: dict[str, Any]) -> None:
        """kind: 'progress' (hash + channel + streams), 'event' (task stream only), 'ledger'.

        Safe from any thread: appends to a deque and wakes the loop once per batch, not once per
        message, so a burst of Ansible events costs the event loop one wake-up.
        """
        self._incoming.append((kind, ref, message))
        if not self._pull_scheduled:
            self._pull_scheduled = True
            if self._loop is None or threading.get_ident() == self._loop_thread:
                self._pull()
            else:
                self._loop.call_soon_threadsafe(self._pull)

    def _pull(self) -> None:
        """On the loop: move what other threads enqueued into the write buffer."""
        self._pull_scheduled = False  # before draining: a message appended meanwhile schedules another pull
        moved = False
        while self._incoming:
            self._buffer.append(self._incoming.popleft())
            moved = True
        if moved:
            self._idle.clear()
            self._wake.set()

    def progress(
        self, ref: TaskRef, step: int, total: int, percentage: int, message: str, agent: dict[str, Any] | None = None
    ) -> None:
        """A task.progress message; `agent` (agent runs only) says which stream-json line it comes from."""
        body: dict[str, Any] = {
            "type": k.MSG_PROGRESS,
            "task_id": ref.task_id,
            "step": step,
            "total_steps": total,
            "percentage": percentage,
            "message": message,
        }
        if agent is not None:
            body["agent"] = agent
        self.enqueue("progress", ref, body)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="publisher")

    async def drain(self) -> None:
        """Wait until everything enqueued so far (from any thread) is in Redis."""
        self._pull()
        await self._idle.wait()

    async def close(self) -> None:
        await self.drain()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._buffer = self._buffer, []
            if batch:
                try:
                    await self._write(batch)
                except Exception:
                    log.exception("could not write %d progress messages; retrying", len(batch))
                    self._buffer = batch + self._buffer
                    self._wake.set()
                    await asyncio.sleep(0.5)
                    continue
            if not self._buffer:
                self._idle.set()

    async def _write(self, batch: list[tuple[str, TaskRef, dict[str, Any]]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        redact = self._redactor.redact
        for kind, ref, message in batch:
            if kind == "ledger":
                pipe.rpush(k.ledger_key(ref.task_id), dumps(message))
                pipe.expire(k.ledger_key(ref.task_id), self._retention)
                continue
            data = redact(dumps(message))
            if kind == "progress":
                pipe.hset(
                    k.task_key(ref.task_id),
                    mapping={
                        "step": message["step"],
                        "total_steps": message["total_steps"],
                        "message": redact(str(message["message"])),
                        "percentage": message["percentage"],
                        "updated_at": now_iso(),
                    },
                )
                if ref.user_id is not None:
                    channel = k.user_channel(ref.user_id)
                    pipe.publish(channel, data)
                    pipe.xadd(
                        k.EVENTS_STREAM, {"channel": channel, "data": data}, maxlen=self._maxlen, approximate=True
                    )
                else:
                    channel = ""
            else:
                channel = ""
            pipe.xadd(
                k.task_stream(ref.task_id),
                {"channel": channel, "data": data},
                maxlen=self._task_maxlen,
                approximate=True,
            )
        await pipe.execute()
        self.written += len(batch)

    # -- direct writes --

    async def started(self, ref: TaskRef, *, worker_id: str, attempt: int) -> None:
        message = {
            "type": k.MSG_STARTED,
            "task_id": ref.task_id,
            "task_type": ref.type,
            "resource_type": ref.resource_type,
            "resource_id": ref.resource_id,
            "attempt": attempt,
            "timestamp": now_iso(),
        }
        data = self._redactor.redact(dumps(message))
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(
            k.task_key(ref.task_id),
            mapping={
                "status": TaskStatus.RUNNING.value,
                "started_at": now_iso(),
                "worker": worker_id,
                "attempt": attempt,
                "step": 0,
                "percentage": 0,
                "message": "started",
            },
        )
        channel = k.user_channel(ref.user_id) if ref.user_id is not None else ""
        if channel:
            pipe.publish(channel, data)
            pipe.xadd(k.EVENTS_STREAM, {"channel": channel, "data": data}, maxlen=self._maxlen, approximate=True)
        pipe.xadd(
            k.task_stream(ref.task_id), {"channel": channel, "data": data}, maxlen=self._task_maxlen, approximate=True
        )
        await pipe.execute()

    async def finish(
        self,
        ref: TaskRef,
        *,
        status: TaskStatus,
        error: str | None,
        held_entry: bytes | None,
        processing_key: str,
        line: str | None,
        resource_status: str | None = None,
        verb: str | None = None,
        metadata: dict[str, Any] | None = None,
        extra_fields: dict[str, str] | None = None,
        total_steps: int | None = None,
    ) -> bool:
        """Write the one final status. False when the task is no longer held by this worker."""
        await self.drain()
        redact = self._redactor.redact
        error = redact(error) if error else None
        public_metadata = metadata or {}
        safe_metadata = {key: v for key, v in public_metadata.items() if key not in k.PUBLISHED_SECRET_KEYS}
        finished = now_iso()
        fields: dict[str, Any] = {
            "task_id": ref.task_id,
            "status": status.value,
            "finished_at": finished,
            "error": error or "",
            "metadata": redact(dumps(safe_metadata)),
        }
        if ref.type:
            fields["type"] = ref.type
        if ref.user_id is not None:
            fields["user_id"] = ref.user_id
        if ref.resource_id:
            fields["resource_id"] = ref.resource_id
        if status is TaskStatus.COMPLETED:
            steps = total_steps or 1
            fields.update({"step": steps, "total_steps": steps, "percentage": 100, "message": "completed"})
        fields.update(extra_fields or {})
        task_message: dict[str, Any] = {
            "type": k.FINAL_MESSAGES[status],
            "task_id": ref.task_id,
            "status": status.value,
            "error": error,
            "timestamp": finished,
        }
        if status is TaskStatus.COMPLETED:
            task_message.update({"percentage": 100, "metadata": safe_metadata})
        elif safe_metadata:
            task_message["metadata"] = safe_metadata  # what a failed run reported (an agent run's cost, turns)
        user_channel = k.user_channel(ref.user_id) if ref.user_id is not None else ""
        task_text = redact(dumps(task_message))
        triples: list[str] = [user_channel, task_text, task_text]
        if resource_status is not None and ref.resource_type in k.STATUS_CHANNELS:
            # The contract publishes agent_webhook_secret in metadata: everything else is masked.
            published = {
                key: value if key in k.PUBLISHED_SECRET_KEYS else json.loads(redact(dumps(value)))
                for key, value in public_metadata.items()
            }
            status_message: dict[str, Any] = {
                "type": verb,
                "resource_type": ref.resource_type,
                "resource_id": ref.resource_id,
                "status": resource_status,
                "error": error,
                "metadata": published,
                "timestamp": finished,
            }
            # The task's own stream (watch, console) gets a copy without the published secrets; the
            # global stream is the channels' replay and carries exactly what was published.
            masked_metadata = {key: "***" if key in k.PUBLISHED_SECRET_KEYS else v for key, v in published.items()}
            masked = {**status_message, "metadata": masked_metadata}
            triples += [k.STATUS_CHANNELS[ref.resource_type], dumps(status_message), dumps(masked)]
        result = await self._finish(
            keys=[
                processing_key,
                k.task_key(ref.task_id),
                line or "",
                k.task_stream(ref.task_id),
                k.EVENTS_STREAM,
                k.RECENT_TASKS,
            ],
            args=[
                held_entry or b"",
                dumps(fields),
                self._retention,
                self._task_maxlen,
                self._maxlen,
                time.time(),
                *triples,
            ],
        )
        return bool(result)

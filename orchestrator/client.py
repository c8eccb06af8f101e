"""What the Portal does on the wire, as functions: submit, cancel, read status and events.

The CLI uses these; so do tests and benchmarks, so that they push tasks exactly as the Portal would.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from redis import Redis

from orchestrator import constants as k
from orchestrator.constants import TaskStatus
from orchestrator.queue import as_text
from orchestrator.router import ROUTES
from orchestrator.status import now_iso


def submit(
    redis: Redis,
    task_type: str,
    payload: dict[str, Any],
    *,
    user_id: str = "cli",
    resource_id: str | None = None,
    priority: str | None = None,
    task_id: str | None = None,
) -> str:
    """LPUSH a task envelope onto its queue (the Portal's move); also records it as queued."""
    task_id = task_id or str(uuid.uuid4())
    route = ROUTES.get(k.TaskType(task_type)) if task_type in {t.value for t in k.TaskType} else None
    priority = priority or (route.priority if route else "normal")
    envelope = {
        "id": task_id,
        "type": task_type,
        "user_id": user_id,
        "resource_id": resource_id or str(uuid.uuid4()),
        "payload": payload,
        "created_at": time.time(),
    }
    pipe = redis.pipeline(transaction=True)
    pipe.hset(
        k.task_key(task_id),
        mapping={"status": TaskStatus.QUEUED.value, "type": task_type, "user_id": user_id, "queued_at": now_iso()},
    )
    pipe.lpush(k.PRIORITY_QUEUES[priority], json.dumps(envelope))
    pipe.execute()
    return task_id


def cancel(redis: Redis, task_id: str) -> bool:
    """The cancel wire form: set `cancel_requested` on the task hash, then announce it.

    The hash field is the durable part (honoured when the task is taken, or within a heartbeat if a
    worker missed the announcement); the message makes it immediate. False if the task is unknown or
    already final.
    """
    status = as_text(redis.hget(k.task_key(task_id), "status"))
    if not status or status in k.FINAL_STATUSES:
        return False
    redis.hset(k.task_key(task_id), k.CANCEL_FIELD, str(time.time()))
    redis.publish(k.CANCEL_CHANNEL, json.dumps({"task_id": task_id}))
    return True


def status(redis: Redis, task_id: str) -> dict[str, str]:
    raw: dict[bytes, bytes] = redis.hgetall(k.task_key(task_id))  # type: ignore[assignment]
    return {key.decode(): value.decode(errors="replace") for key, value in raw.items()}


def events(redis: Redis, task_id: str, *, follow: bool, block_ms: int = 1000) -> Iterator[dict[str, Any]]:
    """Every message of a task from its stream, from the start; with follow, until the final one."""
    last = "0-0"
    finals = set(k.FINAL_MESSAGES.values())
    while True:
        reply: list[Any] = redis.xread(  # type: ignore[assignment]
            {k.task_stream(task_id): last}, count=500, block=block_ms if follow else None
        )
        if not reply:
            if not follow:
                return
            current = redis.hget(k.task_key(task_id), "status")
            if current is None:
                return
            continue
        for _stream, entries in reply:
            for entry_id, fields in entries:
                last = entry_id.decode()
                message = json.loads(fields[b"data"])
                message["_channel"] = fields.get(b"channel", b"").decode()
                message["_id"] = last
                yield message
                if message.get("type") in finals:
                    return


def workers(redis: Redis) -> list[dict[str, Any]]:
    """Registered workers with the age of their heartbeat (None when the lease expired)."""
    found = []
    now = time.time()
    registered: dict[bytes, bytes] = redis.hgetall(k.WORKERS_HASH)  # type: ignore[assignment]
    for raw_id, info in registered.items():
        worker_id = raw_id.decode()
        beat = as_text(redis.get(k.heartbeat_key(worker_id)))
        record = json.loads(info)
        record["id"] = worker_id
        record["heartbeat_age"] = round(now - float(beat), 3) if beat else None
        record["held"] = redis.llen(k.processing_key(worker_id))
        found.append(record)
    return found

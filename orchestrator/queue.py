"""The reliable queue: taking tasks, leases, per-resource lines, recovery of dead workers' tasks.

Taking is one Lua script that pops the right end of the high queue, else the normal one, and pushes
the raw body onto this worker's processing list in the same step: a kill -9 at any moment leaves the
task either queued or held. A worker's lease is its heartbeat key (TTL); any worker that finds a
registered worker without a heartbeat moves that worker's held tasks to itself, one atomic LMOVE at a
time, and then re-queues or fails each one.

Workers wake on keyspace notifications for the two queue keys (no polling while idle), with a slow
poll as a safety net for a missed notification, and a fast poll when the server refuses CONFIG SET.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from orchestrator import constants as k

log = logging.getLogger(__name__)

DEADLETTER_MAX = 10_000
PRIORITY_PREFIX = {k.QUEUE_HIGH: b"h|", k.QUEUE_NORMAL: b"n|"}
PREFIX_QUEUE = {b"h": k.QUEUE_HIGH, b"n": k.QUEUE_NORMAL}

TAKE_SCRIPT = """
-- KEYS: 1 high, 2 normal, 3 processing. ARGV: 1 line key prefix.
-- Pops the oldest task (high first) onto the processing list and, in the same step, puts its id at the
-- end of its resource's line, so tasks of one resource run in the order they were taken, whichever
-- worker takes them. Returns nil, or {entry ('h|' or 'n|' + body), line key or '', 1 if this take joined
-- the line}. The line key is `<prefix><resource type>:<resource id>`, the resource type being the task
-- type up to its first dot (agent runs: `<prefix>agent:<team>/<workspace>/<sandbox or _workspace>`);
-- orchestrator.queue.line_of computes the same in Python.
local body = redis.call('RPOP', KEYS[1])
local prefix = 'h|'
if not body then
  body = redis.call('RPOP', KEYS[2])
  prefix = 'n|'
end
if not body then
  return nil
end
local entry = prefix .. body
redis.call('LPUSH', KEYS[3], entry)
local line, joined = '', 0
local ok, task = pcall(cjson.decode, body)
if ok and type(task) == 'table' and type(task['type']) == 'string' and type(task['resource_id']) == 'string' then
  local id = task['id'] or task['task_id']
  local kind = string.match(task['type'], '^([^.]+)%.')
  local payload = task['payload']
  if type(id) == 'string' and kind then
    line = ARGV[1] .. kind .. ':' .. task['resource_id']
    -- Agent runs line up by the clone they work in, whatever resource id the Portal gave them: one agent at a
    -- time in a working clone.
    if kind == 'agent' and type(payload) == 'table' and type(payload['team_slug']) == 'string'
        and type(payload['workspace_slug']) == 'string' then
      local sandbox = payload['sandbox_slug']
      if type(sandbox) ~= 'string' then sandbox = '_workspace' end
      line = ARGV[1] .. 'agent:' .. payload['team_slug'] .. '/' .. payload['workspace_slug'] .. '/' .. sandbox
    end
    if not redis.call('LPOS', line, id) then
      redis.call('RPUSH', line, id)
      joined = 1
    end
  end
end
return {entry, line, joined}
"""

# Lua helper shared by the scripts that write several hash fields given as one JSON object.
HSET_ALL = """
local function hset_all(key, fields)
  local flat = {}
  for name, value in pairs(fields) do
    flat[#flat + 1] = name
    flat[#flat + 1] = value
  end
  redis.call('HSET', key, unpack(flat))
end
"""

CLAIM_SCRIPT = (
    HSET_ALL
    + """
-- KEYS: 1 task hash, 2 line. ARGV: 1 worker id, 2 task id, 3 fields (json)
-- Returns {1, cancel flag} when claimed, {0, holder, status} when the id was already taken.
if redis.call('HSETNX', KEYS[1], 'worker', ARGV[1]) == 0 then
  return {0, redis.call('HGET', KEYS[1], 'worker') or '', redis.call('HGET', KEYS[1], 'status') or ''}
end
local fields = cjson.decode(ARGV[3])
hset_all(KEYS[1], fields)
-- A re-queued task keeps its place in its resource's line, so later tasks of that resource wait for it.
if KEYS[2] ~= '' and not redis.call('LPOS', KEYS[2], ARGV[2]) then
  redis.call('RPUSH', KEYS[2], ARGV[2])
end
return {1, redis.call('HGET', KEYS[1], 'cancel_requested') or ''}
"""
)

REQUEUE_SCRIPT = """
-- KEYS: 1 processing, 2 queue, 3 task hash (or ''). ARGV: 1 held entry, 2 raw body
-- Puts a held task back at the front of its queue (it is taken next) and releases its claim. It keeps
-- its place in its resource's line.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return 0
end
redis.call('RPUSH', KEYS[2], ARGV[2])
if KEYS[3] ~= '' then
  if redis.call('HGET', KEYS[3], 'worker') then
    redis.call('HDEL', KEYS[3], 'worker')
  end
  redis.call('HSET', KEYS[3], 'status', 'queued')
end
return 1
"""


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Held:
    """A raw task this worker holds: the processing-list entry, its queue, and the line it joined."""

    entry: bytes
    queue: str
    line: str = ""  # the full line key, '' when the body could not be read at take time
    joined_line: bool = False  # this take added the id to the line (not a re-take or a duplicate)

    @property
    def body(self) -> bytes:
        return self.entry[2:]

    @property
    def priority(self) -> str:
        return "high" if self.queue == k.QUEUE_HIGH else "normal"

    @classmethod
    def from_entry(cls, entry: bytes | str, line: str = "", joined_line: bool = False) -> Held:
        raw = entry.encode("utf-8", "surrogateescape") if isinstance(entry, str) else entry
        return cls(raw, PREFIX_QUEUE.get(raw[:1], k.QUEUE_NORMAL), line, joined_line)


@dataclass(frozen=True)
class Claim:
    claimed: bool
    cancel_requested: bool = False
    holder: str = ""
    status: str = ""


class TaskQueue:
    """One worker's view of the queues."""

    def __init__(self, redis: Redis, *, worker_id: str, lease_ttl: float):
        self.redis = redis
        self.worker_id = worker_id
        self.processing = k.processing_key(worker_id)
        self._lease_ms = int(lease_ttl * 1000)
        self._take = redis.register_script(TAKE_SCRIPT)
        self._claim = redis.register_script(CLAIM_SCRIPT)
        self._requeue = redis.register_script(REQUEUE_SCRIPT)
        self._info = "{}"

    # -- lease --

    async def register(self, info: dict[str, object]) -> None:
        self._info = json.dumps({**info, "registered": time.time()})
        await self.heartbeat()

    async def heartbeat(self) -> None:
        """Renew the lease; re-registers too, in case a reaper took us for dead during a stall."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(k.heartbeat_key(self.worker_id), str(time.time()), px=self._lease_ms)
        pipe.hset(k.WORKERS_HASH, self.worker_id, self._info)
        await pipe.execute()

    async def unregister(self) -> None:
        """Leave cleanly: only when nothing is held any more."""
        if await self.redis.llen(self.processing) == 0:
            pipe = self.redis.pipeline(transaction=True)
            pipe.delete(k.heartbeat_key(self.worker_id))
            pipe.hdel(k.WORKERS_HASH, self.worker_id)
            await pipe.execute()

    # -- taking --

    async def take(self) -> Held | None:
        reply = await self._take(keys=[k.QUEUE_HIGH, k.QUEUE_NORMAL, self.processing], args=[k.line_key("")])
        if reply is None:
            return None
        entry, line, joined = reply
        return Held.from_entry(entry, as_text(line), bool(int(joined)))

    async def claim(self, task_id: str, line: str, fields: dict[str, str]) -> Claim:
        """Take ownership of the task id (once ever); join its resource's line if the take did not."""
        result = await self._claim(
            keys=[k.task_key(task_id), line],
            args=[self.worker_id, task_id, json.dumps(fields)],
        )
        if int(result[0]) == 1:
            return Claim(True, cancel_requested=bool(result[1]))
        return Claim(False, holder=as_text(result[1]), status=as_text(result[2]))

    async def is_head(self, line: str, task_id: str) -> bool:
        head = await self.redis.lindex(line, 0)
        return head is not None and as_text(head) == task_id

    async def requeue(self, held: Held, *, task_id: str | None) -> bool:
        result = await self._requeue(
            keys=[self.processing, held.queue, k.task_key(task_id) if task_id else ""],
            args=[held.entry, held.body],
        )
        return bool(result)

    async def drop(self, held: Held, *, deadletter: str | None = None, leave_line: str | None = None) -> bool:
        """Stop holding a task without a final status (duplicates, bodies with no id), optionally
        dead-lettering a record, and leaving the line under `leave_line` if this take joined it."""
        pipe = self.redis.pipeline(transaction=True)
        if leave_line is not None and held.joined_line and held.line:
            pipe.lrem(held.line, 1, leave_line)
        if deadletter is not None:
            pipe.lpush(k.DEADLETTER_LIST, deadletter)
            pipe.ltrim(k.DEADLETTER_LIST, 0, DEADLETTER_MAX - 1)
        pipe.lrem(self.processing, 1, held.entry)  # type: ignore[arg-type]  # raw bodies are bytes
        return bool((await pipe.execute())[-1])

    async def held(self) -> list[Held]:
        return [Held.from_entry(e) for e in await self.redis.lrange(self.processing, 0, -1)]

    # -- recovery --

    async def adopt_orphans(self) -> list[Held]:
        """Move the held tasks of every worker whose lease expired onto this worker's list."""
        if not await self.redis.set(k.REAPER_LOCK, self.worker_id, nx=True, px=self._lease_ms):
            return []
        adopted: list[Held] = []
        try:
            workers = await self.redis.hkeys(k.WORKERS_HASH)
            for raw in workers:
                other = as_text(raw)
                if other == self.worker_id or await self.redis.exists(k.heartbeat_key(other)):
                    continue
                their_list = k.processing_key(other)
                count = 0
                while True:
                    entry = await self.redis.lmove(their_list, self.processing, "RIGHT", "LEFT")
                    if entry is None:
                        break
                    adopted.append(Held.from_entry(entry))
                    count += 1
                await self.redis.hdel(k.WORKERS_HASH, other)
                log.warning("worker %s lost its lease; adopted %d of its tasks", other, count)
        finally:
            await self.redis.delete(k.REAPER_LOCK)
        return adopted

    # -- wake-ups --

    async def enable_notifications(self) -> bool:
        """Ask Redis for list keyspace events; False when the server refuses (then we poll)."""
        try:
            current = await self.redis.config_get("notify-keyspace-events")
            flags = as_text(current.get("notify-keyspace-events", ""))
            wanted = set(flags) | {"K", "l"}
            if "A" in flags:
                wanted.discard("l")
            if wanted != set(flags):
                await self.redis.config_set("notify-keyspace-events", "".join(sorted(wanted)))
            return True
        except ResponseError as exc:
            log.warning("keyspace notifications unavailable (%s): polling the queues instead", exc)
            return False


def line_of(task_type: str, resource_id: str, payload: dict[str, Any] | None = None) -> str:
    """The line key of a task: what TAKE_SCRIPT computes, for bodies it could not read."""
    kind = task_type.split(".", 1)[0]
    if kind == "agent" and payload is not None:
        team, workspace, sandbox = (payload.get(f) for f in ("team_slug", "workspace_slug", "sandbox_slug"))
        if isinstance(team, str) and isinstance(workspace, str):
            return k.line_key(f"agent:{team}/{workspace}/{sandbox if isinstance(sandbox, str) else '_workspace'}")
    return k.line_key(f"{kind}:{resource_id}")


def queue_notification_channels(db: int) -> list[str]:
    return [f"__keyspace@{db}__:{q}" for q in k.QUEUES]


def as_text(value: object) -> str:
    """A Redis reply (bytes, str or None) as text; raw bodies that are not UTF-8 never come through here."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)

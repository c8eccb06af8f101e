"""Every Redis key, channel, queue name, task type and status string, in one place.

The names marked "contract" are the Portal's wire format from the architecture seed: never change them.
Everything else is the orchestrator's own bookkeeping, under the `orchestrator:` prefix.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

# Queues (contract). The Portal LPUSHes JSON; workers take from the right end, high before normal.
QUEUE_HIGH: Final = "queue:provisioning:high"
QUEUE_NORMAL: Final = "queue:provisioning:normal"
QUEUES: Final = (QUEUE_HIGH, QUEUE_NORMAL)
PRIORITY_QUEUES: Final = {"high": QUEUE_HIGH, "normal": QUEUE_NORMAL}

# Status channels per resource type (contract).
STATUS_CHANNELS: Final = {
    "team": "team:status",
    "workspace": "workspace:status",
    "sandbox": "sandbox:status",
}


class TaskType(StrEnum):
    """The task types of the seed (contract); each is routed to playbooks/<value>.yml."""

    TEAM_PROVISION = "team.provision"
    TEAM_DELETE = "team.delete"
    TEAM_RESTART = "team.restart"
    TEAM_SUSPEND = "team.suspend"
    WORKSPACE_PROVISION = "workspace.provision"
    WORKSPACE_DELETE = "workspace.delete"
    SANDBOX_PROVISION = "sandbox.provision"
    SANDBOX_DELETE = "sandbox.delete"
    SANDBOX_AGENT_RESTART = "sandbox.agent.restart"
    # Ours (issue 9): one on-demand Claude Code run in a sandbox's (or workspace's) working clone.
    AGENT_RUN = "agent.run"


class TaskStatus(StrEnum):
    """The `status` field of the `task:{id}` hash."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATUSES: Final = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


class ResourceStatus(StrEnum):
    """The `status` field of a status-channel message (contract, plus `suspended`)."""

    ACTIVE = "active"
    DELETED = "deleted"
    SUSPENDED = "suspended"
    FAILED = "failed"


# Messages on tasks:{user_id} (contract for task.progress; the others are ours).
MSG_STARTED: Final = "task.started"
MSG_PROGRESS: Final = "task.progress"
MSG_COMPLETED: Final = "task.completed"
MSG_FAILED: Final = "task.failed"
MSG_CANCELLED: Final = "task.cancelled"
FINAL_MESSAGES: Final = {
    TaskStatus.COMPLETED: MSG_COMPLETED,
    TaskStatus.FAILED: MSG_FAILED,
    TaskStatus.CANCELLED: MSG_CANCELLED,
}
# Entries only written to the task's own stream (not published on the Portal's channel).
MSG_ANSIBLE_EVENT: Final = "ansible.event"

# Metadata keys that the contract publishes on the status channel but that are secrets everywhere else.
PUBLISHED_SECRET_KEYS: Final = frozenset({"agent_webhook_secret"})

# Channel on which a cancel request is announced; the durable part is the hash field.
CANCEL_CHANNEL: Final = "orchestrator:cancel"
CANCEL_FIELD: Final = "cancel_requested"
# Set on the task's hash while a failed run is being rolled back: {"status", "error"} of the run. A worker that
# adopts the task after a crash finishes the rollback from the ledger and reports that, instead of running again.
ROLLBACK_FIELD: Final = "rolling_back"

# Where every published message is also appended, capped, for replay by clients that missed it.
EVENTS_STREAM: Final = "orchestrator:events"
WORKERS_HASH: Final = "orchestrator:workers"
DEADLETTER_LIST: Final = "orchestrator:deadletter"
RECENT_TASKS: Final = "orchestrator:tasks:recent"
REAPER_LOCK: Final = "orchestrator:reaper:lock"
# Held by the worker that renews certificates, for one renewal interval; the last renewal's outcome.
CERT_RENEW_LOCK: Final = "orchestrator:certs:renew:lock"
CERT_RENEW_LAST: Final = "orchestrator:certs:renew:last"


def task_key(task_id: str) -> str:
    """The task's hash (contract)."""
    return f"task:{task_id}"


def user_channel(user_id: str) -> str:
    """The user's progress channel (contract)."""
    return f"tasks:{user_id}"


def task_stream(task_id: str) -> str:
    """Every message of one task, in order, for `orchestrator watch` and replay."""
    return f"task:{task_id}:events"


def ledger_key(task_id: str) -> str:
    """What the task's playbook created, in creation order, for rollback."""
    return f"task:{task_id}:ledger"


def line_key(lock_key: str) -> str:
    """The FIFO of task ids waiting for one resource: only the head may run."""
    return f"orchestrator:line:{lock_key}"


def heartbeat_key(worker_id: str) -> str:
    return f"orchestrator:worker:{worker_id}:heartbeat"


def processing_key(worker_id: str) -> str:
    """Raw tasks a worker has taken and not yet finished (reliable-queue pattern)."""
    return f"orchestrator:worker:{worker_id}:processing"

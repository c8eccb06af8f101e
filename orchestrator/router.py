"""Task type -> how to run it: playbook, timeout, status verbs, default priority, rollback.

The one table a newcomer reads to see what each task type does (seed "Task Routing"). Tasks of one
resource (`{resource type}:{resource_id}`) run one at a time in the order they were taken: that line is
joined atomically when a task is taken (orchestrator.queue).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orchestrator.constants import ResourceStatus, TaskType
from orchestrator.models import Task


@dataclass(frozen=True, kw_only=True)
class Route:
    """How one task type runs."""

    type: TaskType
    priority: str  # the seed's table: which queue the Portal uses by default
    timeout: float  # seconds for the whole run, rollback excluded
    verb: str  # `type` of the status-channel message
    success_status: ResourceStatus | None  # None: the task publishes nothing on a status channel
    rollback_on_failure: bool  # provisions undo what they created (seed "Cleanup on Failure")

    @property
    def resource_type(self) -> str:
        return self.type.value.split(".", 1)[0]

    def playbook(self, playbook_dir: Path) -> Path:
        return playbook_dir / f"{self.type.value}.yml"


def _route(task_type: TaskType, priority: str, timeout: float, verb: str, status: ResourceStatus) -> Route:
    return Route(
        type=task_type,
        priority=priority,
        timeout=timeout,
        verb=verb,
        success_status=status,
        rollback_on_failure=verb == "provision",
    )


ROUTES: dict[TaskType, Route] = {
    r.type: r
    for r in (
        _route(TaskType.TEAM_PROVISION, "high", 900, "provision", ResourceStatus.ACTIVE),
        _route(TaskType.TEAM_DELETE, "normal", 600, "delete", ResourceStatus.DELETED),
        _route(TaskType.TEAM_RESTART, "high", 300, "restart", ResourceStatus.ACTIVE),
        _route(TaskType.TEAM_SUSPEND, "normal", 300, "suspend", ResourceStatus.SUSPENDED),
        _route(TaskType.WORKSPACE_PROVISION, "high", 1800, "provision", ResourceStatus.ACTIVE),
        _route(TaskType.WORKSPACE_DELETE, "normal", 900, "delete", ResourceStatus.DELETED),
        _route(TaskType.SANDBOX_PROVISION, "high", 1200, "provision", ResourceStatus.ACTIVE),
        _route(TaskType.SANDBOX_DELETE, "normal", 600, "delete", ResourceStatus.DELETED),
        _route(TaskType.SANDBOX_AGENT_RESTART, "high", 300, "restart", ResourceStatus.ACTIVE),
        # An agent run changes no resource's status and is never retried (it is not idempotent); its timeout is
        # the agent's own plus a margin (orchestrator.agents), this is the ceiling.
        Route(
            type=TaskType.AGENT_RUN,
            priority="high",
            timeout=3600 + 120,
            verb="run",
            success_status=None,
            rollback_on_failure=False,
        ),
    )
}


def route_for(task: Task) -> Route:
    return ROUTES[task.type]

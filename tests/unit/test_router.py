"""Every seed task type is routed to its playbook, with the seed's priority and status words."""

from __future__ import annotations

from orchestrator.config import PROJECT_ROOT
from orchestrator.constants import STATUS_CHANNELS, ResourceStatus, TaskType
from orchestrator.queue import line_of
from orchestrator.router import ROUTES

SEED_PRIORITY = {
    "team.provision": "high",
    "team.delete": "normal",
    "team.restart": "high",
    "team.suspend": "normal",
    "workspace.provision": "high",
    "workspace.delete": "normal",
    "sandbox.provision": "high",
    "sandbox.delete": "normal",
    "sandbox.agent.restart": "high",
    "agent.run": "high",  # ours (issue 9)
}


def test_every_type_is_routed_to_an_existing_playbook() -> None:
    assert set(ROUTES) == set(TaskType)
    for task_type, route in ROUTES.items():
        assert route.playbook(PROJECT_ROOT / "playbooks").is_file(), task_type
        assert route.priority == SEED_PRIORITY[task_type.value]
        # An agent run changes no resource: it publishes on tasks:{user_id} only.
        assert route.resource_type in STATUS_CHANNELS or route.success_status is None
        assert route.timeout > 0


def test_status_words() -> None:
    assert ROUTES[TaskType.TEAM_SUSPEND].success_status is ResourceStatus.SUSPENDED
    assert ROUTES[TaskType.TEAM_DELETE].success_status is ResourceStatus.DELETED
    assert {r.verb for r in ROUTES.values()} == {"provision", "delete", "restart", "suspend", "run"}
    assert ROUTES[TaskType.AGENT_RUN].success_status is None
    assert [t.value for t, r in ROUTES.items() if r.rollback_on_failure] == [
        "team.provision",
        "workspace.provision",
        "sandbox.provision",
    ]


def test_line_keys_group_by_resource() -> None:
    assert line_of("team.provision", "r1") == line_of("team.delete", "r1") == "orchestrator:line:team:r1"
    assert line_of("sandbox.agent.restart", "r1") == "orchestrator:line:sandbox:r1"
    # Agent runs line up by their clone (one agent at a time in it), whatever their resource id.
    run = {"team_slug": "a", "workspace_slug": "w", "sandbox_slug": "s"}
    assert line_of("agent.run", "card-1", run) == line_of("agent.run", "card-2", run) == "orchestrator:line:agent:a/w/s"
    assert (
        line_of("agent.run", "c", {"team_slug": "a", "workspace_slug": "w"}) == "orchestrator:line:agent:a/w/_workspace"
    )

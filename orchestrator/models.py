"""Typed task envelopes and payloads, validated at the door.

The Portal pushes a JSON envelope `{"id", "type", "user_id", "resource_id", "payload"}` (the seed's
`task["type"]`, plus what progress and status messages need). Each task type has its own payload model;
`schemas/` holds the JSON Schema of every type, generated from these models (`orchestrator schemas`).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from orchestrator.constants import TaskType
from orchestrator.profiles import AGENT_TYPES, PROFILES

DNS_LABEL = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
# Ids end up in Redis key names and file names: keep them to a safe alphabet.
SAFE_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
USER_ID = r"^[^\s\x00-\x1f]{1,128}$"

Slug = Annotated[
    str,
    StringConstraints(pattern=DNS_LABEL, min_length=1, max_length=63),
    Field(description="A DNS label: lowercase letters, digits and '-', 1-63 characters, no leading/trailing '-'."),
]
SafeId = Annotated[str, StringConstraints(pattern=SAFE_ID), Field(description="1-128 of A-Z a-z 0-9 . _ : -")]
GIT_REF = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$"


def _check_git_ref(value: str) -> str:
    if ".." in value or "//" in value or value.endswith((".", "/", ".lock")):
        raise ValueError("must be a valid git branch name (no '..', '//', or trailing '.', '/', '.lock')")
    return value


GitRef = Annotated[
    str,
    StringConstraints(pattern=GIT_REF),
    AfterValidator(_check_git_ref),
    Field(description="A git branch name: letters, digits, '.', '_', '-', '/'."),
]
RepoName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9-]{1,39}/[A-Za-z0-9._-]{1,100}$"),
    Field(description="owner/name of a GitHub repository."),
]


class Payload(BaseModel):
    """Base of every payload: unknown fields are an error, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TeamPayload(Payload):
    team_slug: Slug


class WorkspacePayload(Payload):
    team_slug: Slug
    workspace_slug: Slug


class WorkspaceProvisionPayload(WorkspacePayload):
    template_repo: RepoName | None = None
    display_name: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None


class SandboxPayload(Payload):
    team_slug: Slug
    workspace_slug: Slug
    sandbox_slug: Slug


class SandboxProvisionPayload(SandboxPayload):
    branch: GitRef | None = None
    source_branch: GitRef = "main"


# A Claude Code tool rule: a tool name, optionally with a specifier in parentheses ("Bash(git diff:*)").
TOOL_RULE = r"^[A-Za-z][A-Za-z0-9_]{0,63}(\([^()\x00-\x1f]{1,200}\))?$"
ToolRule = Annotated[
    str,
    StringConstraints(pattern=TOOL_RULE),
    Field(description="A tool name (Read, Bash, ...), optionally with a rule in parentheses: Bash(git diff:*)."),
]


def _check_profile(value: str | None) -> str | None:
    if value is not None and value not in PROFILES:
        raise ValueError(f"must be one of {', '.join(PROFILES)}")
    return value


def _check_agent_type(value: str) -> str:
    if value not in AGENT_TYPES:
        raise ValueError(f"must be one of {', '.join(AGENT_TYPES)}")
    return value


class AgentRunPayload(Payload):
    """agent.run: a Claude Code run in the sandbox's working clone (the workspace's without sandbox_slug)."""

    team_slug: Slug
    workspace_slug: Slug
    sandbox_slug: Slug | None = None
    prompt: Annotated[str, StringConstraints(min_length=1, max_length=100_000)] = Field(
        description="What the agent is asked; data, delivered to the CLI on standard input byte for byte."
    )
    agent_type: Annotated[str, AfterValidator(_check_agent_type)] = Field(
        default="developer", description=f"One of {', '.join(AGENT_TYPES)}."
    )
    tool_profile: Annotated[str | None, AfterValidator(_check_profile)] = Field(
        default=None, description=f"One of {', '.join(PROFILES)} (default: the agent type's)."
    )
    allowed_tools: Annotated[list[ToolRule], Field(min_length=1, max_length=64)] | None = Field(
        default=None, description="Explicit tool rules instead of a profile."
    )
    timeout: Annotated[int, Field(ge=10, le=24 * 3600)] | None = Field(
        default=None, description="Seconds before the run is stopped (default: the agent type's)."
    )
    max_turns: Annotated[int, Field(ge=1, le=1000)] | None = None
    model: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\[\]-]{0,99}$")] | None = None

    @model_validator(mode="after")
    def _one_tool_choice(self) -> AgentRunPayload:
        if self.tool_profile is not None and self.allowed_tools is not None:
            raise ValueError("give tool_profile or allowed_tools, not both")
        return self


PAYLOADS: dict[TaskType, type[Payload]] = {
    TaskType.TEAM_PROVISION: TeamPayload,
    TaskType.TEAM_DELETE: TeamPayload,
    TaskType.TEAM_RESTART: TeamPayload,
    TaskType.TEAM_SUSPEND: TeamPayload,
    TaskType.WORKSPACE_PROVISION: WorkspaceProvisionPayload,
    TaskType.WORKSPACE_DELETE: WorkspacePayload,
    TaskType.SANDBOX_PROVISION: SandboxProvisionPayload,
    TaskType.SANDBOX_DELETE: SandboxPayload,
    TaskType.SANDBOX_AGENT_RESTART: SandboxPayload,
    TaskType.AGENT_RUN: AgentRunPayload,
}


class Envelope(BaseModel):
    """The task as the Portal pushes it. `task_id` is accepted as an alias of `id`."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    id: SafeId = Field(validation_alias="task_id", description="Task id (`task_id` accepted too).")
    type: TaskType
    user_id: Annotated[str, StringConstraints(pattern=USER_ID)]
    resource_id: SafeId
    payload: dict[str, Any]
    priority: Literal["high", "normal"] | None = Field(default=None, description="Informational only.")
    created_at: str | float | None = Field(default=None, description="When the Portal created the task.")

    @property
    def resource_type(self) -> str:
        return self.type.value.split(".", 1)[0]


class Task(BaseModel):
    """A validated task: the envelope with its payload parsed into the type's model."""

    model_config = ConfigDict(frozen=True)

    envelope: Envelope
    payload: Payload

    @property
    def id(self) -> str:
        return self.envelope.id

    @property
    def type(self) -> TaskType:
        return self.envelope.type


class TaskRejected(Exception):
    """A task body that cannot run; `message` is safe to publish (it never echoes the input)."""

    def __init__(self, message: str, *, task_id: str | None = None, fields: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.task_id = task_id
        self.fields = fields or {}


def _describe(error: ValidationError, prefix: str = "") -> str:
    parts = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in item["loc"]) or "(body)"
        message = item["msg"]
        if item["type"] == "string_pattern_mismatch":
            message = "invalid value: " + _PATTERN_HELP.get(str(item.get("ctx", {}).get("pattern")), message)
        elif item["type"] == "extra_forbidden":
            message = "unknown field"
        parts.append(f"{prefix}{where}: {message}")
    return "; ".join(parts)


_PATTERN_HELP = {
    DNS_LABEL: "must be a DNS label (lowercase letters, digits and '-', 1-63 characters, "
    "not starting or ending with '-')",
    GIT_REF: "must be a git branch name of letters, digits, '.', '_', '-' and '/'",
    USER_ID: "must be 1-128 characters without spaces or control characters",
    SAFE_ID: "must be 1-128 characters of letters, digits, '.', '_', ':' or '-'",
    TOOL_RULE: "must be a tool name (letters, digits, '_'), optionally with a rule in parentheses",
}


def _salvage(raw: object) -> dict[str, Any]:
    """What can be trusted of a rejected body to address the failure (id, user, resource)."""
    if not isinstance(raw, dict):
        return {}
    fields = {}
    for name, value in (
        ("id", raw.get("id", raw.get("task_id"))),
        ("user_id", raw.get("user_id")),
        ("resource_id", raw.get("resource_id")),
        ("type", raw.get("type")),
    ):
        if isinstance(value, str):
            fields[name] = value
    return fields


def parse_task(body: bytes, *, max_bytes: int) -> Task:
    """Parse and validate one raw queue entry, or raise TaskRejected with a message naming the field."""
    if len(body) > max_bytes:
        raise TaskRejected(f"task body is {len(body)} bytes, more than the limit of {max_bytes}")
    try:
        raw = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TaskRejected(
            f"task body is not valid JSON: {exc.__class__.__name__} at position "
            f"{getattr(exc, 'pos', getattr(exc, 'start', '?'))}"
        ) from None
    if not isinstance(raw, dict):
        raise TaskRejected(f"task body must be a JSON object, not {type(raw).__name__}")
    salvage = _salvage(raw)
    try:
        envelope = Envelope.model_validate(raw)
    except ValidationError as exc:
        raise TaskRejected(_describe(exc), task_id=salvage.get("id"), fields=salvage) from None
    try:
        payload = PAYLOADS[envelope.type].model_validate(envelope.payload)
    except ValidationError as exc:
        raise TaskRejected(_describe(exc, "payload."), task_id=envelope.id, fields=salvage) from None
    return Task(envelope=envelope, payload=payload)


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of every task type's full envelope, keyed by type."""
    schemas: dict[str, dict[str, Any]] = {}
    envelope = Envelope.model_json_schema(by_alias=False)
    for task_type, model in PAYLOADS.items():
        schema = json.loads(json.dumps(envelope))
        payload = model.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["title"] = f"{task_type.value} task"
        schema["properties"]["type"] = {"const": task_type.value, "title": "Type"}
        schema["properties"]["payload"] = payload
        schema.pop("$defs", None)
        schemas[task_type.value] = schema
    return schemas

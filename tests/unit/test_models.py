"""Validation at the door: every bad input names its field; schemas match the models."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from orchestrator.constants import TaskType
from orchestrator.models import Task, TaskRejected, json_schemas, parse_task

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def body(**overrides: object) -> bytes:
    task: dict[str, object] = {
        "id": "t-1",
        "type": "team.provision",
        "user_id": "u-1",
        "resource_id": "r-1",
        "payload": {"team_slug": "acme"},
    }
    task.update(overrides)
    return json.dumps({key: value for key, value in task.items() if value is not None}).encode()


def reject(raw: bytes, max_bytes: int = 65536) -> TaskRejected:
    with pytest.raises(TaskRejected) as caught:
        parse_task(raw, max_bytes=max_bytes)
    return caught.value


def test_valid_task() -> None:
    task = parse_task(body(), max_bytes=65536)
    assert isinstance(task, Task)
    assert task.id == "t-1" and task.type is TaskType.TEAM_PROVISION
    assert task.envelope.resource_type == "team"


def test_task_id_alias() -> None:
    raw = json.loads(body())
    raw["task_id"] = raw.pop("id")
    assert parse_task(json.dumps(raw).encode(), max_bytes=65536).id == "t-1"
    raw["id"] = "t-2"
    assert "unknown field" in reject(json.dumps(raw).encode()).message


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1]", "must be a JSON object, not list"),
        (b"x" * 70000, "more than the limit of 65536"),
        (body(type="team.nope"), "type: Input should be"),
        (body(user_id=None), "user_id: Field required"),
        (body(user_id="has space"), "user_id: invalid value: must be 1-128 characters without spaces"),
        (body(resource_id="../etc"), "resource_id: invalid value: must be 1-128 characters"),
        (body(id="a" * 200), "id: invalid value"),
        (body(payload={"team_slug": "Acme"}), "payload.team_slug: invalid value: must be a DNS label"),
        (body(payload={"team_slug": "-acme"}), "payload.team_slug: invalid value"),
        (body(payload={"team_slug": "a" * 64}), "payload.team_slug: String should have at most 63 characters"),
        (body(payload={"team_slug": "{{ 7*7 }}"}), "payload.team_slug: invalid value"),
        (body(payload={"team_slug": "$(id)"}), "payload.team_slug: invalid value"),
        (body(payload={"team_slug": "acme", "x": 1}), "payload.x: unknown field"),
        (body(payload={}), "payload.team_slug: Field required"),
        (body(extra=1), "extra: unknown field"),
        (
            body(
                type="sandbox.provision",
                payload={"team_slug": "a", "workspace_slug": "b", "sandbox_slug": "c", "branch": "feature/../x"},
            ),
            "payload.branch: Value error",
        ),
    ],
)
def test_rejections_name_the_field(raw: bytes, message: str) -> None:
    rejected = reject(raw)
    assert message in rejected.message, rejected.message


def test_rejection_never_echoes_the_input() -> None:
    rejected = reject(body(payload={"team_slug": "{{ lookup('pipe', 'id') }}"}))
    assert "lookup" not in rejected.message
    assert rejected.task_id == "t-1"
    assert rejected.fields["user_id"] == "u-1"


def test_committed_schemas_are_current() -> None:
    generated = json_schemas()
    assert sorted(p.stem for p in SCHEMAS.glob("*.json")) == sorted(generated)
    for name, schema in generated.items():
        assert json.loads((SCHEMAS / f"{name}.json").read_text()) == schema


@pytest.mark.parametrize("task_type", [t.value for t in TaskType])
def test_schemas_agree_with_the_models(task_type: str) -> None:
    schema = json_schemas()[task_type]
    jsonschema.Draft202012Validator.check_schema(schema)
    payload = {"team_slug": "acme", "workspace_slug": "web", "sandbox_slug": "s1", "prompt": "hi"}
    model_fields = {
        "team": {"team_slug"},
        "workspace": {"team_slug", "workspace_slug"},
        "sandbox": {"team_slug", "workspace_slug", "sandbox_slug"},
        "agent": {"team_slug", "workspace_slug", "sandbox_slug", "prompt"},
    }[task_type.split(".", maxsplit=1)[0]]
    good = json.loads(body(type=task_type, payload={key: payload[key] for key in model_fields}))
    jsonschema.validate(good, schema)
    parse_task(json.dumps(good).encode(), max_bytes=65536)
    bad = dict(good, payload={**good["payload"], "team_slug": "Not_A_Label"})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    with pytest.raises(TaskRejected):
        parse_task(json.dumps(bad).encode(), max_bytes=65536)

"""Extra vars are data: Jinja in user input is never evaluated, and never reaches a command line."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import PROJECT_ROOT
from orchestrator.runner import CancelToken, PlaybookRunner, unsafe_vars_yaml
from tests.conftest import FIXTURES

pytestmark = pytest.mark.integration

HOSTILE = [
    "{{ lookup('pipe', 'touch PWNED') }}",
    "{% for x in range(3) %}{{ x }}{% endfor %}",
    "$(touch PWNED) `touch PWNED` ; touch PWNED",
    "quote ' double \" backslash \\ newline \n tab \t emoji 🎉",
    "{{ 7*7 }}",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_strings_arrive_byte_for_byte(tmp_path: Path, value: str) -> None:
    out = tmp_path / "out.txt"
    events: list[dict[str, Any]] = []
    runner = PlaybookRunner(
        project_dir=PROJECT_ROOT,
        runs_dir=tmp_path / "runs",
        env={"ANSIBLE_CONFIG": str(PROJECT_ROOT / "ansible.cfg")},
        kill_grace=1,
    )
    result = asyncio.run(
        runner.run(
            playbook=FIXTURES / "playbooks" / "unsafe.yml",
            extravars={"message": value, "out_file": str(out)},
            run_id="safety-1",
            timeout=120,
            cancel=CancelToken(),
            on_event=events.append,
        )
    )
    assert result.ok, result.failure
    assert out.read_text() == value
    assert not (tmp_path / "PWNED").exists() and not (PROJECT_ROOT / "PWNED").exists()
    # The private data dir is gone, and nothing carried the value on a command line.
    assert list((tmp_path / "runs").iterdir()) == []
    assert events and all(value not in str(e.get("event_data", {}).get("cmd", "")) for e in events)


def test_vars_file_tags_every_string_unsafe() -> None:
    text = unsafe_vars_yaml({"a": "x", "nested": {"b": ["y", 1, True]}})
    assert text.count("!unsafe") == 2
    assert "1" in text and "true" in text

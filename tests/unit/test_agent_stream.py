"""The translation of Claude Code's stream-json lines into progress messages, checked against the contract notes'
example lines (../shared/contracts/claude-stream-json.md), and the seed's ClaudeCodeRunner table lookups."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.agents import ClaudeCodeRunner, StreamFollower, describe
from orchestrator.config import PROJECT_ROOT, Settings
from orchestrator.profiles import AGENT_TYPES, PROFILES
from orchestrator.runner import CancelToken, PlaybookRunner, RunResult

CONTRACT = PROJECT_ROOT.parent / "shared" / "contracts" / "claude-stream-json.md"


def contract_examples() -> list[dict[str, Any]]:
    """The example lines of section 3 of the contract notes."""
    text = CONTRACT.read_text()
    section = text.split("## 3. Example lines", 1)[1].split("## 4.", 1)[0]
    return [json.loads(line) for line in section.splitlines() if line.startswith('{"type"')]


def test_every_example_line_of_the_contract_becomes_a_clear_message() -> None:
    examples = contract_examples()
    assert [line["type"] for line in examples] == ["system", "assistant", "user", "result", "result"]
    messages = [describe(line) for line in examples]
    assert messages[0] == [
        (
            "agent started: model claude-sonnet-4-5, 4 tools, permission mode acceptEdits",
            {"type": "system", "subtype": "init", "session_id": "7d0c5a52-1f0e-4c1e-9a55-2b8f2f3f9b10"},
        )
    ]
    assert messages[1] == [
        ("tool Bash: git status --short", {"type": "assistant", "block": "tool_use", "tool": "Bash"})
    ]
    assert messages[2] == [
        ("tool result (ok): M README.md", {"type": "user", "block": "tool_result", "is_error": False})
    ]
    assert messages[3] == [
        (
            "result: success (success), 2 turns, 5.2s, $0.0123",
            {"type": "result", "subtype": "success", "is_error": False},
        )
    ]
    assert messages[4][0][0] == "result: error (error_max_turns), 4 turns, 9.1s, $0.0310"
    assert messages[4][0][1]["is_error"] is True


def test_other_lines_of_the_contract() -> None:
    retry = {"type": "system", "subtype": "api_retry", "attempt": 2, "max_retries": 10, "error_status": 529}
    assert describe(retry)[0][0] == "API call failed (529), retry 2 of 10"
    denied = {"type": "system", "subtype": "permission_denied", "tool_name": "Bash", "tool_use_id": "t"}
    assert describe(denied) == [
        ("permission denied: Bash", {"type": "system", "subtype": "permission_denied", "tool": "Bash"})
    ]
    synthetic = {
        "type": "assistant",
        "error": "invalid_request",
        "message": {"model": "<synthetic>", "content": [{"type": "text", "text": "API Error: 400 refused"}]},
    }
    assert [text for text, _ in describe(synthetic)] == [
        "API error: invalid_request",
        "assistant: API Error: 400 refused",
    ]
    both = {
        "type": "assistant",
        "message": {
            "content": [
                {"type": "text", "text": "Writing   the\nnotes."},
                {"type": "tool_use", "name": "Write", "input": {"file_path": "/w/NOTES.md", "content": "x" * 5000}},
                {"type": "thinking", "thinking": "..."},
            ]
        },
    }
    assert [text for text, _ in describe(both)] == [
        "assistant: Writing the notes.",
        "tool Write: /w/NOTES.md",
        "assistant is thinking",
    ]
    failed = {
        "type": "user",
        "message": {
            "content": [{"type": "tool_result", "is_error": True, "content": [{"type": "text", "text": "no"}]}]
        },
    }
    assert describe(failed)[0][0] == "tool result (error): no"
    # Unknown types and subtypes are named, never dropped and never an error: the union grows between releases.
    assert describe({"type": "rate_limit_event"}) == [("rate_limit_event", {"type": "rate_limit_event"})]
    assert describe({"type": "system", "subtype": "compact_boundary"})[0][0] == "system/compact_boundary"
    long_text = {"type": "assistant", "message": {"content": [{"type": "text", "text": "y" * 1000}]}}
    assert len(describe(long_text)[0][0]) <= len("assistant: ") + 300


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["system", "assistant", "user", "result", "stream_event", "x"]),
    subtype=st.one_of(st.none(), st.sampled_from(["init", "api_retry", "permission_denied", "success"])),
    fields=st.dictionaries(
        st.sampled_from(["message", "tools", "model", "error", "is_error", "total_cost_usd", "num_turns"]),
        json_values,
        max_size=5,
    ),
)
def test_describe_never_fails_on_odd_lines(kind: str, subtype: str | None, fields: dict[str, Any]) -> None:
    line: dict[str, Any] = {"type": kind, **fields}
    if subtype is not None:
        line["subtype"] = subtype
    out = describe(line)
    assert out and all(isinstance(text, str) and text for text, _ in out)


def test_one_definition_of_the_profiles_for_the_role_and_the_queue() -> None:
    role_vars = yaml.safe_load((PROJECT_ROOT / "roles" / "claude_code" / "vars" / "main.yml").read_text())
    assert role_vars["claude_code_profiles"] == PROFILES
    assert role_vars["claude_code_agent_types"] == AGENT_TYPES
    # The seed's table.
    runner = ClaudeCodeRunner(
        Settings(), PlaybookRunner(project_dir=PROJECT_ROOT, runs_dir=Path("/nonexistent"), env={}, kill_grace=1)
    )
    assert runner.get_tools_for_profile("readonly") == ["Read", "Glob", "Grep"]
    assert runner.get_tools_for_profile("developer") == ["Read", "Write", "Edit", "Glob", "Grep", "Bash"]
    assert {"Task", "WebFetch"} <= set(runner.get_tools_for_profile("full-access"))
    assert runner.get_tools_for_agent("reviewer") == runner.get_tools_for_profile("readonly")
    assert runner.get_timeout_for_agent("developer") == 1800
    with pytest.raises(ValueError, match="unknown tool profile"):
        runner.get_tools_for_profile("root")
    with pytest.raises(ValueError, match="unknown agent type"):
        runner.get_timeout_for_agent("wizard")
    # readonly removes every tool that writes; every profile's tools exist in no other category.
    assert {"Write", "Edit", "Bash"} <= set(PROFILES["readonly"]["disallowed_tools"])
    for profile in PROFILES.values():
        assert not set(profile["allowed_tools"]) & set(profile["disallowed_tools"])


def test_outcome_of_a_run() -> None:
    token = CancelToken()
    meta = {"session_id": "s", "cost_usd": "0.25", "num_turns": "3", "duration_ms": "1200", "result": "ok", "lines": 9}
    done = ClaudeCodeRunner.outcome(RunResult("successful", 0, metadata=meta), None, token)
    assert done.success and done.status == "completed" and done.cost_usd == 0.25 and done.num_turns == 3
    assert done.duration_ms == 1200 and done.lines == 9 and done.error is None
    token.set("cancelled by request")
    cancelled = ClaudeCodeRunner.outcome(RunResult("canceled", None), None, token)
    assert cancelled.status == "cancelled" and cancelled.error == "cancelled by request" and not cancelled.success
    follower = StreamFollower(Settings(), "d", "s", lambda *_: None, CancelToken())
    follower.lines = 4
    failed = ClaudeCodeRunner.outcome(RunResult("failed", 2), follower, CancelToken())
    assert failed.status == "failed" and failed.lines == 4 and failed.cost_usd is None

"""The local Anthropic Messages API stand-in (`python -m devservices.anthropic`) over plain HTTP: the server-sent
event sequence and its shapes for every script (event order, block indices, stop reasons, tool input JSON split
over several `input_json_delta` chunks), the JSON (non-streaming) form, errors, the API key check and the control
API. Request bodies imitate what Claude Code 2.1.330 sends (checked against the real CLI; see the README): the
prompt as the last text block of the first user message after `<system-reminder>` blocks, and a `system`-role
message last that names the working directory. The real CLI is driven by the integration tests, not here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devservices.anthropic import scripts
from tests.conftest import ROOT, free_port
from tests.contract.conftest import Reply, wait_until_up

pytestmark = pytest.mark.integration

API_KEY = "sk-ant-contract-test-key-0123456789"
MODEL = "claude-opus-5-5"
CWD = "/srv/work/ws 42"
HOSTILE = "say \"hi\" 'there' $(id) `uname` {{ 7*7 }} ${HOME} back\\slash\ttab 🎉 ünïcode\nsecond line\r\n\n"
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
REMINDERS = [
    "<system-reminder>\nAs you answer the user's questions, you can use the following context:\n# gitStatus\n"
    "Current branch: main\n</system-reminder>",
    "<system-reminder>\nAttribution for git commits ...\n</system-reminder>\n",
]
TOOLS = ["Agent", "Bash", "Edit", "Glob", "Grep", "Read", "Write"]


@dataclass
class Anthropic:
    base: str
    log_path: Path
    process: subprocess.Popen[bytes]

    def call(
        self, method: str, path: str, body: Any = None, *, key: str | None = API_KEY, raw: bytes | None = None
    ) -> Reply:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, method=method, data=data)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if key is not None:
            request.add_header("x-api-key", key)
        request.add_header("anthropic-version", "2023-06-01")
        try:
            with OPENER.open(request, timeout=10) as response:
                return Reply(method, path, response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as exc:
            return Reply(method, path, exc.code, dict(exc.headers), exc.read())

    def messages(self, body: dict[str, Any], **kwargs: Any) -> Reply:
        return self.call("POST", "/v1/messages?beta=true", body, **kwargs)

    def recorded(self) -> list[dict[str, Any]]:
        reply = self.call("GET", "/_control/requests", key=None)
        assert reply.status == 200
        records: list[dict[str, Any]] = reply.json()
        return records

    def reset(self) -> None:
        assert self.call("POST", "/_control/reset", key=None).status == 200

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(10)


def start_anthropic(tmp: Path) -> Anthropic:
    """`python -m devservices.anthropic` on a free loopback port, the key in a file; returns once it answers."""
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    key_file = tmp / "api-key"
    key_file.write_text(API_KEY + "\n")
    key_file.chmod(0o600)
    log_path = tmp / f"anthropic-{port}.log"
    argv = ["--host", "127.0.0.1", "--port", str(port), "--api-key-file", str(key_file)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "devservices.anthropic", *argv], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )
    server = Anthropic(f"http://127.0.0.1:{port}", log_path, process)
    wait_until_up("Anthropic API", lambda: server.call("GET", "/", key=None), process, log_path)
    return server


@pytest.fixture(scope="module")
def anthropic_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anthropic]:
    server = start_anthropic(tmp_path_factory.mktemp("anthropic"))
    yield server
    server.stop()


@pytest.fixture
def anthropic(anthropic_server: Anthropic) -> Iterator[Anthropic]:
    anthropic_server.reset()
    yield anthropic_server
    anthropic_server.reset()


# -- request bodies like Claude Code's ------------------------------------------------------------------------------


def cli_body(prompt: str, history: list[dict[str, Any]] | None = None, *, stream: bool = True) -> dict[str, Any]:
    """A request as Claude Code 2.1.330 shapes it: reminders then the prompt in the first user message, the
    conversation so far, and a system-role message last with the working directory."""
    first = {
        "role": "user",
        "content": [*({"type": "text", "text": r} for r in REMINDERS), {"type": "text", "text": prompt}],
    }
    env = (
        "# Environment\nYou have been invoked in the following environment: \n"
        f" - Primary working directory: {CWD}\n - Is a git repository: true\n - Platform: linux\n"
    )
    return {
        "model": MODEL,
        "messages": [first, *(history or []), {"role": "system", "content": [{"type": "text", "text": env}]}],
        "system": [{"type": "text", "text": "You are a Claude agent, built on Anthropic's Claude Agent SDK."}],
        "tools": [{"name": name, "description": name, "input_schema": {"type": "object"}} for name in TOOLS],
        "max_tokens": 128000,
        "metadata": {"user_id": "{}"},
        "stream": stream,
    }


def tool_result(message: dict[str, Any], content: str = "ok", *, is_error: bool = False) -> dict[str, Any]:
    """The user message the CLI sends back after `message`'s tool calls."""
    results = [
        {"type": "tool_result", "tool_use_id": b["id"], "content": content, **({"is_error": True} if is_error else {})}
        for b in message["content"]
        if b["type"] == "tool_use"
    ]
    assert results, "the message has no tool_use block"
    return {"role": "user", "content": results}


# -- server-sent events ------------------------------------------------------------------------------------------------


def parse_sse(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Frames `event: <type>\\ndata: <json>\\n\\n`, each event name equal to its data's `type`."""
    text = data.decode()
    assert text.endswith("\n\n"), text[-100:]
    events = []
    for raw in text[:-2].split("\n\n"):
        lines = raw.split("\n")
        assert len(lines) == 2, raw
        assert lines[0].startswith("event: "), raw
        assert lines[1].startswith("data: "), raw
        name, payload = lines[0][len("event: ") :], json.loads(lines[1][len("data: ") :])
        assert payload["type"] == name
        events.append((name, payload))
    return events


def assemble(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Check the event grammar and build the final message from it, the way an SDK client does."""
    names = [name for name, _ in events if name != "ping"]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    message: dict[str, Any] = events[0][1]["message"]
    assert message["id"].startswith("msg_")
    assert message["type"] == "message"
    assert message["role"] == "assistant"
    assert message["content"] == []
    assert message["stop_reason"] is None
    assert message["stop_sequence"] is None
    assert message["usage"]["input_tokens"] > 0
    assert message["usage"]["output_tokens"] >= 0
    content: list[dict[str, Any]] = []
    partial: dict[int, list[str]] = {}
    open_index: int | None = None
    for name, data in events[1:-2]:
        if name == "ping":
            continue
        if name == "content_block_start":
            assert open_index is None, "a block started before the previous one stopped"
            assert data["index"] == len(content), "block indices count up from 0"
            block = dict(data["content_block"])
            if block["type"] == "text":
                assert block["text"] == ""
            else:
                assert block["type"] == "tool_use"
                assert block["id"].startswith("toolu_")
                assert block["input"] == {}
                partial[data["index"]] = []
            content.append(block)
            open_index = data["index"]
        elif name == "content_block_delta":
            assert data["index"] == open_index
            delta = data["delta"]
            block = content[data["index"]]
            if block["type"] == "text":
                assert delta["type"] == "text_delta"
                block["text"] += delta["text"]
            else:
                assert delta["type"] == "input_json_delta"
                partial[data["index"]].append(delta["partial_json"])
        elif name == "content_block_stop":
            assert data["index"] == open_index
            if content[data["index"]]["type"] == "tool_use":
                chunks = partial[data["index"]]
                assert len([c for c in chunks if c]) >= 2, f"the tool input should arrive in pieces: {chunks}"
                content[data["index"]]["input"] = json.loads("".join(chunks))
            open_index = None
        else:
            raise AssertionError(f"unexpected event {name} in the middle of a message")
    assert open_index is None
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] in {"end_turn", "tool_use"}
    assert delta["usage"]["output_tokens"] > 0
    message.update(content=content, stop_reason=delta["delta"]["stop_reason"])
    return message


def turn(anthropic: Anthropic, body: dict[str, Any]) -> dict[str, Any]:
    reply = anthropic.messages(body)
    assert reply.status == 200, reply.data
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    message = assemble(parse_sse(reply.data))
    assert message["model"] == body["model"]
    return message


def play(anthropic: Anthropic, prompt: str, results: list[tuple[str, bool]] | None = None) -> list[dict[str, Any]]:
    """Run a tool loop like the CLI: after each tool_use message, answer with the next (content, is_error) result
    (or "ok"), until the script ends its turn. Returns the assistant messages."""
    history: list[dict[str, Any]] = []
    replies: list[dict[str, Any]] = []
    queue = list(results or [])
    for _ in range(600):
        message = turn(anthropic, cli_body(prompt, history))
        replies.append(message)
        if message["stop_reason"] == "end_turn":
            return replies
        content, is_error = queue.pop(0) if queue else ("ok", False)
        history += [
            {"role": "assistant", "content": message["content"]},
            tool_result(message, content, is_error=is_error),
        ]
    raise AssertionError("the script never ended")


def shape(message: dict[str, Any]) -> list[tuple[str, str]]:
    return [(b["type"], b.get("name") or b.get("text", "")) for b in message["content"]]


# -- the scripts -----------------------------------------------------------------------------------------------------


def test_plain_answer_counts_the_prompt_and_records_it_verbatim(anthropic: Anthropic) -> None:
    (message,) = play(anthropic, HOSTILE)
    assert message["stop_reason"] == "end_turn"
    assert shape(message) == [("text", f"Plain answer. I read {len(HOSTILE)} characters.")]
    (record,) = anthropic.recorded()
    assert record["prompt"] == HOSTILE
    assert record["script"] == "plain"
    assert record["turn"] == 1
    assert record["model"] == MODEL
    assert record["tools"] == TOOLS
    assert record["cwd"] == CWD
    assert record["stream"] is True
    assert [b["text"] for b in record["last_user"]] == [*REMINDERS, HOSTILE]
    assert isinstance(record["at"], float)
    assert abs(record["at"] - time.time()) < 60


def test_write_script_writes_then_edits_in_the_working_directory(anthropic: Anthropic) -> None:
    replies = play(anthropic, "Please do it. [[script:write]]")
    assert [m["stop_reason"] for m in replies] == ["tool_use", "tool_use", "end_turn"]
    path = f"{CWD}/AGENT_NOTES.md"
    assert shape(replies[0]) == [("text", "Writing the notes file."), ("tool_use", "Write")]
    assert replies[0]["content"][1]["input"] == {"file_path": path, "content": "written by the agent\n"}
    assert shape(replies[1])[1] == ("tool_use", "Edit")
    assert replies[1]["content"][1]["input"] == {
        "file_path": path,
        "old_string": "written by the agent",
        "new_string": "written and edited by the agent",
    }
    assert shape(replies[2]) == [("text", "Done: wrote and edited AGENT_NOTES.md.")]
    ids = [b["id"] for m in replies for b in m["content"] if b["type"] == "tool_use"]
    assert len(set(ids)) == 2
    records = anthropic.recorded()
    assert [(r["script"], r["turn"]) for r in records] == [("write", 1), ("write", 2), ("write", 3)]
    assert records[1]["last_user"] == [{"type": "tool_result", "tool_use_id": ids[0], "content": "ok"}]
    assert all(r["prompt"] == "Please do it. [[script:write]]" for r in records)


def test_write_script_reports_the_first_tool_error(anthropic: Anthropic) -> None:
    denied = "<tool_use_error>Error: No such tool available: Write. " + "x" * 300 + "</tool_use_error>"
    replies = play(anthropic, "[[script:write]]", [(denied, True), ("also refused", True)])
    assert [m["stop_reason"] for m in replies] == ["tool_use", "tool_use", "end_turn"]
    assert shape(replies[1])[1] == ("tool_use", "Edit"), "turn 2 edits whatever the first result said"
    assert shape(replies[2]) == [("text", f"Could not write AGENT_NOTES.md: {denied[:200]}")]


def test_write_script_reads_tool_errors_given_as_blocks(anthropic: Anthropic) -> None:
    history: list[dict[str, Any]] = []
    for _ in range(2):
        message = turn(anthropic, cli_body("[[script:write]]", history))
        result = tool_result(message)
        result["content"][0].update(content=[{"type": "text", "text": "permission denied"}], is_error=True)
        history += [{"role": "assistant", "content": message["content"]}, result]
    final = turn(anthropic, cli_body("[[script:write]]", history))
    assert shape(final) == [("text", "Could not write AGENT_NOTES.md: permission denied")]


def test_slow_script_starts_a_long_bash_job(anthropic: Anthropic) -> None:
    replies = play(anthropic, "[[script:slow]] then wait")
    assert shape(replies[0]) == [("text", "Starting a long job."), ("tool_use", "Bash")]
    command = replies[0]["content"][1]["input"]
    assert "sleep 600" in command["command"]
    # The CLI blocks a command that *starts* with a long sleep ("Blocked: standalone sleep 600").
    assert not command["command"].startswith("sleep")
    assert command["description"] == "a long job"
    assert command["timeout"] == 600_000
    assert shape(replies[1]) == [("text", "The long job ended.")]


def test_ticks_script_loops_n_times(anthropic: Anthropic) -> None:
    replies = play(anthropic, "go [[script:ticks 5]]")
    assert len(replies) == 6
    for message in replies[:5]:
        assert message["stop_reason"] == "tool_use"
        assert shape(message) == [("tool_use", "Glob")]
        assert message["content"][0]["input"] == {"pattern": "*.md"}
    assert shape(replies[5]) == [("text", "Ticked 5 times.")]
    assert [r["turn"] for r in anthropic.recorded()] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    ("marker", "ticks"), [("[[script:ticks 0]]", 1), ("[[script:ticks]]", 1), ("[[script:ticks 9999]]", 500)]
)
def test_ticks_count_is_clamped(anthropic: Anthropic, marker: str, ticks: int) -> None:
    def after(assistants: int) -> dict[str, Any]:
        history: list[dict[str, Any]] = []
        for _ in range(assistants):
            call = {"type": "tool_use", "id": "toolu_x", "name": "Glob", "input": {"pattern": "*.md"}}
            history += [
                {"role": "assistant", "content": [call]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "a.md"}]},
            ]
        return turn(anthropic, cli_body(marker, history))

    assert shape(after(ticks - 1)) == [("tool_use", "Glob")]
    assert shape(after(ticks)) == [("text", f"Ticked {ticks} times.")]


def test_error_script_is_a_non_retryable_400(anthropic: Anthropic) -> None:
    for stream in (True, False):
        reply = anthropic.messages(cli_body("[[script:error]]", stream=stream))
        assert reply.status == 400
        assert reply.headers["Content-Type"].startswith("application/json")
        assert reply.headers["x-should-retry"] == "false"
        body = reply.json()
        assert body["type"] == "error"
        assert body["error"] == {
            "type": "invalid_request_error",
            "message": "scripted failure: the request was refused",
        }
    assert [(r["script"], r["stream"]) for r in anthropic.recorded()] == [("error", True), ("error", False)]


def test_overloaded_script_is_a_529(anthropic: Anthropic) -> None:
    reply = anthropic.messages(cli_body("[[script:overloaded]]"))
    assert reply.status == 529
    assert reply.json()["type"] == "error"
    assert reply.json()["error"]["type"] == "overloaded_error"
    assert reply.headers["x-should-retry"] == "true"


def test_unknown_script_plays_plain(anthropic: Anthropic) -> None:
    prompt = "[[script:nonsense]] hello"
    (message,) = play(anthropic, prompt)
    assert shape(message) == [("text", f"Plain answer. I read {len(prompt)} characters.")]
    assert anthropic.recorded()[0]["script"] == "plain"


def test_marker_only_counts_in_the_first_user_message(anthropic: Anthropic) -> None:
    """A later message (a tool result quoting a marker, say) does not switch the script."""
    history = [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "[[script:error]]"}]},
    ]
    message = turn(anthropic, cli_body("hello", history))
    assert shape(message) == [("text", "Plain answer. I read 5 characters.")]


def test_marker_in_a_reminder_block_counts(anthropic: Anthropic) -> None:
    """All text blocks of the first user message are searched (a client may put the prompt anywhere)."""
    body = cli_body("hello")
    body["messages"][0]["content"].insert(
        0, {"type": "text", "text": "<system-reminder>[[script:slow]]</system-reminder>"}
    )
    assert shape(turn(anthropic, body))[1] == ("tool_use", "Bash")
    assert anthropic.recorded()[0]["prompt"] == "hello"


# -- request shapes --------------------------------------------------------------------------------------------------


def test_string_content_and_no_working_directory(anthropic: Anthropic) -> None:
    body = {
        "model": "m",
        "max_tokens": 10,
        "stream": True,
        "messages": [{"role": "user", "content": "[[script:write]]"}],
    }
    message = turn(anthropic, body)
    assert message["content"][1]["input"]["file_path"] == "AGENT_NOTES.md"
    (record,) = anthropic.recorded()
    assert record["prompt"] == "[[script:write]]"
    assert record["cwd"] is None
    assert record["tools"] == []


@pytest.mark.parametrize(
    "where",
    ["system-string", "system-blocks", "reminder"],
)
def test_working_directory_other_places(anthropic: Anthropic, where: str) -> None:
    """Older CLI releases wrote `Working directory: /path` in the system prompt or a reminder."""
    line = "<env>\nWorking directory: /home/agent/ws\nIs directory a git repo: Yes\n</env>"
    body: dict[str, Any] = {"model": "m", "max_tokens": 10, "stream": True}
    first: dict[str, Any] = {"role": "user", "content": [{"type": "text", "text": "[[script:write]]"}]}
    if where == "system-string":
        body["system"] = line
    elif where == "system-blocks":
        body["system"] = [{"type": "text", "text": "intro"}, {"type": "text", "text": line}]
    else:
        first["content"].insert(0, {"type": "text", "text": f"<system-reminder>{line}</system-reminder>"})
    body["messages"] = [first]
    message = turn(anthropic, body)
    assert message["content"][1]["input"]["file_path"] == "/home/agent/ws/AGENT_NOTES.md"


def test_the_prompt_cannot_choose_the_working_directory() -> None:
    body = cli_body("[[script:write]]\n - Primary working directory: /etc\n")
    assert scripts.read_conversation(body).cwd == CWD
    del body["messages"][-1]
    assert scripts.read_conversation(body).cwd is None


def test_json_reply_without_stream(anthropic: Anthropic) -> None:
    reply = anthropic.messages(cli_body("[[script:write]]", stream=False))
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    message = reply.json()
    assert message["id"].startswith("msg_")
    assert message["type"] == "message"
    assert message["role"] == "assistant"
    assert message["model"] == MODEL
    assert message["stop_reason"] == "tool_use"
    assert message["stop_sequence"] is None
    assert shape(message) == [("text", "Writing the notes file."), ("tool_use", "Write")]
    assert message["content"][1]["input"]["file_path"] == f"{CWD}/AGENT_NOTES.md"
    assert message["usage"]["input_tokens"] > 0
    assert message["usage"]["output_tokens"] > 0
    assert anthropic.recorded()[0]["stream"] is False


def test_usage_is_small_and_plausible(anthropic: Anthropic) -> None:
    body = cli_body("hello")
    reply = anthropic.messages(body)
    events = parse_sse(reply.data)
    assert events[0][1]["message"]["usage"]["input_tokens"] == len(json.dumps(body).encode()) // 4
    assert 0 < events[-2][1]["usage"]["output_tokens"] < 100


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "m", "messages": []}', "messages"),
        (b'{"model": "m", "messages": [{"role": "assistant", "content": "x"}]}', "user role"),
        (b'{"model": "m", "messages": [{"role": "user", "content": 5}]}', "content"),
    ],
)
def test_bad_requests_are_invalid_request_errors(anthropic: Anthropic, raw: bytes, message: str) -> None:
    reply = anthropic.call("POST", "/v1/messages", raw=raw)
    assert reply.status == 400
    body = reply.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert message in body["error"]["message"]
    assert anthropic.recorded() == []


# -- authentication, probes, control ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "", "sk-ant-wrong", API_KEY + "x"])
def test_api_key_is_required(anthropic: Anthropic, key: str | None) -> None:
    for path, body in (("/v1/messages?beta=true", cli_body("hi")), ("/v1/messages/count_tokens", {"messages": []})):
        reply = anthropic.call("POST", path, body, key=key)
        assert reply.status == 401
        error = reply.json()
        assert error["type"] == "error"
        assert error["error"]["type"] == "authentication_error"
        assert isinstance(error["error"]["message"], str)
    assert anthropic.recorded() == []


def test_count_tokens(anthropic: Anthropic) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 400}]}
    reply = anthropic.call("POST", "/v1/messages/count_tokens?beta=true", body)
    assert reply.status == 200
    assert reply.json() == {"input_tokens": len(json.dumps(body).encode()) // 4}
    assert anthropic.recorded() == []


@pytest.mark.parametrize(
    ("method", "path"), [("HEAD", "/"), ("GET", "/"), ("HEAD", "/api/hello"), ("GET", "/api/hello")]
)
def test_probes_answer_200_without_key(anthropic: Anthropic, method: str, path: str) -> None:
    assert anthropic.call(method, path, key=None).status == 200


def test_unknown_paths_are_anthropic_shaped_404(anthropic: Anthropic) -> None:
    reply = anthropic.call("GET", "/v1/models/nope")
    assert reply.status == 404
    assert reply.json()["error"]["type"] == "not_found_error"
    reply = anthropic.call("GET", "/v1/messages")
    assert reply.status == 405
    assert reply.json()["type"] == "error"


def test_control_records_and_resets_without_the_key(anthropic: Anthropic) -> None:
    turn(anthropic, cli_body("one"))
    anthropic.messages(cli_body("[[script:error]]"))
    records = anthropic.recorded()
    assert [r["prompt"] for r in records] == ["one", "[[script:error]]"]
    assert records[0]["at"] <= records[1]["at"]
    for record in records:
        assert set(record) >= {"at", "script", "turn", "prompt", "last_user", "tools", "model"}
    assert API_KEY not in json.dumps(records)
    assert anthropic.call("POST", "/_control/reset", key=None).json()["reset"] is True
    assert anthropic.recorded() == []


def test_the_log_never_holds_the_key_or_prompts(anthropic: Anthropic) -> None:
    turn(anthropic, cli_body("a very private prompt"))
    anthropic.call("POST", "/v1/messages", cli_body("x"), key="sk-ant-guessed-key")
    time.sleep(0.1)
    log = anthropic.log_path.read_text()
    assert '"POST /v1/messages" 200' in log
    assert '"POST /v1/messages" 401' in log
    assert API_KEY not in log
    assert "sk-ant-guessed-key" not in log
    assert "a very private prompt" not in log


def test_start_refuses_an_empty_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "empty"
    key_file.write_text("\n")
    result = subprocess.run(
        [sys.executable, "-m", "devservices.anthropic", "--port", str(free_port()), "--api-key-file", str(key_file)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "--api-key-file is empty" in result.stderr

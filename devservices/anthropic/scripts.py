"""The scripted conversations: read a Messages API request body, decide which script it belongs to and which turn
it is, and produce the assistant's next message (or a scripted API error).

Pure functions, no I/O: `server.py` turns an `Answer` into server-sent events or a JSON message.

What Claude Code 2.1.330 sends (checked against the real CLI, see README.md):

- the whole conversation every turn; the first `user` message holds some `<system-reminder>` text blocks (git
  status, attribution) and then one text block that is the user's prompt byte for byte (stdin included, trailing
  newline kept);
- a `system`-role element in `messages` (usually the last one) whose text has the line
  ` - Primary working directory: /path` (the `system` field itself does not carry the working directory);
- tool results come back as `tool_result` blocks in the next `user` message.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

REMINDER = "<system-reminder>"
# `[[script:write]]`, `[[script:ticks 20]]`, anywhere in the first user message's text.
SCRIPT_MARKER = re.compile(r"\[\[script:\s*([A-Za-z_-]+)(?:\s+(\d+))?\s*\]\]")
# How the CLI states its working directory (2.1.330: " - Primary working directory: /tmp/ws"); older releases
# wrote "Working directory: /tmp/ws" inside an <env> block.
CWD_LINE = re.compile(r"(?m)^[ \t]*-?[ \t]*(?:Primary working directory|Working directory):[ \t]*(\S[^\n]*?)[ \t]*$")
NOTES = "AGENT_NOTES.md"
WRITTEN = "written by the agent"
EDITED = "written and edited by the agent"
MAX_TICKS = 500
# Claude Code 2.1.330 refuses a Bash command whose first part is `sleep N` with N >= 25 ("Blocked: standalone
# sleep 600 ..."), so the long job starts with an echo; it still runs a `sleep 600` process. The timeout (the
# tool's maximum, 10 minutes; default 2) keeps the tool from killing it early.
SLOW_COMMAND = "echo starting a long job && sleep 600"
ERROR_TEXT_LIMIT = 200


class BadRequest(ValueError):
    """The body is not a Messages API request this server can read: HTTP 400 `invalid_request_error`."""


@dataclass(frozen=True)
class Conversation:
    """What the scripts need from one request body."""

    model: str
    first_user_text: str  # every text block of the first user message, joined with "\n"
    prompt: str  # the block carrying the user's prompt verbatim (see `prompt_block`)
    cwd: str | None
    turn: int  # 1 + the number of assistant messages already in the conversation
    tool_results: list[dict[str, Any]]  # every tool_result block so far, oldest first
    last_user: list[dict[str, Any]]  # content blocks of the last user-role message
    tools: list[str]  # names of the tools offered in the request


@dataclass(frozen=True)
class Answer:
    """The assistant's next message: content blocks as they appear in the final message."""

    content: list[dict[str, Any]]
    stop_reason: str


@dataclass(frozen=True)
class Refusal:
    """A scripted API error: status and Anthropic error type."""

    status: int
    error_type: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)


def blocks(content: Any) -> list[dict[str, Any]]:
    """A message's content as a list of blocks (the API allows a bare string for one text block)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list) and all(isinstance(b, dict) for b in content):
        return content
    raise BadRequest("messages: content must be a string or an array of content blocks")


def texts(content: list[dict[str, Any]]) -> list[str]:
    return [b["text"] for b in content if b.get("type") == "text" and isinstance(b.get("text"), str)]


def prompt_block(first_user: list[dict[str, Any]]) -> str:
    """The user's prompt: the last text block of the first user message that is not a `<system-reminder>`.

    Claude Code puts its reminders first and the prompt (stdin or argument, byte for byte) last; a client that
    sends a plain string gets that string. Empty when there is no such block."""
    candidates = [t for t in texts(first_user) if not t.lstrip().startswith(REMINDER)]
    return candidates[-1] if candidates else ""


def find_cwd(body: dict[str, Any], messages: list[dict[str, Any]], prompt: str) -> str | None:
    """The CLI's working directory, from the system-role messages, the `system` field, then the reminders of the
    user messages (never from the prompt itself, so a prompt cannot redirect the scripted writes)."""
    sources: list[str] = []
    for message in messages:
        if message.get("role") == "system":
            sources.extend(texts(blocks(message.get("content", ""))))
    system = body.get("system")
    if isinstance(system, str):
        sources.append(system)
    elif isinstance(system, list):
        sources.extend(texts([b for b in system if isinstance(b, dict)]))
    for message in messages:
        if message.get("role") == "user":
            sources.extend(t for t in texts(blocks(message.get("content", ""))) if t != prompt)
    for text in sources:
        match = CWD_LINE.search(text)
        if match:
            return match.group(1)
    return None


def read_conversation(body: Any) -> Conversation:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: Field required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise BadRequest("messages: Field required (a non-empty array of messages)")
    users = [blocks(m.get("content", "")) for m in messages if m.get("role") == "user"]
    if not users:
        raise BadRequest("messages: at least one message must have the user role")
    first_user = users[0]
    prompt = prompt_block(first_user)
    tool_results = [b for content in users for b in content if b.get("type") == "tool_result"]
    offered = body.get("tools")
    tools: list[Any] = offered if isinstance(offered, list) else []
    return Conversation(
        model=model,
        first_user_text="\n".join(texts(first_user)),
        prompt=prompt,
        cwd=find_cwd(body, messages, prompt),
        turn=1 + sum(1 for m in messages if m.get("role") == "assistant"),
        tool_results=tool_results,
        last_user=users[-1],
        tools=[t["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)],
    )


def choose_script(text: str) -> tuple[str, int | None]:
    """The first `[[script:NAME]]` or `[[script:NAME N]]` marker in `text`; `plain` without one."""
    match = SCRIPT_MARKER.search(text)
    if not match:
        return "plain", None
    return match.group(1).lower(), int(match.group(2)) if match.group(2) else None


def tool_use(name: str, tool_input: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": "toolu_" + secrets.token_hex(12), "name": name, "input": tool_input}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def result_text(result: dict[str, Any]) -> str:
    content = result.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(texts([b for b in content if isinstance(b, dict)]))
    return ""


def notes_path(conversation: Conversation) -> str:
    return f"{conversation.cwd.rstrip('/')}/{NOTES}" if conversation.cwd else NOTES


def play_write(conversation: Conversation) -> Answer:
    path = notes_path(conversation)
    if conversation.turn == 1:
        return Answer(
            [text("Writing the notes file."), tool_use("Write", {"file_path": path, "content": WRITTEN + "\n"})],
            "tool_use",
        )
    if conversation.turn == 2:
        return Answer(
            [
                text("Editing the notes file."),
                tool_use("Edit", {"file_path": path, "old_string": WRITTEN, "new_string": EDITED}),
            ],
            "tool_use",
        )
    errors = [r for r in conversation.tool_results if r.get("is_error") is True]
    if errors:
        return Answer([text(f"Could not write {NOTES}: {result_text(errors[0])[:ERROR_TEXT_LIMIT]}")], "end_turn")
    return Answer([text(f"Done: wrote and edited {NOTES}.")], "end_turn")


def play_slow(conversation: Conversation) -> Answer:
    if conversation.turn == 1:
        return Answer(
            [
                text("Starting a long job."),
                tool_use("Bash", {"command": SLOW_COMMAND, "description": "a long job", "timeout": 600_000}),
            ],
            "tool_use",
        )
    return Answer([text("The long job ended.")], "end_turn")


def play_ticks(conversation: Conversation, count: int | None) -> Answer:
    ticks = min(max(count or 1, 1), MAX_TICKS)
    if conversation.turn <= ticks:
        return Answer([tool_use("Glob", {"pattern": "*.md"})], "tool_use")
    return Answer([text(f"Ticked {ticks} times.")], "end_turn")


def play(conversation: Conversation) -> tuple[str, Answer | Refusal]:
    """The script's name and its move for this turn."""
    name, number = choose_script(conversation.first_user_text)
    if name == "write":
        return name, play_write(conversation)
    if name == "slow":
        return name, play_slow(conversation)
    if name == "ticks":
        return name, play_ticks(conversation, number)
    if name == "error":
        return name, Refusal(400, "invalid_request_error", "scripted failure: the request was refused")
    if name == "overloaded":
        return name, Refusal(529, "overloaded_error", "Overloaded", {"x-should-retry": "true"})
    return "plain", Answer([text(f"Plain answer. I read {len(conversation.prompt)} characters.")], "end_turn")


def input_tokens(raw_body: bytes) -> int:
    return max(1, len(raw_body) // 4)


def output_tokens(answer: Answer) -> int:
    return max(1, len(json.dumps(answer.content)) // 4)

"""HTTP routes of the local Anthropic Messages API stand-in: `POST /v1/messages` (server-sent events or JSON),
`POST /v1/messages/count_tokens`, harmless probes, and a small control API for tests.

Errors have the Messages API's shape: `{"type": "error", "error": {"type": ..., "message": ...}, "request_id"}`.
The conversation logic lives in `scripts.py`; everything runs on one asyncio thread.
"""

from __future__ import annotations

import collections
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from devservices.anthropic import scripts
from devservices.anthropic.scripts import Answer, BadRequest, Refusal

log = logging.getLogger("devservices.anthropic")

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
MAX_RECORDS = 10_000  # oldest requests are dropped beyond this: a long benchmark must not grow without bound
SSE = "text/event-stream; charset=utf-8"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Config:
    api_key: str = field(repr=False)
    # Who may use /_control/ besides loopback: the tests on the orchestrator's side of the agent host's link
    # (whose address is the server's own), never the agent host.
    control_from: frozenset[str] = frozenset()
    requests: collections.deque[dict[str, Any]] = field(
        default_factory=lambda: collections.deque(maxlen=MAX_RECORDS), repr=False
    )


CONFIG = web.AppKey("config", Config)


def request_id() -> str:
    return "req_" + secrets.token_hex(12)


def error_response(status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    rid = request_id()
    body = {"type": "error", "error": {"type": error_type, "message": message}, "request_id": rid}
    return web.json_response(body, status=status, headers={"request-id": rid, **(headers or {})})


@web.middleware
async def anthropic(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The API key check on `/v1/...`, and Anthropic-shaped bodies for aiohttp's own 404 and 405."""
    if request.path.startswith("/v1/"):
        given = request.headers.get("x-api-key", "")
        if not hmac.compare_digest(given.encode(), request.app[CONFIG].api_key.encode()):
            message = "x-api-key header is required" if not given else "invalid x-api-key"
            return error_response(401, "authentication_error", message)
    allowed = LOOPBACK | request.app[CONFIG].control_from
    if request.path.startswith("/_control/") and request.remote not in allowed:
        return error_response(403, "permission_error", "the control API answers loopback callers only")
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return error_response(404, "not_found_error", f"Not found: {request.method} {request.path}")
    except web.HTTPMethodNotAllowed:
        return error_response(405, "invalid_request_error", f"Method not allowed: {request.method} {request.path}")


# -- Messages API ----------------------------------------------------------------------------------------------------


async def read_body(request: web.Request) -> tuple[bytes, Any]:
    raw = await request.read()
    try:
        return raw, json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None


def message_shell(model: str, tokens_in: int) -> dict[str, Any]:
    return {
        "id": "msg_" + secrets.token_hex(12),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": tokens_in,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 1,
            "service_tier": "standard",
        },
    }


def halves(value: str) -> list[str]:
    """`value` in two pieces (one when it is short): every delta stream gets more than one chunk."""
    if len(value) < 2:
        return [value]
    middle = len(value) // 2
    return [value[:middle], value[middle:]]


def events(model: str, tokens_in: int, answer: Answer) -> list[tuple[str, dict[str, Any]]]:
    """The server-sent events of one streamed message, in order, as (event type, data)."""
    out: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": message_shell(model, tokens_in)}),
        ("ping", {"type": "ping"}),
    ]
    for index, block in enumerate(answer.content):
        if block["type"] == "text":
            start: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": piece} for piece in halves(block["text"])]
        else:
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            # Like the real API: an empty first chunk, then the JSON cut in the middle of a token.
            encoded = json.dumps(block["input"])
            deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in ["", *halves(encoded)]]
        out.append(("content_block_start", {"type": "content_block_start", "index": index, "content_block": start}))
        out.extend(("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}) for d in deltas)
        out.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    out.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": answer.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": scripts.output_tokens(answer)},
            },
        )
    )
    out.append(("message_stop", {"type": "message_stop"}))
    return out


def frame(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def record(request: web.Request, name: str, conversation: scripts.Conversation, *, stream: bool) -> None:
    """What tests may look at: never headers, never the API key."""
    request.app[CONFIG].requests.append(
        {
            "at": time.time(),
            "script": name,
            "turn": conversation.turn,
            "prompt": conversation.prompt,
            "last_user": conversation.last_user,
            "tools": conversation.tools,
            "model": conversation.model,
            "cwd": conversation.cwd,
            "stream": stream,
        }
    )


async def messages(request: web.Request) -> web.StreamResponse:
    try:
        raw, body = await read_body(request)
        conversation = scripts.read_conversation(body)
    except BadRequest as exc:
        return error_response(400, "invalid_request_error", str(exc))
    name, move = scripts.play(conversation)
    record(request, name, conversation, stream=body.get("stream") is True)
    if isinstance(move, Refusal):
        should_retry = "true" if move.status in {408, 409, 429} or move.status >= 500 else "false"
        headers = {"x-should-retry": should_retry, **move.headers}
        return error_response(move.status, move.error_type, move.message, headers)
    tokens_in = scripts.input_tokens(raw)
    if body.get("stream") is not True:
        message = message_shell(conversation.model, tokens_in)
        message.update(content=move.content, stop_reason=move.stop_reason)
        message["usage"]["output_tokens"] = scripts.output_tokens(move)
        return web.json_response(message, headers={"request-id": request_id()})
    response = web.StreamResponse(
        headers={"Content-Type": SSE, "Cache-Control": "no-cache", "request-id": request_id()}
    )
    await response.prepare(request)
    for event, data in events(conversation.model, tokens_in, move):
        await response.write(frame(event, data))
    await response.write_eof()
    return response


async def count_tokens(request: web.Request) -> web.Response:
    try:
        raw, body = await read_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise BadRequest("messages: Field required")
    except BadRequest as exc:
        return error_response(400, "invalid_request_error", str(exc))
    return web.json_response({"input_tokens": scripts.input_tokens(raw)})


async def probe(request: web.Request) -> web.Response:
    """`HEAD /`, `GET /`, `HEAD /api/hello`: connectivity checks some clients make; always fine."""
    return web.json_response({"ok": True, "service": "local Anthropic Messages API stand-in"})


# -- control API (tests only) ----------------------------------------------------------------------------------------


async def control_requests(request: web.Request) -> web.Response:
    return web.json_response(list(request.app[CONFIG].requests))


async def control_reset(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG]
    dropped = len(cfg.requests)
    cfg.requests.clear()
    return web.json_response({"reset": True, "dropped": dropped})


# -- access log and application --------------------------------------------------------------------------------------


class AccessLogger(AbstractAccessLogger):
    """One line per request: address, request line, status, size, time. Never headers or bodies, so never the
    API key or a prompt."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %s %s %.6fs',
            request.remote,
            request.method,
            request.path,
            response.status,
            response.body_length,
            time,
        )


def build_app(*, api_key: str, control_from: frozenset[str] = frozenset()) -> web.Application:
    if not api_key:
        raise ValueError("an API key is required")
    app = web.Application(middlewares=[anthropic], client_max_size=64 * 1024 * 1024)
    app[CONFIG] = Config(api_key=api_key, control_from=control_from)
    router = app.router
    router.add_post("/v1/messages", messages)
    router.add_post("/v1/messages/count_tokens", count_tokens)
    for path in ("/", "/api/hello"):
        router.add_get(path, probe)  # aiohttp answers HEAD for every GET route
    router.add_get("/_control/requests", control_requests)
    router.add_post("/_control/reset", control_reset)
    return app

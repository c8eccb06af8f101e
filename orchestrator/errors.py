"""Why a playbook run failed, in words a user can read, and whether trying again can help."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# HTTP statuses (as the uri module and our roles report them) worth another attempt.
TRANSIENT_STATUS = frozenset({-1, 408, 425, 429, 500, 502, 503, 504})
TRANSIENT_TEXT = (
    "connection refused",
    "timed out",
    "temporarily unavailable",
    "connection reset",
    "try again",
    "name or service not known",
    "cannot connect to the docker daemon",
)
# A role that knows better says so in its message: these win over the transient markers (a CA reporting that
# it got "connection refused" from the edge is not a reason to ask it again).
PERMANENT_TEXT = ("not retried automatically", "permanent:")
MAX_MESSAGE = 2000


@dataclass(frozen=True)
class Failure:
    message: str
    transient: bool


def _result_text(res: dict[str, Any]) -> str:
    for key in ("msg", "stderr", "module_stderr", "reason"):
        value = res.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return "no message"


def classify_failure(kind: str, event_data: dict[str, Any]) -> Failure:
    """A failed or unreachable task event -> a Failure naming the task, transient or not."""
    res = event_data.get("res") or {}
    if not isinstance(res, dict):
        res = {"msg": str(res)}
    task = str(event_data.get("task") or "?")
    role = event_data.get("role")
    where = f"{role} : {task}" if role else task
    text = _result_text(res)
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE] + "..."
    if kind == "runner_on_unreachable":
        return Failure(f"task '{where}': host unreachable: {text}", transient=True)
    status = res.get("status")
    lowered = text.lower()
    transient = not any(marker in lowered for marker in PERMANENT_TEXT) and (
        bool(res.get("orchestrator_transient"))
        or (isinstance(status, int) and status in TRANSIENT_STATUS)
        or any(marker in lowered for marker in TRANSIENT_TEXT)
    )
    return Failure(f"task '{where}' failed: {text}", transient=transient)

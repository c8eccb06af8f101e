"""The tool profiles and agent types of Claude Code runs, read from the one definition the role claude_code uses
(roles/claude_code/vars/main.yml), so the queue's validation and the role never disagree."""

from __future__ import annotations

from typing import Any

import yaml

from orchestrator.config import PROJECT_ROOT

DEFINITIONS = PROJECT_ROOT / "roles" / "claude_code" / "vars" / "main.yml"


def _load() -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    data = yaml.safe_load(DEFINITIONS.read_text())
    return data["claude_code_profiles"], data["claude_code_agent_types"]


PROFILES, AGENT_TYPES = _load()

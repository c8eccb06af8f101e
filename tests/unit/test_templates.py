"""The compose templates render valid YAML with valid Traefik router rules, for any valid slug."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.traefik_rules import RuleError, parse_rule

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
SLUGS = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?\Z", fullmatch=True)


def render(name: str, **values: str) -> dict[str, object]:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    text = env.from_string((TEMPLATES / name).read_text()).render(**values)
    return yaml.safe_load(text)  # type: ignore[no-any-return]


def router_rules(compose: dict[str, object]) -> dict[str, str]:
    rules = {}
    services = compose["services"]
    assert isinstance(services, dict)
    for service in services.values():
        labels = service.get("labels", [])
        items = labels.items() if isinstance(labels, dict) else (label.split("=", 1) for label in labels)
        for key, value in items:
            if key.startswith("traefik.http.routers.") and key.endswith(".rule"):
                rules[key] = value
    return rules


@settings(max_examples=50, deadline=None)
@given(slug=SLUGS)
def test_team_template_rules_parse(slug: str) -> None:
    compose = render(
        "team-compose.yml.j2",
        team_slug=slug,
        domain="kanban.example.com",
        portal_api_url="https://kanban.example.com/api",
    )
    rules = router_rules(compose)
    assert set(rules) == {f"traefik.http.routers.{slug}-api.rule", f"traefik.http.routers.{slug}-web.rule"}
    for rule in rules.values():
        matchers = parse_rule(rule)
        assert any(m.name == "Host" and m.args == (f"{slug}.kanban.example.com",) for m in matchers)
    assert "version" not in compose


def test_agent_template_rules_parse() -> None:
    compose = render(
        "agent-compose.yml.j2",
        workspace_slug="web",
        branch="s1",
        webhook_secret="x" * 20,
        kanban_api_url="https://a/api",
        llm_provider="claude",
        agent_name="web-agent-s1",
        agent_subdomain="web-s1",
        domain="kanban.example.com",
    )
    for rule in router_rules(compose).values():
        parse_rule(rule)


@pytest.mark.parametrize(
    "rule",
    [
        "Host(`a.example.com`) && PathPrefix(`/api`)",
        "(Host(`a.b`) || Host(`c.d`)) && !Method(`POST`)",
        'Host("a.example.com")',
    ],
)
def test_valid_rules(rule: str) -> None:
    parse_rule(rule)


@pytest.mark.parametrize(
    "rule",
    [
        "",
        "Host(`a.b`",
        "Hots(`a.b`)",
        "Host(`bad_host!`)",
        "Host(`a.b`) &&",
        "PathPrefix(`api`)",
        "Host(`a.b`) Host(`c.d`)",
        "Header(`x`)",
    ],
)
def test_invalid_rules(rule: str) -> None:
    with pytest.raises(RuleError):
        parse_rule(rule)

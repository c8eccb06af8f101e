"""A parser for Traefik v2/v3 router rules, to check the labels our templates render.

Grammar (Traefik's rule syntax): expr := term ('||' term)*; term := factor ('&&' factor)*;
factor := '!' factor | '(' expr ')' | matcher; matcher := Name '(' args ')'; args are backtick or
double-quoted strings separated by commas. Known matchers and their arities are checked; Host values
must be valid host names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# matcher -> (min args, max args); v2 allows several values for Host/Path*, v3 exactly one.
MATCHERS = {
    "Host": (1, 64),
    "HostRegexp": (1, 64),
    "Path": (1, 64),
    "PathPrefix": (1, 64),
    "PathRegexp": (1, 1),
    "Method": (1, 8),
    "Header": (2, 2),
    "HeaderRegexp": (2, 2),
    "Query": (1, 2),
    "QueryRegexp": (2, 2),
    "ClientIP": (1, 64),
    "HostSNI": (1, 64),
    "Headers": (2, 2),
    "HeadersRegexp": (2, 2),
}
HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
TOKEN = re.compile(r"\s*(?:(?P<op>&&|\|\||[!(),])|(?P<name>[A-Za-z]+)|`(?P<bt>[^`]*)`|\"(?P<dq>(?:[^\"\\]|\\.)*)\")")


class RuleError(ValueError):
    pass


@dataclass(frozen=True)
class Matcher:
    name: str
    args: tuple[str, ...]


def _tokens(rule: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(rule):
        if rule[pos:].strip() == "":
            break
        match = TOKEN.match(rule, pos)
        if not match:
            raise RuleError(f"unexpected text at {pos}: {rule[pos : pos + 20]!r}")
        if match.group("op"):
            out.append(("op", match.group("op")))
        elif match.group("name"):
            out.append(("name", match.group("name")))
        else:
            value = match.group("bt") if match.group("bt") is not None else match.group("dq")
            out.append(("str", value))
        pos = match.end()
    return out


class _Parser:
    def __init__(self, rule: str):
        self.tokens = _tokens(rule)
        self.pos = 0
        self.matchers: list[Matcher] = []

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, kind: str, value: str | None = None) -> str:
        token = self.peek()
        if token is None or token[0] != kind or (value is not None and token[1] != value):
            raise RuleError(f"expected {value or kind} at token {self.pos}, got {token}")
        self.pos += 1
        return token[1]

    def expr(self) -> None:
        self.term()
        while self.peek() == ("op", "||"):
            self.pos += 1
            self.term()

    def term(self) -> None:
        self.factor()
        while self.peek() == ("op", "&&"):
            self.pos += 1
            self.factor()

    def factor(self) -> None:
        token = self.peek()
        if token == ("op", "!"):
            self.pos += 1
            self.factor()
        elif token == ("op", "("):
            self.pos += 1
            self.expr()
            self.take("op", ")")
        else:
            self.matcher()

    def matcher(self) -> None:
        name = self.take("name")
        if name not in MATCHERS:
            raise RuleError(f"unknown matcher {name}")
        self.take("op", "(")
        args = [self.take("str")]
        while self.peek() == ("op", ","):
            self.pos += 1
            args.append(self.take("str"))
        self.take("op", ")")
        low, high = MATCHERS[name]
        if not low <= len(args) <= high:
            raise RuleError(f"{name} takes {low}..{high} arguments, got {len(args)}")
        if name == "Host":
            for host in args:
                if not HOSTNAME.match(host):
                    raise RuleError(f"Host({host!r}) is not a valid host name")
        if name in ("Path", "PathPrefix") and not all(a.startswith("/") for a in args):
            raise RuleError(f"{name} values must start with '/'")
        self.matchers.append(Matcher(name, tuple(args)))


def parse_rule(rule: str) -> list[Matcher]:
    """The matchers of a valid rule; RuleError for anything Traefik would refuse."""
    parser = _Parser(rule)
    if not parser.tokens:
        raise RuleError("empty rule")
    parser.expr()
    if parser.pos != len(parser.tokens):
        raise RuleError(f"trailing tokens from {parser.pos}")
    return parser.matchers

"""OData query options for GET /applications: the `$filter` subset Graph supports on applications without
advanced queries, `$select`, `$top` and paging through `$skiptoken`.

`$filter` grammar (keywords lower-case as in OData; property names case-insensitive as in Graph)::

    expr    := and ('or' and)*
    and     := primary ('and' primary)*
    primary := '(' expr ')'
             | PROPERTY 'eq' LITERAL                      displayName, appId, id, publisherDomain, signInAudience
             | 'startswith' '(' PROPERTY ',' STRING ')'     displayName
             | PROPERTY '/' 'any' '(' VAR ':' VAR 'eq' STRING ')'    identifierUris, tags
    LITERAL := 'text with '' for a quote' | null

String comparisons ignore case, as the directory's do.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from devservices.graph.state import GraphError

Predicate = Callable[[dict[str, Any]], bool]

EQ_PROPERTIES = ("displayName", "appId", "id", "publisherDomain", "signInAudience")
STARTSWITH_PROPERTIES = ("displayName",)
ANY_PROPERTIES = ("identifierUris", "tags")
MAX_TOP = 999
DEFAULT_PAGE = 100
TOKEN_RE = re.compile(
    r"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<word>[A-Za-z_$][A-Za-z0-9_.$-]*)|(?P<punct>[(),/:])|(?P<number>-?\d+(?:\.\d+)?))"
)


@dataclass
class Token:
    kind: str  # string | word | punct | number | end
    text: str
    position: int


def syntax_error(text: str, position: int) -> GraphError:
    return GraphError(400, "BadRequest", f"Invalid filter clause: Syntax error at position {position} in '{text}'.")


def unsupported_clause(prop: str) -> GraphError:
    return GraphError(
        400,
        "Request_UnsupportedQuery",
        f"Unsupported or invalid query filter clause specified for property '{prop}' of resource 'Application'.",
    )


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    position = 0
    while position < len(text):
        if not text[position:].strip():
            break
        match = TOKEN_RE.match(text, position)
        if match is None or match.end() == position:
            raise syntax_error(text, position)
        kind = match.lastgroup or "punct"
        start = match.start(kind)
        tokens.append(Token(kind, match.group(kind), start))
        position = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


class FilterParser:
    def __init__(self, text: str, properties: dict[str, str]) -> None:
        self.text = text
        self.properties = properties  # lower-case name -> canonical name
        self.tokens = tokenize(text)
        self.index = 0

    def peek(self, offset: int = 0) -> Token:
        return self.tokens[min(self.index + offset, len(self.tokens) - 1)]

    def take(self, kind: str, text: str | None = None) -> Token:
        token = self.peek()
        if token.kind != kind or (text is not None and token.text != text):
            raise syntax_error(self.text, token.position)
        self.index += 1
        return token

    def parse(self) -> Predicate:
        predicate = self.expr()
        if self.peek().kind != "end":
            raise syntax_error(self.text, self.peek().position)
        return predicate

    def expr(self) -> Predicate:
        parts = [self.conjunction()]
        while self.peek().kind == "word" and self.peek().text == "or":
            self.index += 1
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else (lambda obj: any(p(obj) for p in parts))

    def conjunction(self) -> Predicate:
        parts = [self.primary()]
        while self.peek().kind == "word" and self.peek().text == "and":
            self.index += 1
            parts.append(self.primary())
        return parts[0] if len(parts) == 1 else (lambda obj: all(p(obj) for p in parts))

    def primary(self) -> Predicate:
        token = self.peek()
        if token.kind == "punct" and token.text == "(":
            self.index += 1
            inner = self.expr()
            self.take("punct", ")")
            return inner
        if token.kind != "word":
            raise syntax_error(self.text, token.position)
        if token.text == "startswith" and self.peek(1).text == "(":
            self.index += 2
            prop = self.property(STARTSWITH_PROPERTIES)
            self.take("punct", ",")
            prefix = self.string()
            self.take("punct", ")")
            return lambda obj: isinstance(obj.get(prop), str) and obj[prop].casefold().startswith(prefix.casefold())
        if token.text in {"not", "endswith", "contains", "in"}:
            raise GraphError(400, "Request_UnsupportedQuery", f"Unsupported query operator '{token.text}'.")
        self.index += 1
        if self.peek().text == "/":
            self.index += 1
            prop = self.canonical(token, ANY_PROPERTIES)
            self.take("word", "any")
            self.take("punct", "(")
            var = self.take("word").text
            self.take("punct", ":")
            if self.take("word").text != var:
                raise syntax_error(self.text, self.tokens[self.index - 1].position)
            self.operator(prop)
            wanted = self.string()
            self.take("punct", ")")
            return lambda obj: any(
                isinstance(v, str) and v.casefold() == wanted.casefold() for v in obj.get(prop) or []
            )
        prop = self.canonical(token, EQ_PROPERTIES)
        self.operator(prop)
        value = self.literal()
        if value is None:
            return lambda obj: obj.get(prop) is None
        return lambda obj: isinstance(obj.get(prop), str) and obj[prop].casefold() == value.casefold()

    def operator(self, prop: str) -> None:
        token = self.take("word")
        if token.text in {"ne", "gt", "ge", "lt", "le", "has"}:
            raise unsupported_clause(prop)
        if token.text != "eq":
            raise syntax_error(self.text, token.position)

    def canonical(self, token: Token, allowed: tuple[str, ...]) -> str:
        name = self.properties.get(token.text.lower())
        if name is None:
            raise GraphError(
                400,
                "BadRequest",
                f"Could not find a property named '{token.text}' on type 'microsoft.graph.application'.",
            )
        if name not in allowed:
            raise unsupported_clause(name)
        return name

    def property(self, allowed: tuple[str, ...]) -> str:
        return self.canonical(self.take("word"), allowed)

    def string(self) -> str:
        return self.take("string").text[1:-1].replace("''", "'")

    def literal(self) -> str | None:
        token = self.peek()
        if token.kind == "word" and token.text == "null":
            self.index += 1
            return None
        if token.kind != "string":
            raise syntax_error(self.text, token.position)
        return self.string()


def parse_filter(text: str, properties: list[str]) -> Predicate:
    if not text.strip():
        raise syntax_error(text, 0)
    return FilterParser(text, {name.lower(): name for name in properties}).parse()


def parse_select(text: str, properties: list[str]) -> list[str]:
    """`$select=a,b`: canonical names, in the order given; unknown names are a 400 as on Graph."""
    known = {name.lower(): name for name in properties}
    selected: list[str] = []
    for item in text.split(","):
        name = known.get(item.strip().lower())
        if name is None:
            raise GraphError(
                400,
                "BadRequest",
                f"Could not find a property named '{item.strip()}' on type 'microsoft.graph.application'.",
            )
        if name not in selected:
            selected.append(name)
    return selected


def parse_top(text: str) -> int:
    if not re.fullmatch(r"\d+", text.strip()) or not 1 <= int(text) <= MAX_TOP:
        raise GraphError(
            400,
            "Request_BadRequest",
            f"Invalid page size specified: '{text}'. Must be between 1 and {MAX_TOP} inclusive.",
        )
    return int(text)


def encode_skiptoken(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode().rstrip("=")


def decode_skiptoken(text: str) -> int:
    try:
        offset = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))["offset"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        offset = None
    if not isinstance(offset, int) or offset < 0:
        raise GraphError(400, "Request_BadRequest", "Skip token is null or invalid.")
    return offset

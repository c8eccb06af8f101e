"""The local GitHub and the local Microsoft identity platform + Graph as subprocesses on free loopback ports,
clients for their APIs, and the contracts to check them."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
from jsonschema import Draft7Validator
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from openapi_core.validation.response.exceptions import MissingData
from openapi_schema_validator import OAS30Validator

from tests.conftest import ROOT, free_port

CONTRACT = ROOT.parent / "shared" / "contracts" / "github-rest-subset.json"
TOKEN = "ghs_contract-test-token-0123456789"
ORG = "test-org"
USER = "test-user"
GENERATE_DELAY = 0.3
# No proxy from the environment: every request goes straight to the loopback server.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Reply:
    """One API exchange, kept whole so the contract can check it."""

    method: str
    path: str
    status: int
    headers: dict[str, str]
    data: bytes

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class GitHub:
    base: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    token: str = TOKEN
    org: str = ORG

    def call(self, method: str, path: str, body: Any = None, *, token: str | None = TOKEN) -> Reply:
        request = urllib.request.Request(
            self.base + path, method=method, data=None if body is None else json.dumps(body).encode()
        )
        request.add_header("Accept", "application/vnd.github+json")
        if body is not None:
            request.add_header("Content-Type", "application/json")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with OPENER.open(request, timeout=10) as response:
                return Reply(method, path, response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as exc:
            return Reply(method, path, exc.code, dict(exc.headers), exc.read())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(10)

    def control(self, action: str, body: dict[str, Any] | None = None) -> None:
        assert self.call("POST", f"/_control/{action}", body or {}, token=None).status == 200

    def create_repo(self, name: str, **fields: Any) -> Reply:
        return self.call("POST", f"/orgs/{self.org}/repos", {"name": name, **fields})

    def clone_url(self, name: str, token: str = TOKEN) -> str:
        host = self.base.split("://", 1)[1]
        return f"http://x-access-token:{token}@{host}/git/{self.org}/{name}.git"

    def wait_branch(self, repo: str, branch: str, timeout: float = 10) -> Reply:
        deadline = time.monotonic() + timeout
        while True:
            reply = self.call("GET", f"/repos/{self.org}/{repo}/branches/{branch}")
            if reply.status == 200 or time.monotonic() > deadline:
                return reply
            time.sleep(0.05)


def wait_until_up(name: str, probe: Callable[[], object], process: subprocess.Popen[bytes], log_path: Path) -> None:
    """Call probe until it stops raising URLError (the server answers); fail with the server's log if its process
    ends first or 15 s pass. The process is stopped on failure."""
    deadline = time.monotonic() + 15
    while True:
        try:
            probe()
            return
        except urllib.error.URLError:
            if process.poll() is not None or time.monotonic() > deadline:
                if process.poll() is None:
                    process.terminate()
                    process.wait(10)
                raise AssertionError(f"the local {name} did not start: {log_path.read_text()}") from None
            time.sleep(0.05)


def start_github(tmp: Path, *args: str) -> GitHub:
    """`python -m devservices.github` on a free loopback port, data under `tmp`; returns once it answers."""
    port = free_port()
    log_path = tmp / "server.log"
    argv = ["--host", "127.0.0.1", "--port", str(port), "--data", str(tmp / "data"), "--org", ORG, "--user", USER]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "devservices.github", *argv, "--generate-delay", str(GENERATE_DELAY), *args],
            env={**os.environ, "GITHUB_TOKEN": TOKEN},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    server = GitHub(f"http://127.0.0.1:{port}", tmp / "data", log_path, process)
    wait_until_up("GitHub", lambda: server.call("GET", "/rate_limit"), process, log_path)
    return server


@pytest.fixture(scope="session")
def github_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitHub]:
    server = start_github(tmp_path_factory.mktemp("github"))
    yield server
    server.stop()


@pytest.fixture
def github(github_server: GitHub) -> Iterator[GitHub]:
    """The session's server with no repositories, no queued failures and a fresh rate-limit count."""
    github_server.control("reset")
    yield github_server
    github_server.control("reset")


class Contract:
    """Checks replies against the OpenAPI document with openapi-core, served from the local base URL."""

    def __init__(self, base: str) -> None:
        self.document = json.loads(CONTRACT.read_text())
        spec = copy.deepcopy(self.document)
        spec["servers"] = [{"url": base}]
        self.base = base
        self.openapi = OpenAPI.from_dict(spec)

    def check(self, reply: Reply, pattern: str | None = None) -> None:
        """Validate status, headers and body against the operation's declared response.

        `pattern` names the operation's path template when a parameter spans several segments (`{ref}` =
        `heads/a/b`): the document marks those `x-multi-segment`, an extension openapi-core does not read.
        """
        request = MockRequest(self.base, reply.method, reply.path.split("?")[0], path_pattern=pattern)
        content_type = reply.headers.get("Content-Type", "").split(";")[0]
        response = MockResponse(reply.data, status_code=reply.status, headers=reply.headers, content_type=content_type)
        try:
            self.openapi.validate_response(request, response)
        except Exception as exc:
            errors = getattr(exc.__cause__, "schema_errors", None) or ()
            details = "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)
            # str(exc) prints the whole body; the schema errors say what is wrong.
            reason = details or str(exc)[:300]
            raise AssertionError(f"{reply.method} {reply.path} {reply.status}: {type(exc).__name__}: {reason}") from exc

    def undeclared(self, reply: Reply, schema: str = "basic-error", pattern: str | None = None) -> None:
        """For a status the operation does not declare: prove it is undeclared, then check the body's shape
        against the component GitHub uses for it (`basic-error` or `validation-error`)."""
        with pytest.raises(AssertionError, match="Unknown response http status"):
            self.check(reply, pattern)
        self.schema(schema, reply.json())

    def schema(self, name: str, value: Any) -> None:
        # Wrapped so that the schema's own `#/components/...` references resolve against the document.
        schema = {"components": self.document["components"], "allOf": [{"$ref": f"#/components/schemas/{name}"}]}
        validator = OAS30Validator(schema)
        errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(value)]
        assert not errors, f"{name}: {errors}"


@pytest.fixture(scope="session")
def contract(github_server: GitHub) -> Contract:
    return Contract(github_server.base)


@dataclass
class Git:
    """git on the command line, isolated from the user's config and never prompting."""

    home: Path
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_AUTHOR_NAME": "Contract Test",
            "GIT_AUTHOR_EMAIL": "contract@example.invalid",
            "GIT_COMMITTER_NAME": "Contract Test",
            "GIT_COMMITTER_EMAIL": "contract@example.invalid",
        }

    def run(self, *args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["git", "-c", "credential.helper=", "-c", "init.defaultBranch=main", *args],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if check:
            assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}"
        return result


@pytest.fixture
def git(tmp_path: Path) -> Git:
    return Git(tmp_path / "home")


# -- the local Microsoft identity platform + Microsoft Graph (devservices.graph) -----------------------------------

GRAPH_CONTRACT = ROOT.parent / "shared" / "contracts" / "msgraph-applications-subset.json"
TOKEN_CONTRACT = ROOT.parent / "shared" / "contracts" / "azure-token-endpoint.json"
TENANT = "7f3c1d2e-0a4b-4c5d-8e6f-123456789abc"
CLIENT_ID = "5b0f9d3c-1e2a-4b7c-9d8e-0f1a2b3c4d5e"
CLIENT_SECRET = "Orc8Q~contract-test-client-secret-0123"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"


@dataclass
class Graph:
    """A running `python -m devservices.graph`: one host is both the authority and Graph."""

    base: str  # http://127.0.0.1:PORT
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    tenant: str = TENANT
    client_id: str = CLIENT_ID
    client_secret: str = field(default=CLIENT_SECRET, repr=False)
    cached_token: str | None = field(default=None, repr=False)
    # When set, every Graph and token-endpoint reply is checked against its contract as it arrives.
    graph_contract: GraphContract | None = field(default=None, repr=False)
    token_contract: TokenContract | None = field(default=None, repr=False)

    @property
    def token_path(self) -> str:
        return f"/{self.tenant}/oauth2/v2.0/token"

    def http(self, method: str, path: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> Reply:
        request = urllib.request.Request(self.base + path, method=method, data=data, headers=headers or {})
        try:
            with OPENER.open(request, timeout=10) as response:
                reply = Reply(method, path, response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as exc:
            reply = Reply(method, path, exc.code, dict(exc.headers), exc.read())
        bare = path.split("?", 1)[0]
        if self.graph_contract and (bare == "/v1.0" or bare.startswith("/v1.0/")):
            self.graph_contract.check(reply)
        elif self.token_contract and bare.endswith("/oauth2/v2.0/token") and method != "OPTIONS":
            self.token_contract.check(reply)
        return reply

    def request_token(
        self,
        form: dict[str, str] | None = None,
        *,
        tenant: str | None = None,
        method: str = "POST",
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """POST the token request; `form` defaults to the orchestrator's own client-credentials request."""
        if form is None:
            form = {
                "client_id": self.client_id,
                "client_secret": self.client_secret,
                "scope": GRAPH_SCOPE,
                "grant_type": "client_credentials",
            }
        path = f"/{tenant or self.tenant}/oauth2/v2.0/token"
        data = urllib.parse.urlencode(form).encode() if method == "POST" else None
        all_headers = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        return self.http(method, path, data, all_headers)

    def token(self, client_id: str | None = None, client_secret: str | None = None) -> str:
        form = {
            "client_id": client_id or self.client_id,
            "client_secret": client_secret or self.client_secret,
            "scope": GRAPH_SCOPE,
            "grant_type": "client_credentials",
        }
        reply = self.request_token(form)
        assert reply.status == 200, reply.data
        token: str = reply.json()["access_token"]
        return token

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, str] | None = None,
        token: str | None = None,
        auth: bool = True,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> Reply:
        """A Graph call: `path` is under /v1.0 (`/applications`); the reply's path carries /v1.0 and the query.
        Without `token`, the orchestrator's own (fetched once and kept); `auth=False` sends none."""
        full = "/v1.0" + path
        if query:
            full += "?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
        all_headers = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            all_headers.setdefault("Content-Type", "application/json")
        if token is None and auth:
            if self.cached_token is None:
                self.cached_token = self.token()
            token = self.cached_token
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        return self.http(method, full, data, all_headers)

    def control(self, action: str, body: dict[str, Any] | None = None) -> Reply:
        reply = self.http("POST", f"/_control/{action}", json.dumps(body or {}).encode())
        assert reply.status == 200, reply.data
        return reply

    def create_app(self, name: str, **fields: Any) -> dict[str, Any]:
        reply = self.call("POST", "/applications", {"displayName": name, **fields})
        assert reply.status == 201, reply.data
        app: dict[str, Any] = reply.json()
        return app

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(10)


def start_graph(
    tmp: Path,
    *args: str,
    data_dir: Path | None = None,
    graph_contract: GraphContract | None = None,
    token_contract: TokenContract | None = None,
) -> Graph:
    """`python -m devservices.graph` on a free loopback port; data under `tmp/data` unless `data_dir` is given.

    The client secret goes through a file, as the CLI requires; returns once the server answers. With the
    contracts given, every reply is checked as it arrives."""
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    data_dir = data_dir or tmp / "data"
    secret_file = tmp / "client-secret"
    secret_file.write_text(CLIENT_SECRET + "\n")
    secret_file.chmod(0o600)
    log_path = tmp / f"graph-{port}.log"
    argv = [
        *("--host", "127.0.0.1", "--port", str(port), "--data", str(data_dir)),
        *("--tenant", TENANT, "--client-id", CLIENT_ID, "--client-secret-file", str(secret_file)),
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "devservices.graph", *argv, *args], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )
    server = Graph(f"http://127.0.0.1:{port}", data_dir, log_path, process)
    server.graph_contract, server.token_contract = graph_contract, token_contract
    wait_until_up("Graph", lambda: server.http("POST", "/_control/expire-tokens"), process, log_path)
    return server


@pytest.fixture(scope="session")
def graph_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Graph]:
    server = start_graph(tmp_path_factory.mktemp("graph"))
    yield server
    server.stop()


@pytest.fixture
def graph(graph_server: Graph, graph_contract: GraphContract, token_contract: TokenContract) -> Iterator[Graph]:
    """The session's server with no applications, no tokens and no queued failures; every reply a test gets
    through it is checked against the contracts."""
    graph_server.graph_contract, graph_server.token_contract = graph_contract, token_contract
    graph_server.control("reset")
    graph_server.cached_token = None
    yield graph_server
    graph_server.control("reset")
    graph_server.cached_token = None


class GraphContract:
    """Checks Graph replies against the OpenAPI document with openapi-core, served from the local /v1.0."""

    def __init__(self, base: str = "http://127.0.0.1") -> None:
        # Only paths matter: the document is served from `base` + /v1.0, whatever port a server has.
        self.document = json.loads(GRAPH_CONTRACT.read_text())
        spec = copy.deepcopy(self.document)
        spec["servers"] = [{"url": base + "/v1.0"}]
        self.base = base
        self.openapi = OpenAPI.from_dict(spec)
        self.templates = [
            (template, re.compile(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))))
            for template in self.document["paths"]
        ]

    def template(self, path: str) -> str | None:
        """The document's path template for a request path (`/v1.0/applications/x` -> `/applications/{...}`)."""
        bare = path.split("?", 1)[0].removeprefix("/v1.0")
        return next((template for template, regex in self.templates if regex.fullmatch(bare)), None)

    def operation(self, method: str, template: str) -> dict[str, Any]:
        operation: dict[str, Any] = self.document["paths"][template][method.lower()]
        return operation

    def success_status(self, method: str, template: str) -> int:
        """The exact success status the Graph docs give (`x-docs-success-status`; the document says only 2XX)."""
        status = self.operation(method, template)["x-docs-success-status"]["status"]
        assert isinstance(status, int), f"{method} {template}: {status!r}"
        return status

    def check(self, reply: Reply, template: str | None = None) -> None:
        """Validate status, headers and body against the operation's declared response (`2XX` or `default`).

        For a 204 the document declares a JSON body on `2XX` of PATCH, while the docs (`x-docs-success-status`)
        say there is none and Graph sends none: openapi-core's MissingData is accepted exactly there, and only
        when the reply really has no body."""
        template = template or self.template(reply.path)
        if template is None or reply.method.lower() not in self.document["paths"][template]:
            # Not an operation of the document (an unknown segment, another method): an error, in Graph's shape.
            assert reply.status >= 400, f"{reply.method} {reply.path} {reply.status}: not in the document"
            self.schema("microsoft.graph.ODataErrors.ODataError", json.loads(reply.data))
            return
        request = MockRequest(self.base, reply.method, reply.path.split("?")[0])
        content_type = reply.headers.get("Content-Type", "").split(";")[0]
        response = MockResponse(reply.data, status_code=reply.status, headers=reply.headers, content_type=content_type)
        try:
            self.openapi.validate_response(request, response)
        except MissingData:
            # The docs say "body: none", or (the upsert PATCH) "201 when created, 204 when updated".
            documented = template is not None and self.operation(reply.method, template)["x-docs-success-status"]
            bodiless = documented and (documented.get("body") == "none" or "204 when" in str(documented["status"]))
            if reply.status == 204 and reply.data == b"" and bodiless:
                return
            raise AssertionError(f"{reply.method} {reply.path} {reply.status}: body missing") from None
        except Exception as exc:
            errors = getattr(exc.__cause__, "schema_errors", None) or ()
            details = "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)
            reason = details or str(exc)[:300]
            raise AssertionError(f"{reply.method} {reply.path} {reply.status}: {type(exc).__name__}: {reason}") from exc

    def schema(self, name: str, value: Any) -> None:
        """Validate `value` against one component schema (for replies outside the document's paths)."""
        schema = {"components": self.document["components"], "allOf": [{"$ref": f"#/components/schemas/{name}"}]}
        errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in OAS30Validator(schema).iter_errors(value)]
        assert not errors, f"{name}: {errors}"

    def success(self, reply: Reply, template: str) -> None:
        """Validated, and the status is exactly the documented one."""
        assert reply.status == self.success_status(reply.method, template), (reply.status, reply.data[:500])
        self.check(reply, template)

    def error(self, reply: Reply, status: int, code: str, template: str | None = None) -> dict[str, Any]:
        """A Graph error reply: validated against `default` (ODataError), with the status, code and the innerError
        every Graph error carries. Returns the `error` object."""
        assert reply.status == status, (reply.status, reply.data[:500])
        self.check(reply, template)
        error: dict[str, Any] = reply.json()["error"]
        assert error["code"] == code, error
        inner = error["innerError"]
        assert set(inner) >= {"date", "request-id", "client-request-id"}, inner
        assert inner["request-id"] == reply.headers["request-id"]
        return error


@pytest.fixture(scope="session")
def graph_contract() -> GraphContract:
    return GraphContract()


class TokenContract:
    """The token endpoint's facts (azure-token-endpoint.json is not OpenAPI) turned into JSON Schemas."""

    TYPES: ClassVar[dict[str, dict[str, Any]]] = {
        "string": {"type": "string"},
        "integer": {"type": "integer"},
        "array of integer": {"type": "array", "items": {"type": "integer"}, "minItems": 1},
    }
    FORMATS: ClassVar[dict[str, str]] = {
        "YYYY-MM-DD HH:MM:SSZ": r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}Z$",
        "GUID": r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
    }

    def __init__(self) -> None:
        self.facts = json.loads(TOKEN_CONTRACT.read_text())
        success, failure = self.facts["response_success"], self.facts["response_error"]
        self.success_status: int = success["status"]
        self.error_statuses = {failure["status"], *map(int, re.findall(r"\b[45]\d\d\b", failure["status_note"]))}
        self.error_codes = set(failure["error_codes"])
        self.success_schema = self.schema(success["fields"])
        self.error_schema = self.schema(failure["fields"])
        self.error_schema["properties"]["error"]["enum"] = sorted(self.error_codes)

    def schema(self, fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        for name, fact in fields.items():
            prop = dict(self.TYPES[fact["type"]])  # KeyError: a type this test does not know yet
            if "value" in fact:
                prop["const"] = fact["value"]
            if "format" in fact:
                prop["pattern"] = self.FORMATS[fact["format"]]
            properties[name] = prop
        return {"type": "object", "required": sorted(fields), "properties": properties}

    def check(self, reply: Reply) -> dict[str, Any]:
        """Validate a token reply. Besides the contract's statuses, an error status is accepted with `Retry-After`
        (throttling or unavailability, where the contract's `temporarily_unavailable` says "retry later")."""
        assert reply.headers.get("Content-Type", "").split(";")[0] == self.facts["response_success"]["content_type"]
        body: dict[str, Any] = reply.json()
        if reply.status == self.success_status:
            schema = self.success_schema
        else:
            assert reply.status in self.error_statuses or "Retry-After" in reply.headers, reply.status
            assert reply.status >= 400, reply.status
            schema = self.error_schema
        errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in Draft7Validator(schema).iter_errors(body)]
        assert not errors, f"{reply.status}: {errors}"
        if reply.status != self.success_status:
            # "starts with an AADSTS code and carries Trace ID, Correlation ID and Timestamp lines separated by \r\n"
            first, *lines = body["error_description"].split("\r\n")
            assert re.match(rf"AADSTS{body['error_codes'][0]}: \S", first), first
            assert lines == [
                f"Trace ID: {body['trace_id']}",
                f"Correlation ID: {body['correlation_id']}",
                f"Timestamp: {body['timestamp']}",
            ], lines
        return body


@pytest.fixture(scope="session")
def token_contract() -> TokenContract:
    return TokenContract()

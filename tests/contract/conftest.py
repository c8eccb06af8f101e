"""The local GitHub as a subprocess on a free loopback port, a client for its API, and the contract to check it."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
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
    deadline = time.monotonic() + 15
    while True:
        try:
            server.call("GET", "/rate_limit")
            return server
        except urllib.error.URLError:
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise AssertionError(f"the local GitHub did not start: {log_path.read_text()}") from None
            time.sleep(0.05)


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

# Copyright: Orchestrator maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A small Microsoft Graph client for modules: client-credentials tokens (cached on disk until they expire),
JSON requests with retries that honour Retry-After, Graph's error bodies turned into clear messages.

Only the Python standard library and ansible.module_utils.urls: no Azure SDK. Nothing here ever puts the
client secret or a token into an exception message.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import random
import tempfile
import time
from urllib.parse import quote, urlencode

from ansible.module_utils.six.moves.urllib.error import HTTPError, URLError
from ansible.module_utils.urls import open_url

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# A cached token is used only while it has at least this many seconds left.
TOKEN_MARGIN = 120


class GraphError(Exception):
    """A failed call: HTTP status (0 when no answer came), Graph's error code, a message without secrets."""

    def __init__(self, message, status=0, code=None, transient=False):
        super().__init__(message)
        self.status = status
        self.code = code
        self.transient = transient


def odata_quote(value):
    """A string literal for an OData $filter: single quotes doubled."""
    return "'" + value.replace("'", "''") + "'"


def _error_detail(status, raw):
    """(code, message) from a Graph or identity-platform error body; never echoes more than a message."""
    try:
        body = json.loads(raw.decode("utf-8", "replace")) if raw else {}
    except ValueError:
        body = {}
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return error.get("code"), str(error.get("message") or "")[:500]
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        # The token endpoint: {"error": "invalid_client", "error_description": "AADSTS7000215: ..."}
        description = str(body.get("error_description") or "").splitlines()
        return body["error"], (description[0] if description else "")[:500]
    return None, f"HTTP {status}"


class GraphClient:
    """Calls Graph as one confidential client of one tenant."""

    def __init__(
        self,
        authority_url,
        graph_url,
        tenant_id,
        client_id,
        client_secret,
        cache_dir=None,
        timeout=30,
        retries=4,
        max_retry_wait=60,
        validate_certs=True,
        sleep=time.sleep,
    ):
        self.authority_url = authority_url.rstrip("/")
        self.graph_url = graph_url.rstrip("/")
        self.tenant_id = tenant_id
        self.client_id = client_id
        self._secret = client_secret
        self.cache_dir = cache_dir
        self.timeout = timeout
        self.retries = retries
        self.max_retry_wait = max_retry_wait
        self.validate_certs = validate_certs
        self._sleep = sleep
        self._token = None
        self.waited = 0.0
        self.calls = 0

    # -- tokens ---------------------------------------------------------------------------------------------

    def _cache_path(self):
        if not self.cache_dir:
            return None
        # The secret is part of the key (hashed): a token is never reused for a different secret.
        key = "\0".join((self.authority_url, self.tenant_id, self.client_id, self.graph_url, self._secret))
        return os.path.join(self.cache_dir, f"graph-token-{hashlib.sha256(key.encode()).hexdigest()[:24]}.json")

    def _cached_token(self):
        path = self._cache_path()
        if not path:
            return None
        try:
            with open(path, encoding="utf-8") as handle:
                cached = json.load(handle)
        except (OSError, ValueError):
            return None
        if not isinstance(cached, dict) or not isinstance(cached.get("access_token"), str):
            return None
        if float(cached.get("expires_at", 0)) - TOKEN_MARGIN <= time.time():
            return None
        return cached["access_token"]

    def _store_token(self, token, expires_in):
        path = self._cache_path()
        if not path:
            return
        os.makedirs(self.cache_dir, mode=0o700, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=".graph-token-", dir=self.cache_dir)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"access_token": token, "expires_at": time.time() + expires_in}, handle)
            os.replace(temporary, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)

    def _forget_token(self):
        self._token = None
        path = self._cache_path()
        if path:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def token(self):
        if self._token is None:
            self._token = self._cached_token()
        if self._token is None:
            form = urlencode(
                {
                    "client_id": self.client_id,
                    "client_secret": self._secret,
                    "scope": GRAPH_SCOPE,
                    "grant_type": "client_credentials",
                }
            )
            url = "{}/{}/oauth2/v2.0/token".format(self.authority_url, quote(self.tenant_id, safe=""))
            status, body, _headers = self._send(
                "POST", url, form.encode(), {"Content-Type": "application/x-www-form-urlencoded"}, what="token request"
            )
            if status != 200 or not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
                raise GraphError(f"token request answered HTTP {status} without an access token", status)
            self._token = body["access_token"]
            self._store_token(self._token, float(body.get("expires_in") or 0))
        return self._token

    # -- requests -------------------------------------------------------------------------------------------

    def _retry_wait(self, attempt, headers):
        retry_after = headers.get("Retry-After") if headers else None
        wait = None
        if retry_after:
            try:
                wait = float(retry_after)
            except ValueError:
                wait = None
        if wait is None:
            wait = min(2**attempt, 30) * (0.5 + random.random() / 2)
        return max(0.0, wait)

    def _send(self, method, url, data, headers, what):
        """One HTTP exchange, retried while transient. Returns (status, parsed body or None, headers)."""
        attempt = 0
        while True:
            attempt += 1
            self.calls += 1
            try:
                response = open_url(
                    url,
                    data=data,
                    headers=headers,
                    method=method,
                    timeout=self.timeout,
                    validate_certs=self.validate_certs,
                    use_proxy=False,
                    follow_redirects="none",
                )
                raw = response.read()
                status = response.getcode()
                return status, (json.loads(raw) if raw else None), dict(response.headers.items())
            except HTTPError as error:
                raw = error.read() if hasattr(error, "read") else b""
                response_headers = dict(error.headers.items()) if error.headers else {}
                code, message = _error_detail(error.code, raw)
                failure = GraphError(
                    f"{what} {method}: HTTP {error.code} {code or ''}" + (f": {message}" if message else ""),
                    error.code,
                    code,
                    transient=error.code in TRANSIENT_STATUS,
                )
            except (URLError, OSError, ValueError) as error:
                reason = getattr(error, "reason", error)
                response_headers = {}
                failure = GraphError(f"{what} {method}: connection failed: {reason}", 0, None, transient=True)
            if not failure.transient or attempt > self.retries:
                if failure.transient:
                    failure.args = (f"{failure.args[0]} (gave up after {attempt} attempts)",)
                raise failure
            wait = self._retry_wait(attempt, response_headers)
            if self.waited + wait > self.max_retry_wait:
                failure.args = (
                    f"{failure.args[0]} (Retry-After {wait:.0f}s exceeds the {self.max_retry_wait:.0f}s retry budget)",
                )
                raise failure
            self.waited += wait
            self._sleep(wait)

    def call(self, method, path, body=None, query=None, expect=(200, 201, 204)):
        """A Graph call under graph_url. A 401 drops the token (expired or revoked) and tries once more."""
        url = self.graph_url + path + (("?" + urlencode(query, quote_via=quote)) if query else "")
        data = None if body is None else json.dumps(body).encode()
        for renewed in (False, True):
            headers = {"Authorization": "Bearer " + self.token(), "Accept": "application/json"}
            if data is not None:
                headers["Content-Type"] = "application/json"
            try:
                status, parsed, _headers = self._send(method, url, data, headers, what="Graph " + path.split("?")[0])
            except GraphError as error:
                if error.status == 401 and not renewed:
                    self._forget_token()
                    continue
                raise
            if status not in expect:
                raise GraphError(f"Graph {method} {path} answered HTTP {status}", status)
            return parsed
        raise GraphError(f"Graph {method} {path}: unauthorized", 401)


@contextlib.contextmanager
def file_lock(lock_dir, name, timeout=300):
    """An exclusive lock shared by every process on this host (flock; released when the process ends, even by
    kill -9). Workers that deploy to one Docker host run on that host, so this is the lock they all see."""
    if not lock_dir:
        yield
        return
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    path = os.path.join(lock_dir, f"{hashlib.sha256(name.encode()).hexdigest()[:32]}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise GraphError(
                        f"timed out after {timeout}s waiting for the lock of {name}", transient=True
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)

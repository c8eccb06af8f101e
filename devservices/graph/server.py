"""HTTP routes of the local Microsoft identity platform + Microsoft Graph: the client-credentials token endpoint
(shared/contracts/azure-token-endpoint.json), the Graph v1.0 applications subset
(shared/contracts/msgraph-applications-subset.json) and a small control API for tests.

Bodies follow the contracts and the shapes the real services send: Entra ID's OAuth error body (`error`,
`error_description` starting with an AADSTS code, `error_codes`, `timestamp`, `trace_id`, `correlation_id`) and
Graph's OData error (`{"error": {"code", "message", "innerError": {"date", "request-id", "client-request-id"}}}`).
The directory itself lives in `state.Directory`; everything runs on one asyncio thread.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlencode

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from devservices.graph import query
from devservices.graph.state import GUID_RE, Directory, GraphError, bad_request, utcnow

log = logging.getLogger("devservices.graph")

GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
GRAPH_RESOURCES = {"https://graph.microsoft.com", "https://graph.microsoft.com/", GRAPH_APP_ID}
GRAPH_VERSION = "/v1.0"
ODATA_JSON = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
# Query parameters whose values never reach the log (a client putting a secret in a URL is already a bug).
SENSITIVE_QUERY = re.compile(r"(?i)(client_secret|client_assertion|access_token|code|password)=[^&]*")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class IssuedToken:
    client_id: str
    expires_at: float
    privileged: bool  # the orchestrator's own identity; tokens of apps created through Graph have no Graph roles


@dataclass
class Failure:
    """The next `count` requests whose path matches `pattern` (and `method`, if set) answer `status`."""

    count: int
    status: int
    pattern: re.Pattern[str]
    method: str | None = None
    retry_after: int | None = None
    code: str | None = None
    message: str | None = None

    def matches(self, request: web.Request) -> bool:
        return self.method in {None, request.method} and self.pattern.search(request.path) is not None


@dataclass
class Config:
    directory: Directory
    tenant: str
    client_id: str
    client_secret: str = field(repr=False)
    token_ttl: int = 3599
    tokens: dict[str, IssuedToken] = field(default_factory=dict, repr=False)
    failures: list[Failure] = field(default_factory=list)


CONFIG = web.AppKey("config", Config)


# -- Graph responses ---------------------------------------------------------------------------------------------


def graph_json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(payload).encode(), status=status, headers={"Content-Type": ODATA_JSON, **(headers or {})}
    )


def graph_error(exc: GraphError, request_id: str, client_request_id: str) -> web.Response:
    inner = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
        "request-id": request_id,
        "client-request-id": client_request_id,
    }
    body: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.details:
        body["details"] = [{k: v for k, v in d.items() if v is not None} for d in exc.details]
    body["innerError"] = inner
    return web.json_response({"error": body}, status=exc.status, headers=exc.headers)


def graph_base(request: web.Request) -> str:
    return f"{request.url.origin()}{GRAPH_VERSION}"


def context(request: web.Request, entity_set: str, select: list[str] | None, *, entity: bool) -> str:
    projection = f"({','.join(select)})" if select else ""
    return f"{graph_base(request)}/$metadata#{entity_set}{projection}{'/$entity' if entity else ''}"


def project(obj: dict[str, Any], select: list[str] | None) -> dict[str, Any]:
    if not select:
        return dict(obj)
    return {name: obj[name] for name in select if name in obj}


# -- middleware ----------------------------------------------------------------------------------------------------


def bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def authenticate(request: web.Request) -> IssuedToken:
    cfg = request.app[CONFIG]
    token = bearer(request)
    issued = cfg.tokens.get(token) if token else None
    if token is None:
        message = "Access token is empty."
    elif issued is None:
        message = "Access token validation failure. Invalid audience."
    elif issued.expires_at <= time.time():
        message = "Lifetime validation failed, the token is expired."
    else:
        return issued
    challenge = (
        f'Bearer realm="", authorization_uri="{request.url.origin()}/{cfg.tenant}/oauth2/authorize", '
        f'client_id="{GRAPH_APP_ID}"'
    )
    raise GraphError(401, "InvalidAuthenticationToken", message, headers={"WWW-Authenticate": challenge})


def next_failure(cfg: Config, request: web.Request) -> Failure | None:
    for failure in cfg.failures:
        if failure.matches(request):
            failure.count -= 1
            if failure.count <= 0:
                cfg.failures.remove(failure)
            return failure
    return None


GRAPH_FAILURE_CODES = {
    400: ("invalidRequest", "The request is malformed or incorrect."),
    401: ("InvalidAuthenticationToken", "Access token validation failure."),
    403: ("Authorization_RequestDenied", "Insufficient privileges to complete the operation."),
    404: (
        "Request_ResourceNotFound",
        "Resource does not exist or one of its queried reference-property objects are not present.",
    ),
    409: ("Request_MultipleObjectsWithSameKeyValue", "Another object with the same value already exists."),
    429: ("TooManyRequests", "Too many requests. Retry after the number of seconds in the Retry-After header."),
    500: ("generalException", "An unspecified error has occurred."),
    502: ("UnknownError", "Bad gateway."),
    503: ("serviceNotAvailable", "The service is temporarily unavailable. Retry after the Retry-After delay."),
    504: ("UnknownError", "Gateway timeout."),
}


def injected_graph_error(failure: Failure) -> GraphError:
    code, message = GRAPH_FAILURE_CODES.get(failure.status, ("UnknownError", HTTPStatus(failure.status).phrase))
    headers = {} if failure.retry_after is None else {"Retry-After": str(failure.retry_after)}
    return GraphError(failure.status, failure.code or code, failure.message or message, headers=headers)


@web.middleware
async def microsoft(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Control routes pass through (loopback callers only); Graph routes get the token check, injected failures,
    Graph's error body for every refusal and the request-id headers; token-endpoint routes get injected failures."""
    cfg = request.app[CONFIG]
    path = request.path
    if path.startswith("/_control/"):
        if request.remote not in LOOPBACK:
            return web.json_response({"error": "the control API answers loopback callers only"}, status=403)
        return await handler(request)
    if path == GRAPH_VERSION or path.startswith(GRAPH_VERSION + "/"):
        # A new GUID per request; the client's own client-request-id is echoed when it sends one.
        request_id = str(uuid.uuid4())
        client_request_id = request.headers.get("client-request-id") or request_id
        refusal: GraphError | None = None
        try:
            issued = authenticate(request)
            if failure := next_failure(cfg, request):
                raise injected_graph_error(failure)
            if not issued.privileged:
                raise GraphError(
                    403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation."
                )
            response = await handler(request)
        except GraphError as exc:
            refusal = exc
        except web.HTTPMethodNotAllowed:
            refusal = GraphError(405, "Request_BadRequest", "Specified HTTP method is not allowed for the request uri.")
        except web.HTTPNotFound:
            segment = path.removeprefix(GRAPH_VERSION).strip("/").split("/")[-1] or path
            refusal = GraphError(400, "BadRequest", f"Resource not found for the segment '{segment}'.")
        if refusal is not None:
            response = graph_error(refusal, request_id, client_request_id)
        response.headers["request-id"] = request_id
        response.headers["client-request-id"] = client_request_id
        return response
    if failure := next_failure(cfg, request):
        return token_error(request, failure.status, *injected_token_error(failure), retry_after=failure.retry_after)
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return web.json_response(
            {"error": {"code": "NotFound", "message": f"No route for {request.path}."}}, status=404
        )


# -- token endpoint ------------------------------------------------------------------------------------------------


def token_error(
    request: web.Request, status: int, error: str, code: int, message: str, *, retry_after: int | None = None
) -> web.Response:
    """Entra ID's OAuth error body; `error_description` ends with the trace, correlation and time lines."""
    trace_id = str(uuid.uuid4())
    supplied = request.headers.get("client-request-id", "")
    correlation_id = supplied if GUID_RE.fullmatch(supplied) else str(uuid.uuid4())
    timestamp = utcnow().strftime("%Y-%m-%d %H:%M:%SZ")
    description = (
        f"AADSTS{code}: {message}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}"
    )
    body = {
        "error": error,
        "error_description": description,
        "error_codes": [code],
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": f"{request.url.origin()}/error?code={code}",
    }
    headers = {"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return web.json_response(body, status=status, headers=headers)


def injected_token_error(failure: Failure) -> tuple[str, int, str]:
    if failure.status == 401:
        return failure.code or "invalid_client", 7000215, failure.message or "Invalid client secret provided."
    if failure.status == 429 or failure.status >= 500:
        return (
            failure.code or "temporarily_unavailable",
            90033,
            failure.message or "A transient error has occurred. Please try again.",
        )
    return failure.code or "invalid_request", 900144, failure.message or "The request is not valid."


def basic_credentials(request: web.Request) -> tuple[str, str] | None:
    """RFC 6749 2.3.1: `Authorization: Basic base64(urlencode(id):urlencode(secret))`."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return unquote(user.replace("+", " ")), unquote(password.replace("+", " "))


async def token(request: web.Request) -> web.Response:
    """POST /{tenant}/oauth2/v2.0/token with grant_type=client_credentials."""
    cfg = request.app[CONFIG]
    if request.method == "OPTIONS":
        return web.Response(status=204, headers={"Allow": "POST, OPTIONS"})
    if request.method != "POST":
        return token_error(
            request,
            400,
            "invalid_request",
            900561,
            f"The endpoint only accepts POST, OPTIONS requests. Received a {request.method} request.",
        )
    tenant = request.match_info["tenant"]
    if tenant.lower() != cfg.tenant.lower():
        return token_error(
            request,
            400,
            "invalid_request",
            90002,
            f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into "
            "the correct cloud. Check with your subscription administrator, this may happen if there are no active "
            "subscriptions for the tenant.",
        )
    form: dict[str, str] = {}
    if request.content_type == "application/x-www-form-urlencoded":
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}

    def missing(name: str, *, status: int = 400, error: str = "invalid_request", code: int = 900144) -> web.Response:
        return token_error(
            request, status, error, code, f"The request body must contain the following parameter: '{name}'."
        )

    grant_type = form.get("grant_type", "")
    if not grant_type:
        return missing("grant_type")
    if grant_type != "client_credentials":
        return token_error(
            request,
            400,
            "unsupported_grant_type",
            70003,
            f"The app requested an unsupported grant type '{grant_type}'.",
        )
    basic = basic_credentials(request)
    client_id = form.get("client_id") or (basic[0] if basic else "")
    client_secret = form.get("client_secret") or (basic[1] if basic else "")
    if not client_id:
        return missing("client_id")
    scope = form.get("scope", "").strip()
    if not scope:
        return missing("scope")
    if len(scope.split()) > 1:
        return token_error(
            request,
            400,
            "invalid_scope",
            70011,
            f"The provided value for the input parameter 'scope' is not valid. The scope {scope} is not "
            "valid: a client credentials request asks for one resource's /.default scope.",
        )
    if not scope.endswith("/.default"):
        return token_error(
            request,
            400,
            "invalid_scope",
            1002012,
            f"The provided value for scope {scope} is not valid. Client credential flows must have a "
            "scope value with /.default suffixed to the resource identifier (application ID URI).",
        )
    resource = scope.removesuffix("/.default")
    if resource not in GRAPH_RESOURCES:
        return token_error(
            request,
            400,
            "invalid_resource",
            500011,
            f"The resource principal named {resource} was not found in the tenant named {cfg.tenant}. "
            "This can happen if the application has not been installed by the administrator of the "
            "tenant or consented to by any user in the tenant. You might have sent your authentication "
            "request to the wrong tenant.",
        )
    if form.get("client_assertion") or form.get("client_assertion_type"):
        return token_error(
            request,
            401,
            "invalid_client",
            700027,
            "Client assertion failed signature validation: this local server registers no "
            "certificates or federated credentials.",
        )
    if not client_secret:
        return missing("client_assertion' or 'client_secret", status=401, error="invalid_client", code=7000218)
    if client_id == cfg.client_id:
        verdict = "ok" if hmac.compare_digest(client_secret.encode(), cfg.client_secret.encode()) else "bad"
    else:
        verdict = cfg.directory.check_client_secret(client_id, client_secret)
    if verdict == "unknown":
        return token_error(
            request,
            400,
            "unauthorized_client",
            700016,
            f"Application with identifier '{client_id}' was not found in the directory '{tenant}'. "
            "This can happen if the application has not been installed by the administrator of the "
            "tenant or consented to by any user in the tenant. You may have sent your authentication "
            "request to the wrong tenant.",
        )
    if verdict == "disabled":
        return token_error(
            request,
            400,
            "unauthorized_client",
            7000112,
            f"Application '{client_id}' is disabled.",
        )
    if verdict == "expired":
        return token_error(
            request,
            401,
            "invalid_client",
            7000222,
            f"The provided client secret keys for app '{client_id}' are expired. Visit the Azure "
            "portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider "
            "using certificate credentials for added security: https://aka.ms/certCreds.",
        )
    if verdict != "ok":
        return token_error(
            request,
            401,
            "invalid_client",
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the client "
            f"secret value, not the client secret ID, for a secret added to app '{client_id}'.",
        )
    now = time.time()
    for key in [k for k, t in cfg.tokens.items() if t.expires_at < now - 3600]:
        del cfg.tokens[key]  # forget tokens an hour after they expired; until then Graph says "expired"
    access_token = secrets.token_urlsafe(48)
    cfg.tokens[access_token] = IssuedToken(client_id, now + cfg.token_ttl, privileged=client_id == cfg.client_id)
    body = {
        "token_type": "Bearer",
        "expires_in": cfg.token_ttl,
        "ext_expires_in": cfg.token_ttl,
        "access_token": access_token,
    }
    return web.json_response(body, headers={"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"})


# -- Graph: applications -------------------------------------------------------------------------------------------

APPLICATION_PROPERTIES = [
    "id",
    "deletedDateTime",
    "addIns",
    "api",
    "appId",
    "applicationTemplateId",
    "appRoles",
    "certification",
    "createdDateTime",
    "defaultRedirectUri",
    "description",
    "disabledByMicrosoftStatus",
    "displayName",
    "groupMembershipClaims",
    "identifierUris",
    "info",
    "isDeviceOnlyAuthSupported",
    "isFallbackPublicClient",
    "keyCredentials",
    "logo",
    "nativeAuthenticationApisEnabled",
    "notes",
    "oauth2RequirePostResponse",
    "optionalClaims",
    "parentalControlSettings",
    "passwordCredentials",
    "publicClient",
    "publisherDomain",
    "requestSignatureVerification",
    "requiredResourceAccess",
    "samlMetadataUrl",
    "serviceManagementReference",
    "servicePrincipalLockConfiguration",
    "signInAudience",
    "spa",
    "tags",
    "tokenEncryptionKeyId",
    "uniqueName",
    "verifiedPublisher",
    "web",
]
LIST_OPTIONS = {"$filter", "$select", "$top", "$skiptoken", "$count"}
GET_OPTIONS = {"$select"}


def check_options(request: web.Request, allowed: set[str]) -> None:
    for key in request.query:
        if key.startswith("$") and key not in allowed:
            raise GraphError(
                400,
                "Request_UnsupportedQuery",
                f"The query option '{key}' is not supported by this local Graph server.",
            )


def selection(request: web.Request) -> list[str] | None:
    text = request.query.get("$select")
    return None if text is None else query.parse_select(text, APPLICATION_PROPERTIES)


async def json_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise GraphError(
            400,
            "BadRequest",
            "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.",  # noqa: E501
        ) from None


def app_path(request: web.Request, app: dict[str, Any]) -> str:
    return f"{graph_base(request)}/applications/{app['id']}"


async def list_applications(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG]
    check_options(request, LIST_OPTIONS)
    select = selection(request)
    apps = list(cfg.directory.applications.values())
    if "$filter" in request.query:
        predicate = query.parse_filter(request.query["$filter"], APPLICATION_PROPERTIES)
        apps = [app for app in apps if predicate(app)]
    page = query.parse_top(request.query["$top"]) if "$top" in request.query else query.DEFAULT_PAGE
    offset = query.decode_skiptoken(request.query["$skiptoken"]) if "$skiptoken" in request.query else 0
    count = request.query.get("$count", "false").lower()
    if count not in {"true", "false"}:
        raise bad_request(f"Invalid value '{count}' for the query option '$count'.")
    body: dict[str, Any] = {"@odata.context": context(request, "applications", select, entity=False)}
    if count == "true":
        body["@odata.count"] = len(apps)
    if offset + page < len(apps):
        params = {k: v for k, v in request.query.items() if k != "$skiptoken"}
        params["$skiptoken"] = query.encode_skiptoken(offset + page)
        body["@odata.nextLink"] = f"{graph_base(request)}/applications?{urlencode(params)}"
    body["value"] = [project(app, select) for app in apps[offset : offset + page]]
    return graph_json(body)


async def create_application(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG]
    body = await json_body(request)
    if body is None:
        raise bad_request("The request body is required: an application with at least displayName.")
    app = cfg.directory.create_application(body)
    payload = {"@odata.context": context(request, "applications", None, entity=True), **app}
    return graph_json(payload, status=201, headers={"Location": app_path(request, app)})


def target(request: web.Request) -> dict[str, Any]:
    """The application named by the path: `/applications/{id}` or `/applications(appId='{appId}')`."""
    directory = request.app[CONFIG].directory
    if "appId" in request.match_info:
        return directory.application_by_app_id(request.match_info["appId"].replace("''", "'"))
    return directory.application(request.match_info["id"])


async def get_application(request: web.Request) -> web.Response:
    check_options(request, GET_OPTIONS)
    select = selection(request)
    app = target(request)
    return graph_json({"@odata.context": context(request, "applications", select, entity=True), **project(app, select)})


async def update_application(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG]
    body = await json_body(request)
    if body is None:
        raise bad_request("The request body is required.")
    prefer = {p.strip().lower() for p in request.headers.get("Prefer", "").split(",")}
    if "appId" in request.match_info and "create-if-missing" in prefer:
        app_id = request.match_info["appId"].replace("''", "'")
        if cfg.directory.find_by_app_id(app_id) is None:
            if not GUID_RE.fullmatch(app_id):
                raise bad_request(f"Invalid appId '{app_id}': a GUID is required.")
            app = cfg.directory.create_application(body, app_id=app_id.lower())
            payload = {"@odata.context": context(request, "applications", None, entity=True), **app}
            return graph_json(payload, status=201, headers={"Location": app_path(request, app)})
    cfg.directory.update_application(target(request), body)
    return web.Response(status=204)


async def delete_application(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG]
    cfg.directory.delete_application(target(request))
    return web.Response(status=204)


async def add_password(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG]
    body = await json_body(request)  # before the lookup: nothing may change between lookup and write
    credential = cfg.directory.add_password(target(request), body)
    return graph_json(
        {"@odata.context": f"{graph_base(request)}/$metadata#microsoft.graph.passwordCredential", **credential}
    )


async def remove_password(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG]
    body = await json_body(request)
    cfg.directory.remove_password(target(request), body)
    return web.Response(status=204)


async def create_service_principal(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG]
    body = await json_body(request)
    if body is None:
        raise bad_request("The request body is required: a servicePrincipal with appId.")
    sp = cfg.directory.create_service_principal(body)
    payload = {"@odata.context": context(request, "servicePrincipals", None, entity=True), **sp}
    return graph_json(payload, status=201, headers={"Location": f"{graph_base(request)}/servicePrincipals/{sp['id']}"})


# -- control API (tests only) --------------------------------------------------------------------------------------


async def control_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json() if (await request.read()).strip() else {}
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text='{"error": "a JSON object is required"}', content_type="application/json")
    return body


async def control_fail(request: web.Request) -> web.Response:
    body = await control_body(request)
    try:
        status = HTTPStatus(int(body["status"]))  # ValueError for a code HTTP does not define
        if not 400 <= status <= 599:
            raise ValueError("status must be 400-599")
        path = body.get("path")
        if path is None:
            path = "^" + re.escape(str(body.get("path_prefix") or "/"))
        failure = Failure(
            count=int(body.get("count", 1)),
            status=status,
            pattern=re.compile(str(path)),
            method=str(body["method"]).upper() if body.get("method") else None,
            retry_after=None if body.get("retry_after") is None else int(body["retry_after"]),
            code=str(body["code"]) if body.get("code") else None,
            message=str(body["message"]) if body.get("message") else None,
        )
    except (KeyError, TypeError, ValueError, re.error) as exc:
        return web.json_response({"error": f"bad failure: {exc}"}, status=400)
    cfg = request.app[CONFIG]
    cfg.failures.append(failure)
    return web.json_response({"queued": len(cfg.failures)})


async def control_clear_failures(request: web.Request) -> web.Response:
    """Drop the injected failures not yet served, and nothing else: a test's fault is gone, its state stays."""
    cfg = request.app[CONFIG]
    dropped = len(cfg.failures)
    cfg.failures.clear()
    return web.json_response({"dropped": dropped})


async def control_reset(request: web.Request) -> web.Response:
    """Drop injected failures, every issued token and every application and service principal."""
    cfg = request.app[CONFIG]
    cfg.failures.clear()
    cfg.tokens.clear()
    cfg.directory.reset()
    return web.json_response({"reset": True})


async def control_expire_tokens(request: web.Request) -> web.Response:
    """Make every issued token expired now: Graph answers 401 "Lifetime validation failed" until a new one."""
    cfg = request.app[CONFIG]
    for issued in cfg.tokens.values():
        issued.expires_at = min(issued.expires_at, time.time() - 1)
    return web.json_response({"expired": len(cfg.tokens)})


# -- access log and application ------------------------------------------------------------------------------------


class AccessLogger(AbstractAccessLogger):
    """One line per request: address, request line (secret-looking query values masked), status, size, time.
    Never headers or bodies, so never a token, a client secret or a generated secretText."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        line = SENSITIVE_QUERY.sub(lambda m: f"{m.group(1)}=***", request.path_qs)
        self.logger.info(
            '%s "%s %s" %s %s %.6fs', request.remote, request.method, line, response.status, response.body_length, time
        )


def build_app(
    data_dir: Path, *, tenant: str, client_id: str, client_secret: str, token_ttl: int = 3599
) -> web.Application:
    app = web.Application(middlewares=[microsoft])
    app[CONFIG] = Config(
        directory=Directory(data_dir, tenant),
        tenant=tenant,
        client_id=client_id,
        client_secret=client_secret,
        token_ttl=token_ttl,
    )
    router = app.router
    router.add_route("*", "/{tenant}/oauth2/v2.0/token", token)
    base = GRAPH_VERSION + "/applications"
    router.add_get(base, list_applications)
    router.add_post(base, create_application)
    by_id = base + "/{id}"
    router.add_get(by_id, get_application)
    router.add_patch(by_id, update_application)
    router.add_delete(by_id, delete_application)
    for name, handler in (("addPassword", add_password), ("removePassword", remove_password)):
        router.add_post(f"{by_id}/{name}", handler)
        router.add_post(f"{by_id}/microsoft.graph.{name}", handler)  # Graph accepts the qualified name too
    by_app_id = base + "(appId='{appId}')"
    router.add_get(by_app_id, get_application)
    router.add_patch(by_app_id, update_application)
    router.add_post(GRAPH_VERSION + "/servicePrincipals", create_service_principal)
    router.add_post("/_control/fail", control_fail)
    router.add_post("/_control/reset", control_reset)
    router.add_post("/_control/clear-failures", control_clear_failures)
    router.add_post("/_control/expire-tokens", control_expire_tokens)
    return app

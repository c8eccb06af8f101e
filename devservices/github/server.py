"""HTTP routes of the local GitHub: the REST subset in shared/contracts/github-rest-subset.json, git smart HTTP
through `git http-backend`, and a small control API for failure injection.

Bodies follow the contract's schemas and the shapes GitHub really sends (`message`, `documentation_url`,
`status` on errors). Git work happens in `state.Store`, called from worker threads.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

from aiohttp import web

from devservices.github.state import Repo, RepoError, Store

log = logging.getLogger("devservices.github")

DOCS = "https://docs.github.com/rest"
RATE_LIMIT_DOCS = f"{DOCS}/using-the-rest-api/rate-limits-for-the-rest-api"
GIT_HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Failure:
    """The next `count` API calls whose path starts with `path_prefix` answer `status`."""

    count: int
    status: int
    retry_after: int | None = None
    path_prefix: str = "/"
    method: str | None = None


@dataclass
class RateLimit:
    """GitHub's primary rate limit for the one token: `limit` calls per hour."""

    limit: int
    used: int = 0
    reset: int = 0

    def window(self) -> None:
        if time.time() >= self.reset:
            self.used, self.reset = 0, int(time.time()) + 3600

    def headers(self) -> dict[str, str]:
        self.window()
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(self.limit - self.used, 0)),
            "X-RateLimit-Reset": str(self.reset),
            "X-RateLimit-Used": str(self.used),
            "X-RateLimit-Resource": "core",
        }


@dataclass
class Config:
    store: Store
    token: str
    user: str
    orgs: list[str]
    generate_delay: float
    rate: RateLimit
    failures: list[Failure] = field(default_factory=list)
    pending: set[asyncio.Task[None]] = field(default_factory=set)


CONFIG = web.AppKey("config", Config)


def error(status: int, message: str, docs: str, **extra: Any) -> web.Response:
    """GitHub's error body: `basic-error`, or `validation-error` when `errors` is given."""
    body = {"message": message, "documentation_url": docs, "status": str(status), **extra}
    return web.json_response(body, status=status)


def not_found(docs: str) -> web.Response:
    return error(404, "Not Found", docs)


def validation_failed(message: str, docs: str, *, field_name: str, code: str, detail: str = "") -> web.Response:
    item = {"resource": "Repository", "code": code, "field": field_name, **({"message": detail} if detail else {})}
    return error(422, message, docs, errors=[item])


# -- JSON shapes -----------------------------------------------------------------------------------------------


def account(base: str, login: str, orgs: list[str]) -> dict[str, Any]:
    """`simple-user` for a user or an organization."""
    account_id = zlib.crc32(login.lower().encode()) & 0x7FFFFFFF
    api = f"{base}/users/{login}"
    return {
        "login": login,
        "id": account_id,
        "node_id": base64.b64encode(f"04:User{account_id}".encode()).decode(),
        "avatar_url": f"{base}/avatars/{login}",
        "gravatar_id": "",
        "url": api,
        "html_url": f"{base}/{login}",
        "followers_url": f"{api}/followers",
        "following_url": f"{api}/following{{/other_user}}",
        "gists_url": f"{api}/gists{{/gist_id}}",
        "starred_url": f"{api}/starred{{/owner}}{{/repo}}",
        "subscriptions_url": f"{api}/subscriptions",
        "organizations_url": f"{api}/orgs",
        "repos_url": f"{api}/repos",
        "events_url": f"{api}/events{{/privacy}}",
        "received_events_url": f"{api}/received_events",
        "type": "Organization" if login.lower() in {o.lower() for o in orgs} else "User",
        "user_view_type": "public",
        "site_admin": False,
    }


def repository(base: str, repo: Repo, orgs: list[str]) -> dict[str, Any]:
    """The fields `repository` and `full-repository` share."""
    api = f"{base}/repos/{repo.full_name}"
    html = f"{base}/git/{repo.full_name}"
    templated = {
        "archive_url": "/{archive_format}{/ref}",
        "assignees_url": "/assignees{/user}",
        "blobs_url": "/git/blobs{/sha}",
        "branches_url": "/branches{/branch}",
        "collaborators_url": "/collaborators{/collaborator}",
        "comments_url": "/comments{/number}",
        "commits_url": "/commits{/sha}",
        "compare_url": "/compare/{base}...{head}",
        "contents_url": "/contents/{+path}",
        "contributors_url": "/contributors",
        "deployments_url": "/deployments",
        "downloads_url": "/downloads",
        "events_url": "/events",
        "forks_url": "/forks",
        "git_commits_url": "/git/commits{/sha}",
        "git_refs_url": "/git/refs{/sha}",
        "git_tags_url": "/git/tags{/sha}",
        "hooks_url": "/hooks",
        "issue_comment_url": "/issues/comments{/number}",
        "issue_events_url": "/issues/events{/number}",
        "issues_url": "/issues{/number}",
        "keys_url": "/keys{/key_id}",
        "labels_url": "/labels{/name}",
        "languages_url": "/languages",
        "merges_url": "/merges",
        "milestones_url": "/milestones{/number}",
        "notifications_url": "/notifications{?since,all,participating}",
        "pulls_url": "/pulls{/number}",
        "releases_url": "/releases{/id}",
        "stargazers_url": "/stargazers",
        "statuses_url": "/statuses/{sha}",
        "subscribers_url": "/subscribers",
        "subscription_url": "/subscription",
        "tags_url": "/tags",
        "teams_url": "/teams",
        "trees_url": "/git/trees{/sha}",
    }
    host = base.split("://", 1)[-1]
    return {
        "id": repo.id,
        "node_id": base64.b64encode(f"010:Repository{repo.id}".encode()).decode(),
        "name": repo.name,
        "full_name": repo.full_name,
        "owner": account(base, repo.owner, orgs),
        "private": repo.private,
        "visibility": "private" if repo.private else "public",
        "html_url": html,
        "description": repo.description,
        "fork": False,
        "url": api,
        **{key: api + suffix for key, suffix in templated.items()},
        "clone_url": f"{html}.git",
        "git_url": f"git://{host}/{repo.full_name}.git",
        "ssh_url": f"git@{host}:{repo.full_name}.git",
        "svn_url": html,
        "mirror_url": None,
        "homepage": None,
        "language": None,
        "license": None,
        "forks": 0,
        "forks_count": 0,
        "stargazers_count": 0,
        "watchers": 0,
        "watchers_count": 0,
        "open_issues": 0,
        "open_issues_count": 0,
        "size": 0,
        "default_branch": repo.default_branch,
        "is_template": repo.is_template,
        "topics": [],
        "has_issues": True,
        "has_projects": True,
        "has_wiki": True,
        "has_pages": False,
        "has_downloads": True,
        "has_discussions": False,
        "archived": False,
        "disabled": False,
        "pushed_at": repo.pushed_at,
        "created_at": repo.created_at,
        "updated_at": repo.updated_at,
        "permissions": {"admin": True, "maintain": True, "push": True, "triage": True, "pull": True},
        "allow_forking": True,
        "web_commit_signoff_required": False,
    }


def full_repository(cfg: Config, base: str, repo: Repo) -> dict[str, Any]:
    body = repository(base, repo, cfg.orgs)
    body.update(network_count=0, subscribers_count=0, temp_clone_token="")
    if body["owner"]["type"] == "Organization":
        body["organization"] = body["owner"]
    if repo.template:
        owner, name = repo.template.split("/", 1)
        try:
            body["template_repository"] = repository(base, cfg.store.get(owner, name), cfg.orgs)
        except RepoError:
            body["template_repository"] = None
    return body


def git_ref(base: str, repo: Repo, ref: str, sha: str, kind: str) -> dict[str, Any]:
    api = f"{base}/repos/{repo.full_name}"
    return {
        "ref": ref,
        "node_id": base64.b64encode(f"03:Ref{repo.id}:{ref}".encode()).decode(),
        "url": f"{api}/git/{ref}",
        "object": {"type": kind, "sha": sha, "url": f"{api}/git/{kind}s/{sha}"},
    }


# -- middleware ------------------------------------------------------------------------------------------------


def token_of(request: web.Request) -> str | None:
    """The token from `Authorization: Bearer|token T` (API) or basic auth with the token as password (git)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() in {"bearer", "token"}:
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip()).decode().partition(":")[2]
        except ValueError:
            return ""
    return None


@web.middleware
async def github(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Token check, injected failures and rate-limit headers around every API call."""
    cfg = request.app[CONFIG]
    path = request.path
    if path.startswith("/_control/"):
        try:
            return await handler(request)
        except Refusal as refusal:
            return refusal.response
    token = token_of(request)
    authorized = token is not None and hmac.compare_digest(token.encode(), cfg.token.encode())
    if path.startswith("/git/"):
        if authorized:
            return await handler(request)
        raise web.HTTPUnauthorized(headers={"WWW-Authenticate": 'Basic realm="GitHub"'})
    headers = cfg.rate.headers()
    if not authorized:
        message = "Requires authentication" if token is None else "Bad credentials"
        response: web.StreamResponse = error(401, message, DOCS)
    elif failure := next_failure(cfg, request):
        response = injected(failure)
    elif cfg.rate.used >= cfg.rate.limit and path != "/rate_limit":
        response = error(403, "API rate limit exceeded for user.", RATE_LIMIT_DOCS)
    else:
        if path != "/rate_limit":  # as on GitHub, asking for the rate limit does not count against it
            cfg.rate.used += 1
        headers = cfg.rate.headers()
        try:
            response = await handler(request)
        except Refusal as refusal:
            response = refusal.response
        except web.HTTPException as exc:  # aiohttp's own 404/405 for paths outside the contract
            response = error(exc.status, exc.reason, DOCS)
    for name, value in headers.items():
        response.headers.setdefault(name, value)
    return response


def next_failure(cfg: Config, request: web.Request) -> Failure | None:
    for failure in cfg.failures:
        if request.path.startswith(failure.path_prefix) and failure.method in {None, request.method}:
            failure.count -= 1
            if failure.count <= 0:
                cfg.failures.remove(failure)
            return failure
    return None


def injected(failure: Failure) -> web.Response:
    if failure.status in {403, 429} and failure.retry_after is not None:
        response = error(
            failure.status,
            "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
            f"{RATE_LIMIT_DOCS}#about-secondary-rate-limits",
        )
    elif failure.status == 403:
        response = error(403, "Resource not accessible by integration", DOCS)
    else:
        response = error(failure.status, HTTPStatus(failure.status).phrase, DOCS)
    if failure.retry_after is not None:
        response.headers["Retry-After"] = str(failure.retry_after)
    return response


# -- REST operations -------------------------------------------------------------------------------------------


def base_url(request: web.Request) -> str:
    return str(request.url.origin())


class Refusal(Exception):
    """Raised by a handler's helpers to answer with an error at once; the middleware sends `response`."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


async def target_repo(request: web.Request, docs: str) -> Repo:
    """The `{owner}/{repo}` of the path, or a 404 refusal."""
    repo = await find_repo(request.app[CONFIG], request.match_info["owner"], request.match_info["repo"])
    if repo is None:
        raise Refusal(not_found(docs))
    return repo


async def find_repo(cfg: Config, owner: str, name: str) -> Repo | None:
    try:
        return await asyncio.to_thread(cfg.store.get, owner, name)
    except RepoError:
        return None


async def json_body(request: web.Request, docs: str) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise Refusal(error(400, "Problems parsing JSON", docs))
    return body


async def create_in_org(request: web.Request) -> web.Response:
    docs = f"{DOCS}/repos/repos#create-an-organization-repository"
    cfg = request.app[CONFIG]
    org = request.match_info["org"]
    if org.lower() not in {o.lower() for o in cfg.orgs}:
        return not_found(docs)
    org = next(o for o in cfg.orgs if o.lower() == org.lower())
    body = await json_body(request, docs)
    if not isinstance(body.get("name"), str) or not body["name"]:
        return validation_failed("Repository creation failed.", docs, field_name="name", code="missing_field")
    try:
        repo = await asyncio.to_thread(
            cfg.store.create,
            org,
            body["name"],
            description=body.get("description"),
            private=bool(body.get("private")) or body.get("visibility") == "private",
            is_template=bool(body.get("is_template")),
        )
    except RepoError as exc:
        code = "custom" if exc.kind == "exists" else "invalid"
        return validation_failed("Repository creation failed.", docs, field_name="name", code=code, detail=exc.message)
    payload = full_repository(cfg, base_url(request), repo)
    return web.json_response(payload, status=201, headers={"Location": payload["url"]})


async def generate(request: web.Request) -> web.Response:
    docs = f"{DOCS}/repos/repos#create-a-repository-using-a-template"
    cfg = request.app[CONFIG]
    template = await find_repo(cfg, request.match_info["template_owner"], request.match_info["template_repo"])
    if template is None:
        return not_found(docs)
    body = await json_body(request, docs)
    if not template.is_template:
        return error(422, f"{template.full_name} is not a template repository", docs)
    owner = body.get("owner") or cfg.user
    known = {cfg.user.lower(): cfg.user, **{o.lower(): o for o in cfg.orgs}}
    if not isinstance(owner, str) or owner.lower() not in known:
        return validation_failed("Repository creation failed.", docs, field_name="owner", code="invalid")
    if not isinstance(body.get("name"), str) or not body["name"]:
        return validation_failed("Repository creation failed.", docs, field_name="name", code="missing_field")
    try:
        repo = await asyncio.to_thread(
            cfg.store.create,
            known[owner.lower()],
            body["name"],
            description=body.get("description"),
            private=bool(body.get("private")),
            template=template.full_name,
        )
    except RepoError as exc:
        message = (
            "Could not clone: Name already exists on this account"
            if exc.kind == "exists"
            else "Repository creation failed."
        )
        code = "custom" if exc.kind == "exists" else "invalid"
        return validation_failed(message, docs, field_name="name", code=code, detail=exc.message)
    # GitHub answers at once and copies the content in the background: clients must wait for the branch.
    task = asyncio.create_task(copy_later(cfg, template, repo, all_branches=bool(body.get("include_all_branches"))))
    cfg.pending.add(task)
    task.add_done_callback(cfg.pending.discard)
    payload = full_repository(cfg, base_url(request), repo)
    return web.json_response(payload, status=201, headers={"Location": payload["url"]})


async def copy_later(cfg: Config, template: Repo, repo: Repo, *, all_branches: bool) -> None:
    await asyncio.sleep(cfg.generate_delay)
    try:
        await asyncio.to_thread(
            cfg.store.copy_template, template, repo.owner, repo.name, all_branches=all_branches, login=cfg.user
        )
    except Exception:
        log.exception("copying template %s into %s failed", template.full_name, repo.full_name)


async def get_repo(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG]
    repo = await target_repo(request, f"{DOCS}/repos/repos#get-a-repository")
    return web.json_response(full_repository(cfg, base_url(request), repo))


async def delete_repo(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG]
    try:
        await asyncio.to_thread(cfg.store.delete, request.match_info["owner"], request.match_info["repo"])
    except RepoError:
        return not_found(f"{DOCS}/repos/repos#delete-a-repository")
    return web.Response(status=204)


def ref_error(exc: RepoError, docs: str) -> web.Response:
    if exc.kind == "empty":
        return error(409, exc.message, docs)
    if exc.kind == "not_found":
        return not_found(docs)
    return error(422, exc.message, docs)


async def get_ref(request: web.Request) -> web.Response:
    docs = f"{DOCS}/git/refs#get-a-reference"
    cfg = request.app[CONFIG]
    repo = await target_repo(request, docs)
    ref = request.match_info["ref"]
    try:
        sha, kind = await asyncio.to_thread(cfg.store.get_ref, repo, ref)
    except RepoError as exc:
        return ref_error(exc, docs)
    return web.json_response(git_ref(base_url(request), repo, f"refs/{ref}", sha, kind))


async def create_ref(request: web.Request) -> web.Response:
    docs = f"{DOCS}/git/refs#create-a-reference"
    cfg = request.app[CONFIG]
    repo = await target_repo(request, docs)
    body = await json_body(request, docs)
    ref, sha = body.get("ref"), body.get("sha")
    if not isinstance(ref, str) or not isinstance(sha, str):
        return error(422, 'Invalid request.\n\n"ref" and "sha" are required.', docs)
    try:
        kind = await asyncio.to_thread(cfg.store.create_ref, repo, ref, sha)
    except RepoError as exc:
        return ref_error(exc, docs)
    payload = git_ref(base_url(request), repo, ref, sha, kind)
    return web.json_response(payload, status=201, headers={"Location": payload["url"]})


async def delete_ref(request: web.Request) -> web.Response:
    docs = f"{DOCS}/git/refs#delete-a-reference"
    cfg = request.app[CONFIG]
    repo = await target_repo(request, docs)
    try:
        await asyncio.to_thread(cfg.store.delete_ref, repo, request.match_info["ref"])
    except RepoError as exc:
        return ref_error(exc, docs)
    return web.Response(status=204)


async def get_branch(request: web.Request) -> web.Response:
    docs = f"{DOCS}/branches/branches#get-a-branch"
    cfg = request.app[CONFIG]
    repo = await target_repo(request, docs)
    name = request.match_info["branch"]
    try:
        sha, _ = await asyncio.to_thread(cfg.store.get_ref, repo, f"heads/{name}")
        commit = await asyncio.to_thread(cfg.store.commit, repo, sha)
    except RepoError:
        return error(404, "Branch not found", docs)
    base = base_url(request)
    api = f"{base}/repos/{repo.full_name}"
    html = f"{base}/git/{repo.full_name}"

    def person(name: str, email: str, date: str) -> dict[str, str]:
        return {"name": name, "email": email, "date": date}

    return web.json_response(
        {
            "name": name,
            "commit": {
                "sha": commit.sha,
                "node_id": base64.b64encode(f"06:Commit{repo.id}:{commit.sha}".encode()).decode(),
                "url": f"{api}/commits/{commit.sha}",
                "html_url": f"{html}/commit/{commit.sha}",
                "comments_url": f"{api}/commits/{commit.sha}/comments",
                "commit": {
                    "url": f"{api}/git/commits/{commit.sha}",
                    "author": person(commit.author_name, commit.author_email, commit.author_date),
                    "committer": person(commit.committer_name, commit.committer_email, commit.committer_date),
                    "message": commit.message,
                    "comment_count": 0,
                    "tree": {"sha": commit.tree, "url": f"{api}/git/trees/{commit.tree}"},
                    "verification": {
                        "verified": False,
                        "reason": "unsigned",
                        "signature": None,
                        "payload": None,
                        "verified_at": None,
                    },
                },
                # GitHub maps the emails to accounts; there are no accounts here beyond the token's owner.
                "author": {},
                "committer": {},
                "parents": [
                    {"sha": p, "url": f"{api}/commits/{p}", "html_url": f"{html}/commit/{p}"} for p in commit.parents
                ],
            },
            "_links": {"self": f"{api}/branches/{name}", "html": f"{html}/tree/{name}"},
            "protected": False,
            "protection": {
                "enabled": False,
                "required_status_checks": {"enforcement_level": "off", "contexts": [], "checks": []},
            },
            "protection_url": f"{api}/branches/{name}/protection",
        }
    )


async def rate_limit(request: web.Request) -> web.Response:
    rate = request.app[CONFIG].rate
    rate.window()
    core = {"limit": rate.limit, "used": rate.used, "remaining": max(rate.limit - rate.used, 0), "reset": rate.reset}
    other = {"limit": 30, "used": 0, "remaining": 30, "reset": int(time.time()) + 60}
    graphql = {"limit": 5000, "used": 0, "remaining": 5000, "reset": rate.reset}
    return web.json_response({"resources": {"core": core, "search": other, "graphql": graphql}, "rate": core})


# -- git smart HTTP --------------------------------------------------------------------------------------------


async def git_http(request: web.Request) -> web.StreamResponse:
    """Serve clone/fetch/push through `git http-backend` (CGI), for `/git/<owner>/<repo>[.git]/...`."""
    cfg = request.app[CONFIG]
    owner, name = request.match_info["owner"], request.match_info["repo"].removesuffix(".git")
    if await find_repo(cfg, owner, name) is None:
        raise web.HTTPNotFound(text="Repository not found.\n")
    git_dir = cfg.store.git_dir(owner, name)
    env = {
        "GIT_PROJECT_ROOT": str(cfg.store.root),
        "GIT_HTTP_EXPORT_ALL": "1",
        "PATH_INFO": f"/{git_dir.relative_to(cfg.store.root)}/{request.match_info['tail']}",
        "QUERY_STRING": request.query_string,
        "REQUEST_METHOD": request.method,
        "CONTENT_TYPE": request.headers.get("Content-Type", ""),
        "REMOTE_USER": cfg.user,
        "REMOTE_ADDR": request.remote or "",
        "GIT_PROTOCOL": request.headers.get("Git-Protocol", ""),
        "PATH": "/usr/bin:/bin",
    }
    # aiohttp has already un-gzipped a `Content-Encoding: gzip` body (git sends those above 1 KiB), so the
    # backend gets plain bytes, and no length when the declared one is the compressed size: it reads to EOF.
    if request.content_length is not None and "Content-Encoding" not in request.headers:
        env["CONTENT_LENGTH"] = str(request.content_length)
    proc = await asyncio.create_subprocess_exec(
        GIT_HTTP_BACKEND,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdin and proc.stdout and proc.stderr

    async def feed() -> None:
        assert proc.stdin
        async for chunk in request.content.iter_chunked(65536):
            proc.stdin.write(chunk)
            await proc.stdin.drain()
        proc.stdin.close()

    feeding = asyncio.create_task(feed())
    status, headers = 200, {}
    while line := (await proc.stdout.readline()).decode("latin-1").rstrip("\r\n"):
        key, _, value = line.partition(":")
        if key.lower() == "status":
            status = int(value.split()[0])
        else:
            headers[key] = value.strip()
    response = web.StreamResponse(status=status, headers=headers)
    await response.prepare(request)
    while chunk := await proc.stdout.read(65536):
        await response.write(chunk)
    await feeding
    stderr = await proc.stderr.read()
    if await proc.wait() != 0:
        log.warning("git http-backend failed for %s: %s", request.path, stderr.decode(errors="replace").strip())
    elif request.method == "POST" and request.match_info["tail"] == "git-receive-pack":
        await asyncio.to_thread(cfg.store.touch_pushed, owner, name)
    await response.write_eof()
    return response


# -- control API (tests only) ----------------------------------------------------------------------------------


async def control_fail(request: web.Request) -> web.Response:
    body = await json_body(request, DOCS)
    failure = Failure(
        count=int(body.get("count", 1)),
        status=int(body["status"]),
        retry_after=None if body.get("retry_after") is None else int(body["retry_after"]),
        path_prefix=str(body.get("path_prefix") or "/"),
        method=str(body["method"]).upper() if body.get("method") else None,
    )
    request.app[CONFIG].failures.append(failure)
    return web.json_response({"queued": len(request.app[CONFIG].failures)})


async def control_clear_failures(request: web.Request) -> web.Response:
    """Drop the injected failures not yet served, and nothing else: a test's fault is gone, its state stays."""
    cfg = request.app[CONFIG]
    dropped = len(cfg.failures)
    cfg.failures.clear()
    return web.json_response({"dropped": dropped})


async def control_reset(request: web.Request) -> web.Response:
    """Drop injected failures, the rate-limit count and every repository."""
    cfg = request.app[CONFIG]
    for task in list(cfg.pending):
        task.cancel()
    cfg.failures.clear()
    cfg.rate.used, cfg.rate.reset = 0, 0
    await asyncio.to_thread(cfg.store.reset)
    return web.json_response({"reset": True})


# -- application -----------------------------------------------------------------------------------------------


def build_app(
    data_dir: Path,
    *,
    token: str,
    user: str = "local-user",
    orgs: list[str] | None = None,
    generate_delay: float = 0.5,
    rate_limit_per_hour: int = 5000,
) -> web.Application:
    app = web.Application(middlewares=[github])
    app[CONFIG] = Config(
        store=Store(data_dir),
        token=token,
        user=user,
        orgs=orgs or ["local-org"],
        generate_delay=generate_delay,
        rate=RateLimit(rate_limit_per_hour),
    )
    repo = "/repos/{owner}/{repo}"
    app.router.add_post("/repos/{template_owner}/{template_repo}/generate", generate)
    app.router.add_get(repo, get_repo)
    app.router.add_delete(repo, delete_repo)
    app.router.add_post("/orgs/{org}/repos", create_in_org)
    app.router.add_get(repo + "/git/ref/{ref:.+}", get_ref)
    app.router.add_post(repo + "/git/refs", create_ref)
    app.router.add_delete(repo + "/git/refs/{ref:.+}", delete_ref)
    app.router.add_get(repo + "/branches/{branch:.+}", get_branch)
    app.router.add_get("/rate_limit", rate_limit)
    app.router.add_route("*", "/git/{owner}/{repo}/{tail:.*}", git_http)
    app.router.add_post("/_control/fail", control_fail)
    app.router.add_post("/_control/reset", control_reset)
    app.router.add_post("/_control/clear-failures", control_clear_failures)

    async def cancel_pending(app: web.Application) -> None:
        for task in list(app[CONFIG].pending):
            task.cancel()

    app.on_shutdown.append(cancel_pending)
    return app

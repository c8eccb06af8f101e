"""The local GitHub against shared/contracts/github-rest-subset.json (openapi-core), and against real git.

Every reply the server can give is checked: declared statuses against their response in the document,
undeclared ones (401 everywhere, 429, 404 on generate...) against the component GitHub sends for them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.contract.conftest import ORG, USER, Contract, Git, GitHub, start_github

pytestmark = pytest.mark.integration

REF = "/repos/{owner}/{repo}/git/ref/{ref}"
REFS = "/repos/{owner}/{repo}/git/refs/{ref}"
BRANCH = "/repos/{owner}/{repo}/branches/{branch}"
RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def make_template(github: GitHub, git: Git, tmp: Path, name: str = "template") -> dict[str, str]:
    """A template repository with two files on main, pushed over HTTP; returns the branch's sha."""
    assert github.create_repo(name, is_template=True).status == 201
    work = tmp / name
    git.run("clone", "-q", github.clone_url(name), str(work))
    (work / "README.md").write_text("# template\n")
    (work / "app").mkdir()
    (work / "app" / "main.py").write_text("print('hello')\n")
    git.run("add", ".", cwd=work)
    git.run("commit", "-qm", "template content", cwd=work)
    git.run("push", "-q", "origin", "HEAD:main", cwd=work)
    return {"sha": git.run("rev-parse", "HEAD", cwd=work).stdout.strip()}


def test_rate_limit(github: GitHub, contract: Contract) -> None:
    reply = github.call("GET", "/rate_limit")
    contract.check(reply)
    assert reply.status == 200
    before = reply.json()["resources"]["core"]
    contract.check(github.call("GET", f"/repos/{ORG}/nothing"))
    after = github.call("GET", "/rate_limit").json()["resources"]["core"]
    assert after["used"] == before["used"] + 1 and after["remaining"] == before["remaining"] - 1
    assert int(reply.headers["X-RateLimit-Reset"]) > time.time()


def test_rate_limit_headers_on_every_response(github: GitHub, contract: Contract) -> None:
    # The document describes these headers on GET /rate_limit only; GitHub sends them on every API reply,
    # so their presence and integer type are checked here for the others.
    replies = [
        github.create_repo("headers"),
        github.call("GET", f"/repos/{ORG}/headers"),
        github.call("GET", f"/repos/{ORG}/missing"),
        github.call("GET", f"/repos/{ORG}/headers", token="wrong"),
        github.call("DELETE", f"/repos/{ORG}/headers"),
    ]
    for reply in replies:
        for header in RATE_HEADERS:
            assert int(reply.headers[header]) >= 0, (reply.path, reply.status, header)


def test_primary_rate_limit_exhausted_is_403(tmp_path: Path, contract: Contract) -> None:
    server = start_github(tmp_path, "--rate-limit", "2")
    try:
        assert [server.call("GET", f"/repos/{ORG}/r").status for _ in range(2)] == [404, 404]
        over = server.call("GET", f"/repos/{ORG}/r")
        assert over.status == 403 and over.headers["X-RateLimit-Remaining"] == "0"
        assert over.json()["message"].startswith("API rate limit exceeded")
        contract.check(over)  # GET /repos/{owner}/{repo} declares 403 (forbidden)
        assert server.call("GET", "/rate_limit").json()["rate"]["remaining"] == 0  # still answers
    finally:
        server.stop()


def test_org_repo_create_get_delete(github: GitHub, contract: Contract) -> None:
    created = github.create_repo("plain", description="a repo", private=True)
    contract.check(created)
    assert created.status == 201
    body = created.json()
    assert created.headers["Location"] == f"{github.base}/repos/{ORG}/plain"
    assert body["full_name"] == f"{ORG}/plain" and body["private"] and body["owner"]["type"] == "Organization"
    assert body["clone_url"] == f"{github.base}/git/{ORG}/plain.git"

    got = github.call("GET", f"/repos/{ORG}/PLAIN")  # names are case-insensitive, as on GitHub
    contract.check(got)
    assert got.status == 200 and got.json()["name"] == "plain"

    deleted = github.call("DELETE", f"/repos/{ORG}/plain")
    contract.check(deleted)
    assert deleted.status == 204

    for method in ("GET", "DELETE"):
        gone = github.call(method, f"/repos/{ORG}/plain")
        contract.check(gone)
        assert gone.status == 404 and gone.json()["message"] == "Not Found"


def test_org_repo_validation_errors(github: GitHub, contract: Contract) -> None:
    assert github.create_repo("taken").status == 201
    for name, detail in (("taken", "name already exists on this account"), ("bad name!", "name is invalid")):
        reply = github.create_repo(name)
        contract.check(reply)
        assert reply.status == 422
        assert reply.json()["errors"] == [{"resource": "Repository", "code": "custom" if name == "taken" else "invalid",
                                           "field": "name", "message": detail}]  # fmt: skip
    missing = github.call("POST", f"/orgs/{ORG}/repos", {"description": "no name"})
    contract.check(missing)
    assert missing.status == 422 and missing.json()["errors"][0]["code"] == "missing_field"

    # POST /orgs/{org}/repos declares 201, 403, 422: an unknown organization's 404 is not in the document.
    unknown = github.call("POST", "/orgs/no-such-org/repos", {"name": "x"})
    assert unknown.status == 404
    contract.undeclared(unknown)


def test_bad_or_missing_token_is_401_everywhere(github: GitHub, contract: Contract) -> None:
    # No operation in the document declares 401: each reply is proven undeclared, then checked as basic-error.
    calls = [
        ("POST", f"/repos/{ORG}/t/generate", {"name": "x"}, None),
        ("GET", f"/repos/{ORG}/r", None, None),
        ("DELETE", f"/repos/{ORG}/r", None, None),
        ("POST", f"/orgs/{ORG}/repos", {"name": "x"}, None),
        ("GET", f"/repos/{ORG}/r/git/ref/heads/main", None, REF),
        ("POST", f"/repos/{ORG}/r/git/refs", {"ref": "refs/heads/x", "sha": "0" * 40}, None),
        ("DELETE", f"/repos/{ORG}/r/git/refs/heads/x", None, REFS),
        ("GET", f"/repos/{ORG}/r/branches/main", None, BRANCH),
        ("GET", "/rate_limit", None, None),
    ]
    for method, path, body, pattern in calls:
        for token, message in (("ghs_wrong", "Bad credentials"), (None, "Requires authentication")):
            reply = github.call(method, path, body, token=token)
            assert reply.status == 401, (method, path)
            assert reply.json()["message"] == message
            contract.undeclared(reply, pattern=pattern)
    assert not list(github.data_dir.glob("repos/*/*.json")), "a rejected call changed state"


def test_refs_on_empty_repo_are_409(github: GitHub, contract: Contract) -> None:
    assert github.create_repo("empty").status == 201
    get = github.call("GET", f"/repos/{ORG}/empty/git/ref/heads/main")
    create = github.call("POST", f"/repos/{ORG}/empty/git/refs", {"ref": "refs/heads/x", "sha": "a" * 40})
    delete = github.call("DELETE", f"/repos/{ORG}/empty/git/refs/heads/main")
    for reply, pattern in ((get, REF), (create, None), (delete, REFS)):
        assert reply.status == 409 and reply.json()["message"] == "Git Repository is empty."
        contract.check(reply, pattern)
    # DELETE .../git/refs/{ref} declares 409 with a basic-error body; the others too, checked above.
    branch = github.call("GET", f"/repos/{ORG}/empty/branches/main")
    contract.check(branch, BRANCH)
    assert branch.status == 404 and branch.json()["message"] == "Branch not found"


def test_generate_clone_branch_push_delete(github: GitHub, contract: Contract, git: Git, tmp_path: Path) -> None:
    make_template(github, git, tmp_path)

    generated = github.call(
        "POST", f"/repos/{ORG}/template/generate", {"owner": ORG, "name": "ws", "description": "workspace"}
    )
    contract.check(generated)
    assert generated.status == 201
    body = generated.json()
    assert body["template_repository"]["full_name"] == f"{ORG}/template"
    assert generated.headers["Location"] == f"{github.base}/repos/{ORG}/ws"

    # Asynchronous like GitHub: the repository exists at once, its content a moment later.
    early = github.call("GET", f"/repos/{ORG}/ws/branches/main")
    assert early.status == 404
    contract.check(early, BRANCH)
    branch = github.wait_branch("ws", "main")
    contract.check(branch, BRANCH)
    assert branch.status == 200
    head = branch.json()["commit"]
    assert head["commit"]["message"] == "Initial commit" and head["parents"] == []  # fresh history
    assert head["commit"]["author"]["name"] == USER

    clone = tmp_path / "ws"
    git.run("clone", "-q", github.clone_url("ws"), str(clone))
    assert (clone / "README.md").read_text() == "# template\n"
    assert (clone / "app" / "main.py").read_text() == "print('hello')\n"
    assert git.run("rev-parse", "HEAD", cwd=clone).stdout.strip() == head["sha"]

    ref = github.call("GET", f"/repos/{ORG}/ws/git/ref/heads/main")
    contract.check(ref, REF)
    assert ref.status == 200 and ref.json()["object"] == {
        "type": "commit",
        "sha": head["sha"],
        "url": f"{github.base}/repos/{ORG}/ws/git/commits/{head['sha']}",
    }

    created = github.call("POST", f"/repos/{ORG}/ws/git/refs", {"ref": "refs/heads/sandbox/one", "sha": head["sha"]})
    contract.check(created)
    assert created.status == 201 and created.json()["ref"] == "refs/heads/sandbox/one"
    remote = git.run("ls-remote", github.clone_url("ws")).stdout
    assert f"{head['sha']}\trefs/heads/sandbox/one" in remote

    again = github.call("POST", f"/repos/{ORG}/ws/git/refs", {"ref": "refs/heads/sandbox/one", "sha": head["sha"]})
    contract.check(again)
    assert again.status == 422 and again.json()["message"] == "Reference already exists"
    for bad in ({"ref": "heads/x", "sha": head["sha"]}, {"ref": "refs/heads/y", "sha": "f" * 40}):
        rejected = github.call("POST", f"/repos/{ORG}/ws/git/refs", bad)
        contract.check(rejected)
        assert rejected.status == 422

    git.run("checkout", "-q", "-b", "sandbox/one", cwd=clone)
    (clone / "work.txt").write_text("sandbox work\n")
    git.run("add", ".", cwd=clone)
    git.run("commit", "-qm", "work", cwd=clone)
    git.run("push", "-q", "origin", "sandbox/one", cwd=clone)
    pushed = git.run("rev-parse", "HEAD", cwd=clone).stdout.strip()
    on_branch = github.call("GET", f"/repos/{ORG}/ws/branches/sandbox/one")
    contract.check(on_branch, BRANCH)
    assert on_branch.json()["commit"]["sha"] == pushed
    assert on_branch.json()["commit"]["parents"][0]["sha"] == head["sha"]
    assert github.call("GET", f"/repos/{ORG}/ws").json()["pushed_at"] >= body["pushed_at"]

    deleted = github.call("DELETE", f"/repos/{ORG}/ws/git/refs/heads/sandbox/one")
    contract.check(deleted, REFS)
    assert deleted.status == 204
    assert "sandbox/one" not in git.run("ls-remote", github.clone_url("ws")).stdout
    missing = github.call("GET", f"/repos/{ORG}/ws/git/ref/heads/sandbox/one")
    contract.check(missing, REF)
    assert missing.status == 404

    # DELETE .../git/refs/{ref} declares 422 without a body schema; GitHub sends basic-error there.
    for path, message in (("heads/sandbox/one", "Reference does not exist"), ("heads/main", "Cannot delete")):
        refused = github.call("DELETE", f"/repos/{ORG}/ws/git/refs/{path}")
        contract.check(refused, REFS)
        assert refused.status == 422 and refused.json()["message"].startswith(message)
        contract.schema("basic-error", refused.json())

    assert github.call("DELETE", f"/repos/{ORG}/ws").status == 204
    gone = github.call("GET", f"/repos/{ORG}/ws")
    contract.check(gone)
    assert gone.status == 404
    assert git.run("ls-remote", github.clone_url("ws"), check=False).returncode != 0


def test_generate_errors(github: GitHub, contract: Contract, git: Git, tmp_path: Path) -> None:
    # POST .../generate declares only 201: every error is undeclared and checked against its component.
    unknown = github.call("POST", f"/repos/{ORG}/no-template/generate", {"name": "x"})
    assert unknown.status == 404
    contract.undeclared(unknown)

    make_template(github, git, tmp_path)
    assert github.create_repo("taken").status == 201
    taken = github.call("POST", f"/repos/{ORG}/template/generate", {"owner": ORG, "name": "taken"})
    assert taken.status == 422 and "already exists" in taken.json()["message"]
    contract.undeclared(taken, "validation-error")

    invalid = github.call("POST", f"/repos/{ORG}/template/generate", {"owner": ORG, "name": "no/slash"})
    assert invalid.status == 422
    contract.undeclared(invalid, "validation-error")

    not_template = github.call("POST", f"/repos/{ORG}/taken/generate", {"owner": ORG, "name": "y"})
    assert not_template.status == 422
    contract.undeclared(not_template, "validation-error")

    mine = github.call("POST", f"/repos/{ORG}/template/generate", {"name": "personal"})  # owner defaults to user
    contract.check(mine)
    assert mine.json()["owner"]["login"] == USER and mine.json()["owner"]["type"] == "User"


def test_generate_all_branches_and_first_push_default(
    github: GitHub, contract: Contract, git: Git, tmp_path: Path
) -> None:
    make_template(github, git, tmp_path)
    work = tmp_path / "template"
    git.run("push", "-q", "origin", "HEAD:refs/heads/extra", cwd=work)
    reply = github.call(
        "POST", f"/repos/{ORG}/template/generate", {"owner": ORG, "name": "all", "include_all_branches": True}
    )
    contract.check(reply)
    assert github.wait_branch("all", "main").status == 200
    assert github.call("GET", f"/repos/{ORG}/all/branches/extra").status == 200

    # As on GitHub, the first push into an empty repository names its default branch.
    assert github.create_repo("legacy").status == 201
    git.run("push", "-q", github.clone_url("legacy"), "HEAD:refs/heads/master", cwd=work)
    legacy = github.call("GET", f"/repos/{ORG}/legacy")
    contract.check(legacy)
    assert legacy.json()["default_branch"] == "master"


def test_clone_with_wrong_token_fails(github: GitHub, git: Git, tmp_path: Path) -> None:
    make_template(github, git, tmp_path)
    result = git.run("clone", "-q", github.clone_url("template", token="ghs_wrong"), str(tmp_path / "x"), check=False)
    assert result.returncode != 0 and "Authentication failed" in result.stderr
    result = git.run("ls-remote", f"{github.base}/git/{ORG}/template.git", check=False)
    assert result.returncode != 0
    assert not (tmp_path / "x" / "README.md").exists()


def test_injected_failures(github: GitHub, contract: Contract) -> None:
    assert github.create_repo("r").status == 201

    github.control("fail", {"count": 1, "status": 403, "retry_after": 7})
    limited = github.call("GET", f"/repos/{ORG}/r")
    contract.check(limited)  # GET /repos/{owner}/{repo} declares 403 (forbidden, basic-error)
    assert limited.status == 403 and limited.headers["Retry-After"] == "7"
    assert "secondary rate limit" in limited.json()["message"]
    assert all(header in limited.headers for header in RATE_HEADERS)

    github.control("fail", {"count": 1, "status": 429, "retry_after": 1})
    too_many = github.call("GET", f"/repos/{ORG}/r")
    assert too_many.status == 429 and too_many.headers["Retry-After"] == "1"
    contract.undeclared(too_many)  # no operation declares 429

    github.control("fail", {"count": 2, "status": 502, "path_prefix": f"/repos/{ORG}/r/git"})
    assert github.call("GET", f"/repos/{ORG}/r").status == 200  # outside the prefix
    assert [github.call("GET", f"/repos/{ORG}/r/git/ref/heads/main").status for _ in range(3)] == [502, 502, 409]

    github.control("fail", {"count": 5, "status": 500})
    github.control("reset")
    assert github.call("GET", "/rate_limit").status == 200


def test_upstream_flaws_are_handled(contract: Contract, github: GitHub) -> None:
    """The two known flaws of the upstream document (shared/contracts/README.md), pinned so a fixed contract shows."""
    # 1. validation-error.errors[].value is a oneOf of three nullable types: null matches all three, so it
    #    fails. GitHub does send `value: null`; this server leaves `value` out instead.
    with pytest.raises(AssertionError, match="valid under each of"):
        contract.schema("validation-error", {"message": "m", "documentation_url": "d", "errors": [{"code": "c", "value": None}]})  # fmt: skip
    assert github.create_repo("dup").status == 201
    assert all("value" not in item for item in github.create_repo("dup").json()["errors"])

    # 2. The document's own full-repository example lacks the required has_discussions: the example is not
    #    used as a fixture; the server's bodies carry the field (validated in the tests above).
    example = contract.document["components"]["examples"]["full-repository"]["value"]
    assert "has_discussions" not in example
    with pytest.raises(AssertionError, match="has_discussions"):
        contract.schema("full-repository", example)


def test_server_logs_no_token(github: GitHub, git: Git, tmp_path: Path) -> None:
    make_template(github, git, tmp_path)
    github.call("GET", f"/repos/{ORG}/template", token="ghs_wrong")
    log = github.log_path.read_text()
    assert "GET /git/" in log or "POST /git/" in log  # the log is being written
    assert github.token not in log and "ghs_wrong" not in log

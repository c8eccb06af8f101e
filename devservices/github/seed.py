"""Create the workspace template repository on a local GitHub (idempotent): `python -m devservices.github.seed`.

Reads GITHUB_API_URL, GITHUB_TOKEN and the template as `owner/name` (GITHUB_TEMPLATE_REPO). The template is
an organization repository marked `is_template`, with a small app as its first commit, pushed over HTTP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

FILES = {
    "README.md": "# Workspace app\n\nCreated from the local workspace template.\n",
    "app/index.html": "<!doctype html><title>workspace</title><p>workspace app</p>\n",
    "app/health": "ok\n",
}


def api(base: str, token: str, method: str, path: str, body: dict[str, object] | None = None) -> tuple[int, object]:
    request = urllib.request.Request(  # noqa: S310 - a loopback URL given by the operator
        base.rstrip("/") + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def main() -> int:
    base = os.environ["GITHUB_API_URL"]
    token = os.environ["GITHUB_TOKEN"]
    owner, name = os.environ.get("GITHUB_TEMPLATE_REPO", "kanban/workspace-template").split("/", 1)
    status, repo = api(base, token, "GET", f"/repos/{owner}/{name}")
    if status == 200 and isinstance(repo, dict) and repo.get("size", 0) >= 0 and _has_main(base, token, owner, name):
        print(f"github-seed: template {owner}/{name} present")
        return 0
    if status == 404:
        status, repo = api(
            base,
            token,
            "POST",
            f"/orgs/{owner}/repos",
            {"name": name, "is_template": True, "private": False, "auto_init": False},
        )
        if status != 201:
            print(f"github-seed: cannot create {owner}/{name}: {status} {repo}", file=sys.stderr)
            return 1
    assert isinstance(repo, dict)
    parts = urlsplit(str(repo["clone_url"]))
    push_url = urlunsplit(parts._replace(netloc=f"x-access-token:{token}@{parts.netloc}"))
    with tempfile.TemporaryDirectory() as work:
        for path, content in FILES.items():
            target = Path(work, path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1", "HOME": work}
        for args in (
            ["init", "-q", "-b", "main"],
            ["add", "."],
            [
                "-c",
                "user.name=template",
                "-c",
                "user.email=template@localhost",
                "commit",
                "-q",
                "-m",
                "Workspace template",
            ],
            ["push", "-q", push_url, "main"],
        ):
            subprocess.run(["git", *args], cwd=work, env=env, check=True, capture_output=True)
    print(f"github-seed: template {owner}/{name} created")
    return 0


def _has_main(base: str, token: str, owner: str, name: str) -> bool:
    return api(base, token, "GET", f"/repos/{owner}/{name}/branches/main")[0] == 200


if __name__ == "__main__":
    sys.exit(main())

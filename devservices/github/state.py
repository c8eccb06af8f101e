"""The local GitHub's state on disk: one bare git repository and one JSON metadata file per repository.

Layout under the data directory::

    repos/<owner>/<name>.git    bare repository (what `git http-backend` serves)
    repos/<owner>/<name>.json   metadata (id, names, description, visibility, template flags, dates)
    last_id                     the last repository id handed out

Owner and name are case-insensitive as on GitHub: paths are lower-cased, metadata keeps the spelling given
at creation. Every change to refs goes through git itself (`update-ref`, `commit-tree`), never through files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_BRANCH = "main"
# GitHub replaces other characters with '-'; rejecting them instead keeps a client's name and the real one equal.
NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
# The generated initial commit's identity; GitHub uses the account that asked for the repository.
COMMITTER_DOMAIN = "users.noreply.localhost"


class RepoError(Exception):
    """A request the state refuses; `kind` says which GitHub error it maps to."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # not_found | exists | invalid | empty | ref_exists | no_object | no_ref | default_branch
        self.message = message


@dataclass
class Repo:
    id: int
    owner: str
    name: str
    description: str | None
    private: bool
    is_template: bool
    default_branch: str
    created_at: str
    updated_at: str
    pushed_at: str  # GitHub sets it at creation too
    template: str | None = None  # "owner/name" of the template it was generated from

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


@dataclass
class Commit:
    sha: str
    tree: str
    parents: list[str]
    author_name: str
    author_email: str
    author_date: str
    committer_name: str
    committer_email: str
    committer_date: str
    message: str


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Store:
    """Repositories under one data directory. Thread-safe: the HTTP layer calls it from worker threads."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "repos"
        self.root.mkdir(parents=True, exist_ok=True)
        self._id_file = data_dir / "last_id"
        self._lock = threading.RLock()

    # -- paths and metadata -------------------------------------------------------------------------------------

    def git_dir(self, owner: str, name: str) -> Path:
        return self.root / owner.lower() / f"{name.lower()}.git"

    def _meta_path(self, owner: str, name: str) -> Path:
        return self.root / owner.lower() / f"{name.lower()}.json"

    def get(self, owner: str, name: str) -> Repo:
        path = self._meta_path(owner, name)
        try:
            return Repo(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise RepoError("not_found", "Not Found") from None

    def _save(self, repo: Repo) -> None:
        path = self._meta_path(repo.owner, repo.name)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(repo), indent=2))
        tmp.replace(path)

    def _next_id(self) -> int:
        last = int(self._id_file.read_text()) if self._id_file.exists() else 0
        self._id_file.write_text(str(last + 1))
        return last + 1

    # -- repositories -------------------------------------------------------------------------------------------

    def create(
        self,
        owner: str,
        name: str,
        *,
        description: str | None = None,
        private: bool = False,
        is_template: bool = False,
        template: str | None = None,
    ) -> Repo:
        """Create an empty repository (`git init --bare`), as POST /orgs/{org}/repos does without auto_init."""
        if not NAME_RE.fullmatch(name) or name in {".", ".."} or name.lower().endswith(".git"):
            raise RepoError("invalid", "name is invalid")
        with self._lock:
            if self._meta_path(owner, name).exists():
                raise RepoError("exists", "name already exists on this account")
            git_dir = self.git_dir(owner, name)
            git_dir.parent.mkdir(parents=True, exist_ok=True)
            git("init", "--quiet", "--bare", f"--initial-branch={DEFAULT_BRANCH}", str(git_dir))
            stamp = now()
            repo = Repo(
                id=self._next_id(),
                owner=owner,
                name=name,
                description=description,
                private=private,
                is_template=is_template,
                default_branch=DEFAULT_BRANCH,
                created_at=stamp,
                updated_at=stamp,
                pushed_at=stamp,
                template=template,
            )
            self._save(repo)
            return repo

    def delete(self, owner: str, name: str) -> None:
        with self._lock:
            self.get(owner, name)
            shutil.rmtree(self.git_dir(owner, name), ignore_errors=True)
            self._meta_path(owner, name).unlink(missing_ok=True)

    def touch_pushed(self, owner: str, name: str) -> None:
        """Record a push (`pushed_at`); as on GitHub, a first push without the default branch moves it."""
        with self._lock:
            try:
                repo = self.get(owner, name)
            except RepoError:
                return
            branches = self.branches(repo)
            if branches and repo.default_branch not in branches:
                repo.default_branch = branches[0]
                git("symbolic-ref", "HEAD", f"refs/heads/{branches[0]}", git_dir=self.git_dir(owner, name))
            repo.pushed_at = now()
            self._save(repo)

    def reset(self) -> None:
        """Forget every repository."""
        with self._lock:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root.mkdir(parents=True)
            self._id_file.unlink(missing_ok=True)

    def copy_template(self, template: Repo, owner: str, name: str, *, all_branches: bool, login: str) -> None:
        """Fill a generated repository: each copied branch becomes one new root commit with the template's tree.

        That is what GitHub does (the new repository does not share the template's history). Runs after the
        configured delay; a repository deleted meanwhile is left alone.
        """
        with self._lock:
            try:
                repo = self.get(owner, name)
            except RepoError:
                return
            if repo.template != template.full_name:
                return  # deleted meanwhile and created again some other way
            source = self.git_dir(template.owner, template.name)
            target = self.git_dir(owner, name)
            branches = self.branches(template) if all_branches else [template.default_branch]
            identity = {
                "GIT_AUTHOR_NAME": login,
                "GIT_AUTHOR_EMAIL": f"{login}@{COMMITTER_DOMAIN}",
                "GIT_COMMITTER_NAME": login,
                "GIT_COMMITTER_EMAIL": f"{login}@{COMMITTER_DOMAIN}",
            }
            for branch in branches:
                if not ref_sha(source, f"refs/heads/{branch}"):
                    continue  # an empty template gives an empty repository
                staging = f"refs/template-copy/{branch}"
                git("fetch", "--quiet", "--no-tags", str(source), f"refs/heads/{branch}:{staging}", git_dir=target)
                tree = git("rev-parse", f"{staging}^{{tree}}", git_dir=target)
                commit = git("commit-tree", tree, "-m", "Initial commit", git_dir=target, env=identity)
                git("update-ref", f"refs/heads/{branch}", commit, git_dir=target)
                git("update-ref", "-d", staging, git_dir=target)
            repo.default_branch = template.default_branch
            git("symbolic-ref", "HEAD", f"refs/heads/{repo.default_branch}", git_dir=target)
            repo.pushed_at = repo.updated_at = now()
            self._save(repo)

    # -- refs ---------------------------------------------------------------------------------------------------

    def is_empty(self, repo: Repo) -> bool:
        return not git("for-each-ref", "--count=1", "refs/", git_dir=self.git_dir(repo.owner, repo.name))

    def branches(self, repo: Repo) -> list[str]:
        out = git(
            "for-each-ref", "--format=%(refname:strip=2)", "refs/heads/", git_dir=self.git_dir(repo.owner, repo.name)
        )
        return out.splitlines()

    def get_ref(self, repo: Repo, ref: str) -> tuple[str, str]:
        """(sha, object type) of `refs/<ref>`; `ref` is `heads/x` or `tags/x` as in the API."""
        git_dir = self.git_dir(repo.owner, repo.name)
        if self.is_empty(repo):
            raise RepoError("empty", "Git Repository is empty.")
        sha = ref_sha(git_dir, f"refs/{ref}")
        if not sha:
            raise RepoError("not_found", "Not Found")
        return sha, git("cat-file", "-t", sha, git_dir=git_dir)

    def create_ref(self, repo: Repo, ref: str, sha: str) -> str:
        """Create `ref` (fully qualified) at `sha`; returns the object type."""
        git_dir = self.git_dir(repo.owner, repo.name)
        if self.is_empty(repo):
            raise RepoError("empty", "Git Repository is empty.")
        if not ref.startswith("refs/") or ref.count("/") < 2 or not valid_refname(ref):
            raise RepoError("invalid", "Reference name is not valid")
        if not re.fullmatch(r"[0-9a-f]{40}", sha) or not object_exists(git_dir, sha):
            raise RepoError("no_object", "Object does not exist")
        with self._lock:
            # The empty old value makes update-ref fail if the ref appeared meanwhile: no silent overwrite.
            result = subprocess.run(
                ["git", "--git-dir", str(git_dir), "update-ref", "--create-reflog", ref, sha, ""],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise RepoError("ref_exists", "Reference already exists")
        return git("cat-file", "-t", sha, git_dir=git_dir)

    def delete_ref(self, repo: Repo, ref: str) -> None:
        """Delete `refs/<ref>`."""
        git_dir = self.git_dir(repo.owner, repo.name)
        if self.is_empty(repo):
            raise RepoError("empty", "Git Repository is empty.")
        if ref == f"heads/{repo.default_branch}":
            raise RepoError("default_branch", "Cannot delete the default branch")
        with self._lock:
            sha = ref_sha(git_dir, f"refs/{ref}")
            if not sha:
                raise RepoError("no_ref", "Reference does not exist")
            git("update-ref", "-d", f"refs/{ref}", sha, git_dir=git_dir)

    def commit(self, repo: Repo, sha: str) -> Commit:
        fmt = "%H%n%T%n%P%n%an%n%ae%n%aI%n%cn%n%ce%n%cI%n%B"
        out = git("show", "-s", f"--format={fmt}", sha, git_dir=self.git_dir(repo.owner, repo.name))
        lines = out.split("\n", 9)
        return Commit(
            sha=lines[0],
            tree=lines[1],
            parents=lines[2].split(),
            author_name=lines[3],
            author_email=lines[4],
            author_date=lines[5],
            committer_name=lines[6],
            committer_email=lines[7],
            committer_date=lines[8],
            message=lines[9].rstrip("\n") if len(lines) > 9 else "",
        )


def git(*args: str, git_dir: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run git, return stdout stripped; raise with git's stderr on failure."""
    argv = ["git", *(["--git-dir", str(git_dir)] if git_dir else []), *args]
    result = subprocess.run(
        argv, capture_output=True, text=True, check=False, env={**os.environ, **(env or {})} if env else None
    )
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def ref_sha(git_dir: Path, ref: str) -> str | None:
    result = subprocess.run(
        ["git", "--git-dir", str(git_dir), "rev-parse", "--verify", "--quiet", ref],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or None


def object_exists(git_dir: Path, sha: str) -> bool:
    return subprocess.run(["git", "--git-dir", str(git_dir), "cat-file", "-e", sha], check=False).returncode == 0


def valid_refname(ref: str) -> bool:
    return subprocess.run(["git", "check-ref-format", ref], check=False).returncode == 0

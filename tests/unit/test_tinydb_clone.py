"""orchestrator.core.tinydb_clone: the locked snapshot, the atomic private copy, and the module's states.

The concurrency tests run a real writer process (fcntl.flock locks belong to open file descriptions, so a
second process is the honest test) that rewrites the source continuously while clones are taken.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args

ROOT = Path(__file__).resolve().parents[2]
MODULE_PATH = ROOT / "collections/ansible_collections/orchestrator/core/plugins/modules/tinydb_clone.py"


def load_module() -> ModuleType:
    # Loaded from its file: the collection is not an installed package, and mypy need not follow it.
    spec = importlib.util.spec_from_file_location("tinydb_clone", MODULE_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tinydb_clone = load_module()

SEED = {"_default": {"1": {"title": "first"}}, "cards": {"1": {"column": "todo"}, "2": {"column": "done"}}}

# The workspace app stand-in of the role's molecule scenario: rewrites the database, under the lock or not.
WRITER = ROOT / "roles/database/molecule/default/files/tinydb-writer.py"

# Holds LOCK_EX, writes half of a new version in place, says so, pauses, then finishes it.
HALF_WRITER = r"""
import fcntl, json, os, sys, time
path = sys.argv[1]
data = json.dumps({"cards": {str(i): {"generation": 2} for i in range(1, 300)}}).encode()
lock = os.open(path + ".lock", os.O_RDONLY | os.O_CREAT, 0o600)
fcntl.flock(lock, fcntl.LOCK_EX)
with open(path, "r+b") as handle:
    handle.write(data[: len(data) // 2])
    handle.flush()
    print("half", flush=True)
    time.sleep(0.3)
    handle.write(data[len(data) // 2 :])
    handle.truncate()
fcntl.flock(lock, fcntl.LOCK_UN)
"""


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tinydb_clone, "RETRY_DELAY", 0.005)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "workspace" / "db.json"
    path.parent.mkdir()
    path.write_text(json.dumps(SEED))
    path.chmod(0o640)
    return path


def start(*argv: str) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    process.stdout.readline()  # "ready" / "half": the writer holds what the test needs
    return process


def generations(clone: dict[str, Any]) -> set[int]:
    """Every generation number in a clone written by WRITER (0: the seed): one, unless it mixes versions."""
    if clone == SEED:
        return {0}
    found = {clone["meta"]["1"]["generation"]}
    found.update(row["generation"] for row in clone["rows"].values())
    return found


def clone_while_writing(source: Path, dest: Path, style: str) -> set[int]:
    """Clone repeatedly while WRITER runs; every clone must be one whole version. The versions seen."""
    process = start(str(WRITER), str(source), "--style", style, "--seconds", "0.6")
    seen: set[int] = set()
    clones = 0
    try:
        while process.poll() is None:
            snapshot = tinydb_clone.read_snapshot(str(source), lock_timeout=5)
            tinydb_clone.write_clone(snapshot.data, str(dest))
            versions = generations(json.loads(dest.read_bytes()))
            assert len(versions) == 1, f"clone {clones} mixes versions {versions}"
            seen |= versions
            clones += 1
    finally:
        process.wait(timeout=5)
    assert process.returncode == 0
    assert clones >= 10
    return seen


@pytest.mark.parametrize(
    ("data", "tables", "problem"),
    [
        (b"", 0, None),
        (b"{}", 0, None),
        (json.dumps(SEED).encode(), 2, None),
        (b"[]", 0, "a TinyDB database is a JSON object, found list"),
        (b'{"cards": {}, "bad": [1], "worse": 2}', 0, "these tables are not JSON objects: bad, worse"),
        (b'{"cards": {"1": {', 0, "it is not valid JSON"),
        (b'{"cards": {}}{"cards": {}}', 0, "it is not valid JSON"),
    ],
)
def test_parse_database_follows_tinydb_database_rules(data: bytes, tables: int, problem: str | None) -> None:
    if problem is None:
        assert len(tinydb_clone.parse_database(data)) == tables
    else:
        with pytest.raises(ValueError, match=problem.replace("(", r"\(")):
            tinydb_clone.parse_database(data)


def test_clone_is_a_private_copy_made_under_the_lock(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sandbox" / "data" / "db.json"
    snapshot = tinydb_clone.read_snapshot(str(source), lock_timeout=1)
    tinydb_clone.write_clone(snapshot.data, str(dest), mode=0o600)

    assert (snapshot.tables, snapshot.reads, snapshot.locked) == (2, 1, True)
    assert json.loads(dest.read_bytes()) == SEED
    assert dest.stat().st_ino != source.stat().st_ino
    assert dest.stat().st_nlink == 1
    assert dest.stat().st_mode & 0o7777 == 0o600
    # The source's lock file takes the source's mode, so the workspace app can open it too.
    assert Path(f"{source}.lock").stat().st_mode & 0o7777 == 0o640
    assert Path(f"{dest}.lock").stat().st_mode & 0o7777 == 0o600
    assert not [name for name in os.listdir(dest.parent) if name.startswith(".")]


def test_empty_source_clones_as_an_empty_database(source: Path, tmp_path: Path) -> None:
    source.write_bytes(b"")
    snapshot = tinydb_clone.read_snapshot(str(source), lock_timeout=1)
    assert (snapshot.data, snapshot.tables) == (b"{}", 0)


def test_reader_waits_for_a_writer_half_way_through(source: Path) -> None:
    process = start("-c", HALF_WRITER, str(source))
    try:
        # Without the lock, the file is half a version: the torn state the lock exists for.
        with pytest.raises(ValueError):
            tinydb_clone.parse_database(source.read_bytes())
        began = time.monotonic()
        snapshot = tinydb_clone.read_snapshot(str(source), lock_timeout=5)
    finally:
        process.wait(timeout=5)
    assert time.monotonic() - began > 0.1
    assert snapshot.reads == 1
    assert {row["generation"] for row in json.loads(snapshot.data)["cards"].values()} == {2}


def test_writer_under_the_lock_never_yields_a_torn_clone(source: Path, tmp_path: Path) -> None:
    seen = clone_while_writing(source, tmp_path / "sandbox.json", "locked")
    assert len(seen) >= 2, "the writer never wrote while clones were taken"


def test_unlocked_writer_that_renames_yields_whole_versions(source: Path, tmp_path: Path) -> None:
    seen = clone_while_writing(source, tmp_path / "sandbox.json", "unlocked-rename")
    assert len(seen) >= 2, "the writer never wrote while clones were taken"


def test_source_that_never_parses_fails_after_the_retries(source: Path) -> None:
    source.write_bytes(b'{"cards": {"1": ')
    with pytest.raises(
        tinydb_clone.CloneError, match=r"not a valid TinyDB database after 3 reads: it is not valid JSON"
    ):
        tinydb_clone.read_snapshot(str(source), lock_timeout=1, attempts=3)


def test_lock_held_too_long_times_out(source: Path) -> None:
    holder = os.open(f"{source}.lock", os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(
            tinydb_clone.CloneError, match=r"timed out after 0.1 s waiting for the lock on .*db\.json\.lock"
        ):
            tinydb_clone.read_snapshot(str(source), lock_timeout=0.1)
    finally:
        os.close(holder)


def test_symbolic_link_source_is_refused(source: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.json"
    link.symlink_to(source)
    with pytest.raises(tinydb_clone.CloneError, match="is a symbolic link"):
        tinydb_clone.read_snapshot(str(link), lock_timeout=1)


# The module as Ansible runs it: AnsibleModule reads the patched arguments and prints its result.


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    def run_module(check_mode: bool = False, **args: Any) -> dict[str, Any]:
        with patch_module_args({**args, "_ansible_check_mode": check_mode}), pytest.raises(SystemExit):
            tinydb_clone.main()
        result: dict[str, Any] = json.loads(capsys.readouterr().out)
        return result

    yield run_module


def test_module_clones_once_then_keeps_the_clone(run: Any, source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sandbox" / "db.json"
    first = run(src=str(source), dest=str(dest))
    inode = dest.stat().st_ino
    dest.write_text(json.dumps({"cards": {"9": {"column": "sandbox only"}}}))
    second = run(src=str(source), dest=str(dest))

    assert first["changed"] and first["created"]
    assert (first["tables"], first["size"], first["state"], first["mode"]) == (2, len(json.dumps(SEED)), "file", "0600")
    assert not second["changed"] and not second["created"]
    assert second["tables"] == 1
    # Kept: the sandbox's own writes survive a second run.
    assert dest.stat().st_ino == inode
    assert json.loads(dest.read_text())["cards"]["9"]["column"] == "sandbox only"


def test_module_refresh_takes_a_new_snapshot(run: Any, source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "db.json"
    run(src=str(source), dest=str(dest))
    dest.write_text("{}")
    result = run(src=str(source), dest=str(dest), force=True)
    assert result["changed"] and not result["created"]
    assert json.loads(dest.read_text()) == SEED


def test_module_check_mode_writes_nothing(run: Any, source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "db.json"
    new = run(check_mode=True, src=str(source), dest=str(dest))
    assert new["changed"] and new["created"] and new["tables"] == 2
    assert not dest.exists() and not Path(f"{source}.lock").exists()

    run(src=str(source), dest=str(dest))
    inode = dest.stat().st_ino
    refresh = run(check_mode=True, src=str(source), dest=str(dest), refresh=True)
    chmod = run(check_mode=True, src=str(source), dest=str(dest), mode="0640")
    absent = run(check_mode=True, dest=str(dest), state="absent")
    assert refresh["changed"] and chmod["changed"] and absent["changed"]
    assert dest.stat().st_ino == inode
    assert dest.stat().st_mode & 0o7777 == 0o600


def test_module_fixes_mode_owner_and_group_of_a_kept_clone(run: Any, source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "db.json"
    run(src=str(source), dest=str(dest))
    result = run(src=str(source), dest=str(dest), mode="0640", owner=str(os.getuid()), group=str(os.getgid()))
    again = run(src=str(source), dest=str(dest), mode="0640", owner=str(os.getuid()), group=str(os.getgid()))
    assert result["changed"] and not again["changed"]
    assert dest.stat().st_mode & 0o7777 == 0o640


def test_module_replaces_links_and_empty_files(run: Any, source: Path, tmp_path: Path) -> None:
    hard = tmp_path / "hard.json"
    os.link(source, hard)
    soft = tmp_path / "soft.json"
    soft.symlink_to(source)
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"")
    for dest in (hard, soft, empty):
        assert run(src=str(source), dest=str(dest))["changed"]
        assert not dest.is_symlink()
        assert dest.stat().st_ino != source.stat().st_ino
        assert json.loads(dest.read_text()) == SEED
    assert source.stat().st_nlink == 1


def test_module_refuses_an_invalid_clone_without_refresh(run: Any, source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "db.json"
    dest.write_text("[]")
    failed = run(src=str(source), dest=str(dest))
    assert failed["failed"]
    assert "the existing clone is kept only when valid" in failed["msg"]
    assert "set refresh to replace it" in failed["msg"]
    assert dest.read_text() == "[]"


def test_module_fails_clearly_on_a_missing_source(run: Any, tmp_path: Path) -> None:
    failed = run(src=str(tmp_path / "nope.json"), dest=str(tmp_path / "db.json"))
    assert failed["failed"]
    assert failed["msg"].endswith("nope.json does not exist")
    assert not (tmp_path / "db.json").exists()


def test_module_absent_removes_the_clone_and_its_lock_once(run: Any, source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "db.json"
    run(src=str(source), dest=str(dest))
    first = run(dest=str(dest), state="absent")
    second = run(dest=str(dest), state="absent")
    assert first["changed"] and not second["changed"]
    assert not dest.exists() and not Path(f"{dest}.lock").exists()
    assert json.loads(source.read_text()) == SEED

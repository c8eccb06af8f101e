#!/usr/bin/python
# Copyright: Orchestrator maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

DOCUMENTATION = r"""
---
module: tinydb_clone
short_description: Copy a TinyDB database into a private, consistent clone, or remove the clone
version_added: 1.0.0
description:
  - With O(state=present), makes O(dest) a copy of the TinyDB database O(src) (a workspace's database) that
    shares no file with it (a sandbox's database). The source is read under a shared C(flock) on its lock
    file C(<src>.lock) (see the notes for the convention its writers follow), checked to be a TinyDB
    database (a JSON object whose values are objects, the rules of M(orchestrator.core.tinydb_database)),
    then written to a temporary file in the folder of O(dest), synced to disk and renamed over O(dest), so
    O(dest) is always either absent, the previous version or the complete new one.
  - A source that does not parse, or that changed while it was read, is read again up to 5 times in about
    1.5 seconds (a writer that ignores the lock but replaces the file by renaming is read one whole version
    at a time); then the module fails, naming the file and the problem.
  - An existing O(dest) that is a valid TinyDB database is kept as it is (the sandbox may have written to
    it), only its mode, owner and group are corrected, unless O(refresh=true). An empty O(dest) (what TinyDB
    leaves before its first write), a symbolic link, or a hard link to O(src) is replaced. O(dest) with
    other hard links, or not a TinyDB database, fails without being touched unless O(refresh=true).
  - With O(state=absent), removes O(dest) and its lock file C(<dest>.lock). Parent folders are kept.
  - The clone is written with C(write), never by linking, reflinking or C(copy_file_range), so it is a new
    inode whatever the file system.
author:
  - Orchestrator maintainers
attributes:
  check_mode:
    support: full
    description:
      - Reads the source to report what would change, and writes nothing, not even a lock file.
      - A source that does not exist does not fail in check mode (a check of the step that creates it could not
        create it); the clone is reported as a change, with a warning.
  diff_mode:
    support: none
options:
  src:
    description:
      - Path of the database to copy, for example
        V(/var/lib/orchestrator/teams/acme/workspaces/web/data/db.json). Required with O(state=present).
      - It must be a regular file; a symbolic link is refused (it could point the clone at any file).
    type: path
  dest:
    description:
      - Path of the clone, for example V(/var/lib/orchestrator/teams/acme/workspaces/web/sandboxes/s1/data/db.json).
      - Missing parent folders are created with the default permissions of the process (umask applies).
    type: path
    required: true
  state:
    description:
      - Whether the clone should exist.
    type: str
    choices: [present, absent]
    default: present
  refresh:
    description:
      - Replace an existing clone with a new snapshot of O(src), discarding what the sandbox wrote to it.
      - A process that holds the old clone open (TinyDB keeps its file open) keeps reading and writing the
        replaced file until it opens the database again.
    type: bool
    default: false
    aliases: [force]
  mode:
    description:
      - Permissions of the clone and of its lock file, as an octal string such as V("0600").
      - The clone appears with this mode, owner and group already set (they are set on the temporary file).
    type: raw
    default: "0600"
  owner:
    description:
      - User (name or numeric id) owning the clone and its lock file; unchanged (the user running the module)
        when not set.
    type: str
  group:
    description:
      - Group (name or numeric id) of the clone and its lock file; unchanged when not set.
    type: str
  lock_timeout:
    description:
      - Seconds to wait for the shared lock on C(<src>.lock), and for the exclusive lock on C(<dest>.lock)
        while the clone is renamed into place. V(0) tries once.
    type: float
    default: 30
notes:
  - 'Lock convention, which the workspace app must follow for the clone to be consistent: a database
    C(<db>) is guarded by C(fcntl.flock) on the sibling file C(<db>.lock). A writer holds C(LOCK_EX) on it for
    the whole of a write: in place (what TinyDB does: seek, write, truncate) or by temporary file and rename
    (from before writing the temporary file until after the rename). A reader that needs a consistent view
    holds C(LOCK_SH). The lock file is opened with C(O_CREAT) but never C(O_TRUNC) nor C(O_EXCL), and is
    never removed, renamed or replaced while the database is in use, so that every process locks the same
    inode. The lock is not on the database file itself because a writer that renames a new version into
    place would leave the others locking the old inode.'
  - When C(<src>.lock) does not exist, the module creates it with the owner, group and mode (read and write
    bits only) of O(src), atomically (by linking a prepared file), so the workspace app can still open it.
  - The shared lock is held only while the source is read, never while the clone is written.
  - With a writer that ignores the lock and writes in place, a read may see a torn file; it is detected (the
    JSON does not parse, or the file's size or modification time moved during the read) and read again, but
    only the lock makes the clone certain.
seealso:
  - module: orchestrator.core.tinydb_database
"""

EXAMPLES = r"""
- name: Clone the workspace database for the sandbox
  orchestrator.core.tinydb_clone:
    src: /var/lib/orchestrator/teams/acme/workspaces/web/data/db.json
    dest: /var/lib/orchestrator/teams/acme/workspaces/web/sandboxes/s1/data/db.json
    mode: "0600"
    owner: "65534"
    group: "65534"

- name: Take a new snapshot, discarding the sandbox's changes
  orchestrator.core.tinydb_clone:
    src: /var/lib/orchestrator/teams/acme/workspaces/web/data/db.json
    dest: /var/lib/orchestrator/teams/acme/workspaces/web/sandboxes/s1/data/db.json
    refresh: true

- name: Remove the sandbox database
  orchestrator.core.tinydb_clone:
    dest: /var/lib/orchestrator/teams/acme/workspaces/web/sandboxes/s1/data/db.json
    state: absent
"""

RETURN = r"""
path:
  description: Path of the clone (O(dest)).
  returned: always
  type: str
  sample: /var/lib/orchestrator/teams/acme/workspaces/web/sandboxes/s1/data/db.json
src:
  description: Path of the source database.
  returned: when O(state=present)
  type: str
  sample: /var/lib/orchestrator/teams/acme/workspaces/web/data/db.json
state:
  description: Added by Ansible when O(dest) exists, as M(ansible.builtin.file) does (V(file) for a clone,
    V(hard) for a hard link that check mode would replace), with C(owner), C(group), C(uid), C(gid) and
    C(mode).
  returned: when O(dest) exists
  type: str
  sample: file
created:
  description: Whether O(dest) did not exist before (and now does, or would in check mode).
  returned: when O(state=present)
  type: bool
  sample: true
size:
  description: Size in bytes of the clone. In check mode, of the snapshot that would be written when O(dest)
    does not exist yet, else of the current O(dest) (Ansible reports the size of an existing O(dest)).
  returned: when O(state=present)
  type: int
  sample: 2048
tables:
  description: Number of tables in the clone.
  returned: when O(state=present)
  type: int
  sample: 3
reads:
  description: How many reads of the source the snapshot took (more than 1 when a read was torn); 0 when the
    existing clone was kept.
  returned: when O(state=present)
  type: int
  sample: 1
locked:
  description: Whether the source was read under the shared lock on C(<src>.lock) (always, except in check
    mode when the lock file does not exist yet, or when the existing clone was kept).
  returned: when O(state=present)
  type: bool
  sample: true
"""

import contextlib
import fcntl
import grp
import json
import os
import pwd
import re
import stat
import tempfile
import threading
import time
from collections import namedtuple

from ansible.module_utils.basic import AnsibleModule

LOCK_SUFFIX = ".lock"
# Reads of a source that does not parse or moves under the reader; the delay doubles after each one
# (0.1 + 0.2 + 0.4 + 0.8 s): enough for a writer that renames, short enough to fail clearly.
READ_ATTEMPTS = 5
RETRY_DELAY = 0.1
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC

Snapshot = namedtuple("Snapshot", ["data", "tables", "reads", "locked"])


class CloneError(Exception):
    """A clone that cannot be made; the message names the file and what is wrong."""


def lock_path(database):
    """The lock file of a database under the lock convention: the database's path plus ".lock"."""
    return database + LOCK_SUFFIX


def tinydb_problem(content):
    """Why parsed JSON is not a TinyDB database (tinydb_database's rules), or None when it is one."""
    if not isinstance(content, dict):
        return f"a TinyDB database is a JSON object, found {type(content).__name__}"
    broken = sorted(name for name, table in content.items() if not isinstance(table, dict))
    if broken:
        return f"these tables are not JSON objects: {', '.join(broken)}"
    return None


def parse_database(data):
    """The tables of a database file's bytes, or ValueError saying why they are not a TinyDB database.

    Empty bytes, what TinyDB leaves before its first write, are an empty database.
    """
    if not data:
        return {}
    try:
        content = json.loads(data)
    except ValueError as error:
        raise ValueError(f"it is not valid JSON ({error})") from None
    problem = tinydb_problem(content)
    if problem:
        raise ValueError(problem)
    return content


def open_lock_file(path, create=None):
    """A read-only descriptor on a lock file, None when it is missing and create is None.

    create=(mode, uid, gid, strict) makes a missing lock file with those attributes (see _set_attributes). It is
    prepared under a temporary name and linked into place, so no other process ever opens it half set up,
    and a lock file someone else made in the meantime is used as it is.
    """
    try:
        return os.open(path, OPEN_FLAGS)
    except FileNotFoundError:
        if create is None:
            return None
    mode, uid, gid, strict = create
    fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=os.path.dirname(path) or ".")
    try:
        _set_attributes(fd, mode, uid, gid, strict)
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        os.close(fd)
        os.unlink(temporary)
    return os.open(path, OPEN_FLAGS)


def _set_attributes(fd, mode, uid, gid, strict=True):
    """Owner, group (-1: unchanged) and mode of an open file; strict=False keeps the owner when not allowed."""
    if uid != -1 or gid != -1:
        try:
            os.fchown(fd, uid, gid)
        except PermissionError:
            # Only root gives a file away. The source's lock file made by another user is still usable
            # through its mode; the clone's owner was asked for, so there it is an error.
            if strict:
                raise
    os.fchmod(fd, mode)


def wait_for_lock(fd, operation, timeout, what):
    """Take flock(operation) on fd within timeout seconds, else CloneError.

    A blocked flock is woken at each release; polling with LOCK_NB would only find the lock free in the short
    gaps a busy writer leaves, and could starve. flock has no timeout and a module cannot take SIGALRM from
    its caller, so the blocking call runs in a thread on a duplicate of fd (the same open file, so the same
    lock), which is abandoned when the time is up: its lock, if it ever gets it, goes with the last close.
    """
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        if timeout <= 0:
            raise CloneError(f"the lock on {what} is held by a writer (lock_timeout is 0)") from None
    outcome = []
    duplicate = os.dup(fd)

    def take():
        try:
            fcntl.flock(duplicate, operation)
            outcome.append(None)
        except OSError as error:
            outcome.append(error)
        finally:
            os.close(duplicate)

    waiter = threading.Thread(target=take, name="tinydb-clone-lock", daemon=True)
    waiter.start()
    waiter.join(timeout)
    if waiter.is_alive():
        raise CloneError(f"timed out after {timeout:g} s waiting for the lock on {what}: a writer holds it")
    if outcome[0] is not None:
        raise CloneError(f"cannot lock {what}: {outcome[0].strerror}")


def _read_once(path):
    """(bytes, None) of one complete read of path, or (None, why) when the read cannot be trusted."""
    try:
        fd = os.open(path, OPEN_FLAGS)
    except FileNotFoundError:
        raise CloneError(f"{path} does not exist") from None
    except OSError as error:
        if os.path.islink(path):
            raise CloneError(f"{path} is a symbolic link: only a regular file is cloned") from None
        raise CloneError(f"cannot read {path}: {error.strerror}") from None
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise CloneError(f"{path} is not a regular file")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    moved = (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns)
    if moved or len(data) != after.st_size:
        return None, "it changed while it was read"
    return data, None


def read_snapshot(path, lock_timeout, create_lock=True, attempts=None, delay=None):
    """One consistent, validated copy of the TinyDB database at path, read under LOCK_SH on <path>.lock.

    create_lock: make a missing <path>.lock (with the database's owner, group and mode); otherwise read
    without the lock when there is none. A read that does not parse or moves under the reader is retried
    (attempts, delay doubling from delay), then CloneError.
    """
    attempts = READ_ATTEMPTS if attempts is None else attempts
    delay = RETRY_DELAY if delay is None else delay
    try:
        source = os.lstat(path)
    except FileNotFoundError:
        raise CloneError(f"{path} does not exist") from None
    if stat.S_ISLNK(source.st_mode):
        raise CloneError(f"{path} is a symbolic link: only a regular file is cloned")
    if not stat.S_ISREG(source.st_mode):
        raise CloneError(f"{path} is not a regular file")
    create = (stat.S_IMODE(source.st_mode) & 0o666, source.st_uid, source.st_gid, False) if create_lock else None
    lock_fd = open_lock_file(lock_path(path), create)
    try:
        problem = None
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                time.sleep(delay * 2 ** (attempt - 2))
            if lock_fd is not None:
                wait_for_lock(lock_fd, fcntl.LOCK_SH, lock_timeout, lock_path(path))
            try:
                data, problem = _read_once(path)
            finally:
                if lock_fd is not None:
                    fcntl.flock(lock_fd, fcntl.LOCK_UN)
            if problem is None:
                try:
                    tables = parse_database(data)
                except ValueError as error:
                    problem = str(error)
                else:
                    # An empty file is an empty database; the clone says so explicitly.
                    return Snapshot(data or b"{}", len(tables), attempt, lock_fd is not None)
    finally:
        if lock_fd is not None:
            os.close(lock_fd)
    raise CloneError(
        f"{path} is not a valid TinyDB database after {attempts} reads: {problem} (does every writer hold "
        f"flock LOCK_EX on {lock_path(path)} while it writes?)"
    )


def write_clone(data, dest, mode=0o600, uid=-1, gid=-1, lock_timeout=30.0):
    """Put data at dest atomically: temp file in dest's folder, attributes, fsync, rename, folder fsync.

    The rename happens under LOCK_EX on <dest>.lock (made with the same attributes when missing), so a
    sandbox app that follows the lock convention never sees the switch in the middle of its own write.
    """
    directory = os.path.dirname(dest) or "."
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(dest)}.", suffix=".clone", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            _set_attributes(handle.fileno(), mode, uid, gid)
            os.fsync(handle.fileno())
        lock_fd = open_lock_file(lock_path(dest), (mode, uid, gid, True))
        try:
            wait_for_lock(lock_fd, fcntl.LOCK_EX, lock_timeout, lock_path(dest))
            os.replace(temporary, dest)
        finally:
            os.close(lock_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


def octal_mode(value):
    """The int of an octal mode such as "0600", "600" or 0o600; ValueError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o777:
        return value
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3}", value):
        return int(value, 8)
    raise ValueError(f'mode must be an octal string such as "0600", got {value!r}')


def resolve_id(value, lookup, what):
    """The numeric id of a user or group given by name or number; -1 when not set."""
    if value is None or value == "":
        return -1
    if value.isdigit():
        return int(value)
    try:
        return lookup(value)
    except KeyError:
        raise ValueError(f"unknown {what} {value!r}") from None


class TinyDBClone:
    """A sandbox's clone of a workspace's TinyDB database, brought to the state the parameters ask for."""

    def __init__(self, module):
        self.module = module
        params = module.params
        self.src = params["src"]
        self.dest = params["dest"]
        self.refresh = params["refresh"]
        self.lock_timeout = params["lock_timeout"]
        try:
            self.mode = octal_mode(params["mode"])
            self.uid = resolve_id(params["owner"], lambda name: pwd.getpwnam(name).pw_uid, "user")
            self.gid = resolve_id(params["group"], lambda name: grp.getgrnam(name).gr_gid, "group")
        except ValueError as error:
            module.fail_json(msg=str(error))
        if self.lock_timeout < 0:
            module.fail_json(msg="lock_timeout must not be negative")

    def present(self):
        """Keep a valid clone (fixing its attributes) or write a new snapshot of src; the module's result."""
        if os.path.normpath(self.src) == os.path.normpath(self.dest):
            self.module.fail_json(msg=f"src and dest are the same path: {self.dest}")
        if os.path.isdir(self.dest) and not os.path.islink(self.dest):
            self.module.fail_json(msg=f"{self.dest} is a directory, not a TinyDB database file")
        created = not os.path.lexists(self.dest)
        kept = None if created else self._clone_to_keep()
        if kept is not None:
            changed = self._fix_attributes()
            return {
                "changed": changed,
                "created": False,
                "size": len(kept.data),
                "tables": kept.tables,
                "reads": 0,
                "locked": False,
            }
        if self.module.check_mode and not os.path.lexists(self.src):
            # A source that a check of the step that creates it could not create (a workspace's database, before
            # its sandbox's clone): the clone is reported as it would be made from an empty database.
            self.module.warn(f"{self.src} does not exist: a real run fails unless it is created first")
            return {"changed": True, "created": created, "size": 2, "tables": 0, "reads": 0, "locked": False}
        try:
            snapshot = read_snapshot(self.src, self.lock_timeout, create_lock=not self.module.check_mode)
            if not self.module.check_mode:
                write_clone(snapshot.data, self.dest, self.mode, self.uid, self.gid, self.lock_timeout)
        except (CloneError, OSError) as error:
            self.module.fail_json(msg=f"cannot clone {self.src} to {self.dest}: {error}")
        return {
            "changed": True,
            "created": created,
            "size": len(snapshot.data),
            "tables": snapshot.tables,
            "reads": snapshot.reads,
            "locked": snapshot.locked,
        }

    def absent(self):
        """Remove the clone and its lock file; the module's result."""
        changed = False
        for path in (self.dest, lock_path(self.dest)):
            try:
                found = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(found.st_mode):
                self.module.fail_json(msg=f"{path} is a directory, not a TinyDB database or its lock file")
            if not self.module.check_mode:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            changed = True
        return {"changed": changed}

    def _clone_to_keep(self):
        """The snapshot of an existing dest to keep, or None when it is to be (re)written."""
        if self.refresh:
            return None
        found = os.lstat(self.dest)
        if stat.S_ISLNK(found.st_mode) or (stat.S_ISREG(found.st_mode) and found.st_size == 0):
            return None
        if not stat.S_ISREG(found.st_mode):
            self.module.fail_json(msg=f"{self.dest} is not a regular file")
        with contextlib.suppress(OSError):
            if os.path.samestat(found, os.stat(self.src)):
                # A hard link to the source: replacing it loses nothing and unshares it.
                return None
        if found.st_nlink > 1:
            self.module.fail_json(
                msg=f"{self.dest} has {found.st_nlink - 1} other hard link(s): it may share its data with another "
                "file; remove them, or set refresh to replace it with a clone of its own"
            )
        try:
            return read_snapshot(self.dest, self.lock_timeout, create_lock=False)
        except CloneError as error:
            self.module.fail_json(msg=f"the existing clone is kept only when valid: {error}; set refresh to replace it")

    def _fix_attributes(self):
        changed = self.module.set_mode_if_different(self.dest, self.mode, False)
        if self.uid != -1:
            changed = self.module.set_owner_if_different(self.dest, str(self.uid), changed)
        if self.gid != -1:
            changed = self.module.set_group_if_different(self.dest, str(self.gid), changed)
        return changed


def main():
    module = AnsibleModule(
        argument_spec={
            "src": {"type": "path"},
            "dest": {"type": "path", "required": True},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "refresh": {"type": "bool", "default": False, "aliases": ["force"]},
            "mode": {"type": "raw", "default": "0600"},
            "owner": {"type": "str"},
            "group": {"type": "str"},
            "lock_timeout": {"type": "float", "default": 30.0},
        },
        required_if=[("state", "present", ["src"])],
        supports_check_mode=True,
    )
    clone = TinyDBClone(module)
    state = module.params["state"]
    if state == "present":
        result = clone.present()
        result["src"] = clone.src
    else:
        result = clone.absent()
    # exit_json adds the file's attributes (owner, group, mode, uid, gid, size, state) when path exists.
    module.exit_json(path=clone.dest, **result)


if __name__ == "__main__":
    main()

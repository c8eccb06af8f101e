#!/usr/bin/python
# Copyright: Orchestrator maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

DOCUMENTATION = r"""
---
module: tinydb_database
short_description: Create, validate or remove a TinyDB database file
version_added: 1.0.0
description:
  - With O(state=present), creates an empty TinyDB database (a JSON object with no tables) and its parent
    folders when the file does not exist. When it exists, checks that it is a TinyDB database (a JSON object
    whose values are objects) and fails without touching it otherwise. An empty file, which is what TinyDB
    itself leaves before its first write, is filled with an empty database.
  - With O(state=absent), removes the file. Parent folders are kept.
  - Reports a change only when it creates, fills or removes the file, or changes its mode.
author:
  - Orchestrator maintainers
requirements:
  - tinydb >= 4 (for O(state=present))
attributes:
  check_mode:
    support: full
    description: Reports what would change without writing anything.
  diff_mode:
    support: none
options:
  path:
    description:
      - Path of the database file, for example V(/var/lib/orchestrator/teams/acme/data/acme/db.json).
    type: path
    required: true
  state:
    description:
      - Whether the database file should exist.
    type: str
    choices: [present, absent]
    default: present
  mode:
    description:
      - Permissions of the database file when O(state=present), as an octal string such as V("0600").
      - The file is created with mode C(0600) and then set to this mode, so it is never readable by others
        in between.
    type: raw
    default: "0600"
notes:
  - Parent folders are created with the default permissions of the process (umask applies). Create them
    beforehand with M(ansible.builtin.file) when they need specific permissions.
"""

EXAMPLES = r"""
- name: Create the team database
  orchestrator.core.tinydb_database:
    path: /var/lib/orchestrator/teams/acme/data/acme/db.json
    mode: "0640"

- name: Remove the team database
  orchestrator.core.tinydb_database:
    path: /var/lib/orchestrator/teams/acme/data/acme/db.json
    state: absent
"""

RETURN = r"""
path:
  description: Path of the database file.
  returned: always
  type: str
  sample: /var/lib/orchestrator/teams/acme/data/acme/db.json
state:
  description: State of the database file after the module ran (or would be, in check mode).
  returned: always
  type: str
  sample: present
"""

import json
import os
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    from tinydb import TinyDB
except ImportError:
    TINYDB_IMPORT_ERROR = traceback.format_exc()
else:
    TINYDB_IMPORT_ERROR = None


class TinyDBDatabase:
    """A TinyDB database file, brought to the state the module's parameters ask for."""

    def __init__(self, module):
        self.module = module
        self.path = module.params["path"]
        self.mode = module.params["mode"]

    def present(self):
        """Create the database when missing or empty, validate it otherwise; then apply the mode."""
        changed = False
        if not os.path.lexists(self.path) or self._is_empty():
            self._require_tinydb()
            if not self.module.check_mode:
                self._create()
            changed = True
        else:
            self._validate()
        if not self.module.check_mode or os.path.exists(self.path):
            changed = self.module.set_mode_if_different(self.path, self.mode, changed)
        return changed

    def absent(self):
        """Remove the database file when it exists."""
        if not os.path.lexists(self.path):
            return False
        if os.path.isdir(self.path) and not os.path.islink(self.path):
            self.module.fail_json(msg=f"{self.path} is a directory, not a TinyDB database file")
        if not self.module.check_mode:
            os.remove(self.path)
        return True

    def _require_tinydb(self):
        if TINYDB_IMPORT_ERROR is not None:
            self.module.fail_json(msg=missing_required_lib("tinydb"), exception=TINYDB_IMPORT_ERROR)

    def _is_empty(self):
        return os.path.isfile(self.path) and os.path.getsize(self.path) == 0

    def _create(self):
        """Write an empty database. Future sources (such as cloning another database) branch here."""
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        # Create the file private first: the final mode is applied once it holds a valid database.
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        database = TinyDB(self.path)
        try:
            # TinyDB writes nothing until the first change; dropping all tables writes "{}", so the file is
            # valid JSON from the start.
            database.drop_tables()
        finally:
            database.close()

    def _validate(self):
        if os.path.isdir(self.path):
            self.module.fail_json(msg=f"{self.path} is a directory, not a TinyDB database file")
        try:
            with open(self.path, "rb") as database_file:
                content = json.load(database_file)
        except ValueError as error:
            self.module.fail_json(msg=f"{self.path} is corrupt: it is not valid JSON ({error})")
        except OSError as error:
            self.module.fail_json(msg=f"cannot read {self.path}: {error}")
        if not isinstance(content, dict):
            self.module.fail_json(
                msg=f"{self.path} is corrupt: a TinyDB database is a JSON object, found {type(content).__name__}"
            )
        broken = sorted(name for name, table in content.items() if not isinstance(table, dict))
        if broken:
            self.module.fail_json(msg=f"{self.path} is corrupt: these tables are not JSON objects: {', '.join(broken)}")


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "mode": {"type": "raw", "default": "0600"},
        },
        supports_check_mode=True,
    )
    database = TinyDBDatabase(module)
    state = module.params["state"]
    apply_state = {"present": database.present, "absent": database.absent}[state]
    module.exit_json(changed=apply_state(), path=database.path, state=state)


if __name__ == "__main__":
    main()

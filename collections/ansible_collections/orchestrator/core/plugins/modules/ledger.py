#!/usr/bin/python
# Copyright: Orchestrator maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

DOCUMENTATION = r"""
---
module: ledger
short_description: Record a created resource so that the orchestrator can undo it
version_added: 1.0.0
description:
  - Declares that the current task created a resource and names the role entry point that removes it.
  - The module changes nothing. It returns the entry under the RV(orchestrator_ledger) key of its result;
    the orchestrator worker reads that key from the task's result event and appends the entry to the
    ledger of the running task. When the task fails, the worker replays the ledger backwards, running
    C(playbooks/rollback.yml) once per entry with the entry's undo variables as extra vars.
  - Run by hand (outside the worker) the module is a harmless no-op.
  - Call it right after the task that created the resource, and only when that task really created it,
    so that a rollback never removes something an earlier run made.
author:
  - Orchestrator maintainers
attributes:
  check_mode:
    support: full
    description: The module never changes anything, so check mode returns the same entry.
  diff_mode:
    support: none
options:
  resource:
    description:
      - Kind of the created resource, for example V(team_directory). Shown in logs and rollback reports.
    type: str
    required: true
  id:
    description:
      - Identifier of the created resource, for example a path or a name.
    type: str
    required: true
  undo_role:
    description:
      - Name of the role whose entry point removes the resource.
    type: str
    required: true
  undo_tasks_from:
    description:
      - Entry point (tasks file without C(.yml)) of O(undo_role) that removes the resource.
    type: str
    default: absent
  undo_vars:
    description:
      - Role variables the undo entry point needs. They are passed as extra vars to the rollback playbook.
      - They are stored in Redis in clear text; never put secrets here.
    type: dict
    default: {}
notes:
  - The entry point named by O(undo_role) and O(undo_tasks_from) must succeed when the resource is already
    partly or fully gone, since a rollback may run after a partial creation or twice.
"""

EXAMPLES = r"""
- name: Create the team directory
  ansible.builtin.file:
    path: /var/lib/orchestrator/teams/acme
    state: directory
    mode: "0750"
  register: team_directory

- name: Record the team directory for rollback
  orchestrator.core.ledger:
    resource: team_directory
    id: /var/lib/orchestrator/teams/acme
    undo_role: team_instance
    undo_tasks_from: absent
    undo_vars:
      team_instance_slug: acme
      team_instance_data_dir: /var/lib/orchestrator
  when: team_directory is changed
"""

RETURN = r"""
orchestrator_ledger:
  description: The ledger entry the orchestrator worker appends to the task's ledger.
  returned: always
  type: dict
  contains:
    resource:
      description: Kind of the created resource.
      returned: always
      type: str
      sample: team_directory
    id:
      description: Identifier of the created resource.
      returned: always
      type: str
      sample: /var/lib/orchestrator/teams/acme
    undo:
      description: How to undo the resource.
      returned: always
      type: dict
      contains:
        role:
          description: Role whose entry point removes the resource.
          returned: always
          type: str
          sample: team_instance
        tasks_from:
          description: Entry point of the role that removes the resource.
          returned: always
          type: str
          sample: absent
        vars:
          description: Variables the entry point needs.
          returned: always
          type: dict
          sample: {"team_instance_slug": "acme", "team_instance_data_dir": "/var/lib/orchestrator"}
"""

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(
        argument_spec={
            "resource": {"type": "str", "required": True},
            "id": {"type": "str", "required": True},
            "undo_role": {"type": "str", "required": True},
            "undo_tasks_from": {"type": "str", "default": "absent"},
            "undo_vars": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    params = module.params
    for name in ("resource", "id", "undo_role", "undo_tasks_from"):
        if not params[name].strip():
            module.fail_json(msg=f"{name} must not be empty")

    module.exit_json(
        changed=False,
        orchestrator_ledger={
            "resource": params["resource"],
            "id": params["id"],
            "undo": {
                "role": params["undo_role"],
                "tasks_from": params["undo_tasks_from"],
                "vars": params["undo_vars"],
            },
        },
    )


if __name__ == "__main__":
    main()

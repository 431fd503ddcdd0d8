#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hvdump developers
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: hvdump_verify
short_description: Check a collected dump against its manifest's checksums
version_added: "0.1.0"
description:
  - Recomputes every chunk's checksum of a dump directory written by M(hvdump.power.hvdump_collect)
    (or C(hvdump collect)) and compares it with the manifest, as C(hvdump verify DIR) does.
  - Works on a copy of the directory anywhere (an archive host with hvdump installed).
  - Never changes anything; fails when a chunk does not match.
options:
  path:
    description: The dump directory (holding C(manifest.json)).
    type: path
    required: true
extends_documentation_fragment:
  - hvdump.power.hvdump
  - hvdump.power.hvdump.library
"""

EXAMPLES = r"""
- name: Verify a collected dump
  hvdump.power.hvdump_verify:
    path: /var/crash/hvdump/lpar01-20251125-001903
"""

RETURN = r"""
ok:
  description: Whether every chunk matched.
  returned: always
  type: bool
report:
  description: The verifier's report lines.
  returned: always
  type: list
  elements: str
"""

from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hvdump.power.plugins.module_utils.hvdump_common import (
    HvdumpError,
    api,
    require_hvdump,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(path=dict(type="path", required=True)),
        supports_check_mode=True,
    )
    require_hvdump(module)
    try:
        ok, lines = api.verify(Path(module.params["path"]))
    except (HvdumpError, OSError) as exc:
        module.fail_json(msg=str(exc), ok=False, report=[])
    if not ok:
        module.fail_json(msg=lines[-1] if lines else "verification failed", ok=False, report=lines)
    module.exit_json(changed=False, ok=True, report=lines)


if __name__ == "__main__":
    main()

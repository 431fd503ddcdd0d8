#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hvdump developers
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: hvdump_release
short_description: Give a waiting dump's reserved memory back to the LPAR, by hand
version_added: "0.1.0"
description:
  - Releases what is still reserved of the waiting dump under O(root), with the release writes
    the collector planned (safe under the kernel's release quirks), so the LPAR gets its memory
    back and re-registers for the next crash.
  - Refuses unless the dump was collected completely into O(output) and that copy matches the
    manifest, because released memory is reused at once and its contents are gone. O(force)
    releases anyway (the data is lost).
  - Releases go through the collector (C(hvdump collect) resumed on O(output)) under the dump's
    lock, each confirmed from C(MemTotal); the last one is made only after the whole copy verifies
    against its manifest, so O(verify) is always in effect. A release made meanwhile by anything
    else stops it.
  - Reports C(changed) only when something was released; with no dump waiting it does nothing.
options:
  output:
    description: The collected dump directory of this dump (holding C(manifest.json)).
    type: path
  verify:
    description:
      - Check the collected copy against its manifest before releasing. Kept for compatibility;
        the collector always verifies before the release that re-registers the LPAR.
    type: bool
    default: true
  force:
    description: Release even though the data is not saved (it is lost). Needs no O(output).
    type: bool
    default: false
extends_documentation_fragment:
  - hvdump.power.hvdump
  - hvdump.power.hvdump.library
  - hvdump.power.hvdump.root
attributes:
  diff_mode:
    support: full
    details: The reserved memory and whether a dump still waits, before and after.
"""

EXAMPLES = r"""
- name: Release memory of a dump collected with release=never
  hvdump.power.hvdump_release:
    output: /var/crash/hvdump/lpar01-20251125-001903

- name: Give up an uncollectable dump and protect the LPAR again
  hvdump.power.hvdump_release:
    force: true
"""

RETURN = r"""
released:
  description: The ranges written to the release interface, as [address, size].
  returned: always
  type: list
  elements: list
released_bytes:
  description: Bytes released by this run.
  returned: always
  type: int
dump_waiting:
  description: Whether a dump is still waiting afterwards (false once the LPAR re-registered).
  returned: always
  type: bool
"""

from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hvdump.power.plugins.module_utils.hvdump_common import (
    HvdumpError,
    api,
    require_hvdump,
    state_diff,
)
from ansible_collections.hvdump.power.plugins.module_utils.hvdump_spec import argument_spec


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            root=True,
            output=dict(type="path"),
            verify=dict(type="bool", default=True),
            force=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    require_hvdump(module)
    p = module.params
    root = Path(p["root"])
    try:
        state = api.facts(root)
    except (HvdumpError, OSError) as exc:
        module.fail_json(msg="%s: cannot read the dump state: %s" % (p["root"], exc))
    if not state["dump_waiting"]:
        module.exit_json(changed=False, released=[], released_bytes=0, dump_waiting=False,
                         msg="no dump waiting: nothing to release")
    try:
        if p["output"] and not p["force"]:
            # Through the collector: under the dump's lock, every release confirmed,
            # the last one only after the whole copy verifies against its manifest.
            if module.check_mode:
                released, waiting = api.pending_releases(Path(p["output"])), True
            else:
                done = api.release_saved(root, Path(p["output"]))
                released, waiting = done.released, done.dump_waiting
        elif not p["force"]:
            module.fail_json(msg="the waiting dump is not saved (give output: the collected "
                             "directory); refusing to release memory whose contents would be lost "
                             "(force: true releases anyway)")
        else:
            done = api.abandon(root, dry_run=module.check_mode)
            released, waiting = done.released, True if module.check_mode else done.dump_waiting
    except (HvdumpError, OSError) as exc:
        module.fail_json(msg="refusing to release: %s" % exc)
    released_bytes = sum(size for _start, size in released)
    diff = state_diff(module, p["root"], {"reserved_bytes": state["reserved_bytes"], "dump_waiting": True},
                      {"reserved_bytes": max(0, state["reserved_bytes"] - released_bytes),
                       "dump_waiting": waiting})
    module.exit_json(changed=bool(released), released=[list(w) for w in released],
                     released_bytes=released_bytes, dump_waiting=waiting, **diff)


if __name__ == "__main__":
    main()

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
  - Reports C(changed) only when something was released; with no dump waiting it does nothing.
options:
  root:
    description: Root of the capture kernel's filesystem.
    type: path
    default: /
  output:
    description: The collected dump directory of this dump (holding C(manifest.json)).
    type: path
  verify:
    description: Check the collected copy against its manifest before releasing.
    type: bool
    default: true
  force:
    description: Release even though the data is not saved (it is lost). Needs no O(output).
    type: bool
    default: false
requirements:
  - hvdump (the C(drgn_hvdump) Python package) on the managed host
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
author:
  - hvdump developers
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

import json
import os
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hvdump.power.plugins.module_utils.hvdump_common import (
    HvdumpError,
    require_hvdump,
)


def _planned_writes(capture, state):
    from drgn_hvdump.collect.plan import make_plan
    from drgn_hvdump.formats.elfcore import ElfCore

    with ElfCore.open(capture.vmcore_path) as core:
        ps = int((core.vmcoreinfo or {}).get("PAGESIZE", "65536"))
        memory = max((ph.p_paddr + ph.p_memsz for ph in core.segments), default=0)
    plan = make_plan(state, page_size=ps, memory=memory, chunk_size=16 << 20)
    return [(w.addr, w.size) for w in plan.writes]


def main():
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type="path", default="/"),
            output=dict(type="path"),
            verify=dict(type="bool", default=True),
            force=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    require_hvdump(module)
    from drgn_hvdump.capture import open_capture
    from drgn_hvdump.formats.dump_header import build_dump_header
    from drgn_hvdump.formats.release_region import Extent

    p = module.params
    try:
        capture = open_capture(p["root"])
        state = capture.state()
    except (HvdumpError, OSError) as exc:
        module.fail_json(msg="%s: cannot read the dump state: %s" % (p["root"], exc))
    if not state.dump_waiting:
        module.exit_json(changed=False, released=[], released_bytes=0, dump_waiting=False,
                         msg="no dump waiting: nothing to release")
    writes = None
    if p["output"]:
        try:
            with open(os.path.join(p["output"], "manifest.json")) as f:
                manifest = json.load(f)
        except (OSError, ValueError) as exc:
            if not p["force"]:
                module.fail_json(msg="%s: no complete collection here (%s); refusing to release "
                                 "unsaved data (force: true loses it)" % (p["output"], exc))
            manifest = None
        if manifest is not None:
            if state.header is None or manifest["source"]["dump_header"] != build_dump_header(state.header).hex():
                if not p["force"]:
                    module.fail_json(msg="%s holds another dump than the one waiting under %s; "
                                     "refusing to release" % (p["output"], p["root"]))
            else:
                if p["verify"]:
                    from drgn_hvdump.collect.verify import verify_dir

                    ok, lines = verify_dir(Path(p["output"]))
                    if not ok and not p["force"]:
                        module.fail_json(msg="the saved copy does not match its manifest: %s; "
                                         "refusing to release" % lines[-1], report=lines)
                writes = [(w["addr"], w["size"]) for w in manifest["release"]["writes"] if not w["done"]]
    if writes is None:
        if not p["force"]:
            module.fail_json(msg="the waiting dump is not saved (give output: the collected "
                             "directory); refusing to release memory whose contents would be lost "
                             "(force: true releases anyway)")
        if state.header is None or state.release_map is None:
            module.fail_json(msg="cannot plan the release: %s" % state.reason)
        writes = _planned_writes(capture, state)
    if module.check_mode:
        module.exit_json(changed=bool(writes), released=[list(w) for w in writes],
                         released_bytes=sum(s for _, s in writes), dump_waiting=True)
    done = []
    for addr, size in writes:
        if not capture.state().dump_waiting:
            break
        try:
            capture.release(Extent(addr, size))
        except HvdumpError as exc:
            module.fail_json(msg=str(exc), released=done, released_bytes=sum(s for _, s in done))
        done.append([addr, size])
    module.exit_json(changed=bool(done), released=done, released_bytes=sum(s for _, s in done),
                     dump_waiting=capture.state().dump_waiting)


if __name__ == "__main__":
    main()

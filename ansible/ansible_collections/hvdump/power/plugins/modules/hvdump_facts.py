#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hvdump developers
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: hvdump_facts
short_description: Gather the dump state of a POWER LPAR (hypervisor-assisted dump)
version_added: "0.1.0"
description:
  - Reads what the capture kernel under O(root) offers, with the C(drgn_hvdump) library on the
    host, and returns it as the C(hvdump) fact.
  - Firmware support, whether the kernel registered a dump (the LPAR is protected), whether a dump
    is waiting, the hypervisor's sections, the memory still reserved, and the progress of a
    collection into O(dump_dir).
  - Never changes anything.
options:
  dump_dir:
    description:
      - Directory holding this host's collected dumps (one subdirectory per dump).
      - When given, the facts name the output directory of the waiting dump, its collection
        progress, the free space there, and the dumps already collected.
    type: path
extends_documentation_fragment:
  - hvdump.power.hvdump
  - hvdump.power.hvdump.library
  - hvdump.power.hvdump.root
  - hvdump.power.hvdump.host_name
attributes:
  facts:
    description: Action returns an C(ansible_facts) dictionary that will update existing host facts.
    support: full
"""

EXAMPLES = r"""
- name: Read the dump state
  hvdump.power.hvdump_facts:
    dump_dir: /var/crash/hvdump

- name: Report LPARs with a waiting dump
  ansible.builtin.debug:
    msg: "{{ hvdump.dump_id }}: {{ hvdump.reserved_bytes | human_readable }} reserved"
  when: hvdump.dump_waiting
"""

RETURN = r"""
ansible_facts:
  description: Facts added to the host.
  returned: always
  type: dict
  contains:
    hvdump:
      description:
        - The host's dump state. Keys include C(firmware_supported), C(registered),
          C(dump_waiting), C(dump_valid), C(reason), C(reserved_bytes), C(dump_bytes),
          C(sections), C(header), C(release_map), C(dump_id), C(output), C(collection),
          C(owner), C(local_dumps), C(dest_free_bytes) and C(warnings).
        - C(owner) is the collector holding the waiting dump now (C(pid), C(output), C(since) in
          seconds since the epoch), whatever its output directory, or null when none runs.
      type: dict
      returned: always
      sample:
        firmware_supported: true
        registered: false
        dump_waiting: true
        dump_valid: true
        reserved_bytes: 805306368
        dump_id: lpar01-20251125-001903
"""

import os
import socket

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hvdump.power.plugins.module_utils.hvdump_common import (
    HvdumpError,
    dump_facts,
    free_bytes,
    require_hvdump,
)
from ansible_collections.hvdump.power.plugins.module_utils.hvdump_spec import argument_spec


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(root=True, dump_dir="optional", host_name=True),
        supports_check_mode=True,
    )
    require_hvdump(module)
    p = module.params
    host = p["host_name"] or socket.gethostname().split(".")[0]
    if not os.path.isdir(p["root"]):
        module.fail_json(msg="%s: root is not a directory" % p["root"])
    try:
        facts = dump_facts(p["root"], host, p["dump_dir"])
    except (HvdumpError, OSError) as exc:
        module.fail_json(msg="%s: cannot read the dump state: %s" % (p["root"], exc))
    facts["dest_free_bytes"] = free_bytes(p["dump_dir"]) if p["dump_dir"] else None
    module.exit_json(changed=False, ansible_facts={"hvdump": facts})


if __name__ == "__main__":
    main()

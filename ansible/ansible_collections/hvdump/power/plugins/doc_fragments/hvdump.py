# -*- coding: utf-8 -*-
# Copyright: hvdump developers
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""Documentation the hvdump.power modules share.

- ``hvdump.power.hvdump``: author and the attributes every module has (check mode, no diff
  mode, POSIX hosts). A module that says more about an attribute (C(details)) or has another
  one (C(facts), C(async)) lists it in its own C(attributes); its keys win.
- ``hvdump.power.hvdump.library``: the requirement of the modules that use the C(drgn_hvdump)
  library on the managed host.
- ``hvdump.power.hvdump.root``: the O(root) option (the capture kernel's filesystem).
- ``hvdump.power.hvdump.host_name``: the O(host_name) option (the name in dump ids).

The matching argument specs come from ``module_utils/hvdump_spec.py``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment:
    DOCUMENTATION = r"""
options: {}
author:
  - hvdump developers (@hvdump)
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
"""

    LIBRARY = r"""
options: {}
requirements:
  - hvdump (the C(drgn_hvdump) Python package, with its public API C(drgn_hvdump.api)) on the
    managed host
"""

    ROOT = r"""
options:
  root:
    description: Root of the capture kernel's filesystem (V(/) on a real LPAR).
    type: path
    default: /
"""

    HOST_NAME = r"""
options:
  host_name:
    description: Name used in dump identifiers (C(HOST-YYYYmmdd-HHMMSS)); defaults to the host's name.
    type: str
"""

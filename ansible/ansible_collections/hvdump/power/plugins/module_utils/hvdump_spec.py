# -*- coding: utf-8 -*-
# Copyright: hvdump developers
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/gpl-2.0.txt)
"""The argument spec pieces the hvdump.power modules share, one definition each.

Each matches an option of the ``hvdump.power.hvdump`` doc fragment (``root``) or one the
modules document alike (``host_name``, ``dump_dir``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


def root_spec():
    """O(root): the capture kernel's filesystem, V(/) on a real LPAR (fragment hvdump.power.hvdump.root)."""
    return dict(type="path", default="/")


def host_name_spec():
    """O(host_name): the name used in dump ids; the host's name when unset."""
    return dict(type="str")


def dump_dir_spec(required=False):
    """O(dump_dir): the directory of this host's dumps, one subdirectory per dump."""
    spec = dict(type="path")
    if required:
        spec["required"] = True
    return spec


def argument_spec(root=False, host_name=False, dump_dir=None, **options):
    """A module's argument spec: the shared pieces asked for, then its own ``options``.

    ``dump_dir`` is None (no such option), ``"optional"`` or ``"required"``.
    """
    spec = {}
    if root:
        spec["root"] = root_spec()
    if dump_dir is not None:
        if dump_dir not in ("optional", "required"):
            raise ValueError("dump_dir must be None, 'optional' or 'required'")
        spec["dump_dir"] = dump_dir_spec(required=dump_dir == "required")
    if host_name:
        spec["host_name"] = host_name_spec()
    spec.update(options)
    return spec

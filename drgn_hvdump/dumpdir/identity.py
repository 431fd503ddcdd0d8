"""A dump's identity: what binds a journal, a plan, a manifest and a registry entry to
the one dump they belong to.

It is a hash of what the crashed kernel and the hypervisor left behind and
what names the machine, none of which is released with the memory: the
hypervisor's dump header, the crashed kernel's VMCOREINFO note (``CRASHTIME``
and the build id: two crashes of one LPAR differ) and the machine's and
partition's names from the device tree (two LPARs of one kernel and size
crashed in the same second differ).
"""

from __future__ import annotations

import hashlib

__all__ = ["dump_identity"]


def dump_identity(header_raw: bytes, vmcoreinfo_raw: bytes | None, machine: bytes = b"") -> str:
    """The dump's identity (32 hex digits): a hash of the hypervisor's header, the
    crashed kernel's VMCOREINFO note and the machine's and partition's names from
    the device tree (:meth:`CaptureInterface.machine_identity`)."""
    h = hashlib.sha256(b"hvdump-identity-1\0")
    for part in (header_raw, machine, vmcoreinfo_raw or b""):
        h.update(len(part).to_bytes(8, "little") + part)
    return h.hexdigest()[:32]

"""hvdump's drgn plugin: open hypervisor-assisted dumps as they are.

drgn imports this module through the ``drgn.plugins`` entry point ``hvdump``
and calls :func:`drgn_prog_set` for every program it sets up. For anything
but a ppc64 Linux kernel the hook returns at once; for a ppc64 kernel it asks
:func:`drgn_hvdump.plugin.source.identify` what the file is, and for a
hypervisor-assisted dump (live ``/proc/vmcore``, a raw copy of one, or a file
``hvdump collect`` wrote) it

* maps the crashed kernel's memory (:mod:`~drgn_hvdump.plugin.memory`):
  the saved low 256 MiB at physical address 0 and in the linear map, and a
  ``FaultError`` that says why for released, lost and scratch bytes;
* gives drgn the registers of every CPU from the hypervisor's register save
  area (:mod:`~drgn_hvdump.plugin.registers`).

For every ppc64 kernel it adds what drgn 0.3 lacks there: symbol lookup
by address on big-endian ELFv1 kernels and address translation for vmalloc
and module addresses on hash-MMU kernels. The ``%hvdump`` commands and the
Python helpers are in :mod:`drgn_hvdump.plugin.helpers`.

``DRGN_DISABLE_PLUGINS=hvdump`` turns it all off.
"""

from __future__ import annotations

import logging

import drgn

from drgn_hvdump.plugin import commands as _commands  # noqa: F401 - registers %hvdump

__all__ = ["drgn_prog_set"]

log = logging.getLogger("drgn.plugins.hvdump")


def drgn_prog_set(prog: drgn.Program) -> None:
    """drgn's hook: called at the end of ``set_core_dump()`` and the other ``set_*()``."""
    platform = prog.platform
    if (
        platform is None
        or platform.arch != drgn.Architecture.PPC64
        or not prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL
    ):
        return
    from drgn_hvdump.errors import HvdumpError
    from drgn_hvdump.plugin.attach import attach

    try:
        attach(prog)
    except (HvdumpError, OSError) as exc:
        log.warning("hvdump: %s", exc)


# Run before other plugins, so their finders already read the crashed kernel's memory.
drgn_prog_set.drgn_priority = 10  # type: ignore[attr-defined]

"""What the plugin's hook does for a ppc64 kernel program (see :mod:`drgn_hvdump.plugin`)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import drgn

if TYPE_CHECKING:
    from drgn_hvdump.plugin.source import DumpSource

__all__ = ["SOURCE_KEY", "attach", "dump_source", "may_be_ours"]

SOURCE_KEY = "hvdump.source"
_HVDUMP_NOTE = b"HVDUMP\0"
_CORE_NOTE = b"CORE\0"
_SNIFF = 1 << 20


def may_be_ours(path: str) -> bool:
    """Whether ``path`` can be a hypervisor-assisted dump, from its first MiB only.

    A cheap filter before the plugin's modules are imported (about 0.1 s):
    a file ``hvdump collect`` wrote has an ``HVDUMP`` note, and a capture
    kernel's ``/proc/vmcore`` (or a copy) is an ELF core whose ``NT_PRSTATUS``
    notes, if any, are numbered by CPU (a kdump core's carry task pids) or, as
    fadump's capture kernel writes them, all 0; every note sits near the start
    of the file.
    :func:`drgn_hvdump.plugin.source.identify` decides.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        head = os.pread(fd, _SNIFF, 0)
    except OSError:
        return False
    finally:
        os.close(fd)
    if _HVDUMP_NOTE in head:
        return True
    if head[:4] != b"\x7fELF":
        return False
    if _CORE_NOTE not in head or path.endswith("/proc/vmcore"):
        return True
    if _program_headers(head) < 3:
        return False  # a copy has a PT_NOTE and two PT_LOADs at least; QEMU's cores one
    from drgn_hvdump.errors import FormatError
    from drgn_hvdump.formats.elfcore import ElfCore, numbered_by_cpu, unnumbered

    try:
        with ElfCore.open(path) as core:
            return numbered_by_cpu(core.prstatus) or unnumbered(core.prstatus)
    except (FormatError, OSError):
        return False


def _program_headers(head: bytes) -> int:
    """``e_phnum`` of a 64-bit ELF header (0xFFFF: more, counted elsewhere), read
    without importing the ELF reader: the field at offset 56, in ``EI_DATA``'s order."""
    if len(head) < 64 or head[5] not in (1, 2):
        return 0
    return int.from_bytes(head[56:58], "little" if head[5] == 1 else "big")


def dump_source(prog: drgn.Program) -> DumpSource | None:
    """The hypervisor-assisted dump behind ``prog``, or None for any other program."""
    from drgn_hvdump.plugin.source import DumpSource

    source = prog.cache.get(SOURCE_KEY)
    return source if isinstance(source, DumpSource) else None


def _hash_mmu(prog: drgn.Program, source: DumpSource | None) -> bool:
    """Whether to translate vmalloc and module addresses ourselves.

    Not for a kernel whose VMCOREINFO says it ran radix (``NUMBER(RADIX_MMU)=1``,
    5.x and later: drgn walks its tables itself), whatever the file; for one
    that says hash. Kernels that do not say (Debian's 6.1 does not) get it:
    our dumps (POWER6, the only machine with this dump interface, has no radix
    MMU), and others because drgn 0.3 then reads no vmalloc memory of a hash
    kernel, nor of a radix kernel in a kdump file, and the walker reads the
    Book3S-64 tables of both MMUs (the entries are the same) with the
    page-table geometry the kernel chose.
    """
    from drgn_hvdump.mmu import mmu_from_vmcoreinfo
    from drgn_hvdump.plugin.translate import program_vmcoreinfo

    info = source.vmcoreinfo if source is not None and source.vmcoreinfo else None
    if info is None:
        info = program_vmcoreinfo(prog)
    said = mmu_from_vmcoreinfo(info)
    if said is not None:
        return said == "hash"
    return source is not None or bool(info)


def attach(prog: drgn.Program) -> None:
    """Recognise the dump and install memory, registers, symbols and translation."""
    path = prog.core_dump_path
    source = None
    if path and may_be_ours(path):
        from drgn_hvdump.plugin.source import identify

        source = identify(path)
    prog.cache[SOURCE_KEY] = source
    if source is not None:
        from drgn_hvdump.plugin.memory import install_memory, install_pending
        from drgn_hvdump.plugin.registers import install_registers

        if source.kind in ("live", "raw"):
            install_memory(prog, source)
        elif source.kind == "collected":
            install_pending(prog, source)
        # fadump: drgn reads the file's memory itself; only the registers are missing.
        keep = source.kind == "fadump"
        install_registers(prog, source.cpu_states(), source.byteorder, keep_saved=keep)
    from drgn_hvdump.plugin.symbols import install_elfv1_symbols

    install_elfv1_symbols(prog)
    if _hash_mmu(prog, source):
        from drgn_hvdump.plugin.translate import install_hash_translation

        install_hash_translation(prog, source.hpte_bytes if source else lambda: None)

"""The crashed kernel's memory for drgn, from a live or raw ``/proc/vmcore``.

drgn maps a vmcore's PT_LOADs as they are: the capture kernel's own memory at
physical address 0, the hypervisor's scratch area at the top. One physical
segment over the whole of memory and one over the linear map (drgn makes a
virtual segment of every PT_LOAD too, and the newest segment wins) replace
them with :meth:`drgn_hvdump.plugin.source.DumpSource.read`, which puts the
saved low 256 MiB back at 0 and refuses released, lost and scratch bytes.
"""

from __future__ import annotations

import drgn

from drgn_hvdump.formats.elfcore import PAGE_OFFSET_PPC64
from drgn_hvdump.plugin.source import DumpSource, Unreadable

__all__ = ["install_memory", "install_pending"]

_U64_MAX = (1 << 64) - 1


def install_memory(prog: drgn.Program, source: DumpSource) -> None:
    """Add the physical and linear-map segments that read ``source``."""
    read = source.read
    direct = tuple(source.direct_regions())
    map_read = source.map_read

    # offset is relative to the segment's start in both views: the physical
    # address. Every field drgn reads is one call: the common case (a copy's
    # readable region) is tested first, with nothing else in the way.
    def read_fn(address: int, count: int, offset: int, physical: bool) -> bytes | memoryview:
        for start, stop, file_offset in direct:
            if start <= offset and offset + count <= stop:
                return map_read(file_offset + offset - start, count)
        try:
            return read(offset, count)
        except Unreadable as exc:
            raise drgn.FaultError(str(exc), address) from None

    # A dump's segments may run to 2**64 (an ELF core allows it); drgn sizes are u64
    # and the linear map ends where the address space does.
    prog.add_memory_segment(0, min(source.memory, _U64_MAX), read_fn, True)
    prog.add_memory_segment(
        PAGE_OFFSET_PPC64, min(source.memory, _U64_MAX + 1 - PAGE_OFFSET_PPC64), read_fn, False
    )


def install_pending(prog: drgn.Program, source: DumpSource) -> None:
    """Over a file an unfinished collection writes: segments on the ranges it has not
    saved yet, which read once the journal says they are durable and fault until then
    (an ELF file would read zeros there, a kdump file garbage descriptors)."""
    read = source.read_collected

    def read_fn(address: int, count: int, offset: int, physical: bool) -> bytes | memoryview:
        try:
            return read(start_of[address - offset] + offset, count)
        except Unreadable as exc:
            raise drgn.FaultError(str(exc), address) from None

    start_of: dict[int, int] = {}
    for start, end in source.pending():
        for base in (start, PAGE_OFFSET_PPC64 + start):
            start_of[base] = start
            prog.add_memory_segment(base, end - start, read_fn, base == start)

"""ELF cores of a whole ppc64 guest: QEMU's ``dump-guest-memory`` and its quirks.

A core of a whole machine is not a ``/proc/vmcore``: QEMU 7.2 writes the ELF
header and notes big-endian even for a little-endian pseries guest, leaves
``p_paddr`` and ``p_vaddr`` 0 for its single RAM block, and writes no
VMCOREINFO note (pseries has no vmcoreinfo device). :func:`read_guest_core`
reads such a core as the kernel left it: each segment's physical place
(:func:`place_segments`), every CPU's registers in the byte order in which
they make sense (:func:`note_registers`: some CPU's MSR in 64-bit mode; a CPU
stopped in RTAS is in 32-bit real mode), the kernel's VMCOREINFO (the core's
note, a physical address the user gives, or the kernel's own note found in
memory by its header, :func:`find_vmcoreinfo_notes`), and so the kernel's
byte order (that note's, else the ``LE`` bit of a 64-bit CPU's MSR).

Used by ``hvdump convert`` (a QEMU dump becomes a kdump file drgn and crash
open) and by ``hvsim adopt`` (a real image as a simulated LPAR's memory).
"""

from __future__ import annotations

import functools
import itertools
import mmap
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from drgn_hvdump.errors import HvdumpError
from drgn_hvdump.formats.elfcore import ELF_PRSTATUS_PPC64, NT_PRSTATUS, ElfCore, PtRegs
from drgn_hvdump.formats.layout import ByteOrder
from drgn_hvdump.formats.vmcoreinfo import (
    VMCOREINFO_NOTE_NAME,
    VMCOREINFO_NOTE_TYPE,
    parse_vmcoreinfo,
    vmcoreinfo_number,
)

__all__ = [
    "KERNEL_BASE",
    "GuestCoreError",
    "GuestImage",
    "ImageSegment",
    "find_vmcoreinfo_notes",
    "kernel_byteorder",
    "note_registers",
    "place_segments",
    "read_guest_core",
    "registers_byteorder",
]

KERNEL_BASE = 0xC000000000000000
"""Start of the ppc64 kernel's linear map."""
_MSR_SF = 1 << 63
_MSR_LE = 1
_NOTE_TAIL = b"VMCOREINFO\0\0OSRELEASE="
"""The kernel's VMCOREINFO note from its name on: 11-byte name padded to 12, then the text."""
_ORDERS: tuple[ByteOrder, ByteOrder] = ("big", "little")


class GuestCoreError(HvdumpError):
    """The core cannot be read as a whole guest (one line: what, which file, what to do)."""


@dataclass(frozen=True, order=True)
class ImageSegment:
    """A load segment: physical ``[paddr, paddr + memsz)``, file bytes at ``offset``."""

    paddr: int
    memsz: int
    offset: int
    filesz: int

    @property
    def end(self) -> int:
        return self.paddr + self.memsz


@dataclass(frozen=True)
class GuestImage:
    """What an image holds, as read by :func:`read_guest_core`."""

    path: str
    file_size: int
    elf_byteorder: ByteOrder
    byteorder: ByteOrder
    """The kernel's byte order."""
    segments: tuple[ImageSegment, ...]
    registers: tuple[PtRegs, ...]
    """Each CPU's registers, in CPU order."""
    vmcoreinfo: bytes
    """The VMCOREINFO text, as the kernel's note holds it."""
    vmcoreinfo_where: str
    """Where it came from: ``"note in the core"`` or a physical address."""

    @functools.cached_property
    def info(self) -> dict[str, str]:
        return parse_vmcoreinfo(self.vmcoreinfo, self.path)

    @property
    def page_size(self) -> int:
        return int(self.info["PAGESIZE"])

    @property
    def osrelease(self) -> str:
        return self.info["OSRELEASE"]

    @property
    def ram_end(self) -> int:
        return max(s.end for s in self.segments)

    @property
    def mmu(self) -> str | None:
        """``"radix"`` or ``"hash"`` if VMCOREINFO says (``NUMBER(RADIX_MMU)``, newer
        kernels only), else None."""
        radix = vmcoreinfo_number(self.info, "RADIX_MMU")
        return None if radix is None else ("radix" if radix else "hash")


# ------------------------------------------------------------ pure parts


def kernel_byteorder(msr: int) -> ByteOrder:
    """The byte order of the code a CPU with this MSR runs (its ``LE`` bit)."""
    return "little" if msr & _MSR_LE else "big"


def registers_byteorder(registers: Sequence[PtRegs]) -> ByteOrder | None:
    """The kernel's byte order as the first CPU in 64-bit mode shows it, or None."""
    for r in registers:
        if r.msr & _MSR_SF:
            return kernel_byteorder(r.msr)
    return None


def place_segments(
    loads: Sequence[tuple[int, int, int, int, int]], path: str | None = None
) -> tuple[ImageSegment, ...]:
    """Physical placement of ``(p_paddr, p_vaddr, p_memsz, p_offset, p_filesz)`` segments.

    ``p_paddr`` is trusted unless several segments all claim 0 (QEMU leaves
    it 0); those are placed by ``p_vaddr`` when every one is in the linear map.
    """
    loads = [seg for seg in loads if seg[2]]
    if not loads:
        raise GuestCoreError(f"{path}: no memory in the core (no PT_LOAD with a size)")
    if len(loads) > 1 and all(p == 0 for p, *_ in loads):
        if not all(v >= KERNEL_BASE for _, v, *_ in loads):
            raise GuestCoreError(
                f"{path}: {len(loads)} load segments all at physical address 0 and not in "
                "the linear map: cannot tell where each belongs; write the core with "
                "p_paddr set (QEMU: one RAM block, or dump-guest-memory with paging off)"
            )
        loads = [(v - KERNEL_BASE, v, m, o, f) for _, v, m, o, f in loads]
    segs = sorted(ImageSegment(p, m, o, f) for p, _, m, o, f in loads)
    for a, b in itertools.pairwise(segs):
        if a.end > b.paddr:
            raise GuestCoreError(f"{path}: load segments overlap at physical address {b.paddr:#x}")
    return tuple(segs)


def find_vmcoreinfo_notes(
    data: bytes | mmap.mmap, start: int = 0, end: int | None = None, base: int = 0
) -> Iterator[tuple[int, ByteOrder]]:
    """``(base + offset, byte order)`` of every VMCOREINFO note header in ``data[start:end]``.

    A note header is ``namesz`` 11, a plausible ``descsz``, ``type`` 0, in
    either byte order, right before the name and an ``OSRELEASE=`` line.
    """
    stop = len(data) if end is None else end
    pos = data.find(_NOTE_TAIL, start + 12, stop)
    while pos >= 0:
        head = data[pos - 12 : pos]
        for order in _ORDERS:
            namesz = int.from_bytes(head[0:4], order)
            descsz = int.from_bytes(head[4:8], order)
            ntype = int.from_bytes(head[8:12], order)
            if (
                namesz == len(VMCOREINFO_NOTE_NAME) + 1
                and ntype == VMCOREINFO_NOTE_TYPE
                and 0 < descsz < 1 << 20
            ):
                yield base + pos - 12, order
                break
        pos = data.find(_NOTE_TAIL, pos + 1, stop)


# ---------------------------------------------------------- reading an image


def note_registers(core: ElfCore, descs: Sequence[bytes]) -> tuple[PtRegs, ...]:
    """Each CPU's registers, in the byte order in which some CPU is in 64-bit mode.

    (A CPU stopped inside RTAS runs 32-bit real mode, so not every MSR has SF.)
    If none is in either order, the ELF header's order: the registers say nothing.
    """
    readings = [
        tuple(ELF_PRSTATUS_PPC64.unpack_from(d, 0, order, path=core.path).pr_reg for d in descs)
        for order in sorted(_ORDERS, key=lambda o: o != core.byteorder)
    ]
    return next((regs for regs in readings if registers_byteorder(regs)), readings[0])


def _file_offset(segments: Sequence[ImageSegment], paddr: int, path: str) -> int:
    for seg in segments:
        if seg.paddr <= paddr < seg.paddr + seg.filesz:
            return seg.offset + paddr - seg.paddr
    raise GuestCoreError(f"{path}: physical address {paddr:#x} is not in the image")


def _note_text(m: mmap.mmap, off: int, order: ByteOrder) -> bytes:
    size = int.from_bytes(m[off + 4 : off + 8], order)
    return m[off + 24 : off + 24 + size]


def _find_vmcoreinfo(
    m: mmap.mmap, segments: Sequence[ImageSegment], at: int | None, path: str
) -> tuple[int, bytes, ByteOrder]:
    """The kernel's VMCOREINFO note: at physical ``at``, or the only one in memory."""
    if at is not None:
        off = _file_offset(segments, at, path)
        for _, order in find_vmcoreinfo_notes(m, off, off + 24 + len(_NOTE_TAIL)):
            return at, _note_text(m, off, order), order
        raise GuestCoreError(
            f"{path}: no VMCOREINFO note at physical address {at:#x} (file offset {off:#x}); "
            "give the address the guest's /sys/kernel/vmcoreinfo shows"
        )
    found: dict[bytes, tuple[int, ByteOrder]] = {}
    for seg in segments:
        for off, order in find_vmcoreinfo_notes(m, seg.offset, seg.offset + seg.filesz):
            found.setdefault(_note_text(m, off, order), (seg.paddr + off - seg.offset, order))
    if not found:
        raise GuestCoreError(
            f"{path}: no VMCOREINFO in the core's notes or in memory; give its physical "
            "address with --vmcoreinfo (the guest's /sys/kernel/vmcoreinfo)"
        )
    if len(found) > 1:
        where = ", ".join(f"{a:#x}" for a, _ in sorted(found.values()))
        raise GuestCoreError(
            f"{path}: {len(found)} different VMCOREINFO notes in memory (at {where}); "
            "choose one with --vmcoreinfo"
        )
    ((text, (addr, order)),) = found.items()
    return addr, text, order


def read_guest_core(
    path: str | os.PathLike[str],
    *,
    vmcoreinfo_at: int | None = None,
    endian: ByteOrder | None = None,
) -> GuestImage:
    """Read what an ELF core of a whole guest holds; :class:`GuestCoreError` or
    :class:`FormatError` (one line, naming the file) when it cannot be read as one."""
    full = os.path.abspath(os.fspath(path))
    with ElfCore.open(full) as core:
        segments = place_segments(
            [
                (ph.p_paddr, ph.p_vaddr, ph.p_memsz, ph.p_offset, ph.p_filesz)
                for ph in core.segments
            ],
            full,
        )
        prstatus = [n for n in core.notes if n.name == "CORE" and n.type == NT_PRSTATUS]
        if not prstatus:
            raise GuestCoreError(
                f"{full}: no NT_PRSTATUS notes: the crashed CPUs' registers are unknown "
                "(QEMU's dump-guest-memory writes one per CPU)"
            )
        registers = note_registers(core, [n.desc for n in prstatus])
        order: ByteOrder = endian or registers_byteorder(registers) or core.byteorder
        note = next(
            (
                n
                for n in core.notes
                if n.name == VMCOREINFO_NOTE_NAME and n.type == VMCOREINFO_NOTE_TYPE
            ),
            None,
        )
        file_size = core.file_size
        if note is not None and vmcoreinfo_at is None:
            text, where = note.desc, "note in the core"
        else:
            with open(full, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
                addr, text, note_order = _find_vmcoreinfo(m, segments, vmcoreinfo_at, full)
            where = f"{addr:#x}"
            # The kernel wrote the note in its own order: that settles it.
            order = endian or note_order
        image = GuestImage(
            path=full,
            file_size=file_size,
            elf_byteorder=core.byteorder,
            byteorder=order,
            segments=segments,
            registers=registers,
            vmcoreinfo=bytes(text).rstrip(b"\0"),
            vmcoreinfo_where=where,
        )
    info = image.info
    for key in ("OSRELEASE", "PAGESIZE"):
        if key not in info:
            raise GuestCoreError(f"{full}: VMCOREINFO ({where}) has no {key}")
    return image

"""Adopt a real memory image (an ELF core of a whole guest) as a simulated LPAR's RAM.

A simulator earns trust when the same pipeline works on memory a real kernel
wrote. ``hvsim adopt CORE DIR`` makes an LPAR whose first kernel's memory is
the image: QEMU's ``dump-guest-memory`` of a ``pseries`` guest, a raw
``/proc/vmcore`` copy, or any ppc64 ELF core of a whole machine. The rest of
the life cycle (boot, crash, capture boot, release, collect) runs unchanged
on top of it: the image is read in place (a layer of kind ``image``), never
copied.

What is taken from the image, and how its quirks are handled:

* **Memory.** Each ``PT_LOAD`` at its ``p_paddr``. QEMU writes ``p_paddr``
  and ``p_vaddr`` 0 for a single RAM block, which is right for a guest whose
  RAM starts at 0; several segments all at 0 are placed by ``p_vaddr`` when
  that is in the kernel's linear map, and refused otherwise.
* **Byte orders.** QEMU 7.2 writes the ELF header and notes big-endian even
  for a little-endian guest. The notes are read in the order in which the
  registers make sense (64-bit mode set in some CPU's MSR: a CPU stopped in
  RTAS runs 32-bit real mode). The *kernel's* order is that of its
  VMCOREINFO note when found in memory, else the ``LE`` bit of a CPU in
  64-bit mode, unless the user says otherwise.
* **VMCOREINFO.** From the core's note if it has one (QEMU's pseries has no
  vmcoreinfo device, so usually not); else at a physical address the user
  gives (the guest's ``/sys/kernel/vmcoreinfo``); else found in memory by
  the kernel's own note header (``VMCOREINFO`` name, then ``OSRELEASE=``).
* **Registers.** One ``NT_PRSTATUS`` note per CPU, in CPU order; they go
  into the hypervisor's register save area at the crash.
* **MMU.** ``NUMBER(RADIX_MMU)`` where VMCOREINFO has it (newer kernels),
  else what the user says (``--mmu``), else hash: QEMU boots POWER8 guests
  with the hash MMU and POWER9 ones with radix.
* **HPTEs.** A guest's hashed page table is the hypervisor's, not in guest
  RAM, so no dump of guest memory has it. A hash-MMU kernel bolts its linear
  map into the table at boot; the HPTE section holds those entries (16 MiB
  pages, as Linux places them). A radix kernel has no hashed page table:
  the section is empty.

The LPAR gets more RAM than the image (the image rounded up to 256 MiB, plus
room for the scratch area above it), so the hypervisor's save area never
lands on the image's data: that memory is what a kernel booted with
``phyp_dump=1`` would have kept reserved, and reads as zero.
"""

from __future__ import annotations

import functools
import itertools
import mmap
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from drgn_hvdump.errors import HvdumpError
from drgn_hvdump.formats.elfcore import (
    ELF_PRSTATUS_PPC64,
    NT_PRSTATUS,
    ElfCore,
    PtRegs,
    build_prstatus,
)
from drgn_hvdump.formats.hpte import linear_map_hptes
from drgn_hvdump.formats.layout import ByteOrder
from drgn_hvdump.formats.regsave import CpuState, pt_regs_to_cpu_state
from drgn_hvdump.formats.vmcoreinfo import (
    VMCOREINFO_NOTE_NAME,
    VMCOREINFO_NOTE_TYPE,
    parse_vmcoreinfo,
    vmcoreinfo_number,
)

from .config import MEMORY_GRANULE, LparConfig
from .hypervisor import scratch_layout

if TYPE_CHECKING:
    from .kernel import Scenario

__all__ = [
    "AdoptedKernel",
    "GuestImage",
    "ImageSegment",
    "adopted_memory_size",
    "find_vmcoreinfo_notes",
    "inspect_image",
    "kernel_byteorder",
    "place_segments",
]

KERNEL_BASE = 0xC000000000000000
"""Start of the ppc64 kernel's linear map."""
_MSR_SF = 1 << 63
_MSR_LE = 1
_NOTE_TAIL = b"VMCOREINFO\0\0OSRELEASE="
"""The kernel's VMCOREINFO note from its name on: 11-byte name padded to 12, then the text."""
_ORDERS: tuple[ByteOrder, ByteOrder] = ("big", "little")
_LINEAR_PAGE_SHIFT = 24


class ImageError(HvdumpError):
    """The image cannot be adopted (one line: what, which file, what to do)."""


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
    """What an image holds, as read by :func:`inspect_image`."""

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

    @property
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


def place_segments(
    loads: Sequence[tuple[int, int, int, int, int]], path: str | None = None
) -> tuple[ImageSegment, ...]:
    """Physical placement of ``(p_paddr, p_vaddr, p_memsz, p_offset, p_filesz)`` segments.

    ``p_paddr`` is trusted unless several segments all claim 0 (QEMU leaves
    it 0); those are placed by ``p_vaddr`` when every one is in the linear map.
    """
    loads = [seg for seg in loads if seg[2]]
    if not loads:
        raise ImageError(f"{path}: no memory in the core (no PT_LOAD with a size)")
    if len(loads) > 1 and all(p == 0 for p, *_ in loads):
        if not all(v >= KERNEL_BASE for _, v, *_ in loads):
            raise ImageError(
                f"{path}: {len(loads)} load segments all at physical address 0 and not in "
                "the linear map: cannot tell where each belongs; write the core with "
                "p_paddr set (QEMU: one RAM block, or dump-guest-memory with paging off)"
            )
        loads = [(v - KERNEL_BASE, v, m, o, f) for _, v, m, o, f in loads]
    segs = sorted(ImageSegment(p, m, o, f) for p, _, m, o, f in loads)
    for a, b in itertools.pairwise(segs):
        if a.end > b.paddr:
            raise ImageError(f"{path}: load segments overlap at physical address {b.paddr:#x}")
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


def adopted_memory_size(ram_end: int, cpus: int, page_size: int) -> int:
    """RAM for an LPAR adopting an image that ends at ``ram_end``: the scratch area fits above."""
    memory = max(2 * MEMORY_GRANULE, -(-ram_end // MEMORY_GRANULE) * MEMORY_GRANULE)
    while True:
        memory += MEMORY_GRANULE
        cfg = LparConfig(memory=memory, cpus=cpus, page_size=page_size)
        if scratch_layout(cfg).base >= ram_end:
            return memory


# ---------------------------------------------------------- reading an image


def _note_registers(core: ElfCore, descs: Sequence[bytes]) -> tuple[PtRegs, ...]:
    """Each CPU's registers, in the byte order in which some CPU is in 64-bit mode.

    (A CPU stopped inside RTAS runs 32-bit real mode, so not every MSR has SF.)
    """
    for order in sorted(_ORDERS, key=lambda o: o != core.byteorder):
        regs = tuple(
            ELF_PRSTATUS_PPC64.unpack_from(d, 0, order, path=core.path).pr_reg
            for d in descs
        )
        if any(r.msr & _MSR_SF for r in regs):
            return regs
    raise ImageError(
        f"{core.path}: no NT_PRSTATUS note has an MSR in 64-bit mode in either byte order; "
        "is this a ppc64 kernel's core?"
    )


def _file_offset(segments: Sequence[ImageSegment], paddr: int, path: str) -> int:
    for seg in segments:
        if seg.paddr <= paddr < seg.paddr + seg.filesz:
            return seg.offset + paddr - seg.paddr
    raise ImageError(f"{path}: physical address {paddr:#x} is not in the image")


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
        raise ImageError(
            f"{path}: no VMCOREINFO note at physical address {at:#x} (file offset {off:#x}); "
            "give the address the guest's /sys/kernel/vmcoreinfo shows"
        )
    found: dict[bytes, tuple[int, ByteOrder]] = {}
    for seg in segments:
        for off, order in find_vmcoreinfo_notes(m, seg.offset, seg.offset + seg.filesz):
            found.setdefault(_note_text(m, off, order), (seg.paddr + off - seg.offset, order))
    if not found:
        raise ImageError(
            f"{path}: no VMCOREINFO in the core's notes or in memory; give its physical "
            "address with --vmcoreinfo (the guest's /sys/kernel/vmcoreinfo)"
        )
    if len(found) > 1:
        where = ", ".join(f"{a:#x}" for a, _ in sorted(found.values()))
        raise ImageError(
            f"{path}: {len(found)} different VMCOREINFO notes in memory (at {where}); "
            "choose one with --vmcoreinfo"
        )
    ((text, (addr, order)),) = found.items()
    return addr, text, order


def inspect_image(
    path: str | os.PathLike[str],
    *,
    vmcoreinfo_at: int | None = None,
    endian: ByteOrder | None = None,
) -> GuestImage:
    """Read what an ELF core of a whole guest holds; :class:`ImageError` or
    :class:`FormatError` (one line, naming the file) when it cannot be adopted."""
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
            raise ImageError(
                f"{full}: no NT_PRSTATUS notes: the crashed CPUs' registers are unknown "
                "(QEMU's dump-guest-memory writes one per CPU)"
            )
        registers = _note_registers(core, [n.desc for n in prstatus])
        in_kernel = next(r for r in registers if r.msr & _MSR_SF)
        order: ByteOrder = endian or kernel_byteorder(in_kernel.msr)
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
            raise ImageError(f"{full}: VMCOREINFO ({where}) has no {key}")
    if image.page_size not in (4096, 65536):
        raise ImageError(f"{full}: VMCOREINFO PAGESIZE={image.page_size}: hvsim models 4K or 64K")
    return image


def open_adopted(config: LparConfig) -> GuestImage:
    """The image an LPAR adopted, checked to be the same file it was adopted from.

    Read once per process and file version (the FUSE server asks at every
    state change; finding VMCOREINFO scans memory).
    """
    try:
        st = os.stat(config.image)
    except OSError as exc:
        raise ImageError(
            f"{config.image}: the adopted image cannot be read: {exc.strerror}; the LPAR "
            "reads it in place, so it must stay where it was adopted from"
        ) from None
    if st.st_size != config.image_size:
        raise ImageError(
            f"{config.image}: the adopted image is now {st.st_size} bytes, it was "
            f"{config.image_size} when adopted; adopt it again into a new LPAR"
        )
    at = config.image_vmcoreinfo if config.image_vmcoreinfo >= 0 else None
    return _inspect_cached(config.image, st.st_size, st.st_mtime_ns, at, config.endian)


@functools.lru_cache(maxsize=8)
def _inspect_cached(
    path: str, size: int, mtime_ns: int, at: int | None, endian: ByteOrder
) -> GuestImage:
    return inspect_image(path, vmcoreinfo_at=at, endian=endian)


# ------------------------------------------------------------ the kernel


class AdoptedKernel:
    """The crashed kernel of an adopted image: what :class:`hvsim.kernel.KernelImage` offers.

    Its memory is the image's own; what the hypervisor saves (registers,
    HPTEs) and what the capture kernel shows (VMCOREINFO) come from it.
    """

    def __init__(
        self, config: LparConfig, crash_time: int, scenario: Scenario | None = None
    ) -> None:
        self.config = config
        self.generation = 1
        self.crash_time = crash_time
        self.scenario = scenario
        self._image: GuestImage | None = None

    @property
    def image(self) -> GuestImage:
        if self._image is None:
            self._image = open_adopted(self.config)
        return self._image

    @property
    def crash_cpu(self) -> int:
        """The CPU that panicked, as given at adoption (drgn reads ``panic_cpu`` itself)."""
        return self.config.image_crash_cpu

    @property
    def kind(self) -> str:
        return "adopted"

    def banner(self) -> str:
        return f"Linux version {self.config.osrelease} (adopted image {self.config.image})\n"

    def vmcoreinfo(self) -> bytes:
        """The kernel's own VMCOREINFO text, as found in the image."""
        return self.image.vmcoreinfo

    def pt_regs(self, cpu: int) -> PtRegs:
        return self.image.registers[cpu]

    def cpu_states(self) -> list[CpuState]:
        return [pt_regs_to_cpu_state(cpu, r) for cpu, r in enumerate(self.image.registers)]

    def prstatus(self, cpu: int, pid: int | None = None) -> bytes:
        return build_prstatus(
            self.pt_regs(cpu), self.config.endian, pid=cpu + 1 if pid is None else pid
        )

    def overlays(self) -> list[tuple[int, bytes]]:
        """Nothing: the dying kernel's memory is the image as it is."""
        return []

    def hash_page_table(self, table_size: int) -> list[tuple[int, int, int]]:
        """The bolted linear map of a hash-MMU kernel (none for radix)."""
        if self.config.image_mmu == "radix":
            return []
        span = -(-self.image.ram_end >> _LINEAR_PAGE_SHIFT) << _LINEAR_PAGE_SHIFT
        table = linear_map_hptes(span, table_size, _LINEAR_PAGE_SHIFT)
        return [(slot, h.v, h.r) for slot, h in sorted(table.items())]


def adoption_config(
    image: GuestImage,
    *,
    crash_cpu: int = 0,
    vmcoreinfo_at: int | None = None,
    quirks: str = "faithful",
    name: str = "hvsim-lpar",
    mmu: str | None = None,
) -> dict[str, Any]:
    """The :meth:`hvsim.lpar.Lpar.create` arguments of an LPAR adopting ``image``.

    ``mmu`` defaults to what VMCOREINFO says, else ``"hash"`` (a kernel's
    VMCOREINFO before 6.x does not say; give it for a radix guest).
    """
    cpus = len(image.registers)
    if not 0 <= crash_cpu < cpus:
        raise ImageError(f"{image.path}: --crash-cpu {crash_cpu}: the image has {cpus} CPUs")
    return {
        "memory": adopted_memory_size(image.ram_end, cpus, image.page_size),
        "cpus": cpus,
        "endian": image.byteorder,
        "page_size": image.page_size,
        "osrelease": image.osrelease,
        "quirks": quirks,
        "name": name,
        "adopted": {
            "image": image.path,
            "image_size": image.file_size,
            "image_vmcoreinfo": -1 if vmcoreinfo_at is None else vmcoreinfo_at,
            "image_crash_cpu": crash_cpu,
            "image_mmu": mmu or image.mmu or "hash",
        },
    }

"""Hash MMU address translation
===========================

The ``drgn_hvdump.mmu`` module translates kernel virtual addresses of
64-bit hash-MMU PowerPC kernels (POWER5/6/7, the kernels hypervisor-assisted
dump ran on), which drgn 0.3 cannot: it walks only Radix page tables.

Two sources answer "which physical page does this address map to":

* the Linux page tables rooted at ``swapper_pg_dir``, with the hash MMU's
  geometry (:class:`Geometry`) and entry format (:class:`PteFormat`): this is
  what the kernel meant, and covers the vmalloc, module and ioremap range;
* the hashed page table the hypervisor saved with the dump
  (:class:`SavedHpt`): what the processor would actually have used, including
  the bolted 16 MiB linear-map entries and stale entries the kernel never
  flushed.

:class:`HashMmu` combines them: the page tables first, the saved hash table
when the page tables do not map an address, and a note whenever the two
disagree. Everything here is pure Python over a ``read(pa, size) -> bytes``
callable, so it is tested without drgn.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from drgn_hvdump.formats.hpte import (
    HPTE_LAYOUT,
    HPTE_SIZE,
    HPTE_V_VALID,
    HPTES_PER_GROUP,
    KERNEL_BASE,
    SSIZE_256M,
    Hpte,
    decode_ea,
    hpte_group,
    hpte_hash,
    htab_hash_mask,
    kernel_vsid,
    va_of,
)

__all__ = [
    "BOOK3S64_PTE_FORMAT",
    "KERN_VIRT_START",
    "LINUX_2_6_32_GEOMETRY",
    "POWER6_LARGE_PAGE_ENCODINGS",
    "Disagreement",
    "Geometry",
    "HashMmu",
    "HpteMatch",
    "PageTableError",
    "PageTableMapping",
    "PteFormat",
    "SavedHpt",
    "Translation",
    "hash_geometry",
    "hpte_page_shift",
    "iter_page_tables",
    "mmu_from_vmcoreinfo",
    "pte_format_2_6_32",
    "table_range_from_vmcoreinfo",
    "walk_page_tables",
]

ByteOrder = Literal["big", "little"]
ReadFn = Callable[[int, int], bytes]
Source = Literal["page tables", "hpt", "linear map", "none"]

KERN_VIRT_START = 0xD000000000000000
"""Start of the page-table-mapped kernel range (vmalloc, then I/O) on 2.6-era hash kernels."""

_U64 = (1 << 64) - 1
_FULL_IO_SIZE = 0x80000000  # ISA and PHB I/O space at the start of the I/O half

LINUX_2_6_32_GEOMETRY: Mapping[int, tuple[int, int, int, int]] = {
    # page shift: (PTE, PMD, PUD, PGD) index sizes of pgtable-ppc64-64k.h / -4k.h
    16: (12, 12, 0, 4),
    12: (9, 7, 7, 9),
}
"""Compiled-in index sizes of Linux 2.6.32 ppc64 hash kernels, by page shift."""

POWER6_LARGE_PAGE_ENCODINGS: Mapping[int, int] = {16: 1, 24: 0}
"""LP encodings (``penc``) of large pages on POWER6 by page shift, from ``ibm,segment-page-sizes``."""

_GEOMETRY_VARIABLES = (
    "__pte_index_size",
    "__pmd_index_size",
    "__pud_index_size",
    "__pgd_index_size",
)
_RANGE_VARIABLES = ("__vmalloc_start", "__vmalloc_end", "__kernel_io_start", "__kernel_io_end")


class PageTableError(ValueError):
    """A page-table entry that cannot be followed (a pointer outside the linear map)."""


@dataclass(frozen=True)
class Geometry:
    """How a hash kernel's page tables split an address, and the range they cover.

    Index sizes are log2 of the entries per table at each level; a PUD size
    of 0 means no PUD level (64 KiB pages before 4.x).
    """

    page_shift: int
    pte_index_size: int
    pmd_index_size: int
    pud_index_size: int
    pgd_index_size: int
    vmalloc_start: int
    vmalloc_end: int
    io_start: int
    io_end: int
    source: str
    """Where the geometry came from, for messages: kernel variables, or compiled-in defaults."""

    @property
    def page_size(self) -> int:
        return 1 << self.page_shift

    @property
    def pmd_shift(self) -> int:
        return self.page_shift + self.pte_index_size

    @property
    def pud_shift(self) -> int:
        return self.pmd_shift + self.pmd_index_size

    @property
    def pgdir_shift(self) -> int:
        return self.pud_shift + self.pud_index_size

    @property
    def ioremap_start(self) -> int:
        """``IOREMAP_BASE``: after the ISA and PHB I/O windows."""
        return self.io_start + _FULL_IO_SIZE

    def contains(self, ea: int) -> bool:
        """Whether the page tables cover ``ea`` (vmalloc, modules, I/O, ioremap)."""
        return self.vmalloc_start <= ea < self.io_end

    def region(self, ea: int) -> str:
        if self.vmalloc_start <= ea < self.vmalloc_end:
            return "vmalloc"
        if self.io_start <= ea < self.io_end:
            return "ioremap" if ea >= self.ioremap_start else "I/O"
        return "outside the page tables' range"

    def indexes(self, ea: int) -> tuple[int, int, int, int]:
        """``(pgd, pud, pmd, pte)`` indexes of ``ea`` (pud 0 without a PUD level)."""

        def field(shift: int, bits: int) -> int:
            return (ea >> shift) & ((1 << bits) - 1)

        return (
            field(self.pgdir_shift, self.pgd_index_size),
            field(self.pud_shift, self.pud_index_size),
            field(self.pmd_shift, self.pmd_index_size),
            field(self.page_shift, self.pte_index_size),
        )


def hash_geometry(page_size: int, variables: Mapping[str, int] | None = None) -> Geometry:
    """The page-table geometry of a hash kernel with base pages of ``page_size`` bytes.

    ``variables`` holds whichever of the kernel's run-time geometry variables
    the caller could read (``__pte_index_size``, ``__pmd_index_size``,
    ``__pud_index_size``, ``__pgd_index_size``, and for the range
    ``__vmalloc_start``, ``__vmalloc_end``, ``__kernel_io_start``,
    ``__kernel_io_end``). Kernels that have them chose the layout at boot, so
    they are tried first; without all four index sizes this is the
    compiled-in layout of 2.6.32 (``pgtable-ppc64-64k.h``/``-4k.h``), whose
    range is ``KERN_VIRT_START`` plus the span the tables can index, the
    first half vmalloc and the second half I/O.
    """
    if page_size not in (1 << 12, 1 << 16):
        raise ValueError(f"hash kernels use 4 KiB or 64 KiB base pages, not {page_size}")
    shift = page_size.bit_length() - 1
    vars_ = dict(variables or {})
    if all(name in vars_ for name in _GEOMETRY_VARIABLES):
        sizes = tuple(vars_[name] for name in _GEOMETRY_VARIABLES)
        source = "the kernel's __*_index_size variables"
    else:
        sizes = LINUX_2_6_32_GEOMETRY[shift]
        source = f"Linux 2.6.32 defaults for {page_size >> 10} KiB pages"
    pte, pmd, pud, pgd = sizes
    if any(not 0 <= n <= 16 for n in sizes) or shift + pte + pmd + pud + pgd > 60:
        raise ValueError(f"implausible page-table index sizes {sizes}")
    if all(name in vars_ for name in _RANGE_VARIABLES):
        vstart, vend, iostart, ioend = (vars_[name] for name in _RANGE_VARIABLES)
    else:
        span = 1 << (shift + pte + pmd + pud + pgd)  # PGTABLE_RANGE
        vstart, vend = KERN_VIRT_START, KERN_VIRT_START + span // 2
        iostart, ioend = vend, KERN_VIRT_START + span
    if not vstart < vend <= iostart < ioend:
        raise ValueError(
            f"implausible kernel ranges: vmalloc {vstart:#x}-{vend:#x}, I/O {iostart:#x}-{ioend:#x}"
        )
    return Geometry(shift, pte, pmd, pud, pgd, vstart, vend, iostart, ioend, source)


def mmu_from_vmcoreinfo(info: Mapping[str, str]) -> Literal["hash", "radix"] | None:
    """The MMU a kernel ran, as its VMCOREINFO says (``NUMBER(RADIX_MMU)``, 5.x and
    later), or None when it does not say (older kernels)."""
    value = info.get("NUMBER(RADIX_MMU)")
    if value == "1":
        return "radix"
    if value == "0":
        return "hash"
    return None


def table_range_from_vmcoreinfo(info: Mapping[str, str]) -> tuple[int, int] | None:
    """``[start, end)`` of the page-table-mapped kernel range (vmalloc, then I/O) a
    hash kernel's VMCOREINFO gives, before its debug info is loaded: from
    ``NUMBER(VMALLOC_START)`` up to ``SYMBOL(vmemmap)``, which follows the I/O
    range on Book3S-64 (6.x 4 KiB pages: ``0xc0003d…``-``0xc0003f…``; 64 KiB:
    ``0xc008…``-``0xc00c…``). None when either is missing or implausible."""
    start_text = info.get("NUMBER(VMALLOC_START)", "")
    end_text = info.get("SYMBOL(vmemmap)", "")
    try:
        start = int(start_text, 16 if start_text[:2] in ("0x", "0X") else 10)
        end = int(end_text, 16)
    except ValueError:
        return None
    if not KERNEL_BASE < start < end <= _U64:
        return None
    return start, end


@dataclass(frozen=True)
class PteFormat:
    """How page-table entries are stored and decoded.

    ``table_pointer`` says what upper-level entries hold: ``"virtual"`` (the
    next table's kernel virtual address, 2.6-era kernels) or ``"physical"``.
    """

    name: str
    byteorder: ByteOrder
    present: int
    """Bits of a PTE that must all be set for it to map a page."""
    rpn_shift: int | None
    """Shift of the page frame number in a PTE; None: the address is stored in place."""
    rpn_mask: int
    """Bits of the (shifted) PTE that hold the frame number or address."""
    table_mask: int
    """Bits of an upper-level entry that hold the next table's address."""
    table_pointer: Literal["virtual", "physical"]
    hashpte: int = 0
    """``_PAGE_HASHPTE``: the kernel put an HPTE for this PTE; 0 if the format has none."""
    hidx_shift: int = 12
    """The PTE's hash slot hint (``_PAGE_F_SECOND | _PAGE_F_GIX``) is 4 bits at this shift."""

    def unpack(self, raw: bytes) -> int:
        return int.from_bytes(raw, self.byteorder)

    def page_address(self, pte: int, page_shift: int) -> int:
        """Physical address of the page a present PTE maps."""
        if self.rpn_shift is None:
            return pte & self.rpn_mask & ~((1 << page_shift) - 1)
        return ((pte >> self.rpn_shift) & self.rpn_mask) << page_shift

    def table_address(self, entry: int) -> int:
        """Physical address of the next table an upper-level entry points at."""
        addr = entry & self.table_mask
        if self.table_pointer == "physical":
            return addr
        if not KERNEL_BASE <= addr < KERN_VIRT_START:
            raise PageTableError(f"entry {entry:#018x} does not point into the linear map")
        return addr - KERNEL_BASE

    def hash_hint(self, pte: int) -> tuple[bool, int] | None:
        """``(secondary, index in group)`` the kernel recorded for the PTE's HPTE, if any."""
        if not self.hashpte or not pte & self.hashpte:
            return None
        hidx = (pte >> self.hidx_shift) & 0xF
        return bool(hidx & 8), hidx & 7


def pte_format_2_6_32(page_size: int, byteorder: ByteOrder) -> PteFormat:
    """Entries of 2.6.32 (``pte-hash64-64k.h``/``-4k.h``): native byte order, virtual table pointers.

    ``_PAGE_PRESENT`` is 0x1 and ``_PAGE_HASHPTE`` 0x400; the frame number
    sits at ``PTE_RPN_SHIFT``, 32 with 64 KiB pages and 17 with 4 KiB pages;
    a PMD/PUD entry's low 9 bits (``PMD_MASKED_BITS``) are flags with 64 KiB
    pages and none with 4 KiB pages.
    """
    if page_size == 1 << 16:
        rpn_shift, masked = 32, 0x1FF
    elif page_size == 1 << 12:
        rpn_shift, masked = 17, 0
    else:
        raise ValueError(f"hash kernels use 4 KiB or 64 KiB base pages, not {page_size}")
    return PteFormat(
        name=f"2.6.32 hash, {page_size >> 10} KiB pages, {byteorder}-endian",
        byteorder=byteorder,
        present=0x1,
        rpn_shift=rpn_shift,
        rpn_mask=(1 << (64 - rpn_shift)) - 1,
        table_mask=_U64 & ~masked,
        table_pointer="virtual",
        hashpte=0x400,
    )


BOOK3S64_PTE_FORMAT = PteFormat(
    name="book3s64 (4.7 and later): big-endian entries, physical table pointers",
    byteorder="big",
    present=1 << 63,  # _PAGE_PRESENT
    rpn_shift=None,
    rpn_mask=(1 << 53) - 1,  # _PAGE_PA_MAX = 53
    table_mask=_U64 & ~0xC0000000000000FF,
    table_pointer="physical",
)
"""Entries of Book3S-64 kernels from 4.7 (shared with Radix); used when the geometry variables exist."""


@dataclass(frozen=True)
class PageTableMapping:
    """A present PTE: the page it maps and where the PTE lives."""

    ea: int
    """The mapped page's effective address (page aligned)."""
    pa: int
    """The mapped page's physical address (page aligned)."""
    page_size: int
    pte: int
    pte_address: int
    """Physical address of the PTE."""
    hash_hint: tuple[bool, int] | None
    """``(secondary, index in group)`` the PTE records for its HPTE, if it has one."""


def _read_entry(read: ReadFn, fmt: PteFormat, pa: int) -> int:
    raw = read(pa, 8)
    if len(raw) != 8:
        raise PageTableError(f"short read of 8 bytes at physical {pa:#x}")
    return fmt.unpack(raw)


def walk_page_tables(
    ea: int, pgd_pa: int, geometry: Geometry, fmt: PteFormat, read: ReadFn
) -> PageTableMapping | None:
    """The present PTE that maps ``ea`` under the top-level table at physical ``pgd_pa``, or None.

    Raises :class:`PageTableError` for an entry that points outside the linear
    map (and whatever ``read`` raises for memory it cannot read).
    """
    i_pgd, i_pud, i_pmd, i_pte = geometry.indexes(ea)
    table = pgd_pa
    levels = [i_pgd]
    if geometry.pud_index_size:
        levels.append(i_pud)
    levels.append(i_pmd)
    for index in levels:
        entry = _read_entry(read, fmt, table + 8 * index)
        if not entry & fmt.table_mask:
            return None
        table = fmt.table_address(entry)
    pte_address = table + 8 * i_pte
    pte = _read_entry(read, fmt, pte_address)
    if pte & fmt.present != fmt.present:
        return None
    page = ea & ~(geometry.page_size - 1) & _U64
    return PageTableMapping(
        page,
        fmt.page_address(pte, geometry.page_shift),
        geometry.page_size,
        pte,
        pte_address,
        fmt.hash_hint(pte),
    )


def iter_page_tables(
    pgd_pa: int, geometry: Geometry, fmt: PteFormat, read: ReadFn, start: int, end: int
) -> Iterator[PageTableMapping]:
    """Every present PTE mapping a page in ``[start, end)``, in address order.

    Reads each table once as a whole, so it is cheap to scan the whole kernel
    range. Bad entries raise :class:`PageTableError`.
    """
    g = geometry
    levels: list[tuple[int, int]] = [(g.pgdir_shift, g.pgd_index_size)]
    if g.pud_index_size:
        levels.append((g.pud_shift, g.pud_index_size))
    levels.append((g.pmd_shift, g.pmd_index_size))
    levels.append((g.page_shift, g.pte_index_size))
    # Upper bits above the PGD index are implied by the range being scanned.
    top = start & ~((1 << (g.pgdir_shift + g.pgd_index_size)) - 1) & _U64
    fmt_char = ">Q" if fmt.byteorder == "big" else "<Q"

    def visit(table: int, level: int, base: int) -> Iterator[PageTableMapping]:
        shift, bits = levels[level]
        n = 1 << bits
        raw = read(table, 8 * n)
        if len(raw) != 8 * n:
            raise PageTableError(f"short read of a {8 * n}-byte table at physical {table:#x}")
        span = 1 << shift
        for index, (entry,) in enumerate(struct.iter_unpack(fmt_char, raw)):
            lo = base + index * span
            if lo + span <= start or lo >= end:
                continue
            if level == len(levels) - 1:
                if entry and entry & fmt.present == fmt.present:
                    yield PageTableMapping(
                        lo,
                        fmt.page_address(entry, g.page_shift),
                        g.page_size,
                        entry,
                        table + 8 * index,
                        fmt.hash_hint(entry),
                    )
            elif entry & fmt.table_mask:
                yield from visit(fmt.table_address(entry), level + 1, lo)

    yield from visit(pgd_pa, 0, top)


def hpte_page_shift(
    hpte: Hpte, encodings: Mapping[int, int] = POWER6_LARGE_PAGE_ENCODINGS
) -> int | None:
    """The page size (as a shift) an entry maps: 12 without L, else by its LP encoding.

    For a large page the LP bits below the page size (at most 8) hold
    ``penc``; None if no known encoding matches.
    """
    if not hpte.large:
        return 12
    for shift, penc in sorted(encodings.items()):
        bits = min(shift - 12, 8)
        if hpte.lp & ((1 << bits) - 1) == penc:
            return shift
    return None


@dataclass(frozen=True)
class HpteMatch:
    """A valid saved HPTE mapping an effective address."""

    slot: int
    """Index of the entry in the table (group * 8 + index)."""
    hpte: Hpte
    page_shift: int
    ea: int
    """The effective address of the mapped page (page aligned)."""
    pa: int
    """The physical address of the mapped page (page aligned)."""

    @property
    def page_size(self) -> int:
        return 1 << self.page_shift

    @property
    def group(self) -> int:
        return self.slot // HPTES_PER_GROUP

    @property
    def secondary(self) -> bool:
        return self.hpte.secondary

    @property
    def bolted(self) -> bool:
        return self.hpte.bolted

    def describe(self) -> str:
        kind = "secondary" if self.secondary else "primary"
        flags = " bolted" if self.bolted else ""
        return (
            f"slot {self.slot} (group {self.group:#x} {kind}, index {self.slot % HPTES_PER_GROUP}){flags}: "
            f"{self.ea:#018x} -> {self.pa:#x} ({self.page_size >> 10} KiB), "
            f"v={self.hpte.v:#018x} r={self.hpte.r:#018x}"
        )


class SavedHpt:
    """Index of the hashed page table the hypervisor saved (the dump's HPTE section).

    ``table`` is the raw, big-endian image of the table; its size must be a
    power-of-two number of 128-byte groups, as the hypervisor saves it. Only
    256 MiB-segment kernel addresses are decoded (2.6-era kernel VSIDs).
    """

    def __init__(
        self,
        table: bytes | bytearray | memoryview,
        encodings: Mapping[int, int] = POWER6_LARGE_PAGE_ENCODINGS,
    ) -> None:
        self._table = bytes(table)
        self.mask = htab_hash_mask(len(self._table))
        self.encodings = dict(encodings)
        self._shifts = (12, *sorted(self.encodings))

    @property
    def size(self) -> int:
        return len(self._table)

    def entry(self, slot: int) -> Hpte:
        return HPTE_LAYOUT.unpack_from(self._table, slot * HPTE_SIZE, "big")

    def _match(self, slot: int, ea: int, shift: int, secondary: bool) -> HpteMatch | None:
        e = self.entry(slot)
        if not e.valid or e.secondary != secondary or e.ssize != SSIZE_256M:
            return None
        if hpte_page_shift(e, self.encodings) != shift:
            return None
        avpnm = (1 << (shift - 23)) - 1 if shift > 23 else 0
        if (e.avpn & ~avpnm) != ((va_of(ea) >> 23) & ~avpnm):
            return None
        page = ea & ~((1 << shift) - 1)
        return HpteMatch(slot, e, shift, page, e.real_address(shift))

    def lookup(self, ea: int) -> list[HpteMatch]:
        """Every valid entry mapping ``ea``: each page size, primary then secondary group."""
        ea &= _U64
        out: list[HpteMatch] = []
        vsid = kernel_vsid(ea)
        for shift in self._shifts:
            h = hpte_hash(vsid, ea, shift, SSIZE_256M)
            for secondary in (False, True):
                group = hpte_group(h, self.mask, secondary)
                for i in range(HPTES_PER_GROUP):
                    match = self._match(group * HPTES_PER_GROUP + i, ea, shift, secondary)
                    if match is not None:
                        out.append(match)
        return out

    def valid_entries(self) -> Iterator[tuple[int, Hpte]]:
        """``(slot, entry)`` of every valid entry, in slot order."""
        table = self._table
        v_at = struct.Struct(">Q").unpack_from
        for off in range(0, len(table), HPTE_SIZE):
            (v,) = v_at(table, off)
            if v & HPTE_V_VALID:
                yield off // HPTE_SIZE, HPTE_LAYOUT.unpack_from(table, off, "big")

    def kernel_mappings(self, start: int, end: int) -> Iterator[HpteMatch]:
        """Valid entries whose (decoded) effective address lies in ``[start, end)``."""
        for slot, e in self.valid_entries():
            if e.ssize != SSIZE_256M:
                continue
            shift = hpte_page_shift(e, self.encodings)
            if shift is None:
                continue
            ea = decode_ea(e, slot, self.mask, shift)
            if start <= ea < end:
                yield HpteMatch(slot, e, shift, ea, e.real_address(shift))


@dataclass(frozen=True)
class Translation:
    """Where an effective address leads, and how the two sources saw it."""

    ea: int
    pa: int | None
    """Physical address of ``ea`` itself (page plus offset), or None if unmapped."""
    page_size: int | None
    source: Source
    """``"page tables"``, ``"hpt"`` (page tables do not map it; a saved HPTE does),
    ``"linear map"`` (``pa = ea - KERNELBASE``) or ``"none"``."""
    pte: PageTableMapping | None
    hptes: tuple[HpteMatch, ...]
    disagreement: str | None
    """Why the sources disagree, or None if they agree (or only one was consulted)."""
    error: str | None = None
    """Why the page tables could not be walked, if they could not."""

    @property
    def mapped(self) -> bool:
        return self.pa is not None

    def describe(self) -> str:
        if self.pa is None:
            head = f"{self.ea:#018x}: not mapped"
        else:
            size = f"{self.page_size >> 10} KiB page, " if self.page_size else ""
            head = f"{self.ea:#018x} -> {self.pa:#x} ({size}from {self.source})"
        lines = [head]
        if self.pte is not None:
            lines.append(f"  PTE {self.pte.pte:#018x} at physical {self.pte.pte_address:#x}")
        lines.extend(f"  HPTE {m.describe()}" for m in self.hptes)
        if self.error:
            lines.append(f"  page tables: {self.error}")
        if self.disagreement:
            lines.append(f"  DISAGREEMENT: {self.disagreement}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Disagreement:
    """A page the two sources do not agree on."""

    ea: int
    page_size: int
    page_table_pa: int | None
    """Where the page tables map the page (None: not mapped)."""
    hpt_pa: int | None
    """Where a saved HPTE maps it (None: no entry)."""
    slots: tuple[int, ...]
    """Slots of the HPTEs involved."""
    kind: Literal["hpt only", "page tables only", "different pages"]

    def describe(self) -> str:
        if self.kind == "hpt only":
            return (
                f"{self.ea:#018x}: HPTE slot {','.join(map(str, self.slots))} maps it to "
                f"{self.hpt_pa:#x} but the page tables do not map it (stale hash entry?)"
            )
        if self.kind == "page tables only":
            return (
                f"{self.ea:#018x}: the page tables map it to {self.page_table_pa:#x} "
                "but no HPTE does (never faulted in, or evicted)"
            )
        return (
            f"{self.ea:#018x}: the page tables map it to {self.page_table_pa:#x}, HPTE slot "
            f"{','.join(map(str, self.slots))} to {self.hpt_pa:#x}"
        )


@dataclass(eq=False)
class HashMmu:
    """Translation of a hash kernel's addresses from its page tables and a saved hash table.

    ``read(pa, size)`` reads physical memory; ``pgd_pa`` is the physical
    address of ``swapper_pg_dir``; ``hpt`` the saved table, or None to use
    the page tables alone.
    """

    geometry: Geometry
    format: PteFormat
    pgd_pa: int
    read: ReadFn
    hpt: SavedHpt | None = None

    def hpte_entries(self, ea: int) -> list[HpteMatch]:
        """Saved HPTEs mapping ``ea`` (empty without a saved table)."""
        return [] if self.hpt is None else self.hpt.lookup(ea)

    def translate(self, ea: int) -> Translation:
        """Translate ``ea``: page tables first, then the saved hash table; note any disagreement."""
        ea &= _U64
        g = self.geometry
        hptes = tuple(self.hpte_entries(ea))
        if KERNEL_BASE <= ea < g.vmalloc_start:
            # The linear map is not in the page tables: pa = ea - KERNELBASE.
            return Translation(ea, ea - KERNEL_BASE, None, "linear map", None, hptes, None)
        pte: PageTableMapping | None = None
        error: str | None = None
        if g.contains(ea):
            try:
                pte = walk_page_tables(ea, self.pgd_pa, g, self.format, self.read)
            except PageTableError as e:
                error = str(e)
        offset_pt = ea & (g.page_size - 1)
        disagreement = None
        if pte is not None:
            others = [m for m in hptes if m.pa + (ea - m.ea) != pte.pa + offset_pt]
            if others:
                disagreement = "; ".join(
                    f"HPTE slot {m.slot} maps it to {m.pa + (ea - m.ea):#x}, "
                    f"the page tables to {pte.pa + offset_pt:#x}"
                    for m in others
                )
            elif self.hpt is not None and not hptes:
                disagreement = (
                    "the page tables map it but no saved HPTE does (never faulted in, or evicted)"
                )
            return Translation(
                ea, pte.pa + offset_pt, g.page_size, "page tables", pte, hptes, disagreement, error
            )
        if hptes:
            best = hptes[0]
            pas = {m.pa + (ea - m.ea) for m in hptes}
            disagreement = (
                f"saved HPTE slot {best.slot} maps it but the page tables do not (stale hash entry?)"
                if g.contains(ea)
                else None
            )
            if len(pas) > 1:
                text = f"saved HPTEs disagree with each other: slots {[m.slot for m in hptes]}"
                disagreement = f"{disagreement}; {text}" if disagreement else text
            return Translation(
                ea,
                best.pa + (ea - best.ea),
                best.page_size,
                "hpt",
                None,
                hptes,
                disagreement,
                error,
            )
        return Translation(ea, None, None, "none", None, hptes, None, error)

    def page_table_mappings(self) -> Iterator[PageTableMapping]:
        """Every present PTE of the kernel range."""
        g = self.geometry
        return iter_page_tables(self.pgd_pa, g, self.format, self.read, g.vmalloc_start, g.io_end)

    def disagreements(self) -> list[Disagreement]:
        """Pages of the kernel range that the page tables and the saved table see differently.

        Scans every valid HPTE whose effective address is in the range, and
        every present PTE; empty without a saved table.
        """
        if self.hpt is None:
            return []
        g = self.geometry
        ptes = {m.ea: m for m in self.page_table_mappings()}
        by_page: dict[int, list[HpteMatch]] = {}
        for m in self.hpt.kernel_mappings(g.vmalloc_start, g.io_end):
            by_page.setdefault(m.ea & ~(g.page_size - 1), []).append(m)
        out: list[Disagreement] = []
        for ea in sorted(set(ptes) | set(by_page)):
            pte = ptes.get(ea)
            matches = by_page.get(ea, [])
            if pte is None:
                for m in matches:
                    out.append(Disagreement(ea, g.page_size, None, m.pa, (m.slot,), "hpt only"))
            elif not matches:
                out.append(Disagreement(ea, g.page_size, pte.pa, None, (), "page tables only"))
            else:
                for m in matches:
                    if m.pa + (ea - m.ea) != pte.pa:
                        out.append(
                            Disagreement(
                                ea, g.page_size, pte.pa, m.pa, (m.slot,), "different pages"
                            )
                        )
        return out

"""Where each page's ``struct page`` is: the crashed kernel's SPARSEMEM model, from VMCOREINFO.

ppc64 kernels use SPARSEMEM: memory is cut into sections of
``2**SECTION_SIZE_BITS`` bytes, and ``mem_section`` (``SYMBOL(mem_section)``)
holds, per present section, ``section_mem_map``: the section's ``struct
page`` array, encoded as the array's address minus the section's first PFN
times ``SIZE(page)``, with flag bits below bit 5. With SPARSEMEM_EXTREME
(every 64-bit ppc64 kernel) ``mem_section`` is an array of pointers to roots
of ``PAGE_SIZE / SIZE(mem_section)`` sections; since 4.15 the symbol is a
pointer to that array, before it was the array (the newer layout is tried
first).

The arrays live in the *vmemmap* region (``0xf000...`` on 2.6, ``0xc00c...``
later), which is not part of the linear map. On hash-MMU kernels
``vmemmap_list`` (exported with its ``vmemmap_backing`` offsets and the
vmemmap page size) maps each vmemmap block to its physical address, as
makedumpfile reads it; radix-MMU kernels leave that list empty and map the
vmemmap only in their page tables, which are walked from ``swapper_pg_dir``
(as makedumpfile does then); addresses inside the linear map translate
directly.

:func:`exclusions` drives :func:`drgn_hvdump.model.page_types.decide_pages`
over the dump's pages and returns what a dump level leaves out.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from drgn_hvdump.errors import HvdumpError
from drgn_hvdump.intervals import IntervalSet
from drgn_hvdump.model.page_types import (
    EXCLUDED_TYPES,
    StructPage,
    decide_pages,
    struct_page_from_vmcoreinfo,
)

__all__ = [
    "PAGE_OFFSET",
    "Exclusions",
    "MemMapRun",
    "MemoryModel",
    "MemoryModelError",
    "exclusions",
]

PAGE_OFFSET = 0xC000_0000_0000_0000
_LINEAR_END = 0xC008_0000_0000_0000
_SECTION_MARKED_PRESENT = 1 << 0
_SECTION_HAS_MEM_MAP = 1 << 1
_SECTION_MAP_MASK = ~((1 << 5) - 1) & ((1 << 64) - 1)
_MASK64 = (1 << 64) - 1
_MAX_VMEMMAP_BLOCKS = 1 << 24
# Book3S-64 page-table entries (Linux 4.7+, radix and hash alike).
_HEX = re.compile(r"[0-9a-fA-F]+")
_PTE_PRESENT = 1 << 63
_PTE_LEAF = 1 << 62  # _PAGE_PTE
_TABLE_MASK = 0x00FF_FFFF_FFFF_FF00  # a directory entry without its flag and size bits
_RPN_MASK = 0x01FF_FFFF_FFFF_F000

ReadFn = Callable[[int, int], bytes]
"""Read ``size`` bytes of the crashed kernel's physical memory at an address."""


class MemoryModelError(HvdumpError):
    """VMCOREINFO or the memory it points at does not describe a usable memory model."""


@dataclass(frozen=True)
class MemMapRun:
    """``count`` pages from ``pfn`` whose ``struct page`` entries are contiguous at ``paddr``."""

    pfn: int
    count: int
    paddr: int


def _int(info: Mapping[str, str], key: str, base: int = 10) -> int:
    try:
        return int(info[key], base)
    except (KeyError, ValueError):
        raise MemoryModelError(f"VMCOREINFO: {key} is missing or not a number") from None


@dataclass
class MemoryModel:
    """The SPARSEMEM model of a crashed kernel, read through ``read``."""

    info: Mapping[str, str]
    byteorder: Literal["big", "little"]
    read: ReadFn
    page_size: int
    struct_page: StructPage = field(init=False)
    _blocks: list[tuple[int, int]] = field(default_factory=list, init=False)
    _section_map: dict[int, int] | None = field(default=None, init=False)
    _block_size: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        sp = struct_page_from_vmcoreinfo(self.info, self.byteorder)
        if sp is None:
            raise MemoryModelError(
                "VMCOREINFO has no SIZE(page), OFFSET(page.flags), OFFSET(page.mapping) "
                "or OFFSET(page._refcount): the kernel's struct page is unknown"
            )
        self.struct_page = sp
        self._load_vmemmap_list()

    # ------------------------------------------------------------ reading

    def _u(self, data: bytes, offset: int, size: int = 8) -> int:
        return int.from_bytes(data[offset : offset + size], self.byteorder)

    def _linear(self, vaddr: int, what: str) -> int:
        if not PAGE_OFFSET <= vaddr < _LINEAR_END:
            raise MemoryModelError(
                f"{what} at {vaddr:#x} is not in the kernel's linear map "
                f"({PAGE_OFFSET:#x}-{_LINEAR_END:#x})"
            )
        return vaddr - PAGE_OFFSET

    def _read_linear(self, vaddr: int, size: int, what: str) -> bytes:
        return self.read(self._linear(vaddr, what), size)

    # ----------------------------------------------------------- vmemmap

    def _load_vmemmap_list(self) -> None:
        info = self.info
        head = info.get("SYMBOL(vmemmap_list)")
        if head is None:
            return
        psize_sym = _int(info, "SYMBOL(mmu_vmemmap_psize)", 16)
        defs = _int(info, "SYMBOL(mmu_psize_defs)", 16)
        def_size = _int(info, "SIZE(mmu_psize_def)")
        shift_off = _int(info, "OFFSET(mmu_psize_def.shift)")
        psize = self._u(self._read_linear(psize_sym, 4, "mmu_vmemmap_psize"), 0, 4)
        shift = self._u(
            self._read_linear(defs + psize * def_size + shift_off, 4, "mmu_psize_defs"), 0, 4
        )
        if not 12 <= shift <= 40:
            raise MemoryModelError(
                f"mmu_psize_defs[{psize}].shift is {shift}: not a vmemmap page size"
            )
        off_next = _int(info, "OFFSET(vmemmap_backing.list)")
        off_phys = _int(info, "OFFSET(vmemmap_backing.phys)")
        off_virt = _int(info, "OFFSET(vmemmap_backing.virt_addr)")
        span = max(off_next, off_phys, off_virt) + 8
        node = self._u(self._read_linear(int(head, 16), 8, "vmemmap_list"), 0)
        blocks: dict[int, int] = {}
        while node:
            if len(blocks) >= _MAX_VMEMMAP_BLOCKS:
                raise MemoryModelError("vmemmap_list does not end (a loop?)")
            raw = self._read_linear(node, span, "a vmemmap_backing")
            blocks.setdefault(self._u(raw, off_virt), self._u(raw, off_phys))
            node = self._u(raw, off_next)
        self._blocks = sorted(blocks.items())
        self._block_size = 1 << shift

    def vtop(self, vaddr: int) -> int:
        """The physical address of a ``struct page`` at ``vaddr``."""
        return self._piece(vaddr)[0]

    def _piece(self, vaddr: int) -> tuple[int, int]:
        """(physical address of ``vaddr``, where its physically contiguous piece ends
        virtually): a ``vmemmap_list`` block, a page-table leaf, or the linear map.

        The vmemmap is looked up first: on a 4 KiB-page hash kernel it starts
        inside what is the linear map elsewhere (6.12: ``0xc0003f...``), and
        ``SYMBOL(vmemmap)`` (5.x+) says where it starts."""
        i = bisect.bisect_right(self._blocks, (vaddr, _MASK64)) - 1
        if i >= 0:
            virt, phys = self._blocks[i]
            if vaddr < virt + self._block_size:
                return phys + vaddr - virt, virt + self._block_size
        vmemmap = self.info.get("SYMBOL(vmemmap)")
        start = int(vmemmap, 16) if vmemmap and _HEX.fullmatch(vmemmap) else _LINEAR_END
        if PAGE_OFFSET <= vaddr < min(start, _LINEAR_END):
            return vaddr - PAGE_OFFSET, min(start, _LINEAR_END)
        if self._blocks:
            raise MemoryModelError(f"struct page at {vaddr:#x} is in no vmemmap_list block")
        if self.info.get("NUMBER(RADIX_MMU)", "1") != "1":
            raise MemoryModelError(
                f"struct page at {vaddr:#x} is in the vmemmap region, and this hash-MMU "
                "kernel's VMCOREINFO has no vmemmap_list entries"
            )
        return self._radix_walk(vaddr)

    def _radix_walk(self, vaddr: int) -> tuple[int, int]:
        """Translate through the kernel's radix page tables (``swapper_pg_dir``):
        a radix-MMU kernel (4.7+) maps its vmemmap only there, with no
        ``vmemmap_list``. Entries are big-endian whatever the kernel's byte order;
        a directory entry holds the next table's address under its flag bits, a
        leaf (``_PAGE_PTE``) may be a 1 GiB or 2 MiB page."""
        pgd = _int(self.info, "SYMBOL(swapper_pg_dir)", 16)
        table = self._linear(pgd, "swapper_pg_dir")
        page_shift = self.page_size.bit_length() - 1
        levels = ((39, 13), (30, 9), (21, 9), (page_shift, 21 - page_shift))
        for shift, bits in levels:
            index = (vaddr >> shift) & ((1 << bits) - 1)
            entry = int.from_bytes(self.read(table + 8 * index, 8), "big")
            if not entry & _PTE_PRESENT:
                raise MemoryModelError(
                    f"struct page at {vaddr:#x} is not mapped in the kernel's page tables "
                    f"(entry {entry:#x} at {table + 8 * index:#x})"
                )
            if entry & _PTE_LEAF or shift == page_shift:
                size = 1 << shift
                base = entry & _RPN_MASK & ~(size - 1)
                return base + (vaddr & (size - 1)), vaddr - (vaddr & (size - 1)) + size
            table = entry & _TABLE_MASK
        raise AssertionError("unreachable: the last level is a leaf")

    # ---------------------------------------------------------- sections

    def sections(self) -> Iterator[tuple[int, int]]:
        """``(section number, encoded mem_map)`` of each present section with a mem_map."""
        info = self.info
        sym = _int(info, "SYMBOL(mem_section)", 16)
        size = _int(info, "SIZE(mem_section)")
        off = _int(info, "OFFSET(mem_section.section_mem_map)")
        section_bits = _int(info, "NUMBER(SECTION_SIZE_BITS)")
        physmem_bits = _int(info, "NUMBER(MAX_PHYSMEM_BITS)")
        if not 0 < section_bits < physmem_bits <= 64 or size <= 0:
            raise MemoryModelError(
                f"VMCOREINFO: SECTION_SIZE_BITS {section_bits}, MAX_PHYSMEM_BITS "
                f"{physmem_bits}, SIZE(mem_section) {size} are inconsistent"
            )
        nr_sections = 1 << (physmem_bits - section_bits)
        per_root = max(1, self.page_size // size)
        nr_roots = -(-nr_sections // per_root)
        length = info.get("LENGTH(mem_section)")
        if length is not None and length.isdigit() and int(length) == nr_sections:
            # Not SPARSEMEM_EXTREME: one static array of every section.
            yield from self._root_sections(
                self._read_linear(sym, nr_sections * size, "mem_section"), 0, size, off
            )
            return
        roots = self._roots(sym, nr_roots, per_root, size, off)
        for r, root in enumerate(roots):
            if not root:
                continue
            raw = self._read_linear(root, per_root * size, f"mem_section root {r}")
            yield from self._root_sections(raw, r * per_root, size, off)

    def _roots(self, sym: int, nr_roots: int, per_root: int, size: int, off: int) -> list[int]:
        # 4.15 and later: the symbol is a pointer to the roots.
        pointer = self._u(self._read_linear(sym, 8, "mem_section"), 0)
        if PAGE_OFFSET <= pointer < _LINEAR_END:
            try:
                roots = self._root_list(pointer, nr_roots)
                if self._plausible(roots, per_root, size, off):
                    return roots
            except (HvdumpError, OSError):
                pass
        roots = self._root_list(sym, nr_roots)
        if not self._plausible(roots, per_root, size, off):
            raise MemoryModelError(
                f"mem_section at {sym:#x}: neither it nor what it points at is an array of "
                "section roots with a present section"
            )
        return roots

    def _root_list(self, vaddr: int, nr_roots: int) -> list[int]:
        raw = self._read_linear(vaddr, nr_roots * 8, "mem_section roots")
        return [self._u(raw, 8 * i) for i in range(nr_roots)]

    def _plausible(self, roots: list[int], per_root: int, size: int, off: int) -> bool:
        first = next((r for r in roots if r), 0)
        if not PAGE_OFFSET <= first < _LINEAR_END:
            return False
        if any(r and not PAGE_OFFSET <= r < _LINEAR_END for r in roots):
            return False
        raw = self._read_linear(first, per_root * size, "mem_section root")
        return any(self._u(raw, i * size + off) & _SECTION_MARKED_PRESENT for i in range(per_root))

    def _root_sections(
        self, raw: bytes, first: int, size: int, off: int
    ) -> Iterator[tuple[int, int]]:
        for i in range(len(raw) // size):
            value = self._u(raw, i * size + off)
            if value & _SECTION_MARKED_PRESENT and value & _SECTION_HAS_MEM_MAP:
                yield first + i, value & _SECTION_MAP_MASK

    def _section_shift(self) -> int:
        """log2 of the pages in a section."""
        shift = _int(self.info, "NUMBER(SECTION_SIZE_BITS)") - (self.page_size.bit_length() - 1)
        if shift < 0:
            raise MemoryModelError("VMCOREINFO: SECTION_SIZE_BITS is smaller than a page")
        return shift

    def _sections(self) -> dict[int, int]:
        if self._section_map is None:
            self._section_map = dict(self.sections())
        return self._section_map

    def end_pfn(self) -> int:
        """The end of the last section with a ``struct page`` array: the kernel used no
        memory above it (``mem=``, or RAM it was never given). makedumpfile's
        ``max_mapnr`` stops there."""
        sections = self._sections()
        return (max(sections) + 1) << self._section_shift() if sections else 0

    def runs(self, pfn_ranges: Iterable[tuple[int, int]]) -> Iterator[MemMapRun]:
        """The ``struct page`` runs covering ``pfn_ranges`` (ascending), in PFN order;
        pages of no present section are left out (makedumpfile keeps them)."""
        shift = self._section_shift()
        sections = self._sections()
        spsize = self.struct_page.size
        for start, end in pfn_ranges:
            pfn = start
            while pfn < end:
                nr = pfn >> shift
                sec_end = min(end, (nr + 1) << shift)
                coded = sections.get(nr)
                if coded is None:
                    pfn = sec_end
                    continue
                while pfn < sec_end:
                    vaddr = (coded + pfn * spsize) & _MASK64
                    paddr, piece_end = self._piece(vaddr)
                    room = (piece_end - vaddr) // spsize
                    count = max(1, min(sec_end - pfn, room))
                    yield MemMapRun(pfn, count, paddr)
                    pfn += count


@dataclass
class Exclusions:
    """What a dump level leaves out: PFN ranges, and pages per type."""

    level: int
    pfns: IntervalSet = field(default_factory=IntervalSet)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EXCLUDED_TYPES, 0))

    def byte_ranges(self, page_size: int) -> IntervalSet:
        return IntervalSet((a * page_size, b * page_size) for a, b in self.pfns)


_RUN_PAGES = 1 << 14


Decide = Callable[[StructPage, memoryview, int, int, int], Iterable[tuple[int, int, str]]]
""":func:`~drgn_hvdump.model.page_types.decide_pages`, or its C twin."""


def exclusions(
    model: MemoryModel,
    level: int,
    pfn_ranges: Iterable[tuple[int, int]],
    progress: Callable[[int], None] | None = None,
    decide: Decide = decide_pages,
) -> Exclusions:
    """The pages of ``pfn_ranges`` (the dump's, ascending) that ``level`` leaves out.

    A decision covering several pages (a free block, a compound page) is clipped
    to the dump's ranges. ``progress`` is told how many pages were decided.
    """
    ranges = IntervalSet(pfn_ranges)
    out = Exclusions(level)
    sp = model.struct_page
    # Above the last section with struct pages the kernel had no memory: left out
    # whole, as makedumpfile's max_mapnr leaves it out.
    end = model.end_pfn()
    unused = ranges.intersect(end, max((b for _, b in ranges), default=end))
    for a, b in unused:
        ranges.remove(a, b)
    pieces: list[tuple[int, int]] = []
    counts = out.counts
    # The next run must start past a block the previous one excluded.
    skip_to = 0
    for run in model.runs(ranges):
        for first in range(run.pfn, run.pfn + run.count, _RUN_PAGES):
            count = min(_RUN_PAGES, run.pfn + run.count - first)
            if first + count <= skip_to:
                continue
            # One page more, so a compound head at the end sees its first tail.
            extra = 1 if first + count < run.pfn + run.count else 0
            raw = model.read(run.paddr + (first - run.pfn) * sp.size, (count + extra) * sp.size)
            start = max(first, skip_to)
            lo = start - first
            view = memoryview(raw)[lo * sp.size :]
            for a, b, kind in decide(sp, view, start, count - lo + extra, level):
                if a >= first + count:
                    break
                skip_to = max(skip_to, b)
                if ranges.contains(a, b):  # most decisions: no clipping
                    pieces.append((a, b))
                    counts[kind] += b - a
                    continue
                for x, y in ranges.intersect(a, b):
                    pieces.append((x, y))
                    counts[kind] += y - x
            if progress is not None:
                progress(count)
    pieces.extend(unused)
    out.counts["unused"] += sum(b - a for a, b in unused)
    out.pfns = IntervalSet.from_sorted(pieces)
    return out

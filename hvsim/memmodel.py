"""The crashed kernel's memory model: ``mem_section``, the vmemmap and a ``struct page`` per page.

Dump levels (``makedumpfile -d``) decide from each page's ``struct page``
whether it is page cache, user data or free, so hvsim's kernels keep one for
every page of RAM, in the layout of Linux 6.12 on ppc64 (64 bytes: ``flags``
at 0, ``compound_head``/``lru`` at 8, ``mapping`` at 24, ``private`` at 40,
``_mapcount``/``page_type`` at 48, ``_refcount`` at 52), and describe them in
VMCOREINFO as that kernel does (:func:`vmcoreinfo_entries`).

Where things are (:class:`MemModel`):

- the ``struct page`` array (``mem_map``) at the top of the memory the
  crashed kernel owns (below the phyp scratch area; the top of RAM for
  fadump), 16 MiB aligned, mapped at ``VMEMMAP_BASE`` (2.6's hash-MMU
  vmemmap) in 16 MiB blocks that ``vmemmap_list`` records;
- below it, one *metadata* area: the ``mem_section`` pointer, the
  ``vmemmap_list`` head, ``mmu_vmemmap_psize``, ``mmu_psize_defs``, the
  ``vmemmap_backing`` nodes, the section roots (SPARSEMEM_EXTREME) and the
  sections.

What each page is (:func:`page_type_of`): memory is cut into groups of 16
pages, each of one type drawn from the LPAR's seed (:data:`TYPE_MIX`) unless
it touches reserved memory (then kernel): kernel
(``PG_reserved``), slab (``page_type`` slab, ``mapping`` odd, as a slab's
overlaid fields can be), page cache (LRU, file mapping), page cache with
private data, anonymous user pages (a quarter of them one 16-page THP) and
free pages (one order-4 buddy block). The low 256 MiB (the kernel's own
image and data; for fadump up to the end of its reserved area), the model's
own pages and the phyp scratch area above them are kernel pages. The struct pages
are generated when read (layer kind ``memmap``), so RAM of any size costs
nothing to store. :func:`expected_exclusions` is the ground truth of what a
dump level leaves out, decided from the types, not from the struct pages.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Literal

from drgn_hvdump.intervals import IntervalSet
from drgn_hvdump.model.page_types import (
    DL_CACHE,
    DL_CACHE_PRIVATE,
    DL_FREE,
    DL_USER,
    PageFields,
    StructPage,
)

__all__ = [
    "GROUP_PAGES",
    "TYPE_MIX",
    "VMEMMAP_BASE",
    "MemModel",
    "expected_exclusions",
    "memmap_into",
    "page_type_of",
    "vmcoreinfo_entries",
]

VMEMMAP_BASE = 0xF000_0000_0000_0000
VMALLOC_START = 0xD000_0000_0000_0000
PAGE_OFFSET = 0xC000_0000_0000_0000
GROUP_PAGES = 16
_GROUP_ORDER = 4
_BLOCK = 16 << 20
_SECTION_BITS = 24
_PHYSMEM_BITS = 46
_SECTION_SIZE = 32
_MMU_PAGE_16M = 10
_PSIZE_DEF_SIZE = 48
_NODE_SIZE = 24
_MASK64 = (1 << 64) - 1

# Linux 6.12's numbers (ppc64, from its DWARF): PG_* bits and page_type values.
PG_LRU = 5
PG_HEAD = 6
PG_SWAPCACHE = 10
PG_RESERVED = 13
PG_PRIVATE = 14
PG_SWAPBACKED = 17
PG_HWPOISON = 20
PG_UPTODATE = 3
PG_REFERENCED = 2


def _page_type_value(pgty: int) -> int:
    # VMCOREINFO prints (PGTY_x << 24) as a signed long: the int has overflowed.
    v = pgty << 24
    return v - (1 << 32) if v & 0x8000_0000 else v


BUDDY = _page_type_value(0xF0)
OFFLINE = _page_type_value(0xF1)
HUGETLB = _page_type_value(0xF4)
SLAB = _page_type_value(0xF5)

TYPE_MIX: tuple[tuple[str, int], ...] = (
    ("kernel", 1000),
    ("slab", 800),
    ("cache", 3000),
    ("cache_private", 400),
    ("user", 2100),
    ("user_thp", 700),
    ("free", 2000),
)
"""Group types and their weights (out of 10000): a busy machine."""

_EXCLUDED_BY = {
    "cache": DL_CACHE | DL_CACHE_PRIVATE,
    "cache_private": DL_CACHE_PRIVATE,
    "user": DL_USER,
    "user_thp": DL_USER,
    "free": DL_FREE,
}
_COUNTED_AS = {"user_thp": "user"}


def _mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _draw_type(seed: int, group: int) -> str:
    r = _mix64((seed ^ (group * 0x9E3779B97F4A7C15)) & _MASK64) % 10000
    for name, weight in TYPE_MIX:
        if r < weight:
            return name
        r -= weight
    return TYPE_MIX[-1][0]


@dataclass(frozen=True)
class MemModel:
    """Where the model's pieces are for an LPAR of ``memory`` bytes (see the module doc)."""

    memory: int
    page_size: int
    big_endian: bool
    seed: int
    top: int
    """The end of the memory the crashed kernel owns."""
    low: int = 256 << 20
    """Everything below is the kernel's (its image and data; for fadump also the
    reserved area above boot memory, which the buddy allocator never had)."""

    @property
    def npages(self) -> int:
        return self.memory // self.page_size

    @property
    def memmap_size(self) -> int:
        return -(-self.npages * 64 // _BLOCK) * _BLOCK

    @property
    def base(self) -> int:
        """Physical address of ``mem_map`` (the struct page of PFN 0)."""
        return (self.top - self.memmap_size) // _BLOCK * _BLOCK

    @property
    def per_root(self) -> int:
        return self.page_size // _SECTION_SIZE

    @property
    def nr_sections(self) -> int:
        return -(-self.memory >> _SECTION_BITS) or 1

    @property
    def nr_roots(self) -> int:
        return (1 << (_PHYSMEM_BITS - _SECTION_BITS)) // self.per_root

    @property
    def used_roots(self) -> int:
        return -(-self.nr_sections // self.per_root)

    @property
    def nblocks(self) -> int:
        return self.memmap_size // _BLOCK

    # Metadata offsets.
    _PSIZE_DEFS = 0x100
    _NODES = 0x1000

    @property
    def _roots_offset(self) -> int:
        return _page_up(self._NODES + self.nblocks * _NODE_SIZE, self.page_size)

    @property
    def _sections_offset(self) -> int:
        return _page_up(self._roots_offset + self.nr_roots * 8, self.page_size)

    @property
    def meta_size(self) -> int:
        return self._sections_offset + self.used_roots * self.page_size

    @property
    def meta(self) -> int:
        """Physical address of the metadata area (just below ``mem_map``)."""
        return (self.base - self.meta_size) // self.page_size * self.page_size

    @property
    def fits(self) -> bool:
        """Whether the model fits in the crashed kernel's memory above its low 256 MiB."""
        return self.meta >= self.low and self.base + self.memmap_size <= self.top

    def struct_page(self) -> StructPage:
        from drgn_hvdump.model.page_types import struct_page_from_vmcoreinfo

        info = dict(vmcoreinfo_entries(self))
        sp = struct_page_from_vmcoreinfo(info, "big" if self.big_endian else "little")
        assert sp is not None
        return sp

    # ---------------------------------------------------------------- types

    def group_type(self, group: int) -> str:
        ps = self.page_size
        start, end = group * GROUP_PAGES * ps, (group + 1) * GROUP_PAGES * ps
        # The model's own pages and what lies above them (phyp's scratch area) are
        # reserved memory, as is everything below ``low``.
        if start < self.low or end > self.meta:
            return "kernel"
        return _draw_type(self.seed, group)

    # ------------------------------------------------------------- metadata

    def metadata(self) -> bytes:
        """The metadata area's bytes (at :attr:`meta`)."""
        order: Literal["big", "little"] = "big" if self.big_endian else "little"
        out = bytearray(self.meta_size)

        def put(off: int, value: int, size: int = 8) -> None:
            out[off : off + size] = value.to_bytes(size, order)

        va = PAGE_OFFSET + self.meta
        put(0, va + self._roots_offset)  # mem_section: pointer to the roots
        put(8, va + self._NODES if self.nblocks else 0)  # vmemmap_list
        put(16, _MMU_PAGE_16M, 4)  # mmu_vmemmap_psize
        put(self._PSIZE_DEFS + _MMU_PAGE_16M * _PSIZE_DEF_SIZE, 24, 4)  # .shift
        for k in range(self.nblocks):
            node = self._NODES + k * _NODE_SIZE
            nxt = va + node + _NODE_SIZE if k + 1 < self.nblocks else 0
            put(node, nxt)
            put(node + 8, self.base + k * _BLOCK)
            put(node + 16, VMEMMAP_BASE + k * _BLOCK)
        for r in range(self.used_roots):
            put(self._roots_offset + 8 * r, va + self._sections_offset + r * self.page_size)
        for s in range(self.nr_sections):
            # section_mem_map: vmemmap minus nothing (the encoding subtracts the
            # section's first PFN from an array that starts there), present, has a map.
            put(self._sections_offset + s * _SECTION_SIZE, VMEMMAP_BASE | 0x3)
        return bytes(out)


def _page_up(n: int, ps: int) -> int:
    return -(-n // ps) * ps


def vmcoreinfo_entries(model: MemModel) -> list[tuple[str, str]]:
    """What Linux 6.12 on ppc64 exports about its memory model, for ``model``."""
    va = PAGE_OFFSET + model.meta
    orders = 9 if model.page_size == 65536 else 13
    return [
        ("SYMBOL(mem_section)", f"{va:x}"),
        ("LENGTH(mem_section)", str(model.nr_roots)),
        ("SIZE(mem_section)", str(_SECTION_SIZE)),
        ("OFFSET(mem_section.section_mem_map)", "0"),
        ("NUMBER(SECTION_SIZE_BITS)", str(_SECTION_BITS)),
        ("NUMBER(MAX_PHYSMEM_BITS)", str(_PHYSMEM_BITS)),
        ("SIZE(page)", "64"),
        ("OFFSET(page.flags)", "0"),
        ("OFFSET(page._refcount)", "52"),
        ("OFFSET(page.mapping)", "24"),
        ("OFFSET(page.lru)", "8"),
        ("OFFSET(page._mapcount)", "48"),
        ("OFFSET(page.private)", "40"),
        ("OFFSET(page.compound_head)", "8"),
        ("LENGTH(zone.free_area)", str(orders)),
        ("NUMBER(PG_lru)", str(PG_LRU)),
        ("NUMBER(PG_private)", str(PG_PRIVATE)),
        ("NUMBER(PG_swapcache)", str(PG_SWAPCACHE)),
        ("NUMBER(PG_swapbacked)", str(PG_SWAPBACKED)),
        ("NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)", str(SLAB)),
        ("NUMBER(PG_hwpoison)", str(PG_HWPOISON)),
        ("NUMBER(PG_head_mask)", str(1 << PG_HEAD)),
        ("NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)", str(BUDDY)),
        ("NUMBER(PAGE_HUGETLB_MAPCOUNT_VALUE)", str(HUGETLB)),
        ("NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)", str(OFFLINE)),
        ("SYMBOL(vmemmap_list)", f"{va + 8:x}"),
        ("SYMBOL(mmu_vmemmap_psize)", f"{va + 16:x}"),
        ("SYMBOL(mmu_psize_defs)", f"{va + MemModel._PSIZE_DEFS:x}"),
        ("SIZE(vmemmap_backing)", str(_NODE_SIZE)),
        ("OFFSET(vmemmap_backing.list)", "0"),
        ("OFFSET(vmemmap_backing.phys)", "8"),
        ("OFFSET(vmemmap_backing.virt_addr)", "16"),
        ("SIZE(mmu_psize_def)", str(_PSIZE_DEF_SIZE)),
        ("OFFSET(mmu_psize_def.shift)", "0"),
        # makedumpfile sets up its vmemmap translation only once it knows where
        # vmalloc space starts (2.6.32's hash MMU: region 0xd).
        ("NUMBER(VMALLOC_START)", f"{VMALLOC_START:#x}"),
    ]


# ------------------------------------------------------------------ struct pages

_FILE_MAPPING = PAGE_OFFSET + 0x0200_0000
_ANON_VMA = PAGE_OFFSET + 0x0300_0000
_SLAB_FIELD = PAGE_OFFSET + 0x0400_0001


@cache
def _templates(big_endian: bool) -> dict[str, bytes]:
    """The 16 struct pages of a group of each type (compound tails patched per group)."""
    sp = _layout(big_endian)
    lru = 1 << PG_LRU | 1 << PG_UPTODATE | 1 << PG_REFERENCED
    one = {
        "kernel": PageFields(flags=1 << PG_RESERVED, refcount=1),
        "slab": PageFields(refcount=1, mapping=_SLAB_FIELD, mapcount=SLAB),
        "cache": PageFields(flags=lru, refcount=2, mapping=_FILE_MAPPING),
        "cache_private": PageFields(
            flags=lru | 1 << PG_PRIVATE, refcount=3, mapping=_FILE_MAPPING, private=_ANON_VMA
        ),
        "user": PageFields(
            flags=lru | 1 << PG_SWAPBACKED, refcount=1, mapping=_ANON_VMA | 1, mapcount=0
        ),
    }
    out = {name: sp.pack(f) * GROUP_PAGES for name, f in one.items()}
    free_head = sp.pack(PageFields(mapcount=BUDDY, private=_GROUP_ORDER))
    out["free"] = free_head + sp.pack(PageFields()) * (GROUP_PAGES - 1)
    thp_head = sp.pack(
        PageFields(
            flags=lru | 1 << PG_SWAPBACKED | 1 << PG_HEAD,
            refcount=1,
            mapping=_ANON_VMA | 1,
            mapcount=0,
        )
    )
    # Tails: compound_head set per group; the first tail's low flag byte is the order.
    out["user_thp"] = thp_head + sp.pack(PageFields()) * (GROUP_PAGES - 1)
    return out


@cache
def _layout(big_endian: bool) -> StructPage:
    model = MemModel(1 << 30, 65536, big_endian, 0, 1 << 30)
    return model.struct_page()


def memmap_into(model: MemModel, out: memoryview, offset: int) -> None:
    """Fill ``out`` with the ``mem_map`` bytes at ``offset`` into the array."""
    order: Literal["big", "little"] = "big" if model.big_endian else "little"
    templates = _templates(model.big_endian)
    group_bytes = GROUP_PAGES * 64
    first = offset // group_bytes
    last = -(-(offset + len(out)) // group_bytes)
    pieces: list[bytes] = []
    for g in range(first, last):
        kind = model.group_type(g) if g * GROUP_PAGES < model.npages else "kernel"
        data = templates[kind]
        if kind == "user_thp":
            group = bytearray(data)
            head = (VMEMMAP_BASE + g * group_bytes) | 1
            for i in range(1, GROUP_PAGES):
                group[i * 64 + 8 : i * 64 + 16] = head.to_bytes(8, order)
            flags1 = _GROUP_ORDER.to_bytes(8, order)
            group[64 : 64 + 8] = flags1
            data = bytes(group)
        pieces.append(data)
    blob = b"".join(pieces)
    skip = offset - first * group_bytes
    out[:] = blob[skip : skip + len(out)]


def page_type_of(model: MemModel, pfn: int) -> str:
    """The type of page ``pfn`` (``user_thp`` pages are user pages)."""
    kind = model.group_type(pfn // GROUP_PAGES)
    return _COUNTED_AS.get(kind, kind)


def expected_exclusions(
    model: MemModel, level: int, ranges: IntervalSet
) -> Iterator[tuple[int, int, str]]:
    """``(start, end, type)`` byte ranges of ``ranges`` that ``level`` leaves out."""
    ps = model.page_size
    span = GROUP_PAGES * ps
    for a, b in ranges:
        g = a // span
        while g * span < b:
            kind = model.group_type(g)
            if level & _EXCLUDED_BY.get(kind, 0):
                lo, hi = max(a, g * span), min(b, (g + 1) * span)
                yield lo, hi, _COUNTED_AS.get(kind, kind)
            g += 1

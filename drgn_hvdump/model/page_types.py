"""Dump levels: which pages ``makedumpfile -d LEVEL`` leaves out, decided from ``struct page``.

A dump level is makedumpfile's bit mask: 1 zero pages, 2 page cache without
private data, 4 page cache with private data, 8 user (anonymous and
hugetlbfs) pages, 16 free pages. Every bit above 1 is decided from the
crashed kernel's ``struct page`` of each page, read through the memory model
its VMCOREINFO describes (:mod:`drgn_hvdump.model.mem_sections`).

This module holds the layout of ``struct page`` as VMCOREINFO gives it
(:class:`StructPage`, which also packs entries, so hvsim writes what hvdump
reads from one description) and makedumpfile's decision for one page
(:func:`page_type`), made exactly as its ``__exclude_unnecessary_pages``
makes it, values for old kernels included: where VMCOREINFO lacks a
``PG_*`` number makedumpfile assumes the 2.6 value, and so does this module.
Newer layouts are tried first: ``PAGE_*_MAPCOUNT_VALUE`` (6.9+) before
``PG_hugetlb`` (6.6+) before ``compound_dtor`` offsets.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from drgn_hvdump.errors import HvdumpError

__all__ = [
    "DL_CACHE",
    "DL_CACHE_PRIVATE",
    "DL_FREE",
    "DL_USER",
    "DL_ZERO",
    "EXCLUDED_TYPES",
    "MAX_DUMP_LEVEL",
    "DumpLevelError",
    "PageFields",
    "StructPage",
    "decide_pages",
    "describe_level",
    "page_type",
    "parse_dump_level",
    "possible_level",
    "struct_page_from_vmcoreinfo",
]

DL_ZERO = 0x01
DL_CACHE = 0x02
DL_CACHE_PRIVATE = 0x04
DL_USER = 0x08
DL_FREE = 0x10
MAX_DUMP_LEVEL = 31

EXCLUDED_TYPES = ("cache", "cache_private", "user", "free", "hwpoison", "offline", "unused")
"""The kinds of page a level can leave out, as the manifest counts them (``unused``:
above the last memory section the kernel had ``struct page`` for)."""

_LEVEL_NAMES = {
    DL_ZERO: "zero",
    DL_CACHE: "cache",
    DL_CACHE_PRIVATE: "cache_private",
    DL_USER: "user",
    DL_FREE: "free",
}

# makedumpfile's values for kernels whose VMCOREINFO lacks them (2.6.2x).
_PG_LRU_ORIGINAL = 5
_PG_SLAB_ORIGINAL = 7
_PG_PRIVATE_ORIGINAL = 11
_PG_COMPOUND_ORIGINAL = 14
_PG_SWAPCACHE_ORIGINAL = 15
_BUDDY_MAPCOUNT_2_6_38 = -2
_BUDDY_MAPCOUNT_2_6_39 = -128
_PAGE_MAPPING_ANON = 1


class DumpLevelError(HvdumpError):
    """A dump level that is not a number from 0 to 31."""

    exit_code = 2


def parse_dump_level(text: str) -> int:
    """``-d`` / ``--dump-level``: a number 0-31 (decimal, or ``0x``/``0b`` prefixed)."""
    try:
        level = int(text, 0)
    except ValueError:
        level = -1
    if not 0 <= level <= MAX_DUMP_LEVEL:
        raise DumpLevelError(
            f"dump level {text!r}: expected a number from 0 to 31, the sum of 1 (zero "
            "pages), 2 (page cache), 4 (page cache with private data), 8 (user data) "
            "and 16 (free pages); 31 leaves out all of them"
        )
    return level


def describe_level(level: int) -> str:
    """``31 (zero, cache, cache_private, user, free)``."""
    names = [name for bit, name in _LEVEL_NAMES.items() if level & bit]
    return f"{level} ({', '.join(names) or 'nothing left out'})"


def _kernel_version(osrelease: str) -> tuple[int, int, int]:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", osrelease)
    if m is None:
        return (0, 0, 0)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def _number(info: Mapping[str, str], name: str) -> int | None:
    raw = info.get(f"NUMBER({name})")
    if raw is None:
        return None
    try:
        return int(raw, 0)
    except ValueError:
        return None


def _decimal(info: Mapping[str, str], key: str) -> int | None:
    raw = info.get(key)
    if raw is None or not raw.isdigit():
        return None
    return int(raw)


def _symbol(info: Mapping[str, str], name: str) -> int | None:
    raw = info.get(f"SYMBOL({name})")
    if raw is None:
        return None
    try:
        return int(raw, 16)
    except ValueError:
        return None


@dataclass(frozen=True)
class PageFields:
    """The fields of one ``struct page`` that makedumpfile decides from."""

    flags: int = 0
    refcount: int = 0
    mapping: int = 0
    mapcount: int = -1
    """``_mapcount`` (``page_type`` on 6.x) as a signed 32-bit number."""
    private: int = 0
    compound_head: int = 0


@dataclass(frozen=True)
class StructPage:
    """``struct page`` and the page flags as a kernel's VMCOREINFO describes them.

    Offsets are None where VMCOREINFO has no such member; numbers None where
    the kernel has no such value. ``pg_*`` numbers carry makedumpfile's
    defaults for kernels that do not export them.
    """

    size: int
    byteorder: Literal["big", "little"]
    flags: int
    refcount: int
    mapping: int
    mapcount: int | None
    private: int | None
    compound_head: int | None
    pg_lru: int
    pg_private: int
    pg_swapcache: int
    pg_swapbacked: int | None
    pg_slab: int
    pg_head_mask: int
    pg_hwpoison: int | None
    pg_hugetlb: int | None
    pg_buddy: int | None
    buddy_mapcount: int | None
    slab_mapcount: int | None
    offline_mapcount: int | None
    hugetlb_mapcount: int | None
    unaccepted_mapcount: int | None
    free_area_length: int | None
    compound_order: tuple[int, int] | None
    """(offset in the page after the head, bytes) of the compound order, if any."""
    compound_dtor: tuple[int, int] | None
    hugetlb_dtors: tuple[int, ...] = ()

    # ------------------------------------------------------------ reading

    def _u(self, raw: bytes | memoryview, offset: int, size: int) -> int:
        return int.from_bytes(raw[offset : offset + size], self.byteorder)

    def read(self, raw: bytes | memoryview, index: int = 0) -> PageFields:
        """The fields of entry ``index`` of an array of ``struct page`` in ``raw``."""
        base = index * self.size
        mapcount = -1
        if self.mapcount is not None:
            mapcount = _s32(self._u(raw, base + self.mapcount, 4))
        return PageFields(
            flags=self._u(raw, base + self.flags, 8),
            refcount=self._u(raw, base + self.refcount, 4),
            mapping=self._u(raw, base + self.mapping, 8),
            mapcount=mapcount,
            private=self._u(raw, base + self.private, 8) if self.private is not None else 0,
            compound_head=(
                self._u(raw, base + self.compound_head, 8) if self.compound_head is not None else 0
            ),
        )

    def compound(self, raw: bytes | memoryview, index: int, head: PageFields) -> tuple[int, bool]:
        """(order, hugetlb) of the compound page whose head is entry ``index``; the
        second entry (the first tail) must be in ``raw``."""
        nxt = (index + 1) * self.size
        if self.hugetlb_mapcount is not None:
            order = self._u(raw, nxt + self.flags, 8) & 0xFF
            return order, head.mapcount == self.hugetlb_mapcount
        if self.pg_hugetlb is not None:
            flags1 = self._u(raw, nxt + self.flags, 8)
            return flags1 & 0xFF, bool(flags1 >> self.pg_hugetlb & 1)
        order = 0
        if self.compound_order is not None:
            off, size = self.compound_order
            order = self._u(raw, nxt + off, size)
        hugetlb = False
        if self.compound_dtor is not None:
            off, size = self.compound_dtor
            hugetlb = self._u(raw, nxt + off, size) in self.hugetlb_dtors
        return order, hugetlb

    # ------------------------------------------------------------ writing

    def pack(self, fields: PageFields) -> bytes:
        """One ``struct page`` holding ``fields`` (other bytes zero): what hvsim writes."""
        out = bytearray(self.size)
        put = [
            (self.flags, 8, fields.flags),
            (self.refcount, 4, fields.refcount),
            (self.mapping, 8, fields.mapping),
            (self.private, 8, fields.private),
            (self.compound_head, 8, fields.compound_head),
            (self.mapcount, 4, fields.mapcount & 0xFFFFFFFF),
        ]
        for off, size, value in put:
            if off is None or not value:
                continue
            if any(out[off : off + size]):
                raise ValueError(f"struct page fields overlap at offset {off}")
            out[off : off + size] = value.to_bytes(size, self.byteorder)
        return bytes(out)

    # ----------------------------------------------------------- deciding

    def _bit(self, flags: int, nr: int) -> bool:
        # makedumpfile's test_bit() tests bit (nr & 31) of the flags.
        return bool(flags >> (nr & 0x1F) & 1)

    def is_slab(self, p: PageFields) -> bool:
        if self.slab_mapcount is not None and p.mapcount == self.slab_mapcount:
            return True
        return bool(p.flags >> self.pg_slab & 1)

    def is_anon(self, p: PageFields) -> bool:
        return bool(p.mapping & _PAGE_MAPPING_ANON) and not self.is_slab(p)

    def is_cache(self, p: PageFields) -> bool:
        if self._bit(p.flags, self.pg_lru):
            return True
        swapbacked = self.pg_swapbacked is None or self._bit(p.flags, self.pg_swapbacked)
        return swapbacked and self._bit(p.flags, self.pg_swapcache)

    def is_buddy(self, p: PageFields) -> bool:
        if self.buddy_mapcount is not None:
            return not self.is_slab(p) and p.mapcount == self.buddy_mapcount
        return self.pg_buddy is not None and bool(p.flags >> self.pg_buddy & 1)

    @property
    def knows_buddies(self) -> bool:
        """Whether free pages can be told from their ``struct page`` (makedumpfile's
        ``page_is_buddy``); otherwise it walks the free lists, which hvdump does not."""
        if self.private is None:
            return False
        if self.buddy_mapcount is not None:
            return self.mapcount is not None
        return self.pg_buddy is not None

    def is_compound_head(self, p: PageFields) -> bool:
        return bool(p.flags & self.pg_head_mask)


def page_type(
    sp: StructPage, p: PageFields, level: int, compound: tuple[int, bool] = (0, False)
) -> tuple[str | None, int]:
    """makedumpfile's decision for one page: (the type that excludes it, or None to
    keep it; how many pages from it the decision covers).

    ``compound`` is (order, hugetlb) when the page is a compound head. Compound
    tail pages are kept here: their head's decision covers them.
    """
    if p.compound_head & 1:
        return None, 1
    order, hugetlb = compound
    nr = 1 << order
    if level & DL_FREE and sp.knows_buddies and sp.is_buddy(p):
        if sp.free_area_length is not None and p.private >= sp.free_area_length:
            return None, 1
        if p.private >= 64:  # no order so large: not a free block
            return None, 1
        return "free", 1 << p.private
    if (
        level & DL_FREE
        and sp.unaccepted_mapcount is not None
        and p.mapcount == sp.unaccepted_mapcount
        and sp.free_area_length is not None
    ):
        return "free", 1 << (sp.free_area_length - 1)
    cache = sp.is_cache(p)
    anon = sp.is_anon(p)
    private = sp._bit(p.flags, sp.pg_private)
    if level & DL_CACHE and cache and not private and not anon:
        return "cache", nr
    if level & DL_CACHE_PRIVATE and cache and not anon:
        return ("cache_private" if private else "cache"), nr
    if level & DL_USER and (anon or hugetlb):
        return "user", nr
    if sp.pg_hwpoison is not None and sp._bit(p.flags, sp.pg_hwpoison):
        return "hwpoison", nr
    if sp.offline_mapcount is not None and not sp.is_slab(p) and p.mapcount == sp.offline_mapcount:
        return "offline", nr
    return None, 1


def _s32(value: int) -> int:
    return value - (1 << 32) if value & 0x8000_0000 else value


def _offset(info: Mapping[str, str], name: str) -> int | None:
    return _decimal(info, f"OFFSET({name})")


_REQUIRED = ("SIZE(page)", "OFFSET(page.flags)", "OFFSET(page.mapping)")


def struct_page_from_vmcoreinfo(
    info: Mapping[str, str], byteorder: Literal["big", "little"]
) -> StructPage | None:
    """The layout VMCOREINFO describes, or None when it lacks ``SIZE(page)``,
    ``OFFSET(page.flags)``, ``OFFSET(page.mapping)`` or ``page._refcount``/``_count``."""
    size = _decimal(info, "SIZE(page)")
    flags = _offset(info, "page.flags")
    mapping = _offset(info, "page.mapping")
    refcount = _offset(info, "page._refcount")
    if refcount is None:
        refcount = _offset(info, "page._count")
    if size is None or flags is None or mapping is None or refcount is None:
        return None
    version = _kernel_version(info.get("OSRELEASE", ""))
    pg_private = _number(info, "PG_private")
    pg_private = _PG_PRIVATE_ORIGINAL if pg_private is None else pg_private
    pg_swapcache = _number(info, "PG_swapcache")
    pg_swapcache = _PG_SWAPCACHE_ORIGINAL if pg_swapcache is None else pg_swapcache
    pg_swapbacked = _number(info, "PG_swapbacked")
    if pg_swapbacked is None and pg_swapcache < pg_private:
        pg_swapbacked = pg_private + 6
    pg_slab = _number(info, "PG_slab")
    pg_lru = _number(info, "PG_lru")
    head_mask = _number(info, "PG_head_mask")
    if head_mask is None:
        pg_head = _number(info, "PG_head")
        head_mask = 1 << (_PG_COMPOUND_ORIGINAL if pg_head is None else pg_head)
    buddy = _number(info, "PAGE_BUDDY_MAPCOUNT_VALUE")
    if buddy is None and _number(info, "PG_buddy") is None:
        if version == (2, 6, 38):
            buddy = _BUDDY_MAPCOUNT_2_6_38
        elif version >= (2, 6, 39):
            buddy = _BUDDY_MAPCOUNT_2_6_39
    order: tuple[int, int] | None = None
    dtor: tuple[int, int] | None = None
    folio_order = _offset(info, "folio._folio_order")
    folio_dtor = _offset(info, "folio._folio_dtor")
    page_order = _offset(info, "page.compound_order")
    page_dtor = _offset(info, "page.compound_dtor")
    lru = _offset(info, "page.lru")
    width = 1 if version >= (4, 16, 0) else 2
    # The folio's fields are in the first tail page: offsets past struct page.
    if folio_order is not None:
        order = (folio_order - size, 1)
    elif page_order is not None:
        order = (page_order, width)
    elif version < (4, 4, 0) and lru is not None:
        order = (lru + (_offset(info, "list_head.prev") or 8), 8)
    if folio_dtor is not None:
        dtor = (folio_dtor - size, 1)
    elif page_dtor is not None:
        dtor = (page_dtor, width if version >= (4, 4, 0) else 8)
    elif version < (4, 4, 0) and lru is not None:
        dtor = (lru + (_offset(info, "list_head.next") or 0), 8)
    dtors = tuple(
        v for v in (_number(info, "HUGETLB_PAGE_DTOR"), _symbol(info, "free_huge_page")) if v
    )
    length = _decimal(info, "LENGTH(zone.free_area)")
    return StructPage(
        size=size,
        byteorder=byteorder,
        flags=flags,
        refcount=refcount,
        mapping=mapping,
        mapcount=_offset(info, "page._mapcount"),
        private=_offset(info, "page.private"),
        compound_head=_offset(info, "page.compound_head"),
        pg_lru=_PG_LRU_ORIGINAL if pg_lru is None else pg_lru,
        pg_private=pg_private,
        pg_swapcache=pg_swapcache,
        pg_swapbacked=pg_swapbacked,
        pg_slab=_PG_SLAB_ORIGINAL if pg_slab is None else pg_slab,
        pg_head_mask=head_mask,
        pg_hwpoison=_number(info, "PG_hwpoison"),
        pg_hugetlb=_number(info, "PG_hugetlb"),
        pg_buddy=_number(info, "PG_buddy"),
        buddy_mapcount=buddy,
        slab_mapcount=_number(info, "PAGE_SLAB_MAPCOUNT_VALUE"),
        offline_mapcount=_number(info, "PAGE_OFFLINE_MAPCOUNT_VALUE"),
        hugetlb_mapcount=_number(info, "PAGE_HUGETLB_MAPCOUNT_VALUE"),
        unaccepted_mapcount=_number(info, "PAGE_UNACCEPTED_MAPCOUNT_VALUE"),
        free_area_length=length,
        compound_order=order,
        compound_dtor=dtor,
        hugetlb_dtors=dtors,
    )


def possible_level(info: Mapping[str, str], level: int) -> tuple[int, list[str]]:
    """The highest part of ``level`` this VMCOREINFO allows, and why the rest is not.

    Levels above 1 need the memory model (``SYMBOL(mem_section)`` and its
    geometry) and ``struct page``'s layout; 16 also needs what tells a free
    page (``PAGE_BUDDY_MAPCOUNT_VALUE`` or ``PG_buddy`` with ``page._mapcount``
    and ``page.private``).
    """
    if level & ~DL_ZERO == 0:
        return level, []
    missing = [
        key
        for key in (
            "SYMBOL(mem_section)",
            "OFFSET(mem_section.section_mem_map)",
            "SIZE(mem_section)",
            "NUMBER(SECTION_SIZE_BITS)",
            "NUMBER(MAX_PHYSMEM_BITS)",
            *_REQUIRED,
        )
        if key not in info
    ]
    if "OFFSET(page._refcount)" not in info and "OFFSET(page._count)" not in info:
        missing.append("OFFSET(page._refcount)")
    if missing:
        return level & DL_ZERO, missing
    sp = struct_page_from_vmcoreinfo(info, "big")
    assert sp is not None
    if level & DL_FREE and not sp.knows_buddies:
        return level & ~DL_FREE, [
            "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE) or NUMBER(PG_buddy), with "
            "OFFSET(page._mapcount) and OFFSET(page.private) (free pages)"
        ]
    return level, []


def decide_pages(
    sp: StructPage,
    raw: bytes | memoryview,
    first_pfn: int,
    count: int,
    level: int,
) -> Iterator[tuple[int, int, str]]:
    """``(first pfn, end pfn, type)`` of the pages to leave out among ``count`` pages
    from ``first_pfn`` whose ``struct page`` array is ``raw``.

    A decision covering several pages (a free block, a compound page) may end
    past ``first_pfn + count``; the caller clips it to the dump's ranges.
    """
    i = 0
    while i < count:
        pfn = first_pfn + i
        p = sp.read(raw, i)
        compound = (0, False)
        if i < count - 1 and sp.is_compound_head(p):
            order, hugetlb = sp.compound(raw, i, p)
            if order >= 64 or pfn & ((1 << order) - 1):
                order = 0
            compound = (order, hugetlb)
        kind, nr = page_type(sp, p, level, compound)
        if kind is None:
            i += 1
            continue
        yield pfn, pfn + nr, kind
        i += nr

"""drgn_hvdump.mmu: hash-MMU geometry, page-table walks, saved-HPT lookups (no drgn)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drgn_hvdump.formats.hpte import (
    Hpte,
    build_hpte_table,
    encode_hpte,
    hpte_group,
    hpte_hash,
    htab_hash_mask,
    kernel_vsid,
    linear_map_hptes,
    va_of,
)
from drgn_hvdump.mmu import (
    BOOK3S64_PTE_FORMAT,
    KERN_VIRT_START,
    HashMmu,
    PageTableError,
    PteFormat,
    SavedHpt,
    hash_geometry,
    hpte_page_shift,
    iter_page_tables,
    pte_format_2_6_32,
    walk_page_tables,
)

Order = Literal["big", "little"]
KB = 0xC000000000000000
TABLE_SIZE = 256 << 10  # 2048 groups


class Memory:
    """Sparse physical memory that page tables are built in (an independent builder)."""

    def __init__(self, order: Order) -> None:
        self.order = order
        self.data: dict[int, int] = {}  # 8-byte words by address
        self.next = 0x100000

    def read(self, pa: int, size: int) -> bytes:
        assert pa % 8 == 0 and size % 8 == 0
        out = bytearray(size)
        for a, v in self.data.items():
            if pa <= a < pa + size:
                out[a - pa : a - pa + 8] = v.to_bytes(8, self.order)
        return bytes(out)

    def alloc(self, size: int) -> int:
        self.next = -(-self.next // size) * size
        pa = self.next
        self.next += size
        return pa


def build_tables(
    mem: Memory, page_shift: int, maps: Mapping[int, int], fmt: PteFormat, sizes: tuple[int, ...]
) -> int:
    """Tables for ``maps`` (ea -> pa) with the given (PTE, PMD, PUD, PGD) index sizes."""
    pte_bits, pmd_bits, pud_bits, pgd_bits = sizes
    levels = [(page_shift + pte_bits + pmd_bits + pud_bits, pgd_bits)]
    if pud_bits:
        levels.append((page_shift + pte_bits + pmd_bits, pud_bits))
    levels.append((page_shift + pte_bits, pmd_bits))
    pgd = mem.alloc(8 << pgd_bits)
    for ea, pa in maps.items():
        table = pgd
        for (shift, bits), (_, next_bits) in zip(levels, [*levels[1:], (0, pte_bits)], strict=True):
            slot = table + 8 * ((ea >> shift) & ((1 << bits) - 1))
            if slot not in mem.data:
                new = mem.alloc(8 << next_bits)
                mem.data[slot] = (KB + new) if fmt.table_pointer == "virtual" else new | (1 << 63)
            value = mem.data[slot] & fmt.table_mask
            table = value - KB if fmt.table_pointer == "virtual" else value
        slot = table + 8 * ((ea >> page_shift) & ((1 << pte_bits) - 1))
        if fmt.rpn_shift is None:
            mem.data[slot] = pa | fmt.present | 0x100
        else:
            mem.data[slot] = ((pa >> page_shift) << fmt.rpn_shift) | fmt.present | 0x180
    return pgd


def test_2_6_32_geometry_and_range() -> None:
    g64 = hash_geometry(65536)
    assert (g64.pte_index_size, g64.pmd_index_size, g64.pud_index_size, g64.pgd_index_size) == (
        12,
        12,
        0,
        4,
    )
    assert g64.pgdir_shift == 40
    assert (g64.vmalloc_start, g64.vmalloc_end) == (KERN_VIRT_START, 0xD000080000000000)
    assert g64.io_end == 0xD000100000000000
    assert g64.ioremap_start == 0xD000080080000000
    g4 = hash_geometry(4096)
    assert (g4.pte_index_size, g4.pmd_index_size, g4.pud_index_size, g4.pgd_index_size) == (
        9,
        7,
        7,
        9,
    )
    assert g4.io_end == g64.io_end  # both index 44 bits
    assert g4.region(0xD000000000001000) == "vmalloc"
    assert g4.region(0xD000080000001000) == "I/O"
    assert g4.region(0xD0000800F0000000) == "ioremap"
    assert "2.6.32" in g4.source


def test_geometry_variables_win_when_all_are_there() -> None:
    names = ("__pte_index_size", "__pmd_index_size", "__pud_index_size", "__pgd_index_size")
    g = hash_geometry(65536, dict(zip(names, (8, 10, 10, 8), strict=True)))
    assert (g.pte_index_size, g.pmd_index_size, g.pud_index_size, g.pgd_index_size) == (
        8,
        10,
        10,
        8,
    )
    assert "variables" in g.source
    partial = hash_geometry(65536, {"__pte_index_size": 8})
    assert partial.pte_index_size == 12
    with pytest.raises(ValueError, match="4 KiB or 64 KiB"):
        hash_geometry(8192)
    with pytest.raises(ValueError, match="implausible"):
        hash_geometry(65536, dict(zip(names, (30, 10, 10, 8), strict=True)))


@settings(max_examples=25, deadline=None)
@given(
    order=st.sampled_from(["big", "little"]),
    page_shift=st.sampled_from([12, 16]),
    pages=st.dictionaries(
        st.integers(0, (1 << 28) - 1), st.integers(1, (1 << 31) - 1), min_size=1, max_size=12
    ),
)
def test_walk_finds_every_mapping_and_nothing_else(
    order: Order, page_shift: int, pages: dict[int, int]
) -> None:
    g = hash_geometry(1 << page_shift)
    fmt = pte_format_2_6_32(1 << page_shift, order)
    maps = {KERN_VIRT_START + (p << page_shift): pa << page_shift for p, pa in pages.items()}
    sizes = (g.pte_index_size, g.pmd_index_size, g.pud_index_size, g.pgd_index_size)
    mem = Memory(order)
    pgd = build_tables(mem, page_shift, maps, fmt, sizes)
    for ea, pa in maps.items():
        m = walk_page_tables(ea + 123, pgd, g, fmt, mem.read)
        assert m is not None and (m.ea, m.pa, m.page_size) == (ea, pa, 1 << page_shift)
        assert m.hash_hint is None
        neighbour = ea + (1 << page_shift)
        # past the last page the tables cover, an address aliases the first
        # (the walker indexes by the low bits); hypothesis found page 2**28 - 1
        in_span = (neighbour - KERN_VIRT_START) >> page_shift < 1 << sum(sizes)
        if neighbour not in maps and in_span:
            assert walk_page_tables(neighbour, pgd, g, fmt, mem.read) is None
    listed = {
        m.ea: m.pa for m in iter_page_tables(pgd, g, fmt, mem.read, g.vmalloc_start, g.io_end)
    }
    assert listed == maps


def test_entries_are_read_in_the_kernels_byte_order() -> None:
    g = hash_geometry(65536)
    ea, pa = KERN_VIRT_START + 0x30000, 0x1234_0000
    mem = Memory("little")
    pgd = build_tables(mem, 16, {ea: pa}, pte_format_2_6_32(65536, "little"), (12, 12, 0, 4))
    assert walk_page_tables(ea, pgd, g, pte_format_2_6_32(65536, "little"), mem.read) is not None
    with pytest.raises(PageTableError, match="linear map"):
        walk_page_tables(ea, pgd, g, pte_format_2_6_32(65536, "big"), mem.read)


def test_hash_hint_and_not_present() -> None:
    fmt = pte_format_2_6_32(65536, "big")
    assert fmt.hash_hint(0x400 | 0xB000 | 1) == (True, 3)
    assert fmt.hash_hint(0x3000 | 1) is None
    g = hash_geometry(65536)
    ea = KERN_VIRT_START
    mem = Memory("big")
    pgd = build_tables(mem, 16, {ea: 0x10000}, fmt, (12, 12, 0, 4))
    pte_at = next(a for a, v in mem.data.items() if v & 1 and v < KB)
    mem.data[pte_at] &= ~1  # cleared _PAGE_PRESENT: not a mapping
    assert walk_page_tables(ea, pgd, g, fmt, mem.read) is None


def test_book3s64_format_has_physical_table_pointers() -> None:
    names = ("__pte_index_size", "__pmd_index_size", "__pud_index_size", "__pgd_index_size")
    g = hash_geometry(65536, dict(zip(names, (8, 10, 10, 8), strict=True)))
    ea, pa = KERN_VIRT_START + (5 << 16), 0x7_0000_0000
    mem = Memory("big")
    pgd = build_tables(mem, 16, {ea: pa}, BOOK3S64_PTE_FORMAT, (8, 10, 10, 8))
    m = walk_page_tables(ea, pgd, g, BOOK3S64_PTE_FORMAT, mem.read)
    assert m is not None and m.pa == pa


def _table(entries: dict[int, Hpte]) -> SavedHpt:
    return SavedHpt(build_hpte_table(entries, TABLE_SIZE))


def _place(
    table: dict[int, Hpte], ea: int, pa: int, shift: int, secondary: bool, index: int
) -> int:
    mask = htab_hash_mask(TABLE_SIZE)
    h = hpte_hash(kernel_vsid(ea), ea, shift, 0)
    slot = hpte_group(h, mask, secondary) * 8 + index
    penc = {12: 0, 16: 1, 24: 0}[shift]
    table[slot] = encode_hpte(va_of(ea), pa, shift, penc=penc, secondary=secondary)
    return slot


@pytest.mark.parametrize("shift", [12, 16])
@pytest.mark.parametrize("secondary", [False, True])
def test_saved_hpt_lookup_finds_primary_and_secondary_entries(shift: int, secondary: bool) -> None:
    entries = dict(linear_map_hptes(1 << 30, TABLE_SIZE))
    ea = KERN_VIRT_START + (0x1234 << shift)
    slot = _place(entries, ea, 0x3000_0000, shift, secondary, 5)
    hpt = _table(entries)
    found = hpt.lookup(ea + 0x10)
    assert [(m.slot, m.pa, m.page_shift, m.ea, m.secondary) for m in found] == [
        (slot, 0x3000_0000, shift, ea, secondary)
    ]
    assert hpt.lookup(ea + (1 << shift)) == []
    assert [m.slot for m in hpt.kernel_mappings(KERN_VIRT_START, KERN_VIRT_START + (1 << 44))] == [
        slot
    ]


def test_linear_map_addresses_have_their_bolted_16m_entry() -> None:
    entries = linear_map_hptes(1 << 30, TABLE_SIZE)
    hpt = _table(dict(entries))
    found = hpt.lookup(KB + 0x2345_6789)
    assert len(found) == 1
    assert found[0].page_shift == 24 and found[0].bolted and found[0].pa == 0x2300_0000
    assert found[0].slot in entries


def test_page_size_of_an_entry_follows_the_lp_encoding() -> None:
    assert hpte_page_shift(encode_hpte(0, 0x10000, 12)) == 12
    assert hpte_page_shift(encode_hpte(0, 0x10000, 16, penc=1)) == 16
    assert hpte_page_shift(encode_hpte(0, 0x1000000, 24, penc=0)) == 24
    assert hpte_page_shift(encode_hpte(0, 0x10000, 16, penc=2), {16: 1}) is None


@pytest.mark.parametrize("order", ["big", "little"])
def test_combined_translation_and_disagreements(order: Order) -> None:
    g = hash_geometry(65536)
    fmt = pte_format_2_6_32(65536, order)
    both, pt_only, stale, moved = (KERN_VIRT_START + (n << 16) for n in (1, 2, 4, 6))
    maps = {both: 0x100_0000, pt_only: 0x110_0000, moved: 0x120_0000}
    mem = Memory(order)
    pgd = build_tables(mem, 16, maps, fmt, (12, 12, 0, 4))
    entries = dict(linear_map_hptes(1 << 30, TABLE_SIZE))
    s_both = _place(entries, both, 0x100_0000, 16, False, 6)
    s_stale = _place(entries, stale, 0x200_0000, 16, True, 7)
    s_moved = _place(entries, moved, 0x210_0000, 16, False, 7)
    mmu = HashMmu(g, fmt, pgd, mem.read, _table(entries))

    t = mmu.translate(both + 8)
    assert (t.pa, t.source, t.disagreement) == (0x100_0008, "page tables", None)
    assert [m.slot for m in t.hptes] == [s_both]
    t = mmu.translate(stale + 8)
    assert (t.pa, t.source) == (0x200_0008, "hpt")
    assert t.disagreement is not None and "page tables do not" in t.disagreement
    t = mmu.translate(moved)
    assert (t.pa, t.source) == (0x120_0000, "page tables")
    assert t.disagreement is not None and f"slot {s_moved}" in t.disagreement
    t = mmu.translate(pt_only)
    assert t.source == "page tables" and t.disagreement is not None
    t = mmu.translate(KERN_VIRT_START + (9 << 16))
    assert (t.pa, t.source, t.mapped) == (None, "none", False)
    t = mmu.translate(KB + 0x1000)
    assert (t.pa, t.source) == (0x1000, "linear map")
    assert [m.page_shift for m in t.hptes] == [24]

    got = {(d.ea, d.kind, d.page_table_pa, d.hpt_pa, d.slots) for d in mmu.disagreements()}
    assert got == {
        (pt_only, "page tables only", 0x110_0000, None, ()),
        (stale, "hpt only", None, 0x200_0000, (s_stale,)),
        (moved, "different pages", 0x120_0000, 0x210_0000, (s_moved,)),
    }
    assert all(d.describe().startswith(f"{d.ea:#018x}") for d in mmu.disagreements())

    alone = HashMmu(g, fmt, pgd, mem.read)
    assert alone.translate(stale).source == "none"
    assert alone.translate(pt_only).disagreement is None
    assert alone.disagreements() == []


def test_vmcoreinfo_says_the_mmu_and_the_range_of_newer_kernels() -> None:
    from drgn_hvdump.mmu import mmu_from_vmcoreinfo, table_range_from_vmcoreinfo

    assert mmu_from_vmcoreinfo({"NUMBER(RADIX_MMU)": "1"}) == "radix"
    assert mmu_from_vmcoreinfo({"NUMBER(RADIX_MMU)": "0"}) == "hash"
    assert mmu_from_vmcoreinfo({"OSRELEASE": "6.1.0-57-powerpc64le"}) is None
    # Debian 13's 6.12 with 4 KiB pages, hash; and a 64 KiB-page Book3S-64 kernel.
    v4k = {"NUMBER(VMALLOC_START)": "0xc0003d0000000000", "SYMBOL(vmemmap)": "c0003f0000000000"}
    assert table_range_from_vmcoreinfo(v4k) == (0xC0003D0000000000, 0xC0003F0000000000)
    v64k = {"NUMBER(VMALLOC_START)": "0xc008000000000000", "SYMBOL(vmemmap)": "c00c000000000000"}
    assert table_range_from_vmcoreinfo(v64k) == (0xC008000000000000, 0xC00C000000000000)
    assert table_range_from_vmcoreinfo({"SYMBOL(vmemmap)": "c00c000000000000"}) is None
    assert table_range_from_vmcoreinfo({**v4k, "SYMBOL(vmemmap)": "c0003c0000000000"}) is None
    assert table_range_from_vmcoreinfo({**v4k, "NUMBER(VMALLOC_START)": "bogus"}) is None


def test_6_12_4k_hash_geometry_from_the_kernels_variables() -> None:
    # What Debian 13's 6.12 (CONFIG_PPC_4K_PAGES, hash) holds in its variables.
    g = hash_geometry(
        4096,
        {
            "__pte_index_size": 9,
            "__pmd_index_size": 7,
            "__pud_index_size": 9,
            "__pgd_index_size": 9,
            "__vmalloc_start": 0xC0003D0000000000,
            "__vmalloc_end": 0xC0003E0000000000,
            "__kernel_io_start": 0xC0003E0000000000,
            "__kernel_io_end": 0xC0003F0000000000,
        },
    )
    assert g.source == "the kernel's __*_index_size variables"
    assert g.contains(0xC0003D00003490A8) and g.region(0xC0003D00003490A8) == "vmalloc"
    assert g.pgdir_shift == 12 + 9 + 7 + 9
    assert not g.contains(0xC008000000000000)

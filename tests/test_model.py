"""drgn_hvdump.model: page rounding, release semantics and the scratch layout.

Each rule is checked against a brute-force reference written from the
kernel's description (``phyp-dump-kernel.md``): page frame numbers and bytes
as Python sets, over small address spaces and page sizes.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drgn_hvdump.formats.dump_header import RMO_SIZE, build_dump_header, parse_dump_header
from drgn_hvdump.intervals import IntervalSet
from drgn_hvdump.model.pages import page_down, page_span, page_up
from drgn_hvdump.model.release import (
    U64_MASK,
    ReleaseArea,
    ReleaseCounters,
    corrected_release,
    counts_in_reserved,
    counts_in_scratch,
    dump_data,
    faithful_release,
    release_span,
    reregisters,
    simulate_frees,
)
from drgn_hvdump.model.scratch import (
    MIN_HPT_SIZE,
    ScratchLayout,
    hpt_size,
    sections_from_base,
    top_scratch_base,
)

# ------------------------------------------------------------------ pages


@given(st.integers(-(1 << 70), 1 << 70), st.sampled_from([1, 3, 4096, 65536, 1 << 24]))
def test_page_rounding(x: int, ps: int) -> None:
    lo, hi = page_down(x, ps), page_up(x, ps)
    assert lo % ps == 0 and hi % ps == 0
    assert lo <= x <= hi and hi - lo in ((0,) if x % ps == 0 else (ps,))
    assert page_span(x, x + 1, ps) == (lo, page_up(x + 1, ps))


# ---------------------------------------------------------------- release


def _pages(ranges: list[tuple[int, int]] | tuple[int, int] | None, ps: int) -> set[int]:
    """Page frame numbers of page-aligned byte ranges."""
    if ranges is None:
        return set()
    if isinstance(ranges, tuple):
        ranges = [ranges]
    out: set[int] = set()
    for a, b in ranges:
        assert a % ps == 0 and (b % ps == 0 or b == a)
        out.update(range(a // ps, b // ps))
    return out


def _faithful_reference(addr: int, size: int, irs: int, end: int, ps: int) -> set[int]:
    """The 2.6 kernel's loop, literally: clamp, then pfn first..last inclusive."""
    start, length = addr, size
    if start < irs:
        start = irs
    if start + length > end:
        length = end - start  # signed here: negative is the kernel's underflow
    if length < 0:
        return set()
    first = start // ps
    last = first + length // ps
    return {pfn for pfn in range(first, last + 1) if pfn * ps < end}


@st.composite
def areas(draw: st.DrawFn) -> tuple[ReleaseArea, int]:
    """A reservation of whole pages with a scratch area at its top, and the page size."""
    ps = draw(st.sampled_from([4, 8, 16]))
    start = draw(st.integers(1, 8)) * ps
    npages = draw(st.integers(2, 24))
    end = start + npages * ps
    scratch_addr = draw(st.integers(start + 1, end - 1))
    return ReleaseArea(start, end - start, scratch_addr, end - scratch_addr), ps


writes_st = st.lists(st.tuples(st.integers(0, 600), st.integers(0, 600)), max_size=8)


@given(areas(), st.integers(0, 600), st.integers(0, 600))
def test_faithful_release_frees_first_through_last_pfn(
    ap: tuple[ReleaseArea, int], addr: int, size: int
) -> None:
    area, ps = ap
    rel = faithful_release(addr, size, area, ps)
    assert _pages(rel.freed, ps) == _faithful_reference(addr, size, area.start, area.end, ps)
    assert rel.clamped == (addr < area.start or max(addr, area.start) + size > area.end)
    assert rel.underflow == (max(addr, area.start) > area.end)


def test_faithful_release_examples() -> None:
    area = ReleaseArea(0x1000, 0x9000, 0x8000, 0x2000)  # [0x1000, 0xA000)
    # One page past the end of the range (the quirk).
    assert faithful_release(0x2000, 0x1000, area, 0x1000) == (
        0x2000,
        0x1000,
        False,
        (0x2000, 0x4000),
    )
    # "0 X" releases [reserve start, reserve start + X], clamped.
    assert faithful_release(0, 0x1000, area, 0x1000).freed == (0x1000, 0x3000)
    # Size clamped to the end; nothing past the end of RAM.
    assert faithful_release(0x9000, 0x5000, area, 0x1000) == (
        0x9000,
        0x1000,
        True,
        (0x9000, 0xA000),
    )
    # A start past the end underflows: nothing freed.
    rel = faithful_release(0xB000, 0x1000, area, 0x1000)
    assert rel.underflow and rel.clamped and rel.freed is None


def _corrected_reference(
    addr: int, size: int, data: set[int], released: set[int], ps: int
) -> set[int]:
    """Pages from the one holding ``addr`` to the one holding the range's last byte in
    which no dump byte is left unreleased (a zero-length write still names the page
    holding an unaligned ``addr``, as hvsim and the collector's plan always did)."""
    left = data - released
    touched = set(range(addr // ps, -(-(addr + size) // ps)))
    return {p for p in touched if not any(p * ps <= b < (p + 1) * ps for b in left)}


@given(areas(), writes_st, st.data())
def test_corrected_release_against_bytes(
    ap: tuple[ReleaseArea, int], writes: list[tuple[int, int]], data: st.DataObject
) -> None:
    area, ps = ap
    copied = data.draw(st.lists(st.tuples(st.integers(0, 600), st.integers(0, 60)), max_size=3))
    reserved_end = data.draw(st.integers(area.start, area.end))
    dd = dump_data(area.start, reserved_end, copied)
    dbytes = set(range(area.start, reserved_end))
    for dest, length in copied:
        dbytes.update(range(max(dest, area.start), dest + length))
    assert {b for a, e in dd for b in range(a, e)} == dbytes
    unreleased, released = dd, set[int]()
    for addr, size in writes:
        rel = corrected_release(addr, size, unreleased, ps)
        released.update(range(addr, addr + size))
        assert _pages(rel.pages, ps) == _corrected_reference(addr, size, dbytes, released, ps)
        assert {b for a, e in rel.unreleased for b in range(a, e)} == dbytes - released
        assert rel.complete == (not dbytes - released)
        unreleased = rel.unreleased


@given(areas(), writes_st, st.data())
def test_simulate_frees_counts_new_pages_under_both_kernels(
    ap: tuple[ReleaseArea, int], writes: list[tuple[int, int]], data: st.DataObject
) -> None:
    area, ps = ap
    reserved_end = data.draw(st.integers(area.start, area.end))
    dd = dump_data(area.start, reserved_end, [])
    dbytes = set(range(area.start, reserved_end))
    got = simulate_frees(writes, dd, area, ps)
    free_f = set(range(area.start // ps, area.end // ps))
    free_c = set(free_f)
    released: set[int] = set()
    want = []
    for addr, size in writes:
        f = _faithful_reference(addr, size, area.start, area.end, ps) & free_f
        released.update(range(addr, addr + size))
        c = _corrected_reference(addr, size, dbytes, released, ps) & free_c
        free_f -= f
        free_c -= c
        want.append((len(f), len(c)))
    assert got == want


@given(areas(), st.integers(0, 600), st.integers(0, 600))
def test_release_span_holds_what_either_kernel_frees(
    ap: tuple[ReleaseArea, int], addr: int, size: int
) -> None:
    area, ps = ap
    if not (area.start <= addr and addr + size <= area.end):
        return  # the collector plans only writes inside the reservation
    lo, hi = release_span(addr, size, area, ps)
    span = set(range(lo // ps, -(-hi // ps)))
    assert _pages(faithful_release(addr, size, area, ps).freed, ps) <= span
    everything = IntervalSet()
    assert _pages(corrected_release(addr, size, everything, ps).pages, ps) <= span


def test_counters_count_unclamped_lengths_and_wrap() -> None:
    area = ReleaseArea(0x1000, 0x9000, 0x8000, 0x2000)
    c = ReleaseCounters()
    assert counts_in_reserved(0xA000, area) and not counts_in_reserved(0xA001, area)
    assert counts_in_scratch(0x8000, area) and counts_in_scratch(0xA000, area)
    assert not counts_in_scratch(0x7FFF, area)
    assert not counts_in_reserved(0, area) and not counts_in_scratch(0, area)
    c = c.count(0, 0x5000, area)  # below the area: not counted at all
    assert c == ReleaseCounters()
    c = c.count(0x9000, 0x5000, area)  # in both; the unclamped length
    assert c == ReleaseCounters(0x5000, 0x5000)
    c = c.count(0x2000, U64_MASK, area)
    assert c == ReleaseCounters(0x4FFF, 0x5000)


@given(areas(), st.data())
def test_reregistration_is_exact_equality(ap: tuple[ReleaseArea, int], data: st.DataObject) -> None:
    """Each byte released once re-registers on the last write, not before; one write
    repeated overshoots, and the dump never re-registers."""
    area, _ = ap

    def pieces(lo: int, hi: int) -> list[tuple[int, int]]:
        cuts = (
            sorted(data.draw(st.sets(st.integers(lo + 1, hi - 1), max_size=4)))
            if hi - lo > 1
            else []
        )
        bounds = [lo, *cuts, hi]
        return [(a, b - a) for a, b in itertools.pairwise(bounds)]

    writes = pieces(area.start, area.scratch_addr) + pieces(area.scratch_addr, area.end)
    writes = data.draw(st.permutations(writes))
    c = ReleaseCounters()
    for i, (addr, size) in enumerate(writes):
        c = c.count(addr, size, area)
        assert reregisters(addr, c, area) == (i == len(writes) - 1)
    repeat = data.draw(st.sampled_from(writes))
    c = ReleaseCounters()
    for addr, size in [*writes, repeat]:
        c = c.count(addr, size, area)
        assert not reregisters(addr, c, area) or (addr, size) == writes[-1]
    assert not c.complete(area)


# ---------------------------------------------------------------- scratch


def test_hpt_size() -> None:
    assert hpt_size(512 << 20) == 4 << 20
    assert hpt_size(768 << 20) == 8 << 20
    assert hpt_size(1 << 20) == MIN_HPT_SIZE


def test_scratch_layout_reproduces_the_kernel_documentation_example() -> None:
    layout = ScratchLayout(
        memory=0x188000000,
        page_size=4096,
        cpu_size=0x10020,
        hpte_size=0x1000,
        reserve_size=256 << 20,
    )
    assert layout.sections == (
        (0x177FEE000, 0x10020),
        (0x177FFE020, 0x1000),
        (0x177FFF020, RMO_SIZE),
    )
    assert layout.reserve_start == 0x177FEEFE0
    assert layout.fits


def test_scratch_layout_that_does_not_fit() -> None:
    layout = ScratchLayout(
        memory=512 << 20, page_size=65536, cpu_size=0x1000, hpte_size=hpt_size(512 << 20),
        reserve_size=256 << 20,
    )  # fmt: skip
    assert not layout.fits
    assert layout.min_memory == 768 << 20
    big = ScratchLayout(**{**layout.to_json(), "memory": layout.min_memory})
    assert big.fits
    assert ScratchLayout.from_json(big.to_json()) == big


layouts = st.builds(
    lambda gib, ps, cpu: ScratchLayout(
        memory=gib << 28, page_size=ps, cpu_size=cpu, hpte_size=hpt_size(gib << 28),
        reserve_size=RMO_SIZE,
    ),
    st.integers(3, 1 << 14),
    st.sampled_from([4096, 65536]),
    st.integers(16, 1 << 20),
)  # fmt: skip


@given(layouts)
def test_scratch_layout_inverse_round_trip(layout: ScratchLayout) -> None:
    assert layout.fits
    assert layout.base % layout.page_size == 0
    assert layout.reserve_start - layout.base < layout.page_size
    # A reader searches downwards from top_scratch_base and meets the base.
    top = top_scratch_base(layout.memory, layout.page_size)
    assert layout.base <= top and (top - layout.base) % layout.page_size == 0
    assert sections_from_base(layout.base, layout.cpu_size, layout.memory) == layout.sections
    # The registered header (always big-endian) names the same sections.
    h = parse_dump_header(build_dump_header(layout.registration()))
    got = tuple((s.destination_address, s.source_length) for s in (h.cpu, h.hpte, h.rmo))
    assert got == layout.sections


@pytest.mark.parametrize("memory", [RMO_SIZE + MIN_HPT_SIZE - 1, 0])
def test_sections_from_base_without_room_for_hptes(memory: int) -> None:
    assert sections_from_base(0, 0, memory) is None


def test_hvsim_uses_the_model() -> None:
    from hvsim import hypervisor

    assert hypervisor.hpt_size is hpt_size
    assert issubclass(hypervisor.ScratchLayout, ScratchLayout)

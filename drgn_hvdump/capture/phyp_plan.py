"""The plan of a phyp dump's collection (see :mod:`drgn_hvdump.capture.plan`).

The crashed kernel's memory is, in the capture kernel's ``/proc/vmcore``:

* ``[0, copied)`` of low memory: in the scratch area's RMO section
  (``rmo.destination_address``); written back at physical address 0;
* ``[R, scratch start)``: the reserved memory itself (``R`` = the release map's
  RESERVED start), written at its own address;
* the CPU state (register save area) and the HPTEs: kept as metadata files.

Release writes are planned so the kernel's naive counters end exactly on the
reserved area's size and the scratch area's size (each byte written once),
and a write is made only when every page it can free (the kernel frees from
the page holding the start through one page past ``start + size // page``,
and a corrected kernel frees whole pages the range covers) holds only durable
data. See ``docs/collect.md``.
"""

from __future__ import annotations

import bisect
import itertools

from drgn_hvdump.capture.plan import Chunk, Plan, ReleaseWrite, kept_pieces
from drgn_hvdump.errors import HvdumpError
from drgn_hvdump.formats.dump_header import DumpHeader
from drgn_hvdump.formats.release_region import Extent, ReleaseMap
from drgn_hvdump.intervals import IntervalSet
from drgn_hvdump.model.pages import page_down
from drgn_hvdump.model.release import (
    ReleaseArea,
    counts_in_scratch,
    dump_data,
    release_span,
    simulate_frees,
)

__all__ = ["make_plan"]


def _split(start: int, end: int, step: int) -> list[tuple[int, int]]:
    return [(a, min(a + step, end)) for a in range(start, end, step)]


def _ready(
    span: tuple[int, int], by_src: list[Chunk], starts: list[int], needed: IntervalSet
) -> int:
    """The last chunk (index) holding needed bytes in the pages ``span`` may free."""
    last = -1
    for a, b in needed.intersect(*span):
        i = max(0, bisect.bisect_right(starts, a) - 1)
        while i < len(by_src) and by_src[i].src < b:
            if a < by_src[i].src_end:
                last = max(last, by_src[i].index)
            i += 1
    return last


def _observable_writes(
    pieces: list[tuple[int, int, bool]],
    chunks: list[Chunk],
    needed: IntervalSet,
    data: IntervalSet,
    area: ReleaseArea,
    ps: int,
) -> tuple[list[ReleaseWrite], list[int]]:
    """The writes and their order, merged until every write but the last frees a new page.

    A write that frees no new page changes only the kernel's counters, which
    nothing shows; a rerun could not tell whether it was made. Such a write is
    merged with its neighbour in the same counter (the sums stay exact). The
    order is the order the writes become safe while chunks become durable in
    index order; the last write re-registers the dump (seen as the dump going).
    """
    by_src = sorted(chunks, key=lambda c: c.src)
    starts = [c.src for c in by_src]
    while True:
        spans = [release_span(a, s, area, ps) for a, s, _ in pieces]
        ready = [_ready(sp, by_src, starts, needed) for sp in spans]
        order = sorted(range(len(pieces)), key=lambda i: (ready[i], i))
        frees = simulate_frees([pieces[i][:2] for i in order], data, area, ps)
        new = {i: f for i, f in zip(order, frees, strict=True)}
        bad = next((i for i in order[:-1] if min(new[i]) == 0), None)
        if bad is None:
            break
        a, s, sc = pieces[bad]
        if bad + 1 < len(pieces) and pieces[bad + 1][2] == sc and pieces[bad + 1][0] == a + s:
            nxt = pieces[bad + 1]
            pieces[bad : bad + 2] = [(a, s + nxt[1], sc)]
        elif bad > 0 and pieces[bad - 1][2] == sc and sum(pieces[bad - 1][:2]) == a:
            prv = pieces[bad - 1]
            pieces[bad - 1 : bad + 1] = [(prv[0], prv[1] + s, sc)]
        else:
            raise HvdumpError(
                f"cannot plan releases a rerun can check: the write {Extent(a, s)} frees no "
                "page of its own and has no neighbour to merge with"
            )
    writes = [
        ReleaseWrite(i, a, s, spans[i], sc, ready[i], new[i]) for i, (a, s, sc) in enumerate(pieces)
    ]
    return writes, order


def _check_layout(
    root: str,
    sections: dict[str, Extent],
    reserved: Extent,
    memory: int,
    ps: int,
) -> None:
    """The dump header's sections tile the scratch area, which follows the reserved
    memory: the layout whose release counters a plan can meet exactly."""
    r0 = reserved.addr
    scratch_addr = sections["cpu"].addr
    scratch_end = sections["rmo"].end
    where = "dump header (ibm,kernel-dump)"
    if r0 % ps:
        raise HvdumpError(f"{root}: reserved area start {r0:#x} is not page aligned")
    prev_end = scratch_addr
    for name, ext in sections.items():
        if ext.addr != prev_end:
            raise HvdumpError(
                f"{where}: {name} section at {ext.addr:#x}, expected {prev_end:#x} "
                "(sections follow each other in the scratch area)"
            )
        prev_end = ext.end
    if scratch_addr < r0 or scratch_end > memory:
        scratch = Extent(scratch_addr, scratch_end - scratch_addr)
        raise HvdumpError(
            f"{where}: scratch area {scratch} is outside the reserved memory {r0:#x}-{memory:#x}"
        )
    if scratch_addr % ps:
        raise HvdumpError(f"{where}: scratch area start {scratch_addr:#x} is not page aligned")
    if reserved.end > scratch_addr + ps or reserved.end < scratch_addr - ps:
        raise HvdumpError(
            f"{root}: release map: RESERVED ends at {reserved.end:#x}, but the scratch "
            f"area starts at {scratch_addr:#x}"
        )
    if reserved.size and r0 >= scratch_addr:
        raise HvdumpError(
            f"{root}: no memory between the reserved start and the scratch area: "
            "the release counters cannot be met exactly"
        )


def _plan_chunks(
    copied: dict[str, Extent],
    rmo_src: int,
    rmo_len: int,
    r0: int,
    mem_end: int,
    chunk_size: int,
    excluded: IntervalSet,
) -> list[Chunk]:
    """The register save area whole, then the HPTEs, the low memory copy and the
    reserved memory in chunks of ``chunk_size``, without the ``excluded`` pages."""
    chunks: list[Chunk] = []

    def add(kind: str, start: int, end: int, dst0: int, base: int) -> None:
        for x, y in kept_pieces(start, end, excluded, dst0 - base):
            for a, b in _split(x, y, chunk_size):
                chunks.append(Chunk(len(chunks), kind, a, dst0 + a - base, b - a))

    cpu = copied["cpu"]
    if cpu.size:
        chunks.append(Chunk(0, "cpu", cpu.addr, 0, cpu.size))
    hpte = copied["hpte"]
    for a, b in _split(hpte.addr, hpte.end, chunk_size):
        chunks.append(Chunk(len(chunks), "hpte", a, a - hpte.addr, b - a))
    rmo = copied["rmo"]
    add("rmo", rmo.addr, rmo.addr + rmo_len, rmo_src, rmo.addr)
    add("mem", r0, mem_end, r0, r0)
    return chunks


def _early_bounds(
    excluded: IntervalSet, r0: int, mem_end: int, ps: int, chunk_size: int
) -> set[int]:
    """Write boundaries that give each excluded run of a chunk or more a write of its
    own, made before any chunk is read, one page short of its end: the faithful
    kernel frees one page past a write, so the write frees the run and nothing
    after it. Shorter runs go back with the chunk-size span they are in: each
    write costs the kernel a memory-block update and the collector two journal
    syncs, so thousands of tiny writes would cost more time than they give back."""
    bounds: set[int] = set()
    for a, b in excluded.intersect(r0, mem_end):
        if b - a >= max(chunk_size, 2 * ps):
            bounds.update((a, b - ps))
    return bounds


def _release_pieces(
    root: str,
    chunks: list[Chunk],
    sections: dict[str, Extent],
    reserved: Extent,
    memory: int,
    early: set[int],
    grid: range,
) -> list[tuple[int, int, bool]]:
    """(address, size, in the scratch area) of each release write, checked to add
    up to the reserved memory and the scratch area exactly."""
    r0 = reserved.addr
    scratch_size = sum(e.size for e in sections.values())
    # The reserved memory: one write per chunk-size span (what one chunk covers
    # when nothing is left out) and per long excluded run, the last one running
    # to the RESERVED end (into the CPU section's first page); all start below
    # the scratch area, so they count only in the reserved counter. A span whose
    # pages a dump level left out in part is released when its kept chunks are
    # durable: one write for many short runs, not one each.
    pieces: list[tuple[int, int, bool]] = []
    mem_chunks = [c for c in chunks if c.kind == "mem"]
    if mem_chunks or early:
        starts = {r0, *grid, *early}
        bounds = [*sorted(b for b in starts if r0 <= b < reserved.end), reserved.end]
        pieces += [(a, b - a, False) for a, b in itertools.pairwise(bounds)]
    elif reserved.size:
        pieces.append((r0, reserved.size, False))
    # The scratch area: the sections' full registered lengths, each once.
    pieces.append((sections["cpu"].addr, sections["cpu"].size, True))
    for kind in ("hpte", "rmo"):
        sbounds = [c.src for c in chunks if c.kind == kind] or [sections[kind].addr]
        sbounds[0] = sections[kind].addr
        for a, b in zip(sbounds, [*sbounds[1:], sections[kind].end], strict=True):
            pieces.append((a, b - a, True))
    pieces = [p for p in pieces if p[1] > 0]
    total = sum(p[1] for p in pieces)
    in_scratch = sum(p[1] for p in pieces if p[2])
    want_total = memory - r0 if reserved.size else total
    if in_scratch != scratch_size or (reserved.size and total != reserved.size + scratch_size):
        raise HvdumpError(
            f"{root}: internal error: planned releases add up to {total:#x} "
            f"({in_scratch:#x} in the scratch area), expected {want_total:#x}"
        )
    area = ReleaseArea(r0, memory - r0, sections["cpu"].addr, scratch_size)
    for addr, size, is_scratch in pieces:
        if counts_in_scratch(addr, area) != is_scratch:
            raise HvdumpError(
                f"{root}: cannot plan an exact release: write {Extent(addr, size)} would "
                f"count {'outside' if is_scratch else 'inside'} the scratch area"
            )
    return pieces


def make_plan(
    root: str,
    header: DumpHeader,
    rmap: ReleaseMap,
    *,
    page_size: int,
    memory: int,
    chunk_size: int,
    excluded: IntervalSet | None = None,
) -> Plan:
    """The plan for the dump the hypervisor's ``header`` and the kernel's release map
    ``rmap`` describe (under the capture root ``root``, for messages); refuses layouts
    it cannot release exactly."""
    ps = page_size
    if chunk_size % ps or chunk_size <= 0:
        raise HvdumpError(f"chunk size {chunk_size:#x} is not a multiple of the page size {ps:#x}")
    reserved = rmap.reserved
    r0 = reserved.addr
    sections = {
        "cpu": Extent(header.cpu.destination_address, header.cpu.source_length),
        "hpte": Extent(header.hpte.destination_address, header.hpte.source_length),
        "rmo": Extent(header.rmo.destination_address, header.rmo.source_length),
    }
    copied = {
        "cpu": Extent(header.cpu.destination_address, header.cpu.length_copied),
        "hpte": Extent(header.hpte.destination_address, header.hpte.length_copied),
        "rmo": Extent(header.rmo.destination_address, header.rmo.length_copied),
    }
    _check_layout(root, sections, reserved, memory, ps)
    scratch = Extent(sections["cpu"].addr, sum(e.size for e in sections.values()))
    mem_end = page_down(min(reserved.end, scratch.addr), ps)
    rmo_len = page_down(copied["rmo"].size, ps)
    warnings = []
    if rmo_len != copied["rmo"].size:
        warnings.append(
            f"low memory copy ends inside a page ({copied['rmo'].size:#x} bytes); the last "
            "partial page is left out"
        )
    excluded = IntervalSet() if excluded is None else excluded
    rmo_src = header.rmo.source_address
    chunks = _plan_chunks(copied, rmo_src, rmo_len, r0, mem_end, chunk_size, excluded)
    needed = IntervalSet()
    for ext in copied.values():
        needed.add(ext.addr, ext.end)
    needed.add(r0, mem_end)
    # What the level leaves out needs no saving: in place, and in the low-memory copy.
    left_out = IntervalSet(excluded.intersect(r0, mem_end))
    for a, b in excluded.intersect(rmo_src, rmo_src + rmo_len):
        left_out.add(a, b)
        needed.remove(a - rmo_src + copied["rmo"].addr, b - rmo_src + copied["rmo"].addr)
    for a, b in excluded.intersect(r0, mem_end):
        needed.remove(a, b)
    early = _early_bounds(excluded, r0, mem_end, ps, chunk_size)
    grid = range(r0, mem_end, chunk_size)
    pieces = _release_pieces(root, chunks, sections, reserved, memory, early, grid)
    area = ReleaseArea(r0, memory - r0, scratch.addr, scratch.size)
    data = dump_data(r0, reserved.end, [(ext.addr, ext.size) for ext in copied.values()])
    writes, order = _observable_writes(pieces, chunks, needed, data, area, ps)
    segments = []
    if rmo_len:
        segments.append((header.rmo.source_address, rmo_len))
    if mem_end > r0:
        segments.append((r0, mem_end - r0))
    return Plan(
        page_size=ps,
        memory=memory,
        reserved=reserved,
        scratch=scratch,
        sections=sections,
        copied=copied,
        chunks=chunks,
        writes=writes,
        needed=needed,
        segments=segments,
        warnings=warnings,
        excluded=left_out,
        order=order,
    )

"""What to read, where it goes, and which release writes to make, decided before any I/O.

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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from drgn_hvdump.capture.base import DumpState
from drgn_hvdump.errors import HvdumpError
from drgn_hvdump.formats.release_region import Extent

__all__ = ["Chunk", "Intervals", "Plan", "ReleaseWrite", "make_plan"]


class Intervals:
    """A set of integers as sorted disjoint half-open ranges."""

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for a, b in ranges:
            self.add(a, b)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._ends, strict=True))

    def total(self) -> int:
        return sum(b - a for a, b in self)

    def add(self, a: int, b: int) -> None:
        if b <= a:
            return
        i = bisect.bisect_left(self._ends, a)
        j = bisect.bisect_right(self._starts, b)
        if i < j:
            a = min(a, self._starts[i])
            b = max(b, self._ends[j - 1])
        self._starts[i:j] = [a]
        self._ends[i:j] = [b]

    def remove(self, a: int, b: int) -> None:
        pieces = [(x, y) for x, y in self if y <= a or x >= b]
        for x, y in self:
            if x < a < y:
                pieces.append((x, a))
            if x < b < y:
                pieces.append((b, y))
        self._starts, self._ends = [], []
        for x, y in sorted(pieces):
            self.add(x, y)

    def intersect(self, a: int, b: int) -> list[tuple[int, int]]:
        out = []
        i = bisect.bisect_right(self._ends, a)
        while i < len(self._starts) and self._starts[i] < b:
            lo, hi = max(a, self._starts[i]), min(b, self._ends[i])
            if lo < hi:
                out.append((lo, hi))
            i += 1
        return out

    def contains(self, a: int, b: int) -> bool:
        if b <= a:
            return True
        i = bisect.bisect_right(self._starts, a) - 1
        return i >= 0 and self._ends[i] >= b


@dataclass(frozen=True)
class Chunk:
    """One unit of read, checksum, write, fsync, verify and journal.

    ``kind`` is ``cpu``/``hpte`` (metadata files, ``dst`` = offset in the file)
    or ``rmo``/``mem`` (crashed memory, ``dst`` = its physical address).
    ``src`` is the physical address in ``/proc/vmcore``.
    """

    index: int
    kind: str
    src: int
    dst: int
    size: int

    @property
    def src_end(self) -> int:
        return self.src + self.size


@dataclass(frozen=True)
class ReleaseWrite:
    """One ``ADDR SIZE`` write to release_region and the pages it may free."""

    index: int
    addr: int
    size: int
    span: tuple[int, int]
    scratch: bool

    @property
    def extent(self) -> Extent:
        return Extent(self.addr, self.size)


@dataclass
class Plan:
    """The whole collection decided up front (see the module docstring)."""

    page_size: int
    memory: int
    reserved: Extent
    scratch: Extent
    sections: dict[str, Extent]
    copied: dict[str, Extent]
    chunks: list[Chunk]
    writes: list[ReleaseWrite]
    needed: Intervals
    segments: list[tuple[int, int]]
    warnings: list[str] = field(default_factory=list)

    @property
    def reserved_bytes(self) -> int:
        return self.memory - self.reserved.addr

    def write_is_safe(self, w: ReleaseWrite, durable: Intervals) -> bool:
        """Whether every needed byte in the pages ``w`` may free is durable."""
        return all(durable.contains(a, b) for a, b in self.needed.intersect(*w.span))

    def read_bytes(self) -> int:
        return sum(c.size for c in self.chunks)


def _page_down(x: int, ps: int) -> int:
    return x // ps * ps


def _page_up(x: int, ps: int) -> int:
    return -(-x // ps) * ps


def _span(addr: int, size: int, reserved: Extent, memory: int, ps: int) -> tuple[int, int]:
    """Pages a write may free: the faithful kernel's (from the start's page, size//ps + 1
    pages, the start clamped up to the reserved area) and a corrected kernel's (the
    pages the range touches), together."""
    start = max(addr, reserved.addr)
    first = _page_down(start, ps)
    end_faithful = first + (size // ps + 1) * ps
    end_touch = _page_up(addr + size, ps)
    return first, min(max(end_faithful, end_touch), memory)


def _split(start: int, end: int, step: int) -> list[tuple[int, int]]:
    return [(a, min(a + step, end)) for a in range(start, end, step)]


def make_plan(state: DumpState, *, page_size: int, memory: int, chunk_size: int) -> Plan:
    """The plan for the dump ``state`` describes; refuses layouts it cannot release exactly."""
    header, rmap = state.header, state.release_map
    if header is None or rmap is None:
        raise HvdumpError(f"{state.root}: no usable dump: {state.reason}")
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
    scratch_addr = sections["cpu"].addr
    scratch_size = sum(e.size for e in sections.values())
    scratch = Extent(scratch_addr, scratch_size)
    where = "dump header (ibm,kernel-dump)"
    if r0 % ps:
        raise HvdumpError(f"{state.root}: reserved area start {r0:#x} is not page aligned")
    prev_end = scratch_addr
    for name, ext in sections.items():
        if ext.addr != prev_end:
            raise HvdumpError(
                f"{where}: {name} section at {ext.addr:#x}, expected {prev_end:#x} "
                "(sections follow each other in the scratch area)"
            )
        prev_end = ext.end
    if scratch_addr < r0 or scratch.end > memory:
        raise HvdumpError(
            f"{where}: scratch area {scratch} is outside the reserved memory {r0:#x}-{memory:#x}"
        )
    if scratch_addr % ps:
        raise HvdumpError(f"{where}: scratch area start {scratch_addr:#x} is not page aligned")
    if reserved.end > scratch_addr + ps or reserved.end < scratch_addr - ps:
        raise HvdumpError(
            f"{state.root}: release map: RESERVED ends at {reserved.end:#x}, but the scratch "
            f"area starts at {scratch_addr:#x}"
        )
    if reserved.size and r0 >= scratch_addr:
        raise HvdumpError(
            f"{state.root}: no memory between the reserved start and the scratch area: "
            "the release counters cannot be met exactly"
        )
    mem_end = _page_down(min(reserved.end, scratch_addr), ps)
    rmo_len = _page_down(copied["rmo"].size, ps)
    warnings = []
    if rmo_len != copied["rmo"].size:
        warnings.append(
            f"low memory copy ends inside a page ({copied['rmo'].size:#x} bytes); the last "
            "partial page is left out"
        )
    chunks: list[Chunk] = []

    def add(kind: str, start: int, end: int, dst0: int, base: int) -> None:
        for a, b in _split(start, end, chunk_size):
            chunks.append(Chunk(len(chunks), kind, a, dst0 + a - base, b - a))

    cpu = copied["cpu"]
    if cpu.size:
        chunks.append(Chunk(0, "cpu", cpu.addr, 0, cpu.size))
    hpte = copied["hpte"]
    add("hpte", hpte.addr, hpte.end, 0, hpte.addr)
    rmo = copied["rmo"]
    add("rmo", rmo.addr, rmo.addr + rmo_len, header.rmo.source_address, rmo.addr)
    add("mem", r0, mem_end, r0, r0)

    needed = Intervals()
    for ext in copied.values():
        needed.add(ext.addr, ext.end)
    needed.add(r0, mem_end)

    writes: list[ReleaseWrite] = []

    def write(addr: int, size: int, is_scratch: bool) -> None:
        if size > 0:
            span = _span(addr, size, reserved, memory, ps)
            writes.append(ReleaseWrite(len(writes), addr, size, span, is_scratch))

    # The reserved memory: one write per memory chunk, the last one running to
    # the RESERVED end (into the CPU section's first page); all start below the
    # scratch area, so they count only in the reserved counter.
    mem_chunks = [c for c in chunks if c.kind == "mem"]
    if mem_chunks:
        bounds = [c.src for c in mem_chunks] + [reserved.end]
        for a, b in itertools.pairwise(bounds):
            write(a, b - a, False)
    else:
        write(r0, reserved.size, False)
    # The scratch area: the sections' full registered lengths, each once.
    write(sections["cpu"].addr, sections["cpu"].size, True)
    hpte_bounds = [c.src for c in chunks if c.kind == "hpte"] or [sections["hpte"].addr]
    hpte_bounds[0] = sections["hpte"].addr
    for a, b in zip(hpte_bounds, [*hpte_bounds[1:], sections["hpte"].end], strict=True):
        write(a, b - a, True)
    rmo_bounds = [c.src for c in chunks if c.kind == "rmo"] or [sections["rmo"].addr]
    rmo_bounds[0] = sections["rmo"].addr
    for a, b in zip(rmo_bounds, [*rmo_bounds[1:], sections["rmo"].end], strict=True):
        write(a, b - a, True)
    total = sum(w.size for w in writes)
    in_scratch = sum(w.size for w in writes if w.scratch)
    want_total = memory - r0 if reserved.size else total
    if in_scratch != scratch_size or (reserved.size and total != reserved.size + scratch_size):
        raise HvdumpError(
            f"{state.root}: internal error: planned releases add up to {total:#x} "
            f"({in_scratch:#x} in the scratch area), expected {want_total:#x}"
        )
    for w in writes:
        in_area = scratch_addr <= w.addr <= scratch.end
        if in_area != w.scratch:
            raise HvdumpError(
                f"{state.root}: cannot plan an exact release: write {w.extent} would count "
                f"{'outside' if w.scratch else 'inside'} the scratch area"
            )
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
    )

"""A collection decided before any I/O: what to read, where it goes, which releases to make.

Each capture interface plans its own dump (:meth:`CaptureInterface.plan
<drgn_hvdump.capture.base.CaptureInterface.plan>`; phyp:
:mod:`drgn_hvdump.capture.phyp_plan`); the collector carries a :class:`Plan`
out whatever the interface: chunks are read, checksummed, written, fsynced,
verified and journaled in index order, and each :class:`ReleaseWrite` is made,
in :attr:`Plan.order`, once every chunk it waits for is durable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from drgn_hvdump.capture.vmcore import Vmcore
from drgn_hvdump.formats.release_region import Extent
from drgn_hvdump.intervals import IntervalSet

__all__ = ["Chunk", "Plan", "ReleaseWrite", "checked_against", "kept_pieces"]


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
    """One ``ADDR SIZE`` write to release_region and the pages it may free.

    ``new_pages`` is how many pages the write newly frees when the writes are
    made in the plan's order (``Plan.order``), under the faithful kernel and
    under a corrected one: what ``MemTotal`` must grow by (see
    :func:`drgn_hvdump.model.release.simulate_frees`). ``ready`` is the index of
    the last chunk that must be durable first (-1: none).
    """

    index: int
    addr: int
    size: int
    span: tuple[int, int]
    scratch: bool
    ready: int = -1
    new_pages: tuple[int, int] = (0, 0)

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
    needed: IntervalSet
    segments: list[tuple[int, int]]
    warnings: list[str] = field(default_factory=list)
    excluded: IntervalSet = field(default_factory=IntervalSet)
    """The crashed kernel's memory the dump level leaves out (physical addresses):
    in no chunk, released without being saved."""
    # The order the writes are made in, always (a run's done writes are a
    # prefix of it); the last one re-registers the dump.
    order: list[int] = field(default_factory=list)

    @property
    def reserved_bytes(self) -> int:
        return self.memory - self.reserved.addr

    def write_is_safe(self, w: ReleaseWrite, durable: IntervalSet) -> bool:
        """Whether every needed byte in the pages ``w`` may free is durable."""
        return all(durable.contains(a, b) for a, b in self.needed.intersect(*w.span))

    def read_bytes(self) -> int:
        return sum(c.size for c in self.chunks)

    def kept_segments(self) -> list[tuple[int, int]]:
        """``(address, size)`` of the memory the dump holds: the segments without
        what the dump level leaves out."""
        return [
            (a, b - a)
            for start, size in self.segments
            for a, b in kept_pieces(start, start + size, self.excluded)
        ]


def kept_pieces(
    start: int, end: int, excluded: IntervalSet, delta: int = 0
) -> list[tuple[int, int]]:
    """``[start, end)`` without what ``excluded`` holds, where ``excluded`` is in
    addresses ``delta`` above ``start``'s (the crashed kernel's, for a copy)."""
    out: list[tuple[int, int]] = []
    pos = start
    for a, b in excluded.intersect(start + delta, end + delta):
        if a - delta > pos:
            out.append((pos, a - delta))
        pos = b - delta
    if pos < end:
        out.append((pos, end))
    return out


def checked_against(plan: Plan, vm: Vmcore) -> Plan:
    """``plan`` after checking that every chunk it reads is in the vmcore ``vm``."""
    for ch in plan.chunks:
        vm.file_offset(ch.src, ch.size)
    return plan

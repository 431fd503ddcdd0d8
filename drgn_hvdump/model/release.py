"""What a write of ``ADDR SIZE`` to ``/sys/kernel/release_region`` does.

The capture kernel reserves ``[start, end of RAM)`` (:class:`ReleaseArea`);
the scratch area the hypervisor saved into lies at its top. A write hands
pages back to the page allocator and adds to two counters; when the
counters equal the area's sizes the kernel invalidates the dump and
registers again. Two kernels are modelled (see the shared reference notes,
``phyp-dump-kernel.md``, "sysfs" and "Quirks"):

faithful (Linux 2.6, :func:`faithful_release`)
    the start clamped up to the area, the length kept and then cut at its
    end (a start past the end underflows: nothing is freed); pages from the
    start's page through ``length // page_size`` pages further, *inclusive*
    (one page past the end of the range). The counters add every write's
    unclamped length (:class:`ReleaseCounters`) and are compared for exact
    equality (:func:`reregisters`).
corrected (:func:`corrected_release`)
    a page goes back once no byte of the dump's data in it is unreleased;
    the dump ends when no byte is.

Every function is pure: sets passed in are not changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from drgn_hvdump.intervals import IntervalSet
from drgn_hvdump.model.pages import page_down, page_span, page_up

__all__ = [
    "U64_MASK",
    "CorrectedRelease",
    "FaithfulRelease",
    "ReleaseArea",
    "ReleaseCounters",
    "corrected_free_pages",
    "corrected_release",
    "counts_in_reserved",
    "counts_in_scratch",
    "dump_data",
    "faithful_release",
    "release_span",
    "reregisters",
    "simulate_frees",
]

U64_MASK = (1 << 64) - 1
"""The counters are ``unsigned long``: they wrap at 2**64."""


@dataclass(frozen=True)
class ReleaseArea:
    """The capture kernel's reservation: ``[start, start + size)``, to the end of RAM.

    ``start``/``size`` are the kernel's ``init_reserve_start`` and
    ``init_reserve_size``; ``scratch_addr``/``scratch_size`` the scratch
    area (the three sections' registered lengths added up). The release map's
    RESERVED pair is ``start`` and ``size - scratch_size``.
    """

    start: int
    size: int
    scratch_addr: int
    scratch_size: int

    @property
    def end(self) -> int:
        """The end of the reservation (the end of RAM)."""
        return self.start + self.size


def counts_in_reserved(addr: int, area: ReleaseArea) -> bool:
    """Whether a write at ``addr`` adds to the reserved counter (``start <= addr <= end``)."""
    return area.start <= addr <= area.end


def counts_in_scratch(addr: int, area: ReleaseArea) -> bool:
    """Whether a write at ``addr`` adds to the scratch counter (its start is in the
    reservation and in ``[scratch_addr, scratch_addr + scratch_size]``, both ends included)."""
    return addr >= area.start and area.scratch_addr <= addr <= area.scratch_addr + area.scratch_size


@dataclass(frozen=True)
class ReleaseCounters:
    """The faithful kernel's naive released-bytes counters (``track_freed_range``)."""

    reserved: int = 0
    scratch: int = 0

    def count(self, addr: int, size: int, area: ReleaseArea) -> ReleaseCounters:
        """The counters after a write of ``addr size``: its unclamped ``size`` added to each
        counter whose test the start passes, modulo 2**64."""
        reserved, scratch = self.reserved, self.scratch
        if counts_in_reserved(addr, area):
            reserved = (reserved + size) & U64_MASK
        if counts_in_scratch(addr, area):
            scratch = (scratch + size) & U64_MASK
        return ReleaseCounters(reserved, scratch)

    def complete(self, area: ReleaseArea) -> bool:
        """Exact equality with the reservation's and the scratch area's sizes."""
        return self.reserved == area.size and self.scratch == area.scratch_size


def reregisters(addr: int, counters: ReleaseCounters, area: ReleaseArea) -> bool:
    """Whether the faithful kernel re-registers after a write at ``addr`` left ``counters``
    (the test runs only for a start inside the reservation)."""
    return addr >= area.start and counters.complete(area)


class FaithfulRelease(NamedTuple):
    """What the faithful kernel does with one write's range.

    ``start``/``length``: the range after clamping (``length`` is None when the
    kernel's unsigned length underflows); ``freed``: the bytes ``[first, end)``
    of the page frames it hands back (pages already free are skipped by the
    kernel), None when nothing.
    """

    start: int
    length: int | None
    clamped: bool
    freed: tuple[int, int] | None

    @property
    def underflow(self) -> bool:
        """The start was past the end of the reservation: nothing freed."""
        return self.length is None


def faithful_release(addr: int, size: int, area: ReleaseArea, page_size: int) -> FaithfulRelease:
    """The faithful kernel's clamping and the page frames it frees, first to last inclusive."""
    start, length, clamped = addr, size, False
    if start < area.start:
        start, clamped = area.start, True
    if start + length > area.end:
        clamped = True
        if start > area.end:
            return FaithfulRelease(start, None, clamped, None)
        length = area.end - start
    first = page_down(start, page_size)
    last_end = first + (length // page_size + 1) * page_size
    return FaithfulRelease(start, length, clamped, (first, min(last_end, area.end)))


class CorrectedRelease(NamedTuple):
    """What a corrected kernel does with one write: the dump data still unreleased
    after it, the pages it frees, and whether the dump is complete (none left)."""

    unreleased: IntervalSet
    pages: list[tuple[int, int]]

    @property
    def complete(self) -> bool:
        return not self.unreleased


def corrected_free_pages(
    addr: int, size: int, unreleased: IntervalSet, page_size: int
) -> list[tuple[int, int]]:
    """The whole pages ``[addr, addr + size)`` touches that hold no ``unreleased`` byte.

    ``unreleased`` is the dump data still unreleased *after* the write.
    """
    lo, hi = page_span(addr, addr + size, page_size)
    candidates = IntervalSet([(lo, hi)])
    for a, b in unreleased.intersect(lo, hi):
        candidates.remove(*page_span(a, b, page_size))
    return list(candidates)


def corrected_release(
    addr: int, size: int, unreleased: IntervalSet, page_size: int
) -> CorrectedRelease:
    """A corrected kernel's release: a page goes back once none of its dump bytes is
    unreleased (a page two sections share goes back with the second)."""
    left = unreleased.copy()
    left.remove(addr, addr + size)
    return CorrectedRelease(left, corrected_free_pages(addr, size, left, page_size))


def dump_data(
    reserved_start: int, reserved_end: int, copied: Iterable[tuple[int, int]]
) -> IntervalSet:
    """The dump's data in the reservation: the release map's RESERVED extent and the
    bytes copied into each section (``(destination, length copied)`` pairs), clipped
    to start at ``reserved_start``."""
    data = IntervalSet([(reserved_start, reserved_end)])
    for dest, length in copied:
        data.add(max(dest, reserved_start), dest + length)
    return data


def release_span(addr: int, size: int, area: ReleaseArea, page_size: int) -> tuple[int, int]:
    """Pages a write may free under either kernel, together: the faithful kernel's (from
    the clamped start's page, ``size // page_size + 1`` pages) and the pages the range
    touches, cut at the end of RAM."""
    first = page_down(max(addr, area.start), page_size)
    end_faithful = first + (size // page_size + 1) * page_size
    end_touch = page_up(addr + size, page_size)
    return first, min(max(end_faithful, end_touch), area.end)


def simulate_frees(
    writes: Sequence[tuple[int, int]], data: IntervalSet, area: ReleaseArea, page_size: int
) -> list[tuple[int, int]]:
    """Pages each write newly frees, made in this order: ``(faithful, corrected)``.

    ``data`` is the dump's data (:func:`dump_data`). Pages already free are
    not counted: the kernel skips them, and ``MemTotal`` grows by exactly the
    pages a write frees.
    """
    free_f = IntervalSet([(area.start, area.end)])
    free_c = free_f.copy()
    unreleased = data.copy()
    out: list[tuple[int, int]] = []
    for addr, size in writes:
        faithful = faithful_release(addr, size, area, page_size)
        corrected = corrected_release(addr, size, unreleased, page_size)
        unreleased = corrected.unreleased
        spans = [faithful.freed] if faithful.freed is not None else []
        n_f = sum(_take(free_f, spans)) // page_size
        n_c = sum(n // page_size for n in _take(free_c, corrected.pages))
        out.append((n_f, n_c))
    return out


def _take(free: IntervalSet, ranges: Iterable[tuple[int, int]]) -> list[int]:
    """Remove ``ranges`` from ``free`` (changed in place); the sizes of the pieces taken."""
    taken: list[int] = []
    for x, y in ranges:
        for a, b in free.intersect(x, y):
            free.remove(a, b)
            taken.append(b - a)
    return taken

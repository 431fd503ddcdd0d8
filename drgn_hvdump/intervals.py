"""Sets of addresses held as sorted, disjoint half-open ranges.

Used for what a dump holds, what was released, what is durable: by the
collector and by the simulator alike.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence

__all__ = ["IntervalSet"]


class IntervalSet:
    """A set of integers held as sorted, disjoint, non-adjacent half-open ranges."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, ranges: Iterable[tuple[int, int] | Sequence[int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for r in ranges:
            self.add(int(r[0]), int(r[1]))

    @classmethod
    def from_sorted(cls, ranges: Iterable[tuple[int, int]]) -> IntervalSet:
        """The set of ``ranges`` given in ascending, non-overlapping order (touching ones
        merge): one pass, no search; a range out of order is a ValueError."""
        out = cls()
        starts, ends = out._starts, out._ends
        for a, b in ranges:
            if b <= a:
                continue
            if ends and a < ends[-1]:
                raise ValueError(
                    f"range [{a:#x}, {b:#x}) is not after [{starts[-1]:#x}, {ends[-1]:#x})"
                )
            if ends and a == ends[-1]:
                ends[-1] = b
            else:
                starts.append(a)
                ends.append(b)
        return out

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._ends, strict=True))

    def __len__(self) -> int:
        return len(self._starts)

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IntervalSet):
            return NotImplemented
        return self._starts == other._starts and self._ends == other._ends

    def __repr__(self) -> str:
        return "IntervalSet([" + ", ".join(f"({a:#x}, {b:#x})" for a, b in self) + "])"

    def copy(self) -> IntervalSet:
        """An independent copy."""
        out = IntervalSet()
        out._starts = list(self._starts)
        out._ends = list(self._ends)
        return out

    def total(self) -> int:
        """How many integers the set holds (bytes, for memory ranges)."""
        return sum(e - s for s, e in self)

    def to_json(self) -> list[list[int]]:
        """``[[start, end], ...]``."""
        return [[s, e] for s, e in self]

    def add(self, start: int, end: int) -> None:
        """Add ``[start, end)``, merging with touching ranges."""
        if end <= start:
            return
        i = bisect.bisect_left(self._ends, start)  # first range ending at/after start
        j = bisect.bisect_right(self._starts, end)  # ranges starting at/before end merge
        if i < j:
            start = min(start, self._starts[i])
            end = max(end, self._ends[j - 1])
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]

    def remove(self, start: int, end: int) -> None:
        """Remove ``[start, end)``."""
        if end <= start:
            return
        i = bisect.bisect_right(self._ends, start)  # first range ending after start
        j = bisect.bisect_left(self._starts, end)  # ranges starting before end overlap
        if i >= j:
            return
        new_s: list[int] = []
        new_e: list[int] = []
        if self._starts[i] < start:
            new_s.append(self._starts[i])
            new_e.append(start)
        if self._ends[j - 1] > end:
            new_s.append(end)
            new_e.append(self._ends[j - 1])
        self._starts[i:j] = new_s
        self._ends[i:j] = new_e

    def without(self, other: Iterable[tuple[int, int]]) -> IntervalSet:
        """A copy of the set without the ranges of ``other``."""
        out = self.copy()
        for a, b in other:
            out.remove(a, b)
        return out

    def intersect(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of ``[start, end)`` in the set, in order (none for an empty range)."""
        out: list[tuple[int, int]] = []
        if end <= start:
            return out
        i = bisect.bisect_right(self._ends, start)
        n = len(self._starts)
        while i < n and self._starts[i] < end:
            out.append((max(start, self._starts[i]), min(end, self._ends[i])))
            i += 1
        return out

    def contains(self, start: int, end: int) -> bool:
        """Whether all of ``[start, end)`` is in the set."""
        if end <= start:
            return True
        i = bisect.bisect_right(self._ends, start)
        return i < len(self._starts) and self._starts[i] <= start and end <= self._ends[i]

    def overlaps(self, start: int, end: int) -> bool:
        """Whether any of ``[start, end)`` is in the set (an empty range never is)."""
        if end <= start:
            return False
        i = bisect.bisect_right(self._ends, start)
        return i < len(self._starts) and self._starts[i] < end

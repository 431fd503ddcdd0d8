"""A collection's dump level: deciding what it leaves out, once, and keeping the decision.

Before the plan is made, every page the dump holds is decided from its
``struct page`` (:func:`drgn_hvdump.model.mem_sections.exclusions`); the
plan then reads only the kept pages, and releases the excluded ones without
saving them. The decision goes into the journal's ``start`` record (bound to
the dump's identity, fsynced before any release): a rerun takes it from
there, since the memory holding the ``struct page`` arrays may be released
by then. A level the kernel's VMCOREINFO cannot serve is lowered to the
highest one it can, with one line saying why.
"""

from __future__ import annotations

import base64
import zlib
from array import array
from collections.abc import Callable, Iterable
from typing import Any, Literal

from drgn_hvdump import native
from drgn_hvdump.collect.progress import Progress
from drgn_hvdump.errors import HvdumpError
from drgn_hvdump.intervals import IntervalSet
from drgn_hvdump.model.mem_sections import Exclusions, MemoryModel, ReadFn, exclusions
from drgn_hvdump.model.page_types import DL_ZERO, describe_level, possible_level

__all__ = ["decide_exclusions", "exclusions_from_record", "exclusions_record", "reader_for"]


def decide_exclusions(
    level: int,
    info: dict[str, str],
    byteorder: Literal["big", "little"],
    page_size: int,
    pfn_ranges: Iterable[tuple[int, int]],
    read: ReadFn,
    progress: Progress | None,
    warnings: list[str],
) -> Exclusions | None:
    """What ``level`` leaves out of the pages in ``pfn_ranges``; None when it leaves out
    nothing but zero pages (no ``struct page`` is read then)."""
    usable, missing = possible_level(info, level)
    if usable != level:
        warnings.append(
            f"dump level {level} lowered to {describe_level(usable)}: the crashed kernel's "
            f"VMCOREINFO lacks {', '.join(missing)}"
        )
        if progress is not None:
            progress.message(f"warning: {warnings[-1]}")
    if usable & ~DL_ZERO == 0:
        return None
    ranges = list(pfn_ranges)
    total = sum(b - a for a, b in ranges)
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress.event("exclude", pages_done=done[0], pages_total=total)

    try:
        model = MemoryModel(info, byteorder, read, page_size)
        return exclusions(model, usable, ranges, tick, native.decide_pages)
    except HvdumpError as exc:
        raise HvdumpError(
            f"dump level {level}: cannot decide page types: {exc}; collect with "
            "--dump-level 1 (zero pages only)"
        ) from None


def exclusions_record(excl: Exclusions) -> dict[str, Any]:
    """The journal's form: the level, the counts, the PFN ranges packed (zlib, base64)."""
    flat = array("Q", (v for r in excl.pfns for v in r))
    packed = zlib.compress(flat.tobytes(), 6)
    return {
        "level": excl.level,
        "counts": dict(excl.counts),
        "pfns": base64.b64encode(packed).decode("ascii"),
    }


def exclusions_from_record(rec: dict[str, Any], where: str) -> Exclusions:
    """The inverse of :func:`exclusions_record`; one line naming ``where`` if damaged."""
    try:
        flat = array("Q")
        flat.frombytes(zlib.decompress(base64.b64decode(rec["pfns"], validate=True)))
        pairs = list(zip(flat[0::2], flat[1::2], strict=True))
        excl = Exclusions(int(rec["level"]), IntervalSet(pairs))
        excl.counts.update({str(k): int(v) for k, v in rec["counts"].items()})
    except (KeyError, TypeError, ValueError, zlib.error) as exc:
        raise HvdumpError(
            f"{where}: the journaled dump-level decision is damaged ({exc}); use another "
            "--output directory"
        ) from None
    return excl


def reader_for(chunk_reader: Callable[[int, int], bytes | None]) -> ReadFn:
    """A :data:`ReadFn` that says which address the dump does not hold."""

    def read(paddr: int, size: int) -> bytes:
        data = chunk_reader(paddr, size)
        if data is None:
            raise HvdumpError(f"memory {paddr:#x}+{size:#x} is not in the dump")
        return data

    return read

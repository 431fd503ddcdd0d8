"""The crashed kernel's physical memory, laid out: what is where after a capture boot.

A capture kernel overwrote the low memory it booted in; the firmware saved
(some of) it into a section of the scratch area; the rest of RAM below the
scratch area is still in place; the scratch area itself holds the
firmware's sections, not memory the crashed kernel used. :class:`Region`
says, for one range of the crashed kernel's physical addresses, where its
bytes are now, or why they are gone. One definition, used by the capture
interfaces (live roots) and the drgn plugin (copies and collected dumps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Region", "RegionKind", "saved_low_map"]

RegionKind = Literal["saved-low", "memory", "lost", "scratch"]


@dataclass(frozen=True)
class Region:
    """``[start, end)`` of the crashed kernel's physical memory and where it is now.

    ``src`` is the ``/proc/vmcore`` physical address of ``start`` for the
    readable kinds (``saved-low``: the firmware's copy; ``memory``: in
    place); ``why`` says why the other kinds cannot be read.
    """

    start: int
    end: int
    kind: RegionKind
    src: int | None = None
    why: str = ""


def saved_low_map(
    low_dest: int, low_copied: int, low_length: int, reserved: int, scratch: int, memory: int
) -> list[Region]:
    """The map of a dump whose low ``low_length`` bytes were copied to ``low_dest``
    (``low_copied`` of them), with memory in place from ``reserved`` up to the
    scratch area at ``scratch``, in RAM of ``memory`` bytes."""
    regions = [Region(0, low_copied, "saved-low", low_dest)] if low_copied else []
    if low_copied < low_length:
        regions.append(
            Region(
                low_copied,
                low_length,
                "lost",
                why=f"the hypervisor copied only {low_copied:#x} bytes of low memory "
                "(a partial dump); the rest was overwritten by the capture kernel",
            )
        )
    if low_length < reserved:
        regions.append(
            Region(
                low_length,
                reserved,
                "lost",
                why="overwritten by the capture kernel (only the low "
                f"{low_length >> 20} MiB are saved by the hypervisor)",
            )
        )
    regions.append(Region(reserved, scratch, "memory", reserved))
    regions.append(
        Region(
            scratch,
            memory,
            "scratch",
            why="the hypervisor's scratch area (saved register, HPTE and low-memory "
            "sections), not memory the crashed kernel used",
        )
    )
    return [r for r in regions if r.start < r.end]

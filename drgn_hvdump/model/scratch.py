"""The scratch area: where a registering kernel puts the sections the hypervisor saves.

Forward (:class:`ScratchLayout`, what the kernel and the hypervisor do): the
kernel reserves ``cpu + hpte + reserve_size`` bytes at the very top of RAM
and registers destinations from that start rounded down to a page: the CPU
state (the register save area, its exact size, so what follows is not page
aligned), the HPTEs (the hash table's size, :func:`hpt_size`), then the
low-memory copy (``RMO_SIZE``, 256 MiB).

Inverse (:func:`sections_from_base`, what a reader of a ``/proc/vmcore`` copy
does): given where the scratch area starts (found by the register save
area's magic, searched downwards from :func:`top_scratch_base`) and the save
area's size, the HPTE size is the largest power of two that fits, and the
sections follow. The inverse holds for the usual reserve of 256 MiB (the
low-memory copy's size).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Self

from drgn_hvdump.formats.dump_header import RMO_SIZE, DumpHeader, registration_header
from drgn_hvdump.model.pages import page_down, page_up

__all__ = [
    "MIN_HPT_SIZE",
    "ScratchLayout",
    "ScratchSections",
    "hpt_size",
    "sections_from_base",
    "top_scratch_base",
]

MIN_HPT_SIZE = 256 << 10
"""The smallest hash page table (and so HPTE section) the firmware sizes."""

_SIZE_STEP = 256 << 20


def hpt_size(memory: int) -> int:
    """The hash page table's size: RAM/128 rounded up to a power of two, at least 256 KiB."""
    want = max(memory // 128, 1)
    return max(MIN_HPT_SIZE, 1 << (want - 1).bit_length())


class ScratchSections(NamedTuple):
    """The three sections' ``(destination, length)`` in the scratch area, in order."""

    cpu: tuple[int, int]
    hpte: tuple[int, int]
    rmo: tuple[int, int]


@dataclass(frozen=True)
class ScratchLayout:
    """Where a kernel that registers for a dump puts its scratch area.

    The kernel reserves ``total = cpu + hpte + reserve_size`` bytes at the
    very top of RAM, starting at ``reserve_start = memory - total`` (not page
    aligned), and registers destinations from ``base``, that address rounded
    down to a page: CPU state, then HPTEs, then the 256 MiB low-memory copy.
    """

    memory: int
    page_size: int
    cpu_size: int
    hpte_size: int
    reserve_size: int
    rmo_size: int = RMO_SIZE

    @property
    def total(self) -> int:
        """Bytes the kernel reserves at boot (its ``init_reserve_size``)."""
        return self.cpu_size + self.hpte_size + self.reserve_size

    @property
    def reserve_start(self) -> int:
        """``init_reserve_start``: the top ``total`` bytes of RAM begin here."""
        return self.memory - self.total

    @property
    def base(self) -> int:
        """The scratch area's registered start: ``reserve_start`` rounded down to a page."""
        return page_down(self.reserve_start, self.page_size)

    @property
    def cpu_dest(self) -> int:
        return self.base

    @property
    def hpte_dest(self) -> int:
        return self.base + self.cpu_size

    @property
    def rmo_dest(self) -> int:
        return self.base + self.cpu_size + self.hpte_size

    @property
    def registered_size(self) -> int:
        """The three sections' lengths added up (the capture kernel's ``reserved_scratch_size``)."""
        return self.cpu_size + self.hpte_size + self.rmo_size

    @property
    def sections(self) -> ScratchSections:
        """The sections' destinations and registered lengths."""
        return ScratchSections(
            (self.cpu_dest, self.cpu_size),
            (self.hpte_dest, self.hpte_size),
            (self.rmo_dest, self.rmo_size),
        )

    @property
    def fits(self) -> bool:
        """Whether the scratch area lies above the capture kernel's ``[0, reserve_size)``."""
        return self.base >= self.reserve_size

    @property
    def min_memory(self) -> int:
        """The least RAM, in 256 MiB steps, that holds the capture region plus this area."""
        return page_up(self.reserve_size + self.total + self.page_size, _SIZE_STEP)

    def registration(self) -> DumpHeader:
        """The header the kernel registers for this layout."""
        return registration_header(self.cpu_size, self.hpte_size, self.rmo_size, self.base)

    def to_json(self) -> dict[str, int]:
        return {
            "memory": self.memory,
            "page_size": self.page_size,
            "cpu_size": self.cpu_size,
            "hpte_size": self.hpte_size,
            "reserve_size": self.reserve_size,
            "rmo_size": self.rmo_size,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(**{k: int(v) for k, v in data.items()})


def top_scratch_base(top: int, page_size: int, rmo_size: int = RMO_SIZE) -> int:
    """The highest page a scratch area ending by ``top`` can start at: it holds at
    least the smallest HPTE section and the low-memory copy."""
    return page_down(top - rmo_size - MIN_HPT_SIZE, page_size)


def sections_from_base(
    base: int, cpu_size: int, memory: int, rmo_size: int = RMO_SIZE
) -> ScratchSections | None:
    """The inverse of :class:`ScratchLayout`: the sections of a scratch area at ``base``
    whose CPU state is ``cpu_size`` bytes, in RAM of ``memory`` bytes; None when no
    HPTE section fits."""
    room = memory - base - cpu_size - rmo_size
    if room < MIN_HPT_SIZE:
        return None
    hpte_size = 1 << (room.bit_length() - 1)
    rmo_dest = base + cpu_size + hpte_size
    return ScratchSections((base, cpu_size), (base + cpu_size, hpte_size), (rmo_dest, rmo_size))

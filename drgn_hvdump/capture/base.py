"""The interface every capture-kernel generation implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from drgn_hvdump.capture.plan import Plan
from drgn_hvdump.capture.rootfiles import (
    BOOT_ID,
    COMMON_PROPERTIES,
    DEVICE_TREE,
    MEMINFO,
    RootTable,
)
from drgn_hvdump.capture.vmcore import Vmcore
from drgn_hvdump.errors import FormatError, HvdumpError
from drgn_hvdump.formats.dump_header import DumpHeader
from drgn_hvdump.formats.release_region import Extent, ReleaseMap

__all__ = [
    "DT_DIRS",
    "CaptureInterface",
    "DumpState",
    "NoDumpError",
    "memtotal_after",
    "read_boot_id",
    "read_memtotal",
]

DT_DIRS = DEVICE_TREE.dirs
"""Where a capture root shows the device tree."""


def read_memtotal(root: Path) -> int | None:
    """``MemTotal`` of ``ROOT/proc/meminfo`` in kB (None when the file is not there)."""
    try:
        text = (root / MEMINFO.path).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1])
    raise FormatError("no MemTotal line", path=str(root / MEMINFO.path))


def read_boot_id(root: Path) -> str | None:
    """``ROOT/proc/sys/kernel/random/boot_id``: changes at every boot (None when absent)."""
    try:
        return (root / BOOT_ID.path).read_text().strip() or None
    except OSError:
        return None


def memtotal_after(before_kb: int, new_pages: tuple[int, ...], page_size: int) -> set[int]:
    """Every ``MemTotal`` (kB) a release that frees ``n`` new pages can leave, ``n`` in ``new_pages``.

    Linux adds each freed page to ``totalram_pages``, so MemTotal grows by
    exactly ``n * page_size / 1024`` kB (hvsim models the same rule).
    """
    return {before_kb + n * page_size // 1024 for n in new_pages if n > 0}


class NoDumpError(HvdumpError):
    """No dump is waiting under the given root."""


@dataclass
class DumpState:
    """What a capture kernel says about dumps, as plain data (for ``--json`` and Ansible facts)."""

    root: str
    interface: str
    firmware_supported: bool
    dump_enabled: bool | None
    dump_waiting: bool
    header: DumpHeader | None = None
    release_map: ReleaseMap | None = None
    reserved_bytes: int = 0
    valid: bool = False
    reason: str = ""
    warnings: list[str] = field(default_factory=list)


class CaptureInterface(ABC):
    """A capture kernel's view of a waiting dump: detect it, map it, release it."""

    name: str = "?"
    #: The files of this interface's capture root (paths, modes, presence).
    ROOT_FILES: ClassVar[RootTable]

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    @abstractmethod
    def detect(cls, root: Path) -> bool:
        """Whether the kernel under ``root`` speaks this generation's interface."""

    @abstractmethod
    def state(self) -> DumpState:
        """Firmware support, whether a dump waits, its header and map, and any warnings."""

    @property
    @abstractmethod
    def vmcore_path(self) -> Path:
        """The file holding the old kernel's memory (``/proc/vmcore``)."""

    @property
    @abstractmethod
    def lock_path(self) -> Path:
        """The file whose ``flock`` makes one collector the dump's only owner."""

    def memtotal_kb(self) -> int | None:
        """The running capture kernel's ``MemTotal`` (kB): it grows by exactly the pages
        a release frees, which is how every release is confirmed."""
        return read_memtotal(self.root)

    def boot_id(self) -> str | None:
        """The running capture kernel's boot id (None where the kernel has none)."""
        return read_boot_id(self.root)

    def machine_identity(self) -> bytes:
        """What names this machine and partition in the device tree (``system-id``,
        ``ibm,partition-no``, ``ibm,partition-name``), as one byte string; empty when
        the tree has none of them. Part of a dump's identity: two LPARs of one
        kernel build and size that crash in the same second differ only here."""
        parts = []
        for prop in COMMON_PROPERTIES:
            for path in self.ROOT_FILES.paths(self.root, prop.name):
                try:
                    data = path.read_bytes()[:256]
                except OSError:
                    continue
                parts.append(prop.name.encode() + b"=" + data)
                break
        return b"\n".join(parts)

    @abstractmethod
    def plan(self, state: DumpState, vm: Vmcore, chunk_size: int) -> Plan:
        """The collection of the dump ``state`` describes, from the vmcore ``vm``: its
        chunks (each in the file) and the release writes with what each must free.
        Refuses (:class:`HvdumpError`) a dump whose memory it cannot give back exactly."""

    @abstractmethod
    def release(self, extent: Extent) -> None:
        """Give ``extent`` back to the running kernel. Its old contents are gone afterwards."""

"""The interface every capture-kernel generation implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from drgn_hvdump.capture.plan import Plan, ReleaseWrite
from drgn_hvdump.capture.rootfiles import (
    BOOT_ID,
    COMMON_PROPERTIES,
    DEVICE_TREE,
    MEMINFO,
    RootTable,
)
from drgn_hvdump.capture.vmcore import Vmcore
from drgn_hvdump.errors import FormatError, HvdumpError
from drgn_hvdump.intervals import IntervalSet
from drgn_hvdump.model.physmap import Region

__all__ = [
    "DT_DIRS",
    "CaptureInterface",
    "DumpState",
    "NoDumpError",
    "NotProtectedError",
    "Section",
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


class NotProtectedError(HvdumpError):
    """The dump is gone, but the LPAR was left unregistered on purpose (registering would
    harm the running kernel); the message says why and what to do."""


@dataclass(frozen=True)
class Section:
    """One section the firmware saved: how long it is, how much it copied, where to."""

    source_length: int
    length_copied: int
    error_flags: int
    destination_address: int


@dataclass
class DumpState:
    """What a capture kernel says about dumps, as plain data (for ``--json`` and Ansible facts).

    Whatever the interface: ``readable`` when the dump's description could be
    read (a collection can be planned), ``valid`` when the firmware saved it
    whole, ``partial`` when it saved part and what it saved can be collected
    (``--accept-partial``); ``header_raw`` is the firmware's dump header as
    saved (part of the dump's identity); ``sections`` what each section holds;
    ``description`` lines for ``hvdump status``; ``details`` the interface's
    own view as JSON data (Ansible facts); ``native`` what only the interface
    that made this state reads (its parsed header and map).
    """

    root: str
    interface: str
    firmware_supported: bool
    dump_enabled: bool | None
    dump_waiting: bool
    readable: bool = False
    header_raw: bytes = b""
    sections: dict[str, Section] = field(default_factory=dict)
    dump_bytes: int = 0
    reserved_bytes: int = 0
    valid: bool = False
    partial: bool = False
    reason: str = ""
    description: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    native: Any = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The state as JSON data (``hvdump status --json``): the fields above but
        ``native`` and ``description``, the header as hex, and ``details``' keys."""
        return {
            "root": self.root,
            "interface": self.interface,
            "firmware_supported": self.firmware_supported,
            "dump_enabled": self.dump_enabled,
            "dump_waiting": self.dump_waiting,
            "readable": self.readable,
            "valid": self.valid,
            "partial": self.partial,
            "reason": self.reason,
            "warnings": list(self.warnings),
            "reserved_bytes": self.reserved_bytes,
            "dump_bytes": self.dump_bytes,
            "header_raw": self.header_raw.hex(),
            "sections": {name: asdict(sec) for name, sec in self.sections.items()},
            "header": None,
            "release_map": None,
            **self.details,
        }


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
    def plan(
        self,
        state: DumpState,
        vm: Vmcore,
        chunk_size: int,
        excluded: IntervalSet | None = None,
    ) -> Plan:
        """The collection of the dump ``state`` describes, from the vmcore ``vm``: its
        chunks (each in the file) and the release writes with what each must free.
        ``excluded`` (the crashed kernel's physical addresses, whole pages) is left
        out of the chunks and released without being saved. Refuses
        (:class:`HvdumpError`) a dump whose memory it cannot give back exactly."""

    @abstractmethod
    def physical_map(self, state: DumpState, memory: int) -> list[Region]:
        """Where each range of the crashed kernel's memory (RAM of ``memory`` bytes) is in
        ``/proc/vmcore`` now, or why it is gone (``state`` must be readable)."""

    @abstractmethod
    def release(self, write: ReleaseWrite) -> None:
        """Make one release write of a plan. The old contents of what it frees are gone."""

    def give_up(self, state: DumpState) -> list[tuple[int, int]]:
        """Free a dump whose description cannot be read (a damaged header), without a plan:
        what the kernel itself says it holds. Returns the ``(addr, size)`` given back."""
        raise HvdumpError(f"{self.root}: cannot plan the release: {state.reason}")

    #: Whether memory can go back range by range while the dump is collected
    #: (``--release progressive``); otherwise all of it goes in the last write.
    RELEASES_PROGRESSIVELY: ClassVar[bool] = True

    def protect(self, page_size: int | None = None) -> str:
        """After the dump is gone: make sure the LPAR is registered for the next crash
        (phyp dump's kernel re-registers by itself: nothing to do); says what it did.
        ``page_size``: the crashed kernel's, when the caller knows it. Raises
        :class:`NotProtectedError` when registering would do harm."""
        return ""

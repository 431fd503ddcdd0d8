"""The interface every capture-kernel generation implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from drgn_hvdump.errors import HvdumpError
from drgn_hvdump.formats.dump_header import DumpHeader
from drgn_hvdump.formats.release_region import Extent, ReleaseMap

__all__ = ["DT_DIRS", "CaptureInterface", "DumpState", "NoDumpError"]

DT_DIRS = ("proc/device-tree", "sys/firmware/devicetree/base")
"""Where a capture root shows the device tree."""
_DT_DIRS = DT_DIRS


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

    def machine_identity(self) -> bytes:
        """What names this machine and partition in the device tree (``system-id``,
        ``ibm,partition-no``, ``ibm,partition-name``), as one byte string; empty when
        the tree has none of them. Part of a dump's identity: two LPARs of one
        kernel build and size that crash in the same second differ only here."""
        parts = []
        for name in ("system-id", "ibm,partition-no", "ibm,partition-name"):
            for d in _DT_DIRS:
                try:
                    data = (self.root / d / name).read_bytes()[:256]
                except OSError:
                    continue
                parts.append(name.encode() + b"=" + data)
                break
        return b"\n".join(parts)

    @abstractmethod
    def release(self, extent: Extent) -> None:
        """Give ``extent`` back to the running kernel. Its old contents are gone afterwards."""

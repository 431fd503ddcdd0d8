"""The interface every capture-kernel generation implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from drgn_hvdump.errors import HvdumpError
from drgn_hvdump.formats.dump_header import DumpHeader
from drgn_hvdump.formats.release_region import Extent, ReleaseMap

__all__ = ["CaptureInterface", "DumpState", "NoDumpError"]


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

    @abstractmethod
    def release(self, extent: Extent) -> None:
        """Give ``extent`` back to the running kernel. Its old contents are gone afterwards."""

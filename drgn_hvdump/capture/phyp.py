"""Hypervisor-assisted dump ("phyp dump", Linux 2.6.26 to 3.3) as a capture kernel offers it.

Where things are, relative to the root of the capture kernel's filesystem:

* ``proc/device-tree/rtas/ibm,configure-kernel-dump``: firmware supports dumps;
* ``proc/device-tree/rtas/ibm,dump-kernel``: a dump was taken in the previous boot;
* ``proc/device-tree/rtas/ibm,kernel-dump``: the dump header as the hypervisor filled it;
* ``sys/kernel/release_region``: the map (read) and the release of a range (write);
* ``sys/kernel/phyp_dump_active``: whether dumping was enabled at boot;
* ``proc/vmcore``: the old memory.

The kernel prints ``release_region`` from its own header, which in the dump-waiting
boot may still hold bare offsets and zero lengths, so the map is cross-checked
against the hypervisor's header and the header wins where they disagree.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from drgn_hvdump.capture.base import DT_DIRS, CaptureInterface, DumpState, NoDumpError
from drgn_hvdump.errors import FormatError, HvdumpError
from drgn_hvdump.formats.dump_header import DumpHeader, is_dump_valid, parse_dump_header
from drgn_hvdump.formats.release_region import (
    Extent,
    ReleaseMap,
    format_release_request,
    parse_release_map,
)

__all__ = ["PhypDump", "map_from_header"]

_DT_DIRS = DT_DIRS


def map_from_header(header: DumpHeader, reserved: Extent) -> ReleaseMap:
    """The map the kernel means to show: each section's destination and bytes copied."""
    return ReleaseMap(
        cpu=Extent(header.cpu.destination_address, header.cpu.length_copied),
        hpte=Extent(header.hpte.destination_address, header.hpte.length_copied),
        dump=Extent(header.rmo.destination_address, header.rmo.length_copied),
        reserved=reserved,
    )


class PhypDump(CaptureInterface):
    """The ``release_region`` interface of hypervisor-assisted dump."""

    name = "phyp-dump"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "sys/kernel/release_region").exists() or any(
            (root / d / "rtas/ibm,configure-kernel-dump").exists() for d in _DT_DIRS
        )

    @property
    def vmcore_path(self) -> Path:
        return self.root / "proc/vmcore"

    @property
    def release_region_path(self) -> Path:
        """``sys/kernel/release_region`` under the root."""
        return self.root / "sys/kernel/release_region"

    @property
    def lock_path(self) -> Path:
        return self.release_region_path

    def _rtas(self, prop: str) -> Path | None:
        for d in _DT_DIRS:
            path = self.root / d / "rtas" / prop
            if path.exists():
                return path
        return None

    def state(self) -> DumpState:
        supported = self._rtas("ibm,configure-kernel-dump") is not None
        active_file = self.root / "sys/kernel/phyp_dump_active"
        enabled: bool | None = None
        if active_file.exists():
            text = active_file.read_text().strip()
            enabled = text not in ("", "0")
        marker = self._rtas("ibm,dump-kernel")
        waiting = marker is not None and self.release_region_path.exists()
        state = DumpState(
            root=str(self.root),
            interface=self.name,
            firmware_supported=supported,
            dump_enabled=enabled,
            dump_waiting=waiting,
        )
        if not waiting:
            state.reason = (
                "no dump is waiting"
                if supported
                else "firmware does not support hypervisor-assisted dump"
            )
            return state
        header_path = self._rtas("ibm,kernel-dump")
        if header_path is None:
            state.reason = "ibm,dump-kernel is present but the dump header ibm,kernel-dump is not"
            return state
        try:
            state.header = parse_dump_header(header_path.read_bytes(), path=str(header_path))
        except FormatError as error:
            state.reason = str(error)
            return state
        path = self.release_region_path
        try:
            shown = parse_release_map(path.read_text(), path=str(path))
        except FormatError as error:
            state.reason = str(error)
            return state
        state.release_map = map_from_header(state.header, shown.reserved)
        if shown != state.release_map:
            state.warnings.append(
                f"{path} disagrees with the hypervisor's dump header "
                f"({_describe_difference(shown, state.release_map)}); using the header"
            )
        scratch = sum(s.source_length for s in state.header.sections())
        state.reserved_bytes = shown.reserved.size + scratch
        state.valid, state.reason = is_dump_valid(state.header)
        return state

    def release(self, extent: Extent) -> None:
        path = self.release_region_path
        request = format_release_request(extent.addr, extent.size).encode()
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:
            raise NoDumpError(f"{path}: not present; no dump is waiting") from None
        except OSError as error:
            raise HvdumpError(f"{path}: cannot open for writing: {error.strerror}") from None
        try:
            written = os.write(fd, request)
        except OSError as error:
            hint = "the kernel refused the range" if error.errno == errno.EINVAL else ""
            raise HvdumpError(
                f"{path}: release of {extent} failed: {error.strerror}"
                + (f"; {hint}" if hint else "")
            ) from None
        finally:
            os.close(fd)
        if written != len(request):
            raise HvdumpError(
                f"{path}: short write releasing {extent} ({written} of {len(request)} bytes)"
            )


def _describe_difference(shown: ReleaseMap, meant: ReleaseMap) -> str:
    parts = []
    for (name, a), (_, b) in zip(shown.extents(), meant.extents(), strict=True):
        if a != b:
            parts.append(f"{name} shows {a}, header says {b}")
    return "; ".join(parts)

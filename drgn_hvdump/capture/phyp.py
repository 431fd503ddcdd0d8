"""Hypervisor-assisted dump ("phyp dump", Linux 2.6.26 to 3.3) as a capture kernel offers it.

Where things are, relative to the root of the capture kernel's filesystem, is
:data:`PHYP_ROOT_FILES` (also ``PhypDump.ROOT_FILES``): the device tree's
``rtas/ibm,configure-kernel-dump`` (firmware supports dumps),
``rtas/ibm,dump-kernel`` (a dump was taken in the previous boot) and
``rtas/ibm,kernel-dump`` (the dump header as the hypervisor filled it);
``sys/kernel/release_region`` (the map, read; the release of a range, write),
``sys/kernel/phyp_dump_active`` (whether dumping was enabled at boot) and
``proc/vmcore`` (the old memory).

The kernel prints ``release_region`` from its own header, which in the dump-waiting
boot may still hold bare offsets and zero lengths, so the map is cross-checked
against the hypervisor's header and the header wins where they disagree.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from pathlib import Path

from drgn_hvdump.capture.base import CaptureInterface, DumpState, NoDumpError, Section
from drgn_hvdump.capture.phyp_plan import make_plan
from drgn_hvdump.capture.plan import Plan, ReleaseWrite, checked_against
from drgn_hvdump.capture.rootfiles import (
    COMMON_PROPERTIES,
    COMMON_ROOT_FILES,
    CONFIGURE_KERNEL_DUMP,
    DUMP_WAITING,
    PROPERTY,
    VMCORE,
    RootFile,
    RootTable,
)
from drgn_hvdump.capture.vmcore import Vmcore
from drgn_hvdump.errors import FormatError, HvdumpError
from drgn_hvdump.formats.dump_header import (
    DumpHeader,
    build_dump_header,
    describe_dump_header,
    is_dump_valid,
    parse_dump_header,
)
from drgn_hvdump.formats.release_region import (
    Extent,
    ReleaseMap,
    format_release_request,
    parse_release_map,
)
from drgn_hvdump.intervals import IntervalSet
from drgn_hvdump.model.physmap import Region, saved_low_map

__all__ = ["PHYP_ROOT_FILES", "PhypDump", "map_from_header"]

_FIRMWARE = "the firmware supports dumps"

PHYP_ROOT_FILES = RootTable(
    interface="phyp-dump",
    files=(
        *COMMON_ROOT_FILES,
        VMCORE,
        RootFile(
            "release_region",
            "sys/kernel/release_region",
            0o600,
            'read: the map of the dump; write "ADDR SIZE" (hex): give a range back',
            shown_in=DUMP_WAITING,
            writable=True,
        ),
        RootFile(
            "phyp_dump_active",
            "sys/kernel/phyp_dump_active",
            0o600,
            "whether dumping was enabled at boot: phyp_dump=1",
            condition=_FIRMWARE,
        ),
    ),
    properties=(
        *COMMON_PROPERTIES,
        CONFIGURE_KERNEL_DUMP,
        RootFile(
            "ibm,dump-kernel",
            "rtas/ibm,dump-kernel",
            0o444,
            "a dump was taken in the previous boot",
            shown_in=DUMP_WAITING,
            kind=PROPERTY,
        ),
        RootFile(
            "ibm,kernel-dump",
            "rtas/ibm,kernel-dump",
            0o444,
            "the dump header as the hypervisor filled it",
            shown_in=DUMP_WAITING,
            kind=PROPERTY,
        ),
    ),
)
"""The files of hypervisor-assisted dump's capture root."""


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

    name = PHYP_ROOT_FILES.interface
    ROOT_FILES = PHYP_ROOT_FILES

    @classmethod
    def detect(cls, root: Path) -> bool:
        files = cls.ROOT_FILES
        return (
            files.path(root, "release_region").exists()
            or files.find(root, "ibm,configure-kernel-dump") is not None
        )

    @property
    def vmcore_path(self) -> Path:
        return self.ROOT_FILES.path(self.root, "vmcore")

    @property
    def release_region_path(self) -> Path:
        """``sys/kernel/release_region`` under the root."""
        return self.ROOT_FILES.path(self.root, "release_region")

    @property
    def lock_path(self) -> Path:
        return self.release_region_path

    def state(self) -> DumpState:
        files = self.ROOT_FILES
        supported = files.find(self.root, "ibm,configure-kernel-dump") is not None
        active_file = files.path(self.root, "phyp_dump_active")
        enabled: bool | None = None
        if active_file.exists():
            text = active_file.read_text().strip()
            enabled = text not in ("", "0")
        marker = files.find(self.root, "ibm,dump-kernel")
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
        header_path = files.find(self.root, "ibm,kernel-dump")
        if header_path is None:
            state.reason = "ibm,dump-kernel is present but the dump header ibm,kernel-dump is not"
            return state
        try:
            header = parse_dump_header(header_path.read_bytes(), path=str(header_path))
        except FormatError as error:
            state.reason = str(error)
            return state
        path = self.release_region_path
        try:
            shown = parse_release_map(path.read_text(), path=str(path))
        except FormatError as error:
            state.reason = str(error)
            return state
        rmap = map_from_header(header, shown.reserved)
        if shown != rmap:
            state.warnings.append(
                f"{path} disagrees with the hypervisor's dump header "
                f"({_describe_difference(shown, rmap)}); using the header"
            )
        _describe(state, header, rmap)
        return state

    def plan(
        self,
        state: DumpState,
        vm: Vmcore,
        chunk_size: int,
        excluded: IntervalSet | None = None,
    ) -> Plan:
        header, rmap = _native(state)
        plan = make_plan(
            state.root, header, rmap, page_size=vm.page_size(), memory=vm.memory,
            chunk_size=chunk_size, excluded=excluded,
        )  # fmt: skip
        return checked_against(plan, vm)

    def physical_map(self, state: DumpState, memory: int) -> list[Region]:
        header, rmap = _native(state)
        rmo = header.rmo
        return saved_low_map(
            rmo.destination_address,
            rmo.length_copied,
            rmo.source_length,
            rmap.reserved.addr,
            header.cpu.destination_address,
            memory,
        )

    def release(self, write: ReleaseWrite) -> None:
        self.release_extent(write.extent)

    def give_up(self, state: DumpState) -> list[tuple[int, int]]:
        """The kernel's own map in ``release_region`` (the header that would say more is
        damaged): each saved section, then the rest of the reservation."""
        path = self.release_region_path
        try:
            shown = parse_release_map(path.read_text(), path=str(path))
        except (OSError, FormatError) as error:
            raise HvdumpError(
                f"{self.root}: cannot plan the release: {state.reason}; and {error}"
            ) from None
        done: list[tuple[int, int]] = []
        for _name, extent in shown.extents():
            if extent.size and self.state().dump_waiting:
                self.release_extent(extent)
                done.append((extent.addr, extent.size))
        return done

    def release_extent(self, extent: Extent) -> None:
        """Write ``ADDR SIZE`` of ``extent`` to ``release_region``."""
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


def _describe(state: DumpState, header: DumpHeader, rmap: ReleaseMap) -> None:
    """Fill the interface-neutral fields of ``state`` from the header and the map."""
    state.readable = True
    state.header_raw = build_dump_header(header)  # canonical: the bytes a dump's identity hashes
    state.native = (header, rmap)
    state.sections = {
        name: Section(s.source_length, s.length_copied, s.error_flags, s.destination_address)
        for name, s in (("cpu", header.cpu), ("hpte", header.hpte), ("rmo", header.rmo))
    }
    state.dump_bytes = rmap.reserved.size + rmap.cpu.size + rmap.hpte.size + rmap.dump.size
    state.reserved_bytes = rmap.reserved.size + sum(s.source_length for s in header.sections())
    state.valid, state.reason = is_dump_valid(header)
    state.partial = (
        not state.valid and "incomplete" in state.reason and bool(header.cpu.length_copied)
    )
    state.description = ["hypervisor header:"]
    state.description += [f"  {line}" for line in describe_dump_header(header)]
    state.description.append("release map:")
    state.description += [
        f"  {name:<9} {extent.addr:#018x} {extent.size:#14x} bytes"
        for name, extent in rmap.extents()
    ]
    state.details = {"header": dataclasses.asdict(header), "release_map": dataclasses.asdict(rmap)}


def _native(state: DumpState) -> tuple[DumpHeader, ReleaseMap]:
    if not state.readable or not isinstance(state.native, tuple):
        raise HvdumpError(f"{state.root}: no usable dump: {state.reason}")
    header, rmap = state.native
    return header, rmap

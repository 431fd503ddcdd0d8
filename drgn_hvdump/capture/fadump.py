"""Firmware-assisted dump (fadump, Linux 3.4 on) as a capture kernel offers it.

Where things are, relative to the capture kernel's root, is
:data:`FADUMP_ROOT_FILES` (also ``FadumpDump.ROOT_FILES``): the device tree's
``rtas/ibm,configure-kernel-dump`` (the firmware supports dumps) and
``rtas/ibm,kernel-dump`` (the memory structure as the firmware filled it, in
the capture boot), ``/sys/kernel/fadump/`` (``enabled``, ``registered``,
``release_mem``, ``mem_reserved``, ``hotplug_ready``; kernels before 5.x
named the first three ``/sys/kernel/fadump_*``, newer ones keep those names
as symlinks) and ``/proc/vmcore``.

Unlike phyp dump, the capture kernel builds ``/proc/vmcore`` itself: every
``PT_LOAD`` is the crashed kernel's memory at its own physical address (boot
memory read from the firmware's copy), the reserved area is left out (its
old contents are gone), and the notes are one ``NT_PRSTATUS`` per CPU from
the firmware's CPU state data (``pr_pid`` 0) and VMCOREINFO. Memory goes back
in one write of ``1`` to ``release_mem``, which invalidates the dump and
frees everything above boot memory but the reserved area and the parameter
area; user space then registers again (``registered`` <- ``1``). So a plan has
one release write, made after the whole dump is durable and verified.
"""

from __future__ import annotations

import errno
import os
from dataclasses import asdict
from pathlib import Path

from drgn_hvdump.capture.base import (
    CaptureInterface,
    DumpState,
    NoDumpError,
    NotProtectedError,
    Section,
)
from drgn_hvdump.capture.plan import Chunk, Plan, ReleaseWrite, checked_against, kept_pieces
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
from drgn_hvdump.formats.dump_header import SOURCE_CPU
from drgn_hvdump.formats.fadump_mem import (
    SOURCE_PARAM_AREA,
    FadumpMem,
    build_fadump_mem,
    describe_fadump_mem,
    fadump_validity,
    parse_fadump_mem,
    section_names,
)
from drgn_hvdump.formats.release_region import Extent
from drgn_hvdump.intervals import IntervalSet
from drgn_hvdump.model.pages import page_down, page_up
from drgn_hvdump.model.physmap import Region

__all__ = ["FADUMP_ROOT_FILES", "FadumpDump", "FadumpLayout", "fadump_layout", "shared_header_page"]

_FIRMWARE = "the kernel has fadump and the firmware supports dumps"

FADUMP_ROOT_FILES = RootTable(
    interface="fadump",
    files=(
        *COMMON_ROOT_FILES,
        VMCORE,
        RootFile(
            "enabled",
            "sys/kernel/fadump/enabled",
            0o444,
            "1 when the kernel was booted with fadump=on",
            condition=_FIRMWARE,
            also=("sys/kernel/fadump_enabled",),
        ),
        RootFile(
            "registered",
            "sys/kernel/fadump/registered",
            0o644,
            "1 while a dump is registered; write 1: register (again), 0: unregister",
            writable=True,
            condition=_FIRMWARE,
            also=("sys/kernel/fadump_registered",),
        ),
        RootFile(
            "release_mem",
            "sys/kernel/fadump/release_mem",
            0o200,
            "write 1: invalidate the dump and give all its memory back at once",
            shown_in=DUMP_WAITING,
            writable=True,
            also=("sys/kernel/fadump_release_mem",),
        ),
        RootFile(
            "mem_reserved",
            "sys/kernel/fadump/mem_reserved",
            0o444,
            "bytes of the reserved area (CPU state, HPTE, boot-memory copies, headers)",
            condition=_FIRMWARE,
        ),
        RootFile(
            "soft_offline_page",
            "sys/devices/system/memory/soft_offline_page",
            0o200,
            "write a physical address: move that page's data away and never use it again",
            writable=True,
            condition="the kernel has CONFIG_MEMORY_FAILURE",
        ),
        RootFile(
            "hotplug_ready",
            "sys/kernel/fadump/hotplug_ready",
            0o444,
            "1: the kernel updates its registration itself on memory hotplug",
            condition=_FIRMWARE,
        ),
    ),
    properties=(
        *COMMON_PROPERTIES,
        CONFIGURE_KERNEL_DUMP,
        RootFile(
            "ibm,configure-kernel-dump-version",
            "rtas/ibm,configure-kernel-dump-version",
            0o444,
            "the versions of the memory structure the firmware accepts",
            kind=PROPERTY,
            condition="the firmware supports dumps",
        ),
        RootFile(
            "ibm,kernel-dump",
            "rtas/ibm,kernel-dump",
            0o444,
            "the memory structure as the firmware filled it (capture boot)",
            shown_in=DUMP_WAITING,
            kind=PROPERTY,
        ),
    ),
)
"""The files of firmware-assisted dump's capture root."""


class FadumpLayout:
    """Where a fadump dump's parts are, from its memory structure and the vmcore's map.

    ``boot_mem_top``: the end of boot memory (the capture kernel runs below
    it and reserves everything above); ``ra``: the reserved area, from the
    CPU state data's destination to the first ``PT_LOAD`` above it (the
    kernel's own headers end it, which the structure does not show);
    ``param``: the parameter area (registered in place, never freed).
    """

    def __init__(self, mem: FadumpMem, loads: list[tuple[int, int]], memory: int) -> None:
        cpu = mem.one(SOURCE_CPU)
        if cpu is None:
            raise HvdumpError("the fadump memory structure has no CPU state data section")
        boot = mem.boot_regions
        self.mem = mem
        self.memory = memory
        self.boot_mem_top = max(s.source_address + s.source_length for s in boot)
        copies_end = max(
            s.destination_address + s.source_length
            for s in mem.sections
            if s.source_type != SOURCE_PARAM_AREA
        )
        above = [a for a, _ in loads if a >= copies_end]
        self.ra = Extent(
            cpu.destination_address, min(above, default=memory) - cpu.destination_address
        )
        param = mem.one(SOURCE_PARAM_AREA)
        self.param = None if param is None else Extent(param.source_address, param.source_length)

    def kept(self, page_size: int, *, fixed: bool = False) -> IntervalSet:
        """Pages a release leaves reserved. Linux (up to 6.12 at least) keeps the reserved
        area only up to the page its end falls in (:func:`shared_header_page`) and frees
        that page and the parameter area; a fixed kernel (``fixed``) keeps both."""
        start = page_down(self.ra.addr, page_size)
        if not fixed:
            return IntervalSet([(start, page_down(self.ra.end, page_size))])
        kept = IntervalSet([(start, page_up(self.ra.end, page_size))])
        if self.param is not None and self.param.size:
            kept.add(page_down(self.param.addr, page_size), page_up(self.param.end, page_size))
        return kept

    def freed(self, page_size: int, *, fixed: bool = False) -> IntervalSet:
        """What ``release_mem`` gives back: everything above boot memory but :meth:`kept`."""
        freed = IntervalSet([(self.boot_mem_top, self.memory)])
        for a, b in self.kept(page_size, fixed=fixed):
            freed.remove(a, b)
        return freed


def fadump_layout(mem: FadumpMem, vm: Vmcore) -> FadumpLayout:
    """The layout of the dump ``mem`` describes, ``vm`` its ``/proc/vmcore``."""
    loads = [(ph.p_paddr, ph.p_memsz) for ph in vm.core.segments]
    return FadumpLayout(mem, loads, vm.memory)


class FadumpDump(CaptureInterface):
    """The ``/sys/kernel/fadump`` interface of firmware-assisted dump."""

    name = FADUMP_ROOT_FILES.interface
    ROOT_FILES = FADUMP_ROOT_FILES
    RELEASES_PROGRESSIVELY = False

    @classmethod
    def detect(cls, root: Path) -> bool:
        files = cls.ROOT_FILES
        return any(
            files.find(root, name) is not None for name in ("enabled", "registered", "release_mem")
        )

    @property
    def vmcore_path(self) -> Path:
        return self.ROOT_FILES.path(self.root, "vmcore")

    @property
    def lock_path(self) -> Path:
        return self.ROOT_FILES.find(self.root, "release_mem") or self.ROOT_FILES.path(
            self.root, "release_mem"
        )

    def _flag(self, name: str) -> bool | None:
        path = self.ROOT_FILES.find(self.root, name)
        if path is None:
            return None
        try:
            return path.read_text().strip() not in ("", "0")
        except OSError:
            return None

    def registered(self) -> bool | None:
        """Whether a dump is registered (None when the kernel shows no fadump files)."""
        return self._flag("registered")

    def state(self) -> DumpState:
        files = self.ROOT_FILES
        supported = files.find(self.root, "ibm,configure-kernel-dump") is not None
        prop = files.find(self.root, "ibm,kernel-dump")
        # Linux keeps its boot-time device tree: after release_mem the property
        # stays, but the vmcore is gone.
        waiting = prop is not None and self.vmcore_path.exists()
        state = DumpState(
            root=str(self.root),
            interface=self.name,
            firmware_supported=supported,
            dump_enabled=self._flag("enabled"),
            dump_waiting=waiting,
        )
        registered = self.registered()
        state.details = {"registered": registered, "mem_reserved": self._mem_reserved()}
        if not waiting:
            if not supported:
                state.reason = "firmware does not support firmware-assisted dump"
            elif state.dump_enabled is False:
                state.reason = "fadump is disabled in this kernel (boot with fadump=on)"
            else:
                state.reason = "no dump is waiting" + (
                    "; the LPAR is registered for the next crash"
                    if registered
                    else "; the LPAR is NOT registered (echo 1 > /sys/kernel/fadump/registered)"
                    if registered is False
                    else ""
                )
            return state
        assert prop is not None
        try:
            mem = parse_fadump_mem(prop.read_bytes(), path=str(prop))
        except FormatError as error:
            state.reason = str(error)
            return state
        _describe(state, mem)
        try:
            vm = Vmcore(self.vmcore_path)
        except (HvdumpError, FormatError) as error:
            state.warnings.append(str(error))
        else:
            # Everything above boot memory is reserved until release_mem.
            try:
                top = max(s.source_address + s.source_length for s in mem.boot_regions)
                state.reserved_bytes = max(0, vm.memory - top)
                state.dump_bytes = sum(ph.p_filesz for ph in vm.core.segments)
            finally:
                vm.close()
        return state

    def _mem_reserved(self) -> int | None:
        path = self.ROOT_FILES.find(self.root, "mem_reserved")
        try:
            return int(path.read_text().strip()) if path is not None else None
        except (OSError, ValueError):
            return None

    def plan(
        self,
        state: DumpState,
        vm: Vmcore,
        chunk_size: int,
        excluded: IntervalSet | None = None,
    ) -> Plan:
        mem = _native(state)
        ps = vm.page_size()
        lay = fadump_layout(mem, vm)
        warnings: list[str] = []
        segments: list[tuple[int, int]] = []
        for ph in sorted(vm.core.segments, key=lambda p: p.p_paddr):
            start, end = page_up(ph.p_paddr, ps), page_down(ph.p_paddr + ph.p_filesz, ps)
            if start != ph.p_paddr:
                # The kernel's headers end the reserved area mid-page: the rest of
                # that page is in no whole page of the vmcore.
                warnings.append(
                    f"{vm.path}: PT_LOAD at {ph.p_paddr:#x} starts mid-page; its first "
                    f"{start - ph.p_paddr:#x} bytes (shared with the reserved area's last "
                    "page) are not saved"
                )
            if end > start:
                segments.append((start, end - start))
        chunks: list[Chunk] = []
        excluded = IntervalSet() if excluded is None else excluded
        for a, n in segments:
            for x, y in kept_pieces(a, a + n, excluded):
                for s in range(x, y, chunk_size):
                    size = min(chunk_size, y - s)
                    chunks.append(Chunk(len(chunks), "mem", s, s, size))
        if not segments:
            raise HvdumpError(f"{vm.path}: holds no memory of the crashed kernel")
        freed = list(lay.freed(ps))
        pages = sum(b - a for a, b in freed) // ps
        # MemTotal grows by either count, as the kernel has the bug or not.
        fixed = sum(b - a for a, b in lay.freed(ps, fixed=True)) // ps
        # The pages it frees, from the first to the last (the kept areas are
        # usually at boot memory's top, so this is exactly what it frees).
        span = (freed[0][0], freed[-1][1]) if freed else (lay.memory, lay.memory)
        write = ReleaseWrite(
            index=0,
            addr=lay.boot_mem_top,
            size=lay.memory - lay.boot_mem_top,
            span=span,
            scratch=False,
            ready=chunks[-1].index if chunks else -1,
            new_pages=(min(pages, fixed), max(pages, fixed)),
        )
        sections = {
            name: Extent(s.destination_address, s.length_copied)
            for name, s in zip(section_names(mem), mem.sections, strict=True)
        }
        plan = Plan(
            page_size=ps,
            memory=lay.memory,
            reserved=Extent(lay.boot_mem_top, lay.memory - lay.boot_mem_top),
            scratch=lay.ra,
            sections=sections,
            copied={},
            chunks=chunks,
            writes=[write],
            # Every byte of the vmcore is needed: the one write waits for them all.
            needed=IntervalSet((c.src, c.src_end) for c in chunks),
            segments=segments,
            warnings=warnings,
            excluded=IntervalSet(x for a, n in segments for x in excluded.intersect(a, a + n)),
            order=[0],
        )
        return checked_against(plan, vm)

    def physical_map(self, state: DumpState, memory: int) -> list[Region]:
        mem = _native(state)
        vm = Vmcore(self.vmcore_path)
        try:
            lay = fadump_layout(mem, vm)
            loads = sorted((ph.p_paddr, ph.p_paddr + ph.p_memsz) for ph in vm.core.segments)
        finally:
            vm.close()
        regions: list[Region] = []
        pos = 0
        for a, b in loads:
            if pos < a:
                regions.append(_gap(pos, a, lay))
            regions.append(Region(a, b, "memory", a))
            pos = b
        if pos < memory:
            regions.append(_gap(pos, memory, lay))
        return regions

    def release(self, write: ReleaseWrite) -> None:
        """``release_mem`` <- 1: the whole dump at once (:meth:`protect` registers again)."""
        self._write("release_mem", b"1\n")

    def give_up(self, state: DumpState) -> list[tuple[int, int]]:
        """``release_mem`` <- 1 needs no description of the dump: the kernel frees what it
        reserved."""
        before = state.reserved_bytes or 0
        self._write("release_mem", b"1\n")
        return [(0, before)] if before else []

    def protect(self, page_size: int | None = None) -> str:
        """Register for the next crash if the kernel is not registered (``registered`` <- 1);
        says what it did.

        Linux's ``release_mem`` frees the page that holds the end of the reserved
        area, the crash-info header included, when that end is not on a page
        boundary (:func:`shared_header_page`); registering again writes the header
        there, into memory the kernel may have handed out since (Linux 6.12:
        corrupted kernel memory, or "Fadump header is corrupted" and the next dump
        lost). So that page is first taken out of use with ``soft_offline_page``;
        where that is impossible the LPAR is left unregistered
        (:class:`NotProtectedError`)."""
        if self.registered() is not False:
            return ""
        page = self._shared_header_page(page_size)
        note = ""
        if page is not None:
            self._take_out_of_use(page)
            note = (
                f" (first took the page at {page:#x} out of use: Linux's release freed it "
                "although it holds the crash-info header)"
            )
        self._write("registered", b"1\n")
        return "registered again for the next crash" + note

    def _shared_header_page(self, page_size: int | None) -> int | None:
        prop = self.ROOT_FILES.find(self.root, "ibm,kernel-dump")
        reserved = self._mem_reserved()
        if prop is None or not reserved:
            return None
        try:
            cpu = parse_fadump_mem(prop.read_bytes(), path=str(prop)).one(SOURCE_CPU)
        except (OSError, FormatError):
            return None
        if page_size is None and self.root == Path("/"):
            page_size = os.sysconf("SC_PAGE_SIZE")
        if cpu is None or not page_size:
            return None
        return shared_header_page(cpu.destination_address, reserved, page_size)

    def _take_out_of_use(self, page: int) -> None:
        why = (
            f"not registered again: Linux's release_mem freed the page at {page:#x}, which "
            "holds the end of the reserved area (the crash-info header), and registering "
            "would write into it while the kernel may be using it (docs/real-firmware.md)"
        )
        path = self.ROOT_FILES.find(self.root, "soft_offline_page")
        if path is None:
            raise NotProtectedError(
                f"{why}; this kernel cannot take the page out of use "
                f"({self.ROOT_FILES.path(self.root, 'soft_offline_page')} is missing: "
                "CONFIG_MEMORY_FAILURE): reboot the LPAR to register for the next crash"
            )
        try:
            self._write("soft_offline_page", f"{page:#x}\n".encode())
        except HvdumpError as error:
            raise NotProtectedError(
                f"{why}; {error} (the kernel holds the page and cannot move it): reboot the "
                "LPAR to register for the next crash"
            ) from None

    def _write(self, name: str, data: bytes) -> None:
        path = self.ROOT_FILES.find(self.root, name)
        if path is None:
            if name == "release_mem":
                raise NoDumpError(
                    f"{self.ROOT_FILES.path(self.root, name)}: not present; no dump is waiting"
                )
            raise HvdumpError(f"{self.ROOT_FILES.path(self.root, name)}: not present")
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError as error:
            raise HvdumpError(f"{path}: cannot open for writing: {error.strerror}") from None
        try:
            os.write(fd, data)
        except OSError as error:
            eperm = (
                "no dump is active"
                if name == "release_mem"
                else "a dump is waiting or fadump is disabled"
            )
            hint = {errno.EPERM: eperm, errno.EINVAL: "the kernel refused the value"}.get(
                error.errno or 0, ""
            )
            raise HvdumpError(
                f"{path}: writing {data.strip().decode()} failed: {error.strerror}"
                + (f" ({hint})" if hint else "")
            ) from None
        finally:
            os.close(fd)


def shared_header_page(ra_start: int, mem_reserved: int, page_size: int) -> int | None:
    """The page ``release_mem`` frees although the reserved area's last bytes are in it
    (the kernel's crash-info header; ``mem_reserved`` is the area's size), or None when the
    area ends on a page boundary.

    Linux (``fadump_release_reserved_area``, 5.x to 6.12 at least) frees from
    ``PHYS_PFN(end)``, rounding the start of what it frees down to a page; the
    area's size is ``PAGE_ALIGN(cpu + hpte) + boot memory + sizeof(header)``,
    so it never ends on a boundary."""
    end = ra_start + mem_reserved
    return None if end % page_size == 0 else page_down(end, page_size)


def _gap(start: int, end: int, lay: FadumpLayout) -> Region:
    if lay.ra.addr <= start and end <= page_up(lay.ra.end, 1):
        why = (
            "fadump's reserved area: the firmware's copies of CPU state, HPTE and boot "
            "memory overwrote what the crashed kernel kept there"
        )
    else:
        why = "not in /proc/vmcore: the capture kernel does not offer it"
    return Region(start, end, "lost", why=why)


def _describe(state: DumpState, mem: FadumpMem) -> None:
    state.readable = True
    state.header_raw = build_fadump_mem(mem)
    state.native = mem
    state.sections = {
        name: Section(s.source_length, s.length_copied, s.error_flags, s.destination_address)
        for name, s in zip(section_names(mem), mem.sections, strict=True)
    }
    state.valid, state.reason = fadump_validity(mem)
    # The capture kernel offers no vmcore for a dump it finds invalid; one it
    # offers is whole.
    state.partial = False
    state.description = ["fadump memory structure:"]
    state.description += [f"  {line}" for line in describe_fadump_mem(mem)]
    registered = state.details.get("registered")
    if registered is not None:
        state.description.append(f"registered for the next crash: {'yes' if registered else 'no'}")
    state.details = {
        **state.details,
        "header": {**asdict(mem.header), "sections": [asdict(s) for s in mem.sections]},
    }


def _native(state: DumpState) -> FadumpMem:
    if not state.readable or not isinstance(state.native, FadumpMem):
        raise HvdumpError(f"{state.root}: no usable dump: {state.reason}")
    return state.native

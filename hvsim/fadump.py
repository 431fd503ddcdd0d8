"""Firmware-assisted dump (fadump) on a simulated pseries LPAR: the firmware and the kernel.

An LPAR created with ``dump="fadump"`` runs a kernel booted with ``fadump=on``
(Linux 3.4 on; the choices follow Linux 6.x ``arch/powerpc/kernel/fadump.c``
and ``platforms/pseries/rtas-fadump.c``, and QEMU's ``hw/ppc/spapr_fadump.c``
for the firmware). Physical memory (:class:`FadumpReservation`)::

    0 .. boot_mem_top            boot memory (reserve_size bytes, 1-7 sections):
                                 the capture kernel boots here
    ra_start .. ra_end           the reserved area, from boot_mem_top: CPU state
                                 data and HPTE (page aligned), the boot-memory
                                 copies back to back, then the kernel's crash-info
                                 header (0x2a8 bytes: ra_end is not page aligned)
    page_up(ra_end) .. +1 page   the parameter area (registered in place,
                                 source == destination)
    the rest                     ordinary memory, preserved across the dump

* An ordinary boot registers the structure (``registered`` reads 1). The
  reserved area is CMA: the running kernel uses it, so what the crashed
  kernel kept there is lost to the dump (the ground truth lists it as lost).
* At the crash the firmware saves the CPU state data, the HPTEs and a copy
  of each boot-memory region, fills in the structure, and reboots.
* The capture boot sees ``rtas/ibm,kernel-dump``, runs in boot memory and
  reserves everything above it. A dump the firmware flagged in error, or
  copied in part, is invalid: the kernel invalidates it and frees the memory
  at once (no ``/proc/vmcore``), and stays unregistered. Otherwise
  ``/proc/vmcore`` holds one ``NT_PRSTATUS`` per CPU from the CPU state data
  (``pr_pid`` 0, save-area order) and VMCOREINFO, a ``PT_LOAD`` per boot
  region (its bytes read from the firmware's copy) and one for
  ``[ra_end, RAM)``.
* ``release_mem`` <- ``1`` invalidates the dump in the firmware, removes
  ``/proc/vmcore`` and frees everything above boot memory but the reserved
  area. It does not register: ``registered`` <- ``1`` does. ``registered``
  refuses writes with EPERM while a dump is active, EINVAL for anything but 0
  or 1.
* Linux's bug, as measured on 6.12 under QEMU (``quirks="faithful"``, the
  default): the release frees from ``page_down(ra_end)``, so the page holding
  the crash-info header goes back to the allocator (and the parameter area
  with the rest); registering again then writes the header into that page.
  hvsim takes the worst case the kernel shows: the page's new user
  overwrites the header, and the next capture boot finds "Fadump header is
  corrupted", invalidates the dump and frees it (all of it lost). Unless the
  page was taken out of use first through
  ``/sys/devices/system/memory/soft_offline_page`` (``CONFIG_MEMORY_FAILURE``),
  which moves a page's data away and never hands it out again: then
  registering is harmless. ``quirks="corrected"`` keeps the header's page
  and the parameter area reserved, as a fixed kernel would.

Left out: ``bootargs_append``, and memory hotplug.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from dataclasses import dataclass, replace

from drgn_hvdump.errors import FormatError
from drgn_hvdump.formats.dump_header import SOURCE_CPU, SOURCE_HPTE
from drgn_hvdump.formats.elfcore import CoreLayout, LoadSegment, Note, build_core_header
from drgn_hvdump.formats.fadump_mem import (
    SOURCE_BOOT_MEMORY,
    SOURCE_PARAM_AREA,
    FadumpMem,
    build_fadump_mem,
    describe_fadump_mem,
    fadump_registration,
    fadump_validity,
    parse_fadump_mem,
    section_names,
)
from drgn_hvdump.formats.regsave import (
    QEMU_FADUMP_REGISTERS,
    CpuState,
    build_regsave,
    cpu_state_to_pt_regs,
    parse_regsave,
    prstatus_notes,
)
from drgn_hvdump.formats.vmcoreinfo import VMCOREINFO_NOTE_NAME, VMCOREINFO_NOTE_TYPE
from drgn_hvdump.intervals import IntervalSet
from drgn_hvdump.model.pages import page_down, page_up

from .config import LparConfig, format_size
from .hypervisor import (
    Firmware,
    cpu_state_size,
    fill_section,
    hpt_size,
    saved_status,
)
from .kernel import CrashedKernel, Scenario
from .layers import push_copy, push_generated, push_hptes, push_overlay
from .machine import HvsimError, Machine, ViewUnavailable
from .memory import derive_seed
from .releasing import free
from .state import CaptureState, DumpRecord, KernelState, LparState

__all__ = [
    "CRASH_INFO_SIZE",
    "PARAM_AREA_SIZE",
    "VERSION_PROPERTY",
    "FadumpFirmware",
    "FadumpReservation",
    "capture_boot",
    "firmware_cpu_states",
    "register_at_boot",
    "release_mem",
    "reservation",
    "save",
    "soft_offline",
    "sysfs_text",
    "sysfs_write",
    "vmcore_layout",
]

CRASH_INFO_SIZE = 0x2A8
"""``sizeof(struct fadump_crash_info_header)`` (Linux 6.12, ppc64): the reserved area's
last bytes, after the boot-memory copies."""
PARAM_AREA_SIZE = 2048
"""The parameter area: ``COMMAND_LINE_SIZE`` bytes on powerpc."""
VERSION_PROPERTY = bytes([1, 0, 1, 0])
"""``rtas/ibm,configure-kernel-dump-version`` as QEMU's firmware gives it."""


@dataclass(frozen=True)
class FadumpReservation:
    """Where a fadump kernel of one configuration puts everything (module docstring)."""

    memory: int
    page_size: int
    cpu_size: int
    hpte_size: int
    boot_size: int
    regions: int
    #: The reserved area starts here at the lowest (an adopted image's end: the
    #: kernel finds room for it above what is in use).
    ra_floor: int = 0

    @property
    def boot_mem_top(self) -> int:
        return self.boot_size

    def boot_regions(self) -> list[tuple[int, int]]:
        """``(start, length)`` of each boot-memory section: equal parts, the last takes the rest."""
        part = page_down(self.boot_size // self.regions, self.page_size)
        out = [(i * part, part) for i in range(self.regions - 1)]
        last = (self.regions - 1) * part
        out.append((last, self.boot_size - last))
        return out

    @property
    def ra_size(self) -> int:
        """``get_fadump_area_size()``: never a whole number of pages."""
        return (
            page_up(self.cpu_size + self.hpte_size, self.page_size)
            + self.boot_size
            + CRASH_INFO_SIZE
        )

    @property
    def ra_start(self) -> int:
        return max(self.boot_mem_top, page_up(self.ra_floor, self.page_size))

    @property
    def ra_end(self) -> int:
        return self.ra_start + self.ra_size

    @property
    def header_page(self) -> int:
        """The page that holds the crash-info header, the reserved area's last bytes."""
        return page_down(self.ra_end, self.page_size)

    @property
    def param_addr(self) -> int:
        return page_up(self.ra_end, self.page_size)

    @property
    def param_end(self) -> int:
        return page_up(self.param_addr + PARAM_AREA_SIZE, self.page_size)

    def kept(self, quirks: str = "faithful") -> tuple[int, int]:
        """What stays reserved after ``release_mem``: the reserved area up to its last page
        (Linux), or with that page and the parameter area (``corrected``)."""
        if quirks == "corrected":
            return self.ra_start, self.param_end
        return self.ra_start, self.header_page

    def problem(self) -> str | None:
        """Why a kernel of this configuration cannot register, or None."""
        if self.param_end < self.memory:
            return None
        return (
            f"not registered: {format_size(self.memory)} of RAM cannot hold "
            f"{format_size(self.boot_size)} of boot memory, its copy and the CPU/HPTE "
            f"sections above it (needs more than {format_size(self.param_end)})"
        )

    def registration(self) -> FadumpMem:
        """The memory structure the kernel registers."""
        return fadump_registration(
            cpu_size=self.cpu_size,
            hpte_size=self.hpte_size,
            boot_regions=self.boot_regions(),
            dest_base=self.ra_start,
            param_area=(self.param_addr, PARAM_AREA_SIZE),
            page_size=self.page_size,
        )


def reservation(config: LparConfig) -> FadumpReservation:
    """The reservation a fadump kernel of ``config`` makes (``reserve_size``: boot memory).

    The reserved area follows boot memory; an LPAR adopting a real image keeps
    it at the top of RAM, above the image, so that none of the image is lost.
    """
    res = FadumpReservation(
        memory=config.memory,
        page_size=config.page_size,
        cpu_size=cpu_state_size(config.cpus, QEMU_FADUMP_REGISTERS),
        hpte_size=hpt_size(config.memory),
        boot_size=config.reserve_size,
        regions=config.boot_regions,
    )
    if config.adopted:
        top = config.memory - res.page_size - page_up(PARAM_AREA_SIZE, res.page_size)
        res = replace(res, ra_floor=page_down(top - res.ra_size, res.page_size))
    return res


def firmware_cpu_states(image: CrashedKernel) -> list[CpuState]:
    """Each CPU's registers as QEMU's firmware saves them: its registers, in its order
    (:data:`QEMU_FADUMP_REGISTERS`), those the kernel image does not model 0 (the save
    area's header says version 0, as QEMU's does)."""
    return [
        CpuState(s.cpu, {name: s.regs.get(name, 0) for name in QEMU_FADUMP_REGISTERS})
        for s in image.cpu_states()
    ]


class FadumpFirmware(Firmware[FadumpMem]):
    """The firmware's side of fadump: the registered and the filled memory structure."""

    def cpu_state_size(self) -> int:
        return cpu_state_size(self.config.cpus, QEMU_FADUMP_REGISTERS)

    @staticmethod
    def parse(raw: bytes) -> FadumpMem:
        return parse_fadump_mem(raw)

    @staticmethod
    def build(value: FadumpMem) -> bytes:
        return build_fadump_mem(value)

    def crash(
        self,
        *,
        copied: Mapping[str, int] | None = None,
        errors: Mapping[str, int] | None = None,
        hv_error: bool = False,
    ) -> FadumpMem | None:
        """Save the registered sections (``copied``/``errors`` by section name: ``cpu``,
        ``hpte``, ``boot0``...); None when nothing was registered."""
        registered = self.registered
        if registered is None:
            return None
        names = section_names(registered)
        copied, errors = dict(copied or {}), dict(errors or {})
        for name in (*copied, *errors):
            if name not in names:
                raise ValueError(
                    f"unknown dump section {name!r}; the sections are {', '.join(names)}"
                )
        sections = tuple(
            fill_section(s, n, copied=copied.get(n), error=errors.get(n, 0))
            for n, s in zip(names, registered.sections, strict=True)
        )
        mem = FadumpMem(replace(registered.header, status=saved_status(hv_error)), sections)
        self._saved(mem)
        return mem

    @property
    def clobbered_header(self) -> int | None:
        """The page the kernel wrote its crash-info header into after that page was freed
        (another user's since: the header will not survive), or None."""
        value = self._state.get("clobbered_header")
        return None if value is None else int(value)

    def register_header(self, page: int | None) -> None:
        """Where the registration just made wrote the header: ``page`` if freed memory."""
        self._state["clobbered_header"] = page

    def boot_with(self, dump: bytes | None) -> None:
        """A boot starts: the structure its device tree shows (None: an ordinary boot)."""
        self._state["boot_dump"] = None if dump is None else dump.hex()

    def rtas_properties(self, *, waiting: bool) -> dict[str, bytes]:
        """The ``/rtas`` properties of a boot: support, sizes, version, and in a capture
        boot the dump's structure as the boot found it (Linux keeps its boot-time device
        tree: the property stays after ``release_mem``)."""
        props = self.support_properties()
        if props:
            props["rtas/ibm,configure-kernel-dump-version"] = VERSION_PROPERTY
            boot = self._state.get("boot_dump")
            if boot is not None:
                props["rtas/ibm,kernel-dump"] = bytes.fromhex(boot)
        return props


# ----------------------------------------------------------------- life cycle


def register_at_boot(m: Machine, st: LparState, kernel: KernelState) -> str:
    """An ordinary boot with ``fadump=on`` registers; returns where (or sets ``kernel.reason``)."""
    res = reservation(m.config)
    m.fadump(st).boot_with(None)
    return m.register_at_boot(
        st,
        kernel,
        unsupported="Firmware-Assisted Dump is not supported on this hardware",
        disabled="Firmware-Assisted Dump is disabled (boot with fadump=on)",
        problem=res.problem(),
        registration=res.registration(),
        # The reserved area is CMA (the kernel uses it); the parameter area is not.
        reserved=[(res.header_page, res.param_end)],
        where=f"reserved area at {res.ra_start:#x}-{res.ra_end:#x}",
    )


def save(
    m: Machine,
    st: LparState,
    image: CrashedKernel,
    sc: Scenario,
    partial: Mapping[str, int],
    errors: Mapping[str, int],
    snap: str,
) -> FadumpMem:
    """The firmware saves the registered sections; their bytes are laid into memory."""
    fw = m.fadump(st)
    registered = fw.registered
    assert registered is not None
    copied = sc.copied(partial, "boot0", registered.boot_regions[0].source_length)
    mem = fw.crash(copied=copied, errors=errors, hv_error=sc.hv_error)
    assert mem is not None
    for name, s in zip(section_names(mem), mem.sections, strict=True):
        if not s.length_copied or s.source_type == SOURCE_PARAM_AREA:
            continue
        if s.source_type == SOURCE_CPU:
            data = build_regsave(firmware_cpu_states(image), version=0)[: s.length_copied]
            push_overlay(st, m.store, [(s.destination_address, data)], "firmware: CPU state data")
        elif s.source_type == SOURCE_HPTE:
            entries = image.hash_page_table(s.source_length)
            push_hptes(st, m.store, entries, s.destination_address, s.length_copied,
                       "firmware: HPTEs")  # fmt: skip
        else:
            push_copy(st, snap, s.source_address, s.destination_address, s.length_copied,
                      f"firmware: {name} copy")  # fmt: skip
    return mem


def dump_record(m: Machine, mem: FadumpMem, record: DumpRecord) -> DumpRecord:
    """``record`` with the sections of ``mem`` and what no collector can recover."""
    names = section_names(mem)
    record.sections = {
        n: (s.destination_address, s.source_length, s.length_copied)
        for n, s in zip(names, mem.sections, strict=True)
    }
    record.sources = {n: s.source_address for n, s in zip(names, mem.sections, strict=True)}
    res = reservation(m.config)
    record.add_lost(
        res.ra_start,
        res.ra_end,
        "fadump's reserved area: CMA memory of the crashed kernel, overwritten by the "
        "firmware's copies",
    )
    for s in mem.boot_regions:
        record.add_lost(
            s.source_address + s.length_copied,
            s.source_address + s.source_length,
            "not copied by the firmware (partial copy)",
        )
    return record


def capture_boot(m: Machine, st: LparState) -> None:
    """The boot after a crash with a dump waiting: the capture kernel's view of it."""
    gen = st.generation
    cfg = m.config
    fw = m.fadump(st)
    mem = fw.dump
    assert mem is not None
    st.counters.capture_boots += 1
    fw.boot_with(fw.dump_bytes)
    top = max(s.source_address + s.source_length for s in mem.boot_regions)
    push_generated(st, derive_seed(cfg.seed, "capture", gen), [(0, top)], f"capture kernel g{gen}")
    kernel = KernelState("capture", gen, IntervalSet([(top, cfg.memory)]))
    st.kernel = kernel
    if st.dump is not None:
        st.dump.captured_again(gen)
    res = reservation(cfg)
    ok, why = fadump_validity(mem)
    if ok and fw.clobbered_header is not None:
        # fadump_process(): the header's magic is gone (the page had another user)
        ok, why = False, "Fadump header is corrupted"
    if not ok:
        # fadump_process() failed: the kernel invalidates the dump and frees
        # its memory at once; nothing of it can be collected.
        if st.dump is not None:
            st.dump.add_lost(0, cfg.memory, f"the capture kernel found the dump invalid: {why}")
        _release(m, st, kernel, res, f"dump invalid ({why})")
        st.event(
            f"boot g{gen}: capture kernel found the dump invalid ({why}): invalidated and "
            "memory released; not registered (echo 1 > /sys/kernel/fadump/registered)"
        )
        return
    data = IntervalSet(
        (s.destination_address, s.destination_address + s.length_copied) for s in mem.boot_regions
    )
    if top < res.ra_start:
        data.add(top, res.ra_start)
    data.add(res.ra_end, cfg.memory)
    kernel.capture = CaptureState(
        data, top, cfg.memory - top, res.ra_start, res.ra_end - res.ra_start
    )
    st.state = "capture"
    st.event(f"boot g{gen}: capture kernel, fadump active; reserved {top:#x}-{cfg.memory:#x}")


def _release(
    m: Machine, st: LparState, kernel: KernelState, res: FadumpReservation, why: str
) -> int:
    """fadump_invalidate_release_mem(): invalidate, free all but the kept areas; bytes freed."""
    m.fadump(st).invalidate()
    cap = kernel.capture
    to_free = kernel.reserved.copy()
    to_free.remove(*res.kept(m.config.quirks))
    freed = sum(y - x for s, e in list(to_free) for x, y in free(m, st, s, e))
    if cap is not None:
        cap.releases += 1
        kernel.capture_done = cap
        kernel.capture = None
    st.state = "running"
    if st.dump is not None:
        st.dump.status = f"released ({why})"
        st.dump.capture_released = IntervalSet()
    return freed


def release_mem(m: Machine, st: LparState, why: str) -> int:
    """``release_mem`` <- 1 (or ``hvsim invalidate``): the dump goes, its memory is freed."""
    kernel = st.kernel
    if st.state != "capture" or kernel is None or kernel.capture is None:
        raise HvsimError(f"{m.path}: release_mem: no dump is active (EPERM)", errno.EPERM)
    st.counters.releases += 1
    freed = _release(m, st, kernel, reservation(m.config), why)
    st.event(
        f"release_mem: dump invalidated, {freed:#x} bytes freed ({why}); not registered "
        "until 1 is written to registered"
    )
    return freed


# ----------------------------------------------------------------- views


def _need_files(m: Machine, st: LparState, what: str) -> KernelState:
    kernel = m.need_running(st, what)
    if not m.config.firmware_dump:
        raise ViewUnavailable(f"{m.path}: {what} does not exist: the firmware has no dump support")
    return kernel


def sysfs_text(m: Machine, st: LparState, name: str) -> str:
    """The content of ``/sys/kernel/fadump/NAME`` (``enabled``, ``registered``,
    ``mem_reserved``, ``hotplug_ready``)."""
    what = f"/sys/kernel/fadump/{name}"
    _need_files(m, st, what)
    cfg = m.config
    if name == "enabled":
        return f"{int(cfg.dump_enabled)}\n"
    if name == "registered":
        return f"{int(m.fadump(st).registered is not None)}\n"
    if name == "mem_reserved":
        res = reservation(cfg)
        return f"{res.ra_end - res.ra_start if cfg.dump_enabled else 0}\n"
    if name == "hotplug_ready":
        return "1\n"
    raise ViewUnavailable(f"{m.path}: {what} does not exist")


def _parse_int(data: bytes, what: str) -> int:
    # kstrtoint(buf, 0, ...): decimal, 0x hex or 0 octal, one trailing newline.
    text = data.decode("latin-1")
    text = text[:-1] if text.endswith("\n") else text
    try:
        return int(text, 0)
    except ValueError:
        raise HvsimError(f"{what}: {text!r} is not an integer (EINVAL)", errno.EINVAL) from None


def sysfs_write(m: Machine, st: LparState, name: str, data: bytes) -> str:
    """One write to ``registered`` or ``release_mem``, with the kernel's errors; says what it did."""
    if name == "soft_offline_page":
        return soft_offline(m, st, data)
    what = f"/sys/kernel/fadump/{name}"
    kernel = _need_files(m, st, what)
    cfg = m.config
    fw = m.fadump(st)
    active = st.state == "capture" and kernel.capture is not None
    if name == "release_mem":
        if not active:
            raise HvsimError(f"{m.path}: {what}: no dump is active (EPERM)", errno.EPERM)
        if _parse_int(data, what) != 1:
            raise HvsimError(f"{m.path}: {what}: only 1 is accepted (EINVAL)", errno.EINVAL)
        freed = release_mem(m, st, "release_mem")
        return f"released {freed:#x} bytes"
    if name != "registered":
        raise HvsimError(f"{m.path}: {what}: not writable (EACCES)", errno.EACCES)
    if not cfg.dump_enabled or active:
        why = "a dump is active" if active else "fadump is disabled"
        raise HvsimError(f"{m.path}: {what}: {why} (EPERM)", errno.EPERM)
    value = _parse_int(data, what)
    if value not in (0, 1):
        raise HvsimError(f"{m.path}: {what}: {value} is not 0 or 1 (EINVAL)", errno.EINVAL)
    if value == 0:
        if fw.registered is None:
            return "not registered"
        fw.unregister()
        st.event("fadump unregistered")
        return "unregistered"
    res = reservation(cfg)
    problem = res.problem()
    if problem:
        raise HvsimError(f"{m.path}: {what}: {problem} (ENODEV)", errno.ENODEV)
    again = fw.registered is not None
    fw.unregister()
    fw.register(res.registration())
    clobbered = _freed_header(m, kernel, res)
    fw.register_header(clobbered)
    if clobbered is not None:
        st.event(
            f"fadump registration wrote the crash-info header into page {clobbered:#x}, "
            "which release_mem had freed (Linux bug): the next dump will be lost"
        )
    st.counters.registrations += 1
    if kernel.release_state is not None:
        st.counters.reregistrations += 1
    st.event(
        f"fadump {'registered again' if again else 'registered'}, reserved area at {res.ra_start:#x}"
    )
    return "registered"


def _freed_header(m: Machine, kernel: KernelState, res: FadumpReservation) -> int | None:
    """The header's page if a release in this boot freed it and it is still in use."""
    if m.config.quirks != "faithful" or kernel.release_state is None:
        return None
    page = res.header_page
    if kernel.offline.intersect(page, page + res.page_size):
        return None
    return page


def soft_offline(m: Machine, st: LparState, data: bytes) -> str:
    """``soft_offline_page`` <- ADDR: the page holding ADDR is never handed out again
    (its data moved elsewhere); EBUSY for memory the kernel keeps reserved."""
    what = "/sys/devices/system/memory/soft_offline_page"
    kernel = _need_files(m, st, what)
    addr = _parse_int(data, what)
    if not 0 <= addr < m.config.memory:
        raise HvsimError(f"{m.path}: {what}: {addr:#x} is not RAM (ENXIO)", errno.ENXIO)
    page = page_down(addr, m.config.page_size)
    end = page + m.config.page_size
    if kernel.reserved.intersect(page, end):
        raise HvsimError(f"{m.path}: {what}: {page:#x} is reserved (EBUSY)", errno.EBUSY)
    if not kernel.offline.intersect(page, end):
        kernel.offline.add(page, end)
        st.event(f"soft_offline_page: page {page:#x} taken out of use")
    return f"page {page:#x} offline"


def vmcore_layout(m: Machine, st: LparState) -> tuple[CoreLayout, dict[int, int]]:
    """``/proc/vmcore`` as the capture kernel builds it, and where each boot region's
    ``PT_LOAD`` reads from (its paddr -> the copy's address)."""
    m.need_capture(st, "/proc/vmcore")
    image = m.dump_image(st)
    mem = m.fadump(st).dump
    assert image is not None and mem is not None
    cfg = m.config
    notes = _cpu_notes(image, mem, cfg)
    notes.append(Note(VMCOREINFO_NOTE_NAME, VMCOREINFO_NOTE_TYPE, image.vmcoreinfo()))
    segments: list[LoadSegment] = []
    moved: dict[int, int] = {}
    for s in mem.of_type(SOURCE_BOOT_MEMORY):
        segments.append(LoadSegment(s.source_address, s.length_copied))
        moved[s.source_address] = s.destination_address
    res = reservation(cfg)
    top = max(s.source_address + s.source_length for s in mem.boot_regions)
    if top < res.ra_start:
        segments.append(LoadSegment(top, res.ra_start - top))
    segments.append(LoadSegment(res.ra_end, cfg.memory - res.ra_end))
    return build_core_header(notes, segments, cfg.endian, page_size=cfg.page_size), moved


def _cpu_notes(image: CrashedKernel, mem: FadumpMem, cfg: LparConfig) -> list[Note]:
    cpu = mem.one(SOURCE_CPU)
    if cpu is None or not cpu.length_copied:
        return []
    try:
        states = parse_regsave(build_regsave(firmware_cpu_states(image)), "CPU state data")
    except FormatError:
        return []
    return prstatus_notes(
        ((s.cpu, cpu_state_to_pt_regs(s)) for s in states), cfg.endian, numbered=False
    )


def describe(mem: FadumpMem) -> list[str]:
    """The structure's lines for ``hvsim status``."""
    return describe_fadump_mem(mem)

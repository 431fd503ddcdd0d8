"""What the running kernel shows: the capture root's files, and ``hvsim status``.

Pure functions of a :class:`hvsim.machine.Machine` and a loaded
:class:`hvsim.state.LparState` (the LPAR holds its lock around them): the
device tree, ``/proc/version``, ``/proc/meminfo``, the boot id,
``phyp_dump_active``, ``release_region``'s map, the ELF layout of
``/proc/vmcore`` and the status report. A file the real kernel would not
have raises :class:`hvsim.machine.ViewUnavailable`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

from drgn_hvdump.errors import FormatError
from drgn_hvdump.formats.dump_header import DumpHeader, section_error_names, status_names
from drgn_hvdump.formats.elfcore import CoreLayout, LoadSegment, Note, build_core_header
from drgn_hvdump.formats.fadump_mem import FadumpMem, section_names
from drgn_hvdump.formats.layout import ByteOrder
from drgn_hvdump.formats.regsave import cpu_state_to_pt_regs, parse_regsave, prstatus_notes
from drgn_hvdump.formats.release_region import Extent, ReleaseMap
from drgn_hvdump.formats.vmcoreinfo import VMCOREINFO_NOTE_NAME, VMCOREINFO_NOTE_TYPE
from drgn_hvdump.intervals import IntervalSet

from . import fadump
from .hypervisor import hpt_size
from .kernel import SCENARIOS, CrashedKernel
from .lifecycle import saved_regsave
from .machine import Machine, ViewUnavailable
from .memory import derive_seed
from .state import CaptureState, LparState

__all__ = [
    "boot_id_text",
    "device_tree",
    "meminfo_text",
    "phyp_dump_active_text",
    "proc_version",
    "read_core",
    "release_map",
    "status",
    "vmcore_layout",
]

# Memory the simulated kernel keeps for itself (its image and a 64-byte struct
# page per page frame), fixed at boot as on Linux, so that MemTotal grows by
# exactly the bytes a release frees (totalram_pages counts each freed page).
_STRUCT_PAGE_SIZE = 64


def device_tree(m: Machine, st: LparState) -> dict[str, bytes]:
    """The running kernel's device tree properties (see :meth:`hvsim.lpar.Lpar.device_tree`)."""
    m.need_running(st, "/proc/device-tree")
    cfg = m.config
    fadump = cfg.dump == "fadump"
    # phyp dump ran on POWER6 (9117-MMA); fadump LPARs are today's POWER10 (9080-HEX).
    model, cpu = (b"IBM,9080-HEX", "POWER10") if fadump else (b"IBM,9117-MMA", "POWER6")
    tree: dict[str, bytes] = {
        "model": model + b"\0",
        "compatible": model + b"\0chrp\0",
        "device_type": b"chrp\0",
        "ibm,partition-name": cfg.name.encode() + b"\0",
        "memory@0/device_type": b"memory\0",
        "memory@0/reg": cfg.memory.to_bytes(16, "big"),
        "rtas/name": b"rtas\0",
        f"cpus/PowerPC,{cpu}@0/ibm,pft-size": (0).to_bytes(4, "big")
        + (hpt_size(cfg.memory).bit_length() - 1).to_bytes(4, "big"),
    }
    waiting = st.state == "capture"
    if fadump:
        tree.update(m.fadump(st).rtas_properties(waiting=waiting))
    else:
        hv = m.hv(st)
        kernel_dump = hv.dump_bytes if waiting else None
        tree.update(hv.rtas_properties(dump_kernel=waiting, kernel_dump=kernel_dump))
    return tree


def proc_version(m: Machine, st: LparState) -> str:
    """``/proc/version``: the running kernel's banner (the same kernel boots for capture)."""
    kernel = m.need_running(st, "/proc/version")
    return m.kernel_of(kernel.generation, 0, SCENARIOS["panic"]).banner()


def phyp_dump_active_text(m: Machine, st: LparState) -> str:
    """``/sys/kernel/phyp_dump_active``: ``1`` when booted with ``phyp_dump=1``.

    Absent (ENOENT) without firmware support, where phyp_dump gives up
    before creating its files.
    """
    m.need_running(st, "/sys/kernel/phyp_dump_active")
    if not m.config.firmware_dump:
        raise ViewUnavailable(
            f"{m.path}: /sys/kernel/phyp_dump_active does not exist: "
            "the firmware has no dump support"
        )
    return f"{1 if m.config.dump_enabled else 0:x}\n"


def boot_id_text(m: Machine, st: LparState) -> str:
    """``/proc/sys/kernel/random/boot_id``: a UUID that changes with every boot."""
    kernel = m.need_running(st, "/proc/sys/kernel/random/boot_id")
    value = derive_seed(m.config.seed, "boot-id", kernel.generation)
    value = (value << 64) | derive_seed(value, "boot-id-low")
    return f"{uuid.UUID(int=value, version=4)}\n"


def _kernel_overhead(m: Machine) -> int:
    frames = m.config.memory // m.config.page_size
    # Capped so a huge LPAR's capture kernel still shows memory of its own.
    return min(frames * _STRUCT_PAGE_SIZE, m.config.reserve_size // 2)


def meminfo_text(m: Machine, st: LparState) -> str:
    """``/proc/meminfo``: MemTotal is RAM minus what stays reserved (grows as memory is released)."""
    kernel = m.need_running(st, "/proc/meminfo")
    available = m.config.memory - kernel.reserved.total()
    total = max(0, available - _kernel_overhead(m))
    used = 96 << 20 if kernel.kind == "capture" and st.state == "capture" else total // 3
    free = max(0, total - used)
    kb = 1024
    lines = [
        ("MemTotal", total // kb),
        ("MemFree", free // kb),
        ("Buffers", (used // 16) // kb),
        ("Cached", (used // 4) // kb),
        ("SwapCached", 0),
        ("Active", (used // 2) // kb),
        ("Inactive", (used // 4) // kb),
        ("SwapTotal", 0),
        ("SwapFree", 0),
        ("Dirty", 0),
        ("Slab", (used // 8) // kb),
        ("PageTables", (used // 64) // kb),
        ("CommitLimit", (total // 2) // kb),
        ("Committed_AS", used // kb),
        ("VmallocTotal", 8589934592),
        ("HugePages_Total", 0),
        ("Hugepagesize", 16384),
    ]
    out = []
    for key, value in lines:
        if key.startswith("HugePages"):
            out.append(f"{key + ':':<16}{value:>8}")
        else:
            out.append(f"{key + ':':<16}{value:>8} kB")
    return "\n".join(out) + "\n"


def release_map(m: Machine, st: LparState) -> ReleaseMap:
    """The values ``release_region`` shows (see :meth:`hvsim.lpar.Lpar.release_region_text`)."""
    kernel, _ = m.need_capture(st, "/sys/kernel/release_region")
    cap = kernel.capture
    assert cap is not None
    header = m.hv(st).dump
    assert header is not None
    rest = Extent(cap.init_reserve_start, cap.init_reserve_size - cap.scratch_size)
    if m.config.literal_release_map:
        # The kernel prints its own, never-relocated header: bare offsets
        # and zero lengths (a quirk of the original code).
        cpu = header.cpu.source_length
        hpte = header.hpte.source_length
        return ReleaseMap(Extent(0, 0), Extent(cpu, 0), Extent(cpu + hpte, 0), rest)
    return ReleaseMap(
        Extent(header.cpu.destination_address, header.cpu.length_copied),
        Extent(header.hpte.destination_address, header.hpte.length_copied),
        Extent(header.rmo.destination_address, header.rmo.length_copied),
        rest,
    )


def vmcore_layout(m: Machine, st: LparState) -> tuple[CoreLayout, dict[int, int]]:
    """The ELF layout of ``/proc/vmcore`` (see :meth:`hvsim.lpar.Lpar.read_vmcore`), and
    where a ``PT_LOAD`` whose bytes are not at its own address reads them from
    (its ``p_paddr`` -> the physical address of its first byte now)."""
    if m.config.dump == "fadump":
        return fadump.vmcore_layout(m, st)
    m.need_capture(st, "/proc/vmcore")
    image = m.dump_image(st)
    assert image is not None
    cfg = m.config
    notes = _cpu_notes(image, m.hv(st).dump, cfg.endian)
    notes.append(Note(VMCOREINFO_NOTE_NAME, VMCOREINFO_NOTE_TYPE, image.vmcoreinfo()))
    segments = [
        LoadSegment(0, cfg.reserve_size),
        LoadSegment(cfg.reserve_size, cfg.memory - cfg.reserve_size),
    ]
    return build_core_header(notes, segments, cfg.endian, page_size=cfg.page_size), {}


def read_core(
    layout: CoreLayout,
    read_into: Callable[[int, memoryview], None],
    offset: int,
    size: int,
    moved: Mapping[int, int] | None = None,
) -> bytes:
    """Up to ``size`` bytes at ``offset`` of the core ``layout`` describes, its memory
    read by ``read_into(paddr, buffer)`` (short at the end); ``moved`` maps a
    segment's ``p_paddr`` to where its bytes are now."""
    end = min(offset + size, layout.file_size)
    if offset >= end:
        return b""
    out = bytearray(end - offset)
    view = memoryview(out)
    if offset < layout.data_start:
        n = min(end, layout.data_start) - offset
        view[:n] = layout.header[offset : offset + n]
    for ph in layout.segments:
        lo = max(offset, ph.p_offset)
        hi = min(end, ph.p_offset + ph.p_filesz)
        if lo < hi:
            base = ph.p_paddr if moved is None else moved.get(ph.p_paddr, ph.p_paddr)
            read_into(base + (lo - ph.p_offset), view[lo - offset : hi - offset])
    return bytes(out)


def _cpu_notes(image: CrashedKernel, header: DumpHeader | None, order: ByteOrder) -> list[Note]:
    """The capture kernel's ``NT_PRSTATUS`` notes, built at boot from the saved CPU state.

    A register save area the hypervisor did not copy whole gives none: the
    capture kernel cannot tell which CPUs' entries are complete.
    """
    if header is None or not header.cpu.length_copied:
        return []
    try:
        states = parse_regsave(saved_regsave(image, header), "register save area")
    except FormatError:
        return []
    return prstatus_notes(((s.cpu, cpu_state_to_pt_regs(s)) for s in states), order)


def status(m: Machine, st: LparState) -> dict[str, Any]:
    """Everything ``hvsim status`` shows, as JSON-ready data."""
    cfg = m.config
    hv = m.firmware(st)
    out: dict[str, Any] = {
        "path": m.path,
        "config": cfg.to_json(),
        "state": st.state,
        "generation": st.generation,
        "protected": hv.registered is not None,
        "dump_waiting": hv.dump is not None,
        "firmware_dump": cfg.firmware_dump,
        "interface": "fadump" if cfg.dump == "fadump" else "phyp-dump",
    }
    kernel = st.kernel
    if kernel is not None:
        k: dict[str, Any] = {
            "kind": kernel.kind,
            "generation": kernel.generation,
            "not_registered_reason": kernel.reason or None,
            "reserved": kernel.reserved.to_json(),
            "reserved_bytes": kernel.reserved.total(),
        }
        cap = kernel.release_state
        if cap is not None:
            k["release"] = _release_status(cap, active=kernel.capture is not None)
        out["kernel"] = k
    for name, header in (("registered_header", hv.registered), ("dump_header", hv.dump)):
        if header is not None:
            out[name] = header_json(header)
    dump = st.dump
    if dump is not None:
        out["dump"] = {
            "generation": dump.generation,
            "crash_time": dump.crash_time,
            "crash_cpu": dump.crash_cpu,
            "scenario": dump.scenario,
            "status": dump.status,
            "capture_boots": dump.captures,
            "lost": sorted([list(x) for x in dump.lost]),
            "lost_bytes": IntervalSet((s, e) for s, e, _ in dump.lost).total(),
        }
    out["counters"] = asdict(st.counters)
    out["events"] = [list(e) for e in st.events]
    return out


def _release_status(cap: CaptureState, *, active: bool) -> dict[str, Any]:
    return {
        "active": active,
        "reserved_area": [cap.init_reserve_start, cap.init_reserve_start + cap.init_reserve_size],
        "scratch_area": [cap.scratch_addr, cap.scratch_addr + cap.scratch_size],
        "released": cap.released.to_json(),
        "released_bytes": cap.released.total(),
        "unreleased_dump_bytes": cap.unreleased.total(),
        "writes": cap.releases,
        "reserved_counter": cap.reserved_counter,
        "reserved_target": cap.init_reserve_size,
        "scratch_counter": cap.scratch_counter,
        "scratch_target": cap.scratch_size,
    }


def header_json(h: DumpHeader | FadumpMem) -> dict[str, Any]:
    """A dump header (phyp) or memory structure (fadump) as ``hvsim status`` shows it."""
    if isinstance(h, FadumpMem):
        status, named = h.header.status, list(zip(section_names(h), h.sections, strict=True))
    else:
        status, named = h.status, [("cpu", h.cpu), ("hpte", h.hpte), ("rmo", h.rmo)]
    return {
        "status": status,
        "status_flags": status_names(status),
        "sections": {
            name: {
                "dump_flags": s.dump_flags,
                "source_type": s.source_type,
                "error_flags": s.error_flags,
                "errors": section_error_names(s.error_flags),
                "source_address": s.source_address,
                "source_length": s.source_length,
                "length_copied": s.length_copied,
                "destination_address": s.destination_address,
            }
            for name, s in named
        },
    }

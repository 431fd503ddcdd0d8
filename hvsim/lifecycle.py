"""The LPAR's life cycle: boot (ordinary or capture), crash and the hypervisor's save, reboot.

Each step acts on a typed :class:`hvsim.state.LparState` under the LPAR's
exclusive lock (see :class:`hvsim.lpar.Lpar`), pushing memory layers
(:mod:`hvsim.layers`) and driving the firmware (:mod:`hvsim.hypervisor`).
The kernel's choices the simulator makes are in :mod:`hvsim.lpar`'s
docstring.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from drgn_hvdump.formats.dump_header import DUMP_ERROR_FLAG, DumpHeader, describe_dump_header
from drgn_hvdump.formats.fadump_mem import describe_fadump_mem
from drgn_hvdump.formats.regsave import build_regsave
from drgn_hvdump.intervals import IntervalSet
from drgn_hvdump.model.pages import page_down, page_span, page_up
from drgn_hvdump.model.release import dump_data

from . import fadump
from .hypervisor import Hypervisor, scratch_layout
from .kernel import CrashedKernel, Scenario
from .layers import push_copy, push_generated, push_hptes, push_image, push_memmap, push_overlay
from .machine import LparStateError, Machine
from .memory import derive_seed
from .releasing import free, replace_layout_base, reregister
from .state import CaptureState, DumpRecord, KernelState, LparState

__all__ = ["boot", "crash", "invalidate", "reboot", "saved_regsave"]

_RMO_SIZE = 256 << 20


def boot(m: Machine, st: LparState) -> None:
    """The next boot: a capture boot when a dump waits (and dumps are on), else ordinary."""
    st.generation += 1
    st.counters.boots += 1
    fw = m.firmware(st)
    if fw.dump is not None and m.config.dump_enabled and fw.supported:
        if m.config.dump == "fadump":
            fadump.capture_boot(m, st)
        else:
            _capture_boot(m, st, m.hv(st))
    else:
        _normal_boot(m, st)


def _normal_boot(m: Machine, st: LparState) -> None:
    gen = st.generation
    cfg = m.config
    # A fresh kernel owns all of RAM: one new layer covers it, older layers
    # stay only if the last dump's ground truth needs them.
    st.stack = []
    if cfg.adopted and gen == 1:
        push_image(st, cfg)
    else:
        push_generated(st, m.kernel_seed(gen), [(0, cfg.memory)], f"kernel g{gen}")
    kernel = KernelState("normal", gen)
    st.kernel = kernel
    st.state = "running"
    if cfg.dump == "fadump":
        where = fadump.register_at_boot(m, st, kernel)
    else:
        where = _register_phyp(m, st, kernel)
    if kernel.reason:
        st.event(f"boot g{gen}: ordinary kernel, unprotected: {kernel.reason}")
    else:
        st.event(f"boot g{gen}: ordinary kernel, dump registered, {where}")


def _register_phyp(m: Machine, st: LparState, kernel: KernelState) -> str:
    """An ordinary boot with ``phyp_dump=1`` registers; returns where (or sets ``kernel.reason``)."""
    layout = scratch_layout(m.config)
    return m.register_at_boot(
        st,
        kernel,
        unsupported="Phyp-dump not supported on this hardware (no ibm,configure-kernel-dump)",
        disabled="Phyp-dump disabled at boot time (phyp_dump=0)",
        problem=layout.problem(),
        registration=layout.registration(),
        reserved=[(layout.base, m.config.memory)],
        where=f"scratch area at {layout.base:#x}",
    )


def _capture_boot(m: Machine, st: LparState, hv: Hypervisor) -> None:
    gen = st.generation
    cfg = m.config
    header = hv.dump
    assert header is not None
    st.counters.capture_boots += 1
    # The capture kernel runs in [0, reserve_size) and overwrites it.
    push_generated(
        st, derive_seed(cfg.seed, "capture", gen), [(0, cfg.reserve_size)], f"capture kernel g{gen}"
    )
    kernel = KernelState("capture", gen, IntervalSet([(cfg.reserve_size, cfg.memory)]))
    st.kernel = kernel
    if st.dump is not None:
        st.dump.captured_again(gen)
    if header.status & DUMP_ERROR_FLAG:
        _invalidate_in_error(m, st, hv, header)
        return
    scratch_addr = header.cpu.destination_address
    scratch_size = sum(s.source_length for s in header.sections())
    # The dump's data, as the release map lists it: the rest of the reserved
    # area and the bytes the hypervisor copied into each section. (The map's
    # last pair ends inside the CPU section's first page, and a sliver at the
    # very top of RAM is in no extent: it holds no dump data.)
    irs = cfg.reserve_size
    data = dump_data(
        irs,
        irs + (cfg.memory - irs) - scratch_size,
        [(s.destination_address, s.length_copied) for s in header.sections()],
    )
    kernel.capture = CaptureState(
        data, cfg.reserve_size, cfg.memory - irs, scratch_addr, scratch_size
    )
    st.state = "capture"
    st.event(
        f"boot g{gen}: capture kernel, dump waiting; reserved {cfg.reserve_size:#x}-{cfg.memory:#x}"
    )


def _invalidate_in_error(m: Machine, st: LparState, hv: Hypervisor, header: DumpHeader) -> None:
    # phyp_dump_setup(): a dump in error is invalidated and the area
    # registered again at dump_area_start, which in the dump-waiting
    # path is the start of the reservation (reserve_size).
    cfg = m.config
    hv.invalidate()
    new = replace_layout_base(header, page_down(cfg.reserve_size, cfg.page_size))
    hv.register(new)
    st.counters.registrations += 1
    st.state = "running"
    if st.dump is not None:
        st.dump.status = "invalidated (hypervisor error)"
    if cfg.quirks == "corrected":
        # The corrected kernel keeps only the new scratch area reserved.
        end = page_up(new.rmo.destination_address + new.rmo.source_length, cfg.page_size)
        to_free = IntervalSet([(cfg.reserve_size, cfg.memory)])
        to_free.remove(new.cpu.destination_address, end)
        for s, e in list(to_free):
            free(m, st, s, e)
    quirk = (
        ""
        if cfg.quirks == "corrected"
        else ("; everything above the capture region stays reserved (kernel quirk)")
    )
    st.event(
        f"boot g{st.generation}: dump flagged in error by the hypervisor: invalidated "
        f"and registered again at {new.cpu.destination_address:#x}{quirk}"
    )


def crash(
    m: Machine,
    st: LparState,
    sc: Scenario,
    partial: Mapping[str, int],
    errors: Mapping[str, int],
) -> None:
    """The running kernel crashes; a registered dump is saved by the hypervisor."""
    if st.state not in ("running", "capture"):
        raise LparStateError(
            f"{m.path}: cannot crash: the LPAR is {st.state}"
            + (" (boot it first)" if st.state in ("off", "crashed") else "")
        )
    gen = st.generation
    crash_time = int(time.time())
    image = m.kernel_of(gen, crash_time, sc)
    st.counters.crashes += 1
    was = st.state
    # The dying kernel writes its crash-time data (VMCOREINFO with CRASHTIME,
    # registers into each paca) into its own memory; an adopted image
    # already holds what its kernel wrote.
    overlays = image.overlays()
    if overlays:
        push_overlay(st, m.store, overlays, f"kernel g{gen} crash data")
    # A capture kernel's struct pages are in its own small memory, not over the
    # dump it holds reserved; only an ordinary kernel's dump can use them.
    model = image.memory_model() if st.state == "running" else None
    if model is not None:
        push_memmap(st, model, f"kernel g{gen} struct pages")
    registered = m.firmware(st).registered
    st.state = "crashed"
    st.kernel = None
    if registered is None:
        why = "no dump registered"
        if was == "capture":
            why = "capture kernel crashed; the waiting dump stays in the firmware"
        st.event(f"crash g{gen} ({sc.name}, CPU {image.crash_cpu}): {why}")
        return
    st.counters.dumps += 1
    # Ground truth: memory as the kernel left it, before the firmware writes.
    snap = f"S{gen}"
    st.snapshots[snap] = list(st.stack)
    st.truth = snap
    record = DumpRecord(
        generation=gen,
        crash_time=crash_time,
        crash_cpu=image.crash_cpu,
        scenario=sc.name,
        sections={},
    )
    if m.config.dump == "fadump":
        mem = fadump.save(m, st, image, sc, partial, errors, snap)
        st.dump = fadump.dump_record(m, mem, record)
        flags = f"firmware saved the dump, {describe_fadump_mem(mem)[0]}"
    else:
        header = _phyp_save(m, st, image, sc, partial, errors, snap)
        st.dump = _dump_record(m, header, record)
        flags = f"hypervisor saved the dump, {describe_dump_header(header)[0]}"
    st.event(f"crash g{gen} ({sc.name}, CPU {image.crash_cpu}): {flags}")


def _phyp_save(
    m: Machine,
    st: LparState,
    image: CrashedKernel,
    sc: Scenario,
    partial: Mapping[str, int],
    errors: Mapping[str, int],
    snap: str,
) -> DumpHeader:
    hv = m.hv(st)
    registered = hv.registered
    assert registered is not None
    copied = sc.copied(partial, "rmo", registered.rmo.source_length)
    header = hv.crash(copied=copied, errors=errors, hv_error=sc.hv_error)
    assert header is not None
    _hv_save(m, st, image, header, snap)
    return header


def _dump_record(m: Machine, header: DumpHeader, dump: DumpRecord) -> DumpRecord:
    dump.sections = {
        name: (s.destination_address, s.source_length, s.length_copied)
        for name, s in (("cpu", header.cpu), ("hpte", header.hpte), ("rmo", header.rmo))
    }
    rmo = header.rmo
    dump.add_lost(
        rmo.source_address + rmo.length_copied,
        rmo.source_address + rmo.source_length,
        "not copied by the hypervisor (partial copy)",
    )
    dump.add_lost(
        _RMO_SIZE, m.config.reserve_size, "capture kernel memory above the 256 MiB low-memory copy"
    )
    return dump


def saved_regsave(image: CrashedKernel, header: DumpHeader) -> bytes:
    """The register save area as the hypervisor copied it (cut short by a partial copy)."""
    return build_regsave(image.cpu_states())[: header.cpu.length_copied]


def _hv_save(
    m: Machine, st: LparState, image: CrashedKernel, header: DumpHeader, snap: str
) -> None:
    """Lay the hypervisor's saved sections into memory as layers."""
    cpu, hpte, rmo = header.cpu, header.hpte, header.rmo
    if cpu.length_copied:
        pieces = [(cpu.destination_address, saved_regsave(image, header))]
        push_overlay(st, m.store, pieces, "hypervisor: CPU state")
    if hpte.length_copied:
        entries = image.hash_page_table(hpte.source_length)
        push_hptes(st, m.store, entries, hpte.destination_address, hpte.length_copied,
                   "hypervisor: HPTEs")  # fmt: skip
    if rmo.length_copied:
        push_copy(st, snap, rmo.source_address, rmo.destination_address, rmo.length_copied,
                  "hypervisor: low-memory copy")  # fmt: skip


def reboot(m: Machine, st: LparState) -> None:
    """Reboot without a crash (see :meth:`hvsim.lpar.Lpar.reboot`)."""
    was = st.state
    if was in ("running", "capture"):
        m.firmware(st).unregister()
        st.state = "off"
        st.event(f"reboot g{st.generation} ({was}), no crash")
    boot(m, st)


def invalidate(m: Machine, st: LparState) -> None:
    """Give up the waiting dump (see :meth:`hvsim.lpar.Lpar.invalidate`)."""
    hv = m.firmware(st)
    if hv.dump is None:
        raise LparStateError(f"{m.path}: no dump is waiting; nothing to invalidate")
    kernel = st.kernel
    capture = st.state == "capture" and kernel is not None and kernel.capture is not None
    if capture and m.config.dump == "fadump":
        fadump.release_mem(m, st, "invalidated by request")
    elif capture and kernel is not None and kernel.capture is not None:
        cap = kernel.capture
        ps = m.config.page_size
        scratch = page_span(cap.scratch_addr, cap.scratch_addr + cap.scratch_size, ps)
        to_free = kernel.reserved.copy()
        to_free.remove(*scratch)
        for s, e in list(to_free):
            free(m, st, s, e)
        reregister(m, st, "invalidated by request")
        kernel.reserved = IntervalSet([scratch])
    else:
        hv.invalidate()
        if st.dump is not None:
            st.dump.status = "invalidated by request"
        st.event("dump invalidated in the firmware; the next boot is ordinary")

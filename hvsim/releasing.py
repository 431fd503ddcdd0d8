"""Giving reserved memory back: a write to ``release_region``, and re-registration.

The rules themselves (which pages a write frees, when the kernel counts it
done) are :mod:`drgn_hvdump.model.release`'s, shared with the collector's
planner; here they act on the LPAR: freed pages are reused at once by the
capture kernel (they read as its new data), and the dump is invalidated and
the scratch area registered again when the release is complete.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from drgn_hvdump.formats.dump_header import DumpHeader, registration_header
from drgn_hvdump.intervals import IntervalSet
from drgn_hvdump.model.pages import page_span
from drgn_hvdump.model.release import (
    ReleaseCounters,
    corrected_release,
    counts_in_reserved,
    counts_in_scratch,
    faithful_release,
    reregisters,
)

from .layers import push_generated
from .machine import Machine, ReleaseError
from .memory import derive_seed
from .state import CaptureState, KernelState, LparState

__all__ = ["ReleaseResult", "free", "release", "replace_layout_base", "reregister"]


@dataclass(frozen=True)
class ReleaseResult:
    """What one release did.

    ``addr``/``size`` are the values written; ``freed`` the page ranges that
    went back to the kernel (only pages that were still reserved);
    ``clamped`` whether the range was cut to the reserved area;
    ``reregistered`` whether this write completed the release and the kernel
    invalidated the dump and registered again.
    """

    addr: int
    size: int
    freed: tuple[tuple[int, int], ...]
    clamped: bool
    reregistered: bool
    note: str = ""

    @property
    def freed_bytes(self) -> int:
        return sum(e - s for s, e in self.freed)


def replace_layout_base(header: DumpHeader, base: int) -> DumpHeader:
    """A fresh registration with ``header``'s section sizes at scratch address ``base``."""
    return registration_header(
        header.cpu.source_length, header.hpte.source_length, header.rmo.source_length, base
    )


def _capture(m: Machine, st: LparState) -> tuple[KernelState, CaptureState]:
    kernel = st.kernel
    if st.state != "capture" or kernel is None or kernel.capture is None:
        raise ReleaseError(m.no_dump_message(st), errno.ENOENT)
    return kernel, kernel.capture


def release(m: Machine, st: LparState, addr: int, size: int) -> ReleaseResult:
    """Release ``[addr, addr + size)`` as the configured kernel does (``quirks``)."""
    _capture(m, st)
    if m.config.quirks == "faithful":
        return _release_faithful(m, st, addr, size)
    return _release_corrected(m, st, addr, size)


def _release_faithful(m: Machine, st: LparState, addr: int, size: int) -> ReleaseResult:
    _, cap = _capture(m, st)
    area = cap.area
    cap.releases += 1
    st.counters.releases += 1
    # track_freed_range(): unclamped values into two counters (unsigned long).
    counted = counts_in_reserved(addr, area) or counts_in_scratch(addr, area)
    counters = ReleaseCounters(cap.reserved_counter, cap.scratch_counter).count(addr, size, area)
    cap.reserved_counter, cap.scratch_counter = counters.reserved, counters.scratch
    rereg = reregisters(addr, counters, area)
    # Clamp as the kernel does: the start moves up but the length is kept,
    # so "0 X" releases [reserve start, reserve start + X]; pages are freed
    # through one page past the end (kernel quirk). A start past the end
    # underflows in the kernel; hvsim frees nothing (but the write still counted).
    rel = faithful_release(addr, size, area, m.config.page_size)
    note = ""
    if rel.underflow:
        note = "start past the end of the reserved area: nothing freed (kernel underflow)"
    freed: list[tuple[int, int]] = []
    if rel.freed is not None:
        freed = free(m, st, *rel.freed)
    parts = [f"release {addr:#x} {size:#x}: freed {sum(e - s for s, e in freed):#x} bytes"]
    if rel.clamped:
        parts.append("clamped")
    if not counted:
        parts.append("not counted")
    if note:
        parts.append(note)
    st.event(", ".join(parts))
    if rereg:
        reregister(m, st, "release counters reached the reserved and scratch sizes")
    return ReleaseResult(addr, size, tuple(freed), rel.clamped, rereg, note)


def _release_corrected(m: Machine, st: LparState, addr: int, size: int) -> ReleaseResult:
    kernel, cap = _capture(m, st)
    area = cap.area
    if addr < area.start or addr + size > area.end:
        raise ReleaseError(
            f"release {addr:#x} {size:#x}: outside the reserved area "
            f"{area.start:#x}-{area.end:#x} (EINVAL)",
            errno.EINVAL,
        )
    cap.releases += 1
    st.counters.releases += 1
    # A page goes back once none of its dump bytes is still unreleased: a
    # page shared by two sections goes back when the second is released.
    rel = corrected_release(addr, size, cap.unreleased, m.config.page_size)
    cap.unreleased = rel.unreleased
    freed: list[tuple[int, int]] = []
    for a, b in rel.pages:
        freed.extend(free(m, st, a, b))
    rereg = rel.complete
    if rereg:
        # Nothing of the dump is left: reserved pages that held no dump data
        # (above a partial copy, the sliver at the top of RAM) go back too.
        for a, b in list(kernel.reserved):
            freed.extend(free(m, st, a, b))
    st.event(f"release {addr:#x} {size:#x}: freed {sum(e - s for s, e in freed):#x} bytes")
    if rereg:
        reregister(m, st, "every byte of the dump released")
    return ReleaseResult(addr, size, tuple(sorted(freed)), False, rereg)


def free(m: Machine, st: LparState, start: int, end: int) -> list[tuple[int, int]]:
    """Give still-reserved pages in ``[start, end)`` back to the kernel, which reuses them."""
    kernel = st.kernel
    assert kernel is not None
    freed = kernel.reserved.intersect(start, end)
    if not freed:
        return []
    for s, e in freed:
        kernel.reserved.remove(s, e)
    cap = kernel.capture
    if cap is not None:
        for s, e in freed:
            cap.released.add(s, e)
            cap.unreleased.remove(s, e)
            if st.dump is not None:
                st.dump.capture_released.add(s, e)
    # Released memory is reused at once: it reads as the running kernel's new data.
    reuse_id = cap.reuse_layer if cap is not None else None
    if reuse_id is None or reuse_id not in st.layers or st.stack[-1] != reuse_id:
        gen = kernel.generation
        layer = push_generated(
            st, derive_seed(m.config.seed, "reuse", gen), [], f"memory reused by kernel g{gen}"
        )
        reuse_id = layer.id
        if cap is not None:
            cap.reuse_layer = reuse_id
    for s, e in freed:
        st.layers[reuse_id].extents.add(s, e)
    return freed


def reregister(m: Machine, st: LparState, why: str) -> None:
    """Invalidate the dump and register at the old scratch area; back to ``running``."""
    hv = m.hv(st)
    kernel, cap = _capture(m, st)
    header = hv.dump
    assert header is not None
    hv.invalidate()
    hv.register(replace_layout_base(header, cap.scratch_addr))
    st.counters.registrations += 1
    st.counters.reregistrations += 1
    st.state = "running"
    if st.dump is not None:
        st.dump.status = f"released ({why})"
        st.dump.capture_released = IntervalSet()
    ps = m.config.page_size
    scratch = page_span(cap.scratch_addr, cap.scratch_addr + cap.scratch_size, ps)
    reserved = kernel.reserved.copy()
    warning = ""
    if m.config.quirks == "corrected":
        # The corrected kernel takes its scratch area back before registering it.
        reserved.add(*scratch)
    elif reserved.intersect(*scratch) != [scratch]:
        warning = "; the registered scratch area is partly in use by the kernel (kernel quirk)"
    leftover = kernel.reserved.copy()
    leftover.remove(*scratch)
    if leftover and m.config.quirks == "faithful":
        warning += f"; re-registered early: {leftover.total():#x} bytes were never released"
    kernel.reserved = reserved
    kernel.capture_done = cap
    kernel.capture = None
    st.event(f"dump invalidated and registered again at {cap.scratch_addr:#x} ({why}){warning}")

"""The crashed CPUs' registers for drgn, from the hypervisor's register save area.

With ``CRASHTIME`` in VMCOREINFO drgn takes an on-CPU task's registers from
the per-CPU ``crash_notes`` buffer in the dump's memory (the first
``CORE``/``NT_PRSTATUS`` note there), not from the core file's notes. A
kernel that crashed into the hypervisor never ran ``crash_save_cpu()``, so
those buffers may be empty or stale; the save area is the truth. An object
finder sees drgn look ``crash_notes`` up, and lays a note built from the save
area over each CPU's buffer, in both the virtual and the physical view, before
drgn reads it. Without ``CRASHTIME`` drgn reads the ``NT_PRSTATUS`` notes of
the file, which ``hvdump collect`` builds from the same save area.
"""

from __future__ import annotations

import drgn

from drgn_hvdump.formats.elfcore import (
    NT_PRSTATUS,
    PAGE_OFFSET_PPC64,
    Note,
    build_notes,
    build_prstatus,
)
from drgn_hvdump.formats.layout import ByteOrder
from drgn_hvdump.formats.regsave import CpuState, cpu_state_to_pt_regs

__all__ = ["crash_note", "install_registers"]

_EMPTY_NOTE = bytes(12)  # the terminating note crash_save_cpu() leaves after PRSTATUS
_CACHE_KEY = "hvdump.crash_notes"


def crash_note(state: CpuState, byteorder: ByteOrder, pid: int = 0) -> bytes:
    """A CPU's ``crash_notes`` buffer as ``crash_save_cpu()`` fills it, from its saved registers."""
    desc = build_prstatus(cpu_state_to_pt_regs(state), byteorder, pid=pid)
    return build_notes([Note("CORE", NT_PRSTATUS, desc)], byteorder) + _EMPTY_NOTE


def _running_pid(prog: drgn.Program, cpu: int) -> int:
    try:
        from drgn.helpers.linux.percpu import per_cpu

        return int(per_cpu(prog["runqueues"], cpu).curr.pid.value_())
    except (LookupError, drgn.FaultError, AttributeError, TypeError, ValueError):
        return 0


def _has_note(prog: drgn.Program, addr: int, byteorder: ByteOrder) -> bool:
    """Whether the ``crash_notes`` buffer at ``addr`` holds a ``CORE`` note already."""
    try:
        head = prog.read(addr, 12)
    except drgn.FaultError:
        return False
    namesz = int.from_bytes(head[0:4], byteorder)
    kind = int.from_bytes(head[8:12], byteorder)
    return namesz == 5 and kind == NT_PRSTATUS


def install_registers(
    prog: drgn.Program, states: list[CpuState], byteorder: ByteOrder, *, keep_saved: bool = False
) -> None:
    """Make drgn's on-CPU registers come from ``states`` (see the module docstring).

    ``keep_saved``: leave a CPU whose buffer the kernel filled (fadump's kernel
    fills none; a buffer it did fill is the kernel's own truth)."""
    if not states or _CACHE_KEY in prog.cache:
        return
    busy = False

    def finder(
        prog: drgn.Program, name: str, flags: drgn.FindObjectFlags, filename: str | None
    ) -> drgn.Object | None:
        nonlocal busy
        if name != "crash_notes" or busy or prog.cache.get(_CACHE_KEY):
            return None
        busy = True
        try:
            notes = prog["crash_notes"].value_()
            offsets = prog["__per_cpu_offset"]
            for state in states:
                addr = (notes + offsets[state.cpu].value_()) & ((1 << 64) - 1)
                if keep_saved and _has_note(prog, addr, byteorder):
                    continue
                buf = crash_note(state, byteorder, _running_pid(prog, state.cpu))

                def read(
                    a: int, count: int, offset: int, physical: bool, buf: bytes = buf
                ) -> bytes:
                    return buf[offset : offset + count]

                prog.add_memory_segment(addr, len(buf), read, False)
                if addr >= PAGE_OFFSET_PPC64:
                    prog.add_memory_segment(addr - PAGE_OFFSET_PPC64, len(buf), read, True)
            prog.cache[_CACHE_KEY] = True
        except (LookupError, drgn.FaultError, IndexError):
            pass  # no debug info yet: drgn cannot unwind either; try at the next lookup
        finally:
            busy = False
        return None  # drgn's own finders answer with the real object

    prog.cache[_CACHE_KEY] = False
    prog.register_object_finder("hvdump-crash-notes", finder, enable_index=0)

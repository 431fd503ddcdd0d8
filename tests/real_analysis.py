"""drgn's first look at a real kernel: the same analysis on the original image and on our output.

:func:`open_original` reads QEMU's image the way stock drgn can be made to:
its VMCOREINFO given explicitly (QEMU writes none for pseries), physical
segments and the linear map added by hand (QEMU's ``p_paddr`` and
``p_vaddr`` are 0, which drgn ignores), registers from QEMU's own
``NT_PRSTATUS`` notes. :func:`analyse` then gives what an engineer looks at
first, as plain data that two programs can be compared on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import drgn
from drgn import Platform, PlatformFlags, Program
from drgn.helpers.linux.list import list_for_each_entry
from drgn.helpers.linux.pid import find_task, for_each_task
from drgn.helpers.linux.printk import get_printk_records

from drgn_hvdump.formats.guestcore import KERNEL_BASE, GuestImage
from drgn_hvdump.plugin.helpers import pt_regs_object

__all__ = [
    "Analysis",
    "analyse",
    "drgn_takes_pc_from_link",
    "open_original",
    "stock_analysis",
    "trace_of",
]


@dataclass
class Analysis:
    release: str
    tasks: list[tuple[str, int]]
    printk: list[str]
    panic_cpu: int
    panic_trace: list[str]
    panic_trace_from: str
    """``crashed_thread``: drgn found the registers itself; ``pt_regs``: given to it."""
    process_traces: dict[str, list[str]]
    modules: list[str] = field(default_factory=list)
    rodata: bytes = b""
    cpu_traces: dict[str, list[str]] = field(default_factory=dict)
    """Each CPU's backtrace (keys are CPU numbers as text: JSON's), of the task on it."""
    cpu_traces_from: dict[str, str] = field(default_factory=dict)
    """``core``: drgn found the CPU's registers itself; ``pt_regs``: given to it."""


def open_original(image: GuestImage, debug_vmlinux: Path) -> Program:
    """Stock drgn (no plugin) on the image itself, as much as drgn 0.3 can read of it."""
    flags = PlatformFlags.IS_64_BIT
    if image.byteorder == "little":
        flags |= PlatformFlags.IS_LITTLE_ENDIAN
    prog = Program(Platform(drgn.Architecture.PPC64, flags), vmcoreinfo=image.vmcoreinfo)
    fd = os.open(image.path, os.O_RDONLY | os.O_CLOEXEC)
    prog.cache["hvtest_fd"] = fd  # keep the file open as long as the program

    def reader(offset: int) -> Any:
        def read(address: int, count: int, off: int, physical: bool) -> bytes:
            return os.pread(fd, count, offset + off)

        return read

    # drgn's order: physical segments, then the kernel, then virtual segments.
    for seg in image.segments:
        prog.add_memory_segment(seg.paddr, seg.filesz, reader(seg.offset), True)
    prog.set_linux_kernel_custom(image.vmcoreinfo, False)
    for seg in image.segments:
        prog.add_memory_segment(KERNEL_BASE + seg.paddr, seg.filesz, reader(seg.offset), False)
    prog.load_debug_info([str(debug_vmlinux)])
    return prog


def trace_of(trace: Any) -> list[str]:
    """A stack trace as ``function+offset`` (or the pc) per frame."""
    out = []
    for frame in trace:
        try:
            sym = frame.symbol()
            out.append(f"{sym.name}+{frame.pc - sym.address:#x}")
        except LookupError:
            out.append(f"{frame.pc:#x}")
    return out


def drgn_takes_pc_from_link(release: str) -> bool:
    """Whether drgn 0.3 reads a PRSTATUS note of this kernel with the PC taken from LR.

    Kernels before 6.5 (stable: 6.4.4, 6.3.13, 6.1.39, 5.15.121) saved the
    caller's registers in ``crash_save_cpu``; drgn decides by the release
    string, so Debian's ``6.1.0-57`` counts as 6.1.0 whatever its real level.
    """
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if not m:
        return False
    v = (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))
    fixed = {(6, 4): 4, (6, 3): 13, (6, 1): 39, (5, 15): 121}
    if v >= (6, 5, 0):
        return False
    stable = fixed.get(v[:2])
    return stable is None or v[2] < stable


def _cpu_traces(
    prog: Program, cpu_regs: list[Any] | None, byteorder: str
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Every CPU's backtrace: from ``cpu_regs`` when given, else as drgn unwinds the task
    on the CPU (registers it finds itself: a PRSTATUS note, or ``crash_notes``)."""
    from drgn.helpers.linux.cpumask import for_each_present_cpu
    from drgn.helpers.linux.sched import cpu_curr

    traces: dict[str, list[str]] = {}
    sources: dict[str, str] = {}
    for cpu in for_each_present_cpu(prog):  # panic() takes the others offline
        if cpu_regs is not None:
            trace = prog.stack_trace(pt_regs_object(prog, cpu_regs[cpu], byteorder))
            sources[str(cpu)] = "pt_regs"
        else:
            trace = prog.stack_trace(cpu_curr(prog, cpu))
            sources[str(cpu)] = "core"
        traces[str(cpu)] = trace_of(trace)
    return traces, sources


def analyse(
    prog: Program,
    process_pids: dict[str, int],
    *,
    panic_regs: Any = None,
    cpu_regs: list[Any] | None = None,
    byteorder: str = "little",
    modules: bool = True,
    rodata: int = 0,
    crashed_cpu: int | None = None,
) -> Analysis:
    """What drgn shows first.

    The panicking CPU's trace is ``prog.crashed_thread()``'s, or unwound from
    ``panic_regs`` when given (stock drgn on QEMU's image, which has no notes
    drgn can use).
    """
    release = prog["init_uts_ns"].name.release.string_().decode()
    tasks = sorted((t.comm.string_().decode(), int(t.pid)) for t in for_each_task(prog))
    printk = [r.text.decode(errors="replace") for r in get_printk_records(prog)]
    panic_cpu = int(prog["panic_cpu"].counter)
    if panic_regs is not None:
        trace = prog.stack_trace(pt_regs_object(prog, panic_regs, byteorder))
        source = "pt_regs"
    else:
        try:
            trace, source = prog.crashed_thread().stack_trace(), "crashed_thread"
        except LookupError:
            # no panic_cpu (an oops that went to the firmware from oops_end): the
            # task on the CPU that crashed, as the caller knows it
            if crashed_cpu is None:
                raise
            from drgn.helpers.linux.sched import cpu_curr

            trace, source = prog.stack_trace(cpu_curr(prog, crashed_cpu)), "cpu_curr"
    panic_trace = trace_of(trace)
    traces = {
        name: trace_of(prog.stack_trace(find_task(prog, pid))) for name, pid in process_pids.items()
    }
    mods: list[str] = []
    data = b""
    if modules:
        mods = sorted(
            m.name.string_().decode()
            for m in list_for_each_entry("struct module", prog["modules"].address_of_(), "list")
        )
    if rodata:
        data = prog.read(rodata, 256)
    cpus, cpus_from = _cpu_traces(prog, cpu_regs, byteorder)
    return Analysis(
        release, tasks, printk, panic_cpu, panic_trace, source, traces, mods, data, cpus, cpus_from
    )


def stock_analysis(
    core: Path,
    debug_vmlinux: Path,
    pids: dict[str, int],
    panic_cpu: int,
    *,
    pc_from_link: bool = False,
    modules: bool = False,
    rodata: int = 0,
    vmalloc_probe: int = 0,
    vmcoreinfo_at: int | None = None,
) -> tuple[Analysis, str]:
    """:func:`analyse` of the original image by stock drgn (a process with the plugin off).

    ``pc_from_link`` reads the panicking CPU's registers as drgn reads a
    PRSTATUS note of this release; ``vmalloc_probe`` is an address whose
    read error (``""`` if it reads) is returned too.
    """
    spec = {
        "core": str(core),
        "vmlinux": str(debug_vmlinux),
        "pids": pids,
        "cpu": panic_cpu,
        "pc_from_link": pc_from_link,
        "modules": modules,
        "rodata": rodata,
        "probe": vmalloc_probe,
        "vmcoreinfo_at": vmcoreinfo_at,
    }
    env = dict(os.environ, DRGN_DISABLE_PLUGINS="*")
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = str(root)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.real_analysis", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if proc.returncode:
        raise RuntimeError(f"stock drgn on {core} failed: {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.splitlines()[-1])
    a = out["analysis"]
    a["rodata"] = bytes.fromhex(a["rodata"])
    a["tasks"] = [tuple(t) for t in a["tasks"]]  # JSON has no tuples
    return Analysis(**a), out["probe"]


def _main(spec: dict[str, Any]) -> dict[str, Any]:
    from hvsim.adopt import inspect_image

    image = inspect_image(spec["core"], vmcoreinfo_at=spec.get("vmcoreinfo_at"))
    every = list(image.registers)
    if spec["pc_from_link"]:
        every = [dataclasses.replace(r, nip=r.link) for r in every]
    regs = every[spec["cpu"]]
    prog = open_original(image, Path(spec["vmlinux"]))
    a = analyse(
        prog,
        spec["pids"],
        panic_regs=regs,
        cpu_regs=every,
        byteorder=image.byteorder,
        modules=spec["modules"],
        rodata=spec["rodata"],
    )
    probe = ""
    if spec["probe"]:
        try:
            prog.read(spec["probe"], 8)
        except (NotImplementedError, drgn.FaultError) as exc:
            probe = f"{type(exc).__name__}: {exc}"
    result = dataclasses.asdict(a)
    result["rodata"] = a.rodata.hex()
    return {"analysis": result, "probe": probe}


if __name__ == "__main__":
    print(json.dumps(_main(json.loads(sys.argv[1]))))

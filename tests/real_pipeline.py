"""The pipeline on a real kernel's image, step by step, timed: shared by the suite and the bench.

:func:`run_pipeline` boots the guest (:mod:`tests.real_kernel`), adopts its
image into an LPAR, crashes it, analyses the live capture root with drgn,
collects with progressive release, verifies, and analyses the collected dump
and the original image (:mod:`tests.real_analysis`); the suite asserts on
the :class:`Run` it returns, the bench prints its times.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import drgn
from drgn.commands import run_command

from drgn_hvdump.formats.guestcore import GuestImage
from drgn_hvdump.plugin.helpers import hvdump_registers
from hvsim import Lpar
from hvsim.adopt import inspect_image
from tests.collect_support import hvdump, manifest, mounted
from tests.real_analysis import Analysis, analyse, drgn_takes_pc_from_link, stock_analysis
from tests.real_kernel import CPU_MODELS, KERNELS, GuestDump, Parts, boot_and_dump

__all__ = ["LIVE_COMMANDS", "REPORT", "Run", "run_pipeline"]

LIVE_COMMANDS = ("hvdump", "hvdump regions", "hvdump hpte {rodata:#x}", "crash bt")
"""Commands run on the live root: the plugin's, then drgn's own ``bt`` of the panicking task."""

REPORT = Path(__file__).resolve().parent.parent / "bench" / "out" / "real-kernel.json"
"""Each step's time, written for docs/benchmarks.md (bench/out is not committed)."""


@dataclass
class Run:
    guest: GuestDump
    image: GuestImage
    lpar: Lpar
    out: Path
    collect: Any
    direct: Analysis
    direct_prstatus: Analysis
    live: Analysis
    collected: Analysis
    live_regs: list[Any]
    collected_regs: list[Any]
    verify_sections: str
    verify_dump: str
    hvdump_verify: str
    stock_vmalloc_error: str
    converted: Analysis
    """drgn on ``hvdump convert``'s default output of the original image (no hvsim involved):
    kdump, or ELF for a kernel drgn cannot read in kdump files (4 KiB pages)."""
    live_commands: str
    """What :data:`LIVE_COMMANDS` printed on the live root."""
    times: dict[str, float] = field(default_factory=dict)
    converted_elf: Analysis | None = None
    """drgn on ``hvdump convert --format elf``'s output (None: the default is ELF already)."""
    convert_stderr: str = ""
    kernel: str = "6.1"
    """The series of :data:`tests.real_kernel.KERNELS`."""
    collected_elf: Analysis | None = None
    """drgn on ``hvdump collect --format elf``'s output (None: the default is ELF already)."""


def _open(path: Path, vmlinux: Path) -> drgn.Program:
    prog = drgn.Program()
    prog.set_core_dump(str(path))
    prog.load_debug_info([str(vmlinux)])
    return prog


def run_pipeline(parts: Parts, initrd: Path, d: Path, mmu: str) -> Run:
    """Boot, dump, adopt, crash, analyse live, collect, verify, analyse the dump; timed."""
    times: dict[str, float] = {"fetch_s": parts.download_s}
    guest = boot_and_dump(parts, initrd, d / "guest", mmu)
    info = guest.info
    assert info.panic_cpu >= 0, guest.console[-3000:]
    times.update(
        boot_to_panic_s=guest.boot_to_panic_s, dump_s=guest.dump_s, panic_stops=guest.stops
    )

    t = time.monotonic()
    lpar = Lpar.adopt(d / "lpar", guest.core, crash_cpu=info.panic_cpu, mmu=mmu, boot=True)
    times["adopt_boot_s"] = time.monotonic() - t
    image = inspect_image(guest.core)
    t = time.monotonic()
    lpar.crash()
    times["crash_s"] = time.monotonic() - t
    assert lpar.state == "capture"
    sections = hvsim_cli("verify", lpar.path)

    # drgn on the original image: registers as QEMU saved them, and as drgn
    # itself reads a PRSTATUS note of this release (see drgn_takes_pc_from_link).
    # Stock drgn on the original image (a process with the plugin off):
    # registers as QEMU saved them, and as drgn itself reads a PRSTATUS note
    # of this release (see drgn_takes_pc_from_link).
    t = time.monotonic()
    radix = mmu == "radix"  # stock drgn reads vmalloc memory of radix kernels only
    direct, stock = stock_analysis(
        guest.core,
        parts.debug_vmlinux,
        info.pids,
        info.panic_cpu,
        modules=radix,
        rodata=info.rodata if radix else 0,
        vmalloc_probe=info.modules[0][1],
    )
    times["drgn_direct_s"] = time.monotonic() - t
    direct_prstatus, _ = stock_analysis(
        guest.core,
        parts.debug_vmlinux,
        info.pids,
        info.panic_cpu,
        pc_from_link=drgn_takes_pc_from_link(image.osrelease),
    )

    out = d / "dump"
    with mounted(lpar, d / "root") as root:
        t = time.monotonic()
        live_prog = _open(root / "proc/vmcore", parts.debug_vmlinux)
        try:
            live = analyse(live_prog, info.pids, rodata=info.rodata)
            live_regs = hvdump_registers(live_prog)
            times["drgn_live_s"] = time.monotonic() - t
            commands = io.StringIO()
            with contextlib.redirect_stdout(commands):
                for cmd in LIVE_COMMANDS:
                    run_command(live_prog, cmd.format(rodata=info.rodata))
        finally:
            # drgn and the plugin keep the vmcore open until the program goes
            # (also when a check fails: the unmount must not hide the failure).
            del live_prog
            gc.collect()
        collected_elf = None
        if KERNELS[parts.kernel].page_size != 4096:
            # The other format through the capture root, before any memory goes back.
            elf = hvdump(
                "collect", "--root", str(root), "--output", str(d / "dump-elf"),
                "--format", "elf", "--release", "never", "--no-progress", timeout=600,
            )  # fmt: skip
            assert elf.returncode == 0, elf.stderr
            collected_elf = analyse(
                _open(d / "dump-elf" / "dump.elf", parts.debug_vmlinux), info.pids,
                rodata=info.rodata,
            )  # fmt: skip
        t = time.monotonic()
        collect = hvdump(
            "collect", "--root", str(root), "--output", str(out), "--release", "progressive",
            "--no-progress", timeout=600,
        )  # fmt: skip
        times["collect_s"] = time.monotonic() - t
        assert collect.returncode == 0, collect.stderr
    t = time.monotonic()
    checked = hvdump("verify", str(out))
    times["hvdump_verify_s"] = time.monotonic() - t
    dump_file = out / manifest(out)["dump"]["file"]  # ELF where kdump would be unreadable
    t = time.monotonic()
    dump_check = hvsim_cli("verify", lpar.path, str(dump_file))
    times["hvsim_verify_s"] = time.monotonic() - t
    t = time.monotonic()
    collected_prog = _open(dump_file, parts.debug_vmlinux)
    collected = analyse(collected_prog, info.pids, rodata=info.rodata)
    collected_regs = hvdump_registers(collected_prog)
    times["drgn_collected_s"] = time.monotonic() - t
    t = time.monotonic()
    conv = hvdump("convert", "--no-progress", str(guest.core), str(d / "converted"))
    assert conv.returncode == 0, conv.stderr
    times["convert_s"] = time.monotonic() - t
    converted_file = d / "converted" / manifest(d / "converted")["dump"]["file"]
    converted = analyse(_open(converted_file, parts.debug_vmlinux), info.pids, rodata=info.rodata)
    converted_elf = None
    if converted_file.suffix != ".elf":
        conv_elf = hvdump(
            "convert", "--no-progress", "--format", "elf", str(guest.core), str(d / "elf")
        )
        assert conv_elf.returncode == 0, conv_elf.stderr
        converted_elf = analyse(
            _open(d / "elf" / "dump.elf", parts.debug_vmlinux), info.pids, rodata=info.rodata
        )
    m = manifest(out)
    times["dump_bytes"] = dump_file.stat().st_size
    times["collect_elapsed_s"] = m["timings"]["elapsed_s"]
    _report(mmu, parts, guest, times)
    return Run(
        guest, image, lpar, out, collect, direct, direct_prstatus, live, collected, live_regs,
        collected_regs, sections, dump_check, checked.stdout + checked.stderr, stock, converted,
        commands.getvalue(), times, converted_elf, conv.stderr, parts.kernel, collected_elf,
    )  # fmt: skip


def hvsim_cli(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "hvsim", *args], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _report(mmu: str, parts: Parts, guest: GuestDump, times: dict[str, float]) -> None:
    REPORT.parent.mkdir(exist_ok=True)
    data = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    data[f"{parts.kernel}-{mmu}"] = {"kernel": parts.release, "cpu": CPU_MODELS[mmu], **times}
    REPORT.write_text(json.dumps(data, indent=1))
    print(f"\nreal kernel {parts.release} ({mmu}, {CPU_MODELS[mmu]}): " + ", ".join(
        f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in times.items()
    ))  # fmt: skip

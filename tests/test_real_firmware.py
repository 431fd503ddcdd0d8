"""fadump on QEMU's PAPR firmware, with hvdump inside the real capture kernel
(``make test-firmware``; marker ``firmware``).

For each MMU (hash, radix) one guest run (:func:`tests.real_firmware.run_guest`):
the first kernel registers fadump and panics through sysrq; in the real capture
kernel ``hvdump status``, ``makedumpfile`` and ``hvdump collect`` run on the
real ``/proc/vmcore``; the collector releases with ``release_mem`` and
re-registers; the same kernel then oopses on CPU 1 and the next capture boot
collects that dump too. On the host: ``hvdump verify`` on both dumps, and drgn
(with the plugin, and without) on them against drgn on QEMU's own image of the
guest taken at each panic.

The suite skips only when Debian's archive cannot be reached and nothing is
cached (it says so); anything else that goes wrong fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from tests.collect_support import manifest
from tests.real_analysis import Analysis, analyse, stock_analysis
from tests.real_firmware import (
    CPU_MODELS,
    FIXTURES,
    RODATA_MODULE,
    RODATA_SECTION,
    FirmwareRun,
    Parts,
    build_initramfs,
    fetch_parts,
    run_guest,
    save_fixtures,
)
from tests.real_kernel import PANIC_CPU, PROCESSES, RegistryUnreachable
from tests.real_pipeline import _open

pytestmark = [pytest.mark.firmware, pytest.mark.slow]

REPORT = Path(__file__).resolve().parent.parent / "bench" / "out" / "real-firmware.json"
_PARTS: list[Parts | str] = []


def _parts() -> Parts:
    if not _PARTS:
        try:
            _PARTS.append(fetch_parts())
        except RegistryUnreachable as exc:
            _PARTS.append(f"real-firmware suite skipped: {exc}")
    got = _PARTS[0]
    if isinstance(got, str):
        pytest.skip(got)
    return got


@pytest.fixture(scope="module")
def parts() -> Parts:
    return _parts()


@pytest.fixture(scope="module", params=list(CPU_MODELS))
def run(
    request: pytest.FixtureRequest, parts: Parts, tmp_path_factory: pytest.TempPathFactory
) -> FirmwareRun:
    d = tmp_path_factory.mktemp(f"firmware-{request.param}")
    initrd = build_initramfs(parts, d / "initrd.cpio", request.param)
    r = run_guest(parts, initrd, d, request.param)
    _report(r, parts)
    return r


def _dump_dir(run: FirmwareRun, n: int) -> Path:
    """The collection of capture ``n``: ``dump-N``, or the one the service made under
    ``service-N`` (named HOST-YYYYmmdd-HHMMSS as the service names dumps)."""
    service = run.files / f"service-{n}"
    if service.is_dir():
        (made,) = service.iterdir()
        return made
    return run.files / f"dump-{n}"


def _dump_file(run: FirmwareRun, n: int) -> Path:
    d = _dump_dir(run, n)
    return d / manifest(d)["dump"]["file"]


def _report(run: FirmwareRun, parts: Parts) -> None:
    """The run's numbers, for docs/benchmarks.md and bench/bench_firmware.py."""
    cap = run.captures.get(1)
    sizes = {p.name: p.stat().st_size for p in run.files.iterdir() if p.is_file()}
    for d in run.files.iterdir():
        if d.is_dir() and d.name != "lost+found":
            sizes[d.name] = sum(p.stat().st_blocks * 512 for p in d.iterdir() if p.is_file())
    out = {
        "mmu": run.mmu,
        "kernel": parts.kernel.version,
        "kernel_build_s": parts.kernel.build_s,
        "qemu": parts.qemu.version,
        "total_s": run.total_s,
        "seen": run.seen,
        "captures": {
            n: {"boot_s": c.boot_s, "times": c.times, "memtotal_kb": c.memtotal_kb}
            for n, c in run.captures.items()
        },
        "sizes": sizes,
        "times": cap.times if cap else {},
    }
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    old[run.mmu] = out
    REPORT.write_text(json.dumps(old, indent=2) + "\n")
    print(f"\nreal firmware {run.mmu}: {json.dumps(out)}")


def test_the_first_kernel_registers_and_each_crash_is_captured(run: FirmwareRun) -> None:
    assert "Registration is successful" in run.console
    assert run.registered == {1: "1", 2: "1"}  # the first kernel, and after re-registering
    assert sorted(run.captures) == [1, 2]
    assert "Firmware-assisted dump is active" in run.console
    assert run.infos[1].panic_cpu == 0 and run.infos[2].panic_cpu == PANIC_CPU
    for n in (1, 2):
        assert {name for name, _ in run.infos[n].modules} == {"lkdtm", "dummy"}
        assert set(run.infos[n].pids) == set(PROCESSES)


def test_hvdump_runs_inside_the_real_capture_kernel(run: FirmwareRun) -> None:
    for n, cap in run.captures.items():
        hvdump = {k: v for k, v in cap.rcs.items() if k.startswith("hvdump")}
        assert hvdump == {k: 0 for k in hvdump}, cap.text[-3000:]
        assert "hvdump-collect" in cap.times and "hvdump-status" in cap.times
        assert "fadump" in cap.text  # status names the interface
        # released with release_mem (MemTotal grew) and registered again
        assert cap.memtotal_kb["after"] > cap.memtotal_kb["before"], n
        assert cap.registered == "1", n
    assert "makedumpfile-d31" in run.captures[1].times
    # the second capture by the service's entry point: its journal lines on the console
    service = run.captures[2].text
    assert "fadump dump waiting: " in service and "; collecting as lpar-" in service
    assert "registered for the next crash: yes" in service, service[-3000:]
    assert _dump_dir(run, 2).parent.name == "service-2"


def test_hvdump_verify_on_the_host(run: FirmwareRun) -> None:
    for n in (1, 2):
        proc = subprocess.run(
            [sys.executable, "-m", "drgn_hvdump.cli", "verify", str(_dump_dir(run, n))],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def _want_rodata(parts: Parts) -> bytes:
    with open(parts.kernel.modules[RODATA_MODULE], "rb") as f:
        section = ELFFile(f).get_section_by_name(RODATA_SECTION)
        assert section is not None
        return section.data()[:256]


def _reference(run: FirmwareRun, parts: Parts, n: int) -> Analysis:
    """Stock drgn on QEMU's image of crash ``n`` (registers from QEMU's notes)."""
    info = run.infos[n]
    radix = run.mmu == "radix"  # stock drgn reads vmalloc memory of radix kernels only
    direct, _ = stock_analysis(
        run.images[n],
        parts.kernel.vmlinux,
        info.pids,
        info.panic_cpu,
        modules=radix,
        rodata=info.rodata if radix else 0,
        vmcoreinfo_at=info.vmcoreinfo_addr,  # the capture kernel's own is in memory too
    )
    return direct


def _in_module(run: FirmwareRun, n: int, frame: str, name: str) -> bool:
    """Whether ``frame`` (a bare pc: drgn has no module debug info) is in module ``name``."""
    base = dict(run.infos[n].modules)[name]
    return frame.startswith("0x") and base <= int(frame, 16) < base + (1 << 20)


@pytest.mark.parametrize("n", [1, 2])
def test_drgn_with_the_plugin_equals_qemus_image(run: FirmwareRun, parts: Parts, n: int) -> None:
    """drgn (plugin on) on hvdump's dump from the real capture kernel, against stock drgn
    on QEMU's image of the same crash, taken when the crashing CPU called the firmware."""
    info = run.infos[n]
    want = _reference(run, parts, n)
    prog = _open(_dump_file(run, n), parts.kernel.vmlinux)
    got = analyse(prog, info.pids, rodata=info.rodata, crashed_cpu=info.panic_cpu)
    assert got.release == want.release == info.release
    assert got.tasks == want.tasks
    assert {name for name, _ in got.tasks} >= set(PROCESSES)
    assert got.printk[: len(want.printk)] == want.printk
    assert got.panic_cpu == want.panic_cpu
    assert got.process_traces == want.process_traces
    for name in PROCESSES:
        assert got.process_traces[name][-1].startswith("system_call"), got.process_traces[name]
    # QEMU's image stops in the firmware call; the dump's registers are crash_fadump's
    # own (sysrq) or the oops's (the faulting instruction, in lkdtm)
    assert "crash_fadump+" in " ".join(want.panic_trace), want.panic_trace
    if n == 1:
        assert got.panic_trace_from == "crashed_thread"
        assert got.panic_trace[0].startswith("crash_fadump+")
        assert got.panic_trace[1:] == want.panic_trace[2 : len(got.panic_trace) + 1]
        assert "sysrq_handle_crash+" in " ".join(got.panic_trace)
    else:
        assert "oops_end+" in " ".join(want.panic_trace)
        assert got.panic_trace_from == "cpu_curr"  # an oops sets no panic_cpu
        assert _in_module(run, n, got.panic_trace[0], "lkdtm"), got.panic_trace
        assert got.panic_trace[-1].startswith("system_call"), got.panic_trace
    assert got.modules == sorted(name for name, _ in info.modules)
    rodata = _want_rodata(parts)  # the section is shorter than the 256 bytes read
    assert got.rodata[: len(rodata)] == rodata
    if run.mmu == "radix":
        assert want.modules == got.modules and want.rodata == got.rodata


def test_stock_drgn_on_the_dump(run: FirmwareRun, parts: Parts) -> None:
    """Without the plugin drgn reads the dump's memory (release, tasks, printk) but not
    the registers of a fadump capture kernel's notes (pr_pid 0, as Linux writes them)."""
    info = run.infos[1]
    spec = {"dump": str(_dump_file(run, 1)), "vmlinux": str(parts.kernel.vmlinux)}
    proc = subprocess.run(
        [sys.executable, "-c", _STOCK, json.dumps(spec)],
        capture_output=True,
        text=True,
        env={**os.environ, "DRGN_DISABLE_PLUGINS": "*"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["release"] == info.release and out["tasks"] > 20
    assert any("sysrq triggered crash" in r for r in out["printk"])


_STOCK = r"""
import json, sys, drgn
from drgn.helpers.linux.pid import for_each_task
from drgn.helpers.linux.printk import get_printk_records
spec = json.loads(sys.argv[1])
prog = drgn.Program()
prog.set_core_dump(spec["dump"])
prog.load_debug_info([spec["vmlinux"]])
print(json.dumps({
    "release": prog["init_uts_ns"].name.release.string_().decode(),
    "tasks": len(list(for_each_task(prog))),
    "printk": [r.text.decode(errors="replace") for r in get_printk_records(prog)],
}))
"""


def test_the_kernels_header_page_bug_is_worked_around(run: FirmwareRun) -> None:
    """Linux 6.12's release_mem frees the page holding the crash-info header; hvdump
    takes it out of use before registering again, so the second dump survives (without
    it the capture boot said "Fadump header is corrupted" and freed the dump)."""
    assert "freeing reserved memory (0x40010000 - 0x80000000)" in run.console
    for cap in run.captures.values():
        assert "first took the page at 0x40010000 out of use" in cap.text
        assert "HardwareCorrupted:    64 kB" in cap.text  # one 64 KiB page, never reused
    assert "Fadump header is corrupted" not in run.console


def test_makedumpfile_in_the_same_capture_kernel(run: FirmwareRun) -> None:
    """Debian 13's makedumpfile (1.7.6) on the same /proc/vmcore, same codec (LZO):
    hvdump leaves out every page it leaves out, at -d 1 (the kernel has PG_hwpoison,
    which makedumpfile leaves out at every level that reads struct pages; hvdump's -d 1
    reads none) and at -d 31, where 1.7.6 also keeps 6.12's free pages (it reads
    page_type values as flag bits; fixed upstream after 1.7.6): hvdump's -d 31 dump is
    makedumpfile's without exactly its own free pages."""
    from tests.collect_support import kdump_pages

    cap = run.captures[1]
    for name in ("makedumpfile-d31", "makedumpfile-d1", "hvdump-kdump31", "hvdump-kdump"):
        assert cap.rcs.get(name) == 0, (name, cap.text[-3000:])
    for d in ("kdump31-1", "kdump-1"):
        proc = subprocess.run(
            [sys.executable, "-m", "drgn_hvdump.cli", "verify", str(run.files / d)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    ours, _ = kdump_pages(run.files / "kdump31-1" / "dump.kdump")
    theirs, _ = kdump_pages(run.files / "makedumpfile-d31.kdump")
    only_ours = ours.without(theirs)
    assert only_ours.total() == 0, list(only_ours)[:8]
    m = json.loads((run.files / "kdump31-1" / "manifest.json").read_text())
    assert m["dump"]["dump_level"] == 31
    only_theirs = theirs.without(ours)
    # The partial page after the reserved area (kept by makedumpfile, not whole in
    # the vmcore for hvdump) aside, the rest is the free pages hvdump left out.
    assert 0 <= only_theirs.total() - m["dump"]["excluded"]["free"] <= 1
    assert m["dump"]["excluded"]["user"] > 0 and m["dump"]["excluded"]["free"] > 0


def test_the_firmware_matches_the_committed_fixtures(run: FirmwareRun, tmp_path: Path) -> None:
    """What QEMU produced this run has the shape of tests/data/qemu-fadump (which
    ``make test`` compares hvsim with): same properties, same CPU state data layout."""
    from drgn_hvdump.formats.regsave import parse_regsave

    got = save_fixtures(run, tmp_path / run.mmu)
    want = FIXTURES / run.mmu
    for name in ("ibm,configure-kernel-dump-sizes", "ibm,configure-kernel-dump-version"):
        assert (got / name).read_bytes() == (want / name).read_bytes(), name
    assert len((got / "ibm,kernel-dump").read_bytes()) == len(
        (want / "ibm,kernel-dump").read_bytes()
    )
    a = parse_regsave((got / "cpu-state.bin").read_bytes())
    b = parse_regsave((want / "cpu-state.bin").read_bytes())
    assert [list(c.regs) for c in a] == [list(c.regs) for c in b]


@pytest.fixture(scope="module")
def bare_run(parts: Parts, tmp_path_factory: pytest.TempPathFactory) -> FirmwareRun:
    """The same two crashes, with a hand-written script in place of hvdump: release_mem,
    then registered <- 1, nothing else."""
    d = tmp_path_factory.mktemp("firmware-bare")
    initrd = build_initramfs(parts, d / "initrd.cpio", "radix", bare=True)
    return run_guest(parts, initrd, d, "radix", quiet_after_second_crash=180)


def test_without_the_workaround_linux_writes_the_header_into_freed_memory(
    bare_run: FirmwareRun,
) -> None:
    """Linux 6.12's bug on the real kernel, with what a bare script does: the release
    frees from the page the reserved area ends in (the crash-info header's, below the
    area's end 0x400102a8), and registering again succeeds, writing the header there.
    Whether the page has another user by the next crash is chance (2 of 4 runs here:
    "Fadump header is corrupted", the dump freed; once the boot after the second crash
    hung, silent); when it happens the dump is gone."""
    console = bare_run.console
    freed = [int(m, 16) for m in re.findall(r"freeing reserved memory \((0x[0-9a-f]+) - ", console)]
    assert freed and all(start == 0x40010000 < 0x400102A8 for start in freed)
    assert bare_run.registered == {1: "1", 2: "1"}
    assert bare_run.captures[1].registered == "1"  # registered again after the release
    lost = "Fadump header is corrupted" in console
    how = " (the next boot hung)" if bare_run.hung else ""
    print(
        f"\nbare script: the second dump was {'LOST' if lost or bare_run.hung else 'kept (this time)'}{how}"
    )
    if bare_run.hung:
        # Seen once in CI: the boot after the second crash printed nothing more.
        assert "HVFW-PANIC 2" in console and 2 not in bare_run.captures
    elif lost:
        assert "HVFW-NO-DUMP" in console and 2 not in bare_run.captures
    else:
        assert sorted(bare_run.captures) == [1, 2]

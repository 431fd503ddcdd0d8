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
import subprocess
import sys
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from tests.collect_support import manifest
from tests.real_analysis import Analysis, analyse, stock_analysis
from tests.real_firmware import (
    CPU_MODELS,
    RODATA_MODULE,
    RODATA_SECTION,
    FirmwareRun,
    Parts,
    build_initramfs,
    fetch_parts,
    run_guest,
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
    initrd = build_initramfs(parts, d / "initrd.cpio")
    r = run_guest(parts, initrd, d, request.param)
    _report(r, parts)
    return r


def _dump_dir(run: FirmwareRun, n: int) -> Path:
    return run.files / f"dump-{n}"


def _dump_file(run: FirmwareRun, n: int) -> Path:
    d = _dump_dir(run, n)
    return d / manifest(d)["dump"]["file"]


def _report(run: FirmwareRun, parts: Parts) -> None:
    """The run's numbers, for docs/benchmarks.md and bench/bench_firmware.py."""
    cap = run.captures.get(1)
    sizes = {p.name: p.stat().st_size for p in run.files.iterdir() if p.is_file()}
    for n in (1, 2):
        d = _dump_dir(run, n)
        if d.is_dir():
            sizes[f"dump-{n}"] = sum(p.stat().st_size for p in d.iterdir() if p.is_file())
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
        assert cap.rcs == {k: 0 for k in cap.rcs}, cap.text[-3000:]
        assert "hvdump-collect" in cap.times and "hvdump-status" in cap.times
        assert "fadump" in cap.text  # status names the interface
        # released with release_mem (MemTotal grew) and registered again
        assert cap.memtotal_kb["after"] > cap.memtotal_kb["before"], n
        assert cap.registered == "1", n
    assert "makedumpfile-d31" in run.captures[1].times


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
    info = run.infos[n]
    radix = run.mmu == "radix"  # stock drgn reads vmalloc memory of radix kernels only
    direct, _ = stock_analysis(
        run.images[n],
        parts.kernel.vmlinux,
        info.pids,
        info.panic_cpu,
        modules=radix,
        rodata=info.rodata if radix else 0,
    )
    return direct


_PANIC_PATH = {1: "sysrq_handle_crash", 2: "lkdtm_EXCEPTION"}


@pytest.mark.parametrize("n", [1, 2])
def test_drgn_with_the_plugin_equals_qemus_image(run: FirmwareRun, parts: Parts, n: int) -> None:
    info = run.infos[n]
    want = _reference(run, parts, n)
    got = analyse(_open(_dump_file(run, n), parts.kernel.vmlinux), info.pids, rodata=info.rodata)
    assert got.release == want.release == info.release
    assert got.tasks == want.tasks
    assert got.printk[: len(want.printk)] == want.printk
    assert got.panic_cpu == want.panic_cpu == info.panic_cpu
    assert _PANIC_PATH[n] in " ".join(got.panic_trace), got.panic_trace
    assert _PANIC_PATH[n] in " ".join(want.panic_trace), want.panic_trace
    assert got.process_traces == want.process_traces
    assert got.modules == sorted(name for name, _ in info.modules)
    assert got.rodata == _want_rodata(parts)
    if run.mmu == "radix":
        assert want.modules == got.modules and want.rodata == got.rodata

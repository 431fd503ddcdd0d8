"""The drgn plugin with real drgn (no mocks), both byte orders.

Raw copies of ``/proc/vmcore``, files ``hvdump collect`` wrote (kdump and
ELF), and the live ``/proc/vmcore`` of a FUSE-mounted capture kernel while a
collection releases memory beside drgn: backtraces, tasks, the log and memory
are checked against what hvsim put there.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import drgn
import pytest
from drgn import Program
from drgn.commands import run_command
from drgn.helpers.linux.percpu import per_cpu_ptr
from drgn.helpers.linux.pid import for_each_task
from drgn.helpers.linux.printk import get_printk_records

from drgn_hvdump.dumpdir.names import PLAN_FILE
from drgn_hvdump.dumpdir.view import CollectionView
from drgn_hvdump.formats.elfcore import PAGE_OFFSET_PPC64
from drgn_hvdump.plugin.attach import dump_source
from drgn_hvdump.plugin.helpers import (
    hvdump_info,
    hvdump_pt_regs,
    hvdump_regions,
    hvdump_registers,
)
from drgn_hvdump.plugin.source import Unreadable, identify
from hvsim import Lpar
from hvsim.groundcore import write_truth_core
from hvsim.kernel import KernelImage, vmlinux_path
from tests.collect_support import FUSE_MISSING, hvdump, make_lpar, mounted, start_collect
from tests.drgn_support import crash_lpar, open_core

needs_fuse = pytest.mark.skipif(bool(FUSE_MISSING), reason=FUSE_MISSING)
DRGN = str(Path(sys.executable).with_name("drgn"))
MIX = "zero=0.5,text=0.2,pointer=0.25,random=0.05"


@dataclass
class Crashed:
    endian: str
    lpar: Lpar
    image: KernelImage
    raw: Path
    vmlinux: str


def write_raw_copy(lpar: Lpar, path: Path) -> None:
    """``cp /proc/vmcore path``, through hvsim's capture-kernel view."""
    size = lpar.vmcore_size()
    with open(path, "wb") as f:
        off = 0
        while off < size:
            data = lpar.read_vmcore(off, 64 << 20)
            f.write(data)
            off += len(data)


@pytest.fixture(scope="module", params=["big", "little"])
def crashed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Crashed:
    endian = request.param
    d = tmp_path_factory.mktemp(f"plugin-{endian}")
    scenario = "sysrq" if endian == "big" else "oops"
    lpar, image = crash_lpar(d, endian, scenario, seed=23, mix=MIX)
    raw = d / "vmcore.raw"
    write_raw_copy(lpar, raw)
    return Crashed(endian, lpar, image, raw, vmlinux_path(endian))


def check_kernel(prog: Program, image: KernelImage) -> None:
    """What an analyst looks at first, against the simulator's ground truth."""
    assert prog["init_task"].comm.string_() == b"swapper/0"
    thread = prog.crashed_thread()
    assert thread.tid == image.crashed_task().pid
    assert [f.name for f in thread.stack_trace()] == image.backtrace()
    for cpu in range(image.config.cpus):
        task = image.running_task(cpu)
        names = [f.name for f in prog.stack_trace(task.pid)] if task.pid else None
        if names is not None:
            assert names == image.backtrace(cpu), cpu
    want = sorted((t.comm, t.pid) for t in image.tasks() if t.pid)
    got = sorted((t.comm.string_().decode(), t.pid.value_()) for t in for_each_task(prog))
    assert got == want
    texts = [r.text.decode() for r in get_printk_records(prog)]
    assert texts == image.log_lines()
    assert texts[-1] == image.panic_message()


# -- raw copies ------------------------------------------------------------------


def test_raw_copy_is_identified_with_its_sections(crashed: Crashed) -> None:
    src = identify(crashed.raw)
    assert src is not None and src.kind == "raw"
    h = crashed.lpar.dump_header()
    assert h is not None
    assert src.sections == {
        "cpu": (h.cpu.destination_address, h.cpu.length_copied),
        "hpte": (h.hpte.destination_address, h.hpte.length_copied),
        "rmo": (h.rmo.destination_address, h.rmo.length_copied),
    }
    assert [s.cpu for s in src.cpu_states()] == list(range(4))
    src.close()


def test_raw_copy_reads_as_the_crashed_kernel(crashed: Crashed) -> None:
    prog = open_core(crashed.raw, crashed.vmlinux)
    assert dump_source(prog) is not None
    check_kernel(prog, crashed.image)
    lpar = crashed.lpar
    rnd = random.Random(3)
    src = dump_source(prog)
    assert src is not None
    readable = [r for r in src.regions if r.src is not None]
    for _ in range(200):
        r = rnd.choice(readable)
        pa = rnd.randrange(r.start, r.end - 4096)
        want = lpar.expected(pa, 4096)
        assert prog.read(pa, 4096, True) == want
        assert prog.read(PAGE_OFFSET_PPC64 + pa, 4096) == want
    scratch = next(r for r in src.regions if r.kind == "scratch")
    with pytest.raises(drgn.FaultError, match="scratch area"):
        prog.read(scratch.start + 8, 8, True)
    with pytest.raises(drgn.FaultError, match="scratch area"):
        prog.read(PAGE_OFFSET_PPC64 + scratch.start, 8)


def test_registers_come_from_the_save_area_not_crash_notes(
    crashed: Crashed, tmp_path: Path
) -> None:
    # The kernel never ran crash_save_cpu() on this path: wipe crash_notes in the
    # saved low memory of a copy; the backtraces must not change.
    truth = tmp_path / "truth.core"
    write_truth_core(crashed.lpar, truth)
    ref = open_core(truth, crashed.vmlinux)
    notes = [per_cpu_ptr(ref["crash_notes"], cpu).value_() - PAGE_OFFSET_PPC64 for cpu in range(4)]
    del ref
    copy = tmp_path / "vmcore.wiped"
    copy.write_bytes(crashed.raw.read_bytes())
    src = identify(copy)
    assert src is not None
    rmo_dest = src.sections["rmo"][0]
    offset_of = {s: o for s, _, o in src._segments}
    seg_start = max(s for s in offset_of if s <= rmo_dest)
    with open(copy, "r+b") as f:
        for pa in notes:
            f.seek(offset_of[seg_start] + rmo_dest - seg_start + pa)
            f.write(bytes(400))
    src.close()
    prog = open_core(copy, crashed.vmlinux)
    check_kernel(prog, crashed.image)
    for cpu in range(4):
        frames = [f.name for f in prog.stack_trace(hvdump_pt_regs(prog, cpu))]
        assert frames == crashed.image.backtrace(cpu)
    nip = hvdump_registers(prog, crashed.image.crash_cpu)[0].regs["NIA"]
    assert prog.crashed_thread().stack_trace()[0].pc == nip
    # drgn's crash-compatible bt, on the same registers
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run_command(prog, "crash bt")
    text = out.getvalue()
    positions = [text.find(f" {name} ") for name in crashed.image.backtrace()]
    assert -1 not in positions and positions == sorted(positions), text


def test_without_crashtime_drgn_takes_the_capture_kernels_notes(crashed: Crashed) -> None:
    # A kernel that crashed into the hypervisor without crash_kexec() (a real one)
    # has no CRASHTIME and never filled crash_notes: stock drgn then takes each
    # CPU's registers from the PRSTATUS notes the capture kernel built from the
    # save area, by pr_pid = CPU + 1.
    text = crashed.image.vmcoreinfo()
    kept = b"".join(
        line + b"\n" for line in text.splitlines() if not line.startswith(b"CRASHTIME=")
    )
    assert kept != text
    prog = Program(vmcoreinfo=kept)
    prog.set_core_dump(str(crashed.raw))
    prog.load_debug_info([crashed.vmlinux])
    check_kernel(prog, crashed.image)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run_command(prog, "crash bt")
    assert f" {crashed.image.backtrace()[-1]} " in out.getvalue(), out.getvalue()


def test_drgn_cli_opens_a_raw_copy_with_no_extra_flags(crashed: Crashed) -> None:
    script = (
        "print([f.name for f in prog.crashed_thread().stack_trace()]);"
        "from drgn.commands import run_command; run_command(prog, 'hvdump');"
        "run_command(prog, 'hvdump regions')"
    )
    out = subprocess.run(
        [DRGN, "-q", "-c", str(crashed.raw), "-s", crashed.vmlinux, "-e", script],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert str(crashed.image.backtrace()) in out.stdout
    assert "a copy of a capture kernel's /proc/vmcore" in out.stdout
    assert "saved-low" in out.stdout and "scratch" in out.stdout
    assert "Traceback" not in out.stderr


def test_without_the_plugin_a_raw_copy_is_the_capture_kernels_memory(crashed: Crashed) -> None:
    script = "print(prog['init_task'].comm.string_())"
    out = subprocess.run(
        [DRGN, "-q", "-c", str(crashed.raw), "-s", crashed.vmlinux, "-e", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, DRGN_DISABLE_PLUGINS="hvdump"),
    )
    assert b"swapper/0" not in out.stdout.encode()


def test_commands_and_helpers(crashed: Crashed, capsys: pytest.CaptureFixture[str]) -> None:
    prog = open_core(crashed.raw, crashed.vmlinux)
    info = hvdump_info(prog)
    assert (info.kind, info.byteorder, info.cpus, info.memory) == (
        "raw",
        crashed.endian,
        4,
        1 << 30,
    )
    states = [r.state for r in hvdump_regions(prog)]
    assert states == ["saved-low", "memory", "scratch"]
    run_command(prog, "hvdump regs 2")
    out = capsys.readouterr().out
    assert out.startswith("CPU 2:") and "NIA" in out
    with pytest.raises(Exception, match="CPU 9 has no saved registers"):
        run_command(prog, "hvdump regs 9")


# -- collected dumps -------------------------------------------------------------


@pytest.fixture(scope="module")
def collected(crashed: Crashed, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if FUSE_MISSING:
        pytest.skip(FUSE_MISSING)
    d = tmp_path_factory.mktemp(f"collected-{crashed.endian}")
    outs = {}
    with mounted(crashed.lpar, d / "root") as root:
        for fmt in ("kdump", "elf"):
            out = d / fmt
            r = hvdump(
                "collect",
                "--root",
                str(root),
                "-o",
                str(out),
                "--format",
                fmt,
                "--release",
                "never",
            )
            assert r.returncode == 0, r.stderr
            outs[fmt] = out / ("dump.kdump" if fmt == "kdump" else "dump.elf")
    return outs


@needs_fuse
@pytest.mark.parametrize("fmt", ["kdump", "elf"])
def test_collected_dumps(crashed: Crashed, collected: dict[str, Path], fmt: str) -> None:
    prog = open_core(collected[fmt], crashed.vmlinux)
    src = dump_source(prog)
    assert src is not None and src.kind == "collected"
    check_kernel(prog, crashed.image)
    assert hvdump_info(prog).header  # the hypervisor's header, from the HVDUMP note
    states = {r.state for r in hvdump_regions(prog)}
    assert states == {"in-dump", "not-in-dump"}


# -- live, during a collection ---------------------------------------------------


@needs_fuse
@pytest.mark.parametrize("endian", ["big", "little"])
def test_live_vmcore_during_a_concurrent_collection(endian: str, tmp_path: Path) -> None:
    lpar = make_lpar(tmp_path / "lpar", endian=endian, memory="1G", seed=7, mix=MIX)
    image = lpar.crashed_kernel()
    assert image is not None
    vmlinux = vmlinux_path(endian)
    out = tmp_path / "out"
    counts = {"read": 0, "from-saved": 0}
    with mounted(lpar, tmp_path / "root") as root:
        prog = open_core(root / "proc/vmcore", vmlinux)
        src = dump_source(prog)
        assert src is not None and src.kind == "live"
        check_kernel(prog, image)  # triage starts before the collection does
        notes = {
            per_cpu_ptr(prog["crash_notes"], cpu).value_() - PAGE_OFFSET_PPC64 >> 16
            for cpu in range(4)
        }
        collector = start_collect(root, out, chunk_size="8M")
        rnd = random.Random(endian)
        readable = [r for r in src.regions if r.src is not None]
        deadline = time.monotonic() + 240
        try:
            while collector.poll() is None and time.monotonic() < deadline:
                r = rnd.choice(readable)
                pa = rnd.randrange(r.start >> 16, r.end >> 16) << 16
                if pa >> 16 in notes:
                    continue  # crash_notes shows the save area's registers, by design
                at = r.src + pa - r.start
                released_before = src.released().overlaps(at, at + 65536)
                data = prog.read(pa, 65536, True)
                assert data == lpar.expected(pa, 65536), f"{pa:#x}"
                counts["read"] += 1
                counts["from-saved"] += released_before
            _, err = collector.communicate(timeout=240)
            assert collector.returncode == 0, err
        finally:
            if collector.poll() is None:
                collector.kill()
        assert counts["from-saved"] > 0, counts  # drgn read memory the kernel had reused
        assert lpar.state == "running"  # every range released; the dump is gone
        check_kernel(prog, image)  # now entirely from the collected file
        assert hvdump_info(prog).collection["done"]  # type: ignore[index]
        del prog, src
        gc.collect()


@needs_fuse
def test_released_and_unsaved_memory_is_a_fault_not_garbage(tmp_path: Path) -> None:
    lpar = make_lpar(tmp_path / "lpar", endian="big", memory="1G", seed=9, mix=MIX)
    out = tmp_path / "out"
    with mounted(lpar, tmp_path / "root") as root:
        r = hvdump("collect", "--root", str(root), "-o", str(out), "--release", "never")
        assert r.returncode == 0, r.stderr
        view = CollectionView(out)
        victim = next(c for c in view.chunks if c.kind == "mem")
        # Another tool released a range, and the saved copy of it is gone: the journal
        # says the release was made, the chunk is not saved.
        w = next(i for i, (_, _, lo, hi) in enumerate(view.writes) if lo <= victim.src < hi)
        lpar.release(view.writes[w][0], view.writes[w][1])
        journal = out / "journal.jsonl"
        lines = [
            ln
            for ln in journal.read_text().splitlines()
            if f'"i":{victim.index},' not in ln and '"t":"done"' not in ln
        ]
        lines.append(f'{{"t":"rel","w":{w},"s":"intent","addr":0,"size":0}}')
        journal.write_text("\n".join(lines) + "\n")
        os.environ["HVDUMP_OUTPUT"] = str(out)
        try:
            prog = Program()
            prog.set_core_dump(str(root / "proc/vmcore"))
            src = dump_source(prog)
            assert src is not None and src.collection is not None
            pa = victim.dst + 4096
            with pytest.raises(drgn.FaultError, match=r"released .* not saved"):
                prog.read(pa, 8, True)
            with pytest.raises(Unreadable, match="released"):
                src.read(pa, 8)
            assert "released-lost" in {s.state for s in hvdump_regions(prog)}
            del prog, src
            gc.collect()
        finally:
            del os.environ["HVDUMP_OUTPUT"]
    assert (out / PLAN_FILE).stat().st_mode & 0o777 == 0o600


@needs_fuse
@pytest.mark.parametrize("fmt", ["kdump", "elf"])
def test_unfinished_collection_faults_until_saved(
    crashed: Crashed, collected: dict[str, Path], fmt: str, tmp_path: Path
) -> None:
    # The collection's directory as it was part-way: one memory chunk not yet
    # journaled (its bytes may be in the file or not), no "done".
    done = collected[fmt].parent
    part = tmp_path / "part"
    part.mkdir()
    os.link(collected[fmt], part / collected[fmt].name)
    (part / PLAN_FILE).write_bytes((done / PLAN_FILE).read_bytes())
    view = CollectionView(done)
    victim = [c for c in view.chunks if c.kind == "mem"][3]
    lines = (done / "journal.jsonl").read_text().splitlines()
    keep = [ln for ln in lines if f'"i":{victim.index},' not in ln and '"t":"done"' not in ln]
    (part / "journal.jsonl").write_text("\n".join(keep) + "\n")

    prog = open_core(part / collected[fmt].name, crashed.vmlinux)
    src = dump_source(prog)
    assert src is not None and src.collection is not None
    assert any("has not finished" in w for w in hvdump_info(prog).warnings)
    pa = victim.dst + 8192
    with pytest.raises(drgn.FaultError, match="not collected yet"):
        prog.read(pa, 8, True)
    with pytest.raises(drgn.FaultError, match="not collected yet"):
        prog.read(PAGE_OFFSET_PPC64 + pa, 8)
    other = [c for c in view.chunks if c.kind == "mem"][2]
    assert prog.read(other.dst, 4096, True) == crashed.lpar.expected(other.dst, 4096)
    # The collection goes on and journals the chunk: the same program reads it.
    with open(part / "journal.jsonl", "a") as f:
        f.write(next(ln for ln in lines if f'"i":{victim.index},' in ln) + "\n")
    assert prog.read(pa, 4096, True) == crashed.lpar.expected(pa, 4096)
    assert prog.read(PAGE_OFFSET_PPC64 + pa, 4096) == crashed.lpar.expected(pa, 4096)

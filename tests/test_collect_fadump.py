"""``hvdump collect`` of firmware-assisted dumps: hvsim's fadump LPARs behind a FUSE root.

The same engine as phyp dump; what differs is checked here: no metadata files,
the capture kernel's PRSTATUS notes numbered by CPU, one release at the very
end (``release_mem``) and the registration after it, the older sysfs names.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from drgn_hvdump.capture import FadumpDump, open_capture
from drgn_hvdump.collect.collector import CollectOptions, collect
from drgn_hvdump.collect.verify import verify_dir
from drgn_hvdump.errors import HvdumpError
from drgn_hvdump.formats.elfcore import NT_PRSTATUS, ElfCore, parse_notes, parse_prstatus
from drgn_hvdump.formats.kdump import KdumpFile
from hvsim import Lpar
from hvsim.fadump import reservation
from hvsim.verify import verify_dump
from tests.collect_support import (
    FUSE_MISSING,
    compare_with_truth,
    fadump_released_early,
    hvdump,
    make_lpar,
    manifest,
    mounted,
    start_collect,
)

needs_fuse = pytest.mark.skipif(bool(FUSE_MISSING), reason=FUSE_MISSING)
pytestmark = [needs_fuse, pytest.mark.fuse]


def _fadump_lpar(path: Path, **kw: Any) -> Lpar:
    return make_lpar(path, dump="fadump", **kw)


def _journal(out: Path) -> list[dict[str, Any]]:
    lines = (out / "journal.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if x.strip().endswith("}")]


@pytest.mark.parametrize(("endian", "fmt"), [("big", "kdump"), ("little", "elf")])
def test_collect_saves_everything_then_releases_once_and_registers(
    tmp_path: Path, endian: str, fmt: str
) -> None:
    lpar = _fadump_lpar(tmp_path / "lpar", endian=endian, boot_regions=2, cpus=3)
    out = tmp_path / "out"
    with mounted(lpar, tmp_path / "root") as root:
        capture = open_capture(root)
        assert isinstance(capture, FadumpDump)
        state = capture.state()
        assert state.dump_waiting and state.valid and state.interface == "fadump"
        assert list(state.sections) == ["cpu", "hpte", "boot0", "boot1", "param"]
        assert state.reserved_bytes == lpar.config.memory - lpar.config.reserve_size
        status = hvdump("status", "--root", str(root))
        assert status.returncode == 0 and "interface:           fadump" in status.stdout
        assert "registered for the next crash: no" in status.stdout
        result = hvdump("collect", "--root", str(root), "-o", str(out), "--format", fmt)
        assert result.returncode == 0, result.stderr
        assert "gives memory back in one write" in result.stderr
        assert (root / "sys/kernel/fadump/registered").read_text() == "1\n"
        assert not (root / "proc/vmcore").exists()
    assert lpar.state == "running" and lpar.protected
    res = reservation(lpar.config)
    assert lpar.reserved_ranges() == [res.kept()]
    assert sorted(os.listdir(out)) == sorted(
        ["journal.jsonl", "manifest.json", "plan.json", f"dump.{fmt}"]
    )
    m = manifest(out)
    assert m["source"]["interface"] == "fadump" and "metadata" not in m
    assert [w["done"] for w in m["release"]["writes"]] == [True]
    assert compare_with_truth(lpar, out) == []
    assert verify_dir(out)[0]
    report = verify_dump(lpar, out / f"dump.{fmt}")
    assert report.ok, report.text()
    # PRSTATUS numbered by CPU (the capture kernel wrote pr_pid 0), registers exact
    want = [(s.regs["NIA"], s.regs["GPR01"]) for s in lpar.expected_cpu_states()]
    if fmt == "elf":
        readelf = subprocess.run(
            ["readelf", "-W", "-n", "-l", str(out / "dump.elf")], capture_output=True, text=True
        )
        assert readelf.returncode == 0 and readelf.stderr == "", readelf.stderr
        assert readelf.stdout.count("NT_PRSTATUS") == 3 and "VMCOREINFO" in readelf.stdout
        core = ElfCore.open(out / "dump.elf")
        prstatus = list(core.prstatus)
        core.close()
    else:
        from drgn_hvdump.codecs import decompress_page

        kd = KdumpFile.open(out / "dump.kdump", decompress_page)
        notes = parse_notes(kd.notes, endian)
        kd.close()
        prstatus = [
            parse_prstatus(n.desc, endian)
            for n in notes
            if n.type == NT_PRSTATUS and n.name == "CORE"
        ]
    assert [p.pr_pid for p in prstatus] == [1, 2, 3]
    assert [(p.pr_reg.nip, p.pr_reg.gpr[1]) for p in prstatus] == want
    events = [e for _, e in lpar.status()["events"]]
    assert sum("release_mem" in e for e in events) == 1


_PLAIN_DRGN = r"""
import sys, drgn
prog = drgn.Program()
prog.set_core_dump(sys.argv[1])
prog.load_debug_info([sys.argv[2]])
print(" ".join(str(f.name) for f in prog.crashed_thread().stack_trace() if f.name))
"""


@pytest.mark.parametrize("endian", ["big", "little"])
def test_tools_we_did_not_write_read_a_collected_fadump_dump(tmp_path: Path, endian: str) -> None:
    """drgn with and without the plugin (the crashed thread's backtrace from the
    renumbered notes) and libkdumpfile, on boot memory and above the reserved area."""
    from hvsim.kernel import vmlinux_path
    from tests.drgn_support import open_core
    from tests.test_collect import _drgn_reads, _libkdumpfile_reads

    lpar = _fadump_lpar(tmp_path / "lpar", endian=endian, boot_regions=3)
    out = tmp_path / "out"
    with mounted(lpar, tmp_path / "root") as root:
        collect(CollectOptions(root=root, output=out, progress=False))
    res = reservation(lpar.config)
    regions = res.boot_regions()
    addrs = [
        0,
        0x10000,
        regions[1][0],
        regions[2][0] + 0x20000,
        res.param_addr,  # the first whole page above the reserved area
        lpar.config.memory - 65536,
    ]
    dump = out / "dump.kdump"
    _drgn_reads(lpar, dump, addrs)
    _libkdumpfile_reads(lpar, dump, addrs)
    vmlinux = vmlinux_path(endian)
    prog = open_core(dump, vmlinux)
    assert prog["init_uts_ns"].name.release.string_().decode() == lpar.config.osrelease
    frames = [str(f.name) for f in prog.crashed_thread().stack_trace() if f.name]
    assert frames[0] == "panic", frames
    # Stock drgn fails as on a real fadump dump (crash_notes were never filled)
    assert "registers for CPU" in _drgn_trace(dump, vmlinux, plugins=False).stderr


def test_release_never_then_a_rerun_releases(tmp_path: Path) -> None:
    lpar = _fadump_lpar(tmp_path / "lpar")
    out = tmp_path / "out"
    with mounted(lpar, tmp_path / "root") as root:
        collect(CollectOptions(root=root, output=out, release="never", progress=False))
        assert lpar.state == "capture" and lpar.released_ranges() == []
        dry = hvdump("collect", "--root", str(root), "-o", str(tmp_path / "dry"), "--dry-run")
        assert dry.returncode == 0 and "1 writes" in dry.stdout, dry.stdout
        res = collect(CollectOptions(root=root, output=out, progress=False))
        assert res.resumed
    assert lpar.state == "running" and lpar.protected
    assert compare_with_truth(lpar, out) == []


class _Killed(Exception):
    """Stands for kill -9 at a hook point."""


def test_killed_between_release_mem_and_registration_registers_at_the_rerun(
    tmp_path: Path,
) -> None:
    lpar = _fadump_lpar(tmp_path / "lpar")
    out = tmp_path / "out"

    def hook(event: str, n: int) -> None:
        if event == "release-intent":
            # The kernel made the release; the collector died before registering.
            lpar.fadump_write("release_mem", b"1")
            raise _Killed(event)

    with mounted(lpar, tmp_path / "root") as root:
        with pytest.raises(_Killed):
            collect(CollectOptions(root=root, output=out, hook=hook, progress=False))
        assert lpar.state == "running" and not lpar.protected
        res = collect(CollectOptions(root=root, output=out, progress=False))
        assert res.resumed
    assert lpar.protected
    m = manifest(out)
    assert any("registered again" in w for w in m["warnings"]), m["warnings"]
    assert compare_with_truth(lpar, out) == []


def test_a_release_made_by_hand_stops_the_collection(tmp_path: Path) -> None:
    lpar = _fadump_lpar(tmp_path / "lpar")
    out = tmp_path / "out"

    def hook(event: str, n: int) -> None:
        if event == "chunk" and n == 3:
            lpar.fadump_write("release_mem", b"1")

    with mounted(lpar, tmp_path / "root") as root, pytest.raises(Exception) as exc:
        collect(
            CollectOptions(root=root, output=out, hook=hook, chunk_size=8 << 20, progress=False)
        )
    text = str(exc.value)
    assert "released outside this collection" in text or "vmcore" in text, text
    assert "Traceback" not in text
    # The simulator's history: the one release is the hand's, the collector made none.
    releases = [e for _, e in lpar.status()["events"] if e.startswith("release_mem")]
    assert lpar.status()["counters"]["releases"] == 1 and len(releases) == 1, releases
    journal = _journal(out)
    assert not [r for r in journal if r.get("t") == "rel"], journal[-3:]


@pytest.mark.slow
def test_kill_9_at_30_random_points_loses_nothing(tmp_path: Path) -> None:
    """As phyp's: kill -9 at random points until 30 kills, rerun until done; memory is
    released only with every chunk durable, and each dump matches the crashed memory."""
    rng = random.Random(int(os.environ.get("HVDUMP_KILL_SEED", "5")))
    kills = lpars = 0
    while kills < 30:
        endian = ("big", "little")[lpars % 2]
        fmt = ("kdump", "elf")[(lpars // 2) % 2]
        lpar = _fadump_lpar(tmp_path / f"lpar{lpars}", endian=endian, seed=lpars)
        out = tmp_path / f"out{lpars}"
        with mounted(lpar, tmp_path / f"root{lpars}") as root:
            here = 0
            while True:
                proc = start_collect(root, out, "--format", fmt, "--threads", str(1 + kills % 2))
                # At most 5 kills per LPAR: the last step (verify the whole dump, then
                # the one release) may take longer than the window, every time.
                window = rng.uniform(0.2, 1.2) if here < 5 else None
                here += 1
                try:
                    proc.wait(timeout=window)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    kills += 1
                    assert fadump_released_early(lpar, out) == [], kills
                    continue
                assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
                break
        assert lpar.state == "running" and lpar.protected, lpar.status()["events"][-3:]
        assert compare_with_truth(lpar, out) == []
        assert verify_dir(out)[0]
        lpars += 1
    assert kills >= 30


def _drgn_trace(core: Path, vmlinux: str, *, plugins: bool) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if not plugins:
        env["DRGN_DISABLE_PLUGINS"] = "*"
    return subprocess.run(
        [sys.executable, "-c", _PLAIN_DRGN, str(core), vmlinux],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.mark.parametrize("endian", ["big", "little"])
def test_the_plugin_supplies_fadump_registers_live_raw_and_collected(
    tmp_path: Path, endian: str
) -> None:
    """A fadump kernel never fills crash_notes: stock drgn finds no registers (as on a
    real fadump vmcore, "registers for CPU N were not saved"); with the plugin the
    crashed thread and every task unwind, on the live vmcore, a copy, a collection and
    hvdump convert of the copy, and %hvdump describes the dump."""
    from hvsim.kernel import vmlinux_path

    vmlinux = vmlinux_path(endian)
    lpar = _fadump_lpar(tmp_path / "lpar", endian=endian, boot_regions=2)
    raw = tmp_path / "vmcore.copy"
    out = tmp_path / "out"
    with mounted(lpar, tmp_path / "root") as root:
        live = root / "proc/vmcore"
        shutil.copyfile(live, raw)
        cores = [live, raw]
        for core in cores:
            assert "registers for CPU" in _drgn_trace(core, vmlinux, plugins=False).stderr
        res = _drgn_trace(live, vmlinux, plugins=True)
        assert res.returncode == 0 and res.stderr == "", res.stderr
        frames = res.stdout.split()
        assert frames[0] == "panic", frames
        info = subprocess.run(
            [sys.executable, "-c", _HVDUMP_INFO, str(live), vmlinux],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert info.returncode == 0, info.stderr
        assert "firmware-assisted dump" in info.stdout and "boot1:" in info.stdout
        assert "fadump's reserved area" in info.stdout
        collect(CollectOptions(root=root, output=out, progress=False))
    converted = tmp_path / "converted"
    res = hvdump("convert", str(raw), str(converted), "--no-progress")
    assert res.returncode == 0, res.stderr
    for core in (raw, out / "dump.kdump", converted / "dump.kdump"):
        res = _drgn_trace(core, vmlinux, plugins=True)
        assert res.returncode == 0 and res.stdout.split() == frames, (core, res.stderr)


_HVDUMP_INFO = r"""
import sys, drgn
from drgn_hvdump.plugin.commands import _print_info, _print_regions
from drgn_hvdump.plugin.helpers import hvdump_info
prog = drgn.Program()
prog.set_core_dump(sys.argv[1])
prog.load_debug_info([sys.argv[2]])
_print_info(prog)
_print_regions(prog)
from drgn.helpers.linux.pid import for_each_task
tasks = list(for_each_task(prog))
assert all(prog.stack_trace(t) is not None for t in tasks)
print(len(tasks), "tasks unwind")
"""


def test_two_collectors_at_once_one_owner(tmp_path: Path) -> None:
    """Two collectors started together: one owns the dump and releases it once; the other
    refuses naming the owner (75) or, if it came too late, finds no dump waiting."""
    lpar = _fadump_lpar(tmp_path / "lpar", endian="little")
    with mounted(lpar, tmp_path / "root") as root:
        procs = [start_collect(root, tmp_path / f"out{i}") for i in range(2)]
        results = []
        for proc in procs:
            _, err = proc.communicate(timeout=300)
            results.append((proc.returncode, err.decode() if isinstance(err, bytes) else err))
    codes = sorted(rc for rc, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    loser = next(err for rc, err in results if rc != 0)
    assert "Traceback" not in loser and len(loser.strip().splitlines()) == 1, loser
    assert (codes[1] == 75 and "pid" in loser) or "no dump" in loser, loser
    assert lpar.status()["counters"]["releases"] == 1
    assert lpar.state == "running" and lpar.protected
    winner = next(i for i, (rc, _) in enumerate(results) if rc == 0)
    assert compare_with_truth(lpar, tmp_path / f"out{winner}") == []


def test_a_damaged_structure_is_one_line_and_releases_nothing(tmp_path: Path) -> None:
    from drgn_hvdump.capture import FADUMP_ROOT_FILES
    from hvsim.fleet import _corrupt_root, unbind_root

    lpar = _fadump_lpar(tmp_path / "lpar")
    with mounted(lpar, tmp_path / "mnt") as mnt:
        root = tmp_path / "root"
        try:
            _corrupt_root(mnt, root, FADUMP_ROOT_FILES)
            status = hvdump("status", "--root", str(root))
            assert "fadump memory structure version 0xdead" in status.stdout, status.stdout
            res = hvdump("collect", "--root", str(root), "-o", str(tmp_path / "out"))
        finally:
            unbind_root(root)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "fadump memory structure version 0xdead" in res.stderr, res.stderr
    assert not (tmp_path / "out").exists()
    assert lpar.state == "capture" and lpar.released_ranges() == []


def test_removed_and_planted_files_release_nothing(tmp_path: Path) -> None:
    """The dump file removed during the collection, or a file planted in the output
    directory before it: the collection stops or refuses, and the simulator's history
    shows no release; a new collection then saves the whole dump and releases once."""
    lpar = _fadump_lpar(tmp_path / "lpar")
    out = tmp_path / "out"

    def remove(event: str, n: int) -> None:
        if event == "chunk" and n == 2:
            (out / "dump.kdump").unlink()

    planted = tmp_path / "planted"
    planted.mkdir(mode=0o700)
    (planted / "dump.kdump").write_bytes(b"not ours")
    with mounted(lpar, tmp_path / "root") as root:
        with pytest.raises(HvdumpError):
            collect(CollectOptions(root=root, output=out, hook=remove, progress=False))
        res = hvdump("collect", "--root", str(root), "-o", str(planted), "--no-progress")
        assert res.returncode != 0 and "exists" in res.stderr, res.stderr
        assert (planted / "dump.kdump").read_bytes() == b"not ours"
        assert lpar.status()["counters"]["releases"] == 0 and lpar.released_ranges() == []
        collect(CollectOptions(root=root, output=tmp_path / "again", progress=False))
    assert lpar.status()["counters"]["releases"] == 1 and lpar.protected
    assert compare_with_truth(lpar, tmp_path / "again") == []


def _fake_fadump_root(root: Path, *, soft_offline: bool) -> tuple[int, int]:
    """A capture root after release_mem, as plain files: not registered, the boot-time
    structure still in the device tree; (the header's page, the page size)."""
    from drgn_hvdump.capture.fadump import FADUMP_ROOT_FILES
    from drgn_hvdump.formats.fadump_mem import build_fadump_mem, fadump_registration

    ps = 65536
    mem = fadump_registration(
        cpu_size=0xA00, hpte_size=0, boot_regions=[(0, 0x20000000)], dest_base=0x20000000
    )
    files = {
        "registered": "0\n",
        "enabled": "1\n",
        "mem_reserved": f"{0x10000 + 0x20000000 + 0x2A8}\n",  # as Linux 6.12 showed it
    }
    for name, text in files.items():
        path = FADUMP_ROOT_FILES.path(root, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    prop = FADUMP_ROOT_FILES.path(root, "ibm,kernel-dump")
    prop.parent.mkdir(parents=True, exist_ok=True)
    prop.write_bytes(build_fadump_mem(mem))
    if soft_offline:
        path = FADUMP_ROOT_FILES.path(root, "soft_offline_page")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    return 0x40010000, ps


@pytest.mark.parametrize("soft_offline", [True, False])
def test_protect_takes_the_header_page_out_of_use_first(tmp_path: Path, soft_offline: bool) -> None:
    """Linux's release_mem freed the page holding the crash-info header; registering
    writes the header there. With soft_offline_page the page goes out of use first;
    without it the LPAR stays unregistered, with one line that says why and what to do."""
    from drgn_hvdump.capture.base import NotProtectedError
    from drgn_hvdump.capture.fadump import FADUMP_ROOT_FILES, shared_header_page

    page, ps = _fake_fadump_root(tmp_path, soft_offline=soft_offline)
    assert shared_header_page(0x20000000, 0x200102A8, ps) == page
    assert shared_header_page(0x20000000, 0x20010000, ps) is None  # a fixed size: no page
    capture = FadumpDump(tmp_path)
    registered = FADUMP_ROOT_FILES.path(tmp_path, "registered")
    if soft_offline:
        said = capture.protect(ps)
        assert f"took the page at {page:#x} out of use" in said
        assert FADUMP_ROOT_FILES.path(tmp_path, "soft_offline_page").read_text() == f"{page:#x}\n"
        assert registered.read_text() == "1\n"
        assert capture.protect(ps) == ""  # registered: nothing to do
    else:
        with pytest.raises(NotProtectedError, match=f"page at {page:#x}.*CONFIG_MEMORY_FAILURE"):
            capture.protect(ps)
        assert registered.read_text() == "0\n"


def test_the_next_dump_survives_the_collectors_re_registration(tmp_path: Path) -> None:
    """On hvsim's faithful 6.12 kernel: collect, release, re-register (the collector takes
    the header's page out of use), crash again: the second dump is there and collects."""
    lpar = _fadump_lpar(tmp_path / "lpar")
    res = reservation(lpar.config)
    for n in (1, 2):
        out = tmp_path / f"out{n}"
        with mounted(lpar, tmp_path / "root") as root:
            result = hvdump("collect", "--root", str(root), "-o", str(out), "--no-progress")
            assert result.returncode == 0, result.stderr
            assert f"took the page at {res.header_page:#x} out of use" in result.stderr
        assert lpar.protected
        assert compare_with_truth(lpar, out) == []
        events = [e for _, e in lpar.status()["events"]]
        assert not any("(Linux bug)" in e for e in events)
        if n == 1:
            assert lpar.crash("panic") == "capture"

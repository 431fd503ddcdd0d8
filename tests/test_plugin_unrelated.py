"""The drgn plugin leaves cores that are not hypervisor-assisted dumps alone.

Real drgn, in fresh interpreters, with the plugin (as installed, through its
entry point) and without it (``DRGN_DISABLE_PLUGINS=hvdump``): an x86-64
userspace core, a ppc64 userspace core (no VMCOREINFO), a ppc64 kernel ELF
core with PRSTATUS notes (hvsim's ground-truth core, with vmlinux), a
kdump-compressed file of the same memory without the ``HVDUMP`` notes, and
truncated and corrupt files named like the collector's output and like a
live ``/proc/vmcore``. Both runs must see the same threads, registers,
memory, symbols and objects, and the plugin must print nothing. The hook
must also return for a non-ppc64 program without importing the plugin's
dump machinery.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from drgn_hvdump.codecs import check_batch, compress_batch, get_codec
from drgn_hvdump.collect.output import KdumpOutput, create_file
from drgn_hvdump.formats.elfcore import (
    NT_PRSTATUS,
    ElfCore,
    LoadSegment,
    Note,
    PtRegs,
    build_notes,
    build_prstatus,
    write_core,
)
from drgn_hvdump.formats.kdump import plan_kdump
from drgn_hvdump.formats.vmcoreinfo import (
    VMCOREINFO_NOTE_NAME,
    VMCOREINFO_NOTE_TYPE,
    build_vmcoreinfo,
)
from hvsim import Lpar
from hvsim.groundcore import write_truth_core
from hvsim.kernel import vmlinux_path

pytest.importorskip("drgn")

EM_X86_64 = 62
PAGE_OFFSET = 0xC000000000000000
MIB = 1 << 20

# Runs in a fresh interpreter: opens the core, prints what drgn sees as JSON.
_PROBE = r"""
import json, sys
import drgn

core, spec = sys.argv[1], json.loads(sys.argv[2])
out = {}

def attempt(fn):
    try:
        return fn()
    except Exception as exc:  # what drgn says is part of the result
        return f"{type(exc).__name__}: {exc}"

prog = drgn.Program()
err = attempt(lambda: prog.set_core_dump(core))
out["open"] = err
if err is None:
    out["platform"] = str(prog.platform)
    out["flags"] = prog.flags.value
    def threads():
        res = []
        for th in sorted(prog.threads(), key=lambda t: t.tid):
            def regs(th=th):
                return {k: v for k, v in th.stack_trace()[0].registers().items()}
            res.append([th.tid, attempt(regs)])
        return res
    out["threads"] = attempt(threads)
    out["crashed"] = attempt(lambda: prog.crashed_thread().tid)
    out["reads"] = {
        f"{addr:#x}/{size}/{phys}": attempt(lambda: prog.read(addr, size, phys).hex())
        for addr, size, phys in spec.get("reads", [])
    }
    if spec.get("vmlinux"):
        prog.load_debug_info([spec["vmlinux"]])
        from drgn.helpers.linux.pid import for_each_task
        out["threads with debug info"] = attempt(threads)
        out["crashed with debug info"] = attempt(lambda: prog.crashed_thread().tid)
        out["release"] = attempt(lambda: prog["UTS_RELEASE"].string_().decode())
        out["tasks"] = attempt(
            lambda: sorted((t.pid.value_(), t.comm.string_().decode()) for t in for_each_task(prog))
        )
        out["symbols"] = {
            name: attempt(lambda: [prog.symbol(name).address, prog.symbol(name).size])
            for name in ("init_task", "linux_banner", "swapper_pg_dir")
        }
        out["objects"] = {
            name: attempt(lambda: prog[name].address_)
            for name in ("init_task", "linux_banner", "swapper_pg_dir")
        }
        out["trace"] = attempt(
            lambda: [f.name for f in prog.crashed_thread().stack_trace()]
        )
print(json.dumps(out, sort_keys=True))
"""


@dataclass
class Probe:
    rc: int
    result: dict[str, Any]
    stderr: str


def probe(core: Path, spec: dict[str, Any], *, plugin: bool, code: str = _PROBE) -> Probe:
    env = dict(os.environ)
    env.pop("DRGN_DISABLE_PLUGINS", None)
    env.pop("DRGN_PLUGINS", None)
    if not plugin:
        env["DRGN_DISABLE_PLUGINS"] = "hvdump"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(core), json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return Probe(proc.returncode, json.loads(proc.stdout.splitlines()[-1]), proc.stderr)


def assert_same(core: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Both runs agree and the plugin's run printed nothing of its own; returns the result."""
    on = probe(core, spec, plugin=True)
    off = probe(core, spec, plugin=False)
    assert on.result == off.result
    assert on.stderr == off.stderr
    for word in ("hvdump", "Traceback", "drgn.plugins"):
        assert word not in on.stderr
    return on.result


# -- the cores ---------------------------------------------------------------------------


@dataclass
class Cores:
    d: Path
    truth: Path
    vmlinux: str


@pytest.fixture(scope="module")
def cores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cores]:
    d = tmp_path_factory.mktemp("unrelated")
    lpar = Lpar.create(d / "lpar", memory="1G", cpus=2, endian="big", seed=5, boot=True)
    lpar.crash("sysrq")
    truth = d / "truth.core"
    write_truth_core(lpar, truth)
    shutil.rmtree(d / "lpar")
    yield Cores(d, truth, vmlinux_path("big"))


def _regs(seed: int) -> PtRegs:
    return PtRegs(
        gpr=tuple(seed * 0x100 + i for i in range(32)),
        nip=0x10000400 + seed,
        msr=0x800000000000D032,
        link=0x10000200 + seed,
        ccr=0x22000000,
    )


def ppc64_user_core(path: Path) -> None:
    """A big-endian ppc64 userspace core: two threads, one segment, no VMCOREINFO."""
    notes = [
        Note("CORE", NT_PRSTATUS, build_prstatus(_regs(1), "big", pid=101, cursig=11)),
        Note("CORE", NT_PRSTATUS, build_prstatus(_regs(2), "big", pid=102)),
    ]
    data = bytes(range(256)) * 256
    write_core(path, notes, [(LoadSegment(0, len(data), vaddr=0x10000000), data)], "big")


def x86_core(path: Path) -> str:
    """An x86-64 userspace core: ``gcore`` of ``sleep`` if gdb can, else synthetic."""
    if shutil.which("gcore") and os.uname().machine == "x86_64":
        proc = subprocess.Popen(["sleep", "30"])
        try:
            done = subprocess.run(
                ["gcore", "-o", str(path), str(proc.pid)], capture_output=True, timeout=60
            )
        finally:
            proc.kill()
            proc.wait()
        made = path.with_name(f"{path.name}.{proc.pid}")
        if done.returncode == 0 and made.exists():
            made.rename(path)
            return "gcore"
    data = bytes(range(256)) * 16
    write_core(
        path, [], [(LoadSegment(0, len(data), vaddr=0x400000), data)], "little", machine=EM_X86_64
    )
    return "synthetic"


def _load_vaddrs(path: Path) -> list[int]:
    """Virtual addresses of a little-endian ELF64 core's PT_LOADs with file bytes."""
    with open(path, "rb") as f:
        ehdr = f.read(64)
        phoff, phentsize, phnum = (
            struct.unpack_from("<Q", ehdr, 0x20)[0],
            *struct.unpack_from("<HH", ehdr, 0x36),
        )
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    out = []
    for i in range(phnum):
        p_type, _, _, vaddr, _, filesz, _, _ = struct.unpack_from("<IIQQQQQQ", table, i * phentsize)
        if p_type == 1 and filesz:
            out.append(vaddr)
    return out


def kdump_without_our_notes(truth: Path, path: Path) -> None:
    """The truth core's memory and notes (VMCOREINFO, PRSTATUS) as a zlib kdump file."""
    with ElfCore.open(truth) as core:
        notes = [Note(n.name, n.type, bytes(n.desc)) for n in core.notes]
        info = core.vmcoreinfo or {}
        seg = core.segments[0]
        size = seg.p_filesz
        ps = int(info["PAGESIZE"])
        with open(truth, "rb") as f:
            f.seek(seg.p_offset)
            memory = f.read(size)
    raw_notes = build_notes(notes, "big")
    prefix = build_notes(notes[: [n.name for n in notes].index(VMCOREINFO_NOTE_NAME)], "big")
    vmci = next(n for n in notes if n.name == VMCOREINFO_NOTE_NAME)
    name_len = (len(vmci.name) + 1 + 3) & ~3
    codec = get_codec("zlib")
    layout = plan_kdump(
        byteorder="big",
        page_size=ps,
        max_mapnr=size // ps,
        ranges=[(0, size // ps)],
        notes=raw_notes,
        vmcoreinfo=(len(prefix) + 12 + name_len, len(vmci.desc)),
        nr_cpus=sum(1 for n in notes if n.type == NT_PRSTATUS),
        utsname=["Linux", "lpar", info.get("OSRELEASE", ""), "#1", "ppc64", ""],
        timestamp=0,
        codec_flag=codec.flag,
    )
    out = KdumpOutput(create_file(str(path)), layout, codec, False)
    try:
        view = memoryview(memory)
        step = 64 * ps
        for a in range(0, size, step):
            chunk = view[a : a + step]
            pages = len(chunk) // ps
            zero = bytes(int(not any(chunk[i * ps : (i + 1) * ps])) for i in range(pages))
            batch = compress_batch(codec, chunk, zero, ps)
            assert check_batch(codec, chunk, zero, batch, ps) == ""
            out.write(a, [batch])
        out.finish()
    finally:
        out.close()


# -- the tests -------------------------------------------------------------------------------


def test_x86_64_userspace_core(tmp_path: Path) -> None:
    core = tmp_path / "x86.core"
    how = x86_core(core)
    reads = [[vaddr, 64, False] for vaddr in _load_vaddrs(core)[:3]] + [[0x1000, 8, True]]
    res = assert_same(core, {"reads": reads})
    assert res["open"] is None and "X86_64" in res["platform"]
    if how == "gcore":
        assert res["threads"] and isinstance(res["threads"][0][1], dict)
    for addr, size, physical in reads[:-1]:
        assert not str(res["reads"][f"{addr:#x}/{size}/{physical}"]).startswith("FaultError")


def test_ppc64_userspace_core_without_vmcoreinfo(tmp_path: Path) -> None:
    core = tmp_path / "ppc64-user.core"
    ppc64_user_core(core)
    res = assert_same(core, {"reads": [[0x10000000, 16, False], [0x10000000 + 0xFFF8, 8, False]]})
    assert res["open"] is None and "PPC64" in res["platform"]
    assert [t[0] for t in res["threads"]] == [101, 102]
    regs = res["threads"][0][1]
    assert isinstance(regs, dict) and regs.get("r5") == 0x105
    assert res["reads"]["0x10000000/16/False"] == bytes(range(16)).hex()


def test_ppc64_kernel_elf_core_that_is_not_ours(cores: Cores) -> None:
    reads = [
        [0, 64, True],
        [0x1000000, 256, True],
        [200 * MIB, 4096, True],
        [PAGE_OFFSET + 0x1000000, 256, False],
        [PAGE_OFFSET + 300 * MIB, 8, False],  # past the core
    ]
    res = assert_same(cores.truth, {"reads": reads, "vmlinux": cores.vmlinux})
    assert res["open"] is None
    assert res["release"] == "2.6.32-hvsim"
    assert isinstance(res["tasks"], list) and len(res["tasks"]) > 3
    threads = res["threads with debug info"]
    assert isinstance(threads, list) and len(threads) == len(res["tasks"])
    assert all(isinstance(regs, dict) for _, regs in threads)
    assert isinstance(res["crashed with debug info"], int)
    assert isinstance(res["objects"]["init_task"], int)
    assert isinstance(res["trace"], list) and res["trace"]
    assert (
        res["reads"][f"{PAGE_OFFSET + 0x1000000:#x}/256/False"]
        == res["reads"]["0x1000000/256/True"]
    )
    # drgn 0.3 cannot translate it (no page-table walk on hash MMU): an error both times
    assert "Error: " in res["reads"][f"{PAGE_OFFSET + 300 * MIB:#x}/8/False"]


def test_kdump_compressed_without_our_notes(cores: Cores) -> None:
    kd = cores.d / "dump.kdump"  # the collector's name, without its HVDUMP notes
    if not kd.exists():
        kdump_without_our_notes(cores.truth, kd)
    reads = [[0, 64, True], [0x1000000, 256, True], [PAGE_OFFSET + 0x2000000, 64, False]]
    res = assert_same(kd, {"reads": reads, "vmlinux": cores.vmlinux})
    assert res["open"] is None, res["open"]
    assert res["release"] == "2.6.32-hvsim"
    assert isinstance(res["tasks"], list) and len(res["tasks"]) > 3
    with open(cores.truth, "rb") as f, ElfCore.open(cores.truth) as elf:
        f.seek(elf.segments[0].p_offset + 0x1000000)
        assert res["reads"]["0x1000000/256/True"] == f.read(256).hex()


@pytest.mark.parametrize(
    "name",
    ["dump.elf", "proc/vmcore", "raw.vmcore", "dump.kdump-garbage", "dump.kdump-cut", "empty"],
)
def test_truncated_and_corrupt_files(cores: Cores, tmp_path: Path, name: str) -> None:
    with open(cores.truth, "rb") as f:
        head = f.read(3 * MIB)
    if name == "dump.kdump-garbage":
        path = tmp_path / "dump.kdump"
        path.write_bytes(b"KDUMP   " + bytes(range(256)) * 64)
    elif name == "dump.kdump-cut":
        kd = cores.d / "dump.kdump"
        if not kd.exists():
            kdump_without_our_notes(cores.truth, kd)
        path = tmp_path / "dump.kdump"
        with open(kd, "rb") as f:
            path.write_bytes(f.read(5 * 65536 + 100))
    elif name == "empty":
        path = tmp_path / "vmcore"
        path.write_bytes(b"")
    else:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        # an ELF core cut inside its first PT_LOAD: headers and notes intact
        path.write_bytes(head)
        if name == "raw.vmcore":  # and one whose program headers are garbage
            data = bytearray(head)
            data[64:1024] = bytes(range(256)) * 3 + bytes(1024 - 64 - 768)
            path.write_bytes(bytes(data))
    assert_same(path, {"reads": [[0, 8, True], [PAGE_OFFSET, 8, False]]})


_HOOK = r"""
import json, sys
import drgn
from drgn_hvdump import plugin
before = set(sys.modules)
prog = drgn.Program()
prog.set_core_dump(sys.argv[1])  # drgn runs the hook (the plugin is enabled)
plugin.drgn_prog_set(prog)       # and once more, directly
new = sorted(m for m in set(sys.modules) - before if m.startswith("drgn_hvdump"))
print(json.dumps({"new": new, "platform": str(prog.platform)}))
"""


@pytest.mark.parametrize("kind", ["x86-64", "ppc64-user"])
def test_hook_on_other_programs_imports_nothing(tmp_path: Path, kind: str) -> None:
    core = tmp_path / "core"
    if kind == "x86-64":
        data = bytes(4096)
        write_core(
            core, [], [(LoadSegment(0, 4096, vaddr=0x400000), data)], "little", machine=EM_X86_64
        )
    else:
        ppc64_user_core(core)
    res = probe(core, {}, plugin=True, code=_HOOK)
    assert res.result["new"] == []
    assert res.stderr == ""
    assert ("X86_64" if kind == "x86-64" else "PPC64") in res.result["platform"]


@pytest.mark.parametrize(
    ("pids", "loads", "looked"), [([0, 4242], 2, False), ([1, 2], 2, True), ([1, 2], 1, False)]
)
def test_kernel_core_notes_numbered_by_task_are_not_searched(
    tmp_path: Path, pids: list[int], loads: int, looked: bool
) -> None:
    # kdump numbers its PRSTATUS notes by the task on each CPU: such a kernel core is
    # left before the plugin's dump machinery is imported. Notes numbered by CPU (a
    # capture kernel's, QEMU's) may be a copy of /proc/vmcore and are looked at, if
    # the core has the copy's shape (memory in two PT_LOADs at least; QEMU writes one).
    info = build_vmcoreinfo(
        [
            ("OSRELEASE", "6.1.0"),
            ("PAGESIZE", "65536"),
            ("SYMBOL(swapper_pg_dir)", "c000000001000000"),
        ]
    )
    notes = [
        Note("CORE", NT_PRSTATUS, build_prstatus(_regs(n), "big", pid=p))
        for n, p in enumerate(pids)
    ]
    notes.append(Note(VMCOREINFO_NOTE_NAME, VMCOREINFO_NOTE_TYPE, info))
    data = bytes(1 << 20)
    segments = [
        (LoadSegment(i * len(data), len(data), vaddr=PAGE_OFFSET + i * len(data)), data)
        for i in range(loads)
    ]
    core = tmp_path / "vmcore"
    write_core(core, notes, segments, "big")
    res = probe(core, {}, plugin=True, code=_HOOK)
    assert ("drgn_hvdump.plugin.source" in res.result["new"]) == looked, res.result["new"]
    assert res.stderr == ""

"""Cores we write are read cleanly by readelf, eu-readelf and gdb, in both byte orders."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from drgn_hvdump.formats.elfcore import (
    NT_PRSTATUS,
    LoadSegment,
    Note,
    PtRegs,
    build_prstatus,
    write_core,
)
from drgn_hvdump.formats.vmcoreinfo import build_vmcoreinfo

pytestmark = pytest.mark.tools

BYTEORDERS = ("big", "little")
NCPUS = 4
VMCOREINFO = build_vmcoreinfo({"OSRELEASE": "2.6.27-hvdump", "PAGESIZE": "4096"})

# gdb picks the ppc64 GNU/Linux core support from e_machine and the notes; the
# architecture and endianness are set explicitly so no executable is needed.
GDB_COMMANDS = (
    "set debuginfod enabled off",
    "set architecture powerpc:common64",
    "set endian {endian}",
    "core-file {core}",
    "thread apply all info registers",
    "info threads",
)


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (apt-get install binutils elfutils gdb-multiarch)")
    return path


def regs_of(cpu: int) -> PtRegs:
    """Registers with values unique to each CPU and register."""
    return PtRegs(
        gpr=tuple(0x1000_0000_0000 * (cpu + 1) + n * 0x11 for n in range(32)),
        nip=0xC000000000100000 + cpu * 0x40,
        msr=0x8000000000009032 | cpu << 4,
        ctr=0xC0FFEE00 + cpu,
        link=0xC000000000200000 + cpu * 0x80,
        xer=0x20000000 + cpu,
        ccr=0x24000040 + cpu,
        trap=0x300,
        dar=0xDEAD0000 + cpu,
        dsisr=0x42000000,
    )


def pid_of(cpu: int) -> int:
    return 100 + cpu


def write_sample(path: Path, order: Any) -> None:
    notes = [
        Note("CORE", NT_PRSTATUS, build_prstatus(regs_of(cpu), order, pid=pid_of(cpu)))
        for cpu in range(NCPUS)
    ]
    notes.append(Note("VMCOREINFO", 0, VMCOREINFO))
    segments = [
        (LoadSegment(0, 0x4000), bytes(range(256)) * 0x40),
        # hole 0x4000..0x100000
        (LoadSegment(0x100000, 0x3000, filesz=0x1000), b"\x11" * 0x1000),
        (LoadSegment(0x200000, 0x2000), b"\x22" * 0x2000),
    ]
    write_core(path, notes, segments, order)


@pytest.fixture(params=BYTEORDERS)
def core(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str]:
    order: str = request.param
    path = tmp_path / f"vmcore-{order}"
    write_sample(path, order)
    return path, order


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_readelf(core: tuple[Path, str]) -> None:
    path, order = core
    p = run(need("readelf"), "-h", "-l", "-n", "-W", str(path))
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    out = p.stdout
    assert re.search(r"Class:\s+ELF64", out)
    assert re.search(rf"Data:\s+2's complement, {order} endian", out)
    assert re.search(r"Type:\s+CORE \(Core file\)", out)
    assert re.search(r"Machine:\s+PowerPC64", out)
    assert re.search(r"Number of program headers:\s+4", out)
    assert len(re.findall(r"^\s+LOAD\s", out, re.M)) == 3
    assert len(re.findall(r"^\s+NOTE\s", out, re.M)) == 1
    assert out.count("NT_PRSTATUS (prstatus structure)") == NCPUS
    assert len(re.findall(rf"^\s+VMCOREINFO\s+0x{len(VMCOREINFO):08x}\s", out, re.M)) == 1


def test_eu_readelf(core: tuple[Path, str]) -> None:
    path, order = core
    p = run(need("eu-readelf"), "-h", "-l", "-n", str(path))
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    out = p.stdout
    assert re.search(rf"Data:\s+2's complement, {order} endian", out)
    assert re.search(r"Machine:\s+PowerPC64", out)
    assert re.search(r"Number of program headers entries:\s+4", out)
    assert len(re.findall(r"^\s+CORE\s+504\s+PRSTATUS", out, re.M)) == NCPUS
    assert "OSRELEASE=2.6.27-hvdump" in out
    # eu-readelf decodes each prstatus: check pid, nip and a few GPRs per note
    pids = [int(m) for m in re.findall(r"pid: (\d+), ppid", out)]
    assert pids == [pid_of(c) for c in range(NCPUS)]
    nips = [int(m, 16) for m in re.findall(r"nip: (0x[0-9a-f]+)", out)]
    assert nips == [regs_of(c).nip for c in range(NCPUS)]
    r31 = [int(m) for m in re.findall(r"r31:\s+(\d+)", out)]
    assert r31 == [regs_of(c).gpr[31] for c in range(NCPUS)]


_GDB_NAMES = {f"r{n}": n for n in range(32)}


def parse_gdb_threads(out: str) -> dict[int, dict[str, int]]:
    """``thread apply all info registers`` output: LWP -> register -> value."""
    threads: dict[int, dict[str, int]] = {}
    current: dict[str, int] | None = None
    for line in out.splitlines():
        m = re.match(r"Thread \d+ \(LWP (\d+)\):", line)
        if m:
            current = threads.setdefault(int(m.group(1)), {})
            continue
        m = re.match(r"(\w+)\s+(0x[0-9a-f]+)\s", line)
        if m and current is not None:
            current[m.group(1)] = int(m.group(2), 16)
    return threads


def test_gdb_registers(core: tuple[Path, str]) -> None:
    path, order = core
    gdb = need("gdb-multiarch")
    argv = [gdb, "-nx", "-batch"]
    for command in GDB_COMMANDS:
        argv += ["-ex", command.format(endian=order, core=path)]
    p = run(*argv)
    assert p.returncode == 0, p.stderr
    assert "warning" not in (p.stdout + p.stderr).lower(), p.stdout + p.stderr
    threads = parse_gdb_threads(p.stdout)
    assert sorted(threads) == sorted(pid_of(c) for c in range(NCPUS))
    for cpu in range(NCPUS):
        got = threads[pid_of(cpu)]
        want = regs_of(cpu)
        expected = {f"r{n}": want.gpr[n] for n in range(32)}
        expected.update(
            pc=want.nip, msr=want.msr, lr=want.link, ctr=want.ctr, xer=want.xer, cr=want.ccr
        )
        assert {k: got.get(k) for k in expected} == expected, f"CPU {cpu}"
    assert len(re.findall(r"^\*?\s+\d+\s+LWP \d+", p.stdout, re.M)) == NCPUS

"""``hvdump convert``: any ELF vmcore into the collector's kdump or ELF output.

Checked against tools we did not write: libkdumpfile (Debian's Python
bindings), drgn (the crashed hvsim kernel's first look, through a converted
dump), crash (what Debian's x86-64 build can do without a vmlinux); and page
by page against the source core in both byte orders.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from drgn_hvdump.codecs import decompress_page
from drgn_hvdump.collect.convert import ConvertOptions, SourceChunk, convert, plan_chunks
from drgn_hvdump.collect.verify import verify_dir
from drgn_hvdump.formats.elfcore import (
    EM_PPC64,
    EM_X86_64,
    ElfCore,
    LoadSegment,
    Note,
    write_core,
)
from drgn_hvdump.formats.kdump import KdumpFile
from hvsim.pages import BUSY_MIX, gen_pages_into

HVDUMP = [sys.executable, "-m", "drgn_hvdump.cli"]

# --------------------------------------------------------------- plan_chunks (pure)


def test_plan_widens_merges_and_cuts_on_chunk_boundaries() -> None:
    ps = 4096
    # x86-64 /proc/vmcore style: an unaligned low segment, a gap, then two
    # segments that touch once widened to pages, one with filesz < memsz.
    segs = [
        (0x1000, 0x9E000 - 0x400, 0x2000, 0x9E000 - 0x400),
        (0x100000, 0x300000 + 0x10, 0x100000, 0x300000 + 0x10),
        (0x400800, 0x1000, 0x500000, 0x800),
    ]
    ranges, chunks = plan_chunks(segs, ps, 1 << 20)
    assert ranges == [(0x1000, 0x9E000), (0x100000, 0x302000)]
    assert [(c.paddr, c.size) for c in chunks] == [
        (0x1000, 0x9E000),
        (0x100000, 0x100000),
        (0x200000, 0x100000),
        (0x300000, 0x100000),
        (0x400000, 0x2000),
    ]
    assert chunks[0].pieces == ((0x2000, 0, 0x9E000 - 0x400),)
    assert not chunks[0].whole and chunks[1].whole
    # The last chunk: the end of segment 2 (0x10 bytes) and segment 3's file part.
    assert chunks[4].pieces == ((0x400000, 0, 0x10), (0x500000, 0x800, 0x800))
    assert [c.index for c in chunks] == list(range(5))


def test_plan_of_nothing() -> None:
    assert plan_chunks([(0x1000, 0, 0, 0)], 4096, 1 << 20) == ([], [])
    one = plan_chunks([(0, 8192, 4096, 8192)], 4096, 1 << 20)[1]
    assert one == [SourceChunk(0, 0, 8192, ((4096, 0, 8192),))]


# --------------------------------------------------------------- synthetic cores


def _pages(n: int, ps: int, big: bool, seed: int = 5, first: int = 0) -> bytes:
    buf = bytearray(n * ps)
    gen_pages_into(buf, seed, first, n, ps, BUSY_MIX, big)
    return bytes(buf)


def x86_core(path: Path) -> dict[int, bytes]:
    """An x86-64 vmcore shaped like Linux's: unaligned low RAM, a hole, filesz < memsz."""
    ps = 4096
    low = _pages(0x9E, ps, False)[: 0x9E000 - 0x400]
    high = _pages(2048, ps, False, first=0x100)
    tail = _pages(16, ps, False, first=0x900)
    vmci = b"OSRELEASE=6.1.0-convert-test\nPAGESIZE=4096\nCRASHTIME=1700000000\n"
    write_core(
        path,
        [Note("CORE", 1, bytes(336)), Note("CORE", 1, bytes(336)), Note("VMCOREINFO", 0, vmci)],
        [
            (LoadSegment(0x1000, len(low), vaddr=0xFFFF888000001000), low),
            (LoadSegment(0x100000, len(high), vaddr=0xFFFF888000100000), high),
            (
                LoadSegment(0x900000, 0x20000, filesz=len(tail) // 2, vaddr=0),
                tail[: len(tail) // 2],
            ),
        ],
        "little",
        machine=EM_X86_64,
        page_size=ps,
    )
    mem = {}
    whole = low + bytes(0x400)
    for i in range(0, len(whole), ps):
        mem[0x1000 + i] = whole[i : i + ps]
    for i in range(0, len(high), ps):
        mem[0x100000 + i] = high[i : i + ps]
    half = tail[: len(tail) // 2] + bytes(0x20000 - len(tail) // 2)
    for i in range(0, len(half), ps):
        mem[0x900000 + i] = half[i : i + ps]
    return mem


def ppc_core(path: Path, endian: str, *, vmcoreinfo: bool = True) -> dict[int, bytes]:
    ps = 65536
    big = endian == "big"
    data = _pages(96, ps, big, seed=9)
    notes = [Note("CORE", 1, bytes(504))]
    if vmcoreinfo:
        notes.append(Note("VMCOREINFO", 0, b"OSRELEASE=6.1.0-ppc\nPAGESIZE=65536\n"))
    write_core(path, notes, [(LoadSegment(0, len(data)), data)], endian, machine=EM_PPC64)
    return {i: data[i : i + ps] for i in range(0, len(data), ps)}


def _read_kdump(path: Path) -> tuple[KdumpFile, dict[int, bytes]]:
    kd = KdumpFile.open(path, decompress_page)
    ps = kd.page_size
    pages: dict[int, bytes] = {}
    for first, end in kd.present_runs():
        for i, d in enumerate(kd.descriptors(first, end - first)):
            pages[(first + i) * ps] = kd.decode(d, first + i)
    return kd, pages


def _expect_same(got: dict[int, bytes], mem: dict[int, bytes]) -> None:
    zero = {a for a, p in mem.items() if not any(p)}
    for a, page in mem.items():
        assert got.get(a, bytes(len(page))) == page, hex(a)
    assert set(got) <= set(mem)
    assert zero and zero != set(mem)


@pytest.mark.parametrize("codec", ["zstd", "zlib", "lzo", "snappy", "none"])
def test_x86_64_kdump_every_codec(tmp_path: Path, codec: str) -> None:
    core = tmp_path / "vmcore"
    mem = x86_core(core)
    out = tmp_path / "out"
    res = convert(ConvertOptions(core, out, compress=codec, chunk_size=1 << 20, progress=False))
    kd, got = _read_kdump(res.dump_file)
    try:
        assert kd.byteorder == "little" and kd.page_size == 4096
        _expect_same(got, mem)
        assert kd.header.nr_cpus == 2
        assert kd.header.utsname[4 * 65 : 4 * 65 + 7] == b"x86_64\0"
    finally:
        kd.close()
    m = res.manifest.to_json()
    assert m["tool"] == "hvdump convert" and m["source"]["machine"] == "x86-64"
    assert m["dump"]["compression"] == codec
    assert m["dump"]["zero_pages"] == sum(c["zero_pages"] for c in m["chunks"]) > 0
    ok, lines = verify_dir(out)
    assert ok, lines
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


@pytest.mark.parametrize("endian", ["big", "little"])
@pytest.mark.parametrize("threads", [1, 2])
def test_ppc64_both_byte_orders_threads_and_check(
    tmp_path: Path, endian: str, threads: int
) -> None:
    core = tmp_path / "vmcore"
    mem = ppc_core(core, endian)
    res = convert(
        ConvertOptions(
            core, tmp_path / "out", compress="zstd", threads=threads, check=True, progress=False
        )
    )
    kd, got = _read_kdump(res.dump_file)
    try:
        assert kd.byteorder == endian and kd.page_size == 65536
        _expect_same(got, mem)
    finally:
        kd.close()
    assert verify_dir(tmp_path / "out")[0]


@pytest.mark.parametrize("endian", ["big", "little"])
def test_elf_output_is_sparse_and_keeps_the_source_segments(tmp_path: Path, endian: str) -> None:
    core = tmp_path / "vmcore"
    mem = ppc_core(core, endian)
    res = convert(ConvertOptions(core, tmp_path / "out", format="elf", progress=False))
    with ElfCore.open(res.dump_file) as elf, ElfCore.open(core) as src:
        assert elf.byteorder == endian and elf.flags == src.flags
        assert [n.desc for n in elf.notes] == [n.desc for n in src.notes]
        assert [(p.p_paddr, p.p_vaddr, p.p_memsz) for p in elf.segments] == [
            (p.p_paddr, p.p_vaddr, p.p_memsz) for p in src.segments
        ]
        for a, page in mem.items():
            assert elf.read_phys(a, len(page)) == page
    zero_bytes = sum(len(p) for p in mem.values() if not any(p))
    st = res.dump_file.stat()
    assert st.st_blocks * 512 <= st.st_size - zero_bytes + 65536
    assert verify_dir(tmp_path / "out")[0]


def test_x86_64_elf_output(tmp_path: Path) -> None:
    core = tmp_path / "vmcore"
    mem = x86_core(core)
    res = convert(ConvertOptions(core, tmp_path / "out", format="elf", progress=False))
    with ElfCore.open(res.dump_file, machine=EM_X86_64) as elf:
        for a, page in mem.items():
            assert elf.read_phys(a, len(page)) == page, hex(a)
    assert verify_dir(tmp_path / "out")[0]


# --------------------------------------------------------------- tools we did not write

_LIBKDUMPFILE = r"""
import hashlib, json, sys
import kdumpfile
k = kdumpfile.kdumpfile(file=sys.argv[1])
k.attr["addrxlat.ostype"] = "linux"
out = {"arch": k.attr["arch.name"], "order": k.attr["arch.byte_order"], "pages": {}}
for a in json.loads(sys.argv[2]):
    out["pages"][str(a)] = hashlib.sha256(
        k.read(kdumpfile.KDUMP_MACHPHYSADDR, a, int(sys.argv[3]))).hexdigest()
print(json.dumps(out))
"""


def _libkdumpfile(dump: Path, addrs: list[int], ps: int) -> dict[str, object]:
    if not Path("/usr/bin/python3").exists():
        pytest.skip("no system python3 for python3-libkdumpfile")
    res = subprocess.run(
        ["/usr/bin/python3", "-c", _LIBKDUMPFILE, str(dump), json.dumps(addrs), str(ps)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if "No module named 'kdumpfile'" in res.stderr:
        pytest.skip("python3-libkdumpfile is not installed (apt-get install python3-libkdumpfile)")
    assert res.returncode == 0, res.stderr
    got: dict[str, object] = json.loads(res.stdout)
    return got


@pytest.mark.parametrize(
    ("kind", "codec"), [("x86", "lzo"), ("x86", "zlib"), ("big", "snappy"), ("little", "zstd")]
)
def test_libkdumpfile_reads_what_the_source_holds(tmp_path: Path, kind: str, codec: str) -> None:
    core = tmp_path / "vmcore"
    mem = x86_core(core) if kind == "x86" else ppc_core(core, kind)
    res = convert(ConvertOptions(core, tmp_path / "out", compress=codec, progress=False))
    ps = len(next(iter(mem.values())))
    rng = random.Random(3)
    addrs = sorted([*rng.sample(sorted(mem), 40), min(mem), max(mem)])
    got = _libkdumpfile(res.dump_file, addrs, ps)
    assert got["arch"] == ("x86_64" if kind == "x86" else "ppc64")
    assert got["order"] == (0 if kind == "big" else 1)
    pages = got["pages"]
    assert isinstance(pages, dict)
    for a in addrs:
        assert pages[str(a)] == hashlib.sha256(mem[a]).hexdigest(), hex(a)


def test_crash_reads_the_x86_64_header_without_a_vmlinux(tmp_path: Path) -> None:
    """Debian's crash (x86-64) needs a vmlinux for a session; without one it can still
    name the kernel a kdump file holds (``--osrelease``), which reads our header and
    VMCOREINFO."""
    crash = shutil.which("crash")
    if crash is None:
        pytest.skip("crash is not installed (apt-get install crash)")
    core = tmp_path / "vmcore"
    x86_core(core)
    res = convert(ConvertOptions(core, tmp_path / "out", compress="lzo", progress=False))
    out = subprocess.run(
        [crash, "--osrelease", str(res.dump_file)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "6.1.0-convert-test"


def test_drgn_first_look_through_a_converted_dump(tmp_path: Path) -> None:
    """The crashed hvsim kernel, as an ELF core, converted: drgn sees the same kernel."""
    from drgn.helpers.linux.pid import for_each_task

    from tests.drgn_support import crash_to_truth_core, open_core

    truth = crash_to_truth_core(tmp_path, "big", "oops")
    res = convert(ConvertOptions(truth.core, tmp_path / "out", compress="lzo", progress=False))
    looks = []
    for path in (truth.core, res.dump_file):
        prog = open_core(path, truth.vmlinux)
        looks.append(
            (
                prog["init_uts_ns"].name.release.string_(),
                sorted((t.comm.string_(), t.pid.value_()) for t in for_each_task(prog)),
                [f.name for f in prog.crashed_thread().stack_trace()],
            )
        )
    assert looks[0] == looks[1]
    assert looks[1][1] and looks[1][2]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("endian", "elf_order", "flags"),
    [("little", "big", []), ("big", "big", ["--find-vmcoreinfo"])],
    ids=["le-guest-be-elf-as-qemu", "be-guest-asked"],
)
def test_a_qemu_dump_becomes_a_kdump_of_the_kernels_byte_order(
    tmp_path: Path, endian: str, elf_order: str, flags: list[str]
) -> None:
    """QEMU's dump of a pseries guest: no VMCOREINFO, p_paddr/p_vaddr 0, and (7.2) a
    big-endian header for a little-endian guest. The kdump file is the kernel's."""
    from drgn.helpers.linux.pid import for_each_task

    from hvsim.kernel import vmlinux_path
    from tests.collect_support import crashed_source, qemu_like_core
    from tests.drgn_support import open_core

    source, image = crashed_source(tmp_path, endian)
    core = qemu_like_core(source, image, tmp_path / "guest.core", elf_order, vmcoreinfo_note=False)
    res = _cli(*flags, str(core), str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["source"]["byteorder"] == endian and m["source"]["elf_byteorder"] == elf_order
    assert m["source"]["read_as"].startswith("whole guest")
    assert m["source"]["vmcoreinfo"]["OSRELEASE"] == source.config.osrelease
    dump = tmp_path / "out" / "dump.kdump"
    addrs = [0, 0x1000000, 300 << 20, (1 << 30) - 65536]
    got = _libkdumpfile(dump, addrs, 65536)
    assert got["order"] == (0 if endian == "big" else 1)
    pages = got["pages"]
    assert isinstance(pages, dict)
    for a in addrs:
        assert pages[str(a)] == hashlib.sha256(source.expected(a, 65536)).hexdigest(), hex(a)
    prog = open_core(dump, vmlinux_path(endian))
    assert prog["init_uts_ns"].name.release.string_().decode() == source.config.osrelease
    assert len(list(for_each_task(prog))) > 3
    # The registers, re-encoded as PRSTATUS notes in the kernel's order.
    trace = prog.crashed_thread().stack_trace()
    assert trace[0].registers()["r1"] == image.pt_regs(image.crash_cpu).gpr[1]


def test_a_plain_core_is_not_searched_and_flags_need_ppc64(tmp_path: Path) -> None:
    core = tmp_path / "vmcore"
    ppc_core(core, "little")
    res = convert(ConvertOptions(core, tmp_path / "out", progress=False))
    assert res.manifest.to_json()["source"]["read_as"] == "vmcore"
    x86 = tmp_path / "x86"
    x86_core(x86)
    bad = _cli("--find-vmcoreinfo", str(x86), str(tmp_path / "o2"))
    assert bad.returncode == 1 and "are for ppc64 cores" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    bad = _cli("--vmcoreinfo", "1000", str(core), str(tmp_path / "o3"))
    assert bad.returncode == 1 and "no VMCOREINFO note at physical address 0x1000" in bad.stderr


# --------------------------------------------------------------- user errors


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HVDUMP, "convert", "--no-progress", *args], capture_output=True, text=True, timeout=120
    )


def test_bad_inputs_give_one_line_and_leave_nothing(tmp_path: Path) -> None:
    core = tmp_path / "vmcore"
    ppc_core(core, "big", vmcoreinfo=False)
    cases = {
        "no-pagesize": ([str(core), str(tmp_path / "o1")], "give --page-size"),
        "not-elf": ([__file__, str(tmp_path / "o2")], "not an ELF file"),
        "missing": ([str(tmp_path / "nope"), str(tmp_path / "o3")], "nope"),
        "lz4": (["--compress", "lz4", str(core), str(tmp_path / "o4")], "no LZ4 flag"),
    }
    trunc = tmp_path / "trunc"
    trunc.write_bytes(core.read_bytes()[:200_000])
    cases["truncated"] = ([str(trunc), str(tmp_path / "o5")], "truncated")
    for name, (args, text) in cases.items():
        res = _cli(*args)
        assert res.returncode != 0, name
        assert "Traceback" not in res.stderr, (name, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and text in lines[0], (name, res.stderr)
        assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6)), name


def test_page_size_flag_and_refusing_to_overwrite(tmp_path: Path) -> None:
    core = tmp_path / "vmcore"
    mem = ppc_core(core, "little", vmcoreinfo=False)
    out = tmp_path / "out"
    res = _cli("--page-size", "64K", "--compress", "lzo", str(core), str(out))
    assert res.returncode == 0, res.stderr
    assert "converted" in res.stdout
    kd, got = _read_kdump(out / "dump.kdump")
    kd.close()
    _expect_same(got, mem)
    again = _cli("--page-size", "64K", str(core), str(out))
    assert again.returncode != 0 and "--force" in again.stderr
    before = (out / "dump.kdump").stat().st_mtime_ns
    assert (out / "dump.kdump").stat().st_mtime_ns == before
    forced = _cli("--force", "--page-size", "64K", "--format", "elf", str(core), str(out))
    assert forced.returncode == 0, forced.stderr
    assert sorted(p.name for p in out.iterdir()) == ["dump.elf", "manifest.json"]


def test_json_progress_lines(tmp_path: Path) -> None:
    core = tmp_path / "vmcore"
    x86_core(core)
    res = subprocess.run(
        [*HVDUMP, "convert", "--json", "--chunk-size", "1M", str(core), str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in res.stdout.splitlines()]
    progress = [e for e in events if e["event"] == "progress"]
    assert len(progress) >= 3 and progress[-1]["bytes_done"] == progress[-1]["bytes_total"]
    assert "released_bytes" not in progress[-1]
    assert events[-1]["event"] == "done"

"""hvdump collect against simulated LPARs: FUSE roots, ground truth, readers we did not write."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from drgn_hvdump.collect.collector import CollectOptions, collect
from drgn_hvdump.collect.verify import verify_dir
from drgn_hvdump.errors import HvdumpError
from tests.collect_support import (
    FUSE_MISSING,
    compare_with_truth,
    hvdump,
    make_lpar,
    manifest,
    mounted,
    released_before_durable,
)

needs_fuse = pytest.mark.skipif(bool(FUSE_MISSING), reason=FUSE_MISSING)

_KDUMPFILE_CHECK = r"""
import hashlib, json, sys
import kdumpfile
k = kdumpfile.kdumpfile(file=sys.argv[1])
k.attr["addrxlat.ostype"] = "linux"
out = {"arch": k.attr["arch.name"], "order": k.attr["arch.byte_order"],
       "osrelease": k.attr["linux.vmcoreinfo.lines"]["OSRELEASE"], "pages": {}}
for a in json.loads(sys.argv[2]):
    out["pages"][str(a)] = hashlib.sha256(k.read(kdumpfile.KDUMP_KPHYSADDR, a, 65536)).hexdigest()
print(json.dumps(out))
"""


def _libkdumpfile_reads(lpar, dump: Path, addrs: list[int]) -> None:  # type: ignore[no-untyped-def]
    import hashlib

    res = subprocess.run(
        ["/usr/bin/python3", "-c", _KDUMPFILE_CHECK, str(dump), json.dumps(addrs)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if "No module named 'kdumpfile'" in res.stderr:
        pytest.skip("python3-libkdumpfile is not installed")
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["arch"] == "ppc64"
    assert got["order"] == (0 if lpar.config.endian == "big" else 1)
    assert got["osrelease"] == lpar.config.osrelease
    for a in addrs:
        assert got["pages"][str(a)] == hashlib.sha256(lpar.expected(a, 65536)).hexdigest(), hex(a)


def _drgn_reads(lpar, dump: Path, addrs: list[int]) -> None:  # type: ignore[no-untyped-def]
    drgn = pytest.importorskip("drgn")
    prog = drgn.Program()
    prog.set_core_dump(str(dump))
    assert prog.platform.arch == drgn.Architecture.PPC64
    little = bool(prog.platform.flags & drgn.PlatformFlags.IS_LITTLE_ENDIAN)
    assert little == (lpar.config.endian == "little")
    for a in addrs:
        assert prog.read(a, 65536, True) == lpar.expected(a, 65536), hex(a)
        assert prog.read(0xC000000000000000 + a, 4096) == lpar.expected(a, 4096)


def _sample_addrs(lpar) -> list[int]:  # type: ignore[no-untyped-def]
    ps = lpar.config.page_size
    # low memory (from the hypervisor's copy), the reserved memory, both segment ends
    r = lpar.config.reserve_size
    scratch = lpar.last_dump().scratch[0]
    return [0, 0xA00000, (256 << 20) - ps, r, r + 0x1230000, scratch - ps]


@needs_fuse
@pytest.mark.fuse
@pytest.mark.parametrize(
    ("endian", "quirks", "fmt", "codec", "threads"),
    [
        ("big", "faithful", "kdump", "zstd", 1),
        ("little", "corrected", "kdump", "zlib", 2),
        ("big", "corrected", "elf", "zstd", 1),
        ("little", "faithful", "elf", "zstd", 2),
    ],
)
def test_collect_from_fuse_root(
    tmp_path: Path, endian: str, quirks: str, fmt: str, codec: str, threads: int
) -> None:
    lpar = make_lpar(tmp_path / "lpar", endian=endian, quirks=quirks, cpus=3)
    out = tmp_path / "out"
    with mounted(lpar, tmp_path / "root") as root:
        res = hvdump(
            "collect",
            "--root",
            str(root),
            "-o",
            str(out),
            "--format",
            fmt,
            "--compress",
            codec,
            "--threads",
            str(threads),
            "--chunk-size",
            "32M",
        )
        assert res.returncode == 0, res.stderr
    # Everything released exactly: the LPAR is protected again, nothing lost.
    assert lpar.state == "running" and lpar.protected
    st = lpar.status()["kernel"]["release"]
    if quirks == "faithful":
        assert st["reserved_counter"] == st["reserved_target"]
        assert st["scratch_counter"] == st["scratch_target"]
    assert st["unreleased_dump_bytes"] == 0
    assert lpar.lost_ranges() == []
    assert compare_with_truth(lpar, out) == []
    ok, lines = verify_dir(out)
    assert ok, lines
    # Modes: a directory only we can enter, files only we can read.
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    m = manifest(out)
    dump = out / m["dump"]["file"]
    if fmt == "kdump":
        addrs = _sample_addrs(lpar)
        _libkdumpfile_reads(lpar, dump, addrs)
        _drgn_reads(lpar, dump, addrs)
    # registers: one PRSTATUS per CPU with the crashed CPUs' NIA and R1
    assert m["source"]["cpus"] == 3
    regsave = (out / "regsave.bin").read_bytes()
    from drgn_hvdump.formats.regsave import build_regsave

    assert regsave == build_regsave(lpar.expected_cpu_states())


@needs_fuse
@pytest.mark.fuse
def test_progressive_release_gives_memory_back_early(tmp_path: Path) -> None:
    lpar = make_lpar(tmp_path / "lpar")
    seen: list[int] = []
    with mounted(lpar, tmp_path / "root") as root:

        def hook(event: str, n: int) -> None:
            if event == "chunk":
                seen.append(len(lpar.released_ranges()))

        collect(CollectOptions(root=root, output=tmp_path / "out", chunk_size=32 << 20, hook=hook))
    # memory went back while chunks were still being collected
    assert seen[len(seen) // 2] > 0
    curve = manifest(tmp_path / "out")["release"]["reserved_over_time"]
    assert curve[0][1] == 768 << 20 and curve[-1][1] == 0
    assert released_before_durable(lpar, tmp_path / "out", 65536) == []


@needs_fuse
@pytest.mark.fuse
def test_release_never_and_at_end(tmp_path: Path) -> None:
    lpar = make_lpar(tmp_path / "lpar")
    with mounted(lpar, tmp_path / "root") as root:
        res = hvdump(
            "collect",
            "--root",
            str(root),
            "-o",
            str(tmp_path / "a"),
            "--release",
            "never",
            "--format",
            "elf",
        )
        assert res.returncode == 0, res.stderr
        assert lpar.released_ranges() == [] and lpar.state == "capture"
        seen: list[int] = []
        collect(
            CollectOptions(
                root=root,
                output=tmp_path / "b",
                release="at-end",
                hook=lambda e, n: (
                    seen.append(len(lpar.released_ranges())) if e == "chunk" else None
                ),
            )
        )
    assert set(seen) == {0}
    assert lpar.protected
    assert compare_with_truth(lpar, tmp_path / "a") == []
    assert compare_with_truth(lpar, tmp_path / "b") == []


@pytest.mark.parametrize("direct", [True, False], ids=["o-direct", "page-cache"])
def test_kdump_output_with_and_without_o_direct(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    """Both write paths of the page data (O_DIRECT on the I/O thread, the page cache on
    the reading thread) give dumps that verify and hold the LPAR's memory."""
    from bench.export_root import export_root
    from drgn_hvdump.dumpdir import filewrite

    if not direct:
        real_open = os.open

        def no_direct(path: str, flags: int, *args: int, **kwargs: int) -> int:
            if flags & os.O_DIRECT:
                raise OSError(22, "Invalid argument")  # what NFS or a FUSE file system says
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(filewrite.os, "open", no_direct)
    lpar = make_lpar(tmp_path / "lpar")
    root = export_root(lpar, tmp_path / "root")
    out = tmp_path / "out"
    for compress in ("zstd", "none"):
        collect(
            CollectOptions(
                root=root, output=out / compress, release="never", compress=compress, threads=2
            )
        )
        assert verify_dir(out / compress)[0]
        assert compare_with_truth(lpar, out / compress) == []
        dump = out / compress / manifest(out / compress)["dump"]["file"]
        assert stat.S_IMODE(dump.stat().st_mode) == 0o600


def test_verify_detects_a_changed_byte_and_works_on_a_copy(tmp_path: Path) -> None:
    from bench.export_root import export_root

    lpar = make_lpar(tmp_path / "lpar")
    root = export_root(lpar, tmp_path / "root")
    out = tmp_path / "out"
    collect(CollectOptions(root=root, output=out, release="never", format="elf"))
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", "--sparse=always", str(out), str(copy)], check=True)
    assert verify_dir(copy)[0]
    m = manifest(copy)
    dump = copy / m["dump"]["file"]
    chunk = next(
        c for c in m["chunks"] if c["kind"] == "mem" and c["zero_pages"] < c["size"] // 65536
    )
    with open(dump, "r+b") as f:
        from drgn_hvdump.formats.elfcore import ElfCore

        with ElfCore.open(dump) as core:
            seg = next(
                s for s in core.segments if s.p_paddr <= chunk["dst"] < s.p_paddr + s.p_filesz
            )
        pos = seg.p_offset + chunk["dst"] - seg.p_paddr
        data = bytearray(os.pread(f.fileno(), chunk["size"], pos))
        i = next(i for i, b in enumerate(data) if b)
        os.pwrite(f.fileno(), bytes([data[i] ^ 1]), pos + i)
    ok, lines = verify_dir(copy)
    assert not ok and f"chunk {chunk['index']}" in lines[0]
    res = hvdump("verify", str(copy))
    assert res.returncode == 1 and "FAILED" in res.stdout


def test_codecs_round_trip_through_libkdumpfile(tmp_path: Path) -> None:
    from bench.export_root import export_root

    lpar = make_lpar(tmp_path / "lpar", memory="768M")
    root = export_root(lpar, tmp_path / "root")
    for codec in ("lzo", "snappy", "none"):
        out = tmp_path / codec
        collect(CollectOptions(root=root, output=out, release="never", compress=codec, threads=2))
        assert compare_with_truth(lpar, out) == []
        _libkdumpfile_reads(lpar, out / "dump.kdump", [0, 0xA00000, 256 << 20])
        _drgn_reads(lpar, out / "dump.kdump", [0, 0xA00000])


def test_lz4_is_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(HvdumpError, match="no LZ4 flag"):
        collect(CollectOptions(root=tmp_path, output=tmp_path / "o", compress="lz4"))


@pytest.mark.parametrize("name", ["zstd", "snappy", "zlib", "lzo", "none"])
def test_page_checker_catches_bad_stored_pages(name: str) -> None:
    """The decompress-and-compare check names a corrupt frame, a wrong raw page, a false zero."""
    from array import array

    from drgn_hvdump.codecs import PageBatch, check_batch, compress_batch, get_codec

    ps = 4096
    rnd = os.urandom(ps)  # stored raw: compressing does not make it smaller
    text = (b"hvdump page " * (ps // 12 + 1))[:ps]
    buf = bytearray(text + bytes(ps) + rnd + text[::-1])
    view = memoryview(buf)
    zero = bytes([0, 1, 0, 0])
    codec = get_codec(name)
    batch = compress_batch(codec, view, zero, ps)
    assert batch.sizes[1] == 0 and batch.flags[2] == 0 and batch.sizes[2] == ps
    assert batch.flags[0] == codec.flag and (batch.sizes[0] < ps or not codec.flag)
    data = bytes(batch.data)
    assert data[batch.sizes[0] : batch.sizes[0] + ps] == rnd
    assert check_batch(codec, view, zero, batch, ps) == ""

    def changed(i: int, at: int, *, sizes: list[int] | None = None) -> PageBatch:
        raw = bytearray(data)
        if at >= 0:
            raw[at] ^= 0x55
        return PageBatch(
            bytes(raw), array("I", sizes or list(batch.sizes)), array("I", batch.flags)
        )

    assert "page 0" in check_batch(codec, view, zero, changed(0, batch.sizes[0] - 1), ps)
    assert "page 2 of a batch is stored raw" in check_batch(
        codec, view, zero, changed(2, batch.sizes[0] + ps - 1), ps
    )
    false_zero = list(batch.sizes)
    false_zero[3] = 0
    assert "page 3 of a batch is stored as zero" in check_batch(
        codec, view, zero, changed(3, -1, sizes=false_zero), ps
    )

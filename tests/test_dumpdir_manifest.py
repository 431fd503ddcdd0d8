"""The manifest's one reader and one writer (:mod:`drgn_hvdump.dumpdir.manifest`).

Pure tests: manifests built in memory round-trip through JSON unchanged, in
the shape each tool writes and for both byte orders; what ``hvdump convert``
writes reads back to the same bytes; every malformed value is one
:class:`FormatError` naming its key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from drgn_hvdump.collect.convert import ConvertOptions, convert
from drgn_hvdump.dumpdir import manifest as mf
from drgn_hvdump.dumpdir.names import MANIFEST
from drgn_hvdump.errors import FormatError
from drgn_hvdump.formats.elfcore import LoadSegment, Note, PtRegs, build_core_header
from drgn_hvdump.formats.layout import ByteOrder
from drgn_hvdump.formats.regsave import prstatus_notes
from drgn_hvdump.formats.vmcoreinfo import VMCOREINFO_NOTE_NAME, VMCOREINFO_NOTE_TYPE

PS = 65536


def _chunk(i: int, kind: str, dst: int, size: int) -> mf.ChunkRecord:
    return mf.ChunkRecord(i, kind, dst, size, f"{i:016x}", dst, i * size, size // 2, 1)


def collected(byteorder: str) -> mf.Manifest:
    return mf.Manifest(
        tool="hvdump collect",
        source=mf.Source(
            byteorder=byteorder,
            page_size=PS,
            vmcoreinfo={"OSRELEASE": "2.6.32", "PAGESIZE": str(PS)},
            cpus=2,
            memory=4 * PS,
            vmcore="/proc/vmcore",
            capture=mf.CaptureSource("/", "phyp", "d0", True, None, "abc"),
        ),
        dump=mf.DumpFileInfo(
            "dump.kdump", "kdump", 1234, ((0, 2 * PS), (3 * PS, PS)), "zstd", None, 4096
        ),
        chunks=(
            _chunk(0, "cpu", 0, 100),
            _chunk(1, "hpte", 0, 64),
            _chunk(2, "rmo", 0, 2 * PS),
            _chunk(3, "mem", 3 * PS, PS),
        ),
        metadata={
            "cpu": mf.MetaFile("regsave.bin", 100, 7),
            "hpte": mf.MetaFile("hpte.bin", 64, 9),
        },
        dump_header_note="HVDUMP",
        release=mf.ReleaseRecord(
            "progressive",
            0,
            4 * PS,
            (3 * PS, PS),
            (
                mf.ReleaseWriteRecord(PS, PS, False, (1, 2), True),
                mf.ReleaseWriteRecord(0, PS, True, (0, 1), False, final=True),
            ),
            (0, 1),
            ((0.0, 4 * PS), (1.5, 3 * PS)),
            ({"t": 1.5, "release": [PS, PS]},),
        ),
        scrub=(),
        timings={"elapsed_s": 1.0, "threads": 2, "resumed": False},
        warnings=("one",),
    )


def converted(byteorder: str) -> mf.Manifest:
    return mf.Manifest(
        tool="hvdump convert",
        source=mf.Source(
            byteorder=byteorder,
            page_size=4096,
            vmcoreinfo={},
            cpus=1,
            memory=8192,
            vmcore="/tmp/core",
            converted=mf.ConvertedSource("ppc64", "big", "vmcore"),
        ),
        dump=mf.DumpFileInfo("dump.elf", "elf", 9000, ((0, 8192),), None, None, 8192, 1),
        chunks=(_chunk(0, "mem", 0, 8192),),
        timings={"elapsed_s": 0.5},
    )


@pytest.mark.parametrize("byteorder", ["big", "little"])
@pytest.mark.parametrize("make", [collected, converted])
def test_round_trip(byteorder: str, make: Any) -> None:
    m = make(byteorder)
    again = mf.parse_manifest(m.to_bytes(), "m.json")
    assert again == m
    assert again.to_bytes() == m.to_bytes()


def test_release_record_helpers() -> None:
    rel = collected("big").release
    assert rel is not None
    assert rel.pending() == [(0, PS)]
    assert rel.released_bytes() == PS
    after = rel.after_last_release("gone")
    assert after.pending() == [] and after.events[-1] == {"t": None, "note": "gone"}


def test_save_and_read(tmp_path: Path) -> None:
    m = collected("little")
    mf.save_manifest(tmp_path, m)
    assert os.stat(tmp_path / MANIFEST).st_mode & 0o777 == 0o600
    assert mf.read_manifest(tmp_path) == m


def _mutated(edit: Any) -> bytes:
    data = collected("big").to_json()
    edit(data)
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda d: d["source"].pop("page_size"), "source.page_size"),
        (lambda d: d["source"].update(page_size=3 * 4096), "source.page_size"),
        (lambda d: d["source"].update(byteorder="middle"), "source.byteorder"),
        (lambda d: d["source"].update(valid="yes"), "source.valid"),
        (lambda d: d["dump"].update(file="../x"), "dump.file"),
        (lambda d: d["dump"]["segments"].append([1, 2]), "dump.segments[2]"),
        (lambda d: d["chunks"][2].update(xxh64="nothex"), "chunks[2].xxh64"),
        (lambda d: d["chunks"][3].update(src="0"), "chunks[3].src"),
        (lambda d: d["chunks"].pop(3), "chunks"),
        (lambda d: d["chunks"][1].update(index=0), "chunks[1].index"),
        (lambda d: d["metadata"].pop("hpte"), "metadata.hpte"),
        (lambda d: d["release"]["writes"][0].update(done=1), "release.writes[0].done"),
        (lambda d: d["release"]["writes"][0].pop("new_pages"), "release.writes[0].new_pages"),
        (lambda d: d["release"].update(order=[0, 5]), "release.order[1]"),
        (lambda d: d["release"].update(events=[3]), "release.events[0]"),
        (lambda d: d.update(warnings=[1]), "warnings[0]"),
    ],
)
def test_bad_values_name_their_key(edit: Any, key: str) -> None:
    with pytest.raises(FormatError) as exc:
        mf.parse_manifest(_mutated(edit), "/d/manifest.json")
    assert f"key {key}:" in str(exc.value)
    assert "/d/manifest.json" in str(exc.value)


@pytest.mark.parametrize(
    ("raw", "what"),
    [
        (b"{", "not JSON"),
        (b"[]", "a JSON list"),
        (b'{"version": 2}', "key version"),
        (b'{"version": true}', "key version"),
    ],
)
def test_not_a_manifest(raw: bytes, what: str) -> None:
    with pytest.raises(FormatError, match=what):
        mf.parse_manifest(raw, "m.json")


@pytest.mark.parametrize("byteorder", ["big", "little"])
def test_what_convert_writes_reads_back_unchanged(tmp_path: Path, byteorder: ByteOrder) -> None:
    ps = 4096
    info = f"OSRELEASE=6.1.0\nPAGESIZE={ps}\nCRASHTIME=5\n".encode()
    notes = [
        *prstatus_notes([(0, PtRegs(gpr=(0,) * 32))], byteorder),
        Note(VMCOREINFO_NOTE_NAME, VMCOREINFO_NOTE_TYPE, info),
    ]
    memory = 64 * ps
    layout = build_core_header(notes, [LoadSegment(0, memory)], byteorder, page_size=ps)
    core = tmp_path / "core"
    with open(core, "wb") as f:
        f.write(layout.header)
        f.seek(layout.data_start)
        f.write(os.urandom(memory // 2) + bytes(memory // 2))
    out = tmp_path / "out"
    res = convert(ConvertOptions(core, out, chunk_size=16 * ps, progress=False))
    raw = (out / MANIFEST).read_bytes()
    m = mf.read_manifest(out)
    assert m == res.manifest
    assert m.to_bytes() == raw
    assert m.source.byteorder == byteorder and m.source.vmcoreinfo["CRASHTIME"] == "5"
    assert m.dump.zero_pages == 32 and len(m.chunks) == 4

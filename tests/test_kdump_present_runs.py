"""KdumpFile.present_runs: the second bitmap's runs, read in bulk, equal the bit-by-bit answer."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from drgn_hvdump.codecs import decompress_page, get_codec
from drgn_hvdump.collect.output import KdumpOutput, create_file
from drgn_hvdump.formats.kdump import KdumpFile, plan_kdump


def _runs(ranges: list[tuple[int, int]], max_mapnr: int) -> list[tuple[int, int]]:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "dump.kdump"
        layout = plan_kdump(
            byteorder="little",
            page_size=4096,
            max_mapnr=max_mapnr,
            ranges=ranges,
            notes=b"",
            vmcoreinfo=None,
            nr_cpus=1,
            utsname=["Linux", "x", "1", "#1", "ppc64le", ""],
            timestamp=0,
            codec_flag=get_codec("zlib").flag,
        )
        KdumpOutput(create_file(str(path)), layout, get_codec("zlib"), False).close()
        with KdumpFile.open(path, decompress_page) as kd:
            got = list(kd.present_runs(piece=7))  # pieces that split bytes' runs
            bits = [kd.has_page(p) for p in range(max_mapnr)]
    want: list[tuple[int, int]] = []
    for pfn, present in enumerate(bits):
        if present and want and want[-1][1] == pfn:
            want[-1] = (want[-1][0], pfn + 1)
        elif present:
            want.append((pfn, pfn + 1))
    assert got == want
    return got


def _ranges(draw_list: list[int], max_mapnr: int) -> list[tuple[int, int]]:
    cuts = sorted({min(c, max_mapnr) for c in draw_list})
    return [(a, b) for a, b in zip(cuts[::2], cuts[1::2], strict=False) if a < b]


@settings(max_examples=200)
@given(st.integers(1, 700), st.lists(st.integers(0, 700), max_size=12))
def test_runs_equal_the_bitmap(max_mapnr: int, cuts: list[int]) -> None:
    ranges = _ranges(cuts, max_mapnr)
    assert _runs(ranges, max_mapnr) == ranges


def test_full_and_empty() -> None:
    assert _runs([(0, 640)], 640) == [(0, 640)]
    assert _runs([], 640) == []
    assert _runs([(3, 5), (8, 9), (16, 600)], 640) == [(3, 5), (8, 9), (16, 600)]

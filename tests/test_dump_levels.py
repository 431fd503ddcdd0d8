"""Dump levels (``-d``): makedumpfile's page decisions, the memory-model walk, and collections.

The decision is checked page type by page type from packed ``struct page``
entries (both byte orders, 6.12's VMCOREINFO and a 2.6.32 one), the walk
against hvsim's memory model read from a plain dictionary, and collections
against hvsim's own record of each page's type: every page it says the level
leaves out is absent, every other page is exact, and nothing the dump needs
was released before it was durable.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from drgn_hvdump.collect.collector import CollectOptions, collect
from drgn_hvdump.collect.levels import (
    decide_exclusions,
    exclusions_from_record,
    exclusions_record,
)
from drgn_hvdump.errors import HvdumpError
from drgn_hvdump.formats.elfcore import ElfCore
from drgn_hvdump.formats.kdump import plan_kdump
from drgn_hvdump.intervals import IntervalSet
from drgn_hvdump.model.mem_sections import MemoryModel, MemoryModelError, exclusions
from drgn_hvdump.model.page_types import (
    DumpLevelError,
    PageFields,
    decide_pages,
    parse_dump_level,
    possible_level,
    struct_page_from_vmcoreinfo,
)
from hvsim import Lpar
from hvsim.memmodel import (
    BUDDY,
    OFFLINE,
    PAGE_OFFSET,
    SLAB,
    MemModel,
    expected_exclusions,
    memmap_into,
    page_type_of,
    vmcoreinfo_entries,
)
from hvsim.verify import verify_dump
from tests.collect_support import (
    FUSE_MISSING,
    hvdump,
    kdump_pages,
    make_lpar,
    manifest,
    mounted,
    start_collect,
)

needs_fuse = pytest.mark.skipif(bool(FUSE_MISSING), reason=FUSE_MISSING)

_INFO_612 = dict(vmcoreinfo_entries(MemModel(4 << 30, 65536, True, 1, 4 << 30)))
_INFO_612["OSRELEASE"] = "6.12.0"
# What 2.6.32 exported about struct page: no _mapcount, private or buddy value.
_INFO_2632 = {
    "OSRELEASE": "2.6.32-hvsim",
    "SYMBOL(mem_section)": "c000000000a00000",
    "LENGTH(mem_section)": "2048",
    "SIZE(mem_section)": "16",
    "OFFSET(mem_section.section_mem_map)": "0",
    "NUMBER(SECTION_SIZE_BITS)": "24",
    "NUMBER(MAX_PHYSMEM_BITS)": "44",
    "SIZE(page)": "56",
    "OFFSET(page.flags)": "0",
    "OFFSET(page._count)": "8",
    "OFFSET(page.mapping)": "24",
    "OFFSET(page.lru)": "40",
    "NUMBER(PG_lru)": "5",
    "NUMBER(PG_private)": "11",
    "NUMBER(PG_swapcache)": "15",
}


_KDUMPFILE_EXCLUDED = r"""
import sys
import kdumpfile
k = kdumpfile.kdumpfile(file=sys.argv[1])
k.attr["addrxlat.ostype"] = "linux"
try:
    k.read(kdumpfile.KDUMP_KPHYSADDR, int(sys.argv[2]), 8)
    print("read")
except Exception as exc:
    print(type(exc).__name__)
print(len(k.read(kdumpfile.KDUMP_KPHYSADDR, int(sys.argv[3]), 65536)))
"""

# ------------------------------------------------------------------ levels


@pytest.mark.parametrize(("text", "level"), [("31", 31), ("0", 0), ("0x1f", 31), ("17", 17)])
def test_dump_level_parses(text: str, level: int) -> None:
    assert parse_dump_level(text) == level


@pytest.mark.parametrize("text", ["32", "-1", "all", ""])
def test_bad_dump_level_says_what_the_bits_are(text: str) -> None:
    with pytest.raises(DumpLevelError, match=r"from 0 to 31.*16 .free pages"):
        parse_dump_level(text)


def test_possible_level_names_what_vmcoreinfo_lacks() -> None:
    assert possible_level(_INFO_612, 31) == (31, [])
    level, why = possible_level(_INFO_2632, 31)
    assert level == 15 and "PAGE_BUDDY_MAPCOUNT_VALUE" in why[0]
    bare = {"OSRELEASE": "6.1.0", "PAGESIZE": "65536"}
    level, why = possible_level(bare, 31)
    assert level == 1 and "SYMBOL(mem_section)" in why
    assert possible_level(bare, 1) == (1, [])


def test_lowered_level_is_a_warning_and_level_1_reads_nothing() -> None:
    warnings: list[str] = []

    def read(paddr: int, size: int) -> bytes:
        raise AssertionError("no struct page may be read")

    got = decide_exclusions(31, {"OSRELEASE": "x"}, "big", 65536, [(0, 16)], read, None, warnings)
    assert got is None
    assert warnings == [
        "dump level 31 lowered to 1 (zero): the crashed kernel's VMCOREINFO lacks "
        "SYMBOL(mem_section), OFFSET(mem_section.section_mem_map), SIZE(mem_section), "
        "NUMBER(SECTION_SIZE_BITS), NUMBER(MAX_PHYSMEM_BITS), SIZE(page), "
        "OFFSET(page.flags), OFFSET(page.mapping), OFFSET(page._refcount)"
    ]


# ---------------------------------------------------------------- decisions

_LRU, _PRIVATE, _SWAPBACKED, _HEAD, _HWPOISON = 1 << 5, 1 << 14, 1 << 17, 1 << 6, 1 << 20


@pytest.mark.parametrize("order", ["big", "little"])
@pytest.mark.parametrize(
    ("fields", "level", "want"),
    [
        (PageFields(flags=_LRU, mapping=PAGE_OFFSET + 0x1000), 2, ("cache", 1)),
        (PageFields(flags=_LRU, mapping=PAGE_OFFSET + 0x1000), 8, (None, 1)),
        (PageFields(flags=_LRU | _PRIVATE, mapping=PAGE_OFFSET), 2, (None, 1)),
        (PageFields(flags=_LRU | _PRIVATE, mapping=PAGE_OFFSET), 4, ("cache_private", 1)),
        (PageFields(flags=_LRU | _SWAPBACKED, mapping=PAGE_OFFSET | 1, mapcount=0), 8, ("user", 1)),
        # An anonymous LRU page is not cache, whatever the cache bits.
        (PageFields(flags=_LRU | _SWAPBACKED, mapping=PAGE_OFFSET | 1), 6, (None, 1)),
        # A slab page's overlaid mapping may be odd: still not user data.
        (PageFields(mapping=PAGE_OFFSET | 1, mapcount=SLAB), 31, (None, 1)),
        (PageFields(mapcount=BUDDY, private=3), 16, ("free", 8)),
        (PageFields(mapcount=BUDDY, private=3), 15, (None, 1)),
        # An order past the free lists is not believed (makedumpfile warns and keeps it).
        (PageFields(mapcount=BUDDY, private=9), 16, (None, 1)),
        # hwpoison and offline pages go at any level that walks struct pages.
        (PageFields(flags=_HWPOISON), 2, ("hwpoison", 1)),
        (PageFields(mapcount=OFFLINE), 2, ("offline", 1)),
        (PageFields(flags=1 << 13, refcount=1), 31, (None, 1)),
        # A compound tail is decided with its head.
        (PageFields(flags=_LRU, mapping=PAGE_OFFSET, compound_head=PAGE_OFFSET | 1), 31, (None, 1)),
    ],
)
def test_makedumpfile_decision(
    order: str, fields: PageFields, level: int, want: tuple[str | None, int]
) -> None:
    sp = struct_page_from_vmcoreinfo(_INFO_612, order)  # type: ignore[arg-type]
    assert sp is not None
    raw = sp.pack(fields) + sp.pack(PageFields())
    got = list(decide_pages(sp, raw, 0, 1, level))
    assert got == ([] if want[0] is None else [(0, want[1], want[0])])


def test_compound_user_page_is_left_out_whole() -> None:
    sp = struct_page_from_vmcoreinfo(_INFO_612, "little")
    assert sp is not None
    head = sp.pack(PageFields(flags=_LRU | _SWAPBACKED | _HEAD, mapping=PAGE_OFFSET | 1))
    first_tail = bytearray(sp.pack(PageFields(compound_head=PAGE_OFFSET | 1)))
    first_tail[0] = 2  # folio order in the first tail's flags
    tail = sp.pack(PageFields(compound_head=PAGE_OFFSET | 1))
    raw = head + bytes(first_tail) + tail * 2 + sp.pack(PageFields(flags=1 << 13))
    assert list(decide_pages(sp, raw, 16, 5, 8)) == [(16, 20, "user")]
    # A head at an address its order does not align is treated as order 0.
    assert list(decide_pages(sp, raw, 17, 5, 8)) == [(17, 18, "user")]


def test_2_6_32_defaults_are_makedumpfiles() -> None:
    sp = struct_page_from_vmcoreinfo(_INFO_2632, "big")
    assert sp is not None
    assert (sp.refcount, sp.mapcount, sp.pg_slab, sp.pg_head_mask) == (8, None, 7, 1 << 14)
    assert sp.pg_swapbacked is None and not sp.knows_buddies
    assert sp.compound_order == (48, 8)  # page[1].lru.prev
    cache = sp.pack(PageFields(flags=1 << 5, mapping=PAGE_OFFSET))
    assert list(decide_pages(sp, cache, 0, 1, 31)) == [(0, 1, "cache")]
    # Swap cache without PG_swapbacked counts as cache on a kernel without that bit.
    swap = sp.pack(PageFields(flags=1 << 15, mapping=PAGE_OFFSET))
    assert list(decide_pages(sp, swap, 0, 1, 2)) == [(0, 1, "cache")]


# -------------------------------------------------------------------- walk


def _reader(model: MemModel) -> Any:
    meta = model.metadata()

    def read(paddr: int, size: int) -> bytes:
        if model.meta <= paddr and paddr + size <= model.base:
            return meta[paddr - model.meta : paddr - model.meta + size]
        assert model.base <= paddr and paddr + size <= model.base + model.memmap_size
        out = bytearray(size)
        memmap_into(model, memoryview(out), paddr - model.base)
        return bytes(out)

    return read


@pytest.mark.parametrize(
    ("big", "ps", "memory"),
    [(True, 65536, 3 << 30), (False, 4096, 1 << 30), (False, 65536, 8 << 30)],
)
def test_walk_finds_exactly_what_the_model_says(big: bool, ps: int, memory: int) -> None:
    model = MemModel(memory, ps, big, 77, memory - (256 << 20))
    assert model.fits
    info = dict(vmcoreinfo_entries(model))
    mm = MemoryModel(info, "big" if big else "little", _reader(model), ps)
    # Skip a hole, as a dump without part of RAM would.
    ranges = [(0, (1 << 30) // ps), ((1 << 30) // ps + 5, memory // ps)]
    got = exclusions(mm, 31, ranges)
    want = IntervalSet()
    counts: dict[str, int] = {}
    byte_ranges = IntervalSet((a * ps, b * ps) for a, b in ranges)
    for a, b, kind in expected_exclusions(model, 31, byte_ranges):
        want.add(a // ps, b // ps)
        counts[kind] = counts.get(kind, 0) + (b - a) // ps
    assert got.pfns == want
    assert {k: v for k, v in got.counts.items() if v} == counts
    a, _ = next(iter(want))
    assert page_type_of(model, a) in counts and page_type_of(model, 0) == "kernel"
    # Level 2 alone: only page cache without private data.
    assert set(k for k, v in exclusions(mm, 2, ranges).counts.items() if v) == {"cache"}


def test_walk_reads_the_old_mem_section_array_too() -> None:
    """Before 4.15 ``mem_section`` was the roots array itself, not a pointer to it."""
    model = MemModel(2 << 30, 65536, True, 3, 2 << 30)
    info = dict(vmcoreinfo_entries(model))
    roots = model.meta + model._roots_offset
    info["SYMBOL(mem_section)"] = f"{PAGE_OFFSET + roots:x}"
    mm = MemoryModel(info, "big", _reader(model), 65536)
    assert len(list(mm.sections())) == model.nr_sections


def test_walk_errors_are_one_line() -> None:
    model = MemModel(2 << 30, 65536, True, 3, 2 << 30)
    info = dict(vmcoreinfo_entries(model))
    del info["SYMBOL(vmemmap_list)"]
    info["NUMBER(RADIX_MMU)"] = "0"
    mm = MemoryModel(info, "big", _reader(model), 65536)
    with pytest.raises(MemoryModelError, match="hash-MMU kernel's VMCOREINFO has no vmemmap_list"):
        exclusions(mm, 31, [(0, 4)])
    info = dict(vmcoreinfo_entries(model))
    info["SYMBOL(mem_section)"] = "1234"
    mm = MemoryModel(info, "big", _reader(model), 65536)
    with pytest.raises(MemoryModelError, match="not in the kernel's linear map"):
        list(mm.sections())


def test_journal_record_round_trip_and_damage() -> None:
    model = MemModel(2 << 30, 65536, False, 9, 2 << 30)
    mm = MemoryModel(dict(vmcoreinfo_entries(model)), "little", _reader(model), 65536)
    excl = exclusions(mm, 31, [(0, (2 << 30) // 65536)])
    rec = json.loads(json.dumps(exclusions_record(excl)))
    back = exclusions_from_record(rec, "J")
    assert back.pfns == excl.pfns and back.counts == excl.counts and back.level == 31
    rec["pfns"] = rec["pfns"][:-8]
    with pytest.raises(HvdumpError, match=r"^J: the journaled dump-level decision is damaged"):
        exclusions_from_record(rec, "J")


@pytest.mark.parametrize("order", ["big", "little"])
def test_kdump_bitmaps_hold_ram_and_kept_pages(order: str) -> None:
    lay = plan_kdump(
        byteorder=order,  # type: ignore[arg-type]
        page_size=4096,
        max_mapnr=64,
        ranges=[(0, 40)],
        kept=[(0, 10), (20, 40)],
        notes=b"",
        vmcoreinfo=None,
        nr_cpus=1,
        utsname=["Linux", "h", "6.12", "#1", "ppc64le", ""],
        timestamp=0,
        codec_flag=0,
        dump_level=31,
    )
    first, second = [data for _, data in lay.bitmap_pieces()]
    assert first[:5] == b"\xff\xff\xff\xff\xff" and second[:5] == b"\xff\x03\xf0\xff\xff"
    assert lay.npages == 30 and lay.desc_index(20) == 10 and lay.sub_header.dump_level == 31


# ------------------------------------------------------------- collections


def _truth(lpar: Lpar, level: int) -> IntervalSet:
    image = lpar.crashed_kernel()
    assert image is not None
    model = image.memory_model()
    assert model is not None
    mem = IntervalSet([(0, lpar.config.memory)])
    return IntervalSet((a, b) for a, b, _ in expected_exclusions(model, level, mem))


def _released_unsaved(lpar: Lpar, out: Path, excluded: IntervalSet) -> list[str]:
    """Released pages the dump needed (not left out by the level) but does not hold."""
    m = manifest(out)
    held = IntervalSet((a, a + n) for a, n in m["dump"]["segments"])
    scratch = lpar.last_dump()
    assert scratch is not None
    s0, s1 = scratch.scratch
    ps = m["source"]["page_size"]
    # The rest of the page a lost range ends in is not whole in the vmcore:
    # hvdump warns that it is not saved (a known limit, not the level's).
    lost = [(a, -(-b // ps) * ps) for a, b, _ in lpar.lost_ranges()]
    accounted = [*held, *excluded, *lost, (s0 // ps * ps, -(-s1 // ps) * ps)]
    rest = IntervalSet(lpar.released_ranges()).without(accounted)
    return [f"{p:#x}-{q:#x}" for p, q in rest]


@needs_fuse
@pytest.mark.fuse
@pytest.mark.parametrize(
    ("kw", "fmt"),
    [
        ({"endian": "big", "page_size": 65536}, "kdump"),
        ({"endian": "little", "page_size": 4096, "dump": "fadump", "memory": "2G"}, "elf"),
    ],
)
def test_collect_level_31_leaves_out_exactly_and_releases_it_first(
    tmp_path: Path, kw: dict[str, Any], fmt: str
) -> None:
    lpar = make_lpar(tmp_path / "lpar", **kw)
    events: list[str] = []
    out = tmp_path / "out"
    with mounted(lpar, tmp_path / "root") as root:
        collect(
            CollectOptions(
                root=root,
                output=out,
                format=fmt,
                dump_level=31,
                # Runs of a chunk or more go back before any chunk is read.
                chunk_size=1 << 20,
                hook=lambda e, n: events.append(e),
            )
        )
    report = verify_dump(lpar, out / ("dump.kdump" if fmt == "kdump" else "dump.elf"))
    assert report.ok, report.text()
    assert report.counts["level_excluded"] > 0 and report.counts["not_excluded"] == 0
    m = manifest(out)
    assert m["dump"]["dump_level"] == 31
    assert sum(m["dump"]["excluded"].values()) == report.counts["level_excluded"]
    if kw.get("dump") != "fadump":
        # The long excluded runs go back before the first chunk is read.
        assert "release" in events[: events.index("chunk")]
    truth = _truth(lpar, 31)
    assert _released_unsaved(lpar, out, truth) == []
    if fmt == "kdump":
        # drgn with the plugin: kept memory reads, a left-out page is excluded, and
        # the plugin's region map says why it is not in the dump.
        from drgn_hvdump.plugin.helpers import hvdump_regions
        from hvsim.kernel import vmlinux_path
        from tests.drgn_support import open_core

        prog = open_core(out / "dump.kdump", vmlinux_path(lpar.config.endian))
        a, _ = next(iter(truth.intersect(512 << 20, lpar.config.memory)))
        with pytest.raises(Exception, match=r"[Ee]xcluded"):
            prog.read(a, 8, True)
        gaps = [r for r in hvdump_regions(prog) if r.state == "not-in-dump"]
        assert any("left out by dump level 31" in r.detail for r in gaps)
        # libkdumpfile (Debian's python3-libkdumpfile) says the same, and reads a kept page.
        kept_page = next(iter(IntervalSet(kdump_pages(out / "dump.kdump")[0])))[0] * 65536
        res = subprocess.run(
            ["/usr/bin/python3", "-c", _KDUMPFILE_EXCLUDED, str(out / "dump.kdump"), str(a),
             str(kept_page)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == ["NoDataException", "65536"]
    assert hvdump("verify", str(out)).returncode == 0
    assert lpar.state == "running"


@needs_fuse
@pytest.mark.fuse
def test_killed_collection_resumes_with_the_journaled_decision(tmp_path: Path) -> None:
    lpar = make_lpar(tmp_path / "lpar", memory="2G")
    out = tmp_path / "out"
    with mounted(lpar, tmp_path / "root") as root:
        proc = start_collect(root, out, "-d", "31", chunk_size="4M")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            journal = out / "journal.jsonl"
            if journal.exists() and journal.read_text().count('"t":"chunk"') >= 20:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert '"t":"done"' not in (out / "journal.jsonl").read_text(), "killed too late"
        assert lpar.released_ranges(), "the excluded runs were released before the kill"
        again = hvdump(
            "collect", "--root", str(root), "-o", str(out), "-d", "31", "--chunk-size", "4M",
            "--no-progress",
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
        other = hvdump("collect", "--root", str(root), "-o", str(tmp_path / "o2"), "-d", "1")
        assert other.returncode != 0
    report = verify_dump(lpar, out / "dump.kdump")
    assert report.ok, report.text()
    assert _released_unsaved(lpar, out, _truth(lpar, 31)) == []


@needs_fuse
@pytest.mark.fuse
def test_other_level_on_a_rerun_is_refused(tmp_path: Path) -> None:
    lpar = make_lpar(tmp_path / "lpar")
    out = tmp_path / "out"
    with mounted(lpar, tmp_path / "root") as root:
        first = hvdump(
            "collect", "--root", str(root), "-o", str(out), "-d", "31", "--release", "never"
        )
        assert first.returncode == 0, first.stderr
        again = hvdump("collect", "--root", str(root), "-o", str(out), "-d", "1")
    assert again.returncode == 1
    assert "collected with other options" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_cli_refuses_a_bad_level_in_one_line(tmp_path: Path) -> None:
    res = hvdump("collect", "--root", str(tmp_path), "-o", str(tmp_path / "o"), "-d", "40")
    assert res.returncode == 2 and "from 0 to 31" in res.stderr
    assert "Traceback" not in res.stderr
    help_text = hvdump("collect", "--help").stdout
    assert "--dump-level" in help_text and "makedumpfile -d 31" in help_text


# ----------------------------------------------------- against makedumpfile


@needs_fuse
@pytest.mark.real
@pytest.mark.parametrize("page_size", [65536, 4096])
def test_debian_makedumpfile_leaves_out_the_same_pages(tmp_path: Path, page_size: int) -> None:
    """Debian 13's makedumpfile (1.7.6, ppc64el, under qemu-user) on the same vmcore.

    At -d 15 (cache and user data) both leave out the same pages. At -d 31
    1.7.6 keeps every free page of a 6.12 kernel: it still reads page_type
    values as flag bits, so buddy pages look like slab pages (fixed after
    1.7.6 by makedumpfile commit 72c3414, which hvdump follows); the
    difference is exactly hvsim's free pages.
    """
    from tests.makedumpfile_ppc64 import run_makedumpfile

    lpar = make_lpar(
        tmp_path / "lpar", endian="little", page_size=page_size, dump="fadump", memory="2G"
    )
    ps = page_size
    with mounted(lpar, tmp_path / "root") as root:
        for level in (15, 31):
            out = tmp_path / f"hv{level}"
            collect(CollectOptions(root=root, output=out, dump_level=level, release="never"))
            ref = tmp_path / f"mdf{level}.kdump"
            res = run_makedumpfile(
                ["-d", str(level), "-l", str(root / "proc" / "vmcore"), str(ref)]
            )
            assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
            m = manifest(out)
            ours = IntervalSet((a // ps, (a + n) // ps) for a, n in m["dump"]["segments"])
            assert m["dump"]["dump_level"] == level
            theirs, their_level = kdump_pages(ref)
            assert their_level == level
            # hvdump leaves out the page the reserved area's end shares (not
            # whole in the vmcore): compare the whole pages of the vmcore's RAM.
            with ElfCore.open(root / "proc" / "vmcore") as core:
                ram = IntervalSet(
                    (-(-ph.p_paddr // ps), (ph.p_paddr + ph.p_filesz) // ps) for ph in core.segments
                )
            theirs_in = IntervalSet(x for a, b in ram for x in theirs.intersect(a, b))
            extra, missing = theirs_in.without(ours), ours.without(theirs_in)
            assert missing.total() == 0, f"pages makedumpfile left out and hvdump kept: {missing}"
            if level == 15:
                assert extra.total() == 0, f"pages hvdump left out and makedumpfile kept: {extra}"
            else:
                model = lpar.crashed_kernel().memory_model()  # type: ignore[union-attr]
                assert model is not None
                in_dump = IntervalSet((a * ps, b * ps) for a, b in ram)
                free = IntervalSet(
                    (a // ps, b // ps) for a, b, _ in expected_exclusions(model, 16, in_dump)
                )
                assert (list(extra.without(free)), list(free.without(extra))) == ([], [])


@pytest.mark.parametrize(("endian", "fmt"), [("big", "kdump"), ("little", "elf")])
def test_convert_level_31_leaves_out_the_same_pages_as_collect(
    tmp_path: Path, endian: str, fmt: str
) -> None:
    """``convert -d 31`` of a raw copy of a fadump /proc/vmcore: the truth's pages left out."""
    from bench.export_root import export_root

    lpar = make_lpar(tmp_path / "lpar", endian=endian, dump="fadump")
    root = export_root(lpar, tmp_path / "root")
    out = tmp_path / "out"
    res = hvdump("convert", str(root / "proc" / "vmcore"), str(out), "-d", "31", "--format", fmt)
    assert res.returncode == 0, res.stderr
    assert "dump level 31: left out" in res.stdout
    report = verify_dump(lpar, out / f"dump.{fmt}")
    assert report.ok, report.text()
    assert report.counts["level_excluded"] == sum(manifest(out)["dump"]["excluded"].values()) > 0
    assert hvdump("verify", str(out)).returncode == 0


def test_convert_refuses_levels_for_other_machines(tmp_path: Path) -> None:
    core = tmp_path / "x.core"
    from drgn_hvdump.formats.elfcore import EM_X86_64, LoadSegment, build_core_header

    layout = build_core_header([], [LoadSegment(0, 1 << 20)], "little", machine=EM_X86_64)
    core.write_bytes(layout.header + bytes(1 << 20))
    res = hvdump("convert", str(core), str(tmp_path / "o"), "-d", "31", "--page-size", "4096")
    assert res.returncode == 1
    assert "struct pages of ppc64 kernels only; use --dump-level 1" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def _random_struct_pages(sp: Any, count: int, seed: int) -> bytes:
    """struct pages mixing every case the decision looks at, and plain noise."""
    import random

    rnd = random.Random(seed)
    flag_bits = [5, 6, 7, 10, 13, 14, 15, 17, 20, 31, 40]
    mapcounts = [-1, 0, 1, BUDDY, SLAB, OFFLINE, -128, -2, 0x7FFFFFFF]
    out = []
    for _ in range(count):
        if rnd.random() < 0.1:
            out.append(bytes(rnd.getrandbits(8) for _ in range(sp.size)))
            continue
        flags = sum(1 << b for b in flag_bits if rnd.random() < 0.2) | rnd.randrange(4)
        out.append(
            sp.pack(
                PageFields(
                    flags=flags,
                    refcount=rnd.randrange(3),
                    mapping=rnd.choice([0, PAGE_OFFSET, PAGE_OFFSET | 1, 1]),
                    mapcount=rnd.choice(mapcounts),
                    private=rnd.choice([0, 1, 3, 8, 12, 70, PAGE_OFFSET]),
                    compound_head=rnd.choice([0, 0, 0, PAGE_OFFSET | 1]),
                )
            )
        )
    return b"".join(out)


@pytest.mark.parametrize("order", ["big", "little"])
@pytest.mark.parametrize("info", [_INFO_612, _INFO_2632], ids=["6.12", "2.6.32"])
def test_c_decision_is_the_python_one(order: str, info: dict[str, str]) -> None:
    from drgn_hvdump import native

    sp = struct_page_from_vmcoreinfo(info, order)  # type: ignore[arg-type]
    assert sp is not None
    raw = _random_struct_pages(sp, 4000, 7 if order == "big" else 8)
    for level in (31, 16, 15, 8, 6, 2, 1):
        for first in (0, 4096, 12345):
            want = list(decide_pages(sp, raw, first, 4000, level))
            assert native.decide_pages(sp, raw, first, 4000, level) == want
    assert native.decide_pages(sp, raw, 0, 0, 31) == []
    with pytest.raises(ValueError, match="need"):
        native.decide_pages(sp, raw[:100], 0, 4, 31)


@pytest.mark.parametrize("ps", [65536, 4096])
def test_radix_page_tables_translate_the_vmemmap(ps: int) -> None:
    """A radix kernel maps its vmemmap only in page tables: 1 GiB, 2 MiB and base-page
    leaves, big-endian entries, directory entries with their size bits."""
    mem: dict[int, int] = {}
    present, leaf = 1 << 63, 1 << 62

    def put(table: int, index: int, value: int) -> None:
        mem[table + 8 * index] = value

    def read(paddr: int, size: int) -> bytes:
        assert size == 8
        return mem.get(paddr, 0).to_bytes(8, "big")

    vmemmap = 0xC00C_0000_0000_0000
    pgd, pud, pmd, pte = 0x10000, 0x20000, 0x30000, 0x40000
    pte_bits = 21 - (ps.bit_length() - 1)
    put(pgd, (vmemmap >> 39) & 0x1FFF, present | pud | 9)
    put(pud, 0, present | pmd | 9)  # the first GiB through PMDs
    put(pud, 1, present | leaf | 0x8000_0000)  # the second: one 1 GiB leaf at 2 GiB
    put(pmd, 0, present | leaf | 0x0120_0000)  # 2 MiB leaf at 18 MiB
    put(pmd, 1, present | pte | pte_bits)  # the next 2 MiB: base pages
    put(pte, 1, present | leaf | 0x0700_0000)
    info = {
        "SYMBOL(swapper_pg_dir)": f"{PAGE_OFFSET + pgd:x}",
        "NUMBER(RADIX_MMU)": "1",
        **{k: v for k, v in _INFO_612.items() if k.startswith(("SIZE(page", "OFFSET(page"))},
    }
    mm = MemoryModel(info, "little", read, ps)
    assert mm.vtop(vmemmap + 0x1234) == 0x0120_1234
    assert mm.vtop(vmemmap + (1 << 30) + 0x5_0000) == 0x8005_0000
    assert mm.vtop(vmemmap + (2 << 20) + ps + 8) == 0x0700_0008
    assert mm._piece(vmemmap + 0x1234)[1] == vmemmap + (2 << 20)
    with pytest.raises(MemoryModelError, match="not mapped in the kernel's page tables"):
        mm.vtop(vmemmap + (2 << 20) + 2 * ps)

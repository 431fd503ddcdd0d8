"""What the collector does when it is not alone: releases it did not make, files
removed or replaced under it, journals and collections of other dumps.

Every test judges from hvsim's own record (the ranges the capture kernel freed,
the crashed kernel's memory as ground truth), not from the collector's files.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from drgn_hvdump.collect.collector import CollectOptions, collect
from drgn_hvdump.errors import HvdumpError
from drgn_hvdump.formats.elfcore import ElfCore
from drgn_hvdump.intervals import IntervalSet
from hvsim import Lpar
from tests.collect_support import (
    FUSE_MISSING,
    compare_with_truth,
    make_lpar,
    mounted,
)

needs_fuse = pytest.mark.skipif(bool(FUSE_MISSING), reason=FUSE_MISSING)
pytestmark = [needs_fuse, pytest.mark.fuse]

# Totals over every scenario of this file, for docs/reliability.md.
TALLY = {"scenarios": 0, "early_releases": 0, "wrong_saved_pages": 0, "false_collected": 0}


def _journal(out: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in (out / "journal.jsonl").read_text().splitlines() if x.strip()]


def _plan(out: Path) -> dict[str, object]:
    return json.loads((out / "plan.json").read_text())  # type: ignore[no-any-return]


def _durable_src(out: Path) -> IntervalSet:
    chunks = _plan(out)["chunks"]
    assert isinstance(chunks, list)
    durable = IntervalSet()
    for rec in _journal(out):
        if rec.get("t") == "chunk":
            _, _, src, _, size = chunks[int(rec["i"])]  # type: ignore[call-overload]
            durable.add(src, src + size)
    return durable


def _our_releases_unsaved(lpar: Lpar, out: Path, outside: IntervalSet) -> list[str]:
    """Pages hvsim freed that neither the test released nor the journal lists as saved
    (one page past a release is freed by the faithful quirk: the plan accounts for it)."""
    durable = _durable_src(out)
    reserved_start = int(json.loads((out / "plan.json").read_text())["writes"][0][0])
    bad = []
    for a, b in lpar.released_ranges():
        for x, y in IntervalSet([(a, b)]).intersect(reserved_start, 1 << 62):
            for lo, hi in _minus(x, y, outside):
                if not durable.contains(lo, hi):
                    bad.append(f"{lo:#x}-{hi:#x}")
    return bad


def _minus(lo: int, hi: int, cut: IntervalSet) -> list[tuple[int, int]]:
    out, pos = [], lo
    for a, b in cut.intersect(lo, hi):
        if a > pos:
            out.append((pos, a))
        pos = max(pos, b)
    if pos < hi:
        out.append((pos, hi))
    return out


def _wrong_saved_chunks(lpar: Lpar, out: Path) -> list[int]:
    """Journaled chunks of an ELF dump whose stored bytes are not the crashed memory."""
    chunks = _plan(out)["chunks"]
    assert isinstance(chunks, list)
    core = ElfCore.open(out / "dump.elf")
    bad = []
    try:
        for rec in _journal(out):
            if rec.get("t") != "chunk" or rec.get("kind") not in ("rmo", "mem"):
                continue
            i, _, _, dst, size = chunks[int(rec["i"])]  # type: ignore[call-overload]
            if core.read_phys(dst, size) != lpar.expected(dst, size):
                bad.append(i)
    finally:
        core.close()
    return bad


def _on_chunk(n: int, action: Callable[[], None]) -> Callable[[str, int], None]:
    seen = [0]

    def hook(event: str, _i: int) -> None:
        if event == "chunk":
            seen[0] += 1
            if seen[0] == n:
                action()

    return hook


def _release_by_hand(root: Path, addr: int, size: int) -> None:
    with open(root / "sys/kernel/release_region", "w") as f:
        f.write(f"{addr:x} {size:x}\n")


@pytest.mark.slow
@pytest.mark.parametrize("quirks", ["faithful", "corrected"])
def test_outside_release_at_random_moments_stops_the_collector(tmp_path: Path, quirks: str) -> None:
    rng = random.Random(14)
    for run in range(6):
        lpar = make_lpar(tmp_path / f"lpar{run}", memory="768M", quirks=quirks, seed=run)
        out = tmp_path / f"out{run}"
        with mounted(lpar, tmp_path / f"root{run}") as root:
            page = lpar.config.page_size
            outside = IntervalSet()
            counters: list[int] = []

            def act(
                root: Path = root,
                lpar: Lpar = lpar,
                counters: list[int] = counters,
                outside: IntervalSet = outside,
                page: int = page,
            ) -> None:
                # pages of the reserved area (above 256 MiB, below the scratch area)
                # that the collector has not released yet
                freed = IntervalSet(lpar.released_ranges())
                while True:
                    addr = rng.randrange(256 << 20, 448 << 20, page)
                    size = page * rng.randrange(1, 64)
                    if not freed.overlaps(addr, addr + size + page):
                        break
                outside.add(addr, addr + size + page)  # the quirk's extra page
                _release_by_hand(root, addr, size)
                counters.append(lpar.status()["counters"]["releases"])

            opts = CollectOptions(
                root=root,
                output=out,
                format="elf",
                chunk_size=16 << 20,
                hook=_on_chunk(rng.randrange(1, 20), act),
            )
            with pytest.raises(HvdumpError, match="released outside this collection"):
                collect(opts)
            TALLY["scenarios"] += 1
            # no release of the collector's after the one by hand
            assert lpar.status()["counters"]["releases"] == counters[0]
            early = _our_releases_unsaved(lpar, out, outside)
            wrong = _wrong_saved_chunks(lpar, out)
            TALLY["early_releases"] += len(early)
            TALLY["wrong_saved_pages"] += len(wrong)
            assert early == [] and wrong == []
            assert any(r.get("t") == "stop" for r in _journal(out))
            # a rerun says the same and changes nothing
            before = lpar.status()["counters"]["releases"]
            with pytest.raises(HvdumpError, match="released outside"):
                collect(CollectOptions(root=root, output=out, format="elf", chunk_size=16 << 20))
            assert lpar.status()["counters"]["releases"] == before
            # and so does a new collection elsewhere: released memory is not the dump
            with pytest.raises(HvdumpError, match="memory was released since it started"):
                collect(CollectOptions(root=root, output=tmp_path / f"other{run}"))
            assert lpar.status()["counters"]["releases"] == before


def _remove_dump(out: Path) -> None:
    os.unlink(out / "dump.kdump")


def _replace_dump(out: Path) -> None:
    shutil.copyfile(out / "dump.kdump", out / "copy")
    os.replace(out / "copy", out / "dump.kdump")


def _remove_dir(out: Path) -> None:
    shutil.rmtree(out)


@pytest.mark.slow
@pytest.mark.parametrize(
    "change,words",
    [
        (_remove_dump, "was removed"),
        (_replace_dump, "was replaced"),
        (_remove_dir, "output directory"),
    ],
)
def test_files_removed_or_replaced_stop_the_collector(
    tmp_path: Path, change: Callable[[Path], None], words: str
) -> None:
    rng = random.Random(words)
    for run in range(4):
        lpar = make_lpar(tmp_path / f"lpar{run}", memory="768M", quirks="faithful", seed=run)
        out = tmp_path / f"out{run}"
        with mounted(lpar, tmp_path / f"root{run}") as root:
            counters: list[int] = []

            def act(out: Path = out, lpar: Lpar = lpar, counters: list[int] = counters) -> None:
                change(out)
                counters.append(lpar.status()["counters"]["releases"])

            opts = CollectOptions(
                root=root,
                output=out,
                chunk_size=16 << 20,
                hook=_on_chunk(rng.randrange(1, 30), act),
            )
            with pytest.raises(HvdumpError, match=words):
                collect(opts)
            TALLY["scenarios"] += 1
            assert lpar.status()["counters"]["releases"] == counters[0], "released after the change"
            released = counters[0] > 0
            # The rerun tells the truth: never "collected" for data that is not there.
            rerun = CollectOptions(root=root, output=out, chunk_size=16 << 20)
            if change is _remove_dir:
                if released:
                    with pytest.raises(HvdumpError, match="journal is gone"):
                        collect(rerun)
                    continue
                res = collect(rerun)  # nothing was released: a new collection is whole
            elif released:
                with pytest.raises(HvdumpError, match="is lost"):
                    collect(rerun)
                continue
            else:
                with pytest.raises(HvdumpError, match="nothing is lost"):
                    collect(rerun)
                shutil.rmtree(out)
                res = collect(rerun)
            assert not res.already_done
            problems = compare_with_truth(lpar, out)
            TALLY["false_collected"] += bool(problems)
            assert problems == []
            assert lpar.protected


def test_journal_of_another_dump_is_refused(tmp_path: Path) -> None:
    a = make_lpar(tmp_path / "a", memory="768M", seed=1)
    time.sleep(1.1)  # CRASHTIME counts seconds: another crash of the same kernel
    b = make_lpar(tmp_path / "b", memory="768M", seed=2)  # same shape, same header
    out = tmp_path / "out"
    with mounted(a, tmp_path / "ra") as ra:
        collect(CollectOptions(root=ra, output=out, release="never", chunk_size=64 << 20))
    with mounted(b, tmp_path / "rb") as rb:
        with pytest.raises(HvdumpError, match="finished collection of another dump"):
            collect(CollectOptions(root=rb, output=out, release="never", chunk_size=64 << 20))
        # unfinished: cut the "done" line, so it would be resumed
        lines = (out / "journal.jsonl").read_text().splitlines()
        (out / "journal.jsonl").write_text("\n".join(lines[:-1]) + "\n")
        with pytest.raises(HvdumpError, match="journal of another dump"):
            collect(CollectOptions(root=rb, output=out, release="never", chunk_size=64 << 20))
    TALLY["scenarios"] += 2
    assert b.released_ranges() == []


def test_finished_collection_of_another_dump_is_not_already_collected(tmp_path: Path) -> None:
    lpar = make_lpar(tmp_path / "lpar", memory="768M")
    out = tmp_path / "out"
    with mounted(lpar, tmp_path / "root") as root:
        collect(CollectOptions(root=root, output=out, chunk_size=64 << 20))
        assert lpar.protected
        lpar.crash()  # the next crash of the same LPAR: same header, another dump
        with pytest.raises(HvdumpError, match="finished collection of another dump"):
            collect(CollectOptions(root=root, output=out, chunk_size=64 << 20))
        TALLY["scenarios"] += 1
        assert lpar.released_ranges() == []
        res = collect(CollectOptions(root=root, output=tmp_path / "next", chunk_size=64 << 20))
        assert not res.already_done and compare_with_truth(lpar, tmp_path / "next") == []


def test_planted_journal_is_refused(tmp_path: Path) -> None:
    lpar = make_lpar(tmp_path / "lpar", memory="768M")
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    planted = [
        {"t": "start", "identity": "0" * 32, "fingerprint": {}, "utsname": []},
        *(
            {"t": "chunk", "i": i, "kind": "mem", "xxh64": 0, "off": 0, "len": 0, "zero": 0}
            for i in range(64)
        ),
    ]
    (out / "journal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in planted))
    with mounted(lpar, tmp_path / "root") as root:
        with pytest.raises(HvdumpError, match="journal of another dump"):
            collect(CollectOptions(root=root, output=out))
        # a journal without any identity (another tool's, an older hvdump's)
        (out / "journal.jsonl").write_text('{"t": "start", "fingerprint": {}}\n')
        with pytest.raises(HvdumpError, match="names no dump identity"):
            collect(CollectOptions(root=root, output=out))
        (out / "journal.jsonl").write_text("not json\n{}\n")
        with pytest.raises(HvdumpError, match="not a JSON object"):
            collect(CollectOptions(root=root, output=out))
        # files with no journal that wrote them
        (out / "journal.jsonl").unlink()
        (out / "dump.kdump").write_bytes(b"x")
        with pytest.raises(HvdumpError, match="has no journal"):
            collect(CollectOptions(root=root, output=out))
    TALLY["scenarios"] += 4
    assert lpar.released_ranges() == []


def test_stale_registry_entry_of_this_dump_after_a_partial_run(tmp_path: Path) -> None:
    """A collection killed after some releases, then a new one into another directory:
    the memory it released is not the dump any more, so the new one is refused."""
    lpar = make_lpar(tmp_path / "lpar", memory="768M", quirks="faithful")
    out = tmp_path / "out"
    with mounted(lpar, tmp_path / "root") as root:

        class Killed(Exception):
            pass

        def kill() -> None:
            raise Killed

        def hook(event: str, _n: int) -> None:
            if event == "release":
                kill()

        with pytest.raises(Killed):
            collect(CollectOptions(root=root, output=out, chunk_size=16 << 20, hook=hook))
        with pytest.raises(HvdumpError, match=f"resume that collection .*{out}"):
            collect(CollectOptions(root=root, output=tmp_path / "elsewhere"))
        res = collect(CollectOptions(root=root, output=out, chunk_size=16 << 20))
        assert res.resumed and compare_with_truth(lpar, out) == [] and lpar.protected
    TALLY["scenarios"] += 1


def test_release_what_is_saved_goes_through_the_collector(tmp_path: Path) -> None:
    """A collection made with --release never gives its memory back when run again
    without it (the API the Ansible release module calls): locked, confirmed, the
    last release after a full verify; an outside release first stops it."""
    from drgn_hvdump import api

    lpar = make_lpar(tmp_path / "lpar", memory="768M", quirks="faithful")
    out = tmp_path / "out"
    with mounted(lpar, tmp_path / "root") as root:
        collect(
            CollectOptions(
                root=root, output=out, release="never", compress="zlib", chunk_size=32 << 20
            )
        )
        assert lpar.released_ranges() == []
        pending = api.pending_releases(out)
        assert pending
        # an outside release first: the collector refuses to go on
        _release_by_hand(root, 300 << 20, 1 << 20)
        with pytest.raises(HvdumpError, match="released outside"):
            api.release_saved(root, out)
        TALLY["scenarios"] += 1
    lpar = make_lpar(tmp_path / "lpar2", memory="768M", quirks="faithful")
    out = tmp_path / "out2"
    with mounted(lpar, tmp_path / "root2") as root:
        collect(CollectOptions(root=root, output=out, release="never", compress="zlib"))
        done = api.release_saved(root, out)
        assert sorted(done.released) == sorted(api.pending_releases(out) or pending_all(out))
        assert not done.dump_waiting and lpar.protected and lpar.lost_ranges() == []
        assert compare_with_truth(lpar, out) == []
        assert collect(CollectOptions(root=root, output=out)).already_done
    TALLY["scenarios"] += 1


def pending_all(out: Path) -> list[tuple[int, int]]:
    m = json.loads((out / "manifest.json").read_text())
    return [(w["addr"], w["size"]) for w in m["release"]["writes"]]


def test_tally_is_clean() -> None:
    """Printed for docs/reliability.md (run with -s); zero wherever it is counted."""
    print(f"\ntrust tally: {TALLY}")
    assert TALLY["early_releases"] == 0
    assert TALLY["wrong_saved_pages"] == 0
    assert TALLY["false_collected"] == 0

"""Shared helpers of the collector tests: LPARs, FUSE mounts, ground-truth checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from drgn_hvdump import native
from drgn_hvdump.codecs import decompress_page
from drgn_hvdump.formats.elfcore import (
    NT_PRSTATUS,
    LoadSegment,
    Note,
    build_core_header,
    build_prstatus,
)
from drgn_hvdump.formats.kdump import KdumpFile
from drgn_hvdump.formats.layout import ByteOrder
from drgn_hvdump.formats.vmcoreinfo import VMCOREINFO_NOTE_NAME, VMCOREINFO_NOTE_TYPE
from drgn_hvdump.intervals import IntervalSet
from hvsim import Lpar
from hvsim.kernel import KernelImage
from hvsim.pytest_plugin import FAST_MIX, fuse_missing
from hvsim.pytest_plugin import mounted as mounted  # the tests import it from here

PROJECT = Path(__file__).resolve().parent.parent
FUSE_MISSING = fuse_missing()


def make_lpar(path: Path, **kw: Any) -> Lpar:
    kw.setdefault("memory", "1G")
    kw.setdefault("mix", FAST_MIX)
    lpar = Lpar.create(path, boot=True, **kw)
    lpar.crash()
    assert lpar.state == "capture"
    return lpar


def start_collect(
    root: Path, out: Path | str, *extra: str, chunk_size: str = "4M"
) -> subprocess.Popen[bytes]:
    """``hvdump collect`` in the background (progress off, errors on a pipe)."""
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "drgn_hvdump.cli",
            "collect",
            "--root",
            str(root),
            "-o",
            str(out),
            "--chunk-size",
            chunk_size,
            "--no-progress",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )


def hvdump(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    return subprocess.run(
        [sys.executable, "-m", "drgn_hvdump.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def kdump_pages(path: Path) -> tuple[IntervalSet, int]:
    """The PFN runs a kdump file holds (its 2nd bitmap), and its dump level."""
    with KdumpFile.open(path, decompress_page) as kd:
        return IntervalSet(kd.present_runs()), kd.sub_header.dump_level


def manifest(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return data


def compare_with_truth(lpar: Lpar, out: Path) -> list[str]:
    """Every page the dump holds against the crashed kernel's memory; problems as lines."""
    m = manifest(out)
    ps = m["source"]["page_size"]
    dump = out / m["dump"]["file"]
    problems = []
    if m["dump"]["format"] == "kdump":
        kd = KdumpFile.open(dump, decompress_page)
        try:
            for addr, size in m["dump"]["segments"]:
                step = 4 << 20
                for off in range(0, size, step):
                    n = min(step, size - off)
                    want = lpar.expected(addr + off, n)
                    pfn = (addr + off) // ps
                    got = b"".join(
                        kd.decode(d, pfn + i) for i, d in enumerate(kd.descriptors(pfn, n // ps))
                    )
                    if got != want:
                        problems.append(f"kdump {addr + off:#x}+{n:#x} differs")
        finally:
            kd.close()
    else:
        from hvsim.verify import verify_dump

        report = verify_dump(lpar, dump)
        if not report.ok:
            problems.append(report.text())
    return problems


def released_before_durable(lpar: Lpar, out: Path, page_size: int) -> list[str]:
    """Pages hvsim freed whose dump data the journal does not list as saved."""
    journal = out / "journal.jsonl"
    if not journal.exists():
        return [f"released {r}" for r in lpar.released_ranges()]
    from drgn_hvdump.capture import open_capture  # noqa: F401 (import check only)

    recs = [
        json.loads(line) for line in journal.read_text().splitlines() if line.strip().endswith("}")
    ]
    start = recs[0]["fingerprint"]
    header = bytes.fromhex(start["header"])
    from drgn_hvdump.formats.dump_header import parse_dump_header

    h = parse_dump_header(header)
    needed = IntervalSet()
    for s in h.sections():
        needed.add(s.destination_address, s.destination_address + s.length_copied)
    r0 = start["reserved"][0]
    needed.add(r0, h.cpu.destination_address)
    # A dump level's pages need no saving: those hvsim's own record of the page
    # types says the journaled level leaves out (not the collector's decision).
    level = (recs[0].get("exclusions") or {}).get("level", 1)
    if level > 1:
        from hvsim.memmodel import expected_exclusions

        image = lpar.crashed_kernel()
        model = image.memory_model() if image is not None else None
        if model is not None:
            everything = IntervalSet([(0, lpar.config.memory)])
            for a, b, _ in expected_exclusions(model, level, everything):
                needed.remove(a, b)
    # the chunk table is the plan's: rebuild it from the chunk records
    durable = IntervalSet()
    chunks = {}
    for rec in recs:
        if rec.get("t") == "chunk":
            chunks[rec["i"]] = rec
    plan_chunks = _plan_chunks(lpar, start, recs[0].get("exclusions"))
    for i in chunks:
        c = plan_chunks[i]
        durable.add(c.src, c.src_end)
    problems = []
    for a, b in lpar.released_ranges():
        for x, y in needed.intersect(a, b):
            if not durable.contains(x, y):
                problems.append(f"{x:#x}-{y:#x} released but not journaled as saved")
    return problems


def fadump_released_early(lpar: Lpar, out: Path) -> list[str]:
    """fadump releases once: memory freed before every chunk was journaled is a loss."""
    if not lpar.released_ranges():
        return []
    if not (out / "plan.json").exists():
        return ["released before the collection wrote its plan"]
    chunks = json.loads((out / "plan.json").read_text())["chunks"]
    journal = (out / "journal.jsonl").read_text().splitlines()
    done = {r["i"] for r in map(json.loads, journal) if r.get("t") == "chunk"}
    missing = len(chunks) - len(done)
    return [f"released with {missing} chunks not durable"] if missing else []


def released_unsaved(lpar: Lpar, out: Path) -> list[str]:
    """Releases of memory whose data ``out``'s journal did not hold as durable then,
    for either capture interface (empty when none)."""
    if lpar.config.dump == "fadump":
        return fadump_released_early(lpar, out)
    return released_before_durable(lpar, out, lpar.config.page_size)


def _plan_chunks(lpar: Lpar, start: dict[str, Any], excl: dict[str, Any] | None) -> list[Any]:
    """The plan's chunks, numbered as the collector numbered them (its journaled
    dump-level decision shapes them)."""
    from drgn_hvdump.capture.phyp_plan import make_plan
    from drgn_hvdump.collect.levels import exclusions_from_record
    from drgn_hvdump.formats.dump_header import parse_dump_header
    from drgn_hvdump.formats.release_region import Extent, ReleaseMap

    h = parse_dump_header(bytes.fromhex(start["header"]))
    r = Extent(*start["reserved"])
    rmap = ReleaseMap(
        Extent(h.cpu.destination_address, h.cpu.length_copied),
        Extent(h.hpte.destination_address, h.hpte.length_copied),
        Extent(h.rmo.destination_address, h.rmo.length_copied),
        r,
    )
    ps = start["page_size"]
    excluded = exclusions_from_record(excl, "journal").byte_ranges(ps) if excl else None
    plan = make_plan(
        "", h, rmap,
        page_size=ps, memory=start["memory"], chunk_size=start["chunk_size"], excluded=excluded,
    )  # fmt: skip
    return plan.chunks


def qemu_like_core(
    lpar: Lpar, image: KernelImage, path: Path, elf_order: ByteOrder, *, vmcoreinfo_note: bool
) -> Path:
    """The crashed kernel's memory as QEMU writes a guest (notes in ``elf_order``)."""
    cfg = lpar.config
    notes = [
        Note("CORE", NT_PRSTATUS, build_prstatus(image.pt_regs(cpu), elf_order, pid=cpu + 1))
        for cpu in range(cfg.cpus)
    ]
    if vmcoreinfo_note:
        notes.append(Note(VMCOREINFO_NOTE_NAME, VMCOREINFO_NOTE_TYPE, image.vmcoreinfo()))
    layout = build_core_header(
        notes, [LoadSegment(0, cfg.memory, vaddr=0)], elf_order, page_size=cfg.page_size
    )
    ps = cfg.page_size
    with open(path, "wb") as f:
        f.write(layout.header)
        buf = bytearray(16 << 20)
        for start in range(0, cfg.memory, len(buf)):
            lpar.expected_into(start, memoryview(buf))
            # Zero pages stay holes: the tests write several of these 1 GiB files.
            for i, zero in enumerate(native.zero_pages(buf, ps)):
                if not zero:
                    f.seek(layout.data_start + start + i * ps)
                    f.write(memoryview(buf)[i * ps : (i + 1) * ps])
        f.truncate(layout.data_start + cfg.memory)
    return path


def crashed_source(d: Path, endian: str) -> tuple[Lpar, KernelImage]:
    lpar = Lpar.create(d / "source", memory="1G", cpus=3, endian=endian, mix=FAST_MIX, boot=True)
    lpar.crash()
    image = lpar.crashed_kernel()
    assert isinstance(image, KernelImage)
    return lpar, image

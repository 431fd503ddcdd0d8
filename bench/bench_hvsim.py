#!/usr/bin/env python3
"""Benchmark the simulator: a 1 TiB LPAR's life cost, and /proc/vmcore read speed.

    .venv/bin/python bench/bench_hvsim.py [--memory 1T] [--seconds 2] [--json]

* create + boot + crash of a --memory LPAR up to the capture boot: wall time
  (target under 2 s for 1 TiB) and disk used by the LPAR directory, like
  ``du`` (target under 100 MiB); also the HPTE table's share of the crash;
* ``Lpar.read_vmcore`` throughput in-process for 64 KiB and 1 MiB reads in
  three regions: the reserved area (the crashed kernel's memory, generated),
  the low-memory copy in the scratch area (read through the crash snapshot),
  and the capture kernel's low memory; against the baselines of the same
  run: the C page generator alone into a reused buffer, and ``os.preadv`` of
  a tmpfs file (what serving from a real copy would cost);
* ``hvsim verify`` of the saved sections in place.

Speeds in MB/s (10**6 bytes per second), best of a few seconds of reads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hvsim import Lpar, pages
from hvsim.config import format_size, parse_size
from hvsim.verify import verify_sections

M = 1 << 20


def du(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def rate(fn: Any, size: int, seconds: float) -> float:
    """MB/s of ``fn(i)`` returning ``size`` bytes, over ``seconds``."""
    fn(0)
    n = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn(n)
        n += 1
    return n * size / elapsed / 1e6


def bench_life(memory: int, work: str) -> dict[str, float]:
    path = os.path.join(work, "lpar")
    t0 = time.perf_counter()
    lpar = Lpar.create(path, memory=memory, cpus=64, seed=2026)
    t1 = time.perf_counter()
    lpar.boot()
    t2 = time.perf_counter()
    lpar.crash()
    t3 = time.perf_counter()
    assert lpar.state == "capture"
    image = lpar.crashed_kernel()
    assert image is not None
    t4 = time.perf_counter()
    image.hash_page_table(lpar.scratch_layout().hpte_size)
    hpte = time.perf_counter() - t4
    return {
        "create_s": t1 - t0,
        "boot_s": t2 - t1,
        "crash_to_capture_s": t3 - t2,
        "total_s": t3 - t0,
        "hpte_table_s": hpte,
        "disk_bytes": du(path),
    }


def _generator(size: int, ps: int, lpar: Lpar) -> Callable[[int], object]:
    buf = bytearray(size)
    n = size // ps
    return lambda i: pages.gen_pages_into(buf, 7, i * n, n, ps, lpar.config.mix, True)


def _preader(fd: int, size: int) -> Callable[[int], object]:
    view = memoryview(bytearray(size))
    return lambda i: os.preadv(fd, [view], (i * size) % (64 * M))


def bench_reads(lpar: Lpar, seconds: float, work: str) -> dict[str, dict[str, float]]:
    layout = lpar.vmcore_layout()
    low, reserved = layout.segments
    info = lpar.last_dump()
    assert info is not None
    rmo_dest = info.sections["rmo"][0]
    regions = {
        "reserved area (crashed memory)": reserved.p_offset + (64 << 30) % reserved.p_filesz,
        "low-memory copy (snapshot)": reserved.p_offset + rmo_dest - reserved.p_paddr,
        "capture kernel low memory": low.p_offset + 16 * M,
    }
    out: dict[str, dict[str, float]] = {}
    span = 256 * M  # wrap around inside each region so reads stay in it
    for size in (64 << 10, M):
        row: dict[str, float] = {}
        for name, base in regions.items():
            row[name] = rate(
                lambda i, b=base, s=size: lpar.read_vmcore(b + (i * s) % span, s), size, seconds
            )
        row["baseline: C generator alone"] = rate(
            _generator(size, lpar.config.page_size, lpar), size, seconds
        )
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else work
        with tempfile.NamedTemporaryFile(dir=shm) as f:
            f.write(os.urandom(M) * 64)
            f.flush()
            row["baseline: preadv from tmpfs"] = rate(_preader(f.fileno(), size), size, seconds)
        out[format_size(size)] = row
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--memory", default="1T", help="LPAR memory (default 1T)")
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds per read measurement")
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = ap.parse_args()
    memory = parse_size(args.memory)
    work = tempfile.mkdtemp(prefix="bench-hvsim-")
    try:
        life = bench_life(memory, work)
        lpar = Lpar.open(os.path.join(work, "lpar"))
        reads = bench_reads(lpar, args.seconds, work)
        t = time.perf_counter()
        report = verify_sections(lpar)
        verify_s = time.perf_counter() - t
        assert report.ok, report.text()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        json.dump(
            {"life": life, "reads_mb_s": reads, "verify_sections_s": verify_s}, sys.stdout, indent=2
        )
        print()
        return 0
    size = format_size(memory)
    print(f"{size} LPAR, 64 CPUs, create + boot + crash up to the capture boot:")
    print(f"  create {life['create_s']:.3f} s, boot {life['boot_s']:.3f} s, "
          f"crash to capture {life['crash_to_capture_s']:.3f} s")  # fmt: skip
    print(f"  total {life['total_s']:.3f} s (target < 2 s: {life['total_s'] / 2:.2f} of it); "
          f"HPTE table alone {life['hpte_table_s']:.3f} s")  # fmt: skip
    print(f"  disk used {life['disk_bytes'] / M:.2f} MiB (target < 100 MiB: "
          f"{life['disk_bytes'] / (100 * M):.3f} of it)")  # fmt: skip
    print()
    print("read_vmcore throughput, MB/s (ratio to the C generator alone):")
    for size_name, row in reads.items():
        gen = row["baseline: C generator alone"]
        print(f"  {size_name} reads:")
        for name, value in row.items():
            print(f"    {name:<34} {value:9.0f}   x{value / gen:.2f}")
    print()
    print(f"verify saved sections in place ({size}): {verify_s:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

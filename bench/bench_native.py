#!/usr/bin/env python3
"""Benchmark hvdump's C hot loops on one core against baselines from the same run.

    .venv/bin/python bench/bench_native.py [--size-mib 256] [--repeat 3] [--json]

Measures, pinned to one CPU, on a buffer of --size-mib of 64 KiB pages:

* page generation (``gen_pages_into`` with BUSY_MIX, and per kind) against the
  Python twin (on a small sample), ``os.urandom`` and a plain memory copy;
* the zero-page scan (``zero_pages``) on all-zero memory (its worst case, it
  must read everything) and on generated memory, against a Python memcmp
  (``buf == zeros``), ``bytes.count`` and ``cmp`` on two files of zeros;
* per-page hashing (``page_hashes``, XXH64) against ``zlib.crc32``,
  ``hashlib.blake2b`` and ``hashlib.sha256`` over the same bytes;
* ``dup_pages`` on the page hashes;
* how well the generated memory compresses (zlib -1 over the stream and per
  page; ``zstd -1`` and ``gzip -1`` when installed).

Speeds are in GB/s (10**9 bytes per second), best of --repeat runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.timing import best_time, cpu_model
from drgn_hvdump import native, native_ref
from hvsim import pages, pages_ref

PAGE = 65536
KIND_MIXES = {
    name: pages.PageMix(*(1.0 if i == k else 0.0 for i in range(4)))
    for k, name in enumerate(pages.PAGE_KIND_NAMES)
}


def pin_one_core() -> int | None:
    """Run on one CPU so the numbers are single-core numbers."""
    try:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return cpu
    except (AttributeError, OSError):
        return None


class Table:
    """Rows of (group, what, GB/s); each group's rows are compared with its baselines."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.baselines: dict[str, list[str]] = {}

    def add(self, group: str, name: str, nbytes: int, seconds: float) -> float:
        gbps = nbytes / seconds / 1e9
        self.rows.append(
            {"group": group, "name": name, "bytes": nbytes, "seconds": seconds, "gbps": gbps}
        )
        return gbps

    def gbps(self, group: str, name: str) -> float | None:
        for row in self.rows:
            if row["group"] == group and row["name"] == name:
                return float(row["gbps"])
        return None

    def ratios(self, row: dict[str, Any]) -> dict[str, float]:
        out = {}
        for base in self.baselines.get(row["group"], []):
            other = self.gbps(row["group"], base)
            if other and base != row["name"]:
                out[base] = float(row["gbps"]) / other
        return out

    def print(self) -> None:
        for group, bases in self.baselines.items():
            print(f"\n[{group}] ratios: x = / {bases[0]!r}, y = / {bases[1]!r}")
            print(f"  {'what':<46} {'GB/s':>9} {'x':>9} {'y':>9}")
            for row in self.rows:
                if row["group"] != group:
                    continue
                ratios = self.ratios(row)
                cells = [f"{ratios[b]:8.2f}x" if b in ratios else "" for b in bases]
                print(f"  {row['name']:<46} {row['gbps']:9.3f} {cells[0]:>9} {cells[1]:>9}")


def bench_gen(table: Table, size: int, repeat: int) -> bytearray:
    npages = size // PAGE
    buf = bytearray(size)
    mix = pages.BUSY_MIX
    t = best_time(lambda: pages.gen_pages_into(buf, 1, 0, npages, PAGE, mix, True), repeat)
    table.add("gen", "native gen_pages_into BUSY_MIX (BE)", size, t)
    t = best_time(lambda: pages.gen_pages_into(buf, 1, 0, npages, PAGE, mix, False), repeat)
    table.add("gen", "native gen_pages_into BUSY_MIX (LE)", size, t)
    for name, kind_mix in KIND_MIXES.items():

        def gen(m: pages.PageMix = kind_mix) -> None:
            pages.gen_pages_into(buf, 1, 0, npages, PAGE, m, True)

        table.add("gen", f"native gen_pages_into {name} only", size, best_time(gen, repeat))
    small = bytearray(8 * PAGE)
    t = best_time(lambda: pages_ref.gen_pages_into(small, 1, 0, 8, PAGE, mix, True), 1)
    table.add("gen", "python twin gen_pages_into BUSY_MIX", len(small), t)
    t = best_time(lambda: os.urandom(size), repeat)
    table.add("gen", "os.urandom(n)", size, t)
    src = bytes(buf)
    dst = memoryview(bytearray(size))

    def copy() -> None:
        # Through a memoryview: bytearray[:] = bytes first copies bytes into a
        # temporary bytearray, which would measure page faults, not copying.
        dst[:] = src

    table.add("gen", "memcpy (memoryview[:] = bytes)", size, best_time(copy, repeat))
    table.baselines["gen"] = ["memcpy (memoryview[:] = bytes)", "os.urandom(n)"]
    pages.gen_pages_into(buf, 1, 0, npages, PAGE, mix, True)
    return buf


def bench_zero(table: Table, busy: bytearray, repeat: int) -> None:
    size = len(busy)
    # Touch every page: untouched calloc'd memory reads as the shared zero page.
    zeros = bytearray(b"\x00") * size
    other = bytearray(b"\x00") * size
    base = "python memcmp (buf == zeros)"
    t = best_time(lambda: native.zero_pages(zeros, PAGE), repeat)
    table.add("zero", "native zero_pages, all-zero memory", size, t)
    t = best_time(lambda: native.zero_pages(busy, PAGE), repeat)
    table.add("zero", "native zero_pages, BUSY_MIX memory", size, t)
    t = best_time(lambda: native_ref.zero_pages(zeros[: 64 * PAGE], PAGE), repeat)
    table.add("zero", "python twin zero_pages, all-zero", 64 * PAGE, t)
    t = best_time(lambda: zeros == other, repeat)
    table.add("zero", base, size, t)
    t = best_time(lambda: zeros.count(0) == size, repeat)
    table.add("zero", "python bytes.count(0) == len", size, t)
    bases = [base]
    cmp = shutil.which("cmp")
    if cmp:
        with tempfile.TemporaryDirectory() as tmp:
            a, b = Path(tmp, "a"), Path(tmp, "b")
            a.write_bytes(zeros)
            b.write_bytes(zeros)
            t = best_time(lambda: subprocess.run([cmp, str(a), str(b)], check=True), repeat)
            table.add("zero", "cmp on two files of zeros (page cache)", size, t)
            bases.append("cmp on two files of zeros (page cache)")
    table.baselines["zero"] = [*bases, "python bytes.count(0) == len"][:2]


def bench_hash(table: Table, busy: bytearray, repeat: int) -> dict[str, float]:
    size = len(busy)
    hashes: list[int] = []

    def pages() -> None:
        hashes[:] = native.page_hashes(busy, PAGE)

    t = best_time(pages, repeat)
    table.add("hash", "native page_hashes (XXH64 per 64 KiB page)", size, t)
    t = best_time(lambda: native.hash64(busy), repeat)
    table.add("hash", "native hash64 (XXH64, whole buffer)", size, t)
    t = best_time(lambda: zlib.crc32(busy), repeat)
    table.add("hash", "zlib.crc32", size, t)
    t = best_time(lambda: hashlib.blake2b(busy).digest(), repeat)
    table.add("hash", "hashlib.blake2b", size, t)
    t = best_time(lambda: hashlib.sha256(busy).digest(), repeat)
    table.add("hash", "hashlib.sha256", size, t)
    sample = bytes(busy[: 4 * PAGE])
    t = best_time(lambda: native_ref.page_hashes(sample, PAGE), 1)
    table.add("hash", "python twin page_hashes", len(sample), t)
    table.baselines["hash"] = ["zlib.crc32", "hashlib.blake2b"]
    # A million distinct hashes (a 64 GiB LPAR of 64 KiB pages with no duplicates: the
    # hash table's worst case), then the same with every page repeated 4 times.
    many = [(i * 0x9E3779B97F4A7C15) & (2**64 - 1) for i in range(1 << 20)]
    t = best_time(lambda: native.dup_pages(many), repeat)
    t_ref = best_time(lambda: native_ref.dup_pages(many), 1)
    dups = many[: len(many) // 4] * 4
    t_dups = best_time(lambda: native.dup_pages(dups), repeat)
    return {
        "hashes": len(many),
        "native_mpages_per_s": len(many) / t / 1e6,
        "twin_mpages_per_s": len(many) / t_ref / 1e6,
        "native_mpages_per_s_4x_dups": len(dups) / t_dups / 1e6,
    }


def compression(busy: bytearray) -> dict[str, Any]:
    size = len(busy)
    out: dict[str, Any] = {"bytes": size}
    t = time.perf_counter()
    out["zlib-1 stream"] = size / len(zlib.compress(busy, 1))
    out["zlib-1 stream seconds"] = time.perf_counter() - t
    zero = native.zero_pages(busy, PAGE)
    nonzero = [i for i in range(size // PAGE) if not zero[i]]
    packed = sum(len(zlib.compress(busy[i * PAGE : (i + 1) * PAGE], 1)) for i in nonzero)
    out["zlib-1 per non-zero page"] = len(nonzero) * PAGE / packed
    for tool, args in (("zstd", ["-1", "-c", "-q"]), ("gzip", ["-1", "-c"])):
        exe = shutil.which(tool)
        if exe:
            t = time.perf_counter()
            res = subprocess.run([exe, *args], input=busy, capture_output=True, check=True)
            out[f"{tool} -1 stream"] = size / len(res.stdout)
            out[f"{tool} -1 stream seconds"] = time.perf_counter() - t
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256, help="buffer size (default 256)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement, best kept")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--no-compress", action="store_true", help="skip compression ratios")
    args = parser.parse_args(argv)
    if args.size_mib < 1:
        parser.error("--size-mib must be at least 1")
    size = args.size_mib * (1 << 20)
    cpu = pin_one_core()
    table = Table()
    busy = bench_gen(table, size, args.repeat)
    bench_zero(table, busy, args.repeat)
    dup = bench_hash(table, busy, args.repeat)
    ratios = {} if args.no_compress else compression(busy)
    report = {
        "cpu_model": cpu_model(),
        "pinned_cpu": cpu,
        "size_mib": args.size_mib,
        "page_size": PAGE,
        "mix": str(pages.BUSY_MIX),
        "results": [dict(row, ratios=table.ratios(row)) for row in table.rows],
        "dup_pages": dup,
        "compression": ratios,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"CPU: {report['cpu_model']} (pinned to cpu {cpu}); {args.size_mib} MiB of 64 KiB pages")
    print(f"mix: {report['mix']}")
    table.print()
    for group, native_row, twin_row in (
        ("gen", "native gen_pages_into BUSY_MIX (BE)", "python twin gen_pages_into BUSY_MIX"),
        ("zero", "native zero_pages, all-zero memory", "python twin zero_pages, all-zero"),
        ("hash", "native page_hashes (XXH64 per 64 KiB page)", "python twin page_hashes"),
    ):
        fast, slow = table.gbps(group, native_row), table.gbps(group, twin_row)
        if fast and slow:
            print(f"\n[{group}] native is {fast / slow:,.0f}x its Python twin", end="")
    print(
        f"\n\n[dup] dup_pages on {dup['hashes']} distinct hashes: "
        f"{dup['native_mpages_per_s']:.1f} M pages/s (Python twin "
        f"{dup['twin_mpages_per_s']:.1f} M pages/s); each repeated 4 times: "
        f"{dup['native_mpages_per_s_4x_dups']:.1f} M pages/s"
    )
    if ratios:
        print("\ncompression of the BUSY_MIX buffer (input size / output size):")
        for key, value in ratios.items():
            if key != "bytes" and not key.endswith("seconds"):
                print(f"  {key:<28} {value:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Benchmark sequential reads of ``ROOT/proc/vmcore`` through the FUSE capture root.

    .venv/bin/python bench/bench_fuse.py [--memory 4G] [--repeat 2] [--workdir DIR] [--json]

Creates an LPAR of --memory (4 GiB: a vmcore of 4 GiB), crashes it into the
capture kernel, mounts it with ``hvsim.fuse_root.mount`` and measures, in the
same run:

* ``dd if=ROOT/proc/vmcore of=/dev/null bs=1M`` (the target: at least
  300 MB/s) and ``cat ROOT/proc/vmcore > /dev/null``;
* the in-process baseline: ``Lpar.read_vmcore`` over the whole file in 1 MiB
  calls, in a fresh interpreter with glibc's default malloc settings and with
  the daemon's (``fuse_root.tune_malloc``), so the ratio shows what FUSE costs;
* ``dd bs=1M`` from a regular file of the same size that was just written
  (so it reads from the page cache: the best any file can do here).

Speeds are MB/s (10**6 bytes per second, as dd prints them), best of --repeat.
Exits 1 when the FUSE dd falls below 300 MB/s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hvsim import Lpar, fuse_root

TARGET_MBPS = 300.0
CHUNK = 1 << 20


def _baseline(lpar_path: str, mode: str) -> None:
    """Child mode: read the whole vmcore in-process and print seconds as JSON."""
    if mode == "tuned":
        fuse_root.tune_malloc()
    lpar = Lpar.open(lpar_path)
    size = lpar.vmcore_size()
    t = time.perf_counter()
    offset = 0
    while offset < size:
        data = lpar.read_vmcore(offset, CHUNK)
        if not data:
            raise SystemExit(f"short vmcore at {offset:#x}")
        offset += len(data)
    print(json.dumps({"bytes": offset, "seconds": time.perf_counter() - t}))


def in_process(lpar_path: str, mode: str) -> tuple[int, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--baseline", lpar_path, mode],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rec = json.loads(out.strip().splitlines()[-1])
    return int(rec["bytes"]), float(rec["seconds"])


_DD_RE = re.compile(r"^(\d+) bytes .* copied, ([0-9.]+) s", re.M)


def dd(path: Path) -> tuple[int, float]:
    res = subprocess.run(
        ["dd", f"if={path}", "of=/dev/null", "bs=1M"],
        capture_output=True,
        text=True,
        check=True,
    )
    m = _DD_RE.search(res.stderr)
    if m is None:
        raise SystemExit(f"cannot read dd's report: {res.stderr!r}")
    return int(m.group(1)), float(m.group(2))


def cat(path: Path) -> tuple[int, float]:
    size = path.stat().st_size
    t = time.perf_counter()
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    return size, time.perf_counter() - t


def regular_file(path: Path, size: int) -> None:
    """A file of ``size`` bytes of incompressible data, left in the page cache."""
    block = os.urandom(CHUNK)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        left = size
        while left:
            left -= os.write(fd, block[: min(CHUNK, left)])
    finally:
        os.close(fd)


def best(fn: Any, repeat: int, *args: Any) -> tuple[int, float]:
    runs = [fn(*args) for _ in range(repeat)]
    nbytes = {n for n, _ in runs}
    if len(nbytes) != 1:
        raise SystemExit(f"{fn.__name__}: runs read different sizes {sorted(nbytes)}")
    return runs[0][0], min(s for _, s in runs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--memory", default="4G", help="LPAR memory, e.g. 4G (default)")
    ap.add_argument("--endian", default="big", choices=("big", "little"))
    ap.add_argument("--repeat", type=int, default=2, help="runs of each reader; best counts")
    ap.add_argument("--workdir", help="where to put the LPAR and the file (default: a temp dir)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    ap.add_argument("--baseline", nargs=2, metavar=("LPAR", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.baseline:
        _baseline(*args.baseline)
        return 0

    with tempfile.TemporaryDirectory(prefix="hvdump-bench-fuse-", dir=args.workdir) as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        lpar = Lpar.create(work / "lpar", memory=args.memory, endian=args.endian, boot=True)
        lpar.crash()
        size = lpar.vmcore_size()
        print(
            f"LPAR {args.memory} {args.endian}-endian, vmcore {size} bytes "
            f"({size / 2**30:.2f} GiB); set up in {time.perf_counter() - t:.1f} s",
            flush=True,
        )
        results: dict[str, tuple[int, float]] = {}
        results["in-process read_vmcore (default malloc)"] = best(
            in_process, args.repeat, lpar.path, "default"
        )
        results["in-process read_vmcore (tuned malloc)"] = best(
            in_process, args.repeat, lpar.path, "tuned"
        )
        plain = work / "plain.bin"
        regular_file(plain, size)
        results["dd bs=1M, regular file (page cache)"] = best(dd, args.repeat, plain)
        plain.unlink()

        root = work / "root"
        fuse_root.mount(lpar.path, root)
        try:
            vmcore = root / "proc/vmcore"
            results["dd bs=1M, FUSE proc/vmcore"] = best(dd, args.repeat, vmcore)
            results["cat, FUSE proc/vmcore"] = best(cat, args.repeat, vmcore)
        finally:
            fuse_root.umount(root)

    fuse_name = "dd bs=1M, FUSE proc/vmcore"
    fuse_mbps = results[fuse_name][0] / results[fuse_name][1] / 1e6
    print(f"\n{'reader':<42} {'seconds':>8} {'MB/s':>8} {'FUSE dd / this':>15}")
    table = []
    for name, (nbytes, seconds) in results.items():
        if nbytes != size:
            raise SystemExit(f"{name}: read {nbytes} bytes, expected {size}")
        mbps = nbytes / seconds / 1e6
        table.append({"reader": name, "bytes": nbytes, "seconds": seconds, "mbps": mbps})
        print(f"{name:<42} {seconds:>8.2f} {mbps:>8.0f} {fuse_mbps / mbps:>15.2f}")
    ok = fuse_mbps >= TARGET_MBPS
    print(
        f"\nFUSE dd: {fuse_mbps:.0f} MB/s, target {TARGET_MBPS:.0f} MB/s: "
        f"{'PASS' if ok else 'FAIL'}"
    )
    if args.json:
        print(json.dumps({"vmcore_bytes": size, "results": table, "target_mbps": TARGET_MBPS}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""hvdump collect against same-run baselines (zstd -1 -T1, lz4 -1), release curves, peak RSS.

    .venv/bin/python bench/bench_collect.py [--memory 1G] [--rss-sizes 1G,16G] [--skip-rss]

Prints one line per measurement and ratios; results go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.export_root import export_root
from hvsim import Lpar

PY = sys.executable


def _timed(cmd: list[str]) -> tuple[float, int]:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    dt = time.perf_counter() - t
    return dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def _collect(root: Path, out: Path, *args: str) -> tuple[float, dict]:  # type: ignore[type-arg]
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    subprocess.run(
        [
            PY,
            "-m",
            "drgn_hvdump.cli",
            "collect",
            "--root",
            str(root),
            "-o",
            str(out),
            "--no-progress",
            *args,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - t, json.loads((out / "manifest.json").read_text())


def speed(base: Path, memory: str) -> None:
    lpar = Lpar.create(base / "lpar", memory=memory, boot=True)
    lpar.crash()
    root = export_root(lpar, base / "root")
    vmcore = root / "proc/vmcore"
    subprocess.run(["cat", str(vmcore)], stdout=subprocess.DEVNULL, check=True)  # page cache
    size = vmcore.stat().st_size
    print(f"vmcore {size / (1 << 30):.2f} GiB (page cache), hvsim default page mix")
    res: dict[str, float] = {}
    for name, cmd in (
        ("zstd -1 -T1", ["zstd", "-1", "-T1", "-q", "-f", str(vmcore), "-o", str(base / "v.zst")]),
        ("lz4 -1", ["lz4", "-1", "-q", "-f", str(vmcore), str(base / "v.lz4")]),
    ):
        best = min(_timed(cmd)[0] for _ in range(2))
        out_size = (base / ("v.zst" if "zstd" in name else "v.lz4")).stat().st_size
        res[name] = best
        print(
            f"{name:28s} {best:6.2f} s {size / best / 1e6:7.0f} MB/s  output {out_size / 1e6:7.0f} MB"
        )
    for label, args, base_name in (
        ("collect zstd 1, 1 thread", ["--compress", "zstd", "--threads", "1"], "zstd -1 -T1"),
        ("collect zstd 1, 2 threads", ["--compress", "zstd", "--threads", "2"], "zstd -1 -T1"),
        ("collect snappy, 1 thread", ["--compress", "snappy", "--threads", "1"], "lz4 -1"),
        ("collect lzo, 1 thread", ["--compress", "lzo", "--threads", "1"], "lz4 -1"),
        ("collect snappy, 2 threads", ["--compress", "snappy", "--threads", "2"], "lz4 -1"),
    ):
        best, m = min(
            (_collect(root, base / "out", "--release", "never", *args) for _ in range(2)),
            key=lambda r: r[0],
        )
        print(
            f"{label:28s} {best:6.2f} s {size / best / 1e6:7.0f} MB/s  output "
            f"{m['dump']['size'] / 1e6:7.0f} MB  speed vs {base_name}: {res[base_name] / best:.2f}x"
        )


def _integral(curve: list[list[float]], total_time: float) -> float:
    area = 0.0
    for (t0, r0), (t1, _) in zip(curve, [*curve[1:], [total_time, 0]], strict=False):
        area += r0 * max(0.0, t1 - t0)
    return area


def release_curve(base: Path, memory: str) -> None:
    from hvsim import fuse_root

    results = {}
    for policy in ("at-end", "progressive"):
        lpar = Lpar.create(base / f"lp-{policy}", memory=memory, boot=True)
        lpar.crash()
        root = base / f"root-{policy}"
        root.mkdir()
        fuse_root.mount(lpar.path, str(root))
        try:
            _, m = _collect(root, base / f"out-{policy}", "--release", policy, "--threads", "2")
        finally:
            fuse_root.umount(str(root))
        curve = m["release"]["reserved_over_time"]
        end = curve[-1][0]
        results[policy] = (_integral(curve, end), end, curve)
        assert lpar.protected
    ratio = results["progressive"][0] / results["at-end"][0]
    print(
        f"reserved-memory integral: progressive / at-end = {ratio:.3f} (target <= 0.55, ideal 0.50)"
    )
    for policy, (_, end, curve) in results.items():
        step = max(1, len(curve) // 8)
        pts = ", ".join(f"{t:.1f}s:{r / (1 << 30):.2f}G" for t, r in curve[::step])
        print(f"  {policy:11s} {end:5.1f} s: {pts}")


def rss(base: Path, sizes: list[str]) -> None:
    from hvsim import fuse_root

    for size in sizes:
        lpar = Lpar.create(
            base / f"rss-{size}",
            memory=size,
            boot=True,
            mix="zero=0.9,text=0.05,pointer=0.04,random=0.01",
        )
        lpar.crash()
        root = base / f"rroot-{size}"
        root.mkdir()
        fuse_root.mount(lpar.path, str(root))
        try:
            code = (
                "import resource,sys; from drgn_hvdump.cli import main; "
                "rc = main(sys.argv[1:]); "
                "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)"
            )
            out = subprocess.run(
                [
                    PY,
                    "-c",
                    code,
                    "collect",
                    "--root",
                    str(root),
                    "-o",
                    str(base / f"rout-{size}"),
                    "--no-progress",
                    "--threads",
                    "2",
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        finally:
            fuse_root.umount(str(root))
        kb = int(out.split("MAXRSS")[1].split()[0])
        print(f"peak RSS, {size} LPAR (2 threads, 16 MiB chunks): {kb / 1024:.0f} MiB")
        shutil.rmtree(base / f"rout-{size}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--memory", default="1G")
    ap.add_argument("--rss-sizes", default="1G,16G")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR", "/var/tmp")) as tmp:
        base = Path(tmp)
        if not args.skip_speed:
            speed(base / "s", args.memory) if (base / "s").mkdir() is None else None
        (base / "r").mkdir()
        release_curve(base / "r", "2G")
        if not args.skip_rss:
            (base / "m").mkdir()
            rss(base / "m", args.rss_sizes.split(","))


if __name__ == "__main__":
    main()

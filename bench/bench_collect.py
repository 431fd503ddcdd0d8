"""hvdump collect against same-run baselines (zstd -1 -T1, lz4 -1), release curves, peak RSS.

    .venv/bin/python bench/bench_collect.py [--memory 1G] [--rss-sizes 1G,16G] [--skip-rss]
        [--skip-release] [--repeat N] [--compare OTHER_TREE] [--only LABEL] [--lzo]

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


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


_HZ = os.sysconf("SC_CLK_TCK")


def _busy_idle() -> tuple[float, float]:
    """CPU seconds busy and idle over all CPUs since boot (/proc/stat)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = f[0] + f[1] + f[2] + f[5] + f[6] + f[7]  # user nice system irq softirq steal
    return busy / _HZ, (f[3] + f[4]) / _HZ


def _wait_idle(limit: float = 90.0) -> None:
    """Wait (at most ``limit`` s) for 2 s in which the CPUs are at least 90 % idle.

    The machine is shared; a run that starts while another job computes is
    slower for reasons that are not ours. Everything is synced first so
    writeback of earlier runs does not land in this one's fdatasync.
    """
    os.sync()
    end = time.monotonic() + limit
    while time.monotonic() < end:
        b0, i0 = _busy_idle()
        time.sleep(2)
        b1, i1 = _busy_idle()
        if (b1 - b0) <= 0.1 * ((b1 - b0) + (i1 - i0)):
            return


class _Others:
    """CPU seconds used by other processes during a run: all busy time minus ours."""

    def __enter__(self) -> _Others:
        self.b0 = _busy_idle()[0]
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = _busy_idle()[0] - self.b0

    def others(self, ours: float) -> float:
        return max(0.0, self.seconds - ours)


def _timed(cmd: list[str]) -> tuple[float, float, float]:
    """Wall and CPU (user + sys) seconds of one run of ``cmd``, and others' CPU seconds."""
    _wait_idle()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with _Others() as o:
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        dt = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return dt, cpu, o.others(cpu)


def _collect(
    root: Path, out: Path, *args: str, tree: Path | None = None, idle: bool = True
) -> tuple[float, float, float, dict]:  # type: ignore[type-arg]
    """Wall, CPU, others' CPU and manifest of one ``hvdump collect`` (of ``tree``'s code)."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    if idle:
        _wait_idle()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    o = _Others().__enter__()
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
        cwd=tree,
        env=env,
    )
    dt = time.perf_counter() - t
    o.__exit__()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return dt, cpu, o.others(cpu), json.loads((out / "manifest.json").read_text())


# The kdump format has flags for zlib, LZO, snappy and zstd only: no reader
# could open an LZ4 page, so ``lz4 -1`` is the yardstick for the format's
# fast codec, snappy (as fast as LZ4 on this data, see
# shared/reference/kdump-format-and-speeds.md). LZO (liblzo2, as
# makedumpfile) is measured only with --lzo.
RUNS = (
    ("collect zstd 1, 1 thread", ["--compress", "zstd", "--threads", "1"], "zstd -1 -T1"),
    ("collect zstd 1, 2 threads", ["--compress", "zstd", "--threads", "2"], "zstd -1 -T1"),
    ("collect snappy, 1 thread", ["--compress", "snappy", "--threads", "1"], "lz4 -1"),
    ("collect snappy, 2 threads", ["--compress", "snappy", "--threads", "2"], "lz4 -1"),
    # Uncompressed (ELF, kdump pages raw): what is left is reading, checking and writing.
    ("collect elf", ["--format", "elf"], "cp"),
    ("collect kdump, pages raw", ["--compress", "none"], "cp"),
)
LZO_RUN = ("collect lzo, 1 thread", ["--compress", "lzo", "--threads", "1"], "lz4 -1")


def speed(
    base: Path,
    memory: str,
    repeat: int,
    compare: Path | None,
    lzo: bool,
    only: str | None,
    dump: str = "phyp",
) -> None:
    lpar = Lpar.create(base / "lpar", memory=memory, boot=True, dump=dump)
    lpar.crash()
    root = export_root(lpar, base / "root")
    vmcore = root / "proc/vmcore"
    subprocess.run(["cat", str(vmcore)], stdout=subprocess.DEVNULL, check=True)  # page cache
    size = vmcore.stat().st_size
    print(f"{dump} vmcore {size / (1 << 30):.2f} GiB (page cache), hvsim default page mix")
    print(
        f"load average at start: {_loadavg()}; best of {repeat} runs each, wall (CPU); "
        "each run waits for idle CPUs first; 'others' is CPU time other processes used meanwhile"
    )
    res: dict[str, float] = {}
    for name, out, cmd in (
        ("zstd -1 -T1", base / "v.zst", ["zstd", "-1", "-T1", "-q", "-f", str(vmcore), "-o"]),
        ("lz4 -1", base / "v.lz4", ["lz4", "-1", "-q", "-f", str(vmcore)]),
        ("cp", base / "v.cp", ["cp", str(vmcore)]),
    ):
        wall, cpu, others = min(_timed([*cmd, str(out)]) for _ in range(repeat))
        out_size = out.stat().st_size
        res[name] = wall
        print(
            f"{name:34s} {wall:6.2f} s ({cpu:5.2f}) {size / wall / 1e6:5.0f} MB/s  "
            f"output {out_size / 1e6:5.0f} MB  others {others:.2f} CPU s"
        )
    trees: list[tuple[str, Path | None]] = [("", None)]
    if compare is not None:
        trees.append((" [compare]", compare))
    runs = [*RUNS, LZO_RUN] if lzo else list(RUNS)
    for label, args, base_name in runs:
        if only and only not in label:
            continue
        best: dict[str, tuple[float, float, float, dict]] = {}  # type: ignore[type-arg]
        for _ in range(repeat):
            for tag, tree in trees:  # alternating: same conditions for both trees
                r = _collect(root, base / "out", "--release", "never", *args, tree=tree)
                if tag not in best or r[0] < best[tag][0]:
                    best[tag] = r
        for tag, _tree in trees:
            wall, cpu, others, m = best[tag]
            t = m["timings"]
            print(
                f"{label + tag:34s} {wall:6.2f} s ({cpu:5.2f}) {size / wall / 1e6:5.0f} MB/s  "
                f"output {m['dump']['size'] / 1e6:5.0f} MB  vs {base_name}: "
                f"{res[base_name] / wall:.2f}x  [in collector {t['elapsed_s']:.2f} s: "
                + ", ".join(f"{k} {t[k]:.2f}" for k in t if k.endswith(("_wait", "read", "write")))
                + f"]  others {others:.2f} CPU s"
            )
    print(f"load average at end: {_loadavg()}")


def safety_cost(base: Path, memory: str, repeat: int, compare: Path | None) -> None:
    """Progressive release on a FUSE root, this tree against ``compare`` (A/B, alternating):
    what the ownership checks (MemTotal after every read and release, files still in
    place) and the full verify before the last release cost."""
    from hvsim import fuse_root

    if compare is None:
        print("safety cost: needs --compare OTHER_TREE (the code before)")
        return
    lpar = Lpar.create(base / "lpar", memory=memory, boot=True)
    root = base / "root"
    root.mkdir()
    best: dict[str, tuple[float, dict]] = {}  # type: ignore[type-arg]
    for n in range(repeat):
        for tag, tree in (("this", None), ("before", compare)):
            lpar.crash()
            fuse_root.mount(lpar.path, str(root))
            out = base / f"out-{tag}-{n}"
            try:
                wall, _cpu, _others, m = _collect(
                    root, out, "--release", "progressive", "--threads", "2", tree=tree
                )
            finally:
                fuse_root.umount(str(root))
            assert lpar.protected, tag
            shutil.rmtree(out)
            if tag not in best or wall < best[tag][0]:
                best[tag] = (wall, m)
    for tag in ("this", "before"):
        wall, m = best[tag]
        t = m["timings"]
        print(
            f"progressive on FUSE, {memory}, zstd 2 threads [{tag}]: {wall:6.2f} s "
            f"(release {t['release']:.2f} s, final check {t.get('final_check', 0.0):.2f} s)"
        )
    print(f"this / before: {best['this'][0] / best['before'][0]:.2f}x wall")


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
            *_, m = _collect(
                root, base / f"out-{policy}", "--release", policy, "--threads", "2", idle=False
            )
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
    ap.add_argument("--repeat", type=int, default=2, help="runs of each measurement (best kept)")
    ap.add_argument("--rss-sizes", default="1G,16G")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-release", action="store_true")
    ap.add_argument(
        "--safety", action="store_true", help="time progressive release on FUSE against --compare"
    )
    ap.add_argument("--lzo", action="store_true", help="also time LZO")
    ap.add_argument(
        "--dump", choices=("phyp", "fadump"), default="phyp", help="the LPAR's dump interface"
    )
    ap.add_argument("--only", help="time only the collector runs whose label contains this")
    ap.add_argument(
        "--compare",
        type=Path,
        help="another source tree (with drgn_hvdump built): its collector is timed "
        "alternately with this one's, same vmcore (A/B)",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR", "/var/tmp")) as tmp:
        base = Path(tmp)
        if not args.skip_speed:
            (base / "s").mkdir()
            speed(
                base / "s", args.memory, args.repeat, args.compare, args.lzo, args.only, args.dump
            )
        if args.safety:
            (base / "x").mkdir()
            safety_cost(base / "x", "2G", args.repeat, args.compare)
        if not args.skip_release:
            (base / "r").mkdir()
            release_curve(base / "r", "2G")
        if not args.skip_rss:
            (base / "m").mkdir()
            rss(base / "m", args.rss_sizes.split(","))


if __name__ == "__main__":
    main()

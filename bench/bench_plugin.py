"""The drgn plugin against plain drgn, measured in the same run.

    .venv/bin/python bench/bench_plugin.py [--quick] [--reps 5] [--startup-runs 30]

1. Reads of the remapped low 256 MiB: drgn with the plugin on a raw copy of
   ``/proc/vmcore`` (the saved low memory lives in the scratch area; the
   plugin serves it through Python callbacks) against plain drgn
   (``DRGN_DISABLE_PLUGINS=hvdump``) on an ordinary ELF core of the same
   crashed memory (``hvsim.groundcore.write_truth_core``: low memory in
   place, read by libdrgn itself). Both files are in the page cache. Every
   repetition runs each side in a fresh interpreter, alternating; the table
   gives medians. Read patterns:

   * 1 MiB and 64 KiB (the kernel's page size) reads over all 256 MiB,
     physical and through the linear map (bulk: ``prog.read`` of big
     buffers, what a memory scan or an export does);
   * 8-byte reads at random linear-map addresses (pointer chasing: what
     every ``Object`` member access, list walk and ``read_u64`` does);
   * an analysis session with vmlinux debug info loaded beforehand: every
     task's comm, pid and stack trace, then the kernel log
     (``get_dmesg``), what an analyst runs first on a crash (10 rounds,
     after one untimed round: drgn caches types, not memory, so every round
     reads the dump again).

   Each side times every pattern 3 times and keeps the fastest (other
   processes only ever add time); the table gives the median over the
   repetitions of those.

   Target: the plugin at most 1.2x plain drgn's time.

2. Start-up cost on a core that is not ours: ``import drgn`` plus
   ``Program().set_core_dump(CORE)`` in a fresh interpreter (and the wall
   time of that interpreter), plugin enabled against
   ``DRGN_DISABLE_PLUGINS=hvdump``, for an x86-64 userspace core (``gcore``
   of ``sleep`` when gdb is installed, else a synthetic one) and a ppc64
   kernel ELF core with PRSTATUS notes (the truth core). Target: at most
   50 ms added (median).

Prints tables, ratios and a verdict line per target; results go in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.timing import best_time

PY = sys.executable
MIB = 1 << 20
LOW = 256 * MIB
PAGE_OFFSET = 0xC000000000000000
READ_TARGET = 1.2
STARTUP_TARGET_MS = 50.0


# -- the worker: one side of one repetition, in its own interpreter -------------------


def _patterns() -> list[tuple[str, int, int, bool]]:
    """(label, read size, base address, physical) of the bulk patterns."""
    return [
        ("phys 1 MiB reads", MIB, 0, True),
        ("phys 64 KiB reads", 64 << 10, 0, True),
        ("linear map 1 MiB reads", MIB, PAGE_OFFSET, False),
        ("linear map 64 KiB reads", 64 << 10, PAGE_OFFSET, False),
    ]


def worker(core: str, vmlinux: str, span: int, small: int, rounds: int, tries: int) -> None:
    import random

    import drgn
    from drgn.helpers.linux.pid import for_each_task
    from drgn.helpers.linux.printk import get_dmesg

    prog = drgn.Program()
    prog.set_core_dump(core)
    res: dict[str, float] = {}
    read = prog.read
    read_u64 = prog.read_u64
    for a in range(0, span, MIB):  # untimed: first touches of drgn's and Python's heaps
        read(a, MIB, True)

    def bulk(size: int, base: int, physical: bool) -> None:
        for a in range(base, base + span, size):
            read(a, size, physical)

    for label, size, base, physical in _patterns():
        res[label] = best_time(lambda: bulk(size, base, physical), tries, warm=False)  # noqa: B023
    rng = random.Random(1)
    addrs = [PAGE_OFFSET + rng.randrange(0, span // 8) * 8 for _ in range(small)]

    def words() -> None:
        for a in addrs:
            read_u64(a)

    res[f"linear map 8 B random reads ({small // 1000}k)"] = best_time(words, tries, warm=False)
    prog.load_debug_info([vmlinux])
    ntasks = 0

    def analysis() -> None:
        nonlocal ntasks
        for _ in range(rounds):
            ntasks = 0
            for task in for_each_task(prog):
                task.comm.string_()
                task.pid.value_()
                with contextlib.suppress(ValueError, drgn.FaultError):
                    [frame.name for frame in prog.stack_trace(task)]
                ntasks += 1
            get_dmesg(prog)

    analysis()  # untimed: drgn's type and symbol caches
    t = best_time(analysis, tries, warm=False)
    res[f"analysis: {ntasks} tasks + stacks + dmesg, x{rounds}"] = t
    print(json.dumps(res))


def _run_worker(
    core: Path, plugin: bool, args: argparse.Namespace, vmlinux: str
) -> dict[str, float]:
    env = dict(os.environ)
    env.pop("DRGN_DISABLE_PLUGINS", None)
    if not plugin:
        env["DRGN_DISABLE_PLUGINS"] = "hvdump"
    out = subprocess.run(
        [
            PY,
            __file__,
            "--worker",
            str(core),
            vmlinux,
            str(args.span),
            str(args.small),
            str(args.rounds),
            str(args.tries),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise SystemExit(f"worker on {core} failed:\n{out.stderr}")
    res: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return res


# -- setup ------------------------------------------------------------------------------


def make_dumps(work: Path, endian: str) -> tuple[Path, Path, str]:
    """A crashed 1 GiB LPAR: its raw /proc/vmcore copy and its truth core; and vmlinux."""
    from hvsim import Lpar
    from hvsim.groundcore import write_truth_core
    from hvsim.kernel import vmlinux_path

    shutil.rmtree(work / "lpar", ignore_errors=True)
    lpar = Lpar.create(work / "lpar", memory="1G", cpus=4, endian=endian, seed=11, boot=True)
    lpar.crash("sysrq" if endian == "big" else "oops")
    raw = work / "raw.vmcore"
    with open(raw, "wb") as f:
        size = lpar.vmcore_size()
        off = 0
        while off < size:
            data = lpar.read_vmcore(off, min(64 * MIB, size - off))
            f.write(data)
            off += len(data)
    truth = work / "truth.core"
    write_truth_core(lpar, truth)
    return raw, truth, vmlinux_path(endian)


def _warm(*paths: Path) -> None:
    for p in paths:
        with open(p, "rb") as f:
            while f.read(16 * MIB):
                pass


def x86_core(work: Path) -> tuple[Path, str]:
    """An x86-64 userspace core: ``gcore`` of a sleeping process, else a synthetic one."""
    core = work / "x86.core"
    if shutil.which("gcore") and os.uname().machine == "x86_64":
        proc = subprocess.Popen(["sleep", "60"])
        try:
            subprocess.run(
                ["gcore", "-o", str(work / "x86"), str(proc.pid)],
                check=True,
                capture_output=True,
            )
        finally:
            proc.kill()
            proc.wait()
        made = work / f"x86.{proc.pid}"
        if made.exists():
            made.rename(core)
            return core, "gcore of sleep"
    from drgn_hvdump.formats.elfcore import LoadSegment, write_core

    seg = LoadSegment(0, MIB, vaddr=0x400000)
    write_core(core, [], [(seg, bytes(MIB))], "little", machine=62)
    return core, "synthetic, 1 MiB, no notes"


# -- the two measurements ------------------------------------------------------------------


def _fmt_ratio(r: float) -> str:
    return f"{r:5.2f}x"


def bench_reads(args: argparse.Namespace, work: Path) -> bool:
    raw, truth, vmlinux = make_dumps(work, args.endian)
    _warm(raw, truth)
    print(
        f"reads: {args.endian}-endian 1 GiB LPAR, raw vmcore {raw.stat().st_size / MIB:.0f} MiB "
        f"(plugin) vs truth core {truth.stat().st_size / MIB:.0f} MiB (plain drgn), "
        f"span {args.span // MIB} MiB, {args.reps} alternating repetitions, medians"
    )
    plug: dict[str, list[float]] = {}
    plain: dict[str, list[float]] = {}
    for rep in range(args.reps):
        order = [(True, raw, plug), (False, truth, plain)]
        if rep % 2:
            order.reverse()
        for plugin, core, into in order:
            for k, v in _run_worker(core, plugin, args, vmlinux).items():
                into.setdefault(k, []).append(v)
    print(
        f"{'pattern':44s} {'plain drgn':>11s} {'plugin':>11s} {'ratio':>7s}  {'plugin MB/s':>11s}"
    )
    worst = 0.0
    for label in plain:
        a = statistics.median(plain[label])
        b = statistics.median(plug[label])
        ratio = b / a
        worst = max(worst, ratio)
        bulk = "reads" in label and "8 B" not in label
        rate = f"{args.span / b / 1e6:11.0f}" if bulk else f"{'':11s}"
        print(f"{label:44s} {a * 1e3:8.1f} ms {b * 1e3:8.1f} ms {_fmt_ratio(ratio)}  {rate}")
    ok = worst <= READ_TARGET
    print(
        f"VERDICT reads: worst ratio {worst:.2f}x plain drgn (target <= {READ_TARGET}x): "
        f"{'met' if ok else 'NOT met'}"
    )
    return ok


_STARTUP = (
    "import time, sys; t = time.perf_counter(); import drgn; p = drgn.Program(); "
    "p.set_core_dump(sys.argv[1]); print(time.perf_counter() - t)"
)


def _startup_once(core: Path, plugin: bool) -> tuple[float, float]:
    env = dict(os.environ)
    env.pop("DRGN_DISABLE_PLUGINS", None)
    if not plugin:
        env["DRGN_DISABLE_PLUGINS"] = "hvdump"
    t = time.perf_counter()
    out = subprocess.run(
        [PY, "-c", _STARTUP, str(core)], env=env, check=True, capture_output=True, text=True
    )
    wall = time.perf_counter() - t
    return float(out.stdout.strip()), wall


def _spread(xs: list[float]) -> str:
    q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return f"{q[0] * 1e3:6.1f}-{q[2] * 1e3:6.1f}"


def bench_startup(args: argparse.Namespace, work: Path) -> bool:
    x86, how = x86_core(work)
    cores: list[tuple[str, Path]] = [(f"x86-64 userspace core ({how})", x86)]
    truth = work / "truth.core"
    if not truth.exists():
        _, truth, _ = make_dumps(work, args.endian)
    cores.append(("ppc64 kernel ELF core with PRSTATUS (truth core)", truth))
    _warm(*(c for _, c in cores))
    print(
        f"\nstart-up: import drgn + set_core_dump in a fresh interpreter, {args.startup_runs} "
        "alternating runs per side; median (interquartile range) in ms"
    )
    print(
        f"{'core':52s} {'in-process: off':>22s} {'on':>22s} {'added':>7s}   "
        f"{'process wall: off':>22s} {'on':>22s} {'added':>7s}"
    )
    worst = 0.0
    for name, core in cores:
        on: list[tuple[float, float]] = []
        off: list[tuple[float, float]] = []
        _startup_once(core, True)  # warm the interpreter's own files
        for i in range(args.startup_runs):
            for plugin in (True, False) if i % 2 else (False, True):
                (on if plugin else off).append(_startup_once(core, plugin))
        cols = []
        for k in (0, 1):
            a = [x[k] for x in off]
            b = [x[k] for x in on]
            added = (statistics.median(b) - statistics.median(a)) * 1e3
            worst = max(worst, added)
            cols.append(
                f"{statistics.median(a) * 1e3:6.1f} ({_spread(a)}) "
                f"{statistics.median(b) * 1e3:6.1f} ({_spread(b)}) {added:+6.1f}"
            )
        print(f"{name:52s} {cols[0]}   {cols[1]}")
    ok = worst <= STARTUP_TARGET_MS
    print(
        f"VERDICT start-up: worst added {worst:.1f} ms (target <= {STARTUP_TARGET_MS:.0f} ms): "
        f"{'met' if ok else 'NOT met'}"
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick", action="store_true", help="CI smoke run: 64 MiB span, 2 reps, 5 start-ups"
    )
    ap.add_argument(
        "--reps", type=int, default=5, help="repetitions of the read benchmark (default 5)"
    )
    ap.add_argument(
        "--startup-runs", type=int, default=30, help="start-ups per side and core (default 30)"
    )
    ap.add_argument("--endian", choices=("big", "little"), default="big")
    ap.add_argument("--skip-reads", action="store_true")
    ap.add_argument("--skip-startup", action="store_true")
    ap.add_argument(
        "--workdir", type=Path, help="keep the dumps here (default: a temporary directory)"
    )
    ap.add_argument(
        "--worker",
        nargs=6,
        metavar=("CORE", "VMLINUX", "SPAN", "SMALL", "ROUNDS", "TRIES"),
        help=argparse.SUPPRESS,
    )
    args = ap.parse_args(argv)
    if args.worker:
        core, vmlinux, span, small, rounds, tries = args.worker
        worker(core, vmlinux, int(span), int(small), int(rounds), int(tries))
        return 0
    args.span = LOW
    args.small = 100_000
    args.rounds = 10
    args.tries = 3
    if args.quick:
        args.rounds = 2
        args.tries = 1
        args.span = 64 * MIB
        args.small = 10_000
        args.reps = min(args.reps, 2)
        args.startup_runs = min(args.startup_runs, 5)
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} at start")
    tmp = None
    if args.workdir is None:
        tmp = tempfile.mkdtemp(prefix="bench-plugin-")
        work = Path(tmp)
    else:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)
    results: list[bool] = []
    try:
        steps: list[Callable[[argparse.Namespace, Path], bool]] = []
        if not args.skip_reads:
            steps.append(bench_reads)
        if not args.skip_startup:
            steps.append(bench_startup)
        for step in steps:
            results.append(step(args, work))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())

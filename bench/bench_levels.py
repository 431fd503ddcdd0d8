"""Dump levels: hvdump -d 31 against makedumpfile -d 31, and time back to production.

    .venv/bin/python bench/bench_levels.py [--size 16G] [--makedumpfile PATH]
        [--repeat 3] [--dir DIR] [--json FILE] [--quick]

Two measurements on hvsim's busy machine (page cache, user, slab, kernel and
free pages as :mod:`hvsim.memmodel` draws them, 64 KiB pages):

1. **Throughput and size against makedumpfile**, same codec (LZO, ``-l``; zstd
   ``-z`` too when the binary has it), one thread, at ``-d 31`` and ``-d 1``,
   on a little-endian fadump LPAR's ``/proc/vmcore`` exported as a plain file
   (in the page cache, read once before): ``makedumpfile -d N -l VMCORE OUT``
   against ``hvdump convert -d N --compress lzo --no-sync`` (the same job:
   vmcore in, kdump file out, nothing synced), alternating, best of
   ``--repeat``; ``hvdump collect --release never`` (which also syncs and
   reads back every chunk before it could release it) once for reference.
   Throughput is RAM bytes over wall seconds. Both tools' kept pages are
   compared: equal but for the page the reserved area's end shares (hvdump
   does not save a page the vmcore holds only in part).

   ``--makedumpfile`` must be a native build for ppc64 dumps (upstream's
   ``make TARGET=ppc64 CROSS= LINKTYPE=dynamic USELZO=on USEZSTD=on`` on this
   machine; ``CROSS=`` keeps glibc's x86-64 headers working). Without it the
   benchmark uses Debian 13's ppc64el makedumpfile under qemu-user
   (tests/makedumpfile_ppc64.py): its pages are compared, its times are an
   emulator's and no ratio is printed.

2. **Time back to production**: a big-endian phyp LPAR of the same size
   behind the FUSE capture root, ``hvdump collect`` with progressive release
   at ``-d 31`` and at ``-d 1`` (``--chunk-size``, 64M by default: see
   ``--help``): the reserved-memory integral (GiB x s, from the manifest's
   ``reserved_over_time``), the seconds until half the reserved memory is
   back, and the wall time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from export_root import export_root
from timing import machine_line
from vs_makedumpfile import bench_lock, timed

from drgn_hvdump.clitools import parse_size
from hvsim import Lpar
from tests.collect_support import kdump_pages

_HVDUMP = [sys.executable, "-m", "drgn_hvdump.cli"]
_GIB = 1 << 30


def _makedumpfile(given: str | None) -> tuple[list[str], str, bool]:
    """Command prefix, version line, and whether it runs natively."""
    if given:
        cmd = [given]
        native = True
    else:
        from tests.makedumpfile_ppc64 import makedumpfile_command

        cmd = makedumpfile_command()
        native = False
    out = subprocess.run([*cmd, "-v"], capture_output=True, text=True, check=False).stdout
    lines = [x.strip() for x in out.splitlines() if x.strip()]
    version = lines[0] if lines else "makedumpfile (unknown version)"
    if "zstd\tenabled" not in out and not any(
        x.startswith("zstd") and x.endswith("enabled") for x in lines
    ):
        version += " (no zstd)"
    return cmd, version, native


def throughput(
    work: Path, size: int, mdf: list[str], repeat: int, codecs: list[str]
) -> dict[str, Any]:
    lpar = Lpar.create(
        work / "lpar-le", memory=size, endian="little", page_size=65536, dump="fadump", boot=True
    )
    lpar.crash()
    t = time.perf_counter()
    root = export_root(lpar, work / "root-le")
    vmcore = root / "proc" / "vmcore"
    print(
        f"exported {vmcore.stat().st_size / _GIB:.2f} GiB vmcore in {time.perf_counter() - t:.0f} s"
    )
    subprocess.run(["cat", str(vmcore)], stdout=subprocess.DEVNULL, check=True)
    flag = {"lzo": "-l", "zstd": "-z"}
    results: dict[str, Any] = {}
    for codec in codecs:
        for level in (31, 1):
            best: dict[str, tuple[float, float, int]] = {}
            for _ in range(repeat):
                ref = work / f"mdf-{codec}-{level}.kdump"
                out = work / f"hv-{codec}-{level}"
                shutil.rmtree(out, ignore_errors=True)
                ref.unlink(missing_ok=True)
                runs = {
                    "makedumpfile": [*mdf, "-d", str(level), flag[codec], str(vmcore), str(ref)],
                    "hvdump convert": [
                        *_HVDUMP, "convert", str(vmcore), str(out), "-d", str(level),
                        "--compress", codec, "--no-sync", "--no-progress",
                    ],
                }  # fmt: skip
                for name, cmd in runs.items():
                    wall, cpu = timed(cmd, None, work / "log")
                    path = ref if name == "makedumpfile" else out / "dump.kdump"
                    if name not in best or wall < best[name][0]:
                        best[name] = (wall, cpu, path.stat().st_size)
            coll = work / f"hvc-{codec}-{level}"
            shutil.rmtree(coll, ignore_errors=True)
            wall, cpu = timed(
                [
                    *_HVDUMP, "collect", "--root", str(root), "-o", str(coll), "-d", str(level),
                    "--compress", codec, "--release", "never", "--no-progress",
                ],
                None,
                work / "log",
            )  # fmt: skip
            best["hvdump collect"] = (wall, cpu, (coll / "dump.kdump").stat().st_size)
            ours, _ = kdump_pages(work / f"hv-{codec}-{level}" / "dump.kdump")
            theirs, _ = kdump_pages(work / f"mdf-{codec}-{level}.kdump")
            key = f"{codec} -d {level}"
            results[key] = {
                "runs": {
                    n: {"wall_s": w, "cpu_s": c, "out_bytes": b, "gb_s": size / w / 1e9}
                    for n, (w, c, b) in best.items()
                },
                "pages_only_makedumpfile_kept": theirs.without(ours).total(),
                "pages_only_hvdump_kept": ours.without(theirs).total(),
            }
            shutil.rmtree(coll, ignore_errors=True)
    lpar_path = lpar.path
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(lpar_path, ignore_errors=True)
    return results


def _integral(curve: list[list[float]]) -> tuple[float, float]:
    """GiB x s under the reserved-memory curve, and when it first fell to half."""
    area = 0.0
    half_at = curve[-1][0]
    start = curve[0][1]
    for (t0, r0), (t1, r1) in itertools.pairwise(curve):
        area += (t1 - t0) * (r0 + r1) / 2 / _GIB
    for t, r in curve:
        if r <= start / 2:
            half_at = t
            break
    return area, half_at


def time_back(work: Path, size: int, chunk: int) -> dict[str, Any]:
    from hvsim import fuse_root

    out: dict[str, Any] = {}
    for level in (31, 1):
        lpar = Lpar.create(
            work / f"lpar-be-{level}", memory=size, endian="big", page_size=65536, boot=True
        )
        lpar.crash()
        root = work / f"root-be-{level}"
        root.mkdir(exist_ok=True)
        fuse_root.mount(lpar.path, str(root))
        try:
            dest = work / f"tb-{level}"
            wall, cpu = timed(
                [
                    *_HVDUMP, "collect", "--root", str(root), "-o", str(dest), "-d", str(level),
                    "--compress", "lzo", "--chunk-size", str(chunk), "--no-progress",
                ],
                None,
                work / "log",
            )  # fmt: skip
        finally:
            fuse_root.umount(str(root))
        m = json.loads((dest / "manifest.json").read_text())
        curve = m["release"]["reserved_over_time"]
        area, half = _integral(curve)
        out[f"-d {level}"] = {
            "wall_s": wall,
            "cpu_s": cpu,
            "reserved_gib_s": area,
            "half_back_s": half,
            "reserved_start_gib": curve[0][1] / _GIB,
        }
        shutil.rmtree(dest, ignore_errors=True)
        shutil.rmtree(lpar.path, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=parse_size, default=16 * _GIB, help="LPAR memory (default 16G)")
    ap.add_argument("--makedumpfile", help="a native makedumpfile built for ppc64 dumps")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, help="work directory (default: a new one in /var/tmp)")
    ap.add_argument("--json", type=Path, help="write the results here too")
    ap.add_argument("--quick", action="store_true", help="2 GiB, one repeat")
    ap.add_argument(
        "--chunk-size",
        type=parse_size,
        default=64 << 20,
        help="hvdump collect's --chunk-size for the time-back part (default 64M: hvsim "
        "persists its state at every release, which costs more the more it has released, "
        "so with 16M chunks a 16 GiB LPAR's 1000 writes would measure hvsim)",
    )
    ap.add_argument("--skip-throughput", action="store_true", help="only the time-back part")
    args = ap.parse_args(argv)
    size = 2 * _GIB if args.quick else args.size
    repeat = 1 if args.quick else args.repeat
    mdf, version, native_mdf = _makedumpfile(args.makedumpfile)
    codecs = ["lzo"] + ([] if "no zstd" in version else ["zstd"])
    work = args.dir or Path(tempfile.mkdtemp(prefix="hvdump-levels-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    print(machine_line())
    print(f"{version}{'' if native_mdf else ' under qemu-user (emulated: no speed ratios)'}")
    with bench_lock():
        tp = {} if args.skip_throughput else throughput(work, size, mdf, repeat, codecs)
        tb = time_back(work, size, args.chunk_size)
    print(f"\n{size / _GIB:.0f} GiB busy machine, 64 KiB pages, 1 thread, best of {repeat}:")
    for key, r in tp.items():
        runs = r["runs"]
        print(f"  {key}:")
        for name, x in runs.items():
            print(
                f"    {name:15s} {x['wall_s']:7.2f} s  {x['gb_s']:6.2f} GB/s  cpu {x['cpu_s']:6.2f} s"
                f"  out {x['out_bytes'] / _GIB:6.3f} GiB"
            )
        if native_mdf:
            m, h = runs["makedumpfile"], runs["hvdump convert"]
            print(
                f"    convert/makedumpfile: throughput x{m['wall_s'] / h['wall_s']:.2f}, "
                f"size x{h['out_bytes'] / m['out_bytes']:.3f}"
            )
        print(
            f"    kept pages only makedumpfile: {r['pages_only_makedumpfile_kept']}, "
            f"only hvdump: {r['pages_only_hvdump_kept']}"
        )
    print(
        "time back to production (phyp, FUSE root, progressive release, lzo, "
        f"--chunk-size {args.chunk_size >> 20}M):"
    )
    for key, r in tb.items():
        print(
            f"  {key:6s} wall {r['wall_s']:6.1f} s  reserved {r['reserved_gib_s']:8.1f} GiB*s  "
            f"half back after {r['half_back_s']:6.1f} s (of {r['reserved_start_gib']:.1f} GiB)"
        )
    a, b = tb["-d 31"]["reserved_gib_s"], tb["-d 1"]["reserved_gib_s"]
    print(f"  reserved-memory integral -d 31 / -d 1: {a / b:.2f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine_line(),
                    "makedumpfile": version,
                    "native": native_mdf,
                    "size": size,
                    "throughput": tp,
                    "time_back": tb,
                },
                indent=1,
            )
        )
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)
    os.sync()
    return 0


if __name__ == "__main__":
    sys.exit(main())

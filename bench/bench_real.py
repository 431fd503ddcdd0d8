"""The pipeline on real ppc64 kernel memory: step times, and the collector against zstd and lz4.

    .venv/bin/python bench/bench_real.py [--mmu hash|radix] [--repeat N]

For each guest (Debian's ppc64el kernel under qemu-system-ppc64, hash MMU on
POWER8 and radix on POWER9; see tests/real_kernel.py) it prints the time of
every step: boot to panic, QMP dump, adoption, crash, drgn on the live
capture root, ``hvdump collect`` with progressive release through FUSE,
``hvdump verify``, ``hvsim verify`` and drgn on the collected dump. Then, on
the capture root exported as plain files (``/proc/vmcore`` in the page
cache, as bench_collect.py does), ``hvdump collect --release never`` with
zstd and snappy against ``zstd -1 -T1`` and ``lz4 -1`` on the guest's image
file: wall time, throughput and compression ratio per byte of guest RAM,
output size. Results go in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_collect import RUNS, _collect, _loadavg, _timed
from bench.export_root import export_root
from bench.timing import machine_line
from hvsim import Lpar
from tests.real_kernel import CPU_MODELS, build_initramfs, fetch_parts
from tests.real_pipeline import run_pipeline

STEPS = (
    ("boot_to_panic_s", "boot to panic (TCG)"),
    ("dump_s", "QMP dump-guest-memory"),
    ("adopt_boot_s", "hvsim adopt + boot"),
    ("crash_s", "hvsim crash"),
    ("drgn_live_s", "drgn on the live root"),
    ("collect_s", "hvdump collect (FUSE, progressive)"),
    ("hvdump_verify_s", "hvdump verify"),
    ("hvsim_verify_s", "hvsim verify (ground truth)"),
    ("drgn_collected_s", "drgn on the collected dump"),
)


def compression(lpar: Lpar, image: Path, ram: int, base: Path, repeat: int) -> None:
    """zstd and lz4 on the image file, the collector on the LPAR's capture root (exported).

    Sizes and rates are per byte of the guest's RAM (the image), which the
    dump holds; the collector also reads the zero scratch area above it.
    """
    root = export_root(lpar, base / "root")
    vmcore = root / "proc/vmcore"
    for f in (vmcore, image):
        subprocess.run(["cat", str(f)], stdout=subprocess.DEVNULL, check=True)
    size = ram
    print(
        f"  guest RAM {size / (1 << 30):.2f} GiB, image and exported vmcore in the page cache; "
        f"best of {repeat}, wall (CPU)"
    )
    res: dict[str, float] = {}
    for name, cmd, out in (
        ("zstd -1 -T1", ["zstd", "-1", "-T1", "-q", "-f"], base / "v.zst"),
        ("lz4 -1", ["lz4", "-1", "-q", "-f"], base / "v.lz4"),
    ):
        src = str(image)
        args = [*cmd, src, "-o", str(out)] if "zstd" in name else [*cmd, src, str(out)]
        wall, cpu, _ = min(_timed(args) for _ in range(repeat))
        res[name] = wall
        n = out.stat().st_size
        print(
            f"  {name:28s} {wall:6.2f} s ({cpu:5.2f}) {size / wall / 1e6:6.0f} MB/s  "
            f"output {n / 1e6:7.1f} MB  ratio {size / n:6.1f}x"
        )
    for label, args, base_name in RUNS:
        best = min(
            (_collect(root, base / "out", "--release", "never", *args) for _ in range(repeat)),
            key=lambda r: r[0],
        )
        wall, cpu, _, m = best
        n = m["dump"]["size"]
        print(
            f"  {label:28s} {wall:6.2f} s ({cpu:5.2f}) {size / wall / 1e6:6.0f} MB/s  "
            f"output {n / 1e6:7.1f} MB  ratio {size / n:6.1f}x  vs {base_name}: "
            f"{res[base_name] / wall:.2f}x"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mmu", choices=tuple(CPU_MODELS), action="append")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"machine: {machine_line()}; load average {_loadavg()}")
    parts = fetch_parts()
    with tempfile.TemporaryDirectory(prefix="hvdump-bench-real-") as tmp:
        base = Path(tmp)
        initrd = build_initramfs(parts, base / "initrd.cpio")
        for mmu in args.mmu or list(CPU_MODELS):
            d = base / mmu
            run = run_pipeline(parts, initrd, d, mmu)
            print(f"{mmu} MMU ({CPU_MODELS[mmu]}), kernel {parts.release}, 1 GiB guest, 2 CPUs:")
            for key, what in STEPS:
                print(f"  {what:40s} {run.times[key]:6.2f} s")
            print(
                f"  collected {run.times['dump_bytes'] / 1e6:.1f} MB; tasks {len(run.collected.tasks)}, "
                f"printk records {len(run.collected.printk)}, modules {run.collected.modules}"
            )
            lpar = Lpar.adopt(d / "bench-lpar", run.guest.core, mmu=mmu, boot=True)
            lpar.crash()
            compression(lpar, run.guest.core, run.image.ram_end, d / "c", args.repeat)
    print(f"load average at end: {_loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

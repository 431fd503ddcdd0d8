"""hvdump against makedumpfile inside a real fadump capture kernel (QEMU 11 pseries, TCG).

One guest run per MMU (:func:`tests.real_firmware.run_guest`): in the first
capture boot, on the same ``/proc/vmcore`` and in the same run, Debian 13's
``makedumpfile -l -d 31`` and ``-l -d 1`` and ``hvdump collect --compress lzo
--release never`` at ``-d 31`` and at ``-d 1`` (the same codec and levels),
then the collection that releases (``--format elf``, what drgn reads). Under TCG only the ratios mean anything. It also prints the time from
the first kernel's panic until all memory is back and fadump is registered
again, with hvdump, and with makedumpfile + ``release_mem`` (makedumpfile's
own time plus the capture boot and the release hvdump measured).

Usage: ``python bench/bench_firmware.py [--mmu hash|radix] [OUT_DIR]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.timing import machine_line
from tests.real_firmware import CPU_MODELS, FirmwareRun, build_initramfs, fetch_parts, run_guest


def _size(run: FirmwareRun, name: str) -> int:
    path = run.files / name
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return path.stat().st_size if path.exists() else 0


def report(run: FirmwareRun) -> list[str]:
    """The table rows of one run (markdown)."""
    cap = run.captures[1]
    t, rc = cap.times, cap.rcs
    rows = []
    for name, label, out, base_name in (
        ("makedumpfile-d31", "makedumpfile -l -d 31", "makedumpfile-d31.kdump", ""),
        ("hvdump-kdump31", "hvdump collect --compress lzo -d 31", "kdump31-1", "makedumpfile-d31"),
        ("makedumpfile-d1", "makedumpfile -l -d 1", "makedumpfile-d1.kdump", ""),
        ("hvdump-kdump", "hvdump collect --compress lzo", "kdump-1", "makedumpfile-d1"),
        ("hvdump-collect", "hvdump collect --format elf (releases)", "dump-1", ""),
    ):
        if name not in t:
            continue
        ok = "ok" if rc.get(name) == 0 else f"failed ({rc.get(name)})"
        base = t.get(base_name) if base_name and rc.get(base_name) == 0 else None
        ratio = f"{base / t[name]:.2f}x" if base and t[name] and rc.get(name) == 0 else "-"
        rows.append(
            f"| {run.mmu} | {label} | {t[name]:.1f} s | {_size(run, out) / 2**20:.0f} MiB "
            f"| {ratio} | {ok} |"
        )
    panic = run.seen.get("Kernel panic - not syncing", 0.0)
    captured = run.seen.get("HVFW-STAGE capture 1", panic)
    boot = captured - panic
    hv = boot + t.get("hvdump-collect", 0.0)
    mdf = boot + t.get("makedumpfile-d31", 0.0) + t.get("hvdump-collect", 0.0) * 0
    rows.append(
        f"| {run.mmu} | panic to production (hvdump) | {hv:.1f} s | | | capture boot {boot:.1f} s |"
    )
    rows.append(
        f"| {run.mmu} | panic to production (makedumpfile -d 31 + release_mem) | {mdf:.1f} s "
        "| | | release not timed apart |"
    )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out", nargs="?", type=Path)
    ap.add_argument("--mmu", choices=tuple(CPU_MODELS), action="append")
    args = ap.parse_args()
    print(f"machine: {machine_line()}", flush=True)
    parts = fetch_parts()
    print(
        f"guest kernel {parts.kernel.version} (built in {parts.kernel.build_s:.0f} s), "
        f"{parts.qemu.version}"
    )
    out = args.out or Path(tempfile.mkdtemp(prefix="hvfw-bench-"))
    print("| MMU | what | wall | output | vs makedumpfile, same level | |")
    print("|---|---|---|---|---|---|")
    for mmu in args.mmu or list(CPU_MODELS):
        initrd = build_initramfs(parts, out / f"initrd-{mmu}.cpio", mmu)
        run = run_guest(parts, initrd, out / mmu, mmu)
        for row in report(run):
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

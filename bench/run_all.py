"""Run every benchmark in bench/ one after the other and print their reports.

Each script measures its own baselines in the same run and prints ratios;
copy the tables into docs/benchmarks.md together with the machine line printed
first.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.timing import machine_line

BENCHES = ["bench_native.py", "bench_hvsim.py", "bench_fuse.py", "bench_plugin.py"]


def main() -> int:
    here = Path(__file__).resolve().parent
    print(f"machine: {machine_line()}", flush=True)
    failed = 0
    for name in BENCHES:
        print(f"\n### {name}", flush=True)
        rc = subprocess.call([sys.executable, str(here / name)])
        if rc:
            print(f"{name} failed with exit code {rc}", flush=True)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""What the benchmarks share: the machine they ran on, and the timing rule.

Every benchmark prints :func:`machine_line` with its results (they go into
docs/benchmarks.md with it) and times a step by :func:`best_time`: other
processes on the machine only ever add time, so the fastest of a few runs is
the most repeatable single number.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["best_time", "cpu_model", "machine_line"]


def cpu_model() -> str:
    """The CPU's model name (``lscpu``, else /proc/cpuinfo)."""
    lscpu = shutil.which("lscpu")
    if lscpu:
        out = subprocess.run([lscpu], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def machine_line() -> str:
    """CPU model, CPU count, kernel and Python: what a result needs beside it."""
    return (
        f"{cpu_model()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def best_time(fn: Callable[[], object], repeat: int, *, warm: bool = True) -> float:
    """The fastest of ``repeat`` timings of ``fn`` (after one untimed run when ``warm``:
    page faults, caches, lazy allocation)."""
    if warm:
        fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best

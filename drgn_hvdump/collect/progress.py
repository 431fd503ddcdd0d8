"""Progress for people (a bar on a terminal) and for machines (``--json`` lines on stdout)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

__all__ = ["Progress"]

_GIB = 1 << 30


class Progress:
    """Throughput, ETA and memory given back, as a redrawn line or JSON lines."""

    def __init__(self, *, json_lines: bool, tty: bool | None, stream: TextIO | None = None) -> None:
        self.json = json_lines
        self.err = stream or sys.stderr
        self.tty = self.err.isatty() if tty is None else tty
        self.t0 = time.monotonic()
        self._last = 0.0
        self._drawn = False
        self._first: tuple[float, int] | None = None

    def event(self, kind: str, **fields: Any) -> None:
        if self.json:
            sys.stdout.write(json.dumps({"event": kind, **fields}, sort_keys=True) + "\n")
            sys.stdout.flush()

    def message(self, text: str) -> None:
        """A line for people (on stderr) and a ``message`` event for machines."""
        self.event("message", text=text)
        self.close()
        self.err.write(f"{text}\n")
        self.err.flush()

    def update(
        self, done: int, total: int, released: int | None, reserved: int | None, stored: int
    ) -> None:
        """Report ``done`` of ``total`` bytes read; ``released`` None: no memory to give back."""
        now = time.monotonic()
        elapsed = max(now - self.t0, 1e-6)
        rate = done / elapsed
        # The ETA from the pace since the first report, once there is one: the start
        # (planning, a resumed run's replay) says nothing about the pace of reading.
        if self._first is None:
            self._first = (now, done)
        t1, d1 = self._first
        pace = (done - d1) / (now - t1) if now - t1 >= 0.5 and done > d1 else 0.0
        eta = (total - done) / pace if pace > 0 else (0.0 if done >= total else None)
        if self.json:
            self.event(
                "progress",
                bytes_done=done,
                bytes_total=total,
                bytes_stored=stored,
                **(
                    {"released_bytes": released, "reserved_bytes": reserved}
                    if released is not None
                    else {}
                ),
                rate_bytes_per_s=round(rate),
                eta_s=None if eta is None else round(eta, 1),
                elapsed_s=round(elapsed, 3),
            )
        if not self.tty:
            return
        if now - self._last < 0.1 and done < total:
            return
        self._last = now
        width = 30
        filled = int(width * done / total) if total else width
        bar = "#" * filled + "-" * (width - filled)
        eta_text = f"{eta:5.0f}s" if eta is not None else "    ?"
        self.err.write(
            f"\r[{bar}] {100 * done / max(total, 1):5.1f}% {done / _GIB:7.2f}/{total / _GIB:.2f} GiB "
            f"{rate / (1 << 20):7.1f} MiB/s ETA {eta_text}"
            + (f" released {released / _GIB:6.2f} GiB " if released is not None else " ")
        )
        self.err.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.err.write("\n")
            self.err.flush()
            self._drawn = False

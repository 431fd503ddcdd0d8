"""A running (or finished) collection seen from outside: what is saved, what is released.

The collector writes ``DIR/plan.json`` (0600, atomic, before the first
chunk) for other tools, the drgn plugin first: the dump it collects (root,
identity, the hypervisor's dump header), the output file and format, every
chunk (kind, source address in ``/proc/vmcore``, destination address in the
crashed kernel's memory, size) and every release write with the pages it may
free. The runtime registry (:mod:`drgn_hvdump.dumpdir.registry`) says which
directory collects the dump under a root.

:class:`CollectionView` reads the plan once and then follows the journal as
it grows (one ``fstat`` per :meth:`CollectionView.refresh` when nothing
changed): which chunks are durable, which release writes were started (an
``intent`` counts: the kernel may already have reused those pages).
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drgn_hvdump.dumpdir.names import JOURNAL as JOURNAL_FILE
from drgn_hvdump.dumpdir.names import PLAN_FILE
from drgn_hvdump.errors import FormatError
from drgn_hvdump.fsutil import write_atomic
from drgn_hvdump.intervals import IntervalSet

__all__ = [
    "PLAN_VERSION",
    "CollectionView",
    "PlanChunk",
    "write_plan_file",
]

PLAN_VERSION = 1


@dataclass(frozen=True)
class PlanChunk:
    """One chunk of the plan: ``src`` in ``/proc/vmcore``, ``dst`` in the crashed memory
    (``cpu``/``hpte``: offset in ``regsave.bin``/``hpte.bin``)."""

    index: int
    kind: str
    src: int
    dst: int
    size: int


def write_plan_file(
    out: Path,
    *,
    root: Path,
    identity: str,
    header_hex: str,
    scrubbed: bool = False,
    dump_file: str,
    fmt: str,
    page_size: int,
    memory: int,
    chunks: list[tuple[int, str, int, int, int]],
    writes: list[tuple[int, int, int, int]],
    write: Callable[[str, bytes], None] | None = None,
) -> None:
    """Write ``DIR/plan.json``: chunks as ``[index, kind, src, dst, size]``, writes as
    ``[addr, size, span_start, span_end]`` in plan index order; through ``write`` (an
    opened output directory's ``write_atomic``) when given."""
    plan = {
        "version": PLAN_VERSION,
        "root": os.path.realpath(root),
        "identity": identity,
        "scrubbed": scrubbed,
        "header": header_hex,
        "dump_file": dump_file,
        "format": fmt,
        "page_size": page_size,
        "memory": memory,
        "chunks": [list(c) for c in chunks],
        "writes": [list(w) for w in writes],
    }
    data = json.dumps(plan, separators=(",", ":")).encode()
    if write is not None:
        write(PLAN_FILE, data)
    else:
        write_atomic(out / PLAN_FILE, data)


class CollectionView:
    """A collection's plan plus its journal, followed as it grows."""

    def __init__(self, out: Path) -> None:
        self.out = out
        path = out / PLAN_FILE
        try:
            plan: dict[str, Any] = json.loads(path.read_text())
        except OSError as exc:
            raise FormatError(
                f"cannot read the collection plan: {exc.strerror}", path=str(path)
            ) from None
        except ValueError:
            raise FormatError("the collection plan is not JSON", path=str(path)) from None
        if plan.get("version") != PLAN_VERSION:
            raise FormatError(
                f"plan version {plan.get('version')!r}, this hvdump reads {PLAN_VERSION}",
                path=str(path),
            )
        self.root = str(plan["root"])
        self.header_hex = str(plan["header"])
        self.identity = str(plan.get("identity") or "")
        self.scrubbed = bool(plan.get("scrubbed"))
        self.chunk_hash: dict[int, int] = {}  # XXH64 of each durable chunk as read
        self.dump_path = out / str(plan["dump_file"])
        self.format = str(plan["format"])
        self.page_size = int(plan["page_size"])
        self.memory = int(plan["memory"])
        self.chunks = [PlanChunk(*c) for c in plan["chunks"]]
        memory = [ch for ch in self.chunks if ch.kind in ("rmo", "mem")]
        self._by_src = sorted((ch.src, ch.index) for ch in memory)
        self._by_dst = sorted((ch.dst, ch.index) for ch in memory)
        self.writes = [tuple(int(x) for x in w) for w in plan["writes"]]
        self.durable = IntervalSet()  # source (vmcore) addresses of durable chunks
        self.durable_chunks: set[int] = set()
        self.released = IntervalSet()  # source pages a started release write may free
        self.done = False
        self._journal = out / JOURNAL_FILE
        self._pos = 0
        self._stamp: tuple[int, int] | None = None
        self._tail = b""
        self.refresh()

    def refresh(self) -> bool:
        """Read journal lines added since the last call; whether anything changed."""
        try:
            st = os.stat(self._journal)
        except OSError:
            return False
        stamp = (st.st_size, st.st_mtime_ns)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        if st.st_size < self._pos:  # rewritten: start again
            self._pos, self._tail = 0, b""
            self.durable, self.released = IntervalSet(), IntervalSet()
            self.durable_chunks = set()
        with open(self._journal, "rb") as f:
            f.seek(self._pos)
            data = f.read()
        self._pos += len(data)
        lines = (self._tail + data).split(b"\n")
        self._tail = lines.pop()  # an unfinished last line waits for its newline
        changed = False
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            changed |= self._apply(rec)
        return changed

    def _apply(self, rec: dict[str, Any]) -> bool:
        t = rec.get("t")
        if t == "chunk":
            i = int(rec["i"])
            if 0 <= i < len(self.chunks):
                ch = self.chunks[i]
                self.durable_chunks.add(i)
                if isinstance(rec.get("xxh64"), int):
                    self.chunk_hash[i] = rec["xxh64"]
                if ch.kind in ("rmo", "mem"):
                    self.durable.add(ch.src, ch.src + ch.size)
                return True
        elif t == "rel" and rec.get("s") == "intent":
            w = int(rec["w"])
            if 0 <= w < len(self.writes):
                _, _, lo, hi = self.writes[w]
                self.released.add(lo, hi)
                return True
        elif t == "done":
            self.done = True
            return True
        return False

    def chunks_at_dst(self, start: int, end: int) -> list[PlanChunk]:
        """The memory chunks whose destination (crashed-memory) range meets ``[start, end)``."""
        at = max(0, bisect.bisect_right(self._by_dst, (start, len(self.chunks))) - 1)
        out = []
        for dst, i in self._by_dst[at:]:
            if dst >= end:
                break
            ch = self.chunks[i]
            if ch.dst + ch.size > start:
                out.append(ch)
        return out

    def chunk_for_src(self, src: int) -> PlanChunk | None:
        """The memory chunk whose source range holds ``src``."""
        at = bisect.bisect_right(self._by_src, (src, len(self.chunks))) - 1
        if at < 0:
            return None
        ch = self.chunks[self._by_src[at][1]]
        return ch if src < ch.src + ch.size else None
